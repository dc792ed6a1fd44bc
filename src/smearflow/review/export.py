"""Verified cells as training data: a class-folder dataset in the PBC layout.

``OUT/<class>/verified-<slide>-<cell id>.png``: the crop of every classified
white cell of every verified slide, under the class the reviewer signed off
(the model's class where the reviewer kept it), cut as the pipeline cuts it
for the classifier. Cells marked ``artefact`` are left out (no model class
holds them). ``OUT/verified-manifest.csv`` lists each crop with its slide,
cell, model class, final class and who verified it when.

Each export replaces the ``verified-*.png`` files of the previous one (a cell
reopened and reclassified moves folders) and removes class folders it leaves
empty; nothing else in ``OUT`` is touched, so ``OUT`` can be given to
training as ``extra_data`` again and again.
"""

from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from smearflow import WBC_CLASSES
from smearflow.db.review import ARTEFACT, VerifiedCell, rbc_diameters_px, verified_cells
from smearflow.errors import BadImageError
from smearflow.imageio import write_rgb
from smearflow.reporting import images

logger = logging.getLogger(__name__)

__all__ = ["MANIFEST", "export_verified"]

MANIFEST = "verified-manifest.csv"
PREFIX = "verified-"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "slide"


def export_verified(
    session,
    out_dir: str | Path,
    *,
    since: datetime | None = None,
    size_px: int = 224,
    read_field: Callable[[str | None, str], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write the crops of verified white cells into class folders under ``out_dir``.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    out_dir : str or Path
        Created when missing.
    since : datetime, optional
        Only slides signed off at or after this time.
    size_px : int
        Side of each crop (the pipeline's is 224).
    read_field : callable, optional
        ``(folder, name) -> RGB image``; :func:`smearflow.reporting.images.read_field` by default.

    Returns
    -------
    dict
        ``out`` (the folder), ``slides``, ``written`` (class → crops),
        ``artefacts`` (left out), ``removed`` (crops of an earlier export
        removed) and ``unreadable`` (``"slide/field: reason"`` for fields
        whose image could not be read; their cells are left out).

    Raises
    ------
    ValueError
        When ``size_px`` is below 8, or ``out_dir`` or one of its class folders
        is a symbolic link or not a folder.
    """
    if isinstance(size_px, bool) or not isinstance(size_px, int) or size_px < 8:
        raise ValueError(f"size_px must be an integer of at least 8. Received: size_px={size_px!r}")
    out_dir = Path(out_dir)
    _check_folder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    removed = _remove_previous(out_dir)
    cells = verified_cells(session, since)
    diameters = rbc_diameters_px(session, sorted({c.cell.field_id for c in cells}))
    export = _Export(out_dir, size_px, diameters, read_field or images.read_field)
    for item in cells:
        export.add(item)
    _remove_empty_class_folders(out_dir)
    _write_manifest(out_dir / MANIFEST, export.manifest_rows)
    written = export.written
    return {
        "out": str(out_dir),
        "slides": len({c.slide_id for c in cells}),
        "written": {label: written[label] for label in [*WBC_CLASSES, *sorted(set(written) - set(WBC_CLASSES))] if written[label]},
        "artefacts": export.artefacts,
        "removed": removed,
        "unreadable": export.unreadable,
    }


class _Export:
    """One export in progress: writes each cell's crop and keeps the tallies and manifest rows."""

    def __init__(self, out_dir: Path, size_px: int, diameters: dict[int, float], read_field):
        self.out_dir = out_dir
        self.size_px = size_px
        self.diameters = diameters
        self.read_field = read_field
        self.written: Counter[str] = Counter()
        self.artefacts = 0
        self.unreadable: list[str] = []
        self.manifest_rows: list[list[Any]] = []
        self._loaded: tuple[int, np.ndarray | None] | None = None

    def add(self, item: VerifiedCell) -> None:
        """Write the crop of one verified cell (artefacts and cells of unreadable fields are left out)."""
        cell = item.cell
        if cell.final_label == ARTEFACT:
            self.artefacts += 1
            return
        image = self._field_image(item)
        if image is None:
            return
        crop = images.cell_crop(image, cell.centroid, cell.bbox, self.diameters.get(cell.field_id), self.size_px)
        class_dir = self.out_dir / cell.final_label
        _check_folder(class_dir)
        name = f"{PREFIX}{_safe(item.slide_id)}-{cell.id}.png"
        write_rgb(class_dir / name, crop)
        self.written[cell.final_label] += 1
        self.manifest_rows.append([
            f"{cell.final_label}/{name}", item.slide_id, cell.field_name, cell.id, cell.label, cell.final_label,
            cell.reviewed_by or "", item.verified_by, item.verified_at.isoformat(),
        ])

    def _field_image(self, item: VerifiedCell) -> np.ndarray | None:
        """The cell's field image, read once per field (cells come by field); ``None`` when unreadable."""
        cell = item.cell
        if self._loaded is None or self._loaded[0] != cell.field_id:
            try:
                self._loaded = (cell.field_id, self.read_field(item.folder, cell.field_name))
            except BadImageError as error:
                self._loaded = (cell.field_id, None)
                self.unreadable.append(f"{item.slide_id}/{cell.field_name}: {error}")
                logger.warning("slide %s: %s; its cells are not exported", item.slide_id, error)
        return self._loaded[1]


def _write_manifest(path: Path, rows: list[list[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "slide_id", "field", "cell_id", "model_class", "class", "reviewed_by",
                         "verified_by", "verified_at"])
        writer.writerows(rows)


def _check_folder(path: Path) -> None:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise ValueError(f"{path}: must be a folder, not a link or a file")


def _remove_empty_class_folders(out_dir: Path) -> None:
    # Training refuses a class folder without an image; an export can empty one (a cell moved class).
    for class_dir in out_dir.iterdir():
        if class_dir.is_dir() and not class_dir.is_symlink() and not any(class_dir.iterdir()):
            class_dir.rmdir()


def _remove_previous(out_dir: Path) -> int:
    removed = 0
    for class_dir in out_dir.iterdir():
        if not class_dir.is_dir() or class_dir.is_symlink():
            continue
        for path in class_dir.glob(f"{PREFIX}*.png"):
            if path.is_file() and not path.is_symlink():
                path.unlink()
                removed += 1
    return removed
