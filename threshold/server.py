"""One worker: listeners, the event loop, the connection registry, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import threading
from collections import Counter
from typing import Any

from threshold import forwarded
from threshold.config import Config
from threshold.context import AccessLog as AccessLogHook
from threshold.context import ServerContext
from threshold.forwarded import TrustedProxies
from threshold.interfaces.asgi import REQUEST_TASK_NAME, AsgiHandler
from threshold.interfaces.lifespan import Lifespan, LifespanFailure
from threshold.interfaces.wsgi import WsgiHandler
from threshold.loader import LoadError, asgi2_to_asgi3, detect_interface, load_app
from threshold.net import BindError, Listener, bind_listeners, create_ssl_context
from threshold.observe.logs import AccessLog, reopen_log_files, with_request_ids
from threshold.observe.metrics import WorkerMetrics
from threshold.protocols.http1 import Http1Connection
from threshold.proxied import ProxiedAcceptor

logger = logging.getLogger("threshold.error")

EXIT_OK = 0
EXIT_LOAD_FAILED = 2  # the app could not be imported (same as a usage error)
EXIT_STARTUP_FAILED = 3  # lifespan startup failed, or the sockets could not be bound
SHUTDOWN_SETTLE = 0.05  # seconds between closing the listeners and closing idle connections


class WorkerHooks:
    """How a supervised worker reports to its master (see supervisor.py).

    Called on the event loop: ``ready`` once listening, ``tick`` once a second
    (the heartbeat: a blocked loop stops it) with the number of requests served.
    """

    multiprocess = True

    def ready(self) -> None:
        pass

    def tick(self, requests: int) -> None:
        pass


class Server:
    """Serve one app on the configured listeners until asked to stop."""

    def __init__(
        self,
        config: Config,
        listeners: list[Listener] | None = None,
        hooks: WorkerHooks | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.config = config
        self.hooks = hooks
        self.metrics = metrics
        self.interface = ""  # asgi3 / asgi2 / wsgi once the app is loaded
        self.ready = False  # listening and not draining (for /readyz)
        self._given_listeners = listeners
        self.listeners: list[Listener] = []
        self.started = threading.Event()  # set once listening (for embedding and tests)
        self.exit_code = EXIT_OK
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._force = False

    # -- control from other threads / signal handlers ---------------------------

    def request_shutdown(self) -> None:
        """Thread-safe: begin a graceful shutdown."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)

    def _on_quit(self) -> None:
        """SIGQUIT: stop now, without the graceful wait."""
        assert self._stop is not None
        self._force = True
        self._stop.set()

    def _on_signal(self) -> None:
        assert self._stop is not None
        # A second signal skips the graceful wait; not in a supervised worker, where
        # Ctrl-C or systemd reach it besides its master (which says "now" by SIGQUIT).
        if self._stop.is_set() and self.hooks is None:
            self._force = True
            logger.info("Second signal: closing connections now")
        self._stop.set()

    @property
    def urls(self) -> list[str]:
        scheme = "https" if self.config.certfile else "http"
        return [listener.url(scheme) for listener in self.listeners]

    # -- the worker ---------------------------------------------------------------

    async def serve(self, install_signals: bool = False) -> None:
        config = self.config
        hooks = self.hooks
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop = asyncio.Event()
        # Before the app starts (lifespan, WSGI threads): a bad certificate stops us cleanly.
        try:
            ssl_context = create_ssl_context(config)
        except BindError as exc:
            logger.error("%s", exc)
            self.exit_code = EXIT_STARTUP_FAILED
            return

        app = load_app(config.app, factory=config.factory, app_dir=config.app_dir)
        interface = config.interface
        if interface == "auto":
            interface = detect_interface(app)
        if interface == "asgi2":
            app = asgi2_to_asgi3(app)
        logger.debug("Serving %r as %s", config.app, interface)
        self.interface = interface

        lifespan: Lifespan | None = None
        state: dict[str, Any] | None = None
        wsgi: WsgiHandler | None = None
        if interface == "wsgi":
            multiprocess = hooks is not None and hooks.multiprocess
            wsgi = WsgiHandler(
                app,
                loop,
                config.threads,
                config.root_path,
                multiprocess,
                config.max_pending_wsgi,
                config.wsgi_inline,
            )
            handler: Any = wsgi
        else:
            if config.lifespan != "off":
                lifespan = Lifespan(app, config.lifespan)
                try:
                    await lifespan.startup()
                except LifespanFailure as exc:
                    logger.error("Application startup failed: %s", exc)
                    self.exit_code = EXIT_STARTUP_FAILED
                    return
                if lifespan.supported:
                    state = lifespan.state
            handler = AsgiHandler(app, loop, config.root_path, state)

        access_log = None
        if config.access_log:
            access_log = AccessLog(config.access_log_format, config.access_log_json)
        ws_handler: Any = handler.websocket if isinstance(handler, AsgiHandler) else None
        if config.request_id:
            handler = with_request_ids(handler)  # HTTP requests only, not WebSockets
        if config.proxy_headers:
            trusted = TrustedProxies(config.forwarded_allow_ips)
            handler = forwarded.wrap(handler, trusted)
            if ws_handler is not None:
                ws_handler = forwarded.wrap(ws_handler, trusted)
        metrics = self.metrics
        threaded = wsgi is not None and not config.wsgi_inline  # responses from pool threads
        completed: AccessLogHook | None = access_log
        if metrics is not None:
            metrics.start(interface)
            if threaded:
                metrics.lock = threading.Lock()  # WSGI threads complete responses too
            completed = _observed(metrics, access_log)
        ctx = ServerContext(config, handler, completed, ws_handler)
        ctx.threaded = threaded
        ctx.metrics = metrics
        if ssl_context is not None:
            with open(config.certfile) as f:
                ctx.tls_server_cert = f.read()
            loop.set_exception_handler(_quiet_tls_errors)
        scheme = "https" if ssl_context is not None else "http"
        servers: list[asyncio.AbstractServer] = []
        accepting: list[asyncio.Task[None]] = []  # PROXY protocol accept loops
        try:
            try:
                self.listeners = self._given_listeners or bind_listeners(config)
            except BindError as exc:
                logger.error("%s", exc)
                self.exit_code = EXIT_STARTUP_FAILED
                return
            # Before the first 'Listening on': a TERM from then on is a graceful stop.
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, self._on_signal)
                loop.add_signal_handler(signal.SIGQUIT, self._on_quit)
                loop.add_signal_handler(signal.SIGUSR1, reopen_log_files)
            acceptor = None
            if config.proxy_protocol != "off":
                acceptor = ProxiedAcceptor(
                    loop,
                    config.proxy_protocol,
                    TrustedProxies(config.forwarded_allow_ips),
                    config.header_timeout,
                    lambda sock, header: loop.connect_accepted_socket(
                        lambda: Http1Connection(ctx, loop, header), sock, ssl=ssl_context
                    ),
                )
            for listener in self.listeners:
                if acceptor is not None:
                    accepting.append(loop.create_task(acceptor.serve(listener.sock)))
                else:
                    servers.append(
                        await loop.create_server(
                            lambda: Http1Connection(ctx, loop),
                            sock=listener.sock,
                            backlog=config.backlog,
                            ssl=ssl_context,
                        )
                    )
                logger.info("Listening on %s (%s)", listener.url(scheme), interface)
            self.ready = True
            ticker = loop.create_task(self._tick(ctx))
            self.started.set()
            if hooks is not None:
                hooks.ready()
            await self._stop.wait()

            logger.info("Shutting down")
            self.ready = False
            if metrics is not None:
                metrics.publish(ctx.requests, {}, False)
            for aserver in servers:
                aserver.close()
            for task in accepting:
                task.cancel()
            if acceptor is not None:
                for task in list(acceptor.tasks):
                    task.cancel()
            # Connections accepted just before the stop may not be set up (connection_made
            # is a callback away) or read yet: give the loop a moment to do both, so that
            # their first request is served rather than cut off.
            await asyncio.sleep(0)
            if ctx.connections:
                await asyncio.sleep(SHUTDOWN_SETTLE)
            ctx.shutting_down = True
            for conn in list(ctx.connections):
                conn.shutdown()
            await self._drain(ctx)
            ticker.cancel()
        finally:
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1):
                    loop.remove_signal_handler(sig)
            for aserver in servers:
                aserver.close()
            if self._given_listeners is None:
                for listener in self.listeners:
                    listener.close()
            if wsgi is not None:
                await loop.run_in_executor(None, wsgi.close, 1.0)
            if lifespan is not None and lifespan.supported:
                await lifespan.shutdown()
            self.started.set()
        logger.info("Stopped")

    async def _tick(self, ctx: ServerContext) -> None:
        hooks = self.hooks
        metrics = self.metrics
        while True:
            if hooks is not None:
                hooks.tick(ctx.requests)
            if metrics is not None:
                kinds = Counter(_KINDS.get(type(c).__name__, "http1") for c in ctx.connections)
                metrics.publish(ctx.requests, kinds, self.ready)
            await asyncio.sleep(1.0)
            ctx.refresh()
            now = ctx.now
            for conn in list(ctx.connections):
                conn.on_tick(now)

    async def _drain(self, ctx: ServerContext) -> None:
        """Wait for in-flight requests, up to the graceful timeout; then close the rest."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout_graceful_shutdown
        while ctx.connections and not self._force and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if ctx.connections:
            logger.warning("Closing %d connection(s) still busy at shutdown", len(ctx.connections))
            for conn in list(ctx.connections):
                conn.abort()
        # Request tasks still running (their clients are gone now) are cancelled.
        leftovers = [t for t in asyncio.all_tasks() if t.get_name() == REQUEST_TASK_NAME]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=1.0)


_KINDS = {"Http1Connection": "http1", "Http2Connection": "http2", "WebSocketSession": "websocket"}


def _observed(metrics: WorkerMetrics, access_log: AccessLogHook | None) -> AccessLogHook:
    """The response-complete hook with metrics first, then the access log if on."""

    def completed(stream: Any, status: int, sent: int, duration: float) -> None:
        head = stream.head
        metrics.observe(
            head.method, head.http_version, status, sent, getattr(stream, "_received", 0), duration
        )
        if access_log is not None:
            access_log(stream, status, sent, duration)

    return completed


def _quiet_tls_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Failed TLS handshakes are the client's problem: debug, not an error log."""
    exc = context.get("exception")
    if isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)):
        logger.debug("TLS: %s (%s)", context.get("message"), exc)
        return
    loop.default_exception_handler(context)


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise LoadError("--loop uvloop: uvloop is not installed") from None
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


def run_server(server: Server) -> int:
    """Run one server on a new event loop in this thread; return its exit code."""
    loop = new_event_loop(server.config.loop)
    try:
        loop.run_until_complete(
            server.serve(install_signals=threading.current_thread() is threading.main_thread())
        )
    except LoadError as exc:
        if server.hooks is None:
            raise
        logger.error("%s", exc)  # one clear line; the master decides what follows
        return EXIT_LOAD_FAILED
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
    return server.exit_code
