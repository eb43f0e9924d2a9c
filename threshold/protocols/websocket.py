"""WebSocket sessions (RFC 6455, permessage-deflate RFC 7692).

Framing is the sans-I/O ``websockets`` protocol (C-accelerated masking; bounded
decompression); this module does the opening handshake itself (the app decides
to accept), reassembles messages with UTF-8 checks, bounds the receive queue,
pings idle peers and owns the transport once the handshake is done. It serves
an HTTP/1.1 Upgrade today and is written against a transport, so HTTP/2's
extended CONNECT can host it too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import logging
import os
import struct
from collections import deque
from typing import Any, Protocol, cast

from websockets.extensions.base import ServerExtensionFactory
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.headers import build_extension, parse_extension
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.utils import accept_key

from threshold.context import ServerContext
from threshold.stream import (
    ClientDisconnected,
    Headers,
    RequestHead,
    Stream,
    WebSocketClosed,
    WebSocketStream,
)


class WebSocketHost(Protocol):
    """The connection a WebSocket arrived on (HTTP/1.1 Upgrade or HTTP/2 CONNECT)."""

    ctx: ServerContext
    loop: asyncio.AbstractEventLoop

    def accept_websocket(self, session: WebSocketSession, headers: Headers) -> None:
        """Answer the handshake (101 or :status 200) and hand the bytes to the session."""


logger = logging.getLogger("threshold.error")

CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_ABNORMAL = 1006
CLOSE_INVALID_DATA = 1007
CLOSE_INTERNAL_ERROR = 1011

_utf8_decoder = codecs.getincrementaldecoder("utf-8")


def handshake_error(head: RequestHead) -> tuple[int, Headers, str] | None:
    """Check an Upgrade: websocket request (RFC 6455 section 4.2.1), or an HTTP/2
    extended CONNECT (RFC 8441 section 5: no key, the version still 13).

    Returns (status, extra headers, message) for a bad handshake, else None.
    """
    version = key = None
    for name, value in head.headers:
        if name == b"sec-websocket-version":
            version = value
        elif name == b"sec-websocket-key":
            key = value
    h2 = head.http_version == "2"
    if head.method != ("CONNECT" if h2 else "GET"):
        return 400, [], "WebSocket handshake must be a GET request"
    if version is None or version.strip() != b"13":
        return 426, [(b"sec-websocket-version", b"13")], "Unsupported WebSocket version"
    if h2:
        return None
    try:
        if key is None or len(base64.b64decode(key.strip(), validate=True)) != 16:
            raise ValueError
    except (ValueError, binascii.Error):
        return 400, [], "Missing or invalid Sec-WebSocket-Key"
    return None


def upgrade_response(head: RequestHead, default_headers: bytes, headers: Headers) -> bytes:
    """The HTTP/1.1 101 answer to a handshake the app accepted."""
    key = next((value.strip() for name, value in head.headers if name == b"sec-websocket-key"))
    lines = [
        b"HTTP/1.1 101 Switching Protocols\r\n",
        default_headers,
        b"upgrade: websocket\r\nconnection: Upgrade\r\n",
        b"sec-websocket-accept: " + accept_key(key.decode("ascii")).encode() + b"\r\n",
    ]
    lines.extend(name + b": " + value + b"\r\n" for name, value in headers)
    lines.append(b"\r\n")
    return b"".join(lines)


def offered_subprotocols(head: RequestHead) -> list[str]:
    result: list[str] = []
    for name, value in head.headers:
        if name == b"sec-websocket-protocol":
            result.extend(
                part.strip() for part in value.decode("latin-1").split(",") if part.strip()
            )
    return result


def _frame_header(first: int, length: int) -> bytes:
    """FIN + opcode, then the payload length (RFC 6455 section 5.2); servers do not mask."""
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


class _ServerProtocol(ServerProtocol):
    """websockets' server protocol, but a close frame may end a fragmented message.

    RFC 6455 section 5.4 lets control frames arrive between fragments; websockets fails a
    close there with 1002, where the peer asked for a normal close (Autobahn 7.1.5). The
    unfinished message is dropped. The counter is ``current_size`` (``cur_size`` before 15).
    """

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.CLOSE:
            for name in ("current_size", "cur_size"):
                if getattr(self, name, None) is not None:
                    setattr(self, name, None)
        super().recv_frame(frame)


class WebSocketSession(WebSocketStream, asyncio.Protocol):
    """One WebSocket connection; the transport's protocol after the handshake."""

    def __init__(self, conn: WebSocketHost, http: Stream, transport: asyncio.Transport) -> None:
        self.conn = conn
        self.ctx: ServerContext = conn.ctx
        self.http = http
        self.head = http.head
        self.subprotocols = offered_subprotocols(self.head)
        self.transport = transport  # the socket (HTTP/1.1) or one stream (HTTP/2, RFC 8441)
        self.loop = conn.loop
        self._stream_drain = getattr(transport, "drain", None)
        self.proto: ServerProtocol | None = None  # set on accept
        self.accepted = False
        self._plain = False  # no extension: messages are framed here, not by websockets
        self._early: list[bytes] = []  # bytes after the handshake request, before accept
        self._queue: deque[str | bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._write_paused = False
        self._reading_paused = False
        self._closed: WebSocketClosed | None = None  # set once the socket is done
        self._lost = False
        self._frag_opcode: Opcode | None = None
        self._frag_parts: list[bytes] = []
        self._frag_decoder: Any = None
        self._ping_payload: bytes | None = None
        self._ping_sent = 0.0
        self._last_seen = 0.0
        self._close_sent_at = -1.0

    # -- handshake ------------------------------------------------------------------

    def early_data(self, data: bytes) -> int:
        """Bytes the client sent after its handshake request (fed once accepted); the
        total held so far."""
        if data:
            self._early.append(data)
        return sum(map(len, self._early))

    async def accept(self, subprotocol: str | None, headers: Headers) -> None:
        if self.accepted or self._lost:
            raise ClientDisconnected("WebSocket already accepted or gone")
        config = self.ctx.config
        offers: list[Any] = []
        for name, value in self.head.headers:
            if name == b"sec-websocket-extensions" and config.ws_per_message_deflate:
                try:
                    offers.extend(parse_extension(value.decode("latin-1")))
                except Exception:
                    logger.debug("ignoring malformed Sec-WebSocket-Extensions")
        response: Headers = []
        extensions = []
        factory: ServerExtensionFactory = ServerPerMessageDeflateFactory(
            client_max_window_bits=None, compress_settings={"memLevel": 5}
        )
        for offer, params in offers:  # not "name": mypyc holds it to bytes (the loop above)
            if offer != factory.name:
                continue
            try:
                response_params, extension = factory.process_request_params(params, [])
            except Exception:
                continue  # NegotiationError: try the next offer
            extensions.append(extension)
            header = build_extension([(offer, response_params)])
            response.append((b"sec-websocket-extensions", header.encode()))
            break
        if subprotocol is not None:
            response.append((b"sec-websocket-protocol", subprotocol.encode()))
        for name, value in headers:
            if b"\r" in name + value or b"\n" in name + value or b"\x00" in name + value:
                raise ValueError("CR, LF or NUL in a WebSocket accept header")
            response.append((bytes(name), bytes(value)))
        proto = _ServerProtocol(state=State.OPEN, max_size=config.ws_max_message_size)
        proto.extensions = extensions
        self.proto = proto
        self._plain = not extensions
        self.accepted = True
        self._last_seen = self.ctx.now
        self.conn.accept_websocket(self, response)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)

    # -- asyncio.Protocol (after accept) ----------------------------------------------

    def data_received(self, data: bytes) -> None:
        proto = self.proto
        assert proto is not None
        self._last_seen = self.ctx.now
        proto.receive_data(data)
        for frame in proto.events_received():
            self._frame(cast(Frame, frame))
        if proto.parser_exc is not None and proto.close_sent is not None:
            # The library failed the connection (1002, 1007, 1009...): the app sees that code.
            self._set_closed(proto.close_sent.code, proto.close_sent.reason)
        self._flush()

    def eof_received(self) -> bool | None:
        if self.proto is not None:
            self.proto.receive_eof()
            self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.ctx.connections.discard(self)
        proto = self.proto
        if proto is not None and proto.close_rcvd is not None:
            self._set_closed(proto.close_rcvd.code, proto.close_rcvd.reason)
        else:
            self._set_closed(CLOSE_ABNORMAL, "")
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- frames in ------------------------------------------------------------------------

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                if opcode is Opcode.TEXT:
                    try:
                        self._deliver(bytes(frame.data).decode("utf-8"))
                    except UnicodeDecodeError:
                        self._fail(CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")
                else:
                    self._deliver(bytes(frame.data))
                return
            self._frag_opcode = opcode
            self._frag_parts = []
            self._frag_decoder = _utf8_decoder() if opcode is Opcode.TEXT else None
            self._fragment(frame)
        elif opcode is Opcode.CONT:
            self._fragment(frame)
        elif opcode is Opcode.PONG:
            if self._ping_payload is not None and frame.data == self._ping_payload:
                self._ping_payload = None
        elif opcode is Opcode.CLOSE:
            proto = self.proto
            assert proto is not None
            close = proto.close_rcvd
            if close is not None:
                self._set_closed(close.code, close.reason)

    def _fragment(self, frame: Frame) -> None:
        decoder = self._frag_decoder
        if decoder is not None:
            try:
                # Decode as fragments arrive: invalid UTF-8 fails fast (Autobahn 6.4).
                self._frag_parts.append(decoder.decode(bytes(frame.data), frame.fin).encode())
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_DATA, "invalid UTF-8 in a text message")
                return
        else:
            self._frag_parts.append(bytes(frame.data))
        if frame.fin:
            data = b"".join(self._frag_parts)
            self._frag_parts = []
            if self._frag_opcode is Opcode.TEXT:
                self._deliver(data.decode("utf-8"))
            else:
                self._deliver(data)
            self._frag_opcode = None
            self._frag_decoder = None

    def _deliver(self, message: str | bytes) -> None:
        self._queue.append(message)
        self._wake()
        if len(self._queue) >= self.ctx.config.ws_max_queue and not self._reading_paused:
            self._reading_paused = True  # the app is slower than the client
            self.transport.pause_reading()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _set_closed(self, code: int, reason: str) -> None:
        if self._closed is None:
            self._closed = WebSocketClosed(code, reason)
        self._wake()

    def _fail(self, code: int, reason: str) -> None:
        proto = self.proto
        assert proto is not None
        proto.fail(code, reason)
        self._set_closed(code, reason)
        self._flush()

    def _flush(self) -> None:
        proto = self.proto
        assert proto is not None
        for data in proto.data_to_send():
            if data:
                self.transport.write(data)
            else:  # end of the closing handshake: the server closes TCP first
                self.transport.close()
        if proto.state is State.CLOSED or (proto.state is State.CLOSING and proto.close_rcvd):
            close = proto.close_rcvd
            if close is not None:
                self._set_closed(close.code, close.reason)

    # -- what the interface calls -----------------------------------------------------------

    async def receive(self) -> str | bytes:
        while True:
            if self._queue:
                message = self._queue.popleft()
                if self._reading_paused and len(self._queue) <= self.ctx.config.ws_max_queue // 2:
                    self._reading_paused = False
                    if not self._lost:
                        self.transport.resume_reading()
                return message
            if self._closed is not None:
                raise self._closed
            waiter = self.loop.create_future()
            self._waiter = waiter
            await waiter

    async def send(self, data: str | bytes) -> None:
        proto = self.proto
        if proto is None or self._lost or proto.state is not State.OPEN:
            raise ClientDisconnected("WebSocket is closed")
        if self._plain:
            # One unfragmented, unmasked frame is a header and the payload: built here,
            # it skips websockets' Frame objects (the state machine has nothing to track).
            if isinstance(data, str):
                payload = data.encode("utf-8")
                self.transport.write(_frame_header(0x81, len(payload)) + payload)
            else:
                self.transport.write(b"".join((_frame_header(0x82, len(data)), data)))
        else:
            if isinstance(data, str):
                proto.send_text(data.encode("utf-8"))
            else:
                proto.send_binary(data)
            self._flush()
        if self._stream_drain is not None:  # HTTP/2: the stream's flow control
            await self._stream_drain()
        while self._write_paused and not self._lost:
            waiter = self.loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
        if self._lost:
            raise ClientDisconnected("WebSocket is closed")

    async def close(self, code: int, reason: str) -> None:
        proto = self.proto
        if proto is None or self._lost or proto.state is not State.OPEN:
            return
        proto.send_close(code, reason)
        self._close_sent_at = self.ctx.now
        self._flush()

    def abort(self) -> None:
        if self.accepted:
            self.transport.abort()
        else:
            self.http.abort()

    # -- what the server calls (registry) ------------------------------------------------------

    def shutdown(self) -> None:
        """Server stopping: close with 1001 (going away); on_tick bounds the wait."""
        proto = self.proto
        if proto is not None and proto.state is State.OPEN and not self._lost:
            proto.send_close(CLOSE_GOING_AWAY, "server shutting down")
            self._close_sent_at = self.ctx.now
            self._flush()

    def on_tick(self, now: float) -> None:
        proto = self.proto
        if proto is None or self._lost:
            return
        config = self.ctx.config
        if self._close_sent_at >= 0:
            if now - self._close_sent_at > config.ws_close_timeout:
                self.transport.abort()  # the peer never answered our close
            return
        if proto.state is not State.OPEN or not config.ws_ping_interval:
            return
        if self._ping_payload is not None:
            if now - self._ping_sent > config.ws_ping_timeout:
                logger.debug("WebSocket peer %s did not answer a ping; dropped", self.head.client)
                self._set_closed(CLOSE_ABNORMAL, "")
                self.transport.abort()
        elif now - self._last_seen >= config.ws_ping_interval:
            self._ping_payload = os.urandom(4)
            self._ping_sent = now
            proto.send_ping(self._ping_payload)
            self._flush()
