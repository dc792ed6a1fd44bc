"""Classification figures from labels and probabilities (pure, scikit-learn)."""

from __future__ import annotations

import numpy as np


def classification_metrics(y_true: np.ndarray, y_prob: np.ndarray, classes, *, average_over=None) -> dict:
    """Accuracy, macro/weighted precision-recall-F1, per-class figures, ROC AUC, confusion matrix.

    Parameters
    ----------
    y_true : ndarray of shape (n,), int
        True class indices.
    y_prob : ndarray of shape (n, n_classes), float
        Predicted probabilities.
    classes : sequence of str
        Class names in index order.
    average_over : sequence of int, optional
        Class indices the macro and weighted figures average over (default:
        all). An evaluation set that lacks some of the model's classes
        passes the present ones, so that absent classes (recall undefined)
        do not drag the macro figures down; predictions of an absent class
        still count as errors.

    Returns
    -------
    dict
        JSON-ready: ``accuracy``, ``macro_precision``, ``macro_recall``,
        ``macro_f1``, ``weighted_precision``, ``weighted_recall``,
        ``weighted_f1``, ``roc_auc_macro_ovr`` (None when a class is absent),
        ``per_class`` (name → precision, recall, f1, support),
        ``confusion_matrix`` (rows true, columns predicted), ``classes``, ``images``.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

    y_true = np.asarray(y_true, dtype=int)
    y_prob = np.asarray(y_prob, dtype=float)
    classes = list(classes)
    if y_prob.ndim != 2 or y_prob.shape != (len(y_true), len(classes)):
        raise ValueError(
            f"y_prob must have shape (n, n_classes) = ({len(y_true)}, {len(classes)}). Received: shape={y_prob.shape}"
        )
    labels = np.arange(len(classes))
    averaged = labels if average_over is None else np.asarray(sorted(set(int(i) for i in average_over)), dtype=int)
    if len(averaged) == 0 or averaged.min() < 0 or averaged.max() >= len(classes):
        raise ValueError(
            f"average_over must hold class indices in [0, {len(classes)}). Received: average_over={average_over!r}"
        )
    y_pred = np.argmax(y_prob, axis=1)
    result = {"accuracy": float(accuracy_score(y_true, y_pred)), "classes": classes, "images": int(len(y_true))}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=averaged, average=average, zero_division=0)
        result.update({f"{average}_precision": float(p), f"{average}_recall": float(r), f"{average}_f1": float(f)})
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    result["per_class"] = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(classes)
    }
    result["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    present = np.unique(y_true)
    if len(present) == len(classes):
        result["roc_auc_macro_ovr"] = float(roc_auc_score(y_true, y_prob, multi_class="ovr", labels=labels))
    else:
        result["roc_auc_macro_ovr"] = None
    return result


ECE_BINS = 15
"""Equal-width confidence bins of the expected calibration error (Guo et al. 2017)."""


def expected_calibration_error(y_true: np.ndarray, y_prob: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Expected calibration error of the top-class confidence, with the reliability table.

    The top probability of each image falls in one of ``n_bins`` equal-width
    bins of (0, 1]; ECE is the image-weighted mean of ``|accuracy - mean
    confidence|`` over the bins.

    Parameters
    ----------
    y_true : ndarray of shape (n,), int
    y_prob : ndarray of shape (n, n_classes), float
    n_bins : int

    Returns
    -------
    dict
        JSON-ready: ``ece``, ``max_gap`` (largest bin gap), ``n_bins`` and
        ``bins`` (one row per non-empty bin: ``lower``, ``upper``,
        ``images``, ``confidence``, ``accuracy``).

    Raises
    ------
    ValueError
        When ``n_bins`` < 1, there is no image, or the shapes disagree.
    """
    y_true = np.asarray(y_true, dtype=int)
    y_prob = np.asarray(y_prob, dtype=float)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1. Received: n_bins={n_bins}")
    if y_prob.ndim != 2 or len(y_prob) == 0 or len(y_prob) != len(y_true):
        raise ValueError(
            "y_prob must have shape (n, n_classes) with n >= 1 and one label per row. "
            f"Received: y_prob shape={y_prob.shape}, y_true shape={y_true.shape}"
        )
    confidence = y_prob.max(axis=1)
    correct = y_prob.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin k holds (edges[k], edges[k+1]]; a confidence of exactly 0 joins the first bin.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    bins, ece, max_gap = [], 0.0, 0.0
    for k in range(n_bins):
        members = index == k
        if not members.any():
            continue
        accuracy, mean_confidence = float(correct[members].mean()), float(confidence[members].mean())
        gap = abs(accuracy - mean_confidence)
        ece += gap * members.sum() / len(y_true)
        max_gap = max(max_gap, gap)
        bins.append(
            {
                "lower": float(edges[k]),
                "upper": float(edges[k + 1]),
                "images": int(members.sum()),
                "confidence": mean_confidence,
                "accuracy": accuracy,
            }
        )
    return {"ece": float(ece), "max_gap": float(max_gap), "n_bins": n_bins, "bins": bins}


def negative_log_likelihood(y_true: np.ndarray, y_prob: np.ndarray) -> float:
    """Mean ``-log p(true class)`` (probabilities clipped at 1e-12)."""
    y_true = np.asarray(y_true, dtype=int)
    y_prob = np.asarray(y_prob, dtype=float)
    return float(-np.mean(np.log(np.clip(y_prob[np.arange(len(y_true)), y_true], 1e-12, 1.0))))
