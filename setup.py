"""Compiles the hot modules with mypyc when build_backend.should_compile() says so.

All metadata is in pyproject.toml; this file only adds the extension modules.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_backend import HOT_MODULES, should_compile

# Metadata and sdists need no compiling (pip asks for metadata before it builds).
if should_compile() and sys.argv[1:2] not in (["egg_info"], ["dist_info"], ["sdist"]):
    from mypyc.build import mypycify

    setup(ext_modules=mypycify(HOT_MODULES, opt_level="3", group_name="threshold"))
else:
    setup()
