"""Side-by-side benchmark of Threshold against peer ASGI/WSGI servers.

Usage (from the repo root; ``make bench`` / ``make bench-quick`` do this)::

    python bench/run.py            # full: every workload, idle RSS, start-up time
    python bench/run.py --quick    # hello-world only, 64 connections, 3 rounds (~2 min)

The script does its own set-up: it creates ``bench/.venv`` with the peers pinned in
``bench/requirements.txt`` plus Threshold (editable), and installs ``wrk`` and
``h2load`` from Debian when they are missing. Each server runs one worker pinned to
one core; the load generator (wrk, h2load or ``bench/wsload.py``) runs pinned to
another. Servers of a scenario are started together, warmed up, then measured in
interleaved rounds (A B C A B C ...); the median round is reported. Results go to
stdout and ``bench/results/*.json``; a full run also rewrites ``docs/benchmarks.md``
and ``docs/benchmarks.png`` (``bench/report.py`` redoes both from a results file).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import report
from suite import (
    H2_STREAMS,
    HOST,
    SCENARIOS,
    SERVERS,
    VENV_BIN,
    WS_MESSAGE_SIZE,
    Scenario,
    Server,
    file_content,
    hello_scenario,
    servers_for,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV = BENCH / ".venv"
RESULTS = BENCH / "results"
REQUIREMENTS = BENCH / "requirements.txt"

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# A core busier than this before the run, or other processes taking more than this of
# the server's core in a round, make the report warn that req/s are noisy.
BUSY_WARNING = 0.05
# Packages whose versions the report names (distribution names in bench/.venv).
VERSIONED = ("threshold", "uvicorn", "granian", "hypercorn", "gunicorn", "waitress")
VERSIONED_LIBS = ("uvloop", "httptools", "websockets", "h2", "matplotlib")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- set-up


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
    """wrk and taskset are required; h2load (for the HTTP/2 benchmark) is best effort."""
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
    # The editable Threshold here is the pure source (the default); compiled modules built
    # into the work tree would shadow its .py files. The compiled build is `make compiled`.
    env = {**os.environ, "THRESHOLD_NO_COMPILE": "1"}
    done = subprocess.run([*argv, *args], capture_output=True, text=True, env=env)
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


def ensure_compiled(servers: list[Server]) -> list[Server]:
    """Build the mypyc-compiled copy (`make compiled`) for the servers that run it; without
    a C compiler they are left out, and the report says so."""
    if not any(s.pythonpath == "build/compiled" for s in servers):
        return servers
    log("building the compiled Threshold (make compiled)")
    done = subprocess.run(["make", "-C", str(REPO), "compiled"], capture_output=True, text=True)
    probe = "import threshold.protocols.http1 as m; print(m.__file__)"
    found = subprocess.run(
        [str(VENV_BIN / "python"), "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "build" / "compiled")},
        cwd="/",
    )
    if done.returncode == 0 and found.stdout.strip().endswith(".so"):
        return servers
    log("warning: no compiled build (no C compiler?); running the pure source only")
    sys.stderr.write(done.stdout[-2000:] + done.stderr[-2000:])
    return [s for s in servers if s.pythonpath != "build/compiled"]


def raise_nofile() -> int:
    """Lift the soft open-files limit to the hard one; servers started later inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def wait_for_quiet(limit_s: float, below: float, poll_s: float = 15.0) -> dict[str, Any]:
    """Poll the 1-minute load average until it is below ``below``, for at most limit_s."""
    first = os.getloadavg()[0]
    started = time.monotonic()
    load = first
    while load >= below and time.monotonic() - started < limit_s:
        log(f"load average {load:.2f} >= {below:g}; waiting (up to {limit_s / 60:.0f} min)")
        time.sleep(min(poll_s, max(0.0, limit_s - (time.monotonic() - started))))
        load = os.getloadavg()[0]
    waited = time.monotonic() - started
    if load >= below:
        log(f"the machine did not get quiet (load {load:.2f}); running anyway")
    return {"before_wait": round(first, 2), "waited_s": round(waited), "quiet": load < below}


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


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(pid: int) -> int:
    """VmRSS of a process plus its descendants (a master and its worker), in KiB."""
    return sum(_rss_kib(p) for p in (pid, *(child for child, _ in _descendants(pid))))


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


def stop_processes(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Terminate all at once, then kill what outlives a timeout; the same for descendants.

    Descendants are listed before the signal: once a parent dies its children are
    re-parented and could no longer be told apart from processes we did not start.
    """
    descendants = [d for proc in procs for d in _descendants(proc.pid)]
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
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


def _request_bytes(port: int, scenario: Scenario, keep_alive: bool = False) -> bytes:
    head = (
        f"{scenario.method} {scenario.path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Length: {len(scenario.body)}\r\n"
    )
    if not keep_alive:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + scenario.body


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data or len(data) < _wanted(data):
        chunk = sock.recv(262144)
        if not chunk:
            break
        data += chunk
    head_bytes, _, body = data.partition(b"\r\n\r\n")
    status = int(head_bytes.split(b"\r\n")[0].split()[1])
    return status, body


def http_request(port: int, scenario: Scenario, timeout: float = 2.0) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a fresh connection; returns (status, body)."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(_request_bytes(port, scenario))
        return _read_response(sock)


def _wanted(data: bytes) -> int:
    """Total bytes of a response whose head is in data (content-length framing)."""
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return sys.maxsize  # read to EOF


def h2_request(port: int) -> tuple[int, bytes]:
    """One h2c request with h2load (the servers under test for h2c may not speak HTTP/1.1)."""
    socket.create_connection((HOST, port), timeout=2.0).close()
    done = subprocess.run(
        ["h2load", "-n1", "-c1", f"http://{HOST}:{port}/"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    ok = "1 succeeded" in done.stdout and "1 2xx" in done.stdout
    return (200, b"") if ok else (0, done.stdout.encode()[-200:])


@dataclass
class Running:
    server: Server
    port: int
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    error: str = ""
    log_path: Path | None = None
    started_at: float = 0.0
    ready_after: float = 0.0

    def log_tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])


def server_env(bench_file: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "BENCH_FILE_PATH": str(bench_file)}
    env.pop("VIRTUAL_ENV", None)
    return env


def start_server(
    server: Server,
    scenario: Scenario,
    core: int,
    log_path: Path,
    env: dict[str, str],
    extra: tuple[str, ...] = (),
    poll_s: float = 0.05,
) -> Running:
    """Start a server pinned to core and wait until it answers the scenario correctly."""
    port = free_port()
    argv = server.command(scenario.target(server.name), port, extra)
    if server.pythonpath:
        env = {**env, "PYTHONPATH": str(REPO / server.pythonpath)}
    running = Running(server, port, argv, log_path=log_path)
    with log_path.open("ab") as out:
        running.started_at = time.perf_counter()
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
            if scenario.kind == "h2":
                status, body = h2_request(port)
                expected = b""
            else:
                status, body = http_request(port, scenario)
                expected = scenario.expected
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            if time.monotonic() > deadline:
                running.error = f"not ready after {READY_TIMEOUT:.0f} s"
                return running
            time.sleep(poll_s)
            continue
        running.ready_after = time.perf_counter() - running.started_at
        if status != 200 or body != expected:
            running.error = f"wrong response: status {status}, {len(body)} body bytes"
        return running


@contextmanager
def servers_running(
    servers: Sequence[Server], scenario: Scenario, core: int, log_dir: Path, env: dict[str, str]
) -> Iterator[list[Running]]:
    started: list[Running] = []
    try:
        for server in servers:
            log_path = log_dir / f"{scenario.name}-{server.name.replace(' ', '_')}.log"
            running = start_server(server, scenario, core, log_path, env)
            started.append(running)
            if running.error:
                log(f"{scenario.name}: {server.name} failed: {running.error}")
                if tail := running.log_tail():
                    log("  " + tail.replace("\n", "\n  "))
        yield started
    finally:
        stop_processes([r.proc for r in started if r.proc is not None])


# --------------------------------------------------------------------------- load generators

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

# wrk always writes HTTP/1.1; an HTTP/1.0 request line needs a request() function. It
# returns one prebuilt string, so the cost stays on wrk's core.
_LUA_HTTP10 = """
local req
init = function(args)
  req = "GET / HTTP/1.0\\r\\nHost: " .. wrk.host .. ":" .. wrk.port .. "\\r\\n\\r\\n"
end
request = function()
  return req
end
"""


def wrk_script(scenario: Scenario, directory: Path) -> Path:
    """A script that only sets the request and reports in done(): wrk's fast path stays."""
    lines = [f'wrk.method = "{scenario.method}"']
    if scenario.body:
        lines.append(f'wrk.body = "{scenario.body.decode("ascii")}"')
        lines.append('wrk.headers["Content-Type"] = "application/octet-stream"')
    if scenario.http10:
        lines.append(_LUA_HTTP10)
    path = directory / f"{scenario.name}.lua"
    path.write_text("\n".join(lines) + "\n" + _LUA_DONE)
    return path


@dataclass
class Round:
    requests_per_s: float  # messages per second for WebSocket
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


def load_command(
    scenario: Scenario, core: int, connections: int, seconds: int, port: int, work_dir: Path
) -> list[str]:
    """The pinned load-generator command for one run of a scenario against one port."""
    pin = ["taskset", "-c", str(core)]
    if scenario.kind == "h2":
        return [
            *pin, "h2load", f"-c{connections}", f"-m{H2_STREAMS}", "-t1", "-D", str(seconds),
            f"--log-file={work_dir / 'h2load.log'}", f"http://{HOST}:{port}{scenario.path}",
        ]  # fmt: skip
    if scenario.kind == "ws":
        return [
            *pin, str(VENV_BIN / "python"), str(BENCH / "wsload.py"),
            f"ws://{HOST}:{port}{scenario.path}", "-c", str(connections), "-d", str(seconds),
            "--size", str(WS_MESSAGE_SIZE),
        ]  # fmt: skip
    script = work_dir / f"{scenario.name}.lua"
    return [
        *pin, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
        "-s", str(script), f"http://{HOST}:{port}{scenario.path}",
    ]  # fmt: skip


def _parse_wrk(stdout: str) -> Round | None:
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line.removeprefix("BENCH_JSON "))
            duration = data["duration_us"] / 1e6
            return Round(
                requests_per_s=data["requests"] / duration if duration else 0.0,
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                requests=data["requests"],
                errors={
                    "non_2xx_3xx": data["status"],
                    "connect": data["connect"],
                    "read": data["read"],
                    "write": data["write"],
                    "timeout": data["timeout"],
                },
            )
    return None


def _parse_ws(stdout: str) -> Round | None:
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line.removeprefix("BENCH_JSON "))
            duration = data["duration_us"] / 1e6
            return Round(
                requests_per_s=data["messages"] / duration if duration else 0.0,
                p50_ms=data["p50_us"] / 1000,
                p99_ms=data["p99_us"] / 1000,
                requests=data["messages"],
                errors={"connection": data["errors"], "closed": data["closed"]},
            )
    return None


def _parse_h2load(stdout: str, log_file: Path) -> Round | None:
    rate = None
    counts: dict[str, int] = {}
    for line in stdout.splitlines():
        if line.startswith("finished in"):
            rate = float(line.split(",")[1].split()[0])
        elif line.startswith("requests:"):
            for part in line.removeprefix("requests:").split(","):
                value, name = part.split()
                counts[name] = int(value)
        elif line.startswith("status codes:"):
            parts = line.removeprefix("status codes:").split(",")
            counts["non_2xx"] = sum(int(p.split()[0]) for p in parts if "2xx" not in p)
    if rate is None or not counts:
        return None
    # Response times of requests that finished (column 3, microseconds).
    times: list[int] = []
    try:
        for row in log_file.read_text().splitlines():
            cols = row.split("\t")
            if len(cols) >= 3 and cols[1] != "-1":
                times.append(int(cols[2]))
        log_file.unlink()
    except (OSError, ValueError):
        pass
    times.sort()

    def pct(p: float) -> float:
        return times[min(len(times) - 1, int(len(times) * p))] / 1000 if times else 0.0

    return Round(
        requests_per_s=rate,
        p50_ms=pct(0.50),
        p99_ms=pct(0.99),
        requests=counts.get("succeeded", 0),
        errors={
            "failed": counts.get("failed", 0),
            "errored": counts.get("errored", 0),
            "timeout": counts.get("timeout", 0),
            "non_2xx": counts.get("non_2xx", 0),
        },
    )


def run_load(scenario: Scenario, argv: list[str], seconds: int, work_dir: Path) -> Round | str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        return f"{argv[3]} timed out"
    if scenario.kind == "h2":
        outcome = _parse_h2load(done.stdout, work_dir / "h2load.log")
    elif scenario.kind == "ws":
        outcome = _parse_ws(done.stdout)
    else:
        outcome = _parse_wrk(done.stdout)
    if outcome is not None:
        return outcome
    tail = (done.stderr or done.stdout).strip()[-300:]
    return f"{Path(argv[3]).name} failed ({done.returncode}): {tail}"


# --------------------------------------------------------------------------- rounds


@dataclass(frozen=True)
class Plan:
    rounds: int
    duration: int
    warmup: int
    connections: list[int]
    server_core: int
    client_core: int
    work_dir: Path

    def connections_for(self, scenario: Scenario) -> list[int]:
        return list(scenario.connections) or self.connections


def measure(
    running: Running, scenario: Scenario, connections: int, plan: Plan, seconds: int
) -> Round | str:
    """One load run against one server, with the CPU shares of both cores over it."""
    if running.proc is None:
        return "not started"
    pid = running.proc.pid
    argv = load_command(
        scenario, plan.client_core, connections, seconds, running.port, plan.work_dir
    )
    cpu0, server0, client0 = (
        _tree_cpu(pid),
        _core_ticks(plan.server_core),
        _core_ticks(plan.client_core),
    )
    outcome = run_load(scenario, argv, seconds, plan.work_dir)
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


@dataclass
class Result:
    scenario: str
    interface: str
    connections: int
    server: str
    command: str
    status: str = "ok"
    rounds: list[Round] = field(default_factory=list)

    def median(self, name: str) -> float:
        values = [getattr(r, name) for r in self.rounds]
        return statistics.median(values) if values else 0.0

    def to_json(self) -> dict[str, Any]:
        rates = [r.requests_per_s for r in self.rounds]
        median = self.median("requests_per_s")
        errors: dict[str, int] = {}
        for r in self.rounds:
            for key, value in r.errors.items():
                errors[key] = errors.get(key, 0) + value
        return {
            "scenario": self.scenario,
            "interface": self.interface,
            "connections": self.connections,
            "server": self.server,
            "command": self.command,
            "status": self.status,
            "requests_per_s": round(median, 1),
            "p50_ms": round(self.median("p50_ms"), 3),
            "p99_ms": round(self.median("p99_ms"), 3),
            # (max - min) / median of the rate over the rounds
            "spread": round((max(rates) - min(rates)) / median, 4) if rates and median else 0.0,
            "server_cpu": round(self.median("server_cpu"), 3),
            "requests_per_cpu_s": round(self.median("per_cpu_second"), 1),
            "client_core_busy": round(self.median("client_core_busy"), 3),
            "worst_other_on_server_core": round(
                max((r.server_core_other for r in self.rounds), default=0.0), 3
            ),
            "errors": errors,
            "rounds": [asdict(r) for r in self.rounds],
        }


def run_scenario(
    scenario: Scenario, group: Sequence[Server], plan: Plan, env: dict[str, str]
) -> list[Result]:
    """Start the group, warm each server up, then measure in interleaved rounds."""
    if scenario.kind in ("hello", "http1"):
        wrk_script(scenario, plan.work_dir)
    counts = plan.connections_for(scenario)
    with servers_running(group, scenario, plan.server_core, plan.work_dir, env) as running:
        results = {
            (c, r.server.name): Result(
                scenario.name,
                scenario.interface,
                c,
                r.server.name,
                shlex.join(r.argv),
                status=r.error or "ok",
            )
            for c in counts
            for r in running
        }
        live = [r for r in running if not r.error]
        for r in live:
            if plan.warmup > 0:
                warm = measure(r, scenario, max(counts), plan, plan.warmup)
                if isinstance(warm, str):
                    log(f"{scenario.name}: {r.server.name} warm-up: {warm}")
        for c in counts:
            for i in range(plan.rounds):
                for r in live:
                    result = results[(c, r.server.name)]
                    if result.status != "ok":
                        continue
                    if r.proc is None or r.proc.poll() is not None:
                        result.status = "server exited during the run"
                        continue
                    outcome = measure(r, scenario, c, plan, plan.duration)
                    if isinstance(outcome, str):
                        result.status = outcome
                        continue
                    result.rounds.append(outcome)
                    log(
                        f"{scenario.name} c={c} round {i + 1}/{plan.rounds} {r.server.name}: "
                        f"{outcome.requests_per_s:,.0f} {scenario.unit}, server CPU "
                        f"{outcome.server_cpu:.0%}, others on its core "
                        f"{outcome.server_core_other:.0%}"
                    )
    return list(results.values())


# --------------------------------------------------------------------------- probes


def idle_probe(server: Server, plan: Plan, env: dict[str, str], connections: int) -> dict[str, Any]:
    """RSS of a server before and after it holds ``connections`` idle keep-alive connections.

    Each connection sends one request and reads the whole response, then stays open.
    """
    scenario = hello_scenario(server.interface)
    log_path = plan.work_dir / f"idle-{server.interface}-{server.name}.log"
    running = start_server(
        server, scenario, plan.server_core, log_path, env, extra=server.idle_args
    )
    out: dict[str, Any] = {
        "server": server.name,
        "interface": server.interface,
        "command": shlex.join(running.argv),
        "connections": connections,
        "status": running.error or "ok",
    }
    socks: list[socket.socket] = []
    try:
        if running.error or running.proc is None:
            return out
        pid = running.proc.pid
        time.sleep(0.5)
        before = tree_rss_kib(pid)
        request = _request_bytes(running.port, scenario, keep_alive=True)
        for _ in range(connections):
            sock = socket.create_connection((HOST, running.port), timeout=10)
            socks.append(sock)
            sock.sendall(request)
            status, body = _read_response(sock)
            if status != 200 or body != scenario.expected:
                out["status"] = f"wrong response: status {status}"
                return out
        time.sleep(1.0)
        after = tree_rss_kib(pid)
        still_open = 0
        for sock in socks:
            sock.setblocking(False)
            try:
                sock.recv(1)  # EOF (or stray data): the server closed or broke it
            except BlockingIOError:
                still_open += 1
        out.update(
            rss_before_kib=before,
            rss_after_kib=after,
            still_open=still_open,
            kib_per_connection=round((after - before) / connections, 2),
        )
        log(
            f"idle {server.interface} {server.name}: {before / 1024:.1f} MiB -> "
            f"{after / 1024:.1f} MiB, {out['kib_per_connection']:.1f} KiB per connection, "
            f"{still_open}/{connections} still open"
        )
        if still_open < connections:
            out["status"] = f"only {still_open} of {connections} connections stayed open"
        return out
    except OSError as exc:
        out["status"] = f"client error after {len(socks)} connections: {exc}"
        return out
    finally:
        for sock in socks:
            sock.close()
        if running.proc is not None:
            stop_processes([running.proc])


def startup_probe(server: Server, plan: Plan, env: dict[str, str], starts: int) -> dict[str, Any]:
    """Time from process start (exec of taskset) to the first correct response."""
    scenario = hello_scenario(server.interface)
    log_path = plan.work_dir / f"startup-{server.interface}-{server.name}.log"
    times: list[float] = []
    out: dict[str, Any] = {"server": server.name, "interface": server.interface, "status": "ok"}
    for _ in range(starts):
        running = start_server(server, scenario, plan.server_core, log_path, env, poll_s=0.002)
        out["command"] = shlex.join(running.argv)
        try:
            if running.error:
                out["status"] = running.error
                break
            times.append(running.ready_after * 1000)
        finally:
            if running.proc is not None:
                stop_processes([running.proc])
    out["times_ms"] = [round(t, 1) for t in times]
    out["median_ms"] = round(statistics.median(times), 1) if times else 0.0
    if times:
        log(f"startup {server.interface} {server.name}: median {out['median_ms']:.0f} ms")
    return out


# --------------------------------------------------------------------------- metadata


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else ""


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


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="hello-world at -c64, no probes")
    parser.add_argument("--rounds", type=int, help="rounds per server (default 3)")
    parser.add_argument("--duration", type=int, help="whole seconds per round (2, quick 4)")
    parser.add_argument("--warmup", type=int, help="warm-up seconds per server (1, quick 2)")
    parser.add_argument(
        "--connections", type=int, nargs="+", help="hello-world connections (1 64 256, quick 64)"
    )
    parser.add_argument("--scenarios", nargs="+", help="scenario names to run (default: all)")
    parser.add_argument("--servers", nargs="+", help="server names to run (default: all)")
    parser.add_argument(
        "--probes",
        action=argparse.BooleanOptionalAction,
        help="measure idle-connection RSS and start-up time (default: on in full mode)",
    )
    parser.add_argument("--idle-connections", type=int, default=1000, help="for the RSS probe")
    parser.add_argument("--starts", type=int, default=5, help="starts per server, start-up probe")
    parser.add_argument(
        "--docs",
        action=argparse.BooleanOptionalAction,
        help="rewrite docs/benchmarks.md and .png (default: on for an unfiltered full run)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for the 1-minute load average to drop below "
        "--quiet-load (polled every 15 s)",
    )
    parser.add_argument("--quiet-load", type=float, default=1.0)
    args = parser.parse_args(argv)
    for name in ("rounds", "duration"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quick: bool = args.quick
    rounds: int = args.rounds or 3
    duration: int = args.duration or (4 if quick else 2)
    warmup: int = args.warmup if args.warmup is not None else (2 if quick else 1)
    connections: list[int] = args.connections or ([64] if quick else [1, 64, 256])
    probes: bool = args.probes if args.probes is not None else not quick
    scenarios = [s for s in SCENARIOS if s.quick or not quick]
    if args.scenarios:
        scenarios = [s for s in SCENARIOS if s.name in args.scenarios]
    servers = [s for s in SERVERS if not (quick and s.full_only)]
    if args.servers:
        servers = [s for s in servers if s.name in args.servers]
    filtered = bool(args.scenarios or args.servers)
    docs: bool = args.docs if args.docs is not None else not (quick or filtered)
    if not shutil.which("h2load"):
        scenarios = [s for s in scenarios if s.kind != "h2"]
    if not servers or (not any(servers_for(s, servers) for s in scenarios) and not probes):
        sys.exit("bench: nothing to run (check --scenarios / --servers)")

    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = cores[0], cores[1 if len(cores) > 1 else 0]
    if server_core == client_core:
        log("warning: only one core available; server and load generator share it")

    ensure_tools()
    ensure_venv()
    ensure_editable_threshold()
    servers = ensure_compiled(servers)
    nofile = raise_nofile()
    # This process (the idle-connection client, the pollers) stays off the server's core.
    os.sched_setaffinity(0, {client_core})

    load: dict[str, Any] = {}
    if args.wait_quiet > 0:
        load.update(wait_for_quiet(args.wait_quiet, args.quiet_load))
    load["at_start"] = round(os.getloadavg()[0], 2)
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
    bench_file = work_dir / "file-64k.bin"
    bench_file.write_bytes(file_content())
    env = server_env(bench_file)

    plan = Plan(rounds, duration, warmup, connections, server_core, client_core, work_dir)
    groups = [(s, servers_for(s, servers)) for s in scenarios]
    groups = [(s, g) for s, g in groups if g]
    probe_servers = [s for s in servers if "idle" in s.kinds] if probes else []
    estimate = sum(
        len(g) * (warmup + 1 + rounds * (duration + 0.3) * len(plan.connections_for(s)))
        for s, g in groups
    ) + len(probe_servers) * (4 + args.starts * 1.5)
    log(f"about {estimate / 60:.1f} min; logs in {work_dir.relative_to(REPO)}")
    clock = time.monotonic()

    results: list[Result] = []
    for scenario, group in groups:
        results.extend(run_scenario(scenario, group, plan, env))
    idle = [idle_probe(s, plan, env, args.idle_connections) for s in probe_servers]
    startup = [startup_probe(s, plan, env, args.starts) for s in probe_servers]
    load["at_end"] = round(os.getloadavg()[0], 2)
    elapsed = time.monotonic() - clock

    command = ["python", "bench/run.py", *(sys.argv[1:] if argv is None else argv)]
    meta: dict[str, Any] = {
        "date": started_at.strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(command),
        "mode": "quick" if quick else "full",
        "elapsed_s": round(elapsed),
        "machine": machine(),
        "versions": collect_versions(),
        "busy_before_run": idle_check,
        "load_average_1min": load,
        "nofile_limit": nofile,
        "worst_other_on_server_core": round(
            max((r.median("server_core_other") for r in results), default=0.0), 3
        ),
        "method": {
            "server_core": server_core,
            "client_core": client_core,
            "rounds": rounds,
            "duration_s": duration,
            "warmup_s": warmup,
            "connections": connections,
            "idle_connections": args.idle_connections,
            "starts": args.starts,
        },
        "load_commands": {
            kind: shlex.join(load_command(sc, client_core, 0, duration, 0, Path("WORK")))
            .replace(":0", ":PORT")
            .replace("-c0", "-cN")
            .replace("-c 0", "-c N")
            .replace(str(VENV_BIN) + "/", "bench/.venv/bin/")
            .replace(str(BENCH) + "/", "bench/")
            for kind, sc in (
                ("wrk", SCENARIOS[0]),
                ("h2load", next(s for s in SCENARIOS if s.kind == "h2")),
                ("wsload", next(s for s in SCENARIOS if s.kind == "ws")),
            )
        },
    }
    payload = {
        "meta": meta,
        "scenarios": [
            {
                "name": s.name,
                "title": s.title,
                "interface": s.interface,
                "kind": s.kind,
                "unit": s.unit,
                "connections": plan.connections_for(s),
                "apps": {srv.name: s.app_for(srv.name) for srv in g},
            }
            for s, g in groups
        ],
        "servers": [
            {
                "name": s.name,
                "interface": s.interface,
                "kinds": sorted(s.kinds),
                "command": report.command_template(s.command("APP", 0)),
                "idle_args": list(s.idle_args),
                "note": s.note,
            }
            for s in servers
        ],
        "results": [r.to_json() for r in results],
        "idle": idle,
        "startup": startup,
    }
    out_file = RESULTS / f"{stamp}.json"
    out_file.write_text(json.dumps(payload, indent=2) + "\n")
    print()
    print(report.text_report(payload))
    log(f"wrote {out_file.relative_to(REPO)} after {elapsed / 60:.1f} min")
    if docs:
        report.write_docs(payload, out_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
