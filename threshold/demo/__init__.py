"""The built-in demo app served by `make run`: shows what Threshold is serving."""

from __future__ import annotations

import html
import json
from typing import Any

from threshold import __version__

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Threshold {version}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem;
       color: #1d2330; }}
h1 {{ margin-bottom: .2rem; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #dde;
         vertical-align: top;
         font-family: ui-monospace, monospace; font-size: .9rem; }}
.tag {{ display: inline-block; background: #e8eefc; border-radius: .3rem; padding: .1rem .5rem; }}
</style>
</head>
<body>
<h1>Threshold is serving this page</h1>
<p>Threshold {version} &mdash; protocol <span class="tag" id="protocol">HTTP/{http_version}</span>
interface <span class="tag" id="interface">ASGI {asgi_version}</span>
scheme <span class="tag" id="scheme">{scheme}</span></p>
<h2>Request scope</h2>
<table id="scope">{rows}</table>
<p>Try <a href="/scope.json">/scope.json</a> for the same as JSON.
Documentation: README.md and docs/ in the repository
(<a href="https://github.com/threshold-server/threshold">github.com/threshold-server/threshold</a>).</p>
</body>
</html>
"""


def _jsonable(scope: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in scope.items():
        if key == "headers":
            out[key] = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in value]
        elif isinstance(value, bytes):
            out[key] = value.decode("latin-1")
        elif key == "state":
            out[key] = sorted(value)
        else:
            out[key] = value
    return out


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI 3 app (with lifespan) that describes its own request."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["started_by"] = "threshold demo"
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    data = _jsonable(scope)
    if scope["path"] == "/scope.json":
        body = json.dumps(data, indent=2).encode()
        content_type = b"application/json"
    elif scope["path"] == "/":
        rows = "".join(
            f"<tr><th>{html.escape(key)}</th><td>{html.escape(json.dumps(value))}</td></tr>"
            for key, value in data.items()
        )
        body = PAGE.format(
            version=__version__,
            http_version=html.escape(scope["http_version"]),
            asgi_version=html.escape(scope["asgi"]["version"]),
            scheme=html.escape(scope["scheme"]),
            rows=rows,
        ).encode()
        content_type = b"text/html; charset=utf-8"
    else:
        body = b"Not Found\n"
        await send(
            {
                "type": "http.response.start",
                "status": 404,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]}
    )
    await send({"type": "http.response.body", "body": body})
