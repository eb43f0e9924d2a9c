"""Apps for the limit tests (tests/e2e/test_limits.py) and the soak test (test_soak.py).

The classes record what the app saw (messages, exceptions, times) for the test thread,
which reads them after waiting on their events; the server runs them on its own loop
or WSGI threads.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Any
Send = Any
StartResponse = Any

CHUNK = 64 * 1024


async def respond(send: Send, body: bytes, status: int = 200) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None if the client went away first."""
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        parts.append(message["body"])
        if not message.get("more_body", False):
            return b"".join(parts)


# -- the soak app (served from a subprocess: python -m threshold tests.apps.limit_apps:soak)


async def soak(scope: Scope, receive: Receive, send: Send) -> None:
    """GET /hello?Q -> "hello Q"; POST /echo -> the body; else 404."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/hello":
        await read_body(receive)
        await respond(send, b"hello " + scope["query_string"])
    elif path == "/echo":
        data = await read_body(receive)
        if data is not None:
            await respond(send, data)
    else:
        await respond(send, b"not found", 404)


# -- ASGI ------------------------------------------------------------------------------


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """Any path: "hello", after reading the body."""
    if scope["type"] != "http":
        return
    await read_body(receive)
    await respond(send, b"hello")


class BodyRecorder:
    """Records every receive() message until the body ends or the client goes away;
    answers the body size when the body ended."""

    def __init__(self) -> None:
        self.calls = 0
        self.called = threading.Event()
        self.messages: list[Message] = []
        self.first = threading.Event()  # the first body message arrived
        self.done = threading.Event()
        self.waiting_since = 0.0  # time.monotonic() of the last receive() call

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        self.called.set()
        size = 0
        try:
            while True:
                self.waiting_since = time.monotonic()
                message = await receive()
                self.messages.append(message)
                self.first.set()
                if message["type"] == "http.disconnect":
                    return
                size += len(message["body"])
                if not message.get("more_body", False):
                    break
            await respond(send, b"%d" % size)
        finally:
            self.done.set()


class EndlessDownload:
    """Streams CHUNK-sized blocks (up to ``limit`` of them) and records how sending ended."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self.sent = 0
        self.error: BaseException | None = None
        self.failed_at = 0.0
        self.done = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            block = b"x" * CHUNK
            for _ in range(self.limit):
                await send({"type": "http.response.body", "body": block, "more_body": True})
                self.sent += 1
            await send({"type": "http.response.body", "body": b""})
        except BaseException as exc:
            self.error = exc
            self.failed_at = time.monotonic()
            raise
        finally:
            self.done.set()


class Sleeper:
    """Sleeps for ``seconds`` (after starting the response on /started) and records
    the CancelledError that --timeout-request delivers."""

    def __init__(self, seconds: float = 30.0) -> None:
        self.seconds = seconds
        self.cancelled: dict[str, threading.Event] = {
            "/sleep": threading.Event(),
            "/started": threading.Event(),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        try:
            if path == "/started":
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            elif path != "/sleep":
                await respond(send, b"awake")
                return
            await asyncio.sleep(self.seconds)
            await send({"type": "http.response.body", "body": b"too late"})
        except asyncio.CancelledError:
            self.cancelled[path].set()
            raise


class LoopBlocker:
    """On /block: blocks the whole event loop (on purpose) until released, so the server
    accepts nothing and the listen backlog alone decides which handshakes complete."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/block":
            self.entered.set()
            self.release.wait(10.0)
        await respond(send, b"ok")


# -- WSGI ------------------------------------------------------------------------------


class WsgiBodyReader:
    """Reads wsgi.input whole; records the body or the error the read raised."""

    def __init__(self) -> None:
        self.body: bytes | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            self.body = environ["wsgi.input"].read()
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self.done.set()
        start_response("200 OK", [("Content-Length", str(len(self.body)))])
        return [b"%d" % len(self.body)]


class WsgiBlocker:
    """/block waits on ``release`` (a stuck app); any other path answers at once."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/block":
            self.entered.set()
            self.release.wait(10.0)
            body = b"unblocked"
            self.finished.set()
        else:
            body = b"quick"
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
