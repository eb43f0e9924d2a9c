"""Trusted proxy headers: RFC 7239 ``Forwarded`` and ``X-Forwarded-*``.

Applied once to a request head, before any interface sees it, so ASGI and WSGI
agree on the client address, scheme, host, port and prefix. Only a peer in
``--forwarded-allow-ips`` is believed; the chain is walked from the right and
stops at the first hop that is not a trusted proxy. Malformed values are ignored.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from typing import Any

from threshold.stream import RequestHead

logger = logging.getLogger("threshold.error")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """``--forwarded-allow-ips``: addresses, CIDRs, ``*``, and ``unix`` for unix sockets."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.any = False
        self.unix = False
        self.networks: list[IPNetwork] = []
        # Parsing an address costs more than the rest of a small request: remember
        # answers (a bounded cache; peers are few, forwarded chains fewer).
        self._known: dict[str, bool] = {}
        for entry in (part.strip() for item in entries for part in item.split(",")):
            if entry == "*":
                self.any = True
            elif entry == "unix":
                self.unix = True
            elif entry:
                self.networks.append(ipaddress.ip_network(entry, strict=False))

    def __contains__(self, host: str | None) -> bool:
        if host is None:  # a unix-socket peer
            return self.unix or self.any
        if self.any:
            return True
        known = self._known.get(host)
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            trusted = False
        else:
            trusted = any(address in network for network in self.networks)
        if len(self._known) >= 4096:
            self._known.clear()
        self._known[host] = trusted
        return trusted


def _node(text: str) -> tuple[str, int | None] | None:
    """A Forwarded/X-Forwarded-For node: ``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``."""
    text = text.strip().strip('"')
    if not text or text.lower() == "unknown" or text.startswith("_"):
        return None
    port: int | None = None
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or rest[:1] not in ("", ":"):
            return None
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
            return None  # a malformed node is not believed in part
        port = int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, port


def _forwarded_elements(values: list[str]) -> list[dict[str, str]]:
    """RFC 7239 section 4: comma-separated elements of ;-separated pairs."""
    elements = []
    for value in values:
        for element in value.split(","):
            pairs: dict[str, str] = {}
            for pair in element.split(";"):
                name, sep, text = pair.strip().partition("=")
                if not sep:
                    if pair.strip():
                        raise ValueError(f"malformed Forwarded pair {pair!r}")
                    continue
                pairs[name.strip().lower()] = text.strip().strip('"')
            elements.append(pairs)
    return elements


def apply(head: RequestHead, trusted: TrustedProxies) -> None:
    """Rewrite ``head`` from the proxy headers a trusted peer sent."""
    peer = head.client[0] if head.client is not None else None
    if peer not in trusted:
        return
    forwarded: list[str] = []
    xff: list[str] = []
    proto = host = port = prefix = None
    for name, value in head.headers:
        if name[:1] not in (b"f", b"x"):
            continue
        if name == b"forwarded":
            forwarded.append(value.decode("latin-1"))
        elif name == b"x-forwarded-for":
            xff.append(value.decode("latin-1"))
        elif name == b"x-forwarded-proto":
            proto = value.decode("latin-1")
        elif name == b"x-forwarded-host":
            host = value.decode("latin-1")
        elif name == b"x-forwarded-port":
            port = value.decode("latin-1")
        elif name == b"x-forwarded-prefix":
            prefix = value.decode("latin-1")
    try:
        if forwarded:
            # Forwarded wins over X-Forwarded-* when both are present (it is the standard).
            elements = _forwarded_elements(forwarded)
            chosen = _walk([e.get("for", "") for e in elements], trusted)
            if chosen is not None:
                index, client = chosen
                element = elements[index]
                if client is not None:
                    _set_client(head, client)
                proto = element.get("proto", proto)
                host = element.get("host", host)
        elif xff:
            nodes = [part for value in xff for part in value.split(",")]
            chosen = _walk(nodes, trusted)
            if chosen is not None and chosen[1] is not None:
                _set_client(head, chosen[1])
        if proto is not None:
            proto = proto.split(",")[-1].strip().lower()
            if proto in ("http", "https", "ws", "wss"):
                head.scheme = "https" if proto in ("https", "wss") else "http"
        if host is not None:
            host = host.split(",")[-1].strip()
            if host and host.isascii() and all(c.isalnum() or c in "-.:[]_" for c in host):
                head.headers = [(n, v) for n, v in head.headers if n != b"host"]
                head.headers.append((b"host", host.encode("latin-1")))
                name_only, server_port = host, head.server[1] if head.server else None
                if not host.endswith("]") and ":" in host:
                    name_only, _, port_text = host.rpartition(":")
                    if port_text.isdigit() and 0 < int(port_text) < 65536:
                        server_port = int(port_text)  # X-Forwarded-Port, if any, wins below
                head.server = (name_only.strip("[]"), server_port)
        if port is not None:
            port = port.split(",")[-1].strip()
            if port.isdigit() and 0 < int(port) < 65536 and head.server is not None:
                head.server = (head.server[0], int(port))
        if prefix is not None:
            prefix = prefix.split(",")[-1].strip().rstrip("/")
            if (
                prefix.startswith("/")
                and "//" not in prefix
                and all(c.isprintable() for c in prefix)
            ):
                head.root_path = prefix
    except ValueError as exc:
        logger.debug("ignoring malformed proxy headers from %s: %s", peer, exc)


def _walk(
    nodes: list[str], trusted: TrustedProxies
) -> tuple[int, tuple[str, int | None] | None] | None:
    """From the right, the first node that is not a trusted proxy (or the leftmost).

    An unknown/obfuscated hop stops the walk at what we know; if that is nothing, its
    index comes back with no node (a Forwarded element's proto/host still count).
    """
    last: tuple[int, tuple[str, int | None] | None] | None = None
    for index in range(len(nodes) - 1, -1, -1):
        node = _node(nodes[index])
        if node is None:
            return last or (index, None)
        last = (index, node)
        if node[0] not in trusted:
            return last
    return last


def _set_client(head: RequestHead, node: tuple[str, int | None]) -> None:
    head.client = (node[0], node[1] or 0)


def wrap(handler: Callable[[Any], None], trusted: TrustedProxies) -> Callable[[Any], None]:
    """A handler that applies the proxy headers to each stream's head first."""

    def with_proxy_headers(stream: Any) -> None:
        apply(stream.head, trusted)
        handler(stream)

    return with_proxy_headers
