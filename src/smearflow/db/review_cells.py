"""A slide's stored cells and fields as the report and the review station show them.

Every function takes a ``Session``; the caller owns the transaction.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from smearflow.db.models import Cell, Field, Slide


@dataclass(frozen=True)
class ReviewCell:
    """A stored cell as the report and the review station show it.

    ``final_label`` is the reviewer's class when there is one, else the
    model's; ``uncertain`` is the flag the pipeline stored (the caller adds
    its own confidence rule, :func:`smearflow.reporting.flags.is_uncertain`).
    """

    id: int
    field_id: int
    field_name: str
    field_status: str
    kind: str
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]
    area_px: int
    counted: bool
    label: str | None
    confidence: float | None
    review_label: str | None
    reviewed_by: str | None
    reviewed_at: datetime | None
    uncertain: bool

    @property
    def final_label(self) -> str | None:
        return self.review_label or self.label

    @property
    def reviewable(self) -> bool:
        """A classified white-cell candidate of a counted field: it belongs to the differential."""
        return self.kind == "wbc" and self.label is not None and self.field_status == "done"


def review_cell_of(cell: Cell, field_row: Field) -> ReviewCell:
    """The ``ReviewCell`` of a stored cell and its field."""
    return ReviewCell(
        id=cell.id,
        field_id=field_row.id,
        field_name=field_row.name,
        field_status=field_row.status,
        kind=cell.kind,
        bbox=(cell.bbox_row_min, cell.bbox_col_min, cell.bbox_row_max, cell.bbox_col_max),
        centroid=(cell.centroid_row, cell.centroid_col),
        area_px=cell.area_px,
        counted=cell.counted,
        label=cell.label,
        confidence=cell.confidence,
        review_label=cell.review_label,
        reviewed_by=cell.reviewed_by,
        reviewed_at=cell.reviewed_at,
        uncertain=bool(cell.uncertain),
    )


def slide_cells(session: Session, slide_code: str, kinds: tuple[str, ...] = ("wbc", "rbc", "platelet")) -> list[ReviewCell]:
    """The cells of a slide's stored analysis, by field then cell id.

    Raises
    ------
    LookupError
        When no slide is registered as ``slide_code``.
    """
    slide = slide_row(session, slide_code)
    query = (
        select(Cell, Field)
        .join(Field, Cell.field_id == Field.id)
        .where(Field.slide_id == slide.id, Cell.kind.in_(kinds))
        .order_by(Field.id, Cell.id)
    )
    return [review_cell_of(cell, field_row) for cell, field_row in session.execute(query)]


def slide_fields(session: Session, slide_code: str) -> list[Field]:
    """The fields of a slide's stored analysis, in analysis order.

    Raises
    ------
    LookupError
        When no slide is registered as ``slide_code``.
    """
    slide = slide_row(session, slide_code)
    return list(session.scalars(select(Field).where(Field.slide_id == slide.id).order_by(Field.id)))


def slide_folder(session: Session, slide_code: str) -> str | None:
    """Where a slide's field images are now (``slides.folder``).

    Raises
    ------
    LookupError
        When no slide is registered as ``slide_code``.
    """
    return slide_row(session, slide_code).folder


def get_cell(session: Session, slide_code: str, cell_id: int) -> ReviewCell:
    """One cell of a slide.

    Raises
    ------
    LookupError
        When the slide is unknown or the cell is not one of its cells.
    """
    slide = slide_row(session, slide_code)
    row = session.execute(
        select(Cell, Field).join(Field, Cell.field_id == Field.id).where(Cell.id == cell_id, Field.slide_id == slide.id)
    ).first()
    if row is None:
        raise LookupError(f"slide {slide_code} has no cell {cell_id}")
    return review_cell_of(*row)


def slide_row(session: Session, slide_code: str, *, lock: bool = False) -> Slide:
    """The slide ``slide_code`` (row-locked when ``lock``); a ``LookupError`` when none is registered."""
    query = select(Slide).where(Slide.slide_code == slide_code)
    if lock:
        # Changes and sign-offs of one slide take its row in turn: a sign-off never misses a change.
        query = query.with_for_update()
    slide = session.scalars(query).first()
    if slide is None:
        raise LookupError(f"No slide is registered under slide_code={slide_code!r}")
    return slide


def rbc_diameters_px(session: Session, field_ids: list[int]) -> dict[int, float]:
    """Each field's red-cell diameter, from the median area of its red cells (fields without any are left out).

    The pipeline sizes a cell's crop in red-cell diameters; the diameter is not
    stored, but the red cells' areas are: ``2 * sqrt(median area / pi)``.
    """
    areas: dict[int, list[int]] = defaultdict(list)
    if not field_ids:
        return {}
    query = select(Cell.field_id, Cell.area_px).where(Cell.field_id.in_(field_ids), Cell.kind == "rbc")
    for field_id, area in session.execute(query):
        areas[field_id].append(area)
    return {fid: 2.0 * math.sqrt(statistics.median(values) / math.pi) for fid, values in areas.items() if values}
