"""WSGI streamed request bodies and streamed responses, over real sockets.

Over HTTP/1.1 the app's thread takes body bytes the connection already holds and
writes response blocks to an idle socket itself (no round trip to the loop); these
tests hold what that must not change: every byte arrives once and in order, a slow
client pauses the app rather than growing the server's memory, limits still bite
mid-stream, and a client that leaves frees the app's thread. The key tests run on
both event loops, whose transports buffer writes differently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import struct
import threading
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from tests.conftest import Running
from tests.e2e.test_http2 import h2_client
from tests.e2e.test_wsgi import (
    connection,
    read_chunk,
    read_head,
    read_response,
    request_bytes,
    wait_until_settled,
)

TIMEOUT = 10.0
MIB = 1024 * 1024
BLOCK = 64 * 1024

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
Serve = Callable[..., AbstractContextManager[Running]]

LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def no_server_errors() -> Iterator[None]:
    """A client that leaves is not an error: the server must not log one."""
    handler = ErrorLog()
    logger = logging.getLogger("threshold.error")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not [r.getMessage() for r in handler.records]


@pytest.fixture
def serve_wsgi(serve: Serve) -> Serve:
    def start(app: Any, **options: Any) -> AbstractContextManager[Running]:
        return serve(app, interface="wsgi", **options)

    return start


def query(environ: Environ) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


# -- apps -------------------------------------------------------------------------------


def digest_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Read the body in ``?size=`` pieces; answer with its length, hash and largest piece."""
    size = int(query(environ).get("size", "4096"))
    stream = environ["wsgi.input"]
    digest = hashlib.sha256()
    total = largest = 0
    while piece := stream.read(size):
        digest.update(piece)
        total += len(piece)
        largest = max(largest, len(piece))
    after = stream.read(size)
    body = json.dumps(
        {"total": total, "sha256": digest.hexdigest(), "largest": largest, "after": len(after)}
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def echo_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Yield the body back in ``?size=`` pieces as they are read (chunked, or with the
    request's Content-Length when ``?length=1``)."""
    params = query(environ)
    size = int(params.get("size", "4096"))
    headers = [("Content-Type", "application/octet-stream")]
    if params.get("length"):
        headers.append(("Content-Length", environ["CONTENT_LENGTH"]))
    start_response("200 OK", headers)
    stream = environ["wsgi.input"]
    return iter(lambda: stream.read(size), b"")


def block(index: int, size: int = BLOCK) -> bytes:
    """A fresh block that says where it belongs in the body."""
    return index.to_bytes(4, "big") * (size // 4)


class DownloadProbe:
    """``blocks`` fresh blocks, counting how many the server has pulled."""

    def __init__(self, blocks: int, length: bool) -> None:
        self.blocks = blocks
        self.length = length
        self.yielded = 0
        self.closed = threading.Event()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        headers = [("Content-Type", "application/octet-stream")]
        if self.length:
            headers.append(("Content-Length", str(self.blocks * BLOCK)))
        start_response("200 OK", headers)
        return self.body()

    def body(self) -> Iterator[bytes]:
        try:
            for index in range(self.blocks):
                self.yielded += 1
                yield block(index)
        finally:
            self.closed.set()


class UploadProbe:
    """Read in 4 KiB pieces (echoing them when ``echo``) until the body ends or breaks."""

    def __init__(self, echo: bool = False, target: int = 0) -> None:
        self.echo = echo
        self.read = 0
        self.target = target
        self.reached = threading.Event()  # set once ``target`` bytes are read
        self.error: BaseException | None = None
        self.done = threading.Event()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/quick":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"quick"]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        pieces = self.pieces(environ["wsgi.input"])
        return pieces if self.echo else [b"".join(pieces)]

    def pieces(self, stream: Any) -> Iterator[bytes]:
        try:
            while piece := stream.read(4096):
                self.read += len(piece)
                if self.target and self.read >= self.target:
                    self.reached.set()
                yield piece
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.done.set()


def send_in_background(sock: socket.socket, data: bytes) -> threading.Thread:
    """sendall in a thread, so the test reads the response while the body goes out; the
    server may close before it is all sent (a limit, a reset), which is fine here."""

    def send() -> None:
        try:
            sock.sendall(data)
        except OSError:
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    return sender


def chunked(data: bytes, size: int) -> bytes:
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset


def assert_serving(running: Running) -> None:
    """The server answers the next request (with ``threads=1``: the thread is free)."""
    response = httpx.get(running.url + "/quick", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.text == "quick"


# -- request bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("size", [4096, 1000])
def test_large_upload_read_in_small_pieces(serve_wsgi: Serve, framing: str, size: int) -> None:
    payload = os.urandom(5 * MIB)
    pieces = (payload[i : i + 100_000] for i in range(0, len(payload), 100_000))
    content: Any = payload if framing == "content-length" else pieces
    with serve_wsgi(digest_app) as running:
        response = httpx.post(f"{running.url}/?size={size}", content=content, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == {
        "total": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "largest": size,
        "after": 0,
    }


@LOOPS
@pytest.mark.parametrize("length", [False, True])
def test_streamed_echo_of_a_large_upload_arrives_whole(
    serve_wsgi: Serve, loop: str, length: bool
) -> None:
    """Body in and body out at once, both with backpressure: the client sends while it reads."""
    payload = os.urandom(5 * MIB)
    target = "/?size=4096" + ("&length=1" if length else "")
    with serve_wsgi(echo_app, loop=loop) as running, connection(running) as sock:
        sender = send_in_background(sock, request_bytes("POST", target, body=payload))
        with sock.makefile("rb") as f:
            response = read_response(f)
        sender.join(TIMEOUT)
    assert response.status == 200 and response.complete
    assert ("content-length" in response.headers) == length
    assert len(response.body) == len(payload)
    assert hashlib.sha256(response.body).digest() == hashlib.sha256(payload).digest()


class LinesProbe:
    """readline() with the test deciding where the body breaks: the app reads a line, says
    so, and the test sends the next piece only then."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.read_one = threading.Semaphore(0)

    def __call__(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        sizes = [-1, 4, -1, 3, 100, -1]
        for size in sizes:
            self.lines.append(stream.readline(size))
            self.read_one.release()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps([line.decode() for line in self.lines]).encode()]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_readline_across_chunk_boundaries(serve_wsgi: Serve, framing: str) -> None:
    # Each piece is sent only after the app has read the line before it: every line
    # after the first begins in one piece the app has taken and ends in the next.
    pieces = [b"one\ntw", b"o\nthr", b"ee\nfour", b"\nfive\nsix"]
    # readline(), readline(4), readline(), readline(3), readline(100), readline()
    expected = ["one\n", "two\n", "three\n", "fou", "r\n", "five\n"]
    body = b"".join(pieces)
    probe = LinesProbe()
    with serve_wsgi(probe) as running, connection(running) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if framing == "content-length":
            sock.sendall(request_bytes("POST", "/", [("Content-Length", str(len(body)))]))
        else:
            sock.sendall(request_bytes("POST", "/", [("Transfer-Encoding", "chunked")]))
        for index, piece in enumerate(pieces):
            if index:
                assert probe.read_one.acquire(timeout=TIMEOUT)  # "one\n", then "two\n", ...
            sock.sendall(
                piece if framing == "content-length" else b"%x\r\n%s\r\n" % (len(piece), piece)
            )
        if framing == "chunked":
            sock.sendall(b"0\r\n\r\n")
        with sock.makefile("rb") as f:
            response = read_response(f)
    assert response.status == 200
    assert json.loads(response.body) == expected


def test_expect_100_continue_then_a_streamed_body(serve_wsgi: Serve) -> None:
    payload = os.urandom(300_000)
    with serve_wsgi(echo_app) as running, connection(running) as sock:
        head = request_bytes(
            "POST",
            "/?size=4096",
            [("Content-Length", str(len(payload))), ("Expect", "100-continue")],
        )
        sock.sendall(head)
        with sock.makefile("rb") as f:
            assert f.readline() == b"HTTP/1.1 100 Continue\r\n"
            assert f.readline() == b"\r\n"
            sender = send_in_background(sock, payload)
            response = read_response(f)
        sender.join(TIMEOUT)
    assert response.status == 200 and response.complete
    assert response.body == payload


def test_pipelined_streamed_exchanges_stay_in_order(serve_wsgi: Serve) -> None:
    bodies = [os.urandom(200_000), b"", os.urandom(10_000)]
    data = b"".join(
        request_bytes("POST", "/?size=3000", body=body, close=False) for body in bodies
    ) + request_bytes("POST", "/?size=3000&length=1", body=b"last", close=True)
    with serve_wsgi(echo_app) as running, connection(running) as sock:
        sender = send_in_background(sock, data)
        with sock.makefile("rb") as f:
            responses = [read_response(f, "POST") for _ in range(4)]
            assert f.read() == b""  # and nothing after the last
        sender.join(TIMEOUT)
    assert [r.body for r in responses] == [*bodies, b"last"]
    assert all(r.status == 200 and r.complete for r in responses)


def test_streamed_echo_over_http2(serve_wsgi: Serve) -> None:
    """HTTP/2 streams keep the loop round trips: the same app gives the same bytes."""
    payload = os.urandom(1 * MIB)
    with serve_wsgi(echo_app) as running, h2_client() as client:
        response = client.post(running.url + "/?size=4096", content=payload)
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    assert response.content == payload


# -- limits and clients that leave --------------------------------------------------------------


@pytest.mark.parametrize("echo", [False, True])
def test_body_size_limit_bites_mid_stream(serve_wsgi: Serve, echo: bool) -> None:
    """A chunked body (no Content-Length to refuse up front) passes --max-body-size while
    the app reads it: the app's read fails, the client gets a 413 (or, once the app's
    response has begun, a cut-off one), and the server goes on serving."""
    limit = 1 * MIB
    probe = UploadProbe(echo=echo)
    data = request_bytes("POST", "/upload", [("Transfer-Encoding", "chunked")])
    # The last chunk crosses the limit and nothing follows it (no last-chunk): the server
    # has read all that was sent when it closes, so the close is a FIN, not a reset that
    # could overtake the answer.
    data += chunked(os.urandom(limit + 16_384), 16_384)[: -len(b"0\r\n\r\n")]
    with serve_wsgi(probe, max_body_size=limit, threads=1) as running:
        with connection(running) as sock:
            sender = send_in_background(sock, data)
            with sock.makefile("rb") as f:
                status, headers = read_head(f)
                if echo:
                    assert status == 200 and headers["transfer-encoding"] == "chunked"
                    # Never the last chunk: the response is cut off. The close may come as
                    # a reset when the limit bites inside a chunk still arriving (unread
                    # bytes at close), which a loaded machine makes likely.
                    with pytest.raises((EOFError, ConnectionResetError)):
                        while read_chunk(f) is not None:
                            pass
                else:
                    assert status == 413
                    assert f.read(int(headers["content-length"])).startswith(b"413")
                    assert f.read() == b""  # closed
            sender.join(TIMEOUT)
        assert probe.done.wait(TIMEOUT)
        # The read fails (ClientDisconnected); an echoing app may learn it from the next
        # block it yields instead, and is then closed (GeneratorExit at the yield).
        assert isinstance(probe.error, (OSError, GeneratorExit) if echo else OSError)
        assert probe.read <= limit
        assert_serving(running)


@LOOPS
@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_leaves_mid_upload(serve_wsgi: Serve, loop: str, how: str) -> None:
    probe = UploadProbe(target=MIB)
    head = request_bytes("POST", "/upload", [("Content-Length", str(10 * MIB))])
    with serve_wsgi(probe, loop=loop, threads=1) as running:
        with connection(running) as sock:
            sock.sendall(head + os.urandom(MIB))
            assert probe.reached.wait(TIMEOUT)  # all that was sent; now it waits for more
            assert not probe.done.is_set()
            if how == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        assert probe.done.wait(TIMEOUT), "the app's thread is still blocked in read()"
        assert isinstance(probe.error, OSError)  # ClientDisconnected
        assert_serving(running)


class EndlessProbe(DownloadProbe):
    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        if environ["PATH_INFO"] == "/quick":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return iter([b"quick"])
        return super().__call__(environ, start_response)


@LOOPS
@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_leaves_mid_download(serve_wsgi: Serve, loop: str, how: str) -> None:
    probe = EndlessProbe(blocks=1 << 20, length=False)  # 64 GiB: never ends by itself
    with serve_wsgi(probe, loop=loop, threads=1) as running:
        with connection(running) as sock:
            sock.sendall(request_bytes("GET", "/", close=False))
            with sock.makefile("rb") as f:
                read_head(f)
                for _ in range(16):
                    assert read_chunk(f)
            if how == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        assert probe.closed.wait(TIMEOUT), "the app's generator was never closed"
        assert probe.yielded < 1000
        assert_serving(running)


# -- responses to slow clients --------------------------------------------------------------------


@LOOPS
@pytest.mark.parametrize("length", [False, True])
def test_slow_client_bounds_server_memory(serve_wsgi: Serve, loop: str, length: bool) -> None:
    """32 MiB to a client that reads late and slowly: the app waits, the server holds
    about a transport buffer of it (not the body), and the body arrives whole, in order."""
    probe = DownloadProbe(blocks=512, length=length)
    total = probe.blocks * BLOCK
    checked = BlockChecker()
    tracemalloc.start()
    try:
        with serve_wsgi(probe, loop=loop) as running, connection(running, rcvbuf=64 * 1024) as sock:
            baseline = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            sock.sendall(request_bytes("GET", "/"))
            pulled = wait_until_settled(lambda: probe.yielded)
            held = tracemalloc.get_traced_memory()[0] - baseline
            assert pulled < 128, f"{pulled} blocks pulled from the app for a stalled client"
            assert held < 4 * MIB, f"the server holds {held} bytes for a stalled client"
            with sock.makefile("rb") as f:
                status, headers = read_head(f)
                assert status == 200
                if length:
                    assert headers["content-length"] == str(total)
                    while checked.size < total:
                        data = f.read(min(256 * 1024, total - checked.size))
                        assert data, "cut off"
                        checked.add(data)
                else:
                    assert headers["transfer-encoding"] == "chunked"
                    while (chunk := read_chunk(f)) is not None:
                        checked.add(chunk)
            peak = tracemalloc.get_traced_memory()[1] - baseline
            assert probe.closed.wait(TIMEOUT)
    finally:
        tracemalloc.stop()
    assert checked.size == total
    # The client's reads are in this too (but not the body: it is checked as it comes).
    assert peak < 8 * MIB, f"peak {peak} bytes"


class BlockChecker:
    """Checks a body of block(0), block(1), ... as it arrives, holding at most a block."""

    def __init__(self) -> None:
        self.size = 0
        self._pending = b""

    def add(self, data: bytes) -> None:
        pending = self._pending + data
        while len(pending) >= BLOCK:
            index = self.size // BLOCK
            assert pending[:BLOCK] == block(index), f"block {index} wrong or out of order"
            pending = pending[BLOCK:]
            self.size += BLOCK
        self._pending = pending
        assert not pending  # the server sends whole blocks here, never a part


def test_body_shorter_than_its_content_length_closes_the_connection(serve_wsgi: Serve) -> None:
    """The app declares 10 bytes and yields 5: only a close can end that response, at once
    (not after --keep-alive-timeout)."""

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        yield b"12"
        yield b"345"

    with serve_wsgi(app, keep_alive_timeout=60) as running, connection(running) as sock:
        sock.settimeout(5.0)
        sock.sendall(request_bytes("GET", "/", close=False))
        with sock.makefile("rb") as f:
            status, headers = read_head(f)
            assert status == 200 and headers["content-length"] == "10"
            assert f.read() == b"12345"  # then EOF, within the socket timeout
