"""The one internal interface where wire protocols meet application interfaces.

A protocol (HTTP/1.1 today, HTTP/2 later) turns each request into a
:class:`Stream`; an interface (ASGI, WSGI) consumes streams through the methods
below and knows nothing of the protocol that carried them.

Calls are plain methods on the event-loop thread, except those ending in
``_threadsafe`` which WSGI worker threads may call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import IO, Any

from mypy_extensions import mypyc_attr

__all__ = [
    "ClientDisconnected",
    "Handler",
    "RequestHead",
    "Stream",
    "WebSocketClosed",
    "WebSocketHandler",
    "WebSocketStream",
]

Headers = list[tuple[bytes, bytes]]


@mypyc_attr(native_class=False)  # mypyc compiles no subclass of OSError natively
class ClientDisconnected(OSError):
    """The client went away; raised by sends and body reads on a closed stream."""


def socket_address(addr: Any) -> tuple[str, int] | None:
    """A transport's peername/sockname as (host, port); None for unix sockets."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        return (str(addr[0]), int(addr[1]))
    return None


@mypyc_attr(native_class=False)
class WebSocketClosed(ClientDisconnected):
    """The WebSocket is closed; ``code`` and ``reason`` as the peer sent them (1006: none)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"WebSocket closed with code {code}")
        self.code = code
        self.reason = reason


class RequestHead:
    """A parsed request head, as every interface sees it."""

    __slots__ = (
        "client",
        "headers",
        "http_version",
        "method",
        "query_string",
        "raw_path",
        "request_id",
        "root_path",
        "scheme",
        "server",
    )

    def __init__(
        self,
        method: str,
        raw_path: bytes,
        query_string: bytes,
        http_version: str,
        headers: Headers,
        scheme: str,
        client: tuple[str, int] | None,
        server: tuple[str, int | None] | None,
    ) -> None:
        self.method = method
        self.raw_path = raw_path  # percent-encoded, without the query string
        self.query_string = query_string
        self.http_version = http_version  # "1.0", "1.1", "2"
        self.headers = headers  # lowercased names, values as received
        self.scheme = scheme  # "http" or "https"
        self.client = client
        self.server = server
        self.root_path: str | None = None  # set from X-Forwarded-Prefix (trusted proxies)
        self.request_id: str | None = None  # set by --request-id (observe/logs.py)


@mypyc_attr(allow_interpreted_subclasses=True)  # test doubles subclass it
class Stream:
    """One request/response exchange. Protocols subclass this; interfaces call it."""

    __slots__ = ("cancel", "extensions")

    head: RequestHead
    # Protocol extras for the ASGI scope ("extensions"), e.g. TLS details; None for none.
    extensions: dict[str, Any] | None
    # Set by the interface: stops the app for --timeout-request (ASGI: Task.cancel).
    cancel: Callable[[], object] | None

    # -- request body ---------------------------------------------------------
    async def receive_body(self) -> tuple[bytes, bool]:
        """Next chunk of the request body and whether more follows.

        Waits when nothing is buffered. Raises ClientDisconnected if the client
        went away before the body ended. Reading is what lets the protocol read
        more from the client (backpressure) and what sends ``100 Continue``.
        """
        raise NotImplementedError

    async def wait_disconnect(self) -> None:
        """Return once the client has gone away (for ASGI http.disconnect)."""
        raise NotImplementedError

    @property
    def disconnected(self) -> bool:
        raise NotImplementedError

    @property
    def finished(self) -> bool:
        """The response is complete (or was dropped)."""
        raise NotImplementedError

    # -- response -------------------------------------------------------------
    def send_head(self, status: int, headers: Headers) -> None:
        """Start the response. The protocol may hold it to join it to the first body chunk."""
        raise NotImplementedError

    def send_body(self, data: bytes, more: bool) -> None:
        """Queue body bytes; ``more=False`` ends the response. Never blocks."""
        raise NotImplementedError

    async def drain(self) -> None:
        """Wait while the client is slower than the app (write backpressure)."""
        raise NotImplementedError

    @property
    def write_paused(self) -> bool:
        """True when the app should ``await drain()`` before sending more."""
        raise NotImplementedError

    async def send_file(self, file: IO[bytes], offset: int, count: int | None) -> None:
        """Send part of an open file as body bytes (``more=True``); sendfile where possible."""
        raise NotImplementedError

    def send_error(self, status: int) -> bool:
        """Replace a response not yet on the wire by a plain error; False if too late."""
        raise NotImplementedError

    def send_trailers(self, headers: Headers) -> None:
        """End the response with trailer fields (after ``send_body(..., more=True)``)."""
        raise NotImplementedError

    def send_informational(self, status: int, headers: Headers) -> None:
        """A 1xx response (e.g. 103 Early Hints) before the final head."""
        raise NotImplementedError

    def _lost(self) -> None:
        """The protocol ends this exchange: body reads and sends raise ClientDisconnected."""
        raise NotImplementedError

    def expire(self, seconds: float) -> None:
        """--timeout-request passed: 504 (or a close), then stop or abandon the app."""
        head = self.head
        logging.getLogger("threshold.error").error(
            "Request %s %s exceeded timeout_request (%gs); %s",
            head.method,
            head.raw_path.decode("latin-1"),
            seconds,
            "cancelling it" if self.cancel is not None else "abandoning its thread",
        )
        if not self.send_error(504):
            self.abort()
        self._lost()
        if self.cancel is not None:
            self.cancel()

    def abort(self) -> None:
        """Drop the exchange: the app failed after the response started."""
        raise NotImplementedError

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        raise NotImplementedError

    # -- from a worker thread (WSGI) -------------------------------------------
    def take_body_threadsafe(self) -> tuple[bytes, bool] | None:
        """From a worker thread: what ``receive_body`` would return now, without the loop.

        Returns the body bytes already received (or ``(b"", False)`` at the end), or
        None when only ``receive_body`` on the loop can answer: nothing is buffered
        yet, or the protocol keeps its buffer on the loop (this default). Raises
        ClientDisconnected as ``receive_body`` does.
        """
        return None

    def send_more_threadsafe(self, status: int, headers: Headers | None, body: bytes) -> bool:
        """From a worker thread: (the head and) a body block with more to follow, written
        without the loop when the connection can take it at once.

        False when nothing was sent (this default): the caller sends the block on the
        loop (``send_body(body, True)``, then ``drain()``). True when the block is sent
        or handed to the loop in order; a later block then finds the connection busy
        until the loop has written it, so a slow client still stops the caller.
        """
        return False

    def send_threadsafe(
        self, status: int, headers: Headers | None, body: bytes, more: bool
    ) -> None:
        """Send (head and) body from a worker thread without waiting for the loop."""
        self.loop.call_soon_threadsafe(self._send_from_thread, status, headers, body, more)

    def _send_from_thread(
        self, status: int, headers: Headers | None, body: bytes, more: bool
    ) -> None:
        if self.disconnected or self.finished:
            return
        try:
            if headers is not None:
                self.send_head(status, headers)
            self.send_body(body, more)
        except ClientDisconnected:
            pass
        except (ValueError, RuntimeError):
            logging.getLogger("threshold.error").exception("invalid response from the app")
            if not self.send_error(500):
                self.abort()


class WebSocketStream:
    """One WebSocket (RFC 6455), before and after its handshake. Protocols subclass this."""

    head: RequestHead
    subprotocols: list[str]  # offered by the client, in order
    # For an HTTP answer instead of the handshake (ASGI websocket.http.response).
    http: Stream
    cancel: Callable[[], object] | None = None  # set by the interface
    extensions: dict[str, Any] | None = None

    async def accept(self, subprotocol: str | None, headers: Headers) -> None:
        """Complete the handshake (101) with the app's subprotocol and extra headers."""
        raise NotImplementedError

    async def receive(self) -> str | bytes:
        """The next whole message; raises WebSocketClosed when the socket is closed."""
        raise NotImplementedError

    async def send(self, data: str | bytes) -> None:
        """Send a message (waits while the client is slow); ClientDisconnected if closed."""
        raise NotImplementedError

    async def close(self, code: int, reason: str) -> None:
        """Start the closing handshake."""
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


Handler = Callable[[Stream], None]
"""What an interface gives a protocol: called once per request on the loop thread."""

WebSocketHandler = Callable[[WebSocketStream], None]
"""Called once per WebSocket handshake request; None when the app cannot serve them."""
