"""Helpers for tests/test_train.py: a tiny synthetic person dataset, tiny-model options, weight comparison."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # train.py is a script at the repository root, not an installed module
    sys.path.insert(0, str(ROOT))
SPLITS = {"train": 6, "val": 2, "test": 2}


def make_dataset(root: Path, size: int = 64, seed: int = 0) -> Path:
    """Write photos of a "person" (head + body ellipses on a noisy background) with masks; returns data.csv.

    The CSV has ``images,masks,split`` columns (paths relative to it) and SPLITS rows per split.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rows = []
    i = 0
    for split, count in SPLITS.items():
        for _ in range(count):
            cx, w, h = rng.integers(size // 3, 2 * size // 3), rng.integers(size // 6, size // 3), size // 2
            head = (cx - w // 2, size // 8, cx + w // 2, size // 8 + w)
            body = (cx - w, size // 8 + w, cx + w, size // 8 + w + h)
            mask = Image.new("L", (size, size), 0)
            draw = ImageDraw.Draw(mask)
            draw.ellipse(head, fill=255)
            draw.ellipse(body, fill=255)
            noise = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            photo = Image.fromarray(noise // 2 + rng.integers(0, 128, 3, dtype=np.uint8))
            person = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(150, 256, 3)))
            photo.paste(person, mask=mask)
            photo.save(root / "images" / f"{i}.png")
            mask.save(root / "masks" / f"{i}.png")
            rows.append({"images": f"images/{i}.png", "masks": f"masks/{i}.png", "split": split})
            i += 1
    csv_path = root / "data.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["images", "masks", "split"])
        w.writeheader()
        w.writerows(rows)
    return csv_path


def tiny_args(data: Path, out_dir: Path, *extra: str) -> list[str]:
    """train.py options for a seconds-long CPU run of a tiny pix2pix U-Net at 64x64 (6 levels)."""
    return [
        "--data",
        str(data),
        "--out-dir",
        str(out_dir),
        "--arch",
        "pix2pix_unet",
        "--ngf",
        "8",
        "--ndf",
        "8",
        "--size",
        "64",
        "--batch-size",
        "2",
        "--samples",
        "2",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--epochs",
        "1",
        *extra,
    ]


def only_run(out_dir: Path) -> Path:
    """The single run folder under ``out_dir``."""
    runs = [p for p in out_dir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def checkpoint(run_dir: Path) -> dict[str, Any]:
    """The run's last.pt."""
    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Bit-identical state dicts."""
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
