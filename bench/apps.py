"""The fixed apps that every server in the benchmark serves.

Each app is as small as an app can be, so the numbers measure the server, not the
app. Every response sets ``content-length``; none sets other headers, so servers that
add ``date`` or ``server`` pay that cost alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
StartResponse = Callable[..., Any]

HELLO = b"Hello, world!"
KIB10 = b"x" * 10240

_TEXT_HEADERS = [(b"content-type", b"text/plain")]
_HELLO_HEADERS = [*_TEXT_HEADERS, (b"content-length", str(len(HELLO)).encode())]
_KIB10_HEADERS = [
    (b"content-type", b"application/octet-stream"),
    (b"content-length", str(len(KIB10)).encode()),
]


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _fixed(scope: Scope, receive: Receive, send: Send, headers: Any, body: bytes) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI hello-world: 13 bytes of text/plain."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HELLO_HEADERS})
    await send({"type": "http.response.body", "body": HELLO})


async def asgi_10k(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI GET of a fixed 10 KiB body."""
    await _fixed(scope, receive, send, _KIB10_HEADERS, KIB10)


async def asgi_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI POST echo: the request body, read whole, sent back in one message."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    headers = [*_TEXT_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


_WSGI_HELLO_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))]
_WSGI_KIB10_HEADERS = [
    ("Content-Type", "application/octet-stream"),
    ("Content-Length", str(len(KIB10))),
]


def wsgi_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """WSGI hello-world: the same 13 bytes as ``asgi_app``."""
    start_response("200 OK", _WSGI_HELLO_HEADERS)
    return [HELLO]


def wsgi_10k(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """WSGI GET of a fixed 10 KiB body."""
    start_response("200 OK", _WSGI_KIB10_HEADERS)
    return [KIB10]


def wsgi_echo(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """WSGI POST echo: the request body, read whole, sent back."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
