"""HTTP/2 server framing and state (RFC 9113), sans-I/O, for :mod:`threshold.protocols.http2`.

Why not the ``h2`` library: measured under h2load, h2's event objects, generator
chains of header checks, frame objects and per-frame logging cost ~250 µs per request
on the bench machine, more than hypercorn's whole request (DESIGN.md, "HTTP/2 engine").
This module does the same job for a server only, with frames read straight from the
buffer, one pass of header checks and callbacks instead of event objects. HPACK
decoding stays with the ``hpack`` library (the part that is easy to get wrong);
encoding is ours: literal fields that never enter the dynamic table, so the encoding
of a field depends on nothing but the field and is cached.

The owner (:class:`~threshold.protocols.http2.Http2Connection`) feeds bytes to
:meth:`H2Engine.receive`, gets callbacks (``h2_request``, ``h2_data``...), calls the
``send_*`` methods and writes :meth:`H2Engine.data_to_send` to the transport. Errors
follow RFC 9113 section 5.4: a connection error queues GOAWAY and raises
:class:`H2ConnectionError`; a stream error queues RST_STREAM and tells the owner.
"""

from __future__ import annotations

import base64
import binascii
import struct
from typing import NamedTuple, Protocol

import hpack
import hpack.exceptions
from hpack.table import HeaderTable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types and flags (RFC 9113 section 6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE = 0, 1, 2, 3, 4, 5
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 6, 7, 8, 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20

# Error codes (RFC 9113 section 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB

# Settings (RFC 9113 section 6.5.2, RFC 8441).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6
ENABLE_CONNECT_PROTOCOL = 0x8

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
MAX_CONTINUATIONS = 64  # CONTINUATION frames per header block (flood bound)
RECENTLY_CLOSED = 1024  # closed streams remembered, for STREAM_CLOSED versus idle

_HEAD = struct.Struct(">HBBBL")  # length (3 bytes as 2 + 1), type, flags, stream id
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
# One-octet indexed fields (RFC 7541 section 6.1): a block of nothing else changes no table.
_INDEXED = bytes(range(0x81, 0xFF))
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority", b":protocol"})


class Request(NamedTuple):
    """A checked request header block, as the connection needs it."""

    method: bytes
    path: bytes  # with the query string; empty for CONNECT
    protocol: bytes  # RFC 8441 extended CONNECT, or empty
    fields: list[tuple[bytes, bytes]]  # the regular fields; host first if only :authority
    content_length: int  # declared, or -1


class H2ConnectionError(Exception):
    """A connection error: GOAWAY with ``code`` is queued; close after writing it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _StreamError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class H2Owner(Protocol):
    """What the engine calls back while :meth:`H2Engine.receive` reads frames."""

    def h2_request(self, stream_id: int, request: Request, ended: bool) -> None:
        """A new stream; ``request.fields`` is shared with later identical requests."""

    def h2_data(self, stream_id: int, data: bytes, flow_length: int, ended: bool) -> None: ...

    def h2_end(self, stream_id: int) -> None:
        """The client ended its side with trailers (already checked, then dropped)."""

    def h2_reset(self, stream_id: int, by_peer: bool) -> None:
        """The stream is gone: reset by the client, or by us for a stream error."""

    def h2_window(self, stream_id: int) -> None:
        """Send window grew: on one stream, or on all of them (``0``)."""

    def h2_control(self) -> None:
        """A control frame arrived (the owner counts them against floods)."""

    def h2_goaway(self) -> None: ...


class _Stream:
    __slots__ = (
        "content_length",
        "in_window",
        "local_closed",
        "out_window",
        "received",
        "remote_closed",
    )

    def __init__(self, in_window: int, out_window: int) -> None:
        self.in_window = in_window
        self.out_window = out_window
        self.local_closed = False  # we sent END_STREAM
        self.remote_closed = False  # the client sent END_STREAM
        self.content_length = -1  # what the request declared, or -1
        self.received = 0


# -- HPACK encoding: literal fields without indexing, cached -------------------------------

_STATIC_FULL: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC_FULL.setdefault((_name, _value), _index)
    _STATIC_NAME.setdefault(_name, _index)


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 section 5.1."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_field(name: bytes, value: bytes) -> bytes:
    index = _STATIC_FULL.get((name, value))
    if index is not None:
        return bytes([0x80 | index])  # indexed field (static table)
    index = _STATIC_NAME.get(name)
    if index is not None:  # literal without indexing, indexed name (section 6.2.2)
        return _integer(index, 4, 0x00) + _integer(len(value), 7, 0) + value
    return b"\x00" + _integer(len(name), 7, 0) + name + _integer(len(value), 7, 0) + value


_ENCODED: dict[tuple[bytes, bytes], bytes] = {}


def encode_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    """An HPACK block for ``headers``; fields never enter the dynamic table."""
    cache = _ENCODED
    parts = []
    for field in headers:
        encoded = cache.get(field)
        if encoded is None:
            encoded = _encode_field(field[0], field[1])
            if len(cache) >= 4096:
                cache.clear()
            cache[field] = encoded
        parts.append(encoded)
    return b"".join(parts)


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return _HEAD.pack(length >> 8, length & 0xFF, kind, flags, stream_id) + payload


class H2Engine:
    """The server side of one HTTP/2 connection."""

    def __init__(
        self,
        owner: H2Owner,
        *,
        max_concurrent_streams: int,
        initial_window_size: int,
        max_frame_size: int,
        max_header_list_size: int,
        enable_connect_protocol: bool,
        connection_window: int,
    ) -> None:
        self.owner = owner
        self.local_settings = {
            MAX_CONCURRENT_STREAMS: max_concurrent_streams,
            INITIAL_WINDOW_SIZE: initial_window_size,
            MAX_FRAME_SIZE: max_frame_size,
            MAX_HEADER_LIST_SIZE: max_header_list_size,
            ENABLE_CONNECT_PROTOCOL: int(enable_connect_protocol),
        }
        self.enable_connect_protocol = enable_connect_protocol
        self._connection_window = connection_window
        # Local settings apply once the client acknowledges them (section 6.5.3).
        self._in_initial_window = DEFAULT_WINDOW
        self._settings_unacked = 0
        self._max_in_frame = max(max_frame_size, 16384)
        self._max_block = max_header_list_size + 16384
        self.decoder = hpack.Decoder(max_header_list_size)
        self.decoder.max_header_list_size = max_header_list_size
        # Remote settings.
        self.max_outbound_frame_size = 16384
        self._out_initial_window = DEFAULT_WINDOW
        self._table_size_update = False  # the client changed HEADER_TABLE_SIZE
        # Flow control of the connection.
        self.out_window = DEFAULT_WINDOW
        self._in_window = DEFAULT_WINDOW
        self.streams: dict[int, _Stream] = {}
        self._closed: dict[int, bool] = {}  # recently closed stream -> we reset it
        # Checked request blocks made only of indexed fields.
        self._requests: dict[bytes, Request] = {}
        self.highest_inbound_stream_id = 0
        self._out = bytearray()
        self._buf = b""
        self._preface = True  # the client's preface is still due
        self._await_settings = False  # ... and its SETTINGS frame
        self._block: list[bytes] = []  # header block being assembled from CONTINUATIONs
        self._block_sid = 0
        self._block_flags = 0
        self._block_frames = 0
        self.closed = False

    # -- starting ------------------------------------------------------------------------

    def initiate(self) -> None:
        """The server preface: SETTINGS, and the connection window we want."""
        payload = b"".join(_SETTING.pack(k, v) for k, v in self.local_settings.items())
        self._out += _frame(SETTINGS, 0, 0, payload)
        self._settings_unacked += 1
        increment = self._connection_window - DEFAULT_WINDOW
        if increment > 0:
            self._in_window += increment
            self._out += _frame(WINDOW_UPDATE, 0, 0, _U32.pack(increment))

    def initiate_upgrade(self, settings_header: bytes) -> None:
        """h2c by Upgrade: HTTP2-Settings applies, stream 1 is half-closed (remote)."""
        try:
            raw = base64.urlsafe_b64decode(settings_header + b"=" * (-len(settings_header) % 4))
        except (binascii.Error, ValueError) as exc:
            raise ValueError("invalid HTTP2-Settings") from exc
        if len(raw) % 6:
            raise ValueError("invalid HTTP2-Settings length")
        try:
            self._apply_settings(raw)
        except H2ConnectionError as exc:
            raise ValueError(str(exc)) from exc
        self.initiate()
        stream = _Stream(self._in_initial_window, self._out_initial_window)
        stream.remote_closed = True
        self.streams[1] = stream
        self.highest_inbound_stream_id = 1

    # -- output --------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = bytes(out)
        out.clear()
        return data

    def window(self, stream_id: int) -> int:
        """How many body bytes the stream may send now (both windows)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return 0
        return min(stream.out_window, self.out_window)

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end: bool) -> bool:
        """Queue a header block; False if the stream is gone (reset or closed)."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed:
            return False
        block = encode_headers(headers)
        if self._table_size_update:
            self._table_size_update = False
            block = b"\x20" + block  # our table stays empty: size 0 (RFC 7541 section 6.3)
        flags = END_STREAM if end else 0
        size = self.max_outbound_frame_size
        if len(block) <= size:
            self._out += _frame(HEADERS, flags | END_HEADERS, stream_id, block)
        else:
            self._out += _frame(HEADERS, flags, stream_id, block[:size])
            rest = block[size:]
            while rest:
                chunk, rest = rest[:size], rest[size:]
                self._out += _frame(CONTINUATION, 0 if rest else END_HEADERS, stream_id, chunk)
        if end:
            self._local_close(stream_id, stream)
        return True

    def send_data(self, stream_id: int, data: bytes, end: bool) -> bool:
        """Queue one DATA frame; the caller keeps within :meth:`window` and the frame size."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed:
            return False
        size = len(data)
        stream.out_window -= size
        self.out_window -= size
        self._out += _frame(DATA, END_STREAM if end else 0, stream_id, data)
        if end:
            self._local_close(stream_id, stream)
        return True

    def reset(self, stream_id: int, code: int) -> None:
        """RST_STREAM: the stream is closed for us from now on."""
        if self.streams.pop(stream_id, None) is None and stream_id in self._closed:
            return
        self._remember(stream_id, True)
        self._out += _frame(RST_STREAM, 0, stream_id, _U32.pack(code))

    def ack(self, stream_id: int, size: int) -> None:
        """The app consumed ``size`` flow-controlled bytes: open both windows again."""
        if size <= 0:
            return
        self._in_window += size
        out = _frame(WINDOW_UPDATE, 0, 0, _U32.pack(size))
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.remote_closed:
            stream.in_window += size
            out += _frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(size))
        self._out += out

    def goaway(self, code: int, last_stream_id: int | None = None) -> None:
        last = self.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        self._out += _frame(GOAWAY, 0, 0, _U32.pack(last) + _U32.pack(code))

    def _local_close(self, stream_id: int, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:  # both sides ended: closed
            del self.streams[stream_id]
            self._remember(stream_id, False)

    def _remember(self, stream_id: int, reset: bool) -> None:
        closed = self._closed
        closed[stream_id] = reset
        if len(closed) > 2 * RECENTLY_CLOSED:
            # Pruned in bulk: deleting the oldest one by one makes iter() crawl over holes.
            self._closed = dict(list(closed.items())[RECENTLY_CLOSED:])

    # -- input ---------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Read frames; call the owner back. Raises H2ConnectionError (GOAWAY queued)."""
        if self.closed:
            return
        buf = self._buf + data if self._buf else data
        pos = 0
        try:
            if self._preface:
                if len(buf) < 24:
                    if not PREFACE.startswith(buf):
                        raise H2ConnectionError(PROTOCOL_ERROR, "invalid connection preface")
                    self._buf = buf
                    return
                if buf[:24] != PREFACE:
                    raise H2ConnectionError(PROTOCOL_ERROR, "invalid connection preface")
                self._preface = False
                self._await_settings = True
                pos = 24
            end = len(buf)
            if self._await_settings and end - pos >= 9:
                if buf[pos + 3] != SETTINGS:
                    raise H2ConnectionError(PROTOCOL_ERROR, "the preface must end with SETTINGS")
                self._await_settings = False
            unpack = _HEAD.unpack_from
            while end - pos >= 9:
                high, low, kind, flags, sid = unpack(buf, pos)
                length = (high << 8) | low
                if length > self._max_in_frame:
                    raise H2ConnectionError(FRAME_SIZE_ERROR, "frame over SETTINGS_MAX_FRAME_SIZE")
                stop = pos + 9 + length
                if stop > end:
                    break
                payload = buf[pos + 9 : stop]
                pos = stop
                sid &= 0x7FFFFFFF
                if self._block_sid:
                    self._continuation(kind, flags, sid, payload)
                elif kind == HEADERS:
                    self._headers(flags, sid, payload)
                elif kind == DATA:
                    self._data(flags, sid, payload)
                elif kind == WINDOW_UPDATE:
                    self._window_update(sid, payload)
                elif kind == SETTINGS:
                    self._settings(flags, sid, payload)
                elif kind == PING:
                    self._ping(flags, sid, payload)
                elif kind == RST_STREAM:
                    self._rst_stream(sid, payload)
                elif kind == PRIORITY:
                    self._priority(sid, payload)
                elif kind == GOAWAY:
                    if sid:
                        raise H2ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
                    if length < 8:
                        raise H2ConnectionError(FRAME_SIZE_ERROR, "GOAWAY too short")
                    self.closed = True
                    self.owner.h2_goaway()
                    return
                elif kind == CONTINUATION:
                    raise H2ConnectionError(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
                elif kind == PUSH_PROMISE:
                    raise H2ConnectionError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
                else:
                    self.owner.h2_control()  # unknown type: ignored, but counted
                if self.closed:
                    return
        except H2ConnectionError as exc:
            self.closed = True
            self._buf = b""
            self.goaway(exc.code)
            raise
        self._buf = buf[pos:] if pos < len(buf) else b""

    def _stream_error(self, stream_id: int, code: int) -> None:
        known = self.streams.pop(stream_id, None) is not None
        self._remember(stream_id, True)
        self._out += _frame(RST_STREAM, 0, stream_id, _U32.pack(code))
        if known:
            self.owner.h2_reset(stream_id, False)

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if flags & PADDED:
            if not payload:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "padded frame without pad length")
            pad = payload[0]
            if pad >= len(payload):
                raise H2ConnectionError(PROTOCOL_ERROR, "padding longer than the payload")
            return payload[1 : len(payload) - pad]
        return payload

    # -- HEADERS and CONTINUATION --------------------------------------------------------

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise H2ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        payload = self._unpad(flags, payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "HEADERS priority too short")
            depends = _U32.unpack_from(payload)[0] & 0x7FFFFFFF
            payload = payload[5:]
            if depends == sid:
                self._decode(payload)  # keep the HPACK state in step
                self._stream_error(sid, PROTOCOL_ERROR)
                return
        if flags & END_HEADERS:
            self._header_block(flags, sid, payload)
        else:
            self._block = [payload]
            self._block_sid = sid
            self._block_flags = flags
            self._block_frames = 0

    def _continuation(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if kind != CONTINUATION or sid != self._block_sid:
            raise H2ConnectionError(PROTOCOL_ERROR, "header block interrupted")
        self._block.append(payload)
        self._block_frames += 1
        if self._block_frames > MAX_CONTINUATIONS or (sum(map(len, self._block)) > self._max_block):
            raise H2ConnectionError(ENHANCE_YOUR_CALM, "CONTINUATION flood")
        if flags & END_HEADERS:
            block = b"".join(self._block)
            self._block = []
            self._block_sid = 0
            self._header_block(self._block_flags, sid, block)

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        if self._requests and block.translate(None, _INDEXED):
            self._requests.clear()  # the block may change the dynamic table
        try:
            return self.decoder.decode(block, raw=True)  # type: ignore[return-value]
        except hpack.exceptions.OversizedHeaderListError as exc:
            raise H2ConnectionError(ENHANCE_YOUR_CALM, "header list too large") from exc
        except (hpack.exceptions.HPACKError, IndexError, ValueError) as exc:
            raise H2ConnectionError(COMPRESSION_ERROR, f"HPACK: {exc}") from exc

    def _header_block(self, flags: int, sid: int, block: bytes) -> None:
        request = self._requests.get(block)
        headers = self._decode(block) if request is None else []
        ended = bool(flags & END_STREAM)
        stream = self.streams.get(sid)
        if stream is not None:
            if stream.remote_closed:
                self._stream_error(sid, STREAM_CLOSED)
                return
            if request is not None:
                headers = self._decode(block)
            self._trailers(sid, stream, headers, ended)
            return
        if sid in self._closed:
            if not self._closed[sid]:
                self._stream_error(sid, STREAM_CLOSED)
            return  # a stream we reset: ignored (section 5.1)
        if sid <= self.highest_inbound_stream_id or not sid & 1:
            raise H2ConnectionError(PROTOCOL_ERROR, f"invalid new stream id {sid}")
        self.highest_inbound_stream_id = sid
        if request is None:
            try:
                request = self._check_request(headers)
            except _StreamError as exc:
                self._stream_error(sid, exc.code)
                return
            if not block.translate(None, _INDEXED):
                # Only indexed fields: decoding it again gives the same request until
                # another block changes the dynamic table (clients repeat requests).
                if len(self._requests) >= 64:
                    self._requests.clear()
                self._requests[block] = request
        content_length = request.content_length
        stream = _Stream(self._in_initial_window, self._out_initial_window)
        stream.content_length = content_length
        self.streams[sid] = stream
        if ended:
            if content_length > 0:
                self._stream_error(sid, PROTOCOL_ERROR)
                return
            stream.remote_closed = True
        self.owner.h2_request(sid, request, ended)

    def _check_request(self, headers: list[tuple[bytes, bytes]]) -> Request:
        """Section 8.3 pseudo-header rules and 8.2 field rules."""
        method = scheme = path = authority = protocol = host = None
        fields: list[tuple[bytes, bytes]] = []
        content_length = -1
        cookies = 0
        for name, value in headers:
            if name[:1] == b":":
                if fields or name not in _REQUEST_PSEUDO:
                    raise _StreamError(PROTOCOL_ERROR, "misplaced or unknown pseudo-header")
                if name == b":method":
                    if method is not None:
                        raise _StreamError(PROTOCOL_ERROR, "duplicate :method")
                    method = value
                elif name == b":path":
                    if path is not None:
                        raise _StreamError(PROTOCOL_ERROR, "duplicate :path")
                    path = value
                elif name == b":scheme":
                    if scheme is not None:
                        raise _StreamError(PROTOCOL_ERROR, "duplicate :scheme")
                    scheme = value
                elif name == b":authority":
                    if authority is not None:
                        raise _StreamError(PROTOCOL_ERROR, "duplicate :authority")
                    authority = value
                else:
                    if protocol is not None or not self.enable_connect_protocol:
                        raise _StreamError(PROTOCOL_ERROR, "unexpected :protocol")
                    protocol = value
                if _bad_value(value):
                    raise _StreamError(PROTOCOL_ERROR, "invalid pseudo-header value")
                continue
            fields.append((name, value))
            content_length = self._check_field(name, value, content_length)
            if name == b"host":
                if host is not None:
                    raise _StreamError(PROTOCOL_ERROR, "duplicate host")
                host = value
            elif name == b"cookie":
                cookies += 1
        if authority is None and host is None:
            raise _StreamError(PROTOCOL_ERROR, "no :authority or host")
        if authority is not None and host is not None and authority != host:
            raise _StreamError(PROTOCOL_ERROR, ":authority and host differ")
        if method is None or _bad_method(method):
            raise _StreamError(PROTOCOL_ERROR, "no :method, or not a token")
        if method == b"CONNECT" and protocol is None:
            if scheme is not None or path is not None or authority is None:
                raise _StreamError(PROTOCOL_ERROR, "malformed CONNECT")
        elif (
            scheme is None
            or not path
            or (path[0] != 0x2F and (path != b"*" or method != b"OPTIONS"))  # "/" or "*"
            or (protocol is not None and method != b"CONNECT")
        ):
            raise _StreamError(PROTOCOL_ERROR, "missing, empty or invalid :scheme or :path")
        if cookies > 1:
            _join_cookies(fields)
        if host is None:
            fields.insert(0, (b"host", authority or b""))  # what HTTP/1.1 apps read
        return Request(method, path or b"", protocol or b"", fields, content_length)

    @staticmethod
    def _check_field(name: bytes, value: bytes, content_length: int) -> int:
        if bad_name(name) or _bad_value(value):
            raise _StreamError(PROTOCOL_ERROR, "invalid header field")
        if name in _CONNECTION_SPECIFIC:
            raise _StreamError(PROTOCOL_ERROR, "connection-specific header field")
        if name == b"te" and value != b"trailers":
            raise _StreamError(PROTOCOL_ERROR, "te other than trailers")
        if name == b"content-length":
            if not value.isdigit() or (content_length >= 0 and int(value) != content_length):
                raise _StreamError(PROTOCOL_ERROR, "invalid content-length")
            return int(value)
        return content_length

    def _trailers(
        self, sid: int, stream: _Stream, headers: list[tuple[bytes, bytes]], ended: bool
    ) -> None:
        try:
            if not ended:
                raise _StreamError(PROTOCOL_ERROR, "trailers without END_STREAM")
            for name, value in headers:
                if name[:1] == b":":
                    raise _StreamError(PROTOCOL_ERROR, "pseudo-header in trailers")
                self._check_field(name, value, -1)
            if stream.content_length >= 0 and stream.received != stream.content_length:
                raise _StreamError(PROTOCOL_ERROR, "body does not match content-length")
        except _StreamError as exc:
            self._stream_error(sid, exc.code)
            return
        self._remote_close(sid, stream)
        self.owner.h2_end(sid)

    def _remote_close(self, sid: int, stream: _Stream) -> None:
        stream.remote_closed = True
        if stream.local_closed:
            del self.streams[sid]
            self._remember(sid, False)

    # -- DATA ------------------------------------------------------------------------------

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        if not sid:
            raise H2ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        flow = len(payload)
        if flow > self._in_window:
            raise H2ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self._in_window -= flow
        data = self._unpad(flags, payload)
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            if (
                stream is None
                and sid not in self._closed
                and (sid > self.highest_inbound_stream_id or not sid & 1)
            ):
                raise H2ConnectionError(PROTOCOL_ERROR, "DATA on an idle stream")
            self.ack(0, flow)  # nobody will read it: the connection window comes back
            if stream is not None or not self._closed.get(sid):
                self._stream_error(sid, STREAM_CLOSED)
            return
        if flow > stream.in_window:
            self.ack(0, flow)
            self._stream_error(sid, FLOW_CONTROL_ERROR)
            return
        stream.in_window -= flow
        ended = bool(flags & END_STREAM)
        if stream.content_length >= 0:
            stream.received += len(data)
            if stream.received > stream.content_length or (
                ended and stream.received != stream.content_length
            ):
                self.ack(0, flow)
                self._stream_error(sid, PROTOCOL_ERROR)
                return
        if not data and not ended:
            self.owner.h2_control()  # empty DATA: counted against floods
        if ended:
            self._remote_close(sid, stream)
        self.owner.h2_data(sid, data, flow, ended)

    # -- control frames --------------------------------------------------------------------

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE of other than 4 octets")
        self.owner.h2_control()
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if not sid:
            if not increment:
                raise H2ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.out_window += increment
            if self.out_window > MAX_WINDOW:
                raise H2ConnectionError(FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            self.owner.h2_window(0)
            return
        stream = self.streams.get(sid)
        if stream is None:
            if sid > self.highest_inbound_stream_id:
                raise H2ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return  # closed: allowed and ignored
        if not increment:
            self._stream_error(sid, PROTOCOL_ERROR)
            return
        stream.out_window += increment
        if stream.out_window > MAX_WINDOW:
            self._stream_error(sid, FLOW_CONTROL_ERROR)
            return
        self.owner.h2_window(sid)

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise H2ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise H2ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            self.owner.h2_control()
            if self._settings_unacked:
                self._settings_unacked -= 1
                self._local_settings_acked()
            return
        if len(payload) % 6:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "SETTINGS of a bad length")
        self.owner.h2_control()
        self._apply_settings(payload)
        self._out += _frame(SETTINGS, ACK, 0)

    def _local_settings_acked(self) -> None:
        new = self.local_settings[INITIAL_WINDOW_SIZE]
        delta = new - self._in_initial_window
        if delta:
            self._in_initial_window = new
            for stream in self.streams.values():
                stream.in_window += delta

    def _apply_settings(self, payload: bytes) -> None:
        window_changed = False
        for offset in range(0, len(payload), 6):
            code, value = _SETTING.unpack_from(payload, offset)
            if code == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise H2ConnectionError(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large")
                delta = value - self._out_initial_window
                self._out_initial_window = value
                for stream in self.streams.values():
                    stream.out_window += delta
                    if stream.out_window > MAX_WINDOW:
                        raise H2ConnectionError(FLOW_CONTROL_ERROR, "stream window over 2^31-1")
                window_changed = True
            elif code == MAX_FRAME_SIZE:
                if not 16384 <= value <= 16777215:
                    raise H2ConnectionError(PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range")
                self.max_outbound_frame_size = value
            elif code == ENABLE_PUSH:
                if value > 1:
                    raise H2ConnectionError(PROTOCOL_ERROR, "ENABLE_PUSH other than 0 or 1")
            elif code == HEADER_TABLE_SIZE:
                self._table_size_update = True
            elif code == ENABLE_CONNECT_PROTOCOL and value > 1:
                raise H2ConnectionError(PROTOCOL_ERROR, "ENABLE_CONNECT_PROTOCOL not 0 or 1")
        if window_changed:
            self.owner.h2_window(0)

    def _ping(self, flags: int, sid: int, payload: bytes) -> None:
        if sid:
            raise H2ConnectionError(PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "PING of other than 8 octets")
        self.owner.h2_control()
        if not flags & ACK:
            self._out += _frame(PING, ACK, 0, payload)

    def _rst_stream(self, sid: int, payload: bytes) -> None:
        if not sid:
            raise H2ConnectionError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise H2ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM of other than 4 octets")
        if self.streams.pop(sid, None) is not None:
            self._remember(sid, False)  # closed by the client: later frames are STREAM_CLOSED
            self.owner.h2_reset(sid, True)
        elif sid > self.highest_inbound_stream_id or (not sid & 1 and sid not in self._closed):
            raise H2ConnectionError(PROTOCOL_ERROR, "RST_STREAM on an idle stream")

    def _priority(self, sid: int, payload: bytes) -> None:
        if not sid:
            raise H2ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
        self.owner.h2_control()
        if len(payload) != 5:
            self._stream_error(sid, FRAME_SIZE_ERROR)
            return
        if _U32.unpack_from(payload)[0] & 0x7FFFFFFF == sid:
            self._stream_error(sid, PROTOCOL_ERROR)


def _join_cookies(headers: list[tuple[bytes, bytes]]) -> None:
    """Section 8.2.3: several cookie fields become one, joined by "; ", for the app."""
    values = [value for name, value in headers if name == b"cookie"]
    first = next(i for i, (name, _) in enumerate(headers) if name == b"cookie")
    headers[:] = [field for field in headers if field[0] != b"cookie"]
    headers.insert(first, (b"cookie", b"; ".join(values)))


def _not_token(extra: bytes) -> bytes:
    allowed = set(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz" + extra)
    return bytes(c for c in range(256) if c not in allowed)


_NOT_TOKEN = _not_token(b"")
_NOT_METHOD = _not_token(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _bad_method(method: bytes) -> bool:
    return not method or len(method.translate(None, _NOT_METHOD)) != len(method)


def bad_name(name: bytes) -> bool:
    """Not a lowercase token (uppercase and separators are malformed, section 8.2.1)."""
    return not name or len(name.translate(None, _NOT_TOKEN)) != len(name)


def _bad_value(value: bytes) -> bool:
    """NUL, CR, LF, or leading/trailing whitespace (section 8.2.1)."""
    # Both calls hand back the same object when there is nothing to remove.
    return value.translate(None, b"\x00\r\n") is not value or value.strip(b" \t") is not value
