"""What every segmenter returns (:class:`Segmentation`) and the one method it has (:class:`Segmenter`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from smearflow.types import Cell, CellKind

__all__ = ["Segmentation", "Segmenter"]


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
