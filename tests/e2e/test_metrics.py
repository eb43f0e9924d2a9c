"""--metrics-bind with real processes: /metrics summed over workers, /healthz, /readyz.

Every test starts `python -m threshold` (one process, or a master with `-w 2`) on
ephemeral ports, reads the metrics port from its "Metrics on" line and scrapes it
with a real client. Counters are written as responses complete but gauges are
published once a second, so a test polls /metrics until what it expects shows up
(bounded) and then asserts on that scrape. The app under test is ``app`` below.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect as ws_connect

from tests.conftest import ROOT
from tests.stderr_log import StderrLog

APP = "tests.e2e.test_metrics:app"
WAIT = 10.0  # bound on any single wait (a log line, a scrape showing a value)
READY = r"Worker (\d+) ready"
LISTENING = re.compile(r"Listening on http://[^:]+:(\d+)")
METRICS_ON = re.compile(r"Metrics on http://[^:]+:(\d+)/metrics")
N = 200  # requests in the counting test

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


# -- the app ---------------------------------------------------------------------------


def _say(text: str) -> None:
    sys.stderr.write(f"app: {text} {os.getpid()}\n")
    sys.stderr.flush()


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """/status?N answers N; /hold?FILE waits for FILE; /block?S blocks the loop S seconds;
    /upload says it is reading, then reads. A body is echoed, else "ok"; x-pid says who."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        if scope["path"] == "/deny":
            await send({"type": "websocket.close"})  # before accepting: a 403 response
            return
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text") or ""})
    path, query = scope["path"], unquote(scope["query_string"].decode())
    if path == "/upload":
        _say("reading")
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        more = message.get("more_body", False)
    status = int(query) if path == "/status" else 200
    if path == "/hold":
        _say("holding")
        deadline = time.monotonic() + 20
        while not os.path.exists(query) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    elif path == "/block":
        _say("blocking")
        time.sleep(float(query))  # on purpose: the loop stops, and so does the heartbeat
    headers = [(b"content-type", b"text/plain"), (b"x-pid", str(os.getpid()).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body or b"ok"})


# -- a server process ---------------------------------------------------------------


class Threshold(StderrLog):
    """A running `python -m threshold` and its stderr, line by line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        super().__init__(proc, WAIT)

    @property
    def port(self) -> int:
        return int(self.wait_for(LISTENING.pattern)[0].group(1))

    @property
    def metrics_port(self) -> int:
        return int(self.wait_for(METRICS_ON.pattern)[-1].group(1))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    for key in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID"):
        env.pop(key, None)
    return env


@contextmanager
def start(*args: str, cwd: Path, workers: int = 1, wait: bool = True) -> Iterator[Threshold]:
    """Run threshold APP ARGS with metrics on an ephemeral port; wait until it serves.

    With ``workers`` > 1 (a master), waits for that many "Worker N ready" lines; with
    ``wait`` false, for nothing. Always stops the process group it started (TERM, KILL).
    """
    cmd = [sys.executable, "-m", "threshold", APP, "-w", str(workers), "--no-access-log"]
    if "--metrics-bind" not in args:
        cmd += ["--metrics-bind", "127.0.0.1:0"]
    cmd += [*args, "--bind", "127.0.0.1:0"]
    proc = subprocess.Popen(
        cmd,
        cwd=str(cwd),  # a SIGABRTed worker may leave a core file: keep it in tmp
        env=_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    server = Threshold(proc)
    try:
        if wait and workers > 1:
            server.wait_for(READY, workers)
        elif wait:
            server.wait_for(LISTENING.pattern)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a worker left behind, if any
        except ProcessLookupError:
            pass
        server._reader.join(WAIT)


# -- scraping ---------------------------------------------------------------------------


def scrape(port: int) -> Series:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    series: Series = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            series[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return series


def total(series: Series, name: str, **labels: str) -> float:
    """The sum of NAME's samples that carry LABELS (all of them when none are given)."""
    want = set(labels.items())
    return sum(v for (n, have), v in series.items() if n == name and want <= have)


def by_labels(series: Series) -> dict[tuple[str, str, str], float]:
    out = {}
    for (name, labels), count in series.items():
        if name == "threshold_requests_total":
            got = dict(labels)
            out[(got["method"], got["status"], got["protocol"])] = count
    return out


def poll(port: int, done: Callable[[Series], bool], timeout: float = WAIT) -> Series:
    """Scrape until ``done`` holds or the deadline passes; return the last scrape."""
    deadline = time.monotonic() + timeout
    while True:
        series = scrape(port)
        if done(series) or time.monotonic() > deadline:
            return series
        time.sleep(0.05)  # the scrape interval, not a wait for readiness


def probe(port: int, path: str) -> int:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send DATA on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


# -- counting -----------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_requests_are_counted_by_method_status_and_protocol(tmp_path: Path, workers: int) -> None:
    with start(cwd=tmp_path, workers=workers) as server:
        url = f"http://127.0.0.1:{server.port}"
        expected: Counter[tuple[str, str, str]] = Counter()
        body_in = body_out = 0
        pids: set[str] = set()
        # HTTP/1.1, a fresh connection per request: each is accepted by either worker.
        fresh = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=url, limits=fresh, timeout=5) as client:
            plan = [("GET", 200), ("POST", 201), ("GET", 404), ("POST", 500)]
            for i in range(N - 20):
                method, status = plan[i % len(plan)]
                content = b"x" * (i % 50) if method == "POST" else b""
                response = client.request(method, f"/status?{status}", content=content)
                assert response.status_code == status
                expected[(method, f"{status // 100}xx", "1.1")] += 1
                body_in += len(content)
                body_out += len(response.content)
                pids.add(response.headers["x-pid"])
            for _ in range(200):  # until both workers have answered (bounded)
                if len(pids) >= workers:
                    break
                response = client.get("/status?200")
                expected[("GET", "2xx", "1.1")] += 1
                body_out += len(response.content)
                pids.add(response.headers["x-pid"])
        assert len(pids) == workers
        # HTTP/2 by prior knowledge (h2c), several streams on one connection.
        with httpx.Client(base_url=url, http1=False, http2=True, timeout=5) as h2:
            for i in range(20):
                if i % 2:
                    response = h2.post("/status?201", content=b"h2 body")
                    body_in += 7
                    expected[("POST", "2xx", "2")] += 1
                else:
                    response = h2.get("/status?503")  # the app's 503: not a limit hit
                    expected[("GET", "5xx", "2")] += 1
                assert response.http_version == "HTTP/2"
                body_out += len(response.content)
        count = sum(expected.values())
        assert count >= N

        series = poll(
            server.metrics_port,
            lambda s: (
                total(s, "threshold_requests_total") >= count
                and total(s, "threshold_ready_workers") == workers
                and total(s, "threshold_open_connections") == 0
            ),
        )
        assert by_labels(series) == expected
        interfaces = {
            dict(labels)["interface"]
            for name, labels in series
            if name == "threshold_requests_total"
        }
        assert interfaces == {"asgi3"}
        assert total(series, "threshold_request_duration_seconds_count") == count
        assert total(series, "threshold_request_duration_seconds_bucket", le="+Inf") == count
        assert 0 < total(series, "threshold_request_duration_seconds_sum") < count * 1.0
        assert total(series, "threshold_request_bytes_total") == body_in
        assert total(series, "threshold_response_bytes_total") == body_out
        assert total(series, "threshold_requests_in_flight") == 0
        assert total(series, "threshold_ready_workers") == workers
        assert total(series, "threshold_open_connections") == 0
        assert total(series, "threshold_limit_hits_total") == 0
        assert total(series, "threshold_worker_restarts_total") == 0


def test_limit_hits_are_counted_by_status(tmp_path: Path) -> None:
    limits = ("--limit-request-field-size", "1024", "--limit-request-line", "512")
    with start(*limits, "--max-body-size", "100", cwd=tmp_path) as server:
        port = server.port
        big_header = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
        assert status_of(raw(port, big_header)) == 431
        long_line = b"GET /" + b"a" * 600 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
        assert status_of(raw(port, long_line)) == 414
        too_long = b"POST /status?200 HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\n\r\n"
        assert status_of(raw(port, too_long)) == 413
        # A chunked body that crosses the limit while the app reads it.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            mark = server.mark()
            head = b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            sock.sendall(head + b"32\r\n" + b"a" * 50 + b"\r\n")
            server.wait_for(r"app: reading", since=mark)
            sock.sendall(b"64\r\n" + b"b" * 100 + b"\r\n0\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 413 ")
        # The app's own 413 and 503 are responses, not limits.
        for status in (413, 503):
            response = raw(
                port,
                f"GET /status?{status} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode(),
            )
            assert status_of(response) == status

        series = poll(
            server.metrics_port,
            lambda s: (
                total(s, "threshold_limit_hits_total") >= 4
                and total(s, "threshold_requests_total") >= 3
            ),  # responses land within a tick
        )
        hits = {
            dict(labels)["status"]: v
            for (name, labels), v in series.items()
            if name == "threshold_limit_hits_total"
        }
        assert hits == {"408": 0, "413": 2, "414": 1, "431": 1, "503": 0, "504": 0}
        # Refused before the app was called: no response counted. The body that crossed
        # the limit belonged to a request the app had: its 413 is counted as a response.
        assert by_labels(series) == {
            ("GET", "4xx", "1.1"): 1,
            ("GET", "5xx", "1.1"): 1,
            ("POST", "4xx", "1.1"): 1,
        }


def test_connections_over_max_connections_count_as_503(tmp_path: Path) -> None:
    with start("--max-connections", "1", cwd=tmp_path) as server:
        port = server.port
        with socket.create_connection(("127.0.0.1", port), timeout=5) as held:
            held.sendall(b"GET /status?200 HTTP/1.1\r\nHost: t\r\n\r\n")
            assert held.recv(65536).startswith(b"HTTP/1.1 200 ")  # registered, kept alive
            assert status_of(raw(port, b"")) == 503  # sends nothing: answered unasked
            series = poll(
                server.metrics_port,
                lambda s: total(s, "threshold_open_connections", protocol="http1") == 1,
            )
            assert total(series, "threshold_limit_hits_total", status="503") == 1
            assert total(series, "threshold_open_connections", protocol="http1") == 1
            assert total(series, "threshold_requests_total") == 1


def test_websocket_sessions_are_counted(tmp_path: Path) -> None:
    with start(cwd=tmp_path) as server:
        ws_url = f"ws://127.0.0.1:{server.port}/ws"
        for text in ("one", "two"):
            with ws_connect(ws_url, open_timeout=5, close_timeout=5) as ws:
                ws.send(text)
                assert ws.recv(timeout=5) == text
        with ws_connect(ws_url, open_timeout=5, close_timeout=5) as ws:
            ws.send("three")
            assert ws.recv(timeout=5) == "three"
            series = poll(
                server.metrics_port,
                lambda s: total(s, "threshold_open_connections", protocol="websocket") == 1,
            )
            assert total(series, "threshold_websocket_sessions_total") == 3
            assert total(series, "threshold_open_connections", protocol="websocket") == 1
            assert total(series, "threshold_requests_in_flight") == 0  # a session is no request


def test_requests_left_by_their_client_do_not_stay_in_flight(tmp_path: Path) -> None:
    with start(cwd=tmp_path) as server:
        port, mport = server.port, server.metrics_port
        marker = tmp_path / "release"
        request = f"GET /hold?{quote(str(marker))} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        mark = server.mark()
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        try:
            for sock in clients:
                sock.sendall(request)
            server.wait_for(r"app: holding", count=2, since=mark)
            held = poll(mport, lambda s: total(s, "threshold_requests_in_flight") == 2)
            assert total(held, "threshold_requests_in_flight") == 2
            assert total(held, "threshold_open_connections", protocol="http1") == 2
        finally:
            for sock in clients:
                sock.close()
        # Once the server has seen both clients leave, the app answers them: no one hears.
        gone = poll(mport, lambda s: total(s, "threshold_open_connections") == 0)
        assert total(gone, "threshold_open_connections") == 0
        marker.write_text("go")
        series = poll(
            mport,
            lambda s: (
                total(s, "threshold_requests_aborted_total") == 2
                and total(s, "threshold_requests_in_flight") == 0
            ),
        )
        assert total(series, "threshold_requests_aborted_total") == 2
        assert total(series, "threshold_requests_total") == 0
        assert total(series, "threshold_requests_in_flight") == 0


def test_a_denied_websocket_is_a_response_and_leaves_in_flight_alone(tmp_path: Path) -> None:
    with start(cwd=tmp_path) as server:
        port, mport = server.port, server.metrics_port
        handshake = (
            b"GET /deny HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        assert status_of(raw(port, handshake)) == 403
        marker = tmp_path / "release"
        request = f"GET /hold?{quote(str(marker))} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        answers: list[bytes] = []
        client = threading.Thread(target=lambda: answers.append(raw(port, request, 30)))
        mark = server.mark()
        client.start()
        try:
            server.wait_for(r"app: holding", since=mark)
            series = poll(mport, lambda s: total(s, "threshold_requests_in_flight") == 1)
            # The held request; a handshake's response must not be taken off it.
            assert total(series, "threshold_requests_in_flight") == 1
        finally:
            marker.write_text("go")
            client.join(WAIT)
        assert by_labels(series) == {("GET", "4xx", "1.1"): 1}
        assert total(series, "threshold_request_duration_seconds_count") == 1
        assert total(series, "threshold_request_duration_seconds_sum") < WAIT
        assert total(series, "threshold_websocket_sessions_total") == 0


# -- workers ------------------------------------------------------------------------------


def test_worker_restarts_and_heartbeat_misses_keep_the_counters(tmp_path: Path) -> None:
    with start("--worker-timeout", "2", cwd=tmp_path, workers=2) as server:
        port, mport = server.port, server.metrics_port
        workers = [int(m.group(1)) for m in server.wait_for(READY, 2)]
        for _ in range(10):
            assert status_of(raw(port, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))
        assert (
            total(
                poll(mport, lambda s: total(s, "threshold_requests_total") == 10),
                "threshold_requests_total",
            )
            == 10
        )

        # kill -9 a worker: one restart, and the requests it served stay counted.
        victim = min(workers)
        mark = server.mark()
        os.kill(victim, signal.SIGKILL)
        server.wait_for(rf"Worker {victim} died unexpectedly", since=mark)
        server.wait_for(READY, since=mark)

        def settled(restarts: int, misses: int) -> Callable[[Series], bool]:
            return lambda s: (
                total(s, "threshold_worker_restarts_total") == restarts
                and total(s, "threshold_worker_heartbeat_misses_total") == misses
                and total(s, "threshold_ready_workers") == 2
                and total(s, "threshold_requests_in_flight") == 0
            )

        series = poll(mport, settled(1, 0))
        assert total(series, "threshold_worker_restarts_total") == 1
        assert total(series, "threshold_worker_heartbeat_misses_total") == 0
        assert total(series, "threshold_requests_total") == 10
        assert total(series, "threshold_ready_workers") == 2

        # A blocked event loop: the master kills the worker (a heartbeat miss and a
        # restart); its request never completes and stops counting as in flight.
        failed: list[BaseException] = []

        def blocked_request() -> None:
            try:
                raw(port, b"GET /block?30 HTTP/1.1\r\nHost: t\r\n\r\n", timeout=15)
            except OSError as exc:
                failed.append(exc)

        mark = server.mark()
        client = threading.Thread(target=blocked_request, daemon=True)
        client.start()
        blocked = int(server.wait_for(r"app: blocking (\d+)", since=mark)[0].group(1))
        server.wait_for(rf"Worker {blocked} silent for over 2s", since=mark)
        server.wait_for(rf"Worker {blocked} stopped", since=mark)
        server.wait_for(READY, since=mark)
        client.join(WAIT)
        series = poll(mport, settled(2, 1))
        assert total(series, "threshold_worker_restarts_total") == 2
        assert total(series, "threshold_worker_heartbeat_misses_total") == 1
        assert total(series, "threshold_ready_workers") == 2  # not the dead worker's slot
        assert total(series, "threshold_requests_in_flight") == 0
        assert total(series, "threshold_requests_total") == 10


def test_preload_hup_reexec_keeps_the_metrics_port(tmp_path: Path) -> None:
    # The re-executed master binds the same --metrics-bind port: no worker may hold it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        mport = sock.getsockname()[1]
    bind = f"127.0.0.1:{mport}"
    with start("--preload", "--metrics-bind", bind, cwd=tmp_path, workers=2) as server:
        assert probe(mport, "/readyz") == 200
        mark = server.mark()
        server.proc.send_signal(signal.SIGHUP)
        server.wait_for(r"Re-executing the master", since=mark)
        server.wait_for(rf"Metrics on http://127\.0\.0\.1:{mport}/metrics", since=mark)
        server.wait_for(READY, 2, since=mark)
        assert "cannot listen" not in server.log
        series = poll(mport, lambda s: total(s, "threshold_ready_workers") == 2)
        assert total(series, "threshold_ready_workers") == 2
        assert probe(mport, "/readyz") == 200


# -- probes -------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_readyz_turns_503_while_draining_and_healthz_stays_200(
    tmp_path: Path, workers: int
) -> None:
    args = ("--timeout-graceful-shutdown", "20")
    with start(*args, cwd=tmp_path, workers=workers) as server:
        port, mport = server.port, server.metrics_port
        assert probe(mport, "/healthz") == 200
        assert probe(mport, "/nothing") == 404
        deadline = time.monotonic() + WAIT
        while probe(mport, "/readyz") != 200:  # ready is set just after the Listening line
            assert time.monotonic() < deadline, "/readyz never answered 200"
            time.sleep(0.05)

        marker = tmp_path / "release"
        answers: list[bytes] = []
        request = f"GET /hold?{quote(str(marker))} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        client = threading.Thread(target=lambda: answers.append(raw(port, request, 30)))
        mark = server.mark()
        client.start()
        try:
            server.wait_for(r"app: holding", since=mark)
            series = poll(mport, lambda s: total(s, "threshold_requests_in_flight") == 1)
            assert total(series, "threshold_requests_in_flight") == 1

            server.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + WAIT
            while probe(mport, "/readyz") != 503:
                assert time.monotonic() < deadline, "/readyz stayed 200 after SIGTERM"
                time.sleep(0.05)
            assert probe(mport, "/healthz") == 200  # alive: still draining
            series = poll(mport, lambda s: total(s, "threshold_ready_workers") == 0)
            assert total(series, "threshold_ready_workers") == 0
            assert server.proc.poll() is None
        finally:
            marker.write_text("go")
            client.join(WAIT)
        assert answers and status_of(answers[0]) == 200  # the request in flight finished
        assert server.wait_exit() == 0


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_metrics_port_in_use_is_a_startup_failure(tmp_path: Path, workers: int) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        bind = f"127.0.0.1:{port}"
        with start("--metrics-bind", bind, cwd=tmp_path, workers=workers, wait=False) as server:
            code = server.wait_exit()
    assert code == 3, server.log
    assert f"metrics_bind: cannot listen on {bind}: Address already in use" in server.log
    assert "Listening on" not in server.log
    assert "starting" not in server.log  # no worker was forked
