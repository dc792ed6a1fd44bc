import json

import numpy as np
import pytest

from smearflow_testkit import tiny_backbone_model, write_class_folders
from smearflow.classifier.classifier import Classifier
from smearflow.training.architectures import build_model, get_architecture
from smearflow.training.train import TrainConfig, class_weights, images_trained_on, train_classifier


def test_train_writes_a_loadable_model_folder_with_honest_splits(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=8, size=32)
    config = TrainConfig(image_size=32, epochs=2, batch_size=8, test_fraction=0.25, arch_params={"filters": (4, 8)})
    folder = train_classifier(data, tmp_path / "model", config)
    splits = json.loads((tmp_path / "model" / "splits.json").read_text())
    assert not set(splits["train"]) & set(splits["test"])
    assert len(splits["test"]) == 6 == folder.metrics["test_images"]
    assert folder.classes == ("a", "b", "c")
    assert 0.0 <= folder.metrics["accuracy"] <= 1.0
    assert TrainConfig.from_dict(folder.training) == config  # the run's settings, typed, round-trip
    assert (folder.config.architecture, folder.config.image_size) == (config.architecture, config.image_size)
    crops = np.zeros((2, 224, 224, 3), np.uint8)
    assert Classifier.load(folder.path).predict_proba(crops).shape == (2, 3)


def test_train_config_validates():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="class_weight"):
        TrainConfig(class_weight="smote")
    with pytest.raises(ValueError, match="recalibrate_bn_images"):
        TrainConfig(recalibrate_bn_images=-1)


def test_balanced_class_weights():
    weights = class_weights("balanced", np.array([0, 0, 0, 1]), 2)
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0})
    with pytest.raises(ValueError, match="at least one training image"):
        class_weights("balanced", np.array([0, 0]), 2)


def test_registry_rejects_unknown_names_and_small_inputs():
    with pytest.raises(ValueError, match="Unknown architecture 'alexnet'"):
        get_architecture("alexnet")
    with pytest.raises(ValueError, match="needs image_size >= 32"):
        build_model("cnn", 16, 3)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("cnn", 32, 1)


def _train_set(tmp_path):
    from smearflow.datasets import scan_class_folders

    return scan_class_folders(write_class_folders(tmp_path / "data", per_class=4, size=16))


def test_frozen_backbone_trains_only_the_head_with_local_weights(tmp_path, tiny_registry):
    import keras

    from smearflow.training.train import HistoryRecorder, fit_classifier

    keras.utils.set_random_seed(1)
    source = tiny_backbone_model(16, 3).get_layer("mobilenetv2")
    weights_file = tmp_path / "backbone.weights.h5"
    source.save_weights(weights_file)
    config = TrainConfig(
        architecture="tiny_backbone", image_size=16, epochs=2, batch_size=4,
        weights={"mobilenetv2": str(weights_file)}, freeze_backbone_epochs=2,
    )
    model = build_model("tiny_backbone", 16, 3)
    head_before = model.get_layer("probabilities").get_weights()[0].copy()
    history = HistoryRecorder()
    fitted = fit_classifier(model, config, _train_set(tmp_path), 3, history=history)
    assert fitted == {"weights_loaded": {"mobilenetv2": str(weights_file)}, "stages": [{"stage": "frozen_backbone", "epochs": 2}], "bn_recalibration_images": 0}
    for got, want in zip(model.get_layer("mobilenetv2").get_weights(), source.get_weights()):
        np.testing.assert_array_equal(got, want)  # frozen: kernels and batch-norm statistics untouched
    assert not np.array_equal(model.get_layer("probabilities").get_weights()[0], head_before)
    assert [row["stage"] for row in history.rows] == ["frozen_backbone", "frozen_backbone"]


def test_freeze_then_fine_tune(tmp_path, tiny_registry):
    import keras

    from smearflow.training.train import HistoryRecorder, fit_classifier

    keras.utils.set_random_seed(2)
    model = build_model("tiny_backbone", 16, 3)
    config = TrainConfig(architecture="tiny_backbone", image_size=16, epochs=3, batch_size=4, freeze_backbone_epochs=1)
    epochs_seen = []
    history = HistoryRecorder()
    fitted = fit_classifier(
        model, config, _train_set(tmp_path), 3, history=history,
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: epochs_seen.append(epoch))],
    )
    assert fitted["stages"] == [{"stage": "frozen_backbone", "epochs": 1}, {"stage": "fine_tune", "epochs": 2}]
    assert epochs_seen == [0, 1, 2] and [r["stage"] for r in history.rows] == ["frozen_backbone", "fine_tune", "fine_tune"]
    assert model.get_layer("mobilenetv2").trainable


def test_contrastive_training_has_two_stages(tmp_path, tiny_registry):
    import keras

    from smearflow.training.train import HistoryRecorder, fit_classifier

    keras.utils.set_random_seed(3)
    model = build_model("tiny_supcon", 16, 3)
    encoder = model.get_layer("mobilenetv2")
    initial = [w.copy() for w in encoder.get_weights()]
    after_contrastive = []

    def snapshot(epoch, logs):
        if epoch == 1:  # the last contrastive epoch
            after_contrastive.extend(w.copy() for w in encoder.get_weights())

    config = TrainConfig(architecture="tiny_supcon", image_size=16, epochs=1, contrastive_epochs=2, batch_size=6)
    assert config.total_epochs() == 3
    history = HistoryRecorder()
    fitted = fit_classifier(
        model, config, _train_set(tmp_path), 3, history=history,
        callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=snapshot)],
    )
    assert fitted["stages"] == [{"stage": "contrastive", "epochs": 2}, {"stage": "head", "epochs": 1}]
    assert [r["stage"] for r in history.rows] == ["contrastive", "contrastive", "head"]
    assert "accuracy" not in history.rows[0] and "accuracy" in history.rows[2]
    assert any(not np.array_equal(a, b) for a, b in zip(initial, after_contrastive))  # stage 1 trained the encoder
    for got, want in zip(encoder.get_weights(), after_contrastive):
        np.testing.assert_array_equal(got, want)  # stage 2 left it frozen


def test_new_train_config_fields_are_validated():
    with pytest.raises(ValueError, match="freeze_backbone_epochs must be >= 0. Received: freeze_backbone_epochs=-1"):
        TrainConfig(freeze_backbone_epochs=-1)
    with pytest.raises(ValueError, match="fine_tune_learning_rate must be positive"):
        TrainConfig(fine_tune_learning_rate=0.0)
    with pytest.raises(ValueError, match="contrastive_epochs must be at least 1"):
        TrainConfig(contrastive_epochs=0)
    with pytest.raises(ValueError, match="contrastive_temperature must be positive"):
        TrainConfig(contrastive_temperature=0)
    with pytest.raises(ValueError, match="projection_dim must be at least 1"):
        TrainConfig(projection_dim=0)
    with pytest.raises(ValueError, match="weights must be a dict"):
        TrainConfig(weights="imagenet")
    assert TrainConfig().total_epochs() == 40
    assert TrainConfig(architecture="supcon", epochs=3).total_epochs() == 6


def test_default_config_is_unchanged():
    """The packaged model's recipe: changing any of these changes the default model."""
    config = TrainConfig()
    assert (config.architecture, config.image_size, config.epochs, config.batch_size, config.seed) == (
        "cnn", 64, 40, 64, 20261125
    )
    assert (config.learning_rate, config.weight_decay, config.label_smoothing, config.class_weight) == (
        2e-3, 1e-4, 0.05, "prior"
    )
    assert (config.augmentation, config.augment_strength, config.extra_repeat, config.validation_fraction) == (
        "domain", 0.5, 8, 0.1
    )
    assert config.test_time_augmentation == "none" and config.split_seed is None
    assert config.weights == {} and config.freeze_backbone_epochs == 0 and config.arch_params == {}


def test_batch_norm_recalibration_sets_statistics_of_plain_images(tmp_path):
    import keras

    from smearflow.training.data import batches
    from smearflow.datasets import scan_class_folders
    from smearflow.training.train import recalibrate_batch_norm

    dataset = scan_class_folders(write_class_folders(tmp_path / "data", per_class=4, size=32))
    model = build_model("cnn", 32, 3, filters=(4, 8))
    first_bn = model.get_layer("block0_bn0")
    frozen_bn = model.get_layer("block1_bn1")
    frozen_bn.trainable = False
    frozen_before = keras.ops.convert_to_numpy(frozen_bn.moving_mean).copy()
    used = recalibrate_batch_norm(model, dataset, 32, n_images=12, batch_size=12)
    assert used == 12
    x, _ = batches(dataset, 32, 12, training=False)[0]
    conv_out = keras.Model(model.input, model.get_layer("block0_conv0").output)(x)
    expected_mean = keras.ops.convert_to_numpy(keras.ops.mean(conv_out, axis=(0, 1, 2)))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(first_bn.moving_mean), expected_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(frozen_bn.moving_mean), frozen_before)
    assert first_bn.momentum == 0.99  # restored
    assert recalibrate_batch_norm(model, dataset, 32, n_images=0) == 0


def _tiny_config(**overrides):
    base = dict(image_size=32, epochs=1, batch_size=8, test_fraction=0.25, arch_params={"filters": (4, 8)})
    return TrainConfig(**(base | overrides))


def test_fine_tuning_starts_from_the_initial_weights_and_adds_extra_images(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=8, size=32)
    extra = write_class_folders(tmp_path / "extra", classes=("b",), per_class=3, size=32, seed=1)
    base = train_classifier(data, tmp_path / "base", _tiny_config())
    config = _tiny_config(init_model=str(base.path), extra_data=str(extra), extra_repeat=4, learning_rate=1e-9)
    tuned = train_classifier(data, tmp_path / "tuned", config)
    start = Classifier.load(base.path).model.get_weights()
    end = Classifier.load(tuned.path).model.get_weights()
    # A learning rate of 1e-9 leaves the weights where the initial model had them.
    for got, want in zip(end[:2], start[:2]):
        np.testing.assert_allclose(got, want, atol=1e-5)
    splits = json.loads((tmp_path / "tuned" / "splits.json").read_text())
    assert splits["extra"] == ["b/b_0.png", "b/b_1.png", "b/b_2.png"]
    assert splits["earlier_train"] == []  # same split: every earlier training image is in "train"
    assert images_trained_on(tuned.path) == set(json.loads((tmp_path / "base" / "splits.json").read_text())["train"])
    assert not images_trained_on(tuned.path) & set(splits["test"])
    # 18 training-part images: 3 (one per class) validate, 15 train
    assert tuned.metrics["extra_train_images"] == 3 and tuned.metrics["train_images"] == 15
    assert len(splits["validation"]) == 3 and not set(splits["validation"]) & set(splits["train"])


def test_fine_tuning_refuses_a_test_split_the_initial_model_trained_on(tmp_path):
    from smearflow.errors import BadDatasetError

    data = write_class_folders(tmp_path / "data", per_class=8, size=32)
    base = train_classifier(data, tmp_path / "base", _tiny_config())
    with pytest.raises(BadDatasetError, match="of this run's test images trained the initial model"):
        train_classifier(data, tmp_path / "tuned", _tiny_config(init_model=str(base.path), seed=7))


def test_fine_tuning_refuses_a_different_model(tmp_path):
    from smearflow.errors import BadModelError

    data = write_class_folders(tmp_path / "data", per_class=8, size=32)
    base = train_classifier(data, tmp_path / "base", _tiny_config())
    with pytest.raises(BadModelError, match=r"the initial model has image size 32, this run 40"):
        train_classifier(data, tmp_path / "t1", _tiny_config(init_model=str(base.path), image_size=40))
    other = write_class_folders(tmp_path / "other", classes=("a", "b", "d"), per_class=8, size=32)
    with pytest.raises(BadModelError, match=r"has classes \['a', 'b', 'c'\], this run \['a', 'b', 'd'\]"):
        train_classifier(other, tmp_path / "t2", _tiny_config(init_model=str(base.path)))


def test_fine_tuning_without_a_split_record_warns(tmp_path, caplog):
    data = write_class_folders(tmp_path / "data", per_class=8, size=32)
    base = train_classifier(data, tmp_path / "base", _tiny_config())
    (base.path / "splits.json").unlink()
    train_classifier(data, tmp_path / "tuned", _tiny_config(init_model=str(base.path)))
    assert "cannot check that the test images did not train it" in caplog.text
    assert json.loads((tmp_path / "tuned" / "splits.json").read_text())["earlier_train"] is None


def test_extra_repeat_is_validated():
    with pytest.raises(ValueError, match="extra_repeat must be at least 1. Received: extra_repeat=0"):
        TrainConfig(extra_repeat=0)


def test_prior_class_weights_keep_the_main_datasets_class_shares():
    from smearflow.training.train import class_weights

    main = np.array([0] * 6 + [1] * 3 + [2] * 1)
    with_extra = np.concatenate([main, [1] * 5])  # extra images of class 1 only
    weights = class_weights("prior", with_extra, 3, prior_labels=main)
    weighted = np.array([np.sum(with_extra == c) * weights[c] for c in range(3)])
    np.testing.assert_allclose(weighted / weighted.sum(), [0.6, 0.3, 0.1])
    assert class_weights("prior", main, 3, prior_labels=main) is None
    assert class_weights("prior", main, 3) is None
    assert class_weights("none", with_extra, 3, prior_labels=main) is None
    assert class_weights("balanced", main, 3) == pytest.approx({i: 10 / (3 * n) for i, n in enumerate((6, 3, 1))})
    with pytest.raises(ValueError, match="mode must be one of"):
        class_weights("smote", main, 3)
    with pytest.raises(ValueError, match="every class needs at least one training image"):
        class_weights("prior", np.array([0, 0, 1, 1]), 3, prior_labels=np.array([0, 1, 1]))


def test_recipe_fields_of_the_train_config_are_validated():
    with pytest.raises(ValueError, match="augmentation must be one of"):
        TrainConfig(augmentation="heavy")
    with pytest.raises(ValueError, match="augment_strength must be >= 0. Received: augment_strength=-0.5"):
        TrainConfig(augment_strength=-0.5)
    with pytest.raises(ValueError, match=r"validation_fraction must be in \[0, 1\). Received: validation_fraction=1.0"):
        TrainConfig(validation_fraction=1.0)
    with pytest.raises(ValueError, match="test_time_augmentation must be one of"):
        TrainConfig(test_time_augmentation="many")
    assert TrainConfig(seed=3).splits_seed == 3 and TrainConfig(seed=3, split_seed=5).splits_seed == 5


def test_training_seeds_share_the_test_and_validation_splits(tmp_path):
    from smearflow.datasets import scan_class_folders
    from smearflow.training.train import split_dataset

    dataset = scan_class_folders(write_class_folders(tmp_path / "data", per_class=10, size=8))
    first = split_dataset(dataset, TrainConfig(seed=1, split_seed=9, test_fraction=0.2))
    second = split_dataset(dataset, TrainConfig(seed=2, split_seed=9, test_fraction=0.2))
    for a, b in zip(first, second):
        assert a.paths == b.paths
    train, validation, test = first
    assert not set(train.paths) & set(validation.paths) and not set(validation.paths) & set(test.paths)
    assert split_dataset(dataset, TrainConfig(validation_fraction=0.0))[1] is None


def test_training_fits_the_temperature_on_the_validation_split(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=10, size=32)
    folder = train_classifier(data, tmp_path / "model", _tiny_config(epochs=2, validation_fraction=0.2))
    calibration = json.loads((folder.path / "calibration.json").read_text())
    assert calibration["temperature"] > 0 and 0 <= calibration["confidence_threshold"] <= 1
    assert "validation split (5 images" in calibration["fitted_on"]
    assert folder.calibration.temperature == calibration["temperature"]
    validation = folder.metrics["validation"]
    assert validation["images"] == 5 and validation["nll_after"] <= validation["nll_before"] + 1e-6
    assert set(validation["test_time_augmentation"]) == {"none", "flips"}
    assert {"ece", "bins"} <= set(folder.metrics["calibration"])
    loaded = Classifier.load(folder.path)
    assert loaded.temperature == calibration["temperature"]
    no_validation = train_classifier(data, tmp_path / "plain", _tiny_config(validation_fraction=0.0))
    assert no_validation.calibration.temperature == 1.0 and no_validation.splits.validation == ()


def test_a_training_part_too_small_for_a_validation_split_is_refused(tmp_path):
    from smearflow.datasets import scan_class_folders
    from smearflow.training.train import split_dataset

    dataset = scan_class_folders(write_class_folders(tmp_path / "data", per_class=2, size=8))
    with pytest.raises(ValueError, match="has no class with two images"):
        split_dataset(dataset, TrainConfig(test_fraction=0.5))
