"""ServerContext: what every connection of one worker shares with its server.

The server owns it and refreshes it once a second (the Date header, the clock
used for idle timeouts); protocols read it and register their connections in it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING, Protocol

from threshold.config import Config
from threshold.stream import Handler, WebSocketHandler

if TYPE_CHECKING:
    from threshold.observe.metrics import WorkerMetrics
    from threshold.stream import Stream


class Connection(Protocol):
    """What the server needs of any protocol connection (HTTP/1.1, HTTP/2...)."""

    def shutdown(self) -> None:
        """Stop taking requests: close now if idle, else after the current response."""

    def on_tick(self, now: float) -> None:
        """Called once a second; enforce idle timeouts."""

    def abort(self) -> None:
        """Close immediately (graceful timeout expired)."""


AccessLog = Callable[["Stream", int, int, float], None]
"""(stream, status, body bytes sent, duration in seconds) -> None."""


class ServerContext:
    __slots__ = (
        "access_log",
        "body_timeout",
        "config",
        "connections",
        "default_headers",
        "handler",
        "header_timeout",
        "keep_alive_timeout",
        "limit_field_size",
        "limit_fields",
        "limit_line",
        "max_body_size",
        "metrics",
        "now",
        "requests",
        "send_timeout",
        "shutting_down",
        "threaded",
        "timeout_request",
        "tls_server_cert",
        "ws_handler",
    )

    def __init__(
        self,
        config: Config,
        handler: Handler,
        access_log: AccessLog | None,
        ws_handler: WebSocketHandler | None = None,
    ) -> None:
        self.config = config
        self.handler = handler
        self.ws_handler = ws_handler
        self.tls_server_cert: str | None = None  # PEM, for the ASGI tls extension
        self.threaded = False  # apps run in threads that may write responses themselves
        self.metrics: WorkerMetrics | None = None  # --metrics-bind
        self.access_log = access_log
        self.connections: set[Connection] = set()
        self.shutting_down = False
        self.requests = 0  # served by this worker (for --max-requests)
        # Limits copied out of the config: read on every request.
        self.limit_line = config.limit_request_line
        self.limit_fields = config.limit_request_fields
        self.limit_field_size = config.limit_request_field_size
        self.max_body_size = config.max_body_size
        self.header_timeout = config.header_timeout
        self.body_timeout = config.body_timeout
        self.keep_alive_timeout = config.keep_alive_timeout
        self.send_timeout = config.send_timeout
        self.timeout_request = config.timeout_request
        self.now = time.monotonic()
        self.default_headers = b""
        self.refresh()

    def refresh(self) -> None:
        """Once a second: the clock and the prebuilt Date/Server header bytes."""
        self.now = time.monotonic()
        parts = []
        if self.config.date_header:
            parts.append(b"date: " + formatdate(usegmt=True).encode("ascii") + b"\r\n")
        if self.config.server_header:
            parts.append(b"server: threshold\r\n")
        self.default_headers = b"".join(parts)
