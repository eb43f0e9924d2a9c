"""ASGI lifespan: startup and shutdown events, and the state shared into request scopes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from threshold.interfaces.asgi import ASGIApp, Message

logger = logging.getLogger("threshold.error")


class LifespanFailure(Exception):
    """Startup or shutdown failed and lifespan is required (or the app said so)."""


class Lifespan:
    def __init__(self, app: ASGIApp, mode: str) -> None:
        self.app = app
        self.mode = mode  # "on" or "auto"
        self.state: dict[str, Any] = {}
        self.supported = True
        self._receive_queue: asyncio.Queue[Message] = asyncio.Queue()
        self._startup_done = asyncio.Event()
        self._shutdown_done = asyncio.Event()
        self._failure: str | None = None
        self.task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        """Run the app's startup; raise LifespanFailure when the server must not start."""
        self.task = asyncio.get_running_loop().create_task(self._main())
        await self._receive_queue.put({"type": "lifespan.startup"})
        await self._startup_done.wait()
        if self._failure is not None:
            raise LifespanFailure(self._failure)

    async def shutdown(self) -> None:
        if not self.supported or self.task is None or self.task.done():
            return
        await self._receive_queue.put({"type": "lifespan.shutdown"})
        await self._shutdown_done.wait()
        if self._failure is not None:
            logger.error("Lifespan shutdown failed: %s", self._failure)

    async def _main(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self.state,
        }
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:
            if not self._startup_done.is_set() and self.mode == "auto":
                # An app without lifespan support: fine in auto mode.
                self.supported = False
                logger.debug("ASGI lifespan unsupported by the app (%r); continuing", exc)
            else:
                self._failure = self._failure or f"exception in lifespan: {exc!r}"
                logger.error("Exception in ASGI lifespan", exc_info=exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not self._startup_done.is_set():
                # Returned without answering startup: treat as unsupported in auto.
                self.supported = False
                if self.mode == "on":
                    self._failure = "the app returned before completing lifespan startup"
        finally:
            self._startup_done.set()
            self._shutdown_done.set()

    async def _receive(self) -> Message:
        return await self._receive_queue.get()

    async def _send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self._startup_done.set()
        elif kind == "lifespan.startup.failed":
            self._failure = f"startup failed: {message.get('message', '')}"
            self._startup_done.set()
        elif kind == "lifespan.shutdown.complete":
            self._shutdown_done.set()
        elif kind == "lifespan.shutdown.failed":
            self._failure = f"shutdown failed: {message.get('message', '')}"
            self._shutdown_done.set()
        else:
            raise RuntimeError(f"ASGI: unexpected lifespan message {kind!r}")
