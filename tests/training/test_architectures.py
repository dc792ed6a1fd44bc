"""The registry contract, run for every architecture, and the pieces around it."""

import json
import zipfile

import numpy as np
import pytest

from smearflow.training.architectures import (
    ARCHITECTURES,
    BACKBONES,
    build_backbone,
    build_model,
    get_architecture,
    load_backbone_weights,
    model_backbones,
    pixel_preprocessing,
    resolve_weight_files,
    set_backbones_trainable,
)

HEAVY: set[str] = set()
"""Architectures whose contract takes over ~40 s (marked slow; still run by default and in CI)."""


def _params(names):
    return [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in names]


@pytest.mark.parametrize("name", _params(ARCHITECTURES))
def test_architecture_contract(name, tmp_path):
    """Build at the minimum size, one training step, save, reload: identical predictions."""
    import keras

    from smearflow.training.contrastive import SupervisedContrastiveLoss, projection_model

    architecture = get_architecture(name)
    size, num_classes = architecture.min_image_size, 3
    keras.utils.set_random_seed(0)
    model = build_model(name, size, num_classes)
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, num_classes)
    head = model.layers[-1]
    assert head.name == "probabilities" and head.get_config()["activation"] == "softmax"
    assert set(model_backbones(model)) == set(architecture.backbone_names())

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2, size, size, 3)).astype("float32")
    labels = np.array([0, 2])
    if name != "cnn":  # the cnn predates the convention and keeps its layer names
        preprocessed = keras.Model(model.inputs[0], model.get_layer("preprocessed").output)(x)
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(preprocessed), _reference_preprocessing(x, architecture.preprocessing), atol=1e-3
        )
    if architecture.contrastive:
        projector = projection_model(model, projection_dim=8)
        projector.compile(
            optimizer=keras.optimizers.Adam(1e-3), loss=SupervisedContrastiveLoss(0.1), run_eagerly=True
        )
        assert np.isfinite(float(projector.train_on_batch(x, np.array([1, 1]))))
    before = [w.copy() for w in model.get_weights()]
    # Eager: tracing (and XLA-compiling) a 700-layer train step costs minutes on a CPU and
    # tests the backend, not the architecture; the training tests run compiled steps.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", run_eagerly=True)
    assert np.isfinite(float(model.train_on_batch(x, np.eye(num_classes, dtype="float32")[labels])))
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))

    predictions = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-5)
    path = tmp_path / "model.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        assert "smearflow" not in archive.read("config.json").decode(), "the saved model needs custom code"
    reloaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(x, training=False)), predictions, atol=1e-6)


def _reference_preprocessing(x, mode):
    from keras.applications import imagenet_utils

    if mode == "unit":
        return x / 255.0
    return imagenet_utils.preprocess_input(x.copy(), mode=mode)


@pytest.mark.parametrize("mode", ["unit", "tf", "torch", "caffe"])
def test_pixel_preprocessing_matches_keras_applications(mode):
    import keras

    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, pixel_preprocessing(inputs, mode))
    x = np.random.default_rng(1).integers(0, 256, size=(2, 4, 4, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(x)), _reference_preprocessing(x, mode), rtol=1e-5, atol=1e-4
    )


def test_pixel_preprocessing_rejects_unknown_mode():
    import keras

    with pytest.raises(ValueError, match="mode must be one of .* Received: mode='bgr'"):
        pixel_preprocessing(keras.Input((4, 4, 3)), "bgr")


def test_registry_minimum_sizes():
    assert {n: a.min_image_size for n, a in ARCHITECTURES.items()} == {
        "cnn": 32,
        "unet_encoder": 32,
        "resnet50": 32,
        "vgg16": 32,
        "densenet201": 32,
        "mobilenetv2": 32,
        "inceptionv3": 75,
        "xception": 71,
        "hybrid": 75,
        "supcon": 32,
    }
    for name in ("inceptionv3", "xception", "hybrid"):
        minimum = ARCHITECTURES[name].min_image_size
        with pytest.raises(ValueError, match=f"{name} needs image_size >= {minimum}. Received: image_size=64"):
            build_model(name, 64, 3)


def test_backbone_and_encoder_errors():
    with pytest.raises(ValueError, match="Unknown backbone 'alexnet'"):
        build_backbone("alexnet", 64)
    with pytest.raises(ValueError, match="backbone xception needs image_size >= 71. Received: image_size=64"):
        build_backbone("xception", 64)
    with pytest.raises(ValueError, match="encoder must be one of .* Received: encoder='alexnet'"):
        build_model("supcon", 64, 3, encoder="alexnet")
    with pytest.raises(ValueError, match="backbone xception needs image_size >= 71"):
        build_model("supcon", 64, 3, encoder="xception")
    assert ARCHITECTURES["supcon"].backbone_names({"encoder": "xception"}) == ("xception",)


# --------------------------------------------------------------------------- local ImageNet weights


@pytest.fixture(scope="module")
def mobilenet_weights(tmp_path_factory):
    """A MobileNetV2 backbone's weights saved in both Keras formats, under the standard name."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    folder = tmp_path_factory.mktemp("imagenet")
    keras.utils.set_random_seed(7)
    source = build_backbone("mobilenetv2", 32)
    legacy = folder / BACKBONES["mobilenetv2"].weights_file
    with h5py.File(legacy, "w") as handle:  # the layout of Keras' downloadable .h5 files
        legacy_h5_format.save_weights_to_hdf5_group(handle, source)
    modern = folder / "mobilenetv2.weights.h5"
    source.save_weights(modern)
    return folder, legacy, modern, source.get_weights()


@pytest.mark.parametrize("how", ["imagenet-folder", "backbone-file"])
def test_local_imagenet_weights_are_loaded(mobilenet_weights, how):
    import keras

    folder, _, modern, expected = mobilenet_weights
    keras.utils.set_random_seed(8)
    model = build_model("mobilenetv2", 32, 3)
    weights = {"imagenet": str(folder)} if how == "imagenet-folder" else {"mobilenetv2": str(modern)}
    loaded = load_backbone_weights(model, weights | {"xception": "/ignored/for/this/model.h5"})
    assert list(loaded) == ["mobilenetv2"]
    for got, want in zip(model.get_layer("mobilenetv2").get_weights(), expected):
        np.testing.assert_array_equal(got, want)


def test_weights_errors(tmp_path, mobilenet_weights):
    folder, legacy, _, _ = mobilenet_weights
    with pytest.raises(FileNotFoundError, match=r"ImageNet weights for backbone resnet50: no file .*resnet50_weights"):
        resolve_weight_files({"imagenet": str(folder)}, ["resnet50"])
    with pytest.raises(FileNotFoundError, match="backbone xception: no file .*missing.h5"):
        resolve_weight_files({"xception": str(tmp_path / "missing.h5")}, ["xception"])
    with pytest.raises(ValueError, match=r"weights keys must be 'imagenet' or a backbone .* Received: \['resnet'\]"):
        resolve_weight_files({"resnet": "x.h5"}, ["resnet50"])
    with pytest.raises(ValueError, match="imagenet=PATH must be a folder"):
        resolve_weight_files({"imagenet": str(legacy)}, ["mobilenetv2"])
    assert resolve_weight_files({}, ["resnet50"]) == {}
    assert resolve_weight_files({"xception": str(tmp_path / "missing.h5")}, ["resnet50"]) == {}


def test_mismatched_weights_file_is_a_clear_error(mobilenet_weights):
    _, legacy, _, _ = mobilenet_weights
    model = build_model("vgg16", 32, 3)
    with pytest.raises(ValueError, match="cannot load into backbone vgg16"):
        load_backbone_weights(model, {"vgg16": str(legacy)})


def test_freezing_backbones_keeps_batch_norm_frozen_when_fine_tuning():
    from keras import layers

    model = build_model("mobilenetv2", 32, 3)
    backbone = model.get_layer("mobilenetv2")
    set_backbones_trainable(model, False)
    assert not backbone.trainable and model.get_layer("probabilities").trainable
    set_backbones_trainable(model, True)
    assert backbone.trainable
    norms = [layer for layer in backbone.layers if isinstance(layer, layers.BatchNormalization)]
    convs = [layer for layer in backbone.layers if isinstance(layer, layers.Conv2D)]
    assert norms and not any(layer.trainable for layer in norms) and all(layer.trainable for layer in convs)
    json.dumps(model.get_config())  # still serialisable
