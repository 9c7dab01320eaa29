"""The evaluation CLI on a tiny CSV dataset made on the spot."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    REPO_ROOT,
    export_tiny,
    make_presence_weights,
    make_tiny_weights,
    requires_shared_data,
    write_dataset,
)
from PIL import Image

from segmenter.data import load_pairs
from segmenter.evaluate import evaluate, main
from segmenter.inference import Segmenter
from segmenter.pipeline import Options

SPLITS = ["test", "train", "test", "val", "test", "test", "test", "test"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sizes = [(40 + 7 * i, 90 - 5 * i) for i in range(len(SPLITS))]
    return write_dataset(tmp_path_factory.mktemp("ds"), sizes, SPLITS)


@pytest.fixture(scope="module")
def all_on(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_weights(tmp_path_factory.mktemp("on"), constant=5.0)


def table_value(out: str, label: str) -> float:
    match = re.search(rf"^\| {re.escape(label)} \| ([0-9.]+) \|$", out, re.M)
    assert match, f"no {label} row in:\n{out}"
    return float(match.group(1))


def test_cli_reports_hand_checkable_scores(
    dataset: Path, all_on: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A model that marks every pixel as person scores IoU = accuracy = person's share of each photo.
    out_csv = tmp_path / "scores" / "per_image.csv"
    assert main([str(all_on), "--data", str(dataset), "--split", "test", "--csv", str(out_csv), "--no-progress"]) == 0
    out = capsys.readouterr().out
    test_pairs = [i for i, s in enumerate(SPLITS) if s == "test"]
    shares = {i: (np.asarray(Image.open(dataset.parent / "masks" / f"{i}.png")) > 127).mean() for i in test_pairs}
    assert f"{len(test_pairs)} images" in out
    assert table_value(out, "mIoU") == pytest.approx(np.mean(list(shares.values())), abs=1e-4)
    assert table_value(out, "accuracy") == pytest.approx(np.mean(list(shares.values())), abs=1e-4)
    assert table_value(out, "Dice") == pytest.approx(np.mean([2 * s / (s + 1) for s in shares.values()]), abs=1e-4)
    # The five worst by IoU, worst first.
    worst = re.findall(r"^\| images/(\d+)\.jpg \| ([0-9.]+) \|", out, re.M)  # relative to the CSV's folder
    assert [int(i) for i, _ in worst] == sorted(shares, key=shares.get)[:5]
    with out_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["image"]).name for r in rows] == [f"{i}.jpg" for i in test_pairs]
    assert [float(r["iou"]) for r in rows] == pytest.approx([shares[i] for i in test_pairs])


def test_cli_matches_metrics_evaluate(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = make_tiny_weights(tmp_path / "w", seed=3)
    assert main([str(weights), "--data", str(dataset), "--split", "all", "--threshold", "0.5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    means, _ = evaluate(
        Segmenter.from_pretrained(weights, "cpu"), load_pairs(dataset), Options(threshold=0.5), progress=False
    )
    assert f"{len(SPLITS)} images" in out
    for label, key in [("mIoU", "iou"), ("Dice", "dice"), ("accuracy", "accuracy"), ("boundary-F", "boundary_f")]:
        assert table_value(out, label) == pytest.approx(means[key], abs=1e-4)


def test_cli_errors(dataset: Path, all_on: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(all_on), "--data", str(dataset), "--split", "holdout"]) == 2
    assert "no rows with split 'holdout'" in capsys.readouterr().err
    assert main([str(tmp_path), "--data", str(dataset)]) == 2
    assert "no model.safetensors in" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([str(all_on), "--data", str(dataset), "--threshold", "1.5"])
    assert e.value.code == 2


def test_runs_as_a_module(dataset: Path, all_on: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "segmenter.evaluate", str(all_on), "--data", str(dataset), "--no-progress"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "| mIoU |" in out.stdout and "Worst 5 by IoU" in out.stdout


def test_all_splits_table_goes_into_the_model_card(tmp_path: Path, all_on: Path, capsys: pytest.CaptureFixture[str]):
    root = tmp_path / "data"
    csv_path = write_dataset(root / "people", [(40, 60), (50, 30), (33, 47)], ["train", "val", "test"])
    csv_path.rename(csv_path.with_name("split.csv"))
    weights = tmp_path / "w"
    weights.mkdir()
    for name in ("model.safetensors", "config.json"):
        (weights / name).write_bytes((all_on / name).read_bytes())
    (weights / "README.md").write_text("# card\n\n## Results\nold rows\n\n## Training\nkept\n")
    argv = [str(weights), "--all", "--train", "--data-root", str(root), "--card", "--no-progress"]
    assert main(argv) == 0
    table = capsys.readouterr().out.split("| dataset | split |", 1)[1].split("\n\nmodel card updated")[0]
    card = (weights / "README.md").read_text()
    assert "old rows" not in card and card.endswith("\n## Training\nkept\n")
    assert f"`python -m segmenter.evaluate {' '.join(argv)}`" in card and table in card
    rows = [line.split(" | ")[1] for line in card.splitlines() if line.startswith("| people")]
    assert rows == ["train", "val"]  # test rows are read only for the published dataset
    metrics = json.loads((weights / "config.json").read_text())["meta"]["metrics"]  # what the Model tab shows
    val_row = next(line for line in card.splitlines() if line.startswith("| people | val |"))
    assert "people/train" not in metrics and metrics["people/val"]["images"] == 1
    assert f"| {metrics['people/val']['iou']:.4f} |" in val_row


def foreign_photos_script() -> types.ModuleType:
    """scripts/foreign_photos.py, imported as a module."""
    spec = importlib.util.spec_from_file_location("foreign_photos", REPO_ROOT / "scripts" / "foreign_photos.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_foreign_photos_table_scores_each_model_against_what_the_photos_show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = foreign_photos_script()
    everyone = make_presence_weights(tmp_path / "everyone", presence_bias=5.0)  # a full mask on every photo
    nobody = make_presence_weights(tmp_path / "nobody", presence_bias=-5.0)  # "no person" on every photo
    script.main([str(everyone), str(nobody)])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    with_person = sum(person for person, _ in script.PHOTOS.values())
    assert len(rows) == len(script.PHOTOS) and 0 < with_person < len(rows)
    assert "| coffee | no | 0.99 / 100.0% / person | 0.01 / 0.0% / no person |" in out
    assert f"{everyone}: {with_person} of {len(rows)} photos answered right" in out
    assert f"{nobody}: {len(rows) - with_person} of {len(rows)} photos answered right" in out


def test_foreign_photos_can_take_the_scene_prior_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--without-scene-prior adds a column where the presence head alone decides."""
    from torch import nn

    from segmenter.config import ModelConfig

    def head_yes_prior_no(net: nn.Module) -> None:
        net.head.weight.zero_()
        net.head.bias.fill_(5.0)
        net.presence.mlp[-1].weight.zero_()
        net.presence.mlp[-1].bias.fill_(5.0)
        net.scene.probe.weight.zero_()
        net.scene.probe.bias.fill_(-5.0)

    cfg = ModelConfig(arch="effnet_unet", input_size=64, presence_head=True, scene_prior=True)
    vetoed = export_tiny(tmp_path / "vetoed", cfg, head_yes_prior_no)
    script = foreign_photos_script()
    script.main([str(vetoed), "--without-scene-prior"])
    out = capsys.readouterr().out
    assert "| coffee | no | 0.01 / 0.0% / no person | 0.99 / 100.0% / person |" in out
    assert f"{vetoed} without its scene prior: " in out


@requires_shared_data
def test_foreign_photos_counts_the_pasted_people_each_model_misses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = foreign_photos_script()
    everyone = make_presence_weights(tmp_path / "everyone", presence_bias=5.0)
    nobody = make_presence_weights(tmp_path / "nobody", presence_bias=-5.0)
    script.main([str(everyone), str(nobody), "--pasted-val", "--pasted-test"])
    out = capsys.readouterr().out
    for split, least in (("val", 40), ("test", 15)):  # most of the 80 val / 30 test people keep 2% of the frame
        found = re.findall(
            rf"(\S+): (\d+) of (\d+) {split} people pasted onto val frames without people reported no person", out
        )
        assert [(name, missed == "0", missed == total) for name, missed, total in found] == [
            (str(everyone), True, False),
            (str(nobody), False, True),
        ]
        assert int(found[0][2]) >= least


def test_all_reads_val_by_default_and_compares(tmp_path: Path, all_on: Path, capsys: pytest.CaptureFixture[str]):
    """--all reads val (train only with --train); --compare scores both models on the same photos, with a verdict."""
    root = tmp_path / "data"
    write_dataset(root / "people", [(40, 60), (50, 30), (33, 47)], ["train", "val", "val"]).rename(
        root / "people" / "split.csv"
    )
    assert main([str(all_on), "--all", "--data-root", str(root), "--no-progress", "--compare", str(all_on)]) == 0
    out = capsys.readouterr().out
    assert "| people | val | 2 |" in out and "| people | train |" not in out
    comparison = out.split("against ", 1)[1]
    assert "| people | val | 2 |" in comparison and "| same |" in comparison
    assert "does not ship" in comparison  # the same model: no better pooled figure, so it does not ship


def test_compare_table_verdicts() -> None:
    from segmenter.evaluate import compare_table

    def rows(a: float, b: float, missed: float = 0) -> list:
        return [
            ("A", "val", {"iou": a, "photos": 10, "missed": missed}),
            ("B", "val", {"iou": b, "photos": 30, "missed": 0}),
            ("A", "test", {"iou": 0.1, "photos": 5, "missed": 0}),  # shown, never judged
        ]

    ref = rows(0.80, 0.70)
    assert compare_table(rows(0.81, 0.72), ref, "ref")[1]  # better everywhere
    assert compare_table(rows(0.797, 0.72), ref, "ref")[1]  # A within noise, pooled better
    table, ships = compare_table(rows(0.79, 0.75), ref, "ref")  # A worse beyond noise: pooled gain does not buy it
    assert not ships and "| A | val | 10 | 0.8000 | 0.7900 | -0.0100 | 0 | 0 | worse |" in table
    assert not compare_table(rows(0.81, 0.72, missed=1), ref, "ref")[1]  # one more photo missed
