"""TLS against the real server: certificates, ALPN, client certificates, the ASGI tls
extension, WSGI's HTTPS variables, failed handshakes and the TLS 1.2 minimum.

A throwaway CA, server certificate (for 127.0.0.1) and client certificate are made
once per module with the ``cryptography`` package.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.apps.h2_apps import app, wsgi_app
from tests.conftest import ROOT, START_TIMEOUT

ServeFn = Callable[..., Any]
TIMEOUT = 20.0
PASSWORD = "correct horse"


# -- certificates ------------------------------------------------------------------------


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    server_key_encrypted: Path
    client_cert: Path
    client_key: Path

    def options(self, **extra: Any) -> dict[str, Any]:
        return {"certfile": str(self.server_cert), "keyfile": str(self.server_key), **extra}


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Threshold Tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _cert(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: rsa.RSAPrivateKey,
    usage: ExtendedKeyUsageOID | None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(IPv4Address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: rsa.RSAPrivateKey, password: str | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    if password is not None:
        encryption = serialization.BestAvailableEncryption(password.encode())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    root = tmp_path_factory.mktemp("tls")
    ca_key, server_key, client_key = _key(), _key(), _key()
    ca = _cert("Threshold Test CA", ca_key, None, ca_key, None)
    server = _cert("127.0.0.1", server_key, ca, ca_key, ExtendedKeyUsageOID.SERVER_AUTH)
    client = _cert("test client", client_key, ca, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH)
    files = {
        "ca.pem": _pem(ca),
        "server.pem": _pem(server),
        "server.key": _key_pem(server_key),
        "server-encrypted.key": _key_pem(server_key, PASSWORD),
        "client.pem": _pem(client),
        "client.key": _key_pem(client_key),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return Certs(
        ca=root / "ca.pem",
        server_cert=root / "server.pem",
        server_key=root / "server.key",
        server_key_encrypted=root / "server-encrypted.key",
        client_cert=root / "client.pem",
        client_key=root / "client.key",
    )


def client_context(
    certs: Certs,
    with_cert: bool = False,
    version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if with_cert:
        context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    if version is not None:
        context.minimum_version = version
        context.maximum_version = version
    return context


def https_url(url: str) -> str:
    assert url.startswith("https://"), url
    return url


# -- a server process that prints "Listening on https://" ---------------------------------


@dataclass
class Process:
    proc: subprocess.Popen[str]
    url: str | None
    log: list[str]


@contextmanager
def server_process(*args: str) -> Iterator[Process]:
    cmd = [sys.executable, "-m", "threshold", "tests.apps.h2_apps:app", "--workers", "1"]
    cmd += ["--bind", "127.0.0.1:0", "--no-access-log", *args]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        cmd, cwd=str(ROOT), env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    log: list[str] = []
    found: list[str] = []
    ready = threading.Event()

    def reader() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            match = re.search(r"Listening on (\S+)", line)
            if match and not found:
                found.append(match.group(1))
                ready.set()
        ready.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        ready.wait(START_TIMEOUT)
        yield Process(proc, found[0] if found else None, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        thread.join(5)


# -- serving -----------------------------------------------------------------------------------


def test_listening_on_https_and_an_encrypted_key(certs: Certs) -> None:
    with server_process(
        "--certfile",
        str(certs.server_cert),
        "--keyfile",
        str(certs.server_key_encrypted),
        "--keyfile-password",
        PASSWORD,
    ) as server:
        assert server.url is not None, "".join(server.log)
        url = https_url(server.url)
        assert re.fullmatch(r"https://127\.0\.0\.1:\d+", url)
        with httpx.Client(verify=client_context(certs), timeout=TIMEOUT) as client:
            response = client.get(url + "/")
        assert (response.status_code, response.text) == (200, "hello h2")
    assert server.proc.returncode == 0


def test_wrong_key_password_stops_the_server_with_a_clear_error(certs: Certs) -> None:
    with server_process(
        "--certfile",
        str(certs.server_cert),
        "--keyfile",
        str(certs.server_key_encrypted),
        "--keyfile-password",
        "wrong",
    ) as server:
        assert server.url is None
        assert server.proc.wait(TIMEOUT) == 3  # EXIT_STARTUP_FAILED
    log = "".join(server.log)
    assert "TLS: cannot load certificates" in log, log
    assert "Traceback" not in log


def curl_path() -> str:
    """curl, installed by tests/tools.sh when missing (a fresh CI machine)."""
    if shutil.which("curl") is None:
        result = subprocess.run(
            ["sh", str(ROOT / "tests" / "tools.sh")], capture_output=True, text=True, timeout=540
        )
        assert result.returncode == 0, f"tools.sh failed:\n{result.stderr[-4000:]}"
    path = shutil.which("curl")
    assert path is not None, "tests/tools.sh did not install curl"
    return path


@pytest.mark.timeout(600)  # a first run on a fresh machine installs curl
def test_alpn_h2_and_http11(certs: Certs, serve: ServeFn) -> None:
    curl = curl_path()
    with serve(app, **certs.options()) as running:
        url = https_url(running.url)
        context = client_context(certs)
        with httpx.Client(http1=True, http2=True, verify=context, timeout=TIMEOUT) as client:
            response = client.get(url + "/scope")
            assert response.http_version == "HTTP/2"  # chosen by ALPN
            assert response.json()["scheme"] == "https"
            assert response.json()["http_version"] == "2"
        with httpx.Client(verify=client_context(certs), timeout=TIMEOUT) as client:
            response = client.get(url + "/scope")
            assert response.http_version == "HTTP/1.1"
            assert response.json()["scheme"] == "https"
        for flag, version in (("--http2", "2"), ("--http1.1", "1.1")):
            result = subprocess.run(
                [curl, "-sS", "--cacert", str(certs.ca), flag, "-w", " %{http_version}", url],
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
            assert result.stdout == f"hello h2 {version}", result.stderr


def test_http_1_offers_only_http11_and_http_2_only_h2(certs: Certs, serve: ServeFn) -> None:
    context = client_context(certs)
    with (
        serve(app, **certs.options(http="1")) as running,
        httpx.Client(http2=True, verify=context, timeout=TIMEOUT) as client,
    ):
        assert client.get(running.url + "/").http_version == "HTTP/1.1"
    with serve(app, **certs.options(http="2")) as running:
        with httpx.Client(http2=True, verify=client_context(certs), timeout=TIMEOUT) as client:
            assert client.get(running.url + "/").http_version == "HTTP/2"
        with httpx.Client(verify=client_context(certs), timeout=TIMEOUT) as client:
            assert client.get(running.url + "/").status_code == 505


# -- the ASGI tls extension and WSGI ---------------------------------------------------------


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
def test_asgi_tls_extension_with_a_client_certificate(
    certs: Certs, serve: ServeFn, http2: bool
) -> None:
    options = certs.options(ca_certs=str(certs.ca), cert_reqs="required")
    context = client_context(certs, with_cert=True)
    with (
        serve(app, **options) as running,
        httpx.Client(http2=http2, verify=context, timeout=TIMEOUT) as client,
    ):
        response = client.get(running.url + "/scope")
    assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    scope = response.json()
    assert scope["scheme"] == "https"
    tls = scope["extensions"]["tls"]
    assert tls["server_cert"] == certs.server_cert.read_text()
    assert len(tls["client_cert_chain"]) == 1
    client_der = ssl.PEM_cert_to_DER_cert(certs.client_cert.read_text())
    assert ssl.PEM_cert_to_DER_cert(tls["client_cert_chain"][0]) == client_der
    assert "CN=test client" in tls["client_cert_name"]
    assert tls["tls_version"] == 0x0304  # both sides allow TLS 1.3
    assert tls["cipher_suite"] in (0x1301, 0x1302, 0x1303)


def test_client_certificate_optional(certs: Certs, serve: ServeFn) -> None:
    options = certs.options(ca_certs=str(certs.ca), cert_reqs="optional")
    with serve(app, **options) as running:
        with httpx.Client(verify=client_context(certs), timeout=TIMEOUT) as client:
            tls = client.get(running.url + "/scope").json()["extensions"]["tls"]
        assert tls["client_cert_chain"] == []
        assert tls["client_cert_name"] is None
        context = client_context(certs, with_cert=True)
        with httpx.Client(verify=context, timeout=TIMEOUT) as client:
            tls = client.get(running.url + "/scope").json()["extensions"]["tls"]
        assert len(tls["client_cert_chain"]) == 1


def test_tls12_version_and_cipher_suite(certs: Certs, serve: ServeFn) -> None:
    options = certs.options(ciphers="ECDHE-RSA-AES128-GCM-SHA256")
    context = client_context(certs, version=ssl.TLSVersion.TLSv1_2)
    with (
        serve(app, **options) as running,
        httpx.Client(http2=True, verify=context, timeout=TIMEOUT) as client,
    ):
        response = client.get(running.url + "/scope")
    assert response.http_version == "HTTP/2"
    tls = response.json()["extensions"]["tls"]
    assert tls["tls_version"] == 0x0303
    assert tls["cipher_suite"] == 0xC02F  # TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    assert tls["client_cert_chain"] == []


def test_no_tls_extension_in_cleartext(serve: ServeFn) -> None:
    with serve(app) as running, httpx.Client(timeout=TIMEOUT) as client:
        scope = client.get(running.url + "/scope").json()
    assert scope["scheme"] == "http"
    assert not (scope["extensions"] or {}).get("tls")


@pytest.mark.parametrize("http2", [False, True], ids=["h1", "h2"])
def test_wsgi_sees_https(certs: Certs, serve: ServeFn, http2: bool) -> None:
    with (
        serve(wsgi_app, **certs.options()) as running,
        httpx.Client(http2=http2, verify=client_context(certs), timeout=TIMEOUT) as client,
    ):
        response = client.get(running.url + "/environ")
    assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    environ = response.json()
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["HTTPS"] == "on"
    assert environ["SERVER_PROTOCOL"] == ("HTTP/2" if http2 else "HTTP/1.1")


# -- failures -----------------------------------------------------------------------------------


def test_failed_handshakes_are_debug_only_and_the_server_keeps_serving(
    certs: Certs, serve: ServeFn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    options = certs.options(ca_certs=str(certs.ca), cert_reqs="required")
    with serve(app, **options) as running:
        # Plain HTTP to the TLS port: the server ends the connection.
        with socket.create_connection((running.host, running.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            try:
                while chunk := sock.recv(4096):
                    received += chunk
            except ConnectionResetError:
                pass
            assert b"HTTP/1.1" not in received
        # A client without the required certificate (TLS 1.3: refused after the handshake).
        with (
            pytest.raises((httpx.HTTPError, ssl.SSLError, OSError)),
            httpx.Client(verify=client_context(certs), timeout=TIMEOUT) as client,
        ):
            client.get(running.url + "/")
        # A client that does not trust the server's certificate.
        with (
            pytest.raises(httpx.ConnectError),
            httpx.Client(verify=ssl.create_default_context(), timeout=TIMEOUT) as client,
        ):
            client.get(running.url + "/")
        context = client_context(certs, with_cert=True)
        with httpx.Client(verify=context, timeout=TIMEOUT) as client:
            assert client.get(running.url + "/").text == "hello h2"
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Listening on https://") for m in messages), messages  # captured
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud, [r.getMessage() for r in loud]


def _handshake(certs: Certs, version: ssl.TLSVersion, host: str, port: int) -> str:
    """One client handshake at exactly ``version``; the version agreed."""
    context = client_context(certs)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ssl.TLSVersion.TLSv1_1
        context.minimum_version = version
        context.maximum_version = version
    with (
        socket.create_connection((host, port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.version() or ""


def test_tls11_is_refused(certs: Certs, serve: ServeFn) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tls11 = ssl.TLSVersion.TLSv1_1
    # First, that this machine's client can speak TLS 1.1 at all (a lenient server).
    lenient = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    lenient.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    lenient.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        lenient.minimum_version = tls11
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)

        def accept_one() -> None:
            conn, _ = listener.accept()
            with conn, lenient.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)

        thread = threading.Thread(target=accept_one, daemon=True)
        thread.start()
        assert _handshake(certs, tls11, *listener.getsockname()[:2]) == "TLSv1.1"
        thread.join(TIMEOUT)
    # Then Threshold (TLS 1.2 minimum) refuses it, and serves 1.2 and 1.3.
    with serve(app, **certs.options()) as running:
        with pytest.raises(ssl.SSLError):
            _handshake(certs, tls11, running.host, running.port)
        assert _handshake(certs, ssl.TLSVersion.TLSv1_2, running.host, running.port) == "TLSv1.2"
        assert _handshake(certs, ssl.TLSVersion.TLSv1_3, running.host, running.port) == "TLSv1.3"
