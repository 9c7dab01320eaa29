"""The live webcam path: a small model input without flip, and when ``LIVE_WEBCAM=auto`` offers the tab."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from segmenter import Segmenter
from segmenter.pipeline import Options, Segmentation
from segmenter.server import live


def test_frames_run_at_the_live_input_without_flip(tiny_weights) -> None:
    seg = Segmenter.from_pretrained(tiny_weights, device="cpu")
    seen: list[Options] = []

    def segment(image: Image.Image, options: Options) -> Segmentation:
        seen.append(options)
        return seg.segment(image, options)

    frame = np.full((720, 1280, 3), 90, np.uint8)
    overlay = live.segment_frame(segment, frame, 0.5)
    assert overlay.shape == (270, 480, 3)  # shrunk to LIVE_SIDE, aspect kept
    (options,) = seen
    assert (options.input_size, options.flip, options.upsample) == (live.LIVE_INPUT, False, "bilinear")
    assert live.segment_frame(segment, None, 0.5) is None


def test_auto_offers_the_tab_when_a_frame_is_fast_enough(tiny_weights, monkeypatch) -> None:
    seg = Segmenter.from_pretrained(tiny_weights, device="cpu")
    cpu = torch.device("cpu")
    frame = Image.new("RGB", (live.LIVE_SIDE, live.LIVE_SIDE * 3 // 4), "gray")
    done = seg.segment(frame, Options(0.5, **live.LIVE_OPTIONS))
    # The probe's clock is a stand-in that only the stand-in models move: the verdict never depends on how loaded
    # the machine is (a real overlay once took longer than a frame's budget on a busy 2-core host).
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(live, "time", SimpleNamespace(perf_counter=lambda: clock.now))

    def fast(image: Image.Image, options: Options) -> Segmentation:
        clock.now += live.LIVE_MAX_SECONDS / 10
        return done

    on, note = live.live_webcam_status("auto", fast, cpu, 0.5)
    assert on and note.startswith("on: a frame takes")

    def slow(image: Image.Image, options: Options) -> Segmentation:
        clock.now += live.LIVE_MAX_SECONDS * 1.5
        return seg.segment(image, options)

    on, note = live.live_webcam_status("auto", slow, cpu, 0.5)
    assert not on and note.startswith("off: a frame takes")
    assert live.live_webcam_status("auto", slow, torch.device("cuda"), 0.5) == (True, "on (CUDA)")
    assert live.live_webcam_status("auto", seg.segment, cpu, 0.5, zero_gpu=True)[0] is False
    assert live.live_webcam_status("off", seg.segment, cpu, 0.5) == (False, "off (LIVE_WEBCAM)")
