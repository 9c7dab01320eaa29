"""Person segmentation Space: a pix2pix-trained U-Net finds the people in a photo; cut them out or swap the background.

``python app.py`` serves the Gradio UI, its API (``/segment`` for gradio_client) and a plain HTTP endpoint
(``POST /api/segment``) on one server, http://0.0.0.0:7860 unless GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say
otherwise. Other settings, all from the environment: SEGMENTER_MODEL (weights folder, .safetensors file or Hub repo
id; default ``weights/``), MAX_UPLOAD_MB, MAX_REQUEST_MB, MAX_PIXELS, CONCURRENCY, MAX_BATCH, BODY_TIMEOUT_S,
BODY_IDLE_S, MAX_HTTP_REQUESTS, MAX_HTTP_WAITING, HTTP_WAIT_S, CACHE_MAX_MB, CACHE_MAX_AGE_MIN, TRIM_HEAP, TRIM_IDLE_S, MMAP_THRESHOLD_MB, ENGINE (auto | onnx | torch
| bf16) and LIVE_WEBCAM (auto | on | off).
Every mask comes from ``Segmenter.segment`` (``segmenter/pipeline.py``); this file only wires it to the UI.
Tests build the server with :func:`create_app` (or just the UI with :func:`build_demo`).
"""

from __future__ import annotations

try:  # ZeroGPU Spaces: `spaces` must be imported before torch sets up CUDA.
    import spaces
except ImportError:
    spaces = None

import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import astuple, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Literal, get_args

import gradio as gr
import torch
import uvicorn
from fastapi import FastAPI
from gradio.data_classes import ImageData
from PIL import Image
from pydantic import BaseModel, ConfigDict

from segmenter.images import ImageError, load_image
from segmenter.inference import Segmenter
from segmenter.pipeline import Background, BackgroundMode, Options, Segmentation, check_threshold, finish
from segmenter.server import Limits, Segment
from segmenter.server.batch import CSV_COLUMNS, batch_files
from segmenter.server.cache import CacheSweeper
from segmenter.server.guard import BodyGuard, UploadsOnly
from segmenter.server.http_api import add_http_api
from segmenter.server.live import LIVE_FPS, live_webcam_status, segment_frame
from segmenter.server.loading import MissingWeightsError, front_matter_models, load_segmenter
from segmenter.server.memory import IdleTrim, return_freed_buffers
from segmenter.server.views import CORES, PREVIEW_SIDE, describe, model_card, save_all_to_cache

TITLE = "Person segmentation"
DESCRIPTION = """\
# Person segmentation
Upload a photo, paste one or take a webcam snapshot: a pix2pix-trained U-Net marks every pixel that belongs to a
person, and says so when there is nobody. Get the **mask**, a transparent **cutout** and an **overlay**, then tune
the threshold, clean the mask up or put the person on a new background, without running the model again. The
*Batch* tab segments many photos at once. Scripts can use the [`/segment` API](?view=api) (gradio_client) or
`POST /api/segment` (plain HTTP, returns a PNG).
"""

DEFAULT_MODEL = "weights/"
MODEL_ID = os.getenv("SEGMENTER_MODEL", DEFAULT_MODEL)
README = Path(__file__).resolve().parent / "README.md"
HUB_MODEL = (front_matter_models(README) or [None])[0]  # loaded through the Hub cache when weights/ is absent
LIMITS = Limits(
    max_upload_bytes=int(float(os.getenv("MAX_UPLOAD_MB", "20")) * 2**20),
    max_request_bytes=int(float(os.getenv("MAX_REQUEST_MB", "100")) * 2**20),
    max_pixels=int(os.getenv("MAX_PIXELS", "16000000")),
    max_batch=int(os.getenv("MAX_BATCH", "24")),
    concurrency=int(os.getenv("CONCURRENCY", "2")),
    body_timeout_s=float(os.getenv("BODY_TIMEOUT_S", "120")),
    body_idle_s=float(os.getenv("BODY_IDLE_S", "20")),
    http_requests=int(os.getenv("MAX_HTTP_REQUESTS", "4")),
    http_waiting=int(os.getenv("MAX_HTTP_WAITING", "32")),
    http_wait_s=float(os.getenv("HTTP_WAIT_S", "10")),
)
# CPU threads per model call: CONCURRENCY calls at once must not oversubscribe the cores (OpenMP threads that
# wait for each other made 2 threads x 2 calls on 2 cores several times slower than 1 x 2; see bench/).
TORCH_THREADS = int(os.getenv("TORCH_THREADS", str(max(1, CORES // max(1, LIMITS.concurrency)))))
ENGINE = os.getenv("ENGINE", "auto").lower()  # auto: ONNX Runtime on a CPU when weights/model.onnx is there
LIVE_WEBCAM = os.getenv("LIVE_WEBCAM", "auto").lower()  # auto: on with CUDA or when the CPU keeps up
ZERO_GPU = os.getenv("SPACES_ZERO_GPU") == "true"
SPACE_ID = os.getenv("SPACE_ID")
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# Gradio's cache folder (uploads and results) stays under this size and age; the oldest files go first. It is this
# app's own folder unless GRADIO_TEMP_DIR names one: the sweeper empties it, and Gradio's shared default (/tmp/gradio)
# may hold another app's files.
APP_TEMP_DIR = Path(tempfile.gettempdir()) / "person-segmentation-gradio"
os.environ.setdefault("GRADIO_TEMP_DIR", str(APP_TEMP_DIR))
CACHE_MAX_MB = float(os.getenv("CACHE_MAX_MB", "2048"))
CACHE_MAX_AGE_MIN = float(os.getenv("CACHE_MAX_AGE_MIN", "15"))
# Memory (issue 15): glibc keeps the heap pages of freed photo buffers, so RSS crept up with every new mix of sizes.
# TRIM_HEAP=1 hands them back (malloc_trim) once no photo has been segmented for TRIM_IDLE_S seconds: trimming every
# second made each photo fault its buffers in anew, while photos in quick succession can reuse them.
# MMAP_THRESHOLD_MB > 0 gives buffers of that size their own mappings instead (freed at once, but every photo then
# faults its buffers in anew: slower per photo).
TRIM_HEAP = os.getenv("TRIM_HEAP", "1") == "1"
TRIM_IDLE_S = float(os.getenv("TRIM_IDLE_S", "10"))
IDLE_TRIM = IdleTrim(TRIM_IDLE_S)  # every handler's work runs inside IDLE_TRIM.active(); the cache sweeper calls it
MMAP_THRESHOLD_MB = float(os.getenv("MMAP_THRESHOLD_MB", "0"))
SHUTDOWN_SECONDS = 5  # on SIGTERM, open connections get this long before they are cut and the cache is cleaned
BackgroundChoice = Literal["Transparent", "Colour", "Blurred photo", "Image"]  # the UI's labels of BackgroundMode
BACKGROUNDS: dict[str, BackgroundMode] = dict(zip(get_args(BackgroundChoice), get_args(BackgroundMode), strict=True))
SEGMENT_API_NAME = "segment"
PRIVATE = {"api_visibility": "private"}
EMPTY_MESSAGE = "Upload a photo, paste one, take a webcam snapshot or pick an example."
CSS = """
#stats { min-height: 3em; }
#cutout img { background: repeating-conic-gradient(#e5e5e5 0 25%, #ffffff 0 50%) 50% / 20px 20px; }
"""  # transparent pixels of cutouts show as a checkerboard

# Decompression-bomb guard: PIL refuses images above the pixel cap instead of only warning.
Image.MAX_IMAGE_PIXELS = LIMITS.max_pixels
warnings.simplefilter("error", Image.DecompressionBombWarning)

log = logging.getLogger("app")
InputError = ImageError  # a user's mistake: shown as gr.Error, or answered with its HTTP status


# ---------------------------------------------------------------- model


def make_segment(seg: Segmenter) -> Segment:
    """``seg.segment``, the one pipeline, marked as the server's work (``IDLE_TRIM``); on ZeroGPU wrapped so that each
    call claims the GPU (in a worker process: the mark stays in this one)."""

    def segment(image: Image.Image, options: Options) -> Segmentation:
        with torch.inference_mode():
            return seg.segment(image, options)

    run = spaces.GPU(segment) if spaces is not None else segment

    def active_segment(image: Image.Image, options: Options) -> Segmentation:
        with IDLE_TRIM.active():
            return run(image, options)

    return active_segment


# ---------------------------------------------------------------- images in, images out


def user_error(message: str) -> gr.Error:
    """A user's mistake: shown to them, logged as one line (Gradio would print a traceback for each)."""
    log.info("user error: %s", message)
    return gr.Error(message, print_exception=False)


def photo_path(payload: dict | None) -> str | None:
    """The cached file of an image input's raw payload (events run with ``preprocess=False``: one decode, our caps)."""
    if payload is None:
        return None
    if not isinstance(payload, dict) or not payload.get("path"):  # e.g. a plain string from gradio_client
        raise InputError(FILE_PAYLOAD_MESSAGE)
    return payload["path"]


FILE_PAYLOAD_MESSAGE = "Send the image as a file: handle_file(path) with gradio_client, or a file upload."


class PhotoData(ImageData):
    """Gradio's ImageData (same schema), refusing a bare string with a user error: Gradio validates an input before
    any handler runs, so a gradio_client call with a path instead of handle_file(path) got its generic error and
    logged a pydantic traceback."""

    model_config = ConfigDict(title="ImageData")

    @classmethod
    def model_validate(cls, obj: object, *args: object, **kwargs: object) -> ImageData:  # type: ignore[override]
        if not isinstance(obj, dict | BaseModel):
            raise user_error(FILE_PAYLOAD_MESSAGE)
        return ImageData.model_validate(obj, *args, **kwargs)  # type: ignore[arg-type]


def user_threshold(value: object) -> float:
    """A threshold from a request -> float, through the one check (pipeline.check_threshold); InputError if not."""
    try:
        return check_threshold(value)
    except ValueError as e:
        raise InputError(str(e)) from None


def read_photo(path: str | Path) -> Image.Image:
    if not Path(path).is_file():  # swept from the cache (CACHE_MAX_AGE_MIN) while the page stayed open
        raise InputError(
            f"This photo is no longer on the server (files are kept {CACHE_MAX_AGE_MIN:g} min); upload it again."
        )
    return load_image(path, LIMITS.max_upload_bytes, LIMITS.max_pixels)


# ---------------------------------------------------------------- UI event handlers
# Module-level so tests can call them; build_demo binds the segment function and the cache folder.


@dataclass(frozen=True)
class PhotoSettings:
    """The Photo tab's settings as its components hand them over, one field per component, in the order of the
    events' inputs (:meth:`names`); :meth:`parse` checks them into the pipeline's Options and Background."""

    threshold: float
    keep_largest: bool = Options.keep_largest
    fill_holes: bool = Options.fill_holes
    feather_px: float = Options.feather_px
    presence_gate: bool = Options.presence_gate
    background: BackgroundChoice = "Transparent"
    color: str = "#00b140"
    blur_percent: float = Background.blur_percent
    background_image: dict | None = None  # the background image input's raw payload

    @classmethod
    def names(cls) -> list[str]:
        """The field names, in the order build_demo wires the components."""
        return [f.name for f in fields(cls)]

    def values(self) -> tuple:
        """The components' values in wiring order: what an event sends (tests and benchmarks call the handlers so)."""
        return astuple(self)

    def parse(self) -> tuple[Options, Background]:
        """-> (Options, Background), every value checked; InputError names a bad one."""
        options = Options(
            user_threshold(self.threshold),
            bool(self.keep_largest),
            bool(self.fill_holes),
            float(self.feather_px),
            presence_gate=bool(self.presence_gate),
        )
        if self.background not in BACKGROUNDS:
            raise InputError(f"Background must be one of {', '.join(BACKGROUNDS)}, got {self.background!r}.")
        try:
            rgb = Background.parse_color(str(self.color))
        except ValueError as e:
            raise InputError(f"Not a colour: {self.color!r}.") from e
        path = photo_path(self.background_image)
        image = read_photo(path) if path else None
        return options, Background(BACKGROUNDS[self.background], rgb, float(self.blur_percent), image)


def render(
    cache_dir: str, path: str, result: Segmentation, background: Background, start: float, notify: bool = False
) -> tuple:
    """Mask, cutout, overlay, before/after, composite download and the status line of one Segmentation."""
    if background.mode == "image" and background.image is None:
        gr.Info("Upload a background image under the Background choice.")
        background = Background()
    stem = Path(path).stem
    transparent = background.mode == "transparent"
    with IDLE_TRIM.active():
        _ = result.alpha  # the feathered edge, made once here: the cutout, previews and composite all use it
        small = result.resized(PREVIEW_SIDE)  # view-only outputs are made at screen size, from one shrunk copy
        jobs = {  # made and encoded side by side (save_all_to_cache)
            f"{stem}-mask.png": lambda: result.mask,  # full size: the mask and the cutout are the downloads
            f"{stem}-cutout.png": result.cutout,
            f"{stem}-overlay.webp": small.overlay,  # screen-sized previews: WebP
            # Before: the upload itself, which the browser already has (no encoding); after: a screen-sized WebP.
            f"{stem}-after.webp": small.cutout if transparent else partial(small.composite, background),
        }
        if not transparent:
            jobs[f"{stem}-composite.jpg"] = partial(result.composite, background)
        mask, cutout, overlay, after, *composite = save_all_to_cache(jobs, cache_dir)
    download = gr.DownloadButton(value=composite[0], visible=True) if composite else gr.DownloadButton(visible=False)
    if notify and result.warning:
        gr.Warning(result.warning)
    return mask, cutout, overlay, (path, after), download, describe(result, time.perf_counter() - start)


def segment_photo(segment: Segment, cache_dir: str, photo: dict | None, settings: PhotoSettings) -> tuple:
    """Run the pipeline on the photo and render; the last output (probability map, presence) goes to gr.State."""
    if photo is None:
        return None, None, None, None, gr.DownloadButton(visible=False), EMPTY_MESSAGE, None
    start = time.perf_counter()
    try:
        path = photo_path(photo)
        options, background = settings.parse()
        result = segment(read_photo(path), options)
        return (*render(cache_dir, path, result, background, start, notify=True), (result.probability, result.presence))
    except InputError as e:
        raise user_error(str(e)) from None


def rerender(seg: Segmenter, cache_dir: str, photo: dict | None, state: tuple | None, settings: PhotoSettings) -> tuple:
    """Finish the cached probability map again with new settings: the pipeline's last step, no model call."""
    start = time.perf_counter()
    try:
        path = photo_path(photo)
        image = read_photo(path) if path is not None and state is not None else None
        if image is None or state[0].shape != (image.height, image.width):  # nothing segmented yet, or a new photo
            return tuple(gr.skip() for _ in range(6))
        options, background = settings.parse()
        result = finish(image, state[0], state[1], options, seg.threshold, seg.cfg.presence_threshold)
        return render(cache_dir, path, result, background, start)
    except InputError as e:
        raise user_error(str(e)) from None


def segment_api(segment: Segment, cache_dir: str, image: dict | None, threshold: float) -> tuple[str, str]:
    """Segment one photo: returns (binary mask PNG, RGBA cutout PNG), both at the photo's size.

    When the model finds nobody in the photo, the mask is empty (and POST /api/segment says X-Person-Present: false).
    """
    try:
        if image is None:
            raise InputError("Send a photo.")
        threshold = user_threshold(threshold)
        path = photo_path(image)
        photo = read_photo(path)
    except InputError as e:
        raise user_error(str(e)) from None
    result = segment(photo, Options(threshold))
    stem = Path(path).stem
    with IDLE_TRIM.active():
        mask, cutout = save_all_to_cache(
            {f"{stem}-mask.png": lambda: result.mask, f"{stem}-cutout.png": result.cutout}, cache_dir
        )
    return mask, cutout


def segment_batch(
    segment: Segment, cache_dir: str, paths: list[str] | None, threshold: float, progress: gr.Progress = gr.Progress()
) -> tuple[list[str], list[list]]:
    """Many photos -> ([ZIP of masks and cutouts, CSV of figures], the figures as table rows)."""
    if not paths:
        raise user_error("Add some photos first.")
    if len(paths) > LIMITS.max_batch:
        raise user_error(f"{len(paths)} photos: at most {LIMITS.max_batch} per batch.")
    try:
        options = Options(user_threshold(threshold))
    except InputError as e:
        raise user_error(str(e)) from None
    files, rows = batch_files(segment, [Path(p) for p in paths], options, Path(cache_dir), LIMITS, progress.tqdm)
    return [str(f) for f in files], [[r[c] for c in CSV_COLUMNS] for r in rows]


def settings_event(handler: Callable[..., tuple], *bound: object, leading: int) -> Callable[..., tuple]:
    """A Gradio event function for ``handler(*bound, *inputs, settings)``: the event's first ``leading`` inputs
    (photo, state) are passed on, the settings components' values become one PhotoSettings. Named as the handler."""

    def event(*values: object) -> tuple:
        return handler(*bound, *values[:leading], PhotoSettings(*values[leading:]))

    event.__name__ = event.__qualname__ = handler.__name__
    return event


def show_background_controls(mode: str) -> tuple[gr.ColorPicker, gr.Slider, gr.Image]:
    """Show only the control that the chosen background needs."""
    return (
        gr.ColorPicker(visible=mode == "Colour"),
        gr.Slider(visible=mode == "Blurred photo"),
        gr.Image(visible=mode == "Image"),
    )


# ---------------------------------------------------------------- Gradio UI


def example_paths() -> list[str]:
    """The bundled example photos (examples/*.jpg|png|webp)."""
    return sorted(str(p) for p in EXAMPLES_DIR.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))


def image_input(label: str, sources: list[str], **kwargs: object) -> gr.Image:
    """A photo input handing the handlers its cached file (decoded once, by our capped loader); a payload that is no
    file gets a clear error (:class:`PhotoData`)."""
    component = gr.Image(label=label, type="filepath", image_mode=None, sources=sources, **kwargs)
    component.data_model = PhotoData
    return component


def threshold_slider(defaults: Options, **kwargs: str) -> gr.Slider:
    return gr.Slider(0.05, 0.95, value=defaults.threshold, step=0.01, label="Threshold", **kwargs)


def png_output(label: str, mode: str) -> gr.Image:
    """A full-resolution PNG output with download and fullscreen buttons (elem_id: the label in lower case)."""
    buttons = ["download", "fullscreen"]
    return gr.Image(label=label, type="filepath", format="png", image_mode=mode, buttons=buttons, elem_id=label.lower())


def build_demo(seg: Segmenter, segment: Segment | None = None) -> gr.Blocks:
    """The Gradio UI around one loaded model, queue configured; mount it (create_app) or ``.launch()`` it."""
    segment = segment or make_segment(seg)
    live_on, live_note = live_webcam_status(LIVE_WEBCAM, segment, seg.device, seg.threshold, ZERO_GPU)
    defaults = Options(threshold=seg.threshold)

    max_age_s = round(CACHE_MAX_AGE_MIN * 60)
    with gr.Blocks(title=TITLE, delete_cache=(max_age_s, max_age_s)) as demo:  # and CacheSweeper (create_app)
        gr.Markdown(DESCRIPTION)
        with gr.Tabs():
            with gr.Tab("Photo", id="photo"):
                with gr.Row():
                    with gr.Column(scale=2):
                        sources, mirror = ["upload", "webcam", "clipboard"], gr.WebcamOptions(mirror=True)
                        photo = image_input("Photo", sources, height=380, elem_id="photo", webcam_options=mirror)
                        run_btn = gr.Button("Segment", variant="primary", elem_id="run")
                        with gr.Accordion("Mask and background", open=True):
                            threshold = threshold_slider(defaults, info="Re-applied to the cached map: no model run")
                            with gr.Row():
                                keep_largest = gr.Checkbox(defaults.keep_largest, label="Keep main person region")
                                fill = gr.Checkbox(defaults.fill_holes, label="Fill holes")
                            gate = gr.Checkbox(
                                defaults.presence_gate,
                                label="Empty mask when the model finds no person",
                                info="Untick to see the mask anyway when the model says the photo shows nobody",
                            )
                            feather_px = gr.Slider(0, 20, value=defaults.feather_px, step=1, label="Feather edge (px)")
                            bg_mode = gr.Radio(list(BACKGROUNDS), value=PhotoSettings.background, label="Background")
                            bg_color = gr.ColorPicker(PhotoSettings.color, label="Colour", visible=False)
                            blur_label = "Blur strength (% of the photo's size)"
                            blur = gr.Slider(
                                0.5, 10, Background.blur_percent, step=0.5, label=blur_label, visible=False
                            )
                            bg_image = image_input(
                                "Background image", ["upload", "clipboard"], height=160, visible=False
                            )
                        gr.Examples(example_paths(), inputs=photo, examples_per_page=8, **PRIVATE)
                    with gr.Column(scale=3):
                        stats = gr.Markdown(EMPTY_MESSAGE, elem_id="stats")
                        with gr.Row(equal_height=True):
                            mask_out, cutout_out = png_output("Mask", "L"), png_output("Cutout", "RGBA")
                            overlay_out = gr.Image(
                                label="Overlay", format="webp", buttons=["fullscreen"], elem_id="overlay"
                            )
                        before_after = gr.ImageSlider(
                            label="Before / after (drag the handle)",
                            format="webp",
                            image_mode=None,
                            max_height=520,
                            elem_id="before-after",
                        )
                        composite_btn = gr.DownloadButton("Download composite (full resolution)", visible=False)
                prob_state = gr.State(None, time_to_live=max_age_s)  # this session's (probability map, presence score)
                api_btn = gr.Button(visible=False)  # the trigger of the /segment API endpoint

            with gr.Tab("Batch", id="batch"):
                gr.Markdown(
                    f"Segment up to {LIMITS.max_batch} photos at once: you get a ZIP with a mask and a cutout "
                    "per photo, and a CSV of per-photo figures (also shown below)."
                )
                with gr.Row():
                    with gr.Column():
                        batch_files = gr.File(
                            label="Photos", file_count="multiple", file_types=["image"], elem_id="batch-files"
                        )
                        batch_threshold = threshold_slider(defaults)
                        batch_btn = gr.Button("Segment all", variant="primary", elem_id="batch-run")
                    batch_out = gr.File(
                        label="Results (ZIP and CSV)", file_count="multiple", interactive=False, elem_id="batch-out"
                    )
                batch_table = gr.Dataframe(headers=CSV_COLUMNS, label="Per-photo figures", interactive=False, wrap=True)

            if live_on:
                with gr.Tab("Live webcam", id="live"):
                    gr.Markdown("Start the camera: each frame is segmented as it arrives (up to a minute per session).")
                    with gr.Row():
                        camera = {"streaming": True, "type": "numpy", "webcam_options": mirror, "elem_id": "live-in"}
                        live_in = gr.Image(label="Camera", sources=["webcam"], **camera)
                        live_out = gr.Image(label="Segmented", format="jpeg", elem_id="live-out")
                    live_threshold = threshold_slider(defaults)

            with gr.Tab("Model", id="model"):
                gr.Markdown(model_card(seg, live_note, SPACE_ID, ZERO_GPU), elem_id="model-card")

        cache = photo.GRADIO_CACHE
        controls = {
            "threshold": threshold,
            "keep_largest": keep_largest,
            "fill_holes": fill,
            "feather_px": feather_px,
            "presence_gate": gate,
            "background": bg_mode,
            "color": bg_color,
            "blur_percent": blur,
            "background_image": bg_image,
        }
        settings = [controls[name] for name in PhotoSettings.names()]  # one component per field, in field order
        outputs = [mask_out, cutout_out, overlay_out, before_after, composite_btn, stats]
        # UI events: no API entry; a model call takes one of the model's slots; raw file payloads (one decode, our caps).
        ui, model = {**PRIVATE, "preprocess": False}, {"concurrency_id": "model"}
        gr.on(
            [run_btn.click, photo.change],
            settings_event(segment_photo, segment, cache, leading=1),
            [photo, *settings],
            [*outputs, prob_state],
            trigger_mode="always_last",
            **ui,
            **model,
        )
        setting_events = [c.release for c in (threshold, feather_px, blur)]
        setting_events += [c.change for c in (keep_largest, fill, gate, bg_mode, bg_color, bg_image)]
        gr.on(
            setting_events,
            settings_event(rerender, seg, cache, leading=2),
            [photo, prob_state, *settings],
            outputs,
            show_progress="minimal",
            trigger_mode="always_last",
            **ui,
        )
        bg_mode.change(show_background_controls, bg_mode, [bg_color, blur, bg_image], queue=False, **PRIVATE)
        api = {"api_name": SEGMENT_API_NAME, "api_visibility": "public", "api_description": segment_api.__doc__}
        api["preprocess"] = False
        api_btn.click(partial(segment_api, segment, cache), [photo, threshold], [mask_out, cutout_out], **api, **model)
        run_batch_tab = partial(segment_batch, segment, cache)
        # Batches queue among themselves, one at a time: a single photo never waits behind one (issue 15).
        batches = {"concurrency_id": "batch", "concurrency_limit": 1}
        batch_btn.click(run_batch_tab, [batch_files, batch_threshold], [batch_out, batch_table], **PRIVATE, **batches)
        if live_on:
            live = {"stream_every": 1 / LIVE_FPS, "time_limit": 60, **PRIVATE, **model}
            live_in.stream(partial(segment_frame, segment), [live_in, live_threshold], live_out, **live)

    return demo.queue(default_concurrency_limit=LIMITS.concurrency, max_size=64)


# ---------------------------------------------------------------- server


def kept_files(demo: gr.Blocks) -> set[str]:
    """Files Gradio keeps for the app's whole life (its copies of the example photos, default values): made once at
    start-up, never again, so the cache sweeper must leave them alone whatever their age."""
    return {str(p) for block in demo.blocks.values() for p in getattr(block, "keep_in_cache", ())}


def create_app(model_path: str | Path = MODEL_ID) -> FastAPI:
    """The whole server: FastAPI app with ``POST /api/segment`` and the Gradio UI + API mounted at ``/``."""
    seg = load_segmenter(model_path, HUB_MODEL if str(model_path) == DEFAULT_MODEL else None, ENGINE)
    segment = make_segment(seg)
    demo = build_demo(seg, segment)
    app = FastAPI(title=TITLE, docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    add_http_api(app, segment, LIMITS, IDLE_TRIM.active)
    app.add_middleware(UploadsOnly, upload_dir=demo.GRADIO_CACHE, max_bytes=LIMITS.max_upload_bytes)
    app.add_middleware(  # outermost: every body, including the ones UploadsOnly reads, arrives in time
        BodyGuard,
        deadline_s=LIMITS.body_timeout_s,
        idle_s=LIMITS.body_idle_s,
        upload_max_bytes=LIMITS.max_request_bytes,
        upload_max_files=LIMITS.max_batch,
    )
    cache_cap = int(CACHE_MAX_MB * 2**20)
    app.state.cache_sweeper = CacheSweeper(
        demo.GRADIO_CACHE,
        cache_cap,
        CACHE_MAX_AGE_MIN * 60,
        after=IDLE_TRIM if TRIM_HEAP else None,
        keep=partial(kept_files, demo),
    ).start()
    # show_error=False: gr.Error messages (every InputError) still reach the user; other exceptions' text (paths,
    # library internals) stays in the server log.
    return gr.mount_gradio_app(
        app, demo, path="/", max_file_size=LIMITS.max_upload_bytes, show_error=False, theme=gr.themes.Soft(), css=CSS
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if MMAP_THRESHOLD_MB > 0:
        return_freed_buffers(int(MMAP_THRESHOLD_MB * 2**20))
    torch.set_num_threads(TORCH_THREADS)
    try:
        app = create_app(MODEL_ID)
    except MissingWeightsError as e:
        sys.exit(f"error: {e}")
    except Exception as e:  # a corrupt file, an unknown Hub repo, no network...: say what and stop
        sys.exit(f"error: could not load the model from {MODEL_ID!r} (SEGMENTER_MODEL): {e}")
    # A bounded graceful shutdown: open browser tabs and gradio_client heartbeats never close by themselves, and
    # without a timeout a SIGTERM would wait for them until a SIGKILL, skipping Gradio's cache clean-up.
    uvicorn.run(
        app,
        host=os.getenv("GRADIO_SERVER_NAME", "0.0.0.0"),
        port=int(os.getenv("GRADIO_SERVER_PORT", "7860")),
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
    )


if __name__ == "__main__":
    main()
