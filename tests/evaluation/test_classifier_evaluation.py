import json

import numpy as np
import pytest
from typer.testing import CliRunner

from smearflow_testkit import write_class_folders
from smearflow.classifier.classifier import Classifier
from smearflow.cli import app
from smearflow.errors import BadDatasetError
from smearflow.evaluation.classifier import evaluate_classifier

JSON_KEYS = {
    "accuracy", "macro_precision", "macro_recall", "macro_f1", "per_class", "confusion_matrix", "classes", "images",
    "skipped",
}


@pytest.fixture
def mixed_data(tmp_path):
    """Two of the model's classes, one folder the model does not know, one unreadable image."""
    data = write_class_folders(tmp_path / "data", classes=("lymphocyte", "neutrophil", "smudge"), per_class=3, size=40)
    (data / "neutrophil" / "neutrophil_0.png").write_text("broken")
    return data


def test_evaluate_reports_what_it_skipped(tiny_model_dir, mixed_data, caplog):
    classifier = Classifier.load(tiny_model_dir)
    result = evaluate_classifier(classifier, mixed_data, batch_size=2)
    assert JSON_KEYS <= set(result)
    assert result["images"] == 5 and result["classes"] == list(classifier.classes)
    assert result["skipped"] == {
        "unreadable_images": 1,
        "unreadable_files": ["neutrophil/neutrophil_0.png"],
        "data_classes_not_in_model": {"smudge": 3},
        "model_classes_without_data": [c for c in classifier.classes if c not in ("lymphocyte", "neutrophil")],
    }
    assert result["per_class"]["lymphocyte"]["support"] == 3 and result["per_class"]["neutrophil"]["support"] == 2
    assert np.sum(result["confusion_matrix"]) == 5
    # the macro figures average over the two present classes only
    present = [result["per_class"][c]["recall"] for c in ("lymphocyte", "neutrophil")]
    assert result["macro_recall"] == pytest.approx(np.mean(present))
    assert "smudge" in caplog.text and "neutrophil_0.png" in caplog.text
    assert result["model_version"] == classifier.version


def test_evaluate_errors(tiny_model_dir, tmp_path):
    classifier = Classifier.load(tiny_model_dir)
    with pytest.raises(BadDatasetError, match="does not exist"):
        evaluate_classifier(classifier, tmp_path / "none")
    other = write_class_folders(tmp_path / "other", classes=("x", "y"), per_class=1)
    with pytest.raises(BadDatasetError, match=r"no class folder matches the model's classes .* Received folders: \['x', 'y'\]"):
        evaluate_classifier(classifier, other)
    empty = write_class_folders(tmp_path / "empty", classes=("lymphocyte",), per_class=1)
    (empty / "monocyte").mkdir()
    with pytest.raises(BadDatasetError, match="monocyte: class folder holds no image"):
        evaluate_classifier(classifier, empty)
    broken = write_class_folders(tmp_path / "broken", classes=("lymphocyte",), per_class=2)
    for path in (broken / "lymphocyte").iterdir():
        path.write_text("broken")
    with pytest.raises(BadDatasetError, match="none of the 2 images can be read"):
        evaluate_classifier(classifier, broken)
    with pytest.raises(ValueError, match="batch_size must be at least 1. Received: batch_size=0"):
        evaluate_classifier(classifier, broken, batch_size=0)


def test_evaluate_classifier_command(tiny_model_dir, mixed_data, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate-classifier", str(mixed_data), "--model", str(tiny_model_dir), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert JSON_KEYS <= set(payload) and payload["images"] == 5 and payload["skipped"]["unreadable_images"] == 1
    table = runner.invoke(app, ["evaluate-classifier", str(mixed_data), "--model", str(tiny_model_dir)])
    assert table.exit_code == 0 and "lymphocyte" in table.stdout and "skipped 1 unreadable image" in table.stdout
    failed = runner.invoke(app, ["evaluate-classifier", str(tmp_path / "none"), "--model", str(tiny_model_dir)])
    assert failed.exit_code == 1 and "does not exist" in failed.output


def test_evaluate_only_the_listed_images(tiny_model_dir, mixed_data):
    classifier = Classifier.load(tiny_model_dir)
    only = ["lymphocyte/lymphocyte_1.png", "neutrophil/neutrophil_2.png", "neutrophil/gone.png"]
    result = evaluate_classifier(classifier, mixed_data, only=only)
    assert result["images"] == 2 and result["skipped"]["listed_but_absent"] == 1
    with pytest.raises(BadDatasetError, match="none of the 1 listed images is in the dataset"):
        evaluate_classifier(classifier, mixed_data, only=["basophil/x.png"])


def test_evaluate_classifier_command_scores_a_split_of_the_model(tiny_model_dir, mixed_data, tmp_path):
    import shutil

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    runner = CliRunner()
    no_record = runner.invoke(app, ["evaluate-classifier", str(mixed_data), "--model", str(model), "--split", "test"])
    assert no_record.exit_code == 1 and "has no splits.json" in no_record.output
    (model / "splits.json").write_text(json.dumps({"test": ["lymphocyte/lymphocyte_0.png"]}))
    args = ["evaluate-classifier", str(mixed_data), "--model", str(model), "--json"]
    result = runner.invoke(app, [*args, "--split", "test"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 1
    unknown = runner.invoke(app, [*args, "--split", "validation"])
    assert unknown.exit_code == 1 and "no list named 'validation'" in unknown.output


def test_evaluate_classifier_prints_confusion_and_calibration_and_writes_plots(tiny_model_dir, mixed_data, tmp_path):
    runner = CliRunner()
    args = ["evaluate-classifier", str(mixed_data), "--model", str(tiny_model_dir), "--plots", str(tmp_path / "plots")]
    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    assert "confusion matrix" in table.stdout and "ECE (15 bins)" in table.stdout and "uncertain" in table.stdout
    for name in ("confusion_matrix.png", "reliability.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    payload = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert payload["calibration"]["n_bins"] == 15 and 0 <= payload["calibration"]["ece"] <= 1
    assert payload["confidence"]["temperature"] == 1.0 and payload["confidence"]["confidence_threshold"] == 0.5
    assert len(payload["plots"]) == 2


def test_evaluate_classifier_command_computes_in_the_precision_asked(tiny_model_dir, mixed_data):
    args = ["evaluate-classifier", str(mixed_data), "--model", str(tiny_model_dir), "--json"]
    payload = json.loads(CliRunner().invoke(app, [*args, "--precision", "bfloat16"]).stdout)
    assert payload["precision"] == "bfloat16" and payload["images"] == 5
    wrong = CliRunner().invoke(app, [*args, "--precision", "float16"])
    assert wrong.exit_code == 1 and "precision must be one of ['float32', 'bfloat16']" in wrong.output
