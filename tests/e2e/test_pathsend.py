"""The ASGI ``http.response.pathsend`` extension over real sockets.

Small files go out read and written with the response head; larger ones by
``loop.sendfile`` where the loop has it (asyncio) or in 64 KiB chunks (uvloop). Each
case checks the bytes, the framing (content-length or chunked) and that the
connection is still usable for the next request.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import serve_in_thread
from threshold.protocols.http1 import SENDFILE_MIN

SIZES = {"empty": 0, "small": 13, "64k": 65536, "over_sendfile_min": SENDFILE_MIN + 12345}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pathsend")
    made = {}
    for name, size in SIZES.items():
        path = root / name
        path.write_bytes(os.urandom(size))
        made[name] = path
    return made


def make_app(files: dict[str, Path]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        assert "http.response.pathsend" in scope["extensions"]
        name, _, mode = scope["path"].strip("/").partition("/")
        path = files[name]
        headers = [(b"content-type", b"application/octet-stream")]
        if mode != "chunked":
            headers.append((b"content-length", b"%d" % path.stat().st_size))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.pathsend", "path": str(path)})

    return app


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def server(request: pytest.FixtureRequest, files: dict[str, Path]) -> Iterator[Any]:
    with serve_in_thread(make_app(files), loop=request.param) as running:
        yield running


@pytest.mark.parametrize("name", list(SIZES))
@pytest.mark.parametrize("mode", ["length", "chunked"])
def test_file_arrives_whole(server: Any, files: dict[str, Path], name: str, mode: str) -> None:
    expected = files[name].read_bytes()
    with httpx.Client(base_url=server.url) as client:
        for _ in range(2):  # the same connection serves the next response
            response = client.get(f"/{name}/{mode}")
            assert response.status_code == 200
            assert hashlib.sha256(response.content).digest() == hashlib.sha256(expected).digest()
            if mode == "length":
                assert response.headers["content-length"] == str(len(expected))
            else:
                assert response.headers.get("transfer-encoding") == "chunked"


@pytest.mark.parametrize("name", ["small", "over_sendfile_min"])
def test_head_gets_the_length_and_no_body(server: Any, files: dict[str, Path], name: str) -> None:
    """HEAD, then a GET on the same connection: the GET's bytes follow the HEAD's head
    directly, so any body sent for the HEAD would show up as garbage before them."""
    small = files["small"].read_bytes()
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(f"HEAD /{name}/length HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        sock.sendall(b"GET /small/length HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        while not data.endswith(small):
            chunk = sock.recv(65536)
            assert chunk, f"closed early: {data!r}"
            data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200")
    assert f"content-length: {SIZES[name]}".encode() in head.lower()
    assert rest.startswith(b"HTTP/1.1 200")
    assert rest.split(b"\r\n\r\n", 1)[1] == small


def test_over_http2(files: dict[str, Path]) -> None:
    with (
        serve_in_thread(make_app(files)) as running,
        httpx.Client(base_url=running.url, http1=False, http2=True) as client,
    ):
        for name in SIZES:
            response = client.get(f"/{name}/length")
            assert response.http_version == "HTTP/2"
            assert response.content == files[name].read_bytes()
