import json

import numpy as np
import pytest
from typer.testing import CliRunner

from smearflow.cli import app
from smearflow.config import PipelineConfig
from smearflow.errors import BadDatasetError
from smearflow.evaluation.fields import evaluate_fields
from smearflow.datasets import read_field_labels
from smearflow.imageio import write_rgb
from smearflow.jobs import Analyzer
from smearflow_testkit import ColumnClassifier, PlantedSegmenter, planted_cell as _cell


UNCHECKED = PipelineConfig(check_quality=False)  # uniform stand-in fields: scoring only


def _labels_csv(path):
    path.write_text(
        "image,wbc,label\n"
        "a.jpg,1,NEUTROPHIL\n"
        "b.jpg,1,LYMPHOCYTE\n"
        "c.jpg,2,\"NEUTROPHIL,EOSINOPHIL\"\n"
        "d.jpg,0,\n"
        "e.jpg,1,MONOCYTE\n"
    )
    return path


def test_read_field_labels_keeps_single_class_rows(tmp_path):
    labels = read_field_labels(_labels_csv(tmp_path / "c.csv"), "image", "label")
    assert labels == {"a.jpg": "neutrophil", "b.jpg": "lymphocyte", "e.jpg": "monocyte"}


def test_read_field_labels_errors(tmp_path):
    with pytest.raises(BadDatasetError, match="does not exist"):
        read_field_labels(tmp_path / "none.csv", "image", "x")
    with pytest.raises(BadDatasetError, match=r"missing column\(s\) \['kind'\]"):
        read_field_labels(_labels_csv(tmp_path / "c.csv"), "image", "kind")


def test_evaluate_fields_scores_the_majority_class(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        write_rgb(tmp_path / name, np.full((60, 60, 3), 200, np.uint8))
    (tmp_path / "e.jpg").write_text("broken")
    labels = {"a.jpg": "neutrophil", "b.jpg": "lymphocyte", "e.jpg": "monocyte"}
    analyzer = Analyzer(
        PlantedSegmenter([_cell("wbc", 30, 30)]), ColumnClassifier(["neutrophil", "neutrophil"]), UNCHECKED
    )
    report = evaluate_fields(tmp_path, labels, analyzer)
    assert report["fields"] == 2 and report["skipped"] == 1
    assert report["agreement"] == pytest.approx(0.5)
    assert report["per_label"]["lymphocyte"]["predicted"] == {"neutrophil": 1}


def test_fields_without_a_white_cell_are_counted_apart(tmp_path):
    write_rgb(tmp_path / "a.jpg", np.full((60, 60, 3), 200, np.uint8))
    report = evaluate_fields(tmp_path, {"a.jpg": "neutrophil"}, Analyzer(PlantedSegmenter([]), ColumnClassifier([]), UNCHECKED))
    assert report["no_wbc_found"] == 1 and report["agreement"] is None


def test_no_labelled_image_is_an_error(tmp_path):
    with pytest.raises(BadDatasetError, match="no labelled image"):
        evaluate_fields(tmp_path, {"a.jpg": "x"}, None, names=["b.jpg"])


def test_command_rejects_an_unknown_subset(tmp_path):
    result = CliRunner().invoke(
        app, ["evaluate-fields", str(tmp_path), "--labels", str(_labels_csv(tmp_path / "c.csv")), "--subset", "x"]
    )
    assert result.exit_code == 2 and "--subset must be" in result.output


def test_command_reports_a_missing_label_file(tmp_path):
    result = CliRunner().invoke(app, ["evaluate-fields", str(tmp_path), "--labels", str(tmp_path / "none.csv")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_evaluate_fields_reports_per_class_figures_and_a_confusion_matrix(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_rgb(tmp_path / name, np.full((60, 60, 3), 200, np.uint8))
    labels = {"a.jpg": "neutrophil", "b.jpg": "lymphocyte", "c.jpg": "neutrophil"}
    analyzer = Analyzer(
        PlantedSegmenter([_cell("wbc", 30, 30)]), ColumnClassifier(["neutrophil", "neutrophil", "lymphocyte"]), UNCHECKED
    )
    report = evaluate_fields(tmp_path, labels, analyzer)
    assert report["classes"] == ["lymphocyte", "neutrophil"] == report["label_classes"]
    assert report["confusion_matrix"] == [[0, 1], [1, 1]]
    assert report["per_class"]["neutrophil"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert report["calibration"] is None and report["uncertain_cells"] is None  # the fake gives no probabilities


def test_field_confusion_keeps_labels_outside_the_classes():
    from smearflow.evaluation.fields import field_confusion

    result = field_confusion([("neutrophil", "neutrophil"), ("smudge", "neutrophil")], ["lymphocyte", "neutrophil"])
    assert result["label_classes"] == ["lymphocyte", "neutrophil", "smudge"]
    assert result["confusion_matrix"] == [[0, 0], [0, 1], [0, 1]]
    assert set(result["per_class"]) == {"neutrophil", "smudge"}


def test_evaluate_fields_command_with_a_real_model_prints_tables_and_writes_plots(tmp_path, tiny_model_dir, monkeypatch):
    import smearflow.jobs as jobs

    for name in ("a.jpg", "b.jpg"):
        write_rgb(tmp_path / name, np.full((60, 60, 3), 200, np.uint8))
    (tmp_path / "labels.csv").write_text("image,label\na.jpg,NEUTROPHIL\nb.jpg,LYMPHOCYTE\n")
    real_load = jobs.Analyzer.load

    def load_with_planted_segmenter(model_dir=None, config=PipelineConfig(), **kwargs):
        analyzer = real_load(model_dir, config, **kwargs)
        return Analyzer(PlantedSegmenter([_cell("wbc", 30, 30)]), analyzer.classifier, UNCHECKED)

    monkeypatch.setattr(jobs.Analyzer, "load", staticmethod(load_with_planted_segmenter))
    args = ["evaluate-fields", str(tmp_path), "--labels", str(tmp_path / "labels.csv"), "--model", str(tiny_model_dir)]
    table = CliRunner().invoke(app, [*args, "--plots", str(tmp_path / "plots")])
    assert table.exit_code == 0, table.output
    assert "per label" in table.stdout and "majority class" in table.stdout and "ECE (15 bins)" in table.stdout
    assert "below the confidence threshold 0.50" in table.stdout
    assert (tmp_path / "plots" / "confusion_matrix.png").is_file() and (tmp_path / "plots" / "reliability.png").is_file()
    payload = json.loads(CliRunner().invoke(app, [*args, "--json"]).stdout)
    assert payload["classified_fields"] == 2 and payload["calibration"]["cells"] == 2
    assert payload["precision"] == "float32"
    in_bfloat16 = json.loads(CliRunner().invoke(app, [*args, "--json", "--precision", "bfloat16"]).stdout)
    assert in_bfloat16["precision"] == "bfloat16" and in_bfloat16["classified_fields"] == 2
    assert "platelet" not in payload["classes"] and len(payload["confusion_matrix"]) == len(payload["label_classes"])


def test_evaluate_fields_command_rejects_an_unknown_precision(tmp_path):
    (tmp_path / "labels.csv").write_text("image,label\na.jpg,NEUTROPHIL\n")
    args = ["evaluate-fields", str(tmp_path), "--labels", str(tmp_path / "labels.csv"), "--precision", "float16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "inference_precision must be one of ['float32', 'bfloat16']" in result.output
