"""Views with the same routes as tests/apps/flask_app.py, plus async ones for ASGI."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import reverse

GATE_TIMEOUT = 10.0

_gates: dict[str, threading.Event] = {}
_gates_lock = threading.Lock()
_agates: dict[str, asyncio.Event] = {}  # used only on the ASGI server's event loop


def _gate(token: str) -> threading.Event:
    with _gates_lock:
        return _gates.setdefault(token, threading.Event())


def item(request: HttpRequest, item_id: int) -> HttpResponse:
    return JsonResponse(
        {
            "item_id": item_id,
            "q": request.GET.get("q"),
            "tags": request.GET.getlist("tag"),
            "path": request.path,
        }
    )


def echo(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponse(status=405)
    return JsonResponse(
        {"json": json.loads(request.body), "content_type": request.headers.get("content-type")}
    )


def stream(request: HttpRequest, token: str) -> HttpResponse:
    """Sync generator: for WSGI (Django's ASGI handler drains sync iterators first)."""
    gate = _gate(token)

    def generate() -> Iterator[str]:
        yield "first\n"
        released = gate.wait(GATE_TIMEOUT)
        for i in range(3):
            yield f"chunk {i}\n"
        yield "released\n" if released else "gate timed out\n"

    return StreamingHttpResponse(generate(), content_type="text/plain")


def release(request: HttpRequest, token: str) -> HttpResponse:
    _gate(token).set()
    return HttpResponse("ok")


async def astream(request: HttpRequest, token: str) -> HttpResponse:
    gate = _agates.setdefault(token, asyncio.Event())

    async def generate() -> AsyncIterator[str]:
        yield "first\n"
        try:
            await asyncio.wait_for(gate.wait(), GATE_TIMEOUT)
            released = True
        except asyncio.TimeoutError:
            released = False
        for i in range(3):
            yield f"chunk {i}\n"
        yield "released\n" if released else "gate timed out\n"

    return StreamingHttpResponse(generate(), content_type="text/plain")


async def arelease(request: HttpRequest, token: str) -> HttpResponse:
    _agates.setdefault(token, asyncio.Event()).set()
    return HttpResponse("ok")


def error(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom from django")


def headers(request: HttpRequest) -> HttpResponse:
    response = JsonResponse(
        {
            "x_custom": request.headers.get("x-custom"),
            "session": request.COOKIES.get("session"),
            "reply": request.COOKIES.get("reply"),
        }
    )
    response["X-Reply"] = "reply-" + request.headers.get("x-custom", "")
    response.set_cookie("reply", "r1")
    response.set_cookie("other", "o2", httponly=True)
    return response


def url(request: HttpRequest) -> HttpResponse:
    item_path = reverse("item", args=[7])
    return JsonResponse(
        {
            "item_path": item_path,
            "item_url": request.build_absolute_uri(item_path),
            "full_url": request.build_absolute_uri(),
            "root": request.META.get("SCRIPT_NAME", ""),
        }
    )


async def async_view(request: HttpRequest) -> HttpResponse:
    await asyncio.sleep(0)
    return JsonResponse(
        {
            "q": request.GET.get("q"),
            # Under ASGI an async view runs on the server's loop, not in a worker thread.
            "on_main_thread": threading.current_thread() is threading.main_thread(),
        }
    )
