"""Soak: 10 000 requests, four in five valid and one in five malformed, over 64 concurrent
connections to one server process; every answer is the expected one, and the process
gives back what it took (memory, file descriptors).

The numbers it measures are printed (run with ``-s`` to see them) so they can be quoted.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

from tests.conftest import Running
from threshold.server import new_event_loop

RunProcess = Callable[..., AbstractContextManager[Running]]

TOTAL = 10_000
WARMUP = 1_000
CONNECTIONS = 64
INVALID_SHARE = 0.2
RSS_GROWTH_LIMIT = 30 * 2**20
IO_TIMEOUT = 10.0
SETTLE_TIMEOUT = 5.0

SERVER_ARGS = (
    "tests.apps.limit_apps:soak",
    "--limit-request-line",
    "1024",
    "--limit-request-fields",
    "32",
    "--max-body-size",
    "65536",
    "--no-access-log",
)

HOST = b"Host: soak.test\r\n"

# Malformed or over-limit requests (after tests/corpus/http1/invalid/) and the status
# each must get before the connection is closed.
INVALID: list[tuple[bytes, int]] = [
    (b"GET /hello HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET /hello HTTP/1.1\r\nHost: so ak\r\n\r\n", 400),
    (b"GET  /hello HTTP/1.1\r\n" + HOST + b"\r\n", 400),  # two spaces
    (b"GET /hel\x00lo HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    (b"GET /hello HTTP/1.1\r\n" + HOST + b"X: a\r\n folded\r\n\r\n", 400),
    (b"GET /hello HTTP/1.1\r\n" + HOST + b"Bad Name: x\r\n\r\n", 400),
    (b"GET /hello HTTP/1.1\nHost: soak.test\n\n", 400),  # bare LF
    (b"GET /hello HTTP/3.0\r\n" + HOST + b"\r\n", 400),
    (b"GET /hello HTTP/2.0\r\n" + HOST + b"\r\n", 505),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n", 400),  # TLS
    (b"POST /echo HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (
        b"POST /echo HTTP/1.1\r\n" + HOST + b"Content-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    (b"POST /echo HTTP/1.1\r\n" + HOST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\n" + HOST + b"Content-Length: -1\r\n\r\n", 400),
    (b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST /echo HTTP/1.1\r\n" + HOST + b"Content-Length: 1000000\r\n\r\n", 413),
    (
        b"POST /echo HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
        400,
    ),
    (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n" + HOST + b"\r\n", 414),
    (b"GET /hello HTTP/1.1\r\n" + HOST + b"X-F: v\r\n" * 40 + b"\r\n", 431),
    (b"GET /hello HTTP/1.1\r\n" + HOST + b"X-Big: " + b"v" * 9000 + b"\r\n\r\n", 431),
]


@dataclass
class Job:
    data: bytes
    status: int
    body: bytes = b""  # expected for a valid request

    @property
    def valid(self) -> bool:
        return self.status == 200


def valid_job(rng: random.Random, n: int) -> Job:
    kind = rng.randrange(4)
    if kind == 0:
        query = b"n=%d" % n
        return Job(
            b"GET /hello?" + query + b" HTTP/1.1\r\n" + HOST + b"\r\n", 200, b"hello " + query
        )
    if kind == 1:
        query = b"old=%d" % n
        head = b"GET /hello?" + query + b" HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        return Job(head, 200, b"hello " + query)
    body = rng.randbytes(rng.randrange(0, 4096))
    if kind == 2:
        head = b"POST /echo HTTP/1.1\r\n" + HOST + b"Content-Length: %d\r\n\r\n" % len(body)
        return Job(head + body, 200, body)
    cut = rng.randrange(0, len(body) + 1)
    chunks = [part for part in (body[:cut], body[cut:]) if part]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    head = b"POST /echo HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
    return Job(head + framed, 200, body)


def jobs(count: int, seed: int) -> Iterator[Job]:
    rng = random.Random(seed)
    for n in range(count):
        if rng.random() < INVALID_SHARE:
            data, status = rng.choice(INVALID)
            yield Job(data, status)
        else:
            yield valid_job(rng, n)


@dataclass
class Tally:
    valid: int = 0
    invalid: int = 0
    connections: int = 0
    problems: list[str] | None = None

    def problem(self, text: str) -> None:
        assert self.problems is not None
        if len(self.problems) < 20:
            self.problems.append(text)
        else:
            self.problems[-1] = f"... and more; last: {text}"


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b": ")
        headers[name.lower()] = value
    if b"content-length" not in headers:
        raise AssertionError(f"no content-length in {head!r}")
    body = await reader.readexactly(int(headers[b"content-length"]))
    return status, headers, body


async def client(host: str, port: int, work: Iterator[Job], tally: Tally) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        for job in work:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
                tally.connections += 1
            assert reader is not None
            writer.write(job.data)
            try:
                status, headers, body = await asyncio.wait_for(read_response(reader), IO_TIMEOUT)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, AssertionError) as exc:
                tally.problem(f"{job.data[:60]!r}: no response ({exc!r})")
                writer.close()
                writer = None
                continue
            if job.valid:
                tally.valid += 1
                if (status, body) != (200, job.body):
                    tally.problem(f"{job.data[:60]!r}: {status} {body[:60]!r}")
                if status != 200 or headers.get(b"connection") == b"close":
                    writer.close()
                    writer = None
                continue
            tally.invalid += 1
            if status != job.status or headers.get(b"connection") != b"close":
                tally.problem(f"{job.data[:60]!r}: got {status}, expected {job.status}")
            try:
                rest = await asyncio.wait_for(reader.read(1), IO_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                rest = repr(exc).encode()
            if rest:
                tally.problem(f"{job.data[:60]!r}: not closed after {status} ({rest!r})")
            writer.close()
            writer = None  # reconnect after a rejection
    finally:
        if writer is not None:
            writer.close()
            await writer.wait_closed()


async def run_load(host: str, port: int, count: int, seed: int) -> tuple[Tally, float]:
    tally = Tally(problems=[])
    work = jobs(count, seed)  # shared: each client takes the next job
    started = time.perf_counter()
    await asyncio.gather(*(client(host, port, work, tally) for _ in range(CONNECTIONS)))
    return tally, time.perf_counter() - started


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        match = re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.MULTILINE)
    assert match
    return int(match.group(1)) * 1024


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fds(pid: int, target: int) -> int:
    """The server closes a connection's socket once it has read the client's EOF: wait,
    boundedly, for that to have happened for all of them."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    count = open_fds(pid)
    while count > target and time.monotonic() < deadline:
        time.sleep(0.05)
        count = open_fds(pid)
    return count


def test_soak_mixed_valid_and_invalid(run_process: RunProcess) -> None:
    with run_process(*SERVER_ARGS) as running:
        assert running.process is not None
        pid = running.process.pid
        fds_start = open_fds(pid)

        loop = new_event_loop("auto")  # uvloop when there: the clients cost less CPU
        try:
            warmup, _ = loop.run_until_complete(
                run_load(running.host, running.port, WARMUP, seed=1)
            )
            assert warmup.problems == [], warmup.problems
            fds_base = settled_fds(pid, fds_start)
            rss_base = rss(pid)

            tally, elapsed = loop.run_until_complete(
                run_load(running.host, running.port, TOTAL, seed=2)
            )
        finally:
            loop.close()
        fds_end = settled_fds(pid, fds_base)
        rss_end = rss(pid)
        alive = running.process.poll() is None
        log = "".join(running.log)

    print(
        f"\nsoak: {TOTAL} requests ({tally.valid} valid, {tally.invalid} invalid) over "
        f"{CONNECTIONS} connections ({tally.connections} opened) in {elapsed:.2f} s = "
        f"{TOTAL / elapsed:.0f} req/s\n"
        f"soak: RSS {rss_base / 2**20:.1f} MiB after warm-up, {rss_end / 2**20:.1f} MiB after "
        f"({(rss_end - rss_base) / 2**20:+.1f} MiB); fds {fds_start} at start, {fds_base} "
        f"after warm-up, {fds_end} after"
    )
    assert alive, log
    assert tally.problems == [], tally.problems
    assert tally.valid + tally.invalid == TOTAL
    assert tally.invalid > TOTAL * INVALID_SHARE * 0.8
    assert fds_end <= fds_base, f"fd leak: {fds_base} -> {fds_end}"
    assert rss_end - rss_base < RSS_GROWTH_LIMIT
    # Nothing unexpected on the server side either: no app error, no traceback.
    assert "ERROR" not in log and "Traceback" not in log, log
