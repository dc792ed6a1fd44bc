"""Nightly retraining: the activation decision, the recorded runs, and one real tiny training."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from smearflow.db import repository, session_scope
from smearflow.db.models import BenchmarkRun, TrainingRun
from smearflow.errors import BadDatasetError, BadModelError
from smearflow.worker.nightly import (
    decide_activation,
    evaluate_model_folder,
    load_benchmark_function,
    run_rebenchmark,
    run_retraining,
)
from worker_testdata import write_colour_classes


# --------------------------------------------------------------------------- the decision


@pytest.mark.parametrize(
    "candidate, active, margin, expected",
    [
        (0.90, 0.85, 0.01, True),
        (0.855, 0.85, 0.01, False),  # better, but not by the margin
        (0.85, 0.85, 0.0, False),  # a tie keeps the active model
        (0.80, 0.85, 0.0, False),
        (0.10, None, 0.5, True),  # nothing to compare with
    ],
)
def test_decide_activation(candidate, active, margin, expected):
    active_metrics = None if active is None else {"macro_f1": active}
    assert decide_activation({"macro_f1": candidate}, active_metrics, margin) is expected


def test_decide_activation_on_another_metric():
    assert decide_activation({"accuracy": 0.9, "macro_f1": 0.1}, {"accuracy": 0.8, "macro_f1": 0.9}, 0.05, "accuracy")


@pytest.mark.parametrize(
    "candidate, active, margin, message",
    [
        ({"macro_f1": 0.9}, {"macro_f1": 0.8}, -0.01, "margin must be a finite number >= 0"),
        ({"macro_f1": 0.9}, {"macro_f1": 0.8}, float("nan"), "margin must be a finite number >= 0"),
        ({"accuracy": 0.9}, None, 0.0, r"candidate_metrics\['macro_f1'\] must be a finite number. Received: None"),
        ({"macro_f1": 0.9}, {"macro_f1": float("nan")}, 0.0, r"active_metrics\['macro_f1'\] must be a finite number"),
        ({"macro_f1": True}, None, 0.0, "must be a finite number"),
    ],
)
def test_decide_activation_rejects_bad_input(candidate, active, margin, message):
    with pytest.raises(ValueError, match=message):
        decide_activation(candidate, active, margin)


# --------------------------------------------------------------------------- retraining with stubs


def _stub_model_folder(path, accuracy):
    """A model folder the registry accepts (read_model_folder) without Keras."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.keras").write_bytes(f"weights {path.name}".encode())
    (path / "config.json").write_text(json.dumps({"architecture": "cnn", "image_size": 32}))
    (path / "classes.json").write_text(json.dumps(["a", "b"]))
    (path / "metrics.json").write_text(json.dumps({"accuracy": accuracy}))
    return path


class StubTraining:
    """train(data_dir, out_dir, config) that writes a stub model folder; evaluate() from a table."""

    def __init__(self, scores):
        self.scores = scores  # folder name or "candidate" -> macro_f1
        self.trained = []
        self.evaluated = []

    def train(self, data_dir, out_dir, config):
        from smearflow.classifier.model_folder import read_model_folder

        self.trained.append((Path(data_dir), Path(out_dir), config))
        return read_model_folder(_stub_model_folder(Path(out_dir), 0.5))

    def evaluate(self, model_dir, data_dir, test_fraction, seed):
        self.evaluated.append((Path(model_dir).name, test_fraction, seed))
        key = "candidate" if Path(model_dir).name.startswith("cnn-") else Path(model_dir).name
        score = self.scores[key]
        if isinstance(score, Exception):
            raise score
        return {"accuracy": score, "macro_f1": score, "per_class": {"a": {"f1": score}}, "confusion_matrix": [[1]]}


def _retrain(factory, tmp_path, stub, **kwargs):
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    defaults = dict(
        data_dir=data, models_dir=tmp_path / "models", train_config={"epochs": 1, "seed": 7, "test_fraction": 0.2},
        margin=0.02, train=stub.train, evaluate=stub.evaluate, default_model_dir=lambda: None,
        now=lambda: datetime(2026, 11, 26, 2, 30, tzinfo=UTC),
    )
    return run_retraining(factory, **{**defaults, **kwargs})


def _runs(factory):
    with session_scope(factory) as session:
        return [
            (run.outcome, run.candidate_model_version.name if run.candidate_model_version else None, run.error, run.metrics)
            for run in session.scalars(select(TrainingRun).order_by(TrainingRun.id))
        ]


def _active(factory):
    with session_scope(factory) as session:
        active = repository.active_model_version(session)
        return None if active is None else active.name


def _activate_stub_baseline(factory, tmp_path, name="baseline"):
    from smearflow.worker.nightly import register_model_folder

    with session_scope(factory) as session:
        version = register_model_folder(session, _stub_model_folder(tmp_path / name, 0.7))
        repository.activate_model_version(session, version.name)
        return version.name


def test_with_no_model_to_beat_the_candidate_is_activated(tmp_path, db_factory):
    stub = StubTraining({"candidate": 0.6})
    outcome = _retrain(db_factory, tmp_path, stub)
    assert outcome.outcome == "activated" and outcome.baseline is None
    assert stub.trained[0][1] == tmp_path / "models" / "cnn-20261126T023000Z"
    assert stub.evaluated == [("cnn-20261126T023000Z", 0.2, 7)]  # the training split's seed and fraction
    assert _active(db_factory) == outcome.candidate
    ((kind, candidate, error, metrics),) = _runs(db_factory)
    assert (kind, candidate, error) == ("activated", outcome.candidate, None)
    assert metrics["candidate"]["macro_f1"] == 0.6 and metrics["margin"] == 0.02


def test_a_candidate_that_wins_by_the_margin_replaces_the_active_model(tmp_path, db_factory):
    baseline = _activate_stub_baseline(db_factory, tmp_path)
    stub = StubTraining({"candidate": 0.75, "baseline": 0.70})
    outcome = _retrain(db_factory, tmp_path, stub)
    assert (outcome.outcome, outcome.baseline) == ("activated", baseline)
    assert {name for name, _, _ in stub.evaluated} == {"cnn-20261126T023000Z", "baseline"}
    assert _active(db_factory) == outcome.candidate
    assert outcome.to_dict()["baseline_metrics"] == {"accuracy": 0.70, "macro_f1": 0.70}


def test_a_candidate_within_the_margin_is_registered_but_not_activated(tmp_path, db_factory):
    baseline = _activate_stub_baseline(db_factory, tmp_path)
    outcome = _retrain(db_factory, tmp_path, StubTraining({"candidate": 0.71, "baseline": 0.70}))
    assert outcome.outcome == "kept-active"
    assert _active(db_factory) == baseline
    with session_scope(db_factory) as session:
        assert outcome.candidate in {v.name for v in repository.list_model_versions(session)}
    assert _runs(db_factory)[0][:2] == ("kept-active", outcome.candidate)


def test_the_environment_model_is_the_baseline_when_set(tmp_path, db_factory):
    pinned = _stub_model_folder(tmp_path / "pinned", 0.9)
    outcome = _retrain(db_factory, tmp_path, StubTraining({"candidate": 0.5, "pinned": 0.8}), env_model_dir=pinned)
    assert (outcome.outcome, outcome.baseline) == ("kept-active", str(pinned))


def test_the_packaged_model_is_the_baseline_when_nothing_is_active(tmp_path, db_factory):
    packaged = _stub_model_folder(tmp_path / "packaged", 0.9)
    outcome = _retrain(db_factory, tmp_path, StubTraining({"candidate": 0.95, "packaged": 0.8}), default_model_dir=lambda: packaged)
    assert (outcome.outcome, outcome.baseline) == ("activated", str(packaged))


def test_a_baseline_that_cannot_be_evaluated_is_kept(tmp_path, db_factory):
    baseline = _activate_stub_baseline(db_factory, tmp_path)
    stub = StubTraining({"candidate": 0.99, "baseline": BadModelError("classes differ")})
    outcome = _retrain(db_factory, tmp_path, stub)
    assert outcome.outcome == "kept-active" and "could not be evaluated" in outcome.error
    assert _active(db_factory) == baseline
    assert "classes differ" in _runs(db_factory)[0][2]


def test_no_dataset_is_a_recorded_failure(tmp_path, db_factory):
    outcome = _retrain(db_factory, tmp_path, StubTraining({}), data_dir=None)
    assert outcome.outcome == "failed" and "SMEARFLOW_TRAIN_DATA" in outcome.error
    outcome = _retrain(db_factory, tmp_path, StubTraining({}), data_dir=tmp_path / "nowhere")
    assert "does not exist" in outcome.error
    assert [run[0] for run in _runs(db_factory)] == ["failed", "failed"]


def test_a_bad_dataset_is_a_recorded_failure(tmp_path, db_factory):
    stub = StubTraining({})
    stub.train = lambda data_dir, out_dir, config: (_ for _ in ()).throw(BadDatasetError("no class folders found"))
    outcome = _retrain(db_factory, tmp_path, stub)
    assert outcome.outcome == "failed" and outcome.error == "BadDatasetError: no class folders found"
    assert _runs(db_factory)[0][:3] == ("failed", None, "BadDatasetError: no class folders found")


def test_an_unexpected_error_is_recorded_then_raised(tmp_path, db_factory):
    stub = StubTraining({})
    stub.train = lambda data_dir, out_dir, config: (_ for _ in ()).throw(MemoryError("out of GPU memory"))
    with pytest.raises(MemoryError):
        _retrain(db_factory, tmp_path, stub)
    assert _runs(db_factory)[0][:3] == ("failed", None, "MemoryError: out of GPU memory")


def test_a_bad_train_config_is_rejected_before_training(tmp_path, db_factory):
    with pytest.raises(ValueError, match="TrainConfig has no field"):
        _retrain(db_factory, tmp_path, StubTraining({}), train_config={"epoch": 1})


@pytest.mark.slow
def test_nightly_retraining_really_trains_and_then_keeps_an_equal_model(tmp_path, db_factory):
    data = write_colour_classes(tmp_path / "data", per_class=10, size_px=32)
    config = {"image_size": 32, "epochs": 2, "batch_size": 8, "test_fraction": 0.3, "arch_params": {"filters": [4, 8]}}
    first = run_retraining(
        db_factory, data_dir=data, models_dir=tmp_path / "models", train_config=config, margin=0.0,
        default_model_dir=lambda: None, now=lambda: datetime(2026, 11, 26, 2, 30, tzinfo=UTC),
    )
    assert first.outcome == "activated"
    assert first.candidate_metrics["eval_images"] == 9
    assert first.candidate_metrics["classes"] == ["a", "b", "c"]
    second = run_retraining(
        db_factory, data_dir=data, models_dir=tmp_path / "models", train_config=config, margin=0.5,
        default_model_dir=lambda: None, now=lambda: datetime(2026, 11, 27, 2, 30, tzinfo=UTC),
    )
    assert (second.outcome, second.baseline) == ("kept-active", first.candidate)
    assert second.baseline_metrics["eval_images"] == 9
    assert _active(db_factory) == first.candidate
    assert [run[0] for run in _runs(db_factory)] == ["activated", "kept-active"]


def test_evaluating_a_model_with_other_classes_is_refused(tmp_path, tiny_model_dir):
    data = write_colour_classes(tmp_path / "data", per_class=4)
    with pytest.raises(BadModelError, match="are not the dataset's"):
        evaluate_model_folder(tiny_model_dir, data, 0.25, 0)


# --------------------------------------------------------------------------- re-benchmark


def _benchmark_runs(factory):
    with session_scope(factory) as session:
        return [
            (run.status, run.error, [(r.architecture, r.fold, r.accuracy) for r in run.results])
            for run in session.scalars(select(BenchmarkRun).order_by(BenchmarkRun.id))
        ]


def test_rebenchmark_records_a_clear_failure_when_the_benchmark_is_unavailable(tmp_path, db_factory):
    def unavailable():
        raise __import__("smearflow.errors", fromlist=["PermanentError"]).PermanentError(
            "smearflow.training.benchmark.run_benchmark is not available (No module named 'x')"
        )

    result = run_rebenchmark(db_factory, data_dir=tmp_path, out_dir=tmp_path / "bench", load_benchmark=unavailable)
    assert result["status"] == "failed" and "is not available" in result["error"]
    assert _benchmark_runs(db_factory)[0][:2] == ("failed", result["error"])


def test_rebenchmark_records_the_folds_and_the_test_figures(tmp_path, db_factory):
    calls = []

    def run_benchmark(data_dir, out_dir, config=None):
        calls.append((data_dir, out_dir, config))
        return {
            "folds": [
                {"architecture": "cnn", "fold": 0, "variants": {"network": {"validation": {"accuracy": 0.8, "macro_f1": 0.7}}}},
                {"architecture": "cnn", "fold": "?"},
            ],
            "architectures": {"cnn": {"ensemble_test": {"network": {"accuracy": {"mean": 0.85, "std": 0.01}}}}, "odd": 3},
        }

    result = run_rebenchmark(
        db_factory, data_dir=tmp_path, out_dir=tmp_path / "bench", load_benchmark=lambda: run_benchmark,
        now=lambda: datetime(2026, 11, 29, 4, 30, tzinfo=UTC),
    )
    assert result == {"status": "done", "run_folder": str(tmp_path / "bench" / "nightly-20261129T043000Z"), "error": None}
    assert calls == [(tmp_path, tmp_path / "bench" / "nightly-20261129T043000Z", None)]
    assert _benchmark_runs(db_factory) == [("done", None, [("cnn", 0, 0.8), ("cnn", -1, 0.85)])]


def test_rebenchmark_passes_its_configuration(tmp_path, db_factory):
    seen = []
    result = run_rebenchmark(
        db_factory, data_dir=tmp_path, out_dir=tmp_path, benchmark_config={"folds": 3, "architectures": ["cnn"]},
        load_benchmark=lambda: lambda data_dir, out_dir, config: seen.append(config) or {},
    )
    assert result["status"] == "done"
    assert (seen[0].folds, seen[0].architectures) == (3, ("cnn",))


def test_rebenchmark_without_dataset_or_with_a_bad_one_fails_recorded(tmp_path, db_factory):
    assert run_rebenchmark(db_factory, data_dir=None, out_dir=tmp_path, load_benchmark=lambda: None)["status"] == "failed"

    def bad(data_dir, out_dir):
        raise ValueError("a class has too few images for the folds")

    result = run_rebenchmark(db_factory, data_dir=tmp_path, out_dir=tmp_path, load_benchmark=lambda: bad)
    assert result["error"] == "ValueError: a class has too few images for the folds"
    assert [run[0] for run in _benchmark_runs(db_factory)] == ["failed", "failed"]


def test_rebenchmark_records_then_raises_an_unexpected_error(tmp_path, db_factory):
    def crash(data_dir, out_dir):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        run_rebenchmark(db_factory, data_dir=tmp_path, out_dir=tmp_path, load_benchmark=lambda: crash)
    assert _benchmark_runs(db_factory)[0][:2] == ("failed", "RuntimeError: disk full")


def test_load_benchmark_function(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "smearflow.training.benchmark", None)  # import fails
    with pytest.raises(Exception, match="run_benchmark is not available"):
        load_benchmark_function()
