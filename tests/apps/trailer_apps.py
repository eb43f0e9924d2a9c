"""ASGI apps using the http.response.trailers and http.response.early_hint extensions."""

from __future__ import annotations

from typing import Any


async def trailers(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert "http.response.trailers" in scope["extensions"]
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"trailer", b"x-checksum")],
            "trailers": True,
        }
    )
    await send({"type": "http.response.body", "body": b"part one,", "more_body": True})
    await send({"type": "http.response.body", "body": b"part two"})
    await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc")]})


async def early_hints(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert "http.response.early_hint" in scope["extensions"]
    await send({"type": "http.response.early_hint", "links": [b"</style.css>; rel=preload"]})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hinted"})
