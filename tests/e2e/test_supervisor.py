"""The supervisor with real processes and signals: workers, restarts, reloads, systemd.

Every test starts `python -m threshold` as a subprocess, reads its stderr in a
thread and waits for log lines ("Worker N ready", "Worker N stopped", ...) with
bounded timeouts. Clients open a fresh connection per request (Connection: close),
so each request is accepted by whichever worker the kernel picks.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.apps.supervisor_apps import (
    BROKEN_MODULE,
    SLOW_IMPORT_MODULE,
    SYNTAX_ERROR_MODULE,
    text_module,
)
from tests.conftest import ROOT
from tests.stderr_log import StderrLog

PID_APP = "tests.apps.supervisor_apps:pid_app"
WSGI_PID_APP = "tests.apps.supervisor_apps:wsgi_pid_app"
WAIT = 10.0  # bound on any single wait for a log line
READY = r"Worker (\d+) ready"
LISTENING = re.compile(r"Listening on http://[^:]+:(\d+)")
MAX_LOAD = 20_000  # a load thread never sends more than this, whatever happens
FASTOPEN: int = getattr(socket, "MSG_FASTOPEN", 0)

# Sets LISTEN_PID to its own PID, moves the given socket to fd 3 and execs threshold
# (exec keeps the PID), as systemd does for socket activation.
LAUNCHER = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "threshold", *sys.argv[2:]])
"""


# -- helpers -----------------------------------------------------------------------


class Master(StderrLog):
    """A running `python -m threshold` and its stderr, line by line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        super().__init__(proc, WAIT)

    def ready_pids(self, count: int, since: int = 0) -> list[int]:
        return [int(m.group(1)) for m in self.wait_for(READY, count, since)]

    @property
    def port(self) -> int:
        return int(self.wait_for(LISTENING.pattern)[0].group(1))

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)


@contextmanager
def start(
    *args: str,
    cwd: Path,
    ready: int = 1,
    env: dict[str, str] | None = None,
    launcher_fd: int | None = None,
) -> Iterator[Master]:
    """Start threshold with ARGS (plus -b 127.0.0.1:0 unless bound otherwise).

    Waits for ``ready`` "Worker N ready" lines (or, with ready=-1, for the first
    "Listening on" line of a single-process server; with 0, for nothing). Always
    stops the process (TERM, then KILL) on the way out.
    """
    cmd = [sys.executable, "-m", "threshold", *args]
    if launcher_fd is not None:
        cmd = [sys.executable, "-c", LAUNCHER, str(launcher_fd), *args]
    elif not any(a in ("-b", "--bind") for a in args):
        cmd += ["-b", "127.0.0.1:0"]
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env["PYTHONDONTWRITEBYTECODE"] = "1"  # rewritten modules must not hit a stale .pyc
    for key in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID"):
        full_env.pop(key, None)
    full_env.update(env or {})
    proc = subprocess.Popen(
        cmd,
        cwd=str(cwd),  # a SIGABRTed worker may leave a core file: keep it in tmp
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        pass_fds=() if launcher_fd is None else (launcher_fd,),
        start_new_session=True,  # its own process group: see the orphan check below
    )
    master = Master(proc)
    try:
        if ready > 0:
            master.ready_pids(ready)
        elif ready < 0:
            master.wait_for(LISTENING.pattern)
        yield master
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # The master reaps its workers before it exits: anything left in its process
        # group is an orphan. Kill it (so nothing outlives the test) and say so.
        orphans = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            orphans = False
        master._reader.join(WAIT)
        if proc.stderr is not None and not master._reader.is_alive():
            proc.stderr.close()
        assert not orphans, "processes outlived the master:\n" + master.log


def connect_and_send(port: int, data: bytes, timeout: float) -> socket.socket:
    """A new connection with ``data`` sent on it.

    Where the OS allows it, connect and send are one call (MSG_FASTOPEN; with no
    cookie the kernel sends the bytes as soon as the handshake completes), so that no
    pause of this thread can fall between the two. A worker that stops right after
    accepting must still see the request; how long a client may stay silent after
    connecting is another question, which these tests do not ask.
    """
    if FASTOPEN:
        sock = socket.socket()
        try:
            # Blocking (non-blocking would not queue the data), bounded by SO_SNDTIMEO.
            limit = struct.pack("ll", int(timeout), int(timeout % 1 * 1_000_000))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
            sock.sendto(data, FASTOPEN, ("127.0.0.1", port))
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EOPNOTSUPP:  # Fast Open turned off for clients
                raise
        else:
            sock.settimeout(timeout)
            return sock
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(data)
    return sock


def get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, str]:
    """One request on a fresh connection: (status, body)."""
    request = f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    with connect_and_send(port, request, timeout) as sock:
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head:
        raise ConnectionError("connection closed without a response")
    return int(head.split(b" ", 2)[1]), body.decode()


def try_get(
    port: int, path: str = "/", timeout: float = 5.0, errors: list[str] | None = None
) -> str | None:
    """The body of a 200 response, or None for any failure (described in ``errors``)."""
    try:
        status, body = get(port, path, timeout)
    except (OSError, ValueError, IndexError) as exc:
        if errors is not None:
            errors.append(repr(exc))
        return None
    if status != 200 and errors is not None:
        errors.append(f"status {status}: {body[:100]!r}")
    return body if status == 200 else None


def pids_seen(port: int, want: set[int], limit: int = 1200, clients: int = 8) -> set[int]:
    """Send up to ``limit`` requests, from several clients at once, until every PID in
    ``want`` has answered. Sequential requests can all land on one worker (the one that
    just answered is first back in accept()); concurrent ones keep it busy."""
    seen: set[int] = set()
    statuses: list[int] = []
    lock = threading.Lock()
    remaining = [limit]

    def client() -> None:
        while True:
            with lock:
                if want <= seen or remaining[0] <= 0:
                    return
                remaining[0] -= 1
            try:
                status, body = get(port)
            except OSError:
                status, body = -1, "0"  # a failed request: the assertion below reports it
            with lock:
                statuses.append(status)
                if status == 200:
                    seen.add(int(body.split()[-1]))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses and set(statuses) == {200}
    return seen


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Load:
    """Client threads sending requests (fresh connection each) until stopped."""

    def __init__(self, port: int, threads: int = 1) -> None:
        self.port = port
        self.results: list[tuple[float, str | None]] = []  # (start time, body or None)
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.results) < MAX_LOAD:
            started = time.monotonic()
            body = try_get(self.port, timeout=5.0, errors=self.errors)
            with self._cond:
                self.results.append((started, body))
                self._cond.notify_all()

    def count(self) -> int:
        with self._cond:
            return len(self.results)

    def wait_count(self, n: int, timeout: float = WAIT) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.results) >= n, timeout), (
                f"load reached only {len(self.results)} of {n} requests"
            )

    def stop(self) -> list[tuple[float, str | None]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT)
            assert not thread.is_alive()
        return list(self.results)


def write_module(path: Path, source: str) -> None:
    # Write then rename, as editors do, so no reader sees a half-written file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(source)
    tmp.replace(path)


def edit_and_wait_for_reload(master: Master, module: Path, source: str) -> int:
    """Rewrite ``module`` until the master logs the change; return the log mark before it.

    The reloader logs "Watching" just before its watch is in place, so an edit in
    that instant can go unseen: write again (bounded) until one is seen.
    """
    for _ in range(10):
        mark = master.mark()
        write_module(module, source)
        try:
            master.wait_for(rf"Changes in .*{module.name}; restarting", since=mark, timeout=1.0)
        except AssertionError:
            continue
        return mark
    raise AssertionError(f"no reload after 10 edits of {module}; log:\n{master.log}")


# -- several workers, crashes ------------------------------------------------------


def test_two_workers_serve_and_a_killed_one_is_replaced(tmp_path: Path) -> None:
    with start(PID_APP, "-w", "2", "--no-access-log", cwd=tmp_path, ready=2) as master:
        workers = set(master.ready_pids(2))
        port = master.port
        assert pids_seen(port, workers) == workers

        load = Load(port)
        load.wait_count(20)
        victim = min(workers)
        mark = master.mark()
        os.kill(victim, signal.SIGKILL)
        master.wait_for(rf"Worker {victim} died unexpectedly \(signal SIGKILL\); restarting it")
        (replacement,) = master.ready_pids(1, since=mark)
        replaced_at = time.monotonic()
        load.wait_count(load.count() + 100)
        results = load.stop()

        failed = [started for started, body in results if body is None]
        assert len(failed) <= 3, f"{len(failed)} of {len(results)} failed: {load.errors}"
        assert not [t for t in failed if t >= replaced_at], "a request failed after recovery"
        served = {int(body.split()[-1]) for _, body in results if body is not None}
        assert served <= workers | {replacement}
        assert not alive(victim)
        # The replacement takes its share of new connections.
        assert replacement in pids_seen(port, {replacement})


def test_blocked_event_loop_is_killed_and_replaced(tmp_path: Path) -> None:
    args = (PID_APP, "-w", "2", "--worker-timeout", "2", "--no-access-log")
    with start(*args, cwd=tmp_path, ready=2) as master:
        port = master.port
        outcome: list[str | None] = []
        client = threading.Thread(
            target=lambda: outcome.append(try_get(port, "/block?30", timeout=15))
        )
        client.start()
        blocked = int(master.wait_for(r"app: blocking (\d+)")[0].group(1))
        mark = master.mark()
        started = time.monotonic()
        master.wait_for(rf"Worker {blocked} silent for over 2s \(event loop blocked\)")
        detected = time.monotonic() - started
        (replacement,) = master.ready_pids(1, since=mark)
        master.wait_for(rf"Worker {blocked} stopped \(signal SIGABRT\)", since=mark)
        client.join(WAIT)
        assert outcome == [None]  # its worker was killed under it
        assert detected < 6  # 2 s timeout + 1 s heartbeat + 0.25 s master tick, with slack
        assert not alive(blocked)
        assert replacement in pids_seen(port, {replacement})


def test_app_that_fails_to_import_stops_the_master_with_exit_code_4(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(BROKEN_MODULE)
    args = ("broken:app", "-w", "2", "--boot-failures", "3", "--app-dir", str(tmp_path))
    started = time.monotonic()
    with start(*args, cwd=tmp_path, ready=0) as master:
        code = master.wait_exit(WAIT)
        elapsed = time.monotonic() - started
        log = master.log
    assert code == 4, log
    assert elapsed < 8, log
    # One clear line per failed worker, no traceback, and no endless respawning.
    assert "Traceback" not in log
    assert "error while importing 'broken': RuntimeError('boom at import')" in log
    assert len(re.findall(r"Worker \d+ failed to boot \(exit code 2\)", log)) == 3, log
    assert "Workers failed to boot 3 times in a row; stopping (exit code 4)" in log
    assert "Listening on" not in log


def test_worker_that_boots_longer_than_worker_timeout_is_a_boot_failure(tmp_path: Path) -> None:
    # The heartbeat starts at fork: booting (import, lifespan startup) counts against
    # --worker-timeout, and a worker killed for it counts as a boot failure, not a loop.
    (tmp_path / "slow.py").write_text(SLOW_IMPORT_MODULE)
    args = ("slow:app", "-w", "2", "--worker-timeout", "1", "--boot-failures", "2")
    started = time.monotonic()
    with start(*args, "--app-dir", str(tmp_path), cwd=tmp_path, ready=0) as master:
        code = master.wait_exit(WAIT)
        elapsed = time.monotonic() - started
        log = master.log
    assert code == 4, log
    assert elapsed < 8, log
    assert len(re.findall(r"Worker \d+ failed to boot \(signal SIGABRT\)", log)) == 2, log
    assert "Listening on" not in log


# -- signals ---------------------------------------------------------------------------


def test_hup_reload_has_no_failed_requests_and_serves_new_code(tmp_path: Path) -> None:
    module = tmp_path / "hupapp.py"
    write_module(module, text_module("one"))
    args = ("hupapp:app", "-w", "2", "--app-dir", str(tmp_path), "--no-access-log")
    with start(*args, "--timeout-graceful-shutdown", "2", cwd=tmp_path, ready=2) as master:
        old = set(master.ready_pids(2))
        port = master.port
        load = Load(port, threads=3)
        load.wait_count(800)

        write_module(module, text_module("two"))
        mark = master.mark()
        master.signal(signal.SIGHUP)
        new = set(master.ready_pids(2, since=mark))
        for pid in old:
            master.wait_for(rf"Worker {pid} stopped \(exit code 0\)", since=mark)
        switched_at = time.monotonic()
        load.wait_count(load.count() + 1200)
        results = load.stop()

        failed = [started for started, body in results if body is None]
        assert not failed, f"{len(failed)} of {len(results)} failed: {load.errors}"
        assert len(results) >= 2000
        assert new.isdisjoint(old)
        bodies = {body for _, body in results}
        assert {f"one {pid}" for pid in old} & bodies
        assert {f"two {pid}" for pid in new} & bodies
        late = {body for started, body in results if started > switched_at}
        assert late <= {f"two {pid}" for pid in new}
        assert not any(alive(pid) for pid in old)
        assert master.proc.poll() is None


def test_hup_onto_broken_code_keeps_the_old_workers_serving(tmp_path: Path) -> None:
    module = tmp_path / "hupapp.py"
    write_module(module, text_module("one"))
    args = ("hupapp:app", "-w", "2", "--app-dir", str(tmp_path), "--boot-failures", "2")
    with start(*args, "--no-access-log", cwd=tmp_path, ready=2) as master:
        old = set(master.ready_pids(2))
        port = master.port

        write_module(module, SYNTAX_ERROR_MODULE)
        mark = master.mark()
        master.signal(signal.SIGHUP)
        master.wait_for(r"New workers keep failing; old workers keep serving", since=mark)
        assert master.proc.poll() is None
        assert pids_seen(port, old) == old
        assert {try_get(port) for _ in range(10)} <= {f"one {pid}" for pid in old}

        write_module(module, text_module("two"))
        mark = master.mark()
        master.signal(signal.SIGHUP)
        new = set(master.ready_pids(2, since=mark))
        for pid in old:
            master.wait_for(rf"Worker {pid} stopped \(exit code 0\)", since=mark)
        assert {try_get(port) for _ in range(10)} <= {f"two {pid}" for pid in new}


def test_term_lets_the_request_in_flight_finish(tmp_path: Path) -> None:
    args = (PID_APP, "-w", "2", "--timeout-graceful-shutdown", "10")
    with start(*args, cwd=tmp_path, ready=2) as master:
        workers = master.ready_pids(2)
        port = master.port
        outcome: list[tuple[int, str]] = []
        client = threading.Thread(target=lambda: outcome.append(get(port, "/sleep?1", 10)))
        client.start()
        serving = int(master.wait_for(r"app: sleeping (\d+)")[0].group(1))
        started = time.monotonic()
        master.signal(signal.SIGTERM)
        client.join(WAIT)
        assert outcome == [(200, str(serving))]
        assert master.wait_exit() == 0
        assert time.monotonic() - started < 5  # once the request is done, not after 10 s
        log = master.log
    assert "SIGTERM: stopping gracefully" in log
    assert not [pid for pid in workers if alive(pid)], "a worker outlived its master"


def test_term_to_master_and_workers_alike_stays_graceful(tmp_path: Path) -> None:
    # systemd's default KillMode=control-group and a terminal's Ctrl-C signal every
    # process, so a worker sees the master's SIGTERM as a second signal: it must not
    # cut its requests off for that (the master says "now" with SIGQUIT).
    args = (PID_APP, "-w", "2", "--timeout-graceful-shutdown", "10")
    with start(*args, cwd=tmp_path, ready=2) as master:
        port = master.port
        outcome: list[tuple[int, str]] = []
        client = threading.Thread(target=lambda: outcome.append(get(port, "/sleep?1", 10)))
        client.start()
        serving = int(master.wait_for(r"app: sleeping (\d+)")[0].group(1))
        os.kill(serving, signal.SIGTERM)
        master.wait_for(rf"\[{serving}\] INFO: Shutting down")
        master.signal(signal.SIGTERM)
        client.join(WAIT)
        assert outcome == [(200, str(serving))]
        assert master.wait_exit() == 0
        assert "closing connections now" not in master.log


def test_quit_stops_now(tmp_path: Path) -> None:
    args = (PID_APP, "-w", "2", "--timeout-graceful-shutdown", "20")
    with start(*args, cwd=tmp_path, ready=2) as master:
        workers = master.ready_pids(2)
        port = master.port
        outcome: list[str | None] = []
        client = threading.Thread(
            target=lambda: outcome.append(try_get(port, "/sleep?30", timeout=10))
        )
        client.start()
        master.wait_for(r"app: sleeping")
        started = time.monotonic()
        master.signal(signal.SIGQUIT)
        assert master.wait_exit() == 0
        assert time.monotonic() - started < 5  # not the 20 s graceful timeout
        client.join(WAIT)
        assert outcome == [None]  # closed, not answered
        assert "SIGQUIT: stopping now" in master.log
    assert not [pid for pid in workers if alive(pid)]


def test_second_term_stops_without_waiting(tmp_path: Path) -> None:
    args = (PID_APP, "-w", "2", "--timeout-graceful-shutdown", "20")
    with start(*args, cwd=tmp_path, ready=2) as master:
        port = master.port
        client = threading.Thread(target=lambda: try_get(port, "/sleep?30", timeout=10))
        client.start()
        master.wait_for(r"app: sleeping")
        master.signal(signal.SIGTERM)
        master.wait_for(r"SIGTERM: stopping gracefully")
        started = time.monotonic()
        master.signal(signal.SIGTERM)
        assert master.wait_exit() == 0
        assert time.monotonic() - started < 5  # not the 20 s graceful timeout
        client.join(WAIT)


def test_term_while_workers_boot_is_not_lost(tmp_path: Path) -> None:
    # A TERM that reaches a worker between fork and its own signal setup used to be
    # swallowed by the master's handler copy: the worker then served on until SIGKILL.
    for _ in range(3):
        args = (PID_APP, "-w", "2", "--log-level", "debug", "--timeout-graceful-shutdown", "20")
        with start(*args, cwd=tmp_path, ready=0) as master:
            master.wait_for(r"Spawned worker", count=2)
            started = time.monotonic()
            master.signal(signal.SIGTERM)
            assert master.wait_exit(WAIT) == 0
            assert time.monotonic() - started < 5, master.log
            assert "did not stop in time" not in master.log


def test_ttin_and_ttou_change_the_worker_count(tmp_path: Path) -> None:
    with start(PID_APP, "-w", "2", "--no-access-log", cwd=tmp_path, ready=2) as master:
        workers = master.ready_pids(2)
        port = master.port

        mark = master.mark()
        master.signal(signal.SIGTTIN)
        master.wait_for(r"SIGTTIN: 3 worker\(s\)", since=mark)
        (added,) = master.ready_pids(1, since=mark)
        everyone = {*workers, added}
        assert pids_seen(port, everyone) == everyone

        stopped: list[int] = []
        for left in (2, 1):
            mark = master.mark()
            master.signal(signal.SIGTTOU)
            master.wait_for(rf"SIGTTOU: {left} worker\(s\)", since=mark)
            match = master.wait_for(r"Worker (\d+) stopped \(exit code 0\)", since=mark)[0]
            stopped.append(int(match.group(1)))
        assert stopped[0] == added  # the newest goes first
        assert not any(alive(pid) for pid in stopped)
        (remaining,) = everyone - set(stopped)
        assert {try_get(port) for _ in range(20)} == {str(remaining)}


def test_max_requests_recycles_workers_without_failed_requests(tmp_path: Path) -> None:
    args = (WSGI_PID_APP, "-w", "2", "--max-requests", "20", "--no-access-log")
    with start(*args, "--timeout-graceful-shutdown", "2", cwd=tmp_path, ready=2) as master:
        old = set(master.ready_pids(2))
        load = Load(master.port)
        load.wait_count(40)
        for pid in old:
            master.wait_for(rf"Worker {pid} reached --max-requests; replacing it")
            master.wait_for(rf"Worker {pid} stopped \(exit code 0\)")
        load.wait_count(load.count() + 40)
        results = load.stop()
    bodies = [body for _, body in results]
    assert None not in bodies, f"{bodies.count(None)} of {len(bodies)} failed: {load.errors}"
    served = {int(body) for body in bodies if body is not None}
    assert served - old, "no new worker served"


# -- files, systemd --------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
def test_pid_file_is_written_and_removed(tmp_path: Path, workers: str) -> None:
    pid_file = tmp_path / "threshold.pid"
    args = (PID_APP, "-w", workers, "--pid", str(pid_file))
    with start(*args, cwd=tmp_path, ready=2 if workers == "2" else -1) as master:
        assert pid_file.read_text() == f"{master.proc.pid}\n"
        master.signal(signal.SIGTERM)
        assert master.wait_exit() == 0
    assert not pid_file.exists()


def test_systemd_socket_activation(tmp_path: Path) -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(16)
        port = listening.getsockname()[1]
        args = (PID_APP, "-w", "2", "--no-access-log")
        with start(*args, cwd=tmp_path, ready=2, launcher_fd=listening.fileno()) as master:
            assert master.port == port
            assert f"Listening on http://127.0.0.1:{port}" in master.log
            workers = set(master.ready_pids(2))
            assert pids_seen(port, workers) == workers


def test_sd_notify_ready_and_stopping(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(path))
        notify.settimeout(WAIT)
        env = {"NOTIFY_SOCKET": str(path)}
        with start(PID_APP, "-w", "2", cwd=tmp_path, ready=2, env=env) as master:
            ready = notify.recv(4096).decode()
            assert "READY=1" in ready.splitlines()
            assert f"MAINPID={master.proc.pid}" in ready.splitlines()
            master.signal(signal.SIGTERM)
            assert "STOPPING=1" in notify.recv(4096).decode().splitlines()
            assert master.wait_exit() == 0


# -- reload ----------------------------------------------------------------------------


def test_reload_serves_edits_and_survives_a_syntax_error(tmp_path: Path) -> None:
    module = tmp_path / "devapp.py"
    write_module(module, text_module("first"))
    args = ("devapp:app", "--reload", "--app-dir", str(tmp_path), "--no-access-log")
    with start(*args, "--timeout-graceful-shutdown", "1", cwd=tmp_path, ready=1) as master:
        master.wait_for(r"Watching .* for changes")
        port = master.port
        assert (try_get(port) or "").startswith("first ")

        mark = edit_and_wait_for_reload(master, module, text_module("second"))
        (pid,) = master.ready_pids(1, since=mark)
        assert try_get(port) == f"second {pid}"

        mark = edit_and_wait_for_reload(master, module, SYNTAX_ERROR_MODULE)
        master.wait_for(r"Worker \d+ failed to boot \(exit code 2\)", since=mark)
        master.wait_for(r"Waiting for a file change to try again", since=mark)
        assert "SyntaxError" in master.log
        assert master.proc.poll() is None
        assert try_get(port, timeout=0.5) is None  # nothing serves broken code

        mark = edit_and_wait_for_reload(master, module, text_module("third"))
        (pid,) = master.ready_pids(1, since=mark)
        assert try_get(port) == f"third {pid}"


def test_preload_hup_reexecutes_the_master(tmp_path: Path) -> None:
    module = tmp_path / "preapp.py"
    write_module(module, text_module("before"))
    args = ("preapp:app", "--preload", "-w", "2", "--app-dir", str(tmp_path), "--no-access-log")
    with start(*args, "--timeout-graceful-shutdown", "2", cwd=tmp_path, ready=2) as master:
        old = master.ready_pids(2)
        port = master.port
        assert (try_get(port) or "").startswith("before ")

        write_module(module, text_module("after"))
        mark = master.mark()
        master.signal(signal.SIGHUP)
        master.wait_for(r"Re-executing the master", since=mark)
        master.wait_for(
            rf"\[{master.proc.pid}\] INFO: Master {master.proc.pid} starting", since=mark
        )
        new = set(master.ready_pids(2, since=mark))
        for pid in old:
            master.wait_for(rf"Worker {pid} stopped", since=mark)
        assert master.proc.poll() is None
        assert pids_seen(port, new) == new
        assert {(try_get(port) or "").split()[0] for _ in range(10)} == {"after"}


def test_preload_hup_with_broken_code_keeps_the_old_workers(tmp_path: Path) -> None:
    module = tmp_path / "preapp.py"
    write_module(module, text_module("before"))
    args = ("preapp:app", "--preload", "-w", "2", "--app-dir", str(tmp_path), "--no-access-log")
    with start(*args, "--timeout-graceful-shutdown", "2", cwd=tmp_path, ready=2) as master:
        old = set(master.ready_pids(2))
        port = master.port

        write_module(module, SYNTAX_ERROR_MODULE)
        mark = master.mark()
        master.signal(signal.SIGHUP)
        master.wait_for(r"Reload failed: the old workers keep serving", since=mark)
        assert master.proc.poll() is None
        assert pids_seen(port, old) == old
        assert {(try_get(port) or "").split()[0] for _ in range(10)} == {"before"}

        write_module(module, text_module("fixed"))
        mark = master.mark()
        master.signal(signal.SIGHUP)
        new = set(master.ready_pids(2, since=mark))
        for pid in old:
            master.wait_for(rf"Worker {pid} stopped", since=mark)
        assert pids_seen(port, new) == new
        assert {(try_get(port) or "").split()[0] for _ in range(10)} == {"fixed"}


def test_reuse_port_workers_bind_their_own_sockets(tmp_path: Path) -> None:
    port = free_port()
    args = (PID_APP, "--reuse-port", "-w", "2", "-b", f"127.0.0.1:{port}", "--no-access-log")
    with start(*args, cwd=tmp_path, ready=2) as master:
        workers = set(master.ready_pids(2))
        assert len(master.wait_for(rf"Listening on http://127.0.0.1:{port}", 2)) == 2
        assert pids_seen(port, workers) == workers
