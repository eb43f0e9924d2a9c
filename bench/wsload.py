"""WebSocket echo load generator: N connections, one 32-byte message in flight on each.

Speaks raw RFC 6455 frames over asyncio (uvloop when importable) so the client stays
far cheaper than the servers it measures: each message is one prebuilt masked frame,
each echo is matched by its frame header. No extensions are offered, so no server
compresses. ``bench/run.py`` runs it pinned to the client core::

    python bench/wsload.py ws://127.0.0.1:8000/ -c 16 -d 5 --size 32

It prints one line ``BENCH_JSON {...}`` with the messages echoed in the measured
window, the window's length, round-trip percentiles and the connection errors.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import sys
import time
from collections.abc import Coroutine
from typing import Any, cast
from urllib.parse import urlsplit

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def masked_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One client frame (FIN set, masked with a random key) carrying payload (< 126 B)."""
    if len(payload) >= 126:
        raise ValueError("payload too long for a one-byte length")
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + masked


class Stats:
    __slots__ = ("closed", "errors", "messages", "rtts", "stop_at")

    def __init__(self) -> None:
        self.messages = 0
        self.errors = 0
        self.closed = 0
        self.rtts: list[float] = []
        self.stop_at = float("inf")


class EchoClient(asyncio.Protocol):
    """Handshake, then send a message, wait for its echo, send the next, until stop_at."""

    def __init__(self, host: str, path: str, frame: bytes, stats: Stats) -> None:
        self.key = base64.b64encode(os.urandom(16))
        self.request = (
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            ).encode()
            + b"Sec-WebSocket-Key: "
            + self.key
            + b"\r\n\r\n"
        )
        self.frame = frame
        self.stats = stats
        self.buffer = bytearray()
        self.upgraded = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.write(self.request)

    def start(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.write(self.frame)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
            del buffer[: end + 4]
            accept = base64.b64encode(hashlib.sha1(self.key + _GUID).digest()).decode()
            fields = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head)}
            if " 101 " not in head[0] + " " or fields.get("sec-websocket-accept") != accept:
                self._fail(f"handshake refused: {head[0]}")
                return
            self.upgraded = True
            if not self.ready.done():
                self.ready.set_result(None)
        while len(buffer) >= 2:
            size = buffer[1] & 0x7F
            offset = 2
            if size == 126:
                if len(buffer) < 4:
                    return
                size, offset = int.from_bytes(buffer[2:4], "big"), 4
            elif size == 127:
                if len(buffer) < 10:
                    return
                size, offset = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < offset + size:
                return
            opcode = buffer[0] & 0x0F
            payload = bytes(buffer[offset : offset + size])
            del buffer[: offset + size]
            if opcode in (0x1, 0x2):
                self._echoed()
            elif opcode == 0x9 and self.transport is not None:  # ping: answer (RFC 6455 5.5.2)
                self.transport.write(masked_frame(payload, 0xA))
            elif opcode == 0x8:
                self.stats.closed += 1
                self._finish()
                return

    def _echoed(self) -> None:
        now = time.perf_counter()
        stats = self.stats
        if now > stats.stop_at:
            self._finish()
            return
        stats.messages += 1
        stats.rtts.append(now - self.sent_at)
        self.sent_at = now
        assert self.transport is not None
        self.transport.write(self.frame)

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def _fail(self, reason: str) -> None:
        self.stats.errors += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        self._finish()
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if not self.ready.done():
                self._fail("connection lost during the handshake")
            else:
                self.stats.errors += 1
                self._finish()


async def run(url: str, connections: int, duration: float, size: int) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path or "/"
    frame = masked_frame(b"w" * size)
    stats = Stats()
    loop = asyncio.get_running_loop()
    clients: list[EchoClient] = []
    for _ in range(connections):
        _, client = await loop.create_connection(
            lambda: EchoClient(f"{host}:{port}", path, frame, stats), host, port
        )
        clients.append(client)
    await asyncio.wait_for(asyncio.gather(*(c.ready for c in clients)), 10)
    started = time.perf_counter()
    stats.stop_at = started + duration
    for client in clients:
        client.start()
    await asyncio.wait_for(asyncio.gather(*(c.done for c in clients)), duration + 10)
    elapsed = min(time.perf_counter(), stats.stop_at) - started
    close = masked_frame((1000).to_bytes(2, "big"), 0x8)
    for client in clients:
        if client.transport is not None and not client.transport.is_closing():
            client.transport.write(close)
            client.transport.close()
    rtts = sorted(stats.rtts)

    def pct(p: float) -> float:
        return rtts[min(len(rtts) - 1, int(len(rtts) * p))] * 1e6 if rtts else 0.0

    return {
        "messages": stats.messages,
        "duration_us": int(elapsed * 1e6),
        "p50_us": int(pct(0.50)),
        "p99_us": int(pct(0.99)),
        "errors": stats.errors,
        "closed": stats.closed,
    }


def run_fast(coro: Coroutine[Any, Any, dict[str, object]]) -> dict[str, object]:
    """Run on uvloop when it is installed (bench/.venv has it)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="ws://HOST:PORT/PATH")
    parser.add_argument("-c", "--connections", type=int, default=16)
    parser.add_argument("-d", "--duration", type=float, default=5.0, help="seconds")
    parser.add_argument("--size", type=int, default=32, help="message bytes (< 126)")
    args = parser.parse_args()
    try:
        result = run_fast(run(args.url, args.connections, args.duration, args.size))
    except (OSError, asyncio.TimeoutError) as exc:
        print(f"wsload: {exc!r}", file=sys.stderr)
        return 1
    print("BENCH_JSON " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
