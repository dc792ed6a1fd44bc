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
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import or_, and_, case, func, select
from sqlalchemy.orm import Session

from smearflow import WBC_CLASSES
from smearflow.db.models import (
    Cell,
    CellReview,
    Field,
    ModelVersion,
    Patient,
    Slide,
    SlideCount,
    SlideSignoff,
    utc_now,
)
from smearflow.errors import SmearflowError

logger = logging.getLogger(__name__)

ARTEFACT = "artefact"
"""The reviewer's class for a candidate that is not a cell worth counting (debris, a smudge, stain)."""

REVIEW_LABELS = (*WBC_CLASSES, ARTEFACT)
"""What a reviewer may call a white-cell candidate: a PBC class or ``artefact``."""

DIFFERENTIAL_STATES = ("pre-classified", "in review", "verified")
"""Values of a slide's ``differential``."""

MAX_REVIEWER_LENGTH = 64
"""Longest reviewer name accepted."""

REVIEWABLE_STATUSES = ("done", "partial")
"""Slide statuses whose cells can be reviewed and signed off."""


class ReviewConflictError(SmearflowError):
    """A review change the slide's state does not allow (it is verified, or has nothing to review)."""


# --------------------------------------------------------------------------- validation


def check_reviewer(reviewer: object) -> str:
    """A reviewer name: printable text of 1 to 64 characters, surrounding spaces removed.

    Raises
    ------
    ValueError
        When the name is not a string, is empty, too long or not printable.
    """
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise ValueError(f"a reviewer name is required. Received: reviewer={reviewer!r}")
    name = reviewer.strip()
    if len(name) > MAX_REVIEWER_LENGTH:
        raise ValueError(f"reviewer must be at most {MAX_REVIEWER_LENGTH} characters. Received {len(name)} characters")
    if not name.isprintable():
        raise ValueError(f"reviewer must be printable text. Received: reviewer={name!r}")
    return name


def check_review_label(label: object) -> str:
    """A reviewer's class: one of ``REVIEW_LABELS``.

    Raises
    ------
    ValueError
        When ``label`` is not one of them.
    """
    if label not in REVIEW_LABELS:
        raise ValueError(f"label must be one of {list(REVIEW_LABELS)}. Received: label={label!r}")
    return label  # type: ignore[return-value]


# --------------------------------------------------------------------------- reading slides back


@dataclass
class StoredSlide:
    """One slide as stored, with its review state: what the slide-result schema is built from.

    ``counts`` are the model's (pre-classified) counts as stored with the
    analysis; ``reviewed_counts`` the counts of the cells as they stand
    (reviewer's class where there is one, artefacts left out), equal to
    ``counts`` until a reviewer changes a cell. ``fields`` hold ``name``,
    ``status``, ``error``, ``wbc`` (classified white cells), ``rbc`` and
    ``platelets`` (counted by the border rule) per field, in analysis order.
    """

    slide_id: str
    patient_id: str | None
    folder: str | None
    status: str
    collected_at: datetime | None
    finished_at: datetime | None
    model_version: str | None
    notes: str | None
    error: str | None
    rbc_count: int | None
    platelet_count: int | None
    counts: dict[str, int]
    fields: list[dict[str, Any]] = field(default_factory=list)
    unclassified_wbc: int = 0
    uncertain_wbc: int = 0
    reviewed_counts: dict[str, int] = field(default_factory=dict)
    artefacts: int = 0
    changed_cells: int = 0
    reviewed_cells: int = 0
    differential: str = "pre-classified"
    verified_by: str | None = None
    verified_at: datetime | None = None
    stale_signoff: bool = False

    @property
    def errors(self) -> list[str]:
        """Every field's problem, then the slide's own error when it is not just those."""
        errors = [f["error"] for f in self.fields if f["error"]]
        if self.error and self.error != "; ".join(errors):
            errors.append(self.error)
        return errors


def uncertain_expression(uncertain_below: float):
    """SQL: whether a classified cell is uncertain: the pipeline marked it, or its confidence is below ``uncertain_below``."""
    low = and_(Cell.confidence.is_not(None), Cell.confidence < uncertain_below)
    return case((or_(Cell.uncertain.is_(True), low), 1), else_=0)


def stored_slides(
    session: Session,
    *,
    patient_code: str | None = None,
    slide_code: str | None = None,
    status: str | None = None,
    uncertain_below: float = 0.5,
    limit: int | None = None,
) -> list[StoredSlide]:
    """Every matching slide with its fields, counts and review state, ordered by slide id.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    patient_code, slide_code, status : str, optional
        Filters, combined with AND; an unknown code matches nothing.
    uncertain_below : float
        A classified cell without a stored ``uncertain`` flag is uncertain
        below this confidence.
    limit : int, optional
        At most this many slides.

    Returns
    -------
    list of StoredSlide
    """
    query = (
        select(Slide, Patient.patient_code, ModelVersion.name)
        .outerjoin(Patient, Slide.patient_id == Patient.id)
        .outerjoin(ModelVersion, Slide.model_version_id == ModelVersion.id)
        .order_by(Slide.slide_code)
    )
    if patient_code is not None:
        query = query.where(Patient.patient_code == patient_code)
    if slide_code is not None:
        query = query.where(Slide.slide_code == slide_code)
    if status is not None:
        query = query.where(Slide.status == status)
    if limit is not None:
        query = query.limit(limit)
    rows = session.execute(query).all()
    if not rows:
        return []
    slide_ids = [slide.id for slide, _, _ in rows]
    counts = _model_counts(session, slide_ids)
    fields = _fields(session, slide_ids)
    cells = _cell_tallies(session, slide_ids, uncertain_below)
    signoffs = latest_signoffs(session, slide_ids)
    result = []
    for slide, patient, model_name in rows:
        stored = StoredSlide(
            slide_id=slide.slide_code,
            patient_id=patient,
            folder=slide.folder,
            status=slide.status,
            collected_at=slide.collected_at,
            finished_at=slide.finished_at,
            model_version=model_name,
            notes=slide.notes,
            error=slide.error,
            rbc_count=slide.rbc_count,
            platelet_count=slide.platelet_count,
            counts=counts.get(slide.id, {}),
        )
        _fill_cells(stored, fields.get(slide.id, []), cells)
        _fill_review_state(stored, slide, signoffs.get(slide.id))
        result.append(stored)
    return result


def _model_counts(session: Session, slide_ids: list[int]) -> dict[int, dict[str, int]]:
    counts: dict[int, dict[str, int]] = defaultdict(dict)
    query = (
        select(SlideCount.slide_id, SlideCount.label, SlideCount.count)
        .where(SlideCount.slide_id.in_(slide_ids))
        .order_by(SlideCount.slide_id, SlideCount.label)
    )
    for slide_id, label, n in session.execute(query):
        counts[slide_id][label] = n
    return counts


def _fields(session: Session, slide_ids: list[int]) -> dict[int, list[Field]]:
    fields: dict[int, list[Field]] = defaultdict(list)
    for row in session.scalars(select(Field).where(Field.slide_id.in_(slide_ids)).order_by(Field.id)):
        fields[row.slide_id].append(row)
    return fields


def _cell_tallies(session: Session, slide_ids: list[int], uncertain_below: float) -> dict[int, list[tuple]]:
    """Per field: (kind, counted, label, review_label, uncertain, n) groups."""
    uncertain = uncertain_expression(uncertain_below)
    query = (
        select(Cell.field_id, Cell.kind, Cell.counted, Cell.label, Cell.review_label, uncertain, func.count())
        .join(Field, Cell.field_id == Field.id)
        .where(Field.slide_id.in_(slide_ids))
        .group_by(Cell.field_id, Cell.kind, Cell.counted, Cell.label, Cell.review_label, uncertain)
    )
    tallies: dict[int, list[tuple]] = defaultdict(list)
    for field_id, *rest in session.execute(query):
        tallies[field_id].append(tuple(rest))
    return tallies


def _fill_cells(stored: StoredSlide, fields: list[Field], tallies: dict[int, list[tuple]]) -> None:
    reviewed: Counter[str] = Counter()
    for row in fields:
        wbc = rbc = platelets = 0
        for kind, counted, label, review_label, uncertain, n in tallies.get(row.id, ()):
            if kind == "wbc" and label is not None:
                wbc += n
            elif kind == "rbc" and counted:
                rbc += n
            elif kind == "platelet" and counted:
                platelets += n
            if row.status != "done" or kind != "wbc":
                continue
            if label is None:
                stored.unclassified_wbc += n if counted else 0
                continue
            stored.uncertain_wbc += n if uncertain else 0
            final = review_label or label
            if review_label is not None:
                stored.reviewed_cells += n
                stored.changed_cells += n if review_label != label else 0
            if final == ARTEFACT:
                stored.artefacts += n
            else:
                reviewed[final] += n
        stored.fields.append(
            {"name": row.name, "status": row.status, "error": row.error, "wbc": wbc, "rbc": rbc, "platelets": platelets}
        )
    stored.reviewed_counts = dict(sorted(reviewed.items()))


def latest_signoffs(session: Session, slide_ids: list[int]) -> dict[int, SlideSignoff]:
    """The newest sign-off (verified or reopened) of each slide that has one."""
    newest = (
        select(func.max(SlideSignoff.id)).where(SlideSignoff.slide_id.in_(slide_ids)).group_by(SlideSignoff.slide_id)
    )
    return {row.slide_id: row for row in session.scalars(select(SlideSignoff).where(SlideSignoff.id.in_(newest)))}


def _fill_review_state(stored: StoredSlide, slide: Slide, signoff: SlideSignoff | None) -> None:
    current = signoff is not None and signoff.analysis_finished_at == slide.finished_at
    stored.stale_signoff = signoff is not None and not current
    if current and signoff.action == "verified":
        stored.differential = "verified"
        stored.verified_by, stored.verified_at = signoff.actor, signoff.at
    elif stored.reviewed_cells or (current and signoff.action == "reopened"):
        stored.differential = "in review"


def stored_slide(session: Session, slide_code: str, uncertain_below: float = 0.5) -> StoredSlide:
    """One slide by id (see :func:`stored_slides`).

    Raises
    ------
    LookupError
        When no slide is registered as ``slide_code``.
    """
    found = stored_slides(session, slide_code=slide_code, uncertain_below=uncertain_below)
    if not found:
        raise LookupError(f"No slide is registered under slide_code={slide_code!r}")
    return found[0]


# --------------------------------------------------------------------------- cells


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


def _review_cell(cell: Cell, field_row: Field) -> ReviewCell:
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
    slide = _slide(session, slide_code)
    query = (
        select(Cell, Field)
        .join(Field, Cell.field_id == Field.id)
        .where(Field.slide_id == slide.id, Cell.kind.in_(kinds))
        .order_by(Field.id, Cell.id)
    )
    return [_review_cell(cell, field_row) for cell, field_row in session.execute(query)]


def slide_fields(session: Session, slide_code: str) -> list[Field]:
    """The fields of a slide's stored analysis, in analysis order.

    Raises
    ------
    LookupError
        When no slide is registered as ``slide_code``.
    """
    slide = _slide(session, slide_code)
    return list(session.scalars(select(Field).where(Field.slide_id == slide.id).order_by(Field.id)))


def slide_folder(session: Session, slide_code: str) -> str | None:
    """Where a slide's field images are now (``slides.folder``).

    Raises
    ------
    LookupError
        When no slide is registered as ``slide_code``.
    """
    return _slide(session, slide_code).folder


def get_cell(session: Session, slide_code: str, cell_id: int) -> ReviewCell:
    """One cell of a slide.

    Raises
    ------
    LookupError
        When the slide is unknown or the cell is not one of its cells.
    """
    slide = _slide(session, slide_code)
    row = session.execute(
        select(Cell, Field).join(Field, Cell.field_id == Field.id).where(Cell.id == cell_id, Field.slide_id == slide.id)
    ).first()
    if row is None:
        raise LookupError(f"slide {slide_code} has no cell {cell_id}")
    return _review_cell(*row)


def _slide(session: Session, slide_code: str, *, lock: bool = False) -> Slide:
    query = select(Slide).where(Slide.slide_code == slide_code)
    if lock:
        # Changes and sign-offs of one slide take its row in turn: a sign-off never misses a change.
        query = query.with_for_update()
    slide = session.scalars(query).first()
    if slide is None:
        raise LookupError(f"No slide is registered under slide_code={slide_code!r}")
    return slide


def _is_verified(session: Session, slide: Slide) -> bool:
    signoff = latest_signoffs(session, [slide.id]).get(slide.id)
    return signoff is not None and signoff.action == "verified" and signoff.analysis_finished_at == slide.finished_at


# --------------------------------------------------------------------------- changes


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
    slide = _slide(session, slide_code, lock=True)
    row = session.execute(
        select(Cell, Field)
        .join(Field, Cell.field_id == Field.id)
        .where(Cell.id == cell_id, Field.slide_id == slide.id)
        .with_for_update(of=Cell)
    ).first()
    if row is None:
        raise LookupError(f"slide {slide_code} has no cell {cell_id}")
    cell, field_row = row
    if not _review_cell(cell, field_row).reviewable:
        raise ReviewConflictError(
            f"cell {cell_id} of slide {slide_code} is not part of the differential (only classified white cells of "
            "counted fields are reviewed)"
        )
    if _is_verified(session, slide):
        raise ReviewConflictError(f"slide {slide_code} is verified: reopen it before changing a cell")
    previous = cell.review_label or cell.label
    if label == previous and cell.review_label is not None:
        return _review_cell(cell, field_row)
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
    return _review_cell(cell, field_row)


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
    slide = _slide(session, slide_code, lock=True)
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
    slide = _slide(session, slide_code, lock=True)
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
    slide = _slide(session, slide_code)
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


# --------------------------------------------------------------------------- agreement and verified cells


def _verified_slides_query(since: datetime | None):
    newest = select(SlideSignoff.slide_id, func.max(SlideSignoff.id).label("signoff_id")).group_by(SlideSignoff.slide_id)
    newest = newest.subquery()
    query = (
        select(Slide.id, SlideSignoff.actor, SlideSignoff.at)
        .join(newest, newest.c.slide_id == Slide.id)
        .join(SlideSignoff, SlideSignoff.id == newest.c.signoff_id)
        .where(SlideSignoff.action == "verified")
        .where(
            (SlideSignoff.analysis_finished_at == Slide.finished_at)
            | (SlideSignoff.analysis_finished_at.is_(None) & Slide.finished_at.is_(None))
        )
    )
    if since is not None:
        query = query.where(SlideSignoff.at >= since)
    return query


def agreement(session: Session, since: datetime | None = None) -> dict[str, Any]:
    """How often reviewers kept or changed the model's class, per class, on verified slides.

    Every classified white cell of a counted field of a verified slide counts:
    one the reviewer did not change was confirmed by the sign-off.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    since : datetime, optional
        Only slides signed off at or after this time.

    Returns
    -------
    dict
        ``since`` (ISO 8601 or ``None``), ``slides``, ``cells``, ``kept``,
        ``changed``, ``agreement`` (kept / cells, ``None`` without cells),
        ``model_classes`` (rows), ``reviewer_classes`` (columns: the classes
        and ``artefact``), ``confusion_matrix`` (rows: the model's class,
        columns: the reviewer's), and ``per_class``: for each model class
        ``cells``, ``kept``, ``changed``, ``to_artefact`` and ``kept_fraction``.
    """
    verified = _verified_slides_query(since).subquery()
    query = (
        select(Cell.label, func.coalesce(Cell.review_label, Cell.label), func.count())
        .join(Field, Cell.field_id == Field.id)
        .join(verified, verified.c.id == Field.slide_id)
        .where(Cell.kind == "wbc", Cell.label.is_not(None), Field.status == "done")
        .group_by(Cell.label, func.coalesce(Cell.review_label, Cell.label))
    )
    pairs = [(model, final, n) for model, final, n in session.execute(query)]
    n_slides = session.scalar(select(func.count()).select_from(verified)) or 0
    rows = list(WBC_CLASSES) + sorted({m for m, _, _ in pairs} - set(WBC_CLASSES))
    columns = list(REVIEW_LABELS) + sorted({f for _, f, _ in pairs} - set(REVIEW_LABELS))
    matrix = [[0] * len(columns) for _ in rows]
    for model, final, n in pairs:
        matrix[rows.index(model)][columns.index(final)] += n
    per_class = {}
    for i, label in enumerate(rows):
        cells = sum(matrix[i])
        kept = matrix[i][columns.index(label)] if label in columns else 0
        per_class[label] = {
            "cells": cells,
            "kept": kept,
            "changed": cells - kept,
            "to_artefact": matrix[i][columns.index(ARTEFACT)],
            "kept_fraction": kept / cells if cells else None,
        }
    total = sum(row["cells"] for row in per_class.values())
    kept_total = sum(row["kept"] for row in per_class.values())
    return {
        "since": since.isoformat() if since is not None else None,
        "slides": n_slides,
        "cells": total,
        "kept": kept_total,
        "changed": total - kept_total,
        "agreement": kept_total / total if total else None,
        "model_classes": rows,
        "reviewer_classes": columns,
        "confusion_matrix": matrix,
        "per_class": per_class,
    }


@dataclass(frozen=True)
class VerifiedCell:
    """A white cell of a verified slide with its final class, for a training export."""

    slide_id: str
    folder: str | None
    cell: ReviewCell
    verified_by: str
    verified_at: datetime


def verified_cells(session: Session, since: datetime | None = None) -> list[VerifiedCell]:
    """The classified white cells of counted fields of verified slides, by slide, field and cell.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    since : datetime, optional
        Only slides signed off at or after this time.
    """
    verified = _verified_slides_query(since).subquery()
    query = (
        select(Cell, Field, Slide.slide_code, Slide.folder, verified.c.actor, verified.c.at)
        .join(Field, Cell.field_id == Field.id)
        .join(Slide, Slide.id == Field.slide_id)
        .join(verified, verified.c.id == Slide.id)
        .where(Cell.kind == "wbc", Cell.label.is_not(None), Field.status == "done")
        .order_by(Slide.slide_code, Field.id, Cell.id)
    )
    return [
        VerifiedCell(slide_id=code, folder=folder, cell=_review_cell(cell, field_row), verified_by=actor, verified_at=at)
        for cell, field_row, code, folder, actor, at in session.execute(query)
    ]


def rbc_diameters_px(session: Session, field_ids: list[int]) -> dict[int, float]:
    """Each field's red-cell diameter, from the median area of its red cells (fields without any are left out).

    The pipeline sizes a cell's crop in red-cell diameters; the diameter is not
    stored, but the red cells' areas are: ``2 * sqrt(median area / pi)``.
    """
    import math
    import statistics

    areas: dict[int, list[int]] = defaultdict(list)
    if not field_ids:
        return {}
    query = select(Cell.field_id, Cell.area_px).where(Cell.field_id.in_(field_ids), Cell.kind == "rbc")
    for field_id, area in session.execute(query):
        areas[field_id].append(area)
    return {fid: 2.0 * math.sqrt(statistics.median(values) / math.pi) for fid, values in areas.items() if values}


def patients(session: Session) -> list[str]:
    """Every patient id, sorted."""
    return list(session.scalars(select(Patient.patient_code).order_by(Patient.patient_code)))
