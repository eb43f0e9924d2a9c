"""Config: every option of Threshold, declared once.

Each option is one dataclass field whose metadata (see :func:`option`) carries
its help text, CLI flag and validation. The CLI (``cli.py``), the
``THRESHOLD_*`` environment variables and the TOML loader are all derived from
these fields, so they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from threshold.observe.logs import DEFAULT_ACCESS_FORMAT, compile_access_format

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = ["Config", "ConfigError", "OptionSpec", "options"]

ENV_PREFIX = "THRESHOLD_"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


class ConfigError(ValueError):
    """A bad option name or value; the message names the option."""


@dataclass(frozen=True)
class OptionSpec:
    """What the loaders need to know about one option beyond its type."""

    help: str
    flags: tuple[str, ...] = ()  # extra short flags, e.g. ("-b",)
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    multiple: bool = False  # repeatable flag / list value
    positional: bool = False
    metavar: str | None = None
    cli: bool = True  # exposed as a CLI flag / env var / TOML key


def option(
    default: Any,
    help: str,
    *,
    flags: tuple[str, ...] = (),
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    multiple: bool = False,
    positional: bool = False,
    metavar: str | None = None,
    cli: bool = True,
) -> Any:
    spec = OptionSpec(help, flags, choices, minimum, multiple, positional, metavar, cli)
    if isinstance(default, list):
        frozen = tuple(default)
        return field(default_factory=lambda: list(frozen), metadata={"spec": spec})
    return field(default=default, metadata={"spec": spec})


@dataclass(frozen=True)
class Config:
    """All options of one Threshold server. Build with ``Config(**options)``."""

    app: Any = option(
        None,
        "The application: an import string MODULE:ATTR (ATTR may be dotted; MODULE alone "
        "means MODULE:app, then MODULE:application) or, from Python, the app object.",
        positional=True,
        metavar="APP",
    )
    factory: bool = option(
        False, "Treat APP as a zero-argument callable that returns the application."
    )
    app_dir: str = option(".", "Directory put first on sys.path before importing APP.")
    interface: str = option(
        "auto",
        "Application interface; auto detects ASGI 3, ASGI 2 or WSGI from the app object.",
        choices=("auto", "asgi3", "asgi2", "wsgi"),
    )
    bind: list[str] = option(
        ["127.0.0.1:8000"],
        "Address to listen on: HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N. Repeatable.",
        flags=("-b",),
        multiple=True,
        metavar="ADDRESS",
    )
    backlog: int = option(
        2048, "Maximum number of pending connections (listen backlog).", minimum=1
    )
    loop: str = option(
        "auto",
        "Event loop: uvloop when importable (auto), or the standard asyncio loop.",
        choices=("auto", "asyncio", "uvloop"),
    )
    lifespan: str = option(
        "auto",
        "ASGI lifespan protocol: on (startup failure stops the server), off, or auto "
        "(used when the app supports it).",
        choices=("auto", "on", "off"),
    )
    proxy_headers: bool = option(
        True,
        "Believe the Forwarded and X-Forwarded-(For|Proto|Host|Port|Prefix) headers from the "
        "peers in --forwarded-allow-ips (client address, scheme, host, root path).",
    )
    forwarded_allow_ips: list[str] = option(
        ["127.0.0.1", "::1"],
        "Trusted proxies: IPs and CIDRs, * for any, unix for unix-socket peers. Comma-separated "
        "or repeated.",
        multiple=True,
        metavar="IPS",
    )
    proxy_protocol: str = option(
        "off",
        "Expect a HAProxy PROXY protocol header (v1, v2, or auto for either) on every "
        "connection, from --forwarded-allow-ips peers only; it works in front of TLS too.",
        choices=("off", "v1", "v2", "auto"),
    )
    root_path: str = option(
        "", "Path prefix the app is mounted at (ASGI root_path, WSGI SCRIPT_NAME)."
    )
    threads: int = option(
        8, "Size of the thread pool that runs WSGI applications.", minimum=1, metavar="N"
    )
    wsgi_inline: bool = option(
        False,
        "Call the WSGI app on the event-loop thread, without the thread pool: only for apps "
        "that never block (no I/O, no sleep, no locks); a blocking app stalls every "
        "connection of the worker (see docs/wsgi.md).",
    )
    timeout_graceful_shutdown: float = option(
        30.0,
        "Seconds to let in-flight requests finish after SIGTERM/SIGINT before closing them.",
        minimum=0,
        metavar="SECONDS",
    )
    keep_alive_timeout: float = option(
        5.0,
        "Seconds an idle keep-alive connection is kept open between requests.",
        minimum=0,
        metavar="SECONDS",
    )
    limit_request_line: int = option(
        8190,
        "Maximum length in bytes of the request target (URL); longer ones get 414.",
        minimum=64,
        metavar="BYTES",
    )
    limit_request_fields: int = option(
        100, "Maximum number of request header fields; more get 431.", minimum=1, metavar="N"
    )
    limit_request_field_size: int = option(
        8190,
        "Maximum size in bytes of one request header field (name + value); larger get 431.",
        minimum=64,
        metavar="BYTES",
    )
    max_body_size: int = option(
        100 * 1024 * 1024,
        "Maximum request body in bytes (0 = unlimited): 413 for a larger Content-Length; "
        "a chunked body crossing it is cut off (the app sees a disconnect) and answered 413.",
        minimum=0,
        metavar="BYTES",
    )
    header_timeout: float = option(
        10.0,
        "Seconds to receive a whole request head, from its first byte (slowloris); then 408.",
        minimum=0.1,
        metavar="SECONDS",
    )
    body_timeout: float = option(
        30.0,
        "Seconds without request body progress while the app waits for it; then the "
        "connection is closed and the app sees a disconnect.",
        minimum=0.1,
        metavar="SECONDS",
    )
    send_timeout: float = option(
        30.0,
        "Seconds a client may leave our writes unread (send buffer full) before it is dropped.",
        minimum=0.1,
        metavar="SECONDS",
    )
    timeout_request: float = option(
        0.0,
        "Per-request deadline in seconds (0 = off): 504 (or a close if the response started); "
        "ASGI tasks are cancelled, WSGI threads are abandoned (logged).",
        minimum=0,
        metavar="SECONDS",
    )
    max_connections: int = option(
        10000,
        "Open connections per worker; connections beyond it are answered 503 and closed.",
        minimum=1,
        metavar="N",
    )
    max_pending_wsgi: int = option(
        1000,
        "Requests that may wait for a free WSGI thread; beyond it requests get 503.",
        minimum=1,
        metavar="N",
    )
    http: str = option(
        "auto",
        "HTTP versions: auto (HTTP/1.1 and HTTP/2: h2 by ALPN on TLS, h2c by prior knowledge "
        "or Upgrade on cleartext), 1 (HTTP/1.1 only) or 2 (HTTP/2 only).",
        choices=("auto", "1", "2"),
    )
    certfile: str = option("", "TLS certificate chain (PEM); enables HTTPS.", metavar="FILE")
    keyfile: str = option("", "TLS private key (PEM); defaults to the certfile.", metavar="FILE")
    keyfile_password: str = option("", "Password of an encrypted keyfile.", metavar="PASSWORD")
    ca_certs: str = option(
        "", "CA certificates (PEM) to verify client certificates against.", metavar="FILE"
    )
    cert_reqs: str = option(
        "none",
        "Client certificates: none, optional (verified when sent) or required.",
        choices=("none", "optional", "required"),
    )
    ciphers: str = option(
        "", "OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults)."
    )
    h2_max_concurrent_streams: int = option(
        100,
        "HTTP/2 streams a client may open at once; more are refused (REFUSED_STREAM).",
        minimum=1,
        metavar="N",
    )
    h2_initial_window_size: int = option(
        262144,
        "HTTP/2 flow-control window per stream in bytes: request body buffered per stream.",
        minimum=1024,
        metavar="BYTES",
    )
    h2_max_frame_size: int = option(
        16384, "Largest HTTP/2 frame payload the server accepts.", minimum=16384, metavar="BYTES"
    )
    h2_max_header_list_size: int = option(
        65536,
        "Largest decoded HTTP/2 header list (HPACK bomb bound); larger requests are refused.",
        minimum=1024,
        metavar="BYTES",
    )
    h2_max_resets: int = option(
        200,
        "Client stream resets per 10 seconds before the connection is closed with "
        "ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487).",
        minimum=1,
        metavar="N",
    )
    h2_max_control_frames: int = option(
        1000,
        "PING, SETTINGS, WINDOW_UPDATE, PRIORITY and empty DATA frames per second before "
        "the connection is closed with ENHANCE_YOUR_CALM (flood defence).",
        minimum=10,
        metavar="N",
    )
    ws_max_message_size: int = option(
        16 * 1024 * 1024,
        "Largest WebSocket message in bytes, after decompression; larger ones close with 1009.",
        minimum=1,
        metavar="BYTES",
    )
    ws_max_queue: int = option(
        32,
        "WebSocket messages received but not yet read by the app before reading pauses.",
        minimum=1,
        metavar="N",
    )
    ws_ping_interval: float = option(
        20.0,
        "Seconds of WebSocket silence before the server pings the client (0 = never).",
        minimum=0,
        metavar="SECONDS",
    )
    ws_ping_timeout: float = option(
        20.0,
        "Seconds to wait for the pong before a WebSocket peer is dropped as dead.",
        minimum=0.1,
        metavar="SECONDS",
    )
    ws_close_timeout: float = option(
        10.0,
        "Seconds to wait for the peer's close frame after the server sent one.",
        minimum=0.1,
        metavar="SECONDS",
    )
    ws_per_message_deflate: bool = option(
        True, "Offer WebSocket compression (permessage-deflate, RFC 7692)."
    )
    workers: int = option(
        1,
        "Number of worker processes; 0 means one per CPU. More than 1 (or --reload, "
        "--max-requests) runs a master process that supervises them.",
        flags=("-w",),
        minimum=0,
        metavar="N",
    )
    reuse_port: bool = option(
        False,
        "Each worker binds its own socket with SO_REUSEPORT (kernel load balancing); "
        "needs explicit ports.",
    )
    preload: bool = option(
        False, "Import the app in the master before starting workers (HUP re-executes the master)."
    )
    worker_timeout: float = option(
        30.0,
        "Seconds a worker's event loop may stay silent before the master kills and replaces it.",
        minimum=1,
        metavar="SECONDS",
    )
    max_requests: int = option(
        0,
        "Restart a worker gracefully after about this many requests (0 = never).",
        minimum=0,
        metavar="N",
    )
    max_requests_jitter: int = option(
        0,
        "Add a random 0..J to --max-requests per worker so workers do not restart together.",
        minimum=0,
        metavar="J",
    )
    boot_failures: int = option(
        5,
        "Stop the master after this many workers in a row die while booting.",
        minimum=1,
        metavar="N",
    )
    pid: str = option(
        "", "Write the master's (or single process') PID to this file.", metavar="FILE"
    )
    user: str = option("", "Switch to this user after binding (when started as root).")
    group: str = option("", "Switch to this group after binding (when started as root).")
    umask: str = option(
        "", "Process umask, in octal (e.g. 022); empty leaves it unchanged.", metavar="OCTAL"
    )
    unix_socket_mode: str = option(
        "",
        "Permissions of unix sockets created by --bind unix:PATH, in octal (e.g. 660).",
        metavar="OCTAL",
    )
    reload: bool = option(
        False, "Development: restart the worker when watched files change (uses watchfiles)."
    )
    reload_dir: list[str] = option(
        [],
        "Directory to watch with --reload (default: --app-dir). Repeatable.",
        multiple=True,
        metavar="DIR",
    )
    reload_include: list[str] = option(
        ["*.py"],
        "Glob of file names that trigger a reload. Repeatable.",
        multiple=True,
        metavar="GLOB",
    )
    reload_exclude: list[str] = option(
        [".*", "*.pyc", "__pycache__"],
        "Glob of file or directory names to ignore with --reload. Repeatable.",
        multiple=True,
        metavar="GLOB",
    )
    metrics_bind: str = option(
        "",
        "HOST:PORT of a separate listener serving Prometheus /metrics (summed over all "
        "workers), /healthz and /readyz; off when empty.",
        metavar="HOST:PORT",
    )
    server_header: bool = option(True, "Send a 'server: threshold' response header.")
    date_header: bool = option(True, "Send a 'date' response header.")
    log_level: str = option("info", "Logging level.", choices=LOG_LEVELS)
    access_log: bool = option(
        True, "Log one line per request: client, method, path, status, bytes, duration."
    )
    access_log_format: str = option(
        DEFAULT_ACCESS_FORMAT,
        "Access log line: text with {atom} fields such as {client}, {method}, {path}, "
        "{status}, {duration_ms}, {user_agent}, {request_id} (all in docs/observability.md).",
        metavar="FORMAT",
    )
    access_log_json: bool = option(
        False, "Write each access log line as one JSON object with every atom."
    )
    access_log_file: str = option(
        "", "Write the access log to this file instead of stderr; USR1 reopens it.", metavar="FILE"
    )
    error_log_file: str = option(
        "",
        "Write the server's own log to this file instead of stderr; USR1 reopens it.",
        metavar="FILE",
    )
    log_config: str = option(
        "",
        "Configure logging from a logging.config.dictConfig file (.json or .toml) instead; "
        "Threshold then installs no log handlers of its own.",
        metavar="FILE",
    )
    request_id: bool = option(
        False,
        "Give each HTTP request an id (a well-formed incoming X-Request-ID, else a new one): "
        "passed to the app, echoed as x-request-id, logged as {request_id}.",
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            spec: OptionSpec = f.metadata["spec"]
            value = getattr(self, f.name)
            if f.name == "app":
                continue
            _check(f.name, str(f.type), spec, value)
        if not self.bind:
            raise ConfigError("bind: at least one address is required")
        if (self.keyfile or self.ca_certs) and not self.certfile:
            raise ConfigError("certfile: required when keyfile or ca_certs is given")
        if self.cert_reqs != "none" and not self.ca_certs:
            raise ConfigError("ca_certs: required when cert_reqs is optional or required")
        for entry in (
            part.strip() for item in self.forwarded_allow_ips for part in item.split(",")
        ):
            if entry and entry not in ("*", "unix"):
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ConfigError(
                        f"forwarded_allow_ips: {entry!r} is not an IP address or network"
                    ) from None
        if self.metrics_bind:
            _, sep, port = self.metrics_bind.rpartition(":")
            if not sep or not port.isdigit() or int(port) > 65535:
                raise ConfigError(f"metrics_bind: {self.metrics_bind!r} is not HOST:PORT")
        try:
            compile_access_format(self.access_log_format)
        except ValueError as exc:
            raise ConfigError(f"access_log_format: {exc}") from None
        for name in ("umask", "unix_socket_mode"):
            text = getattr(self, name)
            if text:
                try:
                    int(text, 8)
                except ValueError:
                    raise ConfigError(f"{name}: {text!r} is not an octal number") from None

    # -- loaders, all derived from the fields -------------------------------

    @classmethod
    def load(
        cls,
        cli: Mapping[str, Any] | None = None,
        *,
        config_file: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Config:
        """Merge a TOML file, then THRESHOLD_* variables, then CLI values (last wins)."""
        values: dict[str, Any] = {}
        if config_file:
            values.update(load_toml(config_file))
        values.update(from_environ(os.environ if environ is None else environ))
        values.update(cli or {})
        return cls(**values)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def options() -> list[tuple[str, str, OptionSpec, Any]]:
    """(name, type string, spec, default) for every option, in declaration order."""
    result = []
    for f in dataclasses.fields(Config):
        factory: Any = f.default_factory
        default = f.default if f.default is not dataclasses.MISSING else factory()
        result.append((f.name, str(f.type), f.metadata["spec"], default))
    return result


def _kind(type_str: str) -> str:
    if type_str.startswith("list"):
        return "list"
    return type_str


def _check(name: str, type_str: str, spec: OptionSpec, value: Any) -> None:
    kind = _kind(type_str)
    checks: dict[str, Callable[[Any], bool]] = {
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
        "list": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    }
    if not checks[kind](value):
        raise ConfigError(f"{name}: expected {type_str}, got {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(spec.choices)}")
    if spec.minimum is not None and value < spec.minimum:
        raise ConfigError(f"{name}: {value!r} is below the minimum {spec.minimum:g}")


def _field_types() -> dict[str, str]:
    return {name: type_str for name, type_str, _, _ in options()}


def parse_text(name: str, text: str) -> Any:
    """Turn the text of an env var or CLI flag into the option's typed value."""
    types = _field_types()
    if name not in types:
        raise ConfigError(f"{name}: unknown option")
    kind = _kind(types[name])
    parsers: dict[str, Callable[[str], Any]] = {
        "bool": _parse_bool,
        "int": int,
        "float": float,
        "str": str,
        "list": lambda s: [part.strip() for part in s.split(",") if part.strip()],
        "Any": str,
    }
    try:
        return parsers[kind](text)
    except ValueError:
        raise ConfigError(f"{name}: cannot read {text!r} as {types[name]}") from None


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """THRESHOLD_<OPTION> variables; an unknown THRESHOLD_* name is an error."""
    names = _field_types()
    values: dict[str, Any] = {}
    for key, text in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in names:
            raise ConfigError(f"{key}: unknown option (environment variable)")
        values[name] = parse_text(name, text)
    return values


def load_toml(path: str) -> dict[str, Any]:
    """Options from a TOML file: top-level keys, or a [threshold] table."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
    if isinstance(data.get("threshold"), dict):
        data = data["threshold"]
    names = _field_types()
    values: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in names:
            raise ConfigError(f"{key}: unknown option (in {path})")
        if _kind(names[name]) == "float" and isinstance(value, int):
            value = float(value)
        if _kind(names[name]) == "list" and isinstance(value, str):
            value = [value]
        values[name] = value
    return values
