"""Bind strings to listening sockets: HOST:PORT, [IPV6]:PORT, unix:PATH, fd://N."""

from __future__ import annotations

import os
import socket
import ssl
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from threshold.config import Config

SD_LISTEN_FDS_START = 3


class BindError(ValueError):
    pass


@dataclass
class Listener:
    sock: socket.socket
    bind: str

    def close(self) -> None:
        self.sock.close()

    def url(self, scheme: str = "http") -> str:
        """The address as users type it, with the real port (port 0 resolved)."""
        if self.sock.family == socket.AF_UNIX:
            return f"{scheme}+unix:{self.sock.getsockname()}"
        host, port = self.sock.getsockname()[:2]
        if self.sock.family == socket.AF_INET6:
            host = f"[{host}]"
        return f"{scheme}://{host}:{port}"


def parse_bind(bind: str) -> tuple[str, object]:
    """("tcp", (host, port)) | ("unix", path) | ("fd", n)."""
    if bind.startswith("unix:"):
        path = bind[5:]
        if not path:
            raise BindError(f"bind: empty unix socket path in {bind!r}")
        return "unix", path
    if bind.startswith("fd://"):
        try:
            return "fd", int(bind[5:])
        except ValueError:
            raise BindError(f"bind: {bind!r} is not fd://N") from None
    if bind.startswith("["):
        host, sep, port_text = bind[1:].partition("]:")
        if not sep:
            raise BindError(f"bind: {bind!r} is not [IPV6]:PORT")
    else:
        host, sep, port_text = bind.rpartition(":")
        if not sep:
            host, port_text = bind, "8000"
    try:
        port = int(port_text)
    except ValueError:
        raise BindError(f"bind: bad port in {bind!r}") from None
    if not 0 <= port <= 65535:
        raise BindError(f"bind: port out of range in {bind!r}")
    return "tcp", (host or "127.0.0.1", port)


def systemd_listeners(environ: dict[str, str] | os._Environ[str]) -> list[Listener]:
    """Sockets passed by systemd socket activation (LISTEN_FDS for this PID), if any."""
    try:
        if int(environ.get("LISTEN_PID", "0")) != os.getpid():
            return []
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    listeners = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        listeners.append(Listener(sock, f"fd://{fd}"))
    return listeners


def bind_listeners(config: Config, reuse_port: bool = False) -> list[Listener]:
    """Sockets from systemd socket activation if present, else one per --bind."""
    listeners = systemd_listeners(os.environ)
    if listeners:
        return listeners
    mode = int(config.unix_socket_mode, 8) if config.unix_socket_mode else None
    created: list[Listener] = []
    try:
        for bind in config.bind:
            created.append(create_listener(bind, config.backlog, reuse_port, mode))
    except BindError:
        for listener in created:
            listener.close()
        raise
    return created


def create_listener(
    bind: str, backlog: int, reuse_port: bool = False, unix_mode: int | None = None
) -> Listener:
    kind, target = parse_bind(bind)
    if kind == "fd":
        assert isinstance(target, int)
        sock = socket.socket(fileno=target)
    elif kind == "unix":
        assert isinstance(target, str)
        try:
            if stat.S_ISSOCK(os.stat(target).st_mode):
                os.unlink(target)  # stale socket from an earlier run
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(target)
            if unix_mode is not None:
                os.chmod(target, unix_mode)
        except OSError as exc:
            sock.close()
            raise BindError(f"bind: cannot bind {bind}: {exc.strerror}") from None
    else:
        assert isinstance(target, tuple)
        host, port = target
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise BindError(f"bind: cannot resolve {host!r}: {exc}") from None
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise BindError(f"bind: cannot bind {bind}: {exc.strerror}") from None
    sock.listen(backlog)
    sock.setblocking(False)
    return Listener(sock, bind)


def create_ssl_context(config: Config) -> ssl.SSLContext | None:
    """The server TLS context from --certfile & co; None for cleartext. TLS 1.2 minimum."""
    if not config.certfile:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(
            config.certfile, config.keyfile or None, config.keyfile_password or None
        )
        if config.ca_certs:
            context.load_verify_locations(config.ca_certs)
        if config.ciphers:
            context.set_ciphers(config.ciphers)
    except (OSError, ssl.SSLError) as exc:
        raise BindError(f"TLS: cannot load certificates or ciphers: {exc}") from None
    context.verify_mode = {
        "none": ssl.CERT_NONE,
        "optional": ssl.CERT_OPTIONAL,
        "required": ssl.CERT_REQUIRED,
    }[config.cert_reqs]
    alpn = {"auto": ["h2", "http/1.1"], "1": ["http/1.1"], "2": ["h2"]}[config.http]
    context.set_alpn_protocols(alpn)
    return context
