"""The shipped weights: intact, self-describing, and as good on the held-out test split as their card says."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import REPO_ROOT, requires_shared_data
from PIL import Image

from segmenter import Segmenter
from segmenter.data import DEFAULT_DATA_DIR, load_pairs
from segmenter.evaluate import evaluate
from segmenter.inference import sha256_file

WEIGHTS = REPO_ROOT / "weights"


def test_weights_ship_with_their_config_card_and_checksum() -> None:
    files = {p.name for p in WEIGHTS.iterdir()}
    assert {"model.safetensors", "config.json", "README.md"} <= files
    assert (WEIGHTS / "model.safetensors").stat().st_size <= 60 * 2**20
    cfg = json.loads((WEIGHTS / "config.json").read_text())
    assert cfg["meta"]["sha256"] == sha256_file(WEIGHTS / "model.safetensors")
    assert cfg["arch"] in ("pix2pix_unet", "effnet_unet")
    card = (WEIGHTS / "README.md").read_text()
    assert cfg["meta"]["sha256"] in card and "background-removal service" in card


def test_weights_load_and_segment_at_the_input_size() -> None:
    seg = Segmenter.from_pretrained(WEIGHTS, device="cpu")
    assert seg.get_mask(Image.new("RGB", (257, 123), "white")).size == (257, 123)


@pytest.mark.slow
@requires_shared_data
def test_test_split_miou_is_what_the_card_says_and_beats_the_bar() -> None:
    """mIoU on the 30 held-out test photos through the served pipeline: as recorded, and >= 0.90 (MediaPipe 0.893)."""
    seg = Segmenter.from_pretrained(WEIGHTS, device="cpu")
    means, rows = evaluate(seg, load_pairs(DEFAULT_DATA_DIR, "test"), progress=False)
    assert len(rows) == 30
    recorded = seg.cfg.meta["metrics"][f"{DEFAULT_DATA_DIR.name}/test"]["iou"]
    assert abs(means["iou"] - recorded) < 0.002
    assert means["iou"] >= 0.90


@pytest.mark.slow
@requires_shared_data
def test_photos_without_people_are_reported_as_such() -> None:
    """The Negatives val frames: as many reported "No person found" as the card says, and never a val portrait."""
    seg = Segmenter.from_pretrained(WEIGHTS, device="cpu")
    info = seg.info()
    assert info["presence_head"]
    if info["scene_prior"]:  # the flag, and the fit it was made with
        assert info["scene_prior_fit"]["threshold"] == seg.cfg.meta["scene_prior"]["threshold"]
    negatives, _ = evaluate(seg, load_pairs(DEFAULT_DATA_DIR.parent / "Negatives", "val"), progress=False)
    assert negatives["no_person"] == pytest.approx(seg.cfg.meta["metrics"]["Negatives/val"]["no_person"], abs=1e-4)
    assert negatives["no_person"] >= 0.5
    portraits, _ = evaluate(seg, load_pairs(DEFAULT_DATA_DIR, "val"), progress=False)
    assert portraits["no_person"] == 0.0


def test_the_robust_presets_starting_model_ships_intact() -> None:
    """`train.py --preset cpu-robust` starts from weights/hsd-lite0/ (the Human-Segmentation-only model)."""
    import train

    start = REPO_ROOT / train.PRESETS["cpu-robust"]["init_from"]
    seg = Segmenter.from_pretrained(start, device="cpu")  # checks its sha256
    assert seg.cfg.meta["sha256"] == "9b476560c8ab725dc9a93d20d60500667acd686627d0cbafd1952f43368d0b5a"
    assert not seg.info()["presence_head"]


@requires_shared_data
def test_examples_are_val_photos_never_test_ones() -> None:
    """The app's example photos come from val rows, so the published test number stays held out."""
    named = set(re.findall(r"Training_Images/(\d+\.jpg)", (REPO_ROOT / "examples" / "README.md").read_text()))
    assert named
    assert named <= {Path(p.image).name for p in load_pairs(DEFAULT_DATA_DIR, "val")}


def test_save_pretrained_returns_a_new_config_and_leaves_its_argument(tmp_path: Path) -> None:
    from segmenter.config import ModelConfig
    from segmenter.model import build_generator
    from segmenter.weights import save_pretrained

    cfg = ModelConfig(ngf=4, num_downs=5, input_size=32, meta={"run_id": "r"})
    saved = save_pretrained(build_generator(cfg), cfg, tmp_path)
    assert cfg.meta == {"run_id": "r"}
    assert saved.meta["sha256"] == sha256_file(tmp_path / "model.safetensors") and saved.meta["run_id"] == "r"
    assert json.loads((tmp_path / "config.json").read_text())["meta"] == saved.meta


def test_a_hub_repo_id_is_recognised_explicitly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from segmenter.inference import hub_repo_id

    monkeypatch.chdir(tmp_path)
    assert hub_repo_id("owner/name") == "owner/name" and hub_repo_id("hf://owner/name") == "owner/name"
    (tmp_path / "owner" / "name").mkdir(parents=True)
    assert hub_repo_id("owner/name") is None  # a folder here is a folder
    assert hub_repo_id("hf://owner/name") == "owner/name"
    for text in ("a/b/c", "noslash", "own er/name", "/abs/path"):
        assert hub_repo_id(text) is None
    with pytest.raises(ValueError, match="not a Hub repo id"):
        hub_repo_id("hf://a/b/c")
    with pytest.raises(FileNotFoundError, match=r"not a weights folder, a \.safetensors file or a Hub repo id"):
        Segmenter.from_pretrained("no such/folder here", verify=False)
