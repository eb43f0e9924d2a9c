"""Bar chart of a ``bench/run.py`` results file; runs with bench/.venv's matplotlib.

    bench/.venv/bin/python bench/chart.py RESULTS.json docs/benchmarks.png

Left: each workload's rate relative to granian (granian = 1, longer is faster). Right:
KiB per idle keep-alive connection and time from start to first response (shorter is
better).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from report import SUMMARY_SERVERS, summary_rows

COLORS = {
    "threshold": "#d62728",
    "threshold pure": "#f4a3a3",
    "uvicorn": "#1f77b4",
    "granian": "#2ca02c",
    "hypercorn": "#9467bd",
    "gunicorn": "#ff7f0e",
    "waitress": "#8c564b",
}


def _bars(ax: Axes, rows: list[dict[str, Any]], scale: bool, label_fmt: str, legend: bool) -> None:
    servers = [s for s in SUMMARY_SERVERS if any(s in r["values"] for r in rows)]
    height = 0.8 / max(1, len(servers))
    ticks = []
    for i, row in enumerate(rows):
        values = row["values"]
        base = (values.get("granian") or values.get("uvicorn")) if scale else 1.0
        present = [s for s in servers if s in values]
        for j, server in enumerate(present):
            y = i + (j - (len(present) - 1) / 2) * height
            value = values[server] / base if base else 0.0
            ax.barh(y, value, height=height * 0.95, color=COLORS.get(server, "grey"),
                    label=server if legend and server not in ax.get_legend_handles_labels()[1]
                    else None)  # fmt: skip
            ax.text(value, y, " " + label_fmt.format(value), va="center", fontsize=6)
        ticks.append(row["short"])
    ax.set_yticks(range(len(rows)), ticks, fontsize=8)
    ax.invert_yaxis()
    ax.margins(x=0.1)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: chart.py RESULTS.json OUT.png", file=sys.stderr)
        return 2
    payload = json.loads(Path(argv[0]).read_text())
    rows = summary_rows(payload)
    rates = [r for r in rows if r["higher_is_better"] and r["values"]]
    idle = [r for r in rows if r["unit"] == "KiB each"]
    startup = [r for r in rows if r["unit"] == "ms"]
    meta = payload["meta"]

    fig = plt.figure(figsize=(13, max(6.0, 0.5 * len(rates) + 2)), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=(1.6, 1))
    ax_rate = fig.add_subplot(grid[:, 0])
    _bars(ax_rate, rates, True, "{:.2f}", True)
    ax_rate.axvline(1.0, color="black", linewidth=0.8)
    ax_rate.set_xlabel("rate relative to granian (1.0 = granian; longer is faster)")
    ax_rate.set_title("Throughput, one worker on one core", fontsize=10)
    ax_rate.legend(loc="upper center", bbox_to_anchor=(0.5, -0.05), ncol=6, fontsize=8)
    if idle:
        ax_idle = fig.add_subplot(grid[0, 1])
        _bars(ax_idle, idle, False, "{:.1f}", False)
        ax_idle.set_xlabel("KiB per idle keep-alive connection (shorter is better)")
        ax_idle.set_title(
            f"Memory, {meta['method']['idle_connections']:,} idle connections", fontsize=10
        )
    if startup:
        ax_start = fig.add_subplot(grid[1, 1])
        _bars(ax_start, startup, False, "{:.0f}", False)
        ax_start.set_xlabel("ms from process start to first response (shorter is better)")
        ax_start.set_title(f"Start-up, median of {meta['method']['starts']}", fontsize=10)
    load = meta.get("load_average_1min", {})
    fig.suptitle(
        f"Threshold and peers — {meta['date']}, {meta['machine']['cpu']}, "
        f"{meta['machine']['cores']} cores, load average {load.get('at_start', 0.0):.2f} at "
        f"the start, {load.get('at_end', 0.0):.2f} at the end",
        fontsize=11,
    )
    fig.savefig(argv[1], dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
