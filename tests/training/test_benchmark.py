"""A tiny end-to-end benchmark: report files, resume, the SMOTE leak test, bad settings."""

import json
from pathlib import Path

import numpy as np
import pytest

from smearflow_testkit import write_class_folders
from smearflow.errors import BadDatasetError
from smearflow.training.benchmark import BenchmarkCallbacks, BenchmarkConfig, fold_seed, run_benchmark
from smearflow.training.run_folder import check_or_start_run_folder

TINY = {"cnn": {"filters": (4, 8)}, "unet_encoder": {"filters": (4, 8)}}


def _config(**changes):
    settings = dict(
        architectures=("cnn", "unet_encoder"),
        folds=2,
        image_size=32,
        epochs=1,
        batch_size=8,
        test_fraction=0.2,
        arch_params=TINY,
    )
    return BenchmarkConfig(**(settings | changes))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_class_folders(tmp_path_factory.mktemp("bench-data"), per_class=10, size=32)


class Recorder(BenchmarkCallbacks):
    def __init__(self):
        self.plan, self.epochs, self.folds = None, [], []

    def on_start(self, plan, run_folder):
        self.plan = plan

    def on_epoch_end(self, task, epoch, logs):
        self.epochs.append((task.architecture, task.fold, epoch))

    def on_fold_end(self, task, entry, resumed):
        self.folds.append((task.architecture, task.fold, resumed))


def test_benchmark_end_to_end_and_resume(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    recorder = Recorder()
    results = run_benchmark(tiny_data, out, _config(), callbacks=recorder)

    assert [(t.architecture, t.fold, t.done) for t in recorder.plan] == [
        ("cnn", 0, False), ("cnn", 1, False), ("unet_encoder", 0, False), ("unet_encoder", 1, False)
    ]
    assert len(recorder.epochs) == 4 and all(not resumed for *_, resumed in recorder.folds)
    for name in ("benchmark.json", "splits.json", "results.json", "results.csv", "report.md"):
        assert (out / name).is_file(), name
    for name in ("cnn", "unet_encoder"):
        for plot in ("confusion_validation", "confusion_test_ensemble", "curves"):
            assert (out / "plots" / f"{name}_{plot}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / "folds" / name / "seed20261125-fold0_confusion.png").is_file()

    splits = json.loads((out / "splits.json").read_text())
    assert splits["classes"] == ["a", "b", "c"] and splits["split_seed"] == 20261125
    folds = splits["folds"]["20261125"]
    assert len(folds) == 2 and folds[0]["fold_seed"] == fold_seed(20261125, 0)
    assert sorted(folds[0]["validation"] + folds[1]["validation"]) == sorted(splits["train"])
    for fold in folds:
        assert not set(fold["train"]) & set(fold["validation"])
        assert not (set(fold["train"]) | set(fold["validation"])) & set(splits["test"])
    assert len(splits["test"]) == 6

    assert results.complete and set(results.architectures) == {"cnn", "unet_encoder"}
    summary = results.architectures["cnn"]
    assert summary.runs == 2 and summary.image_size == 32 and summary.epochs == 1
    assert set(summary.variants) == {"network", "refit", "smote"}
    accuracy = summary.variants["network"]["validation"]["accuracy"]
    assert 0.0 <= accuracy["mean"] <= 1.0 and accuracy["n"] == 2
    assert np.sum(summary.variants["network"]["validation_confusion_matrix"]) == len(splits["train"])
    assert np.sum(summary.ensemble_test["network"]["confusion_matrix"]) == 6
    entry = results.folds[0]
    assert entry.unreadable_images == {"validation": 0, "test": 0}
    assert entry.variants["smote"].head["fit_class_counts"][0] == max(entry.variants["smote"].head["train_class_counts"])
    for key in ("accuracy", "macro_precision", "weighted_f1", "per_class", "confusion_matrix", "roc_auc_macro_ovr"):
        assert key in entry.variants["network"].test
    report = (out / "report.md").read_text()
    assert "| architecture | image size | epochs |" in report and "| cnn | 32 | 1 | 2 |" in report
    assert "98.51%" in report and "Effect of SMOTE" in report and "CPU" in report
    csv_lines = (out / "results.csv").read_text().splitlines()
    # 2 archs x 2 folds x 3 variants x 2 splits, plus 2 archs x 3 variants fold-ensemble rows
    assert len(csv_lines) == 1 + 24 + 6 and csv_lines[0].startswith("architecture,seed,fold,variant,split")

    # Resume: everything is read back, nothing is trained again.
    import smearflow.training.train as train_module

    def no_training(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(train_module, "fit_classifier", no_training)
    again = Recorder()
    resumed = run_benchmark(tiny_data, out, _config(), callbacks=again)
    assert all(t.done for t in again.plan) and all(r for *_, r in again.folds) and not again.epochs
    assert resumed.architectures["cnn"].variants == results.architectures["cnn"].variants

    # An interrupted run: only the missing fold is trained.
    monkeypatch.undo()
    (out / "folds" / "unet_encoder" / "seed20261125-fold1.json").unlink()
    calls = []
    real = train_module.fit_classifier

    def counting(*args, **kwargs):
        calls.append(args[1].architecture)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "fit_classifier", counting)
    partial = Recorder()
    run_benchmark(tiny_data, out, _config(), callbacks=partial)
    assert calls == ["unet_encoder"]
    assert [t.done for t in partial.plan] == [True, True, True, False]

    with pytest.raises(ValueError, match=r"holds a benchmark with other settings \(epochs\)"):
        run_benchmark(tiny_data, out, _config(epochs=2))


def test_smote_sees_only_the_training_fold(tiny_data, tmp_path, monkeypatch):
    """Would fail if SMOTE were fitted before the split or on validation/test images.

    Every embedding is replaced by a fingerprint of its image (its index in the
    dataset), so the rows SMOTE receives name the images they come from.
    """
    import imblearn.over_sampling

    import smearflow.training.smote as smote_module

    all_paths = sorted(str(p) for p in tiny_data.rglob("*.png"))
    real_embed = smote_module.embed_and_predict

    def fingerprint_embed(model, dataset, *args, **kwargs):
        _, probabilities, labels = real_embed(model, dataset, *args, **kwargs)
        index = np.array([all_paths.index(p) for p in dataset.paths], dtype=float)
        return np.stack([index, np.sin(index), np.cos(index)], axis=1), probabilities, labels

    seen = []
    real_resample = imblearn.over_sampling.SMOTE.fit_resample

    def spy(self, x, y):
        seen.append({all_paths[int(round(i))] for i in np.asarray(x)[:, 0]})
        return real_resample(self, x, y)

    monkeypatch.setattr(smote_module, "embed_and_predict", fingerprint_embed)
    monkeypatch.setattr(imblearn.over_sampling.SMOTE, "fit_resample", spy)
    out = tmp_path / "run"
    run_benchmark(tiny_data, out, _config(architectures=("cnn",)))

    splits = json.loads((out / "splits.json").read_text())
    assert len(seen) == 2
    for received, fold in zip(seen, splits["folds"]["20261125"]):
        relative = {str(Path(p).relative_to(tiny_data)) for p in received}
        assert relative == set(fold["train"])
        assert not relative & set(fold["validation"]) and not relative & set(splits["test"])


def test_benchmark_config_is_validated():
    with pytest.raises(ValueError, match="Unknown architecture 'alexnet'"):
        _config(architectures=("alexnet",))
    with pytest.raises(ValueError, match="architectures must not repeat"):
        _config(architectures=("cnn", "cnn"))
    with pytest.raises(ValueError, match="architectures must be a non-empty list"):
        _config(architectures=())
    with pytest.raises(ValueError, match="folds must be an integer of at least 2. Received: folds=1"):
        _config(folds=1)
    with pytest.raises(
        ValueError, match=r"image_size is below the minimum of inceptionv3 75, hybrid 75 px. Received: image_size=64"
    ):
        _config(architectures=("cnn", "inceptionv3", "hybrid"), image_size=64)
    with pytest.raises(ValueError, match="seeds must be a non-empty list without repeats"):
        _config(seeds=(1, 1))
    with pytest.raises(ValueError, match="subset_per_class must leave each class at least folds"):
        _config(subset_per_class=2)
    with pytest.raises(ValueError, match=r"arch_params names unknown architecture\(s\) \['alexnet'\]"):
        _config(arch_params={"alexnet": {}})
    with pytest.raises(ValueError, match=r"training must not set \['epochs'\]"):
        _config(training={"epochs": 3})
    with pytest.raises(ValueError, match="TrainConfig has no field"):
        _config(training={"learning_rat": 0.1})
    config = _config(training={"learning_rate": 0.01}, seeds=(1, 2))
    assert BenchmarkConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.train_config("cnn", 5).learning_rate == 0.01


def test_bad_datasets_and_weights(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=3, size=32)
    with pytest.raises(ValueError, match="every class needs at least n_folds=2 images"):
        run_benchmark(data, tmp_path / "run", _config(architectures=("cnn",), test_fraction=0.5))
    (data / "d").mkdir()
    with pytest.raises(BadDatasetError, match="class folder holds no image"):
        run_benchmark(data, tmp_path / "run", _config(architectures=("cnn",)))
    with pytest.raises(FileNotFoundError, match="ImageNet weights for backbone resnet50: no file"):
        run_benchmark(
            data, tmp_path / "run", _config(architectures=("cnn", "resnet50"), weights={"resnet50": str(tmp_path / "x.h5")})
        )


def test_subset_run_records_its_choice(tiny_data, tmp_path):
    results = run_benchmark(tiny_data, tmp_path / "run", _config(architectures=("cnn",), subset_per_class=5, smote=False))
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert splits["subset_per_class"] == 5 and results.images["total"] == 15
    assert set(results.architectures["cnn"].variants) == {"network"}
    assert "Effect of SMOTE" not in (tmp_path / "run" / "report.md").read_text()


def test_a_changed_dataset_refuses_to_resume(tmp_path):
    import smearflow.training.benchmark as benchmark_module

    data = write_class_folders(tmp_path / "data", per_class=6, size=32)
    out = tmp_path / "run"
    config = _config(architectures=("cnn",))
    with pytest.raises(ValueError, match="holds no benchmark"):
        benchmark_module.write_reports(out)
    # a run folder started on other data, with the same settings
    check_or_start_run_folder(out, config, {"classes": ["a", "b", "c"], "train": []}, data)
    with pytest.raises(ValueError, match="the splits of .* differ from those in .*splits.json .*dataset changed"):
        run_benchmark(data, out, config)


def test_smote_skip_and_divergence_are_reported(tiny_data, tmp_path, monkeypatch, caplog):
    import smearflow.training.smote as smote_module

    def refuse(*args, **kwargs):
        raise ValueError("SMOTE needs at least 2 training samples per class. Received class counts: [1, 4, 4]")

    monkeypatch.setattr(smote_module, "fit_softmax_head", refuse)
    results = run_benchmark(tiny_data, tmp_path / "run", _config(architectures=("cnn",)))
    assert set(results.architectures["cnn"].variants) == {"network"}
    assert all("SMOTE needs at least 2" in entry.smote_skipped for entry in results.folds)
    assert "SMOTE skipped" in caplog.text

    real = smote_module.embed_and_predict

    def diverged(*args, **kwargs):
        embeddings, probabilities, labels = real(*args, **kwargs)
        return embeddings, np.full_like(probabilities, np.nan), labels

    monkeypatch.setattr(smote_module, "embed_and_predict", diverged)
    with pytest.raises(FloatingPointError, match="cnn seed 20261125 fold 1/2: the trained network outputs non-finite"):
        run_benchmark(tiny_data, tmp_path / "diverged", _config(architectures=("cnn",)))


def test_early_stopping_budget_and_single_split_architectures_are_recorded(tiny_data, tmp_path):
    config = _config(
        epochs=3, patience=1, time_budget_s=600, time_budgets_s={"unet_encoder": 900}, folds_trained={"unet_encoder": 1},
        stopping_images=4,
    )
    recorder = Recorder()
    results = run_benchmark(tiny_data, tmp_path / "run", config, callbacks=recorder)
    assert [(t.architecture, t.fold) for t in recorder.plan] == [("cnn", 0), ("cnn", 1), ("unet_encoder", 0)]
    assert results.complete and "3 of 3 folds" in results.finished_note
    for fold in results.folds:
        assert 1 <= fold.epochs_run <= 3 and fold.stop_reason and fold.params > 0
        assert fold.time_budget_s == (300 if fold.architecture == "cnn" else 900)
        assert fold.best_epoch is not None and "val_accuracy" in fold.history[0]
    cnn, unet = results.architectures["cnn"], results.architectures["unet_encoder"]
    assert cnn.test_accuracy == cnn.ensemble_test["network"]["accuracy"]["mean"]
    assert unet.ensemble_test == {} and unet.test_accuracy == unet.variants["network"]["test"]["accuracy"]["mean"]
    for summary in (cnn, unet):
        assert set(summary.heads) == {"refit", "smote"} and summary.params and summary.train_seconds > 0
        assert sum(summary.stop_reasons.values()) == summary.runs
    stored = json.loads((tmp_path / "run" / "results.json").read_text())["architectures"]["cnn"]
    for key in ("test_accuracy", "test_macro_f1", "val_accuracy", "epochs", "image_size", "train_seconds", "params"):
        assert stored[key] is not None, key
    assert stored["heads"]["smote"]["test_accuracy"] is not None and stored["heads"]["refit"]["val_accuracy"] is not None
    report = (tmp_path / "run" / "report.md").read_text()
    assert "patience 1; 600 s of training per architecture, unet_encoder 900 s" in report
    assert "only the first fold of unet_encoder" in report
