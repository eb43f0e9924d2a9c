"""WSGI apps for tests/e2e/test_wsgi.py (which serves each one behind wsgiref's validator).

Apps that a test needs to observe or steer are small classes ("probes") holding
threading events and counters; they run in the server's worker threads. Every wait
inside an app is bounded, so a server bug shows up as a failed request, not a hang.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.validate import validator

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], None]]

APP_WAIT = 10.0  # longest an app waits for the test to let it go on
CHUNK = 64 * 1024


def json_response(start_response: StartResponse, data: Any, status: str = "200 OK") -> list[bytes]:
    body = json.dumps(data).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


def text(data: bytes) -> str:
    return data.decode("latin-1")


# -- environ ------------------------------------------------------------------------


def environ_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """The CGI variables (and other str values) plus the wsgi.* values, as JSON."""
    out: dict[str, Any] = {k: v for k, v in environ.items() if isinstance(v, str)}
    errors = environ["wsgi.errors"]
    out["wsgi"] = {
        "version": list(environ["wsgi.version"]),
        "url_scheme": environ["wsgi.url_scheme"],
        "multithread": environ["wsgi.multithread"],
        "multiprocess": environ["wsgi.multiprocess"],
        "run_once": environ["wsgi.run_once"],
        "input_terminated": environ.get("wsgi.input_terminated"),
        "errors_writable": all(
            callable(getattr(errors, name, None)) for name in ("write", "writelines", "flush")
        ),
        "file_wrapper": callable(environ.get("wsgi.file_wrapper")),
    }
    return json_response(start_response, out)


# For run_process (python -m threshold tests.apps.wsgi_apps:validated_environ_app).
validated_environ_app = validator(environ_app)


def errors_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    errors = environ["wsgi.errors"]
    errors.write("wsgi.errors: first line\n")
    errors.writelines(["wsgi.errors: second line\n", "wsgi.errors: third line\n"])
    errors.flush()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"logged"]


# -- wsgi.input -----------------------------------------------------------------------


def input_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Read the body the way PATH_INFO names; answer what each call returned, as JSON.

    The validator's InputWrapper only allows read(size); read() with no size (which
    PEP 3333 servers commonly support) is called on the server's object behind it.
    """
    stream = environ["wsgi.input"]
    raw = getattr(stream, "input", stream)
    mode = environ["PATH_INFO"]
    calls: list[Any] = []
    if mode == "/read":
        calls = [text(raw.read()), text(raw.read()), text(stream.read(5)), text(stream.readline())]
    elif mode == "/read-none":
        calls = [text(raw.read(None)), text(raw.read(None))]
    elif mode.startswith("/read-"):
        size = int(mode[len("/read-") :])
        while True:
            piece = stream.read(size)
            calls.append(text(piece))
            if not piece:
                break
        calls.append(text(stream.read(size)))
    elif mode == "/readline":
        while True:
            line = stream.readline()
            calls.append(text(line))
            if not line:
                break
        calls.append(text(stream.readline()))
    elif mode.startswith("/readline-"):
        size = int(mode[len("/readline-") :])
        while True:
            line = stream.readline(size)
            calls.append(text(line))
            if not line:
                break
        calls.append(text(stream.readline(size)))
    elif mode == "/readlines":
        calls = [[text(line) for line in stream.readlines()], stream.readlines()]
    elif mode.startswith("/readlines-"):
        hint = int(mode[len("/readlines-") :])
        while True:
            lines = stream.readlines(hint)
            calls.append([text(line) for line in lines])
            if not lines:
                break
    elif mode == "/iter":
        calls = [[text(line) for line in stream], [text(line) for line in stream]]
    elif mode == "/mixed":
        calls = [
            text(stream.readline()),
            text(stream.read(3)),
            text(stream.readline(2)),
            text(stream.read(0)),
            text(stream.readline()),
            text(raw.read()),
            text(stream.read(1)),
        ]
    else:
        return json_response(start_response, {"error": mode}, "404 Not Found")
    return json_response(start_response, calls)


class UploadProbe:
    """Read the body in CHUNK pieces, stopping after the first until ``release``."""

    def __init__(self) -> None:
        self.first_piece = threading.Event()
        self.release = threading.Event()

    def __call__(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        digest = hashlib.sha256()
        total = pieces = largest = 0
        while True:
            piece = stream.read(CHUNK)
            if not piece:
                break
            pieces += 1
            total += len(piece)
            largest = max(largest, len(piece))
            digest.update(piece)
            if pieces == 1:
                self.first_piece.set()
                if not self.release.wait(APP_WAIT):
                    raise TimeoutError("the test never released the upload")
        after = stream.read(CHUNK)
        return json_response(
            start_response,
            {
                "total": total,
                "pieces": pieces,
                "largest": largest,
                "sha256": digest.hexdigest(),
                "after_end": text(after),
            },
        )


# -- start_response and write() --------------------------------------------------------


def exc_info_before_body(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("X-Original", "yes")])
    try:
        raise ValueError("failed before any body")
    except ValueError:
        start_response(
            "503 Service Unavailable",
            [("Content-Type", "text/plain"), ("X-Replaced", "yes")],
            sys.exc_info(),
        )
    return [b"replaced response"]


class ExcInfoAfterBody:
    """Yield body, then fail and call start_response with exc_info (which must re-raise)."""

    def __init__(self) -> None:
        self.reraised: bool | None = None

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return self.body(start_response)

    def body(self, start_response: StartResponse) -> Iterator[bytes]:
        yield b"headers are out"
        try:
            raise ValueError("failed after the headers were sent")
        except ValueError as exc:
            try:
                start_response(
                    "500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info()
                )
            except ValueError as again:
                self.reraised = again is exc
                raise
            self.reraised = False
            yield b"error page that must never be sent"


def start_response_twice(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    start_response("201 Created", [("Content-Type", "text/plain")])
    return [b"must not be sent"]


def write_then_iterable(environ: Environ, start_response: StartResponse) -> list[bytes]:
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"one,")
    write(b"")
    write(b"two,")
    return [b"three,", b"", b"four"]


def crashing_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("boom from the app")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"still serving"]


# -- iterables and close() --------------------------------------------------------------


class StreamProbe:
    """Yield a first chunk, then wait until the test has received it."""

    def __init__(self) -> None:
        self.proceed = threading.Event()
        self.closed = threading.Event()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return self.body()

    def body(self) -> Iterator[bytes]:
        try:
            yield b"first"
            if not self.proceed.wait(APP_WAIT):
                raise TimeoutError("the first chunk never reached the client")
            yield b"second"
            yield b"third"
        finally:
            self.closed.set()


class EndlessProbe:
    """An endless generator; records that close() reached it (GeneratorExit)."""

    def __init__(self) -> None:
        self.yielded = 0
        self.generator_exit = False
        self.closed = threading.Event()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return self.body()

    def body(self) -> Iterator[bytes]:
        chunk = b"e" * CHUNK
        deadline = time.monotonic() + APP_WAIT
        try:
            while time.monotonic() < deadline:
                self.yielded += 1
                yield chunk
        except GeneratorExit:
            self.generator_exit = True
            raise
        finally:
            self.closed.set()


class FailingBody:
    """An iterable (not a generator) that raises after ``good`` chunks."""

    def __init__(self, good: int, closed: threading.Event) -> None:
        self.good = good
        self.closed = closed

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self.good == 0:
            raise ValueError("failed during iteration")
        self.good -= 1
        return b"good chunk;"

    def close(self) -> None:
        self.closed.set()


class FailingBodyProbe:
    def __init__(self, good: int) -> None:
        self.good = good
        self.closed = threading.Event()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return FailingBody(self.good, self.closed)


class ClosingList:
    """A list-like body with close(), the simplest case of PEP 3333's close rule."""

    def __init__(self, chunks: list[bytes], closed: threading.Event) -> None:
        self.chunks = chunks
        self.closed = closed

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        self.closed.set()


class ClosingListProbe:
    def __init__(self) -> None:
        self.closed = threading.Event()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ClosingList([b"a", b"b", b"c"], self.closed)


# -- wsgi.file_wrapper ------------------------------------------------------------------


class NoFileno:
    """A file-like with read() and close() only: file_wrapper must iterate it."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "rb")  # noqa: SIM115 - closed through close()

    def read(self, size: int = -1) -> bytes:
        return self.file.read(size)

    def close(self) -> None:
        self.file.close()

    @property
    def closed(self) -> bool:
        return self.file.closed


class FileProbe:
    def __init__(self, path: str, with_fileno: bool) -> None:
        self.path = path
        self.with_fileno = with_fileno
        self.opened: list[Any] = []

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        size = os.path.getsize(self.path)
        filelike: Any = open(self.path, "rb") if self.with_fileno else NoFileno(self.path)  # noqa: SIM115
        self.opened.append(filelike)
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))],
        )
        wrapped: Iterable[bytes] = environ["wsgi.file_wrapper"](filelike, 8192)
        return wrapped


# -- HEAD -----------------------------------------------------------------------------------


def head_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (part for part in (b"streamed ", b"body"))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "1234")])
    return [b"x" * 1234]


# -- backpressure and concurrency -------------------------------------------------------


class FloodProbe:
    """64 MiB in CHUNK pieces, counting how many the server has pulled."""

    CHUNKS = 1024

    def __init__(self) -> None:
        self.yielded = 0
        self.finished = False
        self.closed = threading.Event()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(self.CHUNKS * CHUNK)),
            ],
        )
        return self.body()

    def body(self) -> Iterator[bytes]:
        chunk = b"f" * CHUNK
        try:
            for _ in range(self.CHUNKS):
                self.yielded += 1
                yield chunk
            self.finished = True
        finally:
            self.closed.set()


def sleep_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    time.sleep(0.5)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [threading.current_thread().name.encode()]


class BlockProbe:
    """/block waits (bounded) until ``release``; anything else answers at once."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        if environ["PATH_INFO"] == "/block":
            self.entered.set()
            if not self.release.wait(APP_WAIT):
                raise TimeoutError("never released")
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"unblocked"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"quick"]
