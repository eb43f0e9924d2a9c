"""ASGI HTTP: scope building and receive/send over a Stream (ASGI 3; ASGI 2 is wrapped)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

from threshold.stream import ClientDisconnected, Stream, WebSocketClosed, WebSocketStream

logger = logging.getLogger("threshold.error")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ASGI_VERSION = "3.0"
HTTP_SPEC_VERSION = "2.4"
WEBSOCKET_SPEC_VERSION = "2.4"
REQUEST_TASK_NAME = "threshold-request"  # how the server finds request tasks at shutdown


def decode_path(raw_path: bytes) -> str:
    """ASGI path: percent-decoded UTF-8 (raw_path keeps the bytes as sent)."""
    if b"%" in raw_path:
        return unquote(raw_path.decode("ascii"))
    return raw_path.decode("ascii")


def _paths(raw_path: bytes, root_path: str) -> tuple[str, bytes]:
    """``path`` and ``raw_path`` for a scope. Behind a proxy that strips the mount
    prefix, ASGI paths include root_path (as uvicorn and Starlette expect)."""
    path = decode_path(raw_path)
    if root_path and not path.startswith(root_path):
        return root_path + path, root_path.encode() + raw_path
    return path, raw_path


def build_websocket_scope(
    ws: WebSocketStream, root_path: str, state: dict[str, Any] | None
) -> Scope:
    head = ws.head
    path, raw_path = _paths(head.raw_path, root_path)
    scope: Scope = {
        "type": "websocket",
        "asgi": {"version": ASGI_VERSION, "spec_version": WEBSOCKET_SPEC_VERSION},
        "http_version": head.http_version,
        "server": head.server,
        "client": head.client,
        "scheme": "wss" if head.scheme == "https" else "ws",
        "root_path": root_path,
        "path": path,
        "raw_path": raw_path,
        "query_string": head.query_string,
        "headers": head.headers,
        "subprotocols": ws.subprotocols,
        "extensions": {"websocket.http.response": {}, **(ws.extensions or {})},
    }
    if state is not None:
        scope["state"] = state.copy()
    return scope


def build_http_scope(stream: Stream, root_path: str, state: dict[str, Any] | None) -> Scope:
    head = stream.head
    path, raw_path = _paths(head.raw_path, root_path)
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
    if head.request_id is not None:  # --request-id: where Starlette's request.state looks
        scope.setdefault("state", {})["request_id"] = head.request_id
    extensions = stream.extensions
    scope["extensions"] = {**HTTP_EXTENSIONS, **extensions} if extensions else HTTP_EXTENSIONS
    return scope


_DISCONNECT: Message = {"type": "http.disconnect"}

# What apps may use (ASGI extensions); shared by every scope, so treat it as read-only.
HTTP_EXTENSIONS: dict[str, Any] = {
    "http.response.pathsend": {},
    "http.response.trailers": {},
    "http.response.early_hint": {},
}


class AsgiHttpCycle:
    """One HTTP request handed to an ASGI 3 app."""

    __slots__ = ("_body_done", "_complete", "_started", "_trailers", "stream")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._started = False
        self._complete = False
        self._body_done = False
        self._trailers: list[Any] | None = None  # http.response.trailers expected

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
                stream.head.raw_path.decode("latin-1"),  # as sent: no decoded CR/LF in logs
                exc_info=exc,
            )
            if not stream.send_error(500):
                stream.abort()
            if not isinstance(exc, Exception):
                raise
            return
        if not self._complete:
            if stream.disconnected:
                logger.debug("ASGI application returned after its client went away")
                stream.abort()
            elif not self._started:
                logger.error("ASGI application returned without starting a response")
                if not stream.send_error(500):
                    stream.abort()
            else:
                logger.error("ASGI application returned without completing the response")
                if not stream.send_error(500):  # nothing on the wire yet: a clean 500
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
            if not more and self._trailers is None:
                self._complete = True
            # With trailers to come, the response ends with them, not with the body.
            stream.send_body(message.get("body", b""), more or self._trailers is not None)
            if stream.write_paused:
                await stream.drain()
        elif kind == "http.response.start":
            if self._started:
                raise RuntimeError("ASGI: http.response.start sent twice")
            stream.send_head(message["status"], message.get("headers", ()))
            self._started = True
            if message.get("trailers", False):
                self._trailers = []
        elif kind == "http.response.trailers":
            if self._trailers is None or self._complete:
                raise RuntimeError("ASGI: http.response.trailers without trailers=True")
            self._trailers.extend(message.get("headers", ()))
            if not message.get("more_trailers", False):
                self._complete = True
                stream.send_trailers(self._trailers)
        elif kind == "http.response.early_hint":
            if self._started:
                raise RuntimeError("ASGI: http.response.early_hint after http.response.start")
            stream.send_informational(103, [(b"link", link) for link in message.get("links", ())])
        elif kind == "http.response.pathsend":
            if not self._started or self._complete:
                raise RuntimeError("ASGI: http.response.pathsend out of order")
            self._complete = True
            with open(message["path"], "rb") as file:
                await stream.send_file(file, 0, None)
            stream.send_body(b"", False)
        else:
            raise RuntimeError(f"ASGI: unexpected message type {kind!r} for an HTTP request")


_CONNECTING, _ACCEPTED, _CLOSED, _HTTP_RESPONSE = range(4)


class AsgiWebSocketCycle:
    """One WebSocket handed to an ASGI 3 app (ASGI WebSocket spec, with the denial response)."""

    __slots__ = ("_connect_sent", "_state", "ws")

    def __init__(self, ws: WebSocketStream) -> None:
        self.ws = ws
        self._state = _CONNECTING
        self._connect_sent = False

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        ws = self.ws
        try:
            await app(scope, self.receive, self.send)
        except ClientDisconnected:
            logger.debug("WebSocket client went away during %s", scope["path"])
            return
        except asyncio.CancelledError:
            ws.abort()
            raise
        except BaseException as exc:
            logger.error(
                "Exception in ASGI application (WebSocket %s)",
                ws.head.raw_path.decode("latin-1"),
                exc_info=exc,
            )
            await self._fail()
            if not isinstance(exc, Exception):
                raise
            return
        if self._state == _CONNECTING:
            logger.error("ASGI application returned without accepting or closing the WebSocket")
            await self._fail()
        elif self._state == _ACCEPTED:
            await ws.close(1000, "")
        elif self._state == _HTTP_RESPONSE and not ws.http.disconnected:
            ws.http.abort()  # the denial response was left unfinished

    async def _fail(self) -> None:
        ws = self.ws
        if self._state == _CONNECTING:
            if not ws.http.send_error(500):
                ws.http.abort()
        elif self._state == _ACCEPTED:
            self._state = _CLOSED
            await ws.close(1011, "")
        elif self._state == _HTTP_RESPONSE:
            ws.http.abort()

    async def receive(self) -> Message:
        if not self._connect_sent:
            self._connect_sent = True
            return {"type": "websocket.connect"}
        try:
            data = await self.ws.receive()
        except WebSocketClosed as closed:
            self._state = _CLOSED
            return {"type": "websocket.disconnect", "code": closed.code, "reason": closed.reason}
        if type(data) is str:
            return {"type": "websocket.receive", "text": data}
        return {"type": "websocket.receive", "bytes": data}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        ws = self.ws
        state = self._state
        if kind == "websocket.send":
            if state != _ACCEPTED:
                if state == _CLOSED:
                    raise ClientDisconnected("ASGI: websocket.send after the WebSocket closed")
                raise RuntimeError("ASGI: websocket.send before websocket.accept")
            data = message.get("bytes")
            if data is None:
                data = message.get("text")
                if data is None:
                    raise RuntimeError("ASGI: websocket.send needs 'bytes' or 'text'")
            await ws.send(data)
        elif kind == "websocket.accept":
            if state != _CONNECTING:
                raise RuntimeError("ASGI: websocket.accept sent twice or too late")
            headers = [(bytes(n).lower(), bytes(v)) for n, v in message.get("headers") or ()]
            await ws.accept(message.get("subprotocol"), headers)
            self._state = _ACCEPTED
        elif kind == "websocket.close":
            if state == _CONNECTING:
                # Closed before accept: the handshake is refused with 403 (ASGI spec).
                self._state = _CLOSED
                if not ws.http.send_error(403):
                    ws.http.abort()
            elif state == _ACCEPTED:
                self._state = _CLOSED
                await ws.close(message.get("code", 1000), message.get("reason") or "")
            elif state == _HTTP_RESPONSE:
                raise RuntimeError("ASGI: websocket.close during a denial response")
        elif kind == "websocket.http.response.start":
            if state != _CONNECTING:
                raise RuntimeError("ASGI: websocket.http.response.start after the handshake")
            ws.http.send_head(message["status"], message.get("headers", ()))
            self._state = _HTTP_RESPONSE
        elif kind == "websocket.http.response.body":
            if state != _HTTP_RESPONSE:
                raise RuntimeError("ASGI: websocket.http.response.body before its start")
            more = message.get("more_body", False)
            ws.http.send_body(message.get("body", b""), more)
            if not more:
                self._state = _CLOSED
            elif ws.http.write_paused:
                await ws.http.drain()
        else:
            raise RuntimeError(f"ASGI: unexpected message type {kind!r} for a WebSocket")


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
        root = stream.head.root_path
        scope = build_http_scope(stream, self.root_path if root is None else root, self.state)
        # The loop holds running tasks; the server cancels leftovers at shutdown by name.
        task = self.loop.create_task(
            AsgiHttpCycle(stream).run(self.app, scope), name=REQUEST_TASK_NAME
        )
        stream.cancel = task.cancel

    def websocket(self, ws: WebSocketStream) -> None:
        root = ws.head.root_path
        scope = build_websocket_scope(ws, self.root_path if root is None else root, self.state)
        task = self.loop.create_task(
            AsgiWebSocketCycle(ws).run(self.app, scope), name=REQUEST_TASK_NAME
        )
        ws.cancel = task.cancel  # also keeps the task referenced while it runs
