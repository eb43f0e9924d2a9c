"""Logging setup (called by the server at run time, never at import), the access log
and request ids.

The access log line is compiled once from ``--access-log-format`` into a
``str.format`` template and the getters of only the atoms it names; each request
then costs one getter call per atom and one ``format``. Every value that comes from
the request (path, query, headers, request id) is escaped so that a request cannot
forge log lines (uvicorn CVE-2020-7694): bytes outside printable ASCII become
``\\xNN``, ``"`` becomes ``\\"`` and ``\\`` becomes ``\\\\``.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import re
import string
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from threshold.loader import LoadError

if TYPE_CHECKING:
    from threshold.config import Config
    from threshold.stream import RequestHead, Stream

TRACE = 5

ERROR_LOGGER = "threshold.error"
ACCESS_LOGGER = "threshold.access"

DEFAULT_ACCESS_FORMAT = (
    '{client} "{method} {path_query} {protocol}" {status} {bytes} {duration_ms}ms'
)
LINE_FORMAT = "%(asctime)s [%(process)d] %(levelname)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

# -- escaping -------------------------------------------------------------------------------

_UNSAFE = re.compile(rb'[\x00-\x1f\x7f-\xff"\\]')
_ESCAPES = [b"\\x%02x" % byte for byte in range(256)]
_ESCAPES[0x22] = b'\\"'
_ESCAPES[0x5C] = b"\\\\"


def _escape_match(match: re.Match[bytes]) -> bytes:
    return _ESCAPES[match[0][0]]


def escape(data: bytes) -> str:
    """``data`` as printable ASCII: other bytes as ``\\xNN``, ``"`` and ``\\`` backslashed."""
    if _UNSAFE.search(data) is None:
        return data.decode("ascii")
    return _UNSAFE.sub(_escape_match, data).decode("ascii")


# -- atoms ----------------------------------------------------------------------------------

# name -> (Python expression over head, status, sent, duration; may it be absent; doc).
# The order is the order of the JSON keys.
ATOMS: dict[str, tuple[str, bool, str]] = {
    "time": ("_time()", False, "when the response completed: UTC, ISO 8601, milliseconds"),
    "client": ("_client(head.client)", True, "client address and port, `ADDR:PORT`"),
    "client_addr": ("_nth(head.client, 0)", True, "client address"),
    "client_port": ("_nth(head.client, 1)", True, "client port"),
    "method": ("head.method", False, "request method"),
    "path": ("escape(head.raw_path)", False, "path as sent (percent-encoded), no query"),
    "query": ("escape(head.query_string)", False, "query string as sent, no `?`; may be empty"),
    "path_query": ("_path_query(head)", False, "path, and `?query` when there is one"),
    "protocol": ('"HTTP/" + head.http_version', False, "`HTTP/1.0`, `HTTP/1.1` or `HTTP/2`"),
    "http_version": ("head.http_version", False, "`1.0`, `1.1` or `2`"),
    "scheme": ("head.scheme", False, "`http` or `https` (after trusted proxy headers)"),
    "host": ('_header(head.headers, b"host")', True, "Host header (HTTP/2: `:authority`)"),
    "status": ("status", False, "response status code"),
    "bytes": ("sent", False, "response body bytes sent"),
    "duration_ms": ("round(duration * 1000, 1)", False, "request to response end, ms, 1 decimal"),
    "duration_us": ("int(duration * 1000000)", False, "the same in microseconds, an integer"),
    "user_agent": ('_header(head.headers, b"user-agent")', True, "User-Agent header"),
    "referer": ('_header(head.headers, b"referer")', True, "Referer header"),
    "request_id": ("head.request_id", True, "the request id (`--request-id`)"),
    "pid": ("getpid()", False, "process id of the worker"),
}


def _time() -> str:
    now = time.time()
    millis = int(now % 1 * 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(now))}.{millis:03d}Z"


def _client(client: tuple[str, int] | None) -> str | None:
    return f"{client[0]}:{client[1]}" if client else None


def _nth(client: tuple[str, int] | None, index: int) -> str | int | None:
    return client[index] if client else None


def _path_query(head: RequestHead) -> str:
    if head.query_string:
        return escape(head.raw_path + b"?" + head.query_string)
    return escape(head.raw_path)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return escape(value)
    return None


def _dash(value: object) -> object:
    return "-" if value is None else value


_NAMESPACE = {
    "_client": _client,
    "_dash": _dash,
    "_header": _header,
    "_nth": _nth,
    "_path_query": _path_query,
    "_time": _time,
    "escape": escape,
    "getpid": os.getpid,
}

Line = Callable[["RequestHead", int, int, float], str]


def _compile(args: list[str], render: Callable[..., str]) -> Line:
    """``lambda head, status, sent, duration: render(<args>)``, the atoms computed inline.

    Generated once per worker (as dataclasses and namedtuple do), it saves a function
    call per atom per request. The source holds only the expressions of ATOMS; the
    user's format text is in ``render`` (a ``str.format``), never in the source.
    """
    source = f"lambda head, status, sent, duration: render({', '.join(args)})"
    line: Line = eval(source, {**_NAMESPACE, "render": render})
    return line


class _Sample:
    """A request head with every atom present, to try a format at config load."""

    client: tuple[str, int] | None = ("203.0.113.7", 54321)
    method = "GET"
    raw_path = b"/sample"
    query_string = b"a=1"
    http_version = "1.1"
    scheme = "http"
    headers: list[tuple[bytes, bytes]] = [
        (b"host", b"a"),
        (b"user-agent", b"b"),
        (b"referer", b"c"),
    ]
    request_id: str | None = "0123456789abcdef"


class _SampleAbsent(_Sample):
    """The same with every atom that may be absent absent (a unix socket, no headers)."""

    client = None
    headers = []
    request_id = None


def compile_access_format(fmt: str) -> Line:
    """A function that renders one access log line; ValueError if ``fmt`` is bad.

    ``fmt`` is a ``str.format`` string whose fields are atom names, optionally with a
    format spec (``{status:>3}``); ``{{`` and ``}}`` are literal braces. Absent values
    (no User-Agent header, no client address) print as ``-``.
    """
    parts: list[str] = []
    args: list[str] = []
    index: dict[str, int] = {}
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError as exc:
        raise ValueError(f"{exc} in {fmt!r}") from None
    for literal, name, spec, conversion in parsed:
        parts.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is None:
            continue
        if name not in ATOMS:
            known = ", ".join(sorted(ATOMS))
            raise ValueError(f"unknown atom {{{name}}} in {fmt!r}; atoms are {known}")
        if spec and "{" in spec:
            raise ValueError(f"nested fields in the format spec of {{{name}}} in {fmt!r}")
        if name not in index:
            index[name] = len(args)
            expression, may_be_absent, _ = ATOMS[name]
            args.append(f"_dash({expression})" if may_be_absent else expression)
        bang = "!" + conversion if conversion else ""
        parts.append(f"{{{index[name]}{bang}:{spec or ''}}}")
    line = _compile(args, "".join(parts).format)
    try:
        line(_Sample(), 200, 5, 0.001)  # type: ignore[arg-type]
        line(_SampleAbsent(), 200, 5, 0.001)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{fmt!r} cannot be rendered: {exc}") from None
    return line


def compile_json() -> Line:
    """A function that renders one JSON object with every atom (absent ones are null)."""
    items = [f"{name!r}: {expression}" for name, (expression, _, _) in ATOMS.items()]
    encode = json.JSONEncoder(separators=(",", ":")).encode
    return _compile(["{" + ", ".join(items) + "}"], encode)


class AccessLog:
    """One line per request, in --access-log-format or as JSON (--access-log-json)."""

    __slots__ = ("line", "logger")

    def __init__(self, fmt: str = DEFAULT_ACCESS_FORMAT, as_json: bool = False) -> None:
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self.line = compile_json() if as_json else compile_access_format(fmt)

    def __call__(self, stream: Stream, status: int, sent: int, duration: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        # No args: the line is not %-formatted again, so '%' in it is safe.
        self.logger.info(self.line(stream.head, status, sent, duration))


# -- request ids ----------------------------------------------------------------------------

_INCOMING_ID = re.compile(rb"[A-Za-z0-9._:-]{1,200}")


def assign_request_id(head: RequestHead) -> None:
    """Keep a well-formed X-Request-ID (1-200 of ``[A-Za-z0-9._:-]``) or make one.

    The head's X-Request-ID header is left holding exactly that id, so WSGI apps find
    it in HTTP_X_REQUEST_ID and ASGI apps in the headers too.
    """
    found = [value for name, value in head.headers if name == b"x-request-id"]
    if len(found) == 1 and _INCOMING_ID.fullmatch(found[0]) is not None:
        head.request_id = found[0].decode("ascii")
        return
    rid = os.urandom(16).hex()
    head.request_id = rid
    if found:
        head.headers = [(n, v) for n, v in head.headers if n != b"x-request-id"]
    head.headers.append((b"x-request-id", rid.encode("ascii")))


def with_request_ids(handler: Callable[[Any], None]) -> Callable[[Any], None]:
    """A handler that gives each stream's head a request id first (--request-id)."""

    def with_request_id(stream: Any) -> None:
        assign_request_id(stream.head)
        handler(stream)

    return with_request_id


# -- setup ----------------------------------------------------------------------------------


class LogConfigError(LoadError):
    """The --log-config file could not be read or applied (the message names the option)."""


def read_log_config(path: str) -> dict[str, Any]:
    """A logging.config.dictConfig dict from a .json or .toml file; ValueError if unusable."""
    if path.endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
    elif path.endswith(".toml"):
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - exercised on Python 3.10 only
            import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path} is not valid TOML: {exc}") from None
    else:
        raise ValueError(f"{path}: expected a .json or .toml file")
    if not isinstance(data, dict) or data.get("version") != 1:
        raise ValueError(f"{path}: not a logging dictConfig (it needs version = 1)")
    return data


def configure_logging(config: Config) -> None:
    """Set up threshold's loggers from the config (the root logger is left alone).

    With --log-config the file decides everything. Otherwise the server's own log
    goes to stderr or --error-log-file, and the access log to stderr or
    --access-log-file; both are logging.FileHandlers, which SIGUSR1 reopens.
    """
    logging.addLevelName(TRACE, "TRACE")
    if config.log_config:
        try:
            settings = read_log_config(config.log_config)
            # Keep threshold's module-level loggers alive unless the file says otherwise.
            settings.setdefault("disable_existing_loggers", False)
            logging.config.dictConfig(settings)
        except (ValueError, TypeError, AttributeError, ImportError) as exc:
            cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
            raise LogConfigError(f"log_config: {exc}{cause}") from None
        return
    level = config.log_level
    numeric = TRACE if level == "trace" else getattr(logging, level.upper())
    formatter = logging.Formatter(LINE_FORMAT, DATE_FORMAT)
    error_handler = _handler(config.error_log_file)
    error_handler.setFormatter(formatter)
    access_handler = _handler(config.access_log_file)
    if config.access_log_json:
        access_handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        access_handler.setFormatter(formatter)
    for name, handler in (("threshold", error_handler), (ACCESS_LOGGER, access_handler)):
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_threshold", False)]:
            logger.removeHandler(old)
            old.close()
        handler._threshold = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    for name in ("threshold", ERROR_LOGGER, ACCESS_LOGGER):
        logging.getLogger(name).setLevel(numeric)


def _handler(path: str) -> logging.Handler:
    if path:
        return logging.FileHandler(path, encoding="utf-8")
    return logging.StreamHandler(sys.stderr)


def reopen_log_files() -> None:
    """SIGUSR1: reopen the file of every logging.FileHandler of every logger.

    For log rotation (rename the file, then send USR1): handlers of --access-log-file,
    --error-log-file and of a --log-config file start writing to a new file of the
    same name.
    """
    loggers = [logging.getLogger()]
    loggers += [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    seen: set[int] = set()
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler) and id(handler) not in seen:
                seen.add(id(handler))
                handler.acquire()
                try:
                    if handler.stream is not None:
                        handler.stream.close()
                    handler.stream = handler._open()
                finally:
                    handler.release()
    logging.getLogger(ERROR_LOGGER).info("Reopened %d log file(s)", len(seen))
