"""Http2Connection driven through an in-memory transport by an ``h2`` client (sans-I/O).

The transport below stands in for the socket: it records what the server writes and
how it closes. The client side is a real client-side ``h2.connection.H2Connection``
that builds the frames and parses the replies; the app side is a real asyncio loop
running small ASGI apps through AsgiHandler. The clock is ``ctx.now``, which the
tests never refresh, so timeouts are driven by calling ``on_tick`` with a chosen
``now``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)

from threshold.config import Config
from threshold.context import ServerContext
from threshold.interfaces.asgi import AsgiHandler
from threshold.protocols.http2 import CONNECTION_WINDOW, WRITE_HIGH_WATER, Http2Connection

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


# -- the in-memory transport ------------------------------------------------------


class MemoryTransport:
    """What Http2Connection needs of an asyncio transport, recorded."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.conn: Http2Connection | None = None
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.lost = False
        self.paused = False
        self.limits: tuple[int, int] | None = None
        self.extra: dict[str, Any] = {
            "peername": ("10.0.0.2", 50000),
            "sockname": ("10.0.0.1", 8000),
        }

    @property
    def output(self) -> bytes:
        return b"".join(self.writes)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.limits = (high, low)

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self._lose)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def connect(self, conn: Http2Connection) -> None:
        self.conn = conn
        conn.connection_made(self)  # type: ignore[arg-type]

    def feed(self, data: bytes) -> None:
        assert self.conn is not None
        if data and not self.closed:
            self.conn.data_received(data)

    def _lose(self) -> None:
        if not self.lost:
            self.lost = True
            assert self.conn is not None
            self.conn.connection_lost(None)


# -- frames ---------------------------------------------------------------------------


def split_frames(data: bytes) -> list[tuple[Frame, bytes]]:
    """Server output as (frame, its bytes); every byte must belong to a whole frame."""
    frames = []
    view = memoryview(data)
    while view:
        assert len(view) >= 9, "truncated frame header"
        frame, length = Frame.parse_frame_header(view[:9])
        assert len(view) >= 9 + length, "truncated frame"
        frame.parse_body(view[9 : 9 + length])
        frames.append((frame, bytes(view[: 9 + length])))
        view = view[9 + length :]
    return frames


@dataclass
class Reply:
    """One stream as the client saw it."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    ended: bool = False
    reset: int | None = None

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n == name]
        assert len(values) <= 1
        return values[0] if values else None


# -- the harness -----------------------------------------------------------------------


async def settle(rounds: int = 30) -> None:
    """Let every ready callback and task run (the harness has no real I/O waits)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class Harness:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        app: App,
        client_settings: dict[int, int] | None = None,
        **options: Any,
    ) -> None:
        config = Config(**options)
        self.loop = loop
        self.calls = 0  # requests that reached the app
        counted: App = self._counting(app)
        handler = AsgiHandler(counted, loop, config.root_path, None)  # type: ignore[arg-type]
        self.ctx = ServerContext(config, handler, None)
        self.conn = Http2Connection(self.ctx, loop)
        self.transport = MemoryTransport(loop)
        self.transport.connect(self.conn)
        self.conn.start()
        self.client = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        if client_settings:
            self.client.local_settings = h2.settings.Settings(
                client=True, initial_values=client_settings
            )
        self.client.initiate_connection()
        self.auto_ack = True  # the client gives back the window of every DATA it reads
        self.events: list[Any] = []
        self.frames: list[Frame] = []
        self.replies: dict[int, Reply] = {}
        self._read = 0

    def _counting(self, app: App) -> App:
        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            self.calls += 1
            await app(scope, receive, send)

        return counted

    # the client side
    def flush(self) -> None:
        """Deliver what the client has queued to the server."""
        self.transport.feed(self.client.data_to_send())

    def feed_raw(self, data: bytes) -> None:
        """Bytes the client's state machine does not know about (malformed frames)."""
        self.transport.feed(data)

    async def pump(self, rounds: int = 3) -> list[Any]:
        """Client -> server, let the loop run, server -> client; until both are quiet."""
        new: list[Any] = []
        for _ in range(rounds):
            self.flush()
            await settle()
            got = self.receive()
            new += got
            if not got and not self.client.data_to_send(0):
                break
        return new

    def receive(self) -> list[Any]:
        """Parse what the server wrote since the last call, frame by frame."""
        output = self.transport.output
        data, self._read = output[self._read :], len(output)
        events: list[Any] = []
        for frame, raw in split_frames(data):
            self.frames.append(frame)
            got = self.client.receive_data(raw)
            for event in got:
                if isinstance(event, h2.events.ConnectionTerminated):
                    # h2 as a client stops at any GOAWAY; RFC 9113 section 6.8 lets
                    # the streams up to last_stream_id finish, so keep reading them.
                    self.client.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
            events += got
        for event in events:
            self._note(event)
        self.events += events
        return events

    def _note(self, event: Any) -> None:
        sid = getattr(event, "stream_id", 0)
        if not sid:
            return
        reply = self.replies.setdefault(sid, Reply())
        if isinstance(event, h2.events.ResponseReceived):
            reply.headers = list(event.headers)
            reply.status = int(dict(reply.headers)[b":status"])
        elif isinstance(event, h2.events.DataReceived):
            reply.body += event.data
            if self.auto_ack and event.flow_controlled_length:
                self.ack(sid, event.flow_controlled_length)
        elif isinstance(event, h2.events.StreamEnded):
            reply.ended = True
        elif isinstance(event, h2.events.StreamReset):
            reply.reset = event.error_code

    def ack(self, sid: int, size: int) -> None:
        try:
            self.client.acknowledge_received_data(size, sid)
        except h2.exceptions.StreamClosedError:
            self.client.increment_flow_control_window(size)

    def request(
        self,
        path: str = "/",
        method: str = "GET",
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes | None = None,
        end: bool = True,
    ) -> int:
        sid = self.client.get_next_available_stream_id()
        head = [
            (b":method", method.encode()),
            (b":scheme", b"http"),
            (b":authority", b"unit.test"),
            (b":path", path.encode()),
            *(headers or []),
        ]
        self.client.send_headers(sid, head, end_stream=end and body is None)
        if body is not None:
            self.client.send_data(sid, body, end_stream=end)
        return sid

    async def upload(self, sid: int, data: bytes, end: bool = True, rounds: int = 200) -> None:
        """Send ``data`` as the windows allow, pumping between windows."""
        view = memoryview(data)
        for _ in range(rounds):
            window = min(
                self.client.local_flow_control_window(sid), self.client.max_outbound_frame_size
            )
            if window > 0 and view:
                chunk, view = bytes(view[:window]), view[window:]
                self.client.send_data(sid, chunk, end_stream=end and not view)
            elif not view:
                break
            await self.pump()
        assert not view, f"upload stalled with {len(view)} bytes left"
        await self.pump()

    async def get(self, path: str = "/", **kwargs: Any) -> Reply:
        sid = self.request(path, **kwargs)
        await self.pump()
        return self.replies[sid]

    def goaways(self) -> list[GoAwayFrame]:
        return [f for f in self.frames if isinstance(f, GoAwayFrame)]

    def window_updates(self, sid: int) -> list[WindowUpdateFrame]:
        return [f for f in self.frames if isinstance(f, WindowUpdateFrame) and f.stream_id == sid]


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def make(app: App, client_settings: dict[int, int] | None = None, **options: Any) -> Harness:
    h = Harness(asyncio.get_running_loop(), app, client_settings, **options)
    await h.pump()
    return h


# -- apps -------------------------------------------------------------------------------


async def read_all(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client went away")
        parts.append(message["body"])
        if not message["more_body"]:
            return b"".join(parts)


async def respond(send: Send, body: bytes, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the whole body; answer with it and what the app saw of the request."""
    body = await read_all(receive)
    seen = {
        "method": scope["method"],
        "path": scope["path"],
        "query_string": scope["query_string"].decode(),
        "http_version": scope["http_version"],
        "scheme": scope["scheme"],
        "client": scope["client"],
        "server": scope["server"],
        "headers": [[n.decode(), v.decode()] for n, v in scope["headers"]],
        "body": body.decode("latin-1"),
    }
    await respond(send, json.dumps(seen).encode())


class Gate:
    """Holds an app until the test opens it (same loop: a plain asyncio.Event)."""

    def __init__(self) -> None:
        self.entered = 0
        self.event = asyncio.Event()

    async def wait(self) -> None:
        self.entered += 1
        await self.event.wait()


# -- connection setup ---------------------------------------------------------------------


def test_settings_exchange() -> None:
    async def main() -> None:
        h = await make(
            echo_app,
            h2_max_concurrent_streams=7,
            h2_initial_window_size=100_000,
            h2_max_header_list_size=20_000,
        )
        changed = [e for e in h.events if isinstance(e, h2.events.RemoteSettingsChanged)]
        assert len(changed) == 1
        values = {code: s.new_value for code, s in changed[0].changed_settings.items()}
        assert values[SettingCodes.MAX_CONCURRENT_STREAMS] == 7
        assert values[SettingCodes.INITIAL_WINDOW_SIZE] == 100_000
        assert values[SettingCodes.MAX_HEADER_LIST_SIZE] == 20_000
        assert values[SettingCodes.MAX_FRAME_SIZE] == 16384
        assert values[SettingCodes.ENABLE_CONNECT_PROTOCOL] == 0  # no WebSocket handler
        # The server acknowledged the client's SETTINGS and opened the connection window.
        assert any(isinstance(e, h2.events.SettingsAcknowledged) for e in h.events)
        assert [f.window_increment for f in h.window_updates(0)] == [CONNECTION_WINDOW - 65535]
        assert h.transport.limits is not None and h.transport.limits[0] == WRITE_HIGH_WATER
        assert not h.transport.closed
        assert h.conn in h.ctx.connections

    run(main())


def test_get_through_an_asgi_app() -> None:
    async def main() -> None:
        h = await make(echo_app)
        reply = await h.get("/path/x?q=1", headers=[(b"accept", b"*/*")])
        assert reply.status == 200 and reply.ended and reply.reset is None
        seen = json.loads(reply.body)
        assert seen["method"] == "GET"
        assert (seen["path"], seen["query_string"]) == ("/path/x", "q=1")
        assert seen["http_version"] == "2"
        assert seen["scheme"] == "http"
        assert seen["client"] == ["10.0.0.2", 50000]
        assert seen["server"] == ["10.0.0.1", 8000]
        # :authority becomes a Host header for apps written for HTTP/1.1; no pseudo-headers.
        assert seen["headers"] == [["host", "unit.test"], ["accept", "*/*"]]
        assert reply.header(b"content-length") == str(len(reply.body)).encode()
        assert reply.header(b"server") == b"threshold"
        assert reply.header(b"date") is not None

    run(main())


def test_post_body_in_several_data_frames() -> None:
    async def main() -> None:
        h = await make(echo_app)
        sid = h.request("/upload", "POST", end=False)
        for part in (b"one-", b"two-", b"three"):
            h.client.send_data(sid, part)
            await h.pump()
        h.client.end_stream(sid)
        await h.pump()
        reply = h.replies[sid]
        assert reply.status == 200 and reply.ended
        assert json.loads(reply.body)["body"] == "one-two-three"
        assert json.loads(reply.body)["method"] == "POST"

    run(main())


def test_many_requests_on_one_connection_in_parallel() -> None:
    async def main() -> None:
        h = await make(echo_app)
        sids = [h.request(f"/n/{i}", "POST", body=b"x" * i) for i in range(20)]
        await h.pump()
        for i, sid in enumerate(sids):
            seen = json.loads(h.replies[sid].body)
            assert (seen["path"], seen["body"]) == (f"/n/{i}", "x" * i)
        assert h.calls == 20
        assert h.conn.streams == {}

    run(main())


# -- flow control -------------------------------------------------------------------------


def test_request_body_window_opens_only_as_the_app_reads() -> None:
    gate = Gate()
    chunks: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await gate.wait()
        while True:
            message = await receive()
            chunks.append(len(message["body"]))
            if not message["more_body"]:
                break
        await respond(send, b"%d" % sum(chunks))

    async def main() -> None:
        window = 65535
        h = await make(app, h2_initial_window_size=window)
        sid = h.request("/", "POST", end=False)
        h.client.send_data(sid, b"a" * 16384)
        h.client.send_data(sid, b"b" * 16384)
        h.client.send_data(sid, b"c" * 16384)
        h.client.send_data(sid, b"d" * 16383)
        await h.pump()
        assert gate.entered == 1
        # The whole window is in flight and the app has read nothing: no WINDOW_UPDATE.
        assert h.client.local_flow_control_window(sid) == 0
        assert h.window_updates(sid) == []
        await settle()
        assert h.window_updates(sid) == []
        gate.event.set()
        await h.pump()
        # The app read the buffered bytes: the window is given back, exactly.
        assert sum(chunks) == window
        assert sum(f.window_increment for f in h.window_updates(sid)) == window
        assert h.client.local_flow_control_window(sid) == window
        await h.upload(sid, b"e" * 200_000)
        reply = h.replies[sid]
        assert reply.status == 200 and reply.body == b"%d" % (window + 200_000)

    run(main())


def test_response_waits_for_the_client_window() -> None:
    size = 16384
    count = 10
    sent: list[int] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(count):
            body = bytes([65 + i]) * size
            await send({"type": "http.response.body", "body": body, "more_body": True})
            sent.append(i)
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        h = await make(app, {SettingCodes.INITIAL_WINDOW_SIZE: size})
        h.auto_ack = False
        sid = h.request("/")
        await h.pump()
        reply = h.replies[sid]
        # One window's worth on the wire; the app's second send waits for more.
        assert len(reply.body) == size and not reply.ended
        assert sent == [0]
        await settle()
        assert len(reply.body) == size and sent == [0]
        for window in range(1, count):
            # The connection window (65535 for this client) must be reopened too.
            h.client.increment_flow_control_window(size)
            h.client.increment_flow_control_window(size, sid)
            await h.pump()
            assert len(reply.body) == min(window + 1, count) * size
            assert len(sent) == min(window + 1, count)
        assert reply.ended and reply.reset is None
        assert reply.body == b"".join(bytes([65 + i]) * size for i in range(count))
        assert h.conn.streams == {} and h.conn._blocked == {}

    run(main())


def test_frames_up_to_the_advertised_max_frame_size_are_accepted() -> None:
    """--h2-max-frame-size above 16384: frames up to the advertised size are accepted."""

    async def main() -> None:
        h = await make(echo_app, h2_max_frame_size=65536)
        assert h.client.max_outbound_frame_size == 65536
        sid = h.request("/", "POST", end=False)
        h.client.send_data(sid, b"z" * 40_000, end_stream=True)
        await h.pump()
        assert not h.goaways(), h.goaways()
        reply = h.replies[sid]
        assert reply.status == 200 and len(json.loads(reply.body)["body"]) == 40_000

    run(main())


def test_zero_window_peer_is_reset_after_send_timeout() -> None:
    outcome: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.body", "body": b"x" * 1000, "more_body": True})
        except OSError:
            outcome.append("disconnected")
            raise
        outcome.append("sent")

    async def main() -> None:
        h = await make(app, {SettingCodes.INITIAL_WINDOW_SIZE: 0}, send_timeout=5.0)
        sid = h.request("/")
        await h.pump()
        reply = h.replies[sid]
        assert reply.status == 200 and reply.body == b"" and reply.reset is None
        assert outcome == []
        start = h.ctx.now
        h.conn.on_tick(start + 4.9)
        await h.pump()
        assert reply.reset is None and outcome == []
        h.conn.on_tick(start + 5.1)
        await h.pump()
        assert reply.reset == ErrorCodes.CANCEL
        assert outcome == ["disconnected"]
        assert h.conn.streams == {} and h.conn._blocked == {}
        assert not h.transport.closed  # one stalled stream, not the connection

    run(main())


# -- resets, GOAWAY, limits ------------------------------------------------------------------


def test_rst_stream_mid_body_is_a_disconnect_for_the_app() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/next":
            await respond(send, b"next ok")
            return
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "http.disconnect" or not message["more_body"]:
                break

    async def main() -> None:
        h = await make(app)
        sid = h.request("/", "POST", body=b"partial", end=False)
        await h.pump()
        assert seen == ["http.request"]
        h.client.reset_stream(sid, ErrorCodes.CANCEL)
        await h.pump()
        assert seen == ["http.request", "http.disconnect"]
        assert sid not in h.conn.streams
        # The connection itself is fine.
        reply = await h.get("/next")
        assert reply.status == 200 and reply.body == b"next ok"
        assert not h.goaways()

    run(main())


def test_shutdown_sends_goaway_and_lets_the_stream_finish() -> None:
    gate = Gate()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await gate.wait()
        await respond(send, b"finished after GOAWAY")

    async def main() -> None:
        h = await make(app)
        sid = h.request("/")
        await h.pump()
        assert gate.entered == 1
        h.conn.shutdown()
        # A stream the client opened before it saw the GOAWAY is refused (retryable).
        late = h.request("/late")
        await h.pump()
        (goaway,) = h.goaways()
        assert goaway.error_code == ErrorCodes.NO_ERROR
        assert goaway.last_stream_id == sid
        assert h.replies[late].reset == ErrorCodes.REFUSED_STREAM
        assert gate.entered == 1
        assert not h.transport.closed
        gate.event.set()
        await h.pump()
        reply = h.replies[sid]
        assert reply.status == 200 and reply.ended and reply.body == b"finished after GOAWAY"
        assert h.transport.closed and not h.transport.aborted

    run(main())


def test_shutdown_of_an_idle_connection_closes_it() -> None:
    async def main() -> None:
        h = await make(echo_app)
        await h.get("/")
        h.conn.shutdown()
        await h.pump()
        assert [g.error_code for g in h.goaways()] == [ErrorCodes.NO_ERROR]
        assert h.transport.closed
        await settle()
        assert h.conn not in h.ctx.connections

    run(main())


def test_excess_streams_are_refused() -> None:
    gate = Gate()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await gate.wait()
        await respond(send, scope["path"].encode())

    async def main() -> None:
        h = Harness(asyncio.get_running_loop(), app, h2_max_concurrent_streams=2)
        # All three before the client learns the limit from the server's SETTINGS.
        sids = [h.request(f"/{i}") for i in range(3)]
        await h.pump()
        assert gate.entered == 2
        assert h.replies[sids[2]].reset == ErrorCodes.REFUSED_STREAM
        gate.event.set()
        await h.pump()
        for i in range(2):
            assert h.replies[sids[i]].body == f"/{i}".encode()
        # Below the limit again: a new stream is served.
        assert (await h.get("/again")).body == b"/again"
        assert not h.goaways()

    run(main())


def test_rapid_reset_ends_with_enhance_your_calm() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(3600)

    async def cycle(resets: int) -> Harness:
        h = await make(app, h2_max_resets=5)
        for _ in range(resets):
            sid = h.request("/")
            h.client.reset_stream(sid, ErrorCodes.CANCEL)
        await h.pump()
        return h

    async def main() -> None:
        h = await cycle(5)
        assert not h.goaways() and not h.transport.closed
        h = await cycle(6)
        assert [g.error_code for g in h.goaways()] == [ErrorCodes.ENHANCE_YOUR_CALM]
        assert h.transport.closed
        # The count is per 10 seconds: after a tick past the window it starts again.
        h = await cycle(4)
        h.conn.on_tick(h.ctx.now + 10)
        for _ in range(4):
            h.client.reset_stream(h.request("/"), ErrorCodes.CANCEL)
        await h.pump()
        assert not h.goaways()

    run(main())


FLOODS = ["ping", "settings", "window_update", "empty_data"]


def flood(h: Harness, kind: str, count: int) -> None:
    client = h.client
    sid = 0
    if kind == "empty_data":
        sid = h.request("/", "POST", end=False)
    for i in range(count):
        if kind == "ping":
            client.ping(b"%08d" % i)
        elif kind == "settings":
            client.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 100 + i})
        elif kind == "window_update":
            client.increment_flow_control_window(1)
        else:
            client.send_data(sid, b"")


@pytest.mark.parametrize("kind", FLOODS)
def test_control_frame_flood_ends_with_enhance_your_calm(kind: str) -> None:
    gate = Gate()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await gate.wait()

    async def main() -> None:
        # Under the limit (the handshake's SETTINGS and its ACK count too): served.
        h = await make(app, h2_max_control_frames=20)
        flood(h, kind, 10)
        await h.pump()
        assert not h.goaways() and not h.transport.closed
        if kind == "ping":
            acks = [e for e in h.events if isinstance(e, h2.events.PingAckReceived)]
            assert len(acks) == 10
        # The budget is per second (on_tick): a second burst is fine after a tick.
        h.conn.on_tick(h.ctx.now)
        flood(h, kind, 10)
        await h.pump()
        assert not h.goaways()
        # A flood within one second is not.
        h = await make(app, h2_max_control_frames=20)
        flood(h, kind, 60)
        await h.pump()
        assert [g.error_code for g in h.goaways()] == [ErrorCodes.ENHANCE_YOUR_CALM]
        assert h.transport.closed

    run(main())


def test_hpack_bomb_is_refused() -> None:
    async def main() -> None:
        h = await make(echo_app, h2_max_header_list_size=16384)
        big = b"a" * 3000
        sid = h.request("/", headers=[(b"x-bomb", big)] * 40)
        sent = h.client.data_to_send()
        # The encoder indexes the value once and refers to it: a tiny block, a big list.
        assert len(sent) < 4 * 1024
        h.feed_raw(sent)
        await h.pump()
        assert h.calls == 0
        assert sid not in h.replies  # never answered: the whole connection is refused
        # h2's decoder stops at the bound (a connection error: HPACK state is shared).
        assert [g.error_code for g in h.goaways()] == [ErrorCodes.ENHANCE_YOUR_CALM]
        assert h.transport.closed

    run(main())


def test_oversized_header_list_is_refused() -> None:
    async def main() -> None:
        h = await make(echo_app, h2_max_header_list_size=8192)
        ok = await h.get("/", headers=[(b"x-fits", b"b" * 4000)])
        assert ok.status == 200
        sid = h.request("/", headers=[(b"x-huge", b"c" * 20_000)])
        await h.pump()
        assert h.calls == 1
        assert sid not in h.replies
        assert [g.error_code for g in h.goaways()] == [ErrorCodes.ENHANCE_YOUR_CALM]
        assert h.transport.closed

    run(main())


def test_continuation_flood_is_bounded() -> None:
    async def main() -> None:
        h = await make(echo_app)
        encoded = h.client.encoder.encode(
            [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")]
        )
        h.feed_raw(HeadersFrame(1, data=encoded).serialize())  # no END_HEADERS
        sent = 0
        while not h.transport.closed and sent < 1000:
            h.feed_raw(ContinuationFrame(1, data=b"\x40\x01x\x01y" * 2000).serialize())
            sent += 1
        await h.pump()
        # h2 buffers at most 64 CONTINUATION frames (~1 MiB), then ends the connection.
        assert h.transport.closed
        assert sent <= 65
        assert [g.error_code for g in h.goaways()] in (
            [ErrorCodes.PROTOCOL_ERROR],
            [ErrorCodes.ENHANCE_YOUR_CALM],
        )
        assert h.calls == 0

    run(main())


def test_max_body_size_content_length_is_refused_before_the_app() -> None:
    async def main() -> None:
        h = await make(echo_app, max_body_size=1000)
        sid = h.request("/", "POST", headers=[(b"content-length", b"5000")], end=False)
        await h.pump()
        reply = h.replies[sid]
        assert reply.status == 413
        assert h.calls == 0
        assert reply.body.startswith(b"413")
        # The connection goes on.
        assert (await h.get("/")).status == 200

    run(main())


def test_max_body_size_crossed_by_data_is_413_and_a_disconnect() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "http.disconnect" or not message["more_body"]:
                break
        if seen[-1] == "http.request":
            await respond(send, b"whole body read")

    async def main() -> None:
        h = await make(app, max_body_size=1000)
        sid = h.request("/", "POST", end=False)
        h.client.send_data(sid, b"x" * 600)
        await h.pump()
        h.client.send_data(sid, b"y" * 600)
        await h.pump()
        reply = h.replies[sid]
        assert reply.status == 413
        assert reply.reset in (None, ErrorCodes.CANCEL)
        assert seen == ["http.request", "http.disconnect"]
        assert not h.goaways()
        assert (await h.get("/", method="POST", body=b"z" * 1000)).body == b"whole body read"

    run(main())


def test_app_answering_without_reading_lets_the_upload_finish() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, b"no thanks")

    async def main() -> None:
        h = await make(app, h2_initial_window_size=65535)
        sid = h.request("/", "POST", end=False)
        h.client.send_data(sid, b"x" * 1000)
        await h.pump()
        reply = h.replies[sid]
        assert reply.status == 200 and reply.ended and reply.body == b"no thanks"
        # Ten windows' worth: the server must keep giving the window back.
        await h.upload(sid, b"u" * 10 * 65535)
        assert reply.reset is None
        assert not h.goaways() and not h.transport.closed
        assert not [f for f in h.frames if isinstance(f, RstStreamFrame)]
        assert h.conn._discarding == {}
        assert (await h.get("/")).body == b"no thanks"

    run(main())


def test_data_frames_sent_by_the_server_respect_max_frame_size() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, b"q" * 100_000)

    async def main() -> None:
        h = await make(app)
        reply = await h.get("/")
        assert reply.body == b"q" * 100_000
        sizes = [len(f.data) for f in h.frames if isinstance(f, DataFrame)]
        assert max(sizes) <= 16384 and sum(sizes) == 100_000

    run(main())
