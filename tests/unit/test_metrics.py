"""The metrics slots, their Prometheus rendering and the metrics listener, in one process.

Rendered text is parsed twice: by ``prometheus_client``'s parser (what a scraper
accepts) and by the strict checks below (one TYPE per family, before its samples;
no repeated series; cumulative histogram buckets ending in +Inf == _count).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from threshold.observe.metrics import (
    BUCKETS,
    LIMITS,
    MetricsServer,
    SharedMetrics,
    render,
)

SAMPLE = re.compile(
    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"(?:\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*=\"[^\"\\\n]*\""
    r"(?:,[a-zA-Z_][a-zA-Z0-9_]*=\"[^\"\\\n]*\")*)\})?"
    r" (?P<value>[-+]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|\+Inf|-Inf|NaN))"
)
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[dict[str, str], Series]:
    """Strictly parse exposition format 0.0.4: ({family: type}, {(name, labels): value})."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    types: dict[str, str] = {}
    helps: set[str] = set()
    series: Series = {}
    for number, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {number}: {line!r}"
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helps, f"second HELP, {where}"
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in TYPES, where
            assert name not in types, f"second TYPE, {where}"
            types[name] = kind
        else:
            match = SAMPLE.fullmatch(line)
            assert match, f"not a sample, {where}"
            name = match["name"]
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            if types.get(family) != "histogram":
                family = name
            assert family in types, f"sample before its TYPE, {where}"
            labels = tuple(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"', match["labels"] or ""))
            key = (name, labels)
            assert key not in series, f"repeated series, {where}"
            series[key] = float(match["value"])
    for family, kind in types.items():
        if kind != "histogram":
            continue
        buckets = [(k[1], v) for k, v in series.items() if k[0] == family + "_bucket"]
        values = [v for _, v in buckets]
        assert values == sorted(values), f"{family} buckets are not cumulative"
        assert buckets[-1][0] == (("le", "+Inf"),), f"{family} does not end with +Inf"
        assert values[-1] == series[(family + "_count", ())]
    return types, series


def value(series: Series, name: str, **labels: str) -> float:
    return series[(name, tuple(labels.items()))]


def requests(series: Series) -> dict[tuple[str, str, str], float]:
    out = {}
    for (name, labels), count in series.items():
        if name == "threshold_requests_total":
            got = dict(labels)
            out[(got["method"], got["status"], got["protocol"])] = count
    return out


def scrape(shared: SharedMetrics, interface: str = "asgi3") -> Series:
    text = render(shared.totals(), interface)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["threshold_request_duration_seconds"].type == "histogram"
    assert families["threshold_requests"].type == "counter"
    assert families["threshold_requests_in_flight"].type == "gauge"
    return parse(text)[1]


@pytest.fixture
def shared() -> Iterator[SharedMetrics]:
    metrics = SharedMetrics(3)
    yield metrics


def test_observe_counts_by_method_status_class_and_protocol(shared: SharedMetrics) -> None:
    slot = shared.slot(1)
    slot.start()
    slot.observe("GET", "1.1", 200, 10, 0, 0.002)
    slot.observe("GET", "1.1", 204, 0, 0, 0.002)
    slot.observe("POST", "2", 404, 5, 100, 0.002)
    slot.observe("BREW", "1.0", 503, 0, 0, 0.002)  # an unknown method is OTHER
    slot.observe("DELETE", "1.1", 101, 0, 0, 0.002)
    slot.observe("PUT", "1.1", 599, 0, 0, 0.002)
    slot.flush()  # per-response counts reach shared memory each tick
    series = scrape(shared)
    assert requests(series) == {
        ("GET", "2xx", "1.1"): 2,
        ("POST", "4xx", "2"): 1,
        ("OTHER", "5xx", "1.0"): 1,
        ("DELETE", "1xx", "1.1"): 1,
        ("PUT", "5xx", "1.1"): 1,
    }
    interfaces = {dict(labels)["interface"] for name, labels in series if "method" in dict(labels)}
    assert interfaces == {"asgi3"}
    assert value(series, "threshold_request_bytes_total") == 100
    assert value(series, "threshold_response_bytes_total") == 15


def test_duration_buckets_are_cumulative_with_inclusive_bounds(shared: SharedMetrics) -> None:
    slot = shared.slot(0)
    durations = [0.0, 0.001, 0.0011, 0.005, 0.3, 2.5, 9.99, 10.0, 10.5, 3600.0]
    for duration in durations:
        slot.observe("GET", "1.1", 200, 0, 0, duration)
        slot.flush()  # per-response counts reach shared memory each tick
    series = scrape(shared)
    for bound in BUCKETS:
        expected = sum(1 for d in durations if d <= bound)
        assert value(series, "threshold_request_duration_seconds_bucket", le=str(bound)) == (
            expected
        ), bound
    assert value(series, "threshold_request_duration_seconds_bucket", le="+Inf") == len(durations)
    assert value(series, "threshold_request_duration_seconds_count") == len(durations)
    assert value(series, "threshold_request_duration_seconds_sum") == pytest.approx(sum(durations))


def test_limit_hits_count_only_the_servers_own_refusals(shared: SharedMetrics) -> None:
    slot = shared.slot(1)
    for status in (*LIMITS, 431, 400, 500):  # 400 and 500 are no limits
        slot.limit_hit(status)
    # The app answering 503 or 413 itself is a response like any other, not a limit.
    slot.observe("GET", "1.1", 503, 0, 0, 0.01)
    slot.observe("POST", "1.1", 413, 0, 0, 0.01)
    slot.flush()  # per-response counts reach shared memory each tick
    series = scrape(shared)
    hits = {s: value(series, "threshold_limit_hits_total", status=str(s)) for s in LIMITS}
    assert hits == {408: 1, 413: 1, 414: 1, 431: 2, 503: 1, 504: 1}
    assert requests(series) == {("GET", "5xx", "1.1"): 1, ("POST", "4xx", "1.1"): 1}


def test_empty_slots_render_valid_text_with_every_family(shared: SharedMetrics) -> None:
    types, series = parse(render(shared.totals(), "wsgi"))
    assert types == {
        "threshold_requests_total": "counter",
        "threshold_requests_aborted_total": "counter",
        "threshold_requests_in_flight": "gauge",
        "threshold_request_duration_seconds": "histogram",
        "threshold_request_bytes_total": "counter",
        "threshold_response_bytes_total": "counter",
        "threshold_open_connections": "gauge",
        "threshold_websocket_sessions_total": "counter",
        "threshold_limit_hits_total": "counter",
        "threshold_worker_restarts_total": "counter",
        "threshold_worker_heartbeat_misses_total": "counter",
        "threshold_ready_workers": "gauge",
    }
    assert requests(series) == {}
    assert value(series, "threshold_request_duration_seconds_count") == 0
    assert value(series, "threshold_ready_workers") == 0
    assert list(text_string_to_metric_families(render(shared.totals(), "wsgi")))


def test_slots_sum_and_master_counters(shared: SharedMetrics) -> None:
    master, one, two = shared.slot(0), shared.slot(1), shared.slot(2)
    for worker in (one, two):
        worker.start()
        worker.observe("GET", "1.1", 200, 7, 3, 0.01)
        worker.flush()  # per-response counts reach shared memory each tick
        worker.websocket_opened()
        worker.publish(1, {"http1": 2, "websocket": 1}, True)
    master.worker_restarted()
    master.worker_restarted()
    master.heartbeat_missed()
    series = scrape(shared)
    assert requests(series) == {("GET", "2xx", "1.1"): 2}
    assert value(series, "threshold_response_bytes_total") == 14
    assert value(series, "threshold_request_bytes_total") == 6
    assert value(series, "threshold_websocket_sessions_total") == 2
    assert value(series, "threshold_open_connections", protocol="http1") == 4
    assert value(series, "threshold_open_connections", protocol="http2") == 0
    assert value(series, "threshold_open_connections", protocol="websocket") == 2
    assert value(series, "threshold_ready_workers") == 2
    assert value(series, "threshold_requests_in_flight") == 0
    assert value(series, "threshold_worker_restarts_total") == 2
    assert value(series, "threshold_worker_heartbeat_misses_total") == 1


def test_counters_survive_a_new_process_on_the_slot_and_gauges_restart(
    shared: SharedMetrics,
) -> None:
    old = shared.slot(1)
    old.start()
    for _ in range(3):
        old.observe("GET", "1.1", 200, 2, 1, 0.01)
        old.flush()  # per-response counts reach shared memory each tick
    old.websocket_opened()
    old.limit_hit(431)
    old.publish(5, {"http1": 4, "http2": 1}, True)  # 5 started, 3 answered: 2 in flight
    series = scrape(shared)
    assert value(series, "threshold_requests_in_flight") == 2
    assert value(series, "threshold_ready_workers") == 1

    # The process died with its 2 requests; its successor takes the slot over.
    new = shared.slot(1)
    new.start()
    series = scrape(shared)
    assert requests(series) == {("GET", "2xx", "1.1"): 3}
    assert value(series, "threshold_request_duration_seconds_count") == 3
    assert value(series, "threshold_response_bytes_total") == 6
    assert value(series, "threshold_websocket_sessions_total") == 1
    assert value(series, "threshold_limit_hits_total", status="431") == 1
    assert value(series, "threshold_open_connections", protocol="http1") == 0
    assert value(series, "threshold_open_connections", protocol="http2") == 0
    assert value(series, "threshold_ready_workers") == 0
    assert value(series, "threshold_requests_in_flight") == 0  # the dead requests are gone

    # The successor counts its own requests from 0: one started, not yet answered.
    new.publish(1, {"http1": 1}, True)
    series = scrape(shared)
    assert value(series, "threshold_requests_in_flight") == 1
    new.observe("GET", "1.1", 200, 2, 1, 0.01)
    new.flush()  # per-response counts reach shared memory each tick
    new.publish(1, {"http1": 1}, True)
    assert value(scrape(shared), "threshold_requests_in_flight") == 0
    assert requests(scrape(shared)) == {("GET", "2xx", "1.1"): 4}


def test_aborted_requests_leave_the_in_flight_gauge(shared: SharedMetrics) -> None:
    slot = shared.slot(1)
    slot.start()
    slot.observe("GET", "1.1", 200, 0, 0, 0.01)
    slot.flush()  # per-response counts reach shared memory each tick
    slot.aborted()  # e.g. the client left before the response
    slot.publish(4, {}, True)  # 4 started: 1 answered, 1 aborted
    series = scrape(shared)
    assert value(series, "threshold_requests_in_flight") == 2
    assert value(series, "threshold_requests_aborted_total") == 1
    assert requests(series) == {("GET", "2xx", "1.1"): 1}  # an abort is no response
    successor = shared.slot(1)
    successor.start()  # the 2 left in flight died with the process
    series = scrape(shared)
    assert value(series, "threshold_requests_in_flight") == 0
    assert value(series, "threshold_requests_aborted_total") == 1
    successor.publish(1, {}, True)
    assert value(scrape(shared), "threshold_requests_in_flight") == 1


def test_in_flight_is_a_snapshot_that_busy_seconds_do_not_zero(shared: SharedMetrics) -> None:
    # Published once a second with the counts of that instant: responses completed
    # between two ticks must not cancel out requests still in flight.
    slot = shared.slot(1)
    slot.start()
    for _ in range(90):
        slot.observe("GET", "1.1", 200, 0, 0, 0.001)
        slot.flush()  # per-response counts reach shared memory each tick
    slot.publish(100, {"http1": 64}, True)
    for _ in range(500):  # a busy second: hundreds more start and complete
        slot.observe("GET", "1.1", 200, 0, 0, 0.001)
        slot.flush()  # per-response counts reach shared memory each tick
    assert value(scrape(shared), "threshold_requests_in_flight") == 10
    slot.publish(610, {"http1": 64}, True)
    assert value(scrape(shared), "threshold_requests_in_flight") == 20


def test_interface_comes_from_the_serving_slots(shared: SharedMetrics) -> None:
    assert shared.interface() == ""
    shared.slot(2).start("wsgi")
    assert shared.interface() == "wsgi"


def test_a_forked_process_writes_its_slot_into_the_parents_totals(shared: SharedMetrics) -> None:
    pid = os.fork()
    if pid == 0:  # the child: a worker
        code = 1
        try:
            slot = shared.slot(2)
            slot.start()
            slot.observe("PATCH", "2", 201, 11, 22, 0.02)
            slot.flush()  # per-response counts reach shared memory each tick
            slot.publish(1, {"http2": 1}, True)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    series = scrape(shared)
    assert requests(series) == {("PATCH", "2xx", "2"): 1}
    assert value(series, "threshold_open_connections", protocol="http2") == 1
    assert value(series, "threshold_request_bytes_total") == 22


def _get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_metrics_server_answers_metrics_and_probes(shared: SharedMetrics) -> None:
    ready = [False]
    server = MetricsServer(("127.0.0.1", 0), shared, lambda: "asgi2", lambda: ready[0])
    server.start()
    try:
        port = server.address[1]
        slot = shared.slot(1)
        slot.observe("GET", "1.1", 200, 1, 0, 0.01)
        slot.flush()
        status, headers, body = _get(port, "/metrics?x=1")
        assert status == 200
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert int(headers["content-length"]) == len(body)
        series = parse(body.decode())[1]
        assert requests(series) == {("GET", "2xx", "1.1"): 1}
        assert 'interface="asgi2"' in body.decode()
        assert _get(port, "/healthz")[0] == 200
        assert _get(port, "/readyz")[0] == 503
        ready[0] = True
        assert _get(port, "/readyz")[:3:2] == (200, b"ready\n")
        assert _get(port, "/other")[0] == 404
    finally:
        server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
