import json
import shutil

import numpy as np
import pytest

from smearflow.classifier.calibration import (
    TTA_VIEWS,
    Calibration,
    apply_temperature,
    fit_temperature,
    recommend_threshold,
    threshold_table,
    tta_views,
)
from smearflow.classifier.classifier import Classifier
from smearflow.errors import BadModelError


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_temperature_keeps_the_argmax_and_softens_or_sharpens():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    np.testing.assert_allclose(apply_temperature(p, 1.0), p, rtol=1e-6)
    soft, sharp = apply_temperature(p, 2.0), apply_temperature(p, 0.5)
    assert (soft.argmax(1) == p.argmax(1)).all() and (sharp.argmax(1) == p.argmax(1)).all()
    assert (soft.max(1) < p.max(1)).all() and (sharp.max(1) > p.max(1)).all()
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="temperature must be positive. Received: temperature=0"):
        apply_temperature(p, 0)


def test_fit_temperature_recovers_the_temperature_of_overconfident_outputs():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, size=(4000, 5))
    labels = np.array([rng.choice(5, p=row) for row in _softmax(logits)])  # calibrated at T = 1
    overconfident = _softmax(logits * 2.5)
    assert fit_temperature(overconfident, labels) == pytest.approx(2.5, rel=0.1)


def test_fit_temperature_validates_shapes():
    with pytest.raises(ValueError, match="one label per row"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(ValueError, match="one label per row"):
        fit_temperature(np.full((2, 3), 1 / 3), np.zeros(3))


@pytest.mark.parametrize("mode", TTA_VIEWS)
def test_tta_views_are_distinct_flips_and_turns(mode):
    images = np.arange(2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
    views = tta_views(images, mode)
    assert len(views) == TTA_VIEWS[mode]
    assert len({v.tobytes() for v in views}) == len(views)
    np.testing.assert_array_equal(views[0], images)


def test_tta_views_reject_unknown_modes():
    with pytest.raises(ValueError, match="mode must be one of"):
        tta_views(np.zeros((1, 4, 4, 3)), "rotations")


def test_threshold_table_and_recommendation():
    labels = np.array([0, 0, 1, 1])
    p = np.array([[0.95, 0.05], [0.6, 0.4], [0.45, 0.55], [0.9, 0.1]])  # the last is wrong and confident
    table = threshold_table(labels, p, [0.5, 0.7, 0.92])
    assert [r["coverage"] for r in table] == [1.0, 0.5, 0.25]
    assert table[0]["accuracy"] == 0.75 and table[1]["accuracy"] == 0.5 and table[2]["uncertain"] == 3
    assert recommend_threshold(table, 1.0) == 0.92
    assert recommend_threshold(table, 0.7) == 0.5
    assert recommend_threshold([{"threshold": 0.5, "accuracy": None}], 0.9) == 0.5
    with pytest.raises(ValueError, match="at least one row"):
        recommend_threshold([], 0.9)
    with pytest.raises(ValueError, match="target_accuracy must be in"):
        recommend_threshold(table, 0.0)


def test_calibration_validates():
    assert Calibration.from_dict({"temperature": 2.0, "note": "anything"}).temperature == 2.0
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        Calibration(temperature=-1.0)
    with pytest.raises(ValueError, match="confidence_threshold must be in"):
        Calibration(confidence_threshold=1.5)
    with pytest.raises(ValueError, match="test_time_augmentation must be one of"):
        Calibration(test_time_augmentation="many")


@pytest.fixture
def calibrated_copy(tiny_model_dir, tmp_path):
    return shutil.copytree(tiny_model_dir, tmp_path / "model")


def test_predict_proba_applies_the_folder_temperature_and_views(calibrated_copy):
    import keras

    crops = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    plain = Classifier.load(calibrated_copy)
    assert plain.temperature == 1.0 and plain.test_time_augmentation == "none"
    (calibrated_copy / "calibration.json").write_text(
        json.dumps({"temperature": 3.0, "confidence_threshold": 0.8, "test_time_augmentation": "flips"})
    )
    tempered = Classifier.load(calibrated_copy)
    assert tempered.confidence_threshold == 0.8
    resized = np.stack([plain.predict_proba(crops[i : i + 1])[0] for i in range(3)])  # untempered, one view
    from smearflow.classifier.preprocessing import resize_batch

    views = tta_views(resize_batch(crops, 32), "flips")
    raw = np.mean([keras.ops.convert_to_numpy(plain.model(v.astype("float32"), training=False)) for v in views], 0)
    np.testing.assert_allclose(tempered.predict_proba(crops), apply_temperature(raw, 3.0), rtol=1e-4, atol=1e-6)
    assert not np.allclose(resized, tempered.predict_proba(crops))


def test_is_uncertain_uses_the_threshold(calibrated_copy):
    classifier = Classifier.load(calibrated_copy)
    p = np.array([[0.4, 0.6], [0.9, 0.1]])
    assert classifier.is_uncertain(p).tolist() == [False, False]  # default threshold 0.5
    assert classifier.is_uncertain(p, threshold=0.7).tolist() == [True, False]
    assert classifier.is_uncertain(np.zeros((0, 2))).shape == (0,)
    with pytest.raises(ValueError, match="threshold must be in"):
        classifier.is_uncertain(p, threshold=2)


@pytest.mark.parametrize(
    "content, message",
    [("[1]", "expected a JSON object"), ('{"temperature": 0}', "temperature must be a positive number"), ("{", "not valid JSON")],
)
def test_a_bad_calibration_file_is_a_bad_model(calibrated_copy, content, message):
    (calibrated_copy / "calibration.json").write_text(content)
    with pytest.raises(BadModelError, match=message):
        Classifier.load(calibrated_copy)
