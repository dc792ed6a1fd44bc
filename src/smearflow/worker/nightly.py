"""Nightly retraining, as a plain function the beat task calls.

A retraining run trains a candidate on the configured class-folder dataset,
scores it and the model the workers use now (the *baseline*:
``SMEARFLOW_MODEL_DIR``, else the active model version, else the packaged
model) on the **gate split**, and activates the candidate only when
:func:`decide_activation` says it wins by the configured margin.

The gate is fair to both models. It is a fixed, versioned list of images in
the database (``gate_splits``): chosen once among the images the baseline
never saw (its ``splits.json``), handed to every retraining as its test split
(``TrainConfig.test_images``) so that no candidate trains or validates on it,
and kept as the dataset grows. A new version is made, and the run says why,
only when the gate can no longer be used: its images left the dataset, or
the model to judge saw some of them. The baseline's figure on an unchanged
gate therefore never moves.

Every run is recorded when it starts and again when it ends
(:mod:`smearflow.db.runs`); a run whose process died resumes its training at
the next delivery from the last epoch saved, a run whose process keeps dying
is given up after ``max_attempts`` deliveries, its candidate folder and
checkpoint removed, and a failed run is raised as a failed task (Celery's
FAILURE, visible in Flower).
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass, field
from functools import partial
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable, Mapping

from smearflow.errors import BadModelError, PermanentError
from smearflow.model_folder import read_splits

logger = logging.getLogger(__name__)

NIGHTLY_ACTOR = "nightly retraining"
"""Who a model activated by retraining is recorded as activated by."""


class RetrainingFailed(PermanentError):
    """A retraining run ended failed; it is recorded, and the task ends as a failure."""


def decide_activation(
    candidate_metrics: Mapping[str, Any],
    active_metrics: Mapping[str, Any] | None,
    margin: float,
    metric: str = "macro_f1",
) -> bool:
    """Whether a candidate model replaces the active one.

    Parameters
    ----------
    candidate_metrics : dict
        The candidate's figures on the gate split.
    active_metrics : dict or None
        The active model's figures on the same split; ``None`` when there is
        no model to compare with (the candidate then wins).
    margin : float
        How much better the candidate must be; ties and smaller gains keep
        the active model.
    metric : str
        The figure compared, e.g. ``"macro_f1"`` or ``"accuracy"``.

    Returns
    -------
    bool
        ``candidate[metric] > active[metric] + margin``.

    Raises
    ------
    ValueError
        When ``margin`` is negative or not finite, or a metric is missing or
        not a finite number.
    """
    if not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0. Received: margin={margin!r}")

    def score(metrics: Mapping[str, Any], name: str) -> float:
        value = metrics.get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name}[{metric!r}] must be a finite number. Received: {value!r}")
        return float(value)

    candidate = score(candidate_metrics, "candidate_metrics")
    if active_metrics is None:
        return True
    return candidate > score(active_metrics, "active_metrics") + margin


def evaluate_model_folder(model_dir: str | Path, data_dir: str | Path, images: list[str]) -> dict[str, Any]:
    """A model folder's figures on some images (``class/file``) of a class-folder dataset.

    Returns
    -------
    dict
        :func:`smearflow.evaluation.metrics.classification_metrics`, plus
        ``eval_images``.

    Raises
    ------
    BadModelError
        When the model's classes are not the dataset's classes.
    """
    import numpy as np

    from smearflow.classifier.classifier import Classifier
    from smearflow.datasets import scan_class_folders
    from smearflow.evaluation.metrics import classification_metrics
    from smearflow.training.train import predict_with_classifier

    dataset = scan_class_folders(data_dir)
    classifier = Classifier.load(model_dir)
    if sorted(classifier.classes) != sorted(dataset.classes):
        raise BadModelError(
            f"{model_dir}: the model's classes {list(classifier.classes)} are not the dataset's {list(dataset.classes)}"
        )
    wanted = set(images)
    names = [Path(p).relative_to(dataset.root).as_posix() for p in dataset.paths]
    gate_set = dataset.subset([i for i, name in enumerate(names) if name in wanted])
    probabilities, labels = predict_with_classifier(classifier, gate_set)
    order = [list(classifier.classes).index(name) for name in dataset.classes]
    metrics = classification_metrics(labels, np.asarray(probabilities)[:, order], dataset.classes)
    metrics["eval_images"] = len(gate_set)
    return metrics


def images_seen_by(model_dir: str | Path) -> set[str] | None:
    """Images (``class/file``) that trained or validated a model, from its ``splits.json``; None when unknown."""
    splits = read_splits(model_dir)
    return None if splits is None else splits.seen()


@dataclass(frozen=True)
class RetrainSettings:
    """What a retraining run needs to know (from :class:`~smearflow.worker.settings.WorkerSettings`)."""

    data_dir: str | None
    models_dir: str
    train_config: dict[str, Any] = field(default_factory=dict)
    margin: float = 0.01
    metric: str = "macro_f1"
    env_model_dir: str | None = None
    max_attempts: int = 3
    keep_candidates: int = 5
    time_limit_s: float | None = None

    @classmethod
    def of(cls, settings) -> "RetrainSettings":
        """From a :class:`~smearflow.worker.settings.WorkerSettings`."""
        return cls(
            data_dir=settings.train_data,
            models_dir=settings.models_dir,
            train_config=dict(settings.train_config),
            margin=settings.retrain_margin,
            metric=settings.retrain_metric,
            env_model_dir=settings.model_dir,
            max_attempts=settings.max_training_attempts,
            keep_candidates=settings.keep_candidates,
            time_limit_s=settings.training_time_limit_s,
        )


@dataclass(frozen=True)
class RetrainOutcome:
    """What a retraining run did.

    Attributes
    ----------
    outcome : {"activated", "kept-active"}
    candidate, baseline : str or None
        Model version names (the baseline may be a folder).
    candidate_metrics, baseline_metrics : dict or None
        Both models' figures on the gate split.
    reason : str
        Why the candidate was or was not activated, in words.
    gate_version : int or None
    """

    outcome: str
    candidate: str | None = None
    baseline: str | None = None
    candidate_metrics: dict[str, Any] | None = None
    baseline_metrics: dict[str, Any] | None = None
    reason: str = ""
    gate_version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A short JSON-ready summary (the task's return value)."""
        keys = ("accuracy", "macro_f1", "eval_images")
        return {
            "outcome": self.outcome,
            "candidate": self.candidate,
            "baseline": self.baseline,
            "candidate_metrics": {k: (self.candidate_metrics or {}).get(k) for k in keys},
            "baseline_metrics": {k: self.baseline_metrics.get(k) for k in keys} if self.baseline_metrics else None,
            "reason": self.reason,
            "gate_version": self.gate_version,
        }


def resolve_model_dir(env_model_dir: str | Path | None, session) -> Path | None:
    """The classifier folder workers use: the override, else the active version's folder, else ``None`` (packaged).

    Parameters
    ----------
    env_model_dir : str or Path, optional
        ``SMEARFLOW_MODEL_DIR``.
    session : sqlalchemy.orm.Session
    """
    from smearflow.db import repository

    if env_model_dir:
        return Path(env_model_dir)
    active = repository.active_model_version(session)
    if active is not None and active.path:
        return Path(active.path)
    return None


def register_model_folder(session, path: str | Path, metrics: Mapping[str, Any] | None = None):
    """Register a model folder as a model version named as the worker names it (``Classifier.version``).

    Raises
    ------
    BadModelError
        When ``path`` is not a valid model folder.
    """
    from smearflow.classifier.model_folder import read_model_folder
    from smearflow.db import repository

    folder = read_model_folder(path)
    source = folder.metrics if metrics is None else metrics
    scalars = {k: v for k, v in source.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    return repository.get_or_create_model_version(
        session, name=folder.version, architecture=folder.architecture, path=str(folder.path.resolve()), metrics=scalars
    )


def packaged_model_dir() -> Path | None:
    """The classifier folder shipped in the package, or ``None`` when it is missing."""
    from smearflow.classifier.classifier import default_model_dir

    path = default_model_dir()
    return path if path.is_dir() else None


@dataclass
class _Run:
    """What one retraining run knows as it goes; written to its ``training_runs`` row at the end."""

    run_id: int
    config: Any
    out_dir: Path
    baseline: str | None = None
    baseline_dir: Path | None = None
    gate: Any = None
    gate_note: str = ""
    candidate: Any = None
    candidate_metrics: dict | None = None
    baseline_metrics: dict | None = None
    actor: str = NIGHTLY_ACTOR

    @property
    def checkpoint_dir(self) -> Path:
        """Where the default training saves every epoch, beside the candidate folder."""
        return self.out_dir.with_name(self.out_dir.name + ".checkpoint")


def run_retraining(
    session_factory,
    settings: RetrainSettings,
    *,
    task_id: str | None = None,
    default_model_dir: Callable[[], Path | None] = packaged_model_dir,
    train: Callable[..., Any] | None = None,
    evaluate: Callable[..., dict[str, Any]] = evaluate_model_folder,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    actor: str = NIGHTLY_ACTOR,
) -> RetrainOutcome:
    """Train a candidate, score it and the baseline on the gate split, activate it if it wins; record it all.

    Parameters
    ----------
    session_factory : sessionmaker
    settings : RetrainSettings
    task_id : str, optional
        The Celery task id: a delivery of the same task again counts as one
        more attempt of the same run.
    default_model_dir : callable
        ``() -> Path or None``: the packaged model, the baseline when no
        version is active and ``SMEARFLOW_MODEL_DIR`` is not set.
    train : callable, optional
        ``train(data_dir, out_dir, TrainConfig) -> ModelFolder``;
        by default :func:`smearflow.training.train.train_classifier`, saving
        every epoch beside the candidate folder (``<candidate>.checkpoint``)
        so that a delivery again after the process died resumes the
        training where it stopped.
    evaluate : callable
        ``evaluate(model_dir, data_dir, images) -> metrics``.
    now : callable
        The current UTC time.
    actor : str
        Who an activation is recorded as made by (the benchmark's promotion
        passes its own name).

    Returns
    -------
    RetrainOutcome

    Raises
    ------
    RetrainingFailed
        After the run was recorded failed (no or bad dataset, a baseline that
        cannot be judged, too many deliveries, the time limit); its candidate
        folder is removed.
    Exception
        An unexpected error, after the run was recorded failed.
    """
    from celery.exceptions import SoftTimeLimitExceeded

    from smearflow.training.train import TrainConfig, train_classifier

    config = TrainConfig.from_dict(dict(settings.train_config))
    run = _begin(session_factory, settings, config, task_id, now)
    run.actor = actor
    try:
        dataset = _check_dataset(settings.data_dir)
        _choose_baseline(session_factory, settings, run, default_model_dir)
        _choose_gate(session_factory, settings, run, dataset)
        if train is None:
            train = partial(train_classifier, checkpoint_dir=run.checkpoint_dir)
        run.candidate = train(settings.data_dir, run.out_dir, _with_gate(config, run))
        _check_candidate(run)
        run.candidate_metrics = evaluate(run.candidate.path, settings.data_dir, run.gate.images)
        if run.baseline_dir is not None:
            run.baseline_metrics = evaluate(run.baseline_dir, settings.data_dir, run.gate.images)
    except (PermanentError, SoftTimeLimitExceeded) as exc:
        _fail(session_factory, settings, run, _failure_text(exc, settings))
        raise RetrainingFailed(_failure_text(exc, settings)) from exc
    except Exception as exc:
        logger.exception("retraining failed")
        _fail(session_factory, settings, run, f"{type(exc).__name__}: {exc}")
        raise
    return _decide_and_record(session_factory, settings, run)


def _failure_text(exc: BaseException, settings: RetrainSettings) -> str:
    from celery.exceptions import SoftTimeLimitExceeded

    if isinstance(exc, SoftTimeLimitExceeded):
        return (
            f"retraining reached its time limit, SMEARFLOW_TRAINING_TIME_LIMIT_S={settings.time_limit_s:.0f} s "
            "(stopped at 95% of it, to record the run)"
        )
    return f"{type(exc).__name__}: {exc}"


def _begin(session_factory, settings: RetrainSettings, config, task_id: str | None, now) -> _Run:
    """Record the run (or count this delivery); remove a dead earlier attempt's folder."""
    from smearflow.db import runs, session_scope, transient_database_errors

    with transient_database_errors(), session_scope(session_factory) as session:
        row, go_on = runs.begin_training_run(
            session, task_id, dataset=settings.data_dir, architecture=config.architecture,
            max_attempts=settings.max_attempts,
        )
        if row.candidate_dir is None:
            row.candidate_dir = str(Path(settings.models_dir) / f"{config.architecture}-{now():%Y%m%dT%H%M%SZ}")
        run_id, candidate_dir, error = row.id, Path(row.candidate_dir), row.error
    run = _Run(run_id=run_id, config=config, out_dir=candidate_dir)
    # An earlier attempt's half-written candidate goes; its checkpoint stays for this attempt to resume.
    _remove_folder(candidate_dir, Path(settings.models_dir))
    if not go_on:
        _remove_folder(run.checkpoint_dir, Path(settings.models_dir))
        raise RetrainingFailed(error or f"training run {run_id} already ended")
    logger.info("retraining run %d: %s on %s into %s", run_id, config.architecture, settings.data_dir, candidate_dir)
    return run


def _remove_folder(folder: Path, models_dir: Path) -> None:
    """Remove a candidate folder, only ever inside ``models_dir``."""
    if folder.is_dir() and not folder.is_symlink() and folder.resolve().parent == models_dir.resolve():
        shutil.rmtree(folder)
        logger.info("removed %s", folder)


def _check_dataset(data_dir: str | None):
    """The scanned dataset; every class needs two images (one to train on, one to judge with).

    Raises
    ------
    PermanentError
        When no dataset is configured, it does not exist, or a class is too small.
    """
    from smearflow.datasets import scan_class_folders

    if data_dir is None:
        raise PermanentError("no training dataset is configured (set SMEARFLOW_TRAIN_DATA)")
    if not Path(data_dir).is_dir():
        raise PermanentError(f"the training dataset {data_dir} does not exist")
    dataset = scan_class_folders(data_dir)
    small = {name: n for name, n in dataset.class_counts().items() if n < 2}
    if small:
        listed = ", ".join(f"{name!r} ({n} image)" for name, n in sorted(small.items()))
        raise PermanentError(f"{data_dir}: every class needs at least 2 images; too few in {listed}")
    return dataset


def _choose_baseline(session_factory, settings: RetrainSettings, run: _Run, default_model_dir) -> None:
    """The model workers use now; the packaged one is registered so that it can be activated again."""
    from smearflow.db import repository, session_scope, transient_database_errors

    with transient_database_errors(), session_scope(session_factory) as session:
        run.baseline_dir = resolve_model_dir(settings.env_model_dir, session)
        active = repository.active_model_version(session)
        run.baseline = active.name if active is not None and not settings.env_model_dir else None
        if run.baseline_dir is None:
            run.baseline_dir = default_model_dir()
            if run.baseline_dir is not None:
                run.baseline = register_model_folder(session, run.baseline_dir).name
    if run.baseline is None and run.baseline_dir is not None:
        run.baseline = str(run.baseline_dir)


def _choose_gate(session_factory, settings: RetrainSettings, run: _Run, dataset) -> None:
    """Use the stored gate split, or make a new version when it cannot judge the baseline fairly."""
    from smearflow.db import runs, session_scope, transient_database_errors
    from smearflow.datasets import stratified_holdout

    names = [Path(p).relative_to(dataset.root).as_posix() for p in dataset.paths]
    seen = images_seen_by(run.baseline_dir) if run.baseline_dir is not None else set()
    with transient_database_errors(), session_scope(session_factory) as session:
        gate = runs.current_gate_split(session)
        reason = _gate_problem(gate, set(names), dataset, seen or set())
        if reason is None:
            run.gate = gate
        else:
            pool = [i for i, name in enumerate(names) if name not in (seen or set())]
            if len(pool) < 2 * len(dataset.classes):
                raise PermanentError(
                    f"the baseline {run.baseline} trained on nearly every image of {settings.data_dir}: "
                    "no image is left to judge it fairly"
                )
            _, gate_idx = stratified_holdout(dataset.labels[pool], run.config.test_fraction, run.config.splits_seed)
            images = [names[pool[i]] for i in gate_idx]
            run.gate = runs.create_gate_split(session, str(settings.data_dir), images, reason)
            run.gate_note = f"new gate split v{run.gate.version}: {reason}"
            logger.warning("retraining run %d: %s", run.run_id, run.gate_note)
        if seen is None:
            run.gate_note = (run.gate_note + "; " if run.gate_note else "") + (
                "the baseline has no splits.json: its training images are unknown, its figure may be inflated"
            )
        session.expunge(run.gate)


def _gate_problem(gate, present: set[str], dataset, seen: set[str]) -> str | None:
    """Why the stored gate cannot be used (``None`` when it can)."""
    if gate is None:
        return "first retraining: a stratified share of the images the baseline never saw"
    kept = [name for name in gate.images if name in present]
    if {name.split("/", 1)[0] for name in kept} != set(dataset.classes):
        return f"gate v{gate.version} no longer holds every class of the dataset ({len(kept)} of its images remain)"
    overlap = seen & set(kept)
    if overlap:
        return f"the baseline trained or validated on {len(overlap)} of the {len(kept)} images of gate v{gate.version}"
    return None


def _with_gate(config, run: _Run):
    """The training config with the gate as its test split (written beside the candidate)."""
    from dataclasses import replace

    run.out_dir.mkdir(parents=True, exist_ok=True)
    listing = run.out_dir.parent / f"{run.out_dir.name}.gate.txt"
    listing.write_text("\n".join(run.gate.images) + "\n", encoding="utf-8")
    return replace(config, test_images=str(listing))


def _check_candidate(run: _Run) -> None:
    """Refuse a candidate that saw a gate image (it would be judged on what it learned)."""
    seen = images_seen_by(run.candidate.path) or set()
    overlap = seen & set(run.gate.images)
    if overlap:
        raise PermanentError(f"the candidate trained on {len(overlap)} images of gate v{run.gate.version}")


def _decide_and_record(session_factory, settings: RetrainSettings, run: _Run) -> RetrainOutcome:
    from smearflow.db import runs, session_scope, transient_database_errors

    activate = decide_activation(run.candidate_metrics, run.baseline_metrics, settings.margin, settings.metric)
    reason = _reason(settings, run, activate)
    with transient_database_errors(), session_scope(session_factory) as session:
        version = register_model_folder(session, run.candidate.path, _scalars(run.candidate_metrics))
        if activate:
            runs.activate(session, version.name, actor=run.actor, reason=reason, automatic=True)
        row = session.get(runs.TrainingRun, run.run_id)
        runs.finish_training_run(
            session, row, "activated" if activate else "kept-active", reason=reason, candidate=version,
            metric=settings.metric, candidate_figure=run.candidate_metrics[settings.metric],
            baseline=run.baseline, baseline_figure=(run.baseline_metrics or {}).get(settings.metric),
            metrics=_run_metrics(settings, run), gate=session.merge(run.gate),
        )
    _prune(session_factory, settings, protected={run.baseline or "", version.name})
    if activate and settings.env_model_dir:
        logger.warning("activated %s, but workers with SMEARFLOW_MODEL_DIR set keep using %s", version.name, settings.env_model_dir)
    logger.info("retraining run %d: %s", run.run_id, reason)
    return RetrainOutcome(
        "activated" if activate else "kept-active", version.name, run.baseline, run.candidate_metrics,
        run.baseline_metrics, reason, run.gate.version,
    )


def _reason(settings: RetrainSettings, run: _Run, activate: bool) -> str:
    metric, gate = settings.metric, f"gate v{run.gate.version}, {run.candidate_metrics.get('eval_images')} images"
    candidate = run.candidate_metrics[metric]
    if run.baseline_metrics is None:
        text = f"{metric} {candidate:.4f} on {gate}; no model to beat"
    else:
        baseline = run.baseline_metrics[metric]
        verdict = "beats" if activate else "does not beat"
        text = f"{metric} {candidate:.4f} {verdict} {baseline:.4f} + margin {settings.margin} ({gate})"
    return text + (f"; {run.gate_note}" if run.gate_note else "")


def _run_metrics(settings: RetrainSettings, run: _Run) -> dict[str, Any]:
    return {
        "margin": settings.margin,
        "candidate": _scalars(run.candidate_metrics),
        "baseline_metrics": _scalars(run.baseline_metrics),
        "train_config": run.config.to_dict(),
    }


def _scalars(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    return {k: v for k, v in metrics.items() if k not in ("confusion_matrix",)}


def _fail(session_factory, settings: RetrainSettings, run: _Run, error: str) -> None:
    """Record the run failed and remove its candidate folder and checkpoint."""
    from smearflow.db import runs, session_scope, transient_database_errors

    logger.error("retraining run %d failed: %s", run.run_id, error)
    with transient_database_errors(), session_scope(session_factory) as session:
        row = session.get(runs.TrainingRun, run.run_id)
        runs.finish_training_run(
            session, row, "failed", error=error, baseline=run.baseline, metric=settings.metric,
            metrics=_run_metrics(settings, run) if run.candidate_metrics else None,
        )
    _remove_folder(run.out_dir, Path(settings.models_dir))
    _remove_folder(run.checkpoint_dir, Path(settings.models_dir))


def _prune(session_factory, settings: RetrainSettings, protected: set[str]) -> None:
    """Keep the newest ``keep_candidates`` candidates' folders; never the active, the baseline or the packaged one."""
    from smearflow.db import runs, session_scope, transient_database_errors

    with transient_database_errors(), session_scope(session_factory) as session:
        for version in runs.prunable_candidates(session, settings.keep_candidates, protected):
            if version.path:
                _remove_folder(Path(version.path), Path(settings.models_dir))
            runs.mark_pruned(session, version)
