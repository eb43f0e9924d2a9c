from __future__ import annotations

import httpx

from tests.apps import basic


def test_asgi_hello_in_thread(serve) -> None:
    with serve(basic.hello) as running:
        response = httpx.get(running.url + "/")
    assert response.status_code == 200
    assert response.text == "Hello, world!"
    assert response.headers["content-length"] == "13"
    assert response.headers["server"] == "threshold"
    assert "date" in response.headers


def test_wsgi_hello_subprocess(run_process) -> None:
    with run_process("tests.apps.basic:wsgi_hello", "--interface", "wsgi") as running:
        response = httpx.get(running.url + "/")
        assert response.status_code == 200
        assert response.text == "Hello, world!"
    assert running.process is not None
    assert running.process.returncode == 0


def test_echo_post(serve) -> None:
    with serve(basic.echo) as running:
        response = httpx.post(running.url + "/p", content=b"x" * 100_000)
    assert response.status_code == 200
    assert response.content == b"x" * 100_000
    assert response.headers["x-path"] == "/p"
