"""Pictures of stored cells: crops cut from the slide's field images, and fields with their cells outlined.

Crops are not stored: they are cut from the field images at ``slides.folder``
/ ``fields.name`` when a report or the review station needs them (the
worker records the folder's new place when it moves it to ``done/``). The
crop frames a cell as the classifier saw it: a square of
``crop_side_rbc_diameters`` red-cell diameters around its centroid, the
diameter taken from the field's stored red cells (their median area). Field
images are read only through :func:`smearflow.imageio.read_rgb`, which never
follows a symbolic link; a field name that is not a plain file name is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from smearflow.errors import BadImageError
from smearflow.imageio import read_rgb

__all__ = ["CLASS_COLOURS", "cell_crop", "crop_side_for", "draw_cells", "field_path", "read_field"]

CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "basophil": (123, 63, 160),
    "eosinophil": (230, 120, 20),
    "erythroblast": (200, 30, 90),
    "ig": (140, 90, 40),
    "lymphocyte": (30, 110, 220),
    "monocyte": (20, 160, 150),
    "neutrophil": (40, 160, 40),
    "platelet": (235, 200, 0),
    "artefact": (90, 90, 90),
    "unclassified": (255, 255, 255),
    "rbc": (190, 60, 60),
    "platelet-candidate": (250, 220, 60),
}
"""Outline colour of each class (and of red cells, platelet candidates and unclassified white cells)."""

DEFAULT_CROP_SIDE_RBC_DIAMETERS = 5.0
"""The pipeline's crop side (``CropConfig.crop_side_rbc_diameters``)."""


def field_path(folder: str | None, name: str) -> Path:
    """The image file of a stored field: ``folder / name``.

    Raises
    ------
    BadImageError
        When the slide has no folder, or ``name`` is not a plain file name
        (a separator, ``.`` or ``..``): a stored name never leads out of its folder.
    """
    if not folder:
        raise BadImageError(f"{name}: the slide has no folder on record")
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise BadImageError(f"{name!r}: not a plain file name; refused")
    return Path(folder) / name


def read_field(folder: str | None, name: str) -> np.ndarray:
    """Read a stored field's image (RGB ``uint8``).

    Raises
    ------
    BadImageError
        When the file is missing, a link, unreadable, or the name is refused
        (:func:`field_path`); the message names the file.
    """
    return read_rgb(field_path(folder, name))


def crop_side_for(bbox: Sequence[int], rbc_diameter_px: float | None, side_rbc_diameters: float) -> int:
    """Crop side in field pixels: ``side_rbc_diameters`` red-cell diameters, or twice the cell's box without one."""
    if rbc_diameter_px and rbc_diameter_px > 0:
        return max(1, int(round(rbc_diameter_px * side_rbc_diameters)))
    row_min, col_min, row_max, col_max = bbox
    return max(8, 2 * max(row_max - row_min, col_max - col_min))


def cell_crop(
    image: np.ndarray,
    centroid: tuple[float, float],
    bbox: Sequence[int],
    rbc_diameter_px: float | None,
    out_size_px: int,
    side_rbc_diameters: float = DEFAULT_CROP_SIDE_RBC_DIAMETERS,
) -> np.ndarray:
    """The square crop of one stored cell, as the pipeline cuts it for the classifier.

    Parameters
    ----------
    image : ndarray of shape (M, N, 3), uint8
        The cell's field.
    centroid : (float, float)
        ``(row, col)``.
    bbox : sequence of int
        ``(row_min, col_min, row_max, col_max)``; sizes the crop when there is
        no red-cell diameter.
    rbc_diameter_px : float or None
        The field's red-cell diameter.
    out_size_px : int
        Side of the returned crop.
    side_rbc_diameters : float

    Returns
    -------
    crop : ndarray of shape (out_size_px, out_size_px, 3), uint8

    Raises
    ------
    ValueError
        See :func:`smearflow.segmentation.crops.crop_cells`.
    """
    from smearflow.segmentation.crops import crop_cells
    from smearflow.types import Cell

    row_min, col_min, row_max, col_max = (int(v) for v in bbox)
    shim = Cell(
        kind="wbc",
        bbox=(row_min, col_min, row_max, col_max),
        centroid=(float(centroid[0]), float(centroid[1])),
        area_px=0,
        mask=np.zeros((0, 0), dtype=bool),
    )
    side_px = crop_side_for(bbox, rbc_diameter_px, side_rbc_diameters)
    return crop_cells(image, [shim], side_px, out_size_px)[0]


def outline_colour(kind: str, label: str | None) -> tuple[int, int, int]:
    """The colour a cell is outlined with: its class for white cells, its kind otherwise."""
    if kind == "rbc":
        return CLASS_COLOURS["rbc"]
    if kind == "platelet":
        return CLASS_COLOURS["platelet-candidate"]
    if label is None:
        return CLASS_COLOURS["unclassified"]
    return CLASS_COLOURS.get(label, CLASS_COLOURS["artefact"])


def draw_cells(image: np.ndarray, cells: Sequence, max_side_px: int = 1024) -> np.ndarray:
    """The field with each cell outlined (an ellipse in its box) in its class colour, shrunk to ``max_side_px``.

    Parameters
    ----------
    image : ndarray of shape (M, N, 3), uint8
    cells : sequence
        Objects with ``kind``, ``bbox``, ``counted`` and ``final_label``
        (:class:`smearflow.db.review.ReviewCell`). White cells are drawn thick,
        red cells and cells the border rule does not count thin.
    max_side_px : int

    Returns
    -------
    ndarray of shape (m, n, 3), uint8
    """
    from PIL import Image, ImageDraw

    rows, cols = image.shape[:2]
    scale = min(1.0, max_side_px / max(rows, cols))
    picture = Image.fromarray(image)
    if scale < 1.0:
        picture = picture.resize((max(1, round(cols * scale)), max(1, round(rows * scale))), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(picture)
    order = {"rbc": 0, "platelet": 1, "wbc": 2}
    for cell in sorted(cells, key=lambda c: order.get(c.kind, 3)):
        row_min, col_min, row_max, col_max = (v * scale for v in cell.bbox)
        colour = outline_colour(cell.kind, cell.final_label if cell.kind == "wbc" else None)
        width = 1 if cell.kind == "rbc" or not cell.counted else max(2, math.ceil(3 * scale))
        if cell.kind == "wbc":
            pad = 3
            draw.ellipse((col_min - pad, row_min - pad, col_max + pad, row_max + pad), outline=colour, width=width)
        else:
            draw.ellipse((col_min, row_min, col_max, row_max), outline=colour, width=width)
    return np.asarray(picture, dtype=np.uint8).copy()
