"""The red-cell diameter of a field, estimated from its own pixels.

Every size the segmenters use is relative to the red-cell diameter, so a field
of unknown magnification needs this estimate first. The method
(:func:`estimate_rbc_diameter_px`), on the field shrunk to at most 320 pixels
a side and balanced by its background colour
(:func:`smearflow.segmentation.colour.fit_illumination`):

1. **First guess.** The foreground (pixels away from the background colour),
   with small holes (central pallor) filled, has distance-transform peaks
   about one red-cell radius deep, touching cells included; the guess is
   twice the median depth of the deeper peaks (a coarse window, then a window
   of half the first guess).
2. **Refinement.** Where at least three isolated, convex blobs without
   nucleus and of 0.6 to 3.5 times the guess exist (single red cells), the
   estimate is their median equivalent diameter.
3. The result is clamped to ``[min_rbc_diameter_px, max_rbc_diameter_px]``;
   a field with no foreground gets a sixth of its shorter side, clamped the
   same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from smearflow.serialisable import SerialisableConfig
from smearflow.segmentation.colour import Illumination, blue_minus_green, fit_illumination, foreground_score
from smearflow.segmentation.regions import as_rgb_uint8, disc, fill_small_holes, opened

__all__ = ["DiameterConfig", "estimate_diameter_and_illumination", "estimate_rbc_diameter_px"]

_MAX_SIDE_PX = 320
_FIRST_HOLE_FRACTION = 0.005
_FIRST_WINDOW_PX = 7
_MIN_BLOB_PX = 30
_MIN_NON_NUCLEUS = 0.95
_MIN_SOLIDITY = 0.9
_MIN_SINGLE_CELLS = 3
_SINGLE_HOLE_FRACTION = 0.02
_SINGLE_RANGE = (0.6, 3.5)
_MIN_PEAK_DEPTH_PX = 2.0


@dataclass(frozen=True)
class DiameterConfig(SerialisableConfig):
    """Settings of the red-cell diameter estimate.

    The classical segmenter passes its own values
    (:meth:`smearflow.segmentation.classical.ClassicalConfig.diameter_config`);
    the defaults are the classical segmenter's defaults.

    Attributes
    ----------
    min_rbc_diameter_px, max_rbc_diameter_px : float
        Range the estimate is clamped to.
    foreground_min : float
        Distance from the background colour above which a pixel belongs to a cell.
    nucleus_blue_green_min : float
        ``blue - green`` above which a pixel is nucleus (blobs with nucleus
        are not single red cells).
    max_pallor_area_rbc : float
        Largest hole in a red cell (central pallor), in red-cell disc areas.
    """

    min_rbc_diameter_px: float = 8.0
    max_rbc_diameter_px: float = 400.0
    foreground_min: float = 0.08
    nucleus_blue_green_min: float = 0.25
    max_pallor_area_rbc: float = 0.3

    def __post_init__(self):
        if not 0 < self.min_rbc_diameter_px <= self.max_rbc_diameter_px:
            raise ValueError(
                "min_rbc_diameter_px must be positive and at most max_rbc_diameter_px. Received: "
                f"min_rbc_diameter_px={self.min_rbc_diameter_px}, max_rbc_diameter_px={self.max_rbc_diameter_px}"
            )
        for name in ("foreground_min", "max_pallor_area_rbc"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name} must be positive. Received: {name}={value}")


def estimate_rbc_diameter_px(image: np.ndarray, config: DiameterConfig | None = None) -> float:
    """Estimate the red-cell diameter of a field from its own pixels (see the module docstring).

    Parameters
    ----------
    image : ndarray of shape (M, N, 3), uint8 (or float in [0, 1])
        RGB field of view.
    config : DiameterConfig, optional
        Clamp range and thresholds.

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
    return estimate_diameter_and_illumination(image, config if config is not None else DiameterConfig())[0]


def estimate_diameter_and_illumination(image: np.ndarray, config: DiameterConfig) -> tuple[float, Illumination]:
    """The red-cell diameter of a ``uint8`` RGB field and the illumination fitted on the way.

    The illumination is fitted on the shrunk field; it holds for the field at
    any resolution (see :class:`smearflow.segmentation.colour.Illumination`).
    """
    scale = min(1.0, _MAX_SIDE_PX / max(image.shape[:2]))
    if scale < 1.0:
        small = cv2.resize(
            image,
            (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
            interpolation=cv2.INTER_AREA,
        )
    else:
        small = image
    illumination = fit_illumination(small)
    balanced = illumination.balance(small)
    foreground = opened(foreground_score(balanced) > config.foreground_min)
    diameter_work = _diameter_from_foreground(foreground, _FIRST_HOLE_FRACTION * foreground.size, _FIRST_WINDOW_PX)
    if diameter_work is None:
        diameter_px = min(image.shape[:2]) / 6.0
    else:
        pallor_area = config.max_pallor_area_rbc * math.pi * diameter_work**2 / 4.0
        window = max(3, int(round(0.5 * diameter_work)))
        diameter_work = _diameter_from_foreground(foreground, pallor_area, window) or diameter_work
        not_nucleus = blue_minus_green(balanced) <= config.nucleus_blue_green_min
        diameter_work = _diameter_from_single_cells(foreground, not_nucleus, diameter_work) or diameter_work
        diameter_px = diameter_work / scale
    return float(np.clip(diameter_px, config.min_rbc_diameter_px, config.max_rbc_diameter_px)), illumination


def _diameter_from_foreground(foreground: np.ndarray, max_hole_area: float, window: int) -> float | None:
    """Twice the median depth of the deeper distance-transform peaks of the filled foreground."""
    filled = fill_small_holes(foreground, max_hole_area)
    distance = cv2.distanceTransform(filled.astype(np.uint8), cv2.DIST_L2, 5)
    peak_values = distance[(distance == cv2.dilate(distance, disc(window // 2))) & (distance >= _MIN_PEAK_DEPTH_PX)]
    if peak_values.size == 0:
        return None
    deep = peak_values[peak_values >= 0.5 * np.percentile(peak_values, 90)]
    return float(2.0 * np.median(deep))


def _diameter_from_single_cells(foreground: np.ndarray, not_nucleus: np.ndarray, first_guess: float) -> float | None:
    """Median equivalent diameter of the isolated, convex, nucleus-free blobs near the first guess's size."""
    filled = fill_small_holes(foreground, _SINGLE_HOLE_FRACTION * foreground.size)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(filled.astype(np.uint8), connectivity=8)
    rows, cols = foreground.shape
    x, y, w, h, area = (stats[:, k] for k in range(5))
    inside = (x > 0) & (y > 0) & (x + w < cols) & (y + h < rows) & (area >= _MIN_BLOB_PX)
    nucleus_free = np.bincount(labels[not_nucleus], minlength=n) >= _MIN_NON_NUCLEUS * area
    areas = []
    for blob in np.flatnonzero(inside & nucleus_free):
        if blob == 0:
            continue
        crop = (labels[y[blob] : y[blob] + h[blob], x[blob] : x[blob] + w[blob]] == blob).astype(np.uint8)
        contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        hull_area = cv2.contourArea(cv2.convexHull(np.concatenate(contours)))
        if hull_area > 0 and area[blob] / hull_area >= _MIN_SOLIDITY:
            areas.append(area[blob])
    diameters = np.sqrt(4.0 * np.asarray(areas, dtype=float) / math.pi)
    diameters = diameters[(diameters >= _SINGLE_RANGE[0] * first_guess) & (diameters <= _SINGLE_RANGE[1] * first_guess)]
    if len(diameters) < _MIN_SINGLE_CELLS:
        return None
    return float(np.median(diameters))
