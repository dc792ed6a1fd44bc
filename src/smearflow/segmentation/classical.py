"""Classical segmentation of a stained blood-smear field: colour, morphology, watershed.

The method, in the order it runs:

1. **Scale.** The red-cell diameter ``D`` is given or estimated from the
   field (:mod:`smearflow.segmentation.diameter`); the field is resized (area
   interpolation) so that ``D`` becomes ``working_rbc_diameter_px`` and all
   the work below happens at that size. Every size and distance parameter is
   a multiple of ``D`` (or of the red-cell disc area), so one configuration
   serves any magnification.
2. **Colour.** The background colour (the median of the bright pixels,
   glare excluded, then a quadratic surface fitted to the background to
   remove vignetting; :mod:`smearflow.segmentation.colour`) divides each channel, so that the background is 1.0 in
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
(:func:`smearflow.datasets.holdout_split`, seed ``"smearflow"``).

White-cell masks, the nucleus mask and platelet masks are resized back to the
field; all returned geometry is in field pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from smearflow.serialisable import SerialisableConfig
from smearflow.segmentation.base import Segmentation
from smearflow.segmentation.border import apply_border_rule
from smearflow.segmentation.colour import blue_minus_green, fit_illumination, foreground_score
from smearflow.segmentation.diameter import DiameterConfig, estimate_diameter_and_illumination
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

__all__ = ["ClassicalConfig", "ClassicalSegmenter", "build_segmenter"]

_SURROUND_WIDTH_RBC = 0.1
_DISC_FILTER_INNER = 0.9
_DISC_FILTER_OUTER = 1.4
_KMEANS_ITERATIONS = 10


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
        self.diameter_config()  # validates the clamp range of the estimate
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

    def diameter_config(self) -> DiameterConfig:
        """The settings of the red-cell diameter estimate this configuration implies."""
        return DiameterConfig(
            min_rbc_diameter_px=self.min_rbc_diameter_px,
            max_rbc_diameter_px=self.max_rbc_diameter_px,
            foreground_min=self.foreground_min,
            nucleus_blue_green_min=self.nucleus_blue_green_min,
            max_pallor_area_rbc=self.max_pallor_area_rbc,
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
        config = self.config
        if config.rbc_diameter_px is not None:
            rbc_diameter_px, illumination = float(config.rbc_diameter_px), None
        else:
            rbc_diameter_px, illumination = estimate_diameter_and_illumination(image, config.diameter_config())
        small = _working_image(image, config.working_rbc_diameter_px / rbc_diameter_px)
        scale = (small.shape[0] / image.shape[0], small.shape[1] / image.shape[1])
        if illumination is None:
            illumination = fit_illumination(small)
        maps = _ColourMaps.of(illumination.balance(small), rbc_diameter_px * math.sqrt(scale[0] * scale[1]), config)

        wbc_labels, nucleus_work = _white_cells(maps, config)
        platelet_labels = _platelets(maps, config, wbc_labels, nucleus_work)
        rbc_labels = _red_cells(maps, config, wbc_labels, platelet_labels)
        labels_by_kind = (("wbc", wbc_labels), ("platelet", platelet_labels), ("rbc", rbc_labels))
        cells, nucleus_mask = _cells_in_field(labels_by_kind, nucleus_work, image.shape[:2], scale)
        return Segmentation(
            cells=apply_border_rule(cells, image.shape[:2], rbc_diameter_px),
            rbc_diameter_px=rbc_diameter_px,
            image_shape=(int(image.shape[0]), int(image.shape[1])),
            nucleus_mask=nucleus_mask,
        )


def build_segmenter(*, rbc_diameter_px: float | None = None, model_dir: str | Path | None = None) -> ClassicalSegmenter:
    """The registry's builder (:mod:`smearflow.segmentation.registry`): default settings, ``model_dir`` unused.

    Raises
    ------
    ValueError
        When ``rbc_diameter_px`` is not positive.
    """
    return ClassicalSegmenter(ClassicalConfig(rbc_diameter_px=rbc_diameter_px))


def _working_image(image: np.ndarray, scale: float) -> np.ndarray:
    """The field shrunk by ``scale`` (area interpolation); never enlarged."""
    if scale >= 1.0:
        return image
    work_shape = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
    return cv2.resize(image, (work_shape[1], work_shape[0]), interpolation=cv2.INTER_AREA)


def _cells_in_field(
    labels_by_kind, nucleus_work: np.ndarray, image_shape: tuple[int, int], scale: tuple[float, float]
) -> tuple[list[Cell], np.ndarray]:
    """Cell records in field pixels from working-resolution label images, and the field's nucleus mask."""
    cells: list[Cell] = []
    nucleus_mask = np.zeros(image_shape, dtype=bool)
    for kind, labels in labels_by_kind:
        for region_bbox, region_mask in labelled_regions(labels):
            bbox, mask = to_field(region_mask, region_bbox, image_shape, scale)
            if mask is None:
                continue
            cells.append(make_cell(kind, bbox, mask))
            if kind == "wbc":
                r0, c0, r1, c1 = region_bbox
                nucleus_bbox, nucleus_part = to_field(nucleus_work[r0:r1, c0:c1] & region_mask, region_bbox, image_shape, scale)
                if nucleus_part is not None:
                    r0, c0, r1, c1 = nucleus_bbox
                    nucleus_mask[r0:r1, c0:c1] |= nucleus_part
    return cells, nucleus_mask


@dataclass(frozen=True)
class _ColourMaps:
    """One field at the working resolution: its colour maps and the red-cell size there."""

    diameter: float
    rbc_area: float
    blue_green: np.ndarray
    blue_red: np.ndarray
    foreground: np.ndarray

    @classmethod
    def of(cls, balanced: np.ndarray, rbc_diameter_px: float, config: ClassicalConfig) -> "_ColourMaps":
        return cls(
            diameter=rbc_diameter_px,
            rbc_area=math.pi * rbc_diameter_px**2 / 4.0,
            blue_green=blue_minus_green(balanced),
            blue_red=balanced[..., 2] - balanced[..., 0],
            foreground=foreground_score(balanced) > config.foreground_min,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.foreground.shape


def _white_cells(maps: _ColourMaps, config: ClassicalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Label image of white cells (0 = none) and the nucleus mask of the kept nuclei."""
    nucleus = opened(maps.blue_green > config.nucleus_blue_green_min)
    labels = np.zeros(maps.shape, dtype=np.int32)
    if not nucleus.any():
        return labels, nucleus
    group_labels, wbc_groups, nucleus_kept = _nucleus_groups(nucleus, maps, config)
    max_margin = max(1, int(round(config.cytoplasm_max_margin_rbc * maps.diameter)))
    min_margin = int(round(config.cytoplasm_min_margin_rbc * maps.diameter))
    cytoplasm_colour = maps.foreground & (maps.blue_red > config.cytoplasm_blue_red_min)
    rows, cols = maps.shape
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


def _nucleus_groups(
    nucleus: np.ndarray, maps: _ColourMaps, config: ClassicalConfig
) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Nucleus fragments grouped into white cells.

    Returns
    -------
    group_labels : ndarray of int
        Group of each kept nucleus pixel (0 elsewhere).
    wbc_groups : list of int
        The groups that make a white cell.
    nucleus_kept : ndarray of bool
        The nucleus pixels of those groups.
    """
    n_fragments, fragment_labels, fragment_stats, _ = cv2.connectedComponentsWithStats(
        nucleus.astype(np.uint8), connectivity=8
    )
    fragment_area = fragment_stats[:, cv2.CC_STAT_AREA]
    merge_radius = max(1, int(round(0.5 * config.nucleus_merge_distance_rbc * maps.diameter)))
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
    is_wbc_group = group_area >= config.min_wbc_nucleus_area_rbc * maps.rbc_area
    is_wbc_group[0] = False
    kept_fragment = member & is_wbc_group[group_of]
    nucleus_kept = kept_fragment[fragment_labels]
    group_labels = np.where(nucleus_kept, group_labels, 0)
    return group_labels, np.flatnonzero(is_wbc_group).tolist(), nucleus_kept


def _platelets(maps: _ColourMaps, config: ClassicalConfig, wbc_labels: np.ndarray, nucleus: np.ndarray) -> np.ndarray:
    """Label image of platelets (0 = none)."""
    candidates = opened(maps.blue_red > config.platelet_blue_red_min)
    core = maps.blue_red > config.platelet_core_blue_red_min
    labels = np.zeros(maps.shape, dtype=np.int32)
    if nucleus.any():
        exclusion = max(1, int(round(config.platelet_exclusion_rbc * maps.diameter)))
        near_wbc = cv2.dilate(nucleus.astype(np.uint8), disc(exclusion)).astype(bool)
    else:
        near_wbc = np.zeros(maps.shape, dtype=bool)
    n, blob_labels, stats, _ = cv2.connectedComponentsWithStats(candidates.astype(np.uint8), connectivity=8)
    touching_wbc = np.unique(blob_labels[near_wbc & candidates])
    has_core = np.bincount(blob_labels[core & candidates], minlength=n) > 0
    min_area = config.min_platelet_area_rbc * maps.rbc_area
    max_area = config.max_platelet_area_rbc * maps.rbc_area
    next_label = 1
    for blob in range(1, n):
        area = stats[blob, cv2.CC_STAT_AREA]
        if area < min_area or blob in touching_wbc or not has_core[blob]:
            continue
        x, y, w, h = (stats[blob, k] for k in (0, 1, 2, 3))
        if _surround_foreground(maps, blob_labels, blob, (y, x, y + h, x + w)) > config.platelet_max_surround:
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
    margin = int(round(config.platelet_margin_rbc * maps.diameter))
    if margin and next_label > 1:
        # The purple granules sit inside a paler rim that is part of the platelet.
        grown = cv2.dilate(labels.astype(np.float32), disc(margin)).astype(np.int32)
        labels = np.where((labels == 0) & (wbc_labels == 0), grown, labels)
    return labels


def _surround_foreground(
    maps: _ColourMaps, blob_labels: np.ndarray, blob: int, bbox: tuple[int, int, int, int]
) -> float:
    """Share of a thin ring around a blob that is cell foreground."""
    width = max(1, int(round(_SURROUND_WIDTH_RBC * maps.diameter)))
    rows, cols = maps.shape
    r0, c0 = max(0, bbox[0] - width - 1), max(0, bbox[1] - width - 1)
    r1, c1 = min(rows, bbox[2] + width + 1), min(cols, bbox[3] + width + 1)
    blob_mask = blob_labels[r0:r1, c0:c1] == blob
    ring = cv2.dilate(blob_mask.astype(np.uint8), disc(width)).astype(bool) & ~blob_mask
    return float(maps.foreground[r0:r1, c0:c1][ring].mean()) if ring.any() else 0.0


def _red_cells(
    maps: _ColourMaps, config: ClassicalConfig, wbc_labels: np.ndarray, platelet_labels: np.ndarray
) -> np.ndarray:
    """Label image of red cells (0 = none)."""
    taken = cv2.dilate(((wbc_labels > 0) | (platelet_labels > 0)).astype(np.uint8), disc(1)).astype(bool)
    foreground = opened(maps.foreground & ~taken)
    foreground = fill_small_holes(foreground, config.max_pallor_area_rbc * maps.rbc_area)
    foreground &= ~taken
    response = cv2.filter2D(
        foreground.astype(np.float32), -1, _disc_filter(maps.diameter), borderType=cv2.BORDER_REPLICATE
    )
    window = max(3, int(round(config.rbc_peak_window_rbc * maps.diameter)) | 1)
    peaks = (
        (response == cv2.dilate(response, disc(window // 2)))
        & (response >= config.min_rbc_disc_response)
        & foreground
    )
    n_markers, markers = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)
    if n_markers <= 1:
        return np.zeros(maps.shape, dtype=np.int32)
    labels = watershed(-response, markers, mask=foreground).astype(np.int32)
    labels, n_labels = _split_oversized(maps, config, labels, n_markers)
    return drop_small_regions(
        labels,
        n_labels,
        config.min_rbc_area_rbc * maps.rbc_area,
        config.min_border_rbc_area_rbc * maps.rbc_area,
    )


def _split_oversized(
    maps: _ColourMaps, config: ClassicalConfig, labels: np.ndarray, n_labels: int
) -> tuple[np.ndarray, int]:
    """Split regions larger than ``rbc_split_area_rbc`` into ``area / rbc_split_share_rbc`` parts."""
    areas = np.bincount(labels.ravel(), minlength=n_labels)
    oversized = np.flatnonzero(areas > config.rbc_split_area_rbc * maps.rbc_area)
    oversized = oversized[oversized > 0]
    if oversized.size == 0:
        return labels, n_labels
    slices = ndimage.find_objects(labels)
    next_label = n_labels
    for label in oversized:
        n_parts = int(round(areas[label] / (config.rbc_split_share_rbc * maps.rbc_area)))
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


def _convex_hull(mask: np.ndarray) -> np.ndarray:
    points = cv2.findNonZero(mask.astype(np.uint8))
    hull_mask = np.zeros(mask.shape, dtype=np.uint8)
    if points is None:
        return hull_mask.astype(bool)
    cv2.fillConvexPoly(hull_mask, cv2.convexHull(points), 1)
    return hull_mask.astype(bool) | mask


def _component_touching(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    wanted = np.unique(labels[seed & mask])
    wanted = wanted[wanted > 0]
    return np.isin(labels, wanted) | seed
