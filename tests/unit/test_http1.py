"""Http1Connection fed bytes through an in-memory transport (sans-I/O, habit 1 and 13).

The transport below stands in for the socket: it records what the protocol writes
and how it pauses, resumes and closes, and it honours pause_reading() the way a real
transport does (bytes wait in the "kernel" until reading resumes). The app side is a
real asyncio loop running small ASGI apps through AsgiHandler, or a handler that
only records streams.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from threshold.config import Config
from threshold.context import ServerContext
from threshold.interfaces.asgi import AsgiHandler
from threshold.protocols.http1 import BODY_HIGH_WATER, Http1Connection, Http1Stream
from threshold.stream import ClientDisconnected, Stream

CORPUS = Path(__file__).parent.parent / "corpus" / "http1"
SECOND = b"GET /second HTTP/1.1\r\nHost: second.example\r\n\r\n"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


# -- the in-memory transport ------------------------------------------------------


class MemoryTransport:
    """What Http1Connection needs of an asyncio transport, recorded."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.conn: Http1Connection | None = None
        self.writes: list[bytes] = []
        self.writes_after_close = 0
        self.inbox: deque[bytes] = deque()  # sent by the client, not yet read
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.closed = False
        self.aborted = False
        self.lost = False
        self.limits: tuple[int, int] | None = None
        self.extra: dict[str, Any] = {
            "peername": ("10.0.0.2", 50000),
            "sockname": ("10.0.0.1", 8000),
        }

    @property
    def output(self) -> bytes:
        return b"".join(self.writes)

    # asyncio.Transport surface
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.limits = (high, low)

    def write(self, data: bytes) -> None:
        if self.closed:
            self.writes_after_close += 1
            return
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
        assert not self.paused, "pause_reading() twice"
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        assert self.paused, "resume_reading() while not paused"
        self.paused = False
        self.resumes += 1
        self.loop.call_soon(self._deliver)

    # the client side
    def connect(self, conn: Http1Connection) -> None:
        self.conn = conn
        conn.connection_made(self)  # type: ignore[arg-type]

    def feed(self, data: bytes) -> None:
        if self.closed:
            return
        self.inbox.append(data)
        self._deliver()

    def client_close(self) -> None:
        """The client goes away (RST/EOF): the protocol sees connection_lost."""
        if not self.closed:
            self.closed = True
            self._lose()

    def _deliver(self) -> None:
        assert self.conn is not None
        while self.inbox and not self.paused and not self.closed:
            self.conn.data_received(self.inbox.popleft())

    def _lose(self) -> None:
        if not self.lost:
            self.lost = True
            assert self.conn is not None
            self.conn.connection_lost(None)


# -- parsing what the server wrote --------------------------------------------------


@dataclass
class Response:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    chunked: bool = False
    chunk_sizes: list[int] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        assert len(values) <= 1, f"{name!r} sent {len(values)} times"
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def parse_responses(data: bytes, head: Iterable[bool] = ()) -> tuple[list[Response], bytes]:
    """Split server output into responses (strictly: CRLF everywhere); return the rest.

    ``head`` says, per response, whether it answers a HEAD request (no body).
    """
    heads = list(head)
    responses: list[Response] = []
    while data:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            break
        lines = data[:end].split(b"\r\n")
        match = re.fullmatch(rb"HTTP/1\.1 (\d{3}) ?(.*)", lines[0])
        assert match, f"bad status line {lines[0]!r}"
        status = int(match.group(1))
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b": ")
            assert sep and name and b" " not in name, f"bad header line {line!r}"
            headers.append((name, value))
        rest = data[end + 4 :]
        response = Response(status, match.group(2), headers, b"")
        is_head = heads[len(responses)] if len(responses) < len(heads) else False
        length = response.header(b"content-length")
        te = response.header(b"transfer-encoding")
        if status < 200 or status in (204, 304) or is_head:
            pass
        elif te is not None:
            assert te == b"chunked" and length is None
            response.chunked = True
            body = bytearray()
            while True:
                line_end = rest.find(b"\r\n")
                assert line_end > 0, "truncated chunk size"
                size = int(rest[:line_end], 16)
                response.chunk_sizes.append(size)
                chunk = rest[line_end + 2 : line_end + 2 + size]
                assert len(chunk) == size, "truncated chunk"
                assert rest[line_end + 2 + size : line_end + 4 + size] == b"\r\n"
                rest = rest[line_end + 4 + size :]
                body += chunk
                if size == 0:
                    break
            response.body = bytes(body)
        elif length is not None:
            size = int(length)
            assert len(rest) >= size, "truncated body"
            response.body, rest = rest[:size], rest[size:]
        else:
            response.body, rest = rest, b""  # delimited by close
        responses.append(response)
        data = rest
    return responses, data


# -- the harness -----------------------------------------------------------------


async def settle(rounds: int = 30) -> None:
    """Let every ready callback and task run (the harness has no real I/O waits)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    ctx: ServerContext
    conn: Http1Connection
    transport: MemoryTransport

    async def send(self, *pieces: bytes, rounds: int = 3) -> None:
        for piece in pieces:
            self.transport.feed(piece)
            await settle(rounds)
        await settle()

    def responses(self, head: Iterable[bool] = ()) -> list[Response]:
        responses, rest = parse_responses(self.transport.output, head)
        assert rest == b"", f"unparsed output {rest[:200]!r}"
        return responses


def make(
    loop: asyncio.AbstractEventLoop,
    app: App | None = None,
    handler: Callable[[Stream], None] | None = None,
    state: dict[str, Any] | None = None,
    **options: Any,
) -> Harness:
    config = Config(**options)
    if handler is None:
        assert app is not None
        handler = AsgiHandler(app, loop, config.root_path, state)  # type: ignore[arg-type]
    ctx = ServerContext(config, handler, None)
    conn = Http1Connection(ctx, loop)
    transport = MemoryTransport(loop)
    transport.connect(conn)
    return Harness(loop, ctx, conn, transport)


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def record_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the whole body; answer with what the app saw, as JSON."""
    body = b""
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        body += message["body"]
        if not message["more_body"]:
            break
    summary = {
        "method": scope["method"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "http_version": scope["http_version"],
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
        "body": body.decode("latin-1"),
    }
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps(summary).encode()})


# -- the corpus (habit 13) ------------------------------------------------------------

_ESCAPE = re.compile(rb"\\(r|n|t|0|\\|x[0-9a-fA-F]{2})")


def load_http(path: Path) -> bytes:
    r"""A .http file: real line breaks are layout only; \r \n \t \0 \xHH \\ are bytes."""
    text = path.read_bytes().replace(b"\r", b"").replace(b"\n", b"")

    def unescape(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code[:1] == b"x":
            return bytes([int(code[1:], 16)])
        return {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"0": b"\0", b"\\": b"\\"}[code]

    return _ESCAPE.sub(unescape, text)


def corpus() -> list[str]:
    """Case ids, "valid/NAME" and "invalid/NAME", from tests/corpus/http1/."""
    ids = sorted(
        f"{kind}/{path.stem}"
        for kind in ("valid", "invalid")
        for path in (CORPUS / kind).glob("*.http")
    )
    assert ids, "empty request corpus"
    return ids


@dataclass(frozen=True)
class Case:
    """A corpus case: NAME.http (the bytes) and NAME.expect (JSON, see the README there)."""

    id: str
    data: bytes
    status: int
    request: dict[str, Any]  # for a valid case: what the app must see (keys compared)
    keep_alive: bool
    before: int  # requests in the bytes answered 200 before the rejected one
    config: dict[str, Any]  # Config options the case needs (limits)

    @property
    def valid(self) -> bool:
        return self.status < 300


def load_case(case_id: str) -> Case:
    data = load_http(CORPUS / f"{case_id}.http")
    expect = json.loads((CORPUS / f"{case_id}.expect").read_text())
    return Case(
        case_id,
        data,
        expect["status"],
        expect.get("request", {}),
        expect.get("keep_alive", True),
        expect.get("before", 0),
        expect.get("config", {}),
    )


async def corpus_app(scope: Scope, receive: Receive, send: Send) -> None:
    """record_app, except that a body cut off by the server (413, 400) ends it quietly."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message["body"]
        if not message["more_body"]:
            break
    summary = {
        "method": scope["method"],
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "http_version": scope["http_version"],
        "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]],
        "body": body.decode("latin-1"),
    }
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps(summary).encode()})


# One response as the client saw it: status, its Connection header, its body.
Answer = tuple[int, "bytes | None", bytes]


def verify(case: Case, answers: list[Answer], closed: bool, pipelined: bool) -> None:
    """The corpus oracle, shared with tests/e2e/test_corpus_socket.py and the properties.

    A rejected request gets one error response with ``connection: close`` and the
    connection closes: whatever follows it (a pipelined request) is never answered.
    A valid one is seen by the app as the case says; with SECOND appended, both are
    answered in order on one connection (unless the case itself closes it).
    """
    name = case.id
    assert len(answers) > case.before, f"{name}: {len(answers)} responses"
    for status, _, body in answers[: case.before]:
        assert status == 200, f"{name}: {status} {body[:200]!r}"
    status, connection, body = answers[case.before]
    assert status == case.status, f"{name}: {status} {body[:200]!r}"
    if not case.valid:
        assert len(answers) == case.before + 1, f"{name}: served after an error"
        assert connection == b"close", name
        assert closed, f"{name}: left open after an error"
        return
    seen = json.loads(body)
    for key, value in case.request.items():
        assert seen[key] == value, f"{name}: {key} is {seen[key]!r}, expected {value!r}"
    if not case.keep_alive:
        assert connection == b"close", name
        assert closed, name
        assert len(answers) == 1, name
        return
    assert connection != b"close", name
    if pipelined:
        assert len(answers) == 2, f"{name}: the pipelined request was not answered"
        second_status, _, second_body = answers[1]
        assert second_status == 200, name
        second = json.loads(second_body)
        assert (second["path"], second["body"]) == ("/second", ""), name
        assert second["headers"] == [["host", "second.example"]], name
    else:
        assert len(answers) == 1, name
    assert not closed, name


def splits(data: bytes, mode: str) -> list[list[bytes]]:
    if mode == "whole":
        return [[data]]
    if mode == "bytes":
        return [[data[i : i + 1] for i in range(len(data))]]
    assert mode == "every-offset"
    return [[data[:i], data[i:]] for i in range(1, len(data))]


async def check_case(case: Case, pieces: list[bytes], pipelined: bool) -> None:
    h = make(asyncio.get_running_loop(), corpus_app, **case.config)
    await h.send(*pieces)
    answers = [(r.status, r.header(b"connection"), r.body) for r in h.responses()]
    verify(case, answers, h.transport.closed, pipelined)
    assert h.transport.writes_after_close == 0, f"{case.id}: written after close"


@pytest.mark.parametrize("mode", ["whole", "bytes"])
@pytest.mark.parametrize("case_id", corpus())
def test_corpus(case_id: str, mode: str) -> None:
    case = load_case(case_id)

    async def main() -> None:
        for pieces in splits(case.data, mode):
            await check_case(case, pieces, pipelined=False)

    run(main())


@pytest.mark.parametrize("mode", ["whole", "bytes"])
@pytest.mark.parametrize("case_id", corpus())
def test_corpus_pipelined(case_id: str, mode: str) -> None:
    """The same request with a second one appended in the same bytes."""
    case = load_case(case_id)

    async def main() -> None:
        for pieces in splits(case.data + SECOND, mode):
            await check_case(case, pieces, pipelined=True)

    run(main())


SPLIT_CASES = [
    "valid/get_query",
    "valid/chunked_extensions",
    "valid/chunked_data_contains_crlfcrlf",
    "valid/post_content_length",
    "valid/http10_keep_alive",
    "invalid/bad_chunk_size",
    "invalid/nul_in_header_value",
    "invalid/te_unknown_then_chunked",
    "invalid/chunk_extension_too_long",
    "invalid/pipelined_double_space_after_get",
    "invalid/pipelined_bad_line_after_content_length_body",
    "invalid/pipelined_bad_line_after_chunked_body",
]


@pytest.mark.parametrize("case_id", SPLIT_CASES)
def test_corpus_split_at_every_offset(case_id: str) -> None:
    case = load_case(case_id)

    async def main() -> None:
        for pieces in splits(case.data + SECOND, "every-offset"):
            await check_case(case, pieces, pipelined=True)

    run(main())


EXPECT_KEYS = {"status", "request", "keep_alive", "before", "config", "why", "cve"}
REJECT_STATUSES = {400, 413, 414, 431, 501, 505}


def test_corpus_files_come_in_pairs() -> None:
    assert {p.name for p in CORPUS.iterdir()} == {"README.md", "valid", "invalid"}
    readme = (CORPUS / "README.md").read_text()
    for kind in ("valid", "invalid"):
        folder = CORPUS / kind
        https = {p.stem for p in folder.glob("*.http")}
        expects = {p.stem for p in folder.glob("*.expect")}
        assert https == expects, kind
        assert {p.name for p in folder.iterdir()} == {
            f"{n}{s}" for n in https for s in (".http", ".expect")
        }
        for name in https:
            expect = json.loads((folder / f"{name}.expect").read_text())
            assert set(expect) <= EXPECT_KEYS, name
            assert expect["why"], name
            Config(**expect.get("config", {}))  # names real options
            for cve in expect.get("cve", []):
                assert re.fullmatch(r"CVE-\d{4}-\d{4,}", cve), name
                assert cve in readme, f"{cve} ({name}) missing from the README table"
            if kind == "valid":
                assert expect["status"] == 200, name
                assert set(expect["request"]) >= {"method", "path", "headers", "body"}, name
                assert "before" not in expect, name
            else:
                assert expect["status"] in REJECT_STATUSES, name
                assert "request" not in expect and "keep_alive" not in expect, name
            assert f"`{name}`" in readme, f"{kind}/{name} missing from the README table"


# -- connection behaviour, fed bytes -------------------------------------------------


def request(path: str = "/", headers: str = "", body: bytes = b"", method: str = "GET") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: unit.test\r\n{headers}"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def start(
    send: Send, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or []})


async def body(send: Send, data: bytes = b"", more: bool = False) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def path_app(scope: Scope, receive: Receive, send: Send) -> None:
    await start(send)
    await body(send, scope["path"].encode())


def test_transport_setup_and_scope_addresses() -> None:
    async def main() -> None:
        scopes: list[Scope] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            scopes.append(scope)
            await path_app(scope, receive, send)

        h = make(asyncio.get_running_loop(), app, state={"db": "x"})
        assert h.transport.limits is not None
        assert h.conn in h.ctx.connections
        await h.send(request("/a"))
        (scope,) = scopes
        assert scope["client"] == ("10.0.0.2", 50000)
        assert scope["server"] == ("10.0.0.1", 8000)
        assert scope["scheme"] == "http"
        assert scope["state"] == {"db": "x"}
        h.transport.client_close()
        assert h.conn not in h.ctx.connections

        h = make(asyncio.get_running_loop(), app)
        await h.send(request("/no-state"))
        assert "state" not in scopes[-1]

    run(main())


def test_keep_alive_serves_requests_in_turn() -> None:
    async def main() -> None:
        h = make(asyncio.get_running_loop(), path_app)
        for i in range(3):
            await h.send(request(f"/r{i}"))
        responses = h.responses()
        assert [r.body for r in responses] == [b"/r0", b"/r1", b"/r2"]
        assert all(r.header(b"content-length") is not None for r in responses)
        assert not h.transport.closed
        assert h.conn._active is None

    run(main())


def test_pipelined_requests_wait_in_order_with_reading_paused() -> None:
    async def main() -> None:
        gates = {p: asyncio.Event() for p in ("/1", "/2", "/3")}
        started: list[str] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            started.append(scope["path"])
            await gates[scope["path"]].wait()
            await path_app(scope, receive, send)

        h = make(asyncio.get_running_loop(), app)
        await h.send(request("/1") + request("/2") + request("/3"))
        assert started == ["/1"]
        assert h.transport.paused
        gates["/3"].set()
        gates["/2"].set()
        await settle()
        assert started == ["/1"], "a pipelined request started before the one ahead of it ended"
        assert h.transport.output == b""
        gates["/1"].set()
        await settle()
        assert started == ["/1", "/2", "/3"]
        assert [r.body for r in h.responses()] == [b"/1", b"/2", b"/3"]
        assert not h.transport.paused
        assert not h.transport.closed

    run(main())


def test_request_body_backpressure_pauses_reading() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        total = 4 * BODY_HIGH_WATER
        piece = 16 * 1024

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await gate.wait()
            got = b""
            while True:
                message = await receive()
                got += message["body"]
                if not message["more_body"]:
                    break
            await start(send)
            await body(send, b"%d %d" % (len(got), got.count(b"x")))

        h = make(asyncio.get_running_loop(), app)
        payload = b"x" * total
        await h.send(
            request("/up", f"Content-Length: {total}\r\n"),
            *[payload[i : i + piece] for i in range(0, total, piece)],
            rounds=1,
        )
        assert h.transport.paused, "reading never paused while the app did not read"
        waiting = sum(len(b) for b in h.transport.inbox)
        buffered = total - waiting
        assert buffered <= BODY_HIGH_WATER + piece
        gate.set()
        await settle(100)
        assert not h.transport.paused
        assert not h.transport.inbox
        (response,) = h.responses()
        assert response.body == b"%d %d" % (total, total)
        assert h.transport.resumes >= 1

    run(main())


def test_unread_body_is_discarded_and_the_next_request_served() -> None:
    async def main() -> None:
        h = make(asyncio.get_running_loop(), path_app)
        big = b"GET / HTTP/1.1\r\n" * 1000  # looks like requests; must be read as body
        await h.send(request("/first", body=big[:-1] + b"!") + request("/second"))
        assert [r.body for r in h.responses()] == [b"/first", b"/second"]
        assert not h.transport.closed

    run(main())


def test_expect_100_continue_sent_when_the_app_reads() -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await gate.wait()
            message = await receive()
            await start(send)
            await body(send, message["body"])

        h = make(asyncio.get_running_loop(), app)
        await h.send(request("/e", "Expect: 100-continue\r\nContent-Length: 5\r\n"))
        assert h.transport.output == b"", "100 Continue sent before the app read the body"
        gate.set()
        await settle()
        assert h.transport.output == b"HTTP/1.1 100 Continue\r\n\r\n"
        await h.send(b"hello")
        interim, final = h.responses()
        assert interim.status == 100
        assert (final.status, final.body) == (200, b"hello")
        assert not h.transport.closed

    run(main())


def test_expect_100_not_sent_when_the_body_is_already_there() -> None:
    async def main() -> None:
        h = make(asyncio.get_running_loop(), record_app)
        await h.send(request("/e", "Expect: 100-continue\r\n", body=b"hello"))
        (response,) = h.responses()
        assert response.json()["body"] == "hello"

    run(main())


def test_expect_100_app_that_never_reads_closes_after_the_response() -> None:
    async def main() -> None:
        h = make(asyncio.get_running_loop(), path_app)
        await h.send(request("/no", "Expect: 100-continue\r\nContent-Length: 5\r\n"))
        (response,) = h.responses()
        assert (response.status, response.body) == (200, b"/no")
        assert b"100 Continue" not in h.transport.output
        assert h.transport.closed

    run(main())


def test_slow_client_pauses_the_app() -> None:
    async def main() -> None:
        sent: list[int] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await start(send)
            for i in range(10):
                await body(send, b"x" * 10, more=True)
                sent.append(i)
            await body(send)

        h = make(asyncio.get_running_loop(), app)
        h.conn.pause_writing()  # the transport's buffer is over its high-water mark
        await h.send(request("/slow"))
        assert sent == [], "send() returned while the client was not reading"
        h.conn.resume_writing()
        await settle()
        assert sent == list(range(10))
        (response,) = h.responses()
        assert response.chunked and response.body == b"x" * 100

    run(main())


def test_client_gone_while_the_app_waits_for_the_body() -> None:
    async def main() -> None:
        messages: list[dict[str, Any]] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] == "http.disconnect":
                    return

        h = make(asyncio.get_running_loop(), app)
        await h.send(request("/d", "Content-Length: 100\r\n") + b"partial")
        h.transport.client_close()
        await settle()
        assert [m["type"] for m in messages] == ["http.request", "http.disconnect"]
        assert messages[0]["body"] == b"partial" and messages[0]["more_body"]

    run(main())


def test_client_gone_after_the_body_is_read() -> None:
    async def main() -> None:
        messages: list[dict[str, Any]] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            messages.append(await receive())
            messages.append(await receive())  # long poll: waits for the client to go

        h = make(asyncio.get_running_loop(), app)
        await h.send(request("/poll", body=b"abc"))
        assert len(messages) == 1
        h.transport.client_close()
        await settle()
        assert messages == [
            {"type": "http.request", "body": b"abc", "more_body": False},
            {"type": "http.disconnect"},
        ]

    run(main())


def test_stream_receive_body_raises_client_disconnected() -> None:
    async def main() -> None:
        streams: list[Stream] = []
        h = make(asyncio.get_running_loop(), handler=streams.append)
        await h.send(request("/s", "Content-Length: 10\r\n") + b"12345")
        (stream,) = streams
        assert await stream.receive_body() == (b"12345", True)
        h.transport.client_close()
        assert stream.disconnected
        with pytest.raises(ClientDisconnected):
            await stream.receive_body()
        await asyncio.wait_for(stream.wait_disconnect(), 1.0)
        with pytest.raises(ClientDisconnected):
            stream.send_body(b"x", False)

    run(main())


@pytest.mark.parametrize(
    ("version", "chunks", "framing"),
    [
        ("1.1", [b"one"], "length"),
        ("1.1", [b"one", b"two", b""], "chunked"),
        ("1.1", [b"", b"one", b"", b"two"], "chunked"),
        ("1.0", [b"one"], "length"),
        ("1.0", [b"one", b"two"], "close"),
    ],
)
def test_response_framing(version: str, chunks: list[bytes], framing: str) -> None:
    async def main() -> None:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await start(send)
            for i, chunk in enumerate(chunks):
                await body(send, chunk, more=i < len(chunks) - 1)

        h = make(asyncio.get_running_loop(), app)
        keep = "Connection: keep-alive\r\n" if version == "1.0" else ""
        await h.send(f"GET / HTTP/{version}\r\nHost: x\r\n{keep}\r\n".encode())
        (response,) = h.responses()
        assert response.body == b"".join(chunks)
        if framing == "length":
            assert response.header(b"content-length") == b"%d" % len(response.body)
            assert not response.chunked
        elif framing == "chunked":
            assert response.header(b"content-length") is None
            assert response.chunked
            # Empty app chunks must not end the chunked body early.
            assert response.chunk_sizes == [len(c) for c in chunks if c] + [0]
        else:
            assert response.header(b"content-length") is None
            assert response.header(b"transfer-encoding") is None
            assert response.header(b"connection") == b"close"
        assert h.transport.closed == (framing == "close")
        if version == "1.0" and framing != "close":
            assert response.header(b"connection") == b"keep-alive"

    run(main())


def test_app_content_length_is_kept_and_a_short_body_closes() -> None:
    async def main() -> None:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await start(send, headers=[(b"Content-Length", scope["path"][1:].encode())])
            await body(send, b"abc", more=True)
            await body(send, b"de")

        h = make(asyncio.get_running_loop(), app)
        await h.send(request("/5"))
        (response,) = h.responses()
        assert (response.header(b"Content-Length"), response.body) == (b"5", b"abcde")
        assert not h.transport.closed
        await h.send(request("/9"))  # the app sends less than it announced
        assert h.transport.closed

    run(main())


@pytest.mark.parametrize("status", [204, 304, 101 + 99])
def test_head_and_bodiless_statuses_send_no_body(status: int) -> None:
    async def main() -> None:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await start(send, status=status)
            await body(send, b"hello", more=True)
            await body(send, b" world")

        h = make(asyncio.get_running_loop(), app)
        method = "HEAD" if status == 200 else "GET"
        await h.send(request("/", method=method) + request("/"))
        first, second = h.responses(head=[method == "HEAD", False])
        assert first.status == status
        assert first.header(b"transfer-encoding") is None
        assert first.body == b""
        assert second.body == b"hello world" or status != 200
        assert not h.transport.closed

    run(main())


def test_head_has_the_content_length_of_get() -> None:
    async def main() -> None:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await start(send)
            await body(send, b"0123456789")

        h = make(asyncio.get_running_loop(), app)
        await h.send(request("/", method="HEAD") + request("/", method="GET"))
        head, get = h.responses(head=[True, False])
        assert head.header(b"content-length") == get.header(b"content-length") == b"10"
        assert head.body == b"" and get.body == b"0123456789"

    run(main())


def test_app_connection_close_header_closes() -> None:
    async def main() -> None:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await start(send, headers=[(b"connection", b"close"), (b"x-a", b"1")])
            await body(send, b"bye")

        h = make(asyncio.get_running_loop(), app)
        await h.send(request("/") + SECOND)
        (response,) = h.responses()
        assert response.header(b"connection") == b"close"
        assert response.header(b"x-a") == b"1"
        assert h.transport.closed

    run(main())


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-bad", b"a\r\nset-cookie: injected")],
        [(b"x-bad\r\nx-injected", b"1")],
        [(b"x-bad", b"a\nb")],
        [(b"transfer-encoding", b"gzip")],
    ],
)
def test_invalid_response_headers_give_500(headers: list[tuple[bytes, bytes]]) -> None:
    async def main() -> None:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await start(send, headers=headers)
            await body(send, b"never")

        h = make(asyncio.get_running_loop(), app)
        await h.send(request("/"))
        (response,) = h.responses()
        assert response.status == 500
        assert b"injected" not in h.transport.output and b"never" not in h.transport.output
        assert h.transport.closed

    run(main())


LIMITS = {"limit_request_line": 64, "limit_request_field_size": 64, "limit_request_fields": 5}


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /" + b"a" * 64 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 60 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Many: a\r\n" * 5 + b"\r\n", 431),
    ],
)
def test_request_head_limits(data: bytes, status: int) -> None:
    async def main() -> None:
        for pieces in ([data], [data[i : i + 7] for i in range(0, len(data), 7)]):
            h = make(asyncio.get_running_loop(), path_app, **LIMITS)
            await h.send(*pieces, rounds=1)
            (response,) = h.responses()
            assert response.status == status
            assert response.header(b"connection") == b"close"
            assert h.transport.closed

    run(main())


def test_request_head_at_the_limits_is_served() -> None:
    async def main() -> None:
        h = make(asyncio.get_running_loop(), path_app, **LIMITS)
        await h.send(
            b"GET /"
            + b"a" * 63
            + b" HTTP/1.1\r\nHost: x\r\nX-Big: "
            + b"b" * 59
            + b"\r\n"
            + b"X-Many: a\r\n" * 3
            + b"\r\n"
        )
        (response,) = h.responses()
        assert (response.status, response.body) == (200, b"/" + b"a" * 63)

    run(main())


def test_error_after_a_good_pipelined_request_waits_for_its_response() -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await gate.wait()
            await path_app(scope, receive, send)

        h = make(asyncio.get_running_loop(), app)
        await h.send(request("/good") + b"GARBAGE\r\n\r\n")
        assert h.transport.output == b""
        gate.set()
        await settle()
        good, bad = h.responses()
        assert (good.status, good.body) == (200, b"/good")
        assert bad.status == 400
        assert h.transport.closed

    run(main())


def test_bad_chunk_in_a_pipelined_body_is_never_served() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        paths: list[str] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            paths.append(scope["path"])
            await gate.wait()
            await record_app(scope, receive, send)

        h = make(asyncio.get_running_loop(), app)
        bad = (
            request("/bad", "Transfer-Encoding: chunked\r\n", method="POST") + b"3\r\nabc\r\nzz\r\n"
        )
        await h.send(request("/good") + bad)
        gate.set()
        await settle()
        good, error = h.responses()
        assert good.json()["path"] == "/good"
        assert error.status == 400
        assert paths == ["/good"]
        assert h.transport.closed

    run(main())


def test_bad_chunk_after_the_response_started_closes() -> None:
    async def main() -> None:
        messages: list[dict[str, Any]] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await start(send)
            await body(send, b"streaming", more=True)
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] == "http.disconnect":
                    return

        h = make(asyncio.get_running_loop(), app)
        await h.send(
            request("/", "Transfer-Encoding: chunked\r\n", method="POST") + b"3\r\nabc\r\n"
        )
        await h.send(b"zz\r\n")
        assert [m["type"] for m in messages] == ["http.request", "http.disconnect"]
        assert h.transport.closed
        assert b"400" not in h.transport.output

    run(main())


def test_unserved_upgrade_is_answered_as_http_then_closed() -> None:
    async def main() -> None:
        h = make(asyncio.get_running_loop(), path_app)
        await h.send(
            request("/h2c", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n")
            + b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"
        )
        (response,) = h.responses()
        assert (response.status, response.body) == (200, b"/h2c")
        assert response.header(b"connection") == b"close"
        assert h.transport.closed

    run(main())


def test_keep_alive_timeout_closes_only_idle_connections() -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["path"] == "/wait":
                await gate.wait()
            await path_app(scope, receive, send)

        h = make(asyncio.get_running_loop(), app, keep_alive_timeout=2.0)
        now = h.ctx.now
        h.conn.on_tick(now + 1.0)
        assert not h.transport.closed
        await h.send(request("/wait"))
        h.conn.on_tick(now + 100.0)  # busy: the app is still answering
        assert not h.transport.closed
        gate.set()
        await settle()
        await h.send(b"GET /partial HTTP/1.1\r\nHost: x\r\n")  # a head still arriving
        h.conn.on_tick(now + 5.0)  # past keep_alive_timeout, within header_timeout
        assert not h.transport.closed
        await h.send(b"\r\n")
        assert len(h.responses()) == 2
        h.conn.on_tick(now + 1.0)
        assert not h.transport.closed
        h.conn.on_tick(now + 100.0)
        assert h.transport.closed

    run(main())


@pytest.mark.parametrize("with_request", [False, True])
def test_keep_alive_timeout_never_fires_early(with_request: bool) -> None:
    """The clock (ctx.now) moves once a tick, so the idle stamp can be up to a tick older
    than the moment the connection went idle: the close must allow for that tick."""

    async def main() -> None:
        h = make(asyncio.get_running_loop(), path_app, keep_alive_timeout=1.0)
        stamp = h.ctx.now  # as of the last tick; real time may be just before the next
        if with_request:
            await h.send(request("/"))
            assert len(h.responses()) == 1
        h.conn.on_tick(stamp + 1.01)  # the next tick: idle for maybe 10 ms only
        assert not h.transport.closed
        h.conn.on_tick(stamp + 2.02)  # the tick after: idle for more than 1 s for sure
        assert h.transport.closed

    run(main())


def test_shutdown_closes_idle_now_and_busy_after_the_response() -> None:
    async def main() -> None:
        h = make(asyncio.get_running_loop(), path_app)
        h.conn.shutdown()
        assert h.transport.closed

        gate = asyncio.Event()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await gate.wait()
            await path_app(scope, receive, send)

        h = make(asyncio.get_running_loop(), app)
        await h.send(request("/busy"))
        h.conn.shutdown()
        assert not h.transport.closed
        gate.set()
        await settle()
        (response,) = h.responses()
        assert response.header(b"connection") == b"close"
        assert h.transport.closed

    run(main())


def test_abort_closes_now() -> None:
    async def main() -> None:
        h = make(asyncio.get_running_loop(), handler=lambda stream: None)
        await h.send(request("/"))
        h.conn.abort()
        assert h.transport.aborted

    run(main())


def test_default_headers_follow_the_config() -> None:
    async def main() -> None:
        h = make(asyncio.get_running_loop(), path_app)
        await h.send(request("/") + b"BAD\r\n\r\n")
        for response in h.responses():
            assert response.header(b"server") == b"threshold"
            assert response.header(b"date") is not None
        h = make(asyncio.get_running_loop(), path_app, server_header=False, date_header=False)
        await h.send(request("/") + b"BAD\r\n\r\n")
        for response in h.responses():
            assert response.header(b"server") is None
            assert response.header(b"date") is None

    run(main())


def test_app_errors_become_500_or_close() -> None:
    async def main() -> None:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["path"] == "/before":
                raise ValueError("boom")
            await start(send)
            await body(send, b"partial", more=True)
            raise ValueError("boom")

        h = make(asyncio.get_running_loop(), app)
        await h.send(request("/before"))
        (response,) = h.responses()
        assert response.status == 500
        assert response.header(b"connection") == b"close"
        assert h.transport.closed

        h = make(asyncio.get_running_loop(), app)
        await h.send(request("/after"))
        assert h.transport.closed
        with pytest.raises(AssertionError, match="truncated"):
            h.responses()

    run(main())


def test_stream_and_handler_types() -> None:
    async def main() -> None:
        streams: list[Stream] = []
        h = make(asyncio.get_running_loop(), handler=streams.append)
        await h.send(request("/x?y=1", body=b"b"))
        (stream,) = streams
        assert isinstance(stream, Http1Stream)
        head = stream.head
        assert (head.method, head.raw_path, head.query_string) == ("GET", b"/x", b"y=1")
        assert head.http_version == "1.1"
        assert head.headers == [(b"host", b"unit.test"), (b"content-length", b"1")]
        assert stream.loop is h.loop

    run(main())
