"""Prometheus metrics shared across workers, and the /metrics, /healthz, /readyz listener.

Each process writes its own slot of a shared memory block (an anonymous mmap
made before the workers are forked): counters survive a worker's replacement
(its successor takes the slot over), gauges are republished once a second. The
listener (in the master when supervised) sums the slots when scraped. Nothing
here runs unless ``--metrics-bind`` is set; the per-request cost is a few
array updates in the response-complete hook.
"""

from __future__ import annotations

import logging
import mmap
import threading
from bisect import bisect_left
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger("threshold.error")

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "OTHER")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
PROTOCOLS = ("1.0", "1.1", "2")
BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LIMITS = (408, 413, 414, 431, 503, 504)
CONNECTION_KINDS = ("http1", "http2", "websocket")
INTERFACES = ("asgi3", "asgi2", "wsgi")

# Slot layout (float64 each).
_REQUESTS = 0
_N_REQUESTS = len(METHODS) * len(STATUS_CLASSES) * len(PROTOCOLS)
_HIST = _REQUESTS + _N_REQUESTS  # len(BUCKETS) + 1 buckets (+Inf), then sum
_HIST_SUM = _HIST + len(BUCKETS) + 1
_BYTES_IN = _HIST_SUM + 1
_BYTES_OUT = _BYTES_IN + 1
_IN_FLIGHT = _BYTES_OUT + 1  # gauge: started, not yet ended (published each second)
_LIMITS = _IN_FLIGHT + 1
_CONNECTIONS = _LIMITS + len(LIMITS)  # gauges
_WEBSOCKETS = _CONNECTIONS + len(CONNECTION_KINDS)  # sessions opened (counter)
_RESTARTS = _WEBSOCKETS + 1  # master only
_HEARTBEAT_MISSES = _RESTARTS + 1  # master only
_READY = _HEARTBEAT_MISSES + 1  # gauge: 1 when serving and not draining
_INTERFACE = _READY + 1  # 1 + index in INTERFACES of the app served (0: none)
_ABORTED = _INTERFACE + 1  # requests that ended without completing a response
SLOT_FIELDS = _ABORTED + 1
SLOT_BYTES = SLOT_FIELDS * 8

# The request counter of (method, status class, protocol) is at
# _METHOD_BASE[method] + _CLASS_OFFSET[status // 100] + _PROTOCOL_INDEX[protocol]:
# lookups and a tuple index rather than min()/max() calls, on the hot path.
_METHOD_BASE = {name: i * len(STATUS_CLASSES) * len(PROTOCOLS) for i, name in enumerate(METHODS)}
_OTHER_BASE = _METHOD_BASE["OTHER"]
_CLASS_OFFSET = tuple(min(max(c - 1, 0), 4) * len(PROTOCOLS) for c in range(10))
_CLASS_5XX = _CLASS_OFFSET[-1]
_PROTOCOL_INDEX = {name: i for i, name in enumerate(PROTOCOLS)}


class SharedMetrics:
    """Slots of float64 counters in one shared anonymous mmap (slot 0: the master)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, slots * SLOT_BYTES)
        self._view: Any = memoryview(self._map).cast("d")

    def slot(self, index: int) -> WorkerMetrics:
        return WorkerMetrics(self._view[index * SLOT_FIELDS : (index + 1) * SLOT_FIELDS])

    def totals(self) -> list[float]:
        view = self._view
        total = [0.0] * SLOT_FIELDS
        for slot in range(self.slots):
            base = slot * SLOT_FIELDS
            for i in range(SLOT_FIELDS):
                total[i] += view[base + i]
        return total

    def interface(self) -> str:
        """The interface a worker detected (the master does not load the app)."""
        view = self._view
        for slot in range(self.slots):
            index = int(view[slot * SLOT_FIELDS + _INTERFACE])
            if index:
                return INTERFACES[index - 1]
        return ""


class WorkerMetrics:
    """One process's slot; ``observe`` runs once per completed response."""

    __slots__ = ("base", "local", "lock", "view")

    def __init__(self, view: Any) -> None:
        self.view: Any = view
        self.lock: threading.Lock | None = None  # set when WSGI threads observe too
        self.base = 0.0  # requests the slot's earlier processes ended
        # Per-response counts go to a plain list and reach shared memory once a second
        # (flush, from the server's tick): a list item costs a fraction of a shared
        # float64 through a memoryview (callgrind: ~10k instructions per response).
        self.local = [0.0] * SLOT_FIELDS

    def flush(self) -> None:
        """Move the counts gathered since the last tick into the shared slot."""
        lock = self.lock
        if lock is not None:
            lock.acquire()
        try:
            view, local = self.view, self.local
            for i, value in enumerate(local):
                if value:
                    view[i] += value
                    local[i] = 0.0
        finally:
            if lock is not None:
                lock.release()

    def start(self, interface: str = "") -> None:
        """A new process took the slot over (or its process died): counters carry on,
        gauges restart, and requests the dead process left unanswered are no longer
        in flight (this process counts its starts on top of what the slot ended)."""
        view = self.view
        for i in range(_CONNECTIONS, _CONNECTIONS + len(CONNECTION_KINDS)):
            view[i] = 0.0
        view[_READY] = 0.0
        view[_INTERFACE] = INTERFACES.index(interface) + 1 if interface in INTERFACES else 0
        self.base = self._ended()
        view[_IN_FLIGHT] = 0.0

    def _ended(self) -> float:
        self.flush()
        view = self.view
        return float(sum(view[_REQUESTS : _REQUESTS + _N_REQUESTS]) + view[_ABORTED])

    def observe(
        self, method: str, http_version: str, status: int, sent: int, received: int, duration: float
    ) -> None:
        # One frame and no builtin calls but bisect: this runs for every response.
        lock = self.lock
        if lock is not None:
            lock.acquire()
        try:
            local = self.local
            index = _METHOD_BASE.get(method, _OTHER_BASE) + _PROTOCOL_INDEX.get(http_version, 1)
            index += _CLASS_OFFSET[status // 100] if 0 <= status < 1000 else _CLASS_5XX
            local[index] += 1.0
            local[_HIST + bisect_left(BUCKETS, duration)] += 1.0
            local[_HIST_SUM] += duration
            local[_BYTES_OUT] += sent
            local[_BYTES_IN] += received
        finally:
            if lock is not None:
                lock.release()

    def limit_hit(self, status: int) -> None:
        """A request refused by the server, not the app (408, 413, 414, 431, 503, 504)."""
        if status in LIMITS:
            self.view[_LIMITS + LIMITS.index(status)] += 1.0

    def publish(self, started: int, connections: dict[str, int], ready: bool) -> None:
        view = self.view
        # Started and ended read at one instant: the ended counters move between ticks.
        view[_IN_FLIGHT] = max(self.base + started - self._ended(), 0.0)
        for i, kind in enumerate(CONNECTION_KINDS):
            view[_CONNECTIONS + i] = connections.get(kind, 0)
        view[_READY] = 1.0 if ready else 0.0

    def aborted(self) -> None:
        """A request ended without a complete response (client gone, app failed mid-way)."""
        self.view[_ABORTED] += 1.0

    def websocket_opened(self) -> None:
        self.view[_WEBSOCKETS] += 1.0

    def worker_restarted(self) -> None:
        self.view[_RESTARTS] += 1.0

    def heartbeat_missed(self) -> None:
        self.view[_HEARTBEAT_MISSES] += 1.0


def render(total: list[float], interface: str) -> str:
    """Prometheus text exposition format 0.0.4 of the summed slots."""
    lines = [
        "# HELP threshold_requests_total Responses completed.",
        "# TYPE threshold_requests_total counter",
    ]
    for mi, method in enumerate(METHODS):
        for ci, cls in enumerate(STATUS_CLASSES):
            for pi, proto in enumerate(PROTOCOLS):
                value = total[(mi * len(STATUS_CLASSES) + ci) * len(PROTOCOLS) + pi]
                if value:
                    lines.append(
                        f'threshold_requests_total{{method="{method}",status="{cls}",'
                        f'protocol="{proto}",interface="{interface}"}} {value:.0f}'
                    )
    lines += [
        "# HELP threshold_requests_aborted_total Requests ended without a complete response.",
        "# TYPE threshold_requests_aborted_total counter",
        f"threshold_requests_aborted_total {total[_ABORTED]:.0f}",
        "# HELP threshold_requests_in_flight Requests started and not yet answered.",
        "# TYPE threshold_requests_in_flight gauge",
        f"threshold_requests_in_flight {total[_IN_FLIGHT]:.0f}",
        "# HELP threshold_request_duration_seconds Time from request head to response end.",
        "# TYPE threshold_request_duration_seconds histogram",
    ]
    cumulative = 0.0
    for i, bound in enumerate(BUCKETS):
        cumulative += total[_HIST + i]
        lines.append(f'threshold_request_duration_seconds_bucket{{le="{bound}"}} {cumulative:.0f}')
    cumulative += total[_HIST + len(BUCKETS)]
    lines += [
        f'threshold_request_duration_seconds_bucket{{le="+Inf"}} {cumulative:.0f}',
        f"threshold_request_duration_seconds_sum {total[_HIST_SUM]:.6f}",
        f"threshold_request_duration_seconds_count {cumulative:.0f}",
        "# HELP threshold_request_bytes_total Request body bytes received.",
        "# TYPE threshold_request_bytes_total counter",
        f"threshold_request_bytes_total {total[_BYTES_IN]:.0f}",
        "# HELP threshold_response_bytes_total Response body bytes sent.",
        "# TYPE threshold_response_bytes_total counter",
        f"threshold_response_bytes_total {total[_BYTES_OUT]:.0f}",
        "# HELP threshold_open_connections Open connections by protocol.",
        "# TYPE threshold_open_connections gauge",
    ]
    for i, kind in enumerate(CONNECTION_KINDS):
        lines.append(
            f'threshold_open_connections{{protocol="{kind}"}} {total[_CONNECTIONS + i]:.0f}'
        )
    lines += [
        "# HELP threshold_websocket_sessions_total WebSocket handshakes accepted.",
        "# TYPE threshold_websocket_sessions_total counter",
        f"threshold_websocket_sessions_total {total[_WEBSOCKETS]:.0f}",
        "# HELP threshold_limit_hits_total Requests refused by a limit, by status.",
        "# TYPE threshold_limit_hits_total counter",
    ]
    for i, status in enumerate(LIMITS):
        lines.append(f'threshold_limit_hits_total{{status="{status}"}} {total[_LIMITS + i]:.0f}')
    lines += [
        "# HELP threshold_worker_restarts_total Workers replaced after dying or hanging.",
        "# TYPE threshold_worker_restarts_total counter",
        f"threshold_worker_restarts_total {total[_RESTARTS]:.0f}",
        "# HELP threshold_worker_heartbeat_misses_total Workers killed for a silent event loop.",
        "# TYPE threshold_worker_heartbeat_misses_total counter",
        f"threshold_worker_heartbeat_misses_total {total[_HEARTBEAT_MISSES]:.0f}",
        "# HELP threshold_ready_workers Workers serving and not draining.",
        "# TYPE threshold_ready_workers gauge",
        f"threshold_ready_workers {total[_READY]:.0f}",
    ]
    return "\n".join(lines) + "\n"


class MetricsServer:
    """``--metrics-bind``: /metrics, /healthz (alive), /readyz (ready, not draining)."""

    def __init__(
        self,
        address: tuple[str, int],
        shared: SharedMetrics,
        interface: Callable[[], str],
        ready: Callable[[], bool],
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            server_version = "threshold-metrics"

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = render(shared.totals(), interface()).encode()
                    self._reply(200, body, "text/plain; version=0.0.4; charset=utf-8")
                elif path == "/healthz":
                    self._reply(200, b"ok\n", "text/plain; charset=utf-8")
                elif path == "/readyz":
                    if ready():
                        self._reply(200, b"ready\n", "text/plain; charset=utf-8")
                    else:
                        self._reply(503, b"not ready\n", "text/plain; charset=utf-8")
                else:
                    self._reply(404, b"not found\n", "text/plain; charset=utf-8")

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("metrics: " + format, *args)

        self.httpd = ThreadingHTTPServer(address, Handler)
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="threshold-metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        host, port = self.address[:2]
        logger.info("Metrics on http://%s:%s/metrics", host, port)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
