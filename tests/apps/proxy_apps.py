"""Apps that report what Threshold told them about the client, for the proxy tests.

``asgi_view`` and ``wsgi_view`` answer every HTTP request with a JSON object of the
same keys (client address and port, scheme, host header, server name and port, root
path, path, HTTP version), so a test can check that ASGI and WSGI see one result.
``asgi_view`` also accepts WebSockets: its first message is the same JSON view, then it
echoes every message back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

Scope = dict[str, Any]


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _asgi_view(scope: Scope) -> dict[str, Any]:
    client = scope.get("client")
    server = scope.get("server")
    host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
    return {
        "interface": "asgi",
        "type": scope["type"],
        "client": client[0] if client else None,
        "client_port": client[1] if client else None,
        "scheme": scope["scheme"],
        "host": host,
        "server_name": server[0] if server else None,
        "server_port": server[1] if server else None,
        "root_path": scope["root_path"],
        "path": scope["path"],
        "http_version": scope["http_version"],
    }


async def asgi_view(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    view = json.dumps(_asgi_view(scope))
    if scope["type"] == "websocket":
        message = await receive()
        assert message["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": view})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
    body = view.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def wsgi_view(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    view = {
        "interface": "wsgi",
        "type": "http",
        "client": environ.get("REMOTE_ADDR"),
        "client_port": environ.get("REMOTE_PORT"),
        "scheme": environ["wsgi.url_scheme"],
        "host": environ.get("HTTP_HOST"),
        "server_name": environ["SERVER_NAME"],
        "server_port": environ["SERVER_PORT"],
        "root_path": environ["SCRIPT_NAME"],
        "path": environ["PATH_INFO"],
        "http_version": environ["SERVER_PROTOCOL"].removeprefix("HTTP/"),
        "https": environ.get("HTTPS"),
    }
    body = json.dumps(view).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]
