"""Array helpers shared by the segmenters: masks, labelled regions and cell records.

Pure functions on NumPy arrays, used by :mod:`smearflow.segmentation.classical`,
:mod:`smearflow.segmentation.diameter` and :mod:`smearflow.segmentation.unet`.
Bounding boxes are ``(row0, col0, row1, col1)``, max-exclusive.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import cv2
import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed
from skimage.util import img_as_ubyte

from smearflow.types import Cell, CellKind

__all__ = [
    "as_rgb_uint8",
    "disc",
    "drop_small_regions",
    "fill_small_holes",
    "labelled_regions",
    "make_cell",
    "opened",
    "split_clump",
    "to_field",
]


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Check that an image is an RGB field and return it as ``uint8``.

    Parameters
    ----------
    image : ndarray of shape (M, N, 3), uint8 or float in [0, 1]
        RGB field of view, at least 16 x 16 pixels.

    Returns
    -------
    ndarray of shape (M, N, 3), uint8
        ``image`` itself when already ``uint8``, else converted with
        :func:`skimage.util.img_as_ubyte`.

    Raises
    ------
    ValueError
        When ``image`` is not ``(M, N, 3)`` with ``M, N >= 16``, is a float
        image outside ``[0, 1]``, or has another dtype.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 16:
        raise ValueError(f"image must be an RGB array of shape (M, N, 3) with M, N >= 16. Received: shape={image.shape}")
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.floating):
        low, high = float(np.nanmin(image)), float(np.nanmax(image))
        if low < 0 or high > 1:
            raise ValueError(f"a float image must lie in [0, 1]. Received: min={low}, max={high}")
        return img_as_ubyte(image)
    raise ValueError(f"image must be uint8 or float in [0, 1]. Received: dtype={image.dtype}")


def disc(radius: int) -> np.ndarray:
    """Elliptical (disc) structuring element.

    Parameters
    ----------
    radius : int
        Radius in pixels; negative values count as 0.

    Returns
    -------
    ndarray of shape (2 * radius + 1, 2 * radius + 1), uint8
        1 inside the disc, 0 outside.
    """
    radius = max(0, int(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def opened(mask: np.ndarray) -> np.ndarray:
    """Morphological opening of a mask with a disc of radius 1.

    Parameters
    ----------
    mask : ndarray of shape (M, N), bool
        The mask.

    Returns
    -------
    ndarray of shape (M, N), bool
        The mask without specks and one-pixel spurs.
    """
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, disc(1)).astype(bool)


def fill_small_holes(mask: np.ndarray, max_area: float) -> np.ndarray:
    """Fill the holes of a mask up to a given area.

    A hole is a 4-connected component of ``~mask`` whose bounding box does
    not touch the image edge.

    Parameters
    ----------
    mask : ndarray of shape (M, N), bool
        The mask.
    max_area : float
        Largest hole filled, in pixels.

    Returns
    -------
    ndarray of shape (M, N), bool
        ``mask`` with its small enclosed holes set.
    """
    _, labels, stats, _ = cv2.connectedComponentsWithStats((~mask).astype(np.uint8), connectivity=4)
    rows, cols = mask.shape
    x, y, w, h, area = (stats[:, k] for k in range(5))
    fill = (area <= max_area) & (x > 0) & (y > 0) & (x + w < cols) & (y + h < rows)
    fill[0] = False
    return mask | fill[labels]


def split_clump(mask: np.ndarray, radius: float) -> list[np.ndarray]:
    """Split a blob at the peaks of its distance transform, one piece per peak.

    Parameters
    ----------
    mask : ndarray of shape (M, N), bool
        One blob (a clump of touching objects).
    radius : float
        Half-width of the window in which a peak must be the maximum.

    Returns
    -------
    list of ndarray of shape (M, N), bool
        The pieces (a watershed on the negated distance); ``[mask]`` when
        there are fewer than two peaks.
    """
    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    window = max(1, int(round(radius)))
    peaks = (distance == cv2.dilate(distance, disc(window))) & (distance >= 1.0) & mask
    n, markers = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)
    if n <= 2:
        return [mask]
    labels = watershed(-distance, markers, mask=mask)
    return [labels == k for k in range(1, n)]


def drop_small_regions(labels: np.ndarray, n_labels: int, min_area: float, min_border_area: float) -> np.ndarray:
    """Remove labelled regions below an area threshold and number the rest 1, 2, ...

    Parameters
    ----------
    labels : ndarray of shape (M, N), int
        Label image, 0 = none, labels below ``n_labels``.
    n_labels : int
        One more than the largest label.
    min_area : float
        Smallest region, in pixels, that does not touch the image edge.
    min_border_area : float
        Smallest region, in pixels, that touches the image edge.

    Returns
    -------
    ndarray of shape (M, N), int32
        The kept regions relabelled consecutively, in the order of their
        old labels; 0 elsewhere.
    """
    areas = np.bincount(labels.ravel(), minlength=n_labels)
    on_edge = np.zeros(n_labels, dtype=bool)
    on_edge[np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))] = True
    keep = areas >= np.where(on_edge, min_border_area, min_area)
    keep[0] = False
    relabel = np.zeros(n_labels, dtype=np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1)
    return relabel[labels]


def labelled_regions(labels: np.ndarray) -> Iterator[tuple[tuple[int, int, int, int], np.ndarray]]:
    """Each labelled region's bounding box and its mask inside that box.

    Parameters
    ----------
    labels : ndarray of shape (M, N), int
        Label image, 0 = none.

    Yields
    ------
    bbox : tuple of int
        ``(row0, col0, row1, col1)``, max-exclusive.
    mask : ndarray of shape (row1 - row0, col1 - col0), bool
        The region inside ``bbox``.
    """
    for index, slices in enumerate(ndimage.find_objects(labels), start=1):
        if slices is None:
            continue
        rows, cols = slices
        yield (rows.start, cols.start, rows.stop, cols.stop), labels[slices] == index


def to_field(
    mask: np.ndarray,
    bbox: tuple[int, int, int, int],
    image_shape: tuple[int, int],
    scale: tuple[float, float],
) -> tuple[tuple[int, int, int, int], np.ndarray | None]:
    """Resize a working-resolution region to field pixels and tighten its box.

    Parameters
    ----------
    mask : ndarray, bool
        The region inside ``bbox``, at the working resolution.
    bbox : tuple of int
        ``(row0, col0, row1, col1)`` at the working resolution, max-exclusive.
    image_shape : tuple of int
        ``(rows, cols)`` of the field.
    scale : tuple of float
        ``(working rows / field rows, working cols / field cols)``.

    Returns
    -------
    bbox : tuple of int
        The tight box in field pixels (the resized box when the mask vanished).
    mask : ndarray of bool or None
        The region inside the tight box, or ``None`` when nothing is left
        after resizing.
    """
    scale_rows, scale_cols = scale
    if scale_rows == 1.0 and scale_cols == 1.0:
        field_bbox, field_mask = bbox, mask
    else:
        rows, cols = image_shape
        r0 = max(0, int(math.floor(bbox[0] / scale_rows)))
        c0 = max(0, int(math.floor(bbox[1] / scale_cols)))
        r1 = min(rows, int(math.ceil(bbox[2] / scale_rows)))
        c1 = min(cols, int(math.ceil(bbox[3] / scale_cols)))
        resized = cv2.resize(mask.astype(np.float32), (c1 - c0, r1 - r0), interpolation=cv2.INTER_LINEAR)
        field_bbox, field_mask = (r0, c0, r1, c1), resized >= 0.5
    if not field_mask.any():
        return field_bbox, None
    row_any = np.flatnonzero(field_mask.any(axis=1))
    col_any = np.flatnonzero(field_mask.any(axis=0))
    top, bottom, left, right = row_any[0], row_any[-1] + 1, col_any[0], col_any[-1] + 1
    r0, c0 = field_bbox[0], field_bbox[1]
    return (r0 + int(top), c0 + int(left), r0 + int(bottom), c0 + int(right)), field_mask[top:bottom, left:right]


def make_cell(kind: CellKind, bbox: tuple[int, int, int, int], mask: np.ndarray) -> Cell:
    """A :class:`~smearflow.types.Cell` from a region's box and mask.

    Parameters
    ----------
    kind : CellKind
        ``"wbc"``, ``"rbc"`` or ``"platelet"``.
    bbox : tuple of int
        ``(row0, col0, row1, col1)`` in field pixels, max-exclusive.
    mask : ndarray of shape (row1 - row0, col1 - col0), bool
        The cell inside ``bbox``; must not be empty.

    Returns
    -------
    Cell
        With the centroid and area of ``mask``; the other fields keep their
        defaults.
    """
    rows, cols = np.nonzero(mask)
    return Cell(
        kind=kind,
        bbox=tuple(int(v) for v in bbox),
        centroid=(float(bbox[0] + rows.mean()), float(bbox[1] + cols.mean())),
        area_px=int(rows.size),
        mask=np.ascontiguousarray(mask),
    )
