"""The HTTP/1.1 request corpus (tests/corpus/http1/) over a real socket.

Each case is sent with a valid request appended, in one write, to a running server
(one per distinct config, started once for this module). A rejected case gets exactly
its error status, the connection closes and the appended request is never answered; a
valid case is seen by the app as its .expect says and the appended one is answered too.
The oracle is the one the unit corpus uses (tests/unit/test_http1.py, ``verify``).
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from tests.conftest import Running, serve_in_thread
from tests.unit.test_http1 import SECOND, Answer, Case, corpus, corpus_app, load_case, verify

IO_TIMEOUT = 5.0


class Wire:
    """A client socket that reads HTTP/1.1 responses strictly (CRLF, Content-Length)."""

    def __init__(self, running: Running) -> None:
        self.sock = socket.create_connection((running.host, running.port), timeout=IO_TIMEOUT)
        self.buf = bytearray()
        self.eof = False

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
        self.buf += data

    def response(self) -> Answer:
        while b"\r\n\r\n" not in self.buf:
            assert not self.eof, f"closed before a whole response: {bytes(self.buf)!r}"
            self._fill()
        end = self.buf.index(b"\r\n\r\n")
        lines = bytes(self.buf[:end]).split(b"\r\n")
        del self.buf[: end + 4]
        version, status, _ = lines[0].split(b" ", 2)
        assert version == b"HTTP/1.1", lines[0]
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b": ")
            assert sep and name and b" " not in name, f"bad header line {line!r}"
            assert name.lower() not in headers, f"{name!r} sent twice"
            headers[name.lower()] = value
        assert b"transfer-encoding" not in headers  # every answer here has one body chunk
        size = int(headers[b"content-length"])
        while len(self.buf) < size:
            assert not self.eof, "closed inside a body"
            self._fill()
        body = bytes(self.buf[:size])
        del self.buf[:size]
        return int(status), headers.get(b"connection"), body

    def closed_by_server(self) -> bool:
        """Reads until the server closes (True) or IO_TIMEOUT passes (False)."""
        try:
            while not self.eof:
                self._fill()
        except TimeoutError:
            return False
        return True

    def open_now(self) -> bool:
        """Nothing more to read and not closed, right now (a non-blocking peek)."""
        self.sock.setblocking(False)
        try:
            return self.sock.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(IO_TIMEOUT)


@pytest.fixture(scope="module")
def server_for() -> Iterator[Callable[[Case], Running]]:
    """One server per distinct Config the corpus needs, started on first use."""
    with ExitStack() as stack:
        running: dict[str, Running] = {}

        def get(case: Case) -> Running:
            key = json.dumps(case.config, sort_keys=True)
            if key not in running:
                running[key] = stack.enter_context(serve_in_thread(corpus_app, **case.config))
            return running[key]

        yield get


@pytest.fixture(scope="module")
def error_log() -> Iterator[list[logging.LogRecord]]:
    """ERROR records of the server (any thread) while this module runs: there must be none."""
    records: list[logging.LogRecord] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("threshold")
    handler = Recorder(logging.ERROR)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
    assert not records, [r.getMessage() for r in records]


@pytest.mark.parametrize("case_id", corpus())
def test_corpus_over_a_socket(
    case_id: str, server_for: Callable[[Case], Running], error_log: list[logging.LogRecord]
) -> None:
    case = load_case(case_id)
    wire = Wire(server_for(case))
    try:
        wire.sock.sendall(case.data + SECOND)
        # The valid case and SECOND (unless it ends the connection), or up to the rejected one.
        expected = (2 if case.keep_alive else 1) if case.valid else case.before + 1
        answers = [wire.response() for _ in range(expected)]
        if case.valid and case.keep_alive:
            closed = not wire.open_now()
            assert not wire.buf, f"{case_id}: unexpected bytes {bytes(wire.buf[:200])!r}"
        else:
            closed = wire.closed_by_server()
            while wire.buf:  # anything after the close-ending response is a bug: show it
                answers.append(wire.response())
        verify(case, answers, closed, pipelined=True)
    finally:
        wire.close()
    assert not error_log, [r.getMessage() for r in error_log]
