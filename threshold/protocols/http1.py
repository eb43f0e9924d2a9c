"""HTTP/1.1 connection: an asyncio.Protocol around httptools (llhttp).

llhttp does the parsing (sans-I/O); this module owns the transport, turns each
request into an :class:`Http1Stream` for the interface layer, frames responses,
and applies flow control both ways. One request is served at a time per
connection; pipelined requests wait in order with reading paused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
from collections import deque
from http import HTTPStatus
from time import perf_counter
from typing import IO, TYPE_CHECKING, Any

import httptools

from threshold.context import ServerContext
from threshold.protocols.proxy import ProxyHeader
from threshold.protocols.tlsinfo import tls_extension
from threshold.protocols.websocket import WebSocketSession, handshake_error, upgrade_response
from threshold.stream import ClientDisconnected, Headers, RequestHead, Stream, socket_address

if TYPE_CHECKING:
    from threshold.protocols.http2 import Http2Connection

logger = logging.getLogger("threshold.error")

# Request body buffered per stream before reading from the socket pauses.
BODY_HIGH_WATER = 256 * 1024
# Files up to this size are read and written with the response head, not sendfile()d.
SENDFILE_MIN = 256 * 1024
# Transport write buffer limits: a client slower than the app pauses the app.
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024

NO_BODY_STATUS = frozenset({204, 304})
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# A response header block as we write it: token names, no CR/LF/NUL in values
# (response splitting, uvicorn CVE-2020-7695).
_HEADER_BLOCK = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [^\x00\r\n]*\r\n)*")


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("ascii")


STATUS_LINES = {status.value: _status_line(status.value) for status in HTTPStatus}


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 3986 uri-host [ ":" port ]: an IP literal, or a reg-name (which may be empty).
_HOST = re.compile(
    rb"(?:\[[0-9A-Za-z\-._~!$&'()*+,;=:%]+\]|[0-9A-Za-z\-._~!$&'()*+,;=%]*)(?::[0-9]*)?"
)


def check_request_line(data: bytes) -> bool | None:
    """Whether the request line at the start of ``data`` has single spaces (RFC 9112
    section 3): True, False, or None while its end has not arrived yet.

    llhttp accepts "GET  / HTTP/1.1", which a proxy in front may read otherwise.
    """
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2  # empty lines before a request are allowed (RFC 9112 section 2.2)
    end = data.find(b"\r\n", start)  # the line is bounded by limit_request_line (on_url)
    if end < 0:
        line = data[start:]
        if b"  " in line or line[:1] == b" ":
            return False
        return None
    # Exactly two spaces in METHOD SP target SP version: a doubled, leading or trailing
    # space makes three (llhttp has checked the method and version tokens themselves).
    return data.count(b" ", start, end) == 2


class RequestRejected(Exception):
    """Raised inside a parser callback: stop parsing and answer ``status``."""

    def __init__(self, status: int, reason: str, headers: Headers | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.headers = headers or []


class Http1Stream(Stream):
    """One request on an HTTP/1.1 connection."""

    __slots__ = (
        "_body",
        "_body_done",
        "_body_size",
        "_body_waiter",
        "_chunked",
        "_chunks",
        "_content_length",
        "_discard",
        "_disconnect_waiter",
        "_disconnected",
        "_expect_100",
        "_finished",
        "_h2_check",
        "_h2_seen",
        "_h2c_head",
        "_head_parts",
        "_head_written",
        "_http10",
        "_is_head",
        "_no_body",
        "_overhead",
        "_received",
        "_rest_pending",
        "_wait_since",
        "body_sent",
        "conn",
        "deadline",
        "head",
        "keep_alive",
        "start_time",
        "status",
    )

    def __init__(
        self,
        conn: Http1Connection,
        head: RequestHead,
        keep_alive: bool,
        expect_100: bool,
    ) -> None:
        self.conn = conn
        self.head = head
        self.keep_alive = keep_alive
        self._expect_100 = expect_100
        self._http10 = head.http_version == "1.0"
        self._is_head = head.method == "HEAD"
        self._body: list[bytes] = []
        self._body_size = 0
        self._body_done = False
        self._body_waiter: asyncio.Future[None] | None = None
        self._disconnect_waiter: asyncio.Future[None] | None = None
        self._disconnected = False
        self._discard = False
        self._head_parts: list[bytes] | None = None
        self._head_written = False
        self._content_length: int | None = None
        self._chunked = False
        self._no_body = False
        self._finished = False
        self.status = 0
        self.body_sent = 0
        self.start_time = 0.0
        self.deadline = 0.0  # --timeout-request, in ServerContext.now time
        self.cancel = None
        self.extensions = conn.extensions
        self._received = 0
        self._chunks = 0  # chunk headers seen (chunked request bodies)
        self._overhead = -1  # framing + extension bytes of a chunked body (-1: not chunked)
        self._wait_since = -1.0
        self._rest_pending = False  # a WSGI thread handed the loop the rest of a write

    # -- request body (fed by the connection) ---------------------------------

    def _feed(self, data: bytes) -> None:
        self._received += len(data)
        max_body = self.conn.ctx.max_body_size
        if max_body and self._received > max_body:
            # Answered already (an unread body being discarded): just close (status 0).
            raise RequestRejected(
                0 if self._discard else 413, "request body larger than max_body_size"
            )
        if self._discard:
            return
        self._wait_since = -1.0
        lock = self.conn._lock
        if lock is None:
            self._buffer(data)
        else:
            with lock:  # a WSGI thread may be taking the body (take_body_threadsafe)
                self._buffer(data)
        waiter = self._body_waiter
        if waiter is not None:
            self._body_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _buffer(self, data: bytes) -> None:
        self._body.append(data)
        self._body_size += len(data)
        if self._body_size > BODY_HIGH_WATER:
            self.conn._pause_reading()

    def _feed_done(self) -> None:
        self._body_done = True
        waiter = self._body_waiter
        if waiter is not None:
            self._body_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _lost(self) -> None:
        self._disconnected = True
        for waiter in (self._body_waiter, self._disconnect_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self._body_waiter = None

    async def receive_body(self) -> tuple[bytes, bool]:
        while True:
            if self._body:
                data = self._body[0] if len(self._body) == 1 else b"".join(self._body)
                self._body.clear()
                self._body_size = 0
                self.conn._maybe_resume_reading()
                return data, not self._body_done
            if self._body_done:
                return b"", False
            if self._disconnected:
                raise ClientDisconnected("client disconnected while sending the body")
            if self._expect_100:
                self._expect_100 = False
                if not self._head_written:
                    self.conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.conn._maybe_resume_reading()
            waiter = self.conn.loop.create_future()
            self._body_waiter = waiter
            self._wait_since = self.conn.ctx.now
            await waiter

    def take_body_threadsafe(self) -> tuple[bytes, bool] | None:
        lock = self.conn._lock
        if lock is None:
            return None
        conn = self.conn
        with lock:  # against _feed on the loop
            # Read "done" before the chunks: the loop appends them all before it sets it.
            done = self._body_done
            body = self._body
            if body:
                data = body[0] if len(body) == 1 else b"".join(body)
                body.clear()
                self._body_size = 0
                resume = conn._reading_paused  # perhaps paused by this body (_feed)
            elif done:
                return b"", False
            elif self._disconnected:
                raise ClientDisconnected("client disconnected while sending the body")
            else:
                return None  # wait on the loop (which also sends 100 Continue)
        if resume:
            conn.loop.call_soon_threadsafe(conn._maybe_resume_reading)
        return data, not done

    async def wait_disconnect(self) -> None:
        if self._disconnected or self._finished:
            return
        if self._disconnect_waiter is None:
            self._disconnect_waiter = self.conn.loop.create_future()
        await self._disconnect_waiter

    @property
    def disconnected(self) -> bool:
        return self._disconnected

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.conn.loop

    @property
    def finished(self) -> bool:
        return self._finished

    # -- response ---------------------------------------------------------------

    def send_head(self, status: int, headers: Headers) -> None:
        if self._disconnected:
            # Also after the server answered for the app (413, 400, 504): not an app bug.
            raise ClientDisconnected("client disconnected")
        if self._head_parts is not None or self._head_written:
            raise RuntimeError("response already started")
        status_line = STATUS_LINES.get(status)
        if status_line is None:
            if not 100 <= status <= 999:
                raise ValueError(f"invalid status code {status!r}")
            status_line = _status_line(status)
        parts = [status_line, self.conn.ctx.default_headers]
        content_length: int | None = None
        chunked = False
        for name, value in headers:
            lname = name.lower()
            if lname == b"content-length":
                content_length = int(value)
            elif lname == b"connection":
                if value.lower() == b"close":
                    self.keep_alive = False
                continue  # we write our own
            elif lname == b"transfer-encoding":
                chunked = True
                if value.lower() != b"chunked":
                    raise ValueError(f"unsupported transfer-encoding {value!r}")
                continue
            parts.append(name + b": " + value + b"\r\n")
        if self._disconnected:
            raise ClientDisconnected("client disconnected")
        block = b"".join(parts[2:])
        # One line per header: "a\r\nset-cookie: x" would match the pattern as two lines.
        if _HEADER_BLOCK.fullmatch(block) is None or block.count(b"\n") != len(parts) - 2:
            raise ValueError("invalid response header name, or CR/LF/NUL in a value")
        rid = self.head.request_id
        if rid is not None and all(n.lower() != b"x-request-id" for n, _ in headers):
            parts.append(b"x-request-id: " + rid.encode("ascii") + b"\r\n")
        self.status = status
        self._content_length = content_length
        self._chunked = chunked
        self._no_body = self._is_head or status in NO_BODY_STATUS or status < 200
        self._head_parts = parts

    def _framing(self, first: bytes, more: bool) -> None:
        """Decide length/chunked/close framing once the first body chunk is known."""
        parts = self._head_parts
        assert parts is not None
        if self._content_length is not None:
            self._chunked = False
        elif self.status in NO_BODY_STATUS or self.status < 200:
            pass
        elif not more:
            self._content_length = len(first)
            parts.append(b"content-length: %d\r\n" % len(first))
        elif self._http10:
            self.keep_alive = False  # body delimited by close
        else:
            self._chunked = True
            if not self._is_head:
                parts.append(b"transfer-encoding: chunked\r\n")
        if self._chunked and self._is_head:
            self._chunked = False
        if not self.keep_alive or self.conn._closing:
            self.keep_alive = False
            parts.append(b"connection: close\r\n")
        elif self._http10:
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")

    def send_trailers(self, headers: Headers) -> None:
        if not self._head_written:
            self.conn.transport.write(self._render(b"", True))  # chunked framing from here
        if self._disconnected:
            raise ClientDisconnected("client disconnected")
        if self._chunked:
            block = b"".join(bytes(n).lower() + b": " + bytes(v) + b"\r\n" for n, v in headers)
            if _HEADER_BLOCK.fullmatch(block) is None or block.count(b"\n") != len(headers):
                raise ValueError("invalid trailer field")
            self.conn.transport.write(b"0\r\n" + block + b"\r\n")
        # Otherwise (HTTP/1.0, HEAD, an app Content-Length) nothing can carry them: dropped.
        self._finish()

    def send_informational(self, status: int, headers: Headers) -> None:
        if self._head_written or self._http10 or self._disconnected or not 100 <= status < 200:
            return  # too late, or a client that may not understand 1xx (RFC 9110 15.2)
        block = b"".join(bytes(n).lower() + b": " + bytes(v) + b"\r\n" for n, v in headers)
        if _HEADER_BLOCK.fullmatch(block) is None or block.count(b"\n") != len(headers):
            raise ValueError("invalid informational header")
        self.conn.transport.write(_status_line(status) + block + b"\r\n")

    def send_body(self, data: bytes, more: bool) -> None:
        out = self._render(data, more)
        if out:
            self.conn.transport.write(out)
        if not more:
            self._finish()

    def _render(self, data: bytes, more: bool) -> bytes:
        """The bytes for this body chunk (and the head before the first), framed."""
        if self._disconnected:
            raise ClientDisconnected("client disconnected")
        if self._finished:
            raise RuntimeError("response already complete")
        if not self._head_written:
            if self._head_parts is None:
                raise RuntimeError("body sent before the response head")
            self._framing(data, more)
            out = self._head_parts
            self._head_parts = None
            self._head_written = True
        else:
            out = []
        if data and not self._no_body:
            limit = self._content_length
            if limit is not None and self.body_sent + len(data) > limit:
                logger.error("response body longer than its content-length; truncated")
                data = data[: limit - self.body_sent]
                self.keep_alive = False
            self.body_sent += len(data)
            if self._chunked:
                out.append(b"%x\r\n" % len(data))
                out.append(data)
                out.append(b"\r\n")
            else:
                out.append(data)
        if not more:
            if self._chunked:
                out.append(b"0\r\n\r\n")
            elif (
                self._content_length is not None
                and not self._no_body
                and self.body_sent != self._content_length
            ):
                # The app lied about content-length; the framing is broken.
                self.keep_alive = False
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    def send_threadsafe(
        self, status: int, headers: Headers | None, body: bytes, more: bool
    ) -> None:
        """The end of a response from a WSGI thread (the whole response, or its last
        block): written straight to the socket when nothing else is in flight on it, so
        the common case needs no hop to the loop (DESIGN.md, WSGI probe); otherwise
        handed to the loop."""
        conn = self.conn
        lock = conn._lock
        if more or lock is None or conn._fd < 0:
            super().send_threadsafe(status, headers, body, more)
            return
        with lock:
            if (
                conn._active is not self
                or conn._queue
                or conn._closing
                or conn._reading_paused
                or conn._write_paused
                or self._finished
                or self._disconnected
                or self._rest_pending
                or not self._body_done
                or conn.transport.get_write_buffer_size()
            ):
                data = None
            else:
                try:
                    if headers is not None:
                        self.send_head(status, headers)
                    data = self._render(body, False)
                except (ValueError, RuntimeError, ClientDisconnected):
                    data = None
                    self._head_parts = None
            if data is not None:
                if not self.keep_alive:
                    # The loop closes the connection after writing (the app's framing may
                    # have just broken: a body shorter than its Content-Length).
                    conn.loop.call_soon_threadsafe(self._write_rest, data)
                    return
                try:
                    written = os.write(conn._fd, data)
                except OSError:
                    written = 0  # EAGAIN, or a broken connection the loop will see
                if written == len(data):
                    self._finished = True
                    conn._active = None
                else:
                    conn.loop.call_soon_threadsafe(self._write_rest, data[written:])
                    return
        if data is None:
            super().send_threadsafe(status, headers, body, more)
            return
        access_log = conn.ctx.access_log
        if access_log is not None:
            access_log(self, self.status, self.body_sent, perf_counter() - self.start_time)

    def send_more_threadsafe(self, status: int, headers: Headers | None, body: bytes) -> bool:
        conn = self.conn
        lock = conn._lock
        if lock is None or conn._fd < 0:
            return False
        with lock:
            # Only onto an idle socket: nothing queued in the transport, and no earlier
            # block still on its way to it (ordering), else the loop's drain() decides.
            if (
                conn._active is not self
                or conn._closing
                or conn._write_paused
                or self._finished
                or self._disconnected
                or self._rest_pending
                or conn.transport.get_write_buffer_size()
            ):
                return False
            try:
                if headers is not None:
                    self.send_head(status, headers)
                data = self._render(body, True)
            except (ValueError, RuntimeError, ClientDisconnected):
                self._head_parts = None
                return False  # the loop raises it again, for the app to see
            if not data:
                return True
            try:
                written = os.write(conn._fd, data)
            except OSError:
                written = 0  # EAGAIN (a slow client), or a broken connection the loop will see
            if written < len(data):
                # The loop writes the rest; until then later blocks go through the loop.
                self._rest_pending = True
                conn.loop.call_soon_threadsafe(self._write_rest_more, data[written:])
        return True

    def _write_rest_more(self, data: bytes) -> None:
        """Loop side of a direct write of a block that did not go out whole."""
        if not self._disconnected and not self._finished:
            self.conn.transport.write(data)
        self._rest_pending = False  # after the write: a thread now sees the buffer

    def _write_rest(self, data: bytes) -> None:
        """Loop side of a direct write that did not go out whole."""
        if self._disconnected:
            return
        self.conn.transport.write(data)
        self._finish()

    def _finish(self) -> None:
        self._finished = True
        waiter = self._disconnect_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.conn._response_complete(self)

    @property
    def write_paused(self) -> bool:
        return self.conn._write_paused

    async def drain(self) -> None:
        conn = self.conn
        while conn._write_paused:
            if self._disconnected:
                raise ClientDisconnected("client disconnected")
            waiter = conn.loop.create_future()
            conn._drain_waiters.append(waiter)
            await waiter
        if self._disconnected:
            raise ClientDisconnected("client disconnected")

    async def send_file(self, file: IO[bytes], offset: int, count: int | None) -> None:
        if count is not None and count <= SENDFILE_MIN:
            # Small files: read and written with the head, one write (uvloop has no
            # sendfile anyway, and a sendfile call would cost more than the copy).
            await self._send_file_chunks(file, offset, count)
            return
        self.send_body(b"", True)
        if self._chunked or self._no_body:
            await self._send_file_chunks(file, offset, count)
            return
        loop = self.conn.loop
        transport = self.conn.transport
        try:
            sent = await loop.sendfile(transport, file, offset, count)
        except NotImplementedError:  # uvloop has no loop.sendfile()
            await self._send_file_chunks(file, offset, count)
            return
        except ClientDisconnected:
            raise
        except (ConnectionError, OSError) as exc:
            raise ClientDisconnected(str(exc)) from exc
        self.body_sent += sent

    async def _send_file_chunks(self, file: IO[bytes], offset: int, count: int | None) -> None:
        file.seek(offset)
        while count is None or count > 0:
            data = file.read(65536 if count is None else min(65536, count))
            if not data:
                break
            if count is not None:
                count -= len(data)
            self.send_body(data, True)
            if self.conn._write_paused:
                await self.drain()

    def send_error(self, status: int) -> bool:
        """Replace an unsent response with a plain error response; False if too late."""
        lock = self.conn._lock
        if lock is None:
            sent = self._write_error_response(status)
        else:
            with lock:  # a WSGI thread may be writing this response itself
                sent = self._write_error_response(status)
        if sent:
            self._finish()
        return sent

    def _write_error_response(self, status: int) -> bool:
        if self._head_written or self._finished or self._disconnected:
            return False
        self._head_parts = None
        self.keep_alive = False
        metrics = self.conn.ctx.metrics
        if metrics is not None:
            metrics.limit_hit(status)  # 413, 504, 503: the server's answer, not the app's
        body = f"{status} {HTTPStatus(status).phrase}\n".encode()
        self.send_head(status, [(b"content-type", b"text/plain; charset=utf-8")])
        self.conn.transport.write(self._render(body, False))
        self._finished = True  # no direct write from a WSGI thread after this
        return True

    def abort(self) -> None:
        self.keep_alive = False
        if not self._finished:
            self._finished = True
            metrics = self.conn.ctx.metrics
            if metrics is not None:
                metrics.aborted()  # no response will complete: no longer in flight
            self.conn._response_aborted(self)


class Http1Connection(asyncio.Protocol):
    """One client connection speaking HTTP/1.1 (and 1.0)."""

    __slots__ = (
        "_active",
        "_body_only",
        "_client",
        "_closing",
        "_content_length",
        "_current",
        "_declined",
        "_declined_framing",
        "_drain_waiters",
        "_error_detail",
        "_error_headers",
        "_error_status",
        "_expect_100",
        "_fd",
        "_field_bytes",
        "_h2_check",
        "_h2_seen",
        "_h2c_head",
        "_head_started",
        "_headers",
        "_hosts",
        "_idle_since",
        "_line",
        "_lock",
        "_proxy",
        "_queue",
        "_reading_paused",
        "_server",
        "_transfer_encoding",
        "_upgrade",
        "_url",
        "_write_paused",
        "_write_paused_since",
        "_ws",
        "ctx",
        "extensions",
        "loop",
        "parser",
        "scheme",
        "transport",
    )

    def __init__(
        self,
        ctx: ServerContext,
        loop: asyncio.AbstractEventLoop,
        proxy: ProxyHeader | None = None,
    ) -> None:
        self.ctx = ctx
        self.loop = loop
        self._proxy = proxy  # a PROXY protocol prelude read before this connection
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.scheme = "http"
        self.extensions: dict[str, Any] | None = None  # ASGI scope extensions (tls)
        self._client: tuple[str, int] | None = None
        self._server: tuple[str, int | None] | None = None
        self._url = b""
        self._headers: Headers = []
        self._hosts = 0
        self._content_length: bytes | None = None
        self._transfer_encoding: bytes | None = None
        self._line: bytes | None = None  # a request line still arriving (see data_received)
        self._head_started = -1.0
        self._field_bytes = 0  # bytes of the head line still arriving (_bound_field)
        self._expect_100 = False
        self._current: Http1Stream | None = None  # being parsed
        self._active: Http1Stream | None = None  # being served by the app
        self._queue: deque[Http1Stream] | None = None  # pipelined, waiting
        self._reading_paused = False
        self._write_paused = False
        self._write_paused_since = 0.0
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._closing = False
        self._error_status = 0
        self._error_detail = ""
        self._error_headers: Headers = []
        self._upgrade: bytes | None = None
        self._ws: WebSocketSession | None = None
        self._h2c_head: RequestHead | None = None
        self._declined: Http1Stream | None = None  # an Upgrade request we serve as HTTP
        self._declined_framing: tuple[bytes | None, bytes | None] = (None, None)
        self._body_only: Http1Stream | None = None
        # WSGI threads may write whole responses to the socket themselves (see
        # Http1Stream.send_threadsafe); the lock orders that against new requests.
        self._lock = threading.Lock() if ctx.threaded else None
        self._fd = -1
        # Cleartext with HTTP/2 enabled: look for the prior-knowledge preface first.
        self._h2_check = ctx.config.http != "1"
        self._h2_seen = b""
        self._idle_since = ctx.now

    # -- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        self._client = socket_address(transport.get_extra_info("peername"))
        self._server = socket_address(transport.get_extra_info("sockname"))
        proxy = self._proxy
        if proxy is not None and not proxy.local:
            self._client, self._server = proxy.client, proxy.server
            ssl_tlv = proxy.tlvs.get("ssl")
            if isinstance(ssl_tlv, dict) and int(ssl_tlv.get("client", 0)) & 0x01:
                self.scheme = "https"  # the client spoke TLS to the proxy (PP2_CLIENT_SSL)
        ctx = self.ctx
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None and self._lock is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                self._fd = sock.fileno()
        if len(ctx.connections) >= ctx.config.max_connections or ctx.shutting_down:
            # Over --max-connections (or stopping): say so instead of leaving it hanging.
            self._closing = True
            self._write_error(503)
            self.transport.close()
            return
        if ssl_object is not None:
            self.scheme = "https"
            self.extensions = tls_extension(ssl_object, ctx.tls_server_cert)
            # ALPN decides; with --http 2 anything but h2 is refused.
            self._h2_check = ctx.config.http == "2"
            if ssl_object.selected_alpn_protocol() == "h2":
                self._switch_to_h2(b"")
                return
        ctx.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.connections.discard(self)
        if self._ws is not None and not self._ws.accepted:
            self._ws.connection_lost(exc)
        lock = self._lock
        if lock is None:
            self._closing = True
        else:
            # The transport closes the fd after this returns: a WSGI thread writing to it
            # (send_threadsafe) finishes first, and none starts after (fd reuse).
            with lock:
                self._closing = True
        for stream in (self._active, self._current):
            if stream is not None:
                stream._lost()
        if self._queue:
            for stream in self._queue:
                stream._lost()
            self._queue.clear()
        self._wake_drain_waiters()
        self.parser = None  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        ws = self._ws
        if ws is not None:
            # Upgraded, not yet accepted: read on, so a client that leaves is seen (accept
            # then raises), and hold the bytes for the session up to a bound.
            if ws.early_data(data) > BODY_HIGH_WATER:
                self._pause_reading()
            return
        current = self._current
        # The first bytes of a connection: HTTP/2 with prior knowledge?
        if self._h2_check and not self._h2_preface_check(data):
            return
        try:
            # One head or one body per feed, so that a request pipelined in the same read
            # has its line checked and a chunked body its extensions counted. A head or a
            # chunked body ends at CRLF CRLF (perhaps begun in the last read), a body with a
            # Content-Length where it says; a split too many costs only a call.
            while data:
                if current is None or current._overhead >= 0:
                    end = data.find(b"\n", 0, 3) + 1
                    if not end:
                        end = data.find(b"\r\n\r\n")
                        end = 0 if end < 0 else end + 4
                else:
                    end = int(self._content_length or 0) - current._received
                piece = data[:end] if 0 < end < len(data) else data
                if current is None:
                    line = self._line
                    if line is not None or self._head_started < 0:
                        # A request starts at piece[0]: check its line.
                        if self._head_started < 0:
                            self._field_bytes = 0
                        line = piece if line is None else line + piece
                        ok = check_request_line(line)
                        if ok is False:
                            raise RequestRejected(400, "malformed request line")
                        self._line = line if ok is None else None
                    self.parser.feed_data(piece)
                    if self._head_started >= 0:
                        self._bound_field(piece)
                elif current._overhead >= 0:
                    # Inside a chunked body: bytes that are neither chunk data nor framing
                    # are chunk extensions, which llhttp skips; bound them (CVE-2024-22019
                    # class). A piece ends where the body does if it ends in this read.
                    before = current._received
                    self.parser.feed_data(piece)
                    current._overhead += len(piece) - (current._received - before)
                    if current._overhead > current._chunks * 24 + self.ctx.limit_field_size:
                        self._current = current  # answered as a body that broke off
                        raise RequestRejected(400, "chunk extensions too large")
                else:
                    self.parser.feed_data(piece)
                data = data[len(piece) :]
                current = self._current
        except RequestRejected as rejected:  # not "exc": mypyc types it RequestRejected below
            logger.debug("rejected request from %s: %d %s", self._client, rejected.status, rejected)
            self._protocol_error(rejected.status, str(rejected), rejected.headers)
        except httptools.HttpParserUpgrade as exc:
            ws = self._ws
            if ws is not None:
                if ws.early_data(data[exc.args[0] :]) > BODY_HIGH_WATER:
                    self._pause_reading()
                return
            if self._h2c_head is not None:
                self._upgrade_h2c(data[exc.args[0] :])
                return
            self._declined_upgrade(data[exc.args[0] :])
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, RequestRejected):
                logger.debug("rejected request from %s: %d %s", self._client, cause.status, cause)
                self._protocol_error(cause.status, str(cause), cause.headers)
            else:
                logger.debug("bad request from %s: %s", self._client, exc)
                self._protocol_error(400, "")

    def _declined_upgrade(self, rest: bytes) -> None:
        """An Upgrade we do not take (an unknown protocol, h2c with a body): serve the
        request as plain HTTP (RFC 9110 section 7.8), then close. llhttp ended the
        message at its head, so its body, if any, is read through a fresh parser."""
        stream, self._declined = self._declined, None
        if stream is None:
            self._pause_reading()
            return
        stream.keep_alive = False
        length, coding = self._declined_framing
        if coding is None and length in (None, b"0"):
            self._pause_reading()
            return
        stream._body_done = False
        self._body_only = stream
        self.parser = httptools.HttpRequestParser(self)
        framing = b"transfer-encoding: chunked" if coding else b"content-length: %s" % length
        self.data_received(b"POST / HTTP/1.1\r\nhost: x\r\n" + framing + b"\r\n\r\n" + rest)

    def _bound_field(self, data: bytes) -> None:
        """Bound the head line still arriving: httptools joins a field's pieces until its
        line ends (quadratic copies), and on_header sees it only then, so an endless field
        would grow until header_timeout without this."""
        size = self._field_bytes
        end = data.rfind(b"\n")
        if size < 0:
            size = 0  # a head ended in this read: where the next one began is unknown
        elif end < 0:
            size += len(data)
        else:
            size = len(data) - end - 1
        self._field_bytes = size
        ctx = self.ctx
        if size > max(ctx.limit_field_size, ctx.limit_line) + 256:  # + room for OWS
            raise RequestRejected(431, "header field larger than limit_request_field_size")

    def eof_received(self) -> bool | None:
        # EOF means the client is gone (as for uvicorn, gunicorn): a half-closing
        # client cannot be told from one that left, and apps streaming to a client
        # that left must learn it (http.disconnect). Close; in-flight work sees it.
        return None

    def pause_writing(self) -> None:
        self._write_paused = True
        self._write_paused_since = self.ctx.now

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain_waiters()

    def _wake_drain_waiters(self) -> None:
        waiters = self._drain_waiters
        if waiters:
            self._drain_waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # -- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._hosts = 0
        self._content_length = None
        self._transfer_encoding = None
        self._upgrade = None
        self._expect_100 = False
        self._idle_since = -1.0
        self._head_started = self.ctx.now

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.ctx.limit_line:
            raise RequestRejected(414, "request target longer than limit_request_line")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._current is not None:
            # A trailer field after a chunked body: dropped, never merged into the head the
            # app already holds (RFC 9110 section 6.5.1); data_received bounds its bytes.
            return
        ctx = self.ctx
        name = name.lower()
        if value[-1:] in b" \t" and value:
            value = value.rstrip(b" \t")  # trailing OWS is not part of the value (RFC 9110 5.5)
        headers = self._headers
        headers.append((name, value))
        if len(headers) > ctx.limit_fields:
            raise RequestRejected(431, "more header fields than limit_request_fields")
        if len(name) + len(value) > ctx.limit_field_size:
            raise RequestRejected(431, "header field larger than limit_request_field_size")
        if name == b"host":
            self._hosts += 1
            if _HOST.fullmatch(value) is None:  # RFC 9112 section 3.2: 400
                raise RequestRejected(400, "invalid Host header")
        elif name == b"content-length":
            self._content_length = value
        elif name == b"transfer-encoding":
            # Field lines combine (RFC 9110 section 5.3): "gzip" then "chunked" is not chunked.
            te = self._transfer_encoding
            self._transfer_encoding = value if te is None else te + b", " + value
        elif name == b"upgrade":
            self._upgrade = value
        elif name == b"expect" and value.lower() == b"100-continue":
            self._expect_100 = True

    def on_headers_complete(self) -> None:
        parser = self.parser
        self._head_started = -1.0
        body_only = self._body_only
        if body_only is not None:
            # The synthetic head of a declined upgrade's body (see _declined_upgrade).
            self._body_only = None
            self._current = body_only
            if self._transfer_encoding is not None:
                body_only._overhead = 0
            return
        self._field_bytes = -1  # a head ended in this read (see _bound_field)
        version = parser.get_http_version()
        if version != "1.1":
            if version != "1.0":
                raise RequestRejected(505, f"HTTP version {version} not supported")
            if self._hosts > 1:
                raise RequestRejected(400, "more than one Host header")
            if self._transfer_encoding is not None:
                # RFC 9112 section 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
                raise RequestRejected(400, "Transfer-Encoding in an HTTP/1.0 request")
        elif self._hosts != 1:
            # RFC 9112 section 3.2: exactly one Host in HTTP/1.1.
            raise RequestRejected(400, "HTTP/1.1 request without exactly one Host header")
        coding = self._transfer_encoding
        if coding is not None and coding.strip().lower() != b"chunked":
            # Only "chunked", alone, is served (llhttp lets ", chunked" and
            # "gzip, chunked" through): 501 for codings we lack, 400 for the malformed.
            codings = [part.strip() for part in coding.split(b",")]
            if all(_TOKEN.fullmatch(part) for part in codings):
                raise RequestRejected(501, "unsupported transfer coding")
            raise RequestRejected(400, "malformed Transfer-Encoding")
        max_body = self.ctx.max_body_size
        length = self._content_length
        if length is not None and max_body and int(length) > max_body:
            raise RequestRejected(413, "Content-Length larger than max_body_size")
        url = self._url
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
            if b"#" in url:  # a fragment is never part of the target (RFC 9112 3.2)
                path = path.partition(b"#")[0]
                query = query.partition(b"#")[0]
        elif url == b"*":
            path, query = url, b""
        else:
            # Any: httptools' stub says bytes and int, but absent parts are None, and
            # mypyc checks the declared types at run time.
            parsed: Any = httptools.parse_url(url)
            path = parsed.path or b"/"
            query = parsed.query or b""
            if parsed.host:
                # RFC 9112 section 3.2.2: the target's authority wins over Host.
                authority = (
                    parsed.host
                    if parsed.port is None
                    else b"%s:%d"
                    % (
                        parsed.host,
                        parsed.port,
                    )
                )
                self._headers = [(n, v) for n, v in self._headers if n != b"host"]
                self._headers.append((b"host", authority))
        head = RequestHead(
            parser.get_method().decode("ascii"),
            path,
            query,
            version,
            self._headers,
            self.scheme,
            self._client,
            self._server,
        )
        upgrade = self._upgrade
        if upgrade is not None and parser.should_upgrade():
            kind = upgrade.lower()
            if kind == b"websocket":
                self._websocket(head)
                return
            if kind == b"h2c" and self._h2c_allowed(head):
                self._h2c_head = head
                return
        stream = Http1Stream(self, head, parser.should_keep_alive(), self._expect_100)
        if upgrade is not None:
            # llhttp will end this message at its head (it expects an upgrade).
            self._declined = stream
            self._declined_framing = (self._content_length, self._transfer_encoding)
        if self._transfer_encoding is not None:
            stream._overhead = 0  # count chunk framing from the first byte (data_received)
        self._current = stream
        lock = self._lock
        if lock is not None:
            lock.acquire()  # a WSGI thread may be completing the active response
        try:
            start = self._active is None
            if start:
                self._active = stream
            else:
                if self._queue is None:
                    self._queue = deque()
                self._queue.append(stream)
                self._pause_reading()
        finally:
            if lock is not None:
                lock.release()
        if start:
            self._start(stream)

    def _websocket(self, head: RequestHead) -> None:
        """An Upgrade: websocket request: the app decides (ASGI) via a WebSocketSession."""
        ctx = self.ctx
        if ctx.ws_handler is None:
            raise RequestRejected(400, "this application does not serve WebSocket (WSGI)")
        if self._active is not None or self._queue:
            raise RequestRejected(400, "WebSocket handshake pipelined behind another request")
        error = handshake_error(head)
        if error is not None:
            raise RequestRejected(error[0], error[2], error[1])
        stream = Http1Stream(self, head, False, False)
        stream.start_time = perf_counter()  # a denial is a response with a duration
        ctx.requests += 1  # a handshake is a request: answered by a 101 or a denial
        self._current = stream
        self._active = stream
        ws = WebSocketSession(self, stream, self.transport)
        self._ws = ws
        ctx.ws_handler(ws)

    # -- HTTP/2: prior knowledge, Upgrade: h2c, and ALPN (see connection_made) -------------

    def _h2_preface_check(self, data: bytes) -> bool:
        """False when the connection became HTTP/2 (or waits for more preface bytes)."""
        seen = self._h2_seen + data
        if len(seen) < len(H2_PREFACE) and H2_PREFACE.startswith(seen):
            self._h2_seen = seen
            return False
        self._h2_check = False
        self._h2_seen = b""
        if seen.startswith(H2_PREFACE):
            self._switch_to_h2(seen)
            return False
        if self.ctx.config.http == "2":
            line, crlf, _ = seen.partition(b"\r\n")
            if crlf and b" HTTP/1." not in line:
                self._switch_to_h2(seen)  # not HTTP/1.x: an invalid preface, GOAWAY
            else:
                self._send_protocol_error(505)  # --http 2: HTTP/1.1 is refused
            return False
        if len(seen) > len(data):
            self.data_received(seen)  # replay the bytes held while checking
            return False
        return True

    def _hand_to_h2(self) -> Http2Connection:
        """This connection becomes HTTP/2: the transport gets a new protocol."""
        from threshold.protocols.http2 import Http2Connection

        self.ctx.connections.discard(self)
        self._closing = True
        h2conn = Http2Connection(self.ctx, self.loop, self.extensions)
        self.transport.set_protocol(h2conn)
        h2conn.connection_made(self.transport)
        # What this connection learnt (a PROXY header, TLS) stays true over HTTP/2.
        h2conn.client, h2conn.server, h2conn.scheme = self._client, self._server, self.scheme
        return h2conn

    def _switch_to_h2(self, data: bytes) -> None:
        h2conn = self._hand_to_h2()
        h2conn.start()
        if data:
            h2conn.data_received(data)

    def _h2c_allowed(self, head: RequestHead) -> bool:
        if self.ctx.config.http == "1" or self.scheme == "https" or self._active is not None:
            return False
        if self._content_length not in (None, b"0") or self._transfer_encoding is not None:
            return False  # an upgrade with a body is served as HTTP/1.1 (RFC 9113 allows it)
        return any(name == b"http2-settings" for name, _ in head.headers)

    def _upgrade_h2c(self, rest: bytes) -> None:
        """Upgrade: h2c — 101, then the request is answered on stream 1."""
        head = self._h2c_head
        assert head is not None
        settings = next(value for name, value in head.headers if name == b"http2-settings")
        head.headers = [
            (name, value)
            for name, value in head.headers
            if name not in (b"connection", b"upgrade", b"http2-settings")
        ]
        head.http_version = "2"
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"
        )
        h2conn = self._hand_to_h2()
        try:
            h2conn.start_upgraded(settings, head)
        except Exception as exc:
            logger.debug("bad h2c upgrade from %s: %s", self._client, exc)
            self.transport.close()
            return
        if rest:
            h2conn.data_received(rest)

    def accept_websocket(self, session: WebSocketSession, headers: Headers) -> None:
        """The app accepted: 101, and the session owns the transport from here on."""
        ctx = self.ctx
        if ctx.metrics is not None:
            ctx.metrics.websocket_opened()
        self.transport.write(upgrade_response(session.head, ctx.default_headers, headers))
        stream = session.http
        if ctx.access_log is not None and isinstance(stream, Http1Stream):
            # The handshake's response is the 101: logged and counted as answered.
            ctx.access_log(stream, 101, 0, perf_counter() - stream.start_time)
        ctx.connections.discard(self)
        ctx.connections.add(session)
        self._active = None
        self._current = None
        self._closing = True
        self.transport.set_protocol(session)
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    def on_chunk_header(self) -> None:
        stream = self._current
        if stream is not None:
            stream._chunks += 1

    def on_body(self, body: bytes) -> None:
        stream = self._current
        if stream is not None:
            stream._feed(body)

    def on_message_complete(self) -> None:
        stream = self._current
        if stream is not None:
            self._current = None
            stream._feed_done()
            if self._active is None and stream._discard:
                self._idle_since = self.ctx.now

    # -- request lifecycle --------------------------------------------------------

    def _start(self, stream: Http1Stream) -> None:
        ctx = self.ctx
        self._active = stream
        ctx.requests += 1
        if ctx.access_log is not None:
            stream.start_time = perf_counter()
        if ctx.timeout_request:
            stream.deadline = ctx.now + ctx.timeout_request
        ctx.handler(stream)

    def _response_complete(self, stream: Http1Stream) -> None:
        ctx = self.ctx
        if ctx.access_log is not None:
            ctx.access_log(
                stream, stream.status, stream.body_sent, perf_counter() - stream.start_time
            )
        self._active = None
        if not stream._body_done:
            if stream._expect_100:
                stream.keep_alive = False  # the client may still send the body, or not
            else:
                stream._discard = True  # read and drop the rest of the unread body
                stream._body.clear()
                stream._body_size = 0
        if not stream.keep_alive or self._closing:
            self._close()
            return
        queue = self._queue
        if queue:
            self._start(queue.popleft())
            self._maybe_resume_reading()
        elif self._error_status and self._current is None:
            self._send_protocol_error(self._error_status)
        else:
            if self._current is None:
                self._idle_since = ctx.now
            self._maybe_resume_reading()

    def _response_aborted(self, stream: Http1Stream) -> None:
        self._active = None
        self._close()

    def _protocol_error(self, status: int, detail: str, headers: Headers | None = None) -> None:
        """The parser rejected the input: answer after any in-flight response, then close."""
        if status == 0:
            self._close()
            return
        self._error_status = status
        self._error_detail = detail
        self._error_headers = headers or []
        stream = self._current
        self._current = None
        self._pause_reading()
        if stream is not None:
            # The body broke off: that request is never served whole. Answer it with
            # the error if the app has not started a response, and end its body reads.
            if self._queue and self._queue[-1] is stream:
                self._queue.pop()
            elif stream is self._active and not stream.send_error(status):
                stream.abort()
            stream._lost()
        if self._active is None:
            self._send_protocol_error(status)

    def _send_protocol_error(self, status: int) -> None:
        if self.transport.is_closing():
            return
        self._write_error(status, self._error_detail, self._error_headers)
        self._close()

    def _write_error(self, status: int, detail: str = "", headers: Headers | None = None) -> None:
        """A complete plain-text error response with ``connection: close``."""
        metrics = self.ctx.metrics
        if metrics is not None:
            metrics.limit_hit(status)
        text = f"{status} {HTTPStatus(status).phrase}"
        body = (f"{text}: {detail}\n" if detail else f"{text}\n").encode()
        extra = b"".join(name + b": " + value + b"\r\n" for name, value in headers or ())
        self.transport.write(
            b"".join(
                (
                    STATUS_LINES[status],
                    self.ctx.default_headers,
                    extra,
                    b"content-type: text/plain; charset=utf-8\r\n",
                    b"content-length: %d\r\n" % len(body),
                    b"connection: close\r\n\r\n",
                    body,
                )
            )
        )

    def _pause_reading(self) -> None:
        if not self._reading_paused and not self._closing:
            self._reading_paused = True
            self.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if not self._reading_paused or self._closing or self._queue or self._error_status:
            return
        current = self._current
        if current is not None and current._body_size > BODY_HIGH_WATER:
            return
        self._reading_paused = False
        self.transport.resume_reading()

    def _close(self) -> None:
        self._closing = True
        if not self.transport.is_closing():
            self.transport.close()

    # -- what the server calls ----------------------------------------------------

    def shutdown(self) -> None:
        self._closing = True
        if self._active is None:
            self._close()

    def on_tick(self, now: float) -> None:
        """Once a second: every timeout of this connection (coarse by design: one timer
        for all connections, no handle per connection)."""
        ctx = self.ctx
        if self._closing:
            return
        idle_since = self._idle_since
        if (
            idle_since < 0
            and self._active is None
            and self._current is None
            and self._head_started < 0
        ):
            # A response a WSGI thread completed itself: idle from now on.
            self._idle_since = idle_since = now
        if idle_since >= 0:
            # idle_since is ctx.now, up to a tick older than the moment the connection
            # went idle: allow that tick, or a connection may close right after a response.
            if now - idle_since > ctx.keep_alive_timeout + 1.0:
                self._close()  # RFC 9112 section 9.6: a silent close between requests
            return
        if self._head_started >= 0 and now - self._head_started > ctx.header_timeout:
            logger.debug("request head from %s too slow; 408", self._client)
            if self._active is None:
                self._send_protocol_error(408)
            else:
                self._close()
            return
        if self._write_paused and now - self._write_paused_since > ctx.send_timeout:
            logger.debug("client %s stopped reading; dropped", self._client)
            self.abort()
            return
        stream = self._active
        if stream is None:
            return
        if stream._wait_since >= 0 and now - stream._wait_since > ctx.body_timeout:
            logger.debug("request body from %s stalled; closing", self._client)
            stream._lost()
            self._close()
        elif stream.deadline and now > stream.deadline:
            stream.expire(self.ctx.timeout_request)

    def abort(self) -> None:
        self._closing = True
        self.transport.abort()
