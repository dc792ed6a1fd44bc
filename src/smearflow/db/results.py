"""Storing a slide's analysis, recording its failure, and reading its counts back.

Every function takes a ``Session`` and neither commits nor rolls back: the
caller owns the transaction (see :func:`smearflow.db.engine.session_scope`).

Failure policy
--------------
Nothing already stored is lost by a failure. :func:`store_slide_result`
replaces a slide's fields, cells and counts with the new result when the
result is usable (status ``"done"``, even with some failed fields). A
``"failed"`` result, and :func:`record_slide_failure`, only mark the slide
failed with the error text; counts stored by an earlier successful analysis
stay in place (``counts_for`` then reports them next to ``status="failed"``
and the error). A failed result is stored field by field only when the slide
has no earlier result, so the per-field errors can be inspected.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from smearflow.db.models import (
    CELL_KINDS,
    FIELD_STATUSES,
    Cell,
    Field,
    ModelVersion,
    Slide,
    SlideCount,
    utc_now,
)
from smearflow.db.slides import (
    add_slide_event,
    get_or_create_patient,
    get_slide,
    insert_slide_row,
    upsert_slide,
)
from smearflow.db.stored_slides import model_counts, slide_rows
from smearflow.db.values import (
    check_code,
    check_status,
    error_text,
    iso,
    jsonable,
    parse_collected_at,
)
from smearflow.errors import BadSlideError
from smearflow.types import SlideInfo, SlideResult

logger = logging.getLogger(__name__)

PLATELET_LABEL = "platelet"
"""The classifier label left out of ``wbc_total`` (as ``SlideResult.wbc_total`` does)."""


def _has_stored_result(session: Session, slide: Slide) -> bool:
    if slide.id is None:
        return False
    done_fields = session.scalar(
        select(func.count()).select_from(Field).where(Field.slide_id == slide.id, Field.status == "done")
    )
    counts = session.scalar(
        select(func.count()).select_from(SlideCount).where(SlideCount.slide_id == slide.id)
    )
    return bool(done_fields or counts)


def _delete_stored_result(session: Session, slide: Slide) -> None:
    field_ids = select(Field.id).where(Field.slide_id == slide.id).scalar_subquery()
    # Cells are never loaded by the repository, so there is nothing to synchronise.
    session.execute(
        delete(Cell).where(Cell.field_id.in_(field_ids)),
        execution_options={"synchronize_session": False},
    )
    session.execute(
        delete(Field).where(Field.slide_id == slide.id),
        execution_options={"synchronize_session": "fetch"},
    )
    session.execute(
        delete(SlideCount).where(SlideCount.slide_id == slide.id),
        execution_options={"synchronize_session": "fetch"},
    )
    session.expire(slide, ["fields", "counts"])


def store_slide_result(
    session: Session,
    result: SlideResult,
    model_version: ModelVersion | None,
    *,
    reassign: bool = False,
    actor: str | None = None,
) -> Slide:
    """Write a slide's analysis, replacing whatever an earlier analysis stored.

    The slide is registered (upserted from ``result.info``) if needed. Its
    previous fields, cells and counts are deleted and the new ones written in
    the caller's transaction, so re-analysing never leaves two sets of
    counts. The slide's status becomes ``result.status``, its error the
    result's errors joined by ``"; "`` (``None`` when there are none), and
    ``finished_at`` now. Failed and flagged fields are stored with their reason.

    A ``"failed"`` result never changes a stored slide's metadata, and does
    not replace an earlier stored result (see :func:`record_slide_failure`).

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    result : SlideResult
        ``status`` must be ``"done"``, ``"partial"`` or ``"failed"``.
    model_version : ModelVersion or None
        The model that classified the cells; ``None`` when no model was used.
    reassign : bool
        Allow the result to move a stored slide to another patient.
    actor : str, optional
        Who asked for a reassignment.

    Returns
    -------
    Slide

    Raises
    ------
    ValueError
        When ``result.status`` or a field's status is unknown, when a cell's
        kind is unknown, or when ``result.model_version`` names a different
        model than ``model_version``.
    smearflow.errors.SlideConflictError
        When the slide is stored for another patient and ``reassign`` is false.
    """
    _check_result(result, model_version)
    error = "; ".join(result.errors) or None
    if result.status == "failed":
        slide = get_slide(session, result.info.slide_id)
        if slide is not None and _has_stored_result(session, slide):
            return _keep_stored_result(session, slide, error or "analysis failed")
        if slide is None:
            slide = _new_slide_for_failure(session, result.info)
    else:
        slide = upsert_slide(session, result.info, reassign=reassign, actor=actor)
    session.flush()
    _delete_stored_result(session, slide)
    _write_fields(session, slide, result, model_version.id if model_version is not None else None)
    slide.status = result.status
    slide.error = error
    slide.finished_at = utc_now()
    slide.rbc_count = int(result.rbc_count)
    slide.platelet_count = int(result.platelet_count)
    slide.model_version = model_version
    session.flush()
    return slide


def _check_result(result: SlideResult, model_version: ModelVersion | None) -> None:
    check_status("result.status", result.status, ("done", "partial", "failed"))
    for field_result in result.fields:
        check_status(f"status of field {field_result.name!r}", field_result.status, FIELD_STATUSES)
        for classified in field_result.cells:
            check_status(f"kind of a cell in field {field_result.name!r}", classified.cell.kind, CELL_KINDS)
    if model_version is not None and result.model_version is not None and result.model_version != model_version.name:
        raise ValueError(
            f"result.model_version and model_version disagree. Received: "
            f"result.model_version={result.model_version!r}, model_version={model_version.name!r}"
        )


def _write_fields(session: Session, slide: Slide, result: SlideResult, model_version_id: int | None) -> None:
    """Insert the result's fields, cells and counts for ``slide``."""
    field_rows: list[tuple[Field, Any]] = []
    for field_result in result.fields:
        field = Field(
            slide_id=slide.id,
            name=field_result.name,
            width_px=int(field_result.width_px),
            height_px=int(field_result.height_px),
            status=field_result.status,
            error=field_result.error,
            quality=jsonable(field_result.quality, "quality") if field_result.quality else None,
        )
        session.add(field)
        field_rows.append((field, field_result))
    session.flush()
    cell_rows = [
        _cell_row(field.id, classified, model_version_id)
        for field, field_result in field_rows
        for classified in field_result.cells
    ]
    if cell_rows:
        session.execute(insert(Cell), cell_rows)
    count_rows = [
        {"slide_id": slide.id, "label": str(label), "count": int(n), "model_version_id": model_version_id}
        for label, n in result.counts.items()
    ]
    if count_rows:
        session.execute(insert(SlideCount), count_rows)


def _cell_row(field_id: int, classified, model_version_id: int | None) -> dict[str, Any]:
    cell = classified.cell
    label = classified.classification
    row_min, col_min, row_max, col_max = (int(v) for v in cell.bbox)
    return {
        "field_id": field_id,
        "kind": cell.kind,
        "label": label.label if label is not None else None,
        "confidence": float(label.confidence) if label is not None else None,
        "top_classes": [[name, float(p)] for name, p in label.top_classes] if label is not None else None,
        "uncertain": bool(label.uncertain) if label is not None else False,
        "bbox_row_min": row_min,
        "bbox_col_min": col_min,
        "bbox_row_max": row_max,
        "bbox_col_max": col_max,
        "centroid_row": float(cell.centroid[0]),
        "centroid_col": float(cell.centroid[1]),
        "area_px": int(cell.area_px),
        "touches_border": bool(cell.touches_border),
        "visible_fraction": float(cell.visible_fraction),
        "counted": bool(cell.counted),
        "model_version_id": model_version_id if label is not None else None,
    }


def _stored_status(session: Session, slide: Slide) -> str:
    """``done`` or ``partial``: what the stored result of a slide is."""
    incomplete = session.scalar(
        select(func.count()).select_from(Field).where(Field.slide_id == slide.id, Field.status != "done")
    )
    return "partial" if incomplete else "done"


def _keep_stored_result(session: Session, slide: Slide, error: str) -> Slide:
    """A failed attempt on a slide with stored results: record it, change nothing else."""
    logger.warning("slide %s: analysis failed; the stored result is kept: %s", slide.slide_code, error)
    add_slide_event(session, slide, "analysis-failed", error)
    slide.status = _stored_status(session, slide)
    slide.heartbeat_at = slide.holder = slide.task_id = None
    session.flush()
    return slide


def _new_slide_for_failure(session: Session, info: SlideInfo) -> Slide:
    """A new slide row for a slide that failed before anything was stored; bad metadata is dropped."""
    slide = insert_slide_row(session, check_code("slide_id", info.slide_id))
    slide.folder = info.folder
    slide.notes = info.notes
    try:
        slide.collected_at = parse_collected_at(info.collected_at, slide.slide_code)
        slide.patient = get_or_create_patient(session, info.patient_id)
    except (BadSlideError, ValueError):
        logger.warning("slide %s: metadata not recorded with its failure", slide.slide_code)
    return slide


def record_slide_failure(
    session: Session, info_or_code: SlideInfo | str, error: str | BaseException
) -> Slide:
    """Record that a slide could not be analysed.

    A new slide is created (from a ``SlideInfo``, or from a bare slide code
    with no folder) and marked failed. An existing slide's metadata never
    changes; when it has stored results they are kept with their status
    (``done`` or ``partial``) and the failed attempt is recorded as an
    ``analysis-failed`` event; otherwise it is marked failed.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    info_or_code : SlideInfo or str
    error : str or BaseException
        An exception is stored as ``"TypeName: message"``.

    Returns
    -------
    Slide

    Raises
    ------
    ValueError
        When the slide code is empty.
    TypeError
        When ``info_or_code`` is neither a ``SlideInfo`` nor a string.
    """
    if isinstance(info_or_code, SlideInfo):
        slide_code, info = info_or_code.slide_id, info_or_code
    elif isinstance(info_or_code, str):
        slide_code, info = info_or_code, None
    else:
        raise TypeError(
            f"info_or_code must be a SlideInfo or a slide code. Received: {type(info_or_code).__name__} "
            f"{info_or_code!r}"
        )
    slide = get_slide(session, check_code("slide_id", slide_code))
    if slide is not None and _has_stored_result(session, slide):
        return _keep_stored_result(session, slide, error_text(error))
    if slide is None:
        slide = _new_slide_for_failure(session, info) if info is not None else insert_slide_row(session, slide_code)
    slide.status = "failed"
    slide.error = error_text(error)
    slide.finished_at = utc_now()
    slide.heartbeat_at = slide.holder = slide.task_id = None
    session.flush()
    return slide


def counts_for(
    session: Session, patient_code: str | None = None, slide_code: str | None = None
) -> list[dict[str, Any]]:
    """The stored differential of each matching slide, ordered by slide code.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    patient_code, slide_code : str, optional
        Filters, combined with AND; both ``None`` returns every slide. An
        unknown code matches nothing.

    Returns
    -------
    list of dict
        One dict per slide with keys ``slide_id`` (the slide code),
        ``patient_id`` (the patient code or ``None``), ``status``,
        ``collected_at`` (ISO 8601 or ``None``), ``model_version`` (name or
        ``None``), ``counts`` (``{label: n}`` as the classifier reported them,
        empty until a result is stored), ``wbc_total`` (sum of ``counts``
        without ``"platelet"``), ``rbc_count`` and ``platelet_count`` (``None``
        until a result is stored), ``finished_at`` and ``error``.
    """
    rows = slide_rows(session, patient_code=patient_code, slide_code=slide_code)
    if not rows:
        return []
    counts_by_slide = model_counts(session, [slide.id for slide, _, _ in rows])
    report = []
    for slide, patient, model_name in rows:
        counts = counts_by_slide.get(slide.id, {})
        report.append(
            {
                "slide_id": slide.slide_code,
                "patient_id": patient,
                "status": slide.status,
                "collected_at": iso(slide.collected_at),
                "model_version": model_name,
                "counts": counts,
                "wbc_total": sum(n for label, n in counts.items() if label != PLATELET_LABEL),
                "rbc_count": slide.rbc_count,
                "platelet_count": slide.platelet_count,
                "finished_at": iso(slide.finished_at),
                "error": slide.error,
            }
        )
    return report
