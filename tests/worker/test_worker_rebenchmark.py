"""The nightly re-benchmark: recorded runs, finished folds kept when it times out, resumed the next night."""

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from smearflow.db import session_scope
from smearflow.db.models import BenchmarkRun
from smearflow.errors import PermanentError
from smearflow.worker.rebenchmark import (
    CPU_BENCHMARK_CONFIG,
    BenchmarkFailed,
    load_benchmark_function,
    run_rebenchmark,
)
from smearflow_testkit import write_class_folders

TINY = {
    "architectures": ["cnn"], "folds": 2, "image_size": 32, "epochs": 1, "batch_size": 8, "test_fraction": 0.2,
    "arch_params": {"cnn": {"filters": [4, 8]}},
}


def _benchmark_runs(factory):
    with session_scope(factory) as session:
        return [
            (run.status, run.error, sorted((r.architecture, r.fold) for r in run.results), run.run_folder, run.attempts)
            for run in session.scalars(select(BenchmarkRun).order_by(BenchmarkRun.id))
        ]


def test_an_unavailable_benchmark_is_a_recorded_failed_task(tmp_path, db_factory):
    def unavailable():
        raise PermanentError("smearflow.training.benchmark.run_benchmark is not available (No module named 'x')")

    with pytest.raises(BenchmarkFailed, match="is not available"):
        run_rebenchmark(db_factory, data_dir=tmp_path, out_dir=tmp_path / "bench", load_benchmark=unavailable)
    assert _benchmark_runs(db_factory)[0][0] == "failed"


def test_the_folds_and_test_figures_are_recorded(tmp_path, db_factory):
    calls = []

    def run_benchmark(data_dir, out_dir, config, callbacks=None):
        calls.append((data_dir, out_dir, config))

    result = run_rebenchmark(
        db_factory, data_dir=tmp_path, out_dir=tmp_path / "bench", load_benchmark=lambda: run_benchmark,
        now=lambda: datetime(2026, 11, 29, 4, 30, tzinfo=UTC),
    )
    folder = tmp_path / "bench" / "nightly-20261129T043000Z"
    assert result == {"status": "done", "run_folder": str(folder), "resumed": False, "error": None}
    assert calls[0][1] == folder and calls[0][2].architectures == tuple(CPU_BENCHMARK_CONFIG["architectures"])
    assert _benchmark_runs(db_factory)[0][:3] == ("done", None, [])


def _rows(url):
    """Every stored benchmark row of the (single) run of a database."""
    from smearflow.db import make_engine, session_factory
    from smearflow.db.models import BenchmarkResult

    engine = make_engine(url)
    with session_factory(engine)() as session:
        rows = [
            (r.architecture, r.fold, r.accuracy, r.macro_f1, r.seconds, r.metrics)
            for r in session.scalars(select(BenchmarkResult).order_by(BenchmarkResult.id))
        ]
    engine.dispose()
    return rows


def test_the_command_and_the_nightly_job_store_identical_rows(tmp_path, sqlite_url):
    """The real benchmark on tiny data: the nightly job trains it; the command resumes a copy; same rows."""
    import shutil

    from typer.testing import CliRunner

    from smearflow.cli import app
    from smearflow.db import make_engine, session_factory, upgrade_database

    data = write_class_folders(tmp_path / "data", per_class=8, size=32)
    engine = make_engine(sqlite_url)
    run_rebenchmark(
        session_factory(engine), data_dir=data, out_dir=tmp_path / "bench", benchmark_config=TINY,
        now=lambda: datetime(2026, 11, 29, 4, 30, tzinfo=UTC),
    )
    engine.dispose()
    nightly_folder = tmp_path / "bench" / "nightly-20261129T043000Z"
    assert (nightly_folder / "results.json").is_file() and (nightly_folder / "report.md").is_file()
    shutil.copytree(nightly_folder, tmp_path / "copy")
    command_url = f"sqlite:///{tmp_path / 'command.db'}"
    upgrade_database(command_url)
    result = CliRunner().invoke(app, [
        "benchmark", "--data", str(data), "--archs", "cnn", "--folds", "2", "--image-size", "32", "--epochs", "1",
        "--batch-size", "8", "--test-fraction", "0.2", "--arch-params", '{"cnn": {"filters": [4, 8]}}',
        "--out", str(tmp_path / "copy"), "--database-url", command_url,
    ])
    assert result.exit_code == 0, result.output
    nightly, command = _rows(sqlite_url), _rows(command_url)
    assert [(r[0], r[1]) for r in nightly] == [("cnn", 0), ("cnn", 1), ("cnn", -1)]
    assert nightly == command
    assert nightly[0][5]["variants"]["smote"]["validation"]["accuracy"] is not None


def test_the_default_settings_are_the_cpu_sized_ones_and_a_configuration_is_passed(tmp_path, db_factory):
    from smearflow.training.benchmark import BenchmarkConfig

    seen = []
    run_rebenchmark(
        db_factory, data_dir=tmp_path, out_dir=tmp_path, benchmark_config={"folds": 3, "architectures": ["cnn"]},
        load_benchmark=lambda: lambda data_dir, out_dir, config, callbacks=None: seen.append(config),
    )
    assert (seen[0].folds, seen[0].architectures) == (3, ("cnn",))
    cpu = BenchmarkConfig.from_dict(CPU_BENCHMARK_CONFIG)
    assert cpu.image_size == 75 and len(cpu.architectures) == 2


def test_no_dataset_or_a_bad_one_fails_recorded(tmp_path, db_factory):
    with pytest.raises(BenchmarkFailed, match="no benchmark dataset is configured"):
        run_rebenchmark(db_factory, data_dir=None, out_dir=tmp_path, load_benchmark=lambda: None)

    def bad(data_dir, out_dir, config, callbacks=None):
        raise ValueError("a class has too few images for the folds")

    with pytest.raises(BenchmarkFailed, match="ValueError: a class has too few images"):
        run_rebenchmark(db_factory, data_dir=tmp_path, out_dir=tmp_path / "b", load_benchmark=lambda: bad)
    assert [run[0] for run in _benchmark_runs(db_factory)] == ["failed", "failed"]


def test_an_unexpected_error_is_recorded_then_raised(tmp_path, db_factory):
    def crash(data_dir, out_dir, config, callbacks=None):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        run_rebenchmark(db_factory, data_dir=tmp_path, out_dir=tmp_path, load_benchmark=lambda: crash)
    assert _benchmark_runs(db_factory)[0][:2] == ("failed", "RuntimeError: disk full")


def test_a_task_whose_process_keeps_dying_is_given_up(tmp_path, any_db_factory):
    def dies(data_dir, out_dir, config, callbacks=None):
        raise KeyboardInterrupt  # stands in for SIGKILL

    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            run_rebenchmark(any_db_factory, data_dir=tmp_path, out_dir=tmp_path, task_id="b-1", max_attempts=2,
                            load_benchmark=lambda: dies)
    with pytest.raises(BenchmarkFailed, match="benchmark was started 2 times and its process died each time"):
        run_rebenchmark(any_db_factory, data_dir=tmp_path, out_dir=tmp_path, task_id="b-1", max_attempts=2,
                        load_benchmark=lambda: dies)
    ((status, _, _, _, attempts),) = _benchmark_runs(any_db_factory)
    assert (status, attempts) == ("failed", 3)


def test_a_timed_out_benchmark_keeps_its_finished_folds_and_resumes_the_next_night(tmp_path, any_db_factory):
    from celery.exceptions import SoftTimeLimitExceeded

    from smearflow.training.benchmark import BenchmarkCallbacks, run_benchmark

    data = write_class_folders(tmp_path / "data", per_class=8, size=32)

    class TimeLimitAfterOneFold(BenchmarkCallbacks):
        def on_fold_end(self, task, entry, resumed):
            raise SoftTimeLimitExceeded()

    def interrupted(data_dir, out_dir, config, callbacks=None):
        return run_benchmark(data_dir, out_dir, config, callbacks=TimeLimitAfterOneFold())

    with pytest.raises(BenchmarkFailed, match="1 fold\\(s\\) finished and recorded; the next run resumes"):
        run_rebenchmark(
            any_db_factory, data_dir=data, out_dir=tmp_path / "bench", benchmark_config=TINY, time_limit_s=900,
            load_benchmark=lambda: interrupted, now=lambda: datetime(2026, 11, 29, 4, 30, tzinfo=UTC),
        )
    (first,) = _benchmark_runs(any_db_factory)
    assert first[0] == "failed" and "SMEARFLOW_TRAINING_TIME_LIMIT_S=900 s" in first[1]
    assert ("cnn", 0) in first[2]  # the finished fold is in the database

    result = run_rebenchmark(
        any_db_factory, data_dir=data, out_dir=tmp_path / "bench", benchmark_config=TINY,
        now=lambda: datetime(2026, 12, 6, 4, 30, tzinfo=UTC),
    )
    assert result["resumed"] and result["run_folder"] == first[3]
    second = _benchmark_runs(any_db_factory)[1]
    assert second[0] == "done" and {("cnn", 0), ("cnn", 1), ("cnn", -1)} <= set(second[2])
    assert second[3] == first[3]


def test_load_benchmark_function(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "smearflow.training.benchmark", None)  # import fails
    with pytest.raises(PermanentError, match="run_benchmark is not available"):
        load_benchmark_function()


def test_the_benchmark_winner_is_promoted_through_the_retraining_gate(tmp_path, db_factory):
    """A tiny real benchmark, then its winner trained, judged on the gate split and activated with its reason."""
    from smearflow.db.models import ModelActivation, TrainingRun
    from smearflow.training.benchmark import BenchmarkConfig, run_benchmark
    from smearflow.worker.rebenchmark import PROMOTION_ACTOR, promote_winner

    data = write_class_folders(tmp_path / "data", per_class=10, size=32)
    config = BenchmarkConfig.from_dict(TINY | {"smote": False})
    results = run_benchmark(data, tmp_path / "run", config)
    outcome = promote_winner(
        db_factory, results, config, data_dir=data, models_dir=tmp_path / "models", default_model_dir=lambda: None,
    )
    assert outcome.outcome == "activated" and "no model to beat" in outcome.reason
    with session_scope(db_factory) as session:
        activation = session.scalars(select(ModelActivation)).one()
        assert activation.actor == PROMOTION_ACTOR
        run = session.scalars(select(TrainingRun)).one()
        assert run.outcome == "activated" and run.candidate_model_version.architecture == "cnn"
    assert (tmp_path / "models").is_dir()


def test_nothing_to_promote_without_a_complete_cross_validation(tmp_path, db_factory):
    from smearflow.training.results import BenchmarkResults
    from smearflow.worker.rebenchmark import promote_winner

    empty = BenchmarkResults(
        config={}, data=str(tmp_path), classes=["a"], images={}, machine="m", run_folder=str(tmp_path),
        complete=False, finished_note="", architectures={}, folds=[],
    )
    with pytest.raises(ValueError, match="no architecture has a test figure"):
        promote_winner(db_factory, empty, None, data_dir=tmp_path, models_dir=tmp_path / "m")


def test_a_preset_names_the_nightly_settings(tmp_path, db_factory):
    from smearflow.worker.rebenchmark import benchmark_settings

    seen = []
    run_rebenchmark(
        db_factory, data_dir=tmp_path, out_dir=tmp_path, benchmark_config={"preset": "cpu", "epochs": 4},
        load_benchmark=lambda: lambda data_dir, out_dir, config, callbacks=None: seen.append(config),
    )
    assert (seen[0].image_size, seen[0].epochs, len(seen[0].architectures)) == (75, 4, 10)
    with pytest.raises(ValueError, match="Unknown benchmark preset 'fast'"):
        benchmark_settings({"preset": "fast"})
