"""The built-in demo app served by `make run`: shows what Threshold is serving.

``/scope.json`` returns the request's ASGI scope as JSON; ``/docs/NAME.md`` serves
the documentation from a source checkout (a fixed list of files, as plain text);
every other path renders the HTML page. Everything taken from the request is
HTML-escaped before it reaches the page.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from threshold import __version__

ROOT = Path(__file__).resolve().parent.parent.parent
# Only these files are served, and only from a source checkout (not an installed copy).
DOC_FILES = {
    "README.md": ROOT / "README.md",
    "index.md": ROOT / "docs" / "index.md",
    "options.md": ROOT / "docs" / "options.md",
    "asgi.md": ROOT / "docs" / "asgi.md",
    "wsgi.md": ROOT / "docs" / "wsgi.md",
    "http1.md": ROOT / "docs" / "http1.md",
    "http2.md": ROOT / "docs" / "http2.md",
    "benchmarks.md": ROOT / "docs" / "benchmarks.md",
}
IN_CHECKOUT = (ROOT / "pyproject.toml").is_file() and (ROOT / "docs" / "gen_options.py").is_file()

# The page loads nothing from elsewhere and runs no script.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'"),
    (b"x-content-type-options", b"nosniff"),
]

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Threshold {version}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem;
       color: #1d2330; }}
h1 {{ margin-bottom: .2rem; }}
table {{ border-collapse: collapse; width: 100%; }}
td, th {{ text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #dde;
         vertical-align: top; font-family: ui-monospace, monospace; font-size: .9rem; }}
td {{ overflow-wrap: anywhere; }}
.tag {{ display: inline-block; background: #e8eefc; border-radius: .3rem; padding: .1rem .5rem;
        font-family: ui-monospace, monospace; }}
</style>
</head>
<body>
<h1>Threshold is serving this page</h1>
<p>Threshold {version} &mdash;
protocol <span class="tag" id="protocol">HTTP/{http_version}</span>
interface <span class="tag" id="interface">{interface}</span>
method <span class="tag" id="method">{method}</span>
path <span class="tag" id="path">{path}</span></p>
<p>Any path shows this page; try <a href="{root}/any/path?q=1">{root}/any/path?q=1</a>, or
<a href="{root}/scope.json">{root}/scope.json</a> for the scope as JSON.</p>
<h2>Request scope</h2>
<table id="scope">{rows}</table>
<h2>Documentation</h2>
{docs}
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
            out[key] = sorted(value)  # the names only; values may not be JSON
        else:
            out[key] = value
    return out


def _docs_html(root: str) -> str:
    if not IN_CHECKOUT:
        return "<p>See README.md and docs/ in Threshold's source repository.</p>"
    items = "\n".join(
        f'<li><a href="{root}/docs/{html.escape(name)}">{html.escape(name)}</a></li>'
        for name, path in DOC_FILES.items()
        if path.is_file()
    )
    return f'<ul id="docs">{items}</ul>'


def render_page(scope: dict[str, Any]) -> bytes:
    asgi = scope["asgi"]
    interface = f"ASGI {asgi['version']} (HTTP spec {asgi.get('spec_version', '2.0')})"
    root = html.escape(scope.get("root_path", ""))
    rows = "".join(
        f'<tr><th>{html.escape(key)}</th><td id="scope-{html.escape(key)}">'
        f"{html.escape(json.dumps(value))}</td></tr>"
        for key, value in _jsonable(scope).items()
    )
    return PAGE.format(
        version=html.escape(__version__),
        http_version=html.escape(scope["http_version"]),
        interface=html.escape(interface),
        method=html.escape(scope["method"]),
        path=html.escape(scope["path"]),
        rows=rows,
        root=root,
        docs=_docs_html(root),
    ).encode()


async def _respond(send: Any, status: int, content_type: bytes, body: bytes) -> None:
    headers = [(b"content-type", content_type), *SECURITY_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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
    path = scope["path"]
    root_path = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]  # ASGI paths include root_path
    if path == "/scope.json":
        body = json.dumps(_jsonable(scope), indent=2).encode()
        await _respond(send, 200, b"application/json", body)
    elif path.startswith("/docs/"):
        doc = DOC_FILES.get(path[len("/docs/") :]) if IN_CHECKOUT else None
        if doc is None or not doc.is_file():
            await _respond(send, 404, b"text/plain; charset=utf-8", b"Not Found\n")
        else:
            await _respond(send, 200, b"text/plain; charset=utf-8", doc.read_bytes())
    else:
        await _respond(send, 200, b"text/html; charset=utf-8", render_page(scope))
