"""Nightly retraining: the decision, the fair gate, bounded attempts, history, retention, one real training."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from smearflow.db import repository, runs, session_scope
from smearflow.db.models import ModelActivation, TrainingRun
from smearflow.errors import BadModelError
from smearflow.worker.nightly import (
    RetrainingFailed,
    RetrainSettings,
    decide_activation,
    evaluate_model_folder,
    images_seen_by,
    register_model_folder,
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


def _stub_model_folder(path, accuracy, seen=None):
    """A model folder the registry accepts (read_model_folder) without Keras; ``seen`` goes to splits.json."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "model.keras").write_bytes(f"weights {path.name}".encode())
    (path / "config.json").write_text(json.dumps({"architecture": "cnn", "image_size": 32}))
    (path / "classes.json").write_text(json.dumps(["a", "b", "c"]))
    (path / "metrics.json").write_text(json.dumps({"accuracy": accuracy}))
    if seen is not None:
        (path / "splits.json").write_text(json.dumps({"train": sorted(seen), "test": []}))
    return path


class StubTraining:
    """train() writes a stub candidate that saw every non-test image; evaluate() scores from a table."""

    def __init__(self, scores):
        self.scores = scores  # folder name or "candidate" -> macro_f1
        self.trained = []
        self.evaluated = []

    def train(self, data_dir, out_dir, config):
        from smearflow.classifier.model_folder import read_model_folder
        from smearflow.datasets import scan_class_folders

        test = set(Path(config.test_images).read_text().split())
        dataset = scan_class_folders(data_dir)
        names = {Path(p).relative_to(dataset.root).as_posix() for p in dataset.paths}
        self.trained.append((Path(out_dir), config, test))
        return read_model_folder(_stub_model_folder(Path(out_dir), 0.5, seen=names - test))

    def evaluate(self, model_dir, data_dir, images):
        name = Path(model_dir).name
        self.evaluated.append((name, sorted(images)))
        if name == self.trained[-1][0].name:  # tonight's candidate; it keeps this score as a later baseline
            self.scores[name] = self.scores["candidate"]
        score = self.scores[name]
        if isinstance(score, Exception):
            raise score
        return {"accuracy": score, "macro_f1": score, "eval_images": len(images), "confusion_matrix": [[1]]}


def _settings(tmp_path, **changes):
    data = tmp_path / "data"
    if not data.exists():
        write_colour_classes(data, per_class=10)
    values = dict(
        data_dir=str(data), models_dir=str(tmp_path / "models"),
        train_config={"epochs": 1, "seed": 7, "test_fraction": 0.2}, margin=0.02,
    )
    return RetrainSettings(**{**values, **changes})


def _retrain(factory, tmp_path, stub, night=26, **changes):
    return run_retraining(
        factory, _settings(tmp_path, **changes), train=stub.train, evaluate=stub.evaluate,
        default_model_dir=lambda: None, now=lambda: datetime(2026, 11, night, 2, 30, tzinfo=UTC),
    )


def _runs(factory):
    with session_scope(factory) as session:
        return [
            (run.outcome, run.candidate_model_version.name if run.candidate_model_version else None, run.error,
             run.candidate_figure, run.baseline_figure, run.reason)
            for run in session.scalars(select(TrainingRun).order_by(TrainingRun.id))
        ]


def _active(factory):
    with session_scope(factory) as session:
        active = repository.active_model_version(session)
        return None if active is None else active.name


def _activate_stub_baseline(factory, tmp_path, name="baseline", seen=()):
    with session_scope(factory) as session:
        version = register_model_folder(session, _stub_model_folder(tmp_path / name, 0.7, seen=seen))
        runs.activate(session, version.name, actor="tech-1", reason="installed")
        return version.name


def test_with_no_model_to_beat_the_candidate_is_activated_and_the_activation_recorded(tmp_path, db_factory):
    stub = StubTraining({"candidate": 0.8})
    outcome = _retrain(db_factory, tmp_path, stub)
    assert (outcome.outcome, outcome.baseline, outcome.gate_version) == ("activated", None, 1)
    assert _active(db_factory) == outcome.candidate
    ((result, candidate, error, figure, baseline_figure, reason),) = _runs(db_factory)
    assert (result, candidate, error, figure, baseline_figure) == ("activated", outcome.candidate, None, 0.8, None)
    assert "no model to beat" in reason and "gate v1" in reason
    with session_scope(db_factory) as session:
        (activation,) = session.scalars(select(ModelActivation)).all()
        assert (activation.actor, activation.automatic, activation.reason) == ("nightly retraining", True, reason)


def test_a_candidate_must_win_by_the_margin_on_the_same_gate(tmp_path, db_factory):
    baseline = _activate_stub_baseline(db_factory, tmp_path)
    stub = StubTraining({"candidate": 0.71, "baseline": 0.7})
    kept = _retrain(db_factory, tmp_path, stub)
    assert (kept.outcome, kept.baseline, _active(db_factory)) == ("kept-active", baseline, baseline)
    assert "0.7100 does not beat 0.7000 + margin 0.02" in kept.reason
    (candidate_images, baseline_images) = [images for _, images in stub.evaluated]
    assert candidate_images == baseline_images  # both judged on the gate
    stub.scores["candidate"] = 0.9
    won = _retrain(db_factory, tmp_path, stub, night=27)
    assert won.outcome == "activated" and _active(db_factory) == won.candidate
    assert [run[0] for run in _runs(db_factory)] == ["kept-active", "activated"]


def test_the_gate_avoids_what_the_baseline_saw_and_no_candidate_ever_trains_on_it(tmp_path, db_factory):
    seen = {f"a/a_{i}.png" for i in range(6)} | {f"b/b_{i}.png" for i in range(6)}
    _activate_stub_baseline(db_factory, tmp_path, seen=seen)
    stub = StubTraining({"candidate": 0.6, "baseline": 0.7})
    _retrain(db_factory, tmp_path, stub)
    with session_scope(db_factory) as session:
        gate = runs.current_gate_split(session)
        gate_images = set(gate.images)
    assert gate_images and not gate_images & seen
    (_, _, test_images), = stub.trained
    assert test_images == gate_images  # the candidate's test split is the gate


def test_a_growing_dataset_keeps_the_gate_and_the_baselines_figure(tmp_path, db_factory):
    stub = StubTraining({"candidate": 0.6})
    first = _retrain(db_factory, tmp_path, stub)
    write_colour_classes(tmp_path / "data", per_class=16, seed=1)  # the dataset grows: new images
    second = _retrain(db_factory, tmp_path, stub, night=27)
    assert second.gate_version == first.gate_version == 1
    first_gate = stub.evaluated[0][1]
    assert stub.evaluated[-1][1] == first_gate  # the baseline is judged on the very same images
    (_, _, test_images) = stub.trained[-1]
    assert sorted(test_images) == first_gate


def test_a_gate_the_baseline_saw_is_replaced_and_the_run_says_so(tmp_path, any_db_factory):
    stub = StubTraining({"candidate": 0.6, "baseline": 0.7})
    _retrain(any_db_factory, tmp_path, stub)
    with session_scope(any_db_factory) as session:
        old = set(runs.current_gate_split(session).images)
    _activate_stub_baseline(any_db_factory, tmp_path, seen=old)  # a model trained on the gate by someone
    outcome = _retrain(any_db_factory, tmp_path, stub, night=27)
    assert outcome.gate_version == 2
    assert "new gate split v2: the baseline trained or validated on" in outcome.reason
    with session_scope(any_db_factory) as session:
        new = runs.current_gate_split(session)
        assert not set(new.images) & old and "trained or validated on" in new.reason


def test_a_baseline_without_splits_json_is_judged_with_a_warning(tmp_path, db_factory):
    _activate_stub_baseline(db_factory, tmp_path, seen=None)
    outcome = _retrain(db_factory, tmp_path, StubTraining({"candidate": 0.6, "baseline": 0.7}))
    assert "the baseline has no splits.json" in outcome.reason


def test_a_candidate_that_saw_a_gate_image_is_refused(tmp_path, db_factory):
    stub = StubTraining({"candidate": 0.9})
    train = stub.train

    def leaky_train(data_dir, out_dir, config):
        folder = train(data_dir, out_dir, config)
        splits = json.loads((folder.path / "splits.json").read_text())
        splits["train"] += sorted(Path(config.test_images).read_text().split())[:1]
        (folder.path / "splits.json").write_text(json.dumps(splits))
        return folder

    stub.train = leaky_train
    with pytest.raises(RetrainingFailed, match="the candidate trained on 1 images of gate v1"):
        _retrain(db_factory, tmp_path, stub)
    assert _runs(db_factory)[0][0] == "failed"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"data_dir": None}, "no training dataset is configured"),
        ({"data_dir": "/nowhere/data"}, "the training dataset /nowhere/data does not exist"),
    ],
)
def test_no_or_missing_dataset_is_a_recorded_failed_task(tmp_path, db_factory, changes, message):
    with pytest.raises(RetrainingFailed, match=message):
        _retrain(db_factory, tmp_path, StubTraining({}), **changes)
    ((outcome, _, error, *_),) = _runs(db_factory)
    assert outcome == "failed" and message in error


def test_a_class_with_one_image_is_named(tmp_path, db_factory):
    data = write_colour_classes(tmp_path / "data", classes=("a", "b"), per_class=5)
    for extra in list((data / "b").iterdir())[1:]:
        extra.unlink()
    with pytest.raises(RetrainingFailed, match=r"every class needs at least 2 images; too few in 'b' \(1 image\)"):
        _retrain(db_factory, tmp_path, StubTraining({}))


def test_a_failed_run_removes_its_candidate_folder_and_an_unexpected_error_is_raised(tmp_path, db_factory):
    def crash(data_dir, out_dir, config):
        (Path(out_dir) / "half-written.keras").write_bytes(b"x")
        raise RuntimeError("nan loss")

    with pytest.raises(RuntimeError, match="nan loss"):
        run_retraining(db_factory, _settings(tmp_path), train=crash, default_model_dir=lambda: None)
    assert _runs(db_factory)[0][:3] == ("failed", None, "RuntimeError: nan loss")
    assert [p for p in (tmp_path / "models").iterdir() if p.is_dir()] == []


def test_the_time_limit_is_stated(tmp_path, db_factory):
    from celery.exceptions import SoftTimeLimitExceeded

    def too_slow(data_dir, out_dir, config):
        raise SoftTimeLimitExceeded()

    with pytest.raises(RetrainingFailed, match="SMEARFLOW_TRAINING_TIME_LIMIT_S=600 s"):
        run_retraining(db_factory, _settings(tmp_path, time_limit_s=600), train=too_slow, default_model_dir=lambda: None)


def test_a_task_delivered_again_after_its_process_died_is_bounded(tmp_path, any_db_factory):
    settings = _settings(tmp_path, max_attempts=2)
    calls = []

    def dies(data_dir, out_dir, config):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "partial").write_text("x")
        Path(f"{out_dir}.checkpoint").mkdir(exist_ok=True)  # as the default training leaves it
        calls.append(out_dir)
        raise KeyboardInterrupt  # stands in for SIGKILL: nothing after it runs

    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            run_retraining(any_db_factory, settings, task_id="t-1", train=dies, default_model_dir=lambda: None)
    assert calls[0] == calls[1]  # the same run, the same candidate folder
    with pytest.raises(RetrainingFailed, match="started 2 times and its process died each time"):
        run_retraining(any_db_factory, settings, task_id="t-1", train=dies, default_model_dir=lambda: None)
    assert len(calls) == 2 and not Path(calls[0]).exists()  # the orphan folder is gone
    assert [p for p in (tmp_path / "models").iterdir() if p.is_dir()] == []  # and so is any checkpoint beside it
    with session_scope(any_db_factory) as session:
        (run,) = session.scalars(select(TrainingRun)).all()
        assert (run.outcome, run.attempts) == ("failed", 3)
    with pytest.raises(RetrainingFailed, match="started 2 times"):  # later deliveries change nothing
        run_retraining(any_db_factory, settings, task_id="t-1", train=dies, default_model_dir=lambda: None)


def test_old_candidates_are_pruned_but_never_the_active_or_packaged_one(tmp_path, db_factory):
    stub = StubTraining({"candidate": 0.1})
    names = []
    for night in (20, 21, 22, 23):
        stub.scores["candidate"] = 0.1 * (night - 19)  # each night's candidate wins
        names.append(_retrain(db_factory, tmp_path, stub, night=night, keep_candidates=1, margin=0.0).candidate)
    with session_scope(db_factory) as session:
        versions = {v.name: v for v in repository.list_model_versions(session)}
        kept = [n for n in names if versions[n].pruned_at is None]
    assert names[-1] == _active(db_factory)
    # kept: the active one, the one it just replaced (tonight's baseline) and keep_candidates=1 more
    assert kept == names[1:]
    assert sum(1 for p in (tmp_path / "models").iterdir() if p.is_dir()) == 3
    with session_scope(db_factory) as session:
        with pytest.raises(ValueError, match="its folder was removed by retention"):
            runs.activate(session, names[0], actor="x", reason="y")


def test_the_packaged_model_is_registered_as_the_baseline_so_it_can_be_reactivated(tmp_path, db_factory):
    packaged = _stub_model_folder(tmp_path / "packaged", 0.6, seen=set())
    stub = StubTraining({"candidate": 0.9, "packaged": 0.6})
    outcome = run_retraining(
        db_factory, _settings(tmp_path), train=stub.train, evaluate=stub.evaluate, default_model_dir=lambda: packaged
    )
    assert outcome.outcome == "activated" and outcome.baseline.startswith("cnn-")
    with session_scope(db_factory) as session:
        runs.activate(session, outcome.baseline, actor="tech-2", reason="back to the shipped model")
    assert _active(db_factory) == outcome.baseline


def test_images_seen_by_reads_splits_json(tmp_path):
    folder = _stub_model_folder(tmp_path / "m", 0.5, seen={"a/1.png"})
    splits = json.loads((folder / "splits.json").read_text())
    splits.update(validation=["b/2.png"], earlier_train=["c/3.png"])
    (folder / "splits.json").write_text(json.dumps(splits))
    assert images_seen_by(folder) == {"a/1.png", "b/2.png", "c/3.png"}
    assert images_seen_by(tmp_path) is None


def test_a_growing_dataset_leaves_the_active_models_real_gate_figure_unchanged(tmp_path, any_db_factory):
    data = write_colour_classes(tmp_path / "data", per_class=10, size_px=32)
    config = {
        "image_size": 32, "epochs": 2, "batch_size": 8, "test_fraction": 0.3, "arch_params": {"filters": [4, 8]},
        "validation_fraction": 0.1,
    }
    settings = RetrainSettings(data_dir=str(data), models_dir=str(tmp_path / "models"), train_config=config, margin=0.0)
    first = run_retraining(any_db_factory, settings, default_model_dir=lambda: None,
                           now=lambda: datetime(2026, 11, 26, 2, 30, tzinfo=UTC))
    assert first.outcome == "activated" and first.candidate_metrics["eval_images"] == 9
    write_colour_classes(data, per_class=14, size_px=32, seed=3)  # four new images per class
    second = run_retraining(any_db_factory, RetrainSettings(**{**settings.__dict__, "margin": 0.5}),
                            default_model_dir=lambda: None, now=lambda: datetime(2026, 11, 27, 2, 30, tzinfo=UTC))
    assert (second.outcome, second.baseline, second.gate_version) == ("kept-active", first.candidate, 1)
    assert second.baseline_metrics["eval_images"] == 9
    assert second.baseline_metrics["macro_f1"] == pytest.approx(first.candidate_metrics["macro_f1"])
    assert _active(any_db_factory) == first.candidate


def test_a_training_whose_process_died_resumes_at_the_next_delivery(tmp_path, db_factory, monkeypatch):
    import smearflow.training.train as training

    train_classifier = training.train_classifier
    epochs_run, checkpoints = [], []

    def dies_once_after_two_epochs(data_dir, out_dir, config, *, checkpoint_dir):
        checkpoints.append(checkpoint_dir)

        def on_epoch_end(epoch, logs):
            if len(checkpoints) == 1 and epoch == 2:
                raise KeyboardInterrupt  # stands in for SIGKILL, before epoch 3 is saved
            epochs_run.append(epoch)

        return train_classifier(data_dir, out_dir, config, on_epoch_end=on_epoch_end, checkpoint_dir=checkpoint_dir)

    monkeypatch.setattr(training, "train_classifier", dies_once_after_two_epochs)
    data = write_colour_classes(tmp_path / "data", per_class=10, size_px=32)
    config = {"image_size": 32, "epochs": 4, "batch_size": 8, "test_fraction": 0.3, "arch_params": {"filters": [4, 8]}}
    settings = RetrainSettings(data_dir=str(data), models_dir=str(tmp_path / "models"), train_config=config, margin=0.0)
    with pytest.raises(KeyboardInterrupt):
        run_retraining(db_factory, settings, task_id="t-1", default_model_dir=lambda: None)
    assert checkpoints[0].parent == tmp_path / "models" and (checkpoints[0] / "checkpoint.json").is_file()
    outcome = run_retraining(db_factory, settings, task_id="t-1", default_model_dir=lambda: None)
    assert checkpoints[1] == checkpoints[0] and epochs_run == [0, 1, 2, 3]  # epoch 2 again, then on
    assert outcome.outcome == "activated" and not checkpoints[0].exists()


def test_a_failed_run_removes_its_checkpoint(tmp_path, db_factory, monkeypatch):
    import smearflow.training.train as training

    def fails_after_saving(data_dir, out_dir, config, *, checkpoint_dir):
        (checkpoint_dir / "checkpoint.json").parent.mkdir(parents=True)
        (checkpoint_dir / "checkpoint.json").write_text("{}")
        raise RuntimeError("nan loss")

    monkeypatch.setattr(training, "train_classifier", fails_after_saving)
    with pytest.raises(RuntimeError, match="nan loss"):
        run_retraining(db_factory, _settings(tmp_path), default_model_dir=lambda: None)
    assert [p for p in (tmp_path / "models").iterdir() if p.is_dir()] == []


def test_evaluating_a_model_with_other_classes_is_refused(tmp_path, tiny_model_dir):
    data = write_colour_classes(tmp_path / "data", per_class=4)
    with pytest.raises(BadModelError, match="are not the dataset's"):
        evaluate_model_folder(tiny_model_dir, data, ["a/a_0.png"])


def test_the_history_lists_runs_and_activations(tmp_path, any_db_factory):
    _activate_stub_baseline(any_db_factory, tmp_path)
    _retrain(any_db_factory, tmp_path, StubTraining({"candidate": 0.9, "baseline": 0.7}))
    with session_scope(any_db_factory) as session:
        rows = runs.model_history(session)
    assert [(r["kind"], r["actor"]) for r in rows] == [
        ("activation", "nightly retraining"), ("retraining", "nightly retraining"), ("activation", "tech-1")
    ]
    retraining = rows[1]
    assert (retraining["candidate"], retraining["baseline"], retraining["outcome"]) == (0.9, 0.7, "activated")
    assert rows[0]["baseline_model"] == retraining["baseline_model"]  # the activation names what it replaced
