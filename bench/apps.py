"""The fixed apps that every server in the benchmark serves.

Each app is as small as an app can be, so the numbers measure the server, not the
app. Every HTTP response sets ``content-length``; none sets other headers, so servers
that add ``date`` or ``server`` pay that cost alike.

The file apps serve the file named by the ``BENCH_FILE_PATH`` environment variable
(``bench/run.py`` writes it before it starts the servers); its size is read once, at
import, so the response head is as cheap as the others.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
StartResponse = Callable[..., Any]

HELLO = b"Hello, world!"
KIB10 = b"x" * 10240
MIB1 = b"m" * (1 << 20)
FILE_SIZE = 64 * 1024
FILE_CHUNK = 64 * 1024
ECHO_CHUNK = 4096


def file_content() -> bytes:
    """The bytes ``bench/run.py`` writes to ``BENCH_FILE_PATH``."""
    return bytes(range(256)) * (FILE_SIZE // 256)


FILE_PATH = os.environ.get("BENCH_FILE_PATH", "")

_TEXT_HEADERS = [(b"content-type", b"text/plain")]
_OCTET = (b"content-type", b"application/octet-stream")


def _length(size: int) -> tuple[bytes, bytes]:
    return (b"content-length", str(size).encode())


_HELLO_HEADERS = [*_TEXT_HEADERS, _length(len(HELLO))]
_KIB10_HEADERS = [_OCTET, _length(len(KIB10))]
_MIB1_HEADERS = [_OCTET, _length(len(MIB1))]
_FILE_HEADERS = [_OCTET, _length(FILE_SIZE)]


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


async def asgi_1m(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI GET of a fixed 1 MiB body, sent in one message."""
    await _fixed(scope, receive, send, _MIB1_HEADERS, MIB1)


async def asgi_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI POST echo, streamed: each body chunk is sent back as it arrives."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    length = b"0"
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value
    headers = [_OCTET, (b"content-length", length)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return  # the client went away
        more = message.get("more_body", False)
        await send(
            {"type": "http.response.body", "body": message.get("body", b""), "more_body": more}
        )


async def asgi_file_pathsend(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI 64 KiB file with the ``http.response.pathsend`` extension (the server sends it)."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": _FILE_HEADERS})
    await send({"type": "http.response.pathsend", "path": FILE_PATH})


async def asgi_file_chunked(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI 64 KiB file for servers without pathsend: read in 64 KiB chunks and sent.

    Reads on the event loop (the file is in the page cache), which is cheaper than the
    thread hop per chunk that Starlette's ``FileResponse`` pays: a lower bound.
    """
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": _FILE_HEADERS})
    with open(FILE_PATH, "rb") as file:
        chunk = file.read(FILE_CHUNK)
        while chunk:
            following = file.read(FILE_CHUNK)
            await send({"type": "http.response.body", "body": chunk, "more_body": bool(following)})
            chunk = following


async def asgi_ws_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """WebSocket echo of every message; plain HTTP requests get the hello-world."""
    if scope["type"] != "websocket":
        await asgi_app(scope, receive, send)
        return
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        if message.get("bytes") is not None:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
        else:
            await send({"type": "websocket.send", "text": message["text"]})


_WSGI_HELLO_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))]
_WSGI_OCTET = ("Content-Type", "application/octet-stream")
_WSGI_KIB10_HEADERS = [_WSGI_OCTET, ("Content-Length", str(len(KIB10)))]
_WSGI_MIB1_HEADERS = [_WSGI_OCTET, ("Content-Length", str(len(MIB1)))]
_WSGI_FILE_HEADERS = [_WSGI_OCTET, ("Content-Length", str(FILE_SIZE))]


def wsgi_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """WSGI hello-world: the same 13 bytes as ``asgi_app``."""
    start_response("200 OK", _WSGI_HELLO_HEADERS)
    return [HELLO]


def wsgi_10k(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """WSGI GET of a fixed 10 KiB body."""
    start_response("200 OK", _WSGI_KIB10_HEADERS)
    return [KIB10]


def wsgi_1m(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """WSGI GET of a fixed 1 MiB body, one block."""
    start_response("200 OK", _WSGI_MIB1_HEADERS)
    return [MIB1]


def wsgi_echo(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """WSGI POST echo, streamed: ``wsgi.input`` is read in 4 KiB chunks, each yielded."""
    length = environ.get("CONTENT_LENGTH") or "0"
    start_response("200 OK", [_WSGI_OCTET, ("Content-Length", length)])
    return _echo_chunks(environ["wsgi.input"], int(length))


def _echo_chunks(stream: Any, length: int) -> Iterator[bytes]:
    while length > 0:
        chunk = stream.read(min(ECHO_CHUNK, length))
        if not chunk:
            return
        length -= len(chunk)
        yield chunk


def wsgi_file(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """WSGI 64 KiB file through ``wsgi.file_wrapper``; iterated in 64 KiB blocks without one."""
    start_response("200 OK", _WSGI_FILE_HEADERS)
    file = open(FILE_PATH, "rb")  # noqa: SIM115 - the server closes it (PEP 3333)
    wrapper = environ.get("wsgi.file_wrapper")
    if wrapper is not None:
        return wrapper(file, FILE_CHUNK)  # type: ignore[no-any-return]
    return _file_blocks(file)


def _file_blocks(file: Any) -> Iterator[bytes]:
    with file:
        while block := file.read(FILE_CHUNK):
            yield block
