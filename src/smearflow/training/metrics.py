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
