"""The UI in a real browser (Debian's chromium driven by playwright): upload -> mask and cutout; webcam snapshot.

Needs /usr/bin/chromium (``apt-get install -y chromium``); playwright's own browser downloads are never used.
Screenshots are saved under the test's tmp_path for a human to look at.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} not found: apt-get install -y chromium"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_url: str) -> Iterator:
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, permissions=["camera"])
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(app_url)
    page.wait_for_selector("#photo", timeout=60_000)
    yield page
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def shown_image(page, elem_id: str, timeout: float = 60_000) -> str:
    """Wait until the image component ``elem_id`` shows a loaded image; returns its src."""
    selector = f"#{elem_id} img"
    page.wait_for_function(
        "s => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0; }",
        arg=selector,
        timeout=timeout,
    )
    return page.locator(selector).first.get_attribute("src")


def test_upload_an_example_and_see_mask_and_cutout(page, tmp_path: Path):
    photo = Path(__file__).resolve().parent.parent / "examples" / "portrait.jpg"
    page.locator("#photo input[type=file]").set_input_files(str(photo))
    assert "-mask.png" in shown_image(page, "mask")
    assert "-cutout.png" in shown_image(page, "cutout")
    shown_image(page, "overlay")
    page.wait_for_selector("#stats :text('person share')", timeout=30_000)
    page.screenshot(path=tmp_path / "photo.png", full_page=True)
    page.get_by_label("Blurred photo").check()  # re-composite from the cached map
    page.wait_for_selector("text=Download composite", timeout=30_000)
    page.screenshot(path=tmp_path / "blurred.png", full_page=True)


def test_webcam_snapshot_is_segmented(page, tmp_path: Path):
    page.get_by_role("button", name="Capture from camera").click()
    page.get_by_text("Click to Access Webcam").click()
    page.wait_for_function(
        "() => { const v = document.querySelector('#photo video'); return v && v.readyState >= 2; }", timeout=30_000
    )
    page.get_by_role("button", name="capture photo").click()  # the fake camera's frame becomes the input
    assert shown_image(page, "mask")
    assert shown_image(page, "cutout")
    page.wait_for_selector("#stats :text('person share')", timeout=30_000)
    page.screenshot(path=tmp_path / "webcam.png", full_page=True)


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python app.py`` with the shipped weights and the live tab on (the in-process app_url has it off)."""
    from served_app import serve_app

    weights = Path(__file__).resolve().parent.parent / "weights"
    if not (weights / "model.safetensors").is_file():
        pytest.skip("no shipped weights")
    with serve_app(weights, tmp_path_factory.mktemp("live"), LIVE_WEBCAM="on") as served:
        yield served.url


def test_live_webcam_streams_segmented_frames(browser, live_url: str, tmp_path: Path):
    """The fake camera streams for a few seconds; count the distinct segmented frames the page actually shows."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, permissions=["camera"])
    page = context.new_page()
    page.goto(live_url)
    page.get_by_role("tab", name="Live webcam").click()
    page.get_by_text("Click to Access Webcam").click()
    page.get_by_text("Record", exact=True).click()
    page.evaluate(
        """() => {
            window.shown = new Set();
            const note = () => { const i = document.querySelector('#live-out img'); if (i && i.src) shown.add(i.src); };
            new MutationObserver(note).observe(document.body, {subtree: true, childList: true, attributes: true});
        }"""
    )
    # Until three distinct frames have been shown, with a deadline (a fixed 8 s wait assumed how fast the host is).
    start = time.monotonic()
    page.wait_for_function("() => window.shown.size >= 3", timeout=120_000)
    seconds = time.monotonic() - start
    frames = page.evaluate("() => window.shown.size")
    page.screenshot(path=tmp_path / "live.png", full_page=True)
    context.close()
    print(f"live webcam: {frames} segmented frames shown in {seconds} s ({frames / seconds:.1f} per second)")
    assert frames >= 3  # a stream, not one snapshot: frame after frame comes back and is shown
