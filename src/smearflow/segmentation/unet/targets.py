"""Training targets of the U-Net and their per-pixel weights, from expert masks and from boxes.

A training image has a 0/1 ``target`` per channel of
:data:`~smearflow.segmentation.unet.network.CHANNELS` and a 0/1 ``weight``
per channel saying where that target is known. The loss
(:func:`~smearflow.segmentation.unet.loss.masked_segmentation_loss`) ignores
pixels of weight 0, so partial truth never teaches the network that an
unlabelled cell is background.

Masks layout (wbcseg: one white cell, 255 nucleus, 128 cytoplasm, 0 other)
    ``nucleus`` and ``wbc`` are known everywhere (grey >= 192; grey >= 64).
    ``rbc`` and ``platelet`` are known only inside the white cell (where they
    are 0): the background of these images holds unlabelled red cells.

Boxes layout (BCCD: Pascal VOC ``WBC``, ``RBC``, ``Platelets`` boxes)
    A box becomes the ellipse inscribed in it. Its inner part (semi-axes
    shrunk by ``band``) is the positive target; the ring out to semi-axes
    grown by ``band`` has weight 0, because a box's ellipse only
    approximates the cell outline.

    - ``wbc`` and ``platelet``: the boxes are complete, so everything outside
      the rings is a known negative.
    - ``nucleus``: boxes do not outline nuclei, so inside the inner ellipse
      of a white cell the nucleus is a colour pseudo-label: pixels clearly
      purple (blue minus red of the background-balanced field above 0.25)
      are nucleus, pixels clearly not (below 0.12) are not, the rest and the
      ring have weight 0. Outside white cells the nucleus is 0. Without
      these pseudo-labels the nucleus channel, taught by one stain only,
      misses the nuclei of other stains.
    - ``rbc``: red-cell boxes are **incomplete** (many red cells are not
      boxed), so only three kinds of pixel are supervised: the inner ellipses
      of red-cell boxes (positive), white cells and platelets (negative), and
      confident background (negative): pixels near the background colour,
      outside every red-cell box, at least ``0.1 D`` away from any stained
      pixel, with enclosed holes up to the size of a central pallor counted
      as stained. Stained pixels outside any box (unlabelled red cells) have
      weight 0.

Pure functions on arrays; the dataset folders are read in
:mod:`smearflow.segmentation.unet.data`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import cv2
import numpy as np

from smearflow.datasets import label_mask_parts
from smearflow.segmentation.regions import fill_small_holes
from smearflow.segmentation.unet.network import CHANNELS

__all__ = ["background_mask", "box_targets", "ellipse_mask", "mask_targets", "rbc_diameter_from_boxes"]

_NUCLEUS, _WBC, _RBC, _PLATELET = (CHANNELS.index(name) for name in ("nucleus", "wbc", "rbc", "platelet"))
_NUCLEUS_PURPLE_MIN = 0.25
_CYTOPLASM_PURPLE_MAX = 0.12
_BACKGROUND_MAX_SCORE = 0.15
_BACKGROUND_MARGIN_RBC = 0.1
_PALLOR_AREA_RBC = 0.3
MIN_RBC_BOXES = 3
"""Fewest red-cell boxes from which an image's red-cell diameter is taken."""


def mask_targets(label_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Targets and weights from a one-white-cell label mask (0 / 128 / 255).

    Parameters
    ----------
    label_mask : ndarray of shape (M, N), uint8
        Grey levels: below 64 background, 64-191 cytoplasm, 192 and up nucleus.

    Returns
    -------
    target, weight : ndarray of shape (M, N, 4), uint8
        ``nucleus`` and ``wbc`` supervised everywhere; ``rbc`` and
        ``platelet`` supervised (as 0) inside the white cell only.

    Raises
    ------
    ValueError
        When ``label_mask`` is not two-dimensional.
    """
    label_mask = np.asarray(label_mask)
    if label_mask.ndim != 2:
        raise ValueError(f"label_mask must be two-dimensional. Received: shape={label_mask.shape}")
    nucleus, cell = label_mask_parts(label_mask)
    target = np.zeros((*label_mask.shape, len(CHANNELS)), dtype=np.uint8)
    weight = np.zeros_like(target)
    target[..., _NUCLEUS] = nucleus
    target[..., _WBC] = cell
    weight[..., _NUCLEUS] = 1
    weight[..., _WBC] = 1
    weight[..., _RBC] = cell
    weight[..., _PLATELET] = cell
    return target, weight


def ellipse_mask(bbox: tuple[int, int, int, int], shape: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """The ellipse inscribed in a box, its semi-axes multiplied by ``scale``.

    Parameters
    ----------
    bbox : tuple of int
        ``(row_min, col_min, row_max, col_max)``, max exclusive.
    shape : tuple of int
        ``(rows, cols)`` of the output; the ellipse is clipped to it.
    scale : float
        Semi-axis factor (1.0: touches the box sides).

    Returns
    -------
    ndarray of shape ``shape``, bool
        Pixels whose centres lie inside the ellipse.

    Raises
    ------
    ValueError
        When ``scale`` is not positive or the box has a max below its min.
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive. Received: scale={scale}")
    row_min, col_min, row_max, col_max = bbox
    if row_max < row_min or col_max < col_min:
        raise ValueError(f"bbox must have row_max >= row_min and col_max >= col_min. Received: bbox={bbox}")
    out = np.zeros(shape, dtype=bool)
    centre_row, centre_col = (row_min + row_max) / 2.0, (col_min + col_max) / 2.0
    semi_rows, semi_cols = scale * (row_max - row_min) / 2.0, scale * (col_max - col_min) / 2.0
    if semi_rows <= 0 or semi_cols <= 0:
        return out
    r0 = max(0, int(math.floor(centre_row - semi_rows)))
    r1 = min(shape[0], int(math.ceil(centre_row + semi_rows)))
    c0 = max(0, int(math.floor(centre_col - semi_cols)))
    c1 = min(shape[1], int(math.ceil(centre_col + semi_cols)))
    if r0 >= r1 or c0 >= c1:
        return out
    rows = (np.arange(r0, r1) + 0.5 - centre_row)[:, None] / semi_rows
    cols = (np.arange(c0, c1) + 0.5 - centre_col)[None, :] / semi_cols
    out[r0:r1, c0:c1] = rows**2 + cols**2 <= 1.0
    return out


def background_mask(image_normalised: np.ndarray, rbc_diameter_px: float) -> np.ndarray:
    """Confident background: near the background colour and away from any stained pixel.

    Parameters
    ----------
    image_normalised : ndarray of shape (M, N, 3), float32
        Output of :func:`~smearflow.segmentation.unet.network.normalise_field`.
    rbc_diameter_px : float
        Red-cell diameter in the same pixels.

    Returns
    -------
    ndarray of shape (M, N), bool

    Raises
    ------
    ValueError
        When ``rbc_diameter_px`` is not positive or the image is not ``(M, N, 3)``.
    """
    if not rbc_diameter_px > 0:
        raise ValueError(f"rbc_diameter_px must be positive. Received: rbc_diameter_px={rbc_diameter_px}")
    image_normalised = np.asarray(image_normalised, dtype=np.float32)
    if image_normalised.ndim != 3 or image_normalised.shape[2] != 3:
        raise ValueError(f"image_normalised must have shape (M, N, 3). Received: shape={image_normalised.shape}")
    balanced = image_normalised * 1.25
    score = np.sqrt(np.sum((1.0 - np.minimum(balanced, 1.5)) ** 2, axis=-1))
    stained = score > _BACKGROUND_MAX_SCORE
    stained = fill_small_holes(stained, _PALLOR_AREA_RBC * math.pi * rbc_diameter_px**2 / 4.0)
    margin = max(1, int(round(_BACKGROUND_MARGIN_RBC * rbc_diameter_px)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
    near_stain = cv2.dilate(stained.astype(np.uint8), kernel).astype(bool)
    return ~near_stain


def box_targets(
    image_normalised: np.ndarray,
    boxes: Mapping[str, Iterable[tuple[int, int, int, int]]],
    rbc_diameter_px: float,
    band: float = 0.15,
) -> tuple[np.ndarray, np.ndarray]:
    """Targets and weights from white-cell, red-cell and platelet boxes (see the module docstring).

    Parameters
    ----------
    image_normalised : ndarray of shape (M, N, 3), float32
        The field, normalised; used for the confident background of ``rbc``.
    boxes : mapping of str to iterable of tuple of int
        ``"wbc"``, ``"rbc"``, ``"platelet"`` → boxes ``(row_min, col_min,
        row_max, col_max)`` in the field's pixels, max exclusive. Missing
        kinds have no boxes.
    rbc_diameter_px : float
        Red-cell diameter in the field's pixels.
    band : float
        Half-width of the unsupervised ring around each ellipse, as a share
        of its semi-axes, in ``[0, 1)``.

    Returns
    -------
    target, weight : ndarray of shape (M, N, 4), uint8

    Raises
    ------
    ValueError
        When ``band`` is outside ``[0, 1)``, a kind is unknown, or as
        :func:`background_mask`.
    """
    if not 0.0 <= band < 1.0:
        raise ValueError(f"band must be in [0, 1). Received: band={band}")
    unknown = sorted(set(boxes) - {"wbc", "rbc", "platelet"})
    if unknown:
        raise ValueError(f"boxes must be keyed by 'wbc', 'rbc', 'platelet'. Received unknown kinds: {unknown}")
    shape = image_normalised.shape[:2]

    def union(kind: str, scale: float) -> np.ndarray:
        out = np.zeros(shape, dtype=bool)
        for bbox in boxes.get(kind, ()):
            out |= ellipse_mask(bbox, shape, scale)
        return out

    wbc_inner, wbc_outer = union("wbc", 1.0 - band), union("wbc", 1.0 + band)
    platelet_inner, platelet_outer = union("platelet", 1.0 - band), union("platelet", 1.0 + band)
    rbc_inner = union("rbc", 1.0 - band) & ~wbc_outer & ~platelet_outer
    rbc_outer = union("rbc", 1.0 + band)
    background = background_mask(image_normalised, rbc_diameter_px)

    target = np.zeros((*shape, len(CHANNELS)), dtype=np.uint8)
    weight = np.ones_like(target)
    target[..., _WBC] = wbc_inner
    weight[..., _WBC] = ~(wbc_outer & ~wbc_inner)
    balanced = np.asarray(image_normalised, dtype=np.float32) * 1.25
    purple = balanced[..., 2] - balanced[..., 0]
    nucleus = wbc_inner & (purple > _NUCLEUS_PURPLE_MIN)
    target[..., _NUCLEUS] = nucleus
    weight[..., _NUCLEUS] = ~wbc_outer | nucleus | (wbc_inner & (purple < _CYTOPLASM_PURPLE_MAX))
    target[..., _PLATELET] = platelet_inner
    weight[..., _PLATELET] = ~(platelet_outer & ~platelet_inner)
    target[..., _RBC] = rbc_inner
    weight[..., _RBC] = rbc_inner | wbc_inner | platelet_inner | (background & ~rbc_outer & ~wbc_outer & ~platelet_outer)
    return target, weight


def rbc_diameter_from_boxes(boxes: Iterable[tuple[int, int, int, int]]) -> float | None:
    """Median of ``sqrt(height * width)`` over red-cell boxes; None for fewer than three boxes."""
    sides = [math.sqrt(max(0, b[2] - b[0]) * max(0, b[3] - b[1])) for b in boxes]
    sides = [s for s in sides if s > 0]
    if len(sides) < MIN_RBC_BOXES:
        return None
    return float(np.median(sides))
