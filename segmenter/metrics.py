"""Segmentation metrics on binary masks: IoU, Dice, pixel accuracy, boundary F-score, and dataset evaluation."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from .data import Pair
    from .inference import Segmenter

METRICS = ("iou", "dice", "accuracy", "boundary_f")


def _check(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {target.shape}")
    return pred, target


def iou(pred: np.ndarray, target: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty."""
    pred, target = _check(pred, target)
    union = np.logical_or(pred, target).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, target).sum() / union)


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """2|A and B| / (|A| + |B|); 1.0 when both are empty."""
    pred, target = _check(pred, target)
    total = pred.sum() + target.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(pred, target).sum() / total)


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    pred, target = _check(pred, target)
    return float((pred == target).mean())


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=1)


def boundary_f(pred: np.ndarray, target: np.ndarray, tolerance: float | None = None) -> float:
    """Boundary F-score (DAVIS-style): boundary pixels matched within ``tolerance`` px (default 0.75% of the diagonal)."""
    pred, target = _check(pred, target)
    if tolerance is None:
        tolerance = max(1.0, 0.0075 * float(np.hypot(*pred.shape)))
    bp, bt = _boundary(pred), _boundary(target)
    if not bp.any() and not bt.any():
        return 1.0
    if not bp.any() or not bt.any():
        return 0.0
    dist_to_t = ndimage.distance_transform_edt(~bt)
    dist_to_p = ndimage.distance_transform_edt(~bp)
    precision = float((dist_to_t[bp] <= tolerance).mean())
    recall = float((dist_to_p[bt] <= tolerance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def score(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """All metrics for one image."""
    return {"iou": iou(pred, target), "dice": dice(pred, target), "accuracy": accuracy(pred, target),
            "boundary_f": boundary_f(pred, target)}  # fmt: skip


def mean_scores(per_image: Iterable[dict[str, float]]) -> dict[str, float]:
    rows = list(per_image)
    if not rows:
        raise ValueError("no images to average")
    return {k: float(np.mean([r[k] for r in rows])) for k in METRICS}


def evaluate(seg: Segmenter, pairs: list[Pair], threshold: float | None = None, progress: bool = True,
             batch_size: int = 8) -> tuple[dict[str, float], list[dict[str, float]]]:  # fmt: skip
    """Run ``seg`` over ``pairs``; masks are compared at each photo's original size. Returns (means, per image).

    The means also hold ``seconds_per_image``: the segmenter's own time (resize, model, upsampling), decoding excluded.
    """
    from tqdm.auto import tqdm

    from .data import load_pair

    rows: list[dict[str, float]] = []
    model_seconds = 0.0
    bar = tqdm(total=len(pairs), desc="evaluate", unit="img", disable=not progress)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        loaded = [load_pair(p) for p in chunk]
        start_t = time.perf_counter()
        probs = seg.predict_probas([img for img, _ in loaded])
        model_seconds += time.perf_counter() - start_t
        thr = seg.threshold if threshold is None else threshold
        for pair, (_, mask), prob in zip(chunk, loaded, probs, strict=True):
            rows.append({"image": str(pair.image), **score(prob >= thr, np.asarray(mask) > 127)})
        bar.update(len(chunk))
    bar.close()
    return {**mean_scores(rows), "seconds_per_image": model_seconds / len(pairs)}, rows
