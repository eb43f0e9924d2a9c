"""Small ASGI and WSGI apps used by the end-to-end tests."""

from __future__ import annotations

import json
from typing import Any


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"Hello, world!"})


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echo the request body back, streaming, with the scope summary in headers."""
    assert scope["type"] == "http"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"x-method", scope["method"].encode()),
                (b"x-path", scope["path"].encode()),
            ],
        }
    )
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        await send({"type": "http.response.body", "body": message["body"], "more_body": True})
        if not message["more_body"]:
            break
    await send({"type": "http.response.body", "body": b""})


async def scope_json(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    out = {
        k: v for k, v in scope.items() if k not in ("headers", "raw_path", "query_string", "state")
    }
    out["headers"] = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
    out["raw_path"] = scope["raw_path"].decode("latin-1")
    out["query_string"] = scope["query_string"].decode("latin-1")
    body = json.dumps(out).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def wsgi_hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, world!"]


def wsgi_echo(environ: dict[str, Any], start_response: Any) -> Any:
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [body]
