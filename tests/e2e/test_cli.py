"""The command line end to end: binds, access log, log level, loading and ASGI 2 apps."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.apps import ops_apps
from tests.apps.ops_apps import ROOT, ServerProcess

APP = "tests.apps.ops_apps:asgi3_function"
ACCESS_LINE = re.compile(
    r'INFO: (?P<client>\S+) "(?P<method>[A-Z]+) (?P<path>\S+) HTTP/1\.1" '
    r"(?P<status>\d{3}) (?P<bytes>\d+) (?P<ms>\d+\.\d)ms$"
)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def get(url: str, **kwargs: object) -> httpx.Response:
    return httpx.get(url, timeout=10, **kwargs)  # type: ignore[arg-type]


def raw_exchange(host: str, port: int, request: bytes) -> tuple[int, bytes]:
    """Send one request with Connection: close; return (our local port, response bytes)."""
    with socket.create_connection((host, port), timeout=10) as sock:
        local_port = sock.getsockname()[1]
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return local_port, b"".join(chunks)


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


# -- binds --------------------------------------------------------------------------------


def test_tcp_port_zero_logs_the_real_port() -> None:
    with ServerProcess.threshold(APP, "-b", "127.0.0.1:0") as proc:
        match = proc.wait_for(r"Listening on http://127\.0\.0\.1:(\d+) \(asgi3\)$")
        port = int(match.group(1))
        assert port != 0
        response = get(f"http://127.0.0.1:{port}/")
        assert response.status_code == 200
        assert response.text == "asgi3 function"


def test_ipv6_loopback() -> None:
    with ServerProcess.threshold(APP, "-b", "[::1]:0") as proc:
        url = proc.listening()
        match = re.fullmatch(r"http://\[::1\]:(\d+)", url)
        assert match, url
        assert int(match.group(1)) != 0
        response = get(url + "/")
        assert response.status_code == 200
        assert response.text == "asgi3 function"


def test_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "t.sock")
    with ServerProcess.threshold(APP, "-b", f"unix:{path}") as proc:
        assert proc.listening() == f"http+unix:{path}"
        transport = httpx.HTTPTransport(uds=path)
        with httpx.Client(transport=transport, timeout=10) as client:
            response = client.get("http://localhost/over-unix")
        assert response.status_code == 200
        assert response.text == "asgi3 function"


def test_fd_socket_passed_by_the_parent() -> None:
    sock = listening_socket()
    port = sock.getsockname()[1]
    fd = sock.fileno()
    try:
        proc = ServerProcess.threshold(APP, "-b", f"fd://{fd}", pass_fds=(fd,))
    finally:
        sock.close()  # only the child holds the socket now
    with proc:
        assert proc.listening() == f"http://127.0.0.1:{port}"
        response = get(f"http://127.0.0.1:{port}/")
        assert response.status_code == 200
        assert response.text == "asgi3 function"


def test_two_binds_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "two.sock")
    args = ["-b", "127.0.0.1:0", "--bind", f"unix:{path}", "-b", "127.0.0.1:0"]
    with ServerProcess.threshold(APP, *args) as proc:
        proc.wait_for(r"Listening on ", count=3)
        urls = re.findall(r"Listening on (\S+)", proc.text)
        assert len(urls) == 3, proc.text
        tcp = [u for u in urls if u.startswith("http://")]
        assert len(tcp) == 2 and port_of(tcp[0]) != port_of(tcp[1])
        assert f"http+unix:{path}" in urls
        for url in tcp:
            assert get(url + "/").text == "asgi3 function"
        with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=10) as client:
            assert client.get("http://localhost/").text == "asgi3 function"


# -- access log and log level ---------------------------------------------------------------


def requests_then_stop(extra: list[str]) -> tuple[ServerProcess, list[int]]:
    """Two requests over raw sockets, then SIGTERM; returns the process and client ports."""
    proc = ServerProcess.threshold(APP, "-b", "127.0.0.1:0", *extra)
    with proc:
        port = port_of(proc.listening())
        client_ports = []
        for request in (
            b"GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            b"POST /post HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        ):
            local_port, response = raw_exchange("127.0.0.1", port, request)
            assert response.startswith(b"HTTP/1.1 200 "), response
            client_ports.append(local_port)
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0
    return proc, client_ports


def test_access_log_one_line_per_request() -> None:
    proc, (first, second) = requests_then_stop(["--access-log"])
    lines = [m for line in proc.lines if (m := ACCESS_LINE.search(line.rstrip("\n")))]
    assert len(lines) == 2, proc.text
    get_line, post_line = lines
    assert get_line["client"] == f"127.0.0.1:{first}"
    assert get_line["method"] == "GET"
    assert get_line["path"] == "/a/b?x=1&y=2"
    assert get_line["status"] == "200"
    assert get_line["bytes"] == str(len(b"asgi3 function"))
    assert float(get_line["ms"]) < 5000
    assert post_line["client"] == f"127.0.0.1:{second}"
    assert (post_line["method"], post_line["path"]) == ("POST", "/post")


def test_no_access_log() -> None:
    proc, _ = requests_then_stop(["--no-access-log"])
    assert "Listening on" in proc.text
    assert not any(ACCESS_LINE.search(line.rstrip("\n")) for line in proc.lines), proc.text
    assert '"GET ' not in proc.text and '"POST ' not in proc.text


def test_log_level_warning_hides_info_lines() -> None:
    # No "Listening on" line will come: pass a socket we already listen on, and
    # the request waits in its backlog until the server accepts it.
    sock = listening_socket()
    port = sock.getsockname()[1]
    fd = sock.fileno()
    try:
        proc = ServerProcess.threshold(
            APP, "-b", f"fd://{fd}", "--log-level", "warning", "--access-log", pass_fds=(fd,)
        )
    finally:
        sock.close()
    with proc:
        response = get(f"http://127.0.0.1:{port}/quiet")
        assert response.status_code == 200
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0
    assert proc.text == "", proc.text


# -- loading the app ---------------------------------------------------------------------


def run_threshold(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THRESHOLD_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "threshold", *args, "-b", "127.0.0.1:0"],
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["opsmod_no_such_module:app"],
            "cannot import module 'opsmod_no_such_module' (from 'opsmod_no_such_module:app')",
        ),
        (
            ["tests.apps.ops_apps:nothing"],
            "module 'tests.apps.ops_apps' has no attribute 'nothing'",
        ),
        (["tests.apps.ops_apps:holder.nope"], "has no attribute 'holder.nope'"),
        (["tests.apps.ops_apps:not_callable"], "the app 42 is not callable"),
        (
            ["--factory", "tests.apps.ops_apps:failing_factory"],
            "--factory: calling the app factory failed: RuntimeError('factory exploded')",
        ),
    ],
    ids=["no-module", "no-attr", "no-dotted-attr", "not-callable", "factory-fails"],
)
def test_load_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = run_threshold(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("threshold: error: ")
    assert message in lines[0]


def test_import_error_inside_the_app_module_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "opsmod_broken.py").write_text("import opsmod_missing_dependency\napp = None\n")
    result = run_threshold("--app-dir", str(tmp_path), "opsmod_broken:app")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("threshold: error: error while importing 'opsmod_broken': ")
    assert "opsmod_missing_dependency" in lines[0]


def test_module_alone_factory_and_app_dir(tmp_path: Path) -> None:
    with ServerProcess.threshold("tests.apps.ops_apps", "-b", "127.0.0.1:0") as proc:
        assert get(proc.listening() + "/").text == "asgi3 function"
    factory = ["--factory", "tests.apps.ops_apps:create_app", "-b", "127.0.0.1:0"]
    with ServerProcess.threshold(*factory) as proc:
        assert get(proc.listening() + "/").text == "made by factory"
    (tmp_path / "opsmod_site.py").write_text(
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'from app dir']\n"
    )
    app_dir = ["--app-dir", str(tmp_path), "opsmod_site", "-b", "127.0.0.1:0"]
    with ServerProcess.threshold(*app_dir) as proc:
        url = proc.listening()
        assert "(wsgi)" in proc.text
        assert get(url + "/").text == "from app dir"


# -- ASGI 2 apps are served ------------------------------------------------------------------


def test_asgi2_class_served_by_the_cli() -> None:
    with ServerProcess.threshold("tests.apps.ops_apps:Asgi2Class", "-b", "127.0.0.1:0") as proc:
        url = proc.listening()
        assert "(asgi2)" in proc.text
        response = httpx.post(url + "/p", content=b"hello", timeout=10)
        assert response.status_code == 200
        assert response.text == "asgi2 class POST /p hello"


def test_asgi2_function_served_in_thread(serve) -> None:
    with serve(ops_apps.asgi2_function, lifespan="on") as running:
        for path in ("/one", "/two"):
            response = get(running.url + path)
            assert response.status_code == 200
            assert response.text == f"asgi2 function {path}"


def test_asgi2_forced_by_interface_flag() -> None:
    args = ["tests.apps.ops_apps:asgi2_function", "--interface", "asgi2", "-b", "127.0.0.1:0"]
    with ServerProcess.threshold(*args) as proc:
        assert get(proc.listening() + "/forced").text == "asgi2 function /forced"
