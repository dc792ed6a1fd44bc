"""Check whole-field analysis against per-image white-cell labels.

BCCD's ``counts.csv`` names the type of the white cell(s) in each field
(``kaggle_wbc_category``). Analysing those fields end to end — segmentation,
crop, classifier — and comparing the classes found with that label measures
what a laboratory sees: the differential on real smears from another
microscope, not accuracy on tidy single-cell crops.
"""

from __future__ import annotations

import csv
import logging
import time
from collections import Counter
from pathlib import Path

from smearflow.errors import BadDatasetError, BadImageError

logger = logging.getLogger(__name__)


def read_field_labels(csv_path: str | Path, image_column: str, label_column: str) -> dict[str, str]:
    """Map image file name → lower-case class for rows with exactly one class.

    Raises
    ------
    BadDatasetError
        When the file is missing or lacks one of the columns.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise BadDatasetError(f"{csv_path}: label file does not exist")
    with csv_path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in (image_column, label_column) if c not in (reader.fieldnames or [])]
        if missing:
            raise BadDatasetError(f"{csv_path}: missing column(s) {missing}; found {reader.fieldnames}")
        rows = list(reader)
    labels = {}
    for row in rows:
        value = (row[label_column] or "").strip()
        if value and "," not in value:
            labels[row[image_column]] = value.lower()
    return labels


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
        cell), ``no_wbc_found``, ``per_label`` (label → fields, agreement,
        predicted-class counts) and ``ms_per_field``.
    """
    from smearflow.imageio import read_rgb
    from smearflow.pipeline import analyze_field

    images_dir = Path(images_dir)
    chosen = sorted(labels if names is None else set(names) & set(labels))
    if not chosen:
        raise BadDatasetError(f"{images_dir}: no labelled image to evaluate")
    per_label: dict[str, Counter] = {}
    agree = classified = no_wbc = skipped = 0
    seconds = []
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
        if not found:
            no_wbc += 1
            continue
        classified += 1
        agree += found.most_common(1)[0][0] == labels[name]
    seconds.sort()
    return {
        "fields": len(chosen) - skipped,
        "skipped": skipped,
        "agreement": agree / classified if classified else None,
        "no_wbc_found": no_wbc,
        "per_label": {
            label: {"predicted": dict(counter.most_common()), "fields": sum(1 for n in chosen if labels[n] == label)}
            for label, counter in sorted(per_label.items())
        },
        "ms_per_field": 1000 * seconds[len(seconds) // 2] if seconds else None,
    }
