import numpy as np
import pytest

from smearflow.training.reports import mean_std, plot_confusion_matrix, plot_training_curves, write_csv


def test_plots_are_pngs(tmp_path):
    path = plot_confusion_matrix([[3, 1], [0, 2]], ["a", "b"], tmp_path / "sub" / "cm.png", "title")
    assert path.read_bytes()[:4] == b"\x89PNG"
    rows = [{"epoch": 0, "stage": "contrastive", "loss": 3.0}, {"epoch": 1, "stage": "head", "loss": 1.0, "accuracy": 0.5}]
    assert plot_training_curves({"fold 1": rows}, tmp_path / "curves.png", "t").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"matrix must have shape \(3, 3\) for 3 classes. Received: shape=\(2, 2\)"):
        plot_confusion_matrix([[3, 1], [0, 2]], ["a", "b", "c"], tmp_path / "bad.png", "t")


def test_mean_std_and_csv(tmp_path):
    assert mean_std([0.5, None, 1.0]) == {"mean": 0.75, "std": pytest.approx(np.std([0.5, 1.0], ddof=1)), "n": 2}
    assert mean_std([0.9]) == {"mean": 0.9, "std": 0.0, "n": 1}
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}
    write_csv([{"a": 1}, {"a": 2, "b": 3}], tmp_path / "x.csv")
    assert (tmp_path / "x.csv").read_text().splitlines() == ["a,b", "1,", "2,3"]


def test_reliability_plot(tmp_path):
    from smearflow.evaluation.metrics import expected_calibration_error
    from smearflow.training.reports import plot_reliability

    calibration = expected_calibration_error(np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]))
    path = plot_reliability(calibration, tmp_path / "r" / "reliability.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="calibration must hold a list of bins"):
        plot_reliability({"ece": 0.1}, tmp_path / "x.png", "test")
