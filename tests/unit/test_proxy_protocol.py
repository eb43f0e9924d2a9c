"""The PROXY protocol prelude parser (``threshold.protocols.proxy.parse``), fed bytes.

Every valid header is also fed in every split (each prefix must ask for more bytes,
never fail) and with the request that follows it appended (only the header's own
bytes are counted in ``length``).
"""

from __future__ import annotations

import struct

import pytest

from threshold.protocols.proxy import (
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_SSL,
    V1_MAX,
    V2_MAX_BODY,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    parse,
)

REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
AF_INET, AF_INET6, AF_UNIX, AF_UNSPEC = 0x10, 0x20, 0x30, 0x00
STREAM = 0x01
PROXY, LOCAL = 0x21, 0x20  # version 2 with the command in the low nibble


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def v2(
    command: int = PROXY,
    family: int = AF_INET | STREAM,
    addresses: bytes | None = None,
    tlvs: bytes = b"",
    length: int | None = None,
    signature: bytes = V2_SIGNATURE,
) -> bytes:
    if addresses is None:
        addresses = struct.pack("!4s4sHH", bytes([203, 0, 113, 7]), bytes([10, 0, 0, 1]), 4711, 443)
    body = addresses + tlvs
    size = len(body) if length is None else length
    return signature + struct.pack("!BBH", command, family, size) + body


def v2_ipv6(tlvs: bytes = b"") -> bytes:
    src = bytes.fromhex("20010db8000000000000000000000007")
    dst = bytes.fromhex("20010db8000000000000000000000001")
    return v2(
        family=AF_INET6 | STREAM, addresses=struct.pack("!16s16sHH", src, dst, 4711, 443), tlvs=tlvs
    )


def parsed(data: bytes, versions: str = "auto") -> ProxyHeader:
    """Parse whole, in every split, and with a request after it; all must agree."""
    for cut in range(len(data)):
        assert parse(data[:cut], versions) is None, f"a prefix of {cut} bytes did not wait"
    header = parse(data, versions)
    assert header is not None
    assert header.length == len(data)
    followed = parse(data + REQUEST, versions)
    assert followed == header
    return header


def rejected(data: bytes, versions: str = "auto") -> None:
    with pytest.raises(ProxyProtocolError):
        parse(data, versions)


# -- v1 -------------------------------------------------------------------------------


def test_v1_tcp4() -> None:
    header = parsed(b"PROXY TCP4 203.0.113.7 10.0.0.1 4711 443\r\n")
    assert header.version == 1
    assert not header.local
    assert header.client == ("203.0.113.7", 4711)
    assert header.server == ("10.0.0.1", 443)


def test_v1_tcp6() -> None:
    header = parsed(b"PROXY TCP6 2001:db8::7 2001:db8::1 4711 443\r\n", "v1")
    assert header.client == ("2001:db8::7", 4711)
    assert header.server == ("2001:db8::1", 443)


def test_v1_unknown_keeps_the_real_peer() -> None:
    header = parsed(b"PROXY UNKNOWN\r\n")
    assert header.local and header.client is None and header.server is None
    # UNKNOWN may carry anything up to the CRLF (spec section 2.1).
    line = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"
    header = parsed(line)
    assert header.local and header.length == len(line)


def test_v1_longest_line_is_accepted() -> None:
    addresses = b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff " * 2
    line = b"PROXY UNKNOWN " + addresses + b"65535 65535\r\n"
    assert len(line) == V1_MAX == 107  # the spec's worst case
    assert parsed(line).local
    header = parsed(b"PROXY TCP6 " + addresses + b"65535 65535\r\n")
    assert header.client == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)


def test_v1_too_long() -> None:
    rejected(b"PROXY UNKNOWN " + b"x" * 200 + b"\r\n")
    rejected(b"PROXY UNKNOWN " + b"x" * 200)  # no CRLF within the limit: no more waiting
    rejected(b"PROXY TCP4 " + b"1" * (V1_MAX - 11))


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY\r\n",
        b"PROXY \r\n",
        b"PROXY TCP4\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 host 1 2\r\n",
        b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP6 ::1 1.2.3.4 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1_0 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 x 2\r\n",
        b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n",
        b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
    ],
)
def test_v1_malformed(line: bytes) -> None:
    rejected(line)


@pytest.mark.parametrize("start", [b"PROXX", b"PRO Y", b"PROXY\r", b"PROXYZ"])
def test_v1_a_wrong_start_fails_before_the_line_is_complete(start: bytes) -> None:
    rejected(start)


# -- v2 -------------------------------------------------------------------------------


def test_v2_ipv4() -> None:
    header = parsed(v2())
    assert header.version == 2
    assert not header.local
    assert header.client == ("203.0.113.7", 4711)
    assert header.server == ("10.0.0.1", 443)
    assert header.tlvs == {}


def test_v2_ipv6() -> None:
    header = parsed(v2_ipv6(), "v2")
    assert header.client == ("2001:db8::7", 4711)
    assert header.server == ("2001:db8::1", 443)


def test_v2_local_keeps_the_real_peer() -> None:
    # A LOCAL header (the proxy's own health check) may still carry addresses: ignored.
    header = parsed(v2(command=LOCAL))
    assert header.local and header.client is None and header.server is None
    header = parsed(v2(command=LOCAL, family=AF_UNSPEC, addresses=b""))
    assert header.local and header.length == 16


def test_v2_unspec_and_unix_families_keep_the_real_peer() -> None:
    header = parsed(v2(family=AF_UNSPEC, addresses=b""))
    assert header.local and header.client is None
    unix = b"/run/src.sock".ljust(108, b"\0") + b"/run/dst.sock".ljust(108, b"\0")
    header = parsed(v2(family=AF_UNIX | STREAM, addresses=unix, tlvs=tlv(PP2_TYPE_ALPN, b"h2")))
    assert header.local and header.client is None
    assert header.tlvs == {"alpn": "h2"}


def test_v2_tlvs_alpn_and_authority() -> None:
    tlvs = tlv(PP2_TYPE_ALPN, b"h2") + tlv(PP2_TYPE_AUTHORITY, b"example.com")
    header = parsed(v2(tlvs=tlvs))
    assert header.tlvs == {"alpn": "h2", "authority": "example.com"}
    assert header.client == ("203.0.113.7", 4711)


def test_v2_unknown_tlvs_are_skipped() -> None:
    tlvs = tlv(0x04, b"\0" * 10) + tlv(0xE0, b"custom") + tlv(PP2_TYPE_ALPN, b"http/1.1")
    header = parsed(v2_ipv6(tlvs=tlvs))
    assert header.tlvs == {"alpn": "http/1.1"}


def test_v2_ssl_tlv_with_sub_tlvs() -> None:
    subs = (
        tlv(PP2_SUBTYPE_SSL_VERSION, b"TLSv1.3")
        + tlv(PP2_SUBTYPE_SSL_CN, "client é".encode())
        + tlv(PP2_SUBTYPE_SSL_CIPHER, b"TLS_AES_128_GCM_SHA256")
    )
    ssl = tlv(PP2_TYPE_SSL, bytes([0x07]) + struct.pack("!I", 0) + subs)
    header = parsed(v2(tlvs=ssl + tlv(PP2_TYPE_ALPN, b"h2")))
    assert header.tlvs["ssl"] == {
        "client": 0x07,
        "verify": 0,
        "version": "TLSv1.3",
        "cn": "client é",
        "cipher": "TLS_AES_128_GCM_SHA256",
    }
    assert header.tlvs["alpn"] == "h2"


def test_v2_ssl_tlv_without_sub_tlvs_and_a_failed_verify() -> None:
    header = parsed(v2(tlvs=tlv(PP2_TYPE_SSL, bytes([0x01]) + struct.pack("!I", 1))))
    assert header.tlvs["ssl"] == {"client": 0x01, "verify": 1}


@pytest.mark.parametrize(
    "tlvs",
    [
        b"\x01",  # a type and no length
        b"\x01\x00",  # half a length
        b"\x01\x00\x05h2",  # a value shorter than its length
        tlv(PP2_TYPE_ALPN, b"h2") + b"\x02\x00",
        tlv(PP2_TYPE_SSL, bytes([0x01]) + struct.pack("!I", 0) + b"\x21\x00\x09TLS"),
    ],
)
def test_v2_truncated_tlvs(tlvs: bytes) -> None:
    rejected(v2(tlvs=tlvs))


def test_v2_oversized() -> None:
    rejected(v2(length=V2_MAX_BODY + 1))  # refused from its first 16 bytes
    rejected(v2(length=V2_MAX_BODY + 1)[:16])
    rejected(v2(length=0xFFFF))
    big = tlv(0xE0, b"x" * (V2_MAX_BODY - 12 - 3))
    assert parsed(v2(tlvs=big)).length == 16 + V2_MAX_BODY  # the limit itself is fine


def test_v2_address_block_shorter_than_its_family() -> None:
    rejected(v2(addresses=b"\0" * 11))
    rejected(v2(family=AF_INET6 | STREAM, addresses=b"\0" * 35))
    rejected(v2(family=AF_INET6 | STREAM))  # an IPv4 block (12 bytes) as IPv6


@pytest.mark.parametrize("family", [0x40 | STREAM, 0xF0 | STREAM])
def test_v2_unknown_address_family(family: int) -> None:
    rejected(v2(family=family))  # spec section 2.2: must be rejected
    assert parsed(v2(command=LOCAL, family=family)).local  # LOCAL ignores the family


@pytest.mark.parametrize(
    "signature",
    [
        b"\r\n\r\n\x00\r\nQUIT\r",
        b"\r\n\r\n\x01\r\nQUIT\n",
        b"\r\n\r\n\x00\r\nquit\n",
        b"\r\r\r\r\r\r\r\r\r\r\r\r",
    ],
)
def test_v2_bad_signature(signature: bytes) -> None:
    data = v2(signature=signature)
    rejected(data)
    # Known to be wrong from its first bytes: no waiting for the rest.
    mismatch = next(i for i in range(12) if signature[i] != V2_SIGNATURE[i])
    rejected(data[: mismatch + 1])


@pytest.mark.parametrize("version_command", [0x11, 0x31, 0x01, 0xF1])
def test_v2_bad_version(version_command: int) -> None:
    rejected(v2(command=version_command))
    rejected(v2(command=version_command)[:16])


@pytest.mark.parametrize("version_command", [0x22, 0x2F])
def test_v2_bad_command(version_command: int) -> None:
    rejected(v2(command=version_command))


# -- versions and what is not a PROXY header -------------------------------------------


def test_versions_restrict_what_is_accepted() -> None:
    v1_line = b"PROXY TCP4 203.0.113.7 10.0.0.1 4711 443\r\n"
    assert parse(v1_line, "v1") is not None
    assert parse(v2(), "v2") is not None
    rejected(v1_line, "v2")
    rejected(v2(), "v1")
    rejected(v1_line[:1], "v2")
    rejected(v2()[:1], "v1")


@pytest.mark.parametrize(
    "data", [REQUEST, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x16\x03\x01\x02\x00", b"\x00"]
)
def test_a_connection_without_a_header_is_refused(data: bytes) -> None:
    # HTTP/1.1, the HTTP/2 preface and a TLS ClientHello are not PROXY headers.
    for versions in ("v1", "v2", "auto"):
        rejected(data, versions)


def test_nothing_yet_asks_for_more() -> None:
    for versions in ("v1", "v2", "auto"):
        assert parse(b"", versions) is None
