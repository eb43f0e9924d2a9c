"""A FastAPI (ASGI 3) app for tests/e2e/test_frameworks.py; same routes as starlette_app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from tests.apps.starlette_app import GATE_TIMEOUT, Shared, record


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    record("startup")
    yield {"started": "yes", "shared": Shared()}
    record("shutdown")


app = FastAPI(lifespan=lifespan)


@app.get("/items/{item_id}", name="item")
async def item(item_id: int, request: Request, q: str | None = None) -> dict[str, Any]:
    return {
        "item_id": item_id,
        "q": q,
        "tags": request.query_params.getlist("tag"),
        "path": request.url.path,
    }


@app.post("/echo")
async def echo(request: Request, payload: dict[str, Any]) -> dict[str, Any]:
    return {"json": payload, "content_type": request.headers.get("content-type")}


@app.get("/stream/{token}")
async def stream(token: str, request: Request) -> StreamingResponse:
    gate = request.state.shared.gate(token)

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


@app.get("/release/{token}", response_class=PlainTextResponse)
async def release(token: str, request: Request) -> str:
    request.state.shared.gate(token).set()
    return "ok"


@app.get("/error")
async def error() -> None:
    raise RuntimeError("boom from fastapi")


@app.get("/headers")
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


@app.get("/url")
async def url(request: Request) -> dict[str, Any]:
    item_url = request.url_for("item", item_id=7)
    return {
        "item_path": item_url.path,
        "item_url": str(item_url),
        "full_url": str(request.url),
        "root": request.scope["root_path"],
    }


@app.get("/state")
async def state(request: Request) -> dict[str, Any]:
    leaked = getattr(request.state, "per_request", None)
    request.state.per_request = "set"
    return {"started": request.state.started, "leaked": leaked}


async def _background(shared: Shared, token: str) -> None:
    await asyncio.wait_for(shared.gate(token).wait(), GATE_TIMEOUT)
    shared.bg_results.append(token)
    shared.done(token).set()


@app.post("/bg/{token}", response_class=PlainTextResponse)
async def bg(token: str, request: Request, tasks: BackgroundTasks) -> str:
    tasks.add_task(_background, request.state.shared, token)
    return "queued"


@app.get("/bg-release/{token}")
async def bg_release(token: str, request: Request) -> dict[str, Any]:
    shared: Shared = request.state.shared
    shared.gate(token).set()
    await asyncio.wait_for(shared.done(token).wait(), GATE_TIMEOUT)
    return {"results": shared.bg_results}
