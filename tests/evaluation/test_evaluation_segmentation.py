"""evaluate_segmentation_dir on tiny generated dataset folders, good and bad."""

import logging

import numpy as np
import pytest
from PIL import Image

from smearflow.datasets import dataset_layout, dataset_names, read_voc_boxes
from smearflow.errors import BadDatasetError
from smearflow.evaluation.segmentation import evaluate_segmentation_dir
from smearflow.imageio import write_rgb
from smearflow.segmentation import Segmentation
from smearflow.segmentation.classical import ClassicalConfig, ClassicalSegmenter
from smearflow.synthetic import make_smear
from smearflow.types import Cell

VOC_NAMES = {"wbc": "WBC", "rbc": "RBC", "platelet": "Platelets"}


def voc_xml(objects, width, height):
    """Pascal VOC text; ``objects`` are (name, xmin, ymin, xmax, ymax), 1-based inclusive."""
    parts = [f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, xmin, ymin, xmax, ymax in objects:
        parts.append(
            f"<object><name>{name}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def truth_objects(smear):
    rows, cols = smear.image.shape[:2]
    objects = []
    for cell in smear.truth:
        row, col = cell.centroid
        r = cell.radius_px
        xmin, xmax = max(1, int(col - r) + 1), min(cols, int(np.ceil(col + r)))
        ymin, ymax = max(1, int(row - r) + 1), min(rows, int(np.ceil(row + r)))
        if xmax - xmin >= 2 and ymax - ymin >= 2:
            objects.append((VOC_NAMES[cell.kind], xmin, ymin, xmax, ymax))
    return objects


@pytest.fixture(scope="module")
def boxes_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bccd-like")
    for seed in range(3):
        smear = make_smear(seed, shape=(240, 320), n_wbc=1, n_rbc=12, n_platelets=2, rbc_diameter_px=40.0, touching_rbc_pairs=1)
        write_rgb(root / "images" / f"field_{seed}.jpg", smear.image)
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"field_{seed}.xml").write_text(voc_xml(truth_objects(smear), 320, 240))
    return root


def write_masks_dataset(root, n=3):
    for seed in range(n):
        smear = make_smear(seed, shape=(240, 320), n_wbc=1, n_rbc=12, n_platelets=1, rbc_diameter_px=40.0, touching_rbc_pairs=1)
        row, col = (int(round(v)) for v in smear.of_kind("wbc")[0].centroid)
        row, col = min(max(row, 60), 240 - 60), min(max(col, 60), 320 - 60)
        window = (slice(row - 60, row + 60), slice(col - 60, col + 60))
        labels = np.zeros((120, 120), np.uint8)
        labels[smear.wbc_mask[window]] = 128
        labels[smear.nucleus_mask[window]] = 255
        write_rgb(root / "images" / f"{seed:03d}.png", np.ascontiguousarray(smear.image[window]))
        (root / "masks").mkdir(exist_ok=True)
        Image.fromarray(labels).save(root / "masks" / f"{seed:03d}.png")
    return root


class StubSegmenter:
    """Returns fixed cells, to check the scoring arithmetic exactly."""

    def __init__(self, cells, nucleus_mask=None):
        self.cells = tuple(cells)
        self.nucleus_mask = nucleus_mask

    def segment(self, image):
        return Segmentation(self.cells, 30.0, image.shape[:2], self.nucleus_mask)


def box_cell(kind, bbox, counted=True):
    r0, c0, r1, c1 = bbox
    return Cell(kind, bbox, ((r0 + r1) / 2, (c0 + c1) / 2), (r1 - r0) * (c1 - c0), np.ones((r1 - r0, c1 - c0), bool), counted=counted)


def test_boxes_layout_scores_the_classical_segmenter(boxes_dir):
    assert dataset_layout(boxes_dir) == "boxes"
    assert dataset_names(boxes_dir) == ["field_0", "field_1", "field_2"]
    result = evaluate_segmentation_dir(boxes_dir, ClassicalSegmenter(ClassicalConfig(rbc_diameter_px=40.0)))
    assert result["layout"] == "boxes" and result["images"] == 3 and result["skipped"] == 0
    assert set(result["per_class"]) == {"WBC", "RBC", "Platelets"}
    for scores in result["per_class"].values():
        assert set(scores) >= {"precision", "recall", "f1", "count_mae", "exact_count_rate"}
    wbc = result["per_class"]["WBC"]
    assert wbc["f1"] == 1.0 and wbc["exact_count_rate"] == 1.0 and wbc["count_mae"] == 0.0
    assert result["per_class"]["Platelets"]["recall"] >= 0.8
    assert result["per_class"]["RBC"]["recall"] >= 0.8
    assert result["ms_per_image"] > 0


def test_boxes_layout_subset_scores_only_the_named_images(boxes_dir):
    result = evaluate_segmentation_dir(boxes_dir, ClassicalSegmenter(), subset=["field_1", "field_2.jpg"])
    assert result["images"] == 2


def test_detection_uses_all_cells_and_counting_uses_the_border_rule(tmp_path):
    write_rgb(tmp_path / "images" / "a.png", np.full((100, 100, 3), 200, np.uint8))
    (tmp_path / "annotations").mkdir()
    # Two white cells boxed; the second reaches the bottom edge, so the rule does not count it.
    objects = [("WBC", 11, 11, 40, 40), ("WBC", 51, 81, 80, 100), ("Platelets", 61, 11, 70, 20)]
    (tmp_path / "annotations" / "a.xml").write_text(voc_xml(objects, 100, 100))
    cells = [
        box_cell("wbc", (10, 10, 40, 40)),  # matches box 1
        box_cell("wbc", (80, 50, 100, 80), counted=False),  # matches box 2, not counted
        box_cell("wbc", (50, 10, 70, 30)),  # a false positive, counted
    ]
    result = evaluate_segmentation_dir(tmp_path, StubSegmenter(cells))
    wbc = result["per_class"]["WBC"]
    assert (wbc["tp"], wbc["fp"], wbc["fn"]) == (2, 1, 0)
    assert wbc["precision"] == pytest.approx(2 / 3) and wbc["recall"] == 1.0 and wbc["f1"] == pytest.approx(0.8)
    # counted detections 2, counted boxes 1
    assert wbc["count_mae"] == 1.0 and wbc["exact_count_rate"] == 0.0
    platelets = result["per_class"]["Platelets"]
    assert (platelets["tp"], platelets["fp"], platelets["fn"], platelets["count_mae"]) == (0, 0, 1, 1.0)


def test_masks_layout_scores_nucleus_and_cell(tmp_path):
    write_masks_dataset(tmp_path)
    assert dataset_layout(tmp_path) == "masks"
    result = evaluate_segmentation_dir(tmp_path, ClassicalSegmenter(ClassicalConfig(rbc_diameter_px=40.0)))
    assert result["layout"] == "masks" and result["images"] == 3 and result["skipped"] == 0
    assert result["images_without_wbc"] == 0
    assert result["nucleus_dice"] > 0.8 and result["cell_dice"] > 0.85
    assert 0 < result["nucleus_iou"] <= result["nucleus_dice"] and 0 < result["cell_iou"] <= result["cell_dice"]


def test_masks_layout_scores_zero_when_no_white_cell_is_found(tmp_path):
    write_masks_dataset(tmp_path, n=1)
    result = evaluate_segmentation_dir(tmp_path, StubSegmenter([]))
    assert result["images_without_wbc"] == 1 and result["cell_dice"] == 0.0 and result["nucleus_dice"] == 0.0


def test_point_annotations_are_dropped_and_counted_not_fatal(tmp_path, caplog):
    write_rgb(tmp_path / "images" / "a.png", np.full((60, 60, 3), 200, np.uint8))
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "a.xml").write_text(voc_xml([("RBC", 30, 30, 30, 30)], 60, 60))
    with caplog.at_level(logging.WARNING, logger="smearflow.datasets"):
        result = evaluate_segmentation_dir(tmp_path, StubSegmenter([]))
    assert result["skipped"] == 0 and result["dropped_boxes"] == 1
    assert "degenerate box" in caplog.text


BAD_ANNOTATIONS = {
    "broken.xml": ("<annotation><object><name>RBC</name>", "does not parse"),
    "outside.xml": (voc_xml([("WBC", 10, 10, 90, 90)], 80, 60), "lies outside the 80x60 image"),
    "unknown.xml": (voc_xml([("Monocyte", 10, 10, 20, 20)], 80, 60), "unknown class 'Monocyte'"),
    "nocoord.xml": ("<annotation><object><name>RBC</name><bndbox><xmin>3</xmin></bndbox></object></annotation>", "lacks a numeric bndbox"),
}


@pytest.mark.parametrize("name", sorted(BAD_ANNOTATIONS))
def test_a_bad_annotation_skips_its_image_naming_the_file(tmp_path, caplog, name):
    text, message = BAD_ANNOTATIONS[name]
    stem = name.removesuffix(".xml")
    (tmp_path / "annotations").mkdir()
    write_rgb(tmp_path / "images" / f"{stem}.png", np.full((60, 80, 3), 200, np.uint8))
    (tmp_path / "annotations" / name).write_text(text)
    write_rgb(tmp_path / "images" / "good.png", np.full((60, 80, 3), 200, np.uint8))
    (tmp_path / "annotations" / "good.xml").write_text(voc_xml([], 80, 60))
    with caplog.at_level(logging.WARNING, logger="smearflow.evaluation.segmentation"):
        result = evaluate_segmentation_dir(tmp_path, StubSegmenter([]))
    assert result["images"] == 1 and result["skipped"] == 1
    (skipped,) = result["skipped_files"]
    assert skipped["file"].endswith(f"{stem}.png") and message in skipped["error"] and name in skipped["error"]
    assert name in caplog.text
    with pytest.raises(BadDatasetError, match=message):
        read_voc_boxes(tmp_path / "annotations" / name, (60, 80))


def test_an_image_without_annotation_or_unreadable_is_skipped(tmp_path):
    (tmp_path / "annotations").mkdir()
    write_rgb(tmp_path / "images" / "good.png", np.full((60, 80, 3), 200, np.uint8))
    (tmp_path / "annotations" / "good.xml").write_text(voc_xml([], 80, 60))
    write_rgb(tmp_path / "images" / "lonely.png", np.full((60, 80, 3), 200, np.uint8))
    (tmp_path / "images" / "garbage.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "annotations" / "garbage.xml").write_text(voc_xml([], 80, 60))
    result = evaluate_segmentation_dir(tmp_path, StubSegmenter([]))
    errors = {entry["file"].rsplit("/", 1)[-1]: entry["error"] for entry in result["skipped_files"]}
    assert result["images"] == 1 and result["skipped"] == 2
    assert "lonely.xml: no annotation for image lonely.png" in errors["lonely.png"]
    assert "garbage.jpg" in errors["garbage.jpg"]


def test_mask_problems_skip_their_image(tmp_path):
    write_masks_dataset(tmp_path, n=1)
    write_rgb(tmp_path / "images" / "small.png", np.full((50, 50, 3), 200, np.uint8))
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(tmp_path / "masks" / "small.png")
    write_rgb(tmp_path / "images" / "nomask.png", np.full((50, 50, 3), 200, np.uint8))
    write_rgb(tmp_path / "images" / "rgbmask.png", np.full((50, 50, 3), 200, np.uint8))
    write_rgb(tmp_path / "masks" / "rgbmask.png", np.zeros((50, 50, 3), np.uint8))
    result = evaluate_segmentation_dir(tmp_path, StubSegmenter([]))
    errors = {entry["file"].rsplit("/", 1)[-1]: entry["error"] for entry in result["skipped_files"]}
    assert result["images"] == 1 and result["skipped"] == 3
    assert "small.png: mask is 50x40 pixels but its image small.png is 50x50" in errors["small.png"]
    assert "nomask.png: no mask for image nomask.png" in errors["nomask.png"]
    assert "not single-channel" in errors["rgbmask.png"]


def test_a_folder_whose_every_image_is_skipped_is_an_error(tmp_path):
    (tmp_path / "annotations").mkdir()
    write_rgb(tmp_path / "images" / "lonely.png", np.full((60, 80, 3), 200, np.uint8))
    with pytest.raises(BadDatasetError, match="every image was skipped"):
        evaluate_segmentation_dir(tmp_path, StubSegmenter([]))
    masks = tmp_path / "masks_only"
    write_rgb(masks / "images" / "lonely.png", np.full((60, 80, 3), 200, np.uint8))
    (masks / "masks").mkdir()
    with pytest.raises(BadDatasetError, match="every image was skipped"):
        evaluate_segmentation_dir(masks, StubSegmenter([]))


def test_unusable_folders_raise_bad_dataset_error(tmp_path):
    with pytest.raises(BadDatasetError, match="no such dataset folder"):
        evaluate_segmentation_dir(tmp_path / "absent", StubSegmenter([]))
    with pytest.raises(BadDatasetError, match="expected images/"):
        dataset_layout(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("no images here")
    with pytest.raises(BadDatasetError, match="no image files"):
        dataset_names(tmp_path)
    write_rgb(tmp_path / "images" / "a.png", np.full((60, 80, 3), 200, np.uint8))
    with pytest.raises(BadDatasetError, match="neither annotations/"):
        evaluate_segmentation_dir(tmp_path, StubSegmenter([]))


def test_subset_must_name_images_of_the_folder(boxes_dir):
    with pytest.raises(ValueError, match=r"unknown names: \['nope'\]"):
        evaluate_segmentation_dir(boxes_dir, StubSegmenter([]), subset=["field_0", "nope"])
    with pytest.raises(ValueError, match="selects no image"):
        evaluate_segmentation_dir(boxes_dir, StubSegmenter([]), subset=[])
