import json
import shutil

import numpy as np
import pytest

from smearflow import WBC_CLASSES
from smearflow.classifier.classifier import Classifier
from smearflow.classifier.model_folder import read_model_folder
from smearflow.classifier.preprocessing import resize_batch, resize_rgb
from smearflow.errors import BadModelError


def test_model_folder_round_trip_gives_identical_predictions(tiny_model_dir):
    import keras

    classifier = Classifier.load(tiny_model_dir)
    crops = np.random.default_rng(0).integers(0, 256, size=(5, 224, 224, 3), dtype=np.uint8)
    probabilities = classifier.predict_proba(crops, batch_size=2)
    assert probabilities.shape == (5, 8)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    reloaded = keras.saving.load_model(tiny_model_dir / "model.keras")
    direct = keras.ops.convert_to_numpy(reloaded(resize_batch(crops, 32).astype("float32"), training=False))
    np.testing.assert_allclose(probabilities, direct, rtol=1e-5, atol=1e-6)
    labels = classifier.classify(crops)
    assert [c.label for c in labels] == [WBC_CLASSES[i] for i in probabilities.argmax(axis=1)]
    assert classifier.version.startswith("cnn-") and len(classifier.version) == 14


def test_empty_batch(tiny_model_dir):
    assert Classifier.load(tiny_model_dir).predict_proba(np.zeros((0, 224, 224, 3), np.uint8)).shape == (0, 8)


def test_bad_crop_batches_are_rejected(tiny_model_dir):
    classifier = Classifier.load(tiny_model_dir)
    with pytest.raises(ValueError, match="crops must have shape"):
        classifier.predict_proba(np.zeros((224, 224, 3), np.uint8))
    with pytest.raises(ValueError, match="batch_size"):
        classifier.predict_proba(np.zeros((1, 224, 224, 3), np.uint8), batch_size=0)


@pytest.fixture
def model_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


def test_missing_folder(tmp_path):
    with pytest.raises(BadModelError, match="does not exist"):
        read_model_folder(tmp_path / "nope")


@pytest.mark.parametrize("name", ["model.keras", "config.json", "classes.json", "metrics.json"])
def test_missing_file(model_copy, name):
    (model_copy / name).unlink()
    with pytest.raises(BadModelError, match=f"missing {name}"):
        read_model_folder(model_copy)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("config.json", "{oops", "not valid JSON"),
        ("config.json", "[]", "expected a JSON object"),
        ("config.json", '{"architecture": "cnn"}', "missing key"),
        ("classes.json", "[]", "non-empty list"),
        ("classes.json", '["a", "a"]', "duplicate class"),
        ("metrics.json", "3", "expected a JSON object"),
    ],
)
def test_invalid_json_files(model_copy, name, content, message):
    (model_copy / name).write_text(content)
    with pytest.raises(BadModelError, match=message) as info:
        read_model_folder(model_copy)
    assert name in str(info.value)


def test_class_count_must_match_network_outputs(model_copy):
    (model_copy / "classes.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(BadModelError, match="8 outputs but classes.json lists 2"):
        Classifier.load(model_copy)


def test_corrupt_weights(model_copy):
    (model_copy / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(BadModelError, match="cannot load the network"):
        Classifier.load(model_copy)


def test_resize_rgb_validates_and_keeps_dtype():
    image = np.zeros((50, 40, 3), np.uint8)
    assert resize_rgb(image, 20).shape == (20, 20, 3)
    assert resize_rgb(image, 80).dtype == np.uint8
    with pytest.raises(ValueError, match="shape"):
        resize_rgb(np.zeros((5, 5), np.uint8), 4)
    with pytest.raises(ValueError, match="size_px"):
        resize_rgb(image, 0)
    with pytest.raises(ValueError, match=r"\(n, M, N, 3\)"):
        resize_batch(image, 4)


def test_saved_model_folder_holds_no_optimizer_state(tmp_path):
    import keras

    from smearflow.classifier.model_folder import write_model_folder
    from smearflow.training.architectures import build_model

    model = build_model("cnn", 32, 3, filters=(8, 16))
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(np.zeros((2, 32, 32, 3)), np.eye(3)[[0, 1]], verbose=0)
    folder = write_model_folder(tmp_path / "m", model, config={"architecture": "cnn", "image_size": 32}, classes=["a", "b", "c"], metrics={})
    reloaded = keras.saving.load_model(folder.weights_path)
    assert getattr(reloaded, "optimizer", None) is None
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(x)), keras.ops.convert_to_numpy(model(x)), rtol=1e-5)


def test_excluded_classes_get_no_probability(tiny_model_dir):
    classifier = Classifier.load(tiny_model_dir)
    crops = np.random.default_rng(1).integers(0, 256, size=(6, 64, 64, 3), dtype=np.uint8)
    labels = classifier.classify(crops, exclude=("platelet", "basophil"))
    assert all(c.label not in ("platelet", "basophil") for c in labels)
    for c in labels:
        assert sum(c.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert c.probabilities[WBC_CLASSES.index("platelet")] == 0.0
    with pytest.raises(ValueError, match="unknown classes"):
        classifier.classify(crops, exclude=("macrophage",))
    with pytest.raises(ValueError, match="every class"):
        classifier.classify(crops, exclude=WBC_CLASSES)


@pytest.fixture(scope="module")
def tiny_hybrid_dir(tmp_path_factory):
    """An untrained hybrid (InceptionV3 + Xception) model folder at its smallest input, with a calibration file."""
    from smearflow import WBC_CLASSES
    from smearflow.classifier.model_folder import write_model_folder
    from smearflow.training.architectures import build_model, get_architecture

    size = get_architecture("hybrid").min_image_size
    path = tmp_path_factory.mktemp("tiny-hybrid")
    write_model_folder(
        path,
        build_model("hybrid", size, len(WBC_CLASSES), dense_units=8),
        config={"architecture": "hybrid", "image_size": size, "arch_params": {"dense_units": 8}},
        classes=WBC_CLASSES,
        metrics={"note": "untrained test model"},
        calibration={"temperature": 1.5, "confidence_threshold": 0.4, "test_time_augmentation": "none"},
    )
    return path


def test_a_hybrid_model_folder_loads_as_model_dir_and_classifies_crops(tiny_hybrid_dir):
    """``analyze --model``, the worker and nightly retraining all load through Analyzer.load."""
    from smearflow.config import PipelineConfig
    from smearflow.jobs import Analyzer

    analyzer = Analyzer.load(tiny_hybrid_dir, PipelineConfig())
    classifier = analyzer.classifier
    assert classifier.folder.architecture == "hybrid" and classifier.version.startswith("hybrid-")
    assert classifier.temperature == 1.5 and classifier.confidence_threshold == 0.4
    crops = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    results = classifier.classify(crops, exclude=("platelet",))
    assert len(results) == 3 and all(r.label != "platelet" for r in results)
    assert all(len(r.probabilities) == len(classifier.classes) for r in results)
    np.testing.assert_allclose([sum(r.probabilities) for r in results], 1.0, rtol=1e-5)


def test_bfloat16_inference_gives_nearly_the_same_probabilities(tiny_model_dir):
    classifier = Classifier.load(tiny_model_dir)
    half = Classifier.load(tiny_model_dir, precision="bfloat16")
    assert half.precision == "bfloat16" and half.version == classifier.version
    assert half.model.layers[2].dtype_policy.name == "mixed_bfloat16"
    assert half.model.get_layer("probabilities").dtype_policy.name == "float32"
    crops = np.random.default_rng(1).integers(0, 256, size=(6, 40, 40, 3), dtype=np.uint8)
    full_p, half_p = classifier.predict_proba(crops), half.predict_proba(crops)
    assert half_p.dtype == np.float32
    np.testing.assert_allclose(half_p, full_p, atol=0.02)


def test_an_unknown_precision_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match=r"precision must be one of \['float32', 'bfloat16'\]. Received: precision='int8'"):
        Classifier.load(tiny_model_dir, precision="int8")
    loaded = Classifier.load(tiny_model_dir)
    with pytest.raises(ValueError, match="Received: precision='fp16'"):
        Classifier(loaded.model, loaded.folder, precision="fp16")
