"""Shared helpers for the benchmarks: machine description, timing, markdown tables, weights, test photos, the app.

Every benchmark prints the machine it ran on first (CPU model, cores, torch version and threads, load average),
because this project's timings are taken on small, shared machines: compare ratios taken within one run.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "tests"):  # `python bench/x.py` finds segmenter, train.py and the app launcher
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from served_app import serve_app  # noqa: E402

from segmenter.config import ModelConfig  # noqa: E402
from segmenter.data import DEFAULT_DATA_DIR, load_pair, load_pairs  # noqa: E402
from segmenter.export import CONFIG_NAME, WEIGHTS_NAME, save_pretrained  # noqa: E402
from segmenter.model import build_generator  # noqa: E402
from segmenter.server.views import CORES  # noqa: E402

SHIPPED_WEIGHTS = ROOT / "weights"


# ------------------------------------------------------------------ machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, str]:
    """What the figures depend on: CPU, cores usable by this process, torch and its threads, background load."""
    info = {
        "CPU": cpu_model(),
        "cores (logical / usable)": f"{os.cpu_count()} / {CORES}",
        "torch": torch.__version__,
        "torch threads (intra / inter-op)": f"{torch.get_num_threads()} / {torch.get_num_interop_threads()}",
        "load average (1 min) at start": f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a",
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["CUDA device"] = torch.cuda.get_device_name(0)
    return info


def print_machine(title: str) -> None:
    print(f"## {title}\n")
    print(markdown_table(["machine", ""], list(machine_info().items())))
    print()


# ------------------------------------------------------------------ tables and statistics
def fmt(x: float | int | str | None, digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows of cells (already strings, or numbers shown with one decimal) -> a GitHub markdown table."""
    cells = [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]  # type: ignore[arg-type]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty sequence."""
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


@dataclass
class Timing:
    """Seconds per call, from repeated calls."""

    samples: list[float]

    @property
    def p50(self) -> float:
        return percentile(self.samples, 50)

    @property
    def p95(self) -> float:
        return percentile(self.samples, 95)

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)


def sync(device: torch.device | str = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    max_seconds: float | None = None,
    min_rounds: int = 3,
    settle_s: float = 0.0,
) -> dict[str, Timing]:
    """Time several candidates round-robin (one call of each per round), so background load hits them alike.

    On a shared machine this is what makes their ratios meaningful: a burst of load slows one round of every
    candidate instead of all the calls of one of them. ``max_seconds`` stops after the round that passes it
    (but not before ``min_rounds`` rounds). ``settle_s``: an idle pause before each call, for candidates from
    different thread pools: torch's OpenMP workers and ONNX Runtime's both spin-wait for a while after a call, and
    without the pause they take cores from whichever call comes next (bench/__main__.py measured ONNX Runtime
    20% slower right after torch's matmul probe than on its own).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for i in range(rounds):
        for name, fn in fns.items():
            if settle_s:
                time.sleep(settle_s)
            t0 = time.perf_counter()
            fn()
            sync(device)
            samples[name].append(time.perf_counter() - t0)
        if max_seconds is not None and i + 1 >= min_rounds and time.perf_counter() - start > max_seconds:
            break
    return {name: Timing(s) for name, s in samples.items()}


def time_calls(
    fn: Callable[[], object],
    iters: int,
    warmup: int = 2,
    device: torch.device | str = "cpu",
    max_seconds: float | None = None,
) -> Timing:
    """Time ``iters`` calls of one function (see ``time_interleaved``)."""
    return time_interleaved({"f": fn}, iters, warmup, device, max_seconds)["f"]


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


# ------------------------------------------------------------------ weights
def weights_for(arch: str = "effnet_unet", ngf: int = 64, override: str | Path | None = None) -> Path:
    """A weights folder for ``arch``: ``override`` or ``weights/`` when it holds that arch, else freshly
    initialised weights in a temp dir (random weights time the same as trained ones: no data-dependent control flow).
    """
    for folder in [Path(override)] if override else [SHIPPED_WEIGHTS]:
        if (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file():
            cfg = ModelConfig.load(folder / CONFIG_NAME)
            if cfg.arch == arch and (arch != "pix2pix_unet" or cfg.ngf == ngf):
                return folder
    folder = Path(tempfile.gettempdir()) / f"bench-weights-{arch}-ngf{ngf}"
    if not (folder / WEIGHTS_NAME).is_file():
        cfg = ModelConfig(arch=arch, ngf=ngf)  # type: ignore[arg-type]
        torch.manual_seed(0)
        save_pretrained(build_generator(cfg), cfg, folder)
    return folder


def weights_label(folder: Path) -> str:
    if folder.resolve() == SHIPPED_WEIGHTS.resolve():
        return "weights/ (shipped)"
    return f"{folder} (random init)" if folder.name.startswith("bench-weights-") else str(folder)


# ------------------------------------------------------------------ test photos
MEGAPIXEL_SIZES = {0.3: (640, 480), 1.0: (1152, 864), 12.0: (4000, 3000)}


def synthetic_photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth gradients, a few soft shapes and mild sensor noise (compresses like a photo)."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(1, 4), rng.uniform(1, 4), rng.uniform(0, 6.3)
        img[..., c] = 128 + 60 * np.sin(fx * xx / w * 6.283 + ph) * np.cos(fy * yy / h * 6.283)
    # a "person": an ellipse body and a round head, brighter and textured
    cx, cy = w / 2, h * 0.6
    body = ((xx - cx) / (w * 0.18)) ** 2 + ((yy - cy) / (h * 0.35)) ** 2 < 1
    head = ((xx - cx) / (w * 0.08)) ** 2 + ((yy - h * 0.22) / (h * 0.1)) ** 2 < 1
    img[body | head] = img[body | head] * 0.5 + np.array([200, 150, 120], np.float32) * 0.5
    img += rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def sample_photo() -> Image.Image:
    """A real photo of a person (the first val image of the dataset) when the data is there, else a synthetic one."""
    photos = val_photos()
    return photos[0] if photos else synthetic_photo((600, 800))


@functools.lru_cache(maxsize=1)
def val_photos() -> list[Image.Image]:
    """The dataset's val photos in split order (each decoded once per process), or [] without the data."""
    try:
        return [load_pair(pair)[0] for pair in load_pairs(DEFAULT_DATA_DIR, "val")]
    except (ValueError, OSError):
        return []


@functools.lru_cache(maxsize=16)
def jpeg_bytes(megapixels: float, quality: int = 90, seed: int = 0) -> bytes:
    """JPEG bytes of a ``megapixels`` 4:3 photo of a person when the data is there: the ``seed``-th largest val photo
    (seed 0: the largest, 1500x1001 px, so 1 MP is a crop and 12 MP a 2.8x enlargement), cropped to 4:3, scaled, with
    the synthetic photo's sensor noise (so that the file is about as large as a photo taken at that size). Requests
    then take the path of a photo with a person in it (the cutout, the clean-up), though an enlarged photo has
    smoother edges than one taken at 12 MP. Without the data, a synthetic photo (in which the model finds nobody)."""
    size = MEGAPIXEL_SIZES.get(megapixels) or (
        round((megapixels * 1e6 * 4 / 3) ** 0.5),
        round((megapixels * 1e6 * 3 / 4) ** 0.5),
    )
    photos = sorted(val_photos(), key=lambda im: -im.width * im.height)  # the largest, 1500x1001, first
    source = photos[seed % len(photos)] if photos else synthetic_photo(size, seed)
    photo = np.asarray(ImageOps.fit(source, size, Image.BICUBIC), dtype=np.float32)
    noise = np.random.default_rng(seed).normal(0, 6, (size[1], size[0], 1)).astype(np.float32)  # as synthetic_photo
    buf = io.BytesIO()
    Image.fromarray(np.clip(photo + noise, 0, 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# ------------------------------------------------------------------ the app in a subprocess
APP = ROOT / "app.py"


@contextlib.contextmanager
def running_app(weights: Path, env: dict[str, str] | None = None) -> Iterator[Any]:
    """``app.py`` on a free localhost port with SEGMENTER_MODEL=weights (tests/served_app.py's helper, the one
    every test, benchmark and script uses); yields its Served (``url``, ``proc``, ``log``)."""
    if not APP.is_file():
        raise FileNotFoundError(f"{APP} does not exist yet")
    with (
        tempfile.TemporaryDirectory(prefix="bench-app-") as log_dir,
        serve_app(weights, Path(log_dir), **(env or {})) as app,
    ):
        yield app


def gradio_client(url: str, download: bool = True) -> Any:
    """A quiet gradio_client.Client for ``url``; ``download=False`` leaves the result files on the server."""
    from gradio_client import Client

    kwargs: dict[str, Any] = {} if download else {"download_files": False}
    return Client(url, verbose=False, analytics_enabled=False, **kwargs)


def call_segment(client: Any, photo: Path) -> Any:
    """One request to the app's ``/segment`` endpoint: the photo as the first input, the others at their defaults."""
    from gradio_client import handle_file

    return client.predict(handle_file(str(photo)), api_name="/segment")


def write_temp_jpeg(data: bytes) -> Path:
    fd, name = tempfile.mkstemp(prefix="bench-photo-", suffix=".jpg")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)
