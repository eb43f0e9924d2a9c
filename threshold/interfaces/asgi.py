"""ASGI HTTP: scope building and receive/send over a Stream (ASGI 3; ASGI 2 is wrapped)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from threshold.stream import ClientDisconnected, Stream

logger = logging.getLogger("threshold.error")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ASGI_VERSION = "3.0"
HTTP_SPEC_VERSION = "2.4"
REQUEST_TASK_NAME = "threshold-request"  # how the server finds request tasks at shutdown


def decode_path(raw_path: bytes) -> str:
    """ASGI path: percent-decoded UTF-8 (raw_path keeps the bytes as sent)."""
    if b"%" in raw_path:
        return unquote(raw_path.decode("ascii"))
    return raw_path.decode("ascii")


def build_http_scope(stream: Stream, root_path: str, state: dict[str, Any] | None) -> Scope:
    head = stream.head
    path = decode_path(head.raw_path)
    raw_path = head.raw_path
    if root_path and not path.startswith(root_path):
        # Behind a proxy that strips the mount prefix: ASGI paths include root_path.
        path = root_path + path
        raw_path = root_path.encode() + raw_path
    scope: Scope = {
        "type": "http",
        "asgi": {"version": ASGI_VERSION, "spec_version": HTTP_SPEC_VERSION},
        "http_version": head.http_version,
        "server": head.server,
        "client": head.client,
        "scheme": head.scheme,
        "method": head.method,
        "root_path": root_path,
        "path": path,
        "raw_path": raw_path,
        "query_string": head.query_string,
        "headers": head.headers,
    }
    if state is not None:
        scope["state"] = state.copy()
    extensions = stream.extensions
    if extensions:
        scope["extensions"] = extensions
    return scope


_DISCONNECT: Message = {"type": "http.disconnect"}


class AsgiHttpCycle:
    """One HTTP request handed to an ASGI 3 app."""

    __slots__ = ("_body_done", "_complete", "_started", "stream")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._started = False
        self._complete = False
        self._body_done = False

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        stream = self.stream
        try:
            await app(scope, self.receive, self.send)
        except ClientDisconnected:
            logger.debug("client disconnected during %s %s", scope["method"], scope["path"])
            stream.abort()
            return
        except asyncio.CancelledError:
            stream.abort()
            raise
        except BaseException as exc:
            logger.error(
                "Exception in ASGI application (%s %s)",
                scope["method"],
                scope["path"],
                exc_info=exc,
            )
            if not stream.send_error(500):
                stream.abort()
            if not isinstance(exc, Exception):
                raise
            return
        if not self._complete:
            if not self._started:
                logger.error("ASGI application returned without starting a response")
                if not stream.send_error(500):
                    stream.abort()
            else:
                logger.error("ASGI application returned without completing the response")
                stream.abort()

    async def receive(self) -> Message:
        if self._body_done:
            await self.stream.wait_disconnect()
            return _DISCONNECT
        try:
            body, more = await self.stream.receive_body()
        except ClientDisconnected:
            self._body_done = True
            return _DISCONNECT
        if not more:
            self._body_done = True
        return {"type": "http.request", "body": body, "more_body": more}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        stream = self.stream
        if kind == "http.response.body":
            if not self._started:
                raise RuntimeError("ASGI: http.response.body sent before http.response.start")
            if self._complete:
                raise RuntimeError("ASGI: http.response.body sent after the response completed")
            more = message.get("more_body", False)
            if not more:
                self._complete = True
            stream.send_body(message.get("body", b""), more)
            if stream.write_paused:
                await stream.drain()
        elif kind == "http.response.start":
            if self._started:
                raise RuntimeError("ASGI: http.response.start sent twice")
            stream.send_head(message["status"], message.get("headers", ()))
            self._started = True
        elif kind == "http.response.pathsend":
            if not self._started or self._complete:
                raise RuntimeError("ASGI: http.response.pathsend out of order")
            self._complete = True
            with open(message["path"], "rb") as file:
                await stream.send_file(file, 0, None)
            stream.send_body(b"", False)
        else:
            raise RuntimeError(f"ASGI: unexpected message type {kind!r} for an HTTP request")


class AsgiHandler:
    """The Handler the server gives protocols: one task per request."""

    __slots__ = ("app", "loop", "root_path", "state")

    def __init__(
        self,
        app: ASGIApp,
        loop: asyncio.AbstractEventLoop,
        root_path: str,
        state: dict[str, Any] | None,
    ) -> None:
        self.app = app
        self.loop = loop
        self.root_path = root_path
        self.state = state

    def __call__(self, stream: Stream) -> None:
        scope = build_http_scope(stream, self.root_path, self.state)
        # The loop holds running tasks; the server cancels leftovers at shutdown by name.
        self.loop.create_task(AsgiHttpCycle(stream).run(self.app, scope), name=REQUEST_TASK_NAME)
