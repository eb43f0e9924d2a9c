"""Every HTTP/1.1 limit bites (DESIGN.md habit 3): sizes, timeouts, connection and queue
bounds, against the real server on a loopback port, with raw sockets where the bytes are
the point.

Timeouts are enforced by one tick a second from a coarse clock, so they fire within about
a second either side of the configured value (docs/security.md); the bounds below allow
that and some scheduling slack, and no more.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.apps import limit_apps
from tests.conftest import Running
from tests.e2e.test_http1 import Client, Response, get

Serve = Callable[..., Any]

TICK = 1.0  # the server checks timeouts once a second
SLACK = 0.75  # scheduling slack on a busy two-core machine


def within(elapsed: float, timeout: float) -> bool:
    return timeout - TICK - 0.05 <= elapsed <= timeout + TICK + SLACK


def exchange(running: Running, data: bytes) -> Response:
    with Client(running) as c:
        c.send(data)
        response = c.read_response()
        if response.status >= 400:
            assert response.header(b"connection") == b"close"
            assert c.closed_by_server(), "rejected request left the connection open"
        return response


def readable(sock: socket.socket, timeout: float) -> bool:
    return bool(select.select([sock], [], [], timeout)[0])


def read_until_close(sock: socket.socket) -> bytes:
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return bytes(data)


@pytest.fixture(autouse=True)
def error_log() -> Iterator[list[logging.LogRecord]]:
    """The server's error log (threshold.error, any thread) at ERROR: a test takes out
    the records it expects; any other one fails it."""
    records: list[logging.LogRecord] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("threshold.error")
    handler = Recorder(logging.ERROR)
    old_level = logger.level
    logger.setLevel(logging.ERROR)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    unexpected = [r.getMessage() for r in records]
    assert not unexpected, f"the server logged errors: {unexpected}"


def take(records: list[logging.LogRecord], text: str) -> list[str]:
    """Remove and return the messages of the records that contain ``text``."""
    taken = [r for r in records if text in r.getMessage()]
    records[:] = [r for r in records if r not in taken]
    return [r.getMessage() for r in taken]


# -- the request head ------------------------------------------------------------------------


def test_limit_request_line(serve: Serve) -> None:
    with serve(limit_apps.hello, limit_request_line=1024) as running:
        fits = exchange(running, get("/" + "a" * 1023))  # the target is exactly 1024 bytes
        over = exchange(running, get("/" + "a" * 1024))
        way_over = exchange(running, get("/?" + "q" * 20_000))
    assert fits.status == 200 and fits.body == b"hello"
    assert over.status == way_over.status == 414


def test_a_long_request_line_leaves_the_connection_clean(serve: Serve) -> None:
    """A limit above 16 KiB is honoured, and the line check does not carry that request
    over into the next one on the connection (where two spaces in a value are fine)."""
    with serve(limit_apps.hello, limit_request_line=40_000) as running, Client(running) as c:
        c.send(get("/" + "a" * 30_000))
        assert c.read_response().status == 200
        c.send(get("/", "X-Text: two  spaces\r\n"))
        assert c.read_response().status == 200


def test_limit_request_fields(serve: Serve) -> None:
    with serve(limit_apps.hello, limit_request_fields=10) as running:
        fits = exchange(running, get("/", "".join(f"X-F{i}: v\r\n" for i in range(9))))  # +Host
        over = exchange(running, get("/", "".join(f"X-F{i}: v\r\n" for i in range(10))))
        flood = exchange(running, get("/", "X-F: v\r\n" * 2_000))
    assert fits.status == 200
    assert over.status == flood.status == 431


def test_limit_request_field_size(serve: Serve) -> None:
    with serve(limit_apps.hello, limit_request_field_size=1024) as running:
        # name + value: 6 + 1018 = 1024 bytes
        fits = exchange(running, get("/", "X-Size: " + "v" * 1018 + "\r\n"))
        over = exchange(running, get("/", "X-Size: " + "v" * 1019 + "\r\n"))
        long_name = exchange(running, get("/", "X-" + "n" * 1030 + ": v\r\n"))
        # Trailing whitespace is not part of the value (RFC 9110 section 5.5).
        padded = exchange(running, get("/", "X-Size: " + "v" * 1018 + " " * 100 + "\r\n"))
    assert fits.status == padded.status == 200
    assert over.status == long_name.status == 431


def test_a_field_that_never_ends_is_cut_off(serve: Serve) -> None:
    """Not only complete fields are bounded: one that never ends gets 431 at once, not a
    buffer that grows until header_timeout."""
    limits = {"limit_request_field_size": 1024, "limit_request_line": 1024, "header_timeout": 10}
    with serve(limit_apps.hello, **limits) as running, Client(running) as c:
        c.send(get("/")[:-2] + b"X-Endless: " + b"a" * 2000)  # ...and no CRLF, ever
        started = time.monotonic()
        response = c.read_response()
        elapsed = time.monotonic() - started
        assert c.closed_by_server()
    assert response.status == 431
    assert elapsed < 2.0  # answered on arrival, not by the header timeout


def test_trailer_fields_are_not_merged_into_the_head(serve: Serve) -> None:
    """RFC 9110 section 6.5.1: a trailer is never taken for a header (an Authorization
    or X-Forwarded-For after the body must not appear in the scope the app holds)."""
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await limit_apps.read_body(receive)
        seen.append(list(scope["headers"]))
        await limit_apps.respond(send, body or b"")

    request = (
        b"POST / HTTP/1.1\r\nHost: e2e.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nAuthorization: Basic ZXZpbA==\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
    )
    with serve(app) as running, Client(running) as c:
        c.send(request + get("/again"))
        first, second = c.read_response(), c.read_response()
    assert (first.status, first.body, second.status) == (200, b"hello", 200)
    names = [name for name, _ in seen[0]]
    assert names == [b"host", b"transfer-encoding"]


# -- the request body ------------------------------------------------------------------------


def test_content_length_over_max_body_size_is_413_without_calling_the_app(serve: Serve) -> None:
    app = limit_apps.BodyRecorder()
    post = b"POST / HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: %d\r\n\r\n"
    with serve(app, max_body_size=1000) as running:
        over = exchange(running, post % 1001)
        assert app.calls == 0
        fits = exchange(running, post % 1000 + b"b" * 1000)
    assert over.status == 413
    assert (fits.status, fits.body, app.calls) == (200, b"1000", 1)


def chunked_post(*chunks: bytes) -> bytes:
    head = b"POST / HTTP/1.1\r\nHost: e2e.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)


def test_chunked_body_crossing_max_body_size_asgi(serve: Serve) -> None:
    """The app sees http.disconnect, never a cut body passed off as complete; the client 413."""
    app = limit_apps.BodyRecorder()
    with serve(app, max_body_size=1000) as running, Client(running) as c:
        c.send(chunked_post(b"a" * 600))
        assert app.first.wait(5)
        c.send(b"%x\r\n%s\r\n" % (600, b"b" * 600))
        response = c.read_response()
        assert c.closed_by_server()
        assert app.done.wait(5)
    assert response.status == 413
    assert app.messages[-1] == {"type": "http.disconnect"}
    bodies = app.messages[:-1]
    assert bodies and all(m["type"] == "http.request" and m["more_body"] for m in bodies)
    assert b"".join(m["body"] for m in bodies) == b"a" * 600


def test_chunked_body_crossing_max_body_size_wsgi(serve: Serve) -> None:
    """wsgi.input.read() raises OSError instead of returning the first part as the body."""
    app = limit_apps.WsgiBodyReader()
    with serve(app, interface="wsgi", max_body_size=1000) as running, Client(running) as c:
        c.send(chunked_post(b"a" * 600, b"b" * 600) + b"0\r\n\r\n")
        response = c.read_response()
        assert c.closed_by_server()
        assert app.done.wait(5)
    assert response.status == 413
    assert isinstance(app.error, OSError) and app.body is None


def test_max_body_size_zero_is_unlimited(serve: Serve) -> None:
    big = b"POST / HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: %d\r\n\r\n" % (200 * 2**20)
    with serve(limit_apps.hello) as running:
        assert exchange(running, big).status == 413  # the default is 100 MiB
    app = limit_apps.BodyRecorder()
    with serve(app, max_body_size=0) as running:
        with Client(running) as c:
            c.send(big)
            assert app.called.wait(5), "the app was not called"  # no 413 up front
        assert app.done.wait(5)
        chunks = [b"z" * 65536] * 48  # 3 MiB
        response = exchange(running, chunked_post(*chunks) + b"0\r\n\r\n")
    assert (response.status, response.body) == (200, b"%d" % (3 * 2**20))


# -- timeouts --------------------------------------------------------------------------------


def test_header_timeout_stops_a_slowloris_while_others_are_served(serve: Serve) -> None:
    timeout = 2.0
    head = get("/", "X-Slow: " + "a" * 200 + "\r\n")
    with (
        serve(limit_apps.hello, header_timeout=timeout) as running,
        Client(running) as slow,
        httpx.Client(base_url=running.url, timeout=5) as normal,
    ):
        started = time.monotonic()
        served = 0
        for i in range(len(head)):
            slow.send(head[i : i + 1])
            response = normal.get("/")
            assert (response.status_code, response.text) == (200, "hello")
            served += 1
            if readable(slow.sock, 0.3):  # one byte every 0.3 s: the subject of the test
                break
        else:
            pytest.fail("the slow head was never cut off")
        elapsed = time.monotonic() - started
        answer = slow.read_response()
        assert slow.closed_by_server()
    assert answer.status == 408
    assert answer.header(b"connection") == b"close"
    assert within(elapsed, timeout), elapsed
    assert served >= 3


def test_body_timeout_closes_a_stalled_upload(serve: Serve) -> None:
    timeout = 2.0
    app = limit_apps.BodyRecorder()
    with serve(app, body_timeout=timeout) as running, Client(running) as c:
        c.send(b"POST / HTTP/1.1\r\nHost: e2e.test\r\nContent-Length: 100\r\n\r\n0123456789")
        assert app.first.wait(5)
        # ...and the other 90 bytes never come, while the app waits for them.
        assert app.done.wait(timeout + TICK + 5)
        stalled = time.monotonic() - app.waiting_since
        assert c.closed_by_server()
    assert app.messages == [
        {"type": "http.request", "body": b"0123456789", "more_body": True},
        {"type": "http.disconnect"},
    ]
    assert within(stalled, timeout), stalled


def test_send_timeout_drops_a_client_that_stops_reading(serve: Serve) -> None:
    timeout = 2.0
    app = limit_apps.EndlessDownload()
    with serve(app, send_timeout=timeout) as running, Client(running, rcvbuf=4096) as c:
        c.send(get("/"))
        requested = time.monotonic()
        # The client reads nothing: the buffers fill within milliseconds, then the app waits.
        assert app.done.wait(timeout + TICK + 5), "the app was never stopped"
        elapsed = app.failed_at - requested
        received = len(read_until_close(c.sock))
    assert isinstance(app.error, OSError), app.error  # ClientDisconnected from send()
    assert 0 < app.sent < app.limit
    assert received < app.limit * limit_apps.CHUNK
    assert within(elapsed, timeout), elapsed


@pytest.mark.parametrize("interface", ["asgi3", "wsgi"])
def test_keep_alive_timeout_closes_idle_connections_silently(serve: Serve, interface: str) -> None:
    """Also after a response that a WSGI thread wrote to the socket itself."""
    timeout = 1.0
    app = limit_apps.hello if interface == "asgi3" else limit_apps.WsgiBlocker()
    with (
        serve(app, interface=interface, keep_alive_timeout=timeout) as running,
        Client(running) as used,
        Client(running) as never_used,
    ):
        used.send(get("/"))
        assert used.read_response().status == 200
        idle_from = time.monotonic()
        assert used.closed_by_server(), "idle connection not closed"  # and no bytes sent
        idle = time.monotonic() - idle_from
        assert never_used.closed_by_server()
    # The idle clock is taken a tick late, so this one closes up to two ticks after.
    assert timeout - 0.05 <= idle <= timeout + 2 * TICK + SLACK, idle


def test_timeout_request_asgi(serve: Serve, error_log: list[logging.LogRecord]) -> None:
    """504 and a cancelled task; a response already started is cut off by a close."""
    timeout = 2.0
    app = limit_apps.Sleeper()
    with (
        serve(app, timeout_request=timeout) as running,
        Client(running) as sleeping,
        Client(running) as started,
    ):
        sleeping.send(get("/sleep"))
        started.send(get("/started"))
        begun = time.monotonic()
        late = sleeping.read_response()
        elapsed = time.monotonic() - begun
        assert sleeping.closed_by_server()
        assert app.cancelled["/sleep"].wait(5), "the app never saw CancelledError"
        # The head and the first chunk went out; then the connection closes, unterminated.
        cut = read_until_close(started.sock)
        assert cut.startswith(b"HTTP/1.1 200 OK\r\n")
        assert cut.endswith(b"\r\n\r\n7\r\npartial\r\n"), cut
        assert app.cancelled["/started"].wait(5)
        assert exchange(running, get("/quick")).body == b"awake"
    assert (late.status, late.header(b"connection")) == (504, b"close")
    assert within(elapsed, timeout), elapsed
    assert len(take(error_log, "exceeded timeout_request")) == 2


def test_timeout_request_wsgi(serve: Serve, error_log: list[logging.LogRecord]) -> None:
    """504; the stuck thread is abandoned (logged) and comes back when the app returns."""
    timeout = 1.0
    app = limit_apps.WsgiBlocker()
    with serve(app, interface="wsgi", threads=1, timeout_request=timeout) as running:
        try:
            begun = time.monotonic()
            late = exchange(running, get("/block"))
            elapsed = time.monotonic() - begun
            assert app.entered.is_set() and not app.finished.is_set()
        finally:
            app.release.set()
        assert app.finished.wait(5)
        after = exchange(running, get("/quick"))  # the one thread is serving again
    assert late.status == 504
    assert within(elapsed, timeout), elapsed
    assert after.body == b"quick"
    (message,) = take(error_log, "exceeded timeout_request")
    assert "abandoning its thread" in message


# -- connection and queue bounds -------------------------------------------------------------


def test_max_connections(serve: Serve) -> None:
    with serve(limit_apps.hello, max_connections=5) as running:
        clients = [Client(running) for _ in range(5)]
        try:
            for c in clients:  # each one is registered: it has been served
                c.send(get("/"))
                assert c.read_response().status == 200
            with Client(running) as sixth:  # sends nothing: the answer comes unasked
                refused = sixth.read_response()
                assert sixth.closed_by_server(), "the refused connection was left open"
            assert refused.status == 503
            assert refused.header(b"connection") == b"close"
            for c in clients[:2]:  # the server closes these two: their slots are free
                c.send(get("/", "Connection: close\r\n"))
                assert c.read_response().status == 200
                assert c.closed_by_server()
                c.sock.close()
            clients[:2] = [Client(running) for _ in range(2)]
            for c in clients:  # the two new ones and the three held ones
                c.send(get("/"))
                assert c.read_response().status == 200
            assert exchange(running, get("/")).status == 503  # full again
        finally:
            for c in clients:
                c.sock.close()


def test_max_pending_wsgi(serve: Serve) -> None:
    app = limit_apps.WsgiBlocker()
    with (
        serve(app, interface="wsgi", threads=1, max_pending_wsgi=1) as running,
        Client(running) as blocked,
    ):
        waiting = []
        try:
            blocked.send(get("/block"))
            assert app.entered.wait(5)  # the only thread is busy from here on
            waiting = [Client(running) for _ in range(3)]
            for c in waiting:
                c.send(get("/quick"))
            # One request may wait for the thread; the others are refused at once.
            answered: set[socket.socket] = set()
            deadline = time.monotonic() + 5
            while len(answered) < 2 and time.monotonic() < deadline:
                rest = [c.sock for c in waiting if c.sock not in answered]
                answered.update(select.select(rest, [], [], deadline - time.monotonic())[0])
            refused = [c for c in waiting if c.sock in answered]
            (queued,) = [c for c in waiting if c.sock not in answered]
            assert [c.read_response().status for c in refused] == [503, 503]
            assert all(c.closed_by_server() for c in refused)
            assert queued.nothing_to_read()
        finally:
            app.release.set()
        assert blocked.read_response().body == b"unblocked"
        assert queued.read_response().body == b"quick"
        for c in waiting:
            c.sock.close()


def test_backlog_reaches_listen(serve: Serve) -> None:
    """With the loop blocked nothing is accepted: the kernel completes backlog + 1
    handshakes (Linux) and drops further SYNs until the loop accepts again."""
    completed = {}
    for backlog in (1, 2048):
        app = limit_apps.LoopBlocker()
        with serve(app, backlog=backlog) as running, Client(running) as blocker:
            socks = []
            try:
                blocker.send(get("/block"))
                assert app.entered.wait(5)
                for _ in range(6):
                    sock = socket.socket()
                    sock.setblocking(False)
                    socks.append(sock)
                    assert sock.connect_ex((running.host, running.port)) == errno.EINPROGRESS
                # A dropped SYN is sent again after a second: until then only queued ones
                # complete. Waiting 0.5 s for those that do not is the test.
                done: set[socket.socket] = set()
                deadline = time.monotonic() + 0.5
                while len(done) < len(socks) and (left := deadline - time.monotonic()) > 0:
                    rest = [sock for sock in socks if sock not in done]
                    done.update(select.select([], rest, [], left)[1])
                assert all(
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for sock in done
                )
                completed[backlog] = len(done)
            finally:
                app.release.set()
                for sock in socks:
                    sock.close()
            assert blocker.read_response().body == b"ok"
            assert exchange(running, get("/")).body == b"ok"  # and it still serves
    assert completed == {1: 2, 2048: 6}


def test_limits_hold_under_concurrent_slow_clients(serve: Serve) -> None:
    """Ten slowloris heads at once do not stop a normal client from being served."""
    with serve(limit_apps.hello, header_timeout=1.0) as running:
        slow = [Client(running) for _ in range(10)]
        try:
            for c in slow:
                c.send(b"GET / HTTP/1.1\r\nHost: e2e.test\r\nX-Slow: a")
            results: list[int] = []

            def normal() -> None:
                with httpx.Client(base_url=running.url, timeout=5) as client:
                    results.extend(client.get("/").status_code for _ in range(20))

            thread = threading.Thread(target=normal)
            thread.start()
            thread.join(10)
            for c in slow:
                assert c.read_response().status == 408
        finally:
            for c in slow:
                c.sock.close()
    assert results == [200] * 20
