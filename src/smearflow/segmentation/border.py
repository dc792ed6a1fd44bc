"""Which cells cut by the edge of a field are counted, and how much of them shows.

Border rule
-----------
smearflow counts cells with the *unbiased counting frame* (Gundersen, 1977):
the top and left edges of a field are inclusion edges, the bottom and right
edges are exclusion edges. A cell is **counted** when it lies wholly inside
the field or is cut only by the top and/or the left edge; a cell cut by the
bottom or the right edge is **not counted**, whatever other edge it touches.
A cell is cut by an edge when its mask reaches the outermost pixel row or
column on that side. Where fields tile a slide edge to edge, every cell is
counted exactly once; for fields taken apart from each other, the expected
count is the cell density times the field area, so totals are not biased by
cells that straddle the edges. Cells that are not counted stay in the
segmentation with ``counted=False``; they are not part of any total.

Visible fraction
----------------
A cell that does not touch the edge has ``visible_fraction = 1.0``. For a cut
cell a circle is fitted (least squares) to the boundary pixels of its mask
that do not lie on the field edge, and the visible fraction is the share of
that disc inside the field. When too few boundary pixels remain, or the fitted
circle is implausible for the visible area, the fraction falls back to the
cell's area over the typical area of its kind (relative to the red-cell
diameter), capped at 1. The pipeline sends to the classifier only cells whose
visible fraction reaches its threshold; counting does not depend on it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import numpy as np

from smearflow.types import Cell

__all__ = [
    "EDGES",
    "TYPICAL_DIAMETER_RBC",
    "apply_border_rule",
    "edges_touched",
    "is_counted",
    "visible_fraction",
]

EDGES = ("top", "left", "bottom", "right")
"""Names of the four field edges."""

INCLUSION_EDGES = frozenset({"top", "left"})
EXCLUSION_EDGES = frozenset({"bottom", "right"})

TYPICAL_DIAMETER_RBC = {"rbc": 1.0, "wbc": 1.8, "platelet": 0.35}
"""Typical diameter of each kind of cell, in red-cell diameters (fallback of
:func:`visible_fraction`)."""

_MIN_FIT_POINTS = 12
_DISC_SAMPLES = 48


def edges_touched(
    bbox: tuple[int, int, int, int], image_shape: tuple[int, int], tolerance_px: int = 0
) -> frozenset[str]:
    """The field edges that a box reaches.

    Parameters
    ----------
    bbox : tuple of int
        ``(row_min, col_min, row_max, col_max)``, max exclusive.
    image_shape : tuple of int
        ``(rows, cols)`` of the field.
    tolerance_px : int
        A box side within this many pixels of an edge counts as touching it
        (0 for segmentation masks; a pixel or two for hand-drawn boxes).

    Returns
    -------
    frozenset of str
        Subset of ``{"top", "left", "bottom", "right"}``.

    Raises
    ------
    ValueError
        When ``tolerance_px`` is negative.
    """
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be zero or positive. Received: tolerance_px={tolerance_px}")
    row_min, col_min, row_max, col_max = bbox
    rows, cols = image_shape[:2]
    touched = set()
    if row_min <= tolerance_px:
        touched.add("top")
    if col_min <= tolerance_px:
        touched.add("left")
    if row_max >= rows - tolerance_px:
        touched.add("bottom")
    if col_max >= cols - tolerance_px:
        touched.add("right")
    return frozenset(touched)


def is_counted(edges: Iterable[str]) -> bool:
    """The border rule: False when the cell is cut by the bottom or right edge.

    Parameters
    ----------
    edges : iterable of str
        Edges the cell touches, as returned by :func:`edges_touched`.

    Raises
    ------
    ValueError
        When an edge name is not one of ``"top"``, ``"left"``, ``"bottom"``, ``"right"``.
    """
    edges = frozenset(edges)
    unknown = sorted(edges - set(EDGES))
    if unknown:
        raise ValueError(f"edges must be among {EDGES}. Received: edges={sorted(edges)}")
    return not (edges & EXCLUSION_EDGES)


def visible_fraction(
    mask: np.ndarray,
    bbox: tuple[int, int, int, int],
    image_shape: tuple[int, int],
    typical_area_px: float,
) -> float:
    """Estimate the share of a cell that lies inside the field.

    Parameters
    ----------
    mask : ndarray of shape (bbox rows, bbox cols), bool
        The cell's pixels inside ``bbox``.
    bbox : tuple of int
        ``(row_min, col_min, row_max, col_max)`` in field pixels, max exclusive.
    image_shape : tuple of int
        ``(rows, cols)`` of the field.
    typical_area_px : float
        Area of a whole cell of this kind, the fallback reference.

    Returns
    -------
    float
        In ``(0, 1]``; 1.0 for a cell that does not touch the edge.

    Raises
    ------
    ValueError
        When ``mask`` does not match ``bbox`` or ``typical_area_px`` is not positive.
    """
    row_min, col_min, row_max, col_max = bbox
    if mask.shape != (row_max - row_min, col_max - col_min):
        raise ValueError(
            f"mask must have the shape of its bbox {(row_max - row_min, col_max - col_min)}. "
            f"Received: mask.shape={mask.shape}"
        )
    if not typical_area_px > 0:
        raise ValueError(f"typical_area_px must be positive. Received: typical_area_px={typical_area_px}")
    edges = edges_touched(bbox, image_shape)
    if not edges:
        return 1.0
    area_px = float(np.count_nonzero(mask))
    if area_px == 0:
        return 0.0
    fallback = min(1.0, area_px / typical_area_px)
    circle = _fit_circle_to_inner_boundary(mask.astype(bool), bbox, image_shape)
    if circle is None:
        return fallback
    centre_row, centre_col, radius = circle
    disc_area = math.pi * radius * radius
    # A fit that leaves the visible area far larger than its disc, or a disc
    # many times the typical cell, came from a boundary that is not an arc.
    if area_px > 1.2 * disc_area or disc_area > 4.0 * typical_area_px:
        return fallback
    offsets = (np.arange(_DISC_SAMPLES) + 0.5) / _DISC_SAMPLES * 2.0 - 1.0
    d_row, d_col = np.meshgrid(offsets, offsets, indexing="ij")
    in_disc = d_row**2 + d_col**2 <= 1.0
    sample_rows = centre_row + radius * d_row[in_disc]
    sample_cols = centre_col + radius * d_col[in_disc]
    rows, cols = image_shape[:2]
    inside = (sample_rows >= 0) & (sample_rows < rows) & (sample_cols >= 0) & (sample_cols < cols)
    return float(np.clip(inside.mean(), 1e-3, 1.0))


def _fit_circle_to_inner_boundary(
    mask: np.ndarray, bbox: tuple[int, int, int, int], image_shape: tuple[int, int]
) -> tuple[float, float, float] | None:
    padded = np.pad(mask, 1)
    interior = (
        padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    )
    boundary_rows, boundary_cols = np.nonzero(mask & ~interior)
    boundary_rows = boundary_rows + bbox[0]
    boundary_cols = boundary_cols + bbox[1]
    rows, cols = image_shape[:2]
    on_edge = (boundary_rows == 0) | (boundary_cols == 0) | (boundary_rows == rows - 1) | (boundary_cols == cols - 1)
    y = boundary_rows[~on_edge].astype(float)
    x = boundary_cols[~on_edge].astype(float)
    if y.size < _MIN_FIT_POINTS:
        return None
    # Kasa fit: x^2 + y^2 + a x + b y + c = 0, linear in (a, b, c).
    design = np.column_stack([x, y, np.ones_like(x)])
    target = -(x * x + y * y)
    (a, b, c), *_ = np.linalg.lstsq(design, target, rcond=None)
    centre_col, centre_row = -a / 2.0, -b / 2.0
    radius_sq = centre_col**2 + centre_row**2 - c
    if not np.isfinite(radius_sq) or radius_sq <= 1.0:
        return None
    return float(centre_row), float(centre_col), float(math.sqrt(radius_sq))


def apply_border_rule(cells: Iterable[Cell], image_shape: tuple[int, int], rbc_diameter_px: float) -> tuple[Cell, ...]:
    """Set ``touches_border``, ``counted`` and ``visible_fraction`` of each cell.

    Parameters
    ----------
    cells : iterable of Cell
        Cells of one field; their other attributes are kept.
    image_shape : tuple of int
        ``(rows, cols)`` of the field.
    rbc_diameter_px : float
        Red-cell diameter in field pixels (scales the fallback typical areas).

    Returns
    -------
    tuple of Cell
        New records, in the same order.

    Raises
    ------
    ValueError
        When ``rbc_diameter_px`` is not positive.
    """
    if not rbc_diameter_px > 0:
        raise ValueError(f"rbc_diameter_px must be positive. Received: rbc_diameter_px={rbc_diameter_px}")
    result = []
    for cell in cells:
        edges = edges_touched(cell.bbox, image_shape)
        typical_diameter_px = TYPICAL_DIAMETER_RBC.get(cell.kind, 1.0) * rbc_diameter_px
        typical_area_px = math.pi * typical_diameter_px**2 / 4.0
        result.append(
            dataclasses.replace(
                cell,
                touches_border=bool(edges),
                counted=is_counted(edges),
                visible_fraction=visible_fraction(cell.mask, cell.bbox, image_shape, typical_area_px),
            )
        )
    return tuple(result)
