"""What reviewers did with the model's classes: agreement per class and the verified cells for export.

Every function takes a ``Session``; the caller owns the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from smearflow import WBC_CLASSES
from smearflow.db.models import Cell, Field, Slide, SlideSignoff
from smearflow.db.review_cells import ReviewCell, review_cell_of
from smearflow.db.review_labels import ARTEFACT, REVIEW_LABELS


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
        VerifiedCell(slide_id=code, folder=folder, cell=review_cell_of(cell, field_row), verified_by=actor, verified_at=at)
        for cell, field_row, code, folder, actor, at in session.execute(query)
    ]
