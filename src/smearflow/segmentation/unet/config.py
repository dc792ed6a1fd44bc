"""Settings of a U-Net segmenter: architecture, scale, tiling, thresholds and post-processing.

A :class:`UNetConfig` is the ``config.json`` of a model folder (see
:mod:`smearflow.segmentation.unet.folder`); it round-trips through a dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from smearflow.serialisable import SerialisableConfig
from smearflow.segmentation.unet.network import CHANNELS, UNET_ARCHITECTURES, check_filters

__all__ = ["UNetConfig", "UNetPostprocess", "UNetThresholds", "build_from_config"]


@dataclass(frozen=True)
class UNetThresholds(SerialisableConfig):
    """Probability above which a pixel belongs to each channel."""

    nucleus: float = 0.5
    wbc: float = 0.5
    rbc: float = 0.5
    platelet: float = 0.5

    def __post_init__(self):
        for name in CHANNELS:
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"thresholds.{name} must be in (0, 1). Received: {name}={value}")


@dataclass(frozen=True)
class UNetPostprocess(SerialisableConfig):
    """Sizes used to turn probabilities into cells.

    Suffix ``_rbc``: a multiple of the red-cell diameter ``D``; suffix
    ``_area_rbc``: a multiple of the red-cell disc area ``pi D^2 / 4``.
    """

    min_wbc_nucleus_area_rbc: float = 0.15
    min_wbc_area_rbc: float = 0.3
    nucleus_merge_distance_rbc: float = 1.0
    max_nucleus_hole_area_rbc: float = 0.1
    min_platelet_area_rbc: float = 0.005
    max_platelet_area_rbc: float = 0.25
    platelet_exclusion_rbc: float = 0.1
    max_pallor_area_rbc: float = 0.3
    rbc_peak_window_rbc: float = 0.5
    min_rbc_peak_rbc: float = 0.2
    min_rbc_area_rbc: float = 0.25
    min_border_rbc_area_rbc: float = 0.1

    def __post_init__(self):
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "platelet_exclusion_rbc":
                if value < 0:
                    raise ValueError(f"{item.name} must be zero or positive. Received: {item.name}={value}")
            elif not value > 0:
                raise ValueError(f"{item.name} must be positive. Received: {item.name}={value}")
        if self.min_platelet_area_rbc >= self.max_platelet_area_rbc:
            raise ValueError(
                "min_platelet_area_rbc must be below max_platelet_area_rbc. Received: "
                f"min_platelet_area_rbc={self.min_platelet_area_rbc}, max_platelet_area_rbc={self.max_platelet_area_rbc}"
            )


@dataclass(frozen=True)
class UNetConfig(SerialisableConfig):
    """Architecture, scale and post-processing of a U-Net segmenter (``config.json``).

    Attributes
    ----------
    architecture : str
        Name in :data:`UNET_ARCHITECTURES`.
    filters : tuple of int
        Filters per level, from the full-resolution level to the bottleneck;
        ``depth = len(filters) - 1`` poolings.
    channels : tuple of str
        Output channels; must equal :data:`CHANNELS`.
    input_size_px : int
        Side of the square training patches (inference takes any size).
    working_rbc_diameter_px : float
        Red-cell diameter at the network's resolution.
    rbc_diameter_px : float or None
        Red-cell diameter of the fields in pixels; ``None`` estimates it per field.
    max_upscale : float
        Largest enlargement of a field on its way to the working resolution.
    max_tile_px : int
        Fields larger than this at the working resolution are predicted in
        overlapping tiles (multiple of ``2 ** depth``).
    tile_overlap_px : int
        Margin of each tile that is discarded where tiles meet.
    flip_averaging : bool
        Average the probabilities over the field and its three mirror images
        (test-time augmentation; four times the network's work).
    thresholds : UNetThresholds
    postprocess : UNetPostprocess
    """

    architecture: str = "unet"
    filters: tuple[int, ...] = (16, 32, 64, 128)
    channels: tuple[str, ...] = CHANNELS
    input_size_px: int = 128
    working_rbc_diameter_px: float = 32.0
    rbc_diameter_px: float | None = None
    max_upscale: float = 1.0
    max_tile_px: int = 1024
    tile_overlap_px: int = 32
    flip_averaging: bool = True
    thresholds: UNetThresholds = UNetThresholds()
    postprocess: UNetPostprocess = UNetPostprocess()

    def __post_init__(self):
        if isinstance(self.thresholds, dict):
            object.__setattr__(self, "thresholds", UNetThresholds.from_dict(self.thresholds))
        if isinstance(self.postprocess, dict):
            object.__setattr__(self, "postprocess", UNetPostprocess.from_dict(self.postprocess))
        object.__setattr__(self, "filters", tuple(self.filters))
        object.__setattr__(self, "channels", tuple(self.channels))
        if self.architecture not in UNET_ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {sorted(UNET_ARCHITECTURES)}. Received: architecture={self.architecture!r}"
            )
        check_filters(self.filters)
        if self.channels != CHANNELS:
            raise ValueError(f"channels must be {list(CHANNELS)}. Received: channels={list(self.channels)}")
        if self.input_size_px < self.multiple_px or self.input_size_px % self.multiple_px:
            raise ValueError(
                f"input_size_px must be a positive multiple of 2**depth = {self.multiple_px}. "
                f"Received: input_size_px={self.input_size_px}"
            )
        if not self.working_rbc_diameter_px >= 4:
            raise ValueError(
                f"working_rbc_diameter_px must be at least 4. Received: working_rbc_diameter_px={self.working_rbc_diameter_px}"
            )
        if self.rbc_diameter_px is not None and not self.rbc_diameter_px > 0:
            raise ValueError(f"rbc_diameter_px must be positive. Received: rbc_diameter_px={self.rbc_diameter_px}")
        if not self.max_upscale >= 1.0:
            raise ValueError(f"max_upscale must be at least 1. Received: max_upscale={self.max_upscale}")
        if self.max_tile_px % self.multiple_px or self.max_tile_px <= 2 * self.tile_overlap_px:
            raise ValueError(
                f"max_tile_px must be a multiple of {self.multiple_px} larger than 2 * tile_overlap_px. "
                f"Received: max_tile_px={self.max_tile_px}, tile_overlap_px={self.tile_overlap_px}"
            )
        if self.tile_overlap_px < 0:
            raise ValueError(f"tile_overlap_px must be zero or positive. Received: tile_overlap_px={self.tile_overlap_px}")

    @property
    def depth(self) -> int:
        """Number of poolings."""
        return len(self.filters) - 1

    @property
    def multiple_px(self) -> int:
        """Input sides must be multiples of this (``2 ** depth``)."""
        return 2**self.depth


def build_from_config(config: UNetConfig, input_size_px: int | None = None):
    """The network a :class:`UNetConfig` describes (uncompiled, fresh weights)."""
    return UNET_ARCHITECTURES[config.architecture](
        filters=config.filters, num_channels=len(config.channels), input_size_px=input_size_px
    )
