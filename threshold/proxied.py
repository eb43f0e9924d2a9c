"""Accepting connections that start with a PROXY protocol prelude (``--proxy-protocol``).

The prelude is read off the raw socket (peeked, then consumed exactly) before
asyncio takes the connection, so it works in front of TLS as well as cleartext.
Only peers in ``--forwarded-allow-ips`` may send it; a missing, malformed or slow
prelude (``--header-timeout``) closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from threshold.forwarded import TrustedProxies
from threshold.protocols.proxy import V1_MAX, V2_MAX_BODY, ProxyHeader, ProxyProtocolError, parse

logger = logging.getLogger("threshold.error")

PEEK_MAX = max(V1_MAX, 16 + V2_MAX_BODY)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    future: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not future.done():
            future.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await future
    finally:
        loop.remove_reader(fd)


async def read_prelude(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, versions: str
) -> ProxyHeader:
    """Peek until a whole prelude is there, then consume exactly its bytes."""
    while True:
        await _readable(loop, sock)
        data = sock.recv(PEEK_MAX, socket.MSG_PEEK)
        if not data:
            raise ProxyProtocolError("connection closed before the PROXY header")
        header = parse(data, versions)
        if header is not None:
            remaining = header.length
            while remaining:
                remaining -= len(sock.recv(remaining))
            return header
        await asyncio.sleep(0.01)  # a prelude split across segments: wait for the rest


class ProxiedAcceptor:
    """Accept on a listening socket; read each prelude; then hand the socket over."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        versions: str,
        trusted: TrustedProxies,
        timeout: float,
        start: Callable[[socket.socket, ProxyHeader], asyncio.Future[object] | object],
    ) -> None:
        self.loop = loop
        self.versions = versions
        self.trusted = trusted
        self.timeout = timeout
        self.start = start
        self.tasks: set[asyncio.Task[None]] = set()

    async def serve(self, listener: socket.socket) -> None:
        loop = self.loop
        while True:
            try:
                conn, address = await loop.sock_accept(listener)
            except OSError as exc:
                if listener.fileno() < 0:
                    return  # closed at shutdown
                logger.debug("accept failed: %s", exc)
                await asyncio.sleep(0.01)
                continue
            task = loop.create_task(self._connection(conn, address))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _connection(self, conn: socket.socket, address: object) -> None:
        conn.setblocking(False)
        peer = address[0] if isinstance(address, tuple) else None
        if peer not in self.trusted:
            logger.debug("PROXY header from untrusted peer %s refused", peer)
            conn.close()
            return
        try:
            header = await asyncio.wait_for(
                read_prelude(self.loop, conn, self.versions), self.timeout
            )
        except (ProxyProtocolError, TimeoutError, OSError) as exc:
            logger.debug("bad PROXY header from %s: %s", peer, exc)
            conn.close()
            return
        try:
            started = self.start(conn, header)
            if isinstance(started, asyncio.Future) or asyncio.iscoroutine(started):
                await started
        except (OSError, ConnectionError) as exc:  # e.g. a failed TLS handshake
            logger.debug("connection from %s failed after the PROXY header: %s", peer, exc)
            conn.close()
