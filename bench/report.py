"""Tables and the docs page from a results file of ``bench/run.py``.

``bench/run.py`` calls this after a run; to redo the page (and the chart) from a saved
results file without measuring again::

    python bench/report.py bench/results/20260101T120000Z.json
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from suite import H2_STREAMS

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
VENV_BIN = BENCH / ".venv" / "bin"
DOCS = REPO / "docs" / "benchmarks.md"
CHART = REPO / "docs" / "benchmarks.png"

BASELINES: dict[str, tuple[str, ...]] = {
    "asgi": ("uvicorn", "granian"),
    "wsgi": ("uvicorn", "granian", "gunicorn"),
}
# Columns of the summary table, in this order, when they took part.
SUMMARY_SERVERS = (
    "threshold",
    "threshold pure",
    "uvicorn",
    "granian",
    "hypercorn",
    "gunicorn",
    "waitress",
)
BUSY_WARNING = 0.05
QUIET_LOAD = 1.0

Payload = dict[str, Any]


def command_template(argv: Sequence[str]) -> str:
    """A server command with the venv path, the app and the port made generic."""
    cmd = shlex.join(argv).replace(str(VENV_BIN) + "/", "")
    return cmd.replace(":0 ", ":PORT ").replace("--port 0", "--port PORT")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _fmt_errors(errors: dict[str, int]) -> str:
    total = sum(errors.values())
    if not total:
        return "0"
    return f"{total} (" + ", ".join(f"{k} {v}" for k, v in errors.items() if v) + ")"


def _ok(rows: Sequence[Payload], key: str) -> dict[str, float]:
    return {r["server"]: r[key] for r in rows if r["status"] == "ok" and r.get(key)}


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value and base else ""


def _conn_label(scenario: Payload, connections: int) -> str:
    if scenario["kind"] == "h2":
        return f"{connections} connections x {H2_STREAMS} streams"
    return _plural(connections, "connection")


def detail_table(payload: Payload, scenario: Payload, connections: int) -> str:
    rows = [
        r
        for r in payload["results"]
        if r["scenario"] == scenario["name"] and r["connections"] == connections
    ]
    ok = _ok(rows, "requests_per_s")
    baselines = [b for b in BASELINES[scenario["interface"]] if b in ok]
    unit = scenario["unit"]
    header = ["server", unit, "± spread", "p50", "p99", "errors", "CPU", f"{unit} per CPU-s"]
    header += ["others"]
    header += [f"vs {b}" for b in baselines]
    lines = [
        f"### {scenario['title']} — {_conn_label(scenario, connections)}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    apps = scenario.get("apps", {})
    distinct_apps = len(set(apps.values())) > 1
    for r in rows:
        name = r["server"]
        if distinct_apps:
            name += f" (`{apps.get(r['server'], '')}`)"
        if r["status"] != "ok":
            cells = [name, "failed", "", "", "", r["status"], "", "", ""]
            cells += [""] * len(baselines)
        else:
            cells = [
                name,
                f"{r['requests_per_s']:,.0f}",
                f"{r['spread'] * 50:.1f}%",
                f"{r['p50_ms']:.2f} ms",
                f"{r['p99_ms']:.2f} ms",
                _fmt_errors(r["errors"]),
                f"{r['server_cpu']:.0%}",
                f"{r['requests_per_cpu_s']:,.0f}",
                f"{r['worst_other_on_server_core']:.0%}",
            ]
            cells += [_ratio(r["requests_per_s"], ok[b]) for b in baselines]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def _probe_rows(payload: Payload, key: str, value: str) -> dict[tuple[str, str], float]:
    return {
        (p["interface"], p["server"]): p[value]
        for p in payload.get(key, [])
        if p["status"] == "ok" and p.get(value)
    }


def summary_rows(payload: Payload) -> list[dict[str, Any]]:
    """One row per workload: each server's figure and Threshold's ratios to the baselines."""
    rows: list[dict[str, Any]] = []
    for scenario in payload["scenarios"]:
        for c in scenario["connections"]:
            found = [
                r
                for r in payload["results"]
                if r["scenario"] == scenario["name"] and r["connections"] == c
            ]
            conn = _conn_label(scenario, c)
            rows.append(
                {
                    "workload": f"{scenario['title']}, {conn}",
                    "short": _short(scenario, c),
                    "interface": scenario["interface"],
                    "unit": scenario["unit"],
                    "higher_is_better": True,
                    "values": _ok(found, "requests_per_s"),
                }
            )
    for key, value, title, unit in (
        ("idle", "kib_per_connection", "idle keep-alive connection", "KiB each"),
        ("startup", "median_ms", "start to first response", "ms"),
    ):
        found_probe = _probe_rows(payload, key, value)
        for interface in ("asgi", "wsgi"):
            values = {s: v for (i, s), v in found_probe.items() if i == interface}
            if values:
                rows.append(
                    {
                        "workload": f"{interface.upper()} {title}",
                        "short": interface.upper(),
                        "interface": interface,
                        "unit": unit,
                        "higher_is_better": False,
                        "values": values,
                    }
                )
    return rows


def _short(scenario: Payload, connections: int) -> str:
    names = {
        "hello": "hello",
        "10k": "GET 10 KiB",
        "echo": "POST echo 10 KiB",
        "1m": "GET 1 MiB",
        "close": "HTTP/1.0 close",
        "file": "file 64 KiB",
        "h2": "h2c 16x10",
        "ws": "WebSocket echo",
    }
    base = names.get(scenario["name"].split("-")[0], scenario["name"])
    label = f"{scenario['interface'].upper()} {base}"
    if scenario["kind"] == "hello":
        label += f" c{connections}"
    return label


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def summary_table(payload: Payload) -> str:
    rows = summary_rows(payload)
    present = {s for row in rows for s in row["values"]}
    columns = [s for s in SUMMARY_SERVERS if s in present]
    header = ["workload", "unit", *columns, "Threshold ÷ uvicorn", "Threshold ÷ granian"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|",
    ]
    for row in rows:
        values = row["values"]
        mine = values.get("threshold")
        unit = row["unit"] + ("" if row["higher_is_better"] else " (lower is better)")
        cells = [row["workload"], unit]
        cells += [_num(values[s]) if s in values else "—" for s in columns]
        cells += [_ratio(mine, values.get("uvicorn")), _ratio(mine, values.get("granian"))]
        lines.append("| " + " | ".join(c or "—" for c in cells) + " |")
    return "\n".join(lines)


# The targets of issues D and G: (issue, workload as in summary_rows' "short", peer,
# required ratio, what the issue calls it). A peer of None is an absolute bound
# (KiB per idle connection, lower is better); "p99" compares latency (lower is better).
TARGETS: tuple[tuple[str, str, str | None, float, str], ...] = (
    ("G", "ASGI hello c64", "uvicorn", 1.75, "ASGI hello, 64 conns: >= 1.75x uvicorn"),
    ("G", "ASGI hello c64", "granian", 1.5, "ASGI hello, 64 conns: >= 1.5x granian"),
    ("G", "ASGI hello c256", "granian", 1.0, "ASGI hello, 256 conns: >= 1.0x granian"),
    ("G", "WSGI hello c64", "granian", 1.0, "WSGI hello, 64 conns: >= 1.0x granian"),
    ("G", "WSGI hello c64", "gunicorn", 8.0, "WSGI hello, 64 conns: >= 8x gunicorn gthread"),
    ("G", "WSGI hello c64", "waitress", 5.0, "WSGI hello, 64 conns: >= 5x waitress"),
    ("G", "ASGI POST echo 10 KiB", "uvicorn", 1.5, "POST (ASGI): >= 1.5x uvicorn"),
    ("G", "WSGI POST echo 10 KiB", "granian", 1.0, "POST (WSGI): >= 1.0x granian"),
    ("G", "ASGI file 64 KiB", "uvicorn", 1.2, "64 KiB response: >= 1.2x uvicorn"),
    ("D", "ASGI h2c 16x10", "hypercorn", 3.0, "h2c 16x10: >= 3x hypercorn (issue D)"),
    ("G", "ASGI h2c 16x10", "hypercorn", 10.0, "h2c 16x10: >= 10x hypercorn"),
    ("G", "ASGI h2c 16x10", "granian", 0.8, "h2c 16x10: >= 0.8x granian"),
    ("G", "ASGI WebSocket echo", "uvicorn", 1.0, "WebSocket echo: >= 1.0x uvicorn (sansio)"),
    ("G", "ASGI WebSocket echo", "granian", 2.0, "WebSocket echo: >= 2x granian"),
    ("G", "ASGI", None, 4.0, "RSS per idle connection: <= 4 KiB"),
    ("G", "ASGI hello c64", "p99", 1.0, "p99 latency, ASGI hello 64 conns: <= uvicorn's"),
)


def targets_table(payload: Payload) -> str:
    """Each target of issues D and G, met or missed, from this run's figures."""
    rows = summary_rows(payload)
    by_short = {r["short"]: r for r in rows if r["higher_is_better"]}
    idle = {r["short"]: r for r in rows if r["unit"] == "KiB each"}
    p99 = {
        (r["scenario"], r["connections"], r["server"]): r["p99_ms"]
        for r in payload["results"]
        if r["status"] == "ok" and r.get("p99_ms")
    }

    def measure(server: str, short: str, peer: str | None, need: float) -> tuple[str, str]:
        if peer is None:
            values = idle.get(short, {}).get("values", {})
            if server in values:
                verdict = "met" if values[server] <= need else "missed"
                return f"{values[server]:.1f} KiB", verdict
        elif peer == "p99":
            mine = p99.get(("hello-asgi", 64, server))
            theirs = p99.get(("hello-asgi", 64, "uvicorn"))
            if mine and theirs:
                verdict = "met" if mine <= theirs * need else "missed"
                return f"{mine:.2f} ms vs {theirs:.2f} ms", verdict
        else:
            values = by_short.get(short, {}).get("values", {})
            if server in values and values.get(peer):
                ratio = values[server] / values[peer]
                return f"{ratio:.2f}x", "met" if ratio >= need else "missed"
        return "not run", "—"

    lines = [
        "| issue | target | threshold (compiled) | verdict | threshold pure | verdict |",
        "|---|---|---:|---|---:|---|",
    ]
    for issue, short, peer, need, label in TARGETS:
        compiled = measure("threshold", short, peer, need)
        pure = measure("threshold pure", short, peer, need)
        lines.append(f"| {issue} | {label} | {' | '.join(compiled)} | {' | '.join(pure)} |")
    return "\n".join(lines)


def idle_table(payload: Payload) -> str:
    lines = [
        "| interface | server | RSS before | RSS with idle connections | KiB per connection "
        "| still open | status |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for p in payload.get("idle", []):
        if "rss_before_kib" in p:
            lines.append(
                f"| {p['interface'].upper()} | {p['server']} | "
                f"{p['rss_before_kib'] / 1024:.1f} MiB | {p['rss_after_kib'] / 1024:.1f} MiB | "
                f"{p['kib_per_connection']:.1f} | {p['still_open']}/{p['connections']} | "
                f"{p['status']} |"
            )
        else:
            lines.append(f"| {p['interface'].upper()} | {p['server']} | | | | | {p['status']} |")
    return "\n".join(lines)


def startup_table(payload: Payload) -> str:
    lines = ["| interface | server | median | all starts (ms) | status |", "|---|---|---:|---|---|"]
    for p in payload.get("startup", []):
        times = ", ".join(f"{t:.0f}" for t in p.get("times_ms", []))
        median = f"{p['median_ms']:.0f} ms" if p.get("times_ms") else ""
        lines.append(
            f"| {p['interface'].upper()} | {p['server']} | {median} | {times} | {p['status']} |"
        )
    return "\n".join(lines)


def text_report(payload: Payload) -> str:
    """The tables for the terminal: details, then the summary."""
    parts = []
    for scenario in payload["scenarios"]:
        for c in scenario["connections"]:
            parts.append(detail_table(payload, scenario, c))
    if payload.get("idle"):
        parts.append("### Idle keep-alive connections\n\n" + idle_table(payload))
    if payload.get("startup"):
        parts.append("### Start-up\n\n" + startup_table(payload))
    parts.append("### Summary\n\n" + summary_table(payload))
    parts.append("### Targets\n\n" + targets_table(payload))
    return "\n\n".join(parts) + "\n"


def _noise_note(meta: Payload) -> list[str]:
    """Say how busy the machine was, always with the load averages; warn when it was."""
    load = meta.get("load_average_1min", {})
    busy = meta.get("busy_before_run", {})
    other = meta.get("worst_other_on_server_core", 0.0)
    at_start, at_end = load.get("at_start", 0.0), load.get("at_end", 0.0)
    parts = []
    if "before_wait" in load:
        outcome = "until it was" if load.get("quiet") else "and it never got"
        parts.append(
            f"The 1-minute load average was {load['before_wait']:.2f} when the run was "
            f"started; run.py waited {load['waited_s'] / 60:.0f} min (polling every 15 s, "
            f"at most 15 min) {outcome} below {QUIET_LOAD:g}."
        )
    parts.append(
        f"Load average {at_start:.2f} when measuring began and {at_end:.2f} at the end; "
        "cores busy just before: " + ", ".join(f"{k} {v:.0%}" for k, v in busy.items()) + "."
    )
    noisy = (
        max(at_start, at_end) >= QUIET_LOAD
        or max(busy.values(), default=0.0) > BUSY_WARNING
        or other > BUSY_WARNING
    )
    if noisy:
        parts.append(
            "**Noisy run: the machine was loaded during it.** Other processes took up to "
            f"{other:.0%} of the server's core in a median round (the *others* column of "
            "each table gives the worst round). Absolute figures are low and noisy; ratios "
            "within a table (same rounds, interleaved) and the per-CPU-second column hold "
            "up better. Re-run on an idle machine before drawing fine conclusions."
        )
    else:
        parts.append("The machine was quiet.")
    return [" ".join(parts), ""]


def write_docs(payload: Payload, results_file: Path) -> None:
    meta = payload["meta"]
    versions: dict[str, str] = meta["versions"]
    mach = meta["machine"]
    method = meta["method"]
    has_chart = draw_chart(results_file)
    rel = results_file.relative_to(REPO) if results_file.is_relative_to(REPO) else results_file
    out = [
        "# Benchmarks",
        "",
        "Generated by `bench/run.py`; do not edit by hand. Re-run with `make bench` (all "
        "of it, this page and the chart) or `make bench-quick` (hello-world only, about "
        "2 min; prints its tables and leaves this page alone).",
        "",
        f"- **Date:** {meta['date']}; the run took {meta['elapsed_s'] / 60:.0f} min",
        f"- **Command:** `{meta['command']}` ({meta['mode']} mode; raw results in `{rel}`, "
        "which is not committed)",
        f"- **Machine:** {mach['cpu']}, {mach['cores']} cores, {mach['os']}, "
        f"Linux {mach['kernel']}",
        f"- **Python:** {versions['python']}",
        "",
        *_noise_note(meta),
        "## Summary",
        "",
        "Median of the interleaved rounds; ratios are Threshold's figure divided by the "
        "peer's, from the same run (above 1.00x Threshold is faster; for the idle-memory "
        "and start-up rows, below 1.00x Threshold is smaller or quicker). A dash (—): the "
        "server does not take part in that workload (see the server table). *threshold* is "
        "Threshold with its hot modules compiled with mypyc from the typed source "
        "(`THRESHOLD_COMPILE=1`, built here by `make compiled`); *threshold pure* is the "
        "same source uncompiled, as a plain `pip install` gives it.",
        "",
        summary_table(payload),
        "",
        "## Targets",
        "",
        "The throughput targets of issue G (and issue D's HTTP/2 one), as ratios from this "
        "run. The POST target is set for 16 KiB bodies and the response target for "
        "64 KiB; the suite measures a 10 KiB echo and a 64 KiB file response. Where a "
        "target is missed, docs/perf/ has the profile that explains it.",
        "",
        targets_table(payload),
        "",
    ]
    if has_chart:
        out += [
            "![Throughput relative to granian, idle memory and start-up time](benchmarks.png)",
            "",
        ]
    out += ["## Versions", "", "| component | version |", "|---|---|"]
    for name, version in versions.items():
        if name != "python":
            out.append(f"| {name} | {version} |")
    out += [
        "",
        "## Method",
        "",
        f"Each server runs one worker pinned to core {method['server_core']} "
        f"(`taskset -c {method['server_core']}`); the load generator runs pinned to core "
        f"{method['client_core']}, over loopback; so does `bench/run.py` itself. The "
        "servers of a workload are started together on free ports, each is checked for "
        f"the exact expected response, warmed up for {method['warmup_s']} s, then measured "
        f"in {method['rounds']} interleaved rounds of {method['duration_s']} s "
        "(A B C A B C …). Tables show the median round: the rate, its spread over the "
        "rounds as ± half of (max - min) / median, p50 and p99 latency, and errors summed "
        "over all rounds. CPU is the share of its core that the server (all its processes "
        "and threads) used in the median round; the per-CPU-second rate stays steadier "
        "than the raw rate when other work shares the machine. *Others* is the largest "
        "share of the server's core that other processes took in any round.",
        "",
        "Load generators (N = connections, PORT = the server's port):",
        "",
        "- HTTP/1.1 workloads — wrk, one thread, keep-alive; the Lua script written by "
        "run.py only sets the method and body and reports in `done()`, so wrk keeps its "
        "fast path:",
        "",
        f"      {meta['load_commands']['wrk']}",
        "",
        "- HTTP/1.0 without keep-alive — wrk again (not ab, so every HTTP/1.x figure "
        "comes from one client), the same command; the script adds a "
        "`request()` that returns one prebuilt `GET / HTTP/1.0` request with no "
        "`Connection` header, so the server closes after every response and wrk "
        "reconnects: each request pays a TCP connect and close.",
        "- h2c — h2load with prior knowledge (`http://` URL, no Upgrade), 10 concurrent "
        "streams per connection; p50/p99 come from its `--log-file`:",
        "",
        f"      {meta['load_commands']['h2load']}",
        "",
        "- WebSocket — `bench/wsload.py`, an asyncio (uvloop) client writing raw RFC 6455 "
        "frames: each connection sends a 32-byte binary message and waits for its echo "
        "before sending the next; no extensions are offered, so nothing is compressed:",
        "",
        f"      {meta['load_commands']['wsload']}",
        "",
        "Apps (`bench/apps.py`): every response sets `content-length`. POST echo: the app "
        "reads the 10 KiB body in chunks and sends each back as it comes (ASGI: one "
        "`http.response.body` per `http.request`; WSGI: `wsgi.input.read(4096)` in a "
        "generator). File: a 64 KiB file; ASGI servers with `http.response.pathsend` "
        "(Threshold, granian) get `asgi_file_pathsend`, the others `asgi_file_chunked`, "
        "which reads the file in 64 KiB chunks on the event loop (cheaper than the thread "
        "hop per chunk of Starlette's `FileResponse`); WSGI uses `wsgi.file_wrapper` when "
        "the server offers it (granian does not: the app iterates the file).",
        "",
        f"Idle connections: each server, alone, gets {method['idle_connections']:,} "
        "connections from run.py, each sends one keep-alive request and reads the whole "
        "response, and all stay open; after 1 s, VmRSS of the server's processes (from "
        "`/proc/PID/status`, summed over a master and its worker) is read again. KiB per "
        f"connection = (RSS after - RSS before) / {method['idle_connections']:,}. Idle "
        "timeouts are raised for this probe (the options in the server table) so no "
        "connection is closed while RSS is read; the table says how many were still open. "
        f"Open-files limit for the client and the servers: {meta['nofile_limit']}.",
        "",
        f"Start-up: the time from starting the process (`taskset … server …`) to the first "
        "correct hello-world response, polling every 2 ms with a fresh connection; median "
        f"of {method['starts']} starts.",
        "",
        "Server commands (APP = the workload's app in `bench/apps.py`, PORT = a free port):",
        "",
        "| interface | server | takes part in | command | idle-probe options | notes |",
        "|---|---|---|---|---|---|",
    ]
    for s in payload["servers"]:
        kinds = ", ".join(k for k in s["kinds"])
        idle_opts = f"`{shlex.join(s['idle_args'])}`" if s["idle_args"] else ""
        out.append(
            f"| {s['interface'].upper()} | {s['name']} | "
            f"{kinds} | `{s['command']}` | {idle_opts} | {s['note']} |"
        )
    out += [
        "",
        "(hello = hello-world at every connection count; http1 = the other HTTP/1.x "
        "workloads; h2 = h2c; ws = WebSocket; idle, startup = the two probes.)",
        "",
        "## Results",
        "",
    ]
    for scenario in payload["scenarios"]:
        for c in scenario["connections"]:
            out += [detail_table(payload, scenario, c), ""]
    if payload.get("idle"):
        out += [
            f"### Idle keep-alive connections ({method['idle_connections']:,})",
            "",
            idle_table(payload),
            "",
        ]
    if payload.get("startup"):
        out += ["### Start-up time", "", startup_table(payload), ""]
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text("\n".join(out))
    print(f"[bench] wrote {DOCS.relative_to(REPO)}", file=sys.stderr)


def draw_chart(results_file: Path) -> bool:
    """Run bench/chart.py with bench/.venv's matplotlib; False if that fails."""
    done = subprocess.run(
        [str(VENV_BIN / "python"), str(BENCH / "chart.py"), str(results_file), str(CHART)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(f"[bench] no chart: {(done.stderr or done.stdout).strip()[-500:]}", file=sys.stderr)
        return False
    print(f"[bench] wrote {CHART.relative_to(REPO)}", file=sys.stderr)
    return True


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python bench/report.py RESULTS.json", file=sys.stderr)
        return 2
    results_file = Path(argv[0]).resolve()
    payload = json.loads(results_file.read_text())
    print(text_report(payload))
    write_docs(payload, results_file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
