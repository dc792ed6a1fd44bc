"""Reading annotated segmentation datasets, and the held-out split they share."""

import numpy as np
import pytest
from PIL import Image

from smearflow.datasets import (
    dataset_layout,
    dataset_names,
    find_datasets,
    holdout_split,
    image_files,
    label_mask_parts,
    read_boxes_field,
    read_mask_field,
    read_voc_boxes,
)
from smearflow.errors import BadDatasetError
from smearflow.imageio import write_rgb


def voc_xml(objects):
    """Pascal VOC text; ``objects`` are (name, xmin, ymin, xmax, ymax), 1-based inclusive."""
    parts = [
        f"<object><name>{name}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        for name, xmin, ymin, xmax, ymax in objects
    ]
    return "<annotation>" + "".join(parts) + "</annotation>"


def test_holdout_split_is_deterministic_and_independent_of_the_other_names():
    names = [f"img_{i:03d}" for i in range(100)]
    tuning, held_out = holdout_split(names)
    assert len(held_out) == 30 and len(tuning) == 70 and not set(tuning) & set(held_out)
    assert holdout_split(reversed(names)) == (tuning, held_out)
    assert holdout_split(names, seed="other") != (tuning, held_out)
    # Ranking by hash: a name held out among 100 stays held out in a bigger list's first 30 % only if it ranks there;
    # it never moves to the held-out side of a different seed because of its neighbours.
    assert holdout_split(names, fraction=0.0) == (tuple(sorted(names)), ())
    assert holdout_split(names, fraction=1.0) == ((), tuple(sorted(names)))


@pytest.mark.parametrize("kwargs, message", [({"fraction": 1.5}, "fraction=1.5"), ({"fraction": -0.1}, "fraction=-0.1")])
def test_holdout_split_refuses_a_bad_fraction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        holdout_split(["a", "b"], **kwargs)


def test_holdout_split_refuses_repeated_names():
    with pytest.raises(ValueError, match=r"repeated names: \['a'\]"):
        holdout_split(["a", "b", "a"])


def test_read_voc_boxes_converts_one_based_inclusive_coordinates(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(voc_xml([("RBC", 1, 1, 10, 20), ("WBC", 5, 5, 100, 50), ("Platelets", 7, 7, 7, 7)]))
    boxes, dropped = read_voc_boxes(path, (50, 100))
    assert boxes == {"rbc": [(0, 0, 20, 10)], "wbc": [(4, 4, 50, 100)], "platelet": []}
    assert dropped == 1


def test_label_masks_are_read_by_grey_level():
    nucleus, cell = label_mask_parts(np.array([[0, 63, 64, 128, 191, 192, 255]], np.uint8))
    np.testing.assert_array_equal(nucleus[0], [0, 0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(cell[0], [0, 0, 1, 1, 1, 1, 1])


def _boxes_folder(root):
    write_rgb(root / "images" / "b.png", np.full((50, 100, 3), 200, np.uint8))
    write_rgb(root / "images" / "a.jpg", np.full((50, 100, 3), 200, np.uint8))
    (root / "images" / "notes.txt").write_text("not an image")
    (root / "annotations").mkdir()
    (root / "annotations" / "a.xml").write_text(voc_xml([("RBC", 1, 1, 10, 20)]))
    return root


def test_a_boxes_field_is_its_image_and_its_boxes(tmp_path):
    root = _boxes_folder(tmp_path / "bccd")
    assert dataset_layout(root) == "boxes" and dataset_names(root) == ["a", "b"]
    assert list(image_files(root)) == ["a", "b"]
    image, boxes, dropped = read_boxes_field(root, "a")
    assert image.shape == (50, 100, 3) and boxes["rbc"] == [(0, 0, 20, 10)] and dropped == 0
    with pytest.raises(BadDatasetError, match="annotations/b.xml: no annotation for image b.png"):
        read_boxes_field(root, "b")
    with pytest.raises(BadDatasetError, match="no image named 'zzz'"):
        read_boxes_field(root, "zzz")
    (root / "images" / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(BadDatasetError, match="a.jpg"):
        read_boxes_field(root, "a")


def test_a_mask_field_is_its_image_and_its_label_mask(tmp_path):
    root = tmp_path / "dataset1"
    write_rgb(root / "images" / "000.png", np.full((40, 30, 3), 200, np.uint8))
    write_rgb(root / "images" / "001.png", np.full((40, 30, 3), 200, np.uint8))
    (root / "masks").mkdir()
    Image.fromarray(np.full((40, 30), 255, np.uint8)).save(root / "masks" / "000.png")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "masks" / "001.png")
    assert dataset_layout(root) == "masks"
    image, label_mask = read_mask_field(root, "000")
    assert image.shape == (40, 30, 3) and label_mask.shape == (40, 30) and label_mask.dtype == np.uint8
    with pytest.raises(BadDatasetError, match="001.png: mask is 30x20 pixels but its image 001.png is 30x40"):
        read_mask_field(root, "001")
    (root / "masks" / "001.png").write_bytes(b"garbage")
    with pytest.raises(BadDatasetError, match="001.png: unreadable mask"):
        read_mask_field(root, "001")


def test_find_datasets_looks_at_the_folder_then_its_sub_folders(tmp_path):
    boxes = _boxes_folder(tmp_path / "bccd")
    (tmp_path / "empty").mkdir()
    assert find_datasets(boxes) == [boxes] == find_datasets(boxes, "boxes")
    assert find_datasets(tmp_path) == [boxes]  # empty/ is not a dataset and is passed over
    with pytest.raises(BadDatasetError, match="no masks-layout dataset here or in its sub-folders"):
        find_datasets(tmp_path, "masks")
    with pytest.raises(BadDatasetError, match="not a segmentation dataset"):
        find_datasets(tmp_path / "empty")
    with pytest.raises(BadDatasetError, match="absent: no such dataset folder"):
        find_datasets(tmp_path / "absent")
    with pytest.raises(ValueError, match="layout must be 'masks' or 'boxes'. Received: layout='points'"):
        find_datasets(tmp_path, "points")
    with pytest.raises(BadDatasetError, match="no images/ folder"):
        image_files(tmp_path)
