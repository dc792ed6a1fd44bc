"""Square crops of single cells, sized in red-cell diameters, for the classifier.

A crop is centred on the cell's centroid and ``crop_side_rbc_diameters``
red-cell diameters wide, so that the cell fills the frame as in the
single-cell training images whatever the magnification. Where the square
runs past the field it is padded with the field's background colour (the
median of its brightest, non-glare pixels): reflecting the field instead
would invent cells that are not there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from smearflow.types import Cell

__all__ = ["background_colour", "crop_cells", "crop_side_px"]

_BACKGROUND_PERCENTILES = (80, 97)


def crop_side_px(rbc_diameter_px: float, crop_side_rbc_diameters: float = 4.5) -> int:
    """Side of a cell crop in field pixels.

    Parameters
    ----------
    rbc_diameter_px : float
        Red-cell diameter in the field, in pixels.
    crop_side_rbc_diameters : float
        Crop side in red-cell diameters (single-cell PBC images are about 4.5 wide).

    Returns
    -------
    int
        ``round(rbc_diameter_px * crop_side_rbc_diameters)``, at least 1.

    Raises
    ------
    ValueError
        When either argument is not positive.
    """
    if not rbc_diameter_px > 0:
        raise ValueError(f"rbc_diameter_px must be positive. Received: rbc_diameter_px={rbc_diameter_px}")
    if not crop_side_rbc_diameters > 0:
        raise ValueError(
            f"crop_side_rbc_diameters must be positive. Received: crop_side_rbc_diameters={crop_side_rbc_diameters}"
        )
    return max(1, int(round(rbc_diameter_px * crop_side_rbc_diameters)))


def background_colour(image: np.ndarray) -> np.ndarray:
    """The field's background colour: the median of its bright pixels, glare left out.

    Parameters
    ----------
    image : ndarray of shape (M, N, 3), uint8

    Returns
    -------
    colour : ndarray of shape (3,), uint8
    """
    channels = [image[..., c].ravel() for c in range(3)]
    brightness = channels[0].astype(np.uint16) + channels[1] + channels[2]
    # counting integer levels gives exactly np.percentile and np.median, faster
    counts = np.cumsum(np.bincount(brightness, minlength=766))
    low, high = (_percentile_of_counts(counts, q) for q in _BACKGROUND_PERCENTILES)
    chosen = (brightness >= low) & (brightness <= high)
    if not chosen.any():
        chosen = slice(None)
    medians = [_percentile_of_counts(np.cumsum(np.bincount(channel[chosen], minlength=256)), 50) for channel in channels]
    return np.array(medians).round().astype(np.uint8)


def _percentile_of_counts(cumulative: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation) of integers given as cumulative counts per level."""
    position = (cumulative[-1] - 1) * q / 100.0
    below = int(np.floor(position))
    lower, upper = np.searchsorted(cumulative, [below, min(below + 1, cumulative[-1] - 1)], side="right")
    return float(lower + (position - below) * (upper - lower))


def crop_cells(
    image: np.ndarray, cells: Sequence[Cell], side_px: int, out_size_px: int = 224
) -> np.ndarray:
    """Cut a square around each cell and resize it for the classifier.

    Parameters
    ----------
    image : ndarray of shape (M, N, 3), uint8
        RGB field.
    cells : sequence of Cell
        Cells of that field; each crop is centred on ``cell.centroid``.
    side_px : int
        Crop side in field pixels (see :func:`crop_side_px`).
    out_size_px : int
        Side of the returned crops; area interpolation when shrinking,
        bilinear when enlarging.

    Returns
    -------
    crops : ndarray of shape (len(cells), out_size_px, out_size_px, 3), uint8
        In the order of ``cells``; parts outside the field are the field's
        background colour.

    Raises
    ------
    ValueError
        When ``image`` is not an (M, N, 3) uint8 array, or ``side_px`` or
        ``out_size_px`` is below 1.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be an (M, N, 3) uint8 array. Received: shape={image.shape}, dtype={image.dtype}"
        )
    if int(side_px) != side_px or side_px < 1:
        raise ValueError(f"side_px must be a whole number of at least 1. Received: side_px={side_px}")
    if int(out_size_px) != out_size_px or out_size_px < 1:
        raise ValueError(f"out_size_px must be a whole number of at least 1. Received: out_size_px={out_size_px}")
    side_px, out_size_px = int(side_px), int(out_size_px)
    crops = np.empty((len(cells), out_size_px, out_size_px, 3), dtype=np.uint8)
    if not len(cells):
        return crops
    import cv2

    fill = None  # measured only when a crop runs past the field
    rows, cols = image.shape[:2]
    interpolation = cv2.INTER_AREA if side_px > out_size_px else cv2.INTER_LINEAR
    for index, cell in enumerate(cells):
        centre_row, centre_col = cell.centroid
        top = int(round(centre_row - side_px / 2.0))
        left = int(round(centre_col - side_px / 2.0))
        r0, r1 = max(0, top), min(rows, top + side_px)
        c0, c1 = max(0, left), min(cols, left + side_px)
        margins = (r0 - top, top + side_px - r1, c0 - left, left + side_px - c1)
        if fill is None and (any(margins) or r0 >= r1 or c0 >= c1):
            fill = tuple(int(level) for level in background_colour(image))
        if r0 >= r1 or c0 >= c1:
            square = np.empty((side_px, side_px, 3), dtype=np.uint8)
            square[:] = fill
        elif any(margins):
            # filling a whole square with a colour first cost more than resizing it
            square = cv2.copyMakeBorder(image[r0:r1, c0:c1], *margins, cv2.BORDER_CONSTANT, value=fill)
        else:
            square = image[r0:r1, c0:c1]
        if side_px == out_size_px:
            crops[index] = square
        else:
            crops[index] = cv2.resize(square, (out_size_px, out_size_px), interpolation=interpolation)
    return crops
