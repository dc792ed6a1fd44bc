"""Nightly retraining and re-benchmarking, as plain functions the beat tasks call.

Retraining trains a candidate on the configured class-folder dataset, then
evaluates the candidate and the model the workers use now (the *baseline*:
``SMEARFLOW_MODEL_DIR``, else the active model version, else the packaged
model) on one fixed evaluation split: the stratified test split of the
training config (its ``test_fraction`` and ``seed``), which the candidate
never saw. The candidate is activated only when :func:`decide_activation`
says it wins by the configured margin; a baseline that cannot be evaluated
on the dataset (other classes) is kept and the candidate only registered,
for a person to decide. Every run is recorded with
``record_training_run`` whatever the outcome.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable, Mapping

from smearflow.errors import BadModelError, PermanentError

logger = logging.getLogger(__name__)


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
        The candidate's figures on the evaluation split.
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


def evaluate_model_folder(model_dir: str | Path, data_dir: str | Path, test_fraction: float, seed: int) -> dict[str, Any]:
    """A model folder's figures on the fixed evaluation split of a class-folder dataset.

    The split is :func:`smearflow.training.data.stratified_holdout` of the
    dataset's classes in sorted order, exactly as ``train_classifier`` splits
    it, so with the training config's ``test_fraction`` and ``seed`` it is
    the candidate's untouched test split.

    Returns
    -------
    dict
        :func:`smearflow.training.metrics.classification_metrics`, plus
        ``eval_images`` and ``eval_split``.

    Raises
    ------
    BadModelError
        When the model's classes are not the dataset's classes.
    """
    import numpy as np

    from smearflow.classifier.classifier import Classifier
    from smearflow.training.data import scan_class_folders, stratified_holdout
    from smearflow.training.metrics import classification_metrics
    from smearflow.training.train import predict_dataset

    dataset = scan_class_folders(data_dir)
    classifier = Classifier.load(model_dir)
    if sorted(classifier.classes) != sorted(dataset.classes):
        raise BadModelError(
            f"{model_dir}: the model's classes {list(classifier.classes)} are not the dataset's {list(dataset.classes)}"
        )
    _, test_idx = stratified_holdout(dataset.labels, test_fraction, seed)
    test_set = dataset.subset(test_idx)
    probabilities, labels = predict_dataset(classifier.model, test_set, classifier.image_size)
    order = [list(classifier.classes).index(name) for name in dataset.classes]
    metrics = classification_metrics(labels, np.asarray(probabilities)[:, order], dataset.classes)
    metrics.update({"eval_images": len(test_set), "eval_split": f"stratified {test_fraction:.0%}, seed {seed}"})
    return metrics


@dataclass(frozen=True)
class RetrainOutcome:
    """What a retraining run did.

    Attributes
    ----------
    outcome : {"activated", "kept-active", "failed"}
    candidate : str or None
        The candidate's model version name.
    baseline : str or None
        What it was compared with (a version name or a folder).
    candidate_metrics, baseline_metrics : dict or None
    error : str or None
    """

    outcome: str
    candidate: str | None = None
    baseline: str | None = None
    candidate_metrics: dict[str, Any] | None = None
    baseline_metrics: dict[str, Any] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A short JSON-ready summary (the task's return value)."""
        keys = ("accuracy", "macro_f1")
        return {
            "outcome": self.outcome,
            "candidate": self.candidate,
            "baseline": self.baseline,
            "candidate_metrics": {k: (self.candidate_metrics or {}).get(k) for k in keys},
            "baseline_metrics": {k: (self.baseline_metrics or {}).get(k) for k in keys} if self.baseline_metrics else None,
            "error": self.error,
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

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    path : str or Path
        A model folder.
    metrics : dict, optional
        Figures to store; the folder's own scalar metrics by default.

    Returns
    -------
    ModelVersion

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


def _scalars(metrics: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if metrics is None:
        return None
    return {k: v for k, v in metrics.items() if k not in ("confusion_matrix",)}


def run_retraining(
    session_factory,
    *,
    data_dir: str | Path | None,
    models_dir: str | Path,
    train_config: Mapping[str, Any] | None = None,
    margin: float = 0.01,
    metric: str = "macro_f1",
    env_model_dir: str | Path | None = None,
    default_model_dir: Callable[[], Path | None] | None = None,
    train: Callable[..., Any] | None = None,
    evaluate: Callable[..., dict[str, Any]] | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RetrainOutcome:
    """Train a candidate, compare it with the baseline, activate it if it wins; record the run.

    Parameters
    ----------
    session_factory : sessionmaker
    data_dir : str or Path or None
        The class-folder dataset (``SMEARFLOW_TRAIN_DATA``); ``None`` records
        a failed run.
    models_dir : str or Path
        Candidates are written to ``models_dir/<architecture>-<UTC time>``.
    train_config : dict, optional
        ``TrainConfig`` fields; its ``test_fraction`` and ``seed`` also
        define the evaluation split.
    margin, metric
        See :func:`decide_activation`.
    env_model_dir : str or Path, optional
        ``SMEARFLOW_MODEL_DIR`` of the workers: when set it is the baseline
        (and activation in the database does not change what they use).
    default_model_dir : callable, optional
        ``() -> Path or None``: the packaged model, the baseline when no
        version is active; ``None`` when there is none.
    train : callable, optional
        ``train(data_dir, out_dir, TrainConfig) -> ModelFolder``;
        :func:`smearflow.training.train.train_classifier` by default.
    evaluate : callable, optional
        ``evaluate(model_dir, data_dir, test_fraction, seed) -> metrics``;
        :func:`evaluate_model_folder` by default.
    now : callable
        The current UTC time.

    Returns
    -------
    RetrainOutcome
        ``failed`` for a permanent problem (no or bad dataset, bad model);
        the run is recorded either way.

    Raises
    ------
    Exception
        An unexpected error, after the run was recorded failed.
    """
    from smearflow.db import repository, session_scope, transient_database_errors
    from smearflow.training.train import TrainConfig, train_classifier

    train = train or train_classifier
    evaluate = evaluate or evaluate_model_folder
    if default_model_dir is None:
        default_model_dir = _packaged_model_dir
    started_at = now()
    config = TrainConfig.from_dict(dict(train_config or {}))
    candidate_name = baseline_name = None
    candidate_metrics = baseline_metrics = None

    def record(outcome: str, candidate=None, error=None) -> None:
        with transient_database_errors(), session_scope(session_factory) as session:
            version = None
            if candidate is not None:
                version = register_model_folder(session, candidate.path, _scalars(candidate_metrics))
            if outcome == "activated":
                repository.activate_model_version(session, version.name)
            repository.record_training_run(
                session,
                outcome=outcome,
                dataset=None if data_dir is None else str(data_dir),
                architecture=config.architecture,
                metrics={
                    "metric": metric,
                    "margin": margin,
                    "baseline": baseline_name,
                    "candidate": candidate_metrics,
                    "baseline_metrics": baseline_metrics,
                    "train_config": config.to_dict(),
                },
                candidate=version,
                error=error,
                started_at=started_at,
                finished_at=now(),
            )

    try:
        if data_dir is None:
            raise PermanentError("no training dataset is configured (set SMEARFLOW_TRAIN_DATA)")
        if not Path(data_dir).is_dir():
            raise PermanentError(f"the training dataset {data_dir} does not exist")
        with transient_database_errors(), session_scope(session_factory) as session:
            baseline_dir = resolve_model_dir(env_model_dir, session)
            active = repository.active_model_version(session)
            active_name = active.name if active is not None and not env_model_dir else None
        if baseline_dir is None:
            baseline_dir = default_model_dir()
        baseline_name = active_name or (str(baseline_dir) if baseline_dir is not None else None)
        stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
        out_dir = Path(models_dir) / f"{config.architecture}-{stamp}"
        logger.info("retraining %s on %s into %s", config.architecture, data_dir, out_dir)
        candidate = train(data_dir, out_dir, config)
        candidate_name = candidate.version
        candidate_metrics = evaluate(candidate.path, data_dir, config.test_fraction, config.seed)
        baseline_error = None
        if baseline_dir is not None:
            try:
                baseline_metrics = evaluate(baseline_dir, data_dir, config.test_fraction, config.seed)
            except PermanentError as exc:
                # Not comparable is not better: keep the baseline, but register the candidate for a manual choice.
                baseline_error = f"the baseline {baseline_name} could not be evaluated: {type(exc).__name__}: {exc}"
                logger.error("%s", baseline_error)
        activate = baseline_error is None and decide_activation(candidate_metrics, baseline_metrics, margin, metric)
    except PermanentError as exc:
        error = f"{type(exc).__name__}: {exc}"
        logger.error("retraining failed: %s", error)
        record("failed", error=error)
        return RetrainOutcome("failed", candidate_name, baseline_name, candidate_metrics, baseline_metrics, error)
    except Exception as exc:
        logger.exception("retraining failed")
        record("failed", error=exc)
        raise
    outcome = "activated" if activate else "kept-active"
    record(outcome, candidate=candidate, error=baseline_error)
    if activate and env_model_dir:
        logger.warning("activated %s, but workers with SMEARFLOW_MODEL_DIR set keep using %s", candidate_name, env_model_dir)
    logger.info(
        "candidate %s %s: %s %.4f vs baseline %s",
        candidate_name,
        outcome,
        metric,
        candidate_metrics[metric],
        None if baseline_metrics is None else round(baseline_metrics[metric], 4),
    )
    return RetrainOutcome(outcome, candidate_name, baseline_name, candidate_metrics, baseline_metrics, baseline_error)


def _packaged_model_dir() -> Path | None:
    from smearflow.classifier.classifier import default_model_dir

    path = default_model_dir()
    return path if path.is_dir() else None


def load_benchmark_function() -> Callable[..., Any]:
    """``smearflow.training.benchmark.run_benchmark``, imported when needed.

    Raises
    ------
    PermanentError
        When the benchmark module or function is not available.
    """
    try:
        from smearflow.training.benchmark import run_benchmark
    except ImportError as exc:
        raise PermanentError(f"smearflow.training.benchmark.run_benchmark is not available ({exc})") from None
    return run_benchmark


def run_rebenchmark(
    session_factory,
    *,
    data_dir: str | Path | None,
    out_dir: str | Path,
    benchmark_config: Mapping[str, Any] | None = None,
    load_benchmark: Callable[[], Callable[..., Any]] = load_benchmark_function,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, Any]:
    """Re-run the architecture benchmark on the dataset and record it as a benchmark run.

    The benchmark itself is :func:`smearflow.training.benchmark.run_benchmark`;
    this adapter records the run, its per-fold validation figures and each
    architecture's held-out test figures (fold ``-1``), or the reason it
    failed (benchmark unavailable, bad dataset, an error).

    Parameters
    ----------
    session_factory : sessionmaker
    data_dir : str or Path or None
        The class-folder dataset; ``None`` records a failed run.
    out_dir : str or Path
        The run folder is ``out_dir/nightly-<UTC time>``.
    benchmark_config : dict, optional
        ``BenchmarkConfig`` fields (``SMEARFLOW_BENCHMARK_CONFIG``).
    load_benchmark : callable
        ``() -> run_benchmark``; :func:`load_benchmark_function` by default.
    now : callable

    Returns
    -------
    dict
        ``{"status": "done" or "failed", "run_folder": ..., "error": ...}``.

    Raises
    ------
    Exception
        An unexpected error of the benchmark, after the run was recorded failed.
    """
    from smearflow.db import repository, session_scope, transient_database_errors

    stamp = now().strftime("%Y%m%dT%H%M%SZ")
    run_folder = Path(out_dir) / f"nightly-{stamp}"
    config = dict(benchmark_config or {})
    with transient_database_errors(), session_scope(session_factory) as session:
        run_id = repository.start_benchmark_run(
            session,
            f"nightly-{stamp}",
            {"data_dir": None if data_dir is None else str(data_dir), "benchmark_config": config},
            str(run_folder),
        ).id

    def finish(status: str, error=None, results=None) -> None:
        from smearflow.db.models import BenchmarkRun

        with transient_database_errors(), session_scope(session_factory) as session:
            run = session.get(BenchmarkRun, run_id)
            for row in _benchmark_rows(results or {}):
                repository.add_benchmark_result(session, run, **row)
            repository.finish_benchmark_run(session, run, status, error)

    try:
        if data_dir is None:
            raise PermanentError("no benchmark dataset is configured (set SMEARFLOW_TRAIN_DATA)")
        run_benchmark = load_benchmark()
        if config:
            from smearflow.training.benchmark import BenchmarkConfig

            results = run_benchmark(data_dir, run_folder, BenchmarkConfig.from_dict(config))
        else:
            results = run_benchmark(data_dir, run_folder)
    except (PermanentError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        logger.error("re-benchmark failed: %s", error)
        finish("failed", error)
        return {"status": "failed", "run_folder": str(run_folder), "error": error}
    except Exception as exc:
        logger.exception("re-benchmark failed")
        finish("failed", exc)
        raise
    finish("done", results=results if isinstance(results, dict) else None)
    return {"status": "done", "run_folder": str(run_folder), "error": None}


def _scalar_figures(metrics: Any) -> dict[str, Any]:
    if not isinstance(metrics, Mapping):
        return {}
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _benchmark_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``add_benchmark_result`` keyword arguments from ``run_benchmark``'s results.

    One row per fold (the network's validation figures) and one per
    architecture with fold ``-1`` (its fold ensemble on the held-out test
    split). Entries of another shape are skipped.
    """
    rows = []
    for entry in results.get("folds") or []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("fold"), int):
            continue
        figures = ((entry.get("variants") or {}).get("network") or {}).get("validation")
        rows.append(
            {"architecture": str(entry.get("architecture")), "fold": entry["fold"], "metrics": _scalar_figures(figures)}
        )
    for name, summary in (results.get("architectures") or {}).items():
        if not isinstance(summary, Mapping):
            continue
        figures = ((summary.get("ensemble_test") or {}).get("network")) or {}
        rows.append({"architecture": str(name), "fold": -1, "metrics": _scalar_figures(_means(figures))})
    return rows


def _means(figures: Mapping[str, Any]) -> dict[str, Any]:
    """``{"accuracy": {"mean": m, "std": s}}`` → ``{"accuracy": m, "accuracy_std": s}``; scalars pass."""
    flat: dict[str, Any] = {}
    for key, value in figures.items():
        if isinstance(value, Mapping) and "mean" in value:
            flat[key] = value["mean"]
            if "std" in value:
                flat[f"{key}_std"] = value["std"]
        else:
            flat[key] = value
    return flat
