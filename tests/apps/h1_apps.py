"""ASGI apps for the HTTP/1.1 end-to-end tests (tests/e2e/test_http1.py).

``routes`` answers by path; the classes keep per-test state that the test thread
reads (counters) or drives (gates), since the server runs them on its own loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Any
Send = Any

CHUNK = 64 * 1024


def pattern(index: int, size: int = CHUNK) -> bytes:
    """Block ``index`` of a test payload: distinct per block so reordering shows."""
    return bytes([index % 251]) * size


async def start(
    send: Send, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or []})


async def body(send: Send, data: bytes = b"", more: bool = False) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client went away")
        parts.append(message["body"])
        if not message.get("more_body", False):
            return b"".join(parts)


class Gate:
    """Lets a test thread hold an app at a point and release it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    async def wait(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self.entered.set()
        await self._event.wait()

    def open(self, timeout: float = 5.0) -> None:
        assert self.entered.wait(timeout), "the app never reached the gate"
        assert self._loop is not None and self._event is not None
        self._loop.call_soon_threadsafe(self._event.set)


# -- one app, many routes ------------------------------------------------------------


async def routes(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan_with_state(scope, receive, send)
        return
    path = scope["path"]
    if scope["root_path"] and path.startswith(scope["root_path"]):
        path = path[len(scope["root_path"]) :]  # the app's own routes are under the mount
    handler = scope_route if path.startswith("/scope") else ROUTES.get(path)
    if handler is None:
        await start(send, 404)
        await body(send, b"not found")
        return
    await handler(scope, receive, send)


async def lifespan_with_state(scope: Scope, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            scope["state"]["started"] = "yes"
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def scope_route(scope: Scope, receive: Receive, send: Send) -> None:
    """The scope as JSON, with the Python type of every value beside it."""
    await read_body(receive)
    values: dict[str, Any] = {}
    for key, value in scope.items():
        if isinstance(value, bytes):
            values[key] = value.decode("latin-1")
        elif key == "headers":
            values[key] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in value]
        elif isinstance(value, tuple):
            values[key] = list(value)
        else:
            values[key] = value
    out = {
        "values": values,
        "types": {key: type(value).__name__ for key, value in scope.items()},
        "header_types": sorted(
            {" ".join(type(x).__name__ for x in (h, *h)) for h in scope["headers"]}
        ),
    }
    await start(send, headers=[(b"content-type", b"application/json")])
    await body(send, json.dumps(out).encode())


async def hello_route(scope: Scope, receive: Receive, send: Send) -> None:
    await start(send, headers=[(b"content-type", b"text/plain")])
    await body(send, b"Hello, world!")


async def stream_route(scope: Scope, receive: Receive, send: Send) -> None:
    """Three body chunks, no content-length: chunked on HTTP/1.1."""
    await start(send, headers=[(b"content-type", b"text/plain")])
    for part in (b"alpha", b"", b"beta-beta", b"gamma!"):
        await body(send, part, more=True)
    await body(send)


async def one_chunk_route(scope: Scope, receive: Receive, send: Send) -> None:
    """The whole body in one message, no content-length: the server adds one."""
    await start(send, headers=[(b"content-type", b"text/plain")])
    await body(send, b"0123456789" * 10)


async def echo_route(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the whole body, then stream it back in CHUNK-sized pieces."""
    data = await read_body(receive)
    await start(send, headers=[(b"x-received", str(len(data)).encode())])
    view = memoryview(data)
    for i in range(0, len(data), CHUNK):
        await body(send, bytes(view[i : i + CHUNK]), more=True)
    await body(send)


async def error_before_start(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("boom before start")


async def error_after_start(scope: Scope, receive: Receive, send: Send) -> None:
    await start(send)
    await body(send, b"partial", more=True)
    raise RuntimeError("boom after start")


async def body_before_start(scope: Scope, receive: Receive, send: Send) -> None:
    await body(send, b"no head")


async def start_twice(scope: Scope, receive: Receive, send: Send) -> None:
    await start(send)
    await start(send)


async def no_response(scope: Scope, receive: Receive, send: Send) -> None:
    return


async def no_body(scope: Scope, receive: Receive, send: Send) -> None:
    await start(send)


async def expect_never_reads(scope: Scope, receive: Receive, send: Send) -> None:
    await start(send)
    await body(send, b"not reading")


ROUTES = {
    "/scope": scope_route,
    "/hello": hello_route,
    "/stream": stream_route,
    "/one-chunk": one_chunk_route,
    "/echo": echo_route,
    "/error-before-start": error_before_start,
    "/error-after-start": error_after_start,
    "/body-before-start": body_before_start,
    "/start-twice": start_twice,
    "/no-response": no_response,
    "/no-body": no_body,
    "/expect-never-reads": expect_never_reads,
}


# -- stateful apps ----------------------------------------------------------------------


class BigDownload:
    """Sends ``chunks`` blocks of CHUNK bytes with a content-length; counts sends done."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.sent = 0  # read by the test thread

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        length = str(self.chunks * CHUNK).encode()
        await start(send, headers=[(b"content-length", length)])
        for i in range(self.chunks):
            await body(send, pattern(i), more=True)
            self.sent = i + 1
        await body(send)


class SlowReader:
    """Holds the request body unread until the test opens the gate, then digests it."""

    def __init__(self) -> None:
        self.gate = Gate()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await self.gate.wait()
        digest = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message["body"])
            digest.update(message["body"])
            if not message["more_body"]:
                break
        await start(send)
        await body(send, json.dumps({"size": size, "sha256": digest.hexdigest()}).encode())


class ExpectReader:
    """Reads the body only after the test opens the gate (for Expect: 100-continue)."""

    def __init__(self) -> None:
        self.gate = Gate()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await self.gate.wait()
        data = await read_body(receive)
        await start(send)
        await body(send, b"got " + data)


class DisconnectRecorder:
    """Records every receive() message until http.disconnect, then signals the test."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.first = threading.Event()  # the first message arrived
        self.done = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            while True:
                message = await receive()
                self.messages.append(message)
                self.first.set()
                if message["type"] == "http.disconnect":
                    return
        finally:
            self.done.set()
