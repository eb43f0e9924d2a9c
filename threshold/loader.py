"""Find the application: import strings, --factory, and interface detection."""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

INTERFACES = ("asgi3", "asgi2", "wsgi")


class LoadError(Exception):
    """The app could not be imported or its interface is unusable (one clear line)."""


def import_from_string(spec: str, app_dir: str = ".") -> Any:
    """Import MODULE:ATTR (ATTR may be dotted); MODULE alone tries app, then application."""
    module_name, _, attrs = spec.partition(":")
    if not module_name:
        raise LoadError(f"invalid app {spec!r}: expected MODULE:ATTR")
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the module itself (or a parent package) missing means "no such app";
        # "foobar" failing to import a dependency "foo" is a broken app.
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise LoadError(f"cannot import module {module_name!r} (from {spec!r})") from None
        raise LoadError(f"error while importing {module_name!r}: {exc!r}") from exc
    except Exception as exc:
        raise LoadError(f"error while importing {module_name!r}: {exc!r}") from exc
    candidates = [attrs] if attrs else ["app", "application"]
    for candidate in candidates:
        obj: Any = module
        try:
            for part in candidate.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return obj
    wanted = " or ".join(repr(c) for c in candidates)
    raise LoadError(f"module {module_name!r} has no attribute {wanted}")


def load_app(app: Any, *, factory: bool = False, app_dir: str = ".") -> Any:
    """Resolve APP (import string or object) and call it if it is a factory."""
    if isinstance(app, str):
        app = import_from_string(app, app_dir)
    if factory:
        if not callable(app):
            raise LoadError("--factory: the app attribute is not callable")
        try:
            app = app()
        except Exception as exc:
            raise LoadError(f"--factory: calling the app factory failed: {exc!r}") from exc
    if not callable(app):
        raise LoadError(f"the app {app!r} is not callable")
    return app


def detect_interface(app: Any) -> str:
    """asgi3: a coroutine function, an object with an async __call__, or any callable of
    3 params (scope, receive, send).

    asgi2: a class, or a callable taking one parameter (scope). Otherwise wsgi.
    """
    if inspect.isclass(app):
        if inspect.iscoroutinefunction(getattr(app, "__await__", None)):
            return "asgi3"
        return "asgi2"
    call: Any = app
    if not (inspect.isfunction(app) or inspect.ismethod(app)):
        call = getattr(app, "__call__", app)  # noqa: B004
    if inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(app):
        return "asgi3"
    try:
        params = [
            p
            for p in inspect.signature(call).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return "wsgi"
    if len(params) == 1:
        return "asgi2"
    if len(params) == 3:
        return "asgi3"  # (scope, receive, send) returning an awaitable; WSGI takes two
    return "wsgi"


def asgi2_to_asgi3(app: Any) -> Callable[..., Any]:
    async def asgi3(scope: Any, receive: Any, send: Any) -> None:
        instance = app(scope)
        await instance(receive, send)

    return asgi3
