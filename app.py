"""Person segmentation Space: a pix2pix-trained U-Net finds the people in a photo; cut them out or swap the background.

``python app.py`` serves the Gradio UI, its API (``/segment`` for gradio_client) and a plain HTTP endpoint
(``POST /api/segment``) on one server, http://0.0.0.0:7860 unless GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say
otherwise. Other settings, all from the environment: SEGMENTER_MODEL (weights folder, .safetensors file or Hub repo
id; default ``weights/``), MAX_UPLOAD_MB, MAX_PIXELS, CONCURRENCY, MAX_BATCH, LIVE_WEBCAM (auto | on | off).
Tests build the server with :func:`create_app` (or just the UI with :func:`build_demo`).
"""

from __future__ import annotations

try:  # ZeroGPU Spaces: `spaces` must be imported before torch sets up CUDA.
    import spaces
except ImportError:
    spaces = None

import csv
import io
import json
import logging
import os
import sys
import time
import uuid
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio
import gradio as gr
import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from segmenter import blend, refine
from segmenter.data import to_rgb
from segmenter.inference import Segmenter

TITLE = "Person segmentation"
DESCRIPTION = """\
# Person segmentation
Upload a photo, paste one or take a webcam snapshot: a pix2pix-trained U-Net marks every pixel that belongs to a
person. Get the **mask**, a transparent **cutout** and an **overlay**, then tune the threshold, clean the mask up or
put the person on a new background, without running the model again. The *Batch* tab segments many photos at once.
Scripts can use the [`/segment` API](?view=api) (gradio_client) or `POST /api/segment` (plain HTTP, returns a PNG).
"""

MODEL_ID = os.getenv("SEGMENTER_MODEL", "weights/")
MAX_UPLOAD_MB = float(os.getenv("MAX_UPLOAD_MB", "20"))
MAX_PIXELS = int(os.getenv("MAX_PIXELS", "16000000"))
CONCURRENCY = int(os.getenv("CONCURRENCY", "2"))  # model runs at a time: Gradio events share it; HTTP has its own
# CPU threads per model call: CONCURRENCY calls at once must not oversubscribe the cores (OpenMP threads that
# wait for each other made 2 threads x 2 calls on 2 cores several times slower than 1 x 2; see bench/).
TORCH_THREADS = int(os.getenv("TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, CONCURRENCY)))))
MAX_BATCH = int(os.getenv("MAX_BATCH", "24"))  # photos per batch request
LIVE_WEBCAM = os.getenv("LIVE_WEBCAM", "auto").lower()  # auto: on with CUDA or when the CPU keeps up
ZERO_GPU = os.getenv("SPACES_ZERO_GPU") == "true"
SPACE_ID = os.getenv("SPACE_ID")
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
MAX_UPLOAD_BYTES = int(MAX_UPLOAD_MB * 2**20)
MIN_SHARE = 0.005  # a mask covering less of the photo than this means "no person found"
MIN_CONFIDENCE = 0.75  # mean probability inside the mask below this: "low confidence"
PREVIEW_SIDE = 1600  # longest side of view-only images (overlay, before/after)
LIVE_SIDE = 480  # webcam frames are shrunk to this before segmenting
SHUTDOWN_SECONDS = 5  # on SIGTERM, open connections get this long before they are cut and the cache is cleaned
LIVE_MAX_SECONDS = 0.25  # LIVE_WEBCAM=auto: the model must be this fast on a frame
BACKGROUNDS = ("Transparent", "Colour", "Blurred photo", "Image")
TRAIN_COMMAND = "python train.py --preset cpu --export-to weights/"
SEGMENT_API_NAME = "segment"
HTTP_OUTPUTS = ("cutout", "mask", "overlay")
GRADIO_API = "/gradio_api/"
CSV_COLUMNS = ["file", "width", "height", "person_share", "confidence", "seconds", "note"]
CSS = """
#stats { min-height: 3em; }
#cutout img { background: repeating-conic-gradient(#e5e5e5 0 25%, #ffffff 0 50%) 50% / 20px 20px; }
"""  # transparent pixels of cutouts show as a checkerboard

# Decompression-bomb guard: PIL refuses images above the pixel cap instead of only warning.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.simplefilter("error", Image.DecompressionBombWarning)

log = logging.getLogger("app")
Predictor = Callable[[Image.Image], np.ndarray]


class InputError(ValueError):
    """A problem with what the user sent: shown to them (gr.Error) or answered with HTTP ``status``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class MissingWeightsError(FileNotFoundError):
    """No model.safetensors where the app looks for it (the message says how to get one)."""


@dataclass(frozen=True)
class Cleanup:
    """How a probability map becomes a mask."""

    threshold: float = 0.5
    keep_largest: bool = False
    fill_holes: bool = True
    feather_px: float = 2.0


@dataclass(frozen=True)
class Background:
    """What the person is composited onto (``mode`` is one of BACKGROUNDS)."""

    mode: str = "Transparent"
    color: str = "#00b140"
    blur_percent: float = 2.0  # blur radius as a percentage of the photo's longer side
    image_path: str | None = None


@dataclass
class Segmentation:
    """One photo's result at full resolution."""

    mask: Image.Image  # binary "L" (0/255)
    alpha: Image.Image  # "L" opacity for cutouts and composites: the mask, feathered
    share: float  # fraction of the photo covered by the mask
    confidence: float  # mean person probability inside the mask (0 when empty)

    @property
    def warning(self) -> str | None:
        if self.share < MIN_SHARE:
            return "No person found: the mask is (almost) empty. Try a lower threshold or another photo."
        if self.confidence < MIN_CONFIDENCE:
            return f"Low confidence ({self.confidence:.2f}): the model is unsure about this photo."
        return None


# ---------------------------------------------------------------- images in, images out


def load_image(source: str | Path | bytes) -> Image.Image:
    """An uploaded file (path or bytes) -> upright RGB image, refusing files over MAX_UPLOAD_MB or MAX_PIXELS."""
    nbytes = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
    if nbytes == 0:
        raise InputError("The file is empty.")
    if nbytes > MAX_UPLOAD_BYTES:
        raise InputError(f"The file has {nbytes / 2**20:.1f} MB; the limit is {MAX_UPLOAD_MB:g} MB.", 413)
    too_big = f"Images may have at most {MAX_PIXELS / 1e6:g} megapixels; please send a smaller one."
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            if im.width * im.height > MAX_PIXELS:
                raise InputError(f"The image has {im.width}x{im.height} pixels. {too_big}", 413)
            im.load()
            return to_rgb(im)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(too_big, 413) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError("The file is not a readable image (JPEG, PNG, WebP, BMP, TIFF or GIF).", 415) from e


def upload_path(payload: dict | None) -> str | None:
    """The cached file of an image input's raw payload.

    The photo events run with ``preprocess=False``: Gradio does not decode the upload itself, so load_image's
    caps and clear messages (naming the limit) are what the user sees, and the photo is decoded only once.
    """
    if payload is None:
        return None
    if not payload.get("path"):
        raise InputError("Send the image as a file upload.")
    return payload["path"]


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes, fast zlib level (12-megapixel cutouts would take seconds at the default level)."""
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def save_to_cache(image: Image.Image, cache_dir: str, name: str) -> str:
    """Write ``image`` (PNG, or JPEG for a .jpg name) into a new folder of Gradio's cache; returns its path.

    Files there are served as they are and removed by Blocks(delete_cache=...); ``name`` is the download name.
    """
    path = Path(cache_dir) / uuid.uuid4().hex / name
    path.parent.mkdir(parents=True)
    if path.suffix == ".jpg":
        image.save(path, "JPEG", quality=92)
    else:
        path.write_bytes(encode_png(image))
    return str(path)


def preview(image: Image.Image) -> Image.Image:
    """A copy no larger than PREVIEW_SIDE, for view-only outputs."""
    small = image.copy()
    small.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.BILINEAR)
    return small


def parse_color(value: str) -> tuple[int, int, int]:
    """'#rrggbb', 'rgb(r, g, b)' or 'rgba(r, g, b, a)' (what gr.ColorPicker may send) -> (r, g, b)."""
    try:
        return ImageColor.getrgb(value)[:3]
    except ValueError:
        parts = value.strip().removeprefix("rgba").removeprefix("rgb").strip("()").split(",")
        try:
            return tuple(round(float(p)) for p in parts[:3])  # type: ignore[return-value]
        except ValueError:
            raise InputError(f"Not a colour: {value!r}.") from None


# ---------------------------------------------------------------- model and masks


def load_segmenter(model_id: str | Path = MODEL_ID) -> Segmenter:
    """Load the generator once; a missing weights folder raises MissingWeightsError saying how to get one."""
    path = Path(model_id)
    if (path.is_dir() or str(model_id).rstrip("/") == "weights") and not (path / "model.safetensors").is_file():
        raise MissingWeightsError(
            f"No model weights: {path}/model.safetensors does not exist.\n"
            f"Train and export a model with\n    {TRAIN_COMMAND}\n"
            "or point SEGMENTER_MODEL at a weights folder, a .safetensors file or a Hub repo id, e.g.\n"
            "    SEGMENTER_MODEL=runs/<run-id>/export python app.py"
        )
    return Segmenter.from_pretrained(model_id)


def make_predictor(seg: Segmenter) -> Predictor:
    """photo -> (256, 256) float32 person probabilities. The one function that needs the GPU (ZeroGPU-wrapped)."""

    def predict_low_res(image: Image.Image) -> np.ndarray:
        with torch.inference_mode():
            return seg.predict_low_res([image])[0].numpy()

    return spaces.GPU(predict_low_res) if spaces is not None else predict_low_res


def probability_map(predict: Predictor, image: Image.Image) -> np.ndarray:
    """Photo -> HxW uint8 probabilities (0-255) at full resolution: the model's output guided-upsampled."""
    prob = refine.guided_upsample(predict(image), image)
    return (prob * 255.0 + 0.5).astype(np.uint8)


def make_mask(prob: np.ndarray, cleanup: Cleanup) -> Segmentation:
    """Threshold a uint8 probability map and clean the mask up (main region, holes, feathered edge)."""
    mask = prob >= np.uint8(min(255, int(np.ceil(cleanup.threshold * 255.0 - 1e-6))))
    if cleanup.keep_largest:
        mask = refine.keep_largest_component(mask)
    if cleanup.fill_holes:
        mask = refine.fill_holes(mask)
    alpha = refine.feather(mask, cleanup.feather_px)
    return Segmentation(
        mask=Image.fromarray(mask.astype(np.uint8) * 255, "L"),
        alpha=Image.fromarray((alpha * 255.0 + 0.5).astype(np.uint8), "L"),
        share=float(mask.mean()),
        confidence=float(prob[mask].mean() / 255.0) if mask.any() else 0.0,
    )


def composite(image: Image.Image, alpha: Image.Image, background: Background) -> Image.Image:
    """The person (``alpha``) on the chosen background: RGBA for "Transparent", RGB otherwise."""
    if background.mode == "Colour":
        return blend.solid_background(image, alpha, parse_color(background.color))
    if background.mode == "Blurred photo":
        return blend.blur_background(image, alpha, background.blur_percent / 100.0 * max(image.size))
    if background.mode == "Image":
        if not background.image_path:
            raise InputError("Choose a background image.")
        return blend.replace_background(image, alpha, ImageOps.fit(load_image(background.image_path), image.size))
    return blend.cutout(image, alpha)


def describe(result: Segmentation, size: tuple[int, int], seconds: float) -> str:
    """Markdown feedback: person share, confidence, time, and a warning when nobody was found."""
    text = (f"**Person share:** {result.share:.1%} of {size[0]}x{size[1]} px · "
            f"**confidence:** {result.confidence:.2f} · **time:** {seconds:.2f} s")  # fmt: skip
    return text if result.warning is None else f"{text}\n\n⚠️ **{result.warning}**"


# ---------------------------------------------------------------- UI event handlers
# Module-level so tests can call them; build_demo binds ``predict`` and the cache folder with functools.partial.
# ``rerender`` gets no predictor at all: re-thresholding and re-compositing can never run the model.

EMPTY_MESSAGE = "Upload a photo, paste one, take a webcam snapshot or pick an example."


def read_settings(values: tuple) -> tuple[Cleanup, Background]:
    """The UI's settings components' raw values, in order, -> (Cleanup, Background)."""
    threshold, keep_largest, fill_holes, feather_px, mode, color, blur_percent, bg_payload = values
    return (Cleanup(float(threshold), bool(keep_largest), bool(fill_holes), float(feather_px)),
            Background(mode, color, float(blur_percent), upload_path(bg_payload)))  # fmt: skip


def render(cache_dir: str, path: str, image: Image.Image, prob: np.ndarray, values: tuple, start: float,
           notify: bool = False) -> tuple:  # fmt: skip
    """Mask, cutout, overlay, before/after, composite download and feedback text from a probability map.

    ``notify``: also pop up a gr.Warning when no person was found (once per model run, not on every slider move).
    """
    cleanup, background = read_settings(values)
    if background.mode == "Image" and not background.image_path:
        gr.Info("Upload a background image under the Background choice.")
        background = Background()
    result = make_mask(prob, cleanup)
    stem = Path(path).stem
    cutout = blend.cutout(image, result.alpha)
    final = cutout if background.mode == "Transparent" else composite(image, result.alpha, background)
    download = (gr.DownloadButton(visible=False) if final is cutout else
                gr.DownloadButton(value=save_to_cache(final, cache_dir, f"{stem}-composite.jpg"), visible=True))  # fmt: skip
    if notify and result.warning:
        gr.Warning(result.warning)
    return (save_to_cache(result.mask, cache_dir, f"{stem}-mask.png"),
            save_to_cache(cutout, cache_dir, f"{stem}-cutout.png"),
            preview(blend.overlay(image, result.mask)),
            (preview(image), preview(final)),
            download,
            describe(result, image.size, time.perf_counter() - start))  # fmt: skip


def segment_photo(predict: Predictor, cache_dir: str, photo: dict | None, *values: object) -> tuple:
    """Run the model on the photo and render; the last output is the probability map for the session's gr.State."""
    if photo is None:
        return None, None, None, None, gr.DownloadButton(visible=False), EMPTY_MESSAGE, None
    start = time.perf_counter()
    try:
        path = upload_path(photo)
        image = load_image(path)
        prob = probability_map(predict, image)
        return (*render(cache_dir, path, image, prob, values, start, notify=True), prob)
    except InputError as e:
        raise gr.Error(str(e)) from e


def rerender(cache_dir: str, photo: dict | None, prob: np.ndarray | None, *values: object) -> tuple:
    """Re-threshold, re-clean and re-composite the cached probability map (no model call)."""
    start = time.perf_counter()
    try:
        path = upload_path(photo)
        image = load_image(path) if path is not None and prob is not None else None
        if image is None or prob.shape != (image.height, image.width):  # nothing segmented yet, or a new photo
            return tuple(gr.skip() for _ in range(6))
        return render(cache_dir, path, image, prob, values, start)
    except InputError as e:
        raise gr.Error(str(e)) from e


def segment_api(predict: Predictor, cache_dir: str, image: dict | None, threshold: float) -> tuple[str, str]:
    """Segment one photo: returns (binary mask PNG, RGBA cutout PNG), both at the photo's size."""
    try:
        if image is None:
            raise InputError("Send a photo.")
        if not 0.0 < threshold < 1.0:
            raise InputError(f"threshold must be between 0 and 1, got {threshold}")
        path = upload_path(image)
        photo = load_image(path)
    except InputError as e:
        raise gr.Error(str(e)) from e
    result = make_mask(probability_map(predict, photo), Cleanup(threshold))
    stem = Path(path).stem
    return (save_to_cache(result.mask, cache_dir, f"{stem}-mask.png"),
            save_to_cache(blend.cutout(photo, result.alpha), cache_dir, f"{stem}-cutout.png"))  # fmt: skip


def segment_batch(predict: Predictor, cache_dir: str, paths: list[str] | None, threshold: float,
                  progress: gr.Progress = gr.Progress()) -> tuple[list[str], list[list]]:  # noqa: B008  # fmt: skip
    """Many photos -> ([ZIP of masks and cutouts, CSV of figures], the figures as table rows)."""
    if not paths:
        raise gr.Error("Add some photos first.")
    if len(paths) > MAX_BATCH:
        raise gr.Error(f"{len(paths)} photos: at most {MAX_BATCH} per batch.")
    folder = Path(cache_dir) / uuid.uuid4().hex
    folder.mkdir(parents=True)
    rows = run_batch(predict, [Path(p) for p in paths], Cleanup(threshold), folder / "segmentation.zip", progress.tqdm)
    (folder / "figures.csv").write_text(csv_text(rows))
    return [str(folder / "segmentation.zip"), str(folder / "figures.csv")], [[r[c] for c in CSV_COLUMNS] for r in rows]


def segment_frame(predict: Predictor, frame: np.ndarray | None, threshold: float) -> np.ndarray | None:
    """One webcam frame -> overlay, shrunk to LIVE_SIDE for speed."""
    if frame is None:
        return None
    image = Image.fromarray(frame).convert("RGB")
    image.thumbnail((LIVE_SIDE, LIVE_SIDE), Image.BILINEAR)
    result = make_mask(probability_map(predict, image), Cleanup(threshold, fill_holes=False, feather_px=0))
    return np.asarray(blend.overlay(image, result.mask))


def show_background_controls(mode: str) -> tuple[gr.ColorPicker, gr.Slider, gr.Image]:
    """Show only the control that the chosen background needs."""
    return (gr.ColorPicker(visible=mode == "Colour"), gr.Slider(visible=mode == "Blurred photo"),
            gr.Image(visible=mode == "Image"))  # fmt: skip


# ---------------------------------------------------------------- Gradio UI


def model_card(seg: Segmenter, live_note: str) -> str:
    """Markdown for the Model tab, from the weights' config meta."""
    info = seg.info()
    metrics = info.get("metrics") or {}
    test, val = metrics.get("test") or {}, metrics.get("val") or {}
    params = sum(p.numel() for p in seg.model.parameters())

    def fmt(d: dict, key: str) -> str:
        return f"{d[key]:.3f}" if isinstance(d.get(key), int | float) else "n/a"

    how = (f"[README → Training](https://huggingface.co/spaces/{SPACE_ID}/blob/main/README.md#training)"
           if SPACE_ID else "the *Training* section of README.md")  # fmt: skip
    size = seg.cfg.input_size
    lines = [
        "| Model | |", "|---|---|",
        f"| Generator | `{info['arch']}`: {params / 1e6:.2f} M parameters, input {size}x{size} |",
        f"| Weights sha256 | `{info.get('sha256', 'n/a')}` |",
        f"| Test mIoU | {fmt(test, 'iou')} (validation: {fmt(val, 'iou')}) |",
        f"| Training run | `{info.get('run_id', 'n/a')}` |",
        f"| Training command | `{info.get('command') or TRAIN_COMMAND}` |",
        f"| Device | {seg.device.type}{' (ZeroGPU)' if ZERO_GPU else ''} |",
        f"| Live webcam | {live_note} |",
    ]  # fmt: skip
    return "\n".join(lines) + (f"\n\nHow the model was trained: see {how}. Masks are predicted at {size}x{size} "
                               "and brought to the photo's resolution with an edge-aware guided filter.")  # fmt: skip


def live_webcam_status(seg: Segmenter, predict: Predictor) -> tuple[bool, str]:
    """Whether to offer the live webcam tab (LIVE_WEBCAM=auto: with CUDA, or when the CPU runs the model fast)."""
    if LIVE_WEBCAM in ("on", "off"):
        return LIVE_WEBCAM == "on", f"{LIVE_WEBCAM} (LIVE_WEBCAM)"
    if ZERO_GPU:
        return False, "off on ZeroGPU (every frame would claim a GPU)"
    if seg.device.type == "cuda":
        return True, "on (CUDA)"
    frame = Image.new("RGB", (seg.cfg.input_size, seg.cfg.input_size), (128, 128, 128))
    predict(frame)  # warm-up
    start = time.perf_counter()
    predict(frame)
    seconds = time.perf_counter() - start
    on = seconds <= LIVE_MAX_SECONDS
    return on, f"{'on' if on else 'off'}: the model takes {seconds * 1000:.0f} ms per frame on this CPU"


def example_paths() -> list[str]:
    """The bundled example photos (examples/*.jpg|png|webp)."""
    return sorted(str(p) for p in EXAMPLES_DIR.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))


def build_demo(seg: Segmenter, predict: Predictor | None = None) -> gr.Blocks:
    """The Gradio UI around one loaded model, queue configured; mount it (create_app) or ``.launch()`` it.

    ``predict`` (photo -> 256x256 probabilities) defaults to ``make_predictor(seg)``.
    """
    predict = predict or make_predictor(seg)
    live_on, live_note = live_webcam_status(seg, predict)
    cleanup = Cleanup(threshold=seg.threshold)

    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(DESCRIPTION)
        with gr.Tabs():
            with gr.Tab("Photo", id="photo"):
                with gr.Row():
                    with gr.Column(scale=2):
                        photo = gr.Image(label="Photo", type="filepath", image_mode=None, height=380, elem_id="photo",
                                         sources=["upload", "webcam", "clipboard"],
                                         webcam_options=gr.WebcamOptions(mirror=True))  # fmt: skip
                        run_btn = gr.Button("Segment", variant="primary", elem_id="run")
                        with gr.Accordion("Mask and background", open=True):
                            threshold = gr.Slider(0.05, 0.95, value=cleanup.threshold, step=0.01, label="Threshold",
                                                  info="Re-applied to the cached prediction: the model does not run again")  # fmt: skip
                            with gr.Row():
                                keep_largest = gr.Checkbox(cleanup.keep_largest, label="Keep main person region")
                                fill = gr.Checkbox(cleanup.fill_holes, label="Fill holes")
                            feather_px = gr.Slider(0, 20, value=cleanup.feather_px, step=1, label="Feather edge (px)")
                            bg_mode = gr.Radio(list(BACKGROUNDS), value="Transparent", label="Background")
                            bg_color = gr.ColorPicker(Background.color, label="Colour", visible=False)
                            blur = gr.Slider(0.5, 10, value=Background.blur_percent, step=0.5, visible=False,
                                             label="Blur strength (% of the photo's size)")  # fmt: skip
                            bg_image = gr.Image(label="Background image", type="filepath", image_mode=None, height=160,
                                                sources=["upload", "clipboard"], visible=False)  # fmt: skip
                        gr.Examples(example_paths(), inputs=photo, api_visibility="private", examples_per_page=8)
                    with gr.Column(scale=3):
                        stats = gr.Markdown(EMPTY_MESSAGE, elem_id="stats")
                        with gr.Row(equal_height=True):
                            mask_out = gr.Image(label="Mask", type="filepath", format="png", image_mode="L",
                                                buttons=["download", "fullscreen"], elem_id="mask")  # fmt: skip
                            cutout_out = gr.Image(label="Cutout", type="filepath", format="png",
                                                  image_mode="RGBA", buttons=["download", "fullscreen"], elem_id="cutout")  # fmt: skip
                            overlay_out = gr.Image(
                                label="Overlay", format="jpeg", buttons=["fullscreen"], elem_id="overlay"
                            )
                        before_after = gr.ImageSlider(label="Before / after (drag the handle)", format="webp",
                                                      image_mode=None, max_height=520, elem_id="before-after")  # fmt: skip
                        composite_btn = gr.DownloadButton("Download composite (full resolution)", visible=False)
                prob_state = gr.State(None, time_to_live=3600)  # this session's full-resolution probability map
                api_btn = gr.Button(visible=False)  # the trigger of the /segment API endpoint

            with gr.Tab("Batch", id="batch"):
                gr.Markdown(f"Segment up to {MAX_BATCH} photos at once: you get a ZIP with a mask and a cutout per "
                            "photo, and a CSV of per-photo figures (also shown below).")  # fmt: skip
                with gr.Row():
                    with gr.Column():
                        batch_files = gr.File(label="Photos", file_count="multiple", file_types=["image"],
                                              elem_id="batch-files")  # fmt: skip
                        batch_threshold = gr.Slider(0.05, 0.95, value=cleanup.threshold, step=0.01, label="Threshold")
                        batch_btn = gr.Button("Segment all", variant="primary", elem_id="batch-run")
                    batch_out = gr.File(label="Results (ZIP and CSV)", file_count="multiple", interactive=False,
                                        elem_id="batch-out")  # fmt: skip
                batch_table = gr.Dataframe(
                    headers=CSV_COLUMNS,
                    label="Per-photo figures",
                    interactive=False,
                    wrap=True,
                    column_widths=["20%", "8%", "8%", "12%", "11%", "9%", "32%"],
                )

            if live_on:
                with gr.Tab("Live webcam", id="live"):
                    gr.Markdown("Start the camera: each frame is segmented as it arrives (up to a minute per session).")
                    with gr.Row():
                        live_in = gr.Image(label="Camera", sources=["webcam"], streaming=True, type="numpy",
                                           webcam_options=gr.WebcamOptions(mirror=True), elem_id="live-in")  # fmt: skip
                        live_out = gr.Image(label="Segmented", format="jpeg", elem_id="live-out")
                    live_threshold = gr.Slider(0.05, 0.95, value=cleanup.threshold, step=0.01, label="Threshold")

            with gr.Tab("Model", id="model"):
                gr.Markdown(model_card(seg, live_note), elem_id="model-card")

        cache = photo.GRADIO_CACHE
        settings = [threshold, keep_largest, fill, feather_px, bg_mode, bg_color, blur, bg_image]
        outputs = [mask_out, cutout_out, overlay_out, before_after, composite_btn, stats]
        gr.on([run_btn.click, photo.change], partial(segment_photo, predict, cache), [photo, *settings],
              [*outputs, prob_state], api_visibility="private", trigger_mode="always_last", concurrency_id="model",
              preprocess=False)  # fmt: skip
        gr.on([threshold.release, keep_largest.change, fill.change, feather_px.release, bg_mode.change,
               bg_color.change, blur.release, bg_image.change], partial(rerender, cache), [photo, prob_state, *settings],
              outputs, api_visibility="private", trigger_mode="always_last", show_progress="minimal",
              preprocess=False)  # fmt: skip
        bg_mode.change(show_background_controls, bg_mode, [bg_color, blur, bg_image], api_visibility="private",
                       queue=False)  # fmt: skip
        api_btn.click(partial(segment_api, predict, cache), [photo, threshold], [mask_out, cutout_out],
                      api_name=SEGMENT_API_NAME, api_visibility="public", concurrency_id="model",
                      api_description=segment_api.__doc__, preprocess=False)  # fmt: skip
        batch_btn.click(partial(segment_batch, predict, cache), [batch_files, batch_threshold], [batch_out, batch_table],
                        api_visibility="private", concurrency_id="model")  # fmt: skip
        if live_on:
            live_in.stream(partial(segment_frame, predict), [live_in, live_threshold], live_out, stream_every=0.2,
                           time_limit=60, concurrency_id="model", api_visibility="private")  # fmt: skip

    return demo.queue(default_concurrency_limit=CONCURRENCY, max_size=64)


# ---------------------------------------------------------------- batch


def run_batch(predict: Predictor, paths: list[Path], cleanup: Cleanup, zip_path: Path,
              progress: Callable = iter) -> list[dict]:  # fmt: skip
    """Segment ``paths`` into ``zip_path`` (masks/NNN_name.png, cutouts/NNN_name.png, figures.csv).

    Returns a row of figures per photo; an unreadable photo gets a row with the reason instead of stopping the batch.
    """
    rows = []
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for i, path in enumerate(progress(paths), start=1):
            start = time.perf_counter()
            row: dict = {**dict.fromkeys(CSV_COLUMNS, ""), "file": path.name}
            try:
                image = load_image(path)
            except InputError as e:
                rows.append({**row, "note": str(e)})
                continue
            result = make_mask(probability_map(predict, image), cleanup)
            name = f"{i:03d}_{path.stem}.png"
            zf.writestr(f"masks/{name}", encode_png(result.mask))
            zf.writestr(f"cutouts/{name}", encode_png(blend.cutout(image, result.alpha)))
            rows.append({**row, "width": image.width, "height": image.height, "person_share": round(result.share, 4),
                         "confidence": round(result.confidence, 3), "seconds": round(time.perf_counter() - start, 2),
                         "note": result.warning or ""})  # fmt: skip
        zf.writestr("figures.csv", csv_text(rows))
    return rows


def csv_text(rows: list[dict]) -> str:
    """Rows with CSV_COLUMNS keys -> CSV text."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# ---------------------------------------------------------------- plain HTTP endpoint


def json_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def add_http_api(app: FastAPI, predict: Predictor, default_threshold: float) -> None:
    """Register ``POST /api/segment``: multipart field ``file`` -> PNG (``?output=cutout|mask|overlay``).

    Bad requests get 4xx with JSON ``{"error": ...}``. Model runs share a CONCURRENCY-wide limiter.
    """
    limiter = anyio.CapacityLimiter(CONCURRENCY)

    async def invalid_query(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return json_error(422, problems)

    app.add_exception_handler(RequestValidationError, invalid_query)

    def segment_png(data: bytes, output: str, threshold: float) -> tuple[bytes, Segmentation]:
        image = load_image(data)
        result = make_mask(probability_map(predict, image), Cleanup(threshold))
        if output == "mask":
            return encode_png(result.mask), result
        if output == "overlay":
            return encode_png(blend.overlay(image, result.mask)), result
        return encode_png(blend.cutout(image, result.alpha)), result

    @app.post(
        "/api/segment",
        summary="Segment the people in a photo",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "the cutout, mask or overlay as PNG"},
                   400: {"description": "bad request: JSON {\"error\": ...}"},
                   413: {"description": "file or image too large"}, 415: {"description": "not an image"}},
    )  # fmt: skip
    async def http_segment(request: Request, output: str = "cutout", threshold: float | None = None) -> Response:
        """Send a photo as multipart form field ``file``; get a PNG at the photo's size.

        ``output``: ``cutout`` (RGBA, default), ``mask`` (binary, 0/255) or ``overlay``; ``threshold`` in (0, 1).
        The response headers ``X-Person-Share`` and ``X-Confidence`` carry the figures.
        """
        if output not in HTTP_OUTPUTS:
            return json_error(400, f"output must be one of {', '.join(HTTP_OUTPUTS)}, got {output!r}")
        threshold = default_threshold if threshold is None else threshold
        if not 0.0 < threshold < 1.0:
            return json_error(400, f"threshold must be between 0 and 1, got {threshold}")
        body = await read_body(request, MAX_UPLOAD_BYTES + 2**16)  # the photo plus room for the form's framing
        if body is None:
            return json_error(413, f"The request is larger than the {MAX_UPLOAD_MB:g} MB upload limit.")
        try:
            async with Request(request.scope, replay(body)).form(max_files=1, max_fields=4) as form:
                upload = form.get("file")
                if not isinstance(upload, UploadFile):
                    return json_error(
                        400, "Send the photo as multipart/form-data field 'file' (curl -F file=@photo.jpg)."
                    )
                data = await upload.read()
        except HTTPException as e:  # malformed multipart body
            return json_error(400, f"Could not read the form: {e.detail}")
        try:
            png, result = await anyio.to_thread.run_sync(segment_png, data, output, threshold, limiter=limiter)
        except InputError as e:
            return json_error(e.status, str(e))
        except Exception:
            log.exception("POST /api/segment failed")
            return json_error(500, "Internal error while segmenting; the server is still running.")
        headers = {"X-Person-Share": f"{result.share:.4f}", "X-Confidence": f"{result.confidence:.3f}",
                   "Content-Disposition": f'inline; filename="{output}.png"'}  # fmt: skip
        if result.warning:
            headers["X-Warning"] = result.warning.encode("ascii", "replace").decode()
        return Response(png, media_type="image/png", headers=headers)


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it grows past ``limit`` bytes (also for chunked uploads)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def replay(body: bytes, receive: Receive | None = None) -> Receive:
    """An ASGI ``receive`` that hands over an already-read body, then defers to ``receive`` (e.g. for disconnects)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent and receive is not None:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


# ---------------------------------------------------------------- files: uploads only


def is_http_url(text: str) -> bool:
    return text[:8].lower().startswith(("http://", "https://"))


def names_foreign_file(payload: object, upload_dir: Path) -> bool:
    """Whether a request's JSON names a file (a ``{"path": ...}`` object) that is not in ``upload_dir``."""
    stack = [payload]
    while stack:  # iterative: deeply nested JSON cannot exhaust the stack
        item = stack.pop()
        if isinstance(item, dict):
            path = item.get("path")
            if isinstance(path, str):
                try:
                    if not Path(os.path.realpath(path)).is_relative_to(upload_dir):
                        return True
                except ValueError:  # e.g. a NUL byte in the path
                    return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class UploadsOnly:
    """ASGI middleware: the Gradio API only ever reads files that were uploaded to this server.

    Gradio copies any server path named in an API request (``{"path": "/etc/passwd", ...}``) into its cache and
    downloads http(s) URLs there; a mounted app (``gr.mount_gradio_app``) even skips Gradio's own check that inputs
    were uploaded. So every POST under ``/gradio_api/`` except the upload route itself is refused (400) when its
    JSON names a file outside Gradio's upload folder, and ``/gradio_api/file=<URL>`` (a fetching proxy) is refused
    (403): the server never fetches a URL.
    """

    def __init__(self, app: ASGIApp, upload_dir: str | Path) -> None:
        self.app = app
        self.upload_dir = Path(os.path.realpath(upload_dir))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = None
        if scope["type"] == "http" and scope["path"].startswith(GRADIO_API):
            refusal, receive = await self.check(scope, receive)
        await (refusal or self.app)(scope, receive, send)

    async def check(self, scope: Scope, receive: Receive) -> tuple[Response | None, Receive]:
        """(the refusal, or None to pass the request on; the ``receive`` to pass it on with)."""
        path = scope["path"]
        route = path.removeprefix(GRADIO_API)
        if route[:5] in ("file=", "file/") and is_http_url(route[5:]):
            log.warning("Refused %s %r: the server does not fetch URLs", scope["method"], path[:200])
            return json_error(403, "This server does not fetch URLs."), receive
        if scope["method"] != "POST" or path.rstrip("/") == f"{GRADIO_API}upload":
            return None, receive
        body = await read_body(Request(scope, receive), MAX_UPLOAD_BYTES)
        if body is None:
            return json_error(413, f"The request is larger than the {MAX_UPLOAD_MB:g} MB limit."), receive
        try:
            payload = json.loads(body) if body else None
        except (ValueError, RecursionError):
            payload = None  # not JSON: Gradio answers it (its JSON routes use the same parser)
        if names_foreign_file(payload, self.upload_dir):
            log.warning("Refused POST %s: it names a file that was not uploaded (a server path or URL)", path)
            message = "Files must be uploaded first (gradio_client: handle_file); server paths and URLs are refused."
            return json_error(400, message), receive
        return None, replay(body, receive)


# ---------------------------------------------------------------- server


def create_app(model_path: str | Path = MODEL_ID) -> FastAPI:
    """The whole server: FastAPI app with ``POST /api/segment`` and the Gradio UI + API mounted at ``/``."""
    seg = load_segmenter(model_path)
    predict = make_predictor(seg)
    demo = build_demo(seg, predict)
    app = FastAPI(title=TITLE, docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    add_http_api(app, predict, seg.threshold)
    app.add_middleware(UploadsOnly, upload_dir=demo.GRADIO_CACHE)
    # show_error=False: gr.Error messages (every InputError) still reach the user; other exceptions' text (paths,
    # library internals) stays in the server log.
    return gr.mount_gradio_app(app, demo, path="/", max_file_size=MAX_UPLOAD_BYTES, show_error=False,
                               theme=gr.themes.Soft(), css=CSS)  # fmt: skip


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(TORCH_THREADS)
    try:
        app = create_app(MODEL_ID)
    except MissingWeightsError as e:
        sys.exit(f"error: {e}")
    except Exception as e:  # a corrupt file, an unknown Hub repo, no network...: say what and stop
        sys.exit(f"error: could not load the model from {MODEL_ID!r} (SEGMENTER_MODEL): {e}")
    # A bounded graceful shutdown: open browser tabs and gradio_client heartbeats never close by themselves, and
    # without a timeout a SIGTERM would wait for them until a SIGKILL, skipping Gradio's cache clean-up.
    uvicorn.run(app, host=os.getenv("GRADIO_SERVER_NAME", "0.0.0.0"), port=int(os.getenv("GRADIO_SERVER_PORT", "7860")),
                timeout_graceful_shutdown=SHUTDOWN_SECONDS)  # fmt: skip


if __name__ == "__main__":
    main()
