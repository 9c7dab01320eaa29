"""Metrics against hand-computed cases, and dataset evaluation at each photo's own size."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from helpers import write_dataset
from PIL import Image

from segmenter.data import load_pairs
from segmenter.evaluate import evaluate
from segmenter.metrics import accuracy, boundary_f, dice, iou, mean_scores, score
from segmenter.pipeline import Options, Segmentation, finish


def box(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[rows, cols] = True
    return m


def test_overlap_metrics_by_hand() -> None:
    pred = box((4, 4), slice(0, 2), slice(0, 2))  # 4 pixels
    target = box((4, 4), slice(0, 2), slice(0, 3))  # 6 pixels, 4 shared
    assert iou(pred, target) == pytest.approx(4 / 6)
    assert dice(pred, target) == pytest.approx(2 * 4 / (4 + 6))
    assert accuracy(pred, target) == pytest.approx(14 / 16)
    assert iou(pred, ~pred) == 0.0 and dice(pred, ~pred) == 0.0 and accuracy(pred, ~pred) == 0.0
    # 0/255 uint8 masks count as booleans
    assert iou(pred.astype(np.uint8) * 255, target.astype(np.uint8) * 255) == pytest.approx(4 / 6)


def test_empty_masks() -> None:
    empty, some = np.zeros((5, 5), bool), box((5, 5), slice(1, 3), slice(1, 3))
    assert score(empty, empty) == {"iou": 1.0, "dice": 1.0, "accuracy": 1.0, "boundary_f": 1.0}
    assert score(empty, some) == {"iou": 0.0, "dice": 0.0, "accuracy": 21 / 25, "boundary_f": 0.0}
    assert score(some, empty)["boundary_f"] == 0.0


def test_boundary_f_by_hand() -> None:
    square = box((20, 20), slice(2, 6), slice(2, 6))  # 4x4: 12 boundary pixels
    blob = box((20, 20), slice(12, 15), slice(12, 15))  # 3x3: 8 boundary pixels, far from the square
    assert boundary_f(square, square) == 1.0
    # Every predicted boundary pixel is matched (precision 1), 12 of 20 target ones are (recall 0.6).
    assert boundary_f(square, square | blob, tolerance=1) == pytest.approx(2 * 1 * 0.6 / 1.6)
    # Half planes two columns apart: matched at tolerance 2, not at 1. The photo's border is no boundary.
    left5, left7 = box((10, 10), slice(None), slice(0, 5)), box((10, 10), slice(None), slice(0, 7))
    assert boundary_f(left5, left7, tolerance=1) == 0.0
    assert boundary_f(left5, left7, tolerance=2) == 1.0
    full = np.ones((10, 10), bool)
    assert boundary_f(full, full) == 1.0


def test_boundary_f_default_tolerance_scales_with_the_image() -> None:
    # 0.75% of the diagonal: about 1.06 px at 100x100, 10.6 px at 1000x1000.
    small_a, small_b = box((100, 100), slice(None), slice(0, 50)), box((100, 100), slice(None), slice(0, 53))
    assert boundary_f(small_a, small_b) == 0.0
    big_a, big_b = box((1000, 1000), slice(None), slice(0, 500)), box((1000, 1000), slice(None), slice(0, 510))
    assert boundary_f(big_a, big_b) == 1.0


def test_shape_mismatch_and_empty_average_are_refused() -> None:
    with pytest.raises(ValueError, match="mask shapes differ"):
        iou(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="no images"):
        mean_scores([])
    rows = [
        {"iou": 1.0, "dice": 1.0, "accuracy": 1.0, "boundary_f": 1.0},
        {"iou": 0.0, "dice": 0.5, "accuracy": 0.5, "boundary_f": 0.0},
    ]
    assert mean_scores(rows) == {"iou": 0.5, "dice": 0.75, "accuracy": 0.75, "boundary_f": 0.5}


class ReadsThePhoto:
    """A stand-in Segmenter whose probability is the photo's brightness: exact on the synthetic scenes."""

    threshold = 0.5

    def __init__(self, invert: bool = False) -> None:
        self.invert = invert
        self.sizes: list[tuple[int, int]] = []

    def segment_batch(self, images: Sequence[Image.Image], options: Options | None = None) -> list[Segmentation]:
        """The pipeline's finish() on a probability map that is the photo's grey level (no clean-up)."""
        out = []
        for im in images:
            self.sizes.append(im.size)
            p = np.asarray(im.convert("L"))
            threshold = options.threshold if options else None
            out.append(finish(im, 255 - p if self.invert else p, None, Options(threshold, fill_holes=False), 0.5, 0.5))
        return out


def test_evaluate_compares_at_each_photos_own_size(tmp_path: Path) -> None:
    sizes = [(37, 53), (120, 80), (64, 64)]
    pairs = load_pairs(write_dataset(tmp_path, sizes, ["test"] * 3))
    seg = ReadsThePhoto()
    means, rows = evaluate(seg, pairs, progress=False, batch_size=2)  # type: ignore[arg-type]
    assert seg.sizes == [(w, h) for h, w in sizes]
    assert [r["image"] for r in rows] == [str(p.image) for p in pairs]
    assert means.pop("seconds_per_image") >= 0
    truth_share = np.mean([(np.asarray(Image.open(p.mask)) > 127).mean() for p in pairs])
    assert means.pop("person_share") == pytest.approx(truth_share)
    assert means.pop("no_person") == 0.0
    assert means.pop("missed", 0.0) == 0.0  # photos with a person that got an empty mask (evaluate's newer column)
    assert means == {"iou": 1.0, "dice": 1.0, "accuracy": 1.0, "boundary_f": 1.0}
    means, _ = evaluate(ReadsThePhoto(invert=True), pairs, progress=False)  # type: ignore[arg-type]
    assert means["iou"] == 0.0 and means["accuracy"] == 0.0
    # threshold 0.01 (under the background's grey level 40): everything is "person", so IoU is the share of the
    # photo the person covers; 0 itself is refused (open interval, pipeline.check_threshold)
    with pytest.raises(ValueError, match="between 0 and 1"):
        Options(threshold=0.0)
    _, rows = evaluate(seg, pairs, Options(threshold=0.01), progress=False)  # type: ignore[arg-type]
    for pair, row in zip(pairs, rows, strict=True):
        truth = np.asarray(Image.open(pair.mask)) > 127
        assert row["iou"] == pytest.approx(truth.mean())
