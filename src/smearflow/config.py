"""Frozen, serialisable settings.

Every settings object round-trips through a plain dict (``to_dict`` /
``from_dict``) so that it can live in a model folder's ``config.json`` or a
benchmark run folder, and be reloaded with no code edits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T", bound="SerialisableConfig")


class SerialisableConfig:
    """Mixin: ``to_dict`` / ``from_dict`` for frozen dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {unknown}. Received keys: {sorted(data)}")
        return cls(**{name: _lists_to_tuples(value) for name, value in data.items()})


def _lists_to_tuples(value: Any) -> Any:
    # JSON turns tuples into lists; frozen configs compare and hash as tuples.
    if isinstance(value, (list, tuple)):
        return tuple(_lists_to_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    return value


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
class PipelineConfig(SerialisableConfig):
    """Settings of the analyse-one-slide pipeline.

    Attributes
    ----------
    segmenter : {"classical", "unet"}
        Which segmenter finds the cells.
    min_visible_fraction : float
        A border cell with less of itself inside the field is counted (by the
        border rule) but not sent to the classifier.
    classify_platelets : bool
        Also crop and classify platelet candidates (their count comes from
        segmentation either way).
    batch_size : int
        Crops per classifier call.
    wbc_never_platelet : bool
        A candidate the segmenter found as a white cell (nucleus and
        cytoplasm, white-cell size) gets the most probable white-cell class:
        the classifier's ``platelet`` class is ruled out for it.
    """

    segmenter: str = "classical"
    min_visible_fraction: float = 0.6
    classify_platelets: bool = True
    batch_size: int = 32
    wbc_never_platelet: bool = True
    crop: CropConfig = CropConfig()

    def __post_init__(self):
        if self.segmenter not in ("classical", "unet"):
            raise ValueError(f"segmenter must be 'classical' or 'unet'. Received: segmenter={self.segmenter!r}")
        if not 0.0 <= self.min_visible_fraction <= 1.0:
            raise ValueError(
                f"min_visible_fraction must be in [0, 1]. Received: min_visible_fraction={self.min_visible_fraction}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1. Received: batch_size={self.batch_size}")
        if isinstance(self.crop, dict):
            object.__setattr__(self, "crop", CropConfig.from_dict(self.crop))
