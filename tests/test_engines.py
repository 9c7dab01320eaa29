"""Model engines: ONNX Runtime (``onnx``), eager PyTorch fp32 (``torch``) and bf16 autocast + channels-last (``bf16``).

``auto`` picks ONNX Runtime on a CPU when the weights carry a checked ``model.onnx``; every engine must serve the
masks eager fp32 serves.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT, requires_shared_data
from PIL import Image

from segmenter import inference
from segmenter.data import DEFAULT_DATA_DIR, load_pairs
from segmenter.export import ONNX_NAME, copy_export
from segmenter.inference import Segmenter, pick_engine
from segmenter.pipeline import Options

WEIGHTS = REPO_ROOT / "weights"
needs_bf16 = pytest.mark.skipif(not inference.cpu_has_bf16(), reason="this CPU has no native bf16")


def test_auto_picks_onnx_on_a_cpu_with_the_graph(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cpu, cuda, graph = torch.device("cpu"), torch.device("cuda"), tmp_path / ONNX_NAME
    assert [pick_engine("auto", cpu, graph), pick_engine("auto", cpu, None), pick_engine("auto", cuda, graph)] == [
        "onnx",
        "torch",
        "torch",
    ]
    with pytest.raises(ValueError, match="engine onnx needs"):
        pick_engine("onnx", cpu, None)
    monkeypatch.setattr(inference, "onnxruntime_installed", lambda: False)
    assert pick_engine("auto", cpu, graph) == "torch"
    monkeypatch.setattr(inference, "cpu_has_bf16", lambda: False)
    with pytest.raises(ValueError, match="no native bf16"):
        pick_engine("bf16", cpu, graph)
    with pytest.raises(ValueError, match="engine must be one of"):
        pick_engine("int8", cpu, graph)


def test_only_native_bf16_counts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """oneDNN emulates bf16 on plain AVX-512 (and says it supports it); only AVX512-BF16 or AMX count as native."""
    from segmenter import hardware

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not hardware.cpu_has_bf16()  # emulation only: --amp trains in fp32, engine bf16 is refused
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert hardware.cpu_has_bf16()
    for name in hardware.NATIVE_BF16_CHECKS:  # an older torch without the checks: the kernel's CPU flags
        monkeypatch.delattr(torch.cpu, name)
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "cpuinfo")
    hardware.CPUINFO.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert not hardware.cpu_has_bf16()
    hardware.CPUINFO.write_text("flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16\n")
    assert hardware.cpu_has_bf16()


def test_export_writes_a_checked_graph_that_auto_serves(tiny_weights: Path, example_photo: Path) -> None:
    assert (tiny_weights / ONNX_NAME).is_file()
    onnx = Segmenter.from_pretrained(tiny_weights, device="cpu")
    eager = Segmenter.from_pretrained(tiny_weights, device="cpu", engine="torch")
    assert (onnx.engine, onnx.info()["engine"], eager.engine) == ("onnx", "onnx", "torch")
    photo = Image.open(example_photo)
    a, b = eager.predict_low_res([photo]), onnx.predict_low_res([photo])
    np.testing.assert_allclose(a[0], b[0], atol=1e-4)
    same = np.asarray(eager.get_mask(photo)) == np.asarray(onnx.get_mask(photo))
    assert same.mean() >= 0.999, same.mean()  # the contract: identical masks on >= 99.9% of pixels


def test_a_stale_graph_is_ignored_and_a_corrupt_one_refused(tiny_weights: Path, tmp_path: Path) -> None:
    stale = tmp_path / "stale"
    shutil.copytree(tiny_weights, stale)
    cfg = json.loads((stale / "config.json").read_text())
    del cfg["meta"]["onnx_sha256"]  # weights exported without a graph, an old model.onnx left beside them
    (stale / "config.json").write_text(json.dumps(cfg))
    assert Segmenter.from_pretrained(stale, device="cpu").engine == "torch"
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_weights, corrupt)
    with open(corrupt / ONNX_NAME, "r+b") as f:
        f.seek(100)
        f.write(b"\0" * 16)
    with pytest.raises(ValueError, match="sha256 does not match"):
        Segmenter.from_pretrained(corrupt, device="cpu")


def test_a_corrupt_graph_blocks_only_the_onnx_engine(tiny_weights: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_weights, corrupt)
    with open(corrupt / ONNX_NAME, "r+b") as f:
        f.seek(100)
        f.write(b"\0" * 16)
    assert (
        Segmenter.from_pretrained(corrupt, device="cpu", engine="torch").engine == "torch"
    )  # it never reads the graph
    with pytest.raises(ValueError, match=r'sha256 does not match.*engine="torch" does not use this file'):
        Segmenter.from_pretrained(corrupt, device="cpu", engine="onnx")


def test_copy_export_never_leaves_an_old_graph_beside_new_weights(tiny_weights: Path, tmp_path: Path) -> None:
    with_graph, no_graph, dest = tmp_path / "with-graph", tmp_path / "no-graph", tmp_path / "weights"
    for src in (with_graph, no_graph):
        shutil.copytree(tiny_weights, src)
        (src / "README.md").write_text("model card")
    (no_graph / ONNX_NAME).unlink()
    copy_export(with_graph, dest)
    assert (dest / ONNX_NAME).is_file()
    copy_export(no_graph, dest)
    assert not (dest / ONNX_NAME).exists()


def test_options_set_the_model_step(tiny_weights: Path, example_photo: Path) -> None:
    """input_size and flip override the model's own setting for one call (the live webcam path uses them)."""
    seg = Segmenter.from_pretrained(tiny_weights, device="cpu")
    size = 2 * seg.cfg.input_size
    low, _ = seg.predict_low_res([Image.open(example_photo)], Options(input_size=size, flip=False))
    assert low.shape[-2:] == (size, size)
    flipped, _ = seg.predict_low_res([Image.open(example_photo)], Options(input_size=size, flip=True))
    assert not np.array_equal(low, flipped)
    with pytest.raises(ValueError, match="multiple of 32"):
        Options(input_size=100)


def compare_on_test_photos(engine: str) -> tuple[float, float]:
    """(largest served-probability difference, share of mask pixels that agree) of ``engine`` against eager fp32,
    the shipped weights on the 30 held-out test photos through the whole pipeline; presence decisions must agree."""
    reference = Segmenter.from_pretrained(WEIGHTS, device="cpu", engine="torch")
    other = Segmenter.from_pretrained(WEIGHTS, device="cpu", engine=engine)
    worst, agree, total = 0.0, 0, 0
    for pair in load_pairs(DEFAULT_DATA_DIR, "test"):
        photo = Image.open(pair.image)
        a, b = reference.segment(photo), other.segment(photo)
        worst = max(worst, float(np.abs(a.probability.astype(np.int16) - b.probability).max()) / 255)
        agree += int((np.asarray(a.mask) == np.asarray(b.mask)).sum())
        total += a.probability.size
        assert a.person_present == b.person_present
    print(f"{engine}: max probability difference {worst:.4f}, masks agree on {agree / total:.4%} of pixels")
    return worst, agree / total


@pytest.mark.slow
@requires_shared_data
def test_onnx_serves_the_masks_eager_fp32_serves() -> None:
    """Measured: at most 1/255 apart (one uint8 step, float rounding), masks identical on >= 99.999% of pixels."""
    worst, agreement = compare_on_test_photos("onnx")
    assert worst <= 1 / 255 and agreement >= 0.99999


@needs_bf16
@pytest.mark.slow
@requires_shared_data
def test_bf16_stays_close_but_below_the_bar_auto_needs() -> None:
    """Measured: up to 0.45 apart on single pixels, masks agree on 99.886%: below issue 13's 99.9%, so opt-in only."""
    worst, agreement = compare_on_test_photos("bf16")
    assert worst <= 0.6 and agreement >= 0.998


def test_add_onnx_gives_older_weights_the_engine(tiny_weights: Path, tmp_path: Path) -> None:
    from segmenter import add_onnx

    older = tmp_path / "older"
    shutil.copytree(tiny_weights, older)
    (older / ONNX_NAME).unlink()
    cfg = json.loads((older / "config.json").read_text())
    del cfg["meta"]["onnx_sha256"]
    (older / "config.json").write_text(json.dumps(cfg))
    assert Segmenter.from_pretrained(older, device="cpu").engine == "torch"
    add_onnx.main([str(older)])
    assert Segmenter.from_pretrained(older, device="cpu").engine == "onnx"
