"""WebSocket end to end: the real server, the `websockets` client and a raw-socket client.

The raw client (``RawWs``) writes frames byte by byte as RFC 6455 section 5 describes, so
fragmentation, bad UTF-8, unanswered pings and unanswered closes can be sent on purpose.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import resource
import select
import signal
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from tests.apps import ws_apps
from tests.conftest import Running
from threshold.stream import ClientDisconnected

Serve = Callable[..., Any]

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RFC_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3 ...
RFC_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # ... and its accept value

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + RFC_KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
)

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# -- a raw WebSocket client ----------------------------------------------------------------


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[bytes, bytes]]  # names lowercased
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n == name]
        assert len(values) <= 1, f"{name!r} sent {len(values)} times"
        return values[0] if values else None


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes
    rsv1: bool = False


def mask(data: bytes, key: bytes) -> bytes:
    if not data or key == b"\0\0\0\0":
        return data
    n = len(data)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def encode_frame(
    opcode: int, payload: bytes, fin: bool = True, key: bytes | None = None, rsv1: bool = False
) -> bytes:
    """A client frame: always masked (section 5.3); a random key unless one is given."""
    key = os.urandom(4) if key is None else key
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    return head + key + mask(payload, key)


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


def expected_accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


class RawWs:
    """A blocking socket speaking the handshake and frames by hand; strict about framing."""

    def __init__(self, running: Running, timeout: float = 5.0, sndbuf: int | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if sndbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((running.host, running.port))
        self.host = f"{running.host}:{running.port}".encode()
        self.buf = bytearray()

    def __enter__(self) -> RawWs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("server closed the connection")
        self.buf += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, rest = bytes(self.buf).partition(b"\r\n")
        self.buf = bytearray(rest)
        return line

    def request(self, data: bytes) -> HttpResponse:
        self.sock.sendall(data)
        return self.read_response()

    def read_response(self) -> HttpResponse:
        status_line = self._line()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        status = int(status_line.split(b" ")[1])
        headers = []
        while line := self._line():
            name, _, value = line.partition(b":")
            headers.append((name.lower(), value.strip()))
        response = HttpResponse(status, headers, b"")
        if status == 101:
            return response
        if response.header(b"transfer-encoding") == b"chunked":
            body = b""
            while size := int(self._line(), 16):
                body += self._take(size)
                assert self._take(2) == b"\r\n"
            assert self._line() == b""
            response.body = body
        else:
            response.body = self._take(int(response.header(b"content-length") or b"0"))
        return response

    def handshake(
        self,
        path: bytes = b"/",
        extra: list[tuple[bytes, bytes]] | None = None,
        *,
        method: bytes = b"GET",
        key: bytes | None = RFC_KEY,
        version: bytes | None = b"13",
    ) -> HttpResponse:
        lines = [
            method + b" " + path + b" HTTP/1.1",
            b"Host: " + self.host,
            b"Upgrade: websocket",
            b"Connection: Upgrade",
        ]
        if key is not None:
            lines.append(b"Sec-WebSocket-Key: " + key)
        if version is not None:
            lines.append(b"Sec-WebSocket-Version: " + version)
        lines += [name + b": " + value for name, value in extra or []]
        return self.request(b"\r\n".join(lines) + b"\r\n\r\n")

    def send(self, opcode: int, payload: bytes, fin: bool = True, rsv1: bool = False) -> None:
        self.sock.sendall(encode_frame(opcode, payload, fin, rsv1=rsv1))

    def recv(self) -> Frame:
        first, second = self._take(2)
        assert not second & 0x80, "server frames must not be masked (RFC 6455 section 5.1)"
        n = second & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._take(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._take(8))
        return Frame(bool(first & 0x80), first & 0x0F, self._take(n), bool(first & 0x40))

    def recv_close(self) -> tuple[int, str]:
        """Skip data and pings until the server's close frame; its (code, reason)."""
        while True:
            frame = self.recv()
            if frame.opcode == CLOSE:
                (code,) = struct.unpack("!H", frame.payload[:2])
                return code, frame.payload[2:].decode()

    def wait_closed(self, timeout: float = 5.0) -> float:
        """Read until the server ends TCP; the seconds it took. Fails if it does not."""
        start = time.monotonic()
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return time.monotonic() - start


def handshake_ok(response: HttpResponse) -> None:
    assert response.status == 101, response
    assert response.header(b"sec-websocket-accept") == expected_accept(RFC_KEY)


@contextmanager
def error_log() -> Iterator[list[logging.LogRecord]]:
    """Records of threshold.error at ERROR and above (the server thread's included)."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.ERROR)
    logger = logging.getLogger("threshold.error")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def ws_url(running: Running, path: str = "/") -> str:
    return f"ws://{running.host}:{running.port}{path}"


def client(running: Running, path: str = "/", **kwargs: Any) -> Any:
    """The websockets asyncio client, with no proxy and no pings of its own."""
    kwargs.setdefault("ping_interval", None)
    kwargs.setdefault("open_timeout", 5)
    return connect(ws_url(running, path), proxy=None, **kwargs)


def run(coro: Any, timeout: float = 15.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def closed_by_server(ws: ClientConnection) -> ConnectionClosed:
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await ws.recv()
    return info.value


# -- the opening handshake -------------------------------------------------------------


def test_handshake_switches_protocols_with_the_rfc_accept_key(serve: Serve) -> None:
    with serve(ws_apps.echo) as running, RawWs(running) as ws:
        response = ws.handshake()
        assert response.status == 101
        assert response.header(b"sec-websocket-accept") == RFC_ACCEPT
        assert response.header(b"upgrade") == b"websocket"
        assert response.header(b"connection") == b"Upgrade"
        assert response.header(b"sec-websocket-protocol") is None  # none offered
        assert response.header(b"sec-websocket-extensions") is None  # none offered
        ws.send(TEXT, b"over the raw socket")
        assert ws.recv() == Frame(True, TEXT, b"over the raw socket")


def test_handshake_accept_key_for_a_random_key(serve: Serve) -> None:
    key = base64.b64encode(os.urandom(16))
    with serve(ws_apps.echo) as running, RawWs(running) as ws:
        response = ws.handshake(key=key)
        assert response.status == 101
        assert response.header(b"sec-websocket-accept") == expected_accept(key)


@pytest.mark.parametrize("version", [None, b"8", b"14"])
def test_unsupported_version_is_426_naming_13(serve: Serve, version: bytes | None) -> None:
    with serve(ws_apps.echo) as running, RawWs(running) as ws:
        response = ws.handshake(version=version)
        assert response.status == 426
        assert response.header(b"sec-websocket-version") == b"13"
        assert response.header(b"connection") == b"close"
        ws.wait_closed()


@pytest.mark.parametrize(
    "key", [None, b"not-base64!", base64.b64encode(b"fifteen bytes!!")], ids=str
)
def test_missing_or_invalid_key_is_400(serve: Serve, key: bytes | None) -> None:
    with serve(ws_apps.echo) as running, RawWs(running) as ws:
        response = ws.handshake(key=key)
        assert response.status == 400
        assert b"Sec-WebSocket-Key" in response.body
        ws.wait_closed()


def test_post_with_upgrade_is_400(serve: Serve) -> None:
    with serve(ws_apps.echo) as running, RawWs(running) as ws:
        response = ws.handshake(method=b"POST", extra=[(b"Content-Length", b"0")])
        assert response.status == 400
        assert b"GET" in response.body


def test_wsgi_app_refuses_websocket_with_a_clear_400(serve: Serve) -> None:
    with serve(ws_apps.wsgi_app) as running:
        with RawWs(running) as ws:
            response = ws.handshake()
            assert response.status == 400
            assert b"WebSocket" in response.body and b"WSGI" in response.body
        with RawWs(running) as plain:  # plain HTTP on the same server still works
            answer = plain.request(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (answer.status, answer.body) == (200, b"plain WSGI")


def test_frames_sent_with_the_handshake_are_kept(serve: Serve) -> None:
    """A client may send frames before it sees the 101; they wait for the accept."""
    app = ws_apps.DelayedAccept()
    with serve(app) as running, RawWs(running) as ws:
        early = encode_frame(TEXT, b"early") + encode_frame(BINARY, b"bird")
        ws.sock.sendall(HANDSHAKE + early)
        assert app.connected.wait(5)
        app.go.set()
        handshake_ok(ws.read_response())
        assert app.outcome.get(timeout=5) is None
        assert ws.recv() == Frame(True, TEXT, b"early")
        assert ws.recv() == Frame(True, BINARY, b"bird")


def flood(sock: socket.socket, data: memoryview, total: int) -> int:
    """Send up to ``total`` bytes of repeated ``data`` without blocking; stop once the
    socket stays unwritable for 0.5 s (the server stopped reading). Bytes sent."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    sent = 0
    while sent < total:
        try:
            sent += sock.send(data[sent % len(data) :][: total - sent])
        except BlockingIOError:
            if not select.select([], [sock], [], 0.5)[1]:
                break
    sock.settimeout(timeout)
    return sent


def test_frames_before_accept_are_bounded_then_delivered(serve: Serve) -> None:
    """A client flooding before the app accepts: held up to a bound, then all delivered."""
    size = 64 * 1024
    frame = encode_frame(BINARY, b"\x5a" * size, key=b"\0\0\0\0")
    app = ws_apps.DelayedAccept()
    with serve(app) as running, RawWs(running, sndbuf=64 * 1024) as ws:
        try:
            ws.sock.sendall(HANDSHAKE)
            assert app.connected.wait(5)
            total = 1024 * len(frame)  # 64 MiB
            sent = flood(ws.sock, memoryview(frame * 16), total)
            assert sent < total, "the server held the whole flood before accept"
        finally:
            app.go.set()
        # The echoes come back while the last frame is completed: send it from a thread.
        rest = frame[sent % len(frame) :] if sent % len(frame) else b""
        sender = threading.Thread(target=ws.sock.sendall, args=(rest,))
        sender.start()
        handshake_ok(ws.read_response())
        for _ in range(-(-sent // len(frame))):
            assert ws.recv() == Frame(True, BINARY, b"\x5a" * size)
        sender.join(5)
        ws.send(TEXT, b"last")
        assert ws.recv() == Frame(True, TEXT, b"last")


def test_client_gone_before_accept(serve: Serve) -> None:
    app = ws_apps.DelayedAccept()
    with error_log() as errors, serve(app) as running:
        with RawWs(running) as ws:
            ws.sock.sendall(HANDSHAKE)
            assert app.connected.wait(5)
        app.go.set()
        assert isinstance(app.outcome.get(timeout=5), ClientDisconnected)
        with RawWs(running) as ws:  # the server carries on
            handshake_ok(ws.handshake())
            ws.send(TEXT, b"next")
            assert ws.recv() == Frame(True, TEXT, b"next")
    assert errors == []


def test_subprotocol_is_the_apps_choice_among_those_offered(serve: Serve) -> None:
    async def main(running: Running) -> None:
        async with client(running, subprotocols=["one", "two"]) as ws:
            assert ws.subprotocol == "two"  # echo picks the last one offered
            assert ws.response.headers.get_all("sec-websocket-protocol") == ["two"]
        async with client(running) as ws:
            assert ws.subprotocol is None
            assert "sec-websocket-protocol" not in ws.response.headers

    with serve(ws_apps.echo) as running:
        run(main(running))
        with RawWs(running) as raw:  # offers in several headers make one list
            extra = [(b"Sec-WebSocket-Protocol", b"a, b"), (b"Sec-WebSocket-Protocol", b"c")]
            response = raw.handshake(extra=extra)
            assert response.status == 101
            assert response.header(b"sec-websocket-protocol") == b"c"


def test_accept_headers_from_the_app_are_sent(serve: Serve) -> None:
    with serve(ws_apps.echo) as running, RawWs(running) as ws:
        response = ws.handshake()
        handshake_ok(response)
        assert response.header(b"x-ws-app") == b"echo"


@pytest.mark.parametrize("root_path", ["", "/api"])
def test_websocket_scope(serve: Serve, root_path: str) -> None:
    path = b"/chat%20room/caf%C3%A9"
    extra = [
        (b"Sec-WebSocket-Protocol", b"chat, superchat"),
        (b"Sec-WebSocket-Protocol", b"v3"),
        (b"X-Custom", b"Mixed Case Value"),
    ]
    with serve(ws_apps.scope_app, root_path=root_path, lifespan="on") as running:
        scopes = []
        for _ in range(2):
            with RawWs(running) as ws:
                handshake_ok(ws.handshake(path + b"?x=1&y=%20", extra))
                frame = ws.recv()
                assert frame.opcode == TEXT
                scopes.append(json.loads(frame.payload))
                client_port = ws.sock.getsockname()[1]
        host = f"{running.host}:{running.port}"
        expected = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "ws",
            "server": ["127.0.0.1", running.port],
            "client": ["127.0.0.1", client_port],
            "root_path": root_path,
            "path": root_path + "/chat room/café",
            "raw_path": root_path + "/chat%20room/caf%C3%A9",
            "query_string": "x=1&y=%20",
            "headers": [
                ["host", host],
                ["upgrade", "websocket"],
                ["connection", "Upgrade"],
                ["sec-websocket-key", RFC_KEY.decode()],
                ["sec-websocket-version", "13"],
                ["sec-websocket-protocol", "chat, superchat"],
                ["sec-websocket-protocol", "v3"],
                ["x-custom", "Mixed Case Value"],
            ],
            "subprotocols": ["chat", "superchat", "v3"],
            # A copy of the lifespan state per connection: the first one's change is unseen.
            "state": {"greeting": "hello", "count": 1},
            "extensions": {"websocket.http.response": {}},
            "first_event": "websocket.connect",
        }
        assert scopes[1] == expected
        assert scopes[0] == {**expected, "client": scopes[0]["client"]}


# -- messages ----------------------------------------------------------------------------------


def test_connect_first_then_messages_then_client_close_code_and_reason(serve: Serve) -> None:
    recorder = ws_apps.Recorder()

    async def main(running: Running) -> None:
        async with client(running) as ws:
            await ws.send("héllo")
            await ws.send(b"\x00\xffbytes")
            await ws.close(4001, "done here")

    with serve(recorder) as running:
        run(main(running))
        events = [recorder.events.get(timeout=5) for _ in range(4)]
    assert events == [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "héllo"},
        {"type": "websocket.receive", "bytes": b"\x00\xffbytes"},
        {"type": "websocket.disconnect", "code": 4001, "reason": "done here"},
    ]


def test_client_vanishing_without_close_is_disconnect_1006(serve: Serve) -> None:
    recorder = ws_apps.Recorder()
    with serve(recorder) as running:
        with RawWs(running) as ws:
            handshake_ok(ws.handshake())
            assert recorder.events.get(timeout=5) == {"type": "websocket.connect"}
        disconnect = recorder.events.get(timeout=5)
    assert disconnect == {"type": "websocket.disconnect", "code": 1006, "reason": ""}


def test_text_and_bytes_both_ways(serve: Serve) -> None:
    async def main(running: Running) -> None:
        async with client(running) as ws:
            for message in ["plain", "ünïcødé ✓ 𝄞", "", b"", b"\x00\x01\x02\xff"]:
                await ws.send(message)
                echoed = await ws.recv()
                assert type(echoed) is type(message)
                assert echoed == message

    with serve(ws_apps.echo) as running:
        run(main(running))


@pytest.mark.parametrize("compression", ["deflate", None])
def test_one_mebibyte_messages_both_ways(serve: Serve, compression: str | None) -> None:
    data = os.urandom(1 << 20)
    text = base64.b64encode(data)[: 1 << 20].decode()

    async def main(running: Running) -> None:
        async with client(running, compression=compression, max_size=4 << 20) as ws:
            await ws.send(data)
            assert await ws.recv() == data
            await ws.send(text)
            assert await ws.recv() == text

    with serve(ws_apps.echo) as running:
        run(main(running))


def test_fragmented_messages_are_reassembled(serve: Serve) -> None:
    text = "héllo wörld".encode()
    with serve(ws_apps.echo) as running, RawWs(running) as ws:
        handshake_ok(ws.handshake())
        # The first fragment ends inside "é"; a ping arrives between fragments (5.4).
        ws.send(TEXT, text[:2], fin=False)
        ws.send(PING, b"between")
        ws.send(CONT, text[2:9], fin=False)
        ws.send(CONT, text[9:])
        assert ws.recv() == Frame(True, PONG, b"between")
        assert ws.recv() == Frame(True, TEXT, text)
        ws.send(BINARY, b"\x00\x01", fin=False)
        ws.send(CONT, b"", fin=False)
        ws.send(CONT, b"\x02")
        assert ws.recv() == Frame(True, BINARY, b"\x00\x01\x02")


@pytest.mark.parametrize(
    "frames",
    [
        [(TEXT, b"abc\xff", True)],
        [(TEXT, b"ab", False), (CONT, b"\xc3\x28", True)],
        [(TEXT, b"\xed\xa0\x80", True)],  # a UTF-16 surrogate, not UTF-8
    ],
    ids=["whole", "fragmented", "surrogate"],
)
def test_invalid_utf8_closes_1007(serve: Serve, frames: list[tuple[int, bytes, bool]]) -> None:
    recorder = ws_apps.Recorder()
    with serve(recorder) as running, RawWs(running) as ws:
        handshake_ok(ws.handshake())
        for opcode, payload, fin in frames:
            ws.send(opcode, payload, fin)
        code, _ = ws.recv_close()
        assert code == 1007
        assert recorder.events.get(timeout=5)["type"] == "websocket.connect"
        assert recorder.events.get(timeout=5) == {
            "type": "websocket.disconnect",
            "code": 1007,
            "reason": "invalid UTF-8 in a text message",
        }


def test_app_close_code_and_reason_reach_the_client(serve: Serve) -> None:
    async def main(running: Running) -> None:
        async with client(running) as ws:
            await ws.send("close 4000 see you later")
            closed = await closed_by_server(ws)
            assert closed.rcvd is not None
            assert (closed.rcvd.code, closed.rcvd.reason) == (4000, "see you later")

    with serve(ws_apps.echo) as running:
        run(main(running))


@pytest.mark.parametrize("wait_disconnect", [True, False], ids=["after-disconnect", "missed"])
def test_send_after_disconnect_raises_and_server_carries_on(
    serve: Serve, wait_disconnect: bool
) -> None:
    app = ws_apps.SendAfterDisconnect(wait_disconnect)
    with error_log() as errors, serve(app) as running:
        for _ in range(2):  # the second connection shows the server carried on
            with RawWs(running) as ws:
                handshake_ok(ws.handshake())
                assert app.accepted.wait(5)
                app.accepted.clear()
                if wait_disconnect:
                    ws.send(CLOSE, close_payload(1000))
                    assert ws.recv_close() == (1000, "")
            error = app.errors.get(timeout=5)
            assert isinstance(error, ClientDisconnected)
            assert isinstance(error, OSError)
    assert errors == []


# -- refusing the handshake ----------------------------------------------------------------


def test_close_before_accept_is_403(serve: Serve) -> None:
    with serve(ws_apps.close_before_accept) as running, RawWs(running) as ws:
        response = ws.handshake()
        assert response.status == 403
        assert response.header(b"sec-websocket-accept") is None
        ws.wait_closed()


def test_denial_response_is_sent_as_http(serve: Serve) -> None:
    with serve(ws_apps.deny_with_response) as running, RawWs(running) as ws:
        response = ws.handshake()
        assert response.status == 401
        assert response.header(b"content-type") == b"text/plain"
        assert response.header(b"www-authenticate") == b"Bearer"
        assert response.header(b"sec-websocket-accept") is None
        assert response.body == b"no token"
        ws.wait_closed()


def test_exception_before_accept_is_500(serve: Serve) -> None:
    with error_log() as errors, serve(ws_apps.fail_before_accept) as running, RawWs(running) as ws:
        assert ws.handshake().status == 500
        ws.wait_closed()
    assert [r.exc_info[1].args for r in errors if r.exc_info and r.exc_info[1]] == [
        ("boom before accept",)
    ]


def test_exception_after_accept_closes_1011(serve: Serve) -> None:
    async def main(running: Running) -> None:
        async with client(running) as ws:
            await ws.send("trigger")
            closed = await closed_by_server(ws)
            assert closed.rcvd is not None
            assert closed.rcvd.code == 1011

    with error_log() as errors, serve(ws_apps.fail_after_accept) as running:
        run(main(running))
    assert len(errors) == 1
    assert "Exception in ASGI application" in errors[0].getMessage()


def test_return_without_accept_or_close_is_500_and_logged(serve: Serve) -> None:
    with (
        error_log() as errors,
        serve(ws_apps.return_without_accept) as running,
        RawWs(running) as ws,
    ):
        assert ws.handshake().status == 500
    assert ["without accepting" in r.getMessage() for r in errors] == [True]


# -- limits ----------------------------------------------------------------------------------


def test_message_over_ws_max_message_size_closes_1009(serve: Serve) -> None:
    async def main(running: Running) -> None:
        async with client(running, compression=None) as ws:
            await ws.send(b"x" * 1024)  # at the limit: fine
            assert await ws.recv() == b"x" * 1024
            await ws.send(b"x" * 1025)
            closed = await closed_by_server(ws)
            assert closed.rcvd is not None
            assert closed.rcvd.code == 1009

    with serve(ws_apps.echo, ws_max_message_size=1024) as running:
        run(main(running))


def deflate(data: bytes) -> bytes:
    """A permessage-deflate payload (RFC 7692 section 7.2.1): raw deflate, no tail."""
    compressor = zlib.compressobj(wbits=-15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def inflate(payload: bytes) -> bytes:
    return zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff")


def test_compressed_message_is_limited_after_decompression(serve: Serve) -> None:
    limit = 1 << 20
    offer = [(b"Sec-WebSocket-Extensions", b"permessage-deflate")]
    with serve(ws_apps.echo, ws_max_message_size=limit) as running, RawWs(running) as ws:
        response = ws.handshake(extra=offer)
        handshake_ok(response)
        assert response.header(b"sec-websocket-extensions") == b"permessage-deflate"
        small = b"\0" * (limit // 2)
        ws.send(BINARY, deflate(small), rsv1=True)
        frame = ws.recv()
        assert (frame.opcode, frame.rsv1) == (BINARY, True)
        assert inflate(frame.payload) == small
        # A zip bomb: 64 MiB of zeros in well under the limit on the wire.
        bomb = deflate(b"\0" * (64 << 20))
        assert len(bomb) < limit // 8
        ws.send(BINARY, bomb, rsv1=True)
        assert ws.recv_close()[0] == 1009


@pytest.mark.parametrize("enabled", [True, False])
def test_per_message_deflate_negotiation(serve: Serve, enabled: bool) -> None:
    async def main(running: Running) -> None:
        async with client(running) as ws:  # the websockets client offers it by default
            header = ws.response.headers.get("sec-websocket-extensions")
            if enabled:
                assert header is not None and header.startswith("permessage-deflate")
                assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
            else:
                assert header is None
                assert ws.protocol.extensions == []
            await ws.send("a" * 10_000)
            assert await ws.recv() == "a" * 10_000

    with serve(ws_apps.echo, ws_per_message_deflate=enabled) as running:
        run(main(running))


def test_ws_max_queue_bounds_what_the_server_buffers(serve: Serve) -> None:
    """An app that does not read while the client floods: the server stops reading."""
    max_queue = 4
    size = 64 * 1024
    planned = 1024  # 64 MiB: far more than the kernel buffers on both sides hold
    frame = encode_frame(BINARY, b"\x5a" * size, key=b"\0\0\0\0")
    app = ws_apps.SlowReader()
    with serve(app, ws_max_queue=max_queue) as running, RawWs(running, sndbuf=64 * 1024) as ws:
        handshake_ok(ws.handshake())
        sock = ws.sock
        total = planned * len(frame)
        view = memoryview(frame * 16)  # 1 MiB of frames per send call
        try:
            sent = flood(sock, view, total)
            assert sent < total, "the server read the whole flood into memory"
            buffered = app.session_queue_length()
        finally:
            app.go.set()  # once the app reads, everything arrives, in full
        # Reading pauses once max_queue is reached, after the read that reached it: that
        # read (<= 256 KiB) may complete one message begun before it and 4 more.
        assert buffered <= max_queue + 1 + 256 * 1024 // size, buffered
        print(f"\nflood stalled after {sent / 2**20:.1f} MiB; server queue {buffered} messages")
        while sent < total:
            sent += sock.send(view[sent % len(view) :][: total - sent])
        ws.send(TEXT, b"end")
        assert ws.recv() == Frame(True, TEXT, f"{planned} {planned * size}".encode())


def test_ping_drops_a_silent_peer_and_keeps_a_live_one(serve: Serve) -> None:
    pings: list[str] = []

    class PingLog(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("< PING"):
                pings.append(record.getMessage())

    live_logger = logging.getLogger("test.ws.live")
    live_logger.setLevel(logging.DEBUG)
    live_logger.propagate = False
    live_logger.addHandler(PingLog())

    def silent_peer(running: Running) -> tuple[Frame, float]:
        with RawWs(running, timeout=10) as ws:
            handshake_ok(ws.handshake())
            start = time.monotonic()
            ping = ws.recv()  # never answered
            ws.wait_closed(timeout=6)
            return ping, time.monotonic() - start

    async def main(running: Running) -> None:
        async with client(running, logger=live_logger) as live:
            ping, dropped_after = await asyncio.to_thread(silent_peer, running)
            assert ping.opcode == PING
            assert dropped_after < 5
            assert pings, "the live client was never pinged"
            assert live.state is State.OPEN
            await live.send("still here")
            assert await live.recv() == "still here"

    with serve(ws_apps.echo, ws_ping_interval=1, ws_ping_timeout=1) as running:
        run(main(running))


# -- shutdown (subprocess) -------------------------------------------------------------------


def test_sigterm_closes_websockets_with_1001_and_exits_0(run_process: Callable[..., Any]) -> None:
    async def main(running: Running, proc: Any) -> float:
        clients = [await client(running) for _ in range(3)]
        for ws in clients:
            await ws.send("ready?")
            assert await ws.recv() == "ready?"
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for ws in clients:
            closed = await closed_by_server(ws)
            assert closed.rcvd is not None
            assert closed.rcvd.code == 1001
        await asyncio.to_thread(proc.wait, 10)
        return time.monotonic() - start

    args = ["tests.apps.ws_apps:echo", "--timeout-graceful-shutdown", "10"]
    with run_process(*args) as running:
        elapsed = run(main(running, running.process))
        assert running.process.returncode == 0
        assert elapsed < 5
        assert not any("still busy" in line for line in running.log)


def test_unanswered_close_at_shutdown_is_aborted_after_ws_close_timeout(
    run_process: Callable[..., Any],
) -> None:
    args = [
        "tests.apps.ws_apps:echo",
        "--timeout-graceful-shutdown",
        "20",
        "--ws-close-timeout",
        "1",
    ]
    with run_process(*args) as running, RawWs(running, timeout=10) as ws:
        handshake_ok(ws.handshake())
        proc = running.process
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert ws.recv_close() == (1001, "server shutting down")
        ws.wait_closed(timeout=8)  # never answered: the server gives up
        dropped = time.monotonic() - start
        assert proc.wait(10) == 0
        assert 0.9 < dropped < 4, dropped  # ws_close_timeout, not the graceful timeout
        assert not any("still busy" in line for line in running.log)


# -- scale -------------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def open_raw(running: Running, n: int) -> list[tuple[Any, Any]]:
    request = (
        f"GET /idle HTTP/1.1\r\nHost: {running.host}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()

    async def one() -> tuple[Any, Any]:
        reader, writer = await asyncio.open_connection(running.host, running.port)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        return reader, writer

    conns: list[tuple[Any, Any]] = []
    for start in range(0, n, 100):
        conns += await asyncio.gather(*(one() for _ in range(min(100, n - start))))
    return conns


def test_thousand_idle_websockets_memory(run_process: Callable[..., Any]) -> None:
    count = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 3 * count:
        wanted = 3 * count if hard == resource.RLIM_INFINITY else min(3 * count, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))

    async def main(running: Running, pid: int) -> float:
        warm = await open_raw(running, 50)  # code paths and allocator pools warmed
        before = rss_kib(pid)
        conns = await open_raw(running, count)
        after = rss_kib(pid)
        for reader, writer in (conns[0], conns[-1]):  # all held, and still served
            writer.write(encode_frame(TEXT, b"alive?"))
            assert await reader.readexactly(8) == b"\x81\x06alive?"
        for _, writer in warm + conns:
            writer.close()
        return (after - before) / count

    with run_process("tests.apps.ws_apps:echo", "--no-access-log") as running:
        per_conn = run(main(running, running.process.pid), timeout=30)
    print(f"\nRSS per idle WebSocket connection: {per_conn:.1f} KiB")
    assert per_conn < 64


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_echo_at_every_length_encoding(serve: Serve, compression: str | None) -> None:
    """Payload lengths on both sides of the 7-bit, 16-bit and 64-bit length forms, text
    and binary, with and without permessage-deflate (which websockets frames itself)."""
    sizes = [0, 1, 125, 126, 127, 65535, 65536, 70000]

    async def main(running: Running) -> None:
        async with client(running, compression=compression, max_size=None) as ws:
            sent: list[str | bytes] = []
            for size in sizes:
                sent.append(os.urandom(size))  # bytes
                sent.append("é" * (size // 2) + "x" * (size % 2))  # str, multi-byte UTF-8
            for message in sent:
                await ws.send(message)
            for message in sent:
                assert await ws.recv() == message

    with serve(ws_apps.echo) as running:
        run(main(running))
