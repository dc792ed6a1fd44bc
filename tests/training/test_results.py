"""The typed benchmark results: round trips, presets, the database rows, refusals."""

import json

import pytest

from smearflow.training.benchmark_config import PRESETS, BenchmarkConfig, preset_config
from smearflow.training.results import (
    ArchitectureSummary,
    BenchmarkResults,
    FoldResult,
    VariantResult,
    aggregate_row,
    benchmark_rows,
    fold_row,
)


def _fold(fold=0, accuracy=0.5):
    figures = {"accuracy": accuracy, "macro_f1": accuracy / 2}
    return FoldResult(
        architecture="cnn", seed=1, fold=fold, fold_seed=9, image_size=32, epochs=3, train_images=8,
        validation_images=4, test_images=4, train_seconds=1.5, seconds=2.0, machine="CPU", keras_backend="jax",
        variants={"network": VariantResult(figures, figures), "smote": VariantResult(figures, figures, {"k": 1})},
        history=[{"epoch": 0, "loss": 1.0}], params=123, epochs_run=2, stop_reason="early",
    )


def _summary(name="cnn", accuracy=0.6):
    return ArchitectureSummary(
        architecture=name, image_size=32, epochs=3, runs=2, seeds=[1], machines=["CPU"],
        seconds_per_fold={"mean": 2.0, "std": 0.0, "n": 2}, variants={},
        ensemble_test={"network": {"accuracy": {"mean": accuracy}, "macro_f1": {"mean": accuracy / 2}}},
        test_accuracy=accuracy,
    )


def _results():
    return BenchmarkResults(
        config={"folds": 2}, data="d", classes=["a", "b"], images={"total": 8}, machine="CPU", run_folder="r",
        complete=True, finished_note="", architectures={"cnn": _summary(), "vgg16": _summary("vgg16", 0.8)},
        folds=[_fold(0), _fold(1, 0.75)],
    )


def test_results_round_trip_through_json_and_folds_read_with_defaults(tmp_path):
    results = _results()
    again = BenchmarkResults.from_dict(json.loads(json.dumps(results.to_dict())))
    assert again.architectures == results.architectures
    assert [f.to_dict(history=False) for f in again.folds] == [f.to_dict(history=False) for f in results.folds]
    old = _fold().to_dict()
    for key in ("params", "epochs_run", "best_epoch", "stop_reason", "time_budget_s"):
        del old[key]
    (tmp_path / "fold.json").write_text(json.dumps(old))
    assert FoldResult.read(tmp_path / "fold.json").stop_reason is None
    (tmp_path / "results.json").write_text(json.dumps(results.to_dict()))
    assert BenchmarkResults.read(tmp_path).best().architecture == "vgg16"


def test_refusals():
    with pytest.raises(ValueError, match=r"FoldResult has no field\(s\) \['colour'\]"):
        FoldResult.from_dict(_fold().to_dict() | {"colour": 1})
    with pytest.raises(FileNotFoundError, match="holds no results.json"):
        BenchmarkResults.read("/nowhere")
    with pytest.raises(ValueError, match="Unknown benchmark preset 'gpu9'"):
        preset_config("gpu9")
    with pytest.raises(ValueError, match="patience must be a positive integer or None. Received: patience=0"):
        BenchmarkConfig(architectures=("cnn",), image_size=32, patience=0)
    with pytest.raises(ValueError, match="time_budget_s must be positive or None. Received: time_budget_s=-1"):
        BenchmarkConfig(architectures=("cnn",), image_size=32, time_budget_s=-1)
    with pytest.raises(ValueError, match=r"folds_trained must map architecture names to 1..folds=5. .*'cnn': 6"):
        BenchmarkConfig(architectures=("cnn",), image_size=32, folds_trained={"cnn": 6})
    with pytest.raises(ValueError, match=r"time_budgets_s must map architecture names to positive seconds"):
        BenchmarkConfig(architectures=("cnn",), image_size=32, time_budgets_s={"cnn": 0})
    with pytest.raises(ValueError, match="stopping_images must be positive. Received: stopping_images=0"):
        BenchmarkConfig(architectures=("cnn",), image_size=32, stopping_images=0)


def test_the_cpu_preset_covers_every_architecture_at_75_px_with_folds_and_a_budget():
    cpu = preset_config("cpu")
    assert cpu.image_size >= 75 and len(cpu.architectures) == 10 and cpu.folds >= 2
    training_s = sum(cpu.fold_budget_s(n) * cpu.trained_folds(n) for n in cpu.architectures)
    assert cpu.patience and training_s <= 1.75 * 3600  # the rest of 2.5 h is for scoring
    assert cpu.trained_folds("cnn") == cpu.trained_folds("mobilenetv2") == cpu.folds >= 3
    assert cpu.fold_budget_s("cnn") == cpu.time_budgets_s["cnn"] / cpu.folds > cpu.time_budget_s
    assert cpu.trained_folds("hybrid") == 1 and cpu.fold_budget_s("hybrid") == cpu.time_budget_s
    assert preset_config("cpu", epochs=2).epochs == 2 and set(PRESETS) == {"cpu", "gpu-10min"}
    gpu = preset_config("gpu-10min")
    assert gpu.architectures[0] == "hybrid" and gpu.image_size == 224 and gpu.trained_folds("hybrid") == 1


def test_rows_fold_then_aggregate():
    results = _results()
    rows = benchmark_rows(results)
    assert [(r.architecture, r.fold) for r in rows] == [("cnn", 0), ("cnn", 1), ("cnn", -1), ("vgg16", -1)]
    first = fold_row(results.folds[0])
    assert (first.accuracy, first.macro_f1, first.seconds) == (0.5, 0.25, 2.0)
    assert "history" not in first.metrics and first.metrics["seed"] == 1 and first.key == ("cnn", 0, 1)
    aggregate = aggregate_row(_summary())
    assert (aggregate.accuracy, aggregate.macro_f1, aggregate.metrics["aggregate"]["runs"]) == (0.6, 0.3, 2)
