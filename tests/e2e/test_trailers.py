"""Response trailers and 103 Early Hints (ASGI extensions) over HTTP/1.1 and HTTP/2."""

from __future__ import annotations

import socket

import h2.config
import h2.connection
import h2.events

from tests.apps import trailer_apps
from tests.conftest import Running


def _raw_http1(running: Running, request: bytes) -> bytes:
    with running.connect() as sock:
        sock.sendall(request)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk


def _h2_events(running: Running, path: str) -> list[object]:
    sock = socket.create_connection((running.host, running.port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(
        1,
        [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "x")],
        end_stream=True,
    )
    sock.sendall(conn.data_to_send())
    events: list[object] = []
    try:
        while not any(isinstance(e, h2.events.StreamEnded) for e in events):
            data = sock.recv(65536)
            assert data, "connection closed before the stream ended"
            events.extend(conn.receive_data(data))
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    return events


def test_trailers_over_http1_are_chunked_trailer_fields(serve) -> None:
    with serve(trailer_apps.trailers) as running:
        raw = _raw_http1(running, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body == b"9\r\npart one,\r\n8\r\npart two\r\n0\r\nx-checksum: abc\r\n\r\n"


def test_trailers_over_http2_end_the_stream(serve) -> None:
    with serve(trailer_apps.trailers) as running:
        events = _h2_events(running, "/")
    data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    trailers = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
    assert data == b"part one,part two"
    assert trailers and (b"x-checksum", b"abc") in trailers[0].headers


def test_early_hints_over_http1_come_before_the_response(serve) -> None:
    with serve(trailer_apps.early_hints) as running:
        raw = _raw_http1(running, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n")
    assert b"HTTP/1.1 200 OK\r\n" in raw
    assert raw.endswith(b"hinted")


def test_early_hints_are_not_sent_to_http10_clients(serve) -> None:
    with serve(trailer_apps.early_hints) as running:
        raw = _raw_http1(running, b"GET / HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")


def test_early_hints_over_http2_are_an_informational_response(serve) -> None:
    with serve(trailer_apps.early_hints) as running:
        events = _h2_events(running, "/")
    informational = [e for e in events if isinstance(e, h2.events.InformationalResponseReceived)]
    final = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
    assert informational and (b":status", b"103") in informational[0].headers
    assert (b"link", b"</style.css>; rel=preload") in informational[0].headers
    assert final and (b":status", b"200") in final[0].headers
