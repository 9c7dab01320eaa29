"""How the presence gate's KEEP_SHARE trades photos without people for people kept: one table per weights folder.

For every photo of the val splits, the Negatives train rows (more frames without people; nothing is fitted on them)
and the far-people set, the model's presence score and :func:`segmenter.pipeline.confident_share` of its map; then,
for each candidate share, how many photos the score would erase that the confident region keeps instead.

    python scripts/gate_sweep.py weights/        # the table in docs/presence-gate.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from segmenter import far_people
from segmenter.data import DATA_ROOT, load_pair, load_pairs
from segmenter.inference import Segmenter
from segmenter.metrics import score
from segmenter.pipeline import KEEP_SHARE, MAX_KEEP_SHARE, Options, confident_share

CANDIDATES = (0.0005, 0.002, 0.005, 0.01, 0.02)
SETS = [
    ("PicsArt-Selfies", "val"),
    ("DAVIS-People", "val"),
    ("Human-Segmentation-Dataset", "val"),
    ("PennFudanPed", "val"),
    ("Negatives", "val"),
    ("Negatives", "train"),
]


def scores(seg: Segmenter, pairs: list) -> list[tuple[float, float, float]]:
    """Photos -> [(presence score, confident share, IoU of the ungated mask)]."""
    out = []
    for start in range(0, len(pairs), 8):
        loaded = [load_pair(p) for p in pairs[start : start + 8]]
        for (_, truth), r in zip(
            loaded, seg.segment_batch([im for im, _ in loaded], Options(presence_gate=False)), strict=True
        ):
            iou = score(np.asarray(r.mask) > 127, np.asarray(truth) > 127)["iou"]
            out.append((r.presence, confident_share(r.probability), iou))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights")
    args = parser.parse_args(argv)
    seg = Segmenter.from_pretrained(args.weights, device="cpu")
    if seg.model.presence is None:
        raise SystemExit(f"{args.weights}: no presence head, so no gate to tune")
    far = far_people.ensure()
    jobs = [(f"{n} {s}", load_pairs(DATA_ROOT / n, s)) for n, s in SETS]
    jobs += [(f"{far_people.NAME} {s}", load_pairs(far, s)) for s in far_people.splits()]
    th = seg.cfg.presence_threshold
    print(
        f"{args.weights}: presence threshold {th:g}; cells: photos the score says nobody / of them, kept by the "
        f"confident region, from the column's share up to MAX_KEEP_SHARE {MAX_KEEP_SHARE:g} (shipped KEEP_SHARE "
        f"{KEEP_SHARE:g})\n"
    )
    print(
        "| photos | n | ungated mIoU | score says nobody | " + " | ".join(f"kept at {c:g}" for c in CANDIDATES) + " |"
    )
    print("|---|---|---|---|" + "---|" * len(CANDIDATES))
    for name, pairs in jobs:
        rows = scores(seg, pairs)
        doubted = [share for presence, share, _ in rows if presence < th]
        ungated = float(np.mean([iou for *_, iou in rows]))
        kept = [sum(c <= share <= MAX_KEEP_SHARE for share in doubted) for c in CANDIDATES]
        print(
            f"| {name} | {len(rows)} | {ungated:.4f} | {len(doubted)} | " + " | ".join(map(str, kept)) + " |",
            flush=True,
        )


if __name__ == "__main__":
    main()
