"""Flame graphs of Threshold under load, for docs/perf/ (``make flamegraphs``).

For each workload below, Threshold (the pure-Python build: py-spy cannot see inside
mypyc-compiled functions, and the source is the same) runs one worker pinned to core 0
exactly as in
``bench/run.py``; the same load generator runs pinned to core 1; after a warm-up,
``py-spy record`` samples the worker (all its threads) and writes an SVG to
docs/perf/. Reuses run.py's set-up (bench/.venv with py-spy, wrk, h2load).

    python bench/flame.py                 # every workload, 8 s of samples each
    python bench/flame.py --only h2c --seconds 5
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import run
from suite import SCENARIOS, SERVERS

OUT = run.REPO / "docs" / "perf"

# name -> (scenario, interface of the Threshold entry, connections, what it shows)
WORKLOADS = {
    "asgi-hello": ("hello-asgi", "asgi", 64, "ASGI hello-world over HTTP/1.1, wrk -c64"),
    "wsgi-hello": ("hello-wsgi", "wsgi", 64, "WSGI hello-world over HTTP/1.1, wrk -c64"),
    "wsgi-echo": ("echo-wsgi", "wsgi", 64, "WSGI POST echo 10 KiB, wrk -c64"),
    "h2c": ("h2-asgi", "asgi", 16, "ASGI hello-world over h2c, h2load -c16 -m10"),
    "ws-echo": ("ws-asgi", "asgi", 16, "ASGI WebSocket echo, 16 connections"),
}


def profile(name: str, seconds: int, work: Path) -> Path:
    scenario_name, interface, connections, _ = WORKLOADS[name]
    scenario = next(s for s in SCENARIOS if s.name == scenario_name)
    server = next(
        s
        for s in SERVERS
        if s.name == "threshold pure" and s.interface == interface and scenario.kind in s.kinds
    )
    env = run.server_env(work / "bench-file")
    running = run.start_server(server, scenario, 0, work / f"{name}.log", env)
    assert running.proc is not None
    try:
        if running.error:
            sys.exit(f"flame: {name}: threshold failed: {running.error}\n{running.log_tail()}")
        if scenario.kind in ("hello", "http1"):
            run.wrk_script(scenario, work)
        load = run.load_command(scenario, 1, connections, seconds + 4, running.port, work)
        loader = subprocess.Popen(load, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2)  # warm-up before sampling
        svg = OUT / f"{name}.svg"
        spy = [
            str(run.VENV_BIN / "py-spy"), "record", "--pid", str(running.proc.pid),
            "--duration", str(seconds), "--rate", "500", "--nonblocking",
            "--output", str(svg), "--format", "flamegraph",
        ]  # fmt: skip
        subprocess.run(spy, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        loader.wait(timeout=seconds + 30)
        return svg
    finally:
        run.stop_processes([running.proc])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(WORKLOADS), help="workloads to run")
    parser.add_argument("--seconds", type=int, default=8, help="sampling time per workload")
    args = parser.parse_args(argv)
    run.ensure_tools()
    run.ensure_venv()
    run.ensure_editable_threshold()
    run.raise_nofile()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="threshold-flame-") as tmp:
        work = Path(tmp)
        (work / "bench-file").write_bytes(run.file_content())
        for name in args.only or list(WORKLOADS):
            svg = profile(name, args.seconds, work)
            print(f"flame: {name}: {WORKLOADS[name][3]} -> {svg.relative_to(run.REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
