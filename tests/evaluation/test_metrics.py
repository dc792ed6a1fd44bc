import numpy as np
import pytest

from smearflow.evaluation.metrics import classification_metrics


def test_against_hand_computed_values():
    # true:  a a a b b c ; predicted: a a b b c c
    y_true = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    y_prob = np.eye(3)[predicted] * 0.8 + 0.2 / 3
    m = classification_metrics(y_true, y_prob, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # a: P=2/2 R=2/3 ; b: P=1/2 R=1/2 ; c: P=1/2 R=1/1
    assert m["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["macro_recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["images"] == 6 and m["classes"] == ["a", "b", "c"]
    assert 0.5 < m["roc_auc_macro_ovr"] <= 1.0


def test_roc_auc_is_none_when_a_class_is_absent():
    m = classification_metrics(np.array([0, 0]), np.array([[0.9, 0.1, 0.0], [0.8, 0.1, 0.1]]), ["a", "b", "c"])
    assert m["roc_auc_macro_ovr"] is None


def test_shape_mismatch_is_rejected():
    with pytest.raises(ValueError, match="y_prob must have shape"):
        classification_metrics(np.array([0, 1]), np.zeros((2, 2)), ["a", "b", "c"])


def test_average_over_present_classes():
    y_true = np.array([0, 0, 1, 1])
    y_prob = np.eye(3)[[0, 2, 1, 1]]  # one image of class 0 predicted as the absent class 2
    all_classes = classification_metrics(y_true, y_prob, ["a", "b", "c"])
    present = classification_metrics(y_true, y_prob, ["a", "b", "c"], average_over=[0, 1])
    assert present["macro_recall"] == pytest.approx((0.5 + 1.0) / 2)
    assert all_classes["macro_recall"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert present["per_class"] == all_classes["per_class"] and present["accuracy"] == 0.75
    with pytest.raises(ValueError, match=r"average_over must hold class indices in \[0, 3\). Received: average_over=\[3\]"):
        classification_metrics(y_true, y_prob, ["a", "b", "c"], average_over=[3])


def test_expected_calibration_error_by_hand():
    from smearflow.evaluation.metrics import expected_calibration_error, negative_log_likelihood

    # two images at confidence 0.9 (one right), two at 0.6 (both right)
    y_prob = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    y_true = np.array([0, 1, 1, 1])
    result = expected_calibration_error(y_true, y_prob, n_bins=10)
    assert result["ece"] == pytest.approx(0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6))
    assert result["max_gap"] == pytest.approx(0.4)
    assert [(b["images"], b["accuracy"]) for b in result["bins"]] == [(2, 1.0), (2, 0.5)]
    assert expected_calibration_error(y_true, y_prob)["n_bins"] == 15
    assert negative_log_likelihood(y_true, y_prob) == pytest.approx(-np.mean(np.log([0.9, 0.1, 0.6, 0.6])))


def test_expected_calibration_error_validates():
    from smearflow.evaluation.metrics import expected_calibration_error

    with pytest.raises(ValueError, match="n_bins must be at least 1. Received: n_bins=0"):
        expected_calibration_error(np.array([0]), np.array([[1.0, 0.0]]), n_bins=0)
    with pytest.raises(ValueError, match="one label per row"):
        expected_calibration_error(np.array([], dtype=int), np.zeros((0, 2)))
