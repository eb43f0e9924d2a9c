"""WebSockets over HTTP/2 (RFC 8441 extended CONNECT), served by the same session code."""

from __future__ import annotations

import socket
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from tests.apps import ws_apps
from tests.conftest import Running


class H2WebSocketClient:
    """An h2 client connection carrying one WebSocket on stream 1."""

    def __init__(self, running: Running, path: str = "/chat") -> None:
        self.sock = socket.create_connection((running.host, running.port), timeout=10)
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.h2.initiate_connection()
        self.sock.sendall(self.h2.data_to_send())
        self.events: list[Any] = []
        self.ws = ClientProtocol(parse_uri("ws://x" + path), state=State.OPEN)
        self.frames: list[Any] = []
        while not any(isinstance(e, h2.events.RemoteSettingsChanged) for e in self.events):
            self._pump()
        self.connect_enabled = (
            self.h2.remote_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL) == 1
        )
        self.path = path

    def connect(self, headers: list[tuple[bytes, bytes]] | None = None) -> list[Any]:
        request = [
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", b"http"),
            (b":path", self.path.encode()),
            (b":authority", b"x"),
            (b"sec-websocket-version", b"13"),
            *(headers or []),
        ]
        self.h2.send_headers(1, request)
        self.sock.sendall(self.h2.data_to_send())
        while not any(isinstance(e, h2.events.ResponseReceived) for e in self.events):
            self._pump()
        response = next(e for e in self.events if isinstance(e, h2.events.ResponseReceived))
        return list(response.headers)

    def send_text(self, text: str) -> None:
        self.ws.send_text(text.encode())
        self.h2.send_data(1, b"".join(self.ws.data_to_send()))
        self.sock.sendall(self.h2.data_to_send())

    def receive(self) -> Any:
        while not self.frames:
            self._pump()
        return self.frames.pop(0)

    def _pump(self) -> None:
        data = self.sock.recv(65536)
        assert data, "connection closed"
        for event in self.h2.receive_data(data):
            self.events.append(event)
            if isinstance(event, h2.events.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                self.ws.receive_data(event.data)
                self.frames.extend(self.ws.events_received())
        self.sock.sendall(self.h2.data_to_send())

    def close(self) -> None:
        self.sock.close()


def test_server_advertises_extended_connect_for_asgi_apps(serve) -> None:
    with serve(ws_apps.echo) as running:
        client = H2WebSocketClient(running)
        try:
            assert client.connect_enabled
        finally:
            client.close()


def test_websocket_echo_over_http2(serve) -> None:
    with serve(ws_apps.echo) as running:
        client = H2WebSocketClient(running)
        try:
            headers = client.connect()
            assert (b":status", b"200") in headers
            client.send_text("hello over h2")
            frame = client.receive()
            assert frame.opcode is Opcode.TEXT
            assert bytes(frame.data) == b"hello over h2"
            client.ws.send_close(1000, "bye")
            client.h2.send_data(1, b"".join(client.ws.data_to_send()))
            client.sock.sendall(client.h2.data_to_send())
            frame = client.receive()
            assert frame.opcode is Opcode.CLOSE
        finally:
            client.close()


def test_extended_connect_with_a_wrong_version_is_refused(serve) -> None:
    with serve(ws_apps.echo) as running:
        client = H2WebSocketClient(running)
        try:
            client.h2.send_headers(
                1,
                [
                    (b":method", b"CONNECT"),
                    (b":protocol", b"websocket"),
                    (b":scheme", b"http"),
                    (b":path", b"/chat"),
                    (b":authority", b"x"),
                    (b"sec-websocket-version", b"8"),
                ],
            )
            client.sock.sendall(client.h2.data_to_send())
            while not any(isinstance(e, h2.events.ResponseReceived) for e in client.events):
                client._pump()
            response = next(e for e in client.events if isinstance(e, h2.events.ResponseReceived))
            assert (b":status", b"426") in response.headers
        finally:
            client.close()


def test_wsgi_apps_do_not_advertise_extended_connect(serve) -> None:
    with serve(ws_apps.wsgi_app, interface="wsgi") as running:
        client = H2WebSocketClient(running)
        try:
            assert not client.connect_enabled
        finally:
            client.close()
