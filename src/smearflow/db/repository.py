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
    SLIDE_STATUSES,
    BenchmarkResult,
    BenchmarkRun,
    Cell,
    Field,
    ModelVersion,
    Patient,
    Slide,
    SlideCount,
    TrainingRun,
    utc_now,
)
from smearflow.errors import BadSlideError
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


def _get_or_create_patient(session: Session, patient_code: str | None) -> Patient | None:
    if patient_code is None:
        return None
    _check_code("patient_id", patient_code)
    patient = session.scalars(select(Patient).where(Patient.patient_code == patient_code)).first()
    if patient is None:
        patient = Patient(patient_code=patient_code)
        session.add(patient)
        session.flush()
    return patient


def _slide_or_raise(session: Session, slide_code: str) -> Slide:
    slide = get_slide(session, slide_code)
    if slide is None:
        raise LookupError(f"No slide is registered under slide_code={slide_code!r}")
    return slide


# --------------------------------------------------------------------------- slides


def register_slide(session: Session, info: SlideInfo, status: str = "queued") -> Slide:
    """Create or update the slide ``info.slide_id`` (an upsert keyed by slide code).

    The folder, patient (created when new), collection time and notes are
    taken from ``info``. Registering with ``status="queued"`` starts a fresh
    job: the attempt counter goes back to 0 and the error is cleared. Stored
    results are never touched.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    info : SlideInfo
    status : {"queued", "running", "done", "failed"}, default "queued"

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
    """
    _check_status("status", status, SLIDE_STATUSES)
    slide = _upsert_slide(session, info, strict=True)
    slide.status = status
    if status == "queued":
        slide.attempts = 0
        slide.error = None
    session.flush()
    return slide


def _upsert_slide(session: Session, info: SlideInfo, strict: bool) -> Slide:
    """The slide ``info.slide_id`` with its descriptive columns set from ``info``.

    With ``strict=False`` a bad ``collected_at`` or patient code is stored as
    ``None`` instead of raising: recording a failure must not fail on it.
    """
    slide_code = _check_code("slide_id", info.slide_id)
    try:
        collected_at = parse_collected_at(info.collected_at, slide_code)
    except BadSlideError:
        if strict:
            raise
        collected_at = None
    patient_code = info.patient_id
    if not strict and not (isinstance(patient_code, str) and patient_code.strip()):
        patient_code = None
    patient = _get_or_create_patient(session, patient_code)
    slide = get_slide(session, slide_code)
    if slide is None:
        slide = Slide(slide_code=slide_code, status="queued", attempts=0)
        session.add(slide)
    slide.patient = patient
    slide.folder = info.folder
    slide.collected_at = collected_at
    slide.notes = info.notes
    return slide


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


def claim_slide(session: Session, slide_code: str, max_attempts: int) -> Slide | None:
    """Take a slide for analysis: mark it running and count the attempt.

    The row is locked (``SELECT ... FOR UPDATE`` on PostgreSQL) until the
    caller's transaction ends, so commit right after claiming. A slide left
    ``"running"`` by a worker that died is claimable again; each claim counts,
    so a slide that keeps killing workers ends failed.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    slide_code : str
    max_attempts : int
        How many claims a slide gets before it is given up.

    Returns
    -------
    Slide or None
        The claimed slide (status ``"running"``, ``attempts`` incremented);
        ``None`` when there is nothing to do: the slide is already ``"done"``
        or ``"failed"`` (a redelivered task), or it has used its
        ``max_attempts``, in which case it is marked failed here.

    Raises
    ------
    ValueError
        When ``max_attempts`` is below 1.
    LookupError
        When no slide is registered as ``slide_code``.
    """
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(
            f"max_attempts must be an integer of at least 1. Received: max_attempts={max_attempts!r}"
        )
    slide = session.scalars(
        select(Slide)
        .where(Slide.slide_code == slide_code)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()
    if slide is None:
        raise LookupError(f"No slide is registered under slide_code={slide_code!r}")
    if slide.status in ("done", "failed"):
        logger.info("slide %s is already %s; not claimed", slide_code, slide.status)
        return None
    if slide.attempts >= max_attempts:
        slide.status = "failed"
        slide.error = (
            f"Gave up after {slide.attempts} attempt(s) (max_attempts={max_attempts}); "
            f"last error: {slide.error}"
        )
        slide.finished_at = utc_now()
        session.flush()
        logger.warning("slide %s failed: %s", slide_code, slide.error)
        return None
    slide.attempts += 1
    slide.status = "running"
    slide.started_at = utc_now()
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
    session: Session, result: SlideResult, model_version: ModelVersion | None
) -> Slide:
    """Write a slide's analysis, replacing whatever an earlier analysis stored.

    The slide is registered (upserted from ``result.info``) if needed. Its
    previous fields, cells and counts are deleted and the new ones written in
    the caller's transaction, so re-analysing never leaves two sets of
    counts. The slide's status becomes ``result.status``, its error the
    result's errors joined by ``"; "`` (``None`` when there are none), and
    ``finished_at`` now. Failed fields are stored with their error.

    A ``"failed"`` result does not replace an earlier stored result; see the
    module's failure policy.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    result : SlideResult
        ``status`` must be ``"done"`` or ``"failed"``.
    model_version : ModelVersion or None
        The model that classified the cells; ``None`` when no model was used.

    Returns
    -------
    Slide

    Raises
    ------
    ValueError
        When ``result.status`` or a field's status is not ``"done"`` /
        ``"failed"``, when a cell's kind is unknown, or when
        ``result.model_version`` names a different model than
        ``model_version``.
    """
    _check_status("result.status", result.status, ("done", "failed"))
    for field_result in result.fields:
        _check_status(f"status of field {field_result.name!r}", field_result.status, ("done", "failed"))
        for classified in field_result.cells:
            _check_status(f"kind of a cell in field {field_result.name!r}", classified.cell.kind, CELL_KINDS)
    if (
        model_version is not None
        and result.model_version is not None
        and result.model_version != model_version.name
    ):
        raise ValueError(
            f"result.model_version and model_version disagree. Received: "
            f"result.model_version={result.model_version!r}, model_version={model_version.name!r}"
        )

    slide = _upsert_slide(session, result.info, strict=True)
    session.flush()
    error = "; ".join(result.errors) or None
    now = utc_now()

    if result.status == "failed" and _has_stored_result(session, slide):
        logger.warning("slide %s: analysis failed; earlier result kept", slide.slide_code)
        slide.status = "failed"
        slide.error = error or "analysis failed"
        slide.finished_at = now
        session.flush()
        return slide

    _delete_stored_result(session, slide)
    model_version_id = model_version.id if model_version is not None else None
    field_rows: list[tuple[Field, Any]] = []
    for field_result in result.fields:
        field = Field(
            slide_id=slide.id,
            name=field_result.name,
            width_px=int(field_result.width_px),
            height_px=int(field_result.height_px),
            status=field_result.status,
            error=field_result.error,
        )
        session.add(field)
        field_rows.append((field, field_result))
    session.flush()

    cell_rows = []
    for field, field_result in field_rows:
        for classified in field_result.cells:
            cell = classified.cell
            label = classified.classification
            row_min, col_min, row_max, col_max = (int(v) for v in cell.bbox)
            cell_rows.append(
                {
                    "field_id": field.id,
                    "kind": cell.kind,
                    "label": label.label if label is not None else None,
                    "confidence": float(label.confidence) if label is not None else None,
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
            )
    if cell_rows:
        session.execute(insert(Cell), cell_rows)

    count_rows = [
        {"slide_id": slide.id, "label": str(label), "count": int(n), "model_version_id": model_version_id}
        for label, n in result.counts.items()
    ]
    if count_rows:
        session.execute(insert(SlideCount), count_rows)

    slide.status = result.status
    slide.error = error
    slide.finished_at = now
    slide.rbc_count = int(result.rbc_count)
    slide.platelet_count = int(result.platelet_count)
    slide.model_version = model_version
    session.flush()
    return slide


def record_slide_failure(
    session: Session, info_or_code: SlideInfo | str, error: str | BaseException
) -> Slide:
    """Mark a slide that could not be analysed at all as failed.

    The slide row is created if needed (from a ``SlideInfo``, or from a bare
    slide code with no folder). Results stored by an earlier analysis are
    kept: only the status, error and ``finished_at`` change.

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
        slide = _upsert_slide(session, info_or_code, strict=False)
    elif isinstance(info_or_code, str):
        slide_code = _check_code("slide_id", info_or_code)
        slide = get_slide(session, slide_code)
        if slide is None:
            slide = Slide(slide_code=slide_code, attempts=0)
            session.add(slide)
    else:
        raise TypeError(
            f"info_or_code must be a SlideInfo or a slide code. Received: {type(info_or_code).__name__} "
            f"{info_or_code!r}"
        )
    slide.status = "failed"
    slide.error = _error_text(error)
    slide.finished_at = utc_now()
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


def status_summary(session: Session) -> dict[str, Any]:
    """How many slides are in each status, and each slide's state.

    Returns
    -------
    dict
        ``{"counts": {status: n for every status}, "slides": [...]}``, the
        slides most recently updated first, each a dict with ``slide_id``,
        ``status``, ``attempts``, ``error`` and ``updated_at`` (ISO 8601).
    """
    counts = {status: 0 for status in SLIDE_STATUSES}
    for status, n in session.execute(select(Slide.status, func.count()).group_by(Slide.status)):
        counts[status] = n
    slides = [
        {
            "slide_id": slide.slide_code,
            "status": slide.status,
            "attempts": slide.attempts,
            "error": slide.error,
            "updated_at": _iso(slide.updated_at),
        }
        for slide in session.scalars(select(Slide).order_by(Slide.updated_at.desc(), Slide.slide_code))
    ]
    return {"counts": counts, "slides": slides}


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
    version = session.scalars(select(ModelVersion).where(ModelVersion.name == name)).first()
    if version is None:
        version = ModelVersion(
            name=name, architecture=architecture, path=path, metrics=metrics_json, active=False
        )
        session.add(version)
    else:
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
