"""The WebSocket opening-handshake checks (RFC 6455 section 4.2.1), on bare request heads."""

from __future__ import annotations

import base64

import pytest

from threshold.protocols.websocket import handshake_error, offered_subprotocols
from threshold.stream import Headers, RequestHead

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3


def head(headers: Headers, method: str = "GET") -> RequestHead:
    return RequestHead(
        method,
        b"/chat",
        b"",
        "1.1",
        [(b"host", b"example.test"), (b"upgrade", b"websocket"), *headers],
        "http",
        ("127.0.0.1", 50000),
        ("127.0.0.1", 8000),
    )


VALID: Headers = [(b"sec-websocket-key", KEY), (b"sec-websocket-version", b"13")]


@pytest.mark.parametrize(
    "headers",
    [
        VALID,
        [(b"sec-websocket-version", b" 13 "), (b"sec-websocket-key", b" " + KEY + b" ")],
        [(b"sec-websocket-key", base64.b64encode(bytes(range(16))))],
    ],
    ids=["rfc-sample", "whitespace", "any-16-bytes"],
)
def test_valid_handshake_has_no_error(headers: Headers) -> None:
    if not any(name == b"sec-websocket-version" for name, _ in headers):
        headers = [*headers, (b"sec-websocket-version", b"13")]
    assert handshake_error(head(headers)) is None


@pytest.mark.parametrize("version", [None, b"8", b"14", b"13, 8", b""])
def test_other_versions_are_426_naming_13(version: bytes | None) -> None:
    headers: Headers = [(b"sec-websocket-key", KEY)]
    if version is not None:
        headers.append((b"sec-websocket-version", version))
    error = handshake_error(head(headers))
    assert error is not None
    status, extra, message = error
    assert status == 426
    assert extra == [(b"sec-websocket-version", b"13")]
    assert "version" in message.lower()


@pytest.mark.parametrize(
    "key",
    [
        None,
        b"",
        b"not base64 at all!",
        base64.b64encode(b"x" * 15),
        base64.b64encode(b"x" * 17),
        KEY[:-2],  # bad padding
    ],
    ids=["missing", "empty", "not-base64", "15-bytes", "17-bytes", "bad-padding"],
)
def test_missing_or_invalid_key_is_400(key: bytes | None) -> None:
    headers: Headers = [(b"sec-websocket-version", b"13")]
    if key is not None:
        headers.append((b"sec-websocket-key", key))
    assert handshake_error(head(headers)) == (400, [], "Missing or invalid Sec-WebSocket-Key")


@pytest.mark.parametrize("method", ["POST", "PUT", "HEAD", "CONNECT"])
def test_only_get_may_upgrade(method: str) -> None:
    error = handshake_error(head(VALID, method))
    assert error == (400, [], "WebSocket handshake must be a GET request")


def test_method_is_checked_before_version_and_key() -> None:
    # A POST with a bad version is a bad request, not an invitation to retry with 13.
    error = handshake_error(head([], "POST"))
    assert error is not None
    assert error[0] == 400


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], []),
        ([b"chat"], ["chat"]),
        ([b"chat, superchat"], ["chat", "superchat"]),
        ([b" chat ,superchat,, "], ["chat", "superchat"]),
        ([b"a, b", b"c"], ["a", "b", "c"]),  # several headers: one list, in order
        ([b""], []),
    ],
)
def test_offered_subprotocols(values: list[bytes], expected: list[str]) -> None:
    headers: Headers = [(b"sec-websocket-protocol", value) for value in values]
    assert offered_subprotocols(head([*VALID, *headers])) == expected


def test_offered_subprotocols_ignore_other_headers() -> None:
    headers: Headers = [(b"sec-websocket-extensions", b"permessage-deflate"), (b"x-protocol", b"a")]
    assert offered_subprotocols(head([*VALID, *headers])) == []
