"""Detection and mask scores: pure functions on boxes and boolean arrays.

Boxes are ``(row_min, col_min, row_max, col_max)`` with the max exclusive, as
everywhere in smearflow. Conventions for empty cases: precision is 1.0 when
nothing was predicted, recall is 1.0 when there was nothing to find, F1 is
1.0 when there was neither, and Dice / IoU of two empty masks are 1.0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DetectionScore",
    "box_iou_matrix",
    "detection_score",
    "dice",
    "mask_iou",
    "match_boxes",
    "precision_recall_f1",
    "score_by_class",
]


@dataclass(frozen=True)
class DetectionScore:
    """True positives, false positives and false negatives, with their ratios."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return precision_recall_f1(self.tp, self.fp, self.fn)[0]

    @property
    def recall(self) -> float:
        return precision_recall_f1(self.tp, self.fp, self.fn)[1]

    @property
    def f1(self) -> float:
        return precision_recall_f1(self.tp, self.fp, self.fn)[2]

    def __add__(self, other: DetectionScore) -> DetectionScore:
        return DetectionScore(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1 from counts.

    Raises
    ------
    ValueError
        When a count is negative.
    """
    for name, value in (("tp", tp), ("fp", fp), ("fn", fn)):
        if value < 0:
            raise ValueError(f"{name} must be zero or positive. Received: {name}={value}")
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    if tp == 0:
        f1 = 1.0 if fp == 0 and fn == 0 else 0.0
    else:
        f1 = 2.0 * precision * recall / (precision + recall)
    return precision, recall, f1


def _as_boxes(boxes: Sequence[Sequence[float]] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(boxes, dtype=float)
    if array.size == 0:
        return np.zeros((0, 4))
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name} must have shape (n, 4). Received: {name}.shape={array.shape}")
    if np.any(array[:, 2] < array[:, 0]) or np.any(array[:, 3] < array[:, 1]):
        raise ValueError(f"{name} must have row_max >= row_min and col_max >= col_min. Received: {name}={array.tolist()}")
    return array


def box_iou_matrix(boxes_a, boxes_b) -> np.ndarray:
    """Intersection over union of every pair of boxes.

    Parameters
    ----------
    boxes_a : array-like of shape (n, 4)
        ``(row_min, col_min, row_max, col_max)``, max exclusive.
    boxes_b : array-like of shape (m, 4)

    Returns
    -------
    iou : ndarray of shape (n, m), float64

    Raises
    ------
    ValueError
        When a box array is not of shape (n, 4) or has a max below its min.
    """
    a = _as_boxes(boxes_a, "boxes_a")
    b = _as_boxes(boxes_b, "boxes_b")
    rows = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    cols = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    intersection = rows * cols
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0)


def match_boxes(predicted, truth, iou_threshold: float = 0.5) -> list[tuple[int, int, float]]:
    """One-to-one matching of predicted to true boxes.

    The assignment maximises the summed IoU (Hungarian algorithm,
    ``scipy.optimize.linear_sum_assignment``) over pairs whose IoU reaches
    ``iou_threshold``; pairs below it are never matched.

    Parameters
    ----------
    predicted : array-like of shape (n, 4)
    truth : array-like of shape (m, 4)
    iou_threshold : float
        In ``(0, 1]``.

    Returns
    -------
    list of (int, int, float)
        ``(predicted index, truth index, iou)``, sorted by predicted index.

    Raises
    ------
    ValueError
        When ``iou_threshold`` is outside ``(0, 1]`` or a box array is malformed.
    """
    from scipy.optimize import linear_sum_assignment

    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1]. Received: iou_threshold={iou_threshold}")
    iou = box_iou_matrix(predicted, truth)
    if iou.size == 0:
        return []
    weight = np.where(iou >= iou_threshold, iou, 0.0)
    pred_index, truth_index = linear_sum_assignment(weight, maximize=True)
    return [
        (int(p), int(t), float(iou[p, t]))
        for p, t in zip(pred_index, truth_index)
        if iou[p, t] >= iou_threshold
    ]


def detection_score(predicted, truth, iou_threshold: float = 0.5) -> DetectionScore:
    """TP / FP / FN of one class in one image after :func:`match_boxes`."""
    n_predicted = len(_as_boxes(predicted, "predicted"))
    n_truth = len(_as_boxes(truth, "truth"))
    n_matched = len(match_boxes(predicted, truth, iou_threshold))
    return DetectionScore(tp=n_matched, fp=n_predicted - n_matched, fn=n_truth - n_matched)


def score_by_class(
    predicted: Mapping[str, Sequence], truth: Mapping[str, Sequence], iou_threshold: float = 0.5
) -> dict[str, DetectionScore]:
    """:func:`detection_score` for each class named in either mapping (boxes of different classes never match)."""
    classes = sorted(set(predicted) | set(truth))
    return {name: detection_score(predicted.get(name, []), truth.get(name, []), iou_threshold) for name in classes}


def _as_masks(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape. Received: a.shape={a.shape}, b.shape={b.shape}")
    return a.astype(bool), b.astype(bool)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient ``2 |a & b| / (|a| + |b|)`` of two boolean masks of one shape (1.0 when both are empty).

    Raises
    ------
    ValueError
        When the shapes differ.
    """
    a, b = _as_masks(a, b)
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(a & b) / total


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of one shape (1.0 when both are empty).

    Raises
    ------
    ValueError
        When the shapes differ.
    """
    a, b = _as_masks(a, b)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union
