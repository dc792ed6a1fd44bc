"""Plain data passed between the pipeline stages.

Images follow one convention everywhere: RGB, channel-last, indexed
(row, col), ``uint8``. Boxes are ``(row_min, col_min, row_max, col_max)`` with
the max exclusive, as ``skimage.measure.regionprops`` reports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

CellKind = Literal["wbc", "rbc", "platelet"]
Status = Literal["queued", "running", "done", "partial", "failed"]
FieldStatus = Literal["done", "flagged", "failed"]


@dataclass(frozen=True)
class Cell:
    """One segmented cell.

    Attributes
    ----------
    kind : {"wbc", "rbc", "platelet"}
        What the segmenter found.
    bbox : tuple of int
        ``(row_min, col_min, row_max, col_max)`` in field pixels, max exclusive.
    centroid : tuple of float
        ``(row, col)`` in field pixels.
    area_px : int
        Number of pixels in ``mask``.
    mask : ndarray of shape (bbox height, bbox width), bool
        The cell's pixels inside ``bbox``.
    touches_border : bool
        True when the cell is cut by the edge of the field.
    visible_fraction : float
        Estimated share of the cell inside the field (1.0 when it is whole).
    counted : bool
        Whether the field's totals include this cell under the border rule
        (see ``smearflow.segmentation.border``).
    """

    kind: CellKind
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    area_px: int
    mask: np.ndarray = field(repr=False, compare=False)
    touches_border: bool = False
    visible_fraction: float = 1.0
    counted: bool = True


@dataclass(frozen=True)
class Classification:
    """The classifier's answer for one crop.

    ``top_classes`` are the most probable classes with their probability,
    best first (what a reviewer sees); ``uncertain`` is set when the top
    probability is below the confidence threshold: the cell still counts, and
    review shows it first. A platelet candidate's ``label`` is ``platelet`` or
    ``artefact``, never a white-cell class.
    """

    label: str
    confidence: float
    probabilities: tuple[float, ...] = ()
    top_classes: tuple[tuple[str, float], ...] = ()
    uncertain: bool = False


@dataclass(frozen=True)
class ClassifiedCell:
    """A segmented cell with its class (``None`` for cells not classified)."""

    cell: Cell
    classification: Classification | None


@dataclass(frozen=True)
class FieldResult:
    """The outcome of analysing one field of view (one image file).

    ``status`` is ``done``, ``failed`` (it could not be read or analysed;
    ``error`` says why) or ``flagged`` (the quality gate found it is not a
    usable stained smear; ``error`` gives the reasons). Only ``done`` fields
    count. ``quality`` holds the gate's measures.
    """

    name: str
    status: FieldStatus
    error: str | None = None
    cells: tuple[ClassifiedCell, ...] = ()
    width_px: int = 0
    height_px: int = 0
    wbc_counts: dict[str, int] = field(default_factory=dict)
    rbc_count: int = 0
    platelet_count: int = 0
    quality: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SlideInfo:
    """What a slide folder says about itself (``slide.json`` or defaults)."""

    slide_id: str
    patient_id: str | None
    collected_at: str | None
    notes: str | None
    folder: str
    field_paths: tuple[str, ...]


@dataclass(frozen=True)
class SlideResult:
    """A whole slide: its fields, its differential and the errors met.

    ``status`` is ``done`` when every field counted, ``partial`` when some
    fields failed or were flagged but at least one counted, ``failed`` when
    none did.

    ``counts`` maps a class name to the number of counted white-cell
    candidates the classifier gave that class (``platelet`` appears when a
    platelet clump was large enough to pass for a white cell).
    ``platelet_count`` and ``rbc_count`` come from segmentation.
    ``unclassified_wbc`` are white cells counted by the border rule but too
    cut off by the field's edge to classify; ``uncertain_wbc`` are classified
    white cells whose confidence is below the threshold (counted, to review).
    """

    info: SlideInfo
    status: Status
    fields: tuple[FieldResult, ...]
    counts: dict[str, int]
    rbc_count: int
    platelet_count: int
    model_version: str | None
    errors: tuple[str, ...] = ()
    unclassified_wbc: int = 0
    uncertain_wbc: int = 0

    @property
    def wbc_total(self) -> int:
        """White cells classified into a white-cell class (platelets excluded)."""
        return sum(n for label, n in self.counts.items() if label != "platelet")
