"""The live webcam path: small frames, a small model input without flip, bilinear upsampling, no clean-up, an overlay
back; and whether to offer it."""

from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image

from ..pipeline import Options
from . import Segment

LIVE_SIDE = 480  # webcam frames are shrunk to this before segmenting
LIVE_INPUT = 256  # the model's input side for a frame (the shipped photo setting is 384 + flip: 4.5x the work)
LIVE_FPS = 15  # frames the browser sends per second
LIVE_MAX_SECONDS = 1 / LIVE_FPS  # setting "auto": a frame must take no longer for the tab to be offered
LIVE_OPTIONS = {"fill_holes": False, "feather_px": 0, "upsample": "bilinear", "input_size": LIVE_INPUT, "flip": False}


def segment_frame(segment: Segment, frame: np.ndarray | None, threshold: float) -> np.ndarray | None:
    """One webcam frame (H, W, 3 uint8) -> overlay, shrunk to LIVE_SIDE for speed."""
    if frame is None:
        return None
    image = Image.fromarray(frame).convert("RGB")
    image.thumbnail((LIVE_SIDE, LIVE_SIDE), Image.BILINEAR)
    result = segment(image, Options(threshold, **LIVE_OPTIONS))
    return np.asarray(result.overlay())


def live_webcam_status(
    setting: str, segment: Segment, device: torch.device, threshold: float, zero_gpu: bool = False
) -> tuple[bool, str]:
    """(offer the live tab?, why) for ``setting`` on | off | auto (auto: with CUDA, or when a CPU frame is fast)."""
    if setting in ("on", "off"):
        return setting == "on", f"{setting} (LIVE_WEBCAM)"
    if zero_gpu:
        return False, "off on ZeroGPU (every frame would claim a GPU)"
    if device.type == "cuda":
        return True, "on (CUDA)"
    frame = np.full((LIVE_SIDE * 3 // 4, LIVE_SIDE, 3), 128, np.uint8)
    segment_frame(segment, frame, threshold)  # warm-up
    start = time.perf_counter()
    segment_frame(segment, frame, threshold)
    seconds = time.perf_counter() - start
    on = seconds <= LIVE_MAX_SECONDS
    return on, f"{'on' if on else 'off'}: a frame takes {seconds * 1000:.0f} ms on this CPU"
