"""Side-by-side benchmark of Threshold against peer ASGI/WSGI servers.

Usage (from the repo root; ``make bench`` / ``make bench-quick`` do this)::

    python bench/run.py            # full: every scenario at 1, 64 and 256 connections
    python bench/run.py --quick    # hello-world only, 64 connections, 3 rounds

The script does its own set-up: it creates ``bench/.venv`` with the peers pinned in
``bench/requirements.txt`` plus Threshold (editable), and installs ``wrk`` and
``h2load`` from Debian when they are missing. Each server runs one worker pinned to
one core; wrk runs pinned to another. Servers of a scenario are started together,
warmed up, then measured in interleaved rounds (A B C A B C ...); the median round is
reported. Results go to stdout, ``bench/results/*.json`` and ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = BENCH / ".venv"
VENV_BIN = VENV / "bin"
RESULTS = BENCH / "results"
DOCS = REPO / "docs" / "benchmarks.md"
REQUIREMENTS = BENCH / "requirements.txt"

HOST = "127.0.0.1"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
ECHO_BODY_SIZE = 4096
# A core busier than this before the run, or other processes taking more than this of
# the server's core in a round, make the report warn that req/s are noisy.
BUSY_WARNING = 0.05
# Packages whose versions the report names (distribution names in bench/.venv).
VERSIONED = ("threshold", "uvicorn", "granian", "hypercorn", "gunicorn", "waitress")
VERSIONED_LIBS = ("uvloop", "httptools")


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    interface: str  # "asgi" or "wsgi"
    app: str  # attribute of bench.apps
    title: str
    method: str = "GET"
    path: str = "/"
    body: bytes = b""
    quick: bool = False

    @property
    def target(self) -> str:
        return f"bench.apps:{self.app}"

    def expected_body(self) -> bytes:
        if self.app.endswith("_10k"):
            return b"x" * 10240
        if self.app.endswith("_echo"):
            return self.body
        return b"Hello, world!"


_ECHO = b"e" * ECHO_BODY_SIZE
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("hello-asgi", "asgi", "asgi_app", "ASGI hello-world (13 B)", quick=True),
    Scenario("hello-wsgi", "wsgi", "wsgi_app", "WSGI hello-world (13 B)", quick=True),
    Scenario("10k-asgi", "asgi", "asgi_10k", "ASGI GET 10 KiB"),
    Scenario("10k-wsgi", "wsgi", "wsgi_10k", "WSGI GET 10 KiB"),
    Scenario("echo-asgi", "asgi", "asgi_echo", "ASGI POST echo 4 KiB", "POST", "/echo", _ECHO),
    Scenario("echo-wsgi", "wsgi", "wsgi_echo", "WSGI POST echo 4 KiB", "POST", "/echo", _ECHO),
)


# --------------------------------------------------------------------------- servers

Argv = Callable[[str, int], list[str]]


def _bin(name: str) -> str:
    return str(VENV_BIN / name)


@dataclass(frozen=True)
class Server:
    name: str  # unique label in tables, e.g. "uvicorn"
    interface: str
    argv: Argv
    full_only: bool = False
    note: str = ""


SERVERS: tuple[Server, ...] = (
    Server(
        "threshold",
        "asgi",
        lambda app, port: [
            _bin("threshold"), app, "--bind", f"{HOST}:{port}", "--interface", "asgi3",
            "--no-access-log", "--log-level", "warning",
        ],
    ),
    Server(
        "uvicorn",
        "asgi",
        lambda app, port: [
            _bin("uvicorn"), app, "--host", HOST, "--port", str(port), "--loop", "uvloop",
            "--http", "httptools", "--no-access-log", "--log-level", "warning",
        ],
        note="httptools + uvloop",
    ),
    Server(
        "granian",
        "asgi",
        lambda app, port: [
            _bin("granian"), "--interface", "asgi", "--host", HOST, "--port", str(port),
            "--workers", "1", "--runtime-threads", "1", "--loop", "uvloop", "--http", "1",
            "--no-access-log", "--log-level", "warning", app,
        ],
        note="uvloop, HTTP/1 only, 1 runtime thread",
    ),
    Server(
        "hypercorn",
        "asgi",
        lambda app, port: [
            _bin("hypercorn"), "--bind", f"{HOST}:{port}", "--workers", "1",
            "--worker-class", "uvloop", "--log-level", "warning", app,
        ],
        full_only=True,
        note="uvloop worker",
    ),
    Server(
        "threshold",
        "wsgi",
        lambda app, port: [
            _bin("threshold"), app, "--bind", f"{HOST}:{port}", "--interface", "wsgi",
            "--threads", "8", "--no-access-log", "--log-level", "warning",
        ],
        note="8 threads",
    ),
    Server(
        "gunicorn",
        "wsgi",
        lambda app, port: [
            _bin("gunicorn"), "-k", "gthread", "--threads", "8", "-w", "1",
            "--bind", f"{HOST}:{port}", "--log-level", "warning", "--graceful-timeout", "5",
            app,
        ],
        note="gthread, 8 threads",
    ),
    Server(
        "granian",
        "wsgi",
        lambda app, port: [
            _bin("granian"), "--interface", "wsgi", "--host", HOST, "--port", str(port),
            "--workers", "1", "--runtime-threads", "1", "--blocking-threads", "8",
            "--http", "1", "--no-access-log", "--log-level", "warning", app,
        ],
        # granian's WSGI default is backpressure/2 = 512 blocking threads; pin to 8 like
        # the others so the comparison is of servers, not of pool sizes.
        note="8 blocking threads, HTTP/1 only",
    ),
    Server(
        "waitress",
        "wsgi",
        lambda app, port: [
            _bin("waitress-serve"), f"--listen={HOST}:{port}", "--threads=8",
            # The default limit of 100 connections would make -c256 measure the limit.
            "--connection-limit=1024", app,
        ],
        note="8 threads, connection limit 1024",
    ),
    Server(
        "uvicorn",
        "wsgi",
        lambda app, port: [
            _bin("uvicorn"), app, "--interface", "wsgi", "--host", HOST, "--port", str(port),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning",
        ],
        full_only=True,
        note="--interface wsgi, httptools + uvloop",
    ),
)  # fmt: skip

BASELINES = {"asgi": ("uvicorn", "granian"), "wsgi": ("uvicorn", "granian", "gunicorn")}


# --------------------------------------------------------------------------- set-up


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _apt_install(packages: Sequence[str]) -> bool:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", *packages]
    if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode == 0:
        return True
    # A fresh machine has no package lists yet.
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
    return subprocess.run(cmd, env=env, capture_output=True, check=False).returncode == 0


def ensure_tools() -> None:
    """wrk and taskset are required; h2load (for the HTTP/2 benchmarks) is best effort."""
    for tool, package, required in (
        ("wrk", "wrk", True),
        ("taskset", "util-linux", True),
        ("h2load", "nghttp2-client", False),
    ):
        if shutil.which(tool):
            continue
        log(f"installing {package} for {tool}")
        if not _apt_install([package]) or not shutil.which(tool):
            if required:
                sys.exit(f"bench: {tool} is missing; install it (apt-get install {package})")
            log(f"warning: could not install {package}; {tool} is unavailable")


def _stamp() -> str:
    digest = hashlib.sha256()
    for path in (REQUIREMENTS, REPO / "pyproject.toml"):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_venv() -> None:
    """Create bench/.venv with the pinned peers and Threshold (editable), once."""
    stamp_file = VENV / ".bench-installed"
    stamp = _stamp()
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        return
    if not (VENV_BIN / "python").exists():
        log(f"creating {VENV.relative_to(REPO)}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    log("installing peers from bench/requirements.txt and threshold (editable)")
    _pip_install("-r", str(REQUIREMENTS), "-e", str(REPO))
    stamp_file.write_text(stamp)


def _pip_install(*args: str) -> None:
    """pip install into bench/.venv; its chatter is shown only when it fails."""
    argv = [str(VENV_BIN / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*argv, *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        sys.exit(f"bench: pip install {' '.join(args)} failed ({done.returncode})")


def ensure_editable_threshold() -> None:
    """Reinstall Threshold if the editable install does not map to this work tree.

    An editable install made before ``threshold/__init__.py`` existed maps a namespace
    package, which breaks the ``threshold`` script once the real package appears.
    """
    probe = "import threshold; print(getattr(threshold, '__file__', None))"
    python = str(VENV_BIN / "python")
    found = subprocess.run([python, "-I", "-c", probe], capture_output=True, text=True, cwd="/")
    if found.stdout.strip() == str(REPO / "threshold" / "__init__.py"):
        return
    if not (REPO / "threshold" / "__init__.py").exists():
        return  # nothing to map yet; Threshold will be reported as failed
    log("reinstalling threshold (editable) into bench/.venv")
    _pip_install("--no-deps", "-e", str(REPO))


# --------------------------------------------------------------------------- processes


class ProcStat(NamedTuple):
    ppid: int
    state: str
    started: int  # clock ticks after boot; tells a reused PID apart
    cpu: int  # user + system clock ticks, all threads


def _stat(pid: int) -> ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return ProcStat(int(fields[1]), fields[0], int(fields[19]), int(fields[11]) + int(fields[12]))


def _descendants(root: int) -> list[tuple[int, int]]:
    """(pid, start time) of every process below root, so we stop only what we started."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := _stat(int(entry))) is not None:
            children.setdefault(info.ppid, []).append((int(entry), info.started))
    found: list[tuple[int, int]] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _alive(pid: int, started: int) -> bool:
    info = _stat(pid)
    return info is not None and info.started == started and info.state != "Z"


def _tree_cpu(pid: int) -> int:
    """CPU clock ticks used so far by a process and its live descendants."""
    total = 0
    for member in (pid, *(child for child, _ in _descendants(pid))):
        if (info := _stat(member)) is not None:
            total += info.cpu
    return total


def _core_ticks(core: int) -> tuple[int, int]:
    """(busy, total) clock ticks of one core since boot, from /proc/stat."""
    prefix = f"cpu{core} "
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(prefix):
            values = [int(v) for v in line.split()[1:9]]  # guest time is already in user
            return sum(values) - values[3] - values[4], sum(values)
    return 0, 0


def busy_share(core: int, seconds: float) -> float:
    """How busy a core is over a short interval (0..1): is the machine idle?"""
    busy0, total0 = _core_ticks(core)
    time.sleep(seconds)
    busy1, total1 = _core_ticks(core)
    return (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate, then kill after a timeout; the same for any descendant left behind."""
    descendants = _descendants(proc.pid)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = [(pid, started) for pid, started in descendants if _alive(pid, started)]
        if not left:
            return
        for pid, _ in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and any(_alive(p, s) for p, s in left):
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def http_request(port: int, scenario: Scenario, timeout: float = 2.0) -> tuple[int, bytes]:
    """One request on a fresh connection; returns (status, body)."""
    head = (
        f"{scenario.method} {scenario.path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Length: {len(scenario.body)}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(head.encode() + scenario.body)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < _wanted(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    lines = head_bytes.split(b"\r\n")
    status = int(lines[0].split()[1])
    return status, body


def _wanted(data: bytes) -> int:
    """Total bytes of a response whose head is in data (content-length framing)."""
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return sys.maxsize  # read to EOF


@dataclass
class Running:
    server: Server
    port: int
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    error: str = ""
    log_path: Path | None = None

    def log_tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])


def start_server(server: Server, scenario: Scenario, core: int, log_dir: Path) -> Running:
    port = free_port()
    argv = server.argv(scenario.target, port)
    running = Running(server, port, argv)
    running.log_path = log_dir / f"{scenario.name}-{server.name}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("VIRTUAL_ENV", None)
    with running.log_path.open("wb") as out:
        try:
            running.proc = subprocess.Popen(
                ["taskset", "-c", str(core), *argv],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            running.error = f"could not start: {exc}"
            return running
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        code = running.proc.poll()
        if code is not None:
            running.error = f"exited with code {code} before it was ready"
            return running
        try:
            status, body = http_request(port, scenario)
        except (OSError, ValueError, IndexError):
            if time.monotonic() > deadline:
                running.error = f"not ready after {READY_TIMEOUT:.0f} s"
                return running
            time.sleep(0.05)
            continue
        if status != 200 or body != scenario.expected_body():
            running.error = f"wrong response: status {status}, {len(body)} body bytes"
        return running


@contextmanager
def servers_running(
    servers: Sequence[Server], scenario: Scenario, core: int, log_dir: Path
) -> Iterator[list[Running]]:
    started: list[Running] = []
    try:
        for server in servers:
            running = start_server(server, scenario, core, log_dir)
            started.append(running)
            if running.error:
                log(f"{scenario.name}: {server.name} failed: {running.error}")
                if tail := running.log_tail():
                    log("  " + tail.replace("\n", "\n  "))
        yield started
    finally:
        for running in started:
            if running.proc is not None:
                stop_process(running.proc)


# --------------------------------------------------------------------------- wrk

_LUA_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,'
    .. '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
    .. '"max_us":%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"""


def wrk_script(scenario: Scenario, directory: Path) -> Path:
    """A script that only sets the request and reports in done(): wrk's fast path stays."""
    lines = [f'wrk.method = "{scenario.method}"']
    if scenario.body:
        lines.append(f'wrk.body = "{scenario.body.decode("ascii")}"')
        lines.append('wrk.headers["Content-Type"] = "application/octet-stream"')
    path = directory / f"{scenario.name}.lua"
    path.write_text("\n".join(lines) + "\n" + _LUA_DONE)
    return path


@dataclass
class Round:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: dict[str, int]
    # Shares of one core over the round (0..1): the server's own CPU time, what other
    # processes took on the server's core, and how busy the client's core was.
    server_cpu: float = 0.0
    server_core_other: float = 0.0
    client_core_busy: float = 0.0

    @property
    def per_cpu_second(self) -> float:
        """Requests per second of server CPU: steadier than req/s on a shared machine."""
        return self.requests_per_s / self.server_cpu if self.server_cpu else 0.0


def wrk_command(core: int, connections: int, seconds: float, script: Path, url: str) -> list[str]:
    return [
        "taskset", "-c", str(core), "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s",
        "--latency", "-s", str(script), url,
    ]  # fmt: skip


def run_wrk(argv: list[str], seconds: float) -> Round | str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        return "wrk timed out"
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line.removeprefix("BENCH_JSON "))
            errors = {
                "non_2xx_3xx": data["status"],
                "connect": data["connect"],
                "read": data["read"],
                "write": data["write"],
                "timeout": data["timeout"],
            }
            duration = data["duration_us"] / 1e6
            return Round(
                requests_per_s=data["requests"] / duration if duration else 0.0,
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                requests=data["requests"],
                errors=errors,
            )
    return f"wrk failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}"


# --------------------------------------------------------------------------- rounds


@dataclass(frozen=True)
class Plan:
    rounds: int
    duration: float
    warmup: float
    connections: list[int]
    server_core: int
    client_core: int
    work_dir: Path


def measure(
    running: Running, scenario: Scenario, connections: int, plan: Plan, script: Path, seconds: float
) -> Round | str:
    """One wrk run against one server, with the CPU shares of both cores over it."""
    if running.proc is None:
        return "not started"
    pid = running.proc.pid
    url = f"http://{HOST}:{running.port}{scenario.path}"
    argv = wrk_command(plan.client_core, connections, seconds, script, url)
    cpu0, server0, client0 = (
        _tree_cpu(pid),
        _core_ticks(plan.server_core),
        _core_ticks(plan.client_core),
    )
    outcome = run_wrk(argv, seconds)
    cpu1, server1, client1 = (
        _tree_cpu(pid),
        _core_ticks(plan.server_core),
        _core_ticks(plan.client_core),
    )
    if isinstance(outcome, Round) and server1[1] > server0[1] and client1[1] > client0[1]:
        span = server1[1] - server0[1]
        outcome.server_cpu = min(1.0, (cpu1 - cpu0) / span)
        outcome.server_core_other = max(0.0, (server1[0] - server0[0] - (cpu1 - cpu0)) / span)
        outcome.client_core_busy = (client1[0] - client0[0]) / (client1[1] - client0[1])
    return outcome


def run_scenario(scenario: Scenario, group: Sequence[Server], plan: Plan) -> list[Result]:
    """Start the group, warm each server up, then measure in interleaved rounds."""
    script = wrk_script(scenario, plan.work_dir)
    with servers_running(group, scenario, plan.server_core, plan.work_dir) as running:
        results = {
            (c, r.server.name): Result(
                scenario.name,
                scenario.interface,
                c,
                r.server.name,
                shlex.join(r.argv),
                status=r.error or "ok",
            )
            for c in plan.connections
            for r in running
        }
        live = [r for r in running if not r.error]
        for r in live:
            measure(r, scenario, max(plan.connections), plan, script, plan.warmup)
        for c in plan.connections:
            for i in range(plan.rounds):
                for r in live:
                    result = results[(c, r.server.name)]
                    if result.status != "ok":
                        continue
                    if r.proc is None or r.proc.poll() is not None:
                        result.status = "server exited during the run"
                        continue
                    outcome = measure(r, scenario, c, plan, script, plan.duration)
                    if isinstance(outcome, str):
                        result.status = outcome
                        continue
                    result.rounds.append(outcome)
                    log(
                        f"{scenario.name} c={c} round {i + 1}/{plan.rounds} {r.server.name}: "
                        f"{outcome.requests_per_s:,.0f} req/s, server CPU "
                        f"{outcome.server_cpu:.0%}, others on its core "
                        f"{outcome.server_core_other:.0%}"
                    )
    return list(results.values())


# --------------------------------------------------------------------------- results


@dataclass
class Result:
    scenario: str
    interface: str
    connections: int
    server: str
    command: str
    status: str = "ok"
    rounds: list[Round] = field(default_factory=list)

    def _median(self, key: Callable[[Round], float]) -> float:
        return statistics.median(key(r) for r in self.rounds) if self.rounds else 0.0

    @property
    def requests_per_s(self) -> float:
        return self._median(lambda r: r.requests_per_s)

    @property
    def p50_ms(self) -> float:
        return self._median(lambda r: r.p50_ms)

    @property
    def p99_ms(self) -> float:
        return self._median(lambda r: r.p99_ms)

    @property
    def server_cpu(self) -> float:
        return self._median(lambda r: r.server_cpu)

    @property
    def per_cpu_second(self) -> float:
        return self._median(lambda r: r.per_cpu_second)

    @property
    def worst_other(self) -> float:
        """The most CPU that other processes took on the server's core in any round."""
        return max((r.server_core_other for r in self.rounds), default=0.0)

    @property
    def spread(self) -> float:
        """(max - min) / median of req/s over the rounds."""
        values = [r.requests_per_s for r in self.rounds]
        median = self.requests_per_s
        return (max(values) - min(values)) / median if values and median else 0.0

    @property
    def errors(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for r in self.rounds:
            for key, value in r.errors.items():
                total[key] = total.get(key, 0) + value
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "interface": self.interface,
            "connections": self.connections,
            "server": self.server,
            "command": self.command,
            "status": self.status,
            "requests_per_s": round(self.requests_per_s, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "spread": round(self.spread, 4),
            "server_cpu": round(self.server_cpu, 3),
            "requests_per_cpu_s": round(self.per_cpu_second, 1),
            "worst_other_on_server_core": round(self.worst_other, 3),
            "errors": self.errors,
            "rounds": [asdict(r) for r in self.rounds],
        }


def _format_errors(errors: dict[str, int]) -> str:
    total = sum(errors.values())
    if not total:
        return "0"
    parts = ", ".join(f"{k} {v}" for k, v in errors.items() if v)
    return f"{total} ({parts})"


def table(results: Sequence[Result], scenario: Scenario, connections: int) -> str:
    rows = [r for r in results if r.scenario == scenario.name and r.connections == connections]
    ok = {r.server: r.requests_per_s for r in rows if r.status == "ok" and r.requests_per_s}
    baselines = [b for b in BASELINES[scenario.interface] if b in ok]
    header = ["server", "req/s", "± spread", "p50", "p99", "errors", "CPU", "req/CPU-s"]
    header += [f"vs {b}" for b in baselines]
    lines = [
        f"### {scenario.title} — {connections} connection{'s' if connections > 1 else ''}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for r in rows:
        if r.status != "ok":
            cells = [r.server, "failed", "", "", "", r.status, "", ""] + [""] * len(baselines)
        else:
            cells = [
                r.server,
                f"{r.requests_per_s:,.0f}",
                f"{r.spread * 50:.1f}%",
                f"{r.p50_ms:.2f} ms",
                f"{r.p99_ms:.2f} ms",
                _format_errors(r.errors),
                f"{r.server_cpu:.0%}",
                f"{r.per_cpu_second:,.0f}",
            ]
            cells += [f"{r.requests_per_s / ok[b]:.2f}x" for b in baselines]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- metadata


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return (
        (done.stdout or done.stderr).strip().splitlines()[0] if done.stdout or done.stderr else ""
    )


def collect_versions() -> dict[str, str]:
    code = (
        "import json, platform, importlib.metadata as m\n"
        "v = {}\n"
        f"for name in {(*VERSIONED, *VERSIONED_LIBS)!r}:\n"
        "    try: v[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: v[name] = 'not installed'\n"
        "v['python'] = platform.python_version()\n"
        "print(json.dumps(v))\n"
    )
    done = subprocess.run(
        [str(VENV_BIN / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    versions: dict[str, str] = json.loads(done.stdout)
    commit = _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    if commit and " " not in commit:
        dirty = _first_line(["git", "-C", str(REPO), "status", "--porcelain", "threshold"])
        versions["threshold"] += f" ({commit}{', dirty' if dirty else ''})"
    else:
        versions["threshold"] += " (no commit yet)"
    versions["wrk"] = _first_line(["wrk", "-v"]).split(" [")[0]
    if shutil.which("h2load"):
        versions["h2load"] = _first_line(["h2load", "--version"])
    return versions


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "os": _os_name(),
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


# --------------------------------------------------------------------------- docs


def write_docs(
    meta: dict[str, Any], results: Sequence[Result], scenarios: Sequence[Scenario]
) -> None:
    versions: dict[str, str] = meta["versions"]
    mach = meta["machine"]
    out = [
        "# Benchmarks",
        "",
        "Generated by `bench/run.py`; do not edit by hand. Re-run with `make bench` "
        "(full) or `make bench-quick`.",
        "",
        f"- **Date:** {meta['date']}",
        f"- **Command:** `{meta['command']}` ({meta['mode']} mode)",
        f"- **Machine:** {mach['cpu']}, {mach['cores']} cores, {mach['os']}, "
        f"Linux {mach['kernel']}",
        f"- **Python:** {versions['python']}",
        "",
        "## Versions",
        "",
        "| component | version |",
        "|---|---|",
    ]
    for name, version in versions.items():
        if name != "python":
            out.append(f"| {name} | {version} |")
    method = meta["method"]
    out += [
        "",
        "## Method",
        "",
        f"Each server runs one worker pinned to core {method['server_core']} "
        f"(`taskset -c {method['server_core']}`); wrk runs pinned to core "
        f"{method['client_core']}, one thread, HTTP/1.1 keep-alive, over loopback. "
        f"The servers of a scenario are started together on free ports, each is warmed up "
        f"for {method['warmup_s']:g} s, then measured in {method['rounds']} interleaved "
        f"rounds of {method['duration_s']:g} s (A B C A B C …). Tables show the median "
        "round: req/s, the spread of req/s over the rounds as ± half of (max - min) / "
        "median, p50 and p99 latency from wrk, and the errors summed over all rounds "
        "(wrk's non-2xx/3xx responses and socket errors). Ratios divide by the named "
        "server's median in the same table. CPU is the share of its core that the server "
        "(all its processes and threads) used in the median round; req/CPU-s is requests "
        "per second of that CPU time, a figure that stays steadier than req/s when other "
        "work shares the machine.",
        "",
        "wrk command (N = connections; SCENARIO.lua, written by run.py, only sets the "
        "method and body and reports in `done()`, so wrk keeps its fast path):",
        "",
        f"    {meta['wrk_command']}",
        "",
        "Server commands (APP = the scenario's app in `bench/apps.py`, PORT = a free port):",
        "",
        "| interface | server | command | notes |",
        "|---|---|---|---|",
    ]
    for s in SERVERS:
        if meta["mode"] == "quick" and s.full_only:
            continue
        cmd = shlex.join(s.argv("APP", 0)).replace(str(VENV_BIN) + "/", "").replace(":0", ":PORT")
        cmd = cmd.replace("--port 0", "--port PORT")
        out.append(f"| {s.interface.upper()} | {s.name} | `{cmd}` | {s.note} |")
    out += ["", "## Results", ""]
    busy = meta["busy_before_run"]
    other = meta["worst_other_on_server_core"]
    if max(busy.values(), default=0.0) > BUSY_WARNING or other > BUSY_WARNING:
        out += [
            "**Noisy run:** the machine was not idle (cores busy before the run: "
            + ", ".join(f"{k} {v:.0%}" for k, v in busy.items())
            + f"; other processes took up to {other:.0%} of the server's core in a round). "
            "Compare req/CPU-s, and re-run on an idle machine before drawing conclusions.",
            "",
        ]
    for scenario in scenarios:
        for connections in meta["method"]["connections"]:
            out += [table(results, scenario, connections), ""]
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text("\n".join(out))


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="hello-world at -c64, 3 rounds")
    parser.add_argument("--rounds", type=int, help="rounds per server (default 3)")
    parser.add_argument("--duration", type=float, help="seconds per round (5, quick 4)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per server")
    parser.add_argument(
        "--connections", type=int, nargs="+", help="connection counts (1 64 256, quick 64)"
    )
    parser.add_argument("--scenarios", nargs="+", help="scenario names to run (default: all)")
    parser.add_argument("--servers", nargs="+", help="server names to run (default: all)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the docs page")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quick: bool = args.quick
    rounds: int = args.rounds or 3
    duration: float = args.duration or (4.0 if quick else 5.0)
    connections: list[int] = args.connections or ([64] if quick else [1, 64, 256])
    scenarios = [s for s in SCENARIOS if s.quick or not quick]
    if args.scenarios:
        scenarios = [s for s in SCENARIOS if s.name in args.scenarios]
    servers = [s for s in SERVERS if not (quick and s.full_only)]
    if args.servers:
        servers = [s for s in servers if s.name in args.servers]
    if not scenarios or not servers:
        sys.exit("bench: nothing to run (check --scenarios / --servers)")

    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = cores[0], cores[1 if len(cores) > 1 else 0]
    if server_core == client_core:
        log("warning: only one core available; server and wrk share it")

    ensure_tools()
    ensure_venv()
    ensure_editable_threshold()
    idle_check = {
        f"core {c}": round(busy_share(c, 0.5), 3) for c in sorted({server_core, client_core})
    }
    if max(idle_check.values()) > BUSY_WARNING:
        log(f"warning: the machine is not idle before the run ({idle_check}); expect noise")
    started_at = dt.datetime.now(dt.timezone.utc)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    work_dir = RESULTS / f"{stamp}-work"
    work_dir.mkdir()

    per_scenario = [len([s for s in servers if s.interface == sc.interface]) for sc in scenarios]
    estimate = sum(n * (args.warmup + rounds * duration * len(connections)) for n in per_scenario)
    log(f"about {estimate / 60:.1f} min of load; logs in {work_dir.relative_to(REPO)}")

    plan = Plan(rounds, duration, args.warmup, connections, server_core, client_core, work_dir)
    results: list[Result] = []
    for scenario in scenarios:
        group = [s for s in servers if s.interface == scenario.interface]
        results.extend(run_scenario(scenario, group, plan))

    meta: dict[str, Any] = {
        "date": started_at.strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(
            ["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "mode": "quick" if quick else "full",
        "machine": machine(),
        "versions": collect_versions(),
        "busy_before_run": idle_check,
        "worst_other_on_server_core": round(max((r.worst_other for r in results), default=0.0), 3),
        "method": {
            "server_core": server_core,
            "client_core": client_core,
            "rounds": rounds,
            "duration_s": duration,
            "warmup_s": args.warmup,
            "connections": connections,
        },
        "wrk_command": shlex.join(
            wrk_command(client_core, 0, duration, Path("SCENARIO.lua"), "URL")
        ).replace("-c0", "-cN"),
    }
    print()
    for scenario in scenarios:
        for c in connections:
            print(table(results, scenario, c))
            print()
    out_file = RESULTS / f"{stamp}.json"
    payload = {
        "meta": meta,
        "scenarios": [s.name for s in scenarios],
        "results": [r.to_json() for r in results],
    }
    out_file.write_text(json.dumps(payload, indent=2) + "\n")
    log(f"wrote {out_file.relative_to(REPO)}")
    if not args.no_docs:
        write_docs(meta, results, scenarios)
        log(f"wrote {DOCS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
