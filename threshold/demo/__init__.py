"""The built-in demo app served by `make run`: shows what Threshold is serving.

``/scope.json`` returns the request's ASGI scope as JSON; ``/docs/NAME.md`` serves
the documentation from a source checkout (a fixed list of files, as plain text);
``/chat`` is a small chat page whose WebSocket, ``/ws``, relays each text message to
every client connected to this worker (the sender too, as its echo); every other
path renders the HTML page. Everything taken from the request is HTML-escaped
before it reaches a page, and the chat's script shows messages as text only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import itertools
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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

# Chat limits, per worker: a message longer than MAX_MESSAGE_CHARS closes its socket
# with 1009; a client beyond MAX_CHAT_CLIENTS is closed with 1013 (try again later); a
# client more than CHAT_QUEUE messages behind misses messages rather than growing memory.
MAX_MESSAGE_CHARS = 1000
MAX_CHAT_CLIENTS = 100
CHAT_QUEUE = 32

# Messages become text nodes (textContent), never markup; the page keeps the last 200.
CHAT_SCRIPT = """
"use strict";
const form = document.getElementById("chat");
const input = document.getElementById("text");
const list = document.getElementById("messages");
const state = document.getElementById("state");
const socket = new WebSocket(
  (location.protocol === "https:" ? "wss://" : "ws://") + location.host + form.dataset.ws);
socket.onopen = () => { state.textContent = "open"; };
socket.onclose = (event) => { state.textContent = "closed (" + event.code + ")"; };
socket.onmessage = (event) => {
  const item = document.createElement("li");
  item.textContent = event.data;
  list.append(item);
  while (list.children.length > 200) list.firstElementChild.remove();
};
form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (socket.readyState === WebSocket.OPEN && input.value) {
    socket.send(input.value);
    input.value = "";
  }
});
"""
CHAT_SCRIPT_HASH = base64.b64encode(hashlib.sha256(CHAT_SCRIPT.encode()).digest()).decode()

# The chat page runs exactly its own inline script (by hash) and talks only to its own
# origin; CSP Level 3 lets 'self' match ws:// and wss:// on the page's host and port.
CHAT_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'unsafe-inline'; "
        b"script-src 'sha256-" + CHAT_SCRIPT_HASH.encode() + b"'; "
        b"connect-src 'self'; form-action 'none'; base-uri 'none'",
    ),
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
<a href="{root}/scope.json">{root}/scope.json</a> for the scope as JSON, or
<a href="{root}/chat">{root}/chat</a> for a chat over WebSocket.</p>
<h2>Request scope</h2>
<table id="scope">{rows}</table>
<h2>Documentation</h2>
{docs}
</body>
</html>
"""


CHAT_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Threshold {version} chat</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem;
       color: #1d2330; }}
input {{ width: 70%; padding: .3rem; }}
#messages {{ font-family: ui-monospace, monospace; font-size: .9rem; overflow-wrap: anywhere; }}
.tag {{ display: inline-block; background: #e8eefc; border-radius: .3rem; padding: .1rem .5rem;
        font-family: ui-monospace, monospace; }}
</style>
</head>
<body>
<h1>Chat over WebSocket</h1>
<p>Each message goes to everyone connected to this worker, you included.
WebSocket <span class="tag" id="state">connecting</span> &mdash;
<a href="{root}/">back to the demo</a></p>
<form id="chat" data-ws="{root}/ws">
<input id="text" maxlength="{max_chars}" autocomplete="off" aria-label="message">
<button id="send" type="submit">Send</button>
</form>
<ul id="messages"></ul>
<script>{script}</script>
</body>
</html>
"""


class ChatClient:
    """One connected socket: its number and the messages waiting to be sent to it."""

    __slots__ = ("number", "queue")

    def __init__(self, number: int) -> None:
        self.number = number
        self.queue: asyncio.Queue[str] = asyncio.Queue(CHAT_QUEUE)


class ChatRoom:
    """The clients of one worker (each worker process has its own room)."""

    def __init__(self, max_clients: int) -> None:
        self.max_clients = max_clients
        self.clients: set[ChatClient] = set()
        self._numbers = itertools.count(1)

    def join(self) -> ChatClient | None:
        if len(self.clients) >= self.max_clients:
            return None
        client = ChatClient(next(self._numbers))
        self.broadcast(f"* #{client.number} joined ({len(self.clients) + 1} online)")
        self.clients.add(client)
        client.queue.put_nowait(f"* you are #{client.number} ({len(self.clients)} online)")
        return client

    def leave(self, client: ChatClient) -> None:
        self.clients.discard(client)
        self.broadcast(f"* #{client.number} left ({len(self.clients)} online)")

    def broadcast(self, text: str) -> None:
        for client in self.clients:
            if not client.queue.full():  # a client that cannot keep up misses messages
                client.queue.put_nowait(text)


def _same_origin(scope: dict[str, Any]) -> bool:
    """A browser's WebSocket must come from a page of this host (no cross-site hijacking);
    clients that send no Origin are not browsers and are let in."""
    origin = host = None
    for name, value in scope["headers"]:
        if name == b"origin":
            origin = value.decode("latin-1")
        elif name == b"host":
            host = value.decode("latin-1")
    if origin is None:
        return True
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


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


def render_chat_page(scope: dict[str, Any]) -> bytes:
    return CHAT_PAGE.format(
        version=html.escape(__version__),
        root=html.escape(scope.get("root_path", "")),
        max_chars=MAX_MESSAGE_CHARS,
        script=CHAT_SCRIPT,
    ).encode()


async def _respond(
    send: Any,
    status: int,
    content_type: bytes,
    body: bytes,
    security: list[tuple[bytes, bytes]] = SECURITY_HEADERS,
) -> None:
    headers = [(b"content-type", content_type), *security]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _write(client: ChatClient, send: Any) -> None:
    while True:
        text = await client.queue.get()
        try:
            await send({"type": "websocket.send", "text": text})
        except OSError:  # closed under us (ASGI: send on a closed socket raises OSError)
            return


class DemoApp:
    """An ASGI 3 app (with lifespan) that describes its own request and hosts a chat.

    One instance holds one chat room: every worker process gets its own.
    """

    def __init__(
        self, max_clients: int = MAX_CHAT_CLIENTS, max_message_chars: int = MAX_MESSAGE_CHARS
    ) -> None:
        self.room = ChatRoom(max_clients)
        self.max_message_chars = max_message_chars

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    scope["state"]["started_by"] = "threshold demo"
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        root_path = scope.get("root_path", "")
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]  # ASGI paths include root_path
        if scope["type"] == "websocket":
            if path == "/ws" and _same_origin(scope):
                await self.chat(receive, send)
            else:
                await send({"type": "websocket.close"})  # before accept: refused with 403
        elif scope["type"] != "http":
            return
        elif path == "/scope.json":
            body = json.dumps(_jsonable(scope), indent=2).encode()
            await _respond(send, 200, b"application/json", body)
        elif path.startswith("/docs/"):
            doc = DOC_FILES.get(path[len("/docs/") :]) if IN_CHECKOUT else None
            if doc is None or not doc.is_file():
                await _respond(send, 404, b"text/plain; charset=utf-8", b"Not Found\n")
            else:
                await _respond(send, 200, b"text/plain; charset=utf-8", doc.read_bytes())
        elif path == "/chat":
            page = render_chat_page(scope)
            await _respond(send, 200, b"text/html; charset=utf-8", page, CHAT_SECURITY_HEADERS)
        else:
            await _respond(send, 200, b"text/html; charset=utf-8", render_page(scope))

    async def chat(self, receive: Any, send: Any) -> None:
        """Relay each text message to the whole room; one writer task drains each queue."""
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        client = self.room.join()
        if client is None:
            await send({"type": "websocket.close", "code": 1013, "reason": "chat is full"})
            return
        writer = asyncio.ensure_future(_write(client, send))
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    await send({"type": "websocket.close", "code": 1003, "reason": "text only"})
                    return
                if len(text) > self.max_message_chars:
                    reason = f"message longer than {self.max_message_chars} characters"
                    await send({"type": "websocket.close", "code": 1009, "reason": reason})
                    return
                self.room.broadcast(f"#{client.number}: {text}")
        finally:
            self.room.leave(client)
            writer.cancel()
            await asyncio.wait([writer])  # does not raise; a bug in it surfaces below
            error = None if writer.cancelled() else writer.exception()
            if error is not None:
                raise error


app = DemoApp()
