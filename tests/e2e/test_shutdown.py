"""Graceful shutdown end to end: SIGTERM/SIGINT, in-flight requests, the graceful timeout."""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.apps.ops_apps import IN_FLIGHT, ServerProcess

BIND = ["-b", "127.0.0.1:0"]
RUN_SCRIPT = """
import sys
import threshold
from tests.apps.ops_apps import {app}
sys.exit(threshold.run({app}, bind=["127.0.0.1:0"], access_log=False, {options}))
"""


def split(url: str) -> tuple[str, int]:
    host, _, port = url.split("://", 1)[1].rpartition(":")
    return host, int(port)


class Background:
    """One HTTP request made in a thread; ``result()`` gives the response or the error."""

    def __init__(self, url: str) -> None:
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self.thread.start()

    def _run(self, url: str) -> None:
        try:
            self.response = httpx.get(url, timeout=15)
        except BaseException as exc:
            self.error = exc

    def result(self, timeout: float = 15.0) -> httpx.Response | BaseException:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the request did not finish"
        if self.error is not None:
            return self.error
        assert self.response is not None
        return self.response


def assert_refused(host: str, port: int, timeout: float = 5.0) -> None:
    """New connections are refused (a connection that slipped into the backlog just
    before the listener closed must be dropped unanswered)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except ConnectionRefusedError:
            return
        with sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            try:
                data = sock.recv(1024)
            except ConnectionResetError:
                data = b""
        assert data == b"", f"a connection made after the signal was served: {data!r}"
        assert time.monotonic() < deadline, "the listener kept accepting after the signal"


def cli(app: str, *extra: str) -> ServerProcess:
    return ServerProcess.threshold(f"tests.apps.ops_apps:{app}", *BIND, *extra)


def script(app: str, options: str = "") -> ServerProcess:
    return ServerProcess([sys.executable, "-c", RUN_SCRIPT.format(app=app, options=options)])


STARTERS: dict[str, Callable[[], ServerProcess]] = {
    "asgi-sigterm": lambda: cli("slow"),
    "wsgi-sigterm": lambda: cli("wsgi_slow"),
    "run-api-sigterm": lambda: script("slow"),
    "run-api-wsgi": lambda: script("wsgi_slow"),
}


@pytest.mark.parametrize(
    ("starter", "sig", "body"),
    [
        ("asgi-sigterm", signal.SIGTERM, "slow done"),
        ("asgi-sigterm", signal.SIGINT, "slow done"),
        ("wsgi-sigterm", signal.SIGTERM, "wsgi slow done"),
        ("run-api-sigterm", signal.SIGTERM, "slow done"),
        ("run-api-wsgi", signal.SIGINT, "wsgi slow done"),
    ],
    ids=["asgi-TERM", "asgi-INT", "wsgi-TERM", "run-TERM", "run-wsgi-INT"],
)
def test_signal_lets_the_in_flight_request_finish(starter: str, sig: int, body: str) -> None:
    with STARTERS[starter]() as proc:
        url = proc.listening()
        host, port = split(url)
        assert httpx.get(url + "/fast", timeout=10).text == "fast"
        request = Background(url + "/slow")
        proc.wait_for(IN_FLIGHT)
        proc.signal(sig)
        proc.wait_for("Shutting down")
        assert_refused(host, port)
        # Still draining: the slow request (~1 s) has not been answered yet.
        assert proc.popen.poll() is None
        assert request.thread.is_alive()
        response = request.result()
        assert isinstance(response, httpx.Response), response
        assert response.status_code == 200
        assert response.text == body
        assert proc.wait(10) == 0
    assert "Stopped" in proc.text


def test_idle_keep_alive_connection_does_not_delay_exit() -> None:
    with cli("slow") as proc:
        host, port = split(proc.listening())
        with socket.create_connection((host, port), timeout=10) as idle:
            idle.sendall(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
            assert idle.recv(65536).startswith(b"HTTP/1.1 200 ")
            started = time.monotonic()
            proc.signal(signal.SIGTERM)
            assert proc.wait(10) == 0
            assert time.monotonic() - started < 3.0  # not the 30 s graceful timeout
            assert idle.recv(65536) == b""  # closed by the server


@pytest.mark.parametrize(
    "starter",
    [
        lambda: cli("stuck", "--timeout-graceful-shutdown", "1"),
        lambda: cli("wsgi_stuck", "--timeout-graceful-shutdown", "1"),
    ],
    ids=["asgi", "wsgi"],
)
def test_graceful_timeout_bounds_a_request_that_never_finishes(
    starter: Callable[[], ServerProcess],
) -> None:
    with starter() as proc:
        url = proc.listening()
        request = Background(url + "/stuck")
        proc.wait_for(IN_FLIGHT)
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        code = proc.wait(15)
        elapsed = time.monotonic() - started
        outcome: Any = request.result()
    assert elapsed < 4.0, f"took {elapsed:.1f}s to exit"
    assert elapsed >= 0.9, "did not wait for the graceful timeout"
    assert code == 0, proc.text
    assert isinstance(outcome, httpx.HTTPError), outcome  # the stuck request was cut off
    assert "still busy at shutdown" in proc.text


def test_second_signal_skips_the_graceful_wait() -> None:
    with cli("stuck") as proc:  # default graceful timeout: 30 s
        url = proc.listening()
        request = Background(url + "/stuck")
        proc.wait_for(IN_FLIGHT)
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        proc.wait_for("Shutting down")
        proc.signal(signal.SIGINT)
        assert proc.wait(15) == 0
        assert time.monotonic() - started < 4.0
        assert isinstance(request.result(), httpx.HTTPError)


def test_in_flight_request_survives_garbage_collection(serve) -> None:
    """The server holds its request tasks: a request awaiting a future that nothing
    else references (the loop keeps only weak references to tasks) is not collected."""
    waiting = threading.Event()
    release: list[Callable[[], None]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/wait":
            event = asyncio.Event()
            loop = asyncio.get_running_loop()
            weak = weakref.ref(event)  # only the task's frame holds the event

            def wake() -> None:
                alive = weak()
                if alive is not None:
                    loop.call_soon_threadsafe(alive.set)

            release.append(wake)
            loop.call_soon(waiting.set)  # runs once this task is suspended in wait()
            await event.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"released"})

    with serve(app) as running:
        request = Background(running.url + "/wait")
        assert waiting.wait(10)
        gc.collect()
        assert request.thread.is_alive(), request.result()
        release[0]()
        response = request.result()
        assert isinstance(response, httpx.Response), response
        assert response.text == "released"
