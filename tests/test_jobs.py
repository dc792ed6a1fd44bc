import numpy as np

from smearflow.imageio import write_rgb
from smearflow.jobs import Analyzer, analyze_folder
from smearflow_testkit import ColumnClassifier, PlantedSegmenter, planted_cell


def _analyzer(labels=("lymphocyte",)):
    return Analyzer(PlantedSegmenter([planted_cell("wbc", 30, 30)]), ColumnClassifier(list(labels)))


def test_the_registered_slide_id_wins_over_the_folder(tmp_path):
    write_rgb(tmp_path / "f.png", np.full((60, 60, 3), 200, np.uint8))
    (tmp_path / "slide.json").write_text('{"slide_id": "FROM-JSON", "patient_id": "P"}')
    result = analyze_folder(tmp_path, _analyzer(), slide_id="FROM-DB")
    assert result.info.slide_id == "FROM-DB" and result.info.patient_id == "P"
    assert result.counts == {"lymphocyte": 1}


def test_a_missing_folder_becomes_a_failed_result(tmp_path):
    result = analyze_folder(tmp_path / "gone", _analyzer(()), slide_id="S-9")
    assert result.status == "failed" and result.info.slide_id == "S-9"
    assert "does not exist" in result.errors[0]
