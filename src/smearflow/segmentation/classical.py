"""Classical segmentation of a stained blood-smear field: colour, morphology, watershed.

The method, in the order it runs:

1. **Scale.** The red-cell diameter ``D`` is given or estimated from the
   field (:func:`estimate_rbc_diameter_px`); the field is resized (area
   interpolation) so that ``D`` becomes ``working_rbc_diameter_px`` and all
   the work below happens at that size. Every size and distance parameter is
   a multiple of ``D`` (or of the red-cell disc area), so one configuration
   serves any magnification.
2. **Colour.** The background colour (the median of the bright pixels,
   glare excluded, then a quadratic surface fitted to the background to
   remove vignetting) divides each channel, so that the background is 1.0 in
   every channel whatever the lamp and the stain's cast. Three maps follow:
   ``blue - green`` (high only on nuclear chromatin), ``blue - red``
   (positive for violet platelets and cytoplasm, negative for pink red
   cells) and the *foreground* map, the distance from the background colour.
3. **White cells.** Pixels above ``nucleus_blue_green_min`` are nucleus.
   Fragments closer than ``nucleus_merge_distance_rbc`` form one nucleus
   (bilobed and segmented nuclei stay one cell) when each is at least
   ``min_lobe_area_fraction`` of the largest; a nucleus of at least
   ``min_wbc_nucleus_area_rbc`` red-cell areas makes a white cell. The cell
   grows from the nucleus's convex hull into nearby violet foreground (the
   cytoplasm), at most ``cytoplasm_max_margin_rbc`` beyond the nucleus, and
   is closed to its convex hull.
4. **Platelets.** Violet blobs (``blue - red`` above
   ``platelet_blue_red_min`` with a core above ``platelet_core_blue_red_min``)
   away from white-cell nuclei, of ``min_platelet_area_rbc`` to
   ``max_platelet_area_rbc`` red-cell areas, and not lying inside other
   cells (``platelet_max_surround``); larger blobs (clumps) are split at the
   peaks of their distance transform, one platelet per peak. Each keeps a
   thin pale rim (``platelet_margin_rbc``).
5. **Red cells.** The remaining foreground, with central pallor (holes up to
   ``max_pallor_area_rbc``) filled, is filtered with a disc matched to ``D``
   (mean inside the disc minus mean in the ring around it); its peaks seed a
   watershed, so touching and overlapping discs come apart. A region still
   larger than ``rbc_split_area_rbc`` (overlapping cells with no dip between
   them) is split by k-means on its pixel coordinates into
   ``round(area / rbc_split_share_rbc)`` cells.
6. **Border rule.** :func:`smearflow.segmentation.border.apply_border_rule`
   sets ``counted``, ``touches_border`` and ``visible_fraction``.

The defaults were tuned on the non-held-out 70 % of the shared BCCD images
(:func:`smearflow.segeval.holdout_split`, seed ``"smearflow"``).

White-cell masks, the nucleus mask and platelet masks are resized back to the
field; all returned geometry is in field pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from smearflow.config import SerialisableConfig
from smearflow.segmentation import Segmentation
from smearflow.segmentation.border import apply_border_rule
from smearflow.segmentation.regions import (
    as_rgb_uint8,
    disc,
    drop_small_regions,
    fill_small_holes,
    labelled_regions,
    make_cell,
    opened,
    split_clump,
    to_field,
)
from smearflow.types import Cell

__all__ = ["ClassicalConfig", "ClassicalSegmenter", "estimate_rbc_diameter_px"]


_ESTIMATE_MAX_SIDE_PX = 320
_ESTIMATE_FIRST_HOLE_FRACTION = 0.005
_ESTIMATE_FIRST_WINDOW_PX = 7
_ESTIMATE_MIN_BLOB_PX = 30
_ESTIMATE_MIN_NON_NUCLEUS = 0.95
_ESTIMATE_MIN_SOLIDITY = 0.9
_ESTIMATE_MIN_SINGLE_CELLS = 3
_ESTIMATE_SINGLE_HOLE_FRACTION = 0.02
_ESTIMATE_SINGLE_RANGE = (0.6, 3.5)
_MIN_PEAK_DEPTH_PX = 2.0
_SURROUND_WIDTH_RBC = 0.1
_DISC_FILTER_INNER = 0.9
_DISC_FILTER_OUTER = 1.4
_KMEANS_ITERATIONS = 10
_FLAT_FIELD_SAMPLES = 3000
_SURFACE_GRID = 16
_FLAT_FIELD_BACKGROUND_MAX = 0.08
_FLAT_FIELD_MIN_PIXELS = 50


@dataclass(frozen=True)
class ClassicalConfig(SerialisableConfig):
    """Settings of :class:`ClassicalSegmenter`.

    Sizes are relative to the red-cell diameter ``D`` (suffix ``_rbc``: a
    multiple of ``D``; suffix ``_area_rbc``: a multiple of the red-cell disc
    area ``pi D^2 / 4``). Colour thresholds are in white-balanced units, where
    the background is 1.0 in each channel.

    Attributes
    ----------
    rbc_diameter_px : float or None
        Red-cell diameter in field pixels; ``None`` estimates it per field.
    min_rbc_diameter_px, max_rbc_diameter_px : float
        Range an estimated diameter is clamped to.
    working_rbc_diameter_px : float
        The red-cell diameter at the internal working resolution (fields are
        never enlarged).
    foreground_min : float
        Distance from the background colour above which a pixel belongs to a cell.
    nucleus_blue_green_min : float
        ``blue - green`` above which a pixel is nucleus.
    platelet_blue_red_min : float
        ``blue - red`` above which a pixel is platelet, when it joins a core.
    platelet_core_blue_red_min : float
        ``blue - red`` that a platelet must reach somewhere (its granular core).
    cytoplasm_blue_red_min : float
        ``blue - red`` above which foreground near a nucleus is cytoplasm
        (pink red cells are below it).
    nucleus_merge_distance_rbc : float
        Nucleus fragments closer than this are one white cell.
    min_wbc_nucleus_area_rbc : float
        Smallest nucleus area of a white cell.
    min_lobe_area_fraction : float
        A nucleus fragment joins a white cell only when its area is at least
        this fraction of the cell's largest fragment; smaller purple blobs
        beside a nucleus are platelets or granules.
    cytoplasm_max_margin_rbc : float
        How far the cytoplasm may reach beyond the nucleus's convex hull.
    cytoplasm_min_margin_rbc : float
        Margin always added around the nucleus's convex hull.
    min_platelet_area_rbc, max_platelet_area_rbc : float
        Area of one platelet; larger purple blobs are clumps and are split.
    platelet_exclusion_rbc : float
        Purple blobs closer than this to a white cell's nucleus belong to it.
    platelet_margin_rbc : float
        Pale rim added around a platelet's purple granules.
    platelet_max_surround : float
        Largest share of a thin ring around a platelet candidate that may be
        cell foreground. Purple dots lying inside red cells are mostly stain
        precipitate, refractile artefacts or inclusions; below 1.0 they are
        left out, at the cost of platelets lying on red cells.
    max_pallor_area_rbc : float
        Largest hole in a red cell (central pallor) that is filled.
    rbc_peak_window_rbc : float
        Window of the matched-filter peaks that seed red cells.
    min_rbc_disc_response : float
        Smallest response of the disc matched filter (mean foreground inside
        a red-cell disc minus the mean in the ring around it, in [-1, 1])
        at a red-cell seed.
    rbc_split_area_rbc : float
        A red-cell region larger than this (overlapping cells that the
        watershed left together) is split by k-means on its pixel coordinates ...
    rbc_split_share_rbc : float
        ... into ``round(area / rbc_split_share_rbc)`` parts (overlapping
        cells show less than a whole disc each).
    min_rbc_area_rbc : float
        Smallest red cell away from the field edge.
    min_border_rbc_area_rbc : float
        Smallest red cell cut by the field edge.
    """

    rbc_diameter_px: float | None = None
    min_rbc_diameter_px: float = 8.0
    max_rbc_diameter_px: float = 400.0
    working_rbc_diameter_px: float = 32.0
    foreground_min: float = 0.08
    nucleus_blue_green_min: float = 0.25
    platelet_blue_red_min: float = 0.06
    platelet_core_blue_red_min: float = 0.16
    cytoplasm_blue_red_min: float = 0.02
    nucleus_merge_distance_rbc: float = 0.5
    min_wbc_nucleus_area_rbc: float = 0.4
    min_lobe_area_fraction: float = 0.15
    cytoplasm_max_margin_rbc: float = 0.4
    cytoplasm_min_margin_rbc: float = 0.05
    min_platelet_area_rbc: float = 0.04
    max_platelet_area_rbc: float = 0.2
    platelet_exclusion_rbc: float = 0.1
    platelet_margin_rbc: float = 0.04
    platelet_max_surround: float = 0.5
    max_pallor_area_rbc: float = 0.3
    rbc_peak_window_rbc: float = 0.6
    min_rbc_disc_response: float = 0.1
    rbc_split_area_rbc: float = 1.5
    rbc_split_share_rbc: float = 0.9
    min_rbc_area_rbc: float = 0.25
    min_border_rbc_area_rbc: float = 0.1

    def __post_init__(self):
        if self.rbc_diameter_px is not None and not self.rbc_diameter_px > 0:
            raise ValueError(f"rbc_diameter_px must be positive. Received: rbc_diameter_px={self.rbc_diameter_px}")
        if not 0 < self.min_rbc_diameter_px <= self.max_rbc_diameter_px:
            raise ValueError(
                "min_rbc_diameter_px must be positive and at most max_rbc_diameter_px. Received: "
                f"min_rbc_diameter_px={self.min_rbc_diameter_px}, max_rbc_diameter_px={self.max_rbc_diameter_px}"
            )
        if self.working_rbc_diameter_px < 8:
            raise ValueError(
                f"working_rbc_diameter_px must be at least 8. Received: working_rbc_diameter_px={self.working_rbc_diameter_px}"
            )
        for name in (
            "foreground_min",
            "nucleus_merge_distance_rbc",
            "min_wbc_nucleus_area_rbc",
            "min_lobe_area_fraction",
            "cytoplasm_max_margin_rbc",
            "min_platelet_area_rbc",
            "max_platelet_area_rbc",
            "max_pallor_area_rbc",
            "rbc_peak_window_rbc",
            "rbc_split_area_rbc",
            "rbc_split_share_rbc",
            "min_rbc_area_rbc",
            "min_border_rbc_area_rbc",
        ):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be positive. Received: {name}={value}")
        for name in ("cytoplasm_min_margin_rbc", "platelet_exclusion_rbc", "platelet_margin_rbc"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name} must be zero or positive. Received: {name}={value}")
        if self.min_platelet_area_rbc >= self.max_platelet_area_rbc:
            raise ValueError(
                "min_platelet_area_rbc must be below max_platelet_area_rbc. Received: "
                f"min_platelet_area_rbc={self.min_platelet_area_rbc}, max_platelet_area_rbc={self.max_platelet_area_rbc}"
            )


class ClassicalSegmenter:
    """Segment white cells, red cells and platelets with colour and morphology.

    Parameters
    ----------
    config : ClassicalConfig, optional
        Settings; the defaults suit Giemsa / May-Grünwald-Giemsa smears.

    Examples
    --------
    >>> from smearflow.synthetic import make_smear
    >>> smear = make_smear(seed=0)
    >>> segmentation = ClassicalSegmenter().segment(smear.image)
    >>> segmentation.count("wbc")
    2
    """

    def __init__(self, config: ClassicalConfig | None = None):
        self.config = config if config is not None else ClassicalConfig()

    def __repr__(self) -> str:
        return f"ClassicalSegmenter({self.config!r})"

    def segment(self, image: np.ndarray) -> Segmentation:
        """Segment one field.

        Parameters
        ----------
        image : ndarray of shape (M, N, 3), uint8 (or float in [0, 1])
            RGB field of view.

        Returns
        -------
        Segmentation
            Cells in field pixels, the red-cell diameter used and the white
            cells' nucleus mask.

        Raises
        ------
        ValueError
            When ``image`` is not an RGB array of at least 16 x 16 pixels.
        """
        image = as_rgb_uint8(image)
        import cv2

        config = self.config
        if config.rbc_diameter_px is not None:
            rbc_diameter_px, illumination = float(config.rbc_diameter_px), None
        else:
            rbc_diameter_px, illumination = _estimate_diameter(image, config)
        scale = min(1.0, config.working_rbc_diameter_px / rbc_diameter_px)
        if scale < 1.0:
            work_shape = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
            small = cv2.resize(image, (work_shape[1], work_shape[0]), interpolation=cv2.INTER_AREA)
        else:
            small = image
        scale_rows = small.shape[0] / image.shape[0]
        scale_cols = small.shape[1] / image.shape[1]
        if illumination is None:
            illumination = _illumination(small)
        work = _WorkingField(illumination.balance(small), rbc_diameter_px * math.sqrt(scale_rows * scale_cols), config)

        wbc_labels, nucleus_work = work.white_cells()
        platelet_labels = work.platelets(wbc_labels, nucleus_work)
        rbc_labels = work.red_cells(wbc_labels, platelet_labels)

        cells: list[Cell] = []
        nucleus_mask = np.zeros(image.shape[:2], dtype=bool)
        for kind, labels in (("wbc", wbc_labels), ("platelet", platelet_labels), ("rbc", rbc_labels)):
            for region_bbox, region_mask in labelled_regions(labels):
                bbox, mask = to_field(region_mask, region_bbox, image.shape[:2], (scale_rows, scale_cols))
                if mask is None:
                    continue
                cells.append(make_cell(kind, bbox, mask))
                if kind == "wbc":
                    nucleus_crop = nucleus_work[
                        region_bbox[0] : region_bbox[2], region_bbox[1] : region_bbox[3]
                    ] & region_mask
                    nucleus_bbox, nucleus_part = to_field(
                        nucleus_crop, region_bbox, image.shape[:2], (scale_rows, scale_cols)
                    )
                    if nucleus_part is not None:
                        r0, c0, r1, c1 = nucleus_bbox
                        nucleus_mask[r0:r1, c0:c1] |= nucleus_part
        cells = list(apply_border_rule(cells, image.shape[:2], rbc_diameter_px))
        return Segmentation(
            cells=tuple(cells),
            rbc_diameter_px=rbc_diameter_px,
            image_shape=(int(image.shape[0]), int(image.shape[1])),
            nucleus_mask=nucleus_mask,
        )


def estimate_rbc_diameter_px(image: np.ndarray, config: ClassicalConfig | None = None) -> float:
    """Estimate the red-cell diameter of a field from its own pixels.

    Works on the field shrunk to at most 320 pixels a side. First guess: the
    foreground (pixels away from the background colour), with small holes
    (central pallor) filled, has distance-transform peaks about one red-cell
    radius deep, touching cells included; the guess is twice the median depth
    of the deeper peaks (a coarse window, then a window of half the first
    guess). Refinement: where at least three isolated, convex blobs without
    nucleus and of 0.6 to 3.5 times the guess exist (single red cells), the
    estimate is their median equivalent diameter. The result is clamped to
    ``[config.min_rbc_diameter_px, config.max_rbc_diameter_px]``; a field
    with no foreground gets a sixth of its shorter side, clamped the same way.

    Parameters
    ----------
    image : ndarray of shape (M, N, 3), uint8 (or float in [0, 1])
        RGB field of view.
    config : ClassicalConfig, optional
        Supplies the clamp range and the foreground threshold.

    Returns
    -------
    float
        Red-cell diameter in field pixels.

    Raises
    ------
    ValueError
        When ``image`` is not an RGB array of at least 16 x 16 pixels.
    """
    image = as_rgb_uint8(image)
    return _estimate_diameter(image, config if config is not None else ClassicalConfig())[0]


def _estimate_diameter(image: np.ndarray, config: ClassicalConfig) -> tuple[float, _Illumination]:
    import cv2

    scale = min(1.0, _ESTIMATE_MAX_SIDE_PX / max(image.shape[:2]))
    if scale < 1.0:
        small = cv2.resize(
            image,
            (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
            interpolation=cv2.INTER_AREA,
        )
    else:
        small = image
    illumination = _illumination(small)
    balanced = illumination.balance(small)
    foreground = opened(_foreground_score(balanced) > config.foreground_min)
    diameter_work = _diameter_from_foreground(
        foreground, _ESTIMATE_FIRST_HOLE_FRACTION * foreground.size, _ESTIMATE_FIRST_WINDOW_PX
    )
    if diameter_work is None:
        diameter_px = min(image.shape[:2]) / 6.0
    else:
        pallor_area = config.max_pallor_area_rbc * math.pi * diameter_work**2 / 4.0
        window = max(3, int(round(0.5 * diameter_work)))
        diameter_work = _diameter_from_foreground(foreground, pallor_area, window) or diameter_work
        not_nucleus = _blue_minus_green(balanced) <= config.nucleus_blue_green_min
        diameter_work = _diameter_from_single_cells(foreground, not_nucleus, diameter_work) or diameter_work
        diameter_px = diameter_work / scale
    return float(np.clip(diameter_px, config.min_rbc_diameter_px, config.max_rbc_diameter_px)), illumination


class _WorkingField:
    """One field at the working resolution, with its colour maps."""

    def __init__(self, balanced: np.ndarray, rbc_diameter_px: float, config: ClassicalConfig):
        self.config = config
        self.diameter = rbc_diameter_px
        self.rbc_area = math.pi * rbc_diameter_px**2 / 4.0
        self.blue_green = _blue_minus_green(balanced)
        self.blue_red = balanced[..., 2] - balanced[..., 0]
        self.foreground = _foreground_score(balanced) > config.foreground_min
        self.shape = balanced.shape[:2]

    def white_cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Label image of white cells (0 = none) and the nucleus mask."""
        import cv2

        config = self.config
        nucleus = opened(self.blue_green > config.nucleus_blue_green_min)
        labels = np.zeros(self.shape, dtype=np.int32)
        if not nucleus.any():
            return labels, nucleus
        n_fragments, fragment_labels, fragment_stats, _ = cv2.connectedComponentsWithStats(
            nucleus.astype(np.uint8), connectivity=8
        )
        fragment_area = fragment_stats[:, cv2.CC_STAT_AREA]
        merge_radius = max(1, int(round(0.5 * config.nucleus_merge_distance_rbc * self.diameter)))
        grouped = cv2.dilate(nucleus.astype(np.uint8), disc(merge_radius))
        n_groups, group_labels = cv2.connectedComponents(grouped, connectivity=8)
        group_of = np.zeros(n_fragments, dtype=np.int64)
        group_of[fragment_labels[nucleus]] = group_labels[nucleus]
        largest = np.zeros(n_groups, dtype=np.int64)
        np.maximum.at(largest, group_of[1:], fragment_area[1:])
        # A lobe is comparable in size to the rest of its nucleus; a small
        # purple blob beside a nucleus is a platelet or a granule instead.
        member = fragment_area >= config.min_lobe_area_fraction * largest[group_of]
        member[0] = False
        group_area = np.bincount(group_of[member], weights=fragment_area[member], minlength=n_groups)
        is_wbc_group = group_area >= config.min_wbc_nucleus_area_rbc * self.rbc_area
        is_wbc_group[0] = False
        kept_fragment = member & is_wbc_group[group_of]
        nucleus_kept = kept_fragment[fragment_labels]
        group_labels = np.where(nucleus_kept, group_labels, 0)
        wbc_groups = np.flatnonzero(is_wbc_group).tolist()
        max_margin = max(1, int(round(config.cytoplasm_max_margin_rbc * self.diameter)))
        min_margin = int(round(config.cytoplasm_min_margin_rbc * self.diameter))
        cytoplasm_colour = self.foreground & (self.blue_red > config.cytoplasm_blue_red_min)
        rows, cols = self.shape
        for label, group in enumerate(wbc_groups, start=1):
            ys, xs = np.nonzero(group_labels == group)
            r0 = max(0, ys.min() - max_margin - 1)
            r1 = min(rows, ys.max() + max_margin + 2)
            c0 = max(0, xs.min() - max_margin - 1)
            c1 = min(cols, xs.max() + max_margin + 2)
            own_nucleus = group_labels[r0:r1, c0:c1] == group
            hull = _convex_hull(own_nucleus)
            reach = cv2.dilate(hull.astype(np.uint8), disc(max_margin)).astype(bool)
            core = cv2.dilate(hull.astype(np.uint8), disc(min_margin)).astype(bool) if min_margin else hull
            cell = core | (reach & cytoplasm_colour[r0:r1, c0:c1])
            cell = _component_touching(cell, own_nucleus)
            cell = _convex_hull(cell) & reach
            free = labels[r0:r1, c0:c1] == 0
            labels[r0:r1, c0:c1][cell & free] = label
        return labels, nucleus_kept

    def platelets(self, wbc_labels: np.ndarray, nucleus: np.ndarray) -> np.ndarray:
        """Label image of platelets (0 = none)."""
        import cv2

        config = self.config
        candidates = opened(self.blue_red > config.platelet_blue_red_min)
        core = self.blue_red > config.platelet_core_blue_red_min
        labels = np.zeros(self.shape, dtype=np.int32)
        if nucleus.any():
            exclusion = max(1, int(round(config.platelet_exclusion_rbc * self.diameter)))
            near_wbc = cv2.dilate(nucleus.astype(np.uint8), disc(exclusion)).astype(bool)
        else:
            near_wbc = np.zeros(self.shape, dtype=bool)
        n, blob_labels, stats, _ = cv2.connectedComponentsWithStats(candidates.astype(np.uint8), connectivity=8)
        touching_wbc = np.unique(blob_labels[near_wbc & candidates])
        has_core = np.bincount(blob_labels[core & candidates], minlength=n) > 0
        min_area = config.min_platelet_area_rbc * self.rbc_area
        max_area = config.max_platelet_area_rbc * self.rbc_area
        next_label = 1
        for blob in range(1, n):
            area = stats[blob, cv2.CC_STAT_AREA]
            if area < min_area or blob in touching_wbc or not has_core[blob]:
                continue
            x, y, w, h = (stats[blob, k] for k in (0, 1, 2, 3))
            if self._surround_foreground(blob_labels, blob, (y, x, y + h, x + w)) > config.platelet_max_surround:
                continue
            blob_mask = blob_labels[y : y + h, x : x + w] == blob
            if area <= max_area:
                pieces = [blob_mask]
            else:
                pieces = split_clump(blob_mask, 0.5 * math.sqrt(max_area / math.pi))
            for piece in pieces:
                if np.count_nonzero(piece) >= min_area:
                    labels[y : y + h, x : x + w][piece] = next_label
                    next_label += 1
        margin = int(round(config.platelet_margin_rbc * self.diameter))
        if margin and next_label > 1:
            # The purple granules sit inside a paler rim that is part of the platelet.
            grown = cv2.dilate(labels.astype(np.float32), disc(margin)).astype(np.int32)
            labels = np.where((labels == 0) & (wbc_labels == 0), grown, labels)
        return labels

    def _surround_foreground(self, blob_labels: np.ndarray, blob: int, bbox: tuple[int, int, int, int]) -> float:
        """Share of a thin ring around a blob that is cell foreground."""
        import cv2

        width = max(1, int(round(_SURROUND_WIDTH_RBC * self.diameter)))
        rows, cols = self.shape
        r0, c0 = max(0, bbox[0] - width - 1), max(0, bbox[1] - width - 1)
        r1, c1 = min(rows, bbox[2] + width + 1), min(cols, bbox[3] + width + 1)
        blob_mask = blob_labels[r0:r1, c0:c1] == blob
        ring = cv2.dilate(blob_mask.astype(np.uint8), disc(width)).astype(bool) & ~blob_mask
        return float(self.foreground[r0:r1, c0:c1][ring].mean()) if ring.any() else 0.0

    def red_cells(self, wbc_labels: np.ndarray, platelet_labels: np.ndarray) -> np.ndarray:
        """Label image of red cells (0 = none)."""
        import cv2
        from skimage.segmentation import watershed

        config = self.config
        taken = cv2.dilate(((wbc_labels > 0) | (platelet_labels > 0)).astype(np.uint8), disc(1)).astype(bool)
        foreground = opened(self.foreground & ~taken)
        foreground = fill_small_holes(foreground, config.max_pallor_area_rbc * self.rbc_area)
        foreground &= ~taken
        response = cv2.filter2D(
            foreground.astype(np.float32), -1, _disc_filter(self.diameter), borderType=cv2.BORDER_REPLICATE
        )
        window = max(3, int(round(config.rbc_peak_window_rbc * self.diameter)) | 1)
        peaks = (
            (response == cv2.dilate(response, disc(window // 2)))
            & (response >= config.min_rbc_disc_response)
            & foreground
        )
        n_markers, markers = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)
        if n_markers <= 1:
            return np.zeros(self.shape, dtype=np.int32)
        labels = watershed(-response, markers, mask=foreground).astype(np.int32)
        labels, n_labels = self._split_oversized(labels, n_markers)
        return drop_small_regions(
            labels,
            n_labels,
            config.min_rbc_area_rbc * self.rbc_area,
            config.min_border_rbc_area_rbc * self.rbc_area,
        )

    def _split_oversized(self, labels: np.ndarray, n_labels: int) -> tuple[np.ndarray, int]:
        """Split regions larger than ``rbc_split_area_rbc`` into ``area / rbc_split_share_rbc`` parts."""
        from scipy import ndimage

        config = self.config
        areas = np.bincount(labels.ravel(), minlength=n_labels)
        oversized = np.flatnonzero(areas > config.rbc_split_area_rbc * self.rbc_area)
        oversized = oversized[oversized > 0]
        if oversized.size == 0:
            return labels, n_labels
        slices = ndimage.find_objects(labels)
        next_label = n_labels
        for label in oversized:
            n_parts = int(round(areas[label] / (config.rbc_split_share_rbc * self.rbc_area)))
            if n_parts < 2:
                continue
            region = slices[label - 1]
            ys, xs = np.nonzero(labels[region] == label)
            parts = _kmeans_points(np.column_stack([ys, xs]).astype(np.float32), n_parts)
            for part in range(1, n_parts):
                chosen = parts == part
                labels[region][ys[chosen], xs[chosen]] = next_label
                next_label += 1
        return labels, next_label


def _disc_filter(diameter: float) -> np.ndarray:
    """Matched filter of a disc: mean inside the disc minus mean of the ring around it."""
    radius = diameter / 2.0
    half = int(math.ceil(_DISC_FILTER_OUTER * radius))
    offsets = np.arange(-half, half + 1, dtype=np.float32)
    distance = np.hypot(offsets[:, None], offsets[None, :])
    inner = (distance <= _DISC_FILTER_INNER * radius).astype(np.float32)
    ring = ((distance > radius) & (distance <= _DISC_FILTER_OUTER * radius)).astype(np.float32)
    return inner / max(inner.sum(), 1.0) - ring / max(ring.sum(), 1.0)


def _kmeans_points(points: np.ndarray, n_parts: int, iterations: int = _KMEANS_ITERATIONS) -> np.ndarray:
    """Deterministic k-means of 2-D points (farthest-point start); returns each point's part."""
    centre = points.mean(axis=0)
    centres = [points[np.argmax(((points - centre) ** 2).sum(axis=1))]]
    nearest = ((points - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, n_parts):
        centres.append(points[np.argmax(nearest)])
        nearest = np.minimum(nearest, ((points - centres[-1]) ** 2).sum(axis=1))
    centres = np.asarray(centres)
    parts = np.zeros(len(points), dtype=np.int64)
    for _ in range(iterations):
        distances = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        new_parts = distances.argmin(axis=1)
        if np.array_equal(new_parts, parts):
            break
        parts = new_parts
        for part in range(n_parts):
            members = points[parts == part]
            if len(members):
                centres[part] = members.mean(axis=0)
    return parts


@dataclass(frozen=True)
class _Illumination:
    """Background colour of a field as a quadratic surface per channel.

    ``coefficients`` multiply ``(1, x, y, x^2, x y, y^2)`` with ``x`` and
    ``y`` the column and row as fractions of the field, centred on 0, so one
    fit serves the field at any resolution.
    """

    background: np.ndarray
    coefficients: np.ndarray | None

    def balance(self, image: np.ndarray) -> np.ndarray:
        """The image divided by its background: 1.0 in every channel on background."""
        import cv2

        inverse = (1.0 / np.maximum(self.background, 1.0)).astype(np.float32)
        if self.coefficients is None:
            return image.astype(np.float32) * inverse
        rows, cols = image.shape[:2]
        # The surface is smooth: evaluate it on a coarse grid and interpolate.
        grid_rows, grid_cols = min(rows, _SURFACE_GRID), min(cols, _SURFACE_GRID)
        y = ((np.arange(grid_rows, dtype=np.float32) + 0.5) / grid_rows - 0.5)[:, None, None]
        x = ((np.arange(grid_cols, dtype=np.float32) + 0.5) / grid_cols - 0.5)[None, :, None]
        c = self.coefficients.astype(np.float32)
        surface = c[0] + c[1] * x + c[2] * y + c[3] * x * x + c[4] * x * y + c[5] * y * y
        gain = inverse / np.clip(surface, 0.7, 1.3)
        if (grid_rows, grid_cols) != (rows, cols):
            gain = cv2.resize(gain, (cols, rows), interpolation=cv2.INTER_LINEAR)
        return image.astype(np.float32) * gain


def _illumination(image: np.ndarray) -> _Illumination:
    rows, cols = image.shape[:2]
    step = max(1, int(math.sqrt(rows * cols / _FLAT_FIELD_SAMPLES)))
    sample = image[::step, ::step].astype(np.float32)
    pixels = sample.reshape(-1, 3)
    brightness = pixels.sum(axis=1)
    # The brightest few percent are glare and refraction spots, not background.
    low, high = np.percentile(brightness, [80, 97])
    chosen = pixels[(brightness >= low) & (brightness <= high)]
    background = np.median(chosen if len(chosen) else pixels, axis=0)
    balanced = sample / np.maximum(background, 1.0)
    # Uneven illumination (vignetting) is removed by a quadratic surface
    # fitted per channel to the pixels that look like background.
    is_background = _foreground_score(balanced) < _FLAT_FIELD_BACKGROUND_MAX
    if np.count_nonzero(is_background) < _FLAT_FIELD_MIN_PIXELS:
        return _Illumination(background, None)
    grid_rows, grid_cols = np.mgrid[0:rows:step, 0:cols:step]
    y = grid_rows[is_background] / rows - 0.5
    x = grid_cols[is_background] / cols - 0.5
    design = np.column_stack([np.ones_like(x), x, y, x * x, x * y, y * y])
    coefficients, *_ = np.linalg.lstsq(design, balanced[is_background], rcond=None)
    return _Illumination(background, coefficients)


def _blue_minus_green(balanced: np.ndarray) -> np.ndarray:
    # Nuclear chromatin passes blue and absorbs green far more than
    # haemoglobin, cytoplasm or background do, whatever the stain's cast:
    # blue - red fails on reddish-purple nuclei, blue - green does not.
    return balanced[..., 2] - balanced[..., 1]


def _foreground_score(balanced: np.ndarray) -> np.ndarray:
    difference = 1.0 - np.minimum(balanced, 1.5)
    return np.sqrt(np.einsum("ijk,ijk->ij", difference, difference))


def _diameter_from_single_cells(foreground: np.ndarray, not_nucleus: np.ndarray, first_guess: float) -> float | None:
    """Median equivalent diameter of the isolated, convex, nucleus-free blobs near the first guess's size."""
    import cv2

    filled = fill_small_holes(foreground, _ESTIMATE_SINGLE_HOLE_FRACTION * foreground.size)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(filled.astype(np.uint8), connectivity=8)
    rows, cols = foreground.shape
    x, y, w, h, area = (stats[:, k] for k in range(5))
    inside = (x > 0) & (y > 0) & (x + w < cols) & (y + h < rows) & (area >= _ESTIMATE_MIN_BLOB_PX)
    nucleus_free = np.bincount(labels[not_nucleus], minlength=n) >= _ESTIMATE_MIN_NON_NUCLEUS * area
    areas = []
    for blob in np.flatnonzero(inside & nucleus_free):
        if blob == 0:
            continue
        crop = (labels[y[blob] : y[blob] + h[blob], x[blob] : x[blob] + w[blob]] == blob).astype(np.uint8)
        contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        hull_area = cv2.contourArea(cv2.convexHull(np.concatenate(contours)))
        if hull_area > 0 and area[blob] / hull_area >= _ESTIMATE_MIN_SOLIDITY:
            areas.append(area[blob])
    diameters = np.sqrt(4.0 * np.asarray(areas, dtype=float) / math.pi)
    diameters = diameters[(diameters >= _ESTIMATE_SINGLE_RANGE[0] * first_guess) & (diameters <= _ESTIMATE_SINGLE_RANGE[1] * first_guess)]
    if len(diameters) < _ESTIMATE_MIN_SINGLE_CELLS:
        return None
    return float(np.median(diameters))


def _diameter_from_foreground(foreground: np.ndarray, max_hole_area: float, window: int) -> float | None:
    import cv2

    filled = fill_small_holes(foreground, max_hole_area)
    distance = cv2.distanceTransform(filled.astype(np.uint8), cv2.DIST_L2, 5)
    peak_values = distance[(distance == cv2.dilate(distance, disc(window // 2))) & (distance >= _MIN_PEAK_DEPTH_PX)]
    if peak_values.size == 0:
        return None
    deep = peak_values[peak_values >= 0.5 * np.percentile(peak_values, 90)]
    return float(2.0 * np.median(deep))


def _convex_hull(mask: np.ndarray) -> np.ndarray:
    import cv2

    points = cv2.findNonZero(mask.astype(np.uint8))
    hull_mask = np.zeros(mask.shape, dtype=np.uint8)
    if points is None:
        return hull_mask.astype(bool)
    cv2.fillConvexPoly(hull_mask, cv2.convexHull(points), 1)
    return hull_mask.astype(bool) | mask


def _component_touching(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    import cv2

    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    wanted = np.unique(labels[seed & mask])
    wanted = wanted[wanted > 0]
    return np.isin(labels, wanted) | seed
