"""Per-image white-cell labels of whole fields (a CSV such as BCCD's ``counts.csv``)."""

from __future__ import annotations

import csv
from pathlib import Path

from smearflow.errors import BadDatasetError


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


def chosen_names(images_dir: Path, labels: dict[str, str], names, purpose: str) -> list[str]:
    """The labelled image names to use (all, or those also in ``names``), sorted; raise when none."""
    chosen = sorted(labels if names is None else set(names) & set(labels))
    if not chosen:
        raise BadDatasetError(f"{images_dir}: no labelled image to {purpose}")
    return chosen
