"""ASGI WebSocket apps for tests/e2e/test_websocket.py.

Apps that report what they saw put it on a ``queue.Queue`` (the in-process server runs
in its own thread), so a test reads the app's view with a bounded ``get(timeout=...)``.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
from typing import Any

Scope = dict[str, Any]


async def _lifespan(receive: Any, send: Any, state: dict[str, Any] | None = None) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if state is not None:
                state.update({"greeting": "hello", "count": 1})
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def echo(scope: Scope, receive: Any, send: Any) -> None:
    """Accept (the last subprotocol offered, plus an ``x-ws-app`` header) and echo.

    The text message ``close CODE REASON`` makes the app close with that code and reason.
    """
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "websocket":
        return
    message = await receive()
    assert message["type"] == "websocket.connect"
    offered = scope["subprotocols"]
    await send(
        {
            "type": "websocket.accept",
            "subprotocol": offered[-1] if offered else None,
            "headers": [(b"x-ws-app", b"echo")],
        }
    )
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is not None and text.startswith("close "):
            _, code, reason = text.split(" ", 2)
            await send({"type": "websocket.close", "code": int(code), "reason": reason})
            return
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def scope_app(scope: Scope, receive: Any, send: Any) -> None:
    """Send the scope as JSON (bytes as latin-1), the first event's type included.

    Lifespan startup puts ``greeting`` and ``count`` in the state; each connection then
    adds ``mutated`` to its own ``scope["state"]``, which must not leak to the next one.
    """
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, scope.get("state"))
        return
    first = await receive()
    await send({"type": "websocket.accept"})
    out = dict(scope)
    out["first_event"] = first["type"]
    out["headers"] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]]
    out["raw_path"] = scope["raw_path"].decode("latin-1")
    out["query_string"] = scope["query_string"].decode("latin-1")
    await send({"type": "websocket.send", "text": json.dumps(out)})
    scope["state"]["mutated"] = True
    while (await receive())["type"] != "websocket.disconnect":
        pass


class Recorder:
    """Accept, then record every event received (connect and disconnect included)."""

    def __init__(self) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        message = await receive()
        self.events.put(dict(message))
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            self.events.put(dict(message))
            if message["type"] == "websocket.disconnect":
                return


class SendAfterDisconnect:
    """Send once the client is gone and report what ``send`` raised.

    ``wait_disconnect``: read until websocket.disconnect first, then send once. Otherwise
    never read: send every 10 ms until a send fails (the app missed the disconnect).
    The exception is re-raised, as an app that does not catch it would.
    """

    def __init__(self, wait_disconnect: bool) -> None:
        self.wait_disconnect = wait_disconnect
        self.errors: queue.Queue[BaseException | None] = queue.Queue()
        self.accepted = threading.Event()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        self.accepted.set()
        if self.wait_disconnect:
            while (await receive())["type"] != "websocket.disconnect":
                pass
        try:
            for _ in range(1000):
                await send({"type": "websocket.send", "text": "anyone there?"})
                if self.wait_disconnect:
                    break
                await asyncio.sleep(0.01)
        except BaseException as exc:
            self.errors.put(exc)
            raise
        self.errors.put(None)


class SlowReader:
    """Accept, then read nothing until ``go`` is set; then count every message.

    The text message ``end`` makes it answer ``"<messages> <bytes>"`` (counted before it).
    """

    def __init__(self) -> None:
        self.go = threading.Event()
        self.session: Any = None

    def session_queue_length(self) -> int:
        """Messages the server holds for this app: peeks at the WebSocketSession behind
        ``receive`` (a bound method of AsgiWebSocketCycle), to count what was buffered."""
        return len(self.session._queue)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        self.session = receive.__self__.ws
        await receive()
        await send({"type": "websocket.accept"})
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.go.wait, 10.0)
        count = size = 0
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "end":
                await send({"type": "websocket.send", "text": f"{count} {size}"})
                continue
            count += 1
            size += len(message.get("bytes") or b"")


class DelayedAccept:
    """Accept only once ``go`` is set (the client may be gone by then); report the outcome."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.connected = threading.Event()
        self.outcome: queue.Queue[BaseException | None] = queue.Queue()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        self.connected.set()
        await asyncio.get_running_loop().run_in_executor(None, self.go.wait, 10.0)
        try:
            await send({"type": "websocket.accept"})
        except BaseException as exc:
            self.outcome.put(exc)
            raise
        self.outcome.put(None)
        await echo_messages(receive, send)


async def echo_messages(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({**message, "type": "websocket.send"})


# -- denial, failures ------------------------------------------------------------------


async def close_before_accept(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.close", "code": 1000})


async def deny_with_response(scope: Scope, receive: Any, send: Any) -> None:
    """Refuse the handshake with a custom HTTP response (websocket.http.response)."""
    if scope["type"] != "websocket":
        return
    await receive()
    await send(
        {
            "type": "websocket.http.response.start",
            "status": 401,
            "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")],
        }
    )
    await send({"type": "websocket.http.response.body", "body": b"no ", "more_body": True})
    await send({"type": "websocket.http.response.body", "body": b"token"})


async def fail_before_accept(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        return
    await receive()
    raise RuntimeError("boom before accept")


async def fail_after_accept(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    await receive()  # the first message from the client
    raise RuntimeError("boom after accept")


async def return_without_accept(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        return
    await receive()


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"plain WSGI"]
