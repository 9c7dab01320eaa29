"""Bad input on every path: POST /api/segment, gradio_client ``/segment``, the browser UI, the Python API and the CLI.

Every case of corpus.py gets a correct result (binary mask and RGBA cutout at the upright size, the right pixels)
or a clear refusal (HTTP 4xx with a JSON error, gr.Error through gradio_client, ValueError in Python, a
``failed:`` line and exit code 1 from ``python -m segmenter``), and the next valid request succeeds. The server is ``python app.py`` in a subprocess with the brightness stand-in model,
so masks are checked against the pixels the model must have seen (EXIF rotation, first GIF frame, modes).
"""

from __future__ import annotations

import io
import re
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from corpus import REFUSALS, Case, brightness_weights, check_result, corpus, valid_photo
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, PngImagePlugin, UnidentifiedImageError
from served_app import Served, post_photo, serve_app, wait_for

import app
from segmenter.cli import main as cli
from segmenter.data import open_image
from segmenter.images import ImageError, load_image
from segmenter.inference import Segmenter

MAX_PIXELS = 1_000_000  # the server's pixel cap here, so an image over it stays small
CASES = corpus(MAX_PIXELS)
IDS = [case.name for case in CASES]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return brightness_weights(tmp_path_factory.mktemp("brightness"))


@pytest.fixture(scope="module")
def server(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_app(weights, tmp_path_factory.mktemp("bad-input-server"), MAX_PIXELS=str(MAX_PIXELS)) as served:
        yield served
        assert served.alive(), "bad input stopped the server"


@pytest.fixture(scope="module")
def client(server: Served) -> Iterator[Client]:
    client = Client(server.url, verbose=False)
    yield client
    client.close()


def post(server: Served, name: str, data: bytes, output: str = "mask") -> httpx.Response:
    return post_photo(server.url, data, name, output=output)


def png(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ordinary photo: the request that must work after any bad one."""
    path = tmp_path_factory.mktemp("valid") / "valid.jpg"
    path.write_bytes(valid_photo())
    return path


def assert_next_request_works(server: Served, valid: Path, client: Client | None = None) -> None:
    size = Image.open(valid).size
    assert png(post(server, valid.name, valid.read_bytes())).size == size
    if client is not None:
        mask, _ = client.predict(handle_file(valid), 0.5, api_name="/segment")
        assert Image.open(mask).size == size


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_http_endpoint(server: Served, valid: Path, case: Case) -> None:
    if case.outcome == "ok":
        mask, cutout = (png(post(server, case.name, case.data, output)) for output in ("mask", "cutout"))
        check_result(case, mask, cutout)
    else:
        status, message = REFUSALS[case.outcome]
        r = post(server, case.name, case.data)
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/json"
        assert message in r.json()["error"]
    assert_next_request_works(server, valid)


def test_http_no_person_is_flagged(server: Served) -> None:
    case = next(c for c in CASES if c.name == "no_person.jpg")
    r = post(server, case.name, case.data)
    assert float(r.headers["x-person-share"]) == 0.0 and "No person found" in r.headers["x-warning"]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradio_client(client: Client, server: Served, valid: Path, case: Case, tmp_path: Path) -> None:
    upload = handle_file(case.write(tmp_path))
    if case.outcome == "ok":
        mask, cutout = client.predict(upload, 0.5, api_name="/segment")
        check_result(case, Image.open(mask), Image.open(cutout))
    else:
        with pytest.raises(AppError, match=re.escape(REFUSALS[case.outcome][1])):
            client.predict(upload, 0.5, api_name="/segment")
    assert_next_request_works(server, valid, client)


def test_user_errors_log_one_line_without_a_traceback(client: Client, server: Served, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == "text.png")
    start = len(server.log.read_text())
    with pytest.raises(AppError, match="not a readable image"):
        client.predict(handle_file(case.write(tmp_path)), 0.5, api_name="/segment")
    line = "user error: The file is not a readable image"
    wait_for(lambda: line in server.log.read_text()[start:], 120, "the server's log line (it follows its answer)")
    logged = server.log.read_text()[start:]
    assert "Traceback" not in logged, logged
    assert logged.count(line) == 1, logged


@pytest.fixture(scope="module")
def segmenter(weights: Path) -> Segmenter:
    return Segmenter.from_pretrained(weights, device="cpu")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_python_api(segmenter: Segmenter, case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """app.read_photo refuses like the server; segmenter's open_image and Segmenter raise ValueError naming the file."""
    path = case.write(tmp_path)
    monkeypatch.setattr(app, "LIMITS", app.Limits(max_pixels=MAX_PIXELS))
    if case.outcome == "ok":
        assert app.read_photo(path).size == case.size
    else:
        status, message = REFUSALS[case.outcome]
        with pytest.raises(ValueError, match=re.escape(message)) as refused:
            app.read_photo(path)
        assert isinstance(refused.value, app.InputError) and refused.value.status == status
    if case.outcome == "unusable":  # decodable, but no pixel values to segment: the library says why
        with pytest.raises(ValueError, match="NaN"):
            segmenter.get_mask(open_image(path))
        return
    if case.size is None:  # not an image at all: the library names the file
        with pytest.raises(ValueError, match=re.escape(str(path))):
            open_image(path)
        try:
            lazy = Image.open(path)  # PIL's own API, before ours: it may refuse the file by itself
        except (UnidentifiedImageError, Image.DecompressionBombError, ValueError):  # ValueError: text_bomb.png
            return
        with pytest.raises(ValueError, match=re.escape(f"unreadable image: {path}")):
            segmenter.get_mask(lazy)
        return
    # The library has no pixel cap of its own (only PIL's bomb limit): over_cap.png is segmented like the rest.
    check_result(case, segmenter.get_mask(open_image(path)))
    check_result(case, segmenter.get_mask(Image.open(path)))  # lazily opened: JPEGs take the reduced-decode path


def test_text_bomb_is_refused_without_inflating_its_text(tmp_path: Path) -> None:
    """16 MP is within the app's default cap: the zTXt chunk alone gets it refused, and its text is never inflated."""
    case = next(c for c in CASES if c.name == "text_bomb.png")
    path = case.write(tmp_path)
    start = case.data.index(b"zTXt") + 4  # before IDAT: PIL reads it while opening the file
    assert start < case.data.index(b"IDAT")
    chunk = case.data[start : start + int.from_bytes(case.data[start - 8 : start - 4], "big")]
    inflated = len(zlib.decompress(chunk.split(b"\0", 1)[1][1:]))  # keyword, NUL, method byte, compressed text
    assert inflated >= 16 * PngImagePlugin.MAX_TEXT_CHUNK
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match="not a readable image") as refused:
            load_image(case.data, 20 * 2**20, 16_000_000)  # the app's default limits
        with pytest.raises(ValueError, match=re.escape(f"unreadable image: {path}")):
            open_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.status == 415
    assert peak < 4 * PngImagePlugin.MAX_TEXT_CHUNK < inflated, peak


# ---------------------------------------------------------------- the command line

CLI_NAMES = {"deep.tif": "deep.tif.png"}  # deep.png has deep.png: the second photo keeps its suffix


def cli_failures(stderr: str) -> dict[str, str]:
    """``failed: <path>: <message>`` lines -> {path: message}."""
    lines = [line.removeprefix("failed: ") for line in stderr.splitlines() if line.startswith("failed: ")]
    return dict(line.split(": ", 1) for line in lines)


def test_cli_runs_every_case_in_one_folder(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One CLI run over a folder of every case: masks for what it accepts, a ``failed:`` line for each refusal.

    Its pixel cap is 100 MP, not the test server's 1: over_cap.png is segmented here. Pictures it does not read
    (PSD, SVG, EPS) are tried and reported, while a README in the folder is no photo and is left alone.
    """
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    paths = {case.name: case.write(folder) for case in CASES}
    (folder / "README.txt").write_text("Notes about these photos.\n")
    accepted = [c for c in CASES if c.outcome == "ok" or c.name == "over_cap.png"]
    refused = [c for c in CASES if c not in accepted]
    assert next(c for c in CASES if c.name == "over_cap.png").outcome == "too_big"  # on the server, not here
    assert {Path(c.name).suffix for c in refused} >= {".psd", ".svg", ".eps"}

    code = cli([str(folder), "-o", str(out), "--output", "mask", "--weights", str(weights), "--device", "cpu"])
    stdout, stderr = capsys.readouterr()
    assert code == 1
    assert f"{len(accepted)} written to {out} (mask), 0 skipped (exist), {len(refused)} failed," in stdout
    targets = {c.name: out / CLI_NAMES.get(c.name, Path(c.name).stem + ".png") for c in accepted}
    assert sorted(out.iterdir()) == sorted(targets.values())  # nothing for the refused ones
    for case in accepted:
        check_result(case, Image.open(targets[case.name]))
    failures = cli_failures(stderr)
    assert sorted(failures) == sorted(str(paths[c.name]) for c in refused), stderr
    for case in refused:
        assert REFUSALS[case.outcome][1] in failures[str(paths[case.name])], (case.name, failures)
    assert "README.txt" not in stderr

    # Named on the command line, any file is tried and reported, whatever its suffix.
    named = [paths["layers.psd"], paths["drawing.svg"], folder / "README.txt"]
    code = cli([*map(str, named), "-o", str(tmp_path / "named"), "--weights", str(weights), "--device", "cpu"])
    stdout, stderr = capsys.readouterr()
    assert code == 1 and "0 written" in stdout and f"{len(named)} failed" in stdout
    failures = cli_failures(stderr)
    assert sorted(failures) == sorted(map(str, named)), stderr
    assert all("not a readable image" in message for message in failures.values()), failures
    assert not (tmp_path / "named").exists()


# ---------------------------------------------------------------- the browser UI


BROWSER_CASES = ["text.png", "truncated.jpg", "bomb.png", "empty.jpg"]


@pytest.mark.browser
@pytest.mark.slow
def test_ui_shows_an_error_then_segments_the_next_photo(server: Served, valid: Path, tmp_path: Path) -> None:
    from test_browser import ARGS, CHROMIUM, shown_image

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    cases = {case.name: case for case in CASES}
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            for name in BROWSER_CASES:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(server.url)
                upload = page.locator("#photo input[type=file]")
                upload.set_input_files(str(cases[name].write(tmp_path)))
                message = REFUSALS[cases[name].outcome][1]
                page.locator(".toast-body", has_text=message).first.wait_for(timeout=30_000)
                page.screenshot(path=tmp_path / f"{name}-error.png", full_page=True)
                page.get_by_label("Remove Image").first.click()
                upload.set_input_files(str(valid))
                assert "valid-mask.png" in shown_image(page, "mask")
                page.wait_for_selector("#stats :text('Person share')", timeout=30_000)
                assert not errors, f"JavaScript errors after {name}: {errors}"
                page.close()
        finally:
            browser.close()
