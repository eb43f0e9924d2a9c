"""The HAProxy PROXY protocol prelude (v1 text, v2 binary with TLVs), sans-I/O.

``parse(data)`` returns None while more bytes are needed, or a ``ProxyHeader``
with the header's length; it raises ``ProxyProtocolError`` on malformed input.
The server reads exactly that many bytes off the socket before TLS or HTTP start.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest v1 line, CRLF included (spec section 2.1)
V2_MAX_BODY = 4096  # larger TLV blocks are refused

# v2 TLV types (spec section 2.2.7)
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23


class ProxyProtocolError(ValueError):
    pass


@dataclass
class ProxyHeader:
    length: int  # bytes of the prelude, to consume
    version: int
    local: bool = False  # v2 LOCAL (health checks): keep the real peer addresses
    client: tuple[str, int] | None = None
    server: tuple[str, int] | None = None
    tlvs: dict[str, object] = field(default_factory=dict)


def parse(data: bytes, versions: str = "auto") -> ProxyHeader | None:
    """Parse a PROXY prelude at the start of ``data`` (``versions``: v1, v2 or auto)."""
    if data[:1] == b"\r" and versions in ("v2", "auto"):
        if len(data) < 16:
            if not V2_SIGNATURE.startswith(data[:12]):
                raise ProxyProtocolError("not a PROXY v2 signature")
            return None
        return _parse_v2(data)
    if data[:1] == b"P" and versions in ("v1", "auto"):
        return _parse_v1(data)
    if len(data) < 1:
        return None
    raise ProxyProtocolError("missing PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or not b"PROXY "[: len(data)] == data[:6]:
            raise ProxyProtocolError("PROXY v1 line too long or malformed")
        return None
    parts = data[:end].split(b" ")
    if parts[0] != b"PROXY" or len(parts) < 2:
        raise ProxyProtocolError("malformed PROXY v1 line")
    if parts[1] == b"UNKNOWN":
        return ProxyHeader(end + 2, 1, local=True)
    if parts[1] not in (b"TCP4", b"TCP6") or len(parts) != 6:
        raise ProxyProtocolError("malformed PROXY v1 line")
    try:
        src = ipaddress.ip_address(parts[2].decode("ascii"))
        dst = ipaddress.ip_address(parts[3].decode("ascii"))
        sport, dport = int(parts[4]), int(parts[5])
    except ValueError:
        raise ProxyProtocolError("bad address or port in PROXY v1 line") from None
    if (src.version == 4) != (parts[1] == b"TCP4") or src.version != dst.version:
        raise ProxyProtocolError("address family mismatch in PROXY v1 line")
    if not (0 <= sport < 65536 > dport >= 0):
        raise ProxyProtocolError("port out of range in PROXY v1 line")
    if parts[4] != str(sport).encode() or parts[5] != str(dport).encode():
        raise ProxyProtocolError("ports must be plain decimal")
    return ProxyHeader(end + 2, 1, client=(str(src), sport), server=(str(dst), dport))


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if data[:12] != V2_SIGNATURE:
        raise ProxyProtocolError("not a PROXY v2 signature")
    version_command, family, length = struct.unpack("!BBH", data[12:16])
    if version_command >> 4 != 2:
        raise ProxyProtocolError("unsupported PROXY v2 version")
    command = version_command & 0x0F
    if command > 1:
        raise ProxyProtocolError("unknown PROXY v2 command")
    if length > V2_MAX_BODY:
        raise ProxyProtocolError("PROXY v2 header too large")
    if len(data) < 16 + length:
        return None
    body = data[16 : 16 + length]
    header = ProxyHeader(16 + length, 2, local=command == 0)
    if command == 0:
        return header  # LOCAL: the proxy's own connection (health check)
    transport_family = family >> 4
    if transport_family == 1:  # AF_INET
        if length < 12:
            raise ProxyProtocolError("short PROXY v2 IPv4 block")
        src, dst, sport, dport = struct.unpack("!4s4sHH", body[:12])
        header.client = (str(ipaddress.IPv4Address(src)), sport)
        header.server = (str(ipaddress.IPv4Address(dst)), dport)
        tlv_start = 12
    elif transport_family == 2:  # AF_INET6
        if length < 36:
            raise ProxyProtocolError("short PROXY v2 IPv6 block")
        src, dst, sport, dport = struct.unpack("!16s16sHH", body[:36])
        header.client = (str(ipaddress.IPv6Address(src)), sport)
        header.server = (str(ipaddress.IPv6Address(dst)), dport)
        tlv_start = 36
    elif transport_family == 0:  # AF_UNSPEC
        header.local = True
        return header
    elif transport_family == 3:  # AF_UNIX: no IP addresses to report
        header.local = True
        tlv_start = 216 if length >= 216 else length
    else:  # spec section 2.2: other values must be rejected
        raise ProxyProtocolError("unknown PROXY v2 address family")
    header.tlvs = _parse_tlvs(body[tlv_start:])
    return header


def _parse_tlvs(block: bytes) -> dict[str, object]:
    tlvs: dict[str, object] = {}
    offset = 0
    while offset < len(block):
        if offset + 3 > len(block):
            raise ProxyProtocolError("truncated PROXY v2 TLV")
        kind, size = struct.unpack("!BH", block[offset : offset + 3])
        value = block[offset + 3 : offset + 3 + size]
        if len(value) != size:
            raise ProxyProtocolError("truncated PROXY v2 TLV")
        offset += 3 + size
        if kind == PP2_TYPE_ALPN:
            tlvs["alpn"] = value.decode("latin-1")
        elif kind == PP2_TYPE_AUTHORITY:
            tlvs["authority"] = value.decode("latin-1")
        elif kind == PP2_TYPE_SSL and size >= 5:
            ssl: dict[str, object] = {
                "client": value[0],
                "verify": struct.unpack("!I", value[1:5])[0],
            }
            for sub_kind, sub_value in _parse_tlvs(value[5:]).items():
                ssl[sub_kind] = sub_value
            tlvs["ssl"] = ssl
        elif kind == PP2_SUBTYPE_SSL_VERSION:
            tlvs["version"] = value.decode("latin-1")
        elif kind == PP2_SUBTYPE_SSL_CN:
            tlvs["cn"] = value.decode("utf-8", "replace")
        elif kind == PP2_SUBTYPE_SSL_CIPHER:
            tlvs["cipher"] = value.decode("latin-1")
    return tlvs
