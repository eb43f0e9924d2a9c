"""H2Engine, the sans-I/O HTTP/2 server state, checked against the ``h2`` library.

Differential tests: the same client byte streams (built by an ``h2`` client, cut at
random places) go into a server-side ``h2.connection.H2Connection`` and into
``H2Engine``; the requests, bodies and stream ends both report must be the same, and
where h2 finds a malformed request, so must the engine. Then the parts h2 does not
have an opinion on: the HPACK encoder (decoded by ``hpack``), the decode cache, cookie
joining, header blocks split over CONTINUATION frames, the table size update.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
import pytest
from hyperframe.frame import ContinuationFrame, Frame, HeadersFrame, SettingsFrame
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from threshold.protocols import h2engine
from threshold.protocols.h2engine import H2ConnectionError, H2Engine, Request, encode_headers

# -- the two servers -----------------------------------------------------------------------


@dataclass
class Seen:
    """What a server reported: requests by stream, errors."""

    requests: dict[int, list[Any]] = field(default_factory=dict)  # sid -> [headers, body, ended]
    resets: set[int] = field(default_factory=set)  # streams reset by the client
    refused: set[int] = field(default_factory=set)  # streams the server found malformed
    error: int | None = None  # connection error code


class Recorder:
    """An H2Owner that writes down what the engine reports."""

    def __init__(self) -> None:
        self.seen = Seen()
        self.windows: list[int] = []
        self.controls = 0
        self.goaway = False

    def h2_request(self, stream_id: int, request: Request, ended: bool) -> None:
        view = (request.method, request.path, request.protocol, list(request.fields))
        self.seen.requests[stream_id] = [view, b"", ended]

    def h2_data(self, stream_id: int, data: bytes, flow_length: int, ended: bool) -> None:
        entry = self.seen.requests[stream_id]
        entry[1] += data
        entry[2] = entry[2] or ended

    def h2_end(self, stream_id: int) -> None:
        self.seen.requests[stream_id][2] = True

    def h2_reset(self, stream_id: int, by_peer: bool) -> None:
        (self.seen.resets if by_peer else self.seen.refused).add(stream_id)

    def h2_window(self, stream_id: int) -> None:
        self.windows.append(stream_id)

    def h2_control(self) -> None:
        self.controls += 1

    def h2_goaway(self) -> None:
        self.goaway = True


def engine(recorder: Recorder, **overrides: Any) -> H2Engine:
    options: dict[str, Any] = {
        "max_concurrent_streams": 100,
        "initial_window_size": 65535,
        "max_frame_size": 16384,
        "max_header_list_size": 65536,
        "enable_connect_protocol": False,
        "connection_window": 65535,
    }
    options.update(overrides)
    return H2Engine(recorder, **options)


def run_engine(chunks: list[bytes]) -> tuple[Seen, bytes]:
    recorder = Recorder()
    eng = engine(recorder)
    eng.initiate()
    try:
        for chunk in chunks:
            eng.receive(chunk)
    except H2ConnectionError as exc:
        recorder.seen.error = exc.code
    refused = set()
    for frame in parse_frames(eng.data_to_send()):
        if frame.type == 0x3:  # RST_STREAM
            refused.add(frame.stream_id)
    recorder.seen.refused |= refused
    return recorder.seen, b""


def run_h2(chunks: list[bytes]) -> Seen:
    seen = Seen()
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=True
        )
    )
    conn.initiate_connection()
    try:
        for chunk in chunks:
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.RequestReceived):
                    view = request_view(event.headers)
                    seen.requests[event.stream_id] = [view, b"", event.stream_ended is not None]
                elif isinstance(event, h2.events.DataReceived):
                    seen.requests[event.stream_id][1] += event.data
                elif isinstance(event, h2.events.StreamEnded):
                    seen.requests[event.stream_id][2] = True
                elif isinstance(event, h2.events.StreamReset):
                    seen.resets.add(event.stream_id)
    except h2.exceptions.ProtocolError as exc:
        seen.error = int(exc.error_code)
    return seen


def request_view(headers: list[tuple[bytes, bytes]]) -> tuple[Any, ...]:
    """A header list in the engine's shape: method, path, protocol, regular fields
    (``host`` first when only ``:authority`` came)."""
    pseudo = {n: v for n, v in headers if n[:1] == b":"}
    fields = [(n, v) for n, v in headers if n[:1] != b":"]
    if not any(n == b"host" for n, _ in fields):
        fields.insert(0, (b"host", pseudo[b":authority"]))
    return (pseudo[b":method"], pseudo.get(b":path", b""), pseudo.get(b":protocol", b""), fields)


def parse_frames(data: bytes) -> list[Frame]:
    frames = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        frames.append(frame)
        data = data[9 + length :]
    assert not data, "a partial frame in the output"
    return frames


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return [p for p in pieces if p]


# -- client traffic --------------------------------------------------------------------------

NAMES = [b"accept", b"user-agent", b"x-trace", b"content-type", b"cookie", b"accept-language"]
VALUES = [b"*/*", b"text/html", b"a b c", b"1", b"x" * 40, b"session=abc", b"\xc3\xa9t\xc3\xa9"]


@st.composite
def traffic(draw: st.DrawFn) -> bytes:
    """A client's bytes: preface, SETTINGS, then requests with bodies, trailers, resets."""
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    sid = 1
    for _ in range(draw(st.integers(1, 6))):
        method = draw(st.sampled_from([b"GET", b"POST", b"PUT"]))
        path = b"/" + draw(st.sampled_from([b"", b"a", b"b/c?d=1", b"%20x"]))
        headers = [(b":method", method), (b":scheme", b"http"), (b":path", path)]
        headers.append((b":authority", b"example.test"))
        for _ in range(draw(st.integers(0, 4))):
            headers.append((draw(st.sampled_from(NAMES)), draw(st.sampled_from(VALUES))))
        body = draw(st.binary(max_size=3000)) if method != b"GET" else b""
        if body and draw(st.booleans()):
            headers.append((b"content-length", b"%d" % len(body)))
        client.send_headers(sid, headers, end_stream=not body)
        if body:
            pieces = draw(st.integers(1, 3))
            step = max(1, len(body) // pieces)
            chunks = [body[i : i + step] for i in range(0, len(body), step)]
            trailers = draw(st.booleans())
            for i, chunk in enumerate(chunks):
                last = i == len(chunks) - 1
                client.send_data(sid, chunk, end_stream=last and not trailers)
            if trailers:
                client.send_headers(sid, [(b"x-checksum", b"1")], end_stream=True)
        elif draw(st.integers(0, 5)) == 0:
            pass
        if draw(st.integers(0, 6)) == 0:
            client.reset_stream(sid)
        if draw(st.integers(0, 4)) == 0:
            client.ping(b"12345678")
        sid += draw(st.sampled_from([2, 4]))
    return client.data_to_send()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traffic(), st.lists(st.integers(0, 100_000), max_size=12))
def test_same_requests_as_h2(data: bytes, cuts: list[int]) -> None:
    chunks = split(data, cuts)
    ours, _ = run_engine(chunks)
    theirs = run_h2(chunks)
    assert ours.error is None and theirs.error is None
    assert cookie_last(ours.requests) == theirs.requests
    assert ours.resets == theirs.resets
    assert not ours.refused


def cookie_last(requests: dict[int, list[Any]]) -> dict[int, list[Any]]:
    """h2 moves the (joined) cookie field last; the engine keeps its place."""
    moved = {}
    for sid, ((method, path, protocol, fields), body, ended) in requests.items():
        fields = sorted(fields, key=lambda f: f[0] == b"cookie")  # stable: the rest keep order
        moved[sid] = [(method, path, protocol, fields), body, ended]
    return moved


MALFORMED = [
    [(b"X-Upper", b"1")],
    [(b"connection", b"close")],
    [(b"transfer-encoding", b"chunked")],
    [(b"te", b"gzip")],
    [(b"x-bad", b"a\r\nb")],
    [(b"x-nul", b"a\x00b")],
    [(b"x-space", b" lead")],
    [(b":path", b"/again")],
    [(b":status", b"200")],
    [(b"host", b"other.test")],
]


@pytest.mark.parametrize("bad", MALFORMED, ids=[repr(b[0][0]) for b in MALFORMED])
@pytest.mark.parametrize("position", [0, 2])
def test_malformed_requests_are_refused_like_h2(
    bad: list[tuple[bytes, bytes]], position: int
) -> None:
    """h2 ends the connection; the engine resets the stream (RFC 9113 section 8.1.1)
    and serves the requests around it exactly as h2 served those before it."""
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
    )
    client.initiate_connection()
    base = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"a")]
    for i in range(4):
        headers = base + (bad if i == position else [(b"x-n", b"%d" % i)])
        client.send_headers(1 + 2 * i, headers, end_stream=True)
    data = client.data_to_send()
    frames = [data[:24]]  # h2 raises with the events of the whole read: feed frame by frame
    rest = data[24:]
    while rest:
        size = 9 + int.from_bytes(rest[:3], "big")
        frames.append(rest[:size])
        rest = rest[size:]
    ours, _ = run_engine(frames)
    theirs = run_h2(frames)
    bad_sid = 1 + 2 * position
    assert theirs.error is not None
    assert ours.error is None and ours.refused == {bad_sid}
    before = {sid: r for sid, r in ours.requests.items() if sid < bad_sid}
    assert before == theirs.requests
    assert sorted(ours.requests) == [1 + 2 * i for i in range(4) if i != position]


@settings(max_examples=300, deadline=None)
@given(traffic(), st.lists(st.tuples(st.integers(0, 100_000), st.integers(0, 255)), max_size=4))
def test_mutated_input_never_escapes_as_another_exception(
    data: bytes, flips: list[tuple[int, int]]
) -> None:
    """Corrupted bytes end in requests, stream errors or a connection error: nothing else,
    and what the engine writes back is always whole frames."""
    mutated = bytearray(data)
    for offset, value in flips:
        mutated[24 + offset % (len(mutated) - 24)] = value  # the preface stays intact
    recorder = Recorder()
    eng = engine(recorder)
    eng.initiate()
    try:
        eng.receive(bytes(mutated))
    except H2ConnectionError:
        pass
    parse_frames(eng.data_to_send())


# -- what h2 has no say in ---------------------------------------------------------------------

FIELDS = st.tuples(
    st.sampled_from([b":status", b"content-type", b"date", b"server", b"x-custom", b"etag"]),
    st.binary(max_size=200).filter(lambda v: b"\r" not in v and b"\n" not in v),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(FIELDS, max_size=12), min_size=1, max_size=5))
def test_encoder_output_decodes_to_the_same_fields(blocks: list[list[tuple[bytes, bytes]]]) -> None:
    decoder = hpack.Decoder()
    for headers in blocks:
        assert decoder.decode(encode_headers(headers), raw=True) == headers


def client_and_engine(**overrides: Any) -> tuple[h2.connection.H2Connection, H2Engine, Recorder]:
    recorder = Recorder()
    eng = engine(recorder, **overrides)
    eng.initiate()
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    client.receive_data(eng.data_to_send())
    eng.receive(client.data_to_send())
    client.receive_data(eng.data_to_send())
    return client, eng, recorder


def test_responses_reach_an_h2_client_whole() -> None:
    client, eng, _ = client_and_engine()
    client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                            (b":authority", b"a")], end_stream=True)  # fmt: skip
    eng.receive(client.data_to_send())
    big = [(b"x-big", b"v" * 40_000)]  # over one frame: HEADERS + CONTINUATION
    assert eng.send_headers(1, [(b":status", b"200"), *big], False)
    assert eng.send_data(1, b"hello", True)
    events = client.receive_data(eng.data_to_send())
    response = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    assert response.headers == [(b":status", b"200"), *big]
    assert [e.data for e in events if isinstance(e, h2.events.DataReceived)] == [b"hello"]
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    assert 1 not in eng.streams  # both sides ended: closed


def test_table_size_change_is_signalled_before_the_next_block() -> None:
    client, eng, _ = client_and_engine()
    client.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                            (b":authority", b"a")], end_stream=True)  # fmt: skip
    eng.receive(client.data_to_send())
    eng.send_headers(1, [(b":status", b"204")], True)
    frames = parse_frames(eng.data_to_send())
    block = next(f for f in frames if isinstance(f, HeadersFrame)).data
    assert block[:1] == b"\x20"  # dynamic table size update to 0, then the fields
    client.receive_data(b"".join(f.serialize() for f in frames))  # h2 accepts it


def test_repeated_indexed_block_uses_the_cache_until_the_table_changes() -> None:
    client, eng, recorder = client_and_engine()
    request = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/x"),
               (b":authority", b"a"), (b"x-v", b"1")]  # fmt: skip
    for sid in (1, 3, 5):
        client.send_headers(sid, request, end_stream=True)
        eng.receive(client.data_to_send())
    assert len(eng._requests) == 1  # the second and third blocks were all indexed
    # A new value enters the client's dynamic table and shifts every index: the
    # same indexed bytes would now mean other fields, so the cache must go.
    changed = [*request[:4], (b"x-v", b"2")]
    client.send_headers(7, changed, end_stream=True)
    eng.receive(client.data_to_send())
    assert not eng._requests
    client.send_headers(9, request, end_stream=True)
    eng.receive(client.data_to_send())
    assert recorder.seen.requests[9][0] == request_view(request)
    assert recorder.seen.requests[7][0] == request_view(changed)


def test_several_cookie_fields_are_joined_for_the_app() -> None:
    client, eng, recorder = client_and_engine()
    client.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                            (b":authority", b"a"), (b"cookie", b"a=1"), (b"accept", b"*/*"),
                            (b"cookie", b"b=2")], end_stream=True)  # fmt: skip
    eng.receive(client.data_to_send())
    fields = recorder.seen.requests[1][0][3]
    assert fields == [(b"host", b"a"), (b"cookie", b"a=1; b=2"), (b"accept", b"*/*")]


def test_local_window_applies_once_acknowledged() -> None:
    """Section 6.5.3: until the client ACKs our SETTINGS it may use the default window."""
    recorder = Recorder()
    eng = engine(recorder, initial_window_size=1000)
    eng.initiate()
    eng.receive(h2engine.PREFACE + SettingsFrame(0).serialize())
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    client.data_to_send()  # the engine had a preface and SETTINGS already
    client.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/"),
                            (b":authority", b"a")])  # fmt: skip
    client.send_data(1, b"x" * 5000)
    eng.receive(client.data_to_send())  # its preface went out above, unread
    assert recorder.seen.requests[1][1] == b"x" * 5000 and not recorder.seen.refused
    eng.receive(SettingsFrame(0, flags=["ACK"]).serialize())
    assert eng.streams[1].in_window == 1000 - 5000  # the delta applies to open streams
    eng.receive(h2engine._frame(h2engine.DATA, 0, 1, b"y"))
    assert recorder.seen.refused == {1}  # beyond the window now: FLOW_CONTROL_ERROR


def test_preface_must_be_followed_by_settings() -> None:
    recorder = Recorder()
    eng = engine(recorder)
    with pytest.raises(H2ConnectionError) as caught:
        eng.receive(h2engine.PREFACE + h2engine._frame(h2engine.PING, 0, 0, b"12345678"))
    assert caught.value.code == h2engine.PROTOCOL_ERROR
    goaway = parse_frames(eng.data_to_send())[-1]
    assert goaway.type == 0x7 and goaway.error_code == h2engine.PROTOCOL_ERROR


@pytest.mark.parametrize("size", [1, 9, 23, 24, 25, 40])
def test_bytes_arrive_in_any_pieces(size: int) -> None:
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    for sid in (1, 3):
        client.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"),
                                  (b":path", b"/"), (b":authority", b"a")])  # fmt: skip
        client.send_data(sid, b"body%d" % sid, end_stream=True)
    data = client.data_to_send()
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    ours, _ = run_engine(pieces)
    assert {sid: r[1:] for sid, r in ours.requests.items()} == {
        1: [b"body1", True],
        3: [b"body3", True],
    }


def test_continuation_split_header_block_is_one_request() -> None:
    encoder = hpack.Encoder()
    block = encoder.encode([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                            (b":authority", b"a"), (b"x-long", b"z" * 500)])  # fmt: skip
    frames = [
        HeadersFrame(1, data=block[:7], flags=["END_STREAM"]),
        ContinuationFrame(1, data=block[7:300]),
        ContinuationFrame(1, data=block[300:], flags=["END_HEADERS"]),
    ]
    data = h2engine.PREFACE + SettingsFrame(0).serialize()
    data += b"".join(f.serialize() for f in frames)
    ours, _ = run_engine([data])
    assert ours.requests[1][0][3][-1] == (b"x-long", b"z" * 500)


def test_random_splits_of_a_long_conversation() -> None:
    """Many requests and bodies fed in random pieces (fixed seed): the same as h2."""
    rng = random.Random(20261125)
    client = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    client.initiate_connection()
    for n in range(40):
        sid = 1 + 2 * n
        client.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"https"),
                                  (b":path", b"/%d" % n), (b":authority", b"a"),
                                  (b"x-n", b"%d" % rng.randrange(10))])  # fmt: skip
        client.send_data(sid, bytes(rng.randrange(256) for _ in range(300)), end_stream=True)
    data = client.data_to_send()
    cuts = [rng.randrange(len(data)) for _ in range(200)]
    chunks = split(data, cuts)
    ours, _ = run_engine(chunks)
    assert cookie_last(ours.requests) == run_h2(chunks).requests
    assert len(ours.requests) == 40
