"""HTTP/2 connection (RFC 9113) on :mod:`threshold.protocols.h2engine`.

Each request stream becomes an :class:`Http2Stream` for the interface layer, so
ASGI and WSGI apps are served exactly as over HTTP/1.1. Request bodies are
flow-controlled by the app's reading (WINDOW_UPDATE only as it consumes);
responses wait for the peer's windows (a slow client pauses the app). Floods of
resets and control frames end the connection with ENHANCE_YOUR_CALM.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from time import perf_counter
from typing import IO, Any

from threshold.context import ServerContext
from threshold.protocols import h2engine
from threshold.protocols.h2engine import (
    CANCEL,
    INTERNAL_ERROR,
    REFUSED_STREAM,
    H2Engine,
    bad_name,
)
from threshold.protocols.websocket import WebSocketSession, handshake_error
from threshold.stream import ClientDisconnected, Headers, RequestHead, Stream, socket_address

logger = logging.getLogger("threshold.error")

# Connection-specific fields that must not appear in HTTP/2 (RFC 9113 section 8.2.2).
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
NO_BODY_STATUS = frozenset({204, 304})
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024  # per connection; per stream is --h2-initial-window-size


class Http2Stream(Stream):
    """One request stream on an HTTP/2 connection."""

    __slots__ = (
        "_body",
        "_body_done",
        "_disconnected",
        "_drain_waiter",
        "_end_pending",
        "_finished",
        "_has_length",
        "_head",
        "_head_sent",
        "_is_head",
        "_pending",
        "_received",
        "_trailers",
        "_unacked",
        "_waiter",
        "blocked_since",
        "body_sent",
        "conn",
        "deadline",
        "head",
        "start_time",
        "status",
        "stream_id",
    )

    def __init__(self, conn: Http2Connection, stream_id: int, head: RequestHead) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.head = head
        self.cancel = None
        self.extensions = conn.extensions
        self._is_head = head.method == "HEAD"
        self._body: list[bytes] = []
        self._unacked = 0  # flow-controlled bytes received, not yet read by the app
        self._received = 0
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._body_done = False
        self._waiter: asyncio.Future[None] | None = None
        self._disconnected = False
        self._head: list[tuple[bytes, bytes]] | None = None
        self._head_sent = False
        self._has_length = False
        self.deadline = 0.0
        self.blocked_since = 0.0
        self._pending = bytearray()  # response bytes waiting for flow-control window
        self._end_pending = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._finished = False
        self.status = 0
        self.body_sent = 0
        self.start_time = 0.0

    # -- request body --------------------------------------------------------------

    def _feed(self, data: bytes, flow_length: int) -> None:
        self._received += len(data)
        self._body.append(data)
        self._unacked += flow_length
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _lost(self) -> None:
        self._disconnected = True
        self._wake()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive_body(self) -> tuple[bytes, bool]:
        while True:
            if self._body:
                data = b"".join(self._body)
                self._body.clear()
                if self._unacked:
                    self.conn._ack(self.stream_id, self._unacked)
                    self._unacked = 0
                return data, not self._body_done
            if self._body_done:
                return b"", False
            if self._disconnected:
                raise ClientDisconnected("stream reset while sending the body")
            waiter = self.conn.loop.create_future()
            self._waiter = waiter
            await waiter

    async def wait_disconnect(self) -> None:
        while not (self._disconnected or self._finished):
            waiter = self.conn.loop.create_future()
            self._waiter = waiter
            await waiter

    @property
    def disconnected(self) -> bool:
        return self._disconnected

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.conn.loop

    # -- response ------------------------------------------------------------------------

    def send_head(self, status: int, headers: Headers) -> None:
        if self._head is not None or self.status:
            raise RuntimeError("response already started")
        if self._disconnected:
            raise ClientDisconnected("stream reset")
        if not 100 <= status <= 999:
            raise ValueError(f"invalid status code {status!r}")
        out = [(b":status", b"%d" % status)]
        has_length = False
        for name, value in headers:
            lname = bytes(name).lower()
            if lname in _HOP_BY_HOP:
                continue
            if b"\r" in value or b"\n" in value or b"\x00" in value or bad_name(lname):
                raise ValueError("invalid response header")
            if lname == b"content-length":
                has_length = True
            out.append((lname, bytes(value)))
        self._has_length = has_length
        out.extend(self.conn.default_headers)
        rid = self.head.request_id
        if rid is not None and all(n != b"x-request-id" for n, _ in out):
            out.append((b"x-request-id", rid.encode("ascii")))
        self.status = status
        self._head = out

    def send_trailers(self, headers: Headers) -> None:
        if self._head is not None or not self._head_sent:
            self.send_body(b"", True)
        trailers = []
        for name, value in headers:
            lname = bytes(name).lower()
            if lname in _HOP_BY_HOP or lname[:1] == b":":
                continue
            if b"\r" in value or b"\n" in value or b"\x00" in value or bad_name(lname):
                raise ValueError("invalid trailer field")
            trailers.append((lname, bytes(value)))
        self._trailers = trailers
        self.send_body(b"", False)  # ends with a HEADERS frame carrying the trailers

    def send_informational(self, status: int, headers: Headers) -> None:
        if self._head_sent or self._disconnected or not 100 <= status < 200:
            return
        out = [(b":status", b"%d" % status)]
        for name, value in headers:
            lname = bytes(name).lower()
            if b"\r" in value or b"\n" in value or b"\x00" in value or bad_name(lname):
                raise ValueError("invalid informational header")
            out.append((lname, bytes(value)))
        self.conn._send_headers(self.stream_id, out, False)

    def send_body(self, data: bytes, more: bool) -> None:
        if self._finished:
            raise RuntimeError("response already complete")
        if self._disconnected:
            raise ClientDisconnected("stream reset")
        conn = self.conn
        head = self._head
        ended = False
        if head is not None:
            self._head = None
            self._head_sent = True
            # HEAD gets the content-length GET would have; 204 and 304 get none.
            bodiless = self.status in NO_BODY_STATUS
            if not more and data and not bodiless and not self._has_length:
                head.append((b"content-length", b"%d" % len(data)))
            if self._is_head or bodiless:
                data = b""
            ended = not more and not data
            conn._send_headers(self.stream_id, head, ended)
        elif not self._head_sent:
            raise RuntimeError("body sent before the response head")
        elif self._is_head or self.status in NO_BODY_STATUS:
            data = b""
        if data:
            self.body_sent += len(data)
            self._pending += data
        if not more:
            self._finished = True
            self._end_pending = not ended
            conn._stream_done(self)
        if self._pending or self._end_pending or ended:
            conn._flush_stream(self)

    @property
    def write_paused(self) -> bool:
        return bool(self._pending) or self.conn._write_paused

    async def drain(self) -> None:
        while (self._pending or self.conn._write_paused) and not self._disconnected:
            waiter = self.conn.loop.create_future()
            self._drain_waiter = waiter
            await waiter
        if self._disconnected:
            raise ClientDisconnected("stream reset")

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None:
            self._drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def send_file(self, file: IO[bytes], offset: int, count: int | None) -> None:
        file.seek(offset)
        while count is None or count > 0:
            data = file.read(65536 if count is None else min(65536, count))
            if not data:
                break
            if count is not None:
                count -= len(data)
            self.send_body(data, True)
            if self.write_paused:
                await self.drain()

    def send_error(self, status: int) -> bool:
        if self._head_sent or self._finished or self._disconnected:
            return False
        self._head = None
        self.status = 0
        metrics = self.conn.ctx.metrics
        if metrics is not None:
            metrics.limit_hit(status)  # 413, 504, 503: the server's answer, not the app's
        body = f"{status} {HTTPStatus(status).phrase}\n".encode()
        self.send_head(
            status,
            [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"%d" % len(body)),
            ],
        )
        self.send_body(body, False)
        return True

    def abort(self) -> None:
        if not self._finished:
            self._finished = True
            metrics = self.conn.ctx.metrics
            if metrics is not None:
                metrics.aborted()  # no response will complete: no longer in flight
            self.conn._reset(self, INTERNAL_ERROR)


class Http2Connection(asyncio.Protocol):
    """One HTTP/2 connection: h2 plus the streams it carries."""

    def __init__(
        self, ctx: ServerContext, loop: asyncio.AbstractEventLoop, extensions: Any = None
    ) -> None:
        self.ctx = ctx
        self.loop = loop
        self.extensions = extensions
        config = ctx.config
        self.h2 = H2Engine(
            self,
            max_concurrent_streams=config.h2_max_concurrent_streams,
            initial_window_size=config.h2_initial_window_size,
            max_frame_size=config.h2_max_frame_size,
            max_header_list_size=config.h2_max_header_list_size,
            # RFC 8441: WebSockets over HTTP/2, when the app can serve them.
            enable_connect_protocol=ctx.ws_handler is not None,
            connection_window=CONNECTION_WINDOW,
        )
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.streams: dict[int, Http2Stream] = {}
        self.scheme = "http"
        self.client: Any = None
        self.server: Any = None
        self.default_headers: list[tuple[bytes, bytes]] = []
        self._write_paused = False
        self._write_paused_since = 0.0
        self._blocked: dict[int, Http2Stream] = {}  # streams waiting for window
        self._discarding: dict[int, int] = {}  # answered streams still uploading: bytes seen
        self._tunnels: dict[int, StreamTunnel] = {}  # WebSocket streams (RFC 8441)
        self._closing = False
        self._resets = 0
        self._reset_window_start = ctx.now
        self._control_frames = 0
        self._idle_since = ctx.now
        self._goaway_sent = False
        self._write_scheduled = False

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        self.client = socket_address(transport.get_extra_info("peername"))
        self.server = socket_address(transport.get_extra_info("sockname"))
        if transport.get_extra_info("sslcontext") is not None:
            self.scheme = "https"
        self.ctx.connections.add(self)
        self._refresh_default_headers()

    def start(self) -> None:
        """Prior knowledge or ALPN: send our SETTINGS first (RFC 9113 section 3.4)."""
        self.h2.initiate()
        self._write()

    def start_upgraded(self, settings: bytes, head: RequestHead) -> None:
        """h2c via Upgrade: the HTTP/1.1 request becomes stream 1 (RFC 7540 section 3.2)."""
        self.h2.initiate_upgrade(settings)
        self._write()
        stream = Http2Stream(self, 1, head)
        stream._body_done = True
        self.streams[1] = stream
        self._start(stream)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.connections.discard(self)
        self._closing = True
        for stream in self.streams.values():
            stream._lost()
        self.streams.clear()
        self._blocked.clear()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._write_paused_since = self.ctx.now

    def resume_writing(self) -> None:
        self._write_paused = False
        for stream in list(self.streams.values()):
            stream._wake_drain()

    def data_received(self, data: bytes) -> None:
        try:
            self.h2.receive(data)
        except h2engine.H2ConnectionError as exc:
            logger.debug("HTTP/2 protocol error from %s: %s", self.client, exc)
            self._write()
            self._close()
            return
        self._write()

    # -- what the engine reports ---------------------------------------------------------

    def h2_data(self, stream_id: int, data: bytes, flow_length: int, ended: bool) -> None:
        tunnel = self._tunnels.get(stream_id)
        if tunnel is not None:  # a WebSocket (RFC 8441)
            tunnel.feed(data, flow_length)
            if ended:
                self.h2_end(stream_id)
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            # A stream we already answered: give the window back.
            if flow_length:
                self._ack(stream_id, flow_length)
            if stream_id in self._discarding:
                total = self._discarding[stream_id] + len(data)
                self._discarding[stream_id] = total
                if ended:
                    del self._discarding[stream_id]
                elif self.ctx.max_body_size and total > self.ctx.max_body_size:
                    del self._discarding[stream_id]
                    self._reset_id(stream_id, CANCEL)
            return
        max_body = self.ctx.max_body_size
        if max_body and stream._received + len(data) > max_body:
            # The app sees a disconnect, never a truncated body presented as whole.
            if not stream.send_error(413):
                stream.abort()
            stream._lost()
            self._reset_id(stream_id, CANCEL)
            return
        stream._feed(data, flow_length)
        if ended:
            stream._body_done = True
            stream._wake()

    def h2_end(self, stream_id: int) -> None:
        self._discarding.pop(stream_id, None)
        tunnel = self._tunnels.pop(stream_id, None)
        if tunnel is not None:
            tunnel.ended()
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream._body_done = True
            stream._wake()

    def h2_reset(self, stream_id: int, by_peer: bool) -> None:
        if by_peer:
            self._resets += 1
            if self._resets > self.ctx.config.h2_max_resets:
                self._calm("too many stream resets (rapid reset)")
        self._discarding.pop(stream_id, None)
        stream = self.streams.pop(stream_id, None)
        self._blocked.pop(stream_id, None)
        if stream is not None:
            stream._lost()
        tunnel = self._tunnels.pop(stream_id, None)
        if tunnel is not None:
            tunnel.ended()

    def h2_window(self, stream_id: int) -> None:
        if stream_id == 0:
            for stream in list(self._blocked.values()):
                self._flush_stream(stream)
        else:
            blocked = self._blocked.get(stream_id)
            if blocked is not None:
                self._flush_stream(blocked)

    def h2_goaway(self) -> None:
        self._close()

    def h2_control(self) -> None:
        self._control_frames += 1
        if self._control_frames > self.ctx.config.h2_max_control_frames:
            self._calm("control frame flood")

    def _calm(self, why: str) -> None:
        if self._goaway_sent:
            return
        logger.warning("HTTP/2 client %s: %s; closing the connection", self.client, why)
        self._goaway_sent = True
        self.h2.goaway(h2engine.ENHANCE_YOUR_CALM)
        self.h2.closed = True  # nothing more is read
        self._write()
        self._close()

    def h2_request(self, stream_id: int, request: h2engine.Request, ended: bool) -> None:
        if self._goaway_sent or self._closing:
            self.h2.reset(stream_id, REFUSED_STREAM)
            return
        if len(self.streams) >= self.ctx.config.h2_max_concurrent_streams:
            self.h2.reset(stream_id, REFUSED_STREAM)
            return
        max_body = self.ctx.max_body_size
        if max_body and request.content_length > max_body:
            self._refuse(stream_id, 413)
            return
        raw_path, _, query = request.path.partition(b"?")
        head = RequestHead(
            request.method.decode("ascii"),
            raw_path,
            query,
            "2",
            request.fields.copy(),  # the engine's list is shared with repeated requests
            self.scheme,
            self.client,
            self.server,
        )
        stream = Http2Stream(self, stream_id, head)
        stream._body_done = ended
        self.streams[stream_id] = stream
        if request.protocol:
            self._extended_connect(stream, request.protocol)
            return
        self._start(stream)

    def _extended_connect(self, stream: Http2Stream, protocol: bytes) -> None:
        """RFC 8441: a WebSocket over this stream, served by the same session code."""
        ctx = self.ctx
        ws_handler = ctx.ws_handler
        ctx.requests += 1  # the CONNECT stream is a request, answered when it ends
        if ctx.access_log is not None:
            stream.start_time = perf_counter()
        error = handshake_error(stream.head)
        if protocol.lower() != b"websocket" or ws_handler is None:
            error = (501, [], "only the websocket protocol is served by extended CONNECT")
        if error is not None:
            if not stream.send_error(error[0]):
                stream.abort()
            return
        tunnel = StreamTunnel(self, stream)
        session = WebSocketSession(self, stream, tunnel)  # type: ignore[arg-type]
        tunnel.session = session
        self._tunnels[stream.stream_id] = tunnel
        assert ws_handler is not None
        ws_handler(session)

    def accept_websocket(self, session: WebSocketSession, headers: Headers) -> None:
        """RFC 8441 section 5: :status 200, then WebSocket frames as DATA."""
        if self.ctx.metrics is not None:
            self.ctx.metrics.websocket_opened()
        stream = session.http
        assert isinstance(stream, Http2Stream)
        stream.send_head(200, headers)
        stream.send_body(b"", True)
        tunnel = self._tunnels.get(stream.stream_id)
        self.ctx.connections.add(session)
        if tunnel is not None:
            tunnel.open()

    def _refuse(self, stream_id: int, status: int) -> None:
        """Answer a request with an error without calling the app."""
        if self.ctx.metrics is not None:
            self.ctx.metrics.limit_hit(status)
        body = f"{status} {HTTPStatus(status).phrase}\n".encode()
        headers = [
            (b":status", b"%d" % status),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
        ]
        self.h2.send_headers(stream_id, headers + self.default_headers, False)
        self.h2.send_data(stream_id, body, True)
        self._reset_id(stream_id, CANCEL)

    def _start(self, stream: Http2Stream) -> None:
        ctx = self.ctx
        ctx.requests += 1
        self._idle_since = -1.0
        if ctx.access_log is not None:
            stream.start_time = perf_counter()
        if ctx.timeout_request:
            stream.deadline = ctx.now + ctx.timeout_request
        ctx.handler(stream)

    # -- sending -----------------------------------------------------------------------

    def _send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        if not self.h2.send_headers(stream_id, headers, end):
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream._lost()
            return
        self._write_soon()

    def _flush_stream(self, stream: Http2Stream) -> None:
        """Send as much of the stream's pending body as the windows allow."""
        engine = self.h2
        sid = stream.stream_id
        pending = stream._pending
        sent = True
        while pending:
            size = min(engine.window(sid), engine.max_outbound_frame_size, len(pending))
            if size <= 0:
                if engine.streams.get(sid) is None:
                    sent = False  # reset meanwhile
                    break
                if sid not in self._blocked:
                    self._blocked[sid] = stream  # resumed by WINDOW_UPDATE
                    stream.blocked_since = self.ctx.now
                self._write_soon()
                return
            chunk = bytes(pending[:size])
            del pending[:size]
            end = not pending and stream._end_pending and stream._trailers is None
            sent = engine.send_data(sid, chunk, end)
            if not sent:
                break
            if end:
                stream._end_pending = False
        if sent and stream._end_pending:
            stream._end_pending = False
            if stream._trailers is not None:
                sent = engine.send_headers(sid, stream._trailers, True)
            else:
                sent = engine.send_data(sid, b"", True)
        if not sent:
            stream._lost()
            stream._pending.clear()
        self._blocked.pop(sid, None)
        stream._wake_drain()
        if stream._finished:
            self._forget(stream)
        self._write_soon()

    def _stream_done(self, stream: Http2Stream) -> None:
        ctx = self.ctx
        if ctx.access_log is not None:
            ctx.access_log(
                stream, stream.status, stream.body_sent, perf_counter() - stream.start_time
            )

    def _forget(self, stream: Http2Stream) -> None:
        sid = stream.stream_id
        if self.streams.get(sid) is stream and not stream._pending:
            del self.streams[sid]
            if stream._unacked:
                self.h2.ack(sid, stream._unacked)
                stream._unacked = 0
            if not stream._body_done:
                # Answered before the whole body arrived: let the client finish its
                # upload (acknowledged and dropped, bounded by max_body_size) rather
                # than RST_STREAM, which several clients mishandle mid-upload.
                self._discarding[sid] = stream._received
        if not self.streams:
            self._idle_since = self.ctx.now
            if self._goaway_sent:
                self._close()

    def _ack(self, stream_id: int, size: int) -> None:
        self.h2.ack(stream_id, size)
        self._write_soon()

    def _reset(self, stream: Http2Stream, code: int) -> None:
        self.streams.pop(stream.stream_id, None)
        self._blocked.pop(stream.stream_id, None)
        self._reset_id(stream.stream_id, code)

    def _reset_id(self, stream_id: int, code: int) -> None:
        self.h2.reset(stream_id, code)
        self._write_soon()

    def _write(self) -> None:
        self._write_scheduled = False
        data = self.h2.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def _write_soon(self) -> None:
        """Frames from app tasks go out once per loop pass: every stream that answered
        in this pass shares one ``transport.write`` (one syscall) instead of one each."""
        if not self._write_scheduled:
            self._write_scheduled = True
            self.loop.call_soon(self._write)

    def _close(self) -> None:
        self._closing = True
        if not self.transport.is_closing():
            self._write()  # what h2 still holds, e.g. the last stream's final DATA
            self.transport.close()

    def _refresh_default_headers(self) -> None:
        headers = []
        for line in self.ctx.default_headers.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b": ")
                headers.append((name, value))
        self.default_headers = headers

    # -- what the server calls -----------------------------------------------------------

    def shutdown(self) -> None:
        """GOAWAY with the last stream id; in-flight streams finish, then we close."""
        if self._goaway_sent or self._closing:
            return
        self._goaway_sent = True
        self.h2.goaway(h2engine.NO_ERROR)  # in-flight streams finish (RFC 9113 section 6.8)
        self._write()
        if not self.streams:
            self._close()

    def on_tick(self, now: float) -> None:
        ctx = self.ctx
        self._refresh_default_headers()
        self._control_frames = 0
        if now - self._reset_window_start >= 10:
            self._reset_window_start = now
            self._resets = 0
        if self._closing:
            return
        if self._idle_since >= 0 and now - self._idle_since > ctx.keep_alive_timeout:
            self.shutdown()  # idle: GOAWAY and close
        elif self._write_paused and now - self._write_paused_since > ctx.send_timeout:
            self.abort()
        for stream in list(self._blocked.values()):
            if now - stream.blocked_since > ctx.send_timeout:
                # The peer keeps its window shut: a zero-window stall (send timeout).
                logger.debug("HTTP/2 stream %d stalled on flow control; reset", stream.stream_id)
                self._reset(stream, CANCEL)
                stream._lost()
        for stream in list(self.streams.values()):
            if stream.deadline and now > stream.deadline and not stream._finished:
                stream.expire(ctx.timeout_request)

    def abort(self) -> None:
        self._closing = True
        self.transport.abort()


class StreamTunnel:
    """A transport made of one HTTP/2 stream, for a WebSocket session (RFC 8441).

    Writes become DATA frames (the stream's flow control applies; the session
    awaits ``drain``); reads are the stream's DATA, acknowledged unless the
    session paused reading, which is how its bounded queue pushes back.
    """

    def __init__(self, conn: Http2Connection, stream: Http2Stream) -> None:
        self.conn = conn
        self.stream = stream
        self.session: WebSocketSession | None = None
        self._open = False
        self._paused = False
        self._withheld = 0
        self._early: list[bytes] = []

    def open(self) -> None:
        self._open = True
        early, self._early = self._early, []
        for data in early:
            self._deliver(data)

    def feed(self, data: bytes, flow_length: int) -> None:
        sid = self.stream.stream_id
        if self._paused:
            self._withheld += flow_length
        elif flow_length:
            self.conn._ack(sid, flow_length)
        if not self._open:
            self._early.append(data)
        elif data:
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        assert self.session is not None
        self.session.data_received(data)

    def ended(self) -> None:
        session = self.session
        if session is not None:
            if self._open:
                session.eof_received()
            session.connection_lost(None)

    # -- the asyncio.Transport subset the session uses --------------------------------

    def write(self, data: bytes) -> None:
        stream = self.stream
        if data and not (stream.finished or stream.disconnected):
            stream.send_body(data, True)

    async def drain(self) -> None:
        if self.stream.write_paused:
            await self.stream.drain()

    def close(self) -> None:
        stream = self.stream
        if not (stream.finished or stream.disconnected):
            stream.send_body(b"", False)
        self.conn._tunnels.pop(stream.stream_id, None)
        if self.session is not None:
            self.session.connection_lost(None)

    def abort(self) -> None:
        self.stream.abort()
        self.conn._tunnels.pop(self.stream.stream_id, None)
        if self.session is not None:
            self.session.connection_lost(None)

    def is_closing(self) -> bool:
        return self.stream.finished or self.stream.disconnected

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False
        if self._withheld:
            self.conn._ack(self.stream.stream_id, self._withheld)
            self._withheld = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.conn.transport.get_extra_info(name, default)
