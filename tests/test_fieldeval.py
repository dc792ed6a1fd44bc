import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from smearflow.cli import app
from smearflow.config import PipelineConfig
from smearflow.errors import BadDatasetError
from smearflow.fieldeval import evaluate_fields, export_field_crops, read_field_labels
from smearflow.imageio import write_rgb
from smearflow.jobs import Analyzer
from smearflow.segmentation import Segmentation
from smearflow_testkit import ColumnClassifier, PlantedSegmenter, planted_cell as _cell


UNCHECKED = PipelineConfig(check_quality=False)  # uniform stand-in fields: scoring only


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


class _CellsByBrightness:
    """Finds as many white cells as the field's grey level says (0, 1 or 2), plus a red cell.

    Every field also holds a white cell mostly outside it, and grey 150 adds
    one that the border rule leaves uncounted but is in full view (grey 50:
    the only white cell).
    """

    def segment(self, image):
        grey = int(image[0, 0, 0])
        n_wbc = grey // 100
        cells = [_cell("wbc", 20 + 20 * k, 30) for k in range(n_wbc)] + [_cell("rbc", 50, 50)]
        cells.append(_cell("wbc", 75, 75, counted=False, visible=0.3))
        if grey in (50, 150):
            cells.append(_cell("wbc", 60, 30, counted=False))
        return Segmentation(cells=tuple(cells), rbc_diameter_px=10.0, image_shape=image.shape[:2])


def test_export_field_crops_writes_one_crop_per_single_cell_field(tmp_path):
    fields = tmp_path / "fields"
    for name, grey in (("a.jpg", 100), ("b.jpg", 10), ("c.jpg", 200), ("d.jpg", 100), ("f.jpg", 150), ("g.jpg", 50)):
        write_rgb(fields / name, np.full((80, 80, 3), grey, np.uint8))
    (fields / "e.jpg").write_text("broken")
    labels = {"a.jpg": "neutrophil", "b.jpg": "monocyte", "c.jpg": "lymphocyte", "d.jpg": "neutrophil"}
    labels |= {"e.jpg": "eosinophil", "f.jpg": "monocyte", "g.jpg": "lymphocyte"}
    report = export_field_crops(fields, labels, _CellsByBrightness(), tmp_path / "crops", PipelineConfig())
    assert report["written"] == {"lymphocyte": 1, "neutrophil": 2}
    # f.jpg: its uncounted but visible cell is a second white cell
    assert report["skipped_fields"] == {"no white cell": 1, "several white cells": 2, "unreadable": 1}
    crops = sorted((tmp_path / "crops").rglob("*.png"))
    names = [p.relative_to(tmp_path / "crops").as_posix() for p in crops]
    assert names == ["lymphocyte/g.png", "neutrophil/a.png", "neutrophil/d.png"]
    from smearflow.imageio import read_rgb

    assert read_rgb(crops[0]).shape == (224, 224, 3)


def test_export_field_crops_keeps_to_the_named_subset(tmp_path):
    write_rgb(tmp_path / "a.jpg", np.full((80, 80, 3), 100, np.uint8))
    write_rgb(tmp_path / "b.jpg", np.full((80, 80, 3), 100, np.uint8))
    labels = {"a.jpg": "neutrophil", "b.jpg": "monocyte"}
    report = export_field_crops(tmp_path, labels, _CellsByBrightness(), tmp_path / "crops", names=["b.jpg"])
    assert report["written"] == {"monocyte": 1}
    with pytest.raises(BadDatasetError, match="no labelled image to export"):
        export_field_crops(tmp_path, labels, _CellsByBrightness(), tmp_path / "crops", names=["z.jpg"])


def test_export_crops_command_writes_the_tuning_part(tmp_path, monkeypatch):
    import smearflow.cli

    fields = tmp_path / "fields"
    names = [f"f{i}.jpg" for i in range(10)]
    for name in names:
        write_rgb(fields / name, np.full((80, 80, 3), 100, np.uint8))
    (tmp_path / "c.csv").write_text("image,kaggle_wbc_category\n" + "".join(f"{n},NEUTROPHIL\n" for n in names))
    monkeypatch.setattr(smearflow.cli, "make_segmenter", lambda name, **kwargs: _CellsByBrightness())
    out = tmp_path / "crops"
    args = ["export-crops", str(fields), "--labels", str(tmp_path / "c.csv"), "--out", str(out), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    from smearflow.datasets import holdout_split

    tuning, _ = holdout_split(Path(n).stem for n in names)
    assert sorted(p.stem for p in out.rglob("*.png")) == sorted(tuning)
    assert json.loads(result.output)["written"] == {"neutrophil": len(tuning)}


def test_export_crops_command_errors(tmp_path):
    missing = CliRunner().invoke(app, ["export-crops", str(tmp_path), "--labels", str(tmp_path / "no.csv"), "--out", "x"])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    (tmp_path / "c.csv").write_text("image,kaggle_wbc_category\n")
    empty = CliRunner().invoke(app, ["export-crops", str(tmp_path), "--labels", str(tmp_path / "c.csv"), "--out", "x"])
    assert empty.exit_code == 2 and "no labelled image" in " ".join(empty.output.split())


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
    from smearflow.fieldeval import field_confusion

    result = field_confusion([("neutrophil", "neutrophil"), ("smudge", "neutrophil")], ["lymphocyte", "neutrophil"])
    assert result["label_classes"] == ["lymphocyte", "neutrophil", "smudge"]
    assert result["confusion_matrix"] == [[0, 0], [0, 1], [0, 1]]
    assert set(result["per_class"]) == {"neutrophil", "smudge"}


def test_evaluate_fields_command_with_a_real_model_prints_tables_and_writes_plots(tmp_path, tiny_model_dir, monkeypatch):
    import smearflow.jobs as jobs

    for name in ("a.jpg", "b.jpg"):
        write_rgb(tmp_path / name, np.full((60, 60, 3), 200, np.uint8))
    (tmp_path / "labels.csv").write_text("image,kaggle_wbc_category\na.jpg,NEUTROPHIL\nb.jpg,LYMPHOCYTE\n")
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
    assert "platelet" not in payload["classes"] and len(payload["confusion_matrix"]) == len(payload["label_classes"])
