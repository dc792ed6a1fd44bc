"""The weekly re-benchmark, as a plain function the beat task calls.

It runs :func:`smearflow.training.benchmark.run_benchmark` on the training
dataset and records the run (``benchmark_runs``) when it starts, every fold
as it finishes and the aggregates when it ends, through
:class:`BenchmarkRecorder` — the recorder the ``benchmark`` command uses too,
so a benchmark stores the same rows whoever ran it. When it times out the
folds already written to the run folder are recorded, and the next run with the same
settings *resumes that folder* instead of starting again, so a benchmark too
long for one night finishes over several. A run whose process keeps dying is
given up after ``max_attempts`` deliveries, and a failed run is raised as a
failed task.

The default settings are sized to finish on a CPU host well within the default
4-hour limit: about 20 minutes on two cores, estimated from measured training-step
costs (docs/benchmark.md), not timed end to end (:data:`CPU_BENCHMARK_CONFIG`); GPU hosts set
``SMEARFLOW_BENCHMARK_CONFIG`` to the full-size settings of docs/benchmark.md.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable, Mapping

from smearflow.errors import PermanentError
from smearflow.training.benchmark_config import BenchmarkCallbacks
from smearflow.training.results import BenchmarkResults, BenchmarkRow, FoldResult, aggregate_row, fold_row

logger = logging.getLogger(__name__)

CPU_BENCHMARK_CONFIG: dict[str, Any] = {
    "architectures": ["cnn", "mobilenetv2"],
    "folds": 3,
    "image_size": 75,
    "epochs": 6,
    "subset_per_class": 150,
}
"""The nightly benchmark when ``SMEARFLOW_BENCHMARK_CONFIG`` is empty: two fast networks, three folds,
75 px, a subset of each class; about 20 minutes on a 2-core CPU host by the measured per-step costs (an
estimate, far inside the 4-hour limit)."""


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
        ``BenchmarkConfig`` fields (``SMEARFLOW_BENCHMARK_CONFIG``), or a
        preset with changes, e.g. ``{"preset": "cpu"}``; empty or ``None``
        means :data:`CPU_BENCHMARK_CONFIG`.
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
    recorder = BenchmarkRecorder(session_factory, run_id)
    try:
        if data_dir is None:
            raise PermanentError("no benchmark dataset is configured (set SMEARFLOW_TRAIN_DATA)")
        results = load_benchmark()(data_dir, run_folder, benchmark_settings(config), callbacks=recorder)
    except SoftTimeLimitExceeded as exc:
        results = finished_so_far(run_folder)
        error = (
            f"the benchmark reached its time limit, SMEARFLOW_TRAINING_TIME_LIMIT_S={time_limit_s or 0:.0f} s, "
            f"with {len(results.folds) if results else 0} fold(s) finished and recorded; "
            f"the next run resumes {run_folder}"
        )
        recorder.finish("failed", error, results)
        raise BenchmarkFailed(error) from exc
    except (PermanentError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        recorder.finish("failed", error, finished_so_far(run_folder))
        raise BenchmarkFailed(error) from exc
    except Exception as exc:
        logger.exception("re-benchmark failed")
        recorder.finish("failed", exc, finished_so_far(run_folder))
        raise
    recorder.finish("done", None, results)
    return {"status": "done", "run_folder": str(run_folder), "resumed": resumed, "error": None}


def benchmark_settings(config: Mapping[str, Any]):
    """A :class:`BenchmarkConfig` from ``SMEARFLOW_BENCHMARK_CONFIG``: its fields, or ``{"preset": NAME, ...}``.

    Raises
    ------
    ValueError
        For an unknown preset or invalid settings.
    """
    from smearflow.training.benchmark_config import BenchmarkConfig, preset_config

    fields = dict(config)
    preset = fields.pop("preset", None)
    return preset_config(preset, **fields) if preset else BenchmarkConfig.from_dict(fields)


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


def finished_so_far(run_folder: Path) -> BenchmarkResults | None:
    """The results of the folds a stopped benchmark wrote to its run folder (``None`` when none)."""
    from smearflow.training.benchmark import write_reports

    if not (run_folder / "folds").is_dir() or not any((run_folder / "folds").glob("*/seed*-fold*.json")):
        return None
    try:
        return write_reports(run_folder)
    except Exception:  # noqa: BLE001 - the failure being recorded matters more than the partial report
        logger.exception("could not summarise the finished folds of %s", run_folder)
        return None


class BenchmarkRecorder(BenchmarkCallbacks):
    """Records one benchmark run in the database: the one recorder of the ``benchmark`` command and the nightly job.

    One row per fold as it finishes (read back from a resumed run folder or
    trained; :func:`~smearflow.training.results.fold_row`), one aggregate
    row per architecture when the run ends
    (:func:`~smearflow.training.results.aggregate_row`). Each write is its
    own transaction, so the rows of finished folds survive a crash; a row
    is written once however often it is offered.

    Parameters
    ----------
    session_factory : sessionmaker
    run_id : int
        The ``benchmark_runs`` row, started by the caller.
    """

    def __init__(self, session_factory, run_id: int):
        self.session_factory = session_factory
        self.run_id = run_id
        self.recorded: set[tuple] = set()

    def on_fold_end(self, task, entry: FoldResult, resumed: bool) -> None:
        self._write([fold_row(entry)])

    def on_end(self, results: BenchmarkResults) -> None:
        self.record(results)

    def record(self, results: BenchmarkResults | None) -> None:
        """Every fold of ``results`` not recorded yet, then each architecture's aggregate."""
        if results is None:
            return
        self._write([fold_row(f) for f in results.folds])
        self._write([aggregate_row(s) for s in results.architectures.values()])

    def finish(self, status: str, error=None, results: BenchmarkResults | None = None) -> None:
        """Record what ``results`` holds that is not recorded yet, then the run's status (``done`` or ``failed``)."""
        from smearflow.db import repository, session_scope, transient_database_errors
        from smearflow.db.models import BenchmarkRun

        self.record(results)
        if status == "failed":
            logger.error("benchmark run %d failed: %s", self.run_id, error)
        if isinstance(error, BaseException) and not str(error):
            error = type(error).__name__
        with transient_database_errors(), session_scope(self.session_factory) as session:
            repository.finish_benchmark_run(session, session.get(BenchmarkRun, self.run_id), status, error)

    def _write(self, rows: list[BenchmarkRow]) -> None:
        from smearflow.db import repository, session_scope, transient_database_errors
        from smearflow.db.models import BenchmarkRun

        rows = [row for row in rows if row.key not in self.recorded]
        if not rows:
            return
        with transient_database_errors(), session_scope(self.session_factory) as session:
            run = session.get(BenchmarkRun, self.run_id)
            for row in rows:
                repository.add_benchmark_result(
                    session, run, row.architecture, row.fold, row.metrics,
                    accuracy=row.accuracy, macro_f1=row.macro_f1, seconds=row.seconds,
                )
        self.recorded.update(row.key for row in rows)


PROMOTION_ACTOR = "benchmark promotion"
"""Who a model activated through :func:`promote_winner` is recorded as activated by."""


def promote_winner(
    session_factory,
    results: BenchmarkResults,
    config,
    *,
    data_dir: str | Path,
    models_dir: str | Path,
    margin: float = 0.01,
    metric: str = "macro_f1",
    **retraining: Any,
):
    """Train the benchmark's winner on ``data_dir`` and put it through the retraining gate.

    The winner is the architecture with the best test accuracy
    (:meth:`BenchmarkResults.best`), trained with its benchmark settings by
    :func:`~smearflow.worker.nightly.run_retraining`: scored on the gate
    split beside the model in use, activated (recorded, with the reason) only
    when it wins by ``margin``; the packaged default is never overwritten.
    ``retraining`` goes to ``run_retraining`` (``train``, ``evaluate``,
    ``default_model_dir`` …).

    Returns
    -------
    smearflow.worker.nightly.RetrainOutcome

    Raises
    ------
    ValueError
        When no architecture of ``results`` has a test figure.
    smearflow.worker.nightly.RetrainingFailed
        When the retraining run fails (recorded).
    """
    from smearflow.worker.nightly import RetrainSettings, run_retraining

    best = results.best()
    if best is None:
        raise ValueError(
            f"{results.run_folder}: no architecture has a test figure (no finished fold); nothing to promote"
        )
    train_config = config.train_config(best.architecture, config.seeds[0]).to_dict()
    settings = RetrainSettings(
        data_dir=str(data_dir), models_dir=str(models_dir), train_config=train_config, margin=margin, metric=metric,
    )
    logger.info("promoting the benchmark winner %s through the retraining gate", best.architecture)
    return run_retraining(session_factory, settings, actor=PROMOTION_ACTOR, **retraining)
