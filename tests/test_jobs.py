import numpy as np
import pytest

from smearflow.config import PipelineConfig
from smearflow.errors import BadSlideError
from smearflow.imageio import write_rgb
from smearflow.jobs import Analyzer, analyze_folder
from smearflow_testkit import ColumnClassifier, PlantedSegmenter, planted_cell


def _analyzer(labels=("lymphocyte",)):
    segmenter = PlantedSegmenter([planted_cell("wbc", 30, 30)])
    return Analyzer(segmenter, ColumnClassifier(list(labels)), PipelineConfig(check_quality=False))


def test_the_registered_slide_id_wins_over_the_folder(tmp_path):
    write_rgb(tmp_path / "f.png", np.full((80, 80, 3), 200, np.uint8))
    (tmp_path / "slide.json").write_text('{"slide_id": "FROM-JSON", "patient_id": "P"}')
    result = analyze_folder(tmp_path, _analyzer(), slide_id="FROM-DB")
    assert result.info.slide_id == "FROM-DB" and result.info.patient_id == "P"
    assert result.counts == {"lymphocyte": 1}


def test_a_folder_that_cannot_be_read_as_a_slide_raises(tmp_path):
    with pytest.raises(BadSlideError, match="does not exist"):
        analyze_folder(tmp_path / "gone", _analyzer(()), slide_id="S-9")
    for i in range(3):
        write_rgb(tmp_path / f"f{i}.png", np.full((80, 80, 3), 200, np.uint8))
    with pytest.raises(BadSlideError, match="at most 2 fields"):
        analyze_folder(tmp_path, _analyzer(()), max_fields=2)
