"""The classical segmenter on a few real fields (skipped when ../shared/data is absent)."""

import pytest

from smearflow.datasets import dataset_names, holdout_split
from smearflow.evaluation.segmentation import evaluate_segmentation_dir
from smearflow.segmentation.classical import ClassicalSegmenter

pytestmark = pytest.mark.data


def test_white_cells_of_bccd_fields_are_found(shared_data):
    folder = shared_data / "bccd"
    held_out = holdout_split(dataset_names(folder))[1][:10]
    result = evaluate_segmentation_dir(folder, ClassicalSegmenter(), subset=held_out)
    assert result["images"] == 10 and result["skipped"] == 0
    wbc = result["per_class"]["WBC"]
    assert wbc["recall"] >= 0.9 and wbc["precision"] >= 0.8


def test_nuclei_of_wbcseg_cells_are_segmented(shared_data):
    folder = shared_data / "wbcseg" / "dataset2"
    held_out = holdout_split(dataset_names(folder))[1][:5]
    result = evaluate_segmentation_dir(folder, ClassicalSegmenter(), subset=held_out)
    assert result["images"] == 5 and result["images_without_wbc"] == 0
    assert result["nucleus_dice"] > 0.7 and result["cell_dice"] > 0.6
