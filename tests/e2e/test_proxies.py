"""Real nginx and HAProxy in front of Threshold, on loopback.

Each proxy runs in the foreground as a child of the test, with a throwaway config in a
temporary directory, and is stopped by its PID at the end. tests/proxy_setup.sh
installs both (Debian packages) the first time, on a fresh machine.

Addresses on the loopback tell the hops apart: the test client connects to a proxy
from ``CLIENT`` (127.0.0.5), nginx connects to Threshold from ``NGINX`` (127.0.0.2,
``proxy_bind``) where it matters, and a client that talks to Threshold directly comes
from 127.0.0.1. So the app's view of the client address says which hop was believed.

nginx writes no "ready" line: its ``getrlimit`` notice is logged after its listening
sockets are open (nginx.c: ``ngx_os_status`` follows ``ngx_init_cycle``), so a request
sent after it queues in the backlog. HAProxy is given a socket that is already
listening (``bind fd@N``), so it needs no wait at all.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from tests.apps.proxy_apps import asgi_view, wsgi_view
from tests.conftest import ROOT, Running
from tests.e2e.test_proxy_protocol import (
    client_tls_context,
    make_certificate,
    read_all,
    refused,
)

ServeFn = Callable[..., Any]
RunProcessFn = Callable[..., Any]

PROXY_SETUP = ROOT / "tests" / "proxy_setup.sh"
INSTALL_TIMEOUT = 540.0  # a fresh machine runs apt-get update + install once
START_TIMEOUT = 10.0
TIMEOUT = 10.0
CLIENT = "127.0.0.5"  # the test client's address towards the proxies
NGINX = "127.0.0.2"  # nginx's address towards Threshold (proxy_bind)
SPOOFED = "203.0.113.9"

# The first test may install the proxies: that counts against its timeout.
pytestmark = pytest.mark.timeout(INSTALL_TIMEOUT + 60)


# -- the proxies ----------------------------------------------------------------------


def _find(name: str) -> str | None:
    found = shutil.which(name)
    if found is None and os.access(f"/usr/sbin/{name}", os.X_OK):
        found = f"/usr/sbin/{name}"  # sbin is not on every PATH
    return found


@pytest.fixture(scope="module")
def binaries() -> dict[str, str]:
    """Paths of nginx and haproxy; tests/proxy_setup.sh installs them when missing."""
    if _find("nginx") is None or _find("haproxy") is None:
        result = subprocess.run(
            ["sh", str(PROXY_SETUP)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT
        )
        assert result.returncode == 0, f"proxy_setup.sh failed:\n{result.stderr[-4000:]}"
    found = {name: _find(name) for name in ("nginx", "haproxy")}
    missing = [name for name, path in found.items() if path is None]
    assert not missing, f"tests/proxy_setup.sh did not install {missing}"
    return {name: str(path) for name, path in found.items()}


@dataclass
class Certificate:
    cert: Path
    key: Path
    combined: Path  # certificate and key in one file, as HAProxy's crt wants


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    directory = tmp_path_factory.mktemp("proxies-tls")
    cert, key = make_certificate(directory)
    combined = directory / "combined.pem"
    combined.write_bytes(cert.read_bytes() + key.read_bytes())
    return Certificate(cert, key, combined)


@dataclass
class Child:
    """A proxy process, its stderr lines, and its ports."""

    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    def text(self) -> str:
        return "".join(self.log)


def _watch(process: subprocess.Popen[str], child: Child, marker: str | None) -> threading.Event:
    """Read stderr into child.log; the event is set at ``marker`` or when stderr ends."""
    seen = threading.Event()

    def reader() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            child.log.append(line)
            if marker is not None and marker in line:
                seen.set()
        seen.set()

    threading.Thread(target=reader, daemon=True).start()
    return seen


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr notice;
events {{
    worker_connections 256;
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    ssl_certificate {cert};
    ssl_certificate_key {key};
{body}
}}
"""


@contextmanager
def run_nginx(binary: str, certificate: Certificate, body: str) -> Iterator[Child]:
    """nginx in the foreground; ``body`` (an http-block fragment) may use {port}, {tls_port}."""
    with tempfile.TemporaryDirectory(prefix="threshold-nginx-") as tmp:
        for attempt in range(3):
            ports = [_free_port(), _free_port()]
            conf = Path(tmp) / "nginx.conf"
            conf.write_text(
                NGINX_CONF.format(
                    tmp=tmp,
                    cert=certificate.cert,
                    key=certificate.key,
                    body=body.replace("{port}", str(ports[0])).replace("{tls_port}", str(ports[1])),
                )
            )
            process = subprocess.Popen(
                [binary, "-p", tmp, "-c", str(conf), "-e", "stderr"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            child = Child(process, ports=ports)
            try:
                ready = _watch(process, child, "getrlimit(RLIMIT_NOFILE)")
                ready.wait(START_TIMEOUT)
                if process.poll() is None and "getrlimit" in child.text():
                    yield child
                    return
                process.wait(START_TIMEOUT)
                if "Address already in use" in child.text() and attempt < 2:
                    continue  # another test took a port between the probe and nginx
                raise AssertionError("nginx did not start:\n" + child.text())
            finally:
                _stop(process)


@contextmanager
def run_haproxy(binary: str, config: str, listeners: int = 1) -> Iterator[Child]:
    """HAProxy in the foreground on sockets already listening (``{fd0}``, ``{fd1}`` ...)."""
    with tempfile.TemporaryDirectory(prefix="threshold-haproxy-") as tmp:
        sockets = []
        try:
            for _ in range(listeners):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", 0))
                sock.listen(64)
            fds = {f"fd{i}": sock.fileno() for i, sock in enumerate(sockets)}
            conf = Path(tmp) / "haproxy.cfg"
            conf.write_text(config.format(**fds))
            process = subprocess.Popen(
                [binary, "-db", "-f", str(conf), "-p", f"{tmp}/haproxy.pid"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                pass_fds=list(fds.values()),
            )
            child = Child(process, ports=[sock.getsockname()[1] for sock in sockets])
            try:
                _watch(process, child, None)
                try:
                    yield child
                except Exception as exc:
                    if process.poll() is not None:  # say why, not only that a request failed
                        raise AssertionError("HAProxy exited:\n" + child.text()) from exc
                    raise
                assert process.poll() is None, "HAProxy exited:\n" + child.text()
            finally:
                _stop(process)
        finally:
            for sock in sockets:
                sock.close()


# -- clients --------------------------------------------------------------------------


@dataclass
class Seen:
    """What the app reported, and the test client's own address for that request."""

    view: dict[str, Any]
    local: tuple[str, int]
    status: int


def fetch(
    port: int,
    path: str = "/",
    headers: dict[str, str] | None = None,
    tls: bool = False,
    source: str = CLIENT,
) -> Seen:
    """One HTTP/1.1 GET with Connection: close from ``source``, to 127.0.0.1:``port``."""
    raw = socket.create_connection(("127.0.0.1", port), TIMEOUT, source_address=(source, 0))
    local = raw.getsockname()
    sock = client_tls_context("http/1.1").wrap_socket(raw) if tls else raw
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    with sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = read_all(sock)
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else 0
    view: dict[str, Any] = json.loads(body) if status == 200 else {"body": body.decode()}
    return Seen(view, local, status)


# -- nginx ----------------------------------------------------------------------------

NGINX_FORWARDING = """\
    upstream strict {{
        server 127.0.0.1:{strict};
        keepalive 8;
    }}
    upstream lenient {{
        server 127.0.0.1:{lenient};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{{port}};
        listen 127.0.0.1:{{tls_port}} ssl;
        proxy_http_version 1.1;
        proxy_bind {nginx};
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        location /strict/ {{
            proxy_pass http://strict;
        }}
        location /lenient/ {{
            proxy_pass http://lenient;
        }}
        # No X-Forwarded-* here: the app sees nginx's own upstream connection.
        location /raw/ {{
            proxy_pass http://strict;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
        }}
    }}
"""


def test_nginx_keepalive_upstream_forwarded_for_and_trust_walking(
    binaries: dict[str, str], certificate: Certificate, serve: ServeFn
) -> None:
    with (
        # Trusts nginx only: the client's own X-Forwarded-For is not believed.
        serve(asgi_view, forwarded_allow_ips=[NGINX]) as strict,
        # Also trusts the client's address, as if it were a proxy itself.
        serve(wsgi_view, forwarded_allow_ips=[f"{NGINX},{CLIENT}"]) as lenient,
    ):
        body = NGINX_FORWARDING.format(strict=strict.port, lenient=lenient.port, nginx=NGINX)
        with run_nginx(binaries["nginx"], certificate, body) as nginx:
            port, tls_port = nginx.ports
            spoof = {"X-Forwarded-For": SPOOFED}

            seen = fetch(port, "/strict/a", spoof)
            assert seen.status == 200, seen.view
            assert seen.view["client"] == CLIENT  # nginx's $remote_addr, rightmost
            assert seen.view["scheme"] == "http"
            assert seen.view["host"] == f"127.0.0.1:{port}"
            seen = fetch(tls_port, "/strict/a", spoof, tls=True)
            assert seen.view["client"] == CLIENT
            assert seen.view["scheme"] == "https"  # X-Forwarded-Proto: $scheme

            # Walking on past a trusted hop to the next address on the left.
            seen = fetch(port, "/lenient/b", spoof)
            assert seen.view["interface"] == "wsgi"
            assert seen.view["client"] == SPOOFED
            assert seen.view["scheme"] == "http"
            seen = fetch(tls_port, "/lenient/b", tls=True)
            assert seen.view["client"] == CLIENT  # all hops trusted: the leftmost
            assert seen.view["scheme"] == "https"
            assert seen.view["https"] == "on"

            # nginx keeps its upstream connection: one peer port across client connections.
            raw = [fetch(port, "/raw/c").view for _ in range(4)]
            assert {view["client"] for view in raw} == {NGINX}
            assert len({view["client_port"] for view in raw}) == 1, raw
            assert {view["scheme"] for view in raw} == {"http"}

        # A client that talks to Threshold directly, from 127.0.0.1, is no trusted proxy.
        seen = fetch(
            strict.port,
            "/x",
            {"X-Forwarded-For": SPOOFED, "X-Forwarded-Proto": "https"},
            source="127.0.0.1",
        )
        assert seen.view["client"] == "127.0.0.1"
        assert seen.view["scheme"] == "http"
        assert seen.view["client_port"] == seen.local[1]


NGINX_WEBSOCKET = """\
    upstream app {{
        server 127.0.0.1:{app};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{{port}};
        listen 127.0.0.1:{{tls_port}} ssl;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout 60s;
        }}
    }}
"""


def test_nginx_websocket_upgrade(
    binaries: dict[str, str], certificate: Certificate, serve: ServeFn
) -> None:
    with serve(asgi_view) as app:  # nginx connects from 127.0.0.1, trusted by default
        body = NGINX_WEBSOCKET.format(app=app.port)
        with run_nginx(binaries["nginx"], certificate, body) as nginx:
            port, tls_port = nginx.ports
            for scheme, target, context in (
                ("ws", port, None),
                ("wss", tls_port, client_tls_context()),
            ):
                sock = socket.create_connection(
                    ("127.0.0.1", target), TIMEOUT, source_address=(CLIENT, 0)
                )
                with ws_connect(
                    f"{scheme}://127.0.0.1:{target}/chat",
                    sock=sock,
                    ssl=context,
                    proxy=None,
                    open_timeout=TIMEOUT,
                    close_timeout=TIMEOUT,
                ) as ws:
                    view = json.loads(ws.recv(TIMEOUT))
                    assert view["type"] == "websocket"
                    assert view["client"] == CLIENT
                    assert view["scheme"] == scheme
                    assert view["path"] == "/chat"
                    ws.send("hello")
                    assert ws.recv(TIMEOUT) == "hello"
                    ws.send(b"\x00\x01\x02")
                    assert ws.recv(TIMEOUT) == b"\x00\x01\x02"
                    big = os.urandom(300_000)  # more than nginx's proxy buffers
                    ws.send(big)
                    assert ws.recv(TIMEOUT) == big


NGINX_UNIX = """\
    upstream app {{
        server unix:{path};
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{{port}};
        listen 127.0.0.1:{{tls_port}} ssl;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
"""


def test_nginx_to_a_unix_socket(
    binaries: dict[str, str], certificate: Certificate, run_process: RunProcessFn
) -> None:
    with tempfile.TemporaryDirectory(prefix="threshold-unix-") as tmp:
        path = f"{tmp}/t.sock"
        args = ("tests.apps.proxy_apps:wsgi_view", "-b", "127.0.0.1:0", "-b", f"unix:{path}")
        with run_process(*args, "--forwarded-allow-ips", "unix") as threshold:
            assert isinstance(threshold, Running)
            body = NGINX_UNIX.format(path=path)
            with run_nginx(binaries["nginx"], certificate, body) as nginx:
                port, tls_port = nginx.ports
                seen = fetch(port, "/u", {"X-Forwarded-For": SPOOFED})
                assert seen.status == 200, seen.view
                assert seen.view["client"] == CLIENT  # nginx's address: no IP, unix peer
                assert seen.view["scheme"] == "http"
                assert seen.view["host"] == f"127.0.0.1:{port}"
                seen = fetch(tls_port, "/u", tls=True)
                assert seen.view["client"] == CLIENT
                assert seen.view["scheme"] == "https"
                assert seen.view["https"] == "on"
            # Over TCP, from 127.0.0.1: only unix peers are trusted here.
            seen = fetch(threshold.port, "/u", {"X-Forwarded-For": SPOOFED}, source="127.0.0.1")
            assert seen.view["client"] == "127.0.0.1"


# -- HAProxy --------------------------------------------------------------------------

HAPROXY_TCP = """\
global
    maxconn 256
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind fd@{{fd0}}
    bind fd@{{fd1}} ssl crt {crt}
    default_backend be
backend be
    server s1 127.0.0.1:{port} {server}
"""


@pytest.mark.parametrize("send", ["send-proxy-v2", "send-proxy-v2-ssl"])
def test_haproxy_send_proxy_v2(
    binaries: dict[str, str], certificate: Certificate, serve: ServeFn, send: str
) -> None:
    with serve(asgi_view, proxy_protocol="v2") as threshold:
        config = HAPROXY_TCP.format(port=threshold.port, crt=certificate.combined, server=send)
        with run_haproxy(binaries["haproxy"], config, listeners=2) as haproxy:
            port, tls_port = haproxy.ports
            seen = fetch(port, "/h1")
            assert seen.status == 200, seen.view
            assert seen.view["client"] == CLIENT
            assert seen.view["client_port"] == seen.local[1]  # the client's own port
            assert seen.view["server_name"] == "127.0.0.1"
            assert seen.view["server_port"] == port  # where the client connected
            assert seen.view["scheme"] == "http"
            assert seen.view["http_version"] == "1.1"
            # TLS ends at HAProxy; only the SSL TLV (send-proxy-v2-ssl) tells Threshold.
            seen = fetch(tls_port, "/h1", tls=True)
            assert seen.view["client"] == CLIENT
            assert seen.view["server_port"] == tls_port
            assert seen.view["scheme"] == ("https" if send.endswith("-ssl") else "http")
        # Without HAProxy, a plain request is no PROXY header: the connection closes.
        assert refused(threshold, b"GET /h1 HTTP/1.1\r\nHost: x\r\n\r\n")


def test_haproxy_send_proxy_v2_to_tls(
    binaries: dict[str, str], certificate: Certificate, serve: ServeFn
) -> None:
    options = {"certfile": str(certificate.cert), "keyfile": str(certificate.key)}
    with serve(wsgi_view, proxy_protocol="v2", **options) as threshold:
        config = HAPROXY_TCP.format(
            port=threshold.port, crt=certificate.combined, server="send-proxy-v2 ssl verify none"
        )
        with run_haproxy(binaries["haproxy"], config, listeners=2) as haproxy:
            port = haproxy.ports[0]
            seen = fetch(port, "/tls")
            assert seen.status == 200, seen.view
            assert seen.view["client"] == CLIENT
            assert seen.view["client_port"] == str(seen.local[1])
            assert seen.view["scheme"] == "https"  # TLS from HAProxy to Threshold
            assert seen.view["https"] == "on"
            assert seen.view["server_port"] == str(port)


HAPROXY_H2C = """\
global
    maxconn 256
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind fd@{{fd0}}
    bind fd@{{fd1}} ssl crt {crt} alpn http/1.1
    option forwardfor
    http-request set-header X-Forwarded-Proto https if {{{{ ssl_fc }}}}
    http-request set-header X-Forwarded-Proto http if !{{{{ ssl_fc }}}}
    default_backend be
backend be
    server s1 127.0.0.1:{port} proto h2
"""


def test_haproxy_to_h2c(binaries: dict[str, str], certificate: Certificate, serve: ServeFn) -> None:
    with serve(asgi_view) as threshold:  # HAProxy connects from 127.0.0.1: trusted
        config = HAPROXY_H2C.format(port=threshold.port, crt=certificate.combined)
        with run_haproxy(binaries["haproxy"], config, listeners=2) as haproxy:
            port, tls_port = haproxy.ports
            seen = fetch(port, "/h2", {"X-Forwarded-For": SPOOFED})
            assert seen.status == 200, seen.view
            assert seen.view["http_version"] == "2"  # HAProxy to Threshold
            assert seen.view["client"] == CLIENT  # the spoofed hop left of it is not
            assert seen.view["scheme"] == "http"
            seen = fetch(tls_port, "/h2", tls=True)
            assert seen.view["http_version"] == "2"
            assert seen.view["client"] == CLIENT
            assert seen.view["scheme"] == "https"
