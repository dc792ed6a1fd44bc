"""Find the cells of a stained blood-smear field.

A segmenter takes one RGB field and returns a :class:`Segmentation`: the
white cells, red cells and platelets it found as :class:`smearflow.types.Cell`
records, the red-cell diameter it worked with, and (when it separates them)
the white cells' nucleus pixels.

Two segmenters share the :class:`Segmenter` protocol:

- ``"classical"``: colour thresholds, morphology and a distance-transform
  watershed (:class:`smearflow.segmentation.classical.ClassicalSegmenter`);
- ``"unet"``: a trained U-Net loaded from a model folder
  (``smearflow.segmentation.unet.UNetSegmenter``).

Importing this package loads numpy only; OpenCV and scikit-image load when a
segmenter is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from smearflow.types import Cell, CellKind

__all__ = ["Segmentation", "Segmenter", "SEGMENTER_NAMES", "make_segmenter"]

SEGMENTER_NAMES = ("classical", "unet")
"""Names accepted by :func:`make_segmenter`."""


@dataclass(frozen=True)
class Segmentation:
    """Everything a segmenter found in one field.

    Attributes
    ----------
    cells : tuple of Cell
        White cells, red cells and platelets, in no particular order. A white
        cell's ``mask`` covers the whole cell (nucleus and cytoplasm).
    rbc_diameter_px : float
        The red-cell diameter used, in field pixels: the one the segmenter was
        given, or the one it estimated from the field.
    image_shape : tuple of int
        ``(rows, cols)`` of the field.
    nucleus_mask : ndarray of shape image_shape, bool, or None
        Union of the white cells' nucleus pixels over the whole field, or
        ``None`` when the segmenter does not tell nucleus from cytoplasm. The
        nucleus of one white cell is ``nucleus_mask`` restricted to that
        cell's ``bbox`` and ``mask``.
    """

    cells: tuple[Cell, ...]
    rbc_diameter_px: float
    image_shape: tuple[int, int]
    nucleus_mask: np.ndarray | None = field(default=None, repr=False, compare=False)

    def of_kind(self, kind: CellKind) -> tuple[Cell, ...]:
        """The cells of one kind (``"wbc"``, ``"rbc"`` or ``"platelet"``)."""
        return tuple(cell for cell in self.cells if cell.kind == kind)

    def count(self, kind: CellKind) -> int:
        """Number of cells of ``kind`` that the border rule counts."""
        return sum(1 for cell in self.cells if cell.kind == kind and cell.counted)


@runtime_checkable
class Segmenter(Protocol):
    """Anything that turns one field into a :class:`Segmentation`."""

    def segment(self, image: np.ndarray) -> Segmentation:
        """Segment one field.

        Parameters
        ----------
        image : ndarray of shape (M, N, 3), uint8
            RGB field of view.

        Returns
        -------
        Segmentation
        """
        ...


def make_segmenter(
    name: str = "classical",
    *,
    rbc_diameter_px: float | None = None,
    model_dir: str | Path | None = None,
) -> Segmenter:
    """Build a segmenter by name.

    Parameters
    ----------
    name : {"classical", "unet"}
        Which segmenter.
    rbc_diameter_px : float, optional
        Expected red-cell diameter in field pixels; estimated from each field
        when omitted.
    model_dir : str or Path, optional
        Model folder of the ``"unet"`` segmenter (its packaged default when
        omitted); unused by ``"classical"``.

    Returns
    -------
    Segmenter

    Raises
    ------
    ValueError
        When ``name`` is unknown or ``rbc_diameter_px`` is not positive.
    smearflow.errors.BadModelError
        From the ``"unet"`` loader, when its model folder is missing or broken.
    """
    if rbc_diameter_px is not None and not rbc_diameter_px > 0:
        raise ValueError(f"rbc_diameter_px must be positive. Received: rbc_diameter_px={rbc_diameter_px}")
    if name == "classical":
        from smearflow.segmentation.classical import ClassicalConfig, ClassicalSegmenter

        return ClassicalSegmenter(ClassicalConfig(rbc_diameter_px=rbc_diameter_px))
    if name == "unet":
        from smearflow.segmentation.unet import UNetSegmenter

        return UNetSegmenter.load(model_dir, rbc_diameter_px=rbc_diameter_px)
    raise ValueError(f"name must be one of {SEGMENTER_NAMES}. Received: name={name!r}")
