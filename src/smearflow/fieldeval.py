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


def _chosen_names(images_dir: Path, labels: dict[str, str], names, purpose: str) -> list[str]:
    """The labelled image names to use (all, or those also in ``names``), sorted; raise when none."""
    chosen = sorted(labels if names is None else set(names) & set(labels))
    if not chosen:
        raise BadDatasetError(f"{images_dir}: no labelled image to {purpose}")
    return chosen


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
    chosen = _chosen_names(images_dir, labels, names, "evaluate")
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


def export_field_crops(
    images_dir: str | Path, labels: dict[str, str], segmenter, out_dir: str | Path, config=None, names=None
) -> dict:
    """Write the white-cell crops of labelled fields as a class-folder dataset.

    A laboratory whose microscope differs from the training images' one
    (another stain, camera or objective) can label whole fields by the type
    of their white cell and train on the crops smearflow itself would
    classify (``smearflow train --extra-data``). Only fields where exactly one
    white cell is found are used, so that the field's label is that cell's
    label; the others are counted in ``skipped_fields``. A cell counts here
    when at least ``config.min_visible_fraction`` of it is inside the field,
    whether or not the border rule counts it: that rule keeps counts
    unbiased, while a training crop only needs to show the cell.

    Parameters
    ----------
    images_dir : str or Path
        Folder holding the field images named in ``labels``.
    labels : dict
        Image name → class (from :func:`read_field_labels`).
    segmenter : Segmenter
        Anything with ``segment(image) -> Segmentation``.
    out_dir : str or Path
        Receives ``<class>/<image stem>.png``.
    config : PipelineConfig, optional
        Crop geometry and visibility rule; default ``PipelineConfig()``.
    names : iterable of str, optional
        Restrict to these image names (the tuning part of a split).

    Returns
    -------
    dict
        ``written`` (class → crops), ``skipped_fields`` (reason → fields).

    Raises
    ------
    BadDatasetError
        When no labelled image is chosen.
    """
    from PIL import Image

    from smearflow.config import PipelineConfig
    from smearflow.imageio import read_rgb
    from smearflow.segmentation.crops import crop_cells, crop_side_px

    config = config or PipelineConfig()
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    chosen = _chosen_names(images_dir, labels, names, "export")
    written: Counter = Counter()
    skipped: Counter = Counter()
    for name in chosen:
        try:
            image = read_rgb(images_dir / name)
        except BadImageError as error:
            logger.warning("skipping %s", error)
            skipped["unreadable"] += 1
            continue
        segmentation = segmenter.segment(image)
        wbcs = [
            cell
            for cell in segmentation.cells
            if cell.kind == "wbc" and cell.visible_fraction >= config.min_visible_fraction
        ]
        if len(wbcs) != 1:
            skipped["no white cell" if not wbcs else "several white cells"] += 1
            continue
        side_px = crop_side_px(segmentation.rbc_diameter_px, config.crop.crop_side_rbc_diameters)
        crop = crop_cells(image, wbcs, side_px, config.crop.crop_size_px)[0]
        folder = out_dir / labels[name]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(folder / f"{Path(name).stem}.png")
        written[labels[name]] += 1
    return {"written": dict(sorted(written.items())), "skipped_fields": dict(skipped)}
