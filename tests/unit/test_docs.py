"""The documentation stays derived from the code: options table, flag list, links."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from threshold.config import ENV_PREFIX, options

ROOT = Path(__file__).resolve().parent.parent.parent
GEN = ROOT / "docs" / "gen_options.py"
README = ROOT / "README.md"
# Hand-written pages; options.md is generated, benchmarks.md written by bench/run.py.
HAND_WRITTEN = [README, *sorted((ROOT / "docs").glob("*.md"))]
HAND_WRITTEN = [p for p in HAND_WRITTEN if p.name not in ("options.md", "benchmarks.md")]

FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][A-Za-z0-9-]*[A-Za-z0-9]|-[A-Za-z])(?![\w-])")


def run_gen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GEN), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=str(ROOT),
    )


@functools.cache
def help_flags() -> frozenset[str]:
    """Every flag that `threshold --help` prints (usage line and option list)."""
    result = subprocess.run(
        [sys.executable, "-m", "threshold", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=str(ROOT),
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    flags = set(FLAG.findall(result.stdout))
    assert {"--help", "--bind", "-b"} <= flags, result.stdout  # the parse itself works
    return frozenset(flags)


def readme_flag_table() -> str:
    """The README's '## Options' section, up to its first subsection."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Options\n(.*?)^##", text, re.S | re.M)
    assert match, "README.md has no '## Options' section"
    return match.group(1)


def test_options_md_is_current() -> None:
    result = run_gen("--check")
    assert result.returncode == 0, result.stderr


def test_check_fails_on_a_stale_file_and_regenerating_fixes_it(tmp_path: Path) -> None:
    target = tmp_path / "options.md"
    assert run_gen("--output", str(target)).returncode == 0
    fresh = target.read_text(encoding="utf-8")
    assert run_gen("--check", "--output", str(target)).returncode == 0
    target.write_text(fresh.replace("| `bind` |", "| `bind_old` |"), encoding="utf-8")
    stale = run_gen("--check", "--output", str(target))
    assert stale.returncode == 1
    assert "stale" in stale.stderr
    missing = run_gen("--check", "--output", str(tmp_path / "absent.md"))
    assert missing.returncode == 1
    assert run_gen("--output", str(target)).returncode == 0
    assert target.read_text(encoding="utf-8") == fresh


def test_options_md_has_every_option() -> None:
    text = (ROOT / "docs" / "options.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    for name, _, spec, _ in options():
        row = next((r for r in rows if r.startswith(f"| `{name}` |")), None)
        assert row is not None, f"options.md has no row for {name}"
        if spec.positional:
            continue
        assert f"`{ENV_PREFIX}{name.upper()}`" in row
        assert f"`--{name.replace('_', '-')}`" in row
        assert spec.help.replace("|", "\\|") in row


def test_readme_lists_every_flag_of_help() -> None:
    table = readme_flag_table()
    listed = set(FLAG.findall(table))
    missing = sorted(help_flags() - listed)
    assert not missing, f"README.md's options table lacks {missing}"


@pytest.mark.parametrize("page", HAND_WRITTEN, ids=lambda p: p.name)
def test_docs_name_only_real_flags(page: Path) -> None:
    real = help_flags()
    text = page.read_text(encoding="utf-8")
    named = {flag for flag in FLAG.findall(text) if flag.startswith("--")}
    foreign = {"--check", "--output"}  # docs/gen_options.py's own flags
    unknown = sorted(named - real - foreign)
    assert not unknown, f"{page.name} names flags that threshold does not have: {unknown}"


@pytest.mark.parametrize("page", HAND_WRITTEN, ids=lambda p: p.name)
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.is_file():
            broken.append(target)
            continue
        if anchor and anchor not in _anchors(resolved.read_text(encoding="utf-8")):
            broken.append(target)
    assert not broken, f"{page.name} has broken links: {broken}"


def _anchors(markdown: str) -> set[str]:
    """GitHub-style heading anchors: lowercased, punctuation dropped, spaces to '-'."""
    anchors = set()
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)  # not code blocks
    for heading in re.findall(r"^#+ (.+)$", prose, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors
