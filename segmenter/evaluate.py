"""Evaluate exported weights on a dataset split: mean per-image mIoU, Dice, accuracy and boundary F.

    python -m segmenter.evaluate weights/ --split test
    python -m segmenter.evaluate weights/ --data my_annotations.csv --split all --csv per_image.csv

Masks are compared at each photo's original size (see ``segmenter.metrics.evaluate``).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

from .data import DEFAULT_DATA_DIR, load_pairs
from .inference import Segmenter
from .metrics import METRICS, evaluate

LABELS = {"iou": "mIoU", "dice": "Dice", "accuracy": "accuracy", "boundary_f": "boundary-F"}
WORST = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m segmenter.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("weights", help="weights folder (config.json + model.safetensors), .safetensors file or Hub repo id")
    parser.add_argument("--data", default=str(DEFAULT_DATA_DIR),
                        help="dataset folder (with split.csv) or images,masks[,split] CSV (default: %(default)s)")  # fmt: skip
    parser.add_argument("--split", default="test", help="split to evaluate, or 'all' (default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="probability threshold (default: the one in the weights' config)")  # fmt: skip
    parser.add_argument("--csv", type=Path, default=None, help="also write per-image scores to this CSV file")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold must be in [0, 1], not {args.threshold}")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def _shown(image: str, root: Path | None) -> str:
    """An image path relative to the dataset root when it lies inside it."""
    try:
        return str(Path(image).relative_to(root)) if root is not None else image
    except ValueError:
        return image


def format_report(means: dict[str, float], rows: list[dict], worst: int = WORST, root: Path | None = None) -> str:
    """Markdown tables: the mean of each metric, then the ``worst`` images by IoU (paths shown relative to ``root``)."""
    lines = ["| metric | mean |", "| --- | --- |"]
    lines += [f"| {LABELS[k]} | {means[k]:.4f} |" for k in METRICS]
    if "seconds_per_image" in means:
        lines.append(f"| seconds per image (segmenter only) | {means['seconds_per_image']:.3f} |")
    per_image = ["IoU", *(LABELS[k] for k in METRICS[1:])]
    lines += ["", f"Worst {min(worst, len(rows))} by IoU:", "",
              "| image | " + " | ".join(per_image) + " |", "| --- |" + " --- |" * len(METRICS)]  # fmt: skip
    for row in sorted(rows, key=lambda r: r["iou"])[:worst]:
        lines.append(f"| {_shown(row['image'], root)} | " + " | ".join(f"{row[k]:.4f}" for k in METRICS) + " |")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", *METRICS])
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    split = None if args.split == "all" else args.split
    try:
        pairs = load_pairs(args.data, split)
        if not pairs:
            raise ValueError(f"{args.data}: no images to evaluate")
        seg = Segmenter.from_pretrained(args.weights, device=args.device)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    threshold = seg.threshold if args.threshold is None else args.threshold
    means, rows = evaluate(seg, pairs, threshold=threshold, progress=not args.no_progress, batch_size=args.batch_size)
    sha = seg.info().get("sha256", "")
    print(f"weights: {args.weights} ({seg.cfg.arch}{', sha256 ' + sha[:12] if sha else ''}), "
          f"input {seg.cfg.input_size}px{' + flip' if seg.cfg.tta_flip else ''}, {seg.device}, {torch.get_num_threads()} threads")
    print(f"data: {args.data}, split {args.split}: {len(rows)} images, threshold {threshold:g}, "
          "mean per image at original size\n")  # fmt: skip
    data = Path(args.data)
    print(format_report(means, rows, root=data if data.is_dir() else data.parent))
    if args.csv is not None:
        write_csv(rows, args.csv)
        print(f"\nper-image scores: {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
