"""Slides read back for people: fields, counts and review state in one ``StoredSlide``.

Every function takes a ``Session``; the caller owns the transaction.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from smearflow.db.models import (
    Cell,
    Field,
    ModelVersion,
    Patient,
    Slide,
    SlideCount,
    SlideSignoff,
)
from smearflow.db.review_labels import ARTEFACT


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
    rows = slide_rows(session, patient_code=patient_code, slide_code=slide_code, status=status, limit=limit)
    if not rows:
        return []
    slide_ids = [slide.id for slide, _, _ in rows]
    counts = model_counts(session, slide_ids)
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


def slide_rows(
    session: Session,
    *,
    patient_code: str | None = None,
    slide_code: str | None = None,
    status: str | None = None,
    limit: int | None = None,
) -> list[tuple[Slide, str | None, str | None]]:
    """Every matching slide with its patient code and model version name, ordered by slide code.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    patient_code, slide_code, status : str, optional
        Filters, combined with AND; an unknown code matches nothing.
    limit : int, optional
        At most this many slides.

    Returns
    -------
    list of (Slide, str or None, str or None)
        The slide, its patient code and its model version name (``None`` when
        the slide has no patient or no model).
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
    return [tuple(row) for row in session.execute(query).all()]


def model_counts(session: Session, slide_ids: list[int]) -> dict[int, dict[str, int]]:
    """The stored (model's) counts ``{label: n}`` of each slide that has any, labels sorted."""
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


def patients(session: Session) -> list[str]:
    """Every patient id, sorted."""
    return list(session.scalars(select(Patient.patient_code).order_by(Patient.patient_code)))
