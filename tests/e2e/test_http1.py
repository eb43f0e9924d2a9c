"""HTTP/1.1 end to end: the real server on a loopback port, raw sockets and httpx."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.apps import h1_apps
from tests.apps.h1_apps import CHUNK, BigDownload, DisconnectRecorder, ExpectReader, SlowReader
from tests.conftest import Running

Serve = Callable[..., Any]


# -- a raw HTTP/1.1 client ------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw: bytes  # the response exactly as it came off the wire

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        assert len(values) <= 1, f"{name!r} sent {len(values)} times"
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """A raw socket that reads HTTP/1.1 responses strictly (CRLF, exact framing)."""

    def __init__(self, running: Running, timeout: float = 5.0, rcvbuf: int | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((running.host, running.port))
        self.buf = bytearray()
        self.eof = False

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        assert not self.eof, f"connection closed; unread {bytes(self.buf[:200])!r}"
        data = self.sock.recv(65536)
        if not data:
            self.eof = True
        self.buf += data

    def _take(self, size: int) -> bytes:
        while len(self.buf) < size:
            self._fill()
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        end = self.buf.index(b"\r\n")
        return self._take(end + 2)[:-2]

    def read_response(self, head: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        end = self.buf.index(b"\r\n\r\n") + 4
        raw_head = self._take(end)
        lines = raw_head[:-4].split(b"\r\n")
        version, status, *_ = lines[0].split(b" ", 2)
        assert version == b"HTTP/1.1", lines[0]
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b": ")
            assert sep and name and b" " not in name, f"bad header line {line!r}"
            headers.append((name, value))
        response = Response(int(status), headers, b"", raw_head)
        length = response.header(b"content-length")
        te = response.header(b"transfer-encoding")
        if response.status < 200 or response.status in (204, 304) or head:
            return response
        raw = bytearray()
        if te is not None:
            assert te == b"chunked" and length is None
            data = bytearray()
            while True:
                size_line = self._line()
                size = int(size_line.split(b";")[0], 16)
                chunk = self._take(size + 2)
                assert chunk[-2:] == b"\r\n", "chunk not followed by CRLF"
                raw += size_line + b"\r\n" + chunk
                data += chunk[:-2]
                if size == 0:
                    break
            response.body = bytes(data)
        elif length is not None:
            response.body = self._take(int(length))
            raw += response.body
        else:
            while not self.eof:
                self._fill()
            response.body = bytes(self.buf)
            raw += self.buf
            self.buf.clear()
        response.raw += raw
        return response

    def closed_by_server(self) -> bool:
        """True once the server has closed (EOF within the socket timeout, nothing extra)."""
        try:
            while not self.eof:
                self._fill()
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        assert not self.buf, f"unexpected bytes before close: {bytes(self.buf[:200])!r}"
        return True

    def nothing_to_read(self) -> bool:
        """True if no byte from the server is waiting right now (non-blocking check)."""
        if self.buf:
            return False
        self.sock.setblocking(False)
        try:
            return not self.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(5.0)


def get(path: str, headers: str = "", version: str = "1.1", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/{version}\r\nHost: e2e.test\r\n{headers}\r\n".encode()


@pytest.fixture
def routes(serve: Serve) -> Iterator[Running]:
    with serve(h1_apps.routes) as running:
        yield running


@pytest.fixture
def error_log() -> Iterator[list[logging.LogRecord]]:
    """Records the server's error log (threshold.error, any thread)."""
    records: list[logging.LogRecord] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("threshold.error")
    handler = Recorder(logging.ERROR)
    old_level = logger.level
    logger.setLevel(logging.ERROR)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


# -- connections ------------------------------------------------------------------------


def test_keep_alive_two_requests_on_one_connection(routes: Running) -> None:
    with httpx.Client(base_url=routes.url) as client:
        first = client.get("/scope").json()["values"]
        second = client.get("/scope").json()["values"]
    assert first["client"] == second["client"], "httpx had to open a second connection"
    with Client(routes) as c:
        c.send(get("/hello"))
        assert c.read_response().body == b"Hello, world!"
        c.send(get("/hello"))
        response = c.read_response()
        assert response.body == b"Hello, world!"
        assert response.header(b"connection") is None
        assert c.nothing_to_read()


def test_connection_close_is_honoured(routes: Running) -> None:
    with Client(routes) as c:
        c.send(get("/hello", "Connection: close\r\n") + get("/hello"))
        response = c.read_response()
        assert (response.status, response.header(b"connection")) == (200, b"close")
        assert c.closed_by_server()


def test_http10_closes_by_default(routes: Running) -> None:
    with Client(routes) as c:
        c.send(get("/hello", version="1.0"))
        response = c.read_response()
        assert response.body == b"Hello, world!"
        assert response.header(b"connection") == b"close"
        assert c.closed_by_server()


def test_http10_keep_alive_on_request(routes: Running) -> None:
    with Client(routes) as c:
        for _ in range(2):
            c.send(get("/one-chunk", "Connection: keep-alive\r\n", version="1.0"))
            response = c.read_response()
            assert response.header(b"connection") == b"keep-alive"
            assert response.header(b"content-length") == b"100"
        # A streamed body on 1.0 has no chunked framing: it is delimited by the close.
        c.send(get("/stream", "Connection: keep-alive\r\n", version="1.0"))
        response = c.read_response()
        assert response.body == b"alphabeta-betagamma!"
        assert response.header(b"transfer-encoding") is None
        assert response.header(b"connection") == b"close"
        assert c.eof


def test_pipelined_requests_answered_in_order(routes: Running) -> None:
    with Client(routes) as c:
        c.send(
            get("/scope?n=1")
            + b"POST /echo HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: 5\r\n\r\nhello"
            + get("/scope?n=3")
        )
        first, second, third = c.read_response(), c.read_response(), c.read_response()
        assert first.json()["values"]["query_string"] == "n=1"
        assert second.body == b"hello"
        assert third.json()["values"]["query_string"] == "n=3"
        assert c.nothing_to_read()


def test_idle_connections_closed_after_keep_alive_timeout(serve: Serve) -> None:
    timeout = 1.0
    with (
        serve(h1_apps.routes, keep_alive_timeout=timeout) as running,
        Client(running) as fresh,  # never sends a request
        Client(running) as used,
    ):
        used.send(get("/hello"))
        assert used.read_response().status == 200
        idle_from = time.monotonic()
        assert used.closed_by_server(), "idle keep-alive connection not closed"
        idle = time.monotonic() - idle_from
        assert fresh.closed_by_server(), "idle connection without a request not closed"
    # Checked once a second: the close comes within about a tick after the timeout,
    # never before it.
    assert timeout - 0.05 <= idle <= timeout + 2.5, idle


# -- request and response bodies -------------------------------------------------------


def test_chunked_request_body(routes: Running) -> None:
    with Client(routes) as c:
        c.send(
            b"POST /echo HTTP/1.1\r\nHost: e2e.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'5;ext=1\r\nhello\r\n1\r\n \r\n5;a=b;c="d"\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n'
        )
        response = c.read_response()
        assert response.body == b"hello world"
        assert response.header(b"x-received") == b"11"
        c.send(get("/hello"))  # the connection is still in step
        assert c.read_response().body == b"Hello, world!"


def test_chunked_response_when_the_app_streams(routes: Running) -> None:
    with Client(routes) as c:
        c.send(get("/stream"))
        response = c.read_response()
        assert response.header(b"transfer-encoding") == b"chunked"
        assert response.header(b"content-length") is None
        head_end = response.raw.index(b"\r\n\r\n") + 4
        assert response.raw[head_end:] == (
            b"5\r\nalpha\r\n9\r\nbeta-beta\r\n6\r\ngamma!\r\n0\r\n\r\n"
        ), "an empty app chunk must not be framed (it would end the body)"
        assert c.nothing_to_read()


def test_content_length_added_for_a_single_body_chunk(routes: Running) -> None:
    response = httpx.get(routes.url + "/one-chunk")
    assert response.headers["content-length"] == "100"
    assert "transfer-encoding" not in response.headers
    assert response.content == b"0123456789" * 10


@pytest.mark.parametrize("path", ["/one-chunk", "/stream", "/hello"])
def test_head_has_no_body_and_the_length_of_get(routes: Running, path: str) -> None:
    with Client(routes) as c:
        c.send(get(path, method="HEAD") + get(path))
        head = c.read_response(head=True)
        got = c.read_response()  # parses only if HEAD sent no body bytes
        assert head.status == got.status == 200
        assert head.header(b"content-length") == got.header(b"content-length")
        assert head.header(b"transfer-encoding") is None
        assert got.body
        assert c.nothing_to_read()


def test_expect_100_continue_sent_when_the_app_reads(serve: Serve) -> None:
    app = ExpectReader()
    with serve(app) as running, Client(running) as c:
        c.send(
            b"POST /e HTTP/1.1\r\nHost: e2e.test\r\nExpect: 100-continue\r\n"
            b"Content-Length: 5\r\n\r\n"
        )
        assert app.gate.entered.wait(5)
        assert c.nothing_to_read(), "100 Continue sent before the app read the body"
        app.gate.open()
        interim = c.read_response()
        assert interim.status == 100
        assert interim.raw == b"HTTP/1.1 100 Continue\r\n\r\n"
        c.send(b"hello")
        final = c.read_response()
        assert (final.status, final.body) == (200, b"got hello")
        assert final.header(b"connection") is None  # the connection stays open
        assert c.nothing_to_read()


def test_expect_100_not_sent_when_the_app_never_reads(routes: Running) -> None:
    with Client(routes) as c:
        c.send(
            b"POST /expect-never-reads HTTP/1.1\r\nHost: e2e.test\r\n"
            b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        response = c.read_response()
        assert (response.status, response.body) == (200, b"not reading")
        assert c.closed_by_server(), "the connection must close: the body may or may not follow"


def test_ten_mib_streamed_both_ways(routes: Running) -> None:
    blocks = 160  # 10 MiB in CHUNK-sized blocks

    def upload() -> Iterator[bytes]:
        for i in range(blocks):
            yield h1_apps.pattern(i)

    digest = hashlib.sha256()
    size = 0
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", routes.url + "/echo", content=upload()) as response,
    ):
        assert response.status_code == 200
        assert response.headers["x-received"] == str(blocks * CHUNK)
        assert response.headers["transfer-encoding"] == "chunked"
        for data in response.iter_raw():
            size += len(data)
            digest.update(data)
    expected = hashlib.sha256(b"".join(h1_apps.pattern(i) for i in range(blocks)))
    assert size == blocks * CHUNK
    assert digest.hexdigest() == expected.hexdigest()


def wait_until_stable(read: Callable[[], int], quiet: float = 0.3, limit: float = 5.0) -> int:
    """The value once it has not changed for ``quiet`` seconds (bounded by ``limit``)."""
    deadline = time.monotonic() + limit
    value = read()
    changed = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now_value = read()
        if now_value != value:
            value, changed = now_value, time.monotonic()
        elif time.monotonic() - changed >= quiet:
            return value
    raise AssertionError(f"still changing after {limit}s (at {value})")


def test_slow_client_pauses_the_app(serve: Serve) -> None:
    chunks = 1024  # 64 MiB
    app = BigDownload(chunks)
    with serve(app) as running, Client(running, timeout=10, rcvbuf=64 * 1024) as c:
        c.send(get("/big"))
        sent_while_not_reading = wait_until_stable(lambda: app.sent)
        # Kernel buffers on both ends plus the transport's high-water mark: a few MiB.
        assert sent_while_not_reading < chunks // 4, sent_while_not_reading
        while b"\r\n\r\n" not in c.buf:
            c._fill()
        head_end = c.buf.index(b"\r\n\r\n") + 4
        assert b"content-length: 67108864" in c.buf[:head_end].lower()
        del c.buf[:head_end]
        for i in range(chunks):
            assert c._take(CHUNK) == h1_apps.pattern(i), f"block {i} is wrong"
        assert c.nothing_to_read()


def test_slow_app_pauses_reading_the_request_body(serve: Serve) -> None:
    total = 64 * 1024 * 1024
    piece = b"\xab" * (256 * 1024)
    app = SlowReader()
    with serve(app) as running:
        sock = socket.create_connection((running.host, running.port), timeout=5)
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            sock.sendall(
                f"POST /slow HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: {total}\r\n\r\n".encode()
            )
            assert app.gate.entered.wait(5)
            sock.settimeout(0.5)  # a send that makes no progress for this long is blocked
            sent = 0
            with pytest.raises(TimeoutError):
                while sent < total:
                    sent += sock.send(piece[: min(len(piece), total - sent)])
            # What the client could push while the app read nothing: kernel buffers and
            # the server's per-stream high-water mark, nowhere near the whole body.
            assert sent < total // 4, sent
            app.gate.open()
            sock.settimeout(10)
            while sent < total:
                n = min(len(piece), total - sent)
                sock.sendall(piece[:n])
                sent += n
            reply = b""
            while b"}" not in reply:
                data = sock.recv(65536)
                assert data, "server closed before answering"
                reply += data
    result = json.loads(reply[reply.index(b"\r\n\r\n") + 4 :])
    expected = hashlib.sha256()
    for i in range(0, total, len(piece)):
        expected.update(piece[: min(len(piece), total - i)])
    assert result == {"size": total, "sha256": expected.hexdigest()}


def test_disconnect_delivered_when_the_client_leaves_mid_body(serve: Serve) -> None:
    app = DisconnectRecorder()
    with serve(app) as running:
        with Client(running) as c:
            c.send(b"POST /d HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: 100\r\n\r\n0123456789")
            assert app.first.wait(5)
        assert app.done.wait(5), "the app never saw http.disconnect"
    body = b"".join(m.get("body", b"") for m in app.messages)
    assert body == b"0123456789"
    assert all(m["more_body"] for m in app.messages[:-1])
    assert app.messages[-1] == {"type": "http.disconnect"}


def test_disconnect_delivered_after_the_body_when_the_client_leaves(serve: Serve) -> None:
    app = DisconnectRecorder()
    with serve(app) as running:
        with Client(running) as c:
            c.send(b"POST /d HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: 3\r\n\r\nabc")
            assert app.first.wait(5)
            assert not app.done.is_set()
        assert app.done.wait(5), "the app never saw http.disconnect"
    assert app.messages == [
        {"type": "http.request", "body": b"abc", "more_body": False},
        {"type": "http.disconnect"},
    ]


# -- errors --------------------------------------------------------------------------------


def test_app_exception_before_start_gives_500_and_serving_goes_on(
    routes: Running, error_log: list[logging.LogRecord]
) -> None:
    with Client(routes) as c:
        c.send(get("/error-before-start"))
        response = c.read_response()
        assert response.status == 500
        assert response.header(b"connection") == b"close"
        assert c.closed_by_server()
    assert any(r.exc_info and "boom before start" in str(r.exc_info[1]) for r in error_log)
    assert httpx.get(routes.url + "/hello").status_code == 200


def test_app_exception_after_start_closes_the_connection(
    routes: Running, error_log: list[logging.LogRecord]
) -> None:
    with Client(routes) as c:
        c.send(get("/error-after-start"))
        while not c.eof:
            c._fill()
        data = bytes(c.buf)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(b"7\r\npartial\r\n"), "the body must end truncated, not terminated"
    assert any(r.exc_info and "boom after start" in str(r.exc_info[1]) for r in error_log)
    assert httpx.get(routes.url + "/hello").status_code == 200


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/body-before-start", "before http.response.start"),
        ("/start-twice", "sent twice"),
        ("/no-response", "without starting a response"),
    ],
)
def test_asgi_protocol_violations_give_500(
    routes: Running, error_log: list[logging.LogRecord], path: str, message: str
) -> None:
    with Client(routes) as c:
        c.send(get(path))
        response = c.read_response()
        assert response.status == 500
        assert c.closed_by_server()
    logged = [r.getMessage() + str(r.exc_info and r.exc_info[1]) for r in error_log]
    assert any(message in text for text in logged), logged
    assert httpx.get(routes.url + "/hello").status_code == 200


def test_app_returning_after_start_without_a_body_gives_500(
    routes: Running, error_log: list[logging.LogRecord]
) -> None:
    with Client(routes) as c:
        c.send(get("/no-body"))
        assert c.read_response().status == 500  # the head was never written: a clean 500
        assert c.closed_by_server()
    assert any("without completing" in r.getMessage() for r in error_log)
    assert httpx.get(routes.url + "/hello").status_code == 200


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",  # a TLS ClientHello
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET / HTTP/1.1\nHost: x\n\n",
    ],
)
def test_malformed_request_gives_400_and_close(routes: Running, data: bytes) -> None:
    with Client(routes) as c:
        c.send(data)
        response = c.read_response()
        assert response.status == 400
        assert response.header(b"connection") == b"close"
        assert c.closed_by_server()
    assert httpx.get(routes.url + "/hello").status_code == 200


def test_date_and_server_headers(routes: Running) -> None:
    response = httpx.get(routes.url + "/hello")
    assert response.headers["server"] == "threshold"
    assert response.headers["date"].endswith(" GMT")


def test_date_and_server_headers_can_be_turned_off(serve: Serve) -> None:
    with serve(h1_apps.routes, server_header=False, date_header=False) as running:
        ok = httpx.get(running.url + "/hello")
        bad = raw_response(running, b"GARBAGE\r\n\r\n")
    for headers in (ok.headers, bad.headers):
        assert "server" not in headers
        assert "date" not in headers
    assert (ok.status_code, bad.status) == (200, 400)


def raw_response(running: Running, data: bytes) -> Response:
    with Client(running) as c:
        c.send(data)
        return c.read_response()


def test_request_head_over_the_limit(serve: Serve) -> None:
    limits = {
        "limit_request_line": 1024,
        "limit_request_field_size": 1024,
        "limit_request_fields": 20,
    }
    with serve(h1_apps.routes, **limits) as running:
        long_url = raw_response(running, get("/hello?" + "q" * 2000))
        big_header = raw_response(running, get("/hello", "X-Big: " + "h" * 2000 + "\r\n"))
        many_headers = raw_response(running, get("/hello", "X-Many: 0123456789\r\n" * 100))
        fits = raw_response(
            running,
            get("/hello?" + "q" * 1000, "X-Fits: " + "f" * 1000 + "\r\n" + "X-N: 1\r\n" * 18),
        )
    assert long_url.status == 414
    assert big_header.status == many_headers.status == 431
    for response in (long_url, big_header, many_headers):
        assert response.header(b"connection") == b"close"
    assert fits.status == 200


# -- the ASGI scope --------------------------------------------------------------------------


SCOPE_KEYS = {
    "type",
    "asgi",
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "query_string",
    "root_path",
    "headers",
    "client",
    "server",
    "state",
    "extensions",
}


@pytest.mark.parametrize("root_path", ["", "/mount"])
def test_asgi_scope(serve: Serve, root_path: str) -> None:
    with serve(h1_apps.routes, root_path=root_path, lifespan="on") as running, Client(running) as c:
        c.send(
            f"GET {root_path}/scope?x=1&y=%2F%20 HTTP/1.1\r\nHost: e2e.test\r\n".encode()
            + b"X-Custom-Header: MiXeD Value\r\nx-dup: 1\r\nX-Dup: 2\r\n\r\n"
        )
        response = c.read_response()
        client_port = c.port
    out = response.json()
    scope, types = out["values"], out["types"]
    assert set(scope) <= SCOPE_KEYS and set(SCOPE_KEYS) - set(scope) <= {"extensions"}
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["asgi"]["spec_version"] in ("2.0", "2.1", "2.2", "2.3", "2.4", "2.5")
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert (scope["path"], types["path"]) == (f"{root_path}/scope", "str")
    assert (scope["raw_path"], types["raw_path"]) == (f"{root_path}/scope", "bytes")
    assert (scope["query_string"], types["query_string"]) == ("x=1&y=%2F%20", "bytes")
    assert (scope["root_path"], types["root_path"]) == (root_path, "str")
    assert scope["headers"] == [
        ["host", "e2e.test"],
        ["x-custom-header", "MiXeD Value"],
        ["x-dup", "1"],
        ["x-dup", "2"],
    ]
    assert out["header_types"] == ["tuple bytes bytes"] or out["header_types"] == [
        "list bytes bytes"
    ]
    assert scope["client"] == ["127.0.0.1", client_port]
    assert scope["server"] == ["127.0.0.1", running.port]
    assert types["client"] in ("tuple", "list") and types["server"] in ("tuple", "list")
    assert scope["state"] == {"started": "yes"}


def test_asgi_scope_path_decoding(routes: Running) -> None:
    with Client(routes) as c:
        c.send(get("/scope/%E2%82%AC%20x/%2F/../y?q=%E2%82%AC"))
        scope = c.read_response().json()["values"]
        c.send(get("/sc%6Fpe"))
        unreserved = c.read_response().json()["values"]
    # path is percent-decoded UTF-8 and not normalised; raw_path keeps the bytes as sent.
    assert scope["path"] == "/scope/\u20ac x///../y"
    assert scope["raw_path"] == "/scope/%E2%82%AC%20x/%2F/../y"
    assert scope["query_string"] == "q=%E2%82%AC"
    assert (unreserved["path"], unreserved["raw_path"]) == ("/scope", "/sc%6Fpe")
    http10 = raw_response(routes, get("/scope", version="1.0")).json()["values"]
    assert http10["http_version"] == "1.0"
