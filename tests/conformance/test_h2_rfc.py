"""HTTP/2 conformance, modelled on the MUSTs of RFC 9113 (and RFC 7541 for HPACK).

Each case writes hand-built frames (hyperframe, HPACK blocks from hpack) on a raw
socket to the real server and reads frames back, as h2spec does. Where the RFC
lets a stream error be treated as a connection error (section 5.4.1), either
answer with the right code passes, as in h2spec's own checks.

Covered, by h2spec's section names: 3.4/3.5 (server preface, SETTINGS ACK, invalid
preface), 4.1 (unknown type, unknown flags, reserved bit), 4.2 (DATA and HEADERS over
MAX_FRAME_SIZE, fixed-size frames of the wrong size), 5.1 (DATA, RST_STREAM,
WINDOW_UPDATE, CONTINUATION on idle streams; DATA and HEADERS on closed streams),
5.1.1 (even and decreasing ids), 5.1.2 (MAX_CONCURRENT_STREAMS), 5.3.1 (self
dependency), 5.5 (unknown frame inside a header block), 6.1-6.10 (stream 0 rules,
padding, SETTINGS values and ACK, PING, GOAWAY, WINDOW_UPDATE zero and overflow,
flow-control violations, CONTINUATION sequencing), 8.1/8.2/8.3 (uppercase names,
connection-specific fields, TE, pseudo-header rules, trailers, content-length) and
HPACK (invalid index, table size update over the limit).

Not covered here (h2spec has them): the "generic" smoke tests beyond those above,
server push and CONNECT (not served over h2 except RFC 8441 WebSocket), most of
h2spec's HPACK encoding cases (Huffman padding/EOS, integer overflow), SETTINGS
changing windows of several open streams, and the timing-based cases (SETTINGS ACK
timeout).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import hpack
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.apps.h2_apps import app
from tests.conftest import Running, serve_in_thread

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TIMEOUT = 5.0

# Frame type numbers for hand-made frames (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE = 0, 1, 2, 3, 4, 5
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """A frame exactly as given, lengths and all (hyperframe would fix them up)."""
    return (
        struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id) + payload
    )


@dataclass
class Outcome:
    frames: list[Frame]
    closed: bool  # the server closed the TCP connection

    def goaway(self) -> GoAwayFrame | None:
        found = [f for f in self.frames if isinstance(f, GoAwayFrame)]
        return found[0] if found else None

    def resets(self, stream_id: int) -> list[int]:
        return [
            f.error_code
            for f in self.frames
            if isinstance(f, RstStreamFrame) and f.stream_id == stream_id
        ]


class Peer:
    """A raw HTTP/2 client: frames out, frames in, nothing checked on our side."""

    def __init__(self, running: Running, settings: dict[int, int] | None = None) -> None:
        self.sock = socket.create_connection((running.host, running.port), timeout=TIMEOUT)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buffer = b""
        self.closed = False
        self.server_settings: dict[int, int] = {}
        self.sock.sendall(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())
        # The server's SETTINGS come first (section 3.4); ACK them, and expect our ACK.
        first = self.next_frame()
        assert isinstance(first, SettingsFrame) and "ACK" not in first.flags, first
        self.server_settings = dict(first.settings)
        self.send(SettingsFrame(0, flags=["ACK"]))
        self.read_until(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)

    def close(self) -> None:
        self.sock.close()

    # -- sending ----------------------------------------------------------------------

    def send(self, *frames: Frame | bytes) -> None:
        data = b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames)
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.closed = True

    def block(self, headers: list[tuple[str, str]]) -> bytes:
        return self.encoder.encode(headers)

    def request_headers(
        self,
        path: str = "/",
        method: str = "GET",
        extra: list[tuple[str, str]] | None = None,
    ) -> list[tuple[str, str]]:
        return [
            (":method", method),
            (":scheme", "http"),
            (":path", path),
            (":authority", "conformance.test"),
            *(extra or []),
        ]

    def headers(
        self,
        stream_id: int,
        headers: list[tuple[str, str]] | None = None,
        end_stream: bool = True,
        end_headers: bool = True,
    ) -> HeadersFrame:
        flags = []
        if end_stream:
            flags.append("END_STREAM")
        if end_headers:
            flags.append("END_HEADERS")
        data = self.block(self.request_headers() if headers is None else headers)
        return HeadersFrame(stream_id, data=data, flags=flags)

    # -- receiving ----------------------------------------------------------------------

    def next_frame(self) -> Frame | None:
        """The next whole frame, or None once the server closed the connection."""
        while True:
            if len(self.buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
                if len(self.buffer) >= 9 + length:
                    frame.parse_body(memoryview(self.buffer[9 : 9 + length]))
                    self.buffer = self.buffer[9 + length :]
                    return frame
            if self.closed:
                return None
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            except TimeoutError:
                raise AssertionError("the server neither answered nor closed in time") from None
            if not data:
                self.closed = True
            self.buffer += data

    def read_until(self, done: Any) -> Outcome:
        frames = []
        while True:
            frame = self.next_frame()
            if frame is None:
                return Outcome(frames, True)
            frames.append(frame)
            if done(frame):
                return Outcome(frames, self.closed)

    def ping(self) -> Outcome:
        """A PING round trip: everything before its ACK (the connection is still fine)."""
        self.send(PingFrame(0, opaque_data=b"pingpong"))
        outcome = self.read_until(
            lambda f: (isinstance(f, PingFrame) and "ACK" in f.flags) or isinstance(f, GoAwayFrame)
        )
        return outcome


# -- expectations -----------------------------------------------------------------------------


def expect_connection_error(peer: Peer, code: ErrorCodes) -> Outcome:
    """GOAWAY with ``code`` (section 5.4.1), then the server closes the connection."""
    outcome = peer.read_until(lambda f: isinstance(f, GoAwayFrame))
    goaway = outcome.goaway()
    assert goaway is not None, f"no GOAWAY; got {outcome.frames}"
    assert goaway.error_code == code, f"GOAWAY {ErrorCodes(goaway.error_code)!r}, not {code!r}"
    rest = peer.read_until(lambda f: False)
    assert rest.closed, "the connection stayed open after GOAWAY"
    return outcome


def expect_stream_error(peer: Peer, stream_id: int, code: ErrorCodes) -> str:
    """RST_STREAM with ``code`` on the stream, or the same code as a connection error."""
    outcome = peer.read_until(
        lambda f: (
            isinstance(f, GoAwayFrame)
            or (isinstance(f, RstStreamFrame) and f.stream_id == stream_id)
        )
    )
    for frame in outcome.frames:
        if isinstance(frame, HeadersFrame) and frame.stream_id == stream_id:
            raise AssertionError(
                f"stream {stream_id} was answered: {peer.decoder.decode(frame.data)}"
            )
    goaway = outcome.goaway()
    if goaway is not None:
        assert goaway.error_code == code, f"GOAWAY {ErrorCodes(goaway.error_code)!r}, not {code!r}"
        assert peer.read_until(lambda f: False).closed
        return "connection"
    resets = outcome.resets(stream_id)
    assert resets, f"no RST_STREAM or GOAWAY; got {outcome.frames}"
    assert resets[0] == code, f"RST_STREAM {ErrorCodes(resets[0])!r}, not {code!r}"
    assert not peer.ping().goaway(), "the connection failed after a stream error"
    return "stream"


def expect_fine(peer: Peer) -> None:
    outcome = peer.ping()
    assert outcome.goaway() is None, outcome.frames
    assert not outcome.closed


def expect_response(peer: Peer, stream_id: int) -> tuple[int, bytes]:
    status = 0
    body = b""
    while True:
        frame = peer.next_frame()
        assert frame is not None, "closed before the response ended"
        assert not isinstance(frame, GoAwayFrame | RstStreamFrame) or frame.stream_id not in (
            0,
            stream_id,
        ), frame
        if frame.stream_id != stream_id:
            continue
        if isinstance(frame, HeadersFrame):
            status = int(dict(peer.decoder.decode(frame.data))[":status"])
        elif isinstance(frame, DataFrame):
            body += frame.data
        if "END_STREAM" in frame.flags:
            return status, body


# -- servers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[Running]:
    with serve_in_thread(app) as running:
        yield running


@pytest.fixture
def peer(server: Running) -> Iterator[Peer]:
    p = Peer(server)
    try:
        yield p
    finally:
        p.close()


# -- 3.4 and 3.5: starting HTTP/2 --------------------------------------------------------------


def test_server_preface_is_settings_and_acks_ours(server: Running) -> None:
    """Section 3.4: the server's first frame is SETTINGS; it ACKs the client's SETTINGS."""
    peer = Peer(server, {0x3: 50, 0x4: 32768})  # Peer() checks both
    try:
        assert peer.server_settings[0x3] >= 1  # MAX_CONCURRENT_STREAMS advertised
        expect_fine(peer)
    finally:
        peer.close()


def test_invalid_preface_closes_the_connection(server: Running) -> None:
    """Section 3.4: an invalid preface is a connection error (the server closes)."""
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + SettingsFrame(0).serialize())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    # Read as HTTP/1.1 ("PRI * HTTP/2.0" with garbage): refused, then closed.
    assert not data or data.startswith(b"HTTP/1.1 4") or data.startswith(b"HTTP/1.1 5"), data


def test_invalid_preface_with_http2_only_is_a_connection_error() -> None:
    """Section 3.4 with --http 2 (h2spec 3.5/2): bytes that are neither the preface nor
    an HTTP/1.x request end in GOAWAY PROTOCOL_ERROR, not an HTTP/1.1 answer."""
    with serve_in_thread(app, http="2") as running:
        with socket.create_connection((running.host, running.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"INVALID CONNECTION PREFACE\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        assert not data.startswith(b"HTTP/"), data
        frames = []
        while len(data) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(data[:9]))
            frame.parse_body(memoryview(data[9 : 9 + length]))
            frames.append(frame)
            data = data[9 + length :]
        goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
        assert [g.error_code for g in goaways] == [ErrorCodes.PROTOCOL_ERROR], frames
        # An HTTP/1.1 client is still told in its own words.
        with socket.create_connection((running.host, running.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 505")


# -- 4: frames -----------------------------------------------------------------------------------


def test_unknown_frame_type_is_ignored(peer: Peer) -> None:
    """Section 4.1 / 5.5: unknown types are ignored."""
    peer.send(raw_frame(0x20, 0, 0, b"whatever"))
    expect_fine(peer)


def test_unknown_flags_and_reserved_bit_are_ignored(peer: Peer) -> None:
    """Section 4.1: unknown flags and the reserved bit are ignored."""
    peer.send(raw_frame(PING, 0xFE & ~ACK, 0, b"abcdefgh"))
    outcome = peer.read_until(lambda f: isinstance(f, PingFrame | GoAwayFrame))
    assert isinstance(outcome.frames[-1], PingFrame) and "ACK" in outcome.frames[-1].flags
    block = peer.block(peer.request_headers())
    peer.send(raw_frame(HEADERS, END_STREAM | END_HEADERS, 0x80000001, block))
    assert expect_response(peer, 1) == (200, b"hello h2")


def test_data_larger_than_max_frame_size(peer: Peer) -> None:
    """Section 4.2: a frame over SETTINGS_MAX_FRAME_SIZE is a FRAME_SIZE_ERROR."""
    peer.send(peer.headers(1, peer.request_headers("/echo", "POST"), end_stream=False))
    peer.send(raw_frame(DATA, 0, 1, b"x" * 16385))
    expect_stream_error(peer, 1, ErrorCodes.FRAME_SIZE_ERROR)


def test_headers_larger_than_max_frame_size(peer: Peer) -> None:
    """Section 4.2: a HEADERS frame over the limit is a connection FRAME_SIZE_ERROR."""
    block = peer.encoder.encode(peer.request_headers(extra=[("x-big", "y" * 17000)]), False)
    assert len(block) > 16384
    peer.send(raw_frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
    expect_connection_error(peer, ErrorCodes.FRAME_SIZE_ERROR)


@pytest.mark.parametrize(
    ("kind", "stream_id", "payload"),
    [
        (PING, 0, b"short"),
        (SETTINGS, 0, b"\x00\x01\x00"),
        (WINDOW_UPDATE, 0, b"\x00\x01\x00"),
        (RST_STREAM, 1, b"\x00\x00\x08"),
    ],
    ids=["ping", "settings", "window_update", "rst_stream"],
)
def test_frame_with_a_bad_length_is_frame_size_error(
    peer: Peer, kind: int, stream_id: int, payload: bytes
) -> None:
    """Sections 6.4, 6.5, 6.7, 6.9: fixed-size frames of another size."""
    if kind == RST_STREAM:
        peer.send(peer.headers(1, peer.request_headers("/echo", "POST"), end_stream=False))
    peer.send(raw_frame(kind, 0, stream_id, payload))
    expect_connection_error(peer, ErrorCodes.FRAME_SIZE_ERROR)


def test_priority_with_a_bad_length(peer: Peer) -> None:
    """Section 6.3: PRIORITY of other than 5 octets: FRAME_SIZE_ERROR (stream error)."""
    peer.send(raw_frame(PRIORITY, 0, 1, b"\x00\x00\x00\x03"))
    expect_stream_error(peer, 1, ErrorCodes.FRAME_SIZE_ERROR)


# -- 5.1: stream states and identifiers -----------------------------------------------------------


def test_data_on_an_idle_stream(peer: Peer) -> None:
    """Section 5.1: DATA on an idle stream: connection PROTOCOL_ERROR."""
    peer.send(DataFrame(1, data=b"hello"))
    expect_connection_error(peer, ErrorCodes.PROTOCOL_ERROR)


def test_rst_stream_on_an_idle_stream(peer: Peer) -> None:
    peer.send(RstStreamFrame(1, error_code=ErrorCodes.CANCEL))
    expect_connection_error(peer, ErrorCodes.PROTOCOL_ERROR)


def test_window_update_on_an_idle_stream(peer: Peer) -> None:
    peer.send(WindowUpdateFrame(1, window_increment=100))
    expect_connection_error(peer, ErrorCodes.PROTOCOL_ERROR)


def test_continuation_without_headers(peer: Peer) -> None:
    block = peer.block(peer.request_headers())
    peer.send(ContinuationFrame(1, data=block, flags=["END_HEADERS"]))
    expect_connection_error(peer, ErrorCodes.PROTOCOL_ERROR)


@pytest.mark.parametrize("kind", ["data", "headers"])
def test_frames_after_the_client_reset_the_stream(peer: Peer, kind: str) -> None:
    """Section 5.1 (h2spec 5.1/8, 5.1/9): after the client's RST_STREAM the stream is
    closed; DATA or HEADERS on it are a STREAM_CLOSED error."""
    peer.send(peer.headers(1, peer.request_headers("/echo", "POST"), end_stream=False))
    peer.send(RstStreamFrame(1, error_code=ErrorCodes.CANCEL))
    late = DataFrame(1, data=b"late") if kind == "data" else peer.headers(1)
    peer.send(late)
    expect_stream_error(peer, 1, ErrorCodes.STREAM_CLOSED)


def test_data_after_end_stream(peer: Peer) -> None:
    """Section 5.1: DATA on a half-closed (remote) or closed stream: STREAM_CLOSED."""
    peer.send(peer.headers(1))
    expect_response(peer, 1)
    peer.send(DataFrame(1, data=b"late"))
    expect_stream_error(peer, 1, ErrorCodes.STREAM_CLOSED)


def test_headers_on_a_closed_stream(peer: Peer) -> None:
    """Section 5.1: HEADERS on a closed stream (not trailers): STREAM_CLOSED."""
    peer.send(peer.headers(1))
    expect_response(peer, 1)
    peer.send(peer.headers(1))
    expect_stream_error(peer, 1, ErrorCodes.STREAM_CLOSED)


def test_even_stream_id(peer: Peer) -> None:
    """Section 5.1.1: a client stream with an even id: connection PROTOCOL_ERROR."""
    peer.send(peer.headers(2))
    expect_connection_error(peer, ErrorCodes.PROTOCOL_ERROR)


def test_decreasing_stream_id(peer: Peer) -> None:
    """Section 5.1.1: a new stream id lower than one used before: PROTOCOL_ERROR."""
    peer.send(peer.headers(5))
    expect_response(peer, 5)
    peer.send(peer.headers(3))
    expect_connection_error(peer, ErrorCodes.PROTOCOL_ERROR)


def test_stream_ids_may_skip(peer: Peer) -> None:
    """Section 5.1.1: ids need only increase; 1 then 7 is fine."""
    peer.send(peer.headers(1))
    assert expect_response(peer, 1) == (200, b"hello h2")
    peer.send(peer.headers(7))
    assert expect_response(peer, 7) == (200, b"hello h2")


def test_streams_over_max_concurrent_streams_are_refused() -> None:
    """Section 5.1.2: streams beyond the advertised limit: PROTOCOL_ERROR or REFUSED_STREAM."""
    with serve_in_thread(app, h2_max_concurrent_streams=1) as running:
        peer = Peer(running)
        try:
            assert peer.server_settings[0x3] == 1
            peer.send(peer.headers(1, peer.request_headers("/echo", "POST"), end_stream=False))
            peer.send(peer.headers(3, peer.request_headers("/echo", "POST"), end_stream=False))
            outcome = peer.read_until(
                lambda f: isinstance(f, GoAwayFrame | RstStreamFrame) and f.stream_id in (0, 3)
            )
            assert outcome.resets(3) == [ErrorCodes.REFUSED_STREAM], outcome.frames
            peer.send(DataFrame(1, data=b"still here", flags=["END_STREAM"]))
            assert expect_response(peer, 1) == (200, b"still here")
        finally:
            peer.close()


# -- 5.5, 6.1, 6.2, 6.10: frames in and around header blocks ---------------------------------------


def test_unknown_frame_inside_a_header_block(peer: Peer) -> None:
    """Section 5.5: only CONTINUATION may follow HEADERS without END_HEADERS."""
    peer.send(peer.headers(1, end_headers=False))
    peer.send(raw_frame(0x20, 0, 0, b"x"))
    expect_connection_error(peer, ErrorCodes.PROTOCOL_ERROR)


def test_other_frame_inside_a_header_block(peer: Peer) -> None:
    """Section 6.2 / 6.10: a PING between HEADERS and its CONTINUATION."""
    peer.send(peer.headers(1, end_headers=False))
    peer.send(PingFrame(0, opaque_data=b"12345678"))
    expect_connection_error(peer, ErrorCodes.PROTOCOL_ERROR)


def test_continuation_on_another_stream(peer: Peer) -> None:
    block = peer.block(peer.request_headers())
    peer.send(HeadersFrame(1, data=block[:5], flags=["END_STREAM"]))
    peer.send(ContinuationFrame(3, data=block[5:], flags=["END_HEADERS"]))
    expect_connection_error(peer, ErrorCodes.PROTOCOL_ERROR)


def test_continuation_after_end_headers(peer: Peer) -> None:
    peer.send(peer.headers(1, peer.request_headers("/echo", "POST"), end_stream=False))
    peer.send(ContinuationFrame(1, data=peer.block([("x-late", "1")]), flags=["END_HEADERS"]))
    expect_connection_error(peer, ErrorCodes.PROTOCOL_ERROR)


def test_header_block_in_continuations_is_served(peer: Peer) -> None:
    block = peer.block(peer.request_headers(extra=[("x-long", "z" * 3000)]))
    peer.send(HeadersFrame(1, data=block[:10], flags=["END_STREAM"]))
    peer.send(ContinuationFrame(1, data=block[10:1000]))
    peer.send(ContinuationFrame(1, data=block[1000:], flags=["END_HEADERS"]))
    assert expect_response(peer, 1) == (200, b"hello h2")


@pytest.mark.parametrize("kind", [DATA, HEADERS, PRIORITY, RST_STREAM, CONTINUATION])
def test_stream_frames_on_stream_zero(peer: Peer, kind: int) -> None:
    """Sections 6.1-6.4, 6.10: these frames on stream 0: connection PROTOCOL_ERROR."""
    payloads = {
        DATA: b"data",
        HEADERS: peer.block(peer.request_headers()),
        PRIORITY: b"\x00\x00\x00\x00\x10",
        RST_STREAM: b"\x00\x00\x00\x08",
        CONTINUATION: b"",
    }
    peer.send(raw_frame(kind, END_HEADERS if kind == HEADERS else 0, 0, payloads[kind]))
    expect_connection_error(peer, ErrorCodes.PROTOCOL_ERROR)


@pytest.mark.parametrize("kind", [SETTINGS, PING, GOAWAY])
def test_connection_frames_on_a_stream(peer: Peer, kind: int) -> None:
    """Sections 6.5, 6.7, 6.8: these frames on a stream other than 0: PROTOCOL_ERROR."""
    payloads = {SETTINGS: b"", PING: b"abcdefgh", GOAWAY: b"\x00\x00\x00\x00\x00\x00\x00\x00"}
    peer.send(raw_frame(kind, 0, 1, payloads[kind]))
    expect_connection_error(peer, ErrorCodes.PROTOCOL_ERROR)


def test_data_with_invalid_padding(peer: Peer) -> None:
    """Section 6.1: padding at least as long as the payload: PROTOCOL_ERROR."""
    peer.send(peer.headers(1, peer.request_headers("/echo", "POST"), end_stream=False))
    peer.send(raw_frame(DATA, PADDED, 1, b"\x08abc"))
    expect_connection_error(peer, ErrorCodes.PROTOCOL_ERROR)


def test_headers_with_invalid_padding(peer: Peer) -> None:
    block = peer.block(peer.request_headers())
    payload = bytes([len(block) + 1]) + block
    peer.send(raw_frame(HEADERS, PADDED | END_HEADERS | END_STREAM, 1, payload))
    expect_connection_error(peer, ErrorCodes.PROTOCOL_ERROR)


def test_padded_data_is_served(peer: Peer) -> None:
    peer.send(peer.headers(1, peer.request_headers("/echo", "POST"), end_stream=False))
    peer.send(raw_frame(DATA, PADDED | END_STREAM, 1, b"\x03abc\x00\x00\x00"))
    assert expect_response(peer, 1) == (200, b"abc")


def test_stream_depending_on_itself(peer: Peer) -> None:
    """Section 5.3.1: a stream cannot depend on itself: PROTOCOL_ERROR."""
    peer.send(PriorityFrame(1, depends_on=1, stream_weight=16))
    expect_stream_error(peer, 1, ErrorCodes.PROTOCOL_ERROR)


# -- 6.5: SETTINGS ---------------------------------------------------------------------------------


def test_settings_are_acknowledged(peer: Peer) -> None:
    peer.send(SettingsFrame(0, settings={0x4: 100_000}))
    outcome = peer.read_until(lambda f: isinstance(f, SettingsFrame | GoAwayFrame))
    frame = outcome.frames[-1]
    assert isinstance(frame, SettingsFrame) and frame.flags == {"ACK"} and not frame.settings


def test_settings_ack_with_payload(peer: Peer) -> None:
    peer.send(raw_frame(SETTINGS, ACK, 0, b"\x00\x04\x00\x00\x10\x00"))
    expect_connection_error(peer, ErrorCodes.FRAME_SIZE_ERROR)


@pytest.mark.parametrize(
    ("setting", "value", "code"),
    [
        (0x2, 2, ErrorCodes.PROTOCOL_ERROR),  # ENABLE_PUSH other than 0 or 1
        (0x4, 2**31, ErrorCodes.FLOW_CONTROL_ERROR),  # INITIAL_WINDOW_SIZE too large
        (0x5, 16383, ErrorCodes.PROTOCOL_ERROR),  # MAX_FRAME_SIZE too small
        (0x5, 2**24, ErrorCodes.PROTOCOL_ERROR),  # MAX_FRAME_SIZE too large
    ],
    ids=["enable_push", "initial_window_size", "max_frame_size_low", "max_frame_size_high"],
)
def test_invalid_settings_values(peer: Peer, setting: int, value: int, code: ErrorCodes) -> None:
    peer.send(raw_frame(SETTINGS, 0, 0, struct.pack(">HI", setting, value)))
    expect_connection_error(peer, code)


def test_unknown_setting_is_ignored(peer: Peer) -> None:
    peer.send(raw_frame(SETTINGS, 0, 0, struct.pack(">HI", 0xFF, 1)))
    outcome = peer.read_until(lambda f: isinstance(f, SettingsFrame | GoAwayFrame))
    assert isinstance(outcome.frames[-1], SettingsFrame)
    expect_fine(peer)


# -- 6.7, 6.8: PING and GOAWAY -------------------------------------------------------------------


def test_ping_is_answered_with_the_same_payload(peer: Peer) -> None:
    peer.send(PingFrame(0, opaque_data=b"\x01\x02\x03\x04\x05\x06\x07\x08"))
    outcome = peer.read_until(lambda f: isinstance(f, PingFrame | GoAwayFrame))
    frame = outcome.frames[-1]
    assert isinstance(frame, PingFrame) and "ACK" in frame.flags
    assert frame.opaque_data == b"\x01\x02\x03\x04\x05\x06\x07\x08"


def test_ping_ack_is_not_answered(peer: Peer) -> None:
    peer.send(PingFrame(0, opaque_data=b"unsolici", flags=["ACK"]))
    outcome = peer.ping()  # the next PING's ACK is the first PING frame we see
    pings = [f for f in outcome.frames if isinstance(f, PingFrame)]
    assert [p.opaque_data for p in pings] == [b"pingpong"]


def test_client_goaway_closes_the_connection(peer: Peer) -> None:
    peer.send(GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.NO_ERROR))
    outcome = peer.read_until(lambda f: False)
    assert outcome.closed


def test_push_promise_from_a_client(peer: Peer) -> None:
    """Section 8.4: a client cannot push: connection PROTOCOL_ERROR."""
    peer.send(peer.headers(1, peer.request_headers("/echo", "POST"), end_stream=False))
    block = peer.block(peer.request_headers())
    peer.send(PushPromiseFrame(1, promised_stream_id=2, data=block, flags=["END_HEADERS"]))
    expect_connection_error(peer, ErrorCodes.PROTOCOL_ERROR)


# -- 6.9: flow control -----------------------------------------------------------------------------


def test_window_update_of_zero_on_the_connection(peer: Peer) -> None:
    peer.send(raw_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)))
    expect_connection_error(peer, ErrorCodes.PROTOCOL_ERROR)


def test_window_update_of_zero_on_a_stream(peer: Peer) -> None:
    peer.send(peer.headers(1, peer.request_headers("/echo", "POST"), end_stream=False))
    peer.send(raw_frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0)))
    expect_stream_error(peer, 1, ErrorCodes.PROTOCOL_ERROR)


def test_connection_window_overflow(peer: Peer) -> None:
    """Section 6.9.1: a window above 2^31-1: connection FLOW_CONTROL_ERROR."""
    peer.send(WindowUpdateFrame(0, window_increment=2**31 - 1))
    expect_connection_error(peer, ErrorCodes.FLOW_CONTROL_ERROR)


def test_stream_window_overflow(peer: Peer) -> None:
    peer.send(peer.headers(1, peer.request_headers("/echo", "POST"), end_stream=False))
    peer.send(WindowUpdateFrame(1, window_increment=2**31 - 1))
    expect_stream_error(peer, 1, ErrorCodes.FLOW_CONTROL_ERROR)


def test_settings_initial_window_size_overflowing_a_stream_window(peer: Peer) -> None:
    """Section 6.9.2: SETTINGS that push an open stream's window over 2^31-1."""
    peer.send(peer.headers(1, peer.request_headers("/echo", "POST"), end_stream=False))
    peer.send(WindowUpdateFrame(1, window_increment=2**31 - 1 - 65535))
    expect_fine(peer)
    peer.send(SettingsFrame(0, settings={0x4: 65536}))
    expect_connection_error(peer, ErrorCodes.FLOW_CONTROL_ERROR)


def test_data_beyond_the_stream_window() -> None:
    """Section 6.9.1: a sender must not exceed the window it was given."""
    with serve_in_thread(app, h2_initial_window_size=1024) as running:
        peer = Peer(running)
        try:
            assert peer.server_settings[0x4] == 1024
            peer.send(peer.headers(1, peer.request_headers("/echo", "POST"), end_stream=False))
            peer.send(DataFrame(1, data=b"a" * 1024), DataFrame(1, data=b"b" * 1024))
            expect_stream_error(peer, 1, ErrorCodes.FLOW_CONTROL_ERROR)
        finally:
            peer.close()


# -- 8: HTTP semantics -----------------------------------------------------------------------------


MALFORMED = {
    "uppercase_name": [("X-Upper", "1")],
    "connection": [("connection", "keep-alive")],
    "keep_alive": [("keep-alive", "timeout=5")],
    "proxy_connection": [("proxy-connection", "keep-alive")],
    "transfer_encoding": [("transfer-encoding", "chunked")],
    "upgrade": [("upgrade", "websocket")],
    "te_gzip": [("te", "gzip")],
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_header_fields(peer: Peer, name: str) -> None:
    """Sections 8.2.1, 8.2.2: uppercase names and connection-specific fields."""
    peer.send(peer.headers(1, peer.request_headers(extra=MALFORMED[name])))
    expect_stream_error(peer, 1, ErrorCodes.PROTOCOL_ERROR)


def test_te_trailers_is_allowed(peer: Peer) -> None:
    peer.send(peer.headers(1, peer.request_headers(extra=[("te", "trailers")])))
    assert expect_response(peer, 1) == (200, b"hello h2")


BASE = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a")]
PSEUDO = {
    "no_method": [h for h in BASE if h[0] != ":method"],
    "no_scheme": [h for h in BASE if h[0] != ":scheme"],
    "no_path": [h for h in BASE if h[0] != ":path"],
    "empty_path": [(":method", "GET"), (":scheme", "http"), (":path", ""), (":authority", "a")],
    "duplicate_method": [*BASE, (":method", "GET")],
    "duplicate_path": [*BASE, (":path", "/")],
    "pseudo_after_regular": [*BASE[:2], ("accept", "*/*"), *BASE[2:]],
    "unknown_pseudo": [*BASE, (":foo", "bar")],
    "response_pseudo": [*BASE, (":status", "200")],
}


@pytest.mark.parametrize("name", list(PSEUDO))
def test_pseudo_header_rules(peer: Peer, name: str) -> None:
    """Section 8.3: exactly one each of :method, :scheme, :path, first, and no others."""
    peer.send(peer.headers(1, PSEUDO[name]))
    expect_stream_error(peer, 1, ErrorCodes.PROTOCOL_ERROR)


def test_pseudo_headers_in_trailers(peer: Peer) -> None:
    """Section 8.1: trailers carry no pseudo-header fields."""
    peer.send(peer.headers(1, peer.request_headers("/echo", "POST"), end_stream=False))
    peer.send(DataFrame(1, data=b"body"))
    peer.send(peer.headers(1, [(":method", "GET"), ("x-trailer", "1")]))
    expect_stream_error(peer, 1, ErrorCodes.PROTOCOL_ERROR)


def test_content_length_mismatch(peer: Peer) -> None:
    """Section 8.1.1: DATA that does not add up to content-length: malformed."""
    peer.send(
        peer.headers(1, peer.request_headers("/echo", "POST", [("content-length", "10")]), False)
    )
    peer.send(DataFrame(1, data=b"short", flags=["END_STREAM"]))
    expect_stream_error(peer, 1, ErrorCodes.PROTOCOL_ERROR)


def test_request_with_trailers_is_served(peer: Peer) -> None:
    peer.send(peer.headers(1, peer.request_headers("/echo", "POST"), end_stream=False))
    peer.send(DataFrame(1, data=b"body"))
    peer.send(peer.headers(1, [("x-checksum", "abc")]))
    assert expect_response(peer, 1) == (200, b"body")


# -- RFC 7541: HPACK -------------------------------------------------------------------------------


def test_hpack_invalid_index(peer: Peer) -> None:
    """RFC 7541 section 2.3.3: an index outside the tables: COMPRESSION_ERROR."""
    peer.send(raw_frame(HEADERS, END_STREAM | END_HEADERS, 1, b"\xff\x7f"))  # index 254
    expect_connection_error(peer, ErrorCodes.COMPRESSION_ERROR)


def test_hpack_table_size_update_over_the_limit(peer: Peer) -> None:
    """RFC 7541 section 6.3: a size update above SETTINGS_HEADER_TABLE_SIZE."""
    update = b"\x3f\xe1\xff\x03"  # dynamic table size update to 65536 (limit 4096)
    block = update + peer.block(peer.request_headers())
    peer.send(raw_frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
    expect_connection_error(peer, ErrorCodes.COMPRESSION_ERROR)
