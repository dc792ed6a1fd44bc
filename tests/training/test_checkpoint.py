import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from smearflow_testkit import write_class_folders
from smearflow.classifier.classifier import Classifier
from smearflow.datasets import scan_class_folders
from smearflow.training.checkpoint import STATE_FILE, TrainingCheckpoint
from smearflow.training.data import batches
from smearflow.training.train import TrainConfig, train_classifier

CONFIG = TrainConfig(image_size=32, epochs=4, batch_size=8, test_fraction=0.25, arch_params={"filters": (4, 8)})


class Interrupted(Exception):
    pass


def _stop_after(epoch_index):
    def on_epoch_end(epoch, logs):
        if epoch == epoch_index:
            raise Interrupted  # before the checkpoint saves this epoch, like a kill would

    return on_epoch_end


def _history(folder):
    with open(folder.path / "history.csv") as handle:
        return [(int(row["epoch"]), row["stage"]) for row in csv.DictReader(handle)]


def test_an_interrupted_training_resumes_after_its_last_saved_epoch(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=8, size=32)
    checkpoint = tmp_path / "checkpoint"
    with pytest.raises(Interrupted):
        train_classifier(data, tmp_path / "model", CONFIG, on_epoch_end=_stop_after(2), checkpoint_dir=checkpoint)
    state = json.loads((checkpoint / STATE_FILE).read_text())
    assert state["stages"]["train"]["epochs_done"] == 2 and len(state["history"]) == 2
    assert sorted(p.name for p in checkpoint.glob("*.h5")) == ["train-epoch002.weights.h5"]  # older epochs removed

    epochs_run = []
    folder = train_classifier(
        data, tmp_path / "model", CONFIG, on_epoch_end=lambda epoch, logs: epochs_run.append(epoch),
        checkpoint_dir=checkpoint,
    )
    assert epochs_run == [2, 3]
    assert _history(folder) == [(0, "train"), (1, "train"), (2, "train"), (3, "train")]
    assert folder.metrics["train_seconds"] >= state["seconds"]
    assert not checkpoint.exists()  # finished: nothing left to resume

    uninterrupted = train_classifier(data, tmp_path / "again", CONFIG)
    crops = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    resumed_p = Classifier.load(folder.path).predict_proba(crops)
    uninterrupted_p = Classifier.load(uninterrupted.path).predict_proba(crops)
    # The same batches, weights, optimiser and dropout states: the resumed run ends where an uninterrupted one does.
    np.testing.assert_allclose(resumed_p, uninterrupted_p, atol=1e-6)


def test_a_checkpoint_restores_the_optimiser_state(tmp_path):
    import keras

    from smearflow.training.architectures import build_model
    from smearflow.training.fit import compile_for_training

    model = build_model("cnn", 32, 3, filters=(4, 8))
    compile_for_training(model, CONFIG, steps_per_epoch=3)
    x, y = np.zeros((8, 32, 32, 3), np.float32), np.eye(3, dtype=np.float32)[np.arange(8) % 3]
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    checkpoint = TrainingCheckpoint(tmp_path, {"run": 1})
    checkpoint.save(model, "train", 2, [])

    fresh = build_model("cnn", 32, 3, filters=(4, 8))
    compile_for_training(fresh, CONFIG, steps_per_epoch=3)
    assert TrainingCheckpoint(tmp_path, {"run": 1}).restore(fresh, "train") == 2
    assert int(keras.ops.convert_to_numpy(fresh.optimizer.iterations)) == 4  # the learning-rate schedule goes on
    for got, want in zip(fresh.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_a_stage_finished_before_the_interruption_is_restored_not_retrained(tmp_path, tiny_registry):
    import keras

    from smearflow.training.architectures import build_model
    from smearflow.training.fit import HistoryRecorder, fit_classifier

    data = scan_class_folders(write_class_folders(tmp_path / "data", per_class=4, size=16))
    config = TrainConfig(image_size=16, epochs=2, contrastive_epochs=2, batch_size=6, architecture="tiny_supcon")
    checkpoint = TrainingCheckpoint(tmp_path / "checkpoint", {"run": 2})
    seen = []

    def stop_in_the_head_stage(epoch, logs):
        seen.append(epoch)
        if epoch == 3:
            raise Interrupted

    keras.utils.set_random_seed(4)
    history = HistoryRecorder()
    with pytest.raises(Interrupted):
        fit_classifier(
            build_model("tiny_supcon", 16, 3), config, data, 3, history=history, checkpoint=checkpoint,
            callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=stop_in_the_head_stage)],
        )
    assert seen == [0, 1, 2, 3] and checkpoint.epochs_done("contrastive") == 2 and checkpoint.epochs_done("head") == 3

    resumed = TrainingCheckpoint(tmp_path / "checkpoint", {"run": 2})
    seen.clear()
    history = HistoryRecorder(resumed.history)
    fitted = fit_classifier(
        build_model("tiny_supcon", 16, 3), config, data, 3, history=history, checkpoint=resumed,
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))],
    )
    assert seen == [3]  # the contrastive stage was only restored
    assert fitted["stages"] == [{"stage": "contrastive", "epochs": 2}, {"stage": "head", "epochs": 2}]
    assert [row["stage"] for row in history.rows] == ["contrastive", "contrastive", "head", "head"]


def test_a_checkpoint_of_other_settings_is_refused(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=8, size=32)
    with pytest.raises(Interrupted):
        train_classifier(data, tmp_path / "model", CONFIG, on_epoch_end=_stop_after(1), checkpoint_dir=tmp_path / "c")
    other_seed = TrainConfig.from_dict(CONFIG.to_dict() | {"seed": CONFIG.seed + 1})
    with pytest.raises(ValueError, match=r"checkpoint of a training run with other settings \(training.seed\)"):
        train_classifier(data, tmp_path / "model", other_seed, checkpoint_dir=tmp_path / "c")
    assert (tmp_path / "c" / STATE_FILE).is_file()  # kept: it is still the other run's


@pytest.mark.parametrize("text", ["{not json", "[]", '{"settings": {}}'])
def test_an_unreadable_checkpoint_is_refused_with_its_path(tmp_path, text):
    (tmp_path / STATE_FILE).write_text(text)
    with pytest.raises(ValueError, match=rf"{STATE_FILE}: the training checkpoint cannot be read"):
        TrainingCheckpoint(tmp_path, {"run": 1})


def test_an_epochs_batches_depend_only_on_the_seed_and_the_epoch(tmp_path):
    dataset = scan_class_folders(write_class_folders(tmp_path, per_class=6, size=32))
    advanced = batches(dataset, 16, 4, training=True, seed=5, num_classes=3)
    advanced.on_epoch_end()
    advanced.on_epoch_end()
    started_there = batches(dataset, 16, 4, training=True, seed=5, num_classes=3)
    started_there.start_at_epoch(2)
    assert np.array_equal(advanced.order, started_there.order)
    np.testing.assert_array_equal(advanced[1][0], started_there[1][0])
    started_there.start_at_epoch(1)
    assert not np.array_equal(advanced.order, started_there.order)


JAX_RESUME = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    import keras
    from smearflow.classifier.classifier import Classifier
    from smearflow.training.train import TrainConfig, train_classifier

    data, tmp = sys.argv[1], Path(sys.argv[2])
    config = TrainConfig(image_size=32, epochs=3, batch_size=8, test_fraction=0.25, arch_params={"filters": (4, 8)})

    def stop(epoch, logs):
        if epoch == 1:
            raise KeyboardInterrupt

    try:
        train_classifier(data, tmp / "m", config, on_epoch_end=stop, checkpoint_dir=tmp / "c")
    except KeyboardInterrupt:
        pass
    epochs = []
    resumed = train_classifier(data, tmp / "m", config, on_epoch_end=lambda e, l: epochs.append(e), checkpoint_dir=tmp / "c")
    whole = train_classifier(data, tmp / "w", config)
    crops = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    p = [Classifier.load(f.path).predict_proba(crops) for f in (resumed, whole)]
    print(json.dumps({"backend": keras.backend.backend(), "epochs": epochs,
                      "max_difference": float(np.abs(p[0] - p[1]).max())}))
    """
)


@pytest.mark.slow
def test_with_jax_a_resumed_training_ends_where_an_uninterrupted_one_does(tmp_path):
    pytest.importorskip("jax")
    data = write_class_folders(tmp_path / "data", per_class=8, size=32)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run(
        [sys.executable, "-c", JAX_RESUME, str(data), str(tmp_path)], env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax" and report["epochs"] == [1, 2]
    assert report["max_difference"] < 1e-6
