"""Is this field a usable stained blood smear? A quality gate run before segmentation.

:func:`assess_field` measures a handful of figures on a shrunken copy of one
RGB field (a few milliseconds at 640 × 480) and flags the field, with a reason
a technologist understands, when it is not a usable Romanowsky-stained smear:

- **black or very dark** — the brightest part of the field (the empty slide
  between cells) is dark: the lamp was off or the shutter closed;
- **blank** — no contrast at all: an empty slide, a uniform image;
- **pure noise** — neighbouring pixels are unrelated, as in a camera fault;
- **out of focus** — even the sharpest edges are blurred over several pixels;
- **screenshot or window capture** — a long straight edge (a title bar, a
  toolbar, a panel); cells are round;
- **drawing or heavily compressed image** — most of the field exactly flat,
  which a camera's noise never gives;
- **no stain colour** — a grey image stored as RGB;
- **colours a Romanowsky stain does not give** — stains are pink, red, purple
  and blue on a light background; orange, yellow, green and cyan are not;
- **large dark areas** — a photograph of something else (a smear's darkest
  objects, the nuclei, cover a few per cent of a field);
- **too few red cells** — when the segmenter's red-cell count is given.

The first three make every other figure meaningless, so they are decided
first and alone. Every threshold is a field of :class:`QualityConfig`, named
with its unit; docs/field-quality.md gives the figures measured on real and
generated fields. Pure compute: arrays in, a dataclass out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from smearflow.config import QualityConfig

__all__ = ["MEASURE_THRESHOLDS", "FieldQuality", "QualityConfig", "assess_field", "field_measures"]

MEASURE_THRESHOLDS = {
    "background_brightness": "min_background_brightness",
    "intensity_range": "min_intensity_range",
    "neighbour_correlation": "min_neighbour_correlation",
    "edge_blur_working_px": "max_edge_blur_working_px",
    "straight_edge_fraction": "max_straight_edge_fraction",
    "flat_fraction": "max_flat_fraction",
    "stained_fraction": "min_stained_fraction",
    "off_stain_fraction": "max_off_stain_fraction",
    "dark_fraction": "max_dark_fraction",
    "rbc_count": "min_rbc_count",
}
"""The :class:`QualityConfig` field each measure is compared with: a field is flagged
below a ``min_`` threshold or above a ``max_`` one. (``shrink_factor`` and
``noise_sigma`` are not compared with anything; they qualify other figures.)"""

_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
"""ITU-R BT.601 luma, the brightness a grey conversion would give."""

_MIN_SIDE_PX = 16
_EDGE_PRESMOOTH_SIGMA_PX = 0.7
_EDGE_REBLUR_SIGMA_PX = 2.0
_EDGE_TOP_GRADIENT_FRACTION = 0.05
_EDGE_SHARPEST_PERCENTILE = 2.0
_EDGE_BLUR_CAP_PX = 100.0
_MIN_EDGE_GRADIENT = 2.0
_EDGE_MIN_NOISE_MULTIPLE = 6.0
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
_BACKGROUND_TOP_FRACTION = 0.10
_MAX_BALANCED = 1.5  # glare brighter than the background is not colour


@dataclass(frozen=True)
class FieldQuality:
    """The verdict on one field.

    Attributes
    ----------
    usable : bool
        False when at least one reason was found.
    reasons : tuple of str
        Why the field is not usable, in plain words with the figure and the
        threshold, for example ``"blank field (no contrast: intensity range 3 < 25)"``;
        empty when usable.
    measures : dict of str to float
        Every figure the decision used (see :func:`field_measures`), and
        ``rbc_count`` when one was given.
    """

    usable: bool
    reasons: tuple[str, ...]
    measures: dict[str, float] = field(compare=False)


def assess_field(
    image: np.ndarray, config: QualityConfig = QualityConfig(), *, rbc_count: int | None = None
) -> FieldQuality:
    """Decide whether a field is a usable stained blood smear.

    Parameters
    ----------
    image : ndarray of shape (M, N, 3), uint8
        The RGB field, as :func:`smearflow.imageio.read_rgb` returns it; M and
        N at least 16.
    config : QualityConfig
        The thresholds.
    rbc_count : int, optional
        Red cells the segmenter counted in the field; when given, fewer than
        ``config.min_rbc_count`` flags the field.

    Returns
    -------
    FieldQuality

    Raises
    ------
    ValueError
        When ``image`` is not an (M, N, 3) uint8 array with M, N >= 16, or
        ``rbc_count`` is negative or not an integer.
    """
    _check_image(image)
    if rbc_count is not None and (
        isinstance(rbc_count, bool) or not isinstance(rbc_count, (int, np.integer)) or rbc_count < 0
    ):
        raise ValueError(f"rbc_count must be a non-negative integer or None. Received: rbc_count={rbc_count!r}")
    measures = field_measures(image, config)
    reasons = _contentless_reasons(measures, config)
    if not reasons:
        reasons = _content_reasons(measures, config)
        if rbc_count is not None and rbc_count < config.min_rbc_count:
            reasons.append(f"too few red cells ({int(rbc_count)} < {config.min_rbc_count})")
    if rbc_count is not None:
        measures["rbc_count"] = float(rbc_count)
    return FieldQuality(usable=not reasons, reasons=tuple(reasons), measures=measures)


def field_measures(image: np.ndarray, config: QualityConfig = QualityConfig()) -> dict[str, float]:
    """The figures :func:`assess_field` decides on.

    Parameters
    ----------
    image : ndarray of shape (M, N, 3), uint8
    config : QualityConfig
        Its ``working_side_px``, ``min_chroma``, ``off_stain_hue_deg`` and
        ``dark_level`` define some of the figures.

    Returns
    -------
    measures : dict of str to float
        ``shrink_factor`` (the field was shrunk by this integer factor),
        ``background_brightness``, ``intensity_range`` (8-bit levels) and
        ``neighbour_correlation`` always; when the field has content (not
        dark, blank or noise) also ``noise_sigma`` (8-bit levels, on the
        shrunken copy), ``edge_blur_working_px`` (pixels of the shrunken
        copy, capped at 100: no edge stands out of the noise),
        ``straight_edge_fraction``,
        ``flat_fraction``, ``stained_fraction``,
        ``off_stain_fraction`` and ``dark_fraction``.

    Raises
    ------
    ValueError
        When ``image`` is not an (M, N, 3) uint8 array with M, N >= 16.
    """
    _check_image(image)
    factor = max(1, math.ceil(max(image.shape[:2]) / config.working_side_px))
    small = _shrink(image, factor)
    luma = small @ _LUMA_WEIGHTS
    low, background, high = np.percentile(luma, [1.0, 95.0, 99.0])
    measures = {
        "shrink_factor": float(factor),
        "background_brightness": float(background),
        "intensity_range": float(high - low),
        "neighbour_correlation": _neighbour_correlation(luma),
    }
    if _contentless_reasons(measures, config):
        return measures
    noise = _noise_sigma(luma)
    measures["noise_sigma"] = noise
    measures["edge_blur_working_px"] = _edge_blur_working_px(luma, noise)
    measures["straight_edge_fraction"] = _straight_edge_fraction(luma, config.min_straight_edge_step)
    measures["flat_fraction"] = _flat_fraction(image[::factor, ::factor])
    measures.update(_colour_measures(small, luma, config))
    return measures


def _check_image(image) -> None:
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.ndim != 3
        or image.shape[2] != 3
        or min(image.shape[:2]) < _MIN_SIDE_PX
    ):
        shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", type(image).__name__)
        raise ValueError(
            f"image must be an (M, N, 3) uint8 RGB array with M, N >= {_MIN_SIDE_PX}. "
            f"Received: shape={shape}, dtype={dtype}"
        )


def _contentless_reasons(measures: dict[str, float], config: QualityConfig) -> list[str]:
    background = measures["background_brightness"]
    if background < config.min_background_brightness:
        return [f"black or very dark field (background brightness {background:.0f} < {config.min_background_brightness:.0f})"]
    spread = measures["intensity_range"]
    if spread < config.min_intensity_range:
        return [f"blank field (no contrast: intensity range {spread:.0f} < {config.min_intensity_range:.0f})"]
    correlation = measures["neighbour_correlation"]
    if correlation < config.min_neighbour_correlation:
        return [
            "pure noise (neighbouring pixels unrelated: correlation "
            f"{correlation:.2f} < {config.min_neighbour_correlation:.2f})"
        ]
    return []


def _content_reasons(measures: dict[str, float], config: QualityConfig) -> list[str]:
    reasons = []
    blur = measures["edge_blur_working_px"]
    factor = int(measures["shrink_factor"])
    scale = "at full size" if factor == 1 else f"at 1/{factor} size"
    if blur >= _EDGE_BLUR_CAP_PX:
        reasons.append(f"out of focus (no edge stands out of the noise of {measures['noise_sigma']:.1f} levels)")
    elif blur > config.max_edge_blur_working_px:
        reasons.append(
            f"out of focus (sharpest edges blurred over {blur:.2f} px > {config.max_edge_blur_working_px:.2f} px, "
            f"measured {scale})"
        )
    straight = measures["straight_edge_fraction"]
    if straight > config.max_straight_edge_fraction:
        reasons.append(
            f"screenshot or window capture, not a camera field (a straight edge runs across {straight:.0%} of the "
            f"field > {config.max_straight_edge_fraction:.0%})"
        )
    flat = measures["flat_fraction"]
    if flat > config.max_flat_fraction:
        reasons.append(
            f"drawing or heavily compressed image, not a camera field ({flat:.0%} of the field perfectly flat "
            f"> {config.max_flat_fraction:.0%})"
        )
    stained = measures["stained_fraction"]
    if stained < config.min_stained_fraction:
        reasons.append(
            f"no stain colour, a grey image ({stained:.1%} of pixels coloured < {config.min_stained_fraction:.0%})"
        )
    off = measures["off_stain_fraction"]
    if off > config.max_off_stain_fraction:
        reasons.append(
            "colours a Romanowsky stain does not give (orange, yellow, green or cyan: "
            f"{off:.0%} of the colour > {config.max_off_stain_fraction:.0%})"
        )
    dark = measures["dark_fraction"]
    if dark > config.max_dark_fraction:
        reasons.append(
            f"not a blood smear: large dark areas ({dark:.0%} of the field darker than {config.dark_level:.0%} "
            f"of the background > {config.max_dark_fraction:.0%})"
        )
    return reasons


def _shrink(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor`` × ``factor`` blocks (rounded to 8-bit levels), as float32; the ragged edge is dropped."""
    import cv2

    rows, cols = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    if factor > 1:
        # At an integer factor, area interpolation is the block mean; on uint8 it
        # costs 30 ms for a 12-megapixel field, where float32 would take 0.5 s.
        image = cv2.resize(np.ascontiguousarray(image[:rows, :cols]), (cols // factor, rows // factor), interpolation=cv2.INTER_AREA)
    return image.astype(np.float32)


def _neighbour_correlation(luma: np.ndarray) -> float:
    variance = float(luma.var())
    if variance < 1e-6:
        return 1.0  # a uniform image is perfectly predictable (and flagged blank before this matters)
    right = np.diff(luma, axis=1)
    down = np.diff(luma, axis=0)
    mean_square_step = 0.5 * (float(np.mean(right * right)) + float(np.mean(down * down)))
    return 1.0 - mean_square_step / (2.0 * variance)


def _noise_sigma(luma: np.ndarray) -> float:
    """Standard deviation of the pixel noise, 8-bit levels (Immerkær, CVIU 1996: a Laplacian difference filter)."""
    import cv2

    response = cv2.filter2D(luma, cv2.CV_32F, _NOISE_KERNEL)[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2.0) / 6.0 * np.abs(response).mean())


def _edge_blur_working_px(luma: np.ndarray, noise_sigma: float) -> float:
    """Blur (Gaussian sigma, working pixels) of the sharpest edges: the re-blur gradient ratio.

    For an edge blurred by ``s``, the gradient peak after a further Gaussian
    of ``a`` falls by ``R = sqrt((s² + a²) / s²)``, so ``s = a / sqrt(R² - 1)``
    whatever the edge's height (Zhuo and Sim, Pattern Recognition 2011). It is
    measured at edge points (gradient maxima across the edge) among the
    strongest 5 % of gradients, and the 2nd percentile is kept: a field is in
    focus when some of its edges are sharp, and the lowest percentiles are
    the first a defocus moves. Noise steepens edges at random, so an edge
    point must also stand 6 noise sigmas above it; when none does, the field
    gets the cap of 100 px (no edge stands out of the noise).
    """
    import cv2

    presmoothed = cv2.GaussianBlur(luma, (0, 0), _EDGE_PRESMOOTH_SIGMA_PX)
    reblurred = cv2.GaussianBlur(presmoothed, (0, 0), _EDGE_REBLUR_SIGMA_PX)
    grad_x, grad_y = _gradient(presmoothed)
    magnitude = cv2.magnitude(grad_x, grad_y)
    level = max(
        float(np.percentile(magnitude, 100.0 * (1.0 - _EDGE_TOP_GRADIENT_FRACTION))),
        _MIN_EDGE_GRADIENT,
        _EDGE_MIN_NOISE_MULTIPLE * noise_sigma,
    )
    rows, cols = np.nonzero(magnitude[1:-1, 1:-1] >= level)
    rows += 1
    cols += 1
    keep = _edge_maxima(magnitude, grad_x[rows, cols], grad_y[rows, cols], rows, cols)
    if not keep.any():
        return _EDGE_BLUR_CAP_PX
    rows, cols = rows[keep], cols[keep]
    reblur_x, reblur_y = _gradient(reblurred)
    ratio = magnitude[rows, cols] / np.maximum(np.hypot(reblur_x[rows, cols], reblur_y[rows, cols]), 1e-6)
    sigma_total = _EDGE_REBLUR_SIGMA_PX / np.sqrt(np.maximum(ratio * ratio - 1.0, 1e-6))
    sigma = np.sqrt(np.maximum(sigma_total * sigma_total - _EDGE_PRESMOOTH_SIGMA_PX**2, 0.0))
    return float(min(np.percentile(sigma, _EDGE_SHARPEST_PERCENTILE), _EDGE_BLUR_CAP_PX))


def _gradient(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    grad_x = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    grad_y = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    return grad_x, grad_y


_ACROSS_EDGE_STEPS = np.array([(0, 1), (1, 1), (1, 0), (1, -1)])
"""(row, col) step across an edge whose gradient points at 0°, 45°, 90° and 135°."""


def _edge_maxima(magnitude, grad_x, grad_y, rows, cols) -> np.ndarray:
    """Which of the points (``rows``, ``cols``, not on the border) are gradient maxima across their edge."""
    angle = np.mod(np.degrees(np.arctan2(grad_y, grad_x)), 180.0)
    steps = _ACROSS_EDGE_STEPS[(np.floor((angle + 22.5) / 45.0).astype(np.intp)) % 4]
    centre = magnitude[rows, cols]
    ahead = magnitude[rows + steps[:, 0], cols + steps[:, 1]]
    behind = magnitude[rows - steps[:, 0], cols - steps[:, 1]]
    return (centre >= ahead) & (centre >= behind)


def _straight_edge_fraction(luma: np.ndarray, min_step: float) -> float:
    """Longest horizontal or vertical run of edge pixels, as a share of the field's width or height."""
    horizontal_edges = np.abs(np.diff(luma, axis=0)) > min_step
    vertical_edges = np.abs(np.diff(luma, axis=1)) > min_step
    return max(
        _longest_run(horizontal_edges) / luma.shape[1],
        _longest_run(vertical_edges.T) / luma.shape[0],
    )


def _longest_run(mask: np.ndarray) -> int:
    """Longest run of True along the rows of a 2-D boolean array."""
    if mask.size == 0:
        return 0
    position = np.arange(1, mask.shape[1] + 1)
    last_gap = np.maximum.accumulate(np.where(mask, 0, position), axis=1)
    return int((position - last_gap).max())


def _flat_fraction(grid: np.ndarray) -> float:
    """Share of pixels equal to all eight neighbours in every channel, clipped pixels not counted."""
    import cv2

    # A pixel equals its eight neighbours in a channel when the 3 x 3 maximum there is the 3 x 3 minimum.
    grid = np.ascontiguousarray(grid)
    square = np.ones((3, 3), np.uint8)
    red, green, blue = cv2.split(cv2.absdiff(cv2.dilate(grid, square), cv2.erode(grid, square)))
    flat = (cv2.max(cv2.max(red, green), blue) == 0)[1:-1, 1:-1]  # numpy's any(axis=2) took 20 times longer
    values = grid[1:-1, 1:-1][flat]
    unclipped = ~np.any((values == 0) | (values == 255), axis=1)
    return float(np.count_nonzero(unclipped)) / max(flat.size, 1)


def _colour_measures(small: np.ndarray, luma: np.ndarray, config: QualityConfig) -> dict[str, float]:
    bright = luma >= np.percentile(luma, 100.0 * (1.0 - _BACKGROUND_TOP_FRACTION))
    background = np.median(small[bright], axis=0)
    red, green, blue = (
        np.minimum(small[..., channel] * np.float32(1.0 / max(background[channel], 1.0)), np.float32(_MAX_BALANCED))
        for channel in range(3)
    )
    chroma = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    coloured = chroma > config.min_chroma
    red, green, blue, chroma = red[coloured], green[coloured], blue[coloured], chroma[coloured]
    hue = np.mod(np.degrees(np.arctan2(math.sqrt(3.0) * (green - blue), 2.0 * red - green - blue)), 360.0)
    hue_from, hue_to = config.off_stain_hue_deg
    colour_mass = float(chroma.sum())
    off_stain_mass = float(chroma[(hue > hue_from) & (hue < hue_to)].sum())
    background_luma = float(background @ _LUMA_WEIGHTS)
    return {
        "stained_fraction": float(np.count_nonzero(coloured)) / coloured.size,
        "off_stain_fraction": off_stain_mass / colour_mass if colour_mass > 0 else 0.0,
        "dark_fraction": float(np.count_nonzero(luma < config.dark_level * background_luma)) / luma.size,
    }
