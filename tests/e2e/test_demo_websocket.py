"""The demo's chat: /ws with the `websockets` client, and /chat driven in headless Chromium.

Chromium is driven over the Chrome DevTools Protocol (CDP) with the `websockets` client:
no chromedriver. Waiting in the page is done by promises that a MutationObserver
resolves, bounded on our side, so nothing sleeps or polls.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import Running, run_async
from tests.e2e.test_demo import BROWSER_TIMEOUT, DEMO, INSTALL_TIMEOUT, chromium  # noqa: F401
from threshold.demo import CHAT_QUEUE, CHAT_SCRIPT, MAX_MESSAGE_CHARS, ChatRoom, DemoApp

Serve = Callable[..., Any]

STEP = 10.0  # any single wait: a message, a CDP answer, a page event
DEVTOOLS = re.compile(r"DevTools listening on (ws://\S+)")  # printed on stderr
PNG = b"\x89PNG\r\n\x1a\n"


# -- /ws with the websockets client ------------------------------------------------------


def ws_url(running: Running) -> str:
    return f"ws://{running.host}:{running.port}/ws"


async def recv(ws: ClientConnection) -> str:
    message = await asyncio.wait_for(ws.recv(), STEP)
    assert isinstance(message, str)
    return message


async def closed_with(ws: ClientConnection) -> tuple[int, str]:
    """Wait for the server to close ws; the close frame's code and reason."""
    with pytest.raises(ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), STEP)
    rcvd = info.value.rcvd
    assert rcvd is not None, "closed without a close frame"
    return rcvd.code, rcvd.reason


def test_echo_and_broadcast(serve: Serve) -> None:
    async def main(running: Running) -> None:
        async with connect(ws_url(running), open_timeout=STEP) as one:
            assert await recv(one) == "* you are #1 (1 online)"
            await one.send("hello <b>there</b>")
            assert await recv(one) == "#1: hello <b>there</b>"  # the echo, as sent
            async with connect(ws_url(running), open_timeout=STEP) as two:
                assert await recv(two) == "* you are #2 (2 online)"
                assert await recv(one) == "* #2 joined (2 online)"
                await two.send("hi from two")
                assert await recv(two) == "#2: hi from two"
                assert await recv(one) == "#2: hi from two"  # the broadcast
                await one.send("ünïcode ✓")
                assert await recv(one) == "#1: ünïcode ✓"
                assert await recv(two) == "#1: ünïcode ✓"
            assert await recv(one) == "* #2 left (1 online)"

    with serve(DemoApp()) as running:
        run_async(main(running))


def test_message_length_limit(serve: Serve) -> None:
    async def main(running: Running) -> None:
        async with (
            connect(ws_url(running), open_timeout=STEP) as one,
            connect(ws_url(running), open_timeout=STEP) as two,
        ):
            assert await recv(one) == "* you are #1 (1 online)"
            assert await recv(one) == "* #2 joined (2 online)"
            assert await recv(two) == "* you are #2 (2 online)"
            longest = "é" * MAX_MESSAGE_CHARS  # counted in characters, not bytes
            await two.send(longest)
            assert await recv(two) == "#2: " + longest
            assert await recv(one) == "#2: " + longest
            await two.send("x" * (MAX_MESSAGE_CHARS + 1))
            assert await closed_with(two) == (1009, "message longer than 1000 characters")
            # Never relayed; the others stay connected and see only the leave.
            assert await recv(one) == "* #2 left (1 online)"
            await one.send("still here")
            assert await recv(one) == "#1: still here"

    with serve(DemoApp()) as running:
        run_async(main(running))


def test_binary_messages_are_refused(serve: Serve) -> None:
    async def main(running: Running) -> None:
        async with connect(ws_url(running), open_timeout=STEP) as ws:
            assert await recv(ws) == "* you are #1 (1 online)"
            await ws.send(b"\x00\x01")
            assert await closed_with(ws) == (1003, "text only")

    with serve(DemoApp()) as running:
        run_async(main(running))


def test_room_is_bounded(serve: Serve) -> None:
    async def main(running: Running) -> None:
        async with connect(ws_url(running), open_timeout=STEP) as one:
            assert await recv(one) == "* you are #1 (1 online)"
            async with connect(ws_url(running), open_timeout=STEP) as two:
                assert await recv(two) == "* you are #2 (2 online)"
                assert await recv(one) == "* #2 joined (2 online)"
                async with connect(ws_url(running), open_timeout=STEP) as three:
                    assert await closed_with(three) == (1013, "chat is full")
            assert await recv(one) == "* #2 left (1 online)"  # the room has room again
            async with connect(ws_url(running), open_timeout=STEP) as four:
                assert await recv(four) == "* you are #3 (2 online)"

    with serve(DemoApp(max_clients=2)) as running:
        run_async(main(running))


def test_a_client_that_falls_behind_misses_messages() -> None:
    # The room alone (no socket): a full queue drops, so memory stays bounded.
    room = ChatRoom(max_clients=2)
    slow = room.join()
    assert slow is not None
    for n in range(CHAT_QUEUE * 2):
        room.broadcast(f"#9: {n}")
    assert slow.queue.qsize() == CHAT_QUEUE
    kept = [slow.queue.get_nowait() for _ in range(CHAT_QUEUE)]
    assert kept == ["* you are #1 (1 online)"] + [f"#9: {n}" for n in range(CHAT_QUEUE - 1)]


def test_cross_origin_and_other_paths_are_refused(serve: Serve) -> None:
    async def main(running: Running) -> None:
        own = f"http://{running.host}:{running.port}"
        async with connect(ws_url(running), origin=own, open_timeout=STEP) as ws:
            assert await recv(ws) == "* you are #1 (1 online)"
        for url, origin in [
            (ws_url(running), "http://evil.example"),
            (ws_url(running), "null"),
            (f"ws://{running.host}:{running.port}/other", None),
        ]:
            with pytest.raises(InvalidStatus) as info:
                await connect(url, origin=origin, open_timeout=STEP)
            assert info.value.response.status_code == 403, (url, origin)

    with serve(DemoApp()) as running:
        run_async(main(running))


def test_chat_page_csp(serve: Serve) -> None:
    with serve(DemoApp(), root_path="/mnt") as running:
        chat = httpx.get(running.url + "/mnt/chat", timeout=STEP)
        main = httpx.get(running.url + "/mnt/", timeout=STEP)
    assert chat.status_code == 200
    digest = base64.b64encode(hashlib.sha256(CHAT_SCRIPT.encode()).digest()).decode()
    policy = dict(
        part.strip().split(" ", 1) for part in chat.headers["content-security-policy"].split(";")
    )
    assert policy == {
        "default-src": "'none'",
        "style-src": "'unsafe-inline'",
        "script-src": f"'sha256-{digest}'",  # this script only: no 'unsafe-inline'
        "connect-src": "'self'",
        "form-action": "'none'",
        "base-uri": "'none'",
    }
    assert chat.headers["x-content-type-options"] == "nosniff"
    assert f"<script>{CHAT_SCRIPT}</script>" in chat.text  # hashed as served
    assert chat.text.count("<script") == 1
    assert 'data-ws="/mnt/ws"' in chat.text
    # The main page still runs no script, and links to the chat.
    assert main.headers["content-security-policy"] == (
        "default-src 'none'; style-src 'unsafe-inline'"
    )
    assert 'href="/mnt/chat"' in main.text


# -- /chat in headless Chromium over CDP -------------------------------------------------


@contextmanager
def devtools_browser(browser: Path) -> Iterator[str]:
    """Start headless Chromium with a DevTools port; yield its browser WebSocket URL."""
    with tempfile.TemporaryDirectory(prefix="threshold-chromium-") as profile:
        cmd = [
            str(browser),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--window-size=800,600",
            "about:blank",
        ]
        # Its own session, so the browser and its helpers are stopped together.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert proc.stderr is not None
        log: list[str] = []
        found: list[str] = []
        ready = threading.Event()

        def reader() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:  # drained to the end, so the pipe never fills
                log.append(line)
                match = DEVTOOLS.search(line)
                if match and not found:
                    found.append(match.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=reader, daemon=True).start()
        try:
            ready.wait(BROWSER_TIMEOUT)
            assert found, "chromium did not open its DevTools port:\n" + "".join(log[-50:])
            yield found[0]
        finally:
            # Not reaped yet, so its pid is still ours: the group goes, helpers included.
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STEP)


class Cdp:
    """A minimal CDP client on one browser connection, attached to one page (flat mode)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = 0
        self.session: str | None = None
        self.answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if "id" in message:
                answer = self.answers.pop(message["id"], None)
                if answer is not None and not answer.done():
                    answer.set_result(message)
            else:
                waiter = self.waiting.pop(message["method"], None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(message.get("params", {}))

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.ids += 1
        answer = asyncio.get_running_loop().create_future()
        self.answers[self.ids] = answer
        message: dict[str, Any] = {"id": self.ids, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            message["sessionId"] = self.session
        await self.ws.send(json.dumps(message))
        result = await asyncio.wait_for(answer, STEP)
        assert "error" not in result, f"{method}: {result['error']}"
        return result["result"]  # type: ignore[no-any-return]

    def expect(self, event: str) -> asyncio.Future[dict[str, Any]]:
        """A future for the next `event`; create it before the action that fires it."""
        waiter = asyncio.get_running_loop().create_future()
        self.waiting[event] = waiter
        return waiter

    async def evaluate(self, expression: str) -> Any:
        """Evaluate in the page; awaits a returned promise (bounded by the page's own timer
        and by STEP here)."""
        result = await self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")


@asynccontextmanager
async def open_page(browser_url: str) -> AsyncIterator[Cdp]:
    async with connect(browser_url, max_size=64 * 1024 * 1024, open_timeout=STEP) as ws:
        cdp = Cdp(ws)
        reader = asyncio.create_task(cdp.read())
        try:
            target = await cdp.call("Target.createTarget", url="about:blank")
            attached = await cdp.call(
                "Target.attachToTarget", targetId=target["targetId"], flatten=True
            )
            cdp.session = attached["sessionId"]
            await cdp.call("Page.enable")
            yield cdp
        finally:
            reader.cancel()
            await asyncio.wait([reader])


# Resolves when the page has a #messages item with exactly this text (a MutationObserver,
# not polling); rejects after a bound, so a missing message fails with a clear reason.
WAIT_FOR_TEXT = """
new Promise((resolve, reject) => {
  const wanted = %s;
  const seen = () => [...document.querySelectorAll("#messages li")]
    .some((li) => li.textContent === wanted);
  if (seen()) return resolve(true);
  const observer = new MutationObserver(() => {
    if (seen()) { observer.disconnect(); resolve(true); }
  });
  observer.observe(document.body, {childList: true, subtree: true, characterData: true});
  setTimeout(() => { observer.disconnect(); reject(new Error("not shown: " + wanted)); }, %d);
})
"""


def wait_for_text(text: str) -> str:
    return WAIT_FOR_TEXT % (json.dumps(text), int((STEP - 1) * 1000))


@pytest.mark.timeout(INSTALL_TIMEOUT + 2 * BROWSER_TIMEOUT)
def test_chat_in_chromium(run_process: Serve, chromium: Path, tmp_path: Path) -> None:  # noqa: F811
    message = "hello <b>from</b> chromium & co"

    async def main(running: Running, browser_url: str) -> bytes:
        # A plain client joins first: it must see what the browser sends, and the
        # browser must show what it sends.
        async with connect(ws_url(running), open_timeout=STEP) as peer:
            assert await recv(peer) == "* you are #1 (1 online)"
            async with open_page(browser_url) as page:
                loaded = page.expect("Page.loadEventFired")
                await page.call("Page.navigate", url=running.url + "/chat")
                await asyncio.wait_for(loaded, STEP)
                assert await page.evaluate(wait_for_text("* you are #2 (2 online)"))
                assert await page.evaluate('document.getElementById("state").textContent') == (
                    "open"
                )
                assert await recv(peer) == "* #2 joined (2 online)"
                # Type and click, as a user would.
                await page.evaluate(
                    f'document.getElementById("text").value = {json.dumps(message)};'
                    'document.getElementById("send").click();'
                )
                assert await page.evaluate(wait_for_text(f"#2: {message}"))  # the echo
                assert await recv(peer) == f"#2: {message}"
                await peer.send("<img src=x onerror=alert(1)>")
                assert await page.evaluate(wait_for_text("#1: <img src=x onerror=alert(1)>"))
                # Text, never markup: nothing from a message became an element.
                assert (
                    await page.evaluate(
                        'document.querySelectorAll("#messages b, #messages img").length'
                    )
                    == 0
                )
                assert await page.evaluate('document.getElementById("text").value') == ""
                shot = await page.call("Page.captureScreenshot", format="png")
                return base64.b64decode(shot["data"])

    with run_process(DEMO, "--no-access-log") as running, devtools_browser(chromium) as url:
        png = run_async(main(running, url))
    screenshot = tmp_path / "chat.png"  # look at it with --basetemp=DIR
    screenshot.write_bytes(png)
    data = screenshot.read_bytes()
    assert data.startswith(PNG)
    assert len(data) > 1000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 100 and height > 100, (width, height)
