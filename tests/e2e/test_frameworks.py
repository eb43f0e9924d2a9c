"""Real frameworks (Flask, Django WSGI and ASGI, Starlette, FastAPI) served by Threshold.

Each app is started as `python -m threshold MODULE:ATTR` (the import-string path) and
checked with httpx. One server per framework and interface is shared by a module: the
`server` fixture detects the interface (--interface auto), the `prefixed` one names it
and mounts the app under --root-path /prefix.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Running, serve_process

TIMEOUT = httpx.Timeout(5.0)
DJANGO_ENV = {"DJANGO_SETTINGS_MODULE": "tests.apps.djproject.settings"}


@dataclass(frozen=True, eq=False)  # compared and hashed by identity (fixture params)
class Target:
    name: str
    app: str
    interface: str  # what --interface auto must detect
    env: dict[str, str] = field(default_factory=dict)
    stream: str = "stream"  # route prefixes of the gated streaming response
    release: str = "release"
    error_log: str = "Exception in ASGI application"

    def __str__(self) -> str:
        return self.name


FLASK = Target("flask", "tests.apps.flask_app:app", "wsgi", error_log="Exception in WSGI")
DJANGO_WSGI = Target(
    "django-wsgi",
    "tests.apps.djproject.wsgi:application",
    "wsgi",
    DJANGO_ENV,
    error_log="Exception in WSGI",
)
DJANGO_ASGI = Target(
    "django-asgi",
    "tests.apps.djproject.asgi:application",
    "asgi3",
    DJANGO_ENV,
    # Django's ASGI handler drains sync iterators before sending; stream an async one.
    stream="astream",
    release="arelease",
)
STARLETTE = Target("starlette", "tests.apps.starlette_app:app", "asgi3")
FASTAPI = Target("fastapi", "tests.apps.fastapi_app:app", "asgi3")

TARGETS = [FLASK, DJANGO_WSGI, DJANGO_ASGI, STARLETTE, FASTAPI]
LIFESPAN_TARGETS = [STARLETTE, FASTAPI]


@dataclass
class Served:
    target: Target
    running: Running

    @property
    def url(self) -> str:
        return self.running.url

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=TIMEOUT, verify=False, **kwargs)


def wait_for_log(running: Running, text: str, timeout: float = 5.0) -> str:
    """The server's stderr (read by a thread) once it contains ``text``."""
    deadline = time.monotonic() + timeout
    while True:
        log = "".join(running.log)
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.01)


@pytest.fixture(scope="module", params=TARGETS, ids=str)
def server(request: pytest.FixtureRequest) -> Iterator[Served]:
    target: Target = request.param
    with serve_process(target.app, "--interface", "auto", env=target.env) as running:
        yield Served(target, running)


@pytest.fixture(scope="module", params=TARGETS, ids=str)
def prefixed(request: pytest.FixtureRequest) -> Iterator[Served]:
    target: Target = request.param
    args = (target.app, "--interface", target.interface, "--root-path", "/prefix")
    with serve_process(*args, env=target.env) as running:
        yield Served(target, running)


def test_interface_detected(server: Served) -> None:
    listening = next(line for line in server.running.log if "Listening on" in line)
    assert listening.rstrip().endswith(f"({server.target.interface})")


def test_path_params_and_query_string(server: Served) -> None:
    with server.client() as client:
        response = client.get("/items/42", params=[("q", "a b&c/é"), ("tag", "x"), ("tag", "y")])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {
        "item_id": 42,
        "q": "a b&c/é",
        "tags": ["x", "y"],
        "path": "/items/42",
    }


def test_json_post_echo(server: Served) -> None:
    # Large enough to arrive in several reads, so the framework reads a streamed body.
    payload = {"name": "thréshold", "nested": {"list": [1, 2.5, None, True]}, "big": "z" * 300_000}
    with server.client() as client:
        response = client.post("/echo", json=payload)
    assert response.status_code == 200
    assert response.json() == {"json": payload, "content_type": "application/json"}


def test_not_found(server: Served) -> None:
    with server.client() as client:
        missing = client.get("/no/such/route")
        bad_param = client.get("/items/not-a-number")
        after = client.get("/items/1")
    assert missing.status_code == 404
    # FastAPI validates the path parameter (422); the others do not match the route.
    assert bad_param.status_code == (422 if server.target is FASTAPI else 404)
    assert after.status_code == 200


def test_streaming_response_is_not_buffered(server: Served) -> None:
    target = server.target
    token = uuid.uuid4().hex
    with (
        server.client() as client,
        client.stream("GET", f"/{target.stream}/{token}") as response,
    ):
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
        chunks = response.iter_raw()
        # The app waits for /release before it produces more: the first block must
        # already be on the wire (PEP 3333: a server must not delay a block).
        first = next(chunks)
        assert first == b"first\n"
        released = httpx.get(
            f"{server.url}/{target.release}/{token}", timeout=TIMEOUT, verify=False
        )
        assert released.status_code == 200
        rest = b"".join(chunks)
    assert rest == b"chunk 0\nchunk 1\nchunk 2\nreleased\n"


def test_app_exception_is_500_and_server_keeps_serving(server: Served) -> None:
    with server.client() as client:
        response = client.get("/error")
        assert response.status_code == 500
        log = wait_for_log(server.running, f"boom from {server.target.name.split('-')[0]}")
        assert server.target.error_log in log
        for _ in range(3):
            assert client.get("/items/5").json()["item_id"] == 5
    assert server.running.process is not None
    assert server.running.process.poll() is None


def test_headers_and_cookies_round_trip(server: Served) -> None:
    with server.client(cookies={"session": "s1"}) as client:
        first = client.get("/headers", headers={"X-Custom": "hello"})
        assert first.status_code == 200
        assert first.json() == {"x_custom": "hello", "session": "s1", "reply": None}
        assert first.headers["x-reply"] == "reply-hello"
        set_cookies = first.headers.get_list("set-cookie")
        assert len(set_cookies) == 2
        assert any(c.startswith("reply=r1") for c in set_cookies)
        assert any(c.startswith("other=o2") and "httponly" in c.lower() for c in set_cookies)
        # The cookie jar sends the set cookies back (all in one Cookie header).
        second = client.get("/headers", headers={"X-Custom": "again"})
    assert second.json() == {"x_custom": "again", "session": "s1", "reply": "r1"}
    assert second.headers["x-reply"] == "reply-again"


def test_url_building_without_root_path(server: Served) -> None:
    with server.client() as client:
        data = client.get("/url").json()
    assert data == {
        "item_path": "/items/7",
        "item_url": server.url + "/items/7",
        "full_url": server.url + "/url",
        "root": "",
    }


@pytest.mark.parametrize("path", ["/url", "/prefix/url"])
def test_url_building_under_root_path(prefixed: Served, path: str) -> None:
    """A proxy may strip the mount prefix or pass it on; the app builds prefixed URLs."""
    with prefixed.client() as client:
        response = client.get(path + "?x=1")
        item = client.get(path.replace("/url", "/items/3"))
    assert response.status_code == 200
    assert response.json() == {
        "item_path": "/prefix/items/7",
        "item_url": prefixed.url + "/prefix/items/7",
        "full_url": prefixed.url + "/prefix/url?x=1",
        "root": "/prefix",
    }
    assert item.status_code == 200
    assert item.json()["item_id"] == 3


def test_explicit_interface_serves(prefixed: Served) -> None:
    listening = next(line for line in prefixed.running.log if "Listening on" in line)
    assert listening.rstrip().endswith(f"({prefixed.target.interface})")
    with prefixed.client() as client:
        assert client.post("/echo", json={"a": 1}).json()["json"] == {"a": 1}


@pytest.mark.parametrize("server", LIFESPAN_TARGETS, indirect=True, ids=str)
def test_lifespan_state_is_copied_into_each_request(server: Served) -> None:
    with server.client() as client:
        first = client.get("/state").json()
        second = client.get("/state").json()
    assert first == {"started": "yes", "leaked": None}
    # A key one request set on its state is not seen by the next.
    assert second == {"started": "yes", "leaked": None}


@pytest.mark.parametrize("server", LIFESPAN_TARGETS, indirect=True, ids=str)
def test_background_task_runs_after_response(server: Served) -> None:
    token = uuid.uuid4().hex
    with server.client() as client:
        # The task blocks until /bg-release: the response must arrive before it ends.
        queued = client.post(f"/bg/{token}")
        assert queued.status_code == 200
        assert queued.text == "queued"
        done = client.get(f"/bg-release/{token}")
    assert done.status_code == 200
    assert token in done.json()["results"]


@pytest.mark.parametrize("target", LIFESPAN_TARGETS, ids=str)
def test_lifespan_startup_and_shutdown_run(
    run_process: Any, tmp_path: Path, target: Target
) -> None:
    record = tmp_path / "lifespan.log"
    env = {"FRAMEWORK_TEST_LIFESPAN_LOG": str(record)}
    with run_process(target.app, "--interface", "auto", env=env) as running:
        assert record.read_text() == "startup\n"
        response = httpx.get(running.url + "/state", timeout=TIMEOUT, verify=False)
        assert response.json()["started"] == "yes"
    assert running.process.returncode == 0
    assert record.read_text() == "startup\nshutdown\n"


@pytest.mark.parametrize("server", [DJANGO_ASGI], indirect=True, ids=str)
def test_django_async_view_runs_on_the_loop(server: Served) -> None:
    with server.client() as client:
        response = client.get("/async", params={"q": "z"})
        assert response.status_code == 200
        assert response.json() == {"q": "z", "on_main_thread": True}
        # A sync view still works beside it (Django runs it in a thread).
        assert client.get("/items/9").json()["item_id"] == 9
