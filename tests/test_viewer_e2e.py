"""``epigraf view`` end to end in a real headless Chromium (Playwright driving the system browser): the page loads,
dragging orbits with low-resolution previews then a full frame, the wheel zooms, bad input shows an error, two
tabs work, and "save PNG" writes the same pixels as the ``epigraf generate`` command the page displays.

Needs ``pip install playwright`` and a Chromium: the system package (``apt-get install chromium``), a browser
named by ``$EPIGRAF_CHROMIUM``, or one Playwright installed itself. Skips only when none is found.
"""

from __future__ import annotations

import os
import shlex
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from epigraf.checkpoint import load_checkpoint
from epigraf.cli import main
from epigraf.viewer import Renderer, ViewerServer
from test_viewer_api import tiny_checkpoint

TIMEOUT_MS = 60_000
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium(playwright) -> str | None:
    """$EPIGRAF_CHROMIUM, a Chromium on PATH, or the one `playwright install` downloaded."""
    named = os.environ.get("EPIGRAF_CHROMIUM")
    if named:
        return named
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    own = playwright.chromium.executable_path
    return own if own and Path(own).exists() else None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
    with sync_api.sync_playwright() as p:
        path = find_chromium(p)
        if path is None:
            pytest.skip("no Chromium found: apt-get install chromium (or set EPIGRAF_CHROMIUM to a Chromium binary)")
        chromium = p.chromium.launch(executable_path=path, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("viewer_e2e") / "net.safetensors")


@pytest.fixture(scope="module")
def server(checkpoint):
    renderer = Renderer(load_checkpoint(checkpoint).G_ema, max_resolution=64, name="tiny", checkpoint=str(checkpoint))
    srv = ViewerServer(renderer, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def settled(page, after: int = 0) -> int:
    """Wait until the answer to the page's newest request, a full frame newer than ``after``, is on screen."""
    page.wait_for_function(
        """(after) => { const d = document.body.dataset;
                        return Number(d.shownSeq) > after && d.shownSeq === d.latestSeq && d.shownPreview === "0"; }""",
        arg=after, timeout=TIMEOUT_MS)
    return int(page.evaluate("document.body.dataset.shownSeq"))


def pixels(page) -> np.ndarray:
    """The frame on screen as decoded RGBA [H, W, 4]."""
    data, width = page.evaluate("""() => {
        const img = document.getElementById("frame");
        const canvas = document.createElement("canvas");
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        const g = canvas.getContext("2d");
        g.drawImage(img, 0, 0);
        return [Array.from(g.getImageData(0, 0, canvas.width, canvas.height).data), canvas.width];
    }""")
    return np.array(data, dtype=np.uint8).reshape(-1, width, 4)


def drag(page, dx: int, dy: int, steps: int = 12) -> None:
    box = page.locator("#frame").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    for i in range(1, steps + 1):
        page.mouse.move(x + dx * i / steps, y + dy * i / steps)
        page.wait_for_timeout(20)
    page.mouse.up()


def save_and_generate(page, tmp_path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Click "save PNG", run the `epigraf generate` command the page shows → (saved pixels, generated pixels)."""
    with page.expect_download(timeout=TIMEOUT_MS) as download:
        page.click("#save-png")
    assert download.value.suggested_filename == name
    saved = tmp_path / "saved" / name
    download.value.save_as(saved)
    args = shlex.split(page.text_content("#command"))
    assert args[:2] == ["epigraf", "generate"]
    out = tmp_path / "generated"
    assert main([*args[1:], "--out", str(out)]) == 0
    return np.asarray(Image.open(saved)), np.asarray(Image.open(out / name))


def test_orbit_zoom_errors_tabs_and_saved_png_match_generate(browser, server, tmp_path):
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    frame_urls: list[str] = []
    page.on("request", lambda r: frame_urls.append(r.url) if "/api/frame?" in r.url else None)
    page.goto(server.url)
    seq = settled(page)
    assert page.text_content("#model").startswith("tiny · 32²")
    assert pixels(page).shape == (32, 32, 4)

    # Full frames at 64², previews at 32² while dragging; the image changes and ends at full resolution.
    page.select_option("#res", "64")
    page.select_option("#preview-res", "32")
    seq = settled(page, seq)
    before = pixels(page)
    frame_urls.clear()
    drag(page, 90, 25)
    seq = settled(page, seq)
    after = pixels(page)
    assert after.shape == (64, 64, 4) and not np.array_equal(before, after)
    assert any("format=jpeg" in u and "res=32" in u for u in frame_urls), frame_urls
    assert "format=jpeg" not in frame_urls[-1] and "res=64" in frame_urls[-1]
    camera = page.text_content("#camera")
    assert not camera.startswith("yaw 0 ") and "pitch 1.5708" not in camera

    # The wheel zooms in (smaller fov), within the model's range.
    page.mouse.wheel(0, -300)
    seq = settled(page, seq)
    fov = float(page.text_content("#camera").split("fov ")[1].rstrip("°"))
    assert server.renderer.limits.fov_min <= fov < server.renderer.limits.fov
    assert not np.array_equal(after, pixels(page))
    page.mouse.wheel(0, 5000)  # far out: stops at the widest fov the model allows, which the server accepts
    seq = settled(page, seq)
    fov = float(page.text_content("#camera").split("fov ")[1].rstrip("°"))
    assert fov == pytest.approx(server.renderer.limits.fov_max, abs=1e-4) and page.is_hidden("#error")

    # A bad value is a clear error on the page; fixing it clears the error.
    page.fill("#seed", "99999999999")
    page.wait_for_selector("#error:not([hidden])", timeout=TIMEOUT_MS)
    assert "seed must be in [0, 4294967295]" in page.text_content("#error")
    page.fill("#seed", "7")
    seq = settled(page, seq)
    assert page.is_hidden("#error")

    # A second tab renders on its own while the first keeps working.
    other = context.new_page()
    other.goto(server.url)
    settled(other)
    drag(page, -40, 0)
    seq = settled(page, seq)

    # "save PNG" = `epigraf generate` with the command the page shows, for RGB and depth.
    saved, generated = save_and_generate(page, tmp_path / "rgb", "seed0007.png")
    assert saved.shape == (64, 64, 3)
    assert np.abs(saved.astype(int) - generated.astype(int)).max() <= 1
    page.check('input[name="mode"][value="depth"]')
    settled(page, seq)
    saved, generated = save_and_generate(page, tmp_path / "depth", "seed0007_depth.png")
    assert np.abs(saved.astype(int) - generated.astype(int)).max() <= 1
    context.close()


def test_laptop_screen_shows_only_the_controls_that_apply(browser, server, tmp_path):
    """At 1280×800 with the command box open: the status line stays on screen, an unconditional model's class
    row is hidden, the page asks the server for nothing missing (no /favicon.ico 404)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    failed: list[str] = []
    page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
    page.goto(server.url)
    settled(page)
    page.click("details summary")
    page.wait_for_function("document.getElementById('status').textContent.length > 0", timeout=TIMEOUT_MS)
    assert page.is_hidden("#class-row") and page.is_hidden("#error")
    status = page.locator("#status").bounding_box()
    assert status is not None and 0 <= status["y"] and status["y"] + status["height"] <= 800
    assert page.evaluate("document.documentElement.scrollHeight") <= 800
    shot = tmp_path / "laptop.png"
    page.screenshot(path=str(shot))
    assert Image.open(shot).size == (1280, 800)
    assert failed == [] and page.evaluate("performance.getEntriesByType('resource')"
                                          ".every(e => !e.name.endsWith('/favicon.ico'))")
    context.close()
