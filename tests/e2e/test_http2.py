"""HTTP/2 against the real server: curl, nghttp, h2load and httpx, over real sockets.

Cleartext HTTP/2 comes two ways: prior knowledge (the client starts with the h2
preface) and ``Upgrade: h2c`` from an HTTP/1.1 request. The command-line clients come
from tests/tools.sh, run once when one is missing (a fresh CI machine).

Not tested because not implemented: response trailers (ASGI
``http.response.trailers``) are not sent over HTTP/2, and request trailers are
dropped (h2's TrailersReceived is ignored).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import pytest

from tests.apps.h2_apps import Concurrency, app, payload, payload_sha256, wsgi_app
from tests.conftest import ROOT, Running, raw_request

TOOLS = ROOT / "tests" / "tools.sh"
INSTALL_TIMEOUT = 540.0
CLIENT_TIMEOUT = 30.0
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

ServeFn = Callable[..., Any]

# The first test may install the tools (tests/tools.sh): that counts against its timeout.
pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT + 60)


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    """Paths of curl, nghttp and h2load; tests/tools.sh installs them when missing."""
    names = ("curl", "nghttp", "h2load")
    if not all(shutil.which(name) for name in names):
        result = subprocess.run(
            ["sh", str(TOOLS)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT
        )
        assert result.returncode == 0, f"tools.sh failed:\n{result.stderr[-4000:]}"
    found = {name: shutil.which(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    assert not missing, f"tests/tools.sh did not install {missing}"
    return {name: str(path) for name, path in found.items()}


def run_tool(*args: str, timeout: float = CLIENT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


def curl(tools: dict[str, str], *args: str) -> tuple[str, str]:
    """(body, "<http_version> <status>") from curl."""
    result = run_tool(
        tools["curl"], "-sS", "--max-time", "20", "-w", "\n%{http_version} %{http_code}", *args
    )
    assert result.returncode == 0, result.stderr
    body, _, info = result.stdout.rpartition("\n")
    return body, info


@pytest.fixture
def h2app(serve: ServeFn) -> Iterator[Running]:
    with serve(app) as running:
        yield running


def h2_client(**kwargs: Any) -> httpx.Client:
    """httpx speaking HTTP/2 with prior knowledge (no HTTP/1.1 at all)."""
    return httpx.Client(http1=False, http2=True, timeout=CLIENT_TIMEOUT, **kwargs)


# -- clients ------------------------------------------------------------------------------


def test_curl_prior_knowledge(tools: dict[str, str], h2app: Running) -> None:
    body, info = curl(tools, "--http2-prior-knowledge", h2app.url + "/")
    assert (body, info) == ("hello h2", "2 200")
    body, info = curl(
        tools, "--http2-prior-knowledge", "--data-binary", "posted", h2app.url + "/echo"
    )
    assert (body, info) == ("posted", "2 200")


def test_curl_h2c_upgrade(tools: dict[str, str], h2app: Running) -> None:
    result = run_tool(tools["curl"], "-sS", "-v", "--http2", h2app.url + "/stream")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "alpha beta gamma"
    assert "HTTP/1.1 101 Switching Protocols" in result.stderr
    assert "< HTTP/2 200" in result.stderr
    # The upgraded request is stream 1: the app saw HTTP/2, not the Upgrade headers.
    body, info = curl(tools, "--http2", h2app.url + "/scope")
    assert info == "2 200"
    scope = json.loads(body)
    assert scope["http_version"] == "2"
    names = {name for name, _ in scope["headers"]}
    assert not names & {"upgrade", "http2-settings", "connection"}


def test_h2c_upgrade_with_a_body_is_served_over_http11_with_its_body(
    tools: dict[str, str], h2app: Running
) -> None:
    """The server declines to upgrade a request with a body; the app must still get it."""
    body, info = curl(tools, "--http2", "--data-binary", "with body", h2app.url + "/echo")
    assert (body, info) == ("with body", "1.1 200")


def test_nghttp(tools: dict[str, str], h2app: Running) -> None:
    result = run_tool(tools["nghttp"], "-v", h2app.url + "/", h2app.url + "/stream")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout  # bodies are printed between the frame log lines
    assert all(word in out for word in ("hello h2", "alpha ", "beta ", "gamma"))
    assert out.count(":status: 200") == 2
    assert "recv SETTINGS frame" in out
    assert "send GOAWAY frame" in out  # nghttp ends the connection cleanly
    # nghttp's h2c Upgrade path too.
    result = run_tool(tools["nghttp"], "-u", h2app.url + "/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "hello h2"


def test_h2load_bounded_run(tools: dict[str, str], serve: ServeFn) -> None:
    with serve(app) as running:
        result = run_tool(
            tools["h2load"], "-n", "2000", "-c", "4", "-m", "10", running.url + "/", timeout=60
        )
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        result.stdout,
    )
    assert match, result.stdout
    total, done, ok, failed, errored, timeouts = map(int, match.groups())
    assert (total, done, ok, failed, errored, timeouts) == (2000, 2000, 2000, 0, 0, 0)
    assert re.search(r"status codes: 2000 2xx", result.stdout), result.stdout


def test_httpx_prior_knowledge(h2app: Running) -> None:
    with h2_client() as client:
        response = client.get(h2app.url + "/")
        assert response.http_version == "HTTP/2"
        assert (response.status_code, response.text) == (200, "hello h2")
        response = client.post(h2app.url + "/echo", content=b"x" * 100_000)
        assert response.status_code == 200 and response.content == b"x" * 100_000
        assert response.headers["x-received"] == "100000"
        scope = client.get(h2app.url + "/scope?a=b").json()
        assert scope["http_version"] == "2"
        assert scope["query_string"] == "a=b"
        assert scope["scheme"] == "http"
        assert ["host", f"{h2app.host}:{h2app.port}"] in scope["headers"]
        assert not [name for name, _ in scope["headers"] if name.startswith(":")]
        response = client.get(h2app.url + "/missing")
        assert response.status_code == 404


def test_head_over_h2(tools: dict[str, str], h2app: Running) -> None:
    with h2_client() as client:
        response = client.head(h2app.url + "/download?size=1000")
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    assert response.headers["content-length"] == "1000"
    assert response.content == b""
    result = run_tool(tools["curl"], "-sS", "-I", "--http2-prior-knowledge", h2app.url + "/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("HTTP/2 200")
    assert "content-length: 8" in result.stdout.lower()


# -- large bodies, many streams -------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_50_mib_up_and_down_one_stream_small_windows(run_process: ServeFn) -> None:
    size = 50 * 1024 * 1024
    expected = payload_sha256(size)
    with run_process(
        "tests.apps.h2_apps:app",
        "--workers",
        "1",
        "--no-access-log",
        "--h2-initial-window-size",
        "65535",
    ) as running:
        assert running.process is not None
        pid = running.process.pid
        with h2_client() as client:
            assert client.get(running.url + "/").http_version == "HTTP/2"
            base = rss_mib(pid)
            response = client.post(running.url + "/sha256", content=payload(size))
            assert response.http_version == "HTTP/2"
            assert response.text == f"{size} {expected}"
            after_upload = rss_mib(pid)
            digest = hashlib.sha256()
            received = 0
            with client.stream("GET", f"{running.url}/download?size={size}") as stream:
                assert stream.http_version == "HTTP/2"
                for chunk in stream.iter_bytes():
                    received += len(chunk)
                    digest.update(chunk)
            after_download = rss_mib(pid)
    assert received == size
    assert digest.hexdigest() == expected
    # Flow control end to end: neither direction is buffered whole in the server.
    assert after_upload - base < 40, (base, after_upload)
    assert after_download - base < 40, (base, after_download)


def test_100_concurrent_streams_on_one_connection(serve: ServeFn) -> None:
    probe = Concurrency(100)

    async def main(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(http1=False, http2=True, timeout=CLIENT_TIMEOUT) as client:
            return await asyncio.gather(*(client.get(f"{url}/s/{i}") for i in range(100)))

    with serve(probe) as running:
        responses = asyncio.run(main(running.url))
    assert [r.status_code for r in responses] == [200] * 100
    assert {r.http_version for r in responses} == {"HTTP/2"}
    seen = [r.json() for r in responses]
    assert sorted(s["path"] for s in seen) == sorted(f"/s/{i}" for i in range(100))
    assert len({tuple(s["client"]) for s in seen}) == 1  # one connection
    assert probe.peak == 100


def test_streams_beyond_the_limit_wait_their_turn(serve: ServeFn) -> None:
    """h2_max_concurrent_streams=10: never more than 10 in the app; all 30 answered."""
    probe = Concurrency(10)

    async def main(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(http1=False, http2=True, timeout=CLIENT_TIMEOUT) as client:
            return await asyncio.gather(*(client.get(f"{url}/s/{i}") for i in range(30)))

    with serve(probe, h2_max_concurrent_streams=10) as running:
        responses = asyncio.run(main(running.url))
    assert [r.status_code for r in responses] == [200] * 30
    assert probe.peak == 10


# -- WSGI, mixed clients, --http -------------------------------------------------------------


def comparable(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    skip = {"date", "connection", "transfer-encoding", "keep-alive"}
    headers = sorted((k, v) for k, v in response.headers.items() if k not in skip)
    return response.status_code, response.content, headers


def test_wsgi_app_over_h2_matches_h1(serve: ServeFn) -> None:
    with (
        serve(wsgi_app) as running,
        httpx.Client(timeout=CLIENT_TIMEOUT) as h1,
        h2_client() as h2c,
    ):
        for method, path, content in [
            ("GET", "/", None),
            ("POST", "/echo", b"w" * 200_000),
            ("GET", "/download?size=300000", None),
            ("HEAD", "/download?size=5000", None),
            ("GET", "/nope", None),
        ]:
            one = h1.request(method, running.url + path, content=content)
            two = h2c.request(method, running.url + path, content=content)
            assert one.http_version == "HTTP/1.1" and two.http_version == "HTTP/2"
            assert comparable(one) == comparable(two), (method, path)
        assert b"".join(payload(300_000)) == h2c.get(running.url + "/download?size=300000").content
        environ = h2c.get(running.url + "/environ").json()
    assert environ["SERVER_PROTOCOL"] == "HTTP/2"
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["HTTP_HOST"] == f"{running.host}:{running.port}"


def test_h1_and_h2_clients_on_one_port(tools: dict[str, str], h2app: Running) -> None:
    errors: list[BaseException] = []

    def h1_client() -> None:
        try:
            with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
                for i in range(30):
                    r = client.post(h2app.url + "/echo", content=b"h1-%d" % i)
                    assert (r.http_version, r.content) == ("HTTP/1.1", b"h1-%d" % i)
        except BaseException as exc:
            errors.append(exc)

    def h2_user() -> None:
        try:
            with h2_client() as client:
                for i in range(30):
                    r = client.post(h2app.url + "/echo", content=b"h2-%d" % i)
                    assert (r.http_version, r.content) == ("HTTP/2", b"h2-%d" % i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in (h1_client, h2_user, h1_client, h2_user)]
    for thread in threads:
        thread.start()
    assert curl(tools, "--http2", h2app.url + "/") == ("hello h2", "2 200")
    assert curl(tools, "--http1.1", h2app.url + "/") == ("hello h2", "1.1 200")
    for thread in threads:
        thread.join(CLIENT_TIMEOUT)
    assert not errors, errors


def test_http_1_turns_h2_off(tools: dict[str, str], serve: ServeFn) -> None:
    with serve(app, http="1") as running:
        # The preface is read as an HTTP/1.1 request ("PRI * HTTP/2.0") and refused,
        # then the connection is closed (raw_request reads to EOF).
        reply = raw_request(running, H2_PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        assert re.match(rb"HTTP/1\.1 (400|505) ", reply), reply[:200]
        assert b"connection: close" in reply.lower()
        # Upgrade: h2c is ignored: the request is answered over HTTP/1.1.
        assert curl(tools, "--http2", running.url + "/") == ("hello h2", "1.1 200")
        result = run_tool(
            tools["curl"], "-sS", "--http2-prior-knowledge", "--max-time", "10", running.url
        )
        assert result.returncode != 0


def test_http_2_refuses_http11(tools: dict[str, str], serve: ServeFn) -> None:
    with serve(app, http="2") as running:
        reply = raw_request(running, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 505 "), reply[:200]
        assert curl(tools, "--http2-prior-knowledge", running.url + "/") == ("hello h2", "2 200")
        with h2_client() as client:
            assert client.get(running.url + "/").http_version == "HTTP/2"


# -- the h2 client state machine on a raw socket -------------------------------------------


def test_graceful_shutdown_sends_goaway_and_finishes_the_stream(run_process: ServeFn) -> None:
    """SIGTERM with a response in flight: GOAWAY(NO_ERROR), then the whole response."""
    size = 2 * 1024 * 1024
    with run_process("tests.apps.h2_apps:app", "--workers", "1", "--no-access-log") as running:
        assert running.process is not None
        sock = socket.create_connection((running.host, running.port), timeout=10)
        with sock:
            client = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=True, header_encoding=None)
            )
            client.local_settings = h2.settings.Settings(
                client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1024}
            )
            client.initiate_connection()
            headers = [
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", b"x"),
                (b":path", f"/download?size={size}".encode()),
            ]
            client.send_headers(1, headers, end_stream=True)
            sock.sendall(client.data_to_send())
            body = bytearray()
            goaway: h2.events.ConnectionTerminated | None = None
            ended = False
            while not ended:
                data = sock.recv(65536)
                assert data, "the server closed before the stream ended"
                for event in client.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        if not body:
                            # The response is under way, held by our 1 KiB window.
                            running.process.terminate()
                        body += event.data
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        goaway = event
                        assert not ended, "GOAWAY after the stream ended"
                        # h2 as a client stops at GOAWAY; RFC 9113 section 6.8 does not.
                        client.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
                        # Now open the windows for the rest, once: nothing more is sent,
                        # so the server's close after the stream is a clean one.
                        client.increment_flow_control_window(size, 1)
                        client.increment_flow_control_window(size)
                        sock.sendall(client.data_to_send())
                    elif isinstance(event, h2.events.StreamEnded):
                        ended = True
                    elif isinstance(event, h2.events.StreamReset):
                        raise AssertionError(f"stream reset: {event}")
            while data := sock.recv(65536):  # then the server closes
                for event in client.receive_data(data):
                    assert not isinstance(event, h2.events.StreamReset), event
        assert running.process.wait(10) == 0
    assert goaway is not None
    assert (goaway.error_code, goaway.last_stream_id) == (0, 1)
    assert bytes(body) == b"".join(payload(size))
