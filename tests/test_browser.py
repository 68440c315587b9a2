"""report.html in a real headless Chromium, driven over the DevTools protocol: no console error, no
failed or outside request, every image decodes and is visible, the leaderboard fits and sorts on a
real mouse click. Writes a full-page screenshot of the smoke report for a person to look at.

Chromium comes from Debian (`apt-get install -y chromium`; .ci/run installs it); without it the
test skips and says so."""

from __future__ import annotations

import asyncio
import base64
import json
import platform
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from matplotlib.image import imread

from job import report
from job.results import Attempt, EpochMetrics, Manifest, SweepResult, TrialResult
from job.spec import load_spec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: apt-get install -y chromium (.ci/run installs it)")

SCREENSHOT = Path(__file__).resolve().parents[1] / "results" / "browser" / "report.png"
VIEWPORT = (1280, 900)  # a laptop browser window, CSS pixels
TIMEOUT_S = 30.0
# The smoke spec with a log-uniform learning rate and a grid of widths: the search plots get both axes.
SPACE = "search.space={optim.lr: {loguniform: [1.0e-4, 1.0e-2]}, model.hidden: {grid: [32, 64]}}"
NODES = ["0dd19544eefdfc80968fe5efb2b734fb3140e15bf5979a55452ea4ad", "7f3a9c21bb04de5f66a1c9e2f0d4b8a7c6e5d4c3b2a1f0e9d8c7b6a5"]


def _trial(i: int, variant: str, lr: float, hidden: int, peak: float, status: str = "TERMINATED") -> TrialResult:
    epochs = [
        EpochMetrics(e, 2.0 / e, peak * e / 4 + 5, 2.3 - peak * e / 200, peak * e / 4, 0.8, 14000.0 + 100 * i, "cpu")
        for e in range(1, (4 if status == "TERMINATED" else 2) + 1)
    ]
    return TrialResult(f"5491e_{i:05d}", variant, {"optim.lr": lr, "model.hidden": hidden}, status, epochs, NODES[i % 2])


TRIALS = [
    _trial(0, "basic", 1.2e-4, 32, 41.0),
    _trial(1, "basic", 3.1e-3, 64, 52.5),
    _trial(2, "dropout", 9.5e-3, 32, 44.0),
    _trial(3, "dropout", 1.0e-3, 64, 47.25, "ERROR"),
    _trial(4, "batchnorm", 2.2e-3, 32, 55.0),
    _trial(5, "batchnorm", 4.0e-4, 64, 49.5),
]


class DevTools:
    """One page target over its websocket: commands answered in order, every event kept."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.sent, self.events = ws, 0, []

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.sent += 1
        await self.ws.send_json({"id": self.sent, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json()
            if message.get("id") == self.sent:
                assert "error" not in message, f"{method}: {message['error']}"
                return message["result"]
            self.events.append(message)

    async def wait_for(self, event: str) -> None:
        while not any(e["method"] == event for e in self.events):
            self.events.append(await self.ws.receive_json())

    async def js(self, expression: str) -> Any:
        reply = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element, as a person would."""
        box = await self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def seen(self, event: str) -> list[dict[str, Any]]:
        return [e["params"] for e in self.events if e["method"] == event]


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    job = load_spec("specs/smoke.yaml", [SPACE])
    spec, run_id = job.model_dump(mode="json"), "20261201T215056Z-1a4f"
    versions = {"python": platform.python_version(), **{name: version(name) for name in ("torch", "ray", "matplotlib")}}
    manifest = Manifest(job.name, run_id, job.search.metric, "max", spec, versions, "5491e_00004", (), (Attempt("2026-12-01T21:50:56+00:00", 81.2),))
    out = tmp_path_factory.mktemp("report")
    report.render(SweepResult(job.name, run_id, job.search.metric, TRIALS), out, spec, manifest)
    return out / "report.html"


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A headless Chromium on loopback; yields the websocket URL of its blank page."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    process = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--hide-scrollbars",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + TIMEOUT_S
        while not port_file.is_file() or not port_file.read_text().strip():  # Chromium writes the port it picked here
            assert process.poll() is None and time.monotonic() < deadline, f"chromium did not start (exit {process.poll()})"
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=TIMEOUT_S) as reply:
            yield next(t["webSocketDebuggerUrl"] for t in json.load(reply) if t["type"] == "page")
    finally:
        process.terminate()
        process.wait(timeout=TIMEOUT_S)


async def _inspect(ws_url: str, page: Path) -> dict[str, Any]:
    """Load the page, then read what a person would see and do; returns everything the test asserts on."""
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
        tab = DevTools(ws)
        for domain in ("Page", "Runtime", "Log", "Network"):
            await tab.send(f"{domain}.enable")
        await tab.send("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0], height=VIEWPORT[1], deviceScaleFactor=1, mobile=False)
        await tab.send("Page.navigate", url=page.as_uri())
        await tab.wait_for("Page.loadEventFired")
        found: dict[str, Any] = {"images": await tab.js(IMAGES), "widths": await tab.js(WIDTHS)}
        height = (await tab.send("Page.getLayoutMetrics"))["cssContentSize"]["height"]
        shot = await tab.send(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,  # as loaded, before any click
            clip={"x": 0, "y": 0, "width": VIEWPORT[0], "height": height, "scale": 1},
        )
        order = "[...document.querySelectorAll('#leaderboard tbody tr')].map(r => r.cells[1].textContent)"
        found["order"] = {"loaded": await tab.js(order)}
        for label, column in [("loss up", 7), ("loss down", 7), ("lr up", 5), ("trial up", 2)]:
            await tab.click(f"#leaderboard th:nth-child({column})")
            found["order"][label] = await tab.js(order)
        found["headers"] = await tab.js("[...document.querySelectorAll('#leaderboard th')].map(h => h.textContent)")
        found.update(screenshot=base64.b64decode(shot["data"]), height=height, events=tab)
        return found


# Every <img>: decoded (decode() rejects a broken one), its natural size, and whether a person can see it.
IMAGES = """Promise.all([...document.images].map(async i => {
  try { await i.decode(); } catch (e) { return {alt: i.alt, error: String(e)}; }
  const r = i.getBoundingClientRect();
  return {alt: i.alt, size: [i.naturalWidth, i.naturalHeight], box: [r.width, r.height],
          visible: i.checkVisibility({opacityProperty: true, visibilityProperty: true, checkOpacity: true, checkVisibilityCSS: true})};
}))"""
WIDTHS = """({page: document.documentElement.scrollWidth, window: innerWidth,
  table: document.querySelector('#leaderboard').scrollWidth, room: document.querySelector('#leaderboard').parentElement.clientWidth})"""


@pytest.fixture(scope="module")
def seen(chromium: str, smoke_report: Path) -> dict[str, Any]:
    found = asyncio.run(asyncio.wait_for(_inspect(chromium, smoke_report), TIMEOUT_S))
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    SCREENSHOT.write_bytes(found["screenshot"])
    return found


def test_no_console_error_and_no_request_leaves_the_page(seen: dict[str, Any]) -> None:
    tab: DevTools = seen["events"]
    errors = [e["args"] for e in tab.seen("Runtime.consoleAPICalled") if e["type"] in ("error", "assert", "warning")]
    errors += [e["exceptionDetails"] for e in tab.seen("Runtime.exceptionThrown")]
    errors += [e["entry"] for e in tab.seen("Log.entryAdded") if e["entry"]["level"] in ("error", "warning")]
    assert errors == []
    assert tab.seen("Network.loadingFailed") == []
    requested = [e["request"]["url"] for e in tab.seen("Network.requestWillBeSent")]
    assert requested and requested[0].startswith("file://")  # the page itself: the log does see requests
    assert [url[:60] for url in requested[1:] if not url.startswith("data:")] == []


def test_every_image_decodes_and_is_visible(seen: dict[str, Any]) -> None:
    images = seen["images"]
    finished = [t for t in TRIALS if t.epochs]
    assert len(images) == 1 + 2 + len(finished)  # compare, one search plot per searched field, one curve per trial with epochs
    assert [i for i in images if "error" in i or not i["visible"] or min(i["box"]) < 100] == []
    sizes = sorted(tuple(i["size"]) for i in images)
    search_px = (int(report.SEARCH_SIZE_IN[0] * report.DPI), int(report.SEARCH_SIZE_IN[1] * report.DPI))
    assert sizes == sorted([report.FIGURE_SIZE_PX] * (1 + len(finished)) + [search_px] * 2)


def test_leaderboard_fits_the_page(seen: dict[str, Any]) -> None:
    widths = seen["widths"]
    assert widths["page"] <= widths["window"] and widths["table"] <= widths["room"], widths


def test_leaderboard_sorts_by_any_column(seen: dict[str, Any]) -> None:
    assert seen["headers"][1:8] == ["trial", "variant", "hidden", "lr", "best test_acc", "best test_loss", "best epoch"]
    order = seen["order"]
    ranked = [t.trial_id for t in SweepResult("smoke", "r", "test_acc", TRIALS).ranked()]
    by_loss = sorted(TRIALS, key=lambda t: t.best("test_loss"))
    assert order["loaded"] == ranked
    assert order["loss up"] == [t.trial_id for t in by_loss]
    assert order["loss down"] == [t.trial_id for t in reversed(by_loss)]
    assert order["lr up"] == [t.trial_id for t in sorted(TRIALS, key=lambda t: t.params["optim.lr"])]  # numbers, not their text
    assert order["trial up"] == sorted(ranked) != ranked


def test_screenshot_shows_the_page(seen: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\nscreenshot of the smoke report: {SCREENSHOT}")
    image = imread(SCREENSHOT)
    assert image.shape[:2] == (int(seen["height"]), VIEWPORT[0]) and seen["height"] > 2 * VIEWPORT[1]
    pixels = (image[..., :3] * 255).astype(int)
    assert (np.abs(pixels - (0x8B, 0, 0)).sum(axis=-1) < 40).sum() > 1000  # the curves' dark red made it onto the screen
