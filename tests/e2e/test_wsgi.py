"""The WSGI interface end to end (PEP 3333), over real sockets.

Every app is served behind ``wsgiref.validate.validator`` and the validator's
warnings are errors, so each request here also passes the reference checker. The
validator runs in the server's worker thread: a complaint there becomes a logged
500, which the autouse ``server_log`` fixture turns into a failed test (tests that
expect an app error take their records out of it first).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from wsgiref.validate import WSGIWarning, validator

import httpx
import pytest

from tests.apps import wsgi_apps
from tests.apps.wsgi_apps import CHUNK
from tests.conftest import Running

pytestmark = pytest.mark.filterwarnings("error::wsgiref.validate.WSGIWarning")

TIMEOUT = 10.0
APP_ERROR = "Exception in WSGI application"

ServeWsgi = Callable[..., AbstractContextManager[Running]]


# -- fixtures ------------------------------------------------------------------------


class ServerLog(logging.Handler):
    """Records of threshold's error logger at ERROR and above."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self._lock_records = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_records:
            self.records.append(record)

    def take(self, text: str) -> list[logging.LogRecord]:
        """Remove and return the records whose message contains ``text``."""
        with self._lock_records:
            taken = [r for r in self.records if text in r.getMessage()]
            self.records = [r for r in self.records if r not in taken]
        return taken


@pytest.fixture(autouse=True)
def server_log() -> Iterator[ServerLog]:
    handler = ServerLog()
    logger = logging.getLogger("threshold.error")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
    unexpected = [
        f"{r.getMessage()}: {r.exc_info[1]!r}" if r.exc_info else r.getMessage()
        for r in handler.records
    ]
    assert not unexpected, f"the server logged errors: {unexpected}"


@pytest.fixture
def serve_wsgi(serve: Callable[..., AbstractContextManager[Running]]) -> ServeWsgi:
    """serve_wsgi(app, **options): serve ``validator(app)`` as WSGI."""

    def start(app: Any, **options: Any) -> AbstractContextManager[Running]:
        return serve(validator(app), interface="wsgi", **options)

    return start


def logged_exception(record: logging.LogRecord) -> BaseException:
    assert record.exc_info is not None and record.exc_info[1] is not None
    return record.exc_info[1]


# -- a small raw HTTP/1.1 client --------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool  # the framing said where the body ends, and it all arrived


def request_bytes(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    version: str = "1.1",
    close: bool = True,
) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: test.local"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def read_head(f: BinaryIO) -> tuple[int, dict[str, str]]:
    status_line = f.readline()
    assert status_line.startswith(b"HTTP/1."), status_line
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            return status, headers
        name, _, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        headers[name] = f"{headers[name]},{value.strip()}" if name in headers else value.strip()


def read_chunk(f: BinaryIO) -> bytes | None:
    """One chunk of a chunked body; None for the last chunk; raises EOFError if cut off."""
    size_line = f.readline()
    if not size_line.endswith(b"\r\n"):
        raise EOFError("connection closed inside a chunked body")
    size = int(size_line.split(b";")[0], 16)
    if size == 0:
        if f.readline() != b"\r\n":
            raise EOFError("no end after the last chunk")
        return None
    data = f.read(size)
    if len(data) != size or f.read(2) != b"\r\n":
        raise EOFError("connection closed inside a chunk")
    return data


def read_response(f: BinaryIO, method: str = "GET") -> Response:
    status, headers = read_head(f)
    if method == "HEAD" or status in (204, 304) or status < 200:
        return Response(status, headers, b"", True)
    if headers.get("transfer-encoding") == "chunked":
        parts: list[bytes] = []
        try:
            while (chunk := read_chunk(f)) is not None:
                parts.append(chunk)
        except EOFError:
            return Response(status, headers, b"".join(parts), False)
        return Response(status, headers, b"".join(parts), True)
    if "content-length" in headers:
        length = int(headers["content-length"])
        body = f.read(length)
        return Response(status, headers, body, len(body) == length)
    return Response(status, headers, f.read(), False)


@contextmanager
def connection(running: Running, rcvbuf: int | None = None) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(TIMEOUT)
        sock.connect((running.host, running.port))
        yield sock
    finally:
        sock.close()


def exchange(running: Running, data: bytes, methods: tuple[str, ...] = ("GET",)) -> list[Response]:
    """Send ``data`` (one or more requests) and read one response per method."""
    with connection(running) as sock:
        sock.sendall(data)
        with sock.makefile("rb") as f:
            return [read_response(f, method) for method in methods]


def get_environ(
    running: Running,
    target: str = "/",
    headers: list[tuple[str, str]] | None = None,
    method: str = "GET",
    body: bytes = b"",
    version: str = "1.1",
) -> tuple[dict[str, Any], int]:
    """The environ the app saw (as JSON) and the client's local port."""
    with connection(running) as sock:
        port = sock.getsockname()[1]
        sock.sendall(request_bytes(method, target, headers, body, version))
        with sock.makefile("rb") as f:
            response = read_response(f, method)
    assert response.status == 200, response
    assert response.complete
    return json.loads(response.body), port


def wait_until_settled(read: Callable[[], int], quiet: float = 0.3) -> int:
    """Poll a growing counter until it has not changed for ``quiet`` seconds."""
    deadline = time.monotonic() + TIMEOUT
    last = read()
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError(f"counter still moving after {TIMEOUT}s (at {last})")


# -- the guard itself ------------------------------------------------------------------


def test_validator_warnings_fail_the_request(serve_wsgi: ServeWsgi, server_log: ServerLog) -> None:
    def no_reason_phrase(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200", [("Content-Type", "text/plain")])
        return [b"validator warns about the status"]

    with serve_wsgi(no_reason_phrase) as running:
        response = httpx.get(running.url + "/", timeout=TIMEOUT)
    assert response.status_code == 500
    [record] = server_log.take(APP_ERROR)
    assert isinstance(logged_exception(record), WSGIWarning)


# -- environ --------------------------------------------------------------------------


def test_environ_of_a_get(serve_wsgi: ServeWsgi) -> None:
    with serve_wsgi(wsgi_apps.environ_app) as running:
        environ, client_port = get_environ(running, "/items/42?a=1&b=x%20y")
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/items/42"
    assert environ["QUERY_STRING"] == "a=1&b=x%20y"
    assert environ["SERVER_NAME"] == "127.0.0.1"
    assert environ["SERVER_PORT"] == str(running.port)  # a str (PEP 3333), not an int
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["REMOTE_PORT"] == str(client_port)
    assert environ["HTTP_HOST"] == "test.local"
    assert "CONTENT_LENGTH" not in environ or environ["CONTENT_LENGTH"] in ("", "0")
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi"] == {
        "version": [1, 0],
        "url_scheme": "http",
        "multithread": True,  # default pool of 8 threads
        "multiprocess": False,
        "run_once": False,
        "input_terminated": True,
        "errors_writable": True,
        "file_wrapper": True,
    }


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_request_method(serve_wsgi: ServeWsgi, method: str) -> None:
    with serve_wsgi(wsgi_apps.environ_app) as running:
        environ, _ = get_environ(
            running, "/m", method=method, body=b"x" if method != "GET" else b""
        )
    assert environ["REQUEST_METHOD"] == method


def test_http10_server_protocol(serve_wsgi: ServeWsgi) -> None:
    with serve_wsgi(wsgi_apps.environ_app) as running:
        environ, _ = get_environ(running, "/old", version="1.0")
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.0"


@pytest.mark.parametrize(
    ("target", "script_name", "path_info"),
    [
        ("/mount/users/7", "/mount", "/users/7"),
        ("/mount/", "/mount", "/"),
        ("/mount", "/mount", ""),
        ("/users/7", "/mount", "/users/7"),  # a proxy stripped the prefix already
    ],
)
def test_root_path_splits_script_name_and_path_info(
    serve_wsgi: ServeWsgi, target: str, script_name: str, path_info: str
) -> None:
    with serve_wsgi(wsgi_apps.environ_app, root_path="/mount") as running:
        environ, _ = get_environ(running, target)
    assert environ["SCRIPT_NAME"] == script_name
    assert environ["PATH_INFO"] == path_info


def test_path_info_is_percent_decoded_latin1(serve_wsgi: ServeWsgi) -> None:
    with serve_wsgi(wsgi_apps.environ_app) as running:
        environ, _ = get_environ(running, "/caf%C3%A9/a%20b%2Fc?q=caf%C3%A9")
    # Bytes decoded as latin-1: the app re-encodes with latin-1 and decodes as it likes.
    assert environ["PATH_INFO"] == "/caf\xc3\xa9/a b/c"
    assert environ["PATH_INFO"].encode("latin-1").decode("utf-8") == "/café/a b/c"
    assert environ["QUERY_STRING"] == "q=caf%C3%A9"  # left encoded


def test_content_headers_and_http_headers(serve_wsgi: ServeWsgi) -> None:
    headers = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("X-Dup", "one"),
        ("Accept", "text/html"),
        ("X-Dup", "two"),
        ("X_Spoofed_Header", "evil"),
        ("X-Request-Id", "abc-123"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
    ]
    with serve_wsgi(wsgi_apps.environ_app) as running:
        environ, _ = get_environ(running, "/form", headers, method="POST", body=b"k=v&x=y")
    assert environ["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert environ["CONTENT_LENGTH"] == "7"
    assert "HTTP_CONTENT_TYPE" not in environ
    assert "HTTP_CONTENT_LENGTH" not in environ
    assert environ["HTTP_X_DUP"] == "one,two"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    assert environ["HTTP_ACCEPT"] == "text/html"
    assert environ["HTTP_X_REQUEST_ID"] == "abc-123"
    assert "HTTP_X_SPOOFED_HEADER" not in environ
    assert "evil" not in json.dumps(environ)


@pytest.mark.parametrize(("threads", "multithread"), [(1, False), (4, True)])
def test_multithread_iff_more_than_one_thread(
    serve_wsgi: ServeWsgi, threads: int, multithread: bool
) -> None:
    with serve_wsgi(wsgi_apps.environ_app, threads=threads) as running:
        environ, _ = get_environ(running)
    assert environ["wsgi"]["multithread"] is multithread
    assert environ["wsgi"]["multiprocess"] is False


def test_wsgi_errors_is_writable(serve_wsgi: ServeWsgi, capsys: pytest.CaptureFixture[str]) -> None:
    with serve_wsgi(wsgi_apps.errors_app) as running:
        response = httpx.get(running.url + "/", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.text == "logged"
    err = capsys.readouterr().err
    for line in ("first line", "second line", "third line"):
        assert f"wsgi.errors: {line}\n" in err


def test_environ_from_the_cli(run_process: Callable[..., AbstractContextManager[Running]]) -> None:
    args = (
        "tests.apps.wsgi_apps:validated_environ_app",
        "--interface",
        "wsgi",
        "--threads",
        "1",
        "--root-path",
        "/mount",
    )
    env = {"PYTHONWARNINGS": "error::wsgiref.validate.WSGIWarning"}
    with run_process(*args, env=env) as running:
        environ, _ = get_environ(running, "/mount/x?y=1")
    assert environ["SCRIPT_NAME"] == "/mount"
    assert environ["PATH_INFO"] == "/x"
    assert environ["QUERY_STRING"] == "y=1"
    assert environ["SERVER_PORT"] == str(running.port)
    assert environ["wsgi"]["multithread"] is False
    assert environ["wsgi"]["multiprocess"] is False  # a single process, no supervisor
    assert running.process is not None and running.process.returncode == 0
    assert not any(APP_ERROR in line for line in running.log), running.log


# -- wsgi.input -----------------------------------------------------------------------

BODY = b"alpha\nbeta\n\ngamma is a longer line\nno newline at the end"


def expected_calls(mode: str, body: bytes) -> Any:
    """The same calls on io.BytesIO, the reference file object."""
    ref = io.BytesIO(body)

    def t(data: bytes) -> str:
        return data.decode("latin-1")

    calls: list[Any] = []
    if mode == "/read":
        return [t(ref.read()), t(ref.read()), t(ref.read(5)), t(ref.readline())]
    if mode == "/read-none":
        return [t(ref.read(None)), t(ref.read(None))]
    if mode.startswith("/readlines-"):
        hint = int(mode.rsplit("-", 1)[1])
        while True:
            lines = ref.readlines(hint)
            calls.append([t(line) for line in lines])
            if not lines:
                return calls
    if mode == "/readlines":
        return [[t(line) for line in ref.readlines()], []]
    if mode.startswith(("/read-", "/readline")):
        size = int(mode.rsplit("-", 1)[1]) if "-" in mode else -1
        step = ref.read if mode.startswith("/read-") else ref.readline
        while True:
            piece = step(size)
            calls.append(t(piece))
            if not piece:
                break
        calls.append(t(step(size)))
        return calls
    if mode == "/iter":
        return [[t(line) for line in ref], []]
    if mode == "/mixed":
        return [
            t(ref.readline()),
            t(ref.read(3)),
            t(ref.readline(2)),
            t(ref.read(0)),
            t(ref.readline()),
            t(ref.read()),
            t(ref.read(1)),
        ]
    raise AssertionError(mode)


INPUT_MODES = [
    "/read",
    "/read-none",
    "/read-1",
    "/read-7",
    "/read-4096",
    "/readline",
    "/readline-1",
    "/readline-4",
    "/readline-100",
    "/readlines",
    "/readlines-1",
    "/readlines-12",
    "/iter",
    "/mixed",
]


def chunked_body(body: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_input_methods_match_a_file(serve_wsgi: ServeWsgi, framing: str) -> None:
    with serve_wsgi(wsgi_apps.input_app) as running, httpx.Client(timeout=TIMEOUT) as client:
        for mode in INPUT_MODES:
            # Chunked in 3-byte pieces: lines and reads straddle chunk boundaries.
            content: Any = BODY if framing == "content-length" else chunked_body(BODY, 3)
            response = client.post(running.url + mode, content=content)
            assert response.status_code == 200, (mode, response.text)
            assert response.json() == expected_calls(mode, BODY), mode


def test_input_of_a_get_is_empty(serve_wsgi: ServeWsgi) -> None:
    with serve_wsgi(wsgi_apps.input_app) as running, httpx.Client(timeout=TIMEOUT) as client:
        for mode in ("/read", "/read-5", "/readline", "/readlines", "/iter"):
            response = client.get(running.url + mode)
            assert response.status_code == 200, (mode, response.text)
            assert response.json() == expected_calls(mode, b""), mode


def test_chunked_upload_is_streamed_not_buffered(serve_wsgi: ServeWsgi) -> None:
    """10 MiB chunked: the app reads a first piece while most of the body is unsent."""
    total = 10 * 1024 * 1024
    payload = os.urandom(total)
    probe = wsgi_apps.UploadProbe()
    sent = 0
    sender_done = threading.Event()
    sender_errors: list[BaseException] = []

    with serve_wsgi(probe) as running, connection(running) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)

        def send() -> None:
            nonlocal sent
            try:
                head = request_bytes("POST", "/upload", [("Transfer-Encoding", "chunked")])
                sock.sendall(head)
                for start in range(0, total, CHUNK):
                    piece = payload[start : start + CHUNK]
                    sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
                    sent += len(piece)
                sock.sendall(b"0\r\n\r\n")
                sender_done.set()
            except BaseException as exc:
                sender_errors.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            assert probe.first_piece.wait(TIMEOUT), "the app never got the first piece"
            # The app holds on to the first piece: the server must stop reading, so the
            # client ends up blocked with most of the body still unsent.
            stalled_at = wait_until_settled(lambda: sent)
            assert not sender_done.is_set()
            assert stalled_at < total // 2, f"server read {stalled_at} bytes ahead of the app"
            probe.release.set()
            with sock.makefile("rb") as f:
                response = read_response(f)
        finally:
            probe.release.set()
            sender.join(TIMEOUT)
    assert not sender_errors
    assert sender_done.is_set()
    assert response.status == 200
    result = json.loads(response.body)
    assert result["total"] == total
    assert result["sha256"] == hashlib.sha256(payload).hexdigest()
    assert result["largest"] <= CHUNK
    assert result["after_end"] == ""


# -- start_response and write() ----------------------------------------------------------


def test_exc_info_replaces_headers_before_the_body(serve_wsgi: ServeWsgi) -> None:
    with serve_wsgi(wsgi_apps.exc_info_before_body) as running:
        response = httpx.get(running.url + "/", timeout=TIMEOUT)
    assert response.status_code == 503
    assert response.headers["x-replaced"] == "yes"
    assert "x-original" not in response.headers
    assert response.text == "replaced response"


def test_exc_info_reraises_after_the_headers_were_sent(
    serve_wsgi: ServeWsgi, server_log: ServerLog
) -> None:
    probe = wsgi_apps.ExcInfoAfterBody()
    with serve_wsgi(probe) as running:
        [response] = exchange(running, request_bytes("GET", "/"))
    assert probe.reraised is True, "start_response(..., exc_info) did not re-raise"
    assert response.status == 200
    assert response.body.startswith(b"headers are out")
    assert b"must never be sent" not in response.body
    assert not response.complete  # aborted: the client can tell the body is cut short
    [record] = server_log.take(APP_ERROR)
    assert str(logged_exception(record)) == "failed after the headers were sent"


def test_start_response_twice_without_exc_info_is_a_500(
    serve_wsgi: ServeWsgi, server_log: ServerLog
) -> None:
    with serve_wsgi(wsgi_apps.start_response_twice) as running:
        response = httpx.get(running.url + "/", timeout=TIMEOUT)
    assert response.status_code == 500
    assert "must not be sent" not in response.text
    [record] = server_log.take(APP_ERROR)
    assert isinstance(logged_exception(record), RuntimeError)


def test_write_callable_mixed_with_iterable(serve_wsgi: ServeWsgi) -> None:
    with serve_wsgi(wsgi_apps.write_then_iterable) as running:
        [response] = exchange(running, request_bytes("GET", "/"))
    assert response.status == 200
    assert response.complete
    assert response.body == b"one,two,three,four"


def test_app_exception_is_a_500_and_the_server_keeps_serving(
    serve_wsgi: ServeWsgi, server_log: ServerLog
) -> None:
    with serve_wsgi(wsgi_apps.crashing_app) as running, httpx.Client(timeout=TIMEOUT) as client:
        boom = client.get(running.url + "/boom")
        after = [client.get(running.url + "/ok") for _ in range(3)]
    assert boom.status_code == 500
    assert "boom from the app" not in boom.text  # no traceback to the client
    assert [r.status_code for r in after] == [200, 200, 200]
    assert all(r.text == "still serving" for r in after)
    [record] = server_log.take(APP_ERROR)
    assert "GET /boom" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[2] is not None  # a traceback
    assert str(logged_exception(record)) == "boom from the app"


# -- streamed bodies and close() -----------------------------------------------------------


def test_generator_is_streamed_chunked(serve_wsgi: ServeWsgi) -> None:
    """PEP 3333: a yielded block is sent before the app is asked for the next one."""
    probe = wsgi_apps.StreamProbe()
    with serve_wsgi(probe) as running, connection(running) as sock:
        sock.settimeout(5.0)
        sock.sendall(request_bytes("GET", "/"))
        with sock.makefile("rb") as f:
            status, headers = read_head(f)
            assert status == 200
            assert headers["transfer-encoding"] == "chunked"
            assert "content-length" not in headers
            # The app is now waiting until we have seen its first block.
            try:
                first = read_chunk(f)
            finally:
                probe.proceed.set()
            assert first == b"first"
            rest = []
            while (chunk := read_chunk(f)) is not None:
                rest.append(chunk)
        assert b"".join(rest) == b"secondthird"
        assert probe.closed.wait(TIMEOUT)


def test_close_is_called_after_a_normal_response(serve_wsgi: ServeWsgi) -> None:
    probe = wsgi_apps.ClosingListProbe()
    with serve_wsgi(probe) as running:
        response = httpx.get(running.url + "/", timeout=TIMEOUT)
        assert probe.closed.wait(TIMEOUT)
    assert response.content == b"abc"


def test_close_is_called_when_the_client_disconnects(serve_wsgi: ServeWsgi) -> None:
    probe = wsgi_apps.EndlessProbe()
    with serve_wsgi(probe) as running:
        with connection(running) as sock:
            sock.sendall(request_bytes("GET", "/"))
            with sock.makefile("rb") as f:
                status, _ = read_head(f)
                assert status == 200
                assert read_chunk(f)
        # Closed with unread data: the server sees a reset mid-stream.
        assert probe.closed.wait(TIMEOUT), "close() was not called after the disconnect"
        assert probe.generator_exit
        # And it is still serving.
        with connection(running) as sock:
            sock.sendall(request_bytes("GET", "/"))
            with sock.makefile("rb") as f:
                assert read_head(f)[0] == 200


def test_close_is_called_when_iteration_raises_before_any_body(
    serve_wsgi: ServeWsgi, server_log: ServerLog
) -> None:
    probe = wsgi_apps.FailingBodyProbe(good=0)
    with serve_wsgi(probe) as running:
        response = httpx.get(running.url + "/", timeout=TIMEOUT)
        assert probe.closed.wait(TIMEOUT)
    assert response.status_code == 500
    [record] = server_log.take(APP_ERROR)
    assert str(logged_exception(record)) == "failed during iteration"


def test_close_is_called_when_iteration_raises_mid_body(
    serve_wsgi: ServeWsgi, server_log: ServerLog
) -> None:
    probe = wsgi_apps.FailingBodyProbe(good=2)
    with serve_wsgi(probe) as running:
        [response] = exchange(running, request_bytes("GET", "/"))
        assert probe.closed.wait(TIMEOUT)
    assert response.status == 200
    assert response.body.startswith(b"good chunk;")
    assert not response.complete
    [record] = server_log.take(APP_ERROR)
    assert str(logged_exception(record)) == "failed during iteration"


# -- wsgi.file_wrapper ---------------------------------------------------------------------


@pytest.mark.parametrize("with_fileno", [True, False], ids=["real-file", "no-fileno"])
def test_file_wrapper(serve_wsgi: ServeWsgi, tmp_path: Path, with_fileno: bool) -> None:
    data = os.urandom(300_001)  # not a multiple of the 8192-byte block size
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    probe = wsgi_apps.FileProbe(str(path), with_fileno)
    with serve_wsgi(probe) as running, httpx.Client(timeout=TIMEOUT) as client:
        first = client.get(running.url + "/file")
        second = client.get(running.url + "/file")  # same connection: framing was exact
    for response in (first, second):
        assert response.status_code == 200
        assert response.headers["content-length"] == str(len(data))
        assert "transfer-encoding" not in response.headers
        assert response.content == data
    assert len(probe.opened) == 2
    assert all(f.closed for f in probe.opened), "file_wrapper did not close the file"


# -- HEAD ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/stream"])
def test_head_sends_no_body(serve_wsgi: ServeWsgi, path: str) -> None:
    requests = request_bytes("HEAD", path, close=False) + request_bytes("GET", path)
    with serve_wsgi(wsgi_apps.head_app) as running:
        head, get = exchange(running, requests, ("HEAD", "GET"))
    # The GET parsing right after the HEAD shows no body bytes followed the HEAD's head.
    assert head.status == 200
    assert get.status == 200
    assert get.complete
    if path == "/":
        assert head.headers["content-length"] == get.headers["content-length"] == "1234"
        assert get.body == b"x" * 1234
    else:
        assert "content-length" not in head.headers
        assert get.headers["transfer-encoding"] == "chunked"
        assert get.body == b"streamed body"
    assert head.headers["content-type"] == get.headers["content-type"] == "text/plain"


# -- backpressure ------------------------------------------------------------------------------


def test_slow_client_pauses_the_app(serve_wsgi: ServeWsgi) -> None:
    """64 MiB to a client that does not read: the generator must be paused, not drained."""
    probe = wsgi_apps.FloodProbe()
    total = probe.CHUNKS * CHUNK
    with serve_wsgi(probe) as running, connection(running, rcvbuf=64 * 1024) as sock:
        sock.sendall(request_bytes("GET", "/"))
        pulled = wait_until_settled(lambda: probe.yielded)
        assert not probe.finished
        # Socket buffers plus a bounded server buffer; far below the 1024 chunks.
        assert pulled < 256, f"{pulled} chunks ({pulled * CHUNK} bytes) pulled from the app"
        with sock.makefile("rb") as f:
            status, headers = read_head(f)
            assert status == 200
            assert headers["content-length"] == str(total)
            received = 0
            while received < total:
                data = f.read(min(1 << 20, total - received))
                if not data:
                    break
                assert data.count(b"f") == len(data)
                received += len(data)
        assert received == total
        assert probe.closed.wait(TIMEOUT)
        assert probe.finished


# -- concurrency -------------------------------------------------------------------------------


def test_threads_serve_requests_in_parallel(serve_wsgi: ServeWsgi) -> None:
    with serve_wsgi(wsgi_apps.sleep_app, threads=4) as running:

        def get(_: int) -> httpx.Response:
            return httpx.get(running.url + "/", timeout=TIMEOUT)

        with ThreadPoolExecutor(4) as pool:
            started = time.monotonic()
            responses = list(pool.map(get, range(4)))
            elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [200] * 4
    assert len({r.text for r in responses}) == 4  # four different worker threads
    # Serial would be 2 s; parallel is ~0.5 s. Loose on purpose: this checks parallelism.
    assert elapsed < 1.5


def test_a_blocked_request_does_not_stop_the_others(serve_wsgi: ServeWsgi) -> None:
    probe = wsgi_apps.BlockProbe()
    with serve_wsgi(probe, threads=2) as running, ThreadPoolExecutor(1) as pool:
        blocked = pool.submit(httpx.get, running.url + "/block", timeout=TIMEOUT)
        try:
            assert probe.entered.wait(TIMEOUT)
            quick = [httpx.get(running.url + "/quick", timeout=5.0) for _ in range(3)]
            assert not blocked.done()
        finally:
            probe.release.set()
        assert blocked.result(TIMEOUT).text == "unblocked"
    assert [r.text for r in quick] == ["quick"] * 3


def test_requests_wait_for_a_free_thread(serve_wsgi: ServeWsgi) -> None:
    """With every thread busy, new connections are accepted and served once one frees up."""
    probe = wsgi_apps.BlockProbe()
    with serve_wsgi(probe, threads=1) as running, ThreadPoolExecutor(2) as pool:
        blocked = pool.submit(httpx.get, running.url + "/block", timeout=TIMEOUT)
        try:
            assert probe.entered.wait(TIMEOUT)
            queued = pool.submit(httpx.get, running.url + "/quick", timeout=TIMEOUT)
            # The loop still answers at the HTTP level while the only thread is busy:
            with connection(running) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\n\r\n")  # no Host: rejected by the loop
                with sock.makefile("rb") as f:
                    assert read_head(f)[0] == 400
            assert not queued.done()
        finally:
            probe.release.set()
        assert blocked.result(TIMEOUT).text == "unblocked"
        assert queued.result(TIMEOUT).text == "quick"
