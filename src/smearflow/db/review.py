"""Review of pre-classified cells: reading slides back for people, reclassifying cells, signing slides off.

The model's class of a cell (``cells.label``) is never overwritten. A reviewer's
decision is stored beside it (``review_label``, ``reviewed_by``,
``reviewed_at``) and every change is a row of ``cell_reviews``. A slide is
*verified* when its latest sign-off (``slide_signoffs``) is ``verified`` and
was made on the analysis the slide holds now (``analysis_finished_at`` equals
the slide's ``finished_at``): a re-analysis replaces the cells and makes the
sign-off stale, and the slide reads as pre-classified again. A verified slide
refuses changes until it is reopened (recorded too).

A slide's differential is therefore one of

``pre-classified``
    the model's counts, nobody has touched a cell;
``in review``
    a reviewer changed or confirmed cells, or reopened the slide, and has not
    signed it off;
``verified``
    signed off: ``verified_counts`` is the released differential.

Every function takes a ``Session``; the caller owns the transaction.

The reading, cell and agreement functions live in :mod:`smearflow.db.stored_slides`,
:mod:`smearflow.db.review_cells` and :mod:`smearflow.db.agreement`, the labels
and checks in :mod:`smearflow.db.review_labels`; all are importable from here.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from smearflow.db.agreement import VerifiedCell, agreement, verified_cells
from smearflow.db.models import Cell, CellReview, Field, Slide, SlideSignoff, utc_now
from smearflow.db.review_cells import (
    ReviewCell,
    get_cell,
    rbc_diameters_px,
    review_cell_of,
    slide_cells,
    slide_fields,
    slide_folder,
    slide_row,
)
from smearflow.db.review_labels import (
    ARTEFACT,
    DIFFERENTIAL_STATES,
    MAX_REVIEWER_LENGTH,
    REVIEW_LABELS,
    REVIEWABLE_STATUSES,
    check_review_label,
    check_reviewer,
)
from smearflow.db.stored_slides import (
    StoredSlide,
    latest_signoffs,
    patients,
    stored_slide,
    stored_slides,
    uncertain_expression,
)
from smearflow.errors import SmearflowError

__all__ = [
    "ARTEFACT",
    "DIFFERENTIAL_STATES",
    "MAX_REVIEWER_LENGTH",
    "REVIEWABLE_STATUSES",
    "REVIEW_LABELS",
    "ReviewCell",
    "ReviewConflictError",
    "StoredSlide",
    "VerifiedCell",
    "agreement",
    "check_review_label",
    "check_reviewer",
    "get_cell",
    "latest_signoffs",
    "patients",
    "rbc_diameters_px",
    "reopen",
    "review_cell",
    "review_history",
    "sign_off",
    "slide_cells",
    "slide_fields",
    "slide_folder",
    "stored_slide",
    "stored_slides",
    "uncertain_expression",
    "verified_cells",
]

logger = logging.getLogger(__name__)


class ReviewConflictError(SmearflowError):
    """A review change the slide's state does not allow (it is verified, or has nothing to review)."""


def _is_verified(session: Session, slide: Slide) -> bool:
    signoff = latest_signoffs(session, [slide.id]).get(slide.id)
    return signoff is not None and signoff.action == "verified" and signoff.analysis_finished_at == slide.finished_at


def review_cell(
    session: Session, slide_code: str, cell_id: int, label: str, reviewer: str, *, now: datetime | None = None
) -> ReviewCell:
    """Give a cell the reviewer's class (or ``artefact``); the model's class stays as it is.

    Choosing the class the cell already has changes nothing (no history row),
    except that choosing the model's class on an untouched cell records the
    reviewer's confirmation.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    slide_code : str
    cell_id : int
    label : str
        One of ``REVIEW_LABELS``.
    reviewer : str
        Who decides (:func:`check_reviewer`).
    now : datetime, optional

    Returns
    -------
    ReviewCell
        The cell after the change.

    Raises
    ------
    ValueError
        When ``label`` or ``reviewer`` is invalid.
    LookupError
        When the slide is unknown or the cell is not one of its cells.
    ReviewConflictError
        When the slide is verified (reopen it first), or the cell is not a
        classified white-cell candidate of a counted field.
    """
    label = check_review_label(label)
    reviewer = check_reviewer(reviewer)
    slide = slide_row(session, slide_code, lock=True)
    row = session.execute(
        select(Cell, Field)
        .join(Field, Cell.field_id == Field.id)
        .where(Cell.id == cell_id, Field.slide_id == slide.id)
        .with_for_update(of=Cell)
    ).first()
    if row is None:
        raise LookupError(f"slide {slide_code} has no cell {cell_id}")
    cell, field_row = row
    if not review_cell_of(cell, field_row).reviewable:
        raise ReviewConflictError(
            f"cell {cell_id} of slide {slide_code} is not part of the differential (only classified white cells of "
            "counted fields are reviewed)"
        )
    if _is_verified(session, slide):
        raise ReviewConflictError(f"slide {slide_code} is verified: reopen it before changing a cell")
    previous = cell.review_label or cell.label
    if label == previous and cell.review_label is not None:
        return review_cell_of(cell, field_row)
    now = now or utc_now()
    session.add(
        CellReview(
            slide_id=slide.id,
            cell_id=cell.id,
            field_name=field_row.name,
            model_label=cell.label,
            previous_label=previous,
            label=label,
            reviewer=reviewer,
            at=now,
        )
    )
    cell.review_label, cell.reviewed_by, cell.reviewed_at = label, reviewer, now
    session.flush()
    logger.info("slide %s cell %s: %s -> %s by %s", slide_code, cell_id, previous, label, reviewer)
    return review_cell_of(cell, field_row)


def sign_off(
    session: Session, slide_code: str, reviewer: str, *, note: str | None = None, now: datetime | None = None
) -> SlideSignoff:
    """Sign a slide's reviewed differential off as verified.

    Every white cell the reviewer did not change keeps the model's class: by
    signing, the reviewer confirms it. The signed counts are kept with the
    sign-off.

    Raises
    ------
    ValueError
        When ``reviewer`` is invalid.
    LookupError
        When the slide is unknown.
    ReviewConflictError
        When the slide is already verified, or is not ``done`` or ``partial``.
    """
    reviewer = check_reviewer(reviewer)
    slide = slide_row(session, slide_code, lock=True)
    if slide.status not in REVIEWABLE_STATUSES:
        raise ReviewConflictError(
            f"slide {slide_code} is {slide.status}: only a done or partial slide can be signed off"
        )
    if _is_verified(session, slide):
        raise ReviewConflictError(f"slide {slide_code} is already verified")
    stored = stored_slides(session, slide_code=slide_code)[0]
    counts = {**stored.reviewed_counts, ARTEFACT: stored.artefacts} if stored.artefacts else dict(stored.reviewed_counts)
    return _add_signoff(session, slide, "verified", reviewer, counts, note, now)


def reopen(
    session: Session, slide_code: str, reviewer: str, *, note: str | None = None, now: datetime | None = None
) -> SlideSignoff:
    """Reopen a verified slide for changes (recorded; the slide must be signed off again).

    Raises
    ------
    ValueError
        When ``reviewer`` is invalid.
    LookupError
        When the slide is unknown.
    ReviewConflictError
        When the slide is not verified.
    """
    reviewer = check_reviewer(reviewer)
    slide = slide_row(session, slide_code, lock=True)
    if not _is_verified(session, slide):
        raise ReviewConflictError(f"slide {slide_code} is not verified: there is nothing to reopen")
    return _add_signoff(session, slide, "reopened", reviewer, {}, note, now)


def _add_signoff(session, slide, action, reviewer, counts, note, now) -> SlideSignoff:
    if note is not None and len(note) > 2000:
        raise ValueError(f"note must be at most 2000 characters. Received {len(note)} characters")
    row = SlideSignoff(
        slide_id=slide.id,
        action=action,
        actor=reviewer,
        at=now or utc_now(),
        analysis_finished_at=slide.finished_at,
        counts=counts,
        note=note or None,
    )
    session.add(row)
    session.flush()
    logger.info("slide %s %s by %s", slide.slide_code, action, reviewer)
    return row


def review_history(session: Session, slide_code: str) -> list[dict[str, Any]]:
    """Every cell change and sign-off of a slide, oldest first.

    Returns
    -------
    list of dict
        ``at``, ``who``, ``what`` (``"cell"``, ``"verified"``, ``"reopened"``)
        and for a cell ``cell_id`` (``None`` once a re-analysis replaced it),
        ``field``, ``model_label``, ``previous_label``, ``label``; for a
        sign-off ``counts`` and ``note``.

    Raises
    ------
    LookupError
        When the slide is unknown.
    """
    slide = slide_row(session, slide_code)
    events: list[dict[str, Any]] = []
    for row in session.scalars(select(CellReview).where(CellReview.slide_id == slide.id)):
        events.append({
            "at": row.at, "who": row.reviewer, "what": "cell", "cell_id": row.cell_id, "field": row.field_name,
            "model_label": row.model_label, "previous_label": row.previous_label, "label": row.label, "order": row.id,
        })
    for row in session.scalars(select(SlideSignoff).where(SlideSignoff.slide_id == slide.id)):
        events.append({
            "at": row.at, "who": row.actor, "what": row.action, "counts": row.counts, "note": row.note,
            "order": row.id,
        })
    events.sort(key=lambda e: (e["at"], e["what"] != "cell", e["order"]))
    for event in events:
        del event["order"]
    return events
