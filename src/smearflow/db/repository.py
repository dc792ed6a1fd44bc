"""Reading and writing slides, results, model versions and runs.

Every function takes a ``Session`` and neither commits nor rolls back: the
caller owns the transaction (see :func:`smearflow.db.engine.session_scope`).
Functions flush so that ids exist and constraint violations surface inside
the call.

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
import math
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from smearflow.db.models import (
    CELL_KINDS,
    EVENT_KINDS,
    FIELD_STATUSES,
    SLIDE_STATUSES,
    BenchmarkResult,
    BenchmarkRun,
    Cell,
    Field,
    ModelVersion,
    Patient,
    Slide,
    SlideCount,
    SlideEvent,
    TrainingRun,
    utc_now,
)
from smearflow.errors import BadSlideError, SlideConflictError
from smearflow.types import SlideInfo, SlideResult

logger = logging.getLogger(__name__)

PLATELET_LABEL = "platelet"
"""The classifier label left out of ``wbc_total`` (as ``SlideResult.wbc_total`` does)."""


# --------------------------------------------------------------------------- helpers


def _check_code(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string. Received: {name}={value!r}")
    return value


def _check_status(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}. Received: {name}={value!r}")
    return value  # type: ignore[return-value]


def parse_collected_at(value: str | None, slide_id: str = "?") -> datetime | None:
    """Parse ``SlideInfo.collected_at`` into an aware UTC datetime.

    Parameters
    ----------
    value : str or None
        An ISO 8601 date (``"2024-03-01"``, taken as midnight UTC) or datetime
        (``"2024-03-01T09:30:00+01:00"``; without an offset it is taken as UTC).
    slide_id : str
        Named in the error message.

    Returns
    -------
    datetime or None

    Raises
    ------
    smearflow.errors.BadSlideError
        When ``value`` is not ISO 8601.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    else:
        try:
            parsed = datetime.fromisoformat(str(value).strip())
        except ValueError as exc:
            raise BadSlideError(
                f"collected_at of slide {slide_id!r} must be an ISO 8601 date or datetime. "
                f"Received: collected_at={value!r}"
            ) from exc
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _jsonable(value: Any, name: str) -> Any:
    """Plain JSON values from metrics that may hold numpy scalars and arrays."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, name) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, name) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _jsonable(value.tolist(), name)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(
        f"{name} must hold JSON values (numbers, strings, lists, dicts). "
        f"Received a {type(value).__name__}: {value!r}"
    )


def _metrics_dict(metrics: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(f"{name} must be a dict. Received: {name}={metrics!r}")
    return _jsonable(metrics, name)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _error_text(error: str | BaseException) -> str:
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    return str(error)


def insert_unless_present(session: Session, model: type, values: dict[str, Any], key: str) -> None:
    """``INSERT ... ON CONFLICT (key) DO NOTHING``: safe when another process inserts the same row.

    A select-then-insert lets two processes both see no row and both insert;
    the second fails on the unique constraint. Column defaults are applied.

    Raises
    ------
    NotImplementedError
        On a database other than PostgreSQL or SQLite.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:
        raise NotImplementedError(f"smearflow supports PostgreSQL and SQLite. Received: dialect={dialect!r}")
    session.execute(dialect_insert(model).values(**values).on_conflict_do_nothing(index_elements=[key]))


def _get_or_create_patient(session: Session, patient_code: str | None) -> Patient | None:
    if patient_code is None:
        return None
    _check_code("patient_id", patient_code)
    insert_unless_present(session, Patient, {"patient_code": patient_code}, "patient_code")
    return session.scalars(select(Patient).where(Patient.patient_code == patient_code)).one()


def _slide_or_raise(session: Session, slide_code: str) -> Slide:
    slide = get_slide(session, slide_code)
    if slide is None:
        raise LookupError(f"No slide is registered under slide_code={slide_code!r}")
    return slide


# --------------------------------------------------------------------------- slides


def register_slide(
    session: Session,
    info: SlideInfo,
    status: str = "queued",
    *,
    reassign: bool = False,
    actor: str | None = None,
    done_dir: str | None = None,
    failed_dir: str | None = None,
) -> Slide:
    """Create or update the slide ``info.slide_id`` (an upsert keyed by slide code).

    The folder, patient (created when new), collection time and notes are
    taken from ``info``. Registering with ``status="queued"`` starts a fresh
    job: the attempt and requeue counters go back to 0, the error and the
    lease are cleared, ``queued_at`` is now, and ``done_dir`` / ``failed_dir``
    say where the worker moves the folder afterwards. Stored results are
    never touched.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    info : SlideInfo
    status : {"queued", "running", "done", "partial", "failed"}, default "queued"
    reassign : bool
        Allow moving a stored slide to another patient (recorded as an event).
    actor : str, optional
        Who asked, recorded with a reassignment.
    done_dir, failed_dir : str, optional

    Returns
    -------
    Slide

    Raises
    ------
    ValueError
        When ``status`` is unknown or ``info.slide_id`` / ``info.patient_id``
        is empty.
    smearflow.errors.BadSlideError
        When ``info.collected_at`` is not ISO 8601.
    smearflow.errors.SlideConflictError
        When the slide is stored for another patient and ``reassign`` is false.
    """
    _check_status("status", status, SLIDE_STATUSES)
    slide = _upsert_slide(session, info, reassign=reassign, actor=actor)
    slide.status = status
    if status == "queued":
        slide.attempts = 0
        slide.requeues = 0
        slide.error = None
        slide.queued_at = utc_now()
        slide.heartbeat_at = slide.holder = slide.task_id = None
        slide.done_dir, slide.failed_dir = done_dir, failed_dir
    session.flush()
    return slide


def _insert_slide_row(session: Session, slide_code: str) -> Slide:
    """The slide row ``slide_code``, inserted when missing (safe against a concurrent insert)."""
    insert_unless_present(session, Slide, {"slide_code": slide_code, "status": "queued", "attempts": 0, "requeues": 0}, "slide_code")
    return session.scalars(
        select(Slide).where(Slide.slide_code == slide_code).execution_options(populate_existing=True)
    ).one()


def _upsert_slide(session: Session, info: SlideInfo, *, reassign: bool = False, actor: str | None = None) -> Slide:
    """The slide ``info.slide_id`` with its descriptive columns set from ``info``."""
    slide_code = _check_code("slide_id", info.slide_id)
    collected_at = parse_collected_at(info.collected_at, slide_code)
    patient = _get_or_create_patient(session, info.patient_id)
    slide = _insert_slide_row(session, slide_code)
    _check_patient_change(session, slide, patient, reassign=reassign, actor=actor)
    slide.patient = patient
    slide.folder = info.folder
    slide.collected_at = collected_at
    slide.notes = info.notes
    return slide


def _check_patient_change(
    session: Session, slide: Slide, patient: Patient | None, *, reassign: bool, actor: str | None
) -> None:
    """Refuse to move a slide from its patient to another (or to none) unless asked to.

    A slide stored without a patient may be given one: nobody's results move.
    """
    old = slide.patient.patient_code if slide.patient is not None else None
    new = patient.patient_code if patient is not None else None
    if old is None or old == new:
        return
    if not reassign:
        raise SlideConflictError(
            f"slide {slide.slide_code} is stored for patient {old}; this folder names "
            f"{'patient ' + new if new else 'no patient'}. Refused: its results would move to another patient "
            "(re-run with --reassign if the slide really belongs to the new patient)"
        )
    add_slide_event(session, slide, "reassigned", f"patient {old} -> {new or 'none'}", actor=actor)
    logger.warning("slide %s reassigned from patient %s to %s by %s", slide.slide_code, old, new, actor or "unknown")


def add_slide_event(session: Session, slide: Slide, kind: str, detail: str, actor: str | None = None) -> SlideEvent:
    """Record something that happened to a slide (see ``EVENT_KINDS``).

    Raises
    ------
    ValueError
        When ``kind`` is not one of ``EVENT_KINDS``.
    """
    _check_status("kind", kind, EVENT_KINDS)
    session.flush()
    event = SlideEvent(slide_id=slide.id, kind=kind, detail=detail, actor=actor, at=utc_now())
    session.add(event)
    session.flush()
    return event


def slide_events(session: Session, slide_code: str) -> list[SlideEvent]:
    """A slide's events, oldest first (empty for an unknown slide)."""
    return list(
        session.scalars(
            select(SlideEvent)
            .join(Slide, SlideEvent.slide_id == Slide.id)
            .where(Slide.slide_code == slide_code)
            .order_by(SlideEvent.at, SlideEvent.id)
        )
    )


def get_slide(session: Session, slide_code: str) -> Slide | None:
    """The slide registered as ``slide_code``, or ``None``."""
    return session.scalars(select(Slide).where(Slide.slide_code == slide_code)).first()


def set_slide_status(
    session: Session, slide_code: str, status: str, error: str | BaseException | None = None
) -> Slide:
    """Set a slide's status and error text.

    ``"running"`` stamps ``started_at``; ``"done"`` and ``"failed"`` stamp
    ``finished_at``. Stored results are not touched.

    Raises
    ------
    ValueError
        When ``status`` is unknown.
    LookupError
        When no slide is registered as ``slide_code``.
    """
    _check_status("status", status, SLIDE_STATUSES)
    slide = _slide_or_raise(session, slide_code)
    slide.status = status
    slide.error = _error_text(error) if error is not None else None
    now = utc_now()
    if status == "running":
        slide.started_at = now
    elif status in ("done", "failed"):
        slide.finished_at = now
    session.flush()
    return slide


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
        slide = _upsert_slide(session, result.info, reassign=reassign, actor=actor)
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
    _check_status("result.status", result.status, ("done", "partial", "failed"))
    for field_result in result.fields:
        _check_status(f"status of field {field_result.name!r}", field_result.status, FIELD_STATUSES)
        for classified in field_result.cells:
            _check_status(f"kind of a cell in field {field_result.name!r}", classified.cell.kind, CELL_KINDS)
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
            quality=_jsonable(field_result.quality, "quality") if field_result.quality else None,
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
    slide = _insert_slide_row(session, _check_code("slide_id", info.slide_id))
    slide.folder = info.folder
    slide.notes = info.notes
    try:
        slide.collected_at = parse_collected_at(info.collected_at, slide.slide_code)
        slide.patient = _get_or_create_patient(session, info.patient_id)
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
    slide = get_slide(session, _check_code("slide_id", slide_code))
    if slide is not None and _has_stored_result(session, slide):
        return _keep_stored_result(session, slide, _error_text(error))
    if slide is None:
        slide = _new_slide_for_failure(session, info) if info is not None else _insert_slide_row(session, slide_code)
    slide.status = "failed"
    slide.error = _error_text(error)
    slide.finished_at = utc_now()
    slide.heartbeat_at = slide.holder = slide.task_id = None
    session.flush()
    return slide


# --------------------------------------------------------------------------- reports


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
    rows = session.execute(query).all()
    if not rows:
        return []

    slide_ids = [slide.id for slide, _, _ in rows]
    counts_by_slide: dict[int, dict[str, int]] = {slide_id: {} for slide_id in slide_ids}
    count_query = (
        select(SlideCount.slide_id, SlideCount.label, SlideCount.count)
        .where(SlideCount.slide_id.in_(slide_ids))
        .order_by(SlideCount.slide_id, SlideCount.label)
    )
    for slide_id, label, n in session.execute(count_query):
        counts_by_slide[slide_id][label] = n

    report = []
    for slide, patient, model_name in rows:
        counts = counts_by_slide[slide.id]
        report.append(
            {
                "slide_id": slide.slide_code,
                "patient_id": patient,
                "status": slide.status,
                "collected_at": _iso(slide.collected_at),
                "model_version": model_name,
                "counts": counts,
                "wbc_total": sum(n for label, n in counts.items() if label != PLATELET_LABEL),
                "rbc_count": slide.rbc_count,
                "platelet_count": slide.platelet_count,
                "finished_at": _iso(slide.finished_at),
                "error": slide.error,
            }
        )
    return report


# --------------------------------------------------------------------------- model versions


def get_or_create_model_version(
    session: Session,
    name: str,
    architecture: str,
    path: str | None,
    metrics: Mapping[str, Any] | None,
) -> ModelVersion:
    """The model version called ``name``, created (inactive) when new.

    An existing row is returned as it is; its ``path`` is updated when a
    different one is given (a model folder that moved).

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    name : str
        Unique, e.g. ``"cnn-3f2a9c1b"``.
    architecture : str
    path : str or None
        The model folder.
    metrics : dict or None
        JSON values; numpy scalars and arrays are converted.

    Returns
    -------
    ModelVersion

    Raises
    ------
    ValueError
        When ``name`` or ``architecture`` is empty, or ``name`` is already
        registered with another architecture.
    TypeError
        When ``metrics`` is not a dict of JSON values.
    """
    _check_code("name", name)
    _check_code("architecture", architecture)
    metrics_json = _metrics_dict(metrics, "metrics")
    insert_unless_present(
        session,
        ModelVersion,
        {"name": name, "architecture": architecture, "path": path, "metrics": metrics_json, "active": False},
        "name",
    )
    version = session.scalars(
        select(ModelVersion).where(ModelVersion.name == name).execution_options(populate_existing=True)
    ).one()
    if version.architecture != architecture:
        raise ValueError(
            f"Model version {name!r} is registered with architecture {version.architecture!r}. "
            f"Received: architecture={architecture!r}"
        )
    if path is not None and version.path != path:
        version.path = path
    session.flush()
    return version


def activate_model_version(session: Session, name: str) -> ModelVersion:
    """Make ``name`` the one active model version; every other one is deactivated.

    Raises
    ------
    LookupError
        When no model version is called ``name``.
    """
    version = session.scalars(select(ModelVersion).where(ModelVersion.name == name)).first()
    if version is None:
        raise LookupError(f"No model version is registered under name={name!r}")
    for other in session.scalars(
        select(ModelVersion).where(ModelVersion.active.is_(True), ModelVersion.id != version.id)
    ):
        other.active = False
    # Deactivate before activating, or the one-active index sees two rows.
    session.flush()
    version.active = True
    session.flush()
    return version


def active_model_version(session: Session) -> ModelVersion | None:
    """The active model version, or ``None`` when none is active."""
    return session.scalars(select(ModelVersion).where(ModelVersion.active.is_(True))).first()


def list_model_versions(session: Session) -> list[ModelVersion]:
    """Every model version, oldest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.created_at, ModelVersion.id)))


# --------------------------------------------------------------------------- runs


def start_benchmark_run(
    session: Session,
    name: str,
    config: Mapping[str, Any] | None = None,
    run_folder: str | None = None,
) -> BenchmarkRun:
    """Record the start of a benchmark (status ``"running"``, ``started_at`` now).

    Raises
    ------
    ValueError
        When ``name`` is empty.
    TypeError
        When ``config`` is not a dict of JSON values.
    """
    _check_code("name", name)
    run = BenchmarkRun(
        name=name,
        config=_metrics_dict(config, "config"),
        status="running",
        started_at=utc_now(),
        run_folder=run_folder,
    )
    session.add(run)
    session.flush()
    return run


def add_benchmark_result(
    session: Session,
    run: BenchmarkRun,
    architecture: str,
    fold: int,
    metrics: Mapping[str, Any] | None,
    *,
    accuracy: float | None = None,
    macro_f1: float | None = None,
    seconds: float | None = None,
) -> BenchmarkResult:
    """Record one architecture's result on one fold of a benchmark.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    run : BenchmarkRun
    architecture : str
    fold : int
        The cross-validation fold, from 0; -1 for the aggregate or the
        held-out test set.
    metrics : dict or None
        JSON values; numpy scalars and arrays are converted.
    accuracy, macro_f1 : float, optional
        Default to ``metrics["accuracy"]`` / ``metrics["macro_f1"]`` when present.
    seconds : float, optional
        Wall time of the fit and evaluation.

    Returns
    -------
    BenchmarkResult

    Raises
    ------
    ValueError
        When ``fold`` is below -1 or ``architecture`` is empty.
    TypeError
        When ``metrics`` is not a dict of JSON values.
    """
    _check_code("architecture", architecture)
    if isinstance(fold, bool) or not isinstance(fold, int) or fold < -1:
        raise ValueError(f"fold must be an integer >= 0, or -1 for the aggregate. Received: fold={fold!r}")
    metrics_json = _metrics_dict(metrics, "metrics")
    if accuracy is None and isinstance(metrics_json.get("accuracy"), (int, float)):
        accuracy = metrics_json["accuracy"]
    if macro_f1 is None and isinstance(metrics_json.get("macro_f1"), (int, float)):
        macro_f1 = metrics_json["macro_f1"]
    result = BenchmarkResult(
        run=run,
        architecture=architecture,
        fold=fold,
        metrics=metrics_json,
        accuracy=float(accuracy) if accuracy is not None else None,
        macro_f1=float(macro_f1) if macro_f1 is not None else None,
        seconds=float(seconds) if seconds is not None else None,
    )
    session.add(result)
    session.flush()
    return result


def finish_benchmark_run(
    session: Session,
    run: BenchmarkRun,
    status: str = "done",
    error: str | BaseException | None = None,
) -> BenchmarkRun:
    """Record the end of a benchmark: its status, error and ``finished_at``.

    Raises
    ------
    ValueError
        When ``status`` is not ``"done"`` or ``"failed"``.
    """
    _check_status("status", status, ("done", "failed"))
    run.status = status
    run.error = _error_text(error) if error is not None else None
    run.finished_at = utc_now()
    session.flush()
    return run


def record_training_run(
    session: Session,
    *,
    outcome: str,
    dataset: str | None = None,
    architecture: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    candidate: ModelVersion | None = None,
    error: str | BaseException | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
) -> TrainingRun:
    """Record one (nightly) training run and what became of its candidate.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    outcome : str
        What happened, e.g. ``"activated"``, ``"kept-active"``, ``"failed"``.
    dataset : str, optional
        The dataset folder or name.
    architecture : str, optional
    metrics : dict, optional
        The candidate's evaluation; numpy values are converted.
    candidate : ModelVersion, optional
        The model version the run produced.
    error : str or BaseException, optional
    started_at, finished_at : datetime, optional
        Default to now; naive values are taken as UTC.

    Returns
    -------
    TrainingRun

    Raises
    ------
    ValueError
        When ``outcome`` is empty.
    TypeError
        When ``metrics`` is not a dict of JSON values.
    """
    _check_code("outcome", outcome)
    now = utc_now()
    run = TrainingRun(
        started_at=started_at or now,
        finished_at=finished_at or now,
        dataset=dataset,
        architecture=architecture,
        metrics=_metrics_dict(metrics, "metrics"),
        candidate_model_version=candidate,
        outcome=outcome,
        error=_error_text(error) if error is not None else None,
    )
    session.add(run)
    session.flush()
    return run
