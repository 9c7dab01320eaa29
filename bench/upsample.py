"""How the model's 384 px probabilities reach the photo's size: quality on val and time, per upsampling variant.

Each val photo of the Human Segmentation Dataset and PennFudanPed runs through the model once; every variant then
upsamples the same probabilities and finishes the mask with the Space's defaults (``pipeline.finish``). Prints mIoU
and boundary F per set and pooled, and the upsampling's milliseconds per photo. Val rows only: this chooses a
setting, so it never reads test rows.

    .venv/bin/python bench/upsample.py                 # weights/ (~2 minutes on 2 cores)
    .venv/bin/python bench/upsample.py --weights runs/RUN/export
    .venv/bin/python bench/upsample.py --quick         # the first 8 val photos of each set (a smoke run)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from common import SHIPPED_WEIGHTS, markdown_table, print_machine
from PIL import Image

from segmenter import metrics, refine
from segmenter.data import DATA_ROOT, load_pair, load_pairs
from segmenter.inference import Segmenter
from segmenter.pipeline import Options, finish, upsample

SETS = ("Human-Segmentation-Dataset", "PennFudanPed")


def variants() -> dict[str, Callable[[np.ndarray, Image.Image], np.ndarray]]:
    """name -> (low-res probabilities, photo) -> uint8 probabilities at the photo's size."""

    def guided(side: int, radius: int) -> Callable[[np.ndarray, Image.Image], np.ndarray]:
        return lambda low, im: refine.guided_upsample(low, im, radius=radius, max_side=side, as_uint8=True)

    out: dict[str, Callable[[np.ndarray, Image.Image], np.ndarray]] = {
        "bilinear": lambda low, im: upsample(low, im, "bilinear")
    }
    for side, radius in ((512, 4), (384, 3), (384, 4), (256, 2), (256, 3)):
        out[f"guided, {side} px, radius {radius}"] = guided(side, radius)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(SHIPPED_WEIGHTS))
    p.add_argument("--data-root", default=str(DATA_ROOT))
    p.add_argument("--quick", action="store_true", help="only the first 8 val photos of each set")
    args = p.parse_args(argv)
    print_machine("bench/upsample.py: upsampling variants on val")
    seg = Segmenter.from_pretrained(args.weights, device="cpu")
    ups = variants()
    scores: dict[str, list[tuple[str, float, float]]] = {name: [] for name in ups}
    seconds = dict.fromkeys(ups, 0.0)
    for name in SETS:
        for pair in load_pairs(f"{args.data_root}/{name}", "val")[: 8 if args.quick else None]:
            photo, truth_img = load_pair(pair)
            truth = np.asarray(truth_img) > 127
            low, presence = seg.predict_low_res([photo])
            for variant, up in ups.items():
                t0 = time.perf_counter()
                prob = up(low[0], photo)
                seconds[variant] += time.perf_counter() - t0
                result = finish(photo, prob, float(presence[0]), Options(), seg.threshold, seg.cfg.presence_threshold)
                mask = np.asarray(result.mask) > 127
                scores[variant].append((name, metrics.iou(mask, truth), metrics.boundary_f(mask, truth)))
    rows = []
    for variant, rows_of in scores.items():
        cells = []
        for subset in (*SETS, None):
            picked = [r for r in rows_of if subset is None or r[0] == subset]
            cells.append(f"{np.mean([r[1] for r in picked]):.4f} / {np.mean([r[2] for r in picked]):.4f}")
        rows.append([variant, *cells, f"{1000 * seconds[variant] / len(rows_of):.1f}"])
    n = len(next(iter(scores.values())))
    headers = ["upsampling", *(f"{s} val mIoU / boundary F" for s in SETS), f"pooled ({n} photos)", "ms per photo"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
