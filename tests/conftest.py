"""Fixtures that start real Threshold servers on ephemeral loopback ports."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from threshold.config import Config
from threshold.server import Server, new_event_loop

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"Listening on (http://\S+)")
START_TIMEOUT = 20.0


@dataclass
class Running:
    """A server under test: its base URL, host and port."""

    url: str
    host: str
    port: int
    server: Server | None = None
    process: subprocess.Popen[str] | None = None
    log: list[str] = field(default_factory=list)

    def connect(self, timeout: float = 10.0) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        return sock


def _split(url: str) -> tuple[str, int]:
    hostport = url.split("://", 1)[1]
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


@contextmanager
def serve_in_thread(app: Any, **options: Any) -> Iterator[Running]:
    """Run Server.serve() in a background thread with its own loop."""
    options.setdefault("bind", ["127.0.0.1:0"])
    options.setdefault("access_log", False)
    options.setdefault("lifespan", "auto")
    config = Config(app=app, **options)
    server = Server(config)
    errors: list[BaseException] = []

    def target() -> None:
        loop = new_event_loop(config.loop)
        try:
            loop.run_until_complete(server.serve())
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)
            server.started.set()
        finally:
            loop.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert server.started.wait(START_TIMEOUT), "server did not start"
    if errors:
        raise errors[0]
    assert server.listeners, f"server did not listen (exit code {server.exit_code})"
    url = server.urls[0]
    host, port = _split(url)
    try:
        yield Running(url, host, port, server=server)
    finally:
        server.request_shutdown()
        thread.join(START_TIMEOUT)
        assert not thread.is_alive(), "server thread did not stop"


@contextmanager
def serve_process(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    expect_start: bool = True,
) -> Iterator[Running]:
    """Run `python -m threshold ARGS --bind 127.0.0.1:0` and wait for its Listening line."""
    cmd = [sys.executable, "-m", "threshold", *args]
    if not any(a in ("-b", "--bind") or a.startswith("--bind=") for a in args):
        cmd += ["--bind", "127.0.0.1:0"]
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    proc = subprocess.Popen(
        cmd,
        cwd=str(cwd or ROOT),
        env=full_env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    log: list[str] = []
    url = None
    ready = threading.Event()

    def reader() -> None:
        nonlocal url
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            match = LISTENING.search(line)
            if match and url is None:
                url = match.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=reader, daemon=True).start()
    try:
        ready.wait(START_TIMEOUT)
        if url is None:
            if expect_start:
                proc.kill()
                raise AssertionError("server did not start:\n" + "".join(log))
            running = Running("", "", 0, process=proc, log=log)
        else:
            host, port = _split(url)
            running = Running(url, host, port, process=proc, log=log)
        yield running
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def serve() -> Callable[..., Any]:
    """serve(app, **options) -> context manager yielding Running (in-process server)."""
    return serve_in_thread


@pytest.fixture
def run_process() -> Callable[..., Any]:
    """run_process(*cli_args) -> context manager yielding Running (subprocess server)."""
    return serve_process


def raw_request(running: Running, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes and read until the server closes (send Connection: close, or garbage).

    No half-close: like uvicorn and gunicorn, Threshold takes EOF as the client leaving.
    """
    with running.connect(timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)
