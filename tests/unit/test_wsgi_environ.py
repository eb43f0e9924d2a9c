"""WsgiHandler.build_environ: RequestHead -> PEP 3333 environ, without sockets.

The stream below is the smallest stand-in the handler accepts: a Stream subclass
that only carries a head. Its event loop never runs, so any attempt to read a body
that the head says is empty would hang (and time out) instead of passing quietly.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from threshold.interfaces.wsgi import FileWrapper, WsgiHandler
from threshold.stream import Headers, RequestHead, Stream


class HeadOnlyStream(Stream):
    def __init__(self, head: RequestHead) -> None:
        self.head = head


def make_head(
    *,
    method: str = "GET",
    raw_path: bytes = b"/",
    query_string: bytes = b"",
    http_version: str = "1.1",
    headers: Headers | None = None,
    scheme: str = "http",
    client: tuple[str, int] | None = ("10.0.0.2", 50123),
    server: tuple[str, int | None] | None = ("10.0.0.1", 8080),
) -> RequestHead:
    return RequestHead(
        method,
        raw_path,
        query_string,
        http_version,
        [(b"host", b"example.test")] if headers is None else headers,
        scheme,
        client,
        server,
    )


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    raise AssertionError("never called: build_environ only")


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


@pytest.fixture
def handlers(loop: asyncio.AbstractEventLoop) -> Iterator[list[WsgiHandler]]:
    """Handlers made by a test; their thread pools are stopped afterwards."""
    made: list[WsgiHandler] = []
    try:
        yield made
    finally:
        for handler in made:
            handler.close(5.0)


def build(
    handlers: list[WsgiHandler],
    loop: asyncio.AbstractEventLoop,
    head: RequestHead,
    *,
    root_path: str = "",
    threads: int = 1,
    multiprocess: bool = False,
) -> dict[str, Any]:
    handler = WsgiHandler(app, loop, threads, root_path, multiprocess)
    handlers.append(handler)
    return handler.build_environ(HeadOnlyStream(head))


def test_cgi_variables_for_a_plain_get(handlers: list[WsgiHandler], loop: Any) -> None:
    head = make_head(raw_path=b"/items/7", query_string=b"a=1&b=%20")
    environ = build(handlers, loop, head)
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/items/7"
    assert environ["QUERY_STRING"] == "a=1&b=%20"  # never decoded
    assert environ["SERVER_NAME"] == "10.0.0.1"
    assert environ["SERVER_PORT"] == "8080"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["REMOTE_ADDR"] == "10.0.0.2"
    assert environ["REMOTE_PORT"] == "50123"
    assert environ["HTTP_HOST"] == "example.test"
    assert environ["RAW_URI"] == environ["REQUEST_URI"] == "/items/7?a=1&b=%20"
    assert "HTTPS" not in environ
    assert "CONTENT_LENGTH" not in environ
    assert "CONTENT_TYPE" not in environ
    # PEP 3333: every CGI variable (a key without a dot) is a native str.
    for key, value in environ.items():
        if "." not in key:
            assert type(value) is str, key


def test_wsgi_variables(handlers: list[WsgiHandler], loop: Any) -> None:
    environ = build(handlers, loop, make_head())
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.input_terminated"] is True
    assert environ["wsgi.run_once"] is False
    assert environ["wsgi.multiprocess"] is False
    assert environ["wsgi.multithread"] is False  # threads=1
    assert environ["wsgi.file_wrapper"] is FileWrapper
    errors = environ["wsgi.errors"]
    assert errors is sys.stderr
    for name in ("write", "writelines", "flush"):
        assert callable(getattr(errors, name))
    for name in ("read", "readline", "readlines", "__iter__"):
        assert callable(getattr(environ["wsgi.input"], name))


@pytest.mark.parametrize(("threads", "multithread"), [(1, False), (2, True), (8, True)])
def test_multithread_iff_more_than_one_thread(
    handlers: list[WsgiHandler], loop: Any, threads: int, multithread: bool
) -> None:
    environ = build(handlers, loop, make_head(), threads=threads)
    assert environ["wsgi.multithread"] is multithread


def test_multiprocess_flag_passed_through(handlers: list[WsgiHandler], loop: Any) -> None:
    environ = build(handlers, loop, make_head(), multiprocess=True)
    assert environ["wsgi.multiprocess"] is True


def test_environ_is_fresh_per_request(handlers: list[WsgiHandler], loop: Any) -> None:
    handler = WsgiHandler(app, loop, 1, "")
    handlers.append(handler)
    first = handler.build_environ(HeadOnlyStream(make_head(headers=[(b"x-one", b"1")])))
    first["app.key"] = "set by the app"
    second = handler.build_environ(HeadOnlyStream(make_head(headers=[])))
    assert "HTTP_X_ONE" not in second
    assert "app.key" not in second
    assert first["wsgi.input"] is not second["wsgi.input"]


@pytest.mark.parametrize(
    ("raw_path", "script_name", "path_info"),
    [
        (b"/app/users/1", "/app", "/users/1"),
        (b"/app/", "/app", "/"),
        (b"/app", "/app", ""),
        # A proxy already stripped the prefix: the path is all PATH_INFO.
        (b"/users/1", "/app", "/users/1"),
        # A longer segment that merely starts with the prefix is not under it.
        (b"/application/x", "/app", "/application/x"),
        # The prefix is matched on the decoded path.
        (b"/%61pp/x", "/app", "/x"),
    ],
)
def test_root_path_splits_script_name_and_path_info(
    handlers: list[WsgiHandler], loop: Any, raw_path: bytes, script_name: str, path_info: str
) -> None:
    environ = build(handlers, loop, make_head(raw_path=raw_path), root_path="/app")
    assert environ["SCRIPT_NAME"] == script_name
    assert environ["PATH_INFO"] == path_info
    assert environ["RAW_URI"] == raw_path.decode("latin-1")  # the target as received


@pytest.mark.parametrize(
    ("raw_path", "path_info"),
    [
        (b"/a%20b", "/a b"),
        # UTF-8 bytes become one latin-1 character each (a "bytes-as-unicode" native str).
        (b"/caf%C3%A9", "/caf\xc3\xa9"),
        (b"/caf%c3%a9", "/caf\xc3\xa9"),
        (b"/x%2Fy", "/x/y"),  # CGI decodes %2F too
        (b"/100%25", "/100%"),
        (b"/%FF", "/\xff"),
        (b"/plain", "/plain"),
    ],
)
def test_path_info_is_percent_decoded_latin1(
    handlers: list[WsgiHandler], loop: Any, raw_path: bytes, path_info: str
) -> None:
    environ = build(handlers, loop, make_head(raw_path=raw_path))
    assert environ["PATH_INFO"] == path_info
    assert type(environ["PATH_INFO"]) is str


def test_content_headers_have_no_http_prefix(handlers: list[WsgiHandler], loop: Any) -> None:
    head = make_head(
        method="POST",
        headers=[
            (b"host", b"example.test"),
            (b"content-type", b"application/json; charset=utf-8"),
            (b"content-length", b"0"),
        ],
    )
    environ = build(handlers, loop, head)
    assert environ["CONTENT_TYPE"] == "application/json; charset=utf-8"
    assert environ["CONTENT_LENGTH"] == "0"
    assert "HTTP_CONTENT_TYPE" not in environ
    assert "HTTP_CONTENT_LENGTH" not in environ


def test_duplicate_headers_are_comma_joined(handlers: list[WsgiHandler], loop: Any) -> None:
    head = make_head(
        headers=[
            (b"host", b"example.test"),
            (b"accept", b"text/html"),
            (b"x-multi", b"one"),
            (b"accept", b"application/json"),
            (b"x-multi", b"two"),
            (b"x-multi", b"three"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
        ]
    )
    environ = build(handlers, loop, head)
    assert environ["HTTP_ACCEPT"] == "text/html,application/json"
    assert environ["HTTP_X_MULTI"] == "one,two,three"
    # RFC 6265 section 5.4: cookie pairs are joined with "; ", not ",".
    assert environ["HTTP_COOKIE"] == "a=1; b=2"


def test_header_names_are_upper_snake_and_values_latin1(
    handlers: list[WsgiHandler], loop: Any
) -> None:
    head = make_head(headers=[(b"x-request-id", b"abc-123"), (b"x-latin", b"caf\xe9")])
    environ = build(handlers, loop, head)
    assert environ["HTTP_X_REQUEST_ID"] == "abc-123"
    assert environ["HTTP_X_LATIN"] == "caf\xe9"


def test_headers_with_underscores_are_dropped(handlers: list[WsgiHandler], loop: Any) -> None:
    # "x_forwarded_for" would land on HTTP_X_FORWARDED_FOR, where a proxy's
    # "x-forwarded-for" is trusted: dropping it prevents the spoof.
    head = make_head(
        headers=[
            (b"host", b"example.test"),
            (b"x_forwarded_for", b"6.6.6.6"),
            (b"x-forwarded-for", b"10.0.0.9"),
            (b"content_length", b"999"),
            (b"content_type", b"text/evil"),
        ]
    )
    environ = build(handlers, loop, head)
    assert environ["HTTP_X_FORWARDED_FOR"] == "10.0.0.9"
    assert "CONTENT_LENGTH" not in environ
    assert "CONTENT_TYPE" not in environ
    assert "HTTP_CONTENT_LENGTH" not in environ
    assert not any("6.6.6.6" in str(value) for value in environ.values())


@pytest.mark.parametrize(("version", "protocol"), [("1.0", "HTTP/1.0"), ("1.1", "HTTP/1.1")])
def test_server_protocol(
    handlers: list[WsgiHandler], loop: Any, version: str, protocol: str
) -> None:
    environ = build(handlers, loop, make_head(http_version=version))
    assert environ["SERVER_PROTOCOL"] == protocol


def test_https_scheme(handlers: list[WsgiHandler], loop: Any) -> None:
    environ = build(handlers, loop, make_head(scheme="https", server=("10.0.0.1", 8443)))
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["HTTPS"] == "on"
    assert environ["SERVER_PORT"] == "8443"


@pytest.mark.parametrize(("scheme", "port"), [("http", "80"), ("https", "443")])
def test_unix_socket_without_addresses(
    handlers: list[WsgiHandler], loop: Any, scheme: str, port: str
) -> None:
    head = make_head(scheme=scheme, client=None, server=("/run/app.sock", None))
    environ = build(handlers, loop, head)
    assert environ["SERVER_NAME"] == "localhost"
    assert environ["SERVER_PORT"] == port
    assert environ["REMOTE_ADDR"] == ""
    assert "REMOTE_PORT" not in environ


def test_ipv6_addresses(handlers: list[WsgiHandler], loop: Any) -> None:
    head = make_head(client=("::1", 40000), server=("::1", 9000))
    environ = build(handlers, loop, head)
    assert environ["REMOTE_ADDR"] == "::1"
    assert environ["REMOTE_PORT"] == "40000"
    assert environ["SERVER_NAME"] == "::1"
    assert environ["SERVER_PORT"] == "9000"


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"content-length", b"0")],
    ],
)
def test_input_of_a_request_without_body_is_empty(
    handlers: list[WsgiHandler], loop: Any, headers: Headers
) -> None:
    # The loop is not running: touching it to wait for a body would hang.
    environ = build(handlers, loop, make_head(method="POST", headers=headers))
    stream = environ["wsgi.input"]
    assert stream.read() == b""
    assert stream.read(10) == b""
    assert stream.readline() == b""
    assert stream.readline(5) == b""
    assert stream.readlines() == []
    assert list(stream) == []
    assert stream.read(1) == b""
