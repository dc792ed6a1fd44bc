"""Nightly runs and model history: training and benchmark runs, activations, gate splits, retention.

A retraining or benchmark run is recorded when it *starts* (``running``) and
updated at every end, so a run whose process was killed still shows. The
Celery task of a killed run is delivered again with the same task id:
:func:`begin_training_run` and :func:`begin_benchmark_run` count those
deliveries and, past ``max_attempts``, end the run ``failed`` instead of
starting it again, so a crash that repeats (out of memory) never holds the
training queue. Every function takes a ``Session``; the caller owns the
transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from smearflow.db.model_versions import activate_model_version, active_model_version
from smearflow.db.models import (
    BenchmarkRun,
    GateSplit,
    ModelActivation,
    ModelVersion,
    TrainingRun,
    utc_now,
)
from smearflow.db.values import check_code, error_text, metrics_dict

logger = logging.getLogger(__name__)


def _killed_too_often(kind: str, attempts: int, max_attempts: int) -> str:
    return (
        f"the {kind} was started {attempts} times and its process died each time (out of memory, or killed); "
        f"given up after max_attempts={max_attempts}"
    )


def begin_training_run(
    session: Session,
    task_id: str | None,
    *,
    dataset: str | None,
    architecture: str | None,
    max_attempts: int,
) -> tuple[TrainingRun, bool]:
    """The run of task ``task_id``, created or counted once more; and whether to go on with it.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    task_id : str or None
        The Celery task id; ``None`` always starts a new run.
    dataset, architecture : str or None
    max_attempts : int
        Deliveries of one task before the run is given up.

    Returns
    -------
    run : TrainingRun
    go_on : bool
        False when the run already ended, or has now been given up (``failed``).

    Raises
    ------
    ValueError
        When ``max_attempts`` is below 1.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1. Received: max_attempts={max_attempts}")
    run = None
    if task_id is not None:
        run = session.scalars(select(TrainingRun).where(TrainingRun.task_id == task_id).with_for_update()).first()
    if run is None:
        run = TrainingRun(
            task_id=task_id, started_at=utc_now(), dataset=dataset, architecture=architecture,
            metrics={}, outcome="running", attempts=0,
        )
        session.add(run)
    if run.outcome != "running":
        return run, False
    run.attempts += 1
    if run.attempts > max_attempts:
        finish_training_run(session, run, "failed", error=_killed_too_often("retraining", run.attempts - 1, max_attempts))
        return run, False
    session.flush()
    return run, True


def finish_training_run(
    session: Session,
    run: TrainingRun,
    outcome: str,
    *,
    error: str | BaseException | None = None,
    reason: str | None = None,
    candidate: ModelVersion | None = None,
    metric: str | None = None,
    candidate_figure: float | None = None,
    baseline: str | None = None,
    baseline_figure: float | None = None,
    metrics: Mapping[str, Any] | None = None,
    gate: GateSplit | None = None,
) -> TrainingRun:
    """Record how a training run ended.

    Raises
    ------
    ValueError
        When ``outcome`` is not ``activated``, ``kept-active`` or ``failed``.
    """
    if outcome not in ("activated", "kept-active", "failed"):
        raise ValueError(f"outcome must be activated, kept-active or failed. Received: outcome={outcome!r}")
    run.outcome = outcome
    run.finished_at = utc_now()
    run.error = error_text(error) if error is not None else None
    run.reason = reason
    run.candidate_model_version = candidate
    run.metric, run.candidate_figure, run.baseline, run.baseline_figure = metric, candidate_figure, baseline, baseline_figure
    if metrics is not None:
        run.metrics = metrics_dict(metrics, "metrics")
    if gate is not None:
        run.gate_split_id = gate.id
    session.flush()
    return run


def begin_benchmark_run(
    session: Session,
    task_id: str | None,
    *,
    name: str,
    config: Mapping[str, Any],
    run_folder: str,
    max_attempts: int,
) -> tuple[BenchmarkRun, bool]:
    """The benchmark run of task ``task_id``, created or counted once more; and whether to go on.

    Raises
    ------
    ValueError
        When ``max_attempts`` is below 1 or ``name`` is empty.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1. Received: max_attempts={max_attempts}")
    run = None
    if task_id is not None:
        run = session.scalars(select(BenchmarkRun).where(BenchmarkRun.task_id == task_id).with_for_update()).first()
    if run is None:
        run = BenchmarkRun(
            name=check_code("name", name), config=metrics_dict(config, "config"), status="running",
            started_at=utc_now(), run_folder=run_folder, task_id=task_id, attempts=0,
        )
        session.add(run)
    if run.status != "running":
        return run, False
    run.attempts += 1
    if run.attempts > max_attempts:
        run.status, run.finished_at = "failed", utc_now()
        run.error = _killed_too_often("benchmark", run.attempts - 1, max_attempts)
        session.flush()
        return run, False
    session.flush()
    return run, True


def unfinished_benchmark_folder(session: Session, config: Mapping[str, Any]) -> str | None:
    """The run folder of the latest benchmark with this ``config`` that did not finish, to resume."""
    wanted = metrics_dict(config, "config")
    query = select(BenchmarkRun).where(BenchmarkRun.status != "done").order_by(BenchmarkRun.started_at.desc())
    for run in session.scalars(query):
        if run.config == wanted and run.run_folder:
            return run.run_folder
    return None


# --------------------------------------------------------------------------- activations


def record_activation(
    session: Session,
    version: ModelVersion,
    previous: ModelVersion | None,
    *,
    actor: str,
    reason: str,
    automatic: bool,
) -> ModelActivation:
    """Record that ``version`` replaced ``previous`` as the active model."""
    activation = ModelActivation(
        model_version=version, previous_version=previous, at=utc_now(), actor=actor, reason=reason, automatic=automatic
    )
    session.add(activation)
    session.flush()
    return activation


def activations(session: Session) -> list[ModelActivation]:
    """Every activation, oldest first."""
    return list(session.scalars(select(ModelActivation).order_by(ModelActivation.at, ModelActivation.id)))


# --------------------------------------------------------------------------- gate splits


def current_gate_split(session: Session) -> GateSplit | None:
    """The newest gate split, or ``None`` before the first retraining."""
    return session.scalars(select(GateSplit).order_by(GateSplit.version.desc())).first()


def create_gate_split(session: Session, dataset: str, images: list[str], reason: str) -> GateSplit:
    """A new gate split version with these images (relative paths, ``class/file``).

    Raises
    ------
    ValueError
        When ``images`` is empty.
    """
    if not images:
        raise ValueError("a gate split needs at least one image. Received: images=[]")
    previous = current_gate_split(session)
    gate = GateSplit(
        version=(previous.version + 1) if previous is not None else 1,
        dataset=dataset,
        images=sorted(images),
        reason=reason,
        created_at=utc_now(),
    )
    session.add(gate)
    session.flush()
    return gate


# --------------------------------------------------------------------------- retention and history


def prunable_candidates(session: Session, keep: int, protected: set[str]) -> list[ModelVersion]:
    """Nightly candidates beyond the ``keep`` newest, never the active one nor a ``protected`` name.

    Candidates are the model versions a training run produced whose folder is
    still there (not pruned).
    """
    produced = select(TrainingRun.candidate_model_version_id).where(TrainingRun.candidate_model_version_id.is_not(None))
    query = (
        select(ModelVersion)
        .where(ModelVersion.id.in_(produced), ModelVersion.pruned_at.is_(None))
        .order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
    )
    candidates = [v for v in session.scalars(query) if not v.active and v.name not in protected]
    return candidates[keep:]


def mark_pruned(session: Session, version: ModelVersion) -> None:
    """Record that a candidate's folder was removed (the version stays in the history)."""
    version.pruned_at = utc_now()
    session.flush()


def model_history(session: Session, limit: int = 50) -> list[dict[str, Any]]:
    """Retraining runs, benchmark runs and activations, newest first, as rows an operator reads.

    Each row has ``kind`` (``retraining``, ``benchmark``, ``activation``),
    ``at``, ``outcome``, ``model``, ``metric``, ``candidate``, ``baseline``,
    ``baseline_model``, ``reason``, ``actor`` and ``attempts`` (``None``
    where they do not apply).
    """
    rows = [_training_row(run) for run in session.scalars(select(TrainingRun))]
    rows += [_benchmark_row(run) for run in session.scalars(select(BenchmarkRun))]
    rows += [_activation_row(a) for a in activations(session)]
    rows.sort(key=lambda row: row["at"], reverse=True)
    return rows[:limit] if limit else rows


def _row(kind: str, at, **values) -> dict[str, Any]:
    keys = ("outcome", "model", "metric", "candidate", "baseline", "baseline_model", "reason", "actor", "attempts")
    return {"kind": kind, "at": at.isoformat() if at else None, **{key: values.get(key) for key in keys}}


def _training_row(run: TrainingRun) -> dict[str, Any]:
    return _row(
        "retraining", run.started_at,
        outcome=run.outcome, model=run.candidate_model_version.name if run.candidate_model_version else None,
        metric=run.metric, candidate=run.candidate_figure, baseline=run.baseline_figure,
        baseline_model=run.baseline, reason=run.error or run.reason, actor="nightly retraining", attempts=run.attempts,
    )


def _benchmark_row(run: BenchmarkRun) -> dict[str, Any]:
    finished = len({(r.architecture, r.fold) for r in run.results if r.fold >= 0})
    return _row(
        "benchmark", run.started_at, outcome=run.status, model=run.name,
        reason=run.error or f"{finished} fold(s) recorded in {run.run_folder}", actor="nightly benchmark",
        attempts=run.attempts,
    )


def _activation_row(activation: ModelActivation) -> dict[str, Any]:
    return _row(
        "activation", activation.at, outcome="activated", model=activation.model_version.name,
        baseline_model=activation.previous_version.name if activation.previous_version else None,
        reason=activation.reason, actor=activation.actor,
    )


def activate(session: Session, name: str, *, actor: str, reason: str, automatic: bool = False) -> ModelVersion:
    """Make ``name`` the active model version and record who did it and why.

    Raises
    ------
    LookupError
        When no model version is called ``name``.
    ValueError
        When its folder was pruned.
    """
    previous = active_model_version(session)
    version = session.scalars(select(ModelVersion).where(ModelVersion.name == name)).first()
    if version is not None and version.pruned_at is not None:
        raise ValueError(f"model version {name!r} cannot be activated: its folder was removed by retention")
    version = activate_model_version(session, name)
    if previous is None or previous.id != version.id:
        record_activation(session, version, previous, actor=actor, reason=reason, automatic=automatic)
    return version
