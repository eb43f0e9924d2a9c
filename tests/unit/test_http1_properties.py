"""Properties of Http1Connection over the request corpus, searched with hypothesis.

- A pipeline of valid requests (2-5 from tests/corpus/http1/valid/) gives the same
  responses however its bytes are split into reads.
- Byte mutations (flip, insert, delete) of a valid request never raise out of the
  protocol, never log at ERROR, never answer more requests than were sent, never answer
  after an error response (the connection closes), never give a 2xx to a head that
  breaks RFC 9112 syntax (checked by the small strict oracle below), and give the same
  answers whole and split.

The profile is deterministic (derandomize, no example database) and bounded, so the
suite is as fast and as stable as a table of cases.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_http1 import (
    SECOND,
    Case,
    Response,
    corpus,
    corpus_app,
    load_case,
    make,
    parse_responses,
)

PROFILE = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Valid cases that keep the connection open and need no special config: pipelinable.
PIPELINABLE: list[Case] = [
    case
    for case in (load_case(case_id) for case_id in corpus() if case_id.startswith("valid/"))
    if case.keep_alive and not case.config
]
# Mutation seeds: also no body that holds a request of its own ("...HTTP/1.1" in the
# body), so that the client sent exactly two requests (the seed and SECOND).
SEEDS: list[Case] = [case for case in PIPELINABLE if case.data.count(b"HTTP/") == 1]


class Outcome:
    """What one connection did with some bytes: the responses, and how it ended."""

    def __init__(self, responses: list[Response], closed: bool, writes_after_close: int) -> None:
        self.responses = responses
        self.closed = closed
        self.writes_after_close = writes_after_close

    def summary(self) -> list[tuple[int, bytes]]:
        """Statuses, and what the app saw; an error's text says which check came first,
        which may depend on where reads end."""
        return [(r.status, r.body if r.status < 400 else b"") for r in self.responses]


async def _feed(pieces: list[bytes], errors: list[Any]) -> Outcome:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    h = make(loop, corpus_app)
    await h.send(*pieces)
    responses, rest = parse_responses(h.transport.output)
    assert rest == b"", f"unparsed output {rest[:200]!r}"
    return Outcome(responses, h.transport.closed, h.transport.writes_after_close)


def feed(pieces: list[bytes]) -> Outcome:
    """Feed the reads to a fresh connection; anything raised or logged at ERROR fails."""
    errors: list[Any] = []
    outcome = asyncio.run(_feed(pieces, errors))
    assert not errors, errors
    return outcome


@contextmanager
def error_log() -> Iterator[list[logging.LogRecord]]:
    """Server ERROR records, except an application's own exceptions (none expected)."""
    records: list[logging.LogRecord] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if not record.getMessage().startswith("Exception in ASGI application"):
                records.append(record)

    handler = Recorder(logging.ERROR)
    loggers = [logging.getLogger("threshold"), logging.getLogger("asyncio")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def cut(data: bytes, offsets: list[int]) -> list[bytes]:
    points = sorted({min(max(o, 1), len(data) - 1) for o in offsets} if len(data) > 1 else set())
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in pairwise(bounds) if b > a]


# -- valid pipelines, split anyhow ------------------------------------------------------


@st.composite
def split_pipelines(draw: st.DrawFn) -> tuple[list[Case], bytes, list[bytes]]:
    cases = draw(st.lists(st.sampled_from(PIPELINABLE), min_size=2, max_size=5))
    data = b"".join(case.data for case in cases)
    offsets = draw(st.lists(st.integers(0, len(data)), min_size=1, max_size=12))
    return cases, data, cut(data, offsets)


@PROFILE
@given(split_pipelines())
def test_valid_pipeline_split_anyhow_answers_like_whole(
    sample: tuple[list[Case], bytes, list[bytes]],
) -> None:
    cases, data, pieces = sample
    with error_log() as errors:
        whole = feed([data])
        split = feed(pieces)
    assert not errors, [r.getMessage() for r in errors]
    assert split.summary() == whole.summary()
    assert len(whole.responses) == len(cases)
    for case, response in zip(cases, whole.responses, strict=True):
        assert response.status == 200, (case.id, response.body[:200])
        seen = response.json()
        for key, value in case.request.items():
            assert seen[key] == value, (case.id, key)
    assert not whole.closed and not split.closed


# -- mutated requests: the strict oracle ---------------------------------------------------

_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [^\x00-\x20\x7f]+ HTTP/(\d\.\d)")
_FIELD_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*)")


def breaks_rfc9112(data: bytes) -> bool:
    """True when the first request's head surely breaks RFC 9112 (so it must not get a
    2xx). Deliberately partial: False says nothing. Only the head is judged."""
    start = 0
    while data.startswith(b"\r\n", start):
        start += 2  # empty lines before a request line are allowed (RFC 9112 2.2)
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        return False  # no whole head: nothing will be answered for it anyway
    head = data[start : end + 2]
    if b"\0" in head or re.search(rb"\r(?!\n)|(?<!\r)\n", head):
        return True  # NUL, bare CR, bare LF
    request_line, *field_lines = head[:-2].split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(request_line)
    if match is None or match.group(1) not in (b"1.0", b"1.1"):
        return True
    names = []
    for line in field_lines:
        field = _FIELD_LINE.fullmatch(line)  # no obs-fold, no space before the colon
        if field is None:
            return True
        names.append(field.group(1).lower())
    hosts = names.count(b"host")
    if hosts > 1 or (hosts == 0 and match.group(1) == b"1.1"):
        return True
    lengths = names.count(b"content-length")
    return lengths > 1 or (lengths == 1 and b"transfer-encoding" in names)


def test_the_oracle_flags_the_invalid_corpus_it_can_judge() -> None:
    """The oracle is partial but never wrong about the corpus: no valid case is flagged,
    and it flags the head-syntax cases of the invalid corpus."""
    for case_id in corpus():
        case = load_case(case_id)
        if case.valid:
            assert not breaks_rfc9112(case.data), case_id
    for name in (
        "lone_lf_header",
        "lone_cr",
        "obs_fold",
        "space_before_colon",
        "two_hosts",
        "missing_host",
        "nul_in_header_value",
        "double_space_request_line",
        "content_length_and_chunked",
        "duplicate_content_length",
        "http2_request_line",
    ):
        assert breaks_rfc9112(load_case(f"invalid/{name}").data), name


# Printable bytes, the framing bytes and a few that smuggling payloads are made of.
INTERESTING = b" \t\r\n\0\x0b\x0c\x7f\x80\xff:;,-+_0xX"


@st.composite
def mutations(draw: st.DrawFn) -> tuple[Case, bytes]:
    case = draw(st.sampled_from(SEEDS))
    data = bytearray(case.data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "replace"]))
        where = draw(st.integers(0, max(len(data) - 1, 0)))
        byte = draw(st.sampled_from(INTERESTING) | st.integers(0, 255))
        if kind == "flip" and data:
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data.insert(where, byte)
        elif kind == "delete" and len(data) > 1:
            del data[where]
        elif data:
            data[where] = byte
    return case, bytes(data)


@PROFILE
@given(mutations(), st.lists(st.integers(0, 10_000), min_size=1, max_size=6))
def test_mutated_requests_are_answered_safely(
    sample: tuple[Case, bytes], offsets: list[int]
) -> None:
    _, data = sample
    sent = data + SECOND
    with error_log() as errors:
        whole = feed([sent])
        # The same bytes in other reads get the same answers.
        split = feed(cut(sent, [o % len(sent) for o in offsets]))
    assert not errors, [r.getMessage() for r in errors]
    responses = whole.responses
    # Never more answers than the two requests sent.
    assert len(responses) <= 2, whole.summary()
    for index, response in enumerate(responses):
        if response.status >= 400:
            # An error is the last thing written; then the connection closes.
            assert index == len(responses) - 1, whole.summary()
            assert response.header(b"connection") == b"close"
            assert whole.closed
        else:
            assert response.status == 200, whole.summary()
    assert whole.writes_after_close == 0
    if responses and breaks_rfc9112(data):
        assert responses[0].status >= 400, (data, whole.summary())
    if breaks_rfc9112(data):
        assert len(responses) <= 1, (data, whole.summary())
    assert split.summary() == whole.summary(), data
