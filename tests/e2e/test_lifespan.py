"""ASGI lifespan end to end: startup/shutdown, state in request scopes, failures, modes."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.apps import ops_apps
from tests.apps.ops_apps import ServerProcess
from threshold.config import Config
from threshold.server import Server

BIND = ["-b", "127.0.0.1:0"]


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10)


@pytest.fixture
def error_log() -> Iterator[list[str]]:
    """Messages logged to threshold.error by in-process servers."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger("threshold.error")
    handler = Collect(logging.DEBUG)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def serve_once(app: Any, **options: Any) -> Server:
    """Run Server.serve() to its end in this thread (for servers that must not start)."""
    config = Config(app=app, bind=["127.0.0.1:0"], access_log=False, **options)
    server = Server(config)
    asyncio.run(asyncio.wait_for(server.serve(), 10))
    return server


def recording_app(events: list[str]) -> Any:
    """An app that records every scope type and lifespan message it sees."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        events.append(scope["type"])
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                events.append(message["type"])
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


# -- on: startup before listening, shutdown on SIGTERM -----------------------------------


def test_lifespan_on_subprocess_startup_and_shutdown_on_sigterm(tmp_path: Path) -> None:
    env = {"OPS_MARKER_DIR": str(tmp_path)}
    args = ["tests.apps.ops_apps:lifespan_markers", "--lifespan", "on", *BIND]
    with ServerProcess.threshold(*args, env=env) as proc:
        url = proc.listening()
        assert (tmp_path / "startup").exists()  # startup completed before listening
        assert not (tmp_path / "shutdown").exists()
        response = get(url + "/")
        assert response.status_code == 200
        assert response.text == "started=yes"  # state set in startup reached the request
        assert not (tmp_path / "shutdown").exists()
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0
    assert (tmp_path / "shutdown").exists()
    assert proc.text.index("Listening on") < proc.text.index("Shutting down")


def test_lifespan_on_in_thread(serve) -> None:
    events: list[str] = []
    with serve(recording_app(events), lifespan="on") as running:
        assert events == ["lifespan", "lifespan.startup"]
        assert get(running.url + "/").status_code == 204
    assert events == ["lifespan", "lifespan.startup", "http", "lifespan.shutdown"]


# -- state ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["on", "auto"])
def test_state_is_copied_into_each_request(serve, mode: str) -> None:
    with serve(ops_apps.lifespan_state, lifespan=mode) as running:
        seen = [json.loads(get(running.url + f"/{i}").content) for i in range(3)]
    # Each request tampered with its scope["state"] (changed, added, deleted keys);
    # none of that reaches the next request.
    assert seen == [{"db": "connected", "count": 1}] * 3


def test_state_subprocess() -> None:
    args = ["tests.apps.ops_apps:lifespan_state", "--lifespan", "on", *BIND]
    with ServerProcess.threshold(*args) as proc:
        url = proc.listening()
        first = json.loads(get(url + "/first").content)
        second = json.loads(get(url + "/second").content)
    assert first == second == {"db": "connected", "count": 1}


# -- startup failure with lifespan on ----------------------------------------------------


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("lifespan_startup_failed", "database unreachable"),
        ("lifespan_startup_raises", "startup blew up"),
        ("no_lifespan", "unsupported scope type 'lifespan'"),
    ],
)
def test_lifespan_on_startup_failure_exits_without_listening(app: str, message: str) -> None:
    with ServerProcess.threshold(f"tests.apps.ops_apps:{app}", "--lifespan", "on", *BIND) as proc:
        code = proc.wait()
    assert code != 0
    assert message in proc.text
    assert "Application startup failed" in proc.text
    assert "Listening on" not in proc.text


def test_startup_failed_message_stops_auto_too() -> None:
    args = ["tests.apps.ops_apps:lifespan_startup_failed", "--lifespan", "auto", *BIND]
    with ServerProcess.threshold(*args) as proc:
        code = proc.wait()
    assert code != 0
    assert "database unreachable" in proc.text
    assert "Listening on" not in proc.text


@pytest.mark.parametrize(
    ("app", "message"),
    [
        (ops_apps.lifespan_startup_failed, "startup failed: database unreachable"),
        (ops_apps.lifespan_startup_raises, "RuntimeError('startup blew up')"),
    ],
)
def test_startup_failure_in_process(app: Any, message: str, error_log: list[str]) -> None:
    server = serve_once(app, lifespan="on")
    assert server.exit_code != 0
    assert server.listeners == []
    assert server.urls == []
    failures = [m for m in error_log if m.startswith("Application startup failed")]
    assert len(failures) == 1 and message in failures[0], error_log


# -- auto and off ------------------------------------------------------------------------


def test_auto_serves_an_app_that_raises_on_lifespan_subprocess() -> None:
    args = ["tests.apps.ops_apps:no_lifespan", "--lifespan", "auto", *BIND]
    with ServerProcess.threshold(*args) as proc:
        response = get(proc.listening() + "/")
        assert response.status_code == 200
        assert response.text == "served without lifespan"
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0
    assert "Traceback" not in proc.text  # an unsupported lifespan is not an error in auto


def test_auto_serves_an_app_that_raises_on_lifespan_in_thread(serve) -> None:
    with serve(ops_apps.no_lifespan, lifespan="auto") as running:
        response = get(running.url + "/")
    assert response.status_code == 200
    assert response.text == "served without lifespan"


def test_off_never_sends_a_lifespan_scope_in_thread(serve) -> None:
    events: list[str] = []
    with serve(recording_app(events), lifespan="off") as running:
        assert get(running.url + "/").status_code == 204
        assert get(running.url + "/").status_code == 204
    assert events == ["http", "http"]


@pytest.mark.parametrize(("mode", "expected"), [("off", "http"), ("on", "lifespan,http")])
def test_off_never_sends_a_lifespan_scope_subprocess(mode: str, expected: str) -> None:
    args = ["tests.apps.ops_apps:scope_types", "--lifespan", mode, *BIND]
    with ServerProcess.threshold(*args) as proc:
        assert get(proc.listening() + "/").text == expected


def test_off_serves_an_app_that_would_fail_startup() -> None:
    args = ["tests.apps.ops_apps:lifespan_startup_failed", "--lifespan", "off", *BIND]
    with ServerProcess.threshold(*args) as proc:
        assert get(proc.listening() + "/").text == "should never be served"
