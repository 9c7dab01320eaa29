"""Segmentation metrics on binary masks: IoU, Dice, pixel accuracy, boundary F-score (the loop is in evaluate.py)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

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
    return {
        "iou": iou(pred, target),
        "dice": dice(pred, target),
        "accuracy": accuracy(pred, target),
        "boundary_f": boundary_f(pred, target),
    }


def mean_scores(per_image: Iterable[dict[str, float]]) -> dict[str, float]:
    rows = list(per_image)
    if not rows:
        raise ValueError("no images to average")
    return {k: float(np.mean([r[k] for r in rows])) for k in METRICS}
