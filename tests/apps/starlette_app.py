"""A Starlette (ASGI 3) app for tests/e2e/test_frameworks.py; same routes as flask_app.

Lifespan: startup and shutdown are appended to the file named by FRAMEWORK_TEST_LIFESPAN_LOG
(when set), and the lifespan yields a state dict that Threshold copies into each request
scope (request.state). /bg queues a background task that runs after its response.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

GATE_TIMEOUT = 10.0


def record(event: str) -> None:
    path = os.environ.get("FRAMEWORK_TEST_LIFESPAN_LOG")
    if path:
        with open(path, "a") as file:
            file.write(event + "\n")


class Shared:
    """Objects shared by all requests through the lifespan state (created on the loop)."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.bg_results: list[str] = []
        self.bg_done: dict[str, asyncio.Event] = {}

    def gate(self, token: str) -> asyncio.Event:
        return self.gates.setdefault(token, asyncio.Event())

    def done(self, token: str) -> asyncio.Event:
        return self.bg_done.setdefault(token, asyncio.Event())


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
    record("startup")
    yield {"started": "yes", "shared": Shared()}
    record("shutdown")


async def item(request: Request) -> Response:
    return JSONResponse(
        {
            "item_id": request.path_params["item_id"],
            "q": request.query_params.get("q"),
            "tags": request.query_params.getlist("tag"),
            "path": request.url.path,
        }
    )


async def echo(request: Request) -> Response:
    return JSONResponse(
        {"json": await request.json(), "content_type": request.headers.get("content-type")}
    )


async def stream(request: Request) -> Response:
    gate = request.state.shared.gate(request.path_params["token"])

    async def generate() -> AsyncIterator[str]:
        yield "first\n"
        try:
            await asyncio.wait_for(gate.wait(), GATE_TIMEOUT)
            released = True
        except asyncio.TimeoutError:
            released = False
        for i in range(3):
            yield f"chunk {i}\n"
        yield "released\n" if released else "gate timed out\n"

    return StreamingResponse(generate(), media_type="text/plain")


async def release(request: Request) -> Response:
    request.state.shared.gate(request.path_params["token"]).set()
    return PlainTextResponse("ok")


async def error(request: Request) -> Response:
    raise RuntimeError("boom from starlette")


async def headers(request: Request) -> Response:
    custom = request.headers.get("x-custom", "")
    response = JSONResponse(
        {
            "x_custom": request.headers.get("x-custom"),
            "session": request.cookies.get("session"),
            "reply": request.cookies.get("reply"),
        },
        headers={"X-Reply": "reply-" + custom},
    )
    response.set_cookie("reply", "r1")
    response.set_cookie("other", "o2", httponly=True)
    return response


async def url(request: Request) -> Response:
    item_url = request.url_for("item", item_id=7)
    return JSONResponse(
        {
            "item_path": item_url.path,
            "item_url": str(item_url),
            "full_url": str(request.url),
            "root": request.scope["root_path"],
        }
    )


async def state(request: Request) -> Response:
    # Threshold copies the lifespan state into each scope: a key set by one request
    # must not be seen by the next.
    leaked = getattr(request.state, "per_request", None)
    request.state.per_request = "set"
    return JSONResponse({"started": request.state.started, "leaked": leaked})


async def _background(shared: Shared, token: str) -> None:
    await asyncio.wait_for(shared.gate(token).wait(), GATE_TIMEOUT)
    shared.bg_results.append(token)
    shared.done(token).set()


async def bg(request: Request) -> Response:
    token = request.path_params["token"]
    task = BackgroundTask(_background, request.state.shared, token)
    return PlainTextResponse("queued", background=task)


async def bg_release(request: Request) -> Response:
    shared: Shared = request.state.shared
    token = request.path_params["token"]
    shared.gate(token).set()
    await asyncio.wait_for(shared.done(token).wait(), GATE_TIMEOUT)
    return JSONResponse({"results": shared.bg_results})


app = Starlette(
    routes=[
        Route("/items/{item_id:int}", item, name="item"),
        Route("/echo", echo, methods=["POST"]),
        Route("/stream/{token}", stream),
        Route("/release/{token}", release),
        Route("/error", error),
        Route("/headers", headers),
        Route("/url", url),
        Route("/state", state),
        Route("/bg/{token}", bg, methods=["POST"]),
        Route("/bg-release/{token}", bg_release),
    ],
    lifespan=lifespan,
)
