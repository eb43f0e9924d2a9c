"""WSGI with --wsgi-inline: the app called on the event-loop thread, over real sockets.

The same PEP 3333 behaviour as the thread pool (the tests of tests/e2e/test_wsgi.py
whose apps never block run here against the inline server; its apps, raw client and
error-log guard serve the tests of this file too), plus what inline mode must add: no
pool threads, the body read before the app is called (so the app never waits on the
loop), a slow client waited for in a task (so other connections go on), and pipelined
requests answered without nesting one app call in another. Apps are served behind
``wsgiref.validate.validator`` unless a test says why not; its warnings are errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any
from wsgiref.validate import validator

import httpx
import pytest

from tests.apps import wsgi_apps
from tests.apps.wsgi_apps import CHUNK, Environ, StartResponse
from tests.conftest import Running
from tests.e2e import test_wsgi
from tests.e2e.test_wsgi import (
    APP_ERROR,
    TIMEOUT,
    ServerLog,
    chunked_body,
    connection,
    exchange,
    get_environ,
    logged_exception,
    read_response,
    request_bytes,
    wait_until_settled,
)

pytestmark = pytest.mark.filterwarnings("error::wsgiref.validate.WSGIWarning")

server_log = test_wsgi.server_log  # autouse: an error the server logs fails the test

ServeInline = Callable[..., AbstractContextManager[Running]]


@pytest.fixture
def serve_inline(serve: Callable[..., AbstractContextManager[Running]]) -> ServeInline:
    """serve_inline(app, validated=True, **options): serve the app inline as WSGI."""

    def start(app: Any, validated: bool = True, **options: Any) -> AbstractContextManager[Running]:
        return serve(
            validator(app) if validated else app, interface="wsgi", wsgi_inline=True, **options
        )

    return start


@pytest.fixture
def serve_wsgi(serve_inline: ServeInline) -> ServeInline:
    """What the pool's tests below ask for (validated apps), served inline."""
    return serve_inline


# -- the pool's tests, run inline ------------------------------------------------------------
# Tests of tests/e2e/test_wsgi.py whose apps never block, collected here as they are:
# their ``serve_wsgi`` is the fixture above, so each checks the inline server for the
# same behaviour as the pool. (Those left out block in the app, or check the pool.)

test_validator_warnings_fail_the_request = test_wsgi.test_validator_warnings_fail_the_request
test_request_method = test_wsgi.test_request_method
test_http10_server_protocol = test_wsgi.test_http10_server_protocol
test_root_path_splits_script_name_and_path_info = (
    test_wsgi.test_root_path_splits_script_name_and_path_info
)
test_path_info_is_percent_decoded_latin1 = test_wsgi.test_path_info_is_percent_decoded_latin1
test_content_headers_and_http_headers = test_wsgi.test_content_headers_and_http_headers
test_wsgi_errors_is_writable = test_wsgi.test_wsgi_errors_is_writable
test_input_methods_match_a_file = test_wsgi.test_input_methods_match_a_file
test_input_of_a_get_is_empty = test_wsgi.test_input_of_a_get_is_empty
test_exc_info_replaces_headers_before_the_body = (
    test_wsgi.test_exc_info_replaces_headers_before_the_body
)
test_exc_info_reraises_after_the_headers_were_sent = (
    test_wsgi.test_exc_info_reraises_after_the_headers_were_sent
)
test_start_response_twice_without_exc_info_is_a_500 = (
    test_wsgi.test_start_response_twice_without_exc_info_is_a_500
)
test_write_callable_mixed_with_iterable = test_wsgi.test_write_callable_mixed_with_iterable
test_close_is_called_after_a_normal_response = (
    test_wsgi.test_close_is_called_after_a_normal_response
)
test_close_is_called_when_the_client_disconnects = (
    test_wsgi.test_close_is_called_when_the_client_disconnects
)
test_close_is_called_when_iteration_raises_before_any_body = (
    test_wsgi.test_close_is_called_when_iteration_raises_before_any_body
)
test_close_is_called_when_iteration_raises_mid_body = (
    test_wsgi.test_close_is_called_when_iteration_raises_mid_body
)
test_head_sends_no_body = test_wsgi.test_head_sends_no_body
test_slow_client_pauses_the_app = test_wsgi.test_slow_client_pauses_the_app


def hello(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, world!"]


def path_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    body = environ["PATH_INFO"].encode("latin-1")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def digest_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Read the whole body in pieces; answer its length and sha256."""
    stream = environ["wsgi.input"]
    digest = hashlib.sha256()
    total = 0
    while piece := stream.read(CHUNK):
        digest.update(piece)
        total += len(piece)
    return wsgi_apps.json_response(
        start_response,
        {
            "total": total,
            "sha256": digest.hexdigest(),
            "after_end": stream.read(1).decode(),
            "protocol": environ["SERVER_PROTOCOL"],
        },
    )


class ThreadProbe:
    """Record the thread each request ran on, and which WSGI pool threads were alive."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.pool_threads: list[str] = []

    def __call__(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        self.threads.append(threading.current_thread().name)
        self.pool_threads += [
            t.name for t in threading.enumerate() if t.name.startswith("threshold-wsgi")
        ]
        return hello(environ, start_response)


def generated(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first,"
    yield b""
    yield b"second,"
    yield b"third"


# -- the basics ---------------------------------------------------------------------------


def test_hello_runs_on_the_loop_thread_without_a_pool(serve_inline: ServeInline) -> None:
    probe = ThreadProbe()
    # Not validated: the validator wraps the list, and a one-item list has a fast path.
    with (
        serve_inline(probe, validated=False, threads=4) as running,
        httpx.Client(timeout=TIMEOUT) as client,
    ):
        responses = [client.get(running.url + "/") for _ in range(5)]
        assert running.server is not None
    assert [r.status_code for r in responses] == [200] * 5
    assert all(r.text == "Hello, world!" for r in responses)
    assert responses[0].headers["content-length"] == "13"
    assert len(set(probe.threads)) == 1  # one thread: the event loop's
    assert not probe.threads[0].startswith("threshold-wsgi")
    assert probe.pool_threads == []  # no pool was started


def test_environ_essentials(serve_inline: ServeInline) -> None:
    with serve_inline(wsgi_apps.environ_app, root_path="/mount") as running:
        environ, client_port = get_environ(running, "/mount/items/42?a=1&b=x%20y")
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["SCRIPT_NAME"] == "/mount"
    assert environ["PATH_INFO"] == "/items/42"
    assert environ["QUERY_STRING"] == "a=1&b=x%20y"
    assert environ["SERVER_PORT"] == str(running.port)
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["REMOTE_PORT"] == str(client_port)
    assert environ["HTTP_HOST"] == "test.local"
    assert environ["wsgi"] == {
        "version": [1, 0],
        "url_scheme": "http",
        "multithread": False,  # one thread calls the app, whatever --threads says
        "multiprocess": False,
        "run_once": False,
        "input_terminated": True,
        "errors_writable": True,
        "file_wrapper": True,
    }


def test_the_flag_from_the_cli(run_process: Callable[..., AbstractContextManager[Running]]) -> None:
    args = ("tests.apps.wsgi_apps:validated_environ_app", "--interface", "wsgi", "--wsgi-inline")
    env = {"PYTHONWARNINGS": "error::wsgiref.validate.WSGIWarning"}
    with run_process(*args, env=env) as running:
        environ, _ = get_environ(running, "/x")
    assert environ["PATH_INFO"] == "/x"
    assert environ["wsgi"]["multithread"] is False  # --threads is 8: the pool is not used
    assert not any(APP_ERROR in line for line in running.log), running.log


def test_pipelined_requests_are_answered_in_order(serve_inline: ServeInline) -> None:
    """A POST (its body read in a task), then many GETs queued behind it in one send:
    each is answered in turn, none nested in the call of the one before."""
    count = 300
    data = request_bytes("POST", "/post", body=b"x" * 100, close=False)
    data += b"".join(request_bytes("GET", f"/{i}", close=False) for i in range(count))
    data += request_bytes("GET", "/last")
    with serve_inline(path_app) as running:
        responses = exchange(running, data, ("POST",) + ("GET",) * (count + 1))
    assert [r.status for r in responses] == [200] * (count + 2)
    assert [r.body for r in responses] == [b"/post"] + [b"/%d" % i for i in range(count)] + [
        b"/last"
    ]


# -- the request body ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [7, 2 * 1024 * 1024], ids=["small", "2MiB"])
def test_post_body_with_content_length(serve_inline: ServeInline, size: int) -> None:
    payload = os.urandom(size)
    with serve_inline(digest_app) as running, httpx.Client(timeout=TIMEOUT) as client:
        first = client.post(running.url + "/", content=payload)
        second = client.post(running.url + "/", content=payload)  # same connection
    for response in (first, second):
        assert response.status_code == 200
        assert response.json()["total"] == size
        assert response.json()["sha256"] == hashlib.sha256(payload).hexdigest()
        assert response.json()["after_end"] == ""


def test_post_chunked_body(serve_inline: ServeInline) -> None:
    payload = os.urandom(1024 * 1024 + 3)
    with serve_inline(digest_app) as running, httpx.Client(timeout=TIMEOUT) as client:
        response = client.post(running.url + "/", content=chunked_body(payload, 10_000))
    assert response.status_code == 200
    assert response.json()["total"] == len(payload)
    assert response.json()["sha256"] == hashlib.sha256(payload).hexdigest()


def test_expect_100_continue(serve_inline: ServeInline) -> None:
    """Reading the body (in a task, before the app) is what sends 100 Continue."""
    body = b"sent after 100"
    head = request_bytes("POST", "/", [("Expect", "100-continue")], close=True)
    head = head.replace(b"\r\n\r\n", b"\r\nContent-Length: %d\r\n\r\n" % len(body))
    with serve_inline(digest_app) as running, connection(running) as sock:
        sock.sendall(head)
        with sock.makefile("rb") as f:
            assert f.readline() == b"HTTP/1.1 100 Continue\r\n"
            assert f.readline() == b"\r\n"
            sock.sendall(body)
            response = read_response(f)
    assert response.status == 200
    assert json.loads(response.body)["sha256"] == hashlib.sha256(body).hexdigest()


def test_a_chunked_body_over_max_body_size_never_reaches_the_app(
    serve_inline: ServeInline,
) -> None:
    calls: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        return hello(environ, start_response)

    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunked_body(b"y" * 5000, 1000))
    head = request_bytes("POST", "/big", [("Transfer-Encoding", "chunked")])
    with serve_inline(app, max_body_size=2000) as running:
        [response] = exchange(running, head + body + b"0\r\n\r\n", ("POST",))
        ok = httpx.get(running.url + "/after", timeout=TIMEOUT)
    assert response.status == 413
    assert ok.status_code == 200
    assert calls == ["/after"]


# -- the response ------------------------------------------------------------------------------


def test_generator_is_streamed_chunked(serve_inline: ServeInline) -> None:
    with serve_inline(generated) as running:
        [response] = exchange(running, request_bytes("GET", "/"))
    assert response.status == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.complete
    assert response.body == b"first,second,third"


def test_a_paused_response_lets_others_be_served(serve_inline: ServeInline) -> None:
    """64 MiB to a client that does not read: the generator is paused (not drained into
    memory) in a task, other connections are served meanwhile, and when the client
    leaves the task ends and closes the iterable."""
    probe = wsgi_apps.FloodProbe()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/flood":
            return probe(environ, start_response)
        return hello(environ, start_response)

    with serve_inline(app) as running:
        with connection(running, rcvbuf=64 * 1024) as sock:
            sock.sendall(request_bytes("GET", "/flood"))
            pulled = wait_until_settled(lambda: probe.yielded)
            assert pulled < 256, f"{pulled} chunks ({pulled * CHUNK} bytes) pulled from the app"
            with httpx.Client(timeout=5.0) as client:
                others = [client.get(running.url + "/other") for _ in range(3)]
            assert [r.text for r in others] == ["Hello, world!"] * 3
            assert not probe.closed.is_set()
        assert probe.closed.wait(TIMEOUT), "close() was not called after the client left"
        assert not probe.finished


def test_a_long_body_gives_the_loop_back_between_slices(serve_inline: ServeInline) -> None:
    """1 MiB in 64 KiB blocks to a client that keeps up: the loop is not held for the
    whole body. The first block schedules a loop callback; it must run (other
    connections' turn) within the next blocks, not after the last one."""
    seen_at: list[int] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        loop = asyncio.get_running_loop()  # the app runs on the loop thread
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        ran = threading.Event()
        for index in range(16):
            if index == 0:
                loop.call_soon(ran.set)
            elif ran.is_set() and not seen_at:
                seen_at.append(index)
            yield b"s" * CHUNK

    with serve_inline(app) as running, httpx.Client(timeout=TIMEOUT) as client:
        response = client.get(running.url + "/")
    assert response.content == b"s" * (16 * CHUNK)
    assert seen_at and seen_at[0] <= 2, seen_at


@pytest.mark.parametrize("with_fileno", [True, False], ids=["sendfile", "no-fileno"])
def test_file_wrapper(serve_inline: ServeInline, tmp_path: Path, with_fileno: bool) -> None:
    data = os.urandom(300_001)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    probe = wsgi_apps.FileProbe(str(path), with_fileno)
    # Not behind the validator, which would wrap the FileWrapper and hide it from us.
    with (
        serve_inline(probe, validated=False) as running,
        httpx.Client(timeout=TIMEOUT) as client,
    ):
        first = client.get(running.url + "/file")
        second = client.get(running.url + "/file")  # same connection: framing was exact
    for response in (first, second):
        assert response.status_code == 200
        assert response.headers["content-length"] == str(len(data))
        assert response.content == data
    assert len(probe.opened) == 2
    assert all(f.closed for f in probe.opened), "file_wrapper did not close the file"


# -- start_response, errors and close() ---------------------------------------------------------


def no_start_response(environ: Environ, start_response: StartResponse) -> list[bytes]:
    return [b"never started"]


def bad_header_value(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("X-Bad", "a\r\nInjected: yes")])
    return [b"must not be sent"]


def bad_status(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200", [])
    return [b"must not be sent"]


@pytest.mark.parametrize(
    ("app", "error"),
    [
        (no_start_response, RuntimeError),
        (bad_header_value, ValueError),
        (bad_status, ValueError),
    ],
    ids=["never", "header-value", "status"],
)
def test_start_response_errors_are_a_500(
    serve_inline: ServeInline, server_log: ServerLog, app: Any, error: type[Exception]
) -> None:
    with serve_inline(app, validated=False) as running, httpx.Client(timeout=TIMEOUT) as client:
        failed = client.get(running.url + "/")
        assert failed.status_code == 500
        assert "must not be sent" not in failed.text
        assert "injected" not in failed.headers
    [record] = server_log.take(APP_ERROR)
    assert isinstance(logged_exception(record), error)


def test_app_exception_is_a_500_and_the_server_keeps_serving(
    serve_inline: ServeInline, server_log: ServerLog
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        if environ["PATH_INFO"] == "/exit":
            raise SystemExit(3)  # on the loop thread, it must not stop the server
        return wsgi_apps.crashing_app(environ, start_response)

    with serve_inline(app) as running, httpx.Client(timeout=TIMEOUT) as client:
        boom = client.get(running.url + "/boom")
        exit_ = client.get(running.url + "/exit")
        after = [client.get(running.url + "/ok") for _ in range(3)]
    assert boom.status_code == exit_.status_code == 500
    assert "boom from the app" not in boom.text
    assert [r.text for r in after] == ["still serving"] * 3
    boom_record, exit_record = server_log.take(APP_ERROR)
    assert "GET /boom" in boom_record.getMessage()
    assert boom_record.exc_info is not None and boom_record.exc_info[2] is not None
    assert str(logged_exception(boom_record)) == "boom from the app"
    assert isinstance(logged_exception(exit_record), SystemExit)


def test_timeout_request_cancels_a_response_waiting_for_its_client(
    serve_inline: ServeInline, server_log: ServerLog
) -> None:
    probe = wsgi_apps.FloodProbe()
    with (
        serve_inline(probe, timeout_request=0.2) as running,
        connection(running, rcvbuf=64 * 1024) as sock,
    ):
        sock.sendall(request_bytes("GET", "/"))
        assert probe.closed.wait(TIMEOUT), "close() was not called at the deadline"
        assert not probe.finished
        sock.settimeout(TIMEOUT)
        while sock.recv(1 << 20):  # what was sent, then the close
            pass
    [record] = server_log.take("exceeded timeout_request")
    assert "cancelling it" in record.getMessage()


def test_timeout_request_answers_a_body_that_never_ends(
    serve_inline: ServeInline, server_log: ServerLog
) -> None:
    calls: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        return hello(environ, start_response)

    head = request_bytes("POST", "/slow", [("Content-Length", "100")])
    with serve_inline(app, timeout_request=0.2) as running:
        [response] = exchange(running, head + b"only ten..", ("POST",))
    assert response.status == 504
    assert calls == []
    [record] = server_log.take("exceeded timeout_request")
    assert "cancelling it" in record.getMessage()


# -- HTTP/2 ----------------------------------------------------------------------------------------


def h2_client() -> httpx.Client:
    return httpx.Client(http1=False, http2=True, timeout=TIMEOUT)


def test_http2_prior_knowledge(serve_inline: ServeInline) -> None:
    payload = os.urandom(2 * 1024 * 1024)
    with serve_inline(digest_app) as running, h2_client() as client:
        get = client.get(running.url + "/")
        with_length = client.post(running.url + "/", content=payload)
        # No content-length: an HTTP/2 body may still come (DATA frames).
        streamed = client.post(running.url + "/", content=chunked_body(payload, 50_000))
    assert get.http_version == "HTTP/2"
    assert get.json() == {
        "total": 0,
        "sha256": hashlib.sha256(b"").hexdigest(),
        "after_end": "",
        "protocol": "HTTP/2",
    }
    for response in (with_length, streamed):
        assert response.http_version == "HTTP/2"
        assert response.json()["total"] == len(payload)
        assert response.json()["sha256"] == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "pool"])
def test_http2_body_without_content_length_reaches_the_app(
    serve: Callable[..., AbstractContextManager[Running]], inline: bool
) -> None:
    """The environ builder both modes share: over HTTP/2 no content-length is not
    "no body" (it was, and the pool's wsgi.input read b"")."""
    payload = b"streamed over h2, " * 1000
    with (
        serve(validator(digest_app), interface="wsgi", wsgi_inline=inline) as running,
        h2_client() as client,
    ):
        response = client.post(running.url + "/", content=chunked_body(payload, 4000))
        empty = client.get(running.url + "/")
    assert response.json()["total"] == len(payload)
    assert response.json()["sha256"] == hashlib.sha256(payload).hexdigest()
    assert empty.json()["total"] == 0


def test_http2_concurrent_streams_and_a_generator(serve_inline: ServeInline) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/gen":
            return generated(environ, start_response)
        return path_app(environ, start_response)

    async def fetch_all(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(http1=False, http2=True, timeout=TIMEOUT) as client:
            paths = ["/gen", *(f"/{i}" for i in range(20))]
            return await asyncio.gather(*(client.get(url + p) for p in paths))

    with serve_inline(app) as running:
        started = time.monotonic()
        gen, *rest = asyncio.run(fetch_all(running.url))
        assert time.monotonic() - started < TIMEOUT
    assert gen.http_version == "HTTP/2"
    assert gen.content == b"first,second,third"
    assert [r.content for r in rest] == [b"/%d" % i for i in range(20)]


def test_validator_passes_over_both_protocols(serve_inline: ServeInline) -> None:
    """The reference checker around a streaming app, a body reader and file_wrapper."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/gen":
            return generated(environ, start_response)
        if environ["PATH_INFO"] == "/file":
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            wrapped: Iterable[bytes] = environ["wsgi.file_wrapper"](open(__file__, "rb"))  # noqa: SIM115
            return wrapped
        return digest_app(environ, start_response)

    source = Path(__file__).read_bytes()
    with serve_inline(app) as running:
        for client in (httpx.Client(timeout=TIMEOUT), h2_client()):
            with client:
                assert client.get(running.url + "/gen").content == b"first,second,third"
                assert client.get(running.url + "/file").content == source
                posted = client.post(running.url + "/", content=b"abc")
                assert posted.json()["total"] == 3
                assert posted.json()["protocol"] in ("HTTP/1.1", "HTTP/2")
