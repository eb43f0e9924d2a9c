"""Logging setup (called by the server at run time, never at import) and the access log."""

from __future__ import annotations

import logging
import sys

from threshold.stream import Stream

TRACE = 5

ERROR_LOGGER = "threshold.error"
ACCESS_LOGGER = "threshold.access"


def configure_logging(level: str) -> None:
    """Send threshold's loggers to stderr at ``level`` (the root logger is left alone)."""
    logging.addLevelName(TRACE, "TRACE")
    numeric = TRACE if level == "trace" else getattr(logging, level.upper())
    formatter = logging.Formatter(
        "%(asctime)s [%(process)d] %(levelname)s: %(message)s", "%Y-%m-%d %H:%M:%S"
    )
    for name in ("threshold", ERROR_LOGGER, ACCESS_LOGGER):
        logger = logging.getLogger(name)
        logger.setLevel(numeric)
        if name == "threshold":
            if not any(getattr(h, "_threshold", False) for h in logger.handlers):
                handler = logging.StreamHandler(sys.stderr)
                handler.setFormatter(formatter)
                handler._threshold = True  # type: ignore[attr-defined]
                logger.addHandler(handler)
            logger.propagate = False


class AccessLog:
    """One line per request: client, method, path, status, bytes, duration."""

    __slots__ = ("logger",)

    def __init__(self) -> None:
        self.logger = logging.getLogger(ACCESS_LOGGER)

    def __call__(self, stream: Stream, status: int, sent: int, duration: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        head = stream.head
        client = f"{head.client[0]}:{head.client[1]}" if head.client else "-"
        path = head.raw_path.decode("latin-1")
        if head.query_string:
            path += "?" + head.query_string.decode("latin-1")
        # Escape control characters so a request cannot forge log lines.
        path = path.encode("unicode_escape").decode("ascii")
        self.logger.info(
            '%s "%s %s HTTP/%s" %d %d %.1fms',
            client,
            head.method,
            path,
            head.http_version,
            status,
            sent,
            duration * 1000,
        )


def reopen_log_files() -> None:
    """SIGUSR1: reopen the files of every logging.FileHandler on threshold's loggers.

    For log rotation: handlers configured by the user (e.g. with dictConfig) that
    write to files start writing to a new file of the same name.
    """
    for name in ("", "threshold", ERROR_LOGGER, ACCESS_LOGGER):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.FileHandler):
                handler.acquire()
                try:
                    if handler.stream is not None:
                        handler.stream.close()
                    handler.stream = handler._open()
                finally:
                    handler.release()
