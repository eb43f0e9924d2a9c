"""The import directions of DESIGN.md, checked by parsing every module of threshold/."""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "threshold"


@dataclass(frozen=True)
class Import:
    """One import statement."""

    targets: tuple[str, ...]  # absolute dotted names: modules, or names imported from one
    line: int
    typing_only: bool  # under `if TYPE_CHECKING:`

    def reaches(self, prefix: str) -> bool:
        return any(under(target, prefix) for target in self.targets)


@dataclass(frozen=True)
class Rule:
    text: str
    applies: Callable[[str], bool]  # to the importing module
    forbids: Callable[[Import], bool]


def under(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def in_package(prefix: str) -> Callable[[str], bool]:
    return lambda module: under(module, prefix)


RULES = [
    Rule(
        "protocols never import interfaces",
        in_package("threshold.protocols"),
        lambda imp: imp.reaches("threshold.interfaces"),
    ),
    Rule(
        "interfaces never import protocols",
        in_package("threshold.interfaces"),
        lambda imp: imp.reaches("threshold.protocols"),
    ),
    Rule(
        "nothing imports threshold.cli except threshold/__main__.py",
        lambda module: module not in ("threshold.__main__", "threshold.cli"),
        lambda imp: imp.reaches("threshold.cli"),
    ),
    Rule(
        "stream.py imports nothing from threshold except for typing",
        lambda module: module == "threshold.stream",
        lambda imp: imp.reaches("threshold") and not imp.typing_only,
    ),
    Rule(
        "the supervisor never imports protocols",
        lambda module: module == "threshold.supervisor",
        lambda imp: imp.reaches("threshold.protocols"),
    ),
]


def module_name(path: Path) -> tuple[str, bool]:
    """Dotted module name of a file under threshold/, and whether it is a package."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def imports_of(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every import in ``source`` (at any depth, relative ones resolved)."""
    tree = ast.parse(source)
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                typing_only.update(id(n) for n in ast.walk(stmt))
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base_parts = parts[: len(parts) - (node.level - 1)]
                if node.module:
                    base_parts.append(node.module)
                base = ".".join(base_parts)
            else:
                base = node.module or ""
            # `from threshold import cli` imports the submodule threshold.cli.
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.append(Import(tuple(targets), node.lineno, id(node) in typing_only))
    return found


def violations(module: str, imports: list[Import]) -> list[str]:
    return [
        f"{module}:{imp.line} imports {', '.join(imp.targets)} ({rule.text})"
        for rule in RULES
        if rule.applies(module)
        for imp in imports
        if rule.forbids(imp)
    ]


def package_modules() -> dict[str, list[Import]]:
    result = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name, is_package = module_name(path)
        result[name] = imports_of(path.read_text(encoding="utf-8"), name, is_package)
    return result


def test_threshold_keeps_its_import_directions() -> None:
    modules = package_modules()
    # The scan sees the layers it is about (so the check is not vacuously true).
    for expected in (
        "threshold.stream",
        "threshold.protocols.http1",
        "threshold.interfaces.asgi",
        "threshold.interfaces.wsgi",
        "threshold.cli",
        "threshold.__main__",
    ):
        assert expected in modules, expected
    assert any(i.reaches("threshold.cli") for i in modules["threshold.__main__"])
    found = [v for name, imports in modules.items() for v in violations(name, imports)]
    assert found == [], "\n".join(found)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("threshold.protocols.h9", "from threshold.interfaces.asgi import X\n", 1),
        ("threshold.protocols.h9", "from ..interfaces import wsgi\n", 1),
        ("threshold.protocols.h9", "import threshold.interfaces\n", 1),
        (
            "threshold.protocols.h9",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from threshold.interfaces.asgi import X\n",
            1,
        ),
        ("threshold.protocols.h9", "from threshold.stream import Stream\n", 0),
        ("threshold.interfaces.x", "from threshold import protocols\n", 1),
        ("threshold.interfaces.x", "def f():\n    from .. import protocols\n", 1),
        ("threshold.interfaces.x", "from threshold.stream import Stream\n", 0),
        ("threshold.server", "def f():\n    import threshold.cli\n", 1),
        ("threshold.server", "from threshold import cli\n", 1),
        ("threshold.reload", "from .cli import main\n", 1),
        ("threshold.__main__", "from threshold.cli import main\n", 0),
        ("threshold.stream", "from threshold.config import Config\n", 1),
        ("threshold.stream", "from . import net\n", 1),
        (
            "threshold.stream",
            "import typing\nif typing.TYPE_CHECKING:\n    from threshold.config import Config\n",
            0,
        ),
        ("threshold.stream", "import asyncio\n", 0),
        ("threshold.supervisor", "from threshold.protocols.http1 import Http1Connection\n", 1),
        ("threshold.supervisor", "from threshold.server import Server\n", 0),
    ],
)
def test_the_checker_sees_violations(module: str, source: str, expected: int) -> None:
    found = violations(module, imports_of(source, module))
    assert len(found) == expected, found


def test_relative_imports_resolve_from_packages() -> None:
    [imp] = imports_of("from .asgi import X\n", "threshold.interfaces", is_package=True)
    assert imp.targets == ("threshold.interfaces.asgi", "threshold.interfaces.asgi.X")
    [imp] = imports_of("from ..stream import S\n", "threshold.protocols.http1")
    assert imp.targets[0] == "threshold.stream"
