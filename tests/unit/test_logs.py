"""observe/logs.py without a server: escaping, the format compiler, request ids, setup."""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from threshold.config import Config, ConfigError
from threshold.observe.logs import (
    ACCESS_LOGGER,
    ATOMS,
    DEFAULT_ACCESS_FORMAT,
    AccessLog,
    LogConfigError,
    assign_request_id,
    compile_access_format,
    compile_json,
    configure_logging,
    escape,
    read_log_config,
    reopen_log_files,
    with_request_ids,
)
from threshold.stream import RequestHead

APP = "tests.apps.ops_apps:asgi3_function"


def head(
    path: bytes = b"/",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] | None = ("127.0.0.1", 5000),
    version: str = "1.1",
) -> RequestHead:
    return RequestHead(
        "GET", path, query, version, headers or [], "http", client, ("127.0.0.1", 8000)
    )


def unescape(text: str) -> bytes:
    """The inverse of escape(), to prove it loses nothing and is unambiguous."""
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "\\":
            if text[i + 1] == "x":
                out.append(int(text[i + 2 : i + 4], 16))
                i += 4
                continue
            assert text[i + 1] in '"\\', text
            out.append(ord(text[i + 1]))
            i += 2
            continue
        out.append(ord(text[i]))
        i += 1
    return bytes(out)


# -- escaping -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"/plain/path-1.2_3~", "/plain/path-1.2_3~"),
        (b"a\r\nINFO: forged", r"a\x0d\x0aINFO: forged"),
        (b"\x1b[31mred\x1b[0m", r"\x1b[31mred\x1b[0m"),
        (b"\x00\x07\x7f", r"\x00\x07\x7f"),
        (b"caf\xc3\xa9 \xff", r"caf\xc3\xa9 \xff"),
        (b'say "hi"', r"say \"hi\""),
        (b"back\\slash \\x41", r"back\\slash \\x41"),
        (b"%0d%0a%1b", "%0d%0a%1b"),  # percent-encoding is logged as sent, undecoded
        (b"", ""),
    ],
)
def test_escape(raw: bytes, text: str) -> None:
    assert escape(raw) == text
    assert text.isascii() and text.isprintable()


def test_escape_is_lossless_for_every_byte() -> None:
    rng = random.Random(7)
    samples = [bytes(range(256))] + [rng.randbytes(rng.randrange(40)) for _ in range(500)]
    for raw in samples:
        text = escape(raw)
        assert text.isascii() and text.isprintable()
        assert unescape(text) == raw


# -- the format compiler ----------------------------------------------------------------------


def test_default_format_renders_todays_line() -> None:
    line = compile_access_format(DEFAULT_ACCESS_FORMAT)
    rendered = line(head(b"/a/b", b"x=1&y=2"), 200, 14, 0.00034)
    assert rendered == '127.0.0.1:5000 "GET /a/b?x=1&y=2 HTTP/1.1" 200 14 0.3ms'
    assert line(head(b"/", version="2"), 404, 0, 1.25) == (
        '127.0.0.1:5000 "GET / HTTP/2" 404 0 1250.0ms'
    )
    assert line(head(client=None), 200, 1, 0.0) == '- "GET / HTTP/1.1" 200 1 0.0ms'


def test_duration_ms_prints_as_percent_point_1f() -> None:
    line = compile_access_format("{duration_ms}")
    rng = random.Random(3)
    values = [rng.uniform(0, 100) for _ in range(2000)]
    values += [x / 20000 for x in range(0, 2000)]  # exact .x5 decimals: rounding edges
    values += [1e-9, 0.00005, 0.00015, 12.0, 99999.99]
    for seconds in values:
        assert line(head(), 200, 0, seconds) == "%.1f" % (seconds * 1000), seconds


def test_every_atom_renders() -> None:
    fmt = " ".join("{" + name + "}" for name in ATOMS)
    headers = [(b"host", b"h"), (b"user-agent", b"ua"), (b"referer", b"ref")]
    request = head(b"/p", b"q=1", headers)
    request.request_id = "rid-1"
    fields = compile_access_format(fmt)(request, 201, 7, 0.002)
    values = dict(zip(ATOMS, fields.split(" "), strict=True))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", values["time"])
    assert int(values["pid"]) > 0
    del values["time"], values["pid"]
    assert values == {
        "client": "127.0.0.1:5000",
        "client_addr": "127.0.0.1",
        "client_port": "5000",
        "method": "GET",
        "path": "/p",
        "query": "q=1",
        "path_query": "/p?q=1",
        "protocol": "HTTP/1.1",
        "http_version": "1.1",
        "scheme": "http",
        "host": "h",
        "status": "201",
        "bytes": "7",
        "duration_ms": "2.0",
        "duration_us": "2000",
        "user_agent": "ua",
        "referer": "ref",
        "request_id": "rid-1",
    }


def test_absent_values_print_as_dash() -> None:
    line = compile_access_format("{client}|{client_addr}|{client_port}|{host}|{user_agent}|")
    assert line(head(client=None), 200, 0, 0.0) == "-|-|-|-|-|"
    line = compile_access_format("{referer}|{request_id}|{query}|")
    assert line(head(), 200, 0, 0.0) == "-|-||"  # an empty query is empty, not absent


def test_format_specs_conversions_and_literal_braces() -> None:
    line = compile_access_format("[{status:>5}] {bytes:08d} {method!r} {{method}} {path:.3}")
    assert line(head(b"/abcdef"), 200, 42, 0.0) == "[  200] 00000042 'GET' {method} /ab"


def test_repeated_atoms_and_text_that_looks_like_code() -> None:
    fmt = "{status} {status} \"); __import__('os')._exit(1) #{{x}}"
    assert compile_access_format(fmt)(head(), 204, 0, 0.0) == (
        "204 204 \"); __import__('os')._exit(1) #{x}"
    )
    assert compile_access_format("no atoms at all")(head(), 200, 0, 0.0) == "no atoms at all"


def test_header_atoms_take_the_first_value() -> None:
    request = head(headers=[(b"user-agent", b"first"), (b"user-agent", b"second")])
    assert compile_access_format("{user_agent}")(request, 200, 0, 0.0) == "first"


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ("{nope}", "unknown atom {nope}"),
        ("{client} {Status}", "unknown atom {Status}"),
        ("{path.upper}", "unknown atom {path.upper}"),
        ("{path[0]}", "unknown atom {path[0]}"),
        ("{}", "unknown atom {}"),
        ("{0}", "unknown atom {0}"),
        ("{status:{width}}", "nested fields in the format spec of {status}"),
        ("{path:d}", "cannot be rendered: Unknown format code 'd'"),
        ("{status:s}", "cannot be rendered"),
        ("{client_port:05d}", "cannot be rendered"),  # absent ports print as "-"
        ("{status!x}", "cannot be rendered"),
        ("{status", "expected '}'"),
        ("status}", "Single '}'"),
    ],
)
def test_bad_formats(fmt: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        compile_access_format(fmt)
    with pytest.raises(ConfigError, match=r"^access_log_format: .*" + re.escape(message)):
        Config(app=APP, access_log_format=fmt)


def test_unknown_atom_message_lists_the_atoms() -> None:
    with pytest.raises(ValueError) as info:
        compile_access_format("{nope}")
    assert all(name in str(info.value) for name in ATOMS)


# -- JSON -----------------------------------------------------------------------------------


def test_json_has_every_atom_typed() -> None:
    request = head(b"/a\x1b", b"b\n", [(b"user-agent", b'"\xff\\')])
    text = compile_json()(request, 500, 3, 0.0123456)
    assert "\n" not in text and text.isascii()
    record = json.loads(text)
    assert list(record) == list(ATOMS)
    assert record["path"] == r"/a\x1b" and record["query"] == r"b\x0a"
    assert record["user_agent"] == r"\"\xff\\"  # the same escaped text as in text lines
    assert (record["status"], record["bytes"]) == (500, 3)
    assert (record["duration_ms"], record["duration_us"]) == (12.3, 12345)
    assert (record["client_port"], record["referer"], record["request_id"]) == (5000, None, None)


def test_json_of_a_unix_socket_client() -> None:
    record = json.loads(compile_json()(head(client=None), 200, 0, 0.0))
    assert (record["client"], record["client_addr"], record["client_port"]) == (None,) * 3


# -- AccessLog ------------------------------------------------------------------------------


class FakeStream:
    def __init__(self, head: RequestHead) -> None:
        self.head = head


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def access_logger() -> Iterator[tuple[logging.Logger, Collect]]:
    logger = logging.getLogger(ACCESS_LOGGER)
    handler = Collect()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def test_access_log_skips_all_work_below_info(
    access_logger: tuple[logging.Logger, Collect],
) -> None:
    logger, handler = access_logger
    log = AccessLog("{path}")
    calls = []
    log.line = lambda *args: calls.append(args) or "x"  # type: ignore[func-returns-value]
    logger.setLevel(logging.WARNING)
    log(FakeStream(head()), 200, 0, 0.0)  # type: ignore[arg-type]
    assert (calls, handler.records) == ([], [])
    logger.setLevel(logging.INFO)
    log(FakeStream(head()), 200, 0, 0.0)  # type: ignore[arg-type]
    assert len(calls) == 1 and [r.getMessage() for r in handler.records] == ["x"]


def test_percent_signs_in_lines_are_not_formatted_again(
    access_logger: tuple[logging.Logger, Collect],
) -> None:
    logger, handler = access_logger
    logger.setLevel(logging.INFO)
    AccessLog("{path} 100%s%d")(FakeStream(head(b"/%25s%d")), 200, 0, 0.0)  # type: ignore[arg-type]
    assert handler.records[0].getMessage() == "/%25s%d 100%s%d"
    AccessLog(as_json=True)(FakeStream(head(b"/j")), 200, 0, 0.0)  # type: ignore[arg-type]
    assert json.loads(handler.records[1].getMessage())["path"] == "/j"


# -- request ids ----------------------------------------------------------------------------


def test_assign_request_id_keeps_a_good_one() -> None:
    request = head(headers=[(b"host", b"h"), (b"x-request-id", b"a.b:c-d_e")])
    before = request.headers
    assign_request_id(request)
    assert request.request_id == "a.b:c-d_e"
    assert request.headers is before  # nothing rebuilt


@pytest.mark.parametrize(
    "values",
    [[], [b""], [b"x" * 201], [b"a b"], [b"a/b"], [b"\xe9"], [b"ok", b"ok2"]],
    ids=["none", "empty", "too-long", "space", "slash", "non-ascii", "twice"],
)
def test_assign_request_id_makes_one(values: list[bytes]) -> None:
    request = head(headers=[(b"host", b"h")] + [(b"x-request-id", v) for v in values])
    assign_request_id(request)
    rid = request.request_id
    assert rid is not None and re.fullmatch(r"[0-9a-f]{32}", rid)
    assert request.headers == [(b"host", b"h"), (b"x-request-id", rid.encode())]


def test_request_ids_differ() -> None:
    ids = set()
    for _ in range(100):
        request = head()
        assign_request_id(request)
        ids.add(request.request_id)
    assert len(ids) == 100


def test_with_request_ids_wraps_the_handler() -> None:
    seen: list[str | None] = []
    wrapped = with_request_ids(lambda stream: seen.append(stream.head.request_id))
    wrapped(FakeStream(head(headers=[(b"x-request-id", b"given")])))
    assert seen == ["given"]


# -- setup ----------------------------------------------------------------------------------


@pytest.fixture
def clean_logging() -> Iterator[None]:
    """Put threshold's loggers back the way they were after configure_logging."""
    names = ("", "threshold", "threshold.error", ACCESS_LOGGER, "custom", "custom.child")
    saved = {}
    for name in names:
        logger = logging.getLogger(name)
        saved[name] = (list(logger.handlers), logger.level, logger.propagate, logger.disabled)
    try:
        yield
    finally:
        for name, (handlers, level, propagate, disabled) in saved.items():
            logger = logging.getLogger(name)
            for handler in logger.handlers:
                if handler not in handlers:
                    handler.close()
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate
            logger.disabled = disabled


def ours(name: str) -> list[logging.Handler]:
    return [h for h in logging.getLogger(name).handlers if getattr(h, "_threshold", False)]


def test_configure_logging_files_and_levels(tmp_path: Path, clean_logging: None) -> None:
    access_file, error_file = tmp_path / "a.log", tmp_path / "e.log"
    config = Config(
        app=APP,
        access_log_file=str(access_file),
        error_log_file=str(error_file),
        log_level="warning",
    )
    configure_logging(config)
    configure_logging(config)  # again (threshold.run() twice): replaced, not doubled
    [error_handler] = ours("threshold")
    [access_handler] = ours(ACCESS_LOGGER)
    assert isinstance(error_handler, logging.FileHandler)
    assert isinstance(access_handler, logging.FileHandler)
    assert error_handler.baseFilename == str(error_file)
    assert access_handler.baseFilename == str(access_file)
    assert not logging.getLogger(ACCESS_LOGGER).propagate
    assert logging.getLogger("threshold.error").getEffectiveLevel() == logging.WARNING
    logging.getLogger("threshold.error").warning("to the error file")
    logging.getLogger(ACCESS_LOGGER).warning("to the access file")
    for handler in (error_handler, access_handler):
        handler.flush()
    assert "WARNING: to the error file" in error_file.read_text()
    assert "WARNING: to the access file" in access_file.read_text()
    assert "access" not in error_file.read_text()


def test_configure_logging_defaults_to_stderr_and_json_is_bare(clean_logging: None) -> None:
    configure_logging(Config(app=APP, access_log_json=True, log_level="trace"))
    [error_handler] = ours("threshold")
    [access_handler] = ours(ACCESS_LOGGER)
    for handler in (error_handler, access_handler):
        assert type(handler) is logging.StreamHandler
    record = logging.LogRecord(ACCESS_LOGGER, logging.INFO, "", 0, '{"a":1}', (), None)
    assert access_handler.format(record) == '{"a":1}'
    assert error_handler.format(record).endswith('INFO: {"a":1}')
    assert logging.getLogger("threshold").level == 5 and logging.getLevelName(5) == "TRACE"


def test_log_config_replaces_threshold_handlers(tmp_path: Path, clean_logging: None) -> None:
    path = tmp_path / "log.toml"
    target = tmp_path / "custom.log"
    path.write_text(
        "version = 1\n"
        "[handlers.f]\n"
        'class = "logging.FileHandler"\n'
        f"filename = {json.dumps(str(target))}\n"
        '[loggers.custom]\nhandlers = ["f"]\nlevel = "INFO"\n'
    )
    configure_logging(Config(app=APP, log_config=str(path), log_level="debug"))
    assert ours("threshold") == [] and ours(ACCESS_LOGGER) == []
    # Loggers made at import time (threshold.error) are not disabled by dictConfig.
    assert not logging.getLogger("threshold.error").disabled
    assert logging.getLogger("threshold").level != logging.DEBUG  # the file decides
    logging.getLogger("custom").info("hello")
    [handler] = logging.getLogger("custom").handlers
    handler.flush()
    assert target.read_text() == "hello\n"


def test_log_config_errors(tmp_path: Path, clean_logging: None) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1, "handlers": {"h": {"class": "logging.Nope"}}}')
    with pytest.raises(LogConfigError, match=r"^log_config: Unable to configure handler 'h'"):
        configure_logging(Config(app=APP, log_config=str(bad)))


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("c.yaml", "version: 1", "expected a .json or .toml file"),
        ("c.json", "[1, 2]", "not a logging dictConfig"),
        ("c.json", '{"version": 2}', "not a logging dictConfig"),
        ("c.toml", "version = 1\n[", "is not valid TOML"),
        ("c.json", "{", "is not valid JSON"),
    ],
)
def test_read_log_config_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        read_log_config(str(path))
    with pytest.raises(ValueError, match="cannot read"):
        read_log_config(str(tmp_path / "absent.json"))


def test_read_log_config_json_and_toml(tmp_path: Path) -> None:
    data: dict[str, Any] = {"version": 1, "root": {"level": "INFO"}}
    (tmp_path / "c.json").write_text(json.dumps(data))
    (tmp_path / "c.toml").write_text('version = 1\n[root]\nlevel = "INFO"\n')
    assert read_log_config(str(tmp_path / "c.json")) == data
    assert read_log_config(str(tmp_path / "c.toml")) == data


def test_reopen_log_files_after_rename(tmp_path: Path, clean_logging: None) -> None:
    current, rotated = tmp_path / "x.log", tmp_path / "x.log.1"
    handler = logging.FileHandler(current)
    logger = logging.getLogger("custom")
    logger.addHandler(handler)  # any logger's FileHandler, e.g. one from --log-config
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logging.getLogger("custom.child").addHandler(handler)  # on two loggers: reopened once
    logger.info("one")
    current.rename(rotated)
    logger.info("two")
    reopen_log_files()
    logger.info("three")
    handler.flush()
    assert rotated.read_text() == "one\ntwo\n"
    assert current.read_text() == "three\n"
    handler.close()
