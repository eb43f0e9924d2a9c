"""Autobahn testsuite (quick subset) against the real server, via conformance/run_autobahn.py.

The first run on a machine builds the Python 2.7 env for wstest (conformance/.venv27; about
2 minutes with a cold pip cache, ~30 s warm); after that the quick subset (247 cases: all but
9.*, 12.*, 13.*) takes ~12 s. `make conformance-ws` runs every case.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "conformance" / "run_autobahn.py"
QUICK_CASES = 247  # autobahntestsuite 0.8.2, cases 1.* - 7.* and 10.*
Message = MutableMapping[str, Any]


async def wrong_echo(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """A testee that answers every text message with its reverse: Autobahn must fail it."""
    if scope["type"] != "websocket":
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is not None:
            await send({"type": "websocket.send", "text": text[::-1] + "!"})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


def run_autobahn(outdir: Path, *args: str, timeout: float) -> tuple[int, str, dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--outdir", str(outdir), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    summary_file = outdir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    return proc.returncode, proc.stdout, summary


@pytest.mark.timeout(1500)
def test_quick_subset_has_no_failed_case(tmp_path: Path) -> None:
    code, output, summary = run_autobahn(tmp_path, "--quick", timeout=1400)
    assert code == 0, output
    assert summary["failed"] == [], output
    assert summary["total"] == QUICK_CASES, output
    assert summary["unimplemented"] == [], output
    # Cases that must be strictly OK: close codes, fragments around control frames, UTF-8.
    strict = [c for c in summary["non_strict"] if c.startswith(("1.", "2.", "7."))]
    assert strict == [], output


@pytest.mark.timeout(1500)
def test_harness_reports_a_wrong_echo_as_failed(tmp_path: Path) -> None:
    code, output, summary = run_autobahn(
        tmp_path,
        "--cases",
        "1.1.1,1.1.2,1.2.1",
        "--app",
        "tests.conformance.test_autobahn_quick:wrong_echo",
        timeout=1400,
    )
    assert code == 1, output
    assert summary["failed"] == ["1.1.1", "1.1.2"], output  # 1.2.1 is binary: echoed as is
    assert "FAILED: 1.1.1 1.1.2" in output
