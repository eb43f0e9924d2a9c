"""Many workers: spawn, watch, restart, reload, signals. Knows nothing of HTTP.

The master binds the sockets once and forks workers that share them. Signal
handlers only enqueue (and wake the master through ``signal.set_wakeup_fd``);
the master's loop does the work. Each worker reports over a pipe (``R`` when
listening, ``M`` when it reached --max-requests) and beats a heartbeat into a
shared page from its event loop, so a blocked loop is seen and replaced.
"""

from __future__ import annotations

import logging
import mmap
import os
import random
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from threshold.config import Config, ConfigError
from threshold.loader import LoadError, load_app
from threshold.net import BindError, Listener, bind_listeners
from threshold.observe.logs import configure_logging, reopen_log_files
from threshold.observe.metrics import MetricsServer, SharedMetrics, WorkerMetrics
from threshold.server import (
    EXIT_LOAD_FAILED,
    EXIT_OK,
    EXIT_STARTUP_FAILED,
    Server,
    WorkerHooks,
    run_server,
)

logger = logging.getLogger("threshold.error")

EXIT_BOOT_FAILED = 4  # workers kept dying while booting; the master gave up
EXIT_WORKER_CRASH = 1  # a worker's uncaught error

RETIRE_ENV = "_THRESHOLD_OLD_WORKERS"  # pids handed to a re-executed master (HUP + --preload)
HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGCHLD,
)
KILL_GRACE = 5.0  # seconds between the last polite signal and SIGKILL
MAX_BACKOFF = 10.0


def run_config(
    config: Config,
    argv: Sequence[str] | None = None,
    reparse: Callable[[], Config] | None = None,
) -> int:
    """Run in this process until SIGINT/SIGTERM; return the exit code.

    Several workers, --reload or --max-requests need a master process; otherwise
    the server runs right here (no fork). ``argv`` and ``reparse`` (re-read the
    command line, config file and environment) come from the CLI, for SIGHUP.
    """
    configure_logging(config)
    if config.workers != 1 or config.reload or config.max_requests:
        return Supervisor(config, argv, reparse).run()
    # One process: the same umask and bind-then-drop-privileges order as a master.
    if config.umask:
        os.umask(int(config.umask, 8))
    try:
        listeners = bind_listeners(config)
    except BindError as exc:
        logger.error("%s", exc)
        return EXIT_STARTUP_FAILED
    try:
        drop_privileges(config.user, config.group)
        metrics_server = None
        server = Server(config, listeners)
        if config.metrics_bind:
            shared = SharedMetrics(1)
            server.metrics = shared.slot(0)
            metrics_server = _metrics_server(
                config.metrics_bind, shared, lambda: server.interface, lambda: server.ready
            )
            if metrics_server is None:
                return EXIT_STARTUP_FAILED
        with PidFile(config.pid):
            return run_server(server)
    finally:
        if metrics_server is not None:
            metrics_server.stop()
        for listener in listeners:
            listener.close()


def run(app: Any, **options: Any) -> int:
    """Serve ``app`` (an object or "module:attr") with ``Config(**options)``."""
    return run_config(Config(app=app, **options))


def _metrics_server(
    bind: str, shared: SharedMetrics, interface: Callable[[], str], ready: Callable[[], bool]
) -> MetricsServer | None:
    host, _, port = bind.rpartition(":")
    try:
        server = MetricsServer(
            (host.strip("[]") or "127.0.0.1", int(port)), shared, interface, ready
        )
    except OSError as exc:
        logger.error("metrics_bind: cannot listen on %s: %s", bind, exc.strerror)
        return None
    server.start()
    return server


class PidFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> PidFile:
        if self.path:
            with open(self.path, "w") as f:
                f.write(f"{os.getpid()}\n")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.path:
            try:
                with open(self.path) as f:
                    if f.read().strip() == str(os.getpid()):
                        os.unlink(self.path)
            except OSError:
                pass


class PipeHooks(WorkerHooks):
    """The worker side of the master <-> worker channel."""

    def __init__(self, fd: int, heartbeat: mmap.mmap, max_requests: int) -> None:
        self.fd = fd
        self.heartbeat = heartbeat
        self.max_requests = max_requests
        self.retiring = False

    def ready(self) -> None:
        os.write(self.fd, b"R")

    def tick(self, requests: int) -> None:
        struct.pack_into("d", self.heartbeat, 0, time.monotonic())
        if self.max_requests and requests >= self.max_requests and not self.retiring:
            self.retiring = True
            os.write(self.fd, b"M")


class WorkerProcess:
    __slots__ = (
        "generation",
        "heartbeat",
        "kill_at",
        "pid",
        "pipe",
        "ready",
        "retire_now",
        "retiring",
        "slot",
        "started",
        "stopping",
        "timed_out",
    )

    def __init__(
        self, pid: int, generation: int, pipe: int | None, heartbeat: mmap.mmap | None
    ) -> None:
        self.pid = pid
        self.generation = generation
        self.pipe = pipe
        self.heartbeat = heartbeat
        self.started = time.monotonic()
        self.ready = False
        self.retiring = False  # to be stopped once replacements are ready
        self.retire_now = False  # to be stopped without waiting (TTOU, --reload)
        self.stopping = False  # a stop signal was sent
        self.kill_at = 0.0  # when to SIGKILL if it has not exited
        self.timed_out = False  # killed as silent before it was ready: a boot failure
        self.slot = 0  # its metrics slot (0: none)

    def beat(self) -> float:
        if self.heartbeat is None:
            return time.monotonic()
        value: float = struct.unpack_from("d", self.heartbeat, 0)[0]
        return value


class Supervisor:
    def __init__(
        self,
        config: Config,
        argv: Sequence[str] | None = None,
        reparse: Callable[[], Config] | None = None,
    ) -> None:
        self.config = config
        self.argv = list(argv) if argv is not None else None
        self.reparse = reparse
        self.metrics: SharedMetrics | None = None  # --metrics-bind
        self.master_metrics: WorkerMetrics | None = None
        self.metrics_server: MetricsServer | None = None
        self.listeners: list[Listener] = []
        self.workers: dict[int, WorkerProcess] = {}
        self.wanted = 1 if config.reload else (config.workers or os.cpu_count() or 1)
        self.generation = 0
        self.exit_code = EXIT_OK
        self._signals: list[int] = []
        self._stopping = False
        self._stop_deadline = 0.0
        self._boot_failures = 0
        self._crashes = 0
        self._next_spawn = 0.0
        self._spawn_blocked = False
        self._notified_ready = False
        self._wakeup_r = -1
        self._wakeup_w = -1
        self._changes: list[set[Any]] = []
        self._watch_stop = threading.Event()

    # -- the master loop --------------------------------------------------------

    def run(self) -> int:
        config = self.config
        if config.umask:
            os.umask(int(config.umask, 8))
        try:
            self.listeners = [] if config.reuse_port else bind_listeners(config)
        except BindError as exc:
            logger.error("%s", exc)
            return EXIT_STARTUP_FAILED
        drop_privileges(config.user, config.group)  # before --preload runs any app code
        if config.preload:
            try:
                app = load_app(config.app, factory=config.factory, app_dir=config.app_dir)
            except LoadError as exc:
                logger.error("%s", exc)
                if not os.environ.get(RETIRE_ENV):
                    return EXIT_LOAD_FAILED
                # Re-executed by HUP onto broken code: orphaning the old workers would be
                # worse than keeping them; the next HUP tries again.
                logger.error("Reload failed: the old workers keep serving; fix it and send HUP")
                self._spawn_blocked = True
            else:
                self.config = config.replace(app=app, factory=False)
        metrics_server = self._start_metrics()
        if config.metrics_bind and metrics_server is None:
            for listener in self.listeners:
                listener.close()
            return EXIT_STARTUP_FAILED
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in HANDLED_SIGNALS}
        old_wakeup = signal.set_wakeup_fd(self._wakeup_w)
        watcher = None
        if config.reload:
            watcher = threading.Thread(target=self._watch, name="threshold-reload", daemon=True)
            watcher.start()
        self._adopt_old_workers()
        logger.info("Master %d starting %d worker(s)", os.getpid(), self.wanted)
        try:
            with PidFile(config.pid):
                while True:
                    self._handle_signals()
                    self._handle_changes()
                    self._reap()
                    now = time.monotonic()
                    if self._stopping:
                        if not self.workers:
                            break
                        self._escalate(now)
                    else:
                        self._check_timeouts(now)
                        self._retire(now)
                        self._maintain(now)
                    self._wait(0.25)
        finally:
            if metrics_server is not None:
                metrics_server.stop()
            self._watch_stop.set()
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for listener in self.listeners:
                listener.close()
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
        sd_notify("STATUS=stopped")
        logger.info("Master %d stopped", os.getpid())
        return self.exit_code

    def _start_metrics(self) -> MetricsServer | None:
        """--metrics-bind: shared slots (0 for the master) and the listener, in the master."""
        config = self.config
        if not config.metrics_bind:
            return None
        self.metrics = SharedMetrics(1 + max(64, 2 * self.wanted))
        self.master_metrics = self.metrics.slot(0)
        self.metrics_server = _metrics_server(
            config.metrics_bind,
            self.metrics,
            lambda: self.metrics.interface() if self.metrics else config.interface,
            lambda: (
                not self._stopping
                and any(w.ready and not w.stopping for w in self.workers.values())
            ),
        )
        return self.metrics_server

    def _free_slot(self) -> int:
        if self.metrics is None:
            return 0
        used = {w.slot for w in self.workers.values()}
        return next((i for i in range(1, self.metrics.slots) if i not in used), 0)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)  # only enqueue; the loop acts

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig == signal.SIGCHLD:
                continue  # reaped below
            name = signal.Signals(sig).name
            if sig in (signal.SIGTERM, signal.SIGINT):
                if self._stopping:
                    self._stop(signal.SIGQUIT, KILL_GRACE)  # second signal: stop now
                else:
                    logger.info("%s: stopping gracefully", name)
                    self._stop(signal.SIGTERM, self.config.timeout_graceful_shutdown + KILL_GRACE)
            elif sig == signal.SIGQUIT:
                logger.info("SIGQUIT: stopping now")
                self._stop(signal.SIGQUIT, KILL_GRACE)
            elif self._stopping:
                continue
            elif sig == signal.SIGHUP:
                self._reload()
            elif sig == signal.SIGTTIN:
                self.wanted += 1
                logger.info("SIGTTIN: %d worker(s)", self.wanted)
            elif sig == signal.SIGTTOU:
                if self.wanted > 1:
                    self.wanted -= 1
                    active = [w for w in self.workers.values() if not w.retiring]
                    if active:
                        newest = max(active, key=lambda w: w.started)
                        newest.retiring = newest.retire_now = True
                logger.info("SIGTTOU: %d worker(s)", self.wanted)
            elif sig == signal.SIGUSR1:
                reopen_log_files()
                for worker in self.workers.values():
                    _kill(worker.pid, signal.SIGUSR1)

    def _stop(self, sig: int, grace: float) -> None:
        self._stopping = True
        sd_notify("STOPPING=1")
        self._stop_deadline = time.monotonic() + grace
        for worker in self.workers.values():
            worker.stopping = True
            _kill(worker.pid, sig)

    def _escalate(self, now: float) -> None:
        if now >= self._stop_deadline:
            for worker in self.workers.values():
                logger.warning("Worker %d did not stop in time; killing it", worker.pid)
                _kill(worker.pid, signal.SIGKILL)
            self._stop_deadline = now + KILL_GRACE

    def _reload(self) -> None:
        logger.info("SIGHUP: reloading (new workers start, then the old ones drain)")
        sd_notify("RELOADING=1")
        if self.config.preload and self.argv is not None:
            self._reexec()
            return
        if self.reparse is not None:
            try:
                # Re-read the config file and environment with the same command line.
                new = self.reparse()
            except (ConfigError, SystemExit) as exc:
                logger.error("Reload: keeping the old config, the new one is invalid: %s", exc)
                new = self.config
            if not new.reuse_port and (new.bind != self.config.bind):
                logger.warning("Reload: --bind changes need a restart; keeping the sockets")
            self.config = new.replace(bind=self.config.bind, reuse_port=self.config.reuse_port)
            self.wanted = new.workers or os.cpu_count() or 1
        self._new_generation(retire_now=False)

    def _new_generation(self, retire_now: bool) -> None:
        self.generation += 1
        self._spawn_blocked = False
        self._boot_failures = 0
        self._next_spawn = 0.0
        for worker in self.workers.values():
            worker.retiring = True
            worker.retire_now = worker.retire_now or retire_now

    def _reexec(self) -> None:
        """HUP with --preload: exec a new master that keeps the sockets and retires us."""
        assert self.argv is not None
        env = dict(os.environ)
        fds = [listener.sock.fileno() for listener in self.listeners]
        high = [os.dup(fd) for fd in fds]  # out of the way of 3, 4, ...
        for index, fd in enumerate(high):
            os.dup2(fd, 3 + index, inheritable=True)
        env["LISTEN_FDS"] = str(len(fds))
        env["LISTEN_PID"] = str(os.getpid())
        env[RETIRE_ENV] = ",".join(str(pid) for pid in self.workers)
        signal.set_wakeup_fd(-1)
        logger.info("Re-executing the master to load new code")
        os.execve(sys.executable, [sys.executable, "-m", "threshold", *self.argv], env)

    def _adopt_old_workers(self) -> None:
        pids = os.environ.pop(RETIRE_ENV, "")
        os.environ.pop("LISTEN_FDS", None)
        os.environ.pop("LISTEN_PID", None)
        for text in filter(None, pids.split(",")):
            worker = WorkerProcess(int(text), -1, None, None)
            worker.ready = worker.retiring = True
            self.workers[worker.pid] = worker

    # -- workers --------------------------------------------------------------------

    def _maintain(self, now: float) -> None:
        if self._spawn_blocked or now < self._next_spawn:
            return
        active = sum(1 for w in self.workers.values() if not w.retiring)
        for _ in range(self.wanted - active):
            self._spawn()

    def _retire(self, now: float) -> None:
        ready = sum(1 for w in self.workers.values() if w.ready and not w.retiring)
        for worker in self.workers.values():
            if (
                worker.retiring
                and not worker.stopping
                and (worker.retire_now or ready >= self.wanted)
            ):
                worker.stopping = True
                worker.kill_at = now + self.config.timeout_graceful_shutdown + KILL_GRACE
                _kill(worker.pid, signal.SIGTERM)
            elif worker.stopping and worker.kill_at and now >= worker.kill_at:
                logger.warning("Worker %d did not stop in time; killing it", worker.pid)
                _kill(worker.pid, signal.SIGKILL)
                worker.kill_at = now + KILL_GRACE

    def _check_timeouts(self, now: float) -> None:
        limit = self.config.worker_timeout
        for worker in self.workers.values():
            if worker.stopping or worker.heartbeat is None:
                continue
            if now - worker.beat() > limit:
                logger.error(
                    "Worker %d silent for over %gs (event loop blocked); replacing it",
                    worker.pid,
                    limit,
                )
                _kill(worker.pid, signal.SIGABRT)
                if self.master_metrics is not None:
                    self.master_metrics.heartbeat_missed()
                    self.master_metrics.worker_restarted()
                worker.timed_out = not worker.ready
                worker.retiring = worker.retire_now = worker.stopping = True
                worker.kill_at = now + 1.0

    def _spawn(self) -> None:
        read_fd, write_fd = os.pipe()
        heartbeat = mmap.mmap(-1, mmap.PAGESIZE)
        struct.pack_into("d", heartbeat, 0, time.monotonic())
        # Block our signals across fork: a signal reaching the child before it resets
        # the master's handlers would be swallowed (a TERM lost, the worker kept).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        slot = self._free_slot()
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if pid == 0:  # the worker
            code = EXIT_WORKER_CRASH
            try:
                os.close(read_fd)
                code = self._worker_main(write_fd, heartbeat, mask, slot)
            except BaseException:
                logger.exception("Worker crashed")
            finally:
                os._exit(code)
        os.close(write_fd)
        worker = WorkerProcess(pid, self.generation, read_fd, heartbeat)
        worker.slot = slot
        self.workers[pid] = worker
        logger.debug("Spawned worker %d (generation %d)", pid, self.generation)

    def _worker_main(self, write_fd: int, heartbeat: mmap.mmap, mask: set[Any], slot: int) -> int:
        signal.set_wakeup_fd(-1)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, signal.SIG_IGN)  # meant for the master
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a pending TERM now stops us
        for fd in (self._wakeup_r, self._wakeup_w):
            os.close(fd)
        for worker in self.workers.values():
            if worker.pipe is not None:
                os.close(worker.pipe)
        if self.metrics_server is not None:
            # The master's listener: a worker holding it would keep the port from a
            # re-executed master (HUP with --preload) or outlive a killed master on it.
            self.metrics_server.httpd.socket.close()
        config = self.config
        max_requests = 0
        if config.max_requests:
            max_requests = config.max_requests + random.randint(0, config.max_requests_jitter)
        listeners = self.listeners or bind_listeners(config, reuse_port=True)
        hooks = PipeHooks(write_fd, heartbeat, max_requests)
        metrics = self.metrics.slot(slot) if self.metrics is not None and slot else None
        return run_server(Server(config, listeners, hooks, metrics))

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            if self.metrics is not None and worker.slot:
                self.metrics.slot(worker.slot).start()  # its gauges and lost requests go
            if worker.pipe is not None:
                os.close(worker.pipe)
            if worker.heartbeat is not None:
                worker.heartbeat.close()
            code = os.waitstatus_to_exitcode(status)
            how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
            if (worker.stopping and not worker.timed_out) or self._stopping:
                logger.info("Worker %d stopped (%s)", pid, how)
                continue
            now = time.monotonic()
            if not worker.ready:
                self._boot_failures += 1
                logger.error(
                    "Worker %d failed to boot (%s) [%d in a row]", pid, how, self._boot_failures
                )
                if self.config.reload:
                    logger.error("Waiting for a file change to try again")
                    self._spawn_blocked = True
                elif self._boot_failures >= self.config.boot_failures:
                    if any(w.ready for w in self.workers.values()):
                        logger.error("New workers keep failing; old workers keep serving")
                        self._spawn_blocked = True
                    else:
                        logger.error(
                            "Workers failed to boot %d times in a row; stopping (exit code %d)",
                            self._boot_failures,
                            EXIT_BOOT_FAILED,
                        )
                        self.exit_code = EXIT_BOOT_FAILED
                        self._stop(signal.SIGTERM, KILL_GRACE)
                        return
            else:
                self._crashes = 0 if now - worker.started > 30 else self._crashes + 1
                logger.error("Worker %d died unexpectedly (%s); restarting it", pid, how)
                if self.master_metrics is not None:
                    self.master_metrics.worker_restarted()
            failures = max(self._crashes, self._boot_failures)
            self._next_spawn = now + min(0.1 * 2 ** max(failures - 1, 0), MAX_BACKOFF)

    def _wait(self, timeout: float) -> None:
        pipes = {w.pipe: w for w in self.workers.values() if w.pipe is not None}
        try:
            readable, _, _ = select.select([self._wakeup_r, *pipes], [], [], timeout)
        except InterruptedError:
            return
        for fd in readable:
            if fd == self._wakeup_r:
                try:
                    while os.read(fd, 4096):
                        pass
                except BlockingIOError:
                    pass
                continue
            worker = pipes[fd]
            try:
                data = os.read(fd, 64)
            except OSError:
                data = b""
            if not data:
                os.close(fd)
                worker.pipe = None
                continue
            if b"R" in data:
                worker.ready = True
                self._boot_failures = 0
                logger.info("Worker %d ready", worker.pid)
                self._maybe_notify_ready()
            if b"M" in data and not worker.retiring:
                logger.info("Worker %d reached --max-requests; replacing it", worker.pid)
                worker.retiring = True

    def _maybe_notify_ready(self) -> None:
        ready = sum(1 for w in self.workers.values() if w.ready and not w.retiring)
        if ready >= self.wanted:
            if not self._notified_ready:
                self._notified_ready = True
                sd_notify(f"READY=1\nSTATUS=serving with {ready} worker(s)\nMAINPID={os.getpid()}")
            else:
                sd_notify(f"READY=1\nSTATUS=serving with {ready} worker(s)")

    # -- --reload ---------------------------------------------------------------------

    def _watch(self) -> None:
        import fnmatch

        from watchfiles import watch

        config = self.config
        dirs = config.reload_dir or [config.app_dir]
        include, exclude = config.reload_include, config.reload_exclude

        def wanted(change: Any, path: str) -> bool:
            parts = path.split(os.sep)
            if any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in exclude):
                return False
            return any(fnmatch.fnmatch(parts[-1], pattern) for pattern in include)

        logger.info("Watching %s for changes (%s)", ", ".join(dirs), ", ".join(include))
        for changes in watch(
            *dirs, watch_filter=wanted, stop_event=self._watch_stop, raise_interrupt=False
        ):
            self._changes.append(changes)
            try:
                os.write(self._wakeup_w, b"c")
            except OSError:
                return

    def _handle_changes(self) -> None:
        if not self._changes or self._stopping:
            return
        changed = sorted({path for batch in self._changes for _, path in batch})
        self._changes.clear()
        logger.info("Changes in %s; restarting the worker", ", ".join(changed[:5]))
        self._new_generation(retire_now=True)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def drop_privileges(user: str, group: str) -> None:
    """Switch user/group after binding, when started as root."""
    if not (user or group) or os.getuid() != 0:
        return
    import grp
    import pwd

    if group:
        os.setgid(grp.getgrnam(group).gr_gid)
    if user:
        entry = pwd.getpwnam(user)
        if not group:
            os.setgid(entry.pw_gid)
        os.initgroups(entry.pw_name, os.getgid())
        os.setuid(entry.pw_uid)


def sd_notify(message: str) -> None:
    """Tell systemd about our state when NOTIFY_SOCKET is set (Type=notify)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        logger.debug("sd_notify failed: %s", exc)
