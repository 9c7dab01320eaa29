"""The Space (app.py): the real server with tiny weights, called through gradio_client and plain HTTP.

Also unit tests of the app's own pieces (image loading limits, masks from a cached map, batch ZIP) that need no
server. The server fixture ``app_url`` and the ``tiny_weights`` folder come from conftest.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from served_app import wait_for

import app
from segmenter import Segmenter
from segmenter.pipeline import Options
from segmenter.server.batch import run_batch

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def client(app_url: str) -> Client:
    return Client(app_url, verbose=False, download_files=True)


def post_segment(app_url: str, content: bytes | None, name: str = "photo.jpg", **params: str) -> httpx.Response:
    files = None if content is None else {"file": (name, content, "application/octet-stream")}
    return httpx.post(f"{app_url}api/segment", files=files, params=params, timeout=60)


def assert_binary_mask(path: str | Path, size: tuple[int, int]) -> None:
    mask = Image.open(path)
    assert mask.mode == "L" and mask.size == size
    assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}


# ---------------------------------------------------------------- gradio_client: /segment


def test_segment_endpoint_returns_mask_and_cutout(client: Client, example_photo: Path):
    size = Image.open(example_photo).size
    mask_path, cutout_path = client.predict(handle_file(example_photo), 0.4, api_name="/segment")
    assert_binary_mask(mask_path, size)
    cutout = Image.open(cutout_path)
    assert cutout.mode == "RGBA" and cutout.size == size
    assert Path(cutout_path).name.endswith("-cutout.png")


def test_segment_threshold_is_optional_and_changes_the_mask(client: Client, tmp_path: Path):
    photo = tmp_path / "wide.png"  # a non-square, odd-sized photo
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (77, 131, 3), dtype=np.uint8)).save(photo)
    default_mask, _ = client.predict(image=handle_file(photo), api_name="/segment")
    assert_binary_mask(default_mask, (131, 77))
    empty, _ = client.predict(image=handle_file(photo), threshold=0.95, api_name="/segment")
    full, _ = client.predict(image=handle_file(photo), threshold=0.05, api_name="/segment")
    assert np.asarray(Image.open(empty)).mean() <= np.asarray(Image.open(full)).mean()


def test_only_segment_is_in_the_api(client: Client):
    api = client.view_api(print_info=False, return_format="dict")
    assert list(api["named_endpoints"]) == ["/segment"]
    assert not api["unnamed_endpoints"]
    names = [p["parameter_name"] for p in api["named_endpoints"]["/segment"]["parameters"]]
    assert names == ["image", "threshold"]


def test_segment_rejects_a_threshold_out_of_range(client: Client, example_photo: Path):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="between 0 and 1"):
        client.predict(handle_file(example_photo), 1.5, api_name="/segment")


@pytest.mark.parametrize(("content", "message"), [(b"not an image", "not a readable image"), ("bomb", "megapixels")])
def test_segment_explains_bad_uploads(client: Client, tmp_path: Path, content, message: str):
    from gradio_client.exceptions import AppError

    upload = tmp_path / "upload.png"
    upload.write_bytes(big_blank_png() if content == "bomb" else content)
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(upload), api_name="/segment")


# ---------------------------------------------------------------- plain HTTP: POST /api/segment


@pytest.mark.parametrize(("output", "mode"), [("cutout", "RGBA"), ("mask", "L"), ("overlay", "RGB"), (None, "RGBA")])
def test_http_segment_outputs(app_url: str, example_photo: Path, output: str | None, mode: str):
    params = {} if output is None else {"output": output}
    r = post_segment(app_url, example_photo.read_bytes(), **params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert 0.0 <= float(r.headers["x-person-share"]) <= 1.0
    image = Image.open(io.BytesIO(r.content))
    assert image.mode == mode and image.size == Image.open(example_photo).size
    if output == "mask":
        assert_binary_mask(io.BytesIO(r.content), image.size)


def big_blank_png() -> bytes:
    """A tiny file that decodes to more pixels than MAX_PIXELS (a decompression bomb in miniature)."""
    side = int(app.LIMITS.max_pixels**0.5) + 64
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("content", "name", "params", "status", "message"),
    [
        (b"", "empty.jpg", {}, 400, "empty"),
        (b"this is not an image\n", "notes.png", {}, 415, "not a readable image"),
        (None, "", {}, 400, "field 'file'"),
        (b"JPEG", "photo.jpg", {"output": "thumbnail"}, 400, "output must be one of"),
        (b"JPEG", "photo.jpg", {"threshold": "high"}, 422, "threshold"),
        (b"JPEG", "photo.jpg", {"threshold": "1.5"}, 400, "threshold"),
        ("truncated", "cut.jpg", {}, 415, "not a readable image"),
        ("bomb", "huge.png", {}, 413, "megapixels"),
        ("oversized", "big.jpg", {}, 413, "MB"),
    ],
)
def test_http_bad_input_gets_4xx_json_and_the_server_lives_on(
    app_url: str, example_photo: Path, content, name: str, params: dict, status: int, message: str
):
    photo = example_photo.read_bytes()
    content = {
        "truncated": photo[: len(photo) // 3],
        "bomb": big_blank_png(),
        "oversized": b"\0" * (app.LIMITS.max_upload_bytes + 2**17),
    }.get(content, content)
    r = post_segment(app_url, content, name, **params)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert message in r.json()["error"]
    assert post_segment(app_url, photo).status_code == 200  # the next valid request works


@pytest.mark.parametrize("threshold", [None, 0.3, 0.7])
def test_http_mask_is_the_packages_mask(app_url: str, tiny_weights: Path, example_photo: Path, threshold: float | None):
    """One pipeline: the Space's HTTP mask equals Segmenter.segment's mask for the same photo and options."""
    params = {"output": "mask"} | ({} if threshold is None else {"threshold": str(threshold)})
    r = post_segment(app_url, example_photo.read_bytes(), **params)
    assert r.status_code == 200, r.text
    served = np.asarray(Image.open(io.BytesIO(r.content)))
    local = Segmenter.from_pretrained(tiny_weights, device="cpu").segment(Image.open(example_photo), Options(threshold))
    assert np.array_equal(served, np.asarray(local.mask))
    assert r.headers["x-person-present"] == ("false" if local.no_person else "true")
    assert float(r.headers["x-person-share"]) == pytest.approx(local.share, abs=1e-4)


def test_gradio_client_mask_is_the_packages_mask(client: Client, tiny_weights: Path, example_photo: Path):
    mask_path, _ = client.predict(handle_file(example_photo), 0.45, api_name="/segment")
    local = Segmenter.from_pretrained(tiny_weights, device="cpu").segment(Image.open(example_photo), Options(0.45))
    assert np.array_equal(np.asarray(Image.open(mask_path)), np.asarray(local.mask))


def test_http_non_multipart_body_is_a_400(app_url: str):
    r = httpx.post(f"{app_url}api/segment", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(
        f"{app_url}api/segment", content=b"--x\r\ngarbage", headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert r.status_code == 400 and "error" in r.json()


def test_ui_page_is_served(app_url: str):
    r = httpx.get(app_url, timeout=30)
    assert r.status_code == 200 and "<html" in r.text.lower()


# ---------------------------------------------------------------- app pieces, no server


def test_read_photo_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    photo = tmp_path / "p.png"
    Image.new("RGB", (40, 30)).save(photo)
    assert app.read_photo(photo).size == (40, 30)
    monkeypatch.setattr(app, "LIMITS", app.Limits(max_pixels=1000))
    with pytest.raises(app.InputError, match="megapixels") as e:
        app.read_photo(photo)
    assert e.value.status == 413
    monkeypatch.setattr(app, "LIMITS", app.Limits(max_upload_bytes=10))
    with pytest.raises(app.InputError, match="MB") as e:
        app.read_photo(photo)
    assert e.value.status == 413


def test_a_photo_swept_from_the_cache_asks_for_a_new_upload(tmp_path: Path):
    with pytest.raises(app.InputError, match=r"no longer on the server .* upload it again"):
        app.read_photo(tmp_path / "swept" / "photo.jpg")


def test_read_photo_applies_exif_orientation(tmp_path: Path):
    photo = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    Image.new("RGB", (60, 20)).save(photo, exif=exif)
    assert app.read_photo(photo).size == (20, 60)


def test_rerender_rethresholds_the_cached_map_without_a_model(tmp_path: Path, tiny_weights: Path):
    seg = Segmenter.from_pretrained(tiny_weights, device="cpu")
    seg.model = None  # rerender must never run the model
    image_path = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (90, 120, 150)).save(image_path)
    prob = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))  # left 0 ... right 255
    photo = {"path": str(image_path)}  # the raw payload of the gr.Image (its events run with preprocess=False)
    settings = app.PhotoSettings(0.5, False, True, 0.0, True, "Transparent", "#00ff00", 2.0, None)
    mask_half, cutout_path, *_, text = app.rerender(seg, str(tmp_path), photo, (prob, None), settings)
    mask_most, *_ = app.rerender(seg, str(tmp_path), photo, (prob, None), replace(settings, threshold=0.1))
    share = lambda p: (np.asarray(Image.open(p)) > 0).mean()  # noqa: E731
    assert share(mask_half) == pytest.approx(0.5, abs=0.03) and share(mask_most) == pytest.approx(0.9, abs=0.03)
    assert Image.open(cutout_path).mode == "RGBA"
    assert "Person found" in text and "person share" in text
    coloured = app.rerender(
        seg, str(tmp_path), photo, (prob, None), replace(settings, background="Colour", color="rgba(0, 255, 0, 1)")
    )
    composite = Image.open(coloured[4].value["path"])  # the DownloadButton's file
    assert np.asarray(composite)[24, 2].tolist() == pytest.approx([0, 255, 0], abs=8)
    # A presence score under the model's threshold: no person, an empty mask, and the status line says so.
    gated = app.rerender(seg, str(tmp_path), photo, (prob, 0.01), settings)
    assert share(gated[0]) == 0 and "No person found" in gated[5]
    ungated = app.rerender(seg, str(tmp_path), photo, (prob, 0.01), replace(settings, presence_gate=False))
    assert share(ungated[0]) == pytest.approx(0.5, abs=0.03)  # the user's override shows the mask anyway
    skipped = app.rerender(seg, str(tmp_path), photo, None, settings)  # nothing segmented yet
    assert len(skipped) == 6


def test_views_are_screen_sized_and_downloads_full_size(tmp_path: Path, tiny_weights: Path):
    seg = Segmenter.from_pretrained(tiny_weights, device="cpu")
    seg.model = None  # rendering never runs the model
    big = (app.PREVIEW_SIDE * 2 + 10, 700)
    image_path = tmp_path / "big.png"
    Image.new("RGB", big, (90, 120, 150)).save(image_path)
    prob = np.tile(np.linspace(0, 255, big[0]).astype(np.uint8), (big[1], 1))  # left 0 ... right 255
    photo = {"path": str(image_path)}
    settings = app.PhotoSettings(0.5, False, True, 2.0, True, "Colour", "#00ff00", 2.0, None)
    mask, cutout, overlay, (before, after), composite_btn, _ = app.rerender(
        seg, str(tmp_path), photo, (prob, None), settings
    )
    assert Image.open(mask).size == Image.open(cutout).size == Image.open(composite_btn.value["path"]).size == big
    assert before == str(image_path)  # the upload itself: the browser has it already, nothing is re-encoded
    overlay, after = Image.open(overlay), Image.open(after)
    for view in (overlay, after):
        assert max(view.size) == app.PREVIEW_SIDE and view.size[1] == round(700 / 2 * app.PREVIEW_SIDE / 1605)
    # The preview shows what the download holds: the same mask edge, shrunk.
    share = (np.asarray(after.convert("RGB"))[..., 1] > 200).mean()  # green background on the left half
    assert share == pytest.approx((np.asarray(Image.open(mask)) == 0).mean(), abs=0.01)


def test_single_photos_never_queue_behind_a_batch(tiny_weights: Path):
    """Batches have their own queue slot (one at a time); photos, the API and live frames share the model's."""
    demo = app.build_demo(Segmenter.from_pretrained(tiny_weights, device="cpu"))
    slots = {
        getattr(fn.fn, "func", fn.fn).__name__: (fn.concurrency_id, fn.concurrency_limit) for fn in demo.fns.values()
    }
    assert slots["segment_batch"] == ("batch", 1)
    assert slots["segment_photo"][0] == slots["segment_api"][0] == "model" != slots["segment_batch"][0]


def test_the_photo_events_take_the_settings_in_field_order(tiny_weights: Path):
    """Both Photo-tab events hand their settings components over in PhotoSettings' field order (no index by hand)."""
    demo = app.build_demo(Segmenter.from_pretrained(tiny_weights, device="cpu"))
    labels = {
        "threshold": "Threshold",
        "keep_largest": "Keep main person region",
        "fill_holes": "Fill holes",
        "feather_px": "Feather edge (px)",
        "presence_gate": "Empty mask when the model finds no person",
        "background": "Background",
        "color": "Colour",
        "blur_percent": "Blur strength (% of the photo's size)",
        "background_image": "Background image",
    }
    events = {getattr(fn.fn, "func", fn.fn).__name__: fn for fn in demo.fns.values() if fn.fn is not None}
    for name, leading in (("segment_photo", 1), ("rerender", 2)):
        inputs = events[name].inputs[leading:]
        assert [c.label for c in inputs] == [labels[n] for n in app.PhotoSettings.names()], name
    assert list(app.BACKGROUNDS.values()) == ["transparent", "color", "blur", "image"]  # from the Literal types


def test_run_batch_writes_masks_cutouts_and_figures(tmp_path: Path, tiny_weights: Path):
    photos = []
    for i, size in enumerate([(50, 40), (33, 71)]):
        photos.append(tmp_path / f"p{i}.jpg")
        Image.new("RGB", size, (200, 100, 50)).save(photos[-1])
    (tmp_path / "bad.png").write_text("not an image")
    seg = Segmenter.from_pretrained(tiny_weights, device="cpu")
    rows = run_batch(seg.segment, [*photos, tmp_path / "bad.png"], Options(0.5), tmp_path / "out.zip", app.LIMITS)
    with zipfile.ZipFile(tmp_path / "out.zip") as zf:
        names = set(zf.namelist())
        assert names == {
            "masks/001_p0.png",
            "cutouts/001_p0.png",
            "masks/002_p1.png",
            "cutouts/002_p1.png",
            "figures.csv",
        }
        mask = Image.open(io.BytesIO(zf.read("masks/002_p1.png")))
        assert Image.open(io.BytesIO(zf.read("cutouts/002_p1.png"))).size == (33, 71)
        table = list(csv.DictReader(io.StringIO(zf.read("figures.csv").decode())))
    assert [r["file"] for r in table] == ["p0.jpg", "p1.jpg", "bad.png"]
    expected = seg.segment(Image.open(photos[1]), Options(0.5))
    assert np.array_equal(np.asarray(mask), np.asarray(expected.mask))  # the package's mask, byte for byte
    assert float(table[1]["person_share"]) == pytest.approx(expected.share, abs=1e-4)
    assert "not a readable image" in table[2]["note"]
    assert len(rows) == 3


def test_missing_weights_exit_with_instructions(tmp_path: Path):
    with pytest.raises(app.MissingWeightsError, match=r"train\.py"):
        app.load_segmenter(tmp_path)
    env = {**os.environ, "SEGMENTER_MODEL": str(tmp_path), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "train.py --preset cpu-robust --export-to weights/" in proc.stderr and "SEGMENTER_MODEL" in proc.stderr


def test_no_person_over_http_and_gradio_client(tmp_path: Path, example_photo: Path):
    """A model whose presence head says "nobody": empty masks, X-Person-Present: false, the UI's status says so."""
    from helpers import make_presence_weights
    from served_app import serve_app

    weights = make_presence_weights(tmp_path / "nobody", presence_bias=-6.0)
    with serve_app(weights, tmp_path) as served:
        r = post_segment(served.url, example_photo.read_bytes(), output="mask")
        assert r.status_code == 200 and r.headers["x-person-present"] == "false"
        assert float(r.headers["x-presence"]) < 0.01 and "No person found" in r.headers["x-warning"]
        assert np.asarray(Image.open(io.BytesIO(r.content))).max() == 0
        mask_path, cutout_path = Client(served.url, verbose=False).predict(
            handle_file(example_photo), api_name="/segment"
        )
        assert np.asarray(Image.open(mask_path)).max() == 0 and np.asarray(Image.open(cutout_path))[..., 3].max() == 0
    somebody = make_presence_weights(tmp_path / "somebody", presence_bias=6.0)
    result = Segmenter.from_pretrained(somebody, device="cpu").segment(Image.open(example_photo))
    status = app.describe(result, 0.1)
    assert status.startswith("**Person found**") and "presence score:** 1.00" in status
    nobody = app.describe(Segmenter.from_pretrained(weights, device="cpu").segment(Image.open(example_photo)), 0.1)
    assert nobody.startswith("**No person found**") and "untick *Empty mask when the model finds no person*" in nobody


@pytest.mark.filterwarnings("ignore:No person found")  # gr.Warning outside a running app
def test_the_servers_work_holds_off_the_heap_trim(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_weights: Path
) -> None:
    """Segmenting and rendering run inside IDLE_TRIM.active(): the heap is trimmed only TRIM_IDLE_S after them."""
    from segmenter.server.memory import IdleTrim

    now, trims, during = [0.0], [], []
    idle_trim = IdleTrim(10.0, trim=lambda: trims.append(now[0]) or True, clock=lambda: now[0])
    monkeypatch.setattr(app, "IDLE_TRIM", idle_trim)
    seg = Segmenter.from_pretrained(tiny_weights, device="cpu")
    model_step = seg.segment
    seg.segment = lambda *a: (during.append(idle_trim()), model_step(*a))[1]  # a sweep while the model runs
    saving = app.save_all_to_cache
    monkeypatch.setattr(app, "save_all_to_cache", lambda *a: (during.append(idle_trim()), saving(*a))[1])
    image_path = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (90, 120, 150)).save(image_path)
    settings = app.PhotoSettings(0.5, False, True, 2.0, True, "Transparent", "#00ff00", 2.0, None)
    now[0] = 50.0  # idle 50 s since start-up when the photo comes
    app.segment_photo(app.make_segment(seg), str(tmp_path), {"path": str(image_path)}, settings)
    assert during == [False, False]  # never trimmed while it segments or writes its files
    assert not idle_trim()  # nor right after
    now[0] = 60.0
    assert idle_trim() and trims == [60.0]
    server = app.create_app(tiny_weights)
    try:
        assert server.state.cache_sweeper.after is (idle_trim if app.TRIM_HEAP else None)
    finally:
        server.state.cache_sweeper.stop()


def test_result_files_are_made_side_by_side_in_order_and_errors_surface(tmp_path: Path) -> None:
    from segmenter.server.views import save_all_to_cache

    jobs = {"mask.png": lambda: Image.new("L", (8, 6)), "preview.webp": lambda: Image.new("RGB", (9, 7))}
    paths = save_all_to_cache(jobs, str(tmp_path))
    assert [Path(p).name for p in paths] == ["mask.png", "preview.webp"]  # the order asked for
    assert [Image.open(p).size for p in paths] == [(8, 6), (9, 7)]

    def broken() -> Image.Image:
        raise ValueError("no image today")

    with pytest.raises(ValueError, match="no image today"):
        save_all_to_cache({"ok.png": lambda: Image.new("L", (4, 4)), "broken.png": broken}, str(tmp_path))


# ---------------------------------------------------------------- issue 28: thresholds, clear errors, examples


THRESHOLD_MESSAGE = "threshold must be a number between 0 and 1 (exclusive)"


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_every_entry_point_refuses_0_and_1_with_the_one_message(
    threshold: float, app_url: str, client: Client, example_photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    """The Python API, the CLI, HTTP, gradio_client and the UI's settings all go through pipeline.check_threshold."""
    from gradio_client.exceptions import AppError

    from segmenter.cli import main as cli

    with pytest.raises(ValueError, match=re.escape(THRESHOLD_MESSAGE)):
        Options(threshold)
    with pytest.raises(SystemExit):
        cli([str(example_photo), "-o", str(tmp_path / "out"), "--threshold", str(threshold)])
    assert THRESHOLD_MESSAGE in capsys.readouterr().err
    r = post_segment(app_url, example_photo.read_bytes(), threshold=str(threshold))
    assert r.status_code == 400 and THRESHOLD_MESSAGE in r.json()["error"]
    with pytest.raises(AppError, match=re.escape(THRESHOLD_MESSAGE)):
        client.predict(handle_file(example_photo), threshold, api_name="/segment")
    with pytest.raises(app.InputError, match=re.escape(THRESHOLD_MESSAGE)):
        app.PhotoSettings(threshold, False, True, 2, True, "Transparent", "#00b140", 3, None).parse()
    with pytest.raises(gr.Error, match=re.escape(THRESHOLD_MESSAGE)):
        app.segment_batch(lambda *a: None, str(tmp_path), [str(example_photo)], threshold)


@pytest.mark.parametrize(
    ("image", "threshold", "message"),
    [
        ("photo", "abc", THRESHOLD_MESSAGE),
        ("plain string", 0.5, "Send the image as a file: handle_file(path)"),
    ],
)
def test_gradio_client_mistakes_get_a_clear_error_and_no_traceback(
    client: Client, example_photo: Path, capfd: pytest.CaptureFixture, image: str, threshold: object, message: str
):
    """threshold="abc", or a path as a plain string instead of handle_file(...): once Gradio's generic "The upstream
    Gradio app has raised an exception" and a traceback in the log; now a gr.Error saying what to send."""
    from gradio_client.exceptions import AppError

    capfd.readouterr()
    upload = handle_file(example_photo) if image == "photo" else str(example_photo)
    with pytest.raises(AppError, match=re.escape(message)):
        client.predict(upload, threshold, api_name="/segment")
    assert "Traceback" not in capfd.readouterr().err  # the server runs in this process: its stderr is ours


def ui_event(url: str, fn_index: int, data: list, session: str) -> dict:
    """Run one UI event through the queue as the browser does (join, then read the session's stream); its
    process_completed message."""
    body = {"data": data, "fn_index": fn_index, "session_hash": session}
    event = httpx.post(f"{url}gradio_api/queue/join", json=body, timeout=30).json()["event_id"]
    with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed" and message.get("event_id") == event:
                    return message
    raise AssertionError("the event never completed")


def test_examples_work_past_the_cache_age_limit(app_url: str):
    """Gradio copies the examples into its cache once, at start-up; the sweeper deleted them after CACHE_MAX_AGE_MIN
    (then the file route said 403 and clicking one said the photo was gone). Aged past the limit, they stay."""
    config = httpx.get(f"{app_url}config", timeout=30).json()
    dataset = next(c for c in config["components"] if c.get("type") == "dataset")
    examples = [sample[0] for sample in dataset["props"]["samples"]]
    assert examples and all(Path(e["path"]).is_file() for e in examples)
    cache = Path(os.environ["GRADIO_TEMP_DIR"])
    old = time.time() - 2 * app.CACHE_MAX_AGE_MIN * 60
    for e in examples:
        os.utime(e["path"], (old, old))
    # An ordinary old result is gone once a sweep has run. Two in turn: the sweep that deletes the first may have
    # listed the examples before they were aged; the one that deletes the second listed it, so it began after.
    for n in range(2):
        marker = cache / "issue-28" / f"old-result-{n}.png"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_bytes(b"x")
        os.utime(marker, (old, old))
        wait_for(lambda marker=marker: not marker.exists(), 300, "a cache sweep (the sweeper runs every second)")
    assert all(Path(e["path"]).is_file() for e in examples)
    assert httpx.get(f"{app_url}gradio_api/file={examples[0]['path']}", timeout=30).status_code == 200
    photo = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "photo")
    index = next(d["id"] for d in config["dependencies"] if d["inputs"] and d["inputs"][0] == photo)
    settings = app.PhotoSettings(0.5, False, True, 2, True, "Transparent", "#00b140", 3, None).values()
    done = ui_event(app_url, index, [{**examples[0], "meta": {"_type": "gradio.FileData"}}, *settings], "examples")
    assert done["success"], done
    status = done["output"]["data"][5]
    assert "no longer on the server" not in json.dumps(status), status


def test_the_app_has_its_own_temp_folder(tmp_path: Path, tiny_weights: Path):
    """Gradio's default, /tmp/gradio, is shared by every Gradio app on the host, and the sweeper empties its folder:
    without GRADIO_TEMP_DIR the app uses a folder of its own, and another app's files there stay."""
    from segmenter.server.cache import sweep

    env = {k: v for k, v in os.environ.items() if k != "GRADIO_TEMP_DIR"}
    env.update(TMPDIR=str(tmp_path), LIVE_WEBCAM="off", GRADIO_ANALYTICS_ENABLED="False")
    code = (
        "import app; from segmenter import Segmenter; "
        f"print(app.build_demo(Segmenter.from_pretrained({str(tiny_weights)!r}, device='cpu')).GRADIO_CACHE)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    folder = Path(proc.stdout.strip().splitlines()[-1])
    shared = tmp_path / "gradio"
    assert folder.is_relative_to(tmp_path) and not folder.is_relative_to(shared), folder
    other = shared / "other-app" / "upload.png"  # another Gradio app's old file
    other.parent.mkdir(parents=True)
    other.write_bytes(b"x")
    os.utime(other, (0, 0))
    sweep(folder, max_bytes=1, max_age_s=1)
    assert other.exists()
