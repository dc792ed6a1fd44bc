"""Calibrated confidence: temperature scaling, test-time views, the confidence threshold.

A model folder may hold ``calibration.json``::

    {"temperature": 1.31, "confidence_threshold": 0.6, "test_time_augmentation": "none",
     "fitted_on": "validation split ..."}

:class:`~smearflow.classifier.Classifier` applies it in ``predict_proba``:
the network's probabilities (averaged over the test-time views) are
tempered, ``softmax(log p / T)``, so that a confidence of 0.9 is right about
nine times in ten on images like the validation split's. A cell whose top
probability is below ``confidence_threshold`` is one a person should look at.
All functions here are pure (arrays in, arrays out) and need no Keras.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TTA_VIEWS = {"none": 1, "flips": 4, "dihedral": 8}
"""Test-time augmentation by name → number of views averaged (see :func:`tta_views`)."""

DEFAULT_CONFIDENCE_THRESHOLD = 0.5
"""Threshold of a model folder without ``calibration.json``."""


@dataclass(frozen=True)
class Calibration:
    """The contents of ``calibration.json`` (identity when the file is absent).

    Attributes
    ----------
    temperature : float
        Divides the log-probabilities; > 1 softens over-confident outputs.
    confidence_threshold : float
        Top probability (after temperature) below which a cell is uncertain.
    test_time_augmentation : str
        A key of :data:`TTA_VIEWS`.
    """

    temperature: float = 1.0
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD
    test_time_augmentation: str = "none"

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0):
            raise ValueError(f"temperature must be a positive number. Received: temperature={self.temperature!r}")
        if not (isinstance(self.confidence_threshold, (int, float)) and 0.0 <= self.confidence_threshold <= 1.0):
            raise ValueError(
                f"confidence_threshold must be in [0, 1]. Received: confidence_threshold={self.confidence_threshold!r}"
            )
        if self.test_time_augmentation not in TTA_VIEWS:
            raise ValueError(
                f"test_time_augmentation must be one of {list(TTA_VIEWS)}. "
                f"Received: test_time_augmentation={self.test_time_augmentation!r}"
            )

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        """Read the known keys of a ``calibration.json`` object; other keys are notes."""
        return cls(**{k: data[k] for k in ("temperature", "confidence_threshold", "test_time_augmentation") if k in data})


def tta_views(images: np.ndarray, mode: str) -> list[np.ndarray]:
    """The test-time views of a batch: the batch itself, flipped and/or rotated copies.

    Parameters
    ----------
    images : ndarray of shape (n, M, M, ...)
    mode : str
        ``"none"`` (the batch), ``"flips"`` (identity, left-right, up-down,
        both) or ``"dihedral"`` (the eight flips and quarter turns).

    Raises
    ------
    ValueError
        For an unknown mode.
    """
    if mode not in TTA_VIEWS:
        raise ValueError(f"mode must be one of {list(TTA_VIEWS)}. Received: mode={mode!r}")
    views = [images]
    if mode == "flips":
        views += [images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1]]
    elif mode == "dihedral":
        turned = [np.rot90(images, k, axes=(1, 2)) for k in range(1, 4)]
        views += turned + [v[:, :, ::-1] for v in [images, *turned]]
    return [np.ascontiguousarray(v) for v in views]


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row by row.

    Parameters
    ----------
    probabilities : ndarray of shape (n, k), float
    temperature : float
        Positive.

    Returns
    -------
    ndarray of shape (n, k), float32; rows sum to 1, the arg-max is unchanged.

    Raises
    ------
    ValueError
        When ``temperature`` is not positive.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive. Received: temperature={temperature}")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if temperature == 1.0 or probabilities.size == 0:
        return probabilities.astype(np.float32)
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    tempered = np.exp(logits)
    return (tempered / tempered.sum(axis=1, keepdims=True)).astype(np.float32)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels`` (Guo et al. 2017).

    Fit it on a validation split, never on the images the figures are reported on.

    Parameters
    ----------
    probabilities : ndarray of shape (n, k), float
        The network's (untempered) probabilities.
    labels : ndarray of shape (n,), int

    Returns
    -------
    float
        In [0.05, 20].

    Raises
    ------
    ValueError
        When there are no rows or the shapes disagree.
    """
    from scipy.optimize import minimize_scalar

    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=int)
    if probabilities.ndim != 2 or len(probabilities) == 0 or len(labels) != len(probabilities):
        raise ValueError(
            "probabilities must have shape (n, k) with n >= 1 and one label per row. "
            f"Received: probabilities shape={probabilities.shape}, labels shape={labels.shape}"
        )
    logits = np.log(np.clip(probabilities, 1e-12, 1.0))

    def nll(log_temperature: float) -> float:
        scaled = logits / np.exp(log_temperature)
        scaled -= scaled.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(scaled).sum(axis=1))
        return float(np.mean(log_norm - scaled[np.arange(len(labels)), labels]))

    result = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(result.x))


def threshold_table(labels: np.ndarray, probabilities: np.ndarray, thresholds=None) -> list[dict]:
    """Coverage and accuracy of the cells at or above each confidence threshold.

    Returns
    -------
    list of dict
        One row per threshold: ``threshold``, ``coverage`` (share of cells
        kept, not uncertain), ``accuracy`` of the kept cells (None when none
        is kept) and ``uncertain`` (cells below).
    """
    labels = np.asarray(labels, dtype=int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    thresholds = np.round(np.arange(0.3, 0.951, 0.05), 2) if thresholds is None else thresholds
    confidence = probabilities.max(axis=1) if len(probabilities) else np.zeros(0)
    correct = probabilities.argmax(axis=1) == labels if len(probabilities) else np.zeros(0, bool)
    rows = []
    for threshold in thresholds:
        kept = confidence >= threshold
        rows.append(
            {
                "threshold": float(threshold),
                "coverage": float(kept.mean()) if len(kept) else None,
                "accuracy": float(correct[kept].mean()) if kept.any() else None,
                "uncertain": int((~kept).sum()),
            }
        )
    return rows


def recommend_threshold(table: list[dict], target_accuracy: float) -> float:
    """The lowest threshold of ``table`` whose kept cells reach ``target_accuracy`` (the highest if none does).

    Raises
    ------
    ValueError
        When ``table`` is empty or ``target_accuracy`` is outside (0, 1].
    """
    if not table:
        raise ValueError("table must hold at least one row. Received: an empty table")
    if not 0.0 < target_accuracy <= 1.0:
        raise ValueError(f"target_accuracy must be in (0, 1]. Received: target_accuracy={target_accuracy}")
    for row in sorted(table, key=lambda r: r["threshold"]):
        if row["accuracy"] is not None and row["accuracy"] >= target_accuracy:
            return row["threshold"]
    return max(row["threshold"] for row in table)
