"""Apps for the operations tests: loader detection, lifespan, slow requests, shutdown.

Apps that run in a subprocess report to the test through stderr lines (the
test waits on them) or through marker files in the directory named by the
``OPS_MARKER_DIR`` environment variable. :class:`ServerProcess` at the end runs
such a server and waits on its stderr lines.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.stderr_log import StderrLog

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

IN_FLIGHT = "ops-apps: request in flight"


async def _answer(send: Send, body: bytes, status: int = 200) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _announce(text: str) -> None:
    """Tell a test watching stderr that something happened (one flushed line)."""
    print(text, file=sys.stderr, flush=True)


def _mark(name: str) -> None:
    directory = os.environ.get("OPS_MARKER_DIR")
    if directory:
        Path(directory, name).write_text(name)


async def _lifespan_ok(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# -- interface detection ----------------------------------------------------------


async def asgi3_function(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan_ok(receive, send)
        return
    await _answer(send, b"asgi3 function")


app = asgi3_function  # what "tests.apps.ops_apps" alone resolves to


class Asgi3Object:
    """An instance with an async __call__(scope, receive, send)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan_ok(receive, send)
            return
        await _answer(send, b"asgi3 object")


asgi3_object = Asgi3Object()


class Asgi2Class:
    """ASGI 2 style: the class is called with the scope, the instance with receive/send."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    async def __call__(self, receive: Receive, send: Send) -> None:
        if self.scope["type"] == "lifespan":
            await _lifespan_ok(receive, send)
            return
        body = await receive()
        text = f"asgi2 class {self.scope['method']} {self.scope['path']} {body['body'].decode()}"
        await _answer(send, text.encode())


def asgi2_function(scope: Scope) -> Callable[[Receive, Send], Awaitable[None]]:
    """ASGI 2 style: a one-parameter callable returning an async callable."""

    async def instance(receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan_ok(receive, send)
            return
        await _answer(send, f"asgi2 function {scope['path']}".encode())

    return instance


def wsgi_function(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"wsgi function"]


holder = SimpleNamespace(inner=SimpleNamespace(app=asgi3_object))  # a dotted attribute


def create_app() -> Callable[..., Awaitable[None]]:
    """A zero-argument factory (for --factory)."""

    async def made(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan_ok(receive, send)
            return
        await _answer(send, b"made by factory")

    return made


def failing_factory() -> Any:
    raise RuntimeError("factory exploded")


not_callable = 42


# -- lifespan -----------------------------------------------------------------------


async def lifespan_markers(scope: Scope, receive: Receive, send: Send) -> None:
    """Writes startup/shutdown marker files; requests report whether startup ran."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["started"] = "yes"
                _mark("startup")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                _mark("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    await _answer(send, f"started={scope['state'].get('started')}".encode())


async def lifespan_state(scope: Scope, receive: Receive, send: Send) -> None:
    """Startup fills the state; each request reports it as JSON, then tampers with it."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["db"] = "connected"
                scope["state"]["count"] = 1
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    state = scope["state"]
    seen = dict(state)
    state["db"] = "clobbered"
    state["leaked"] = scope["path"]
    del state["count"]
    await _answer(send, json.dumps(seen).encode())


async def lifespan_startup_failed(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    await _answer(send, b"should never be served")


async def lifespan_startup_raises(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await receive()
        raise RuntimeError("startup blew up")
    await _answer(send, b"should never be served")


async def no_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that only knows HTTP: raises on any other scope type."""
    if scope["type"] != "http":
        raise ValueError(f"unsupported scope type {scope['type']!r}")
    await _answer(send, b"served without lifespan")


_scope_types: list[str] = []


async def scope_types(scope: Scope, receive: Receive, send: Send) -> None:
    """Reports the scope types this process has seen (lifespan handled if it comes)."""
    _scope_types.append(scope["type"])
    if scope["type"] == "lifespan":
        await _lifespan_ok(receive, send)
        return
    await _answer(send, ",".join(_scope_types).encode())


# -- slow and stuck requests (shutdown) ---------------------------------------------


async def slow(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers after ~1 s; announces on stderr when the request has arrived."""
    if scope["type"] == "lifespan":
        await _lifespan_ok(receive, send)
        return
    if scope["path"] == "/slow":
        _announce(IN_FLIGHT)
        await asyncio.sleep(1.0)
        await _answer(send, b"slow done")
        return
    await _answer(send, b"fast")


async def stuck(scope: Scope, receive: Receive, send: Send) -> None:
    """Never answers /stuck."""
    if scope["type"] == "lifespan":
        await _lifespan_ok(receive, send)
        return
    if scope["path"] == "/stuck":
        _announce(IN_FLIGHT)
        await asyncio.Event().wait()
    await _answer(send, b"fast")


def wsgi_slow(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    if environ["PATH_INFO"] == "/slow":
        _announce(IN_FLIGHT)
        time.sleep(1.0)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"wsgi slow done"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"fast"]


def wsgi_stuck(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    if environ["PATH_INFO"] == "/stuck":
        _announce(IN_FLIGHT)
        threading.Event().wait()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"fast"]


# -- running a server process and waiting on its stderr lines -------------------------

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0


class ServerProcess:
    """A subprocess (usually ``python -m threshold``) whose stderr lines can be awaited.

    Lines are collected by a reader thread; :meth:`wait_for` blocks on a condition
    until a matching line arrives, the process ends, or the timeout passes.
    """

    def __init__(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("THRESHOLD_")}
        full_env["PYTHONPATH"] = str(ROOT)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            args,
            cwd=str(ROOT),
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            pass_fds=pass_fds,
        )
        self.stderr = StderrLog(self.popen, START_TIMEOUT)

    @classmethod
    def threshold(cls, *args: str, **kwargs: Any) -> ServerProcess:
        return cls([sys.executable, "-m", "threshold", *args], **kwargs)

    @property
    def lines(self) -> list[str]:
        return self.stderr.lines

    @property
    def text(self) -> str:
        return self.stderr.log

    def wait_for(
        self, pattern: str, timeout: float = START_TIMEOUT, count: int = 1
    ) -> re.Match[str]:
        """The count-th stderr line matching ``pattern``; fails if the process ends first."""
        return self.stderr.wait_for(pattern, count, timeout=timeout)[count - 1]

    def listening(self) -> str:
        """The URL of the first ``Listening on`` line (http://HOST:PORT or http+unix:PATH)."""
        return self.wait_for(r"Listening on (\S+)").group(1)

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float = START_TIMEOUT) -> int:
        """Wait for the exit (and for all of stderr); return the exit code."""
        return self.stderr.wait_exit(timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.stderr.wait_exit(START_TIMEOUT)
        if self.popen.stderr is not None:
            self.popen.stderr.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
