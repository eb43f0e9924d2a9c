"""The WSGI thread's way around the event loop on HTTP/1.1 (Http1Stream, sans server).

``take_body_threadsafe`` hands a worker thread the body bytes already received;
``send_more_threadsafe`` and ``send_threadsafe`` write response blocks straight to
the socket when it is idle. The connection here is fed bytes through the in-memory
transport of test_http1; for the direct writes that transport sits on one end of a
real socketpair, so what a thread writes to the fd and what the loop writes through
the transport arrive at the other end in the order the client would see them.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from tests.unit.test_http1 import MemoryTransport, Response, parse_responses, request, settle
from threshold.config import Config
from threshold.context import ServerContext
from threshold.interfaces.wsgi import WsgiInput
from threshold.protocols import http1
from threshold.protocols.http1 import BODY_HIGH_WATER, Http1Connection, Http1Stream
from threshold.stream import ClientDisconnected, Stream

TIMEOUT = 10.0


class SocketTransport(MemoryTransport):
    """The in-memory transport over a real socket: the loop's writes go to it (what the
    socket cannot take waits in a buffer until it is writable, as in asyncio), and its
    fd is what a WSGI thread writes to directly."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        super().__init__(loop)
        sock.setblocking(False)
        self.sock = sock
        self.extra["socket"] = sock
        self.buffer = bytearray()
        self.watching = False
        self.drained: asyncio.Future[None] = loop.create_future()  # set once the buffer empties

    def write(self, data: bytes) -> None:
        super().write(data)  # recorded: self.writes is what went through the loop
        if self.closed or not data:
            return
        self.buffer += data
        self._flush()

    def get_write_buffer_size(self) -> int:
        return len(self.buffer)

    def _flush(self) -> None:
        while self.buffer:
            try:
                sent = self.sock.send(self.buffer)
            except BlockingIOError:
                break
            del self.buffer[:sent]
        if self.buffer and not self.watching:
            self.watching = True
            self.loop.add_writer(self.sock, self._flush)
        elif not self.buffer and self.watching:
            self.watching = False
            self.loop.remove_writer(self.sock)
        if not self.buffer and not self.drained.done():
            self.drained.set_result(None)


@dataclass
class Harness:
    conn: Http1Connection
    transport: MemoryTransport
    streams: list[Stream]

    async def send(self, *pieces: bytes) -> None:
        for piece in pieces:
            self.transport.feed(piece)
            await settle(3)
        await settle()

    @property
    def stream(self) -> Http1Stream:
        stream = self.streams[-1]
        assert isinstance(stream, Http1Stream)
        return stream


def make(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket | None = None,
    threaded: bool = True,
    **options: Any,
) -> Harness:
    """A connection whose streams are recorded, not served; threaded as under WSGI."""
    streams: list[Stream] = []
    ctx = ServerContext(Config(**options), streams.append, None)
    ctx.threaded = threaded
    conn = Http1Connection(ctx, loop)
    transport = MemoryTransport(loop) if sock is None else SocketTransport(loop, sock)
    transport.connect(conn)
    return Harness(conn, transport, streams)


def run(main: Callable[[], Any]) -> Any:
    return asyncio.run(main())


@contextmanager
def socket_pair(sndbuf: int | None = None) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server end, client end); a small ``sndbuf`` makes partial writes easy to reach."""
    server, client = socket.socketpair()
    try:
        if sndbuf is not None:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
        client.settimeout(TIMEOUT)
        yield server, client
    finally:
        server.close()
        client.close()


def recv_available(sock: socket.socket) -> bytes:
    """What the client end has received so far, without waiting for more."""
    parts = []
    sock.setblocking(False)
    try:
        while True:
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                break
            if not data:
                break
            parts.append(data)
    finally:
        sock.settimeout(TIMEOUT)
    return b"".join(parts)


def one_response(data: bytes) -> Response:
    responses, rest = parse_responses(data)
    assert rest == b"" and len(responses) == 1, (responses, rest[:100])
    return responses[0]


# -- take_body_threadsafe ----------------------------------------------------------------


def test_take_body_returns_what_arrived_and_none_while_waiting() -> None:
    async def main() -> None:
        h = make(asyncio.get_running_loop())
        await h.send(request("/", "Content-Length: 10\r\n", method="POST"))
        stream = h.stream
        assert stream.take_body_threadsafe() is None  # nothing yet: the loop must wait
        await h.send(b"123", b"45")
        assert stream.take_body_threadsafe() == (b"12345", True)
        assert stream.take_body_threadsafe() is None
        await h.send(b"67890")
        assert stream.take_body_threadsafe() == (b"67890", False)
        assert stream.take_body_threadsafe() == (b"", False)  # safe past the end
        assert h.transport.resumes == 0  # never paused, so no resume asked of the loop

    run(main)


def test_take_body_is_for_threaded_connections_only() -> None:
    async def main() -> None:
        h = make(asyncio.get_running_loop(), threaded=False)
        await h.send(request("/", body=b"abc", method="POST"))
        assert h.stream.take_body_threadsafe() is None  # ASGI reads on the loop
        assert await h.stream.receive_body() == (b"abc", False)

    run(main)


def test_taking_a_large_body_lets_the_loop_read_on() -> None:
    async def main() -> None:
        h = make(asyncio.get_running_loop())
        first = b"a" * (BODY_HIGH_WATER + 1)
        rest = b"b" * 1000
        head = request("/", f"Content-Length: {len(first) + len(rest)}\r\n", method="POST")
        await h.send(head + first, rest)
        stream = h.stream
        assert h.transport.paused  # the app fell behind: the rest waits in the kernel
        assert stream.take_body_threadsafe() == (first, True)
        assert h.transport.paused  # resuming is the loop's job ...
        await settle()
        assert h.transport.resumes == 1  # ... asked for by the take, without a wait
        assert stream.take_body_threadsafe() == (rest, False)

    run(main)


def test_take_body_leaves_100_continue_to_the_loop() -> None:
    async def main() -> None:
        h = make(asyncio.get_running_loop())
        await h.send(request("/", "Content-Length: 3\r\nExpect: 100-continue\r\n", method="POST"))
        stream = h.stream
        assert stream.take_body_threadsafe() is None
        assert h.transport.output == b""  # no 100 Continue until the app waits on the loop
        reader = asyncio.ensure_future(stream.receive_body())
        await settle()
        assert h.transport.output == b"HTTP/1.1 100 Continue\r\n\r\n"
        await h.send(b"xyz")
        assert await reader == (b"xyz", False)

    run(main)


def test_take_body_after_the_client_left() -> None:
    async def main() -> None:
        h = make(asyncio.get_running_loop())
        await h.send(request("/", "Content-Length: 10\r\n", method="POST") + b"12345")
        stream = h.stream
        h.transport.client_close()
        assert stream.take_body_threadsafe() == (b"12345", True)  # what arrived is kept
        with pytest.raises(ClientDisconnected):
            stream.take_body_threadsafe()

    run(main)


def test_take_body_when_max_body_size_bites_mid_body() -> None:
    async def main() -> None:
        h = make(asyncio.get_running_loop(), max_body_size=10)
        head = request("/", "Transfer-Encoding: chunked\r\n", method="POST")
        await h.send(head + b"6\r\nabcdef\r\n", b"6\r\nghijkl\r\n")
        assert one_response(h.transport.output).status == 413
        with pytest.raises(ClientDisconnected):  # the body broke off: what came is dropped
            h.stream.take_body_threadsafe()

    run(main)


COMPILED = (http1.__file__ or "").endswith(".so")  # `make pytest-compiled`


@pytest.mark.parametrize("mode", ["read-4096", "read-777", "readline"])
def test_wsgi_input_in_a_thread_while_the_loop_feeds(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread reads wsgi.input (taking what is buffered, else waiting on the loop) while
    the loop feeds 2 000 chunks of random sizes: every byte arrives once, in order."""
    rng = random.Random(mode)
    lines = [b"%d:" % i + b"x" * rng.randrange(0, 300) + b"\n" for i in range(3000)]
    body = b"".join(lines)
    pieces = []
    start = 0
    while start < len(body):
        size = rng.randrange(1, 700)
        pieces.append(body[start : start + size])
        start += size
    size = int(mode.split("-")[1]) if mode.startswith("read-") else 0
    taken = {"bytes": 0, "loop": 0}  # reads served without the loop, and with it
    take = Http1Stream.take_body_threadsafe

    def counted(stream: Http1Stream) -> tuple[bytes, bool] | None:
        result = take(stream)
        taken["loop" if result is None else "bytes"] += 1
        return result

    monkeypatch.setattr(Http1Stream, "take_body_threadsafe", counted)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        h = make(loop)
        await h.send(request("/", "Transfer-Encoding: chunked\r\n", method="POST"))
        wsgi_input = WsgiInput(h.stream, loop, False)

        def reader() -> list[bytes]:
            got: list[bytes] = []
            while True:
                data = wsgi_input.readline() if mode == "readline" else wsgi_input.read(size)
                if not data:
                    return got
                got.append(data)

        result = loop.run_in_executor(None, reader)
        for piece in pieces:
            h.transport.feed(b"%x\r\n" % len(piece) + piece + b"\r\n")
            await asyncio.sleep(0)
        h.transport.feed(b"0\r\n\r\n")
        got = await asyncio.wait_for(result, TIMEOUT)
        assert hashlib.sha256(b"".join(got)).digest() == hashlib.sha256(body).digest()
        if not COMPILED:  # methods of a mypyc-compiled class cannot be replaced to count
            assert taken["bytes"] and taken["loop"], taken  # both ways were taken
        if mode == "readline":
            assert got == lines
        else:
            assert all(len(data) == size for data in got[:-1])

    run(main)


# -- send_more_threadsafe and send_threadsafe ----------------------------------------------

HEADERS = [(b"content-type", b"text/plain")]


def test_blocks_go_straight_to_an_idle_socket() -> None:
    async def main() -> None:
        with socket_pair() as (server, client):
            h = make(asyncio.get_running_loop(), server)
            await h.send(request("/"))
            stream = h.stream
            assert stream.send_more_threadsafe(200, HEADERS, b"abc")
            assert stream.send_more_threadsafe(200, None, b"def")
            stream.send_threadsafe(200, None, b"ghi", False)
            assert h.transport.writes == []  # no block went through the loop
            assert stream.finished and h.conn._active is None
            response = one_response(recv_available(client))
        assert response.status == 200
        assert response.chunked and response.chunk_sizes == [3, 3, 3, 0]
        assert response.body == b"abcdefghi"

    run(main)


def test_blocks_go_through_the_loop_without_a_socket() -> None:
    async def main() -> None:
        h = make(asyncio.get_running_loop())  # like TLS: no fd to write to
        await h.send(request("/"))
        assert not h.stream.send_more_threadsafe(200, HEADERS, b"abc")
        assert h.transport.output == b"" and not h.stream._head_written

    run(main)


@pytest.mark.parametrize("state", ["write-paused", "loop-has-bytes", "client-left", "ended"])
def test_blocks_go_through_the_loop_unless_the_socket_is_idle(state: str) -> None:
    async def main() -> None:
        with socket_pair() as (server, client):
            h = make(asyncio.get_running_loop(), server)
            await h.send(request("/"))
            stream = h.stream
            assert stream.send_more_threadsafe(200, HEADERS, b"first")
            if state == "write-paused":
                h.conn.pause_writing()
            elif state == "loop-has-bytes":
                assert isinstance(h.transport, SocketTransport)
                h.transport.buffer += b"queued by the loop"
            elif state == "client-left":
                h.transport.client_close()
            else:
                stream.abort()
            sent = recv_available(client)
            assert not stream.send_more_threadsafe(200, None, b"second")
            assert recv_available(client) == b""  # nothing written: the loop decides
            assert b"first" in sent

    run(main)


def test_a_partial_write_hands_the_rest_to_the_loop_in_order() -> None:
    """The socket takes part of a block: the loop writes the rest, and the next block may
    not overtake it — it goes through the loop too, queued behind."""
    first = random.Random(1).randbytes(1 << 20)
    second = b"second block"

    async def main() -> None:
        with socket_pair(sndbuf=32 * 1024) as (server, client):
            h = make(asyncio.get_running_loop(), server)
            await h.send(request("/"))
            stream = h.stream
            assert stream.send_more_threadsafe(200, HEADERS, first)  # written in part
            assert stream._rest_pending
            assert not stream.send_more_threadsafe(200, None, second)  # must not overtake
            await settle()  # the loop writes the rest (most of it waits in its buffer)
            assert not stream._rest_pending
            assert h.transport.get_write_buffer_size() > 0
            assert not stream.send_more_threadsafe(200, None, second)  # the loop still busy
            stream.send_body(second, True)  # what the WSGI thread then asks of the loop
            stream.send_body(b"", False)
            assert isinstance(h.transport, SocketTransport)
            h.transport.drained = asyncio.get_running_loop().create_future()
            received = asyncio.get_running_loop().run_in_executor(None, read_all, client)
            await asyncio.wait_for(h.transport.drained, TIMEOUT)  # flushed as the client reads
            response = one_response(await asyncio.wait_for(received, TIMEOUT))
        assert response.body == first + second
        assert response.chunk_sizes == [len(first), len(second), 0]

    run(main)


def read_all(sock: socket.socket) -> bytes:
    """Everything until the final chunk of a chunked response has arrived."""
    parts = bytearray()
    while not parts.endswith(b"\r\n0\r\n\r\n"):
        data = sock.recv(1 << 20)
        if not data:
            break
        parts += data
    return bytes(parts)


def test_a_body_shorter_than_its_content_length_closes_the_connection() -> None:
    async def main() -> None:
        with socket_pair() as (server, client):
            h = make(asyncio.get_running_loop(), server)
            await h.send(request("/"))
            stream = h.stream
            headers = [(b"content-length", b"10")]
            assert stream.send_more_threadsafe(200, headers, b"12345")
            stream.send_threadsafe(200, None, b"", False)  # the app stopped at 5 of 10
            await settle()
            assert h.transport.closed  # the framing is broken: only a close ends it
            assert recv_available(client).endswith(b"\r\n\r\n12345")

    run(main)


def test_the_server_error_and_a_thread_never_both_answer() -> None:
    async def main() -> None:
        with socket_pair() as (server, client):
            h = make(asyncio.get_running_loop(), server)
            await h.send(request("/one"))
            stream = h.stream
            assert stream.send_error(504)  # e.g. --timeout-request, before the app answered
            assert not stream.send_more_threadsafe(200, HEADERS, b"late")
            stream.send_threadsafe(200, HEADERS, b"late", False)
            await settle()
            assert one_response(recv_available(client)).status == 504

        with socket_pair() as (server, client):
            h = make(asyncio.get_running_loop(), server)
            await h.send(request("/two"))
            stream = h.stream
            assert stream.send_more_threadsafe(200, HEADERS, b"begun")
            assert not stream.send_error(504)  # too late: the head is on the wire

    run(main)
