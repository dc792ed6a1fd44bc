"""From per-pixel probabilities to cells: :func:`cells_from_probabilities` (pure; no network involved).

1. The nucleus, white-cell and platelet probabilities are resized back to
   the field (bilinear, so boundaries keep sub-pixel accuracy) and
   thresholded.
2. **White cells** are connected components of ``wbc | nucleus`` holding at
   least ``min_wbc_nucleus_area_rbc`` red-cell areas of nucleus, holes
   filled. A component with several nucleus groups (fragments closer than
   ``nucleus_merge_distance_rbc`` are one group) is split between them.
   Holes in the nucleus up to ``max_nucleus_hole_area_rbc`` are filled.
3. **Platelets** are platelet components away from white cells, between
   ``min_platelet_area_rbc`` and ``max_platelet_area_rbc``; larger ones are
   split at their distance-transform peaks.
4. **Red cells**, at the working resolution: the red-cell mask minus white
   cells and platelets, central pallor filled, split by a marker watershed on
   its distance transform (peaks within ``rbc_peak_window_rbc``, at least
   ``min_rbc_peak_rbc`` deep), each region resized back to the field.
5. :func:`smearflow.segmentation.border.apply_border_rule` sets ``counted``,
   ``touches_border`` and ``visible_fraction``.

Sizes are those of :class:`~smearflow.segmentation.unet.config.UNetPostprocess`.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from smearflow.segmentation.base import Segmentation
from smearflow.segmentation.border import apply_border_rule
from smearflow.segmentation.regions import (
    disc,
    drop_small_regions,
    fill_small_holes,
    labelled_regions,
    make_cell,
    opened,
    split_clump,
    to_field,
)
from smearflow.segmentation.unet.config import UNetConfig, UNetPostprocess
from smearflow.segmentation.unet.network import CHANNELS
from smearflow.types import Cell

__all__ = ["cells_from_probabilities"]

_NUCLEUS, _WBC, _RBC, _PLATELET = range(len(CHANNELS))
_MIN_PEAK_DEPTH_PX = 2.0


def cells_from_probabilities(
    probabilities: np.ndarray,
    image_shape: tuple[int, int],
    rbc_diameter_px: float,
    config: UNetConfig | None = None,
) -> Segmentation:
    """Turn per-pixel probabilities into cells (see the module docstring).

    Parameters
    ----------
    probabilities : ndarray of shape (m, n, 4), float
        Channels :data:`CHANNELS` over the whole field at any resolution
        (usually the working one); resized to ``image_shape`` as needed.
    image_shape : tuple of int
        ``(rows, cols)`` of the field.
    rbc_diameter_px : float
        Red-cell diameter in field pixels.
    config : UNetConfig, optional
        Thresholds and post-processing sizes.

    Returns
    -------
    Segmentation
        Cells in field pixels, ``rbc_diameter_px`` and the nucleus mask.

    Raises
    ------
    ValueError
        When ``probabilities`` is not ``(m, n, 4)``, ``image_shape`` is not
        two positive sides, or ``rbc_diameter_px`` is not positive.
    """
    config = config if config is not None else UNetConfig()
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim != 3 or probabilities.shape[2] != len(CHANNELS) or min(probabilities.shape[:2]) < 1:
        raise ValueError(
            f"probabilities must have shape (m, n, {len(CHANNELS)}). Received: shape={probabilities.shape}"
        )
    if len(image_shape) < 2 or min(image_shape[:2]) < 1:
        raise ValueError(f"image_shape must be (rows, cols) with positive sides. Received: image_shape={image_shape}")
    if not rbc_diameter_px > 0:
        raise ValueError(f"rbc_diameter_px must be positive. Received: rbc_diameter_px={rbc_diameter_px}")
    rows, cols = int(image_shape[0]), int(image_shape[1])
    work_rows, work_cols = probabilities.shape[:2]
    thresholds, post = config.thresholds, config.postprocess
    field_channels = probabilities[..., [_NUCLEUS, _WBC, _PLATELET]]
    if (work_rows, work_cols) != (rows, cols):
        field_channels = cv2.resize(field_channels, (cols, rows), interpolation=cv2.INTER_LINEAR)
    nucleus = field_channels[..., 0] >= thresholds.nucleus
    cell_any = (field_channels[..., 1] >= thresholds.wbc) | nucleus
    wbc_labels = _white_cells(cell_any, nucleus, rbc_diameter_px, post)
    # Chromatin texture leaves pinholes in the predicted nucleus; a nucleus is solid.
    nucleus_mask = fill_small_holes(nucleus & (wbc_labels > 0), post.max_nucleus_hole_area_rbc * _rbc_area(rbc_diameter_px))
    nucleus_mask &= wbc_labels > 0
    platelet_labels = _platelets(field_channels[..., 2] >= thresholds.platelet, wbc_labels, rbc_diameter_px, post)

    scale_rows, scale_cols = work_rows / rows, work_cols / cols
    work_diameter = rbc_diameter_px * math.sqrt(scale_rows * scale_cols)
    taken = ((wbc_labels > 0) | (platelet_labels > 0)).astype(np.float32)
    if (work_rows, work_cols) != (rows, cols):
        taken = cv2.resize(taken, (work_cols, work_rows), interpolation=cv2.INTER_AREA)
    red = (probabilities[..., _RBC] >= thresholds.rbc) & ~(taken > 0.25)
    rbc_labels = _red_cells(red, work_diameter, post)

    cells: list[Cell] = []
    for kind, labels in (("wbc", wbc_labels), ("platelet", platelet_labels)):
        for bbox, mask in labelled_regions(labels):
            cells.append(make_cell(kind, bbox, mask))
    for work_bbox, work_mask in labelled_regions(rbc_labels):
        bbox, mask = to_field(work_mask, work_bbox, (rows, cols), (scale_rows, scale_cols))
        if mask is not None:
            cells.append(make_cell("rbc", bbox, mask))
    return Segmentation(
        cells=apply_border_rule(cells, (rows, cols), rbc_diameter_px),
        rbc_diameter_px=float(rbc_diameter_px),
        image_shape=(rows, cols),
        nucleus_mask=nucleus_mask,
    )


def _rbc_area(diameter: float) -> float:
    return math.pi * diameter * diameter / 4.0


def _white_cells(cell_any: np.ndarray, nucleus: np.ndarray, diameter: float, post: UNetPostprocess) -> np.ndarray:
    """Label image of white cells: components of the cell mask that hold enough nucleus."""
    labels = np.zeros(cell_any.shape, dtype=np.int32)
    min_nucleus = post.min_wbc_nucleus_area_rbc * _rbc_area(diameter)
    min_cell = post.min_wbc_area_rbc * _rbc_area(diameter)
    merge_radius = max(1, int(round(0.5 * post.nucleus_merge_distance_rbc * diameter)))
    _, components = cv2.connectedComponents(cell_any.astype(np.uint8), connectivity=8)
    next_label = 1
    for (row0, col0, row1, col1), component in labelled_regions(components):
        slices = np.s_[row0:row1, col0:col1]
        own_nucleus = nucleus[slices] & component
        if np.count_nonzero(own_nucleus) < min_nucleus or np.count_nonzero(component) < min_cell:
            continue
        component = ndimage.binary_fill_holes(component)
        grouped = cv2.dilate(own_nucleus.astype(np.uint8), disc(merge_radius)).astype(bool) & component
        n_groups, groups = cv2.connectedComponents(grouped.astype(np.uint8), connectivity=8)
        groups = np.where(own_nucleus, groups, 0)
        group_area = np.bincount(groups.ravel(), minlength=n_groups)
        kept = [g for g in range(1, n_groups) if group_area[g] >= min_nucleus]
        target = labels[slices]
        if len(kept) <= 1:
            target[component] = next_label
            next_label += 1
            continue
        # Touching white cells: each pixel goes to the nearest nucleus group.
        markers = np.zeros(component.shape, dtype=np.int32)
        for k, group in enumerate(kept, start=1):
            markers[groups == group] = k
        pieces = watershed(ndimage.distance_transform_edt(markers == 0), markers, mask=component)
        for k in range(1, len(kept) + 1):
            piece = pieces == k
            if np.count_nonzero(piece) >= min_cell:
                target[piece] = next_label
                next_label += 1
    return labels


def _platelets(candidates: np.ndarray, wbc_labels: np.ndarray, diameter: float, post: UNetPostprocess) -> np.ndarray:
    """Label image of platelets away from white cells; clumps split at distance peaks."""
    labels = np.zeros(candidates.shape, dtype=np.int32)
    candidates = candidates & (wbc_labels == 0)
    if not candidates.any():
        return labels
    exclusion = int(round(post.platelet_exclusion_rbc * diameter))
    near_wbc = wbc_labels > 0
    if exclusion > 0 and near_wbc.any():
        near_wbc = cv2.dilate(near_wbc.astype(np.uint8), disc(exclusion)).astype(bool)
    min_area = post.min_platelet_area_rbc * _rbc_area(diameter)
    max_area = post.max_platelet_area_rbc * _rbc_area(diameter)
    _, blobs = cv2.connectedComponents(candidates.astype(np.uint8), connectivity=8)
    next_label = 1
    for (row0, col0, row1, col1), blob in labelled_regions(blobs):
        slices = np.s_[row0:row1, col0:col1]
        area = np.count_nonzero(blob)
        if area < min_area or (near_wbc[slices] & blob).any():
            continue
        pieces = [blob] if area <= max_area else split_clump(blob, 0.5 * math.sqrt(max_area / math.pi))
        for piece in pieces:
            if np.count_nonzero(piece) >= min_area:
                labels[slices][piece] = next_label
                next_label += 1
    return labels


def _red_cells(red: np.ndarray, diameter: float, post: UNetPostprocess) -> np.ndarray:
    """Label image of red cells: pallor filled, touching discs split by a distance watershed."""
    labels_shape = red.shape
    if not red.any():
        return np.zeros(labels_shape, dtype=np.int32)
    area = _rbc_area(diameter)
    foreground = opened(red)
    foreground = fill_small_holes(foreground, post.max_pallor_area_rbc * area)
    distance = cv2.distanceTransform(foreground.astype(np.uint8), cv2.DIST_L2, 5)
    window = max(3, int(round(post.rbc_peak_window_rbc * diameter)) | 1)
    peaks = (distance == cv2.dilate(distance, disc(window // 2))) & (
        distance >= max(_MIN_PEAK_DEPTH_PX, post.min_rbc_peak_rbc * diameter)
    )
    n_markers, markers = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)
    if n_markers <= 1:
        return np.zeros(labels_shape, dtype=np.int32)
    labels = watershed(-distance, markers, mask=foreground).astype(np.int32)
    return drop_small_regions(labels, n_markers, post.min_rbc_area_rbc * area, post.min_border_rbc_area_rbc * area)
