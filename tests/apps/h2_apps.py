"""Apps for the HTTP/2 and TLS tests (tests/e2e/test_http2.py, test_tls.py, conformance).

``app`` is one ASGI app that answers by path; ``wsgi_app`` is its WSGI twin for the
routes both serve, so a test can check that HTTP/1.1 and HTTP/2 (and ASGI and WSGI)
give the same answers. Payloads are deterministic (``payload``), so a client checks
a large download by its sha256 without the server keeping it in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]
Receive = Any
Send = Any
Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], None]]

BLOCK = 64 * 1024
_BLOCKS: dict[int, bytes] = {}


def block(index: int) -> bytes:
    """Block ``index`` of the test payload: distinct per block so reordering shows."""
    key = index % 251
    data = _BLOCKS.get(key)
    if data is None:
        data = _BLOCKS[key] = bytes([key]) * (BLOCK - 1) + b"\n"
    return data


def payload(size: int) -> Iterator[bytes]:
    """``size`` bytes of the test payload, in blocks."""
    index = 0
    while size > 0:
        data = block(index)[:size]
        size -= len(data)
        index += 1
        yield data


def payload_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for data in payload(size):
        digest.update(data)
    return digest.hexdigest()


def _query(raw: bytes | str) -> dict[str, str]:
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    return {k: v[0] for k, v in parse_qs(text).items()}


def _scope_json(scope: Scope) -> bytes:
    out: dict[str, Any] = {}
    for key in ("type", "http_version", "scheme", "method", "path", "root_path"):
        out[key] = scope.get(key)
    out["raw_path"] = scope["raw_path"].decode("latin-1")
    out["query_string"] = scope["query_string"].decode("latin-1")
    out["headers"] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]]
    out["client"] = list(scope["client"]) if scope.get("client") else None
    out["server"] = list(scope["server"]) if scope.get("server") else None
    out["extensions"] = scope.get("extensions")
    return json.dumps(out).encode()


async def _start(
    send: Send, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or []})


async def _body(send: Send, data: bytes = b"", more: bool = False) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": more})


async def _read_all(receive: Receive) -> tuple[bytes, int]:
    """The whole request body and the number of http.request messages it came in."""
    parts = []
    messages = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client went away")
        messages += 1
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts), messages


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[-1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    path = scope["path"]
    query = _query(scope["query_string"])
    text = [(b"content-type", b"text/plain")]
    if path == "/":
        await _start(send, headers=text)
        await _body(send, b"hello h2")
    elif path == "/scope":
        await _read_all(receive)
        await _start(send, headers=[(b"content-type", b"application/json")])
        await _body(send, _scope_json(scope))
    elif path == "/echo":
        data, _ = await _read_all(receive)
        await _start(send, headers=[*text, (b"x-received", b"%d" % len(data))])
        await _body(send, data)
    elif path == "/sha256":
        # Hashes the upload as it streams in: the server never holds it whole.
        digest = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            digest.update(chunk)
            if not message.get("more_body", False):
                break
        await _start(send, headers=text)
        await _body(send, f"{size} {digest.hexdigest()}".encode())
    elif path == "/download":
        size = int(query.get("size", "0"))
        await _start(send, headers=[*text, (b"content-length", b"%d" % size)])
        for data in payload(size):
            await _body(send, data, more=True)
        await _body(send)
    elif path == "/stream":
        await _start(send, headers=text)
        for part in (b"alpha ", b"", b"beta ", b"gamma"):
            await _body(send, part, more=True)
        await _body(send)
    else:
        await _start(send, 404, text)
        await _body(send, b"not found")


def wsgi_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """The WSGI twin of ``app`` for /, /echo, /download and /environ."""
    path = environ["PATH_INFO"]
    query = _query(environ.get("QUERY_STRING", ""))
    if path == "/":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello h2"]
    if path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        data = environ["wsgi.input"].read(length) if length else environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Received", str(len(data)))])
        return [data]
    if path == "/download":
        size = int(query.get("size", "0"))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(size))])
        return payload(size)
    if path == "/environ":
        out = {k: v for k, v in environ.items() if isinstance(v, str)}
        out["wsgi.url_scheme"] = environ["wsgi.url_scheme"]
        body = json.dumps(out).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]


class Concurrency:
    """ASGI app: holds every request until ``n`` are in flight at once (bounded wait).

    Answers with the client address and the peak number of requests in flight, so
    a test sees that ``n`` streams really were open together, and on which connection.
    """

    def __init__(self, n: int, wait: float = 10.0) -> None:
        self.n = n
        self.wait = wait
        self.in_flight = 0
        self.peak = 0
        self._event: asyncio.Event | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        if self._event is None:
            self._event = asyncio.Event()
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        if self.in_flight >= self.n:
            self._event.set()
        try:
            await asyncio.wait_for(self._event.wait(), self.wait)
            status = 200
        except asyncio.TimeoutError:
            status = 504
        finally:
            self.in_flight -= 1
        out = {"client": list(scope["client"]), "peak": self.peak, "path": scope["path"]}
        await _start(send, status, [(b"content-type", b"application/json")])
        await _body(send, json.dumps(out).encode())
