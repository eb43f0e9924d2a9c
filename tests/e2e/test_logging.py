"""Logs end to end: access log formats and JSON, escaping, request ids, log files,
SIGUSR1 reopening after rotation and --log-config."""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from tests.apps.ops_apps import ServerProcess
from tests.conftest import Running
from threshold.observe.logs import ACCESS_LOGGER, ATOMS

ServeFn = Callable[..., Any]
APP = "tests.apps.ops_apps:asgi3_function"  # answers "asgi3 function" (14 bytes)
HEX_ID = re.compile(r"[0-9a-f]{32}")
TIMEOUT = 10.0


class Lines(logging.Handler):
    """Collects the access log lines; ``wait(n)`` blocks until n have arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.lines.append(record.getMessage())
            self.changed.notify_all()

    def wait(self, count: int = 1) -> list[str]:
        # The line is logged just after the response is written: the client may be first.
        with self.changed:
            arrived = self.changed.wait_for(lambda: len(self.lines) >= count, TIMEOUT)
            assert arrived, f"expected {count} access log lines, got {self.lines}"
            return list(self.lines)


@pytest.fixture
def access() -> Iterator[Lines]:
    logger = logging.getLogger(ACCESS_LOGGER)
    handler = Lines()
    level = logger.level
    logger.setLevel(logging.INFO)  # in-thread servers do not run configure_logging
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def report(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with what the app saw of the request id; /own-id and /boom misbehave."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["db"] = "connected"
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/boom":
        raise RuntimeError("boom")
    seen = {
        "state": scope.get("state"),
        "header": [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"],
    }
    headers = [(b"content-type", b"application/json")]
    if scope["path"] == "/own-id":
        headers.append((b"X-Request-ID", b"chosen-by-app"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(seen).encode()})


def wsgi_report(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    seen = {k: environ.get(k) for k in ("threshold.request_id", "HTTP_X_REQUEST_ID")}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(seen).encode()]


def exchange(running: Running, request: bytes) -> tuple[int, bytes]:
    """One raw request (ending in Connection: close); (our local port, response)."""
    with running.connect(TIMEOUT) as sock:
        port = sock.getsockname()[1]
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return port, b"".join(chunks)


def h2_get(
    running: Running,
    path: bytes,
    headers: tuple[tuple[bytes, bytes], ...] = (),
    authority: bytes = b"h2.test",
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One HTTP/2 GET with prior knowledge and raw header bytes (no client-side checks)."""
    config = h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False
    )
    conn = h2.connection.H2Connection(config)
    with running.connect(TIMEOUT) as sock:
        port = sock.getsockname()[1]
        conn.initiate_connection()
        request = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", authority)]
        conn.send_headers(1, [*request, (b":path", path), *headers], end_stream=True)
        sock.sendall(conn.data_to_send())
        response: dict[bytes, bytes] = {}
        body = b""
        while True:
            data = sock.recv(65536)
            assert data, "the server closed the connection mid-stream"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    response = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded):
                    return port, response, body
                elif isinstance(event, h2.events.StreamReset):
                    raise AssertionError(f"stream reset: {event}")
            sock.sendall(conn.data_to_send())


def h1_client() -> httpx.Client:
    return httpx.Client(timeout=TIMEOUT)


# -- access log lines -------------------------------------------------------------------------


def test_default_line_is_unchanged(serve: ServeFn, access: Lines) -> None:
    with serve(report, access_log=True) as running:
        port, response = exchange(
            running, b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        assert response.startswith(b"HTTP/1.1 200 ")
        body = response.split(b"\r\n\r\n", 1)[1]
        port10, _ = exchange(running, b"POST /p HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        first, second = access.wait(2)
    pattern = rf'127\.0\.0\.1:{port} "GET /a/b\?x=1&y=2 HTTP/1\.1" 200 {len(body)} \d+\.\dms'
    assert re.fullmatch(pattern, first), first
    assert re.fullmatch(rf'127\.0\.0\.1:{port10} "POST /p HTTP/1\.0" 200 \d+ \d+\.\dms', second)


def test_custom_format_with_every_kind_of_atom(serve: ServeFn, access: Lines) -> None:
    fmt = (
        "{client_addr}|{client_port}|{method}|{path}|{query}|{protocol}|{http_version}|{scheme}|"
        "{host}|{status:>4}|{bytes}|{duration_us}|{user_agent}|{referer}|{request_id}|{pid}|"
        "{{literal}}"
    )
    with serve(report, access_log=True, access_log_format=fmt) as running:
        with h1_client() as client:
            response = client.get(running.url + "/x/y?q=1", headers={"user-agent": "tester/1"})
        [line] = access.wait()
    fields = line.split("|")
    assert fields[:9] == [
        "127.0.0.1",
        fields[1],
        "GET",
        "/x/y",
        "q=1",
        "HTTP/1.1",
        "1.1",
        "http",
        f"127.0.0.1:{running.port}",
    ]
    assert fields[1].isdigit() and int(fields[1]) > 0
    assert fields[9:12] == [" 200", str(len(response.content)), fields[11]]
    assert 0 < int(fields[11]) < TIMEOUT * 1_000_000
    # Absent values print as "-": no Referer, and --request-id is off.
    assert fields[12:15] == ["tester/1", "-", "-"]
    assert int(fields[15]) > 0
    assert fields[16] == "{literal}"


def test_http2_lines(serve: ServeFn, access: Lines) -> None:
    fmt = "{client} {protocol} {host} {method} {path_query} {status} {bytes}"
    with serve(report, access_log=True, access_log_format=fmt) as running:
        port, headers, body = h2_get(running, b"/h2?z=9")
        assert headers[b":status"] == b"200"
        [line] = access.wait()
    assert line == f"127.0.0.1:{port} HTTP/2 h2.test GET /h2?z=9 200 {len(body)}"


def test_json_lines_hold_every_atom(serve: ServeFn, access: Lines) -> None:
    with serve(report, access_log=True, access_log_json=True, request_id=True) as running:
        with h1_client() as client:
            response = client.get(running.url + "/j?k=v", headers={"referer": "http://r/"})
        [line] = access.wait()
    assert "\n" not in line
    record = json.loads(line)
    assert list(record) == list(ATOMS)
    assert record["time"].endswith("Z") and record["time"][4] == "-"
    assert record["client"] == f"127.0.0.1:{record['client_port']}"
    assert (record["method"], record["path"], record["query"]) == ("GET", "/j", "k=v")
    assert (record["path_query"], record["protocol"]) == ("/j?k=v", "HTTP/1.1")
    assert (record["status"], record["bytes"]) == (200, len(response.content))
    assert isinstance(record["duration_ms"], float) and isinstance(record["duration_us"], int)
    assert record["referer"] == "http://r/"
    assert record["request_id"] == response.headers["x-request-id"]
    assert record["user_agent"].startswith("python-httpx/")


def test_json_absent_values_are_null(serve: ServeFn, access: Lines) -> None:
    with serve(report, access_log=True, access_log_json=True) as running:
        exchange(running, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        [line] = access.wait()
    record = json.loads(line)
    assert (record["user_agent"], record["referer"], record["request_id"]) == (None, None, None)


def test_access_log_off_logs_nothing(serve: ServeFn, access: Lines) -> None:
    with serve(report, access_log=False) as running, h1_client() as client:
        assert client.get(running.url + "/").status_code == 200
        assert client.get(running.url + "/").status_code == 200
    assert access.lines == []


# -- escaping (log forging, uvicorn CVE-2020-7694) -------------------------------------------


def test_http1_values_are_escaped(serve: ServeFn, access: Lines) -> None:
    fmt = '"{path_query}" "{user_agent}" "{referer}"'
    # llhttp refuses CR, LF, NUL, other controls and DEL in the head; obs-text (0x80-0xFF),
    # quotes and backslashes get through, and percent-encoding can spell anything.
    request = (
        b'GET /a%0d%0aINFO:%20forged%1b[2J"q\\?v="x"%0a HTTP/1.1\r\n'
        b"Host: h\r\n"
        b'User-Agent: caf\xe9 "quoted" back\\slash \xff\r\n'
        b"Referer: \x80\x9b[31m\r\n"
        b"Connection: close\r\n\r\n"
    )
    with serve(report, access_log=True, access_log_format=fmt) as running:
        _, response = exchange(running, request)
        assert response.startswith(b"HTTP/1.1 200 "), response
        [line] = access.wait()
    assert line == (
        r'"/a%0d%0aINFO:%20forged%1b[2J\"q\\?v=\"x\"%0a" '
        r'"caf\xe9 \"quoted\" back\\slash \xff" "\x80\x9b[31m"'
    )
    assert line.isprintable() and line.isascii()


def test_http2_control_characters_are_escaped(serve: ServeFn, access: Lines) -> None:
    # HTTP/2 carries header values as bytes: ESC and DEL reach the server there.
    fmt = "{path_query} {user_agent} {referer} {host}"
    headers = ((b"user-agent", b"\x1b]0;owned\x07\x1b[2J\x7f"), (b"referer", b"a\x1bb"))
    with serve(report, access_log=True, access_log_format=fmt) as running:
        _, response, _ = h2_get(running, b"/p?q=\x1b[1m", headers, b"h\x1b\xe9")
        assert response[b":status"] == b"200"
        [line] = access.wait()
    assert line == r"/p?q=\x1b[1m \x1b]0;owned\x07\x1b[2J\x7f a\x1bb h\x1b\xe9"


# -- request ids --------------------------------------------------------------------------------


def test_request_id_is_off_by_default(serve: ServeFn) -> None:
    with serve(report) as running, h1_client() as client:
        response = client.get(running.url + "/", headers={"x-request-id": "from-client"})
    assert "x-request-id" not in response.headers
    seen = response.json()
    assert seen["state"] == {"db": "connected"}  # only what lifespan put there
    assert seen["header"] == ["from-client"]  # the header itself goes through untouched


def test_request_id_made_passed_echoed_and_logged(serve: ServeFn, access: Lines) -> None:
    fmt = "{request_id} {path}"
    with serve(report, request_id=True, access_log=True, access_log_format=fmt) as running:
        with h1_client() as client:
            first = client.get(running.url + "/one")
            second = client.get(running.url + "/two")
        lines = access.wait(2)
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(HEX_ID.fullmatch(rid) for rid in ids) and ids[0] != ids[1]
    for rid, response in zip(ids, (first, second), strict=True):
        seen = response.json()
        # ASGI: in the scope's state (request.state.request_id in Starlette), beside the
        # lifespan state, whose own dict stays untouched; and as the header.
        assert seen["state"] == {"db": "connected", "request_id": rid}
        assert seen["header"] == [rid]
    assert lines == [f"{ids[0]} /one", f"{ids[1]} /two"]


@pytest.mark.parametrize(
    "incoming",
    ["abc-DEF.123:456_7", "x", "A" * 200],
    ids=["punctuation", "one-char", "200-chars"],
)
def test_well_formed_incoming_id_is_kept(serve: ServeFn, incoming: str) -> None:
    with serve(report, request_id=True) as running, h1_client() as client:
        response = client.get(running.url + "/", headers={"X-Request-ID": incoming})
    assert response.headers["x-request-id"] == incoming
    assert response.json() == {
        "state": {"db": "connected", "request_id": incoming},
        "header": [incoming],
    }


@pytest.mark.parametrize(
    "incoming",
    [
        [("X-Request-ID", "A" * 201)],
        [("X-Request-ID", "has space")],
        [("X-Request-ID", "semi;colon")],
        [("X-Request-ID", "")],
        [("X-Request-ID", "caf\xe9")],
        [("X-Request-ID", "one"), ("X-Request-ID", "two")],
    ],
    ids=["201-chars", "space", "semicolon", "empty", "non-ascii", "twice"],
)
def test_malformed_incoming_id_is_replaced(serve: ServeFn, incoming: list[tuple[str, str]]) -> None:
    with serve(report, request_id=True) as running, h1_client() as client:
        headers = [(k.encode(), v.encode("latin-1")) for k, v in incoming]
        response = client.get(running.url + "/", headers=headers)
    rid = response.headers["x-request-id"]
    assert HEX_ID.fullmatch(rid), rid
    # The app sees the replacement only, never the client's value beside it.
    assert response.json() == {"state": {"db": "connected", "request_id": rid}, "header": [rid]}


def test_request_id_for_wsgi(serve: ServeFn) -> None:
    with serve(wsgi_report, request_id=True) as running, h1_client() as client:
        made = client.get(running.url + "/")
        kept = client.get(running.url + "/", headers={"x-request-id": "wsgi-1"})
    rid = made.headers["x-request-id"]
    assert HEX_ID.fullmatch(rid)
    assert made.json() == {"threshold.request_id": rid, "HTTP_X_REQUEST_ID": rid}
    assert kept.headers["x-request-id"] == "wsgi-1"
    assert kept.json() == {"threshold.request_id": "wsgi-1", "HTTP_X_REQUEST_ID": "wsgi-1"}


def test_request_id_over_http2(serve: ServeFn, access: Lines) -> None:
    fmt = "{protocol} {request_id}"
    with serve(report, request_id=True, access_log=True, access_log_format=fmt) as running:
        _, made, body = h2_get(running, b"/")
        _, kept, _ = h2_get(running, b"/", ((b"x-request-id", b"h2-id"),))
        lines = access.wait(2)
    rid = made[b"x-request-id"].decode()
    assert HEX_ID.fullmatch(rid)
    assert json.loads(body)["state"]["request_id"] == rid
    assert kept[b"x-request-id"] == b"h2-id"
    assert lines == [f"HTTP/2 {rid}", "HTTP/2 h2-id"]


def test_app_chosen_response_id_is_not_doubled(serve: ServeFn) -> None:
    with serve(report, request_id=True) as running:
        _, response = exchange(
            running, b"GET /own-id HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        _, h2_headers, _ = h2_get(running, b"/own-id")
    head = response.split(b"\r\n\r\n", 1)[0].lower()
    assert head.count(b"x-request-id:") == 1 and b"x-request-id: chosen-by-app" in head
    assert h2_headers[b"x-request-id"] == b"chosen-by-app"


def test_error_response_carries_the_id(serve: ServeFn, access: Lines) -> None:
    with serve(
        report, request_id=True, access_log=True, access_log_format="{status} {request_id}"
    ) as running:
        with h1_client() as client:
            response = client.get(running.url + "/boom", headers={"x-request-id": "trace-me"})
        [line] = access.wait()
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "trace-me"
    assert line == "500 trace-me"


# -- configuration errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--access-log-format", "{client} {nope}"], "access_log_format: unknown atom {nope}"),
        (["--access-log-format", "{status:q}"], "access_log_format: '{status:q}' cannot be"),
        (["--log-config", "absent.json"], "log_config: cannot read absent.json"),
        (["--log-config", "logging.yaml"], "log_config: logging.yaml: expected a .json or .toml"),
    ],
    ids=["unknown-atom", "bad-spec", "missing-file", "extension"],
)
def test_bad_logging_options_exit_2(args: list[str], message: str) -> None:
    with ServerProcess.threshold(APP, "-b", "127.0.0.1:0", *args) as proc:
        assert proc.wait() == 2
    assert f"threshold: error: {message}" in proc.text, proc.text
    assert "Traceback" not in proc.text


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.json", "{not json", "is not valid JSON"),
        ("bad.toml", "version = ", "is not valid TOML"),
        ("noversion.json", '{"loggers": {}}', "not a logging dictConfig (it needs version = 1)"),
        (
            "badclass.toml",
            'version = 1\n[handlers.h]\nclass = "no.such.Handler"\n',
            "Unable to configure handler 'h' (Cannot resolve 'no.such.Handler'",
        ),
    ],
)
def test_unusable_log_config_exits_2(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with ServerProcess.threshold(APP, "-b", "127.0.0.1:0", "--log-config", str(path)) as proc:
        assert proc.wait() == 2
    assert "threshold: error: log_config: " in proc.text and message in proc.text, proc.text
    assert "Listening on" not in proc.text


# -- files, rotation, --log-config (subprocesses) ---------------------------------------------


def get_ok(url: str) -> None:
    response = httpx.get(url, timeout=TIMEOUT)
    assert response.status_code == 200, response


def test_access_and_error_log_files(tmp_path: Path) -> None:
    access_file, error_file = tmp_path / "access.log", tmp_path / "error.log"
    # Our own listening socket: requests wait in its backlog, no stderr line is needed.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        args = ["-b", f"fd://{sock.fileno()}", "--access-log-file", str(access_file)]
        args += ["--error-log-file", str(error_file)]
        with ServerProcess.threshold(APP, *args, pass_fds=(sock.fileno(),)) as proc:
            get_ok(url + "/to-the-file")
            proc.signal(signal.SIGTERM)
            assert proc.wait() == 0
    assert proc.text == ""  # nothing on stderr
    access_lines = access_file.read_text().splitlines()
    assert len(access_lines) == 1
    assert re.search(
        r'INFO: 127\.0\.0\.1:\d+ "GET /to-the-file HTTP/1\.1" 200 14 ', access_lines[0]
    )
    errors = error_file.read_text()
    assert "INFO: Listening on http://127.0.0.1:" in errors and "INFO: Stopped" in errors
    assert "/to-the-file" not in errors


def test_usr1_reopens_the_access_log_after_rotation(tmp_path: Path) -> None:
    current, rotated = tmp_path / "access.log", tmp_path / "access.log.1"
    with ServerProcess.threshold(
        APP, "-b", "127.0.0.1:0", "--access-log-file", str(current), "--access-log-json"
    ) as proc:
        url = proc.listening()
        get_ok(url + "/before")
        current.rename(rotated)
        get_ok(url + "/still-old")  # the open file follows the rename
        proc.signal(signal.SIGUSR1)
        proc.wait_for(r"INFO: Reopened 1 log file\(s\)$")
        get_ok(url + "/after")
    paths = [
        [json.loads(line)["path"] for line in f.read_text().splitlines()]
        for f in (rotated, current)
    ]
    assert paths == [["/before", "/still-old"], ["/after"]]


def test_usr1_reaches_the_workers(tmp_path: Path) -> None:
    current, rotated = tmp_path / "access.log", tmp_path / "access.log.1"
    args = ["-b", "127.0.0.1:0", "-w", "2", "--access-log-file", str(current)]
    args += ["--access-log-format", "{pid} {path}"]
    with ServerProcess.threshold(APP, *args) as proc:
        url = proc.listening()
        proc.wait_for(r"Worker \d+ ready", count=2)
        for _ in range(4):
            get_ok(url + "/before")
        current.rename(rotated)
        proc.signal(signal.SIGUSR1)
        proc.wait_for(r"INFO: Reopened 1 log file\(s\)$", count=3)  # the master and 2 workers
        for _ in range(4):
            get_ok(url + "/after")
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0
    old = [line.rsplit(" ", 1)[1] for line in rotated.read_text().splitlines()]
    new = [line.rsplit(" ", 1)[1] for line in current.read_text().splitlines()]
    assert (old, new) == (["/before"] * 4, ["/after"] * 4)


def test_log_config_toml_with_usr1_rotation(tmp_path: Path) -> None:
    errors, rotated = tmp_path / "errors.log", tmp_path / "errors.log.1"
    access_file = tmp_path / "access.log"
    config = tmp_path / "logging.toml"
    config.write_text(
        f"""
version = 1
[formatters.bare]
format = "%(name)s %(message)s"
[handlers.errors]
class = "logging.FileHandler"
filename = {json.dumps(str(errors))}
formatter = "bare"
[handlers.stderr]
class = "logging.StreamHandler"
formatter = "bare"
[handlers.access]
class = "logging.FileHandler"
filename = {json.dumps(str(access_file))}
formatter = "bare"
[loggers.threshold]
level = "INFO"
handlers = ["errors", "stderr"]
propagate = false
[loggers."threshold.access"]
level = "INFO"
handlers = ["access"]
propagate = false
"""
    )
    with ServerProcess.threshold(APP, "-b", "127.0.0.1:0", "--log-config", str(config)) as proc:
        url = proc.listening()
        assert re.search(r"^threshold\.error Listening on ", proc.text, re.M), proc.text
        get_ok(url + "/x")
        errors.rename(rotated)
        proc.signal(signal.SIGUSR1)
        proc.wait_for(r"^threshold\.error Reopened 2 log file\(s\)$")
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0
    assert "Listening on" in rotated.read_text() and "Stopped" not in rotated.read_text()
    assert errors.read_text().splitlines() == [
        "threshold.error Reopened 2 log file(s)",
        "threshold.error Shutting down",
        "threshold.error Stopped",
    ]
    [line] = access_file.read_text().splitlines()
    assert re.fullmatch(
        r'threshold\.access 127\.0\.0\.1:\d+ "GET /x HTTP/1\.1" 200 14 \d+\.\dms', line
    )


def test_log_config_json_leaves_levels_and_handlers_to_the_file(tmp_path: Path) -> None:
    config = tmp_path / "logging.json"
    config.write_text(
        json.dumps(
            {
                "version": 1,
                "formatters": {"bare": {"format": "custom: %(message)s"}},
                "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "bare"}},
                "loggers": {
                    "threshold": {"level": "WARNING", "handlers": ["out"], "propagate": False},
                    "threshold.access": {"level": "INFO"},
                },
            }
        )
    )
    # --log-level info would show "Listening on": the file's WARNING wins.
    args = ["--log-config", str(config), "--log-level", "debug"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        args += ["-b", f"fd://{sock.fileno()}"]
        with ServerProcess.threshold(APP, *args, pass_fds=(sock.fileno(),)) as proc:
            get_ok(url + "/logged")
            proc.wait_for(r'^custom: 127\.0\.0\.1:\d+ "GET /logged HTTP/1\.1" 200 14 ')
            proc.signal(signal.SIGTERM)
            assert proc.wait() == 0
    assert "Listening" not in proc.text and "Stopped" not in proc.text, proc.text
    assert all(line.startswith("custom: ") for line in proc.lines), proc.text
