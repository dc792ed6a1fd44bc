"""A field's background colour and the colour maps the segmenters threshold.

A field is *balanced* when each channel is divided by the background colour,
so that the background is 1.0 in every channel whatever the lamp and the
stain's cast. The background colour is the median of the pixels between the
80th and 97th brightness percentile (the brightest few percent are glare);
:func:`fit_illumination` also fits a quadratic surface per channel to the
background pixels, removing vignetting. Pure functions on arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Illumination", "background_rgb", "blue_minus_green", "fit_illumination", "foreground_score"]

_ILLUMINATION_SAMPLES = 3000
_SURFACE_GRID = 16
_FLAT_FIELD_BACKGROUND_MAX = 0.08
_FLAT_FIELD_MIN_PIXELS = 50


def _sample_step(image: np.ndarray, max_samples: int) -> int:
    rows, cols = image.shape[:2]
    return max(1, int(math.sqrt(rows * cols / max_samples)))


def background_rgb(image: np.ndarray, max_samples: int) -> np.ndarray:
    """The background colour of a field.

    Parameters
    ----------
    image : ndarray of shape (M, N, 3), uint8 or float
        RGB field.
    max_samples : int
        About this many pixels, on a regular grid, are looked at.

    Returns
    -------
    ndarray of shape (3,), float32
        Median RGB of the sampled pixels between the 80th and 97th brightness
        percentile.
    """
    step = _sample_step(image, max_samples)
    pixels = image[::step, ::step].reshape(-1, 3).astype(np.float32)
    brightness = pixels.sum(axis=1)
    # The brightest few percent are glare and refraction spots, not background.
    low, high = np.percentile(brightness, [80, 97])
    chosen = pixels[(brightness >= low) & (brightness <= high)]
    return np.median(chosen if len(chosen) else pixels, axis=0)


def blue_minus_green(balanced: np.ndarray) -> np.ndarray:
    """``blue - green`` of a balanced field: high only on nuclear chromatin."""
    # Nuclear chromatin passes blue and absorbs green far more than
    # haemoglobin, cytoplasm or background do, whatever the stain's cast:
    # blue - red fails on reddish-purple nuclei, blue - green does not.
    return balanced[..., 2] - balanced[..., 1]


def foreground_score(balanced: np.ndarray) -> np.ndarray:
    """Distance of each pixel of a balanced field from the background colour (1, 1, 1)."""
    difference = 1.0 - np.minimum(balanced, 1.5)
    return np.sqrt(np.einsum("ijk,ijk->ij", difference, difference))


@dataclass(frozen=True)
class Illumination:
    """Background colour of a field as a quadratic surface per channel.

    ``coefficients`` multiply ``(1, x, y, x^2, x y, y^2)`` with ``x`` and
    ``y`` the column and row as fractions of the field, centred on 0, so one
    fit serves the field at any resolution; ``None`` means a flat background.
    """

    background: np.ndarray
    coefficients: np.ndarray | None

    def balance(self, image: np.ndarray) -> np.ndarray:
        """The image divided by its background: 1.0 in every channel on background (float32)."""
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


def fit_illumination(image: np.ndarray) -> Illumination:
    """Fit the background colour of a field, vignetting included.

    Parameters
    ----------
    image : ndarray of shape (M, N, 3), uint8
        RGB field.

    Returns
    -------
    Illumination
        Flat (``coefficients=None``) when fewer than 50 sampled pixels look
        like background.
    """
    rows, cols = image.shape[:2]
    step = _sample_step(image, _ILLUMINATION_SAMPLES)
    sample = image[::step, ::step].astype(np.float32)
    background = background_rgb(image, _ILLUMINATION_SAMPLES)
    balanced = sample / np.maximum(background, 1.0)
    # Uneven illumination (vignetting) is removed by a quadratic surface
    # fitted per channel to the pixels that look like background.
    is_background = foreground_score(balanced) < _FLAT_FIELD_BACKGROUND_MAX
    if np.count_nonzero(is_background) < _FLAT_FIELD_MIN_PIXELS:
        return Illumination(background, None)
    grid_rows, grid_cols = np.mgrid[0:rows:step, 0:cols:step]
    y = grid_rows[is_background] / rows - 0.5
    x = grid_cols[is_background] / cols - 0.5
    design = np.column_stack([np.ones_like(x), x, y, x * x, x * y, y * y])
    coefficients, *_ = np.linalg.lstsq(design, balanced[is_background], rcond=None)
    return Illumination(background, coefficients)
