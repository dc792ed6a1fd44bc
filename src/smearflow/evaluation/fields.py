"""Check whole-field analysis against per-image white-cell labels.

BCCD's ``counts.csv`` names the type of the white cell(s) in each field
(``kaggle_wbc_category``). Analysing those fields end to end — segmentation,
crop, classifier — and comparing the classes found with that label measures
what a laboratory sees: the differential on real smears from another
microscope, not accuracy on tidy single-cell crops.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from smearflow.errors import BadImageError
from smearflow.datasets import chosen_names
from smearflow.evaluation.metrics import expected_calibration_error

logger = logging.getLogger(__name__)


def evaluate_fields(images_dir: str | Path, labels: dict[str, str], analyzer, names=None) -> dict:
    """Analyse labelled fields and compare the white-cell classes found with the label.

    Parameters
    ----------
    images_dir : str or Path
        Folder holding the field images named in ``labels``.
    labels : dict
        Image name → expected white-cell class (from :func:`read_field_labels`).
    analyzer : smearflow.jobs.Analyzer
        Loaded segmenter and classifier.
    names : iterable of str, optional
        Restrict to these image names (a held-out subset).

    Returns
    -------
    dict
        ``fields`` analysed, ``skipped``, ``agreement`` (share of fields whose
        majority class equals the label, over fields with a classified white
        cell), ``classified_fields``, ``no_wbc_found``, ``per_label`` (label
        → fields, predicted-class counts of all its white cells),
        ``per_class`` (class → precision, recall = agreement, F1 and
        support, over fields with a classified white cell, the majority class
        being the field's prediction), ``confusion_matrix`` (rows
        ``label_classes``, columns ``classes``: fields by label and majority
        class), ``calibration`` (ECE over the white cells of fields where
        exactly one was classified, the field's label being that cell's; None
        when the classifier gives no probabilities), ``uncertain_cells``
        (white cells below the classifier's confidence threshold, of
        ``classified_cells``) and ``ms_per_field``.
    """
    from smearflow.imageio import read_rgb
    from smearflow.pipeline import analyze_field

    images_dir = Path(images_dir)
    chosen = chosen_names(images_dir, labels, names, "evaluate")
    per_label: dict[str, Counter] = {}
    agree = classified = no_wbc = skipped = 0
    seconds = []
    field_pairs: list[tuple[str, str]] = []  # (label, majority class) per field with a classified white cell
    single_cell_probabilities, single_cell_labels, confidences = [], [], []
    for name in chosen:
        try:
            image = read_rgb(images_dir / name)
        except BadImageError as error:
            logger.warning("skipping %s", error)
            skipped += 1
            continue
        started = time.perf_counter()
        field = analyze_field(name, image, analyzer.segmenter, analyzer.classifier, analyzer.config)
        seconds.append(time.perf_counter() - started)
        found = Counter({k: v for k, v in field.wbc_counts.items() if k != "platelet"})
        per_label.setdefault(labels[name], Counter()).update(found or {"(none)": 1})
        wbc = [c.classification for c in field.cells if c.cell.kind == "wbc" and c.classification is not None]
        confidences.extend(c.confidence for c in wbc)
        if len(wbc) == 1 and wbc[0].probabilities:
            single_cell_probabilities.append(wbc[0].probabilities)
            single_cell_labels.append(labels[name])
        if not found:
            no_wbc += 1
            continue
        classified += 1
        majority = found.most_common(1)[0][0]
        field_pairs.append((labels[name], majority))
        agree += majority == labels[name]
    seconds.sort()
    classes = [c for c in getattr(analyzer.classifier, "classes", ()) if c != "platelet"] or sorted(
        {p for _, p in field_pairs} | {t for t, _ in field_pairs}
    )
    threshold = getattr(analyzer.classifier, "confidence_threshold", None)
    return {
        "fields": len(chosen) - skipped,
        "skipped": skipped,
        "agreement": agree / classified if classified else None,
        "classified_fields": classified,
        "no_wbc_found": no_wbc,
        "per_label": {
            label: {"predicted": dict(counter.most_common()), "fields": sum(1 for n in chosen if labels[n] == label)}
            for label, counter in sorted(per_label.items())
        },
        **field_confusion(field_pairs, classes),
        "calibration": _single_cell_calibration(
            single_cell_probabilities, single_cell_labels, getattr(analyzer.classifier, "classes", ())
        ),
        "confidence_threshold": threshold,
        "classified_cells": len(confidences),
        "uncertain_cells": None if threshold is None else sum(c < threshold for c in confidences),
        "ms_per_field": 1000 * seconds[len(seconds) // 2] if seconds else None,
    }


def field_confusion(pairs: list[tuple[str, str]], classes: list[str]) -> dict:
    """Per-class figures and the confusion matrix of fields, from ``(label, majority class)`` pairs.

    Parameters
    ----------
    pairs : list of (str, str)
        One per field with a classified white cell.
    classes : list of str
        The predicted classes (columns); labels outside it get a row too.

    Returns
    -------
    dict
        ``classes`` (columns), ``label_classes`` (rows: ``classes``, then
        labels outside them, sorted), ``confusion_matrix`` and ``per_class``
        (each label present → precision, recall, f1, support).
    """
    rows = list(classes) + sorted({t for t, _ in pairs} - set(classes))
    matrix = [[sum(1 for t, p in pairs if t == row and p == column) for column in classes] for row in rows]
    per_class = {}
    for row in rows:
        support = sum(1 for t, _ in pairs if t == row)
        if not support:
            continue
        predicted = sum(1 for _, p in pairs if p == row)
        hits = sum(1 for t, p in pairs if t == row and p == row)
        precision = hits / predicted if predicted else 0.0
        recall = hits / support
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[row] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return {"classes": list(classes), "label_classes": rows, "confusion_matrix": matrix, "per_class": per_class}


def _single_cell_calibration(probabilities: list, labels: list[str], classes) -> dict | None:
    """ECE of the cells of single-cell fields whose label is a classifier class; None without any."""
    classes = list(classes)
    keep = [i for i, label in enumerate(labels) if label in classes and len(probabilities[i]) == len(classes)]
    if not keep:
        return None
    y_true = np.asarray([classes.index(labels[i]) for i in keep])
    result = expected_calibration_error(y_true, np.asarray([probabilities[i] for i in keep]))
    result["cells"] = len(keep)
    return result
