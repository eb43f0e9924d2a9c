"""What the benchmark runs: the scenarios (workloads) and the servers with their commands.

A scenario has a *kind* that says which load generator drives it and which servers
apply: ``hello`` and ``http1`` (wrk, HTTP/1.1), ``h2`` (h2load, h2c with prior
knowledge) and ``ws`` (``bench/wsload.py``). A server lists the kinds it takes part in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from apps import FILE_SIZE, HELLO, KIB10, MIB1, file_content

BENCH = Path(__file__).resolve().parent
VENV_BIN = BENCH / ".venv" / "bin"
HOST = "127.0.0.1"

ECHO_BODY = b"e" * 10240
WS_MESSAGE_SIZE = 32
H2_STREAMS = 10


@dataclass(frozen=True)
class Scenario:
    name: str
    interface: str  # "asgi" or "wsgi"
    kind: str  # "hello", "http1", "h2" or "ws"
    app: str  # attribute of bench.apps
    title: str
    method: str = "GET"
    path: str = "/"
    body: bytes = b""
    expected: bytes = HELLO
    # Connection counts; empty means the run's list (1 64 256; quick: 64).
    connections: tuple[int, ...] = ()
    # HTTP/1.0 requests without keep-alive: every request pays a new connection.
    http10: bool = False
    # Servers that get another app than ``app`` (server name -> attribute of bench.apps).
    app_overrides: tuple[tuple[str, str], ...] = ()
    quick: bool = False

    @property
    def unit(self) -> str:
        return "msg/s" if self.kind == "ws" else "req/s"

    def app_for(self, server: str) -> str:
        return dict(self.app_overrides).get(server, self.app)

    def target(self, server: str) -> str:
        return f"bench.apps:{self.app_for(server)}"


_C64 = (64,)
_PATHSEND = (("threshold", "asgi_file_pathsend"), ("granian", "asgi_file_pathsend"))

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("hello-asgi", "asgi", "hello", "asgi_app", "ASGI hello-world (13 B)", quick=True),
    Scenario("hello-wsgi", "wsgi", "hello", "wsgi_app", "WSGI hello-world (13 B)", quick=True),
    Scenario("10k-asgi", "asgi", "http1", "asgi_10k", "ASGI GET 10 KiB", expected=KIB10,
             connections=_C64),
    Scenario("10k-wsgi", "wsgi", "http1", "wsgi_10k", "WSGI GET 10 KiB", expected=KIB10,
             connections=_C64),
    Scenario("echo-asgi", "asgi", "http1", "asgi_echo", "ASGI POST echo 10 KiB (streamed)",
             "POST", "/echo", ECHO_BODY, ECHO_BODY, _C64),
    Scenario("echo-wsgi", "wsgi", "http1", "wsgi_echo", "WSGI POST echo 10 KiB (streamed)",
             "POST", "/echo", ECHO_BODY, ECHO_BODY, _C64),
    Scenario("1m-asgi", "asgi", "http1", "asgi_1m", "ASGI GET 1 MiB", expected=MIB1,
             connections=_C64),
    Scenario("1m-wsgi", "wsgi", "http1", "wsgi_1m", "WSGI GET 1 MiB", expected=MIB1,
             connections=_C64),
    Scenario("close-asgi", "asgi", "http1", "asgi_app",
             "ASGI hello-world, HTTP/1.0 without keep-alive", connections=_C64, http10=True),
    Scenario("close-wsgi", "wsgi", "http1", "wsgi_app",
             "WSGI hello-world, HTTP/1.0 without keep-alive", connections=_C64, http10=True),
    Scenario("file-asgi", "asgi", "http1", "asgi_file_chunked",
             f"ASGI file {FILE_SIZE // 1024} KiB (pathsend where supported)",
             expected=file_content(), connections=_C64, app_overrides=_PATHSEND),
    Scenario("file-wsgi", "wsgi", "http1", "wsgi_file",
             f"WSGI file {FILE_SIZE // 1024} KiB (wsgi.file_wrapper)",
             expected=file_content(), connections=_C64),
    Scenario("h2-asgi", "asgi", "h2", "asgi_app",
             "ASGI hello-world over h2c",
             connections=(16,)),
    Scenario("ws-asgi", "asgi", "ws", "asgi_ws_echo",
             f"ASGI WebSocket echo, {WS_MESSAGE_SIZE} B messages", connections=(16,)),
)  # fmt: skip


Argv = Callable[[str, int], list[str]]


def _bin(name: str) -> str:
    return str(VENV_BIN / name)


ALL_HTTP = frozenset({"hello", "http1", "idle", "startup"})


@dataclass(frozen=True)
class Server:
    name: str  # label in tables, e.g. "uvicorn"; unique per interface and kind
    interface: str
    argv: Argv
    kinds: frozenset[str] = ALL_HTTP
    note: str = ""
    full_only: bool = False
    # Options for the idle-connection probe, so no idle timeout closes connections
    # while RSS is read; inserted just before the app argument.
    idle_args: tuple[str, ...] = field(default=())
    # A directory (relative to the repo) put first on PYTHONPATH: "build/compiled" runs
    # the mypyc-compiled build of Threshold (`make compiled`) instead of the pure source.
    pythonpath: str = ""

    def command(self, app: str, port: int, extra: tuple[str, ...] = ()) -> list[str]:
        argv = self.argv(app, port)
        if extra:
            at = argv.index(app)
            argv[at:at] = extra
        return argv


SERVERS: tuple[Server, ...] = (
    Server(
        "threshold",
        "asgi",
        lambda app, port: [
            _bin("python"), "-m", "threshold", app, "--bind", f"{HOST}:{port}",
            "--interface", "asgi3", "--no-access-log", "--log-level", "warning",
        ],
        kinds=ALL_HTTP | {"h2", "ws"},
        note="mypyc-compiled (THRESHOLD_COMPILE=1); h2c by prior knowledge on the same port",
        idle_args=("--keep-alive-timeout", "120"),
        pythonpath="build/compiled",
    ),
    Server(
        "threshold pure",
        "asgi",
        lambda app, port: [
            _bin("threshold"), app, "--bind", f"{HOST}:{port}", "--interface", "asgi3",
            "--no-access-log", "--log-level", "warning",
        ],
        kinds=ALL_HTTP | {"h2", "ws"},
        note="the same source, not compiled (the default install)",
        idle_args=("--keep-alive-timeout", "120"),
    ),
    Server(
        "uvicorn",
        "asgi",
        lambda app, port: [
            _bin("uvicorn"), app, "--host", HOST, "--port", str(port), "--loop", "uvloop",
            "--http", "httptools", "--no-access-log", "--log-level", "warning",
        ],
        kinds=ALL_HTTP | {"ws"},
        note="httptools + uvloop; WebSocket: the default, websockets-sansio",
        idle_args=("--timeout-keep-alive", "120"),
    ),
    Server(
        "uvicorn ws=websockets",
        "asgi",
        lambda app, port: [
            _bin("uvicorn"), app, "--host", HOST, "--port", str(port), "--loop", "uvloop",
            "--http", "httptools", "--ws", "websockets", "--no-access-log",
            "--log-level", "warning",
        ],
        kinds=frozenset({"ws"}),
        note="--ws websockets: the older implementation, not the default in this uvicorn",
    ),
    Server(
        "granian",
        "asgi",
        lambda app, port: [
            _bin("granian"), "--interface", "asgi", "--host", HOST, "--port", str(port),
            "--workers", "1", "--runtime-threads", "1", "--loop", "uvloop", "--http", "1",
            "--no-access-log", "--log-level", "warning", app,
        ],
        kinds=ALL_HTTP | {"ws"},
        note="uvloop, HTTP/1 only, 1 runtime thread",
    ),
    Server(
        "granian",
        "asgi",
        lambda app, port: [
            _bin("granian"), "--interface", "asgi", "--host", HOST, "--port", str(port),
            "--workers", "1", "--runtime-threads", "1", "--loop", "uvloop", "--http", "2",
            "--no-access-log", "--log-level", "warning", app,
        ],
        kinds=frozenset({"h2"}),
        note="for h2c: --http 2",
    ),
    Server(
        "hypercorn",
        "asgi",
        lambda app, port: [
            _bin("hypercorn"), "--bind", f"{HOST}:{port}", "--workers", "1",
            "--worker-class", "uvloop", "--log-level", "warning", app,
        ],
        kinds=ALL_HTTP | {"h2"},
        full_only=True,
        note="uvloop worker; h2c by prior knowledge",
        idle_args=("--keep-alive", "120"),
    ),
    Server(
        "threshold",
        "wsgi",
        lambda app, port: [
            _bin("python"), "-m", "threshold", app, "--bind", f"{HOST}:{port}",
            "--interface", "wsgi", "--threads", "8", "--no-access-log", "--log-level", "warning",
        ],
        note="8 threads; mypyc-compiled (THRESHOLD_COMPILE=1)",
        idle_args=("--keep-alive-timeout", "120"),
        pythonpath="build/compiled",
    ),
    Server(
        "threshold pure",
        "wsgi",
        lambda app, port: [
            _bin("threshold"), app, "--bind", f"{HOST}:{port}", "--interface", "wsgi",
            "--threads", "8", "--no-access-log", "--log-level", "warning",
        ],
        note="8 threads; the same source, not compiled (the default install)",
        idle_args=("--keep-alive-timeout", "120"),
    ),
    Server(
        "threshold inline",
        "wsgi",
        lambda app, port: [
            _bin("python"), "-m", "threshold", app, "--bind", f"{HOST}:{port}",
            "--interface", "wsgi", "--wsgi-inline", "--no-access-log", "--log-level", "warning",
        ],
        kinds=frozenset({"hello", "http1"}),
        note="compiled; opt-in: app on the loop thread (--wsgi-inline), for apps that never block",
        pythonpath="build/compiled",
    ),
    Server(
        "gunicorn",
        "wsgi",
        lambda app, port: [
            _bin("gunicorn"), "-k", "gthread", "--threads", "8", "-w", "1",
            "--bind", f"{HOST}:{port}", "--log-level", "warning", "--graceful-timeout", "5",
            app,
        ],
        note="gthread, 8 threads",
        idle_args=("--keep-alive", "120", "--worker-connections", "2000"),
    ),
    Server(
        "granian",
        "wsgi",
        lambda app, port: [
            _bin("granian"), "--interface", "wsgi", "--host", HOST, "--port", str(port),
            "--workers", "1", "--runtime-threads", "1", "--blocking-threads", "8",
            "--http", "1", "--no-access-log", "--log-level", "warning", app,
        ],
        # granian's WSGI default is backpressure/2 = 512 blocking threads; pin to 8 like
        # the others so the comparison is of servers, not of pool sizes.
        note="8 blocking threads, HTTP/1 only; no wsgi.file_wrapper (the app iterates)",
    ),
    Server(
        "waitress",
        "wsgi",
        lambda app, port: [
            _bin("waitress-serve"), f"--listen={HOST}:{port}", "--threads=8",
            # The default limit of 100 connections would make -c256 measure the limit.
            "--connection-limit=1024", app,
        ],
        note="8 threads, connection limit 1024",
        idle_args=("--channel-timeout=120",),
    ),
    Server(
        "uvicorn",
        "wsgi",
        lambda app, port: [
            _bin("uvicorn"), app, "--interface", "wsgi", "--host", HOST, "--port", str(port),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning",
        ],
        kinds=frozenset({"hello"}),
        full_only=True,
        note="--interface wsgi (deprecated in uvicorn), httptools + uvloop; hello-world only",
    ),
)  # fmt: skip


def servers_for(scenario: Scenario, servers: tuple[Server, ...] | list[Server]) -> list[Server]:
    return [s for s in servers if s.interface == scenario.interface and scenario.kind in s.kinds]


def hello_scenario(interface: str) -> Scenario:
    return next(s for s in SCENARIOS if s.kind == "hello" and s.interface == interface)


__all__ = [
    "FILE_SIZE",
    "H2_STREAMS",
    "HOST",
    "SCENARIOS",
    "SERVERS",
    "VENV_BIN",
    "WS_MESSAGE_SIZE",
    "Scenario",
    "Server",
    "file_content",
    "hello_scenario",
    "servers_for",
]
