"""The benchmarks run on the shipped weights; the model-floor one measures the forward the Space serves.

Only that it runs and what it measures is asserted here; its timings are figures for the benchmark's own table.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from helpers import REPO_ROOT, requires_shared_data
from torch.utils.flop_counter import FlopCounterMode

from segmenter.hardware import cpu_has_bf16
from segmenter.inference import Segmenter


@pytest.mark.slow
def test_model_floor_measures_the_served_forward_at_the_served_size() -> None:
    seg = Segmenter.from_pretrained(REPO_ROOT / "weights", device="cpu", engine="torch")
    cfg, x = seg.cfg, torch.zeros(1, 3, seg.cfg.input_size, seg.cfg.input_size)
    with_presence = seg.model.presence is not None
    gflop = {}
    for name, presence in (("mask", False), ("served", with_presence)):  # served: what Segmenter.forward runs
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            seg.model(x, with_presence=True) if presence else seg.model(x)
        gflop[name] = counter.get_total_flops() / 1e9
    run = subprocess.run(
        [sys.executable, "bench/model_floor.py", "--quick", "--max-seconds", "1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    flops = re.search(rf"\| effnet_unet \| {cfg.input_size}x{cfg.input_size} \| [\d.]+ \| ([\d.]+) \|", run.stdout)
    assert flops, run.stdout[:3000]
    assert float(flops[1]) == pytest.approx(gflop["served"], abs=0.005)
    if cfg.scene_prior:  # its frozen ImageNet trunk runs on every photo: about 0.8 GFLOP more than the mask
        assert gflop["served"] > gflop["mask"] + 0.5
    assert re.search(r"\| ONNX Runtime fp32 \| [\d.]+ \|", run.stdout), "the engine the Space uses on a CPU is measured"
    assert f"effnet_unet ({cfg.input_size} px)" in run.stdout


def _run_quick(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, f"bench/{script}.py", "--quick"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
@requires_shared_data
@pytest.mark.parametrize("script", ["training", "upsample", "end_to_end"])
def test_benchmarks_on_the_shared_data_run_and_print_their_table(script: str) -> None:
    """Two of these stopped working unnoticed when train.py and the generator changed under them."""
    run = _run_quick(script)
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"^\|[-| ]+\|$", run.stdout, re.M), run.stdout[-2000:]  # a markdown table's rule line


@pytest.mark.slow
def test_training_bench_times_fp32_against_bf16() -> None:
    """bench/training.py --precision: one row per preset, fp32 and bf16 step seconds and their ratio, and the line
    that says which of the two --amp trains in on this CPU."""
    small = ["--size", "64", "--batch-size", "2"]  # the preset's own step at a size a test can afford
    cmd = [
        sys.executable,
        "bench/training.py",
        "--precision",
        "--presets",
        "cpu",
        "cpu-robust-crops",
        "--steps",
        "1",
        *small,
    ]
    run = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    for preset, objective in (("cpu", r"GAN \+ L1"), ("cpu-robust-crops", r"L1 \+ Dice \(no D\)")):
        row = rf"^\| {preset} \| effnet_unet \| {objective} \| 2 \| 64x64 \| [\d.]+ \| [\d.]+ \| [\d.]+x \|$"
        assert re.search(row, run.stdout, re.M), run.stdout[-2000:]
    native = "runs bf16 natively (AVX512-BF16 or AMX): --amp trains in bf16 here"
    assert (native if cpu_has_bf16() else "no native bf16 (no AVX512-BF16, no AMX") in run.stdout, run.stdout[-2000:]


@pytest.mark.slow
def test_ort_batching_times_the_shipped_graph() -> None:
    run = _run_quick("ort_batching")
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"^\| 2 \| \d+ px \| [\d.]+ \| [\d.]+ \| [\d.]+x \|$", run.stdout, re.M), run.stdout[-2000:]
