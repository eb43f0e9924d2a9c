"""PEP 517 backend: setuptools, plus mypy in the build requirements when we compile.

With ``THRESHOLD_COMPILE=1`` (on CPython with a C compiler) the hot modules are
compiled with mypyc from the same typed source. Otherwise, the default, the package is
pure Python and mypy is not needed to build. Compiling is opt-in because bench/ does
not show it paying end to end (docs/benchmarks.md: the two builds are within the run's
noise); ``THRESHOLD_NO_COMPILE=1`` forces the pure build even when asked to compile.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import sysconfig
from typing import Any

from setuptools.build_meta import *  # noqa: F403 - the backend's other hooks, unchanged

# The modules compiled with mypyc; every other module stays pure Python.
HOT_MODULES = [
    "threshold/stream.py",
    "threshold/context.py",
    "threshold/protocols/http1.py",
    "threshold/protocols/h2engine.py",
    "threshold/protocols/http2.py",
    "threshold/protocols/websocket.py",
    "threshold/interfaces/asgi.py",
    "threshold/interfaces/wsgi.py",
]
# mypyc's output depends on its version: pin the one the suite ran against. The
# runtime packages are there so mypy sees their types, as it does in the dev venv.
COMPILE_REQUIRES = [
    "mypy==2.4.1",
    "hpack>=4.1.0",
    "httptools>=0.6.1",
    "mypy_extensions>=1.0",
    "websockets>=14.0",
]


def should_compile() -> bool:
    if os.environ.get("THRESHOLD_COMPILE", "") in ("", "0"):
        return False
    if os.environ.get("THRESHOLD_NO_COMPILE", "") not in ("", "0"):
        return False
    if sys.implementation.name != "cpython":
        return False
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    return bool(cc) and shutil.which(cc[0]) is not None


# Not setuptools' own hooks: those run setup.py, which imports mypyc, not there yet.
def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return COMPILE_REQUIRES if should_compile() else []


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return get_requires_for_build_wheel(config_settings)
