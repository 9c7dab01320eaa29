"""What the Space shows besides the images: the status line, the Model tab, cached result files, previews."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from ..images import encode_png
from ..inference import Segmenter
from ..pipeline import Segmentation

PREVIEW_SIDE = 1600  # longest side of view-only images (overlay, before/after)
# The result files of one request are made and encoded side by side: PIL's encoders and compositing release the GIL,
# so on two cores the full-size cutout PNG (the longest of them) and the previews no longer wait for each other.
# Each request gets its own workers: a small photo's files never queue behind another request's 12 MP cutout.
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # ours to use
ENCODE_WORKERS = min(4, CORES)  # per request


def save_to_cache(image: Image.Image, cache_dir: str, name: str) -> str:
    """Write ``image`` (PNG; JPEG for a .jpg name, WebP for .webp) into a new folder of Gradio's cache; its path."""
    path = Path(cache_dir) / uuid.uuid4().hex / name
    path.parent.mkdir(parents=True)
    if path.suffix == ".jpg":
        image.save(path, "JPEG", quality=92)
    elif path.suffix == ".webp":  # screen previews: WebP keeps transparency; method 0 encodes ~2.5x faster
        image.save(path, "WEBP", quality=85, method=0)
    else:
        path.write_bytes(encode_png(image))
    return str(path)


def save_all_to_cache(jobs: dict[str, Callable[[], Image.Image]], cache_dir: str) -> list[str]:
    """File name -> a call making that image: each made and saved (:func:`save_to_cache`) side by side, on up to
    ``ENCODE_WORKERS`` threads of this call's own; their paths, in ``jobs``' order. Whatever a call needs that is made
    on first use (``Segmentation.alpha``) should be made before, once."""
    with ThreadPoolExecutor(max_workers=max(1, min(ENCODE_WORKERS, len(jobs))), thread_name_prefix="encode") as pool:
        futures = [
            pool.submit(lambda name=name, make=make: save_to_cache(make(), cache_dir, name))
            for name, make in jobs.items()
        ]
        return [f.result() for f in futures]


def describe(result: Segmentation, seconds: float) -> str:
    """Markdown status line: person found or not, share, presence score, time; the warning when nobody was found."""
    found = "**No person found**" if result.no_person else "**Person found**"
    presence = "" if result.presence is None else f" · **presence score:** {result.presence:.2f}"
    text = (
        f"{found} · **person share:** {result.share:.1%} of {result.image.width}x{result.image.height} px"
        f"{presence} · **time:** {seconds:.2f} s"
    )
    if result.warning is None:
        return text
    hint = (
        " If it does (people small in the frame are the usual miss: README, Results), untick *Empty mask when the model"
        " finds no person*."
        if not result.person_present
        else ""
    )
    return f"{text}\n\n⚠️ {result.warning}{hint}"


def model_card(seg: Segmenter, live_note: str, space_id: str | None = None, zero_gpu: bool = False) -> str:
    """Markdown for the Model tab, from the weights' config meta."""
    info = seg.info()
    metrics = info.get("metrics") or {}
    scene = getattr(seg.model, "scene", None)
    params = sum(p.numel() for name, p in seg.model.named_parameters() if not name.startswith("scene."))
    prior = (seg.cfg.meta.get("scene_prior") or {}).get("threshold")
    veto = (
        f"yes: a frozen ImageNet EfficientNet-Lite0 ({sum(p.numel() for p in scene.parameters()) / 1e6:.2f} M "
        f"parameters) and a linear probe can veto the head{f' below {prior:.3f}' if prior is not None else ''}"
        if scene is not None
        else "no"
    )
    size = seg.cfg.input_size
    rows = [
        f"| {name} | {m['iou']:.3f} | {m.get('person_share', 0):.2%} | {m.get('no_person', 0):.0%} |"
        for name, m in metrics.items()
        if isinstance(m, dict) and "iou" in m
    ]
    how = (
        f"[README → Training](https://huggingface.co/spaces/{space_id}/blob/main/README.md#training)"
        if space_id
        else "the *Training* section of README.md"
    )
    lines = [
        "| Model | |",
        "|---|---|",
        f"| Generator | `{info['arch']}`: {params / 1e6:.2f} M parameters, input {size}x{size}"
        f"{' + flip' if seg.cfg.tta_flip else ''} |",
        f"| Presence head | {'yes, threshold ' + format(seg.cfg.presence_threshold, '.3f') if info['presence_head'] else 'no'} |",
        f"| Scene prior | {veto} |",
        f"| Weights sha256 | `{info.get('sha256', 'n/a')}` |",
        f"| Training run | `{info.get('run_id', 'n/a')}` |",
        f"| Device, engine | {seg.device.type}{' (ZeroGPU)' if zero_gpu else ''}, {seg.engine} |",
        f"| Live webcam | {live_note} |",
    ]
    table = ["", "| dataset / split | mIoU | mean person share | reported no person |", "|---|---|---|---|", *rows]
    return "\n".join(lines + (table if rows else [])) + (
        f"\n\nHow the model was trained: see {how}. Masks are predicted at {size}x{size} and brought to the photo's "
        "resolution with an edge-aware guided filter."
    )
