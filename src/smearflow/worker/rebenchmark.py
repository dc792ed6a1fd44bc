"""The weekly re-benchmark, as a plain function the beat task calls.

It runs :func:`smearflow.training.benchmark.run_benchmark` on the training
dataset and records the run (``benchmark_runs``) when it starts, with every
finished fold when it ends — also when it times out: the folds already
written to the run folder are recorded, and the next run with the same
settings *resumes that folder* instead of starting again, so a benchmark too
long for one night finishes over several. A run whose process keeps dying is
given up after ``max_attempts`` deliveries, and a failed run is raised as a
failed task.

The default settings are sized to finish on a CPU host within the default
4-hour limit (:data:`CPU_BENCHMARK_CONFIG`); GPU hosts set
``SMEARFLOW_BENCHMARK_CONFIG`` to the full-size settings of docs/benchmark.md.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable, Mapping

from smearflow.errors import PermanentError

logger = logging.getLogger(__name__)

CPU_BENCHMARK_CONFIG: dict[str, Any] = {
    "architectures": ["cnn", "mobilenetv2"],
    "folds": 3,
    "image_size": 75,
    "epochs": 6,
    "subset_per_class": 150,
}
"""The nightly benchmark when ``SMEARFLOW_BENCHMARK_CONFIG`` is empty: two fast networks, three folds,
75 px, a subset of each class; it finishes within the 4-hour limit on a 2-core CPU host."""


class BenchmarkFailed(PermanentError):
    """A benchmark run ended failed; it is recorded, and the task ends as a failure."""


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
    task_id: str | None = None,
    max_attempts: int = 3,
    time_limit_s: float | None = None,
    load_benchmark: Callable[[], Callable[..., Any]] = load_benchmark_function,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, Any]:
    """Run (or resume) the architecture benchmark on the dataset and record it.

    Parameters
    ----------
    session_factory : sessionmaker
    data_dir : str or Path or None
        The class-folder dataset; ``None`` records a failed run.
    out_dir : str or Path
        A new run folder is ``out_dir/nightly-<UTC time>``; an unfinished one
        with the same settings is resumed instead.
    benchmark_config : dict, optional
        ``BenchmarkConfig`` fields (``SMEARFLOW_BENCHMARK_CONFIG``); empty or
        ``None`` means :data:`CPU_BENCHMARK_CONFIG`.
    task_id : str, optional
        The Celery task id (deliveries of the same task count as attempts).
    max_attempts : int
    time_limit_s : float, optional
        Named in the error of a run that timed out.
    load_benchmark : callable
        ``() -> run_benchmark``.
    now : callable

    Returns
    -------
    dict
        ``{"status": "done", "run_folder": ..., "resumed": bool, "error": None}``.

    Raises
    ------
    BenchmarkFailed
        After the run was recorded failed (no dataset, a bad one, the time
        limit — its finished folds recorded — or too many deliveries).
    Exception
        An unexpected error of the benchmark, after the run was recorded failed.
    """
    from celery.exceptions import SoftTimeLimitExceeded

    config = dict(benchmark_config or CPU_BENCHMARK_CONFIG)
    recorded = {"data_dir": None if data_dir is None else str(data_dir), "benchmark_config": config}
    run_id, run_folder, resumed = _begin(session_factory, recorded, out_dir, task_id, max_attempts, now)
    try:
        if data_dir is None:
            raise PermanentError("no benchmark dataset is configured (set SMEARFLOW_TRAIN_DATA)")
        from smearflow.training.benchmark import BenchmarkConfig

        results = load_benchmark()(data_dir, run_folder, BenchmarkConfig.from_dict(config))
    except SoftTimeLimitExceeded as exc:
        results = _finished_so_far(run_folder)
        error = (
            f"the benchmark reached its time limit, SMEARFLOW_TRAINING_TIME_LIMIT_S={time_limit_s or 0:.0f} s, "
            f"with {len(results.get('folds') or [])} fold(s) finished and recorded; the next run resumes {run_folder}"
        )
        _finish(session_factory, run_id, "failed", error, results)
        raise BenchmarkFailed(error) from exc
    except (PermanentError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        _finish(session_factory, run_id, "failed", error, _finished_so_far(run_folder))
        raise BenchmarkFailed(error) from exc
    except Exception as exc:
        logger.exception("re-benchmark failed")
        _finish(session_factory, run_id, "failed", exc, _finished_so_far(run_folder))
        raise
    _finish(session_factory, run_id, "done", None, results if isinstance(results, dict) else None)
    return {"status": "done", "run_folder": str(run_folder), "resumed": resumed, "error": None}


def _begin(session_factory, recorded: dict, out_dir, task_id, max_attempts: int, now) -> tuple[int, Path, bool]:
    from smearflow.db import runs, session_scope, transient_database_errors

    with transient_database_errors(), session_scope(session_factory) as session:
        unfinished = runs.unfinished_benchmark_folder(session, recorded)
        resumed = unfinished is not None and Path(unfinished).is_dir()
        run_folder = Path(unfinished) if resumed else Path(out_dir) / f"nightly-{now():%Y%m%dT%H%M%SZ}"
        run, go_on = runs.begin_benchmark_run(
            session, task_id, name=run_folder.name, config=recorded, run_folder=str(run_folder),
            max_attempts=max_attempts,
        )
        run_id, error = run.id, run.error
    if not go_on:
        raise BenchmarkFailed(error or f"benchmark run {run_id} already ended")
    if resumed:
        logger.info("re-benchmark resumes %s", run_folder)
    return run_id, Path(run_folder), resumed


def _finished_so_far(run_folder: Path) -> dict:
    """The results of the folds a stopped benchmark wrote to its run folder (empty when none)."""
    from smearflow.training.benchmark import write_reports

    if not (run_folder / "folds").is_dir() or not any((run_folder / "folds").glob("*/seed*-fold*.json")):
        return {}
    try:
        return write_reports(run_folder)
    except Exception:  # noqa: BLE001 - the failure being recorded matters more than the partial report
        logger.exception("could not summarise the finished folds of %s", run_folder)
        return {}


def _finish(session_factory, run_id: int, status: str, error, results: Mapping[str, Any] | None) -> None:
    from smearflow.db import repository, session_scope, transient_database_errors
    from smearflow.db.models import BenchmarkRun

    if status == "failed":
        logger.error("re-benchmark failed: %s", error)
    with transient_database_errors(), session_scope(session_factory) as session:
        run = session.get(BenchmarkRun, run_id)
        for row in benchmark_rows(results or {}):
            repository.add_benchmark_result(session, run, **row)
        repository.finish_benchmark_run(session, run, status, error)


def _scalar_figures(metrics: Any) -> dict[str, Any]:
    if not isinstance(metrics, Mapping):
        return {}
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def benchmark_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
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
