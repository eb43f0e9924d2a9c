"""Threshold: a fast Python application server for ASGI and WSGI apps."""

from threshold.config import Config

__version__ = "0.1.0"

__all__ = ["Config", "__version__", "run"]


def run(app: object, **options: object) -> int:
    """Serve ``app`` (an app object or a "module:attr" string); returns the exit code."""
    from threshold.supervisor import run as _run

    return _run(app, **options)
