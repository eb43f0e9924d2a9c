"""Run the Autobahn testsuite's fuzzingclient against Threshold serving an ASGI echo app.

    python conformance/run_autobahn.py            # every case (1.* .. 13.*)
    python conformance/run_autobahn.py --quick    # without 9.* (limits), 12.*, 13.* (deflate)
    python conformance/run_autobahn.py --cases 7.1.5,6.*

The testsuite's `wstest` is Python 2.7 only. The first run builds a Python 2.7 virtualenv
in conformance/.venv27 from conformance/requirements-wstest.txt (a few minutes; later runs
reuse it while the pins are unchanged). Then it starts `python -m threshold
conformance.echo:app` on a free loopback port, runs wstest with a bounded timeout, reads
the report index and exits 1 when any case's behavior is FAILED (or the run was broken),
0 otherwise. Reports land in conformance/reports/ (HTML: reports/servers/index.html).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / ".venv27"
CACHE = HERE / ".cache"
REQUIREMENTS = HERE / "requirements-wstest.txt"
TESTSUITE = "autobahntestsuite==0.8.2"
VIRTUALENV = "virtualenv<20.22"  # the last virtualenv line that still creates 2.7 envs
DEFAULT_PY27 = Path.home() / ".pyenv" / "versions" / "2.7.18" / "bin" / "python"
QUICK_EXCLUDE = ["9.*", "12.*", "13.*"]
AGENT = "threshold"
# Behaviors that count as passing; UNIMPLEMENTED is listed but judged by the reader.
PASSING = {"OK", "NON-STRICT", "INFORMATIONAL"}
SERVER_START_TIMEOUT = 20.0
SETUP_TIMEOUT = 1200.0


class ConformanceError(Exception):
    """A broken run (setup, server or wstest), as opposed to failing cases."""


def log(message: str) -> None:
    print(f"[autobahn] {message}", flush=True)


# -- the Python 2.7 environment -----------------------------------------------------------


def env_stamp() -> str:
    digest = hashlib.sha256(REQUIREMENTS.read_bytes() + TESTSUITE.encode()).hexdigest()
    return digest[:16]


def wstest_path() -> Path:
    return VENV / "bin" / "wstest"


def _run_logged(cmd: list[str], logfile: Path, env: dict[str, str] | None = None) -> None:
    with logfile.open("a") as out:
        out.write("\n$ " + " ".join(cmd) + "\n")
        out.flush()
        try:
            proc = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=SETUP_TIMEOUT
            )
        except subprocess.TimeoutExpired as exc:
            raise ConformanceError(f"setup step timed out: {' '.join(cmd)}") from exc
    if proc.returncode != 0:
        tail = "".join(logfile.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise ConformanceError(
            f"setup step failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"--- last lines of {logfile} ---\n{tail}"
        )


def ensure_env(py27: Path) -> Path:
    """Build (once) the 2.7 virtualenv with wstest; return wstest's path."""
    CACHE.mkdir(exist_ok=True)
    stamp_file = VENV / ".threshold-stamp"
    stamp = env_stamp()
    with (CACHE / "setup.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel run waits rather than races
        if stamp_file.exists() and stamp_file.read_text() == stamp and wstest_path().exists():
            return wstest_path()
        if not py27.exists():
            raise ConformanceError(
                f"Python 2.7 not found at {py27}: the Autobahn testsuite (wstest) runs only on "
                "Python 2.7. Install it (e.g. `pyenv install 2.7.18`) or pass --python27 PATH "
                "(or set THRESHOLD_PY27)."
            )
        logfile = CACHE / "setup.log"
        logfile.write_text("")
        started = time.monotonic()
        log(f"building {VENV.relative_to(ROOT)} with {py27} (first run only; log: {logfile})")
        bootstrap = CACHE / "virtualenv"
        if not (bootstrap / "virtualenv").is_dir():
            shutil.rmtree(bootstrap, ignore_errors=True)
            _run_logged(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--target",
                    str(bootstrap),
                    VIRTUALENV,
                ],
                logfile,
            )
        shutil.rmtree(VENV, ignore_errors=True)
        env = dict(os.environ, PYTHONPATH=str(bootstrap))
        _run_logged(
            [sys.executable, "-m", "virtualenv", "-p", str(py27), "--no-download", str(VENV)],
            logfile,
            env,
        )
        pip = [str(VENV / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        _run_logged([*pip, "install", "-q", "-r", str(REQUIREMENTS)], logfile)
        _run_logged([*pip, "install", "-q", "--no-deps", TESTSUITE], logfile)
        if not wstest_path().exists():
            raise ConformanceError(f"wstest missing after setup; see {logfile}")
        stamp_file.write_text(stamp)
        log(f"environment ready in {time.monotonic() - started:.0f}s")
    return wstest_path()


# -- the server under test --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(proc: subprocess.Popen[bytes], port: int, logfile: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ConformanceError(
                f"threshold exited with {proc.returncode} at start:\n{logfile.read_text()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)  # a connect probe: the server logs nothing at warning level
    raise ConformanceError(f"threshold did not listen on port {port} in {SERVER_START_TIMEOUT}s")


@contextlib.contextmanager
def threshold_server(port: int, outdir: Path, app: str, extra: list[str]) -> Iterator[None]:
    logfile = outdir / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "threshold",
        app,
        "-b",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "--ws-max-message-size",
        str(16 * 1024 * 1024),  # 9.* sends messages up to 16 MiB
        *extra,
    ]
    with logfile.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(proc, port, logfile)
        log(f"threshold pid {proc.pid} on 127.0.0.1:{port}")
        yield
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


# -- wstest and its report --------------------------------------------------------------


def write_spec(outdir: Path, port: int, cases: list[str], exclude: list[str]) -> Path:
    spec = {
        "outdir": str(outdir / "servers"),
        "servers": [{"agent": AGENT, "url": f"ws://127.0.0.1:{port}"}],
        "cases": cases,
        "exclude-cases": exclude,
        "exclude-agent-cases": {},
    }
    path = outdir / "fuzzingclient.json"
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def run_wstest(wstest: Path, spec: Path, outdir: Path, timeout: float) -> None:
    logfile = outdir / "wstest.log"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    with logfile.open("wb") as out:
        proc = subprocess.Popen(
            [str(wstest), "-m", "fuzzingclient", "-s", str(spec)],
            cwd=outdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
            raise ConformanceError(
                f"wstest did not finish in {timeout:.0f}s; see {logfile}"
            ) from None
    if code != 0:
        tail = "".join(logfile.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise ConformanceError(f"wstest exited with {code}:\n{tail}")


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def summarize(outdir: Path) -> dict[str, Any]:
    """Read reports/servers/index.json: counts per behavior and the failing case ids."""
    index_path = outdir / "servers" / "index.json"
    if not index_path.exists():
        raise ConformanceError(f"no report index at {index_path}")
    results: dict[str, dict[str, Any]] = json.loads(index_path.read_text()).get(AGENT, {})
    if not results:
        raise ConformanceError(f"the report index has no results for {AGENT!r}")
    ids = sorted(results, key=case_key)
    return {
        "total": len(ids),
        "behavior": dict(Counter(results[c]["behavior"] for c in ids)),
        "behavior_close": dict(Counter(results[c]["behaviorClose"] for c in ids)),
        "failed": [c for c in ids if results[c]["behavior"] not in PASSING | {"UNIMPLEMENTED"}],
        "unimplemented": [c for c in ids if results[c]["behavior"] == "UNIMPLEMENTED"],
        "non_strict": [c for c in ids if results[c]["behavior"] == "NON-STRICT"],
        "informational": [c for c in ids if results[c]["behavior"] == "INFORMATIONAL"],
    }


def print_summary(summary: dict[str, Any], seconds: float) -> None:
    log(f"{summary['total']} cases in {seconds:.0f}s")
    log("behavior:       " + ", ".join(f"{k} {v}" for k, v in sorted(summary["behavior"].items())))
    log(
        "behavior close: "
        + ", ".join(f"{k} {v}" for k, v in sorted(summary["behavior_close"].items()))
    )
    for name in ("non_strict", "informational", "unimplemented", "failed"):
        if summary[name]:
            log(f"{name.replace('_', '-').upper()}: {' '.join(summary[name])}")


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="exclude 9.*, 12.* and 13.*")
    parser.add_argument("--cases", help="comma-separated case ids or globs (default: all)")
    parser.add_argument("--outdir", type=Path, default=HERE / "reports")
    parser.add_argument("--timeout", type=float, help="seconds for wstest (quick 600, full 3600)")
    parser.add_argument(
        "--python27",
        type=Path,
        default=Path(os.environ.get("THRESHOLD_PY27", DEFAULT_PY27)),
        help=f"the Python 2.7 interpreter for wstest [default: {DEFAULT_PY27}]",
    )
    parser.add_argument("--app", default="conformance.echo:app", help="the testee ASGI app")
    parser.add_argument("--setup-only", action="store_true", help="build the 2.7 env and stop")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra argument for threshold (repeatable), e.g. --server-arg=--loop=asyncio",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        wstest = ensure_env(args.python27)
        if args.setup_only:
            log(f"wstest ready: {wstest}")
            return 0
        cases = args.cases.split(",") if args.cases else ["*"]
        exclude = QUICK_EXCLUDE if args.quick else []
        timeout = args.timeout or (600.0 if args.quick else 3600.0)
        outdir: Path = args.outdir.resolve()
        shutil.rmtree(outdir / "servers", ignore_errors=True)  # no stale results
        outdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        spec = write_spec(outdir, port, cases, exclude)
        started = time.monotonic()
        with threshold_server(port, outdir, args.app, args.server_arg):
            log(f"wstest fuzzingclient: cases {cases} excluding {exclude}")
            run_wstest(wstest, spec, outdir, timeout)
        summary = summarize(outdir)
    except ConformanceError as exc:
        log(f"ERROR: {exc}")
        return 2
    print_summary(summary, time.monotonic() - started)
    (outdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if summary["failed"]:
        log(f"{len(summary['failed'])} case(s) FAILED; report: {outdir / 'servers/index.html'}")
        return 1
    log("no case FAILED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
