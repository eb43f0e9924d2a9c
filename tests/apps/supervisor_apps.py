"""Apps for the supervisor tests: they answer their PID, sleep, block their loop.

Paths understood by ``pid_app``:
  /            -> "PID"
  /sleep?S     -> sleeps S seconds (asyncio), then "PID"
  /block?S     -> blocks the event loop S seconds (time.sleep), then "PID"
Before sleeping or blocking they write "app: sleeping PID" / "app: blocking PID"
to stderr, so a test can wait for the request to be in flight.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]


def _say(text: str) -> None:
    sys.stderr.write(f"app: {text} {os.getpid()}\n")
    sys.stderr.flush()


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _answer(send: Send, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def pid_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    seconds = float(scope["query_string"] or b"0")
    if scope["path"] == "/sleep":
        _say("sleeping")
        await asyncio.sleep(seconds)
    elif scope["path"] == "/block":
        _say("blocking")
        time.sleep(seconds)  # on purpose: the event loop stops, so does the heartbeat
    await _answer(send, str(os.getpid()).encode())


def wsgi_pid_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]


def text_app(message: str) -> App:
    """An ASGI app answering "MESSAGE PID" (used from modules the tests write and rewrite)."""

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        await _answer(send, f"{message} {os.getpid()}".encode())

    return app


def text_module(message: str) -> str:
    """Source of a module whose ``app`` answers MESSAGE; a test writes it into an app dir."""
    return (
        "from tests.apps.supervisor_apps import text_app\n"
        f"MESSAGE = {message!r}\n"
        "app = text_app(MESSAGE)\n"
    )


BROKEN_MODULE = "raise RuntimeError('boom at import')\n"
SLOW_IMPORT_MODULE = "import time\ntime.sleep(30)\napp = None\n"
SYNTAX_ERROR_MODULE = "def app(:\n"
