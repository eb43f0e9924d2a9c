"""A Flask (WSGI) app for tests/e2e/test_frameworks.py.

Every framework app in tests/apps answers the same routes, so one test body checks
them all: /items/<id>, /echo, /stream/<token> + /release/<token>, /error, /headers,
/url (URL building under --root-path).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, jsonify, request, url_for

GATE_TIMEOUT = 10.0

app = Flask(__name__)
# Let app errors reach the server, which must answer 500 itself (Flask would hide them).
app.config["PROPAGATE_EXCEPTIONS"] = True

_gates: dict[str, threading.Event] = {}
_gates_lock = threading.Lock()


def _gate(token: str) -> threading.Event:
    with _gates_lock:
        return _gates.setdefault(token, threading.Event())


@app.get("/items/<int:item_id>")
def item(item_id: int) -> Any:
    return jsonify(
        item_id=item_id,
        q=request.args.get("q"),
        tags=request.args.getlist("tag"),
        path=request.path,
    )


@app.post("/echo")
def echo() -> Any:
    return jsonify(json=request.get_json(), content_type=request.content_type)


@app.get("/stream/<token>")
def stream(token: str) -> Response:
    gate = _gate(token)

    def generate() -> Iterator[str]:
        yield "first\n"
        # The client reads "first" before it releases the gate: a server that holds
        # the first block back (PEP 3333 forbids it) makes this wait time out.
        released = gate.wait(GATE_TIMEOUT)
        for i in range(3):
            yield f"chunk {i}\n"
        yield "released\n" if released else "gate timed out\n"

    return Response(generate(), mimetype="text/plain")


@app.get("/release/<token>")
def release(token: str) -> str:
    _gate(token).set()
    return "ok"


@app.get("/error")
def error() -> str:
    raise RuntimeError("boom from flask")


@app.get("/headers")
def headers() -> Any:
    response = jsonify(
        x_custom=request.headers.get("X-Custom"),
        session=request.cookies.get("session"),
        reply=request.cookies.get("reply"),
    )
    response.headers["X-Reply"] = "reply-" + request.headers.get("X-Custom", "")
    response.set_cookie("reply", "r1")
    response.set_cookie("other", "o2", httponly=True)
    return response


@app.get("/url")
def url() -> Any:
    return jsonify(
        item_path=url_for("item", item_id=7),
        item_url=url_for("item", item_id=7, _external=True),
        full_url=request.url,
        root=request.script_root,
    )
