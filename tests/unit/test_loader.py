"""Loader: import strings, --factory, --app-dir and interface detection."""

from __future__ import annotations

import asyncio
import functools
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.apps import ops_apps
from threshold.loader import (
    LoadError,
    asgi2_to_asgi3,
    detect_interface,
    import_from_string,
    load_app,
)


@pytest.fixture(autouse=True)
def restore_import_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The loader puts --app-dir on sys.path; undo that and forget modules made here."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("opsmod_"):
            del sys.modules[name]


def make_module(directory: Path, source: str) -> str:
    """Write a uniquely named module into ``directory``; return its name."""
    name = f"opsmod_{uuid.uuid4().hex[:12]}"
    (directory / f"{name}.py").write_text(source)
    return name


# -- import strings ----------------------------------------------------------------------


def test_module_colon_attr() -> None:
    assert import_from_string("tests.apps.ops_apps:asgi3_function") is ops_apps.asgi3_function
    assert import_from_string("tests.apps.ops_apps:Asgi2Class") is ops_apps.Asgi2Class


def test_dotted_attr() -> None:
    assert import_from_string("tests.apps.ops_apps:holder.inner.app") is ops_apps.asgi3_object


def test_module_alone_means_app() -> None:
    assert import_from_string("tests.apps.ops_apps") is ops_apps.app


def test_module_alone_falls_back_to_application(tmp_path: Path) -> None:
    name = make_module(tmp_path, "def application(environ, start_response):\n    return []\n")
    app = import_from_string(name, str(tmp_path))
    assert app.__name__ == "application"


def test_module_alone_prefers_app_over_application(tmp_path: Path) -> None:
    name = make_module(tmp_path, "app = 'the app'\napplication = 'the application'\n")
    assert import_from_string(name, str(tmp_path)) == "the app"


def test_app_dir_goes_first_on_sys_path(tmp_path: Path) -> None:
    name = make_module(tmp_path, "app = 'from app dir'\n")
    with pytest.raises(LoadError):
        import_from_string(f"{name}:app")  # not importable without --app-dir
    assert import_from_string(f"{name}:app", str(tmp_path)) == "from app dir"
    assert sys.path[0] == str(tmp_path)


def test_app_dir_package(tmp_path: Path) -> None:
    package = tmp_path / f"opsmod_pkg_{uuid.uuid4().hex[:8]}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "web.py").write_text("class Box:\n    app = 'nested'\n")
    assert import_from_string(f"{package.name}.web:Box.app", str(tmp_path)) == "nested"


# -- import errors: one clear line -------------------------------------------------------


def one_line(exc: LoadError) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


def test_missing_module() -> None:
    with pytest.raises(LoadError) as info:
        import_from_string("opsmod_does_not_exist:app")
    assert one_line(info.value) == (
        "cannot import module 'opsmod_does_not_exist' (from 'opsmod_does_not_exist:app')"
    )


def test_missing_submodule_of_existing_package() -> None:
    with pytest.raises(LoadError) as info:
        import_from_string("tests.apps.opsmod_nothing_here:app")
    assert "cannot import module 'tests.apps.opsmod_nothing_here'" in one_line(info.value)


def test_module_whose_own_import_fails(tmp_path: Path) -> None:
    name = make_module(tmp_path, "import opsmod_missing_dependency\napp = 1\n")
    with pytest.raises(LoadError) as info:
        import_from_string(name, str(tmp_path))
    text = one_line(info.value)
    assert text.startswith(f"error while importing {name!r}:")
    assert "opsmod_missing_dependency" in text


def test_module_raising_at_import(tmp_path: Path) -> None:
    name = make_module(tmp_path, "raise RuntimeError('config missing')\n")
    with pytest.raises(LoadError) as info:
        import_from_string(f"{name}:app", str(tmp_path))
    assert "RuntimeError('config missing')" in one_line(info.value)


def test_module_with_syntax_error(tmp_path: Path) -> None:
    name = make_module(tmp_path, "def broken(:\n    pass\n")
    with pytest.raises(LoadError) as info:
        import_from_string(f"{name}:app", str(tmp_path))
    assert "SyntaxError" in one_line(info.value)


def test_missing_attribute() -> None:
    with pytest.raises(LoadError) as info:
        import_from_string("tests.apps.ops_apps:nothing")
    assert one_line(info.value) == "module 'tests.apps.ops_apps' has no attribute 'nothing'"


def test_missing_dotted_attribute() -> None:
    with pytest.raises(LoadError) as info:
        import_from_string("tests.apps.ops_apps:holder.inner.missing")
    assert "'holder.inner.missing'" in one_line(info.value)


def test_module_alone_without_app_or_application(tmp_path: Path) -> None:
    name = make_module(tmp_path, "something_else = 1\n")
    with pytest.raises(LoadError) as info:
        import_from_string(name, str(tmp_path))
    assert one_line(info.value) == f"module {name!r} has no attribute 'app' or 'application'"


def test_empty_module_name() -> None:
    with pytest.raises(LoadError, match="expected MODULE:ATTR"):
        import_from_string(":app")


# -- load_app and --factory ---------------------------------------------------------------


def test_load_app_returns_objects_as_given() -> None:
    assert load_app(ops_apps.wsgi_function) is ops_apps.wsgi_function
    assert load_app("tests.apps.ops_apps:asgi3_object") is ops_apps.asgi3_object


def test_factory_is_called() -> None:
    app = load_app("tests.apps.ops_apps:create_app", factory=True)
    assert app.__name__ == "made"
    assert detect_interface(app) == "asgi3"
    # Without --factory the factory itself is the app (a zero-parameter callable).
    assert load_app("tests.apps.ops_apps:create_app") is ops_apps.create_app


def test_factory_failure_is_one_line() -> None:
    with pytest.raises(LoadError) as info:
        load_app("tests.apps.ops_apps:failing_factory", factory=True)
    assert one_line(info.value) == (
        "--factory: calling the app factory failed: RuntimeError('factory exploded')"
    )


def test_factory_not_callable() -> None:
    with pytest.raises(LoadError, match="--factory: the app attribute is not callable"):
        load_app("tests.apps.ops_apps:not_callable", factory=True)


def test_app_not_callable() -> None:
    with pytest.raises(LoadError) as info:
        load_app("tests.apps.ops_apps:not_callable")
    assert one_line(info.value) == "the app 42 is not callable"


def test_factory_through_app_dir(tmp_path: Path) -> None:
    name = make_module(
        tmp_path,
        "def make():\n"
        "    def application(environ, start_response):\n"
        "        return []\n"
        "    return application\n",
    )
    app = load_app(f"{name}:make", factory=True, app_dir=str(tmp_path))
    assert detect_interface(app) == "wsgi"


# -- detection ------------------------------------------------------------------------------


class SyncCallObject:
    """An instance whose sync __call__(scope) returns an ASGI 2 instance."""

    def __call__(self, scope: dict[str, Any]) -> Any:
        return ops_apps.asgi2_function(scope)


class WsgiObject:
    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return ops_apps.wsgi_function(environ, start_response)


class Asgi3Methods:
    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        await ops_apps.asgi3_function(scope, receive, send)

    def wsgi(self, environ: Any, start_response: Any) -> list[bytes]:
        return ops_apps.wsgi_function(environ, start_response)


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        (ops_apps.asgi3_function, "asgi3"),
        (ops_apps.asgi3_object, "asgi3"),
        (Asgi3Methods().handle, "asgi3"),
        (functools.partial(ops_apps.asgi3_function), "asgi3"),
        (ops_apps.Asgi2Class, "asgi2"),
        (ops_apps.asgi2_function, "asgi2"),
        (SyncCallObject(), "asgi2"),
        (ops_apps.wsgi_function, "wsgi"),
        (WsgiObject(), "wsgi"),
        (Asgi3Methods().wsgi, "wsgi"),
    ],
    ids=[
        "async-function",
        "object-async-call",
        "bound-async-method",
        "partial-async",
        "asgi2-class",
        "one-param-function",
        "object-sync-one-param-call",
        "wsgi-function",
        "wsgi-object",
        "wsgi-bound-method",
    ],
)
def test_detect_interface(app: Any, expected: str) -> None:
    assert detect_interface(app) == expected


def test_detect_frameworks() -> None:
    import flask
    import starlette.applications
    from fastapi import FastAPI

    assert detect_interface(flask.Flask("ops")) == "wsgi"
    assert detect_interface(starlette.applications.Starlette()) == "asgi3"
    assert detect_interface(FastAPI()) == "asgi3"


def test_asgi2_wrapper_calls_class_then_instance() -> None:
    sent: list[dict[str, Any]] = []
    bodies = [{"type": "http.request", "body": b"hi", "more_body": False}]

    async def receive() -> dict[str, Any]:
        return bodies.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    app = asgi2_to_asgi3(ops_apps.Asgi2Class)
    assert detect_interface(app) == "asgi3"
    scope = {"type": "http", "method": "POST", "path": "/x"}
    asyncio.run(app(scope, receive, send))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1]["body"] == b"asgi2 class POST /x hi"


def test_missing_dependency_whose_name_prefixes_the_module(tmp_path: Path) -> None:
    # "opsmod_abc" importing a missing "opsmod" is a broken app, not a missing app.
    name = make_module(tmp_path, "import opsmod\napp = 1\n")
    with pytest.raises(LoadError) as info:
        import_from_string(f"{name}:app", str(tmp_path))
    text = one_line(info.value)
    assert text.startswith(f"error while importing {name!r}:"), text
    assert "No module named 'opsmod'" in text
