import numpy as np
import pytest
from typer.testing import CliRunner

from smearflow.cli import app
from smearflow.config import PipelineConfig
from smearflow.errors import BadDatasetError
from smearflow.fieldeval import evaluate_fields, read_field_labels
from smearflow.imageio import write_rgb
from smearflow.jobs import Analyzer
from smearflow_testkit import ColumnClassifier, PlantedSegmenter, planted_cell as _cell


def _labels_csv(path):
    path.write_text(
        "image,wbc,kaggle_wbc_category\n"
        "a.jpg,1,NEUTROPHIL\n"
        "b.jpg,1,LYMPHOCYTE\n"
        "c.jpg,2,\"NEUTROPHIL,EOSINOPHIL\"\n"
        "d.jpg,0,\n"
        "e.jpg,1,MONOCYTE\n"
    )
    return path


def test_read_field_labels_keeps_single_class_rows(tmp_path):
    labels = read_field_labels(_labels_csv(tmp_path / "c.csv"), "image", "kaggle_wbc_category")
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
    analyzer = Analyzer(PlantedSegmenter([_cell("wbc", 30, 30)]), ColumnClassifier(["neutrophil", "neutrophil"]))
    report = evaluate_fields(tmp_path, labels, analyzer)
    assert report["fields"] == 2 and report["skipped"] == 1
    assert report["agreement"] == pytest.approx(0.5)
    assert report["per_label"]["lymphocyte"]["predicted"] == {"neutrophil": 1}


def test_fields_without_a_white_cell_are_counted_apart(tmp_path):
    write_rgb(tmp_path / "a.jpg", np.full((60, 60, 3), 200, np.uint8))
    report = evaluate_fields(tmp_path, {"a.jpg": "neutrophil"}, Analyzer(PlantedSegmenter([]), ColumnClassifier([])))
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
