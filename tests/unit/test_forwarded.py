"""Trusted proxy headers: ``TrustedProxies``, ``apply()`` on a RequestHead, and the
result as ASGI and WSGI apps see it through the real server.

``apply()`` is fed request heads directly (it is sans-I/O); the last tests start the
server with an ASGI and a WSGI app that report their view, and send the headers from
127.0.0.1 (trusted by default) or from a peer outside ``--forwarded-allow-ips``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.apps.proxy_apps import asgi_view, wsgi_view
from tests.conftest import Running
from threshold.forwarded import TrustedProxies, apply, wrap
from threshold.stream import RequestHead

ServeFn = Callable[..., Any]
PEER = ("127.0.0.1", 50000)
SERVER = ("127.0.0.1", 8000)
TIMEOUT = 10.0


def make_head(
    *headers: tuple[str, str | bytes],
    client: tuple[str, int] | None = PEER,
    server: tuple[str, int | None] | None = SERVER,
    scheme: str = "http",
) -> RequestHead:
    raw = [(b"host", b"127.0.0.1:8000")]
    for name, value in headers:
        raw.append((name.lower().encode(), value if isinstance(value, bytes) else value.encode()))
    return RequestHead("GET", b"/", b"", "1.1", raw, scheme, client, server)


def applied(
    *headers: tuple[str, str | bytes], trusted: str = "127.0.0.1", **kwargs: Any
) -> RequestHead:
    head = make_head(*headers, **kwargs)
    apply(head, TrustedProxies([trusted]))
    return head


def host_header(head: RequestHead) -> bytes:
    values = [value for name, value in head.headers if name == b"host"]
    assert len(values) == 1, head.headers
    return values[0]


def unchanged(head: RequestHead) -> bool:
    return (
        head.client == PEER
        and head.server == SERVER
        and head.scheme == "http"
        and head.root_path is None
        and host_header(head) == b"127.0.0.1:8000"
    )


# -- TrustedProxies ------------------------------------------------------------------


def test_trusted_single_addresses() -> None:
    trusted = TrustedProxies(["127.0.0.1", "::1"])
    assert "127.0.0.1" in trusted
    assert "::1" in trusted
    assert "127.0.0.2" not in trusted
    assert "::2" not in trusted
    assert None not in trusted  # a unix-socket peer needs "unix"


def test_trusted_ipv4_and_ipv6_networks() -> None:
    trusted = TrustedProxies(["10.0.0.0/8", "2001:db8::/32", "192.168.1.7/24"])
    assert "10.255.1.2" in trusted
    assert "11.0.0.1" not in trusted
    assert "2001:db8:ffff::1" in trusted
    assert "2001:db9::1" not in trusted
    assert "192.168.1.200" in trusted  # host bits in the entry are dropped (strict=False)
    assert "192.168.2.1" not in trusted
    assert "::ffff:10.0.0.1" not in trusted  # another family is not a match


def test_trusted_star_believes_everyone_and_unix_only_unix_peers() -> None:
    everyone = TrustedProxies(["*"])
    assert "203.0.113.9" in everyone
    assert "2001:db8::1" in everyone
    assert None in everyone
    unix = TrustedProxies(["unix"])
    assert None in unix
    assert "127.0.0.1" not in unix


def test_trusted_comma_separated_and_repeated_entries() -> None:
    trusted = TrustedProxies(["127.0.0.1, 10.0.0.0/8 ,", "unix,::1"])
    assert "127.0.0.1" in trusted
    assert "10.1.1.1" in trusted
    assert "::1" in trusted
    assert None in trusted
    assert "172.16.0.1" not in trusted
    assert not TrustedProxies([""]).networks


def test_trusted_with_a_peer_that_is_not_an_address() -> None:
    trusted = TrustedProxies(["10.0.0.0/8"])
    assert "not-an-ip" not in trusted
    assert "" not in trusted


# -- Forwarded (RFC 7239) -----------------------------------------------------------


def test_forwarded_for_proto_and_host() -> None:
    head = applied(("Forwarded", "for=192.0.2.60;proto=https;host=example.com"))
    assert head.client == ("192.0.2.60", 0)
    assert head.scheme == "https"
    assert host_header(head) == b"example.com"
    assert head.server == ("example.com", 8000)


def test_forwarded_quoted_ipv6_with_port_and_case_insensitive_names() -> None:
    head = applied(("Forwarded", 'For="[2001:db8:cafe::17]:4711";PROTO=HTTPS'))
    assert head.client == ("2001:db8:cafe::17", 4711)
    assert head.scheme == "https"


def test_forwarded_quoted_ipv4_with_port_and_host_with_port() -> None:
    head = applied(("Forwarded", 'for="198.51.100.17:8080";host="example.com:8443"'))
    assert head.client == ("198.51.100.17", 8080)
    assert host_header(head) == b"example.com:8443"
    assert head.server is not None and head.server[0] == "example.com"


@pytest.mark.parametrize("node", ["_hidden", '"_SEVKISEK"', "unknown", "UNKNOWN"])
def test_forwarded_obfuscated_or_unknown_for_keeps_the_peer(node: str) -> None:
    head = applied(("Forwarded", f"for={node}"))
    assert unchanged(head)


@pytest.mark.parametrize(
    "element", ["for=_hidden;proto=https", "proto=https", "for=unknown;proto=https"]
)
def test_forwarded_without_a_usable_for_still_gives_the_scheme(element: str) -> None:
    # The trusted proxy could not (or would not) name its client, but it did say how
    # the client reached it.
    head = applied(("Forwarded", element + ";host=example.com"))
    assert head.client == PEER
    assert head.scheme == "https"
    assert host_header(head) == b"example.com"


def test_forwarded_multiple_elements_walk_from_the_right() -> None:
    trusted = "127.0.0.1,10.0.0.0/8"
    head = applied(("Forwarded", "for=203.0.113.5, for=10.0.0.7, for=10.0.0.8"), trusted=trusted)
    assert head.client == ("203.0.113.5", 0)
    # Stops at the first hop that is not a trusted proxy, however many are left of it.
    head = applied(
        ("Forwarded", "for=203.0.113.5, for=198.51.100.9, for=10.0.0.8"), trusted=trusted
    )
    assert head.client == ("198.51.100.9", 0)


def test_forwarded_elements_over_several_header_lines() -> None:
    head = applied(
        ("Forwarded", "for=203.0.113.5;proto=https"),
        ("Forwarded", "for=10.0.0.8;proto=http"),
        trusted="127.0.0.1,10.0.0.0/8",
    )
    assert head.client == ("203.0.113.5", 0)
    # proto and host come from the element that named the client.
    assert head.scheme == "https"


def test_forwarded_all_hops_trusted_gives_the_leftmost() -> None:
    head = applied(("Forwarded", "for=10.0.0.1, for=10.0.0.2"), trusted="127.0.0.1,10.0.0.0/8")
    assert head.client == ("10.0.0.1", 0)


def test_forwarded_wins_over_x_forwarded_for() -> None:
    head = applied(("X-Forwarded-For", "198.51.100.1"), ("Forwarded", "for=203.0.113.5"))
    assert head.client == ("203.0.113.5", 0)


@pytest.mark.parametrize(
    "value",
    [
        "for",  # a pair without '='
        "for=192.0.2.1;junk",
        "for=not-an-address",
        "for=300.1.1.1",
        "for=[2001:db8::1",
        'for="[::1]:notaport"',
        "\xff\xfe;;,,",
        "",
    ],
)
def test_forwarded_malformed_values_are_ignored(value: str) -> None:
    head = make_head(("Forwarded", value.encode("latin-1")))
    apply(head, TrustedProxies(["127.0.0.1"]))  # no exception
    assert head.client == PEER


# -- X-Forwarded-For and friends ----------------------------------------------------


def test_x_forwarded_for_single_address() -> None:
    assert applied(("X-Forwarded-For", "203.0.113.7")).client == ("203.0.113.7", 0)


def test_x_forwarded_for_with_ports_and_ipv6() -> None:
    assert applied(("X-Forwarded-For", "203.0.113.7:4321")).client == ("203.0.113.7", 4321)
    assert applied(("X-Forwarded-For", "2001:db8::1")).client == ("2001:db8::1", 0)
    assert applied(("X-Forwarded-For", "[2001:db8::1]:4321")).client == ("2001:db8::1", 4321)


def test_x_forwarded_for_walks_from_the_right_to_the_first_untrusted_hop() -> None:
    trusted = "127.0.0.1,10.0.0.0/8"
    head = applied(("X-Forwarded-For", "203.0.113.7, 10.0.0.1, 10.0.0.2"), trusted=trusted)
    assert head.client == ("203.0.113.7", 0)
    # A client can put anything left of its own address: it is not believed.
    head = applied(("X-Forwarded-For", "1.1.1.1, 198.51.100.1, 10.0.0.2"), trusted=trusted)
    assert head.client == ("198.51.100.1", 0)
    head = applied(("X-Forwarded-For", "10.0.0.3, 198.51.100.1"), trusted=trusted)
    assert head.client == ("198.51.100.1", 0)


def test_x_forwarded_for_all_trusted_gives_the_leftmost() -> None:
    head = applied(("X-Forwarded-For", "10.0.0.1,10.0.0.2"), trusted="127.0.0.1,10.0.0.0/8")
    assert head.client == ("10.0.0.1", 0)


def test_x_forwarded_for_over_several_header_lines() -> None:
    head = applied(
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-For", "10.0.0.2"),
        trusted="127.0.0.1,10.0.0.0/8",
    )
    assert head.client == ("203.0.113.7", 0)


def test_x_forwarded_for_stops_at_an_unknown_hop() -> None:
    trusted = "127.0.0.1,10.0.0.0/8"
    head = applied(("X-Forwarded-For", "203.0.113.7, unknown, 10.0.0.2"), trusted=trusted)
    assert head.client == ("10.0.0.2", 0)  # what is known, not what is left of the gap
    assert applied(("X-Forwarded-For", "unknown")).client == PEER


@pytest.mark.parametrize(
    "value",
    ["garbage", "", " , ", "300.1.1.1", "1.2.3.4.5", "[::1", "\xff\xb9", "203.0.113.7:\xb9"],
)
def test_x_forwarded_for_malformed_values_are_ignored(value: str) -> None:
    head = make_head(("X-Forwarded-For", value.encode("latin-1")))
    apply(head, TrustedProxies(["127.0.0.1"]))  # no exception
    assert head.client == PEER


@pytest.mark.parametrize(
    ("value", "scheme"),
    [
        ("https", "https"),
        ("HTTPS", "https"),
        ("wss", "https"),
        ("http", "http"),
        ("ws", "http"),
        ("http, https", "https"),  # the nearest proxy's value
        ("ftp", "http"),
        ("", "http"),
        ("\xff", "http"),
    ],
)
def test_x_forwarded_proto(value: str, scheme: str) -> None:
    head = applied(("X-Forwarded-Proto", value.encode("latin-1")))
    assert head.scheme == scheme


def test_x_forwarded_proto_can_say_http_on_a_tls_connection() -> None:
    head = applied(("X-Forwarded-Proto", "http"), scheme="https")
    assert head.scheme == "http"


def test_x_forwarded_host_and_port() -> None:
    head = applied(("X-Forwarded-Host", "example.com"), ("X-Forwarded-Port", "8443"))
    assert host_header(head) == b"example.com"
    assert head.server == ("example.com", 8443)
    head = applied(("X-Forwarded-Host", "[2001:db8::1]:8443"))
    assert host_header(head) == b"[2001:db8::1]:8443"
    assert head.server is not None and head.server[0] == "2001:db8::1"
    head = applied(("X-Forwarded-Host", "[2001:db8::1]"))
    assert head.server == ("2001:db8::1", 8000)
    assert applied(("X-Forwarded-Port", "443")).server == ("127.0.0.1", 443)


@pytest.mark.parametrize("value", ["evil.com/path", "a b", "x@y", "", "\xff\xfe", "a\tb"])
def test_x_forwarded_host_malformed_is_ignored(value: str) -> None:
    head = applied(("X-Forwarded-Host", value.encode("latin-1")))
    assert unchanged(head)


@pytest.mark.parametrize("value", ["0", "65536", "99999", "abc", "-1", "", "\xb9", "8 0"])
def test_x_forwarded_port_malformed_is_ignored(value: str) -> None:
    head = applied(("X-Forwarded-Port", value.encode("latin-1")))
    assert head.server == SERVER


def test_x_forwarded_prefix() -> None:
    assert applied(("X-Forwarded-Prefix", "/app")).root_path == "/app"
    assert applied(("X-Forwarded-Prefix", "/app/v1/")).root_path == "/app/v1"
    assert applied(("X-Forwarded-Prefix", "/outer, /inner")).root_path == "/inner"


@pytest.mark.parametrize("value", ["app", "//evil.com", "/a//b", "/a\x7fb", "", "/"])
def test_x_forwarded_prefix_malformed_is_ignored(value: str) -> None:
    head = applied(("X-Forwarded-Prefix", value.encode("latin-1")))
    assert head.root_path is None


ALL_HEADERS = (
    ("Forwarded", "for=203.0.113.5;proto=https;host=evil.com"),
    ("X-Forwarded-For", "198.51.100.1"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.com"),
    ("X-Forwarded-Port", "443"),
    ("X-Forwarded-Prefix", "/evil"),
)


def test_untrusted_peer_changes_nothing() -> None:
    head = applied(*ALL_HEADERS, trusted="10.0.0.0/8")
    assert unchanged(head)
    head = applied(*ALL_HEADERS[1:], trusted="10.0.0.0/8")
    assert unchanged(head)


def test_unix_socket_peer_is_trusted_only_with_unix() -> None:
    head = applied(*ALL_HEADERS[1:], trusted="127.0.0.1", client=None, server=None)
    assert head.client is None and head.scheme == "http"
    head = applied(*ALL_HEADERS[1:], trusted="unix", client=None, server=None)
    assert head.client == ("198.51.100.1", 0)
    assert head.scheme == "https"
    assert head.server == ("evil.com", 443)
    assert head.root_path == "/evil"


def test_wrap_applies_before_the_handler() -> None:
    seen: list[RequestHead] = []

    class FakeStream:  # only .head is read
        head = make_head(("X-Forwarded-For", "203.0.113.7"))

    handler = wrap(lambda stream: seen.append(stream.head), TrustedProxies(["127.0.0.1"]))
    handler(FakeStream())
    assert seen and seen[0].client == ("203.0.113.7", 0)


# -- through the real server: ASGI and WSGI see one result ---------------------------

PROXIED = {
    "X-Forwarded-For": "203.0.113.7, 127.0.0.1",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "example.com",
    "X-Forwarded-Port": "8443",
    "X-Forwarded-Prefix": "/app",
}


def fetch_view(running: Running, path: str, headers: dict[str, str]) -> dict[str, Any]:
    with httpx.Client(timeout=TIMEOUT) as client:
        response = client.get(running.url + path, headers=headers)
    assert response.status_code == 200, response.text
    view: dict[str, Any] = json.loads(response.content)
    return view


def views(serve: ServeFn, path: str, headers: dict[str, str], **options: Any) -> list[Any]:
    out = []
    for app in (asgi_view, wsgi_view):
        with serve(app, **options) as running:
            out.append((fetch_view(running, path, headers), running))
    return out


def test_asgi_and_wsgi_see_the_x_forwarded_headers_alike(serve: ServeFn) -> None:
    (asgi, _), (wsgi, _) = views(serve, "/app/page", PROXIED)
    for view in (asgi, wsgi):
        assert view["client"] == "203.0.113.7"
        assert view["scheme"] == "https"
        assert view["host"] == "example.com"
        assert view["server_name"] == "example.com"
        assert str(view["server_port"]) == "8443"
        assert view["root_path"] == "/app"
    assert asgi["client_port"] == 0 and wsgi["client_port"] == "0"
    assert asgi["path"] == "/app/page"  # ASGI paths include root_path
    assert wsgi["path"] == "/page"  # PATH_INFO does not
    assert wsgi["https"] == "on"
    assert wsgi["server_port"] == "8443"  # PEP 3333: a str


def test_asgi_and_wsgi_see_forwarded_alike(serve: ServeFn) -> None:
    headers = {"Forwarded": 'for="[2001:db8::7]:4711";proto=https;host=example.org'}
    (asgi, _), (wsgi, _) = views(serve, "/x", headers)
    for view in (asgi, wsgi):
        assert view["client"] == "2001:db8::7"
        assert str(view["client_port"]) == "4711"
        assert view["scheme"] == "https"
        assert view["host"] == "example.org"
        assert view["server_name"] == "example.org"
        assert view["root_path"] == ""


@pytest.mark.parametrize(
    "options", [{"forwarded_allow_ips": ["10.0.0.0/8"]}, {"proxy_headers": False}]
)
def test_untrusted_or_disabled_asgi_and_wsgi_see_the_direct_peer(
    serve: ServeFn, options: dict[str, Any]
) -> None:
    results = views(serve, "/app/page", PROXIED, **options)
    for view, running in results:
        assert view["client"] == "127.0.0.1"
        assert view["scheme"] == "http"
        assert view["host"] == f"127.0.0.1:{running.port}"
        assert view["server_name"] == "127.0.0.1"
        assert str(view["server_port"]) == str(running.port)
        assert view["root_path"] == ""
        assert view["path"] == "/app/page"
    assert results[1][0]["https"] is None
