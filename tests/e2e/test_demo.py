"""The demo served by `make run`, loaded in headless Chromium and fetched with httpx."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, raw_request

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_SETUP = ROOT / "tests" / "browser_setup.sh"
INSTALL_TIMEOUT = 540.0  # a fresh CI machine runs apt-get update + install once
BROWSER_TIMEOUT = 60.0
DEMO = "threshold.demo:app"

# The install (first run only) counts against the test's timeout; the browser
# itself is bounded by BROWSER_TIMEOUT.
pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT + 2 * BROWSER_TIMEOUT)


@pytest.fixture(scope="module")
def chromium() -> Path:
    """/usr/bin/chromium, installed by tests/browser_setup.sh when missing."""
    if not CHROMIUM.exists():
        result = subprocess.run(
            ["sh", str(BROWSER_SETUP)],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
        )
        assert result.returncode == 0, f"browser_setup.sh failed:\n{result.stderr[-4000:]}"
    assert CHROMIUM.exists(), "tests/browser_setup.sh did not install /usr/bin/chromium"
    return CHROMIUM


def dump_dom(browser: Path, url: str) -> str:
    """Load url in headless Chromium and return the DOM after the page loaded."""
    with tempfile.TemporaryDirectory(prefix="threshold-chromium-") as profile:
        cmd = [
            str(browser),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--dump-dom",
            url,
        ]
        # Its own session, so a hung browser and its helpers are stopped together.
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=BROWSER_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise AssertionError(f"chromium did not finish within {BROWSER_TIMEOUT}s") from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}:\n{err[-4000:]}"
    return out


class TextById(HTMLParser):
    """The text content of each element that has an id, and every start tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.tags: list[str] = []
        self._open: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        element_id = dict(attrs).get("id")
        if tag not in ("meta", "link", "br", "img", "input"):  # void elements never close
            self._open.append(element_id)
        if element_id:
            self.text[element_id] = ""

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for element_id in self._open:
            if element_id:
                self.text[element_id] += data


def parse(dom: str) -> TextById:
    parser = TextById()
    parser.feed(dom)
    parser.close()
    return parser


def test_demo_page_in_chromium(run_process, chromium: Path) -> None:
    # A path with markup in it (percent-encoded, as a browser sends it) must come
    # back as text: the page escapes everything it echoes.
    raw = "/demo/w%C3%B6rld/%3Cscript%3Ealert(1)%3C/script%3E"
    with run_process(DEMO, "--no-access-log") as running:
        dom = dump_dom(chromium, running.url + raw + "?q=1")
    page = parse(dom)
    assert page.text["protocol"] == "HTTP/1.1"
    assert page.text["interface"] == "ASGI 3.0 (HTTP spec 2.4)"
    assert page.text["method"] == "GET"
    assert page.text["path"] == "/demo/wörld/<script>alert(1)</script>"
    assert "script" not in page.tags  # escaped, not injected
    assert "&lt;script&gt;" in dom
    # The scope table: the raw path as sent, and the state set at lifespan startup.
    assert json.loads(page.text["scope-raw_path"]) == raw
    assert json.loads(page.text["scope-query_string"]) == "q=1"
    assert json.loads(page.text["scope-state"]) == ["started_by"]
    assert {"README.md", "options.md"} <= set(page.text["docs"].split())


def test_scope_json(run_process) -> None:
    with run_process(DEMO, "--no-access-log") as running:
        response = httpx.get(running.url + "/scope.json?a=1&b=%20", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    scope = response.json()
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/scope.json"
    assert scope["raw_path"] == "/scope.json"
    assert scope["query_string"] == "a=1&b=%20"
    assert scope["root_path"] == ""
    assert scope["server"] == [running.host, running.port]
    assert scope["client"][0] == "127.0.0.1"
    assert ["host", f"{running.host}:{running.port}"] in scope["headers"]
    assert scope["state"] == ["started_by"]  # lifespan ran; state reaches every request


def test_root_path(run_process) -> None:
    # ASGI paths include root_path; the demo strips it to route, and links under it.
    with run_process(DEMO, "--no-access-log", "--root-path", "/mnt") as running:
        scope = httpx.get(running.url + "/scope.json", timeout=10).json()
        page = httpx.get(running.url + "/mnt/", timeout=10).text
    assert scope["root_path"] == "/mnt"
    assert scope["path"] == "/mnt/scope.json"
    assert scope["raw_path"] == "/mnt/scope.json"
    assert 'href="/mnt/scope.json"' in page


def test_docs_are_served_from_a_fixed_list(run_process) -> None:
    with run_process(DEMO, "--no-access-log") as running:
        options = httpx.get(running.url + "/docs/options.md", timeout=10)
        escape = raw_request(
            running,
            b"GET /docs/..%2Fpyproject.toml HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        unknown = httpx.get(running.url + "/docs/nope.md", timeout=10)
    assert options.status_code == 200
    assert options.headers["content-type"] == "text/plain; charset=utf-8"
    assert options.headers["x-content-type-options"] == "nosniff"
    assert options.text == (ROOT / "docs" / "options.md").read_text(encoding="utf-8")
    assert escape.startswith(b"HTTP/1.1 404 ")
    assert b"[project]" not in escape
    assert unknown.status_code == 404
