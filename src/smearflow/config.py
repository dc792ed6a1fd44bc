"""Frozen, serialisable settings.

Every settings object round-trips through a plain dict (``to_dict`` /
``from_dict``) so that it can live in a model folder's ``config.json`` or a
benchmark run folder, and be reloaded with no code edits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from smearflow.segmentation.registry import check_segmenter_name
from smearflow.serialisable import SerialisableConfig

INFERENCE_PRECISIONS = ("float32", "bfloat16")
"""Number formats the classifier can compute in (``PipelineConfig.inference_precision``)."""


@dataclass(frozen=True)
class CropConfig(SerialisableConfig):
    """How a cell is cut out of its field for the classifier.

    The crop side is a multiple of the expected red-cell diameter so that the
    cropped cell fills the frame as the single-cell training images do (PBC
    images are about 5 red-cell diameters wide: 360 px with red cells of
    ~70 px), whatever the magnification.
    """

    crop_size_px: int = 224
    crop_side_rbc_diameters: float = 5.0

    def __post_init__(self):
        if self.crop_size_px < 8:
            raise ValueError(f"crop_size_px must be at least 8. Received: crop_size_px={self.crop_size_px}")
        if self.crop_side_rbc_diameters <= 0:
            raise ValueError(
                "crop_side_rbc_diameters must be positive. "
                f"Received: crop_side_rbc_diameters={self.crop_side_rbc_diameters}"
            )


@dataclass(frozen=True)
class QualityConfig(SerialisableConfig):
    """Thresholds of the field quality gate; each is a figure of :func:`smearflow.quality.field_measures`.

    Brightness levels are 8-bit levels (0 to 255) of the luma
    ``0.299 R + 0.587 G + 0.114 B``. Fractions are shares of the field's pixels
    (0 to 1) unless said otherwise. Lengths are pixels of the shrunken copy
    (see ``working_side_px``).

    Attributes
    ----------
    working_side_px : int
        The field is shrunk by an integer factor (averaging blocks of pixels)
        until its longer side is at most this before anything is measured:
        640 × 480 becomes 320 × 240. The figures are then about the same for
        any camera resolution over the same field of view.
    min_background_brightness : float
        Flag "black or very dark" below this 95th percentile of brightness
        (8-bit levels): the empty slide between cells is the brightest part of
        a smear.
    min_intensity_range : float
        Flag "blank" below this spread of brightness, 99th minus 1st
        percentile (8-bit levels).
    min_neighbour_correlation : float
        Flag "pure noise" below this correlation (-1 to 1) of each pixel's
        brightness with its right and lower neighbours; real images are
        smooth at the pixel scale (0.98 on BCCD fields), noise is not (0).
    max_edge_blur_working_px : float
        Flag "out of focus" above this blur of the sharpest edges, in pixels
        of the shrunken copy (at 640 × 480 one of them is two field pixels):
        the Gaussian sigma of an edge, estimated from how much its gradient
        drops when the image is blurred again, at the 2nd percentile of the
        edge points among the strongest 5 % of gradients that also stand 6
        noise sigmas above the noise (``noise_sigma``). Measured on the
        shrunken copy, a blur is judged relative to the field of view: a
        camera with four times the pixels over the same view gives the same
        figure.
    min_straight_edge_step : float
        A pixel is on a horizontal (vertical) edge when its brightness differs
        from the pixel below (beside) it by more than this many 8-bit levels,
        on the shrunken copy.
    max_straight_edge_fraction : float
        Flag "screenshot or window capture" above this length of the longest
        straight horizontal or vertical edge, as a share of the field's width
        (height): the border of a title bar, toolbar or panel. Cells are
        round; their straight stretches are a fraction of a cell.
    max_flat_fraction : float
        Flag "drawing or heavily compressed image" above this share of pixels
        equal in all three channels to all eight neighbours (on a grid of
        every ``factor``-th pixel, not averaged; pixels 0 or 255 in a channel,
        which clipping makes flat, are not counted). A camera's noise leaves
        no flat pixel, but JPEG compression flattens a smooth background: at
        quality 30 up to a third of a real field is flat.
    min_chroma : float
        A pixel is *coloured* when, after dividing by the background colour,
        its largest channel exceeds its smallest by this much (0 to 1).
    min_stained_fraction : float
        Flag "no stain colour" below this share of coloured pixels.
    off_stain_hue_deg : tuple of float
        ``(from, to)``: hues (degrees, after white balance) a Romanowsky stain
        does not give: orange, yellow, green, cyan. Stains lie from blue
        through purple and pink to red.
    max_off_stain_fraction : float
        Flag "colours a Romanowsky stain does not give" above this share of
        the colour (pixels weighted by chroma) in ``off_stain_hue_deg``.
    dark_level : float
        A pixel is *dark* below this fraction of the background brightness.
    max_dark_fraction : float
        Flag "large dark areas" above this share of dark pixels.
    min_rbc_count : int
        Flag "too few red cells" below this count (when one is given).
    """

    working_side_px: int = 320
    min_background_brightness: float = 100.0
    min_intensity_range: float = 25.0
    min_neighbour_correlation: float = 0.5
    max_edge_blur_working_px: float = 1.1
    min_straight_edge_step: float = 12.0
    max_straight_edge_fraction: float = 0.5
    max_flat_fraction: float = 0.5
    min_chroma: float = 0.08
    min_stained_fraction: float = 0.05
    off_stain_hue_deg: tuple[float, float] = (30.0, 200.0)
    max_off_stain_fraction: float = 0.15
    dark_level: float = 0.4
    max_dark_fraction: float = 0.15
    min_rbc_count: int = 3

    def __post_init__(self):
        if isinstance(self.off_stain_hue_deg, list):
            object.__setattr__(self, "off_stain_hue_deg", tuple(self.off_stain_hue_deg))
        if isinstance(self.working_side_px, bool) or not isinstance(self.working_side_px, int) or self.working_side_px < 64:
            raise ValueError(
                f"working_side_px must be an integer of at least 64. Received: working_side_px={self.working_side_px!r}"
            )
        for name in ("min_background_brightness", "min_intensity_range"):
            _require(name, getattr(self, name), 0.0, 255.0, "an 8-bit level in [0, 255]")
        _require("min_neighbour_correlation", self.min_neighbour_correlation, -1.0, 1.0, "in [-1, 1]")
        _require("max_edge_blur_working_px", self.max_edge_blur_working_px, 0.0, math.inf, "positive", open_low=True)
        _require("min_straight_edge_step", self.min_straight_edge_step, 0.0, 255.0, "an 8-bit level in [0, 255]")
        for name in (
            "max_straight_edge_fraction",
            "max_flat_fraction",
            "min_chroma",
            "min_stained_fraction",
            "max_off_stain_fraction",
            "dark_level",
            "max_dark_fraction",
        ):
            _require(name, getattr(self, name), 0.0, 1.0, "a fraction in [0, 1]")
        hues = self.off_stain_hue_deg
        if (
            not isinstance(hues, tuple)
            or len(hues) != 2
            or not all(isinstance(h, (int, float)) and 0.0 <= h <= 360.0 for h in hues)
            or not hues[0] < hues[1]
        ):
            raise ValueError(
                "off_stain_hue_deg must be two hues (from, to) in [0, 360] degrees with from < to. "
                f"Received: off_stain_hue_deg={hues!r}"
            )
        if isinstance(self.min_rbc_count, bool) or not isinstance(self.min_rbc_count, int) or self.min_rbc_count < 0:
            raise ValueError(
                f"min_rbc_count must be zero or a positive integer. Received: min_rbc_count={self.min_rbc_count!r}"
            )


def _require(name: str, value, low: float, high: float, what: str, open_low: bool = False) -> None:
    number_ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number_ok or value < low or value > high or (open_low and value <= low):
        raise ValueError(f"{name} must be {what}. Received: {name}={value!r}")


@dataclass(frozen=True)
class PipelineConfig(SerialisableConfig):
    """Settings of the analyse-one-slide pipeline.

    Attributes
    ----------
    segmenter : str
        Which segmenter finds the cells: a name in
        ``smearflow.segmentation.SEGMENTERS`` (``classical`` or ``unet``).
    min_visible_fraction : float
        A border cell with less of itself inside the field is counted (by the
        border rule) but not sent to the classifier.
    classify_platelets : bool
        Also crop and classify platelet candidates (their count comes from
        segmentation either way).
    batch_size : int
        Crops per classifier call, gathered across the fields of a slide.
    max_batch_pixels : int
        Most input pixels (crops × side²) in one forward pass of the network:
        a large network's pass is cut below ``batch_size`` crops, as its
        activation memory grows with the batch (about 150 MB per 224 px crop
        for the hybrid on a CPU). The default takes 36 crops at 64 px and 3
        at 224 px (the hybrid stays under 2 GB; with 5 it peaked at 2.2 GB).
    prefetch_fields : int
        Fields read, checked and segmented ahead in a background thread while
        the classifier works (0: none, everything in the caller's thread).
        Memory holds about this many prepared fields, never the whole slide.
    prepare_threads : int
        Threads that read, check and segment fields at once (with
        ``prefetch_fields`` above 0). Segmentation and decoding release the
        GIL for most of their time, so a second thread prepares fields
        faster when a core is free; each thread must be able to call the
        segmenter at the same time as the others.
    inference_precision : {"float32", "bfloat16"}
        Numbers the classifier computes with: ``bfloat16`` runs the network
        under Keras' ``mixed_bfloat16`` policy (weights stay float32); faster
        only on hardware with bfloat16 arithmetic.
    wbc_never_platelet : bool
        A candidate the segmenter found as a white cell (nucleus and
        cytoplasm, white-cell size) gets the most probable white-cell class:
        the classifier's ``platelet`` class is ruled out for it.
    max_field_pixels : int
        A field with more pixels is refused from its header, before decoding.
    min_field_side_px : int
        A field narrower or lower than this is refused.
    check_quality : bool
        Flag fields that are not usable stained smears (``quality``) and
        leave them out of the counts.
    quality : QualityConfig
        The thresholds of the field quality gate.
    confidence_threshold : float, optional
        A classified cell whose top probability is below this is
        ``uncertain`` (counted, and shown first for review); the model
        folder's recommended threshold (``calibration.json``) when ``None``.
    """

    segmenter: str = "classical"
    min_visible_fraction: float = 0.6
    classify_platelets: bool = True
    batch_size: int = 64
    max_batch_pixels: int = 3 * 224 * 224
    prefetch_fields: int = 2
    prepare_threads: int = 1
    inference_precision: str = "float32"
    wbc_never_platelet: bool = True
    crop: CropConfig = CropConfig()
    max_field_pixels: int = 40_000_000
    min_field_side_px: int = 64
    check_quality: bool = True
    quality: QualityConfig = QualityConfig()
    confidence_threshold: float | None = None

    def __post_init__(self):
        check_segmenter_name(self.segmenter)
        if not 0.0 <= self.min_visible_fraction <= 1.0:
            raise ValueError(
                f"min_visible_fraction must be in [0, 1]. Received: min_visible_fraction={self.min_visible_fraction}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1. Received: batch_size={self.batch_size}")
        for name, least in (("prefetch_fields", 0), ("prepare_threads", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be a whole number of at least {least}. Received: {name}={value!r}")
        if self.inference_precision not in INFERENCE_PRECISIONS:
            raise ValueError(
                f"inference_precision must be one of {list(INFERENCE_PRECISIONS)}. "
                f"Received: inference_precision={self.inference_precision!r}"
            )
        if self.confidence_threshold is not None and not 0.0 <= self.confidence_threshold <= 1.0:
            raise ValueError(
                f"confidence_threshold must be in [0, 1]. Received: confidence_threshold={self.confidence_threshold}"
            )
        for name in ("max_field_pixels", "min_field_side_px", "max_batch_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1. Received: {name}={getattr(self, name)}")
        if isinstance(self.crop, dict):
            object.__setattr__(self, "crop", CropConfig.from_dict(self.crop))
        if isinstance(self.quality, dict):
            object.__setattr__(self, "quality", QualityConfig.from_dict(self.quality))
