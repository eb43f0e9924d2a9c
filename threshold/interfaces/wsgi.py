"""WSGI (PEP 3333): environ, start_response, wsgi.input, file_wrapper and the thread pool.

By default the app runs in a fixed pool of threads so the event loop keeps serving I/O.
A worker thread first asks its Stream to act without the loop (the ``_threadsafe``
methods: body bytes already received, a block written straight to an idle socket),
since each round trip to the loop costs more than the app's own work. Otherwise
it goes through the loop: a response that fits in one chunk is handed over with a
single ``call_soon_threadsafe`` and no wait; a streamed response waits for each
previous chunk to be written (and drained when the client is slow), so at most one
chunk per request is in flight.

With ``--wsgi-inline`` (apps that never block) the loop thread calls the app itself,
which saves the hand-over both ways. The loop must never wait there, so a request
body is read whole first (in a task), and what a response waits for (a slow client,
a file) is sent from a task; a body-less request with a quick answer needs no task.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from io import BytesIO
from types import TracebackType
from typing import IO, Any
from urllib.parse import unquote_to_bytes

from threshold.interfaces.asgi import REQUEST_TASK_NAME
from threshold.stream import ClientDisconnected, Headers, Stream

logger = logging.getLogger("threshold.error")

# Inline (--wsgi-inline): body bytes a streamed response sends before the loop serves
# other connections (and sees this client leave); the rest goes out from a task.
STREAM_SLICE = 64 * 1024

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class FileWrapper:
    """``wsgi.file_wrapper``: sent with sendfile(2) when the file has a real descriptor."""

    def __init__(self, filelike: IO[bytes], blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            data = read(self.blksize)
            if not data:
                return
            yield data

    def fileno(self) -> int | None:
        try:
            return self.filelike.fileno()
        except (AttributeError, OSError, ValueError):
            return None


class WsgiInput:
    """``wsgi.input``: the request body streamed from the loop, read from a worker thread."""

    __slots__ = ("_buf", "_done", "_loop", "_stream")

    def __init__(self, stream: Stream, loop: asyncio.AbstractEventLoop, empty: bool) -> None:
        self._stream = stream
        self._loop = loop
        self._buf = bytearray()
        self._done = empty

    def _fill(self) -> bool:
        if self._done:
            return False
        taken = self._stream.take_body_threadsafe()
        if taken is None:
            future = asyncio.run_coroutine_threadsafe(self._stream.receive_body(), self._loop)
            taken = future.result()
        data, more = taken
        self._buf += data
        self._done = not more
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            data = bytes(self._buf)
            self._buf.clear()
            return data
        while len(self._buf) < size and self._fill():
            pass
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        start = 0
        while True:
            index = self._buf.find(b"\n", start)
            if index >= 0:
                end = index + 1
                break
            if 0 <= limit <= len(self._buf):
                end = limit
                break
            start = len(self._buf)
            if not self._fill():
                end = len(self._buf)
                break
        if 0 <= limit < end:
            end = limit
        data = bytes(self._buf[:end])
        del self._buf[:end]
        return data

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


_NO_START = "WSGI: the application returned without calling start_response"
# A file_wrapper for sendfile: the head, the file, its offset and the byte count (or None).
_SendFile = tuple[Headers, IO[bytes], int, int | None]


class _Response:
    """start_response and what both ways of sending need: the head, and the end of the
    response when a block completes the app's Content-Length."""

    __slots__ = ("_done", "_headers", "_remaining", "_sent", "status", "stream")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.status = 0
        self._headers: Headers | None = None
        self._sent = False  # the head was handed over
        self._remaining: int | None = None  # body bytes still due by the app's Content-Length
        self._done = False  # the end of the response was handed over

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self._sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self._headers is not None:
            raise RuntimeError("WSGI: start_response called a second time without exc_info")
        if not isinstance(status, str) or len(status) < 4 or status[3] != " ":
            raise ValueError(f"WSGI: invalid status {status!r}")
        code = int(status[:3])
        encoded = []
        remaining = None
        for name, value in headers:
            if not isinstance(name, str) or not isinstance(value, str):
                raise TypeError(f"WSGI: header names and values must be str: {(name, value)!r}")
            if len(name) == 14 and name.lower() == "content-length" and value.isdigit():
                remaining = int(value)
            encoded.append((name.encode("latin-1"), value.encode("latin-1")))
        self.status = code
        self._headers = encoded
        self._remaining = remaining
        return self.write

    @property
    def ended(self) -> bool:
        """The end of the response was handed over."""
        return self._done

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """The client went away."""
        raise NotImplementedError

    def fail(self) -> None:
        """The app failed: a 500 if nothing was sent, else drop the exchange."""
        raise NotImplementedError

    def _writable(self, data: bytes) -> bool:
        if self._headers is None:
            raise RuntimeError("WSGI: body written before start_response")
        return bool(data) and not self._done

    def _block(self, data: bytes) -> tuple[Headers | None, bool]:
        """A body block about to go out: the head if it goes with it, and whether the
        block completes the declared Content-Length (then it ends the response)."""
        headers = self._head()
        remaining = self._remaining
        if remaining is not None:
            remaining -= len(data)
            self._remaining = remaining
            if remaining <= 0:
                # End the response now, not when the iterable ends (Flask, Django).
                self._done = True
                return headers, True
        return headers, False

    def _ending(self) -> bool:
        """Before the end of the response is handed over: False if a block ended it."""
        if self._headers is None:
            raise RuntimeError(_NO_START)
        if self._done:
            return False
        self._done = True
        return True

    def _head(self) -> Headers | None:
        """The head if it has not gone out yet (it goes with the next block)."""
        headers = None if self._sent else self._headers
        self._sent = True
        return headers

    def file_to_send(self, wrapper: FileWrapper) -> _SendFile | None:
        """What sending a file_wrapper with sendfile takes; None to iterate it instead."""
        headers = self._headers
        if headers is None:
            raise RuntimeError(_NO_START)
        if self._sent or wrapper.fileno() is None:
            return None
        count = None
        for name, value in headers:
            if name.lower() == b"content-length":
                count = int(value)
        self._sent = True
        file = wrapper.filelike
        return headers, file, file.tell(), count


class WsgiResponse(_Response):
    """The response of an app in a pool thread, handed over to the loop."""

    __slots__ = ("_inflight", "loop")

    def __init__(self, stream: Stream, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(stream)
        self.loop = loop
        self._inflight: Future[None] | None = None

    def write(self, data: bytes) -> None:
        if not self._writable(data):
            return
        # PEP 3333: a block must not wait for the next one (an app may yield, then
        # block), so even the first is sent at once rather than held for framing.
        self._wait_inflight()
        headers, last = self._block(data)
        if last:
            # Without waiting for the loop (the common Flask/Django case).
            self.stream.send_threadsafe(self.status, headers, data, False)
            return
        if self.stream.send_more_threadsafe(self.status, headers, data):
            return
        self._inflight = asyncio.run_coroutine_threadsafe(
            _send_chunk(self.stream, self.status, headers, data), self.loop
        )

    def _wait_inflight(self) -> None:
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            inflight.result()

    def finish(self, data: bytes = b"") -> None:
        if not self._ending():
            return
        self._wait_inflight()
        self.stream.send_threadsafe(self.status, self._head(), data, False)

    def send_file(self, wrapper: FileWrapper) -> bool:
        """Send a file_wrapper with sendfile when possible; False to fall back to iterating."""
        sendfile = self.file_to_send(wrapper)
        if sendfile is None:
            return False
        asyncio.run_coroutine_threadsafe(
            _send_file(self.stream, self.status, *sendfile), self.loop
        ).result()
        return True

    def abort(self) -> None:
        self.loop.call_soon_threadsafe(self.stream.abort)

    def fail(self) -> None:
        try:
            self._wait_inflight()
        except Exception:
            pass
        self.loop.call_soon_threadsafe(_fail, self.stream)


class InlineResponse(_Response):
    """The response of an app called on the loop thread (--wsgi-inline): sent at once."""

    __slots__ = ()

    def write(self, data: bytes) -> None:
        if not self._writable(data):
            return
        headers, last = self._block(data)
        stream = self.stream
        if headers is not None:
            stream.send_head(self.status, headers)
        stream.send_body(data, not last)

    def finish(self, data: bytes = b"") -> None:
        if not self._ending():
            return
        headers = self._head()
        stream = self.stream
        if headers is not None:
            stream.send_head(self.status, headers)
        stream.send_body(data, False)

    def abort(self) -> None:
        self.stream.abort()

    def fail(self) -> None:
        _fail(self.stream)


async def _send_chunk(stream: Stream, status: int, headers: Headers | None, data: bytes) -> None:
    if headers is not None:
        stream.send_head(status, headers)
    stream.send_body(data, True)
    if stream.write_paused:
        await stream.drain()


async def _send_file(
    stream: Stream, status: int, headers: Headers, file: IO[bytes], offset: int, count: int | None
) -> None:
    stream.send_head(status, headers)
    await stream.send_file(file, offset, count)


def _fail(stream: Stream) -> None:
    if not stream.send_error(500):
        stream.abort()


def _app_failed(environ: dict[str, Any], response: _Response, exc: BaseException) -> None:
    """Log once what the app raised (a disconnect only at debug) and end the exchange."""
    if isinstance(exc, ClientDisconnected):
        logger.debug("client disconnected during %s", environ["PATH_INFO"])
        response.abort()
        return
    logger.error(
        "Exception in WSGI application (%s %s)",
        environ["REQUEST_METHOD"],
        environ["RAW_URI"],  # as sent: no decoded CR/LF in logs
        exc_info=exc,
    )
    response.fail()


def _close(result: Iterable[bytes] | None) -> None:
    """PEP 3333: the iterable's close(), whatever happened."""
    close = getattr(result, "close", None)
    if close is not None:
        try:
            close()
        except Exception as exc:
            logger.error("Exception closing the WSGI response iterable", exc_info=exc)


async def _respond_inline(
    environ: dict[str, Any],
    response: InlineResponse,
    chunks: Iterator[bytes],
    sendfile: _SendFile | None,
) -> None:
    """The rest of an inline response, in a task: a file to send, or the rest of a
    long iterable, each block after a slow client has caught up, and the loop serving
    others (and seeing a client leave) between slices of it."""
    stream = response.stream
    try:
        if sendfile is not None:
            await _send_file(stream, response.status, *sendfile)
        else:
            await stream.drain()
            sent = 0
            for chunk in chunks:
                response.write(chunk)
                sent += len(chunk)
                if stream.write_paused:
                    await stream.drain()
                    sent = 0
                elif sent >= STREAM_SLICE:
                    await asyncio.sleep(0)
                    sent = 0
        response.finish()
    except asyncio.CancelledError:  # --timeout-request, or shutdown: answered already
        response.abort()
        raise
    except BaseException as exc:
        _app_failed(environ, response, exc)


class _Worker:
    __slots__ = ("wake",)

    def __init__(self) -> None:
        self.wake = threading.Lock()
        self.wake.acquire()  # held while the worker sleeps; released to wake it


class ThreadPool:
    """Threads for blocking apps, woken sparingly.

    Jobs wait in a deque; a woken worker drains it before sleeping again, and the
    loop wakes a sleeping worker only when none is running: under load one thread
    serves back to back instead of eight fighting for the GIL. While jobs wait, a
    loop timer wakes one more worker after each tick in which no job finished, so
    apps that block (I/O, sleep) still get the whole pool (DESIGN.md, WSGI probe).
    """

    TICK = 0.002

    def __init__(
        self, size: int, loop: asyncio.AbstractEventLoop, run: Callable[[Stream], None]
    ) -> None:
        self.loop = loop
        self._run = run
        self._lock = threading.Lock()
        self._jobs: deque[Stream | None] = deque()
        self._idle = [_Worker() for _ in range(size)]
        self._running = 0
        self._finished = 0
        self._timer = False
        self._threads = [
            threading.Thread(target=self._work, args=(w,), name=f"threshold-wsgi-{i}", daemon=True)
            for i, w in enumerate(self._idle)
        ]
        for thread in self._threads:
            thread.start()

    def __len__(self) -> int:
        return len(self._jobs)

    def submit(self, job: Stream | None) -> None:
        """On the loop thread: queue a job, waking a worker only if none is running."""
        worker = None
        with self._lock:
            self._jobs.append(job)
            if self._running == 0 and self._idle:
                worker = self._idle.pop()
                self._running += 1
            elif self._timer or not self._idle:
                return
            else:
                self._timer = True
        if worker is not None:
            worker.wake.release()
        else:
            self.loop.call_later(self.TICK, self._tick, self._finished)

    def _tick(self, finished_before: int) -> None:
        worker = None
        with self._lock:
            if not self._jobs or not self._idle:
                self._timer = False
                return
            if self._finished == finished_before:  # the running ones are blocked
                worker = self._idle.pop()
                self._running += 1
        if worker is not None:
            worker.wake.release()
        self.loop.call_later(self.TICK, self._tick, self._finished)

    def _work(self, worker: _Worker) -> None:
        lock = self._lock
        jobs = self._jobs
        while True:
            worker.wake.acquire()
            while True:
                with lock:  # no break in here: mypyc compiles no break inside try/finally
                    idle = not jobs
                    if idle:
                        self._running -= 1
                        self._idle.append(worker)
                    else:
                        job = jobs.popleft()
                if idle:
                    break
                if job is None:
                    return
                self._run(job)
                self._finished += 1

    def close(self, timeout: float) -> None:
        """Stop the threads; those still running an app after ``timeout`` are abandoned."""
        with self._lock:
            self._jobs.extend([None] * len(self._threads))
            sleeping, self._idle = self._idle, []
            self._running += len(sleeping)
        for worker in sleeping:
            worker.wake.release()
        for thread in self._threads:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("WSGI thread %s still busy at shutdown; abandoned", thread.name)


class WsgiHandler:
    """The Handler for WSGI apps: queue the request for a pool thread, or with
    ``inline`` (--wsgi-inline) call the app on the loop thread."""

    def __init__(
        self,
        app: WSGIApp,
        loop: asyncio.AbstractEventLoop,
        threads: int,
        root_path: str,
        multiprocess: bool = False,
        max_pending: int = 1000,
        inline: bool = False,
    ) -> None:
        self.app = app
        self.max_pending = max_pending
        self.loop = loop
        self.root_path = root_path
        self._pool = None if inline else ThreadPool(threads, loop, self._handle)
        self._base_environ: dict[str, Any] = {
            "SCRIPT_NAME": root_path,
            "wsgi.version": (1, 0),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": threads > 1 and not inline,
            "wsgi.multiprocess": multiprocess,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": FileWrapper,
        }

    def __call__(self, stream: Stream) -> None:
        pool = self._pool
        if pool is None:
            self._inline(stream)
            return
        if len(pool) >= self.max_pending:
            logger.warning("WSGI queue full (max_pending_wsgi=%d); 503", self.max_pending)
            stream.send_error(503)
            return
        pool.submit(stream)

    def close(self, timeout: float) -> None:
        """Stop the pool; threads still running an app after ``timeout`` are abandoned."""
        if self._pool is not None:
            self._pool.close(timeout)

    # -- the pool ---------------------------------------------------------------

    def _handle(self, stream: Stream) -> None:
        environ = self.build_environ(stream)
        response = WsgiResponse(stream, self.loop)
        result: Iterable[bytes] | None = None
        try:
            result = self.app(environ, response.start_response)
            if type(result) is list and len(result) == 1:
                response.finish(result[0])
            elif isinstance(result, FileWrapper) and response.send_file(result):
                response.finish()
            else:
                for chunk in result:
                    response.write(chunk)
                response.finish()
        except BaseException as exc:
            _app_failed(environ, response, exc)
        finally:
            _close(result)

    def build_environ(self, stream: Stream) -> dict[str, Any]:
        """The environ for a pool thread: ``wsgi.input`` streams the body from the loop."""
        environ, empty_body = self._environ(stream)
        environ["wsgi.input"] = WsgiInput(stream, self.loop, empty_body)
        return environ

    # -- inline (--wsgi-inline) -------------------------------------------------

    def _inline(self, stream: Stream) -> None:
        """Call the app soon if the request has no body; else read the body first, in a
        task, so that the app never waits for the client on the loop thread."""
        environ, empty_body = self._environ(stream)
        if empty_body:
            # A callback, not a call from inside the protocol's parsing: responses then
            # go out after this loop pass has read from every ready connection, which
            # measured ~1.5x the requests per CPU-second of writing each at once (fewer,
            # fuller wake-ups on both sides). Nor does a pipelined request's app call
            # nest in the one before (a response completing starts the next request).
            self.loop.call_soon(self._call_inline, stream, environ, b"")
            return
        task = self.loop.create_task(self._read_then_call(stream, environ), name=REQUEST_TASK_NAME)
        stream.cancel = task.cancel  # --timeout-request; also keeps the task referenced

    async def _read_then_call(self, stream: Stream, environ: dict[str, Any]) -> None:
        # Bounded by --max-body-size and --body-timeout, which the protocol enforces.
        parts = []
        more = True
        try:
            while more:
                data, more = await stream.receive_body()
                parts.append(data)
        except ClientDisconnected:
            # Gone, or already answered by the protocol (413, a stalled body).
            logger.debug("client disconnected during %s", environ["PATH_INFO"])
            stream.abort()
            return
        self._call_inline(stream, environ, b"".join(parts))

    def _call_inline(self, stream: Stream, environ: dict[str, Any], body: bytes) -> None:
        environ["wsgi.input"] = BytesIO(body)
        response = InlineResponse(stream)
        result: Iterable[bytes] | None = None
        try:
            result = self.app(environ, response.start_response)
            if type(result) is list and len(result) == 1:
                response.finish(result[0])
            elif isinstance(result, FileWrapper) and (sendfile := response.file_to_send(result)):
                self._respond_later(environ, response, result, iter(()), sendfile)
                result = None  # closed by the task
            else:
                chunks = iter(result)
                sent = 0
                for chunk in chunks:
                    response.write(chunk)
                    sent += len(chunk)
                    if (sent >= STREAM_SLICE or stream.write_paused) and not response.ended:
                        # A long body, or a slow client: go on in a task.
                        self._respond_later(environ, response, result, chunks, None)
                        result = None
                        return
                response.finish()
        except BaseException as exc:
            _app_failed(environ, response, exc)
        finally:
            _close(result)

    def _respond_later(
        self,
        environ: dict[str, Any],
        response: InlineResponse,
        result: Iterable[bytes],
        chunks: Iterator[bytes],
        sendfile: _SendFile | None,
    ) -> None:
        task = self.loop.create_task(
            _respond_inline(environ, response, chunks, sendfile), name=REQUEST_TASK_NAME
        )
        task.add_done_callback(lambda _: _close(result))  # even if cancelled before it ran
        response.stream.cancel = task.cancel

    # -- the environ ------------------------------------------------------------

    def _environ(self, stream: Stream) -> tuple[dict[str, Any], bool]:
        """The environ without ``wsgi.input``, and whether the request has no body."""
        head = stream.head
        raw_path = head.raw_path
        if b"%" in raw_path:
            path = unquote_to_bytes(raw_path).decode("latin-1")
        else:
            path = raw_path.decode("latin-1")
        root = self.root_path if head.root_path is None else head.root_path
        if root and (path == root or path.startswith(root + "/")):
            path = path[len(root) :]
        query = head.query_string.decode("latin-1")
        raw_uri = raw_path.decode("latin-1")
        if query:
            raw_uri += "?" + query
        environ = self._base_environ.copy()
        if head.root_path is not None:
            environ["SCRIPT_NAME"] = root
        environ["REQUEST_METHOD"] = head.method
        environ["PATH_INFO"] = path
        environ["QUERY_STRING"] = query
        environ["RAW_URI"] = raw_uri
        environ["REQUEST_URI"] = raw_uri
        environ["SERVER_PROTOCOL"] = "HTTP/" + head.http_version
        environ["wsgi.url_scheme"] = head.scheme
        if head.client is not None:
            environ["REMOTE_ADDR"] = head.client[0]
            environ["REMOTE_PORT"] = str(head.client[1])
        else:
            environ["REMOTE_ADDR"] = ""
        if head.server is not None and head.server[1] is not None:
            environ["SERVER_NAME"] = head.server[0]
            environ["SERVER_PORT"] = str(head.server[1])
        else:  # unix socket
            environ["SERVER_NAME"] = "localhost"
            environ["SERVER_PORT"] = "443" if head.scheme == "https" else "80"
        if head.scheme == "https":
            environ["HTTPS"] = "on"
        if head.request_id is not None:  # --request-id (also in HTTP_X_REQUEST_ID)
            environ["threshold.request_id"] = head.request_id
        # HTTP/1: no Content-Length and no Transfer-Encoding is no body (RFC 9112 6.3);
        # HTTP/2 may send DATA without a Content-Length.
        empty_body = head.http_version != "2"
        for name, value in head.headers:
            if name == b"content-length":
                key = "CONTENT_LENGTH"
                empty_body = value == b"0"
            elif name == b"content-type":
                key = "CONTENT_TYPE"
            elif name == b"transfer-encoding":
                empty_body = False
                key = "HTTP_TRANSFER_ENCODING"
            elif b"_" in name:
                # "x_forwarded_for" would alias "x-forwarded-for" (header spoofing).
                continue
            else:
                key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
            text = value.decode("latin-1")
            if key in environ:
                environ[key] += ("; " if key == "HTTP_COOKIE" else ",") + text
            else:
                environ[key] = text
        return environ, empty_body
