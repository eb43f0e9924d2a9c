"""``--proxy-protocol`` against the real server: a raw-socket client plays the proxy.

The client connects from 127.0.0.1 (in the default ``--forwarded-allow-ips``), sends a
PROXY v1 or v2 header and then HTTP/1.1, HTTP/2 or TLS on the same socket; the app
reports the client address and scheme it was given. A missing, malformed or slow
header, or one from a peer outside ``--forwarded-allow-ips``, closes the connection
before any HTTP is read.
"""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import struct
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.apps.proxy_apps import asgi_view, wsgi_view
from tests.conftest import Running
from threshold.protocols.proxy import PP2_TYPE_ALPN, PP2_TYPE_SSL, V2_SIGNATURE

ServeFn = Callable[..., Any]
TIMEOUT = 10.0

V1_TCP4 = b"PROXY TCP4 203.0.113.7 198.51.100.1 4711 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 4711 443\r\n"


# -- helpers ------------------------------------------------------------------------


def v2_header(
    client: tuple[str, int] = ("203.0.113.7", 4711),
    server: tuple[str, int] = ("198.51.100.1", 443),
    tlvs: bytes = b"",
    local: bool = False,
) -> bytes:
    """A PROXY v2 header for TCP over IPv4 (or IPv6 when the addresses are)."""
    if ":" in client[0]:
        family = 0x21
        addresses = struct.pack(
            "!16s16sHH",
            socket.inet_pton(socket.AF_INET6, client[0]),
            socket.inet_pton(socket.AF_INET6, server[0]),
            client[1],
            server[1],
        )
    else:
        family = 0x11
        addresses = struct.pack(
            "!4s4sHH",
            socket.inet_aton(client[0]),
            socket.inet_aton(server[0]),
            client[1],
            server[1],
        )
    body = addresses + tlvs
    command = 0x20 if local else 0x21
    return V2_SIGNATURE + struct.pack("!BBH", command, family, len(body)) + body


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files in ``directory``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def client_tls_context(*alpn: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # what is tested is the PROXY header before TLS
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def read_all(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def get(sock: socket.socket, path: str = "/", close: bool = True, extra: str = "") -> bytes:
    connection = "close" if close else "keep-alive"
    request = f"GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: {connection}\r\n{extra}\r\n"
    sock.sendall(request.encode())
    return read_all(sock) if close else read_response(sock)


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length (keep-alive)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed mid-body"
        body += chunk
    return head + b"\r\n\r\n" + body


def view_of(response: bytes) -> dict[str, Any]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), response[:300]
    view: dict[str, Any] = json.loads(body)
    return view


def proxied_view(running: Running, header: bytes, path: str = "/") -> dict[str, Any]:
    with running.connect(TIMEOUT) as sock:
        sock.sendall(header)
        return view_of(get(sock, path))


def closed_without_reply(sock: socket.socket) -> bool:
    """The server closed the connection (FIN or RST) and sent nothing."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:  # closed with our unread bytes in its buffer
        return True


def refused(running: Running, data: bytes) -> bool:
    with running.connect(TIMEOUT) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return True
        return closed_without_reply(sock)


def h2_get(sock: socket.socket, scheme: str = "http") -> tuple[int, dict[str, Any]]:
    """One HTTP/2 GET / with prior knowledge on a connected socket: (status, JSON body)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(
        stream_id,
        [(":method", "GET"), (":path", "/"), (":scheme", scheme), (":authority", "example.com")],
        end_stream=True,
    )
    sock.sendall(conn.data_to_send())
    status = 0
    body = b""
    ended = False
    while not ended:
        data = sock.recv(65536)
        assert data, "connection closed before the response ended"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ended = True
            elif isinstance(event, h2.events.StreamReset):
                raise AssertionError(f"stream reset: {event.error_code}")
        sock.sendall(conn.data_to_send())
    return status, json.loads(body)


# -- the header's addresses reach the app ------------------------------------------------


def test_v1_client_and_server_addresses_reach_the_app(serve: ServeFn) -> None:
    with serve(asgi_view, proxy_protocol="v1") as running:
        view = proxied_view(running, V1_TCP4)
        assert view["client"] == "203.0.113.7"
        assert view["client_port"] == 4711
        assert view["server_name"] == "198.51.100.1"
        assert view["server_port"] == 443
        assert view["scheme"] == "http"
        view = proxied_view(running, V1_TCP6)
        assert view["client"] == "2001:db8::7"
        assert view["server_name"] == "2001:db8::1"


def test_v2_client_address_reaches_asgi_and_wsgi(serve: ServeFn) -> None:
    for app in (asgi_view, wsgi_view):
        with serve(app, proxy_protocol="v2") as running:
            view = proxied_view(running, v2_header())
            assert view["client"] == "203.0.113.7"
            assert str(view["client_port"]) == "4711"
            assert view["server_name"] == "198.51.100.1"
            assert str(view["server_port"]) == "443"
            assert view["scheme"] == "http"
            view = proxied_view(running, v2_header(("2001:db8::7", 1), ("2001:db8::1", 80)))
            assert view["client"] == "2001:db8::7"


def test_v2_ssl_tlv_says_the_client_used_tls(serve: ServeFn) -> None:
    ssl_tlv = tlv(PP2_TYPE_SSL, b"\x01" + struct.pack("!I", 0) + tlv(0x21, b"TLSv1.3"))
    with serve(asgi_view, proxy_protocol="v2") as running:
        view = proxied_view(running, v2_header(tlvs=tlv(PP2_TYPE_ALPN, b"http/1.1") + ssl_tlv))
        assert view["scheme"] == "https"
        assert view["client"] == "203.0.113.7"
        # The SSL TLV with the client bit clear: the client spoke cleartext.
        plain = tlv(PP2_TYPE_SSL, b"\x00" + struct.pack("!I", 0))
        assert proxied_view(running, v2_header(tlvs=plain))["scheme"] == "http"


def test_v2_local_keeps_the_real_peer(serve: ServeFn) -> None:
    with serve(asgi_view, proxy_protocol="v2") as running:
        view = proxied_view(running, v2_header(local=True))
        assert view["client"] == "127.0.0.1"
        assert view["server_port"] == running.port


def test_auto_takes_either_version(serve: ServeFn) -> None:
    with serve(asgi_view, proxy_protocol="auto") as running:
        assert proxied_view(running, V1_TCP4)["client"] == "203.0.113.7"
        assert proxied_view(running, v2_header(("192.0.2.9", 9)))["client"] == "192.0.2.9"
        assert refused(running, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_header_split_across_segments_is_waited_for(serve: ServeFn) -> None:
    header = v2_header()
    with serve(asgi_view, proxy_protocol="auto") as running, running.connect(TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(header[:10])
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):  # still open, waiting for the rest
            sock.recv(1)
        sock.settimeout(TIMEOUT)
        sock.sendall(header[10:])
        assert view_of(get(sock))["client"] == "203.0.113.7"


def test_every_request_of_a_keep_alive_connection_has_the_proxied_client(
    serve: ServeFn,
) -> None:
    with serve(asgi_view, proxy_protocol="v1") as running, running.connect(TIMEOUT) as sock:
        sock.sendall(V1_TCP4)
        for _ in range(3):
            assert view_of(get(sock, close=False))["client"] == "203.0.113.7"


def test_proxy_headers_from_the_proxied_client_are_not_believed(serve: ServeFn) -> None:
    # After the PROXY header the peer is 203.0.113.7, which is not a trusted proxy.
    with serve(asgi_view, proxy_protocol="v1") as running, running.connect(TIMEOUT) as sock:
        sock.sendall(V1_TCP4)
        extra = "X-Forwarded-For: 10.9.9.9\r\nX-Forwarded-Proto: https\r\n"
        view = view_of(get(sock, extra=extra))
        assert view["client"] == "203.0.113.7"
        assert view["scheme"] == "http"


# -- what closes the connection ----------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # no header at all
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PROXY TCP4 1.2.3.4 ::1 1 2\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PROXY UNKNOWN " + b"x" * 200 + b"\r\n",
        V2_SIGNATURE[:11] + b"X" + b"\x21\x11\x00\x0c" + b"\0" * 12,
        V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\0" * 4,  # IPv4 block too short
        V2_SIGNATURE + b"\x21\x11\xff\xff",  # larger than the limit
    ],
    ids=["missing", "v1-fields", "v1-family", "v1-long", "v2-sig", "v2-short", "v2-big"],
)
def test_missing_or_malformed_header_closes(serve: ServeFn, data: bytes) -> None:
    with serve(asgi_view, proxy_protocol="auto") as running:
        assert refused(running, data)
        # The server goes on serving good connections.
        assert proxied_view(running, V1_TCP4)["client"] == "203.0.113.7"


def test_a_version_not_enabled_closes(serve: ServeFn) -> None:
    with serve(asgi_view, proxy_protocol="v1") as running:
        assert refused(running, v2_header() + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with serve(asgi_view, proxy_protocol="v2") as running:
        assert refused(running, V1_TCP4 + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_untrusted_peer_is_closed_even_with_a_good_header(serve: ServeFn) -> None:
    with serve(asgi_view, proxy_protocol="v1", forwarded_allow_ips=["10.0.0.0/8"]) as running:
        assert refused(running, V1_TCP4 + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with running.connect(TIMEOUT) as sock:  # closed at once, before anything is sent
            started = time.monotonic()
            assert closed_without_reply(sock)
            assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("sent", [b"", b"PROXY TCP4 ", V2_SIGNATURE + b"\x21\x11\x00\x0c"])
def test_slow_header_is_closed_after_the_header_timeout(serve: ServeFn, sent: bytes) -> None:
    with serve(asgi_view, proxy_protocol="auto", header_timeout=0.5) as running:
        with running.connect(TIMEOUT) as sock:
            sock.sendall(sent)
            started = time.monotonic()
            assert closed_without_reply(sock)
            elapsed = time.monotonic() - started
        assert 0.4 <= elapsed < 3.0, elapsed


# -- PROXY before TLS, and HTTP/2 -----------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("proxy-tls"))


def test_proxy_header_before_tls(serve: ServeFn, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    options = {"certfile": str(cert), "keyfile": str(key), "proxy_protocol": "v2"}
    with serve(asgi_view, **options) as running:
        raw = running.connect(TIMEOUT)
        raw.sendall(v2_header(("192.0.2.44", 5555)))
        with client_tls_context("http/1.1").wrap_socket(raw) as sock:
            view = view_of(get(sock))
        assert view["client"] == "192.0.2.44"
        assert view["client_port"] == 5555
        assert view["scheme"] == "https"
        # TLS straight away, without the header: closed (the ClientHello is no header).
        with running.connect(TIMEOUT) as raw, pytest.raises((ssl.SSLError, OSError)):
            client_tls_context().wrap_socket(raw).close()


def test_http2_prior_knowledge_over_a_proxied_connection(serve: ServeFn) -> None:
    with serve(asgi_view, proxy_protocol="v2") as running, running.connect(TIMEOUT) as sock:
        sock.sendall(v2_header(("192.0.2.45", 4545)))
        status, view = h2_get(sock)
        assert status == 200
        assert view["http_version"] == "2"
        assert view["client"] == "192.0.2.45"
        assert view["client_port"] == 4545
        assert view["scheme"] == "http"


def test_http2_over_tls_alpn_over_a_proxied_connection(
    serve: ServeFn, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    options = {"certfile": str(cert), "keyfile": str(key), "proxy_protocol": "v1"}
    with serve(asgi_view, **options) as running:
        raw = running.connect(TIMEOUT)
        raw.sendall(V1_TCP6)
        with client_tls_context("h2").wrap_socket(raw) as sock:
            assert sock.selected_alpn_protocol() == "h2"
            status, view = h2_get(sock, "https")
        assert status == 200
        assert view["http_version"] == "2"
        assert view["client"] == "2001:db8::7"
        assert view["scheme"] == "https"
