"""Plain records of benchmark and training runs, written as they end.

:mod:`smearflow.db.runs` holds the nightly runs that are recorded when they
start and counted across redeliveries. Every function takes a ``Session``;
the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from smearflow.db.models import (
    BenchmarkResult,
    BenchmarkRun,
    ModelVersion,
    TrainingRun,
    utc_now,
)
from smearflow.db.values import check_code, check_status, error_text, metrics_dict


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
    check_code("name", name)
    run = BenchmarkRun(
        name=name,
        config=metrics_dict(config, "config"),
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
    check_code("architecture", architecture)
    if isinstance(fold, bool) or not isinstance(fold, int) or fold < -1:
        raise ValueError(f"fold must be an integer >= 0, or -1 for the aggregate. Received: fold={fold!r}")
    metrics_json = metrics_dict(metrics, "metrics")
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
    check_status("status", status, ("done", "failed"))
    run.status = status
    run.error = error_text(error) if error is not None else None
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
    check_code("outcome", outcome)
    now = utc_now()
    run = TrainingRun(
        started_at=started_at or now,
        finished_at=finished_at or now,
        dataset=dataset,
        architecture=architecture,
        metrics=metrics_dict(metrics, "metrics"),
        candidate_model_version=candidate,
        outcome=outcome,
        error=error_text(error) if error is not None else None,
    )
    session.add(run)
    session.flush()
    return run
