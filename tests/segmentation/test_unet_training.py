"""Training the U-Net: targets from masks and boxes, training images from folders, patches, the recipe's checks."""

import json
import math

import numpy as np
import pytest
from unet_drawing import BACKGROUND, PALETTE, disc, write_boxes_dataset, write_masks_dataset

from smearflow.datasets import find_datasets
from smearflow.errors import BadDatasetError
from smearflow.segmentation.unet import normalise_field
from smearflow.segmentation.unet.data import PatchSampler, load_box_dataset, load_mask_dataset
from smearflow.segmentation.unet.targets import (
    background_mask,
    box_targets,
    ellipse_mask,
    mask_targets,
    rbc_diameter_from_boxes,
)
from smearflow.segmentation.unet.training import UNetTrainConfig, train_unet

# --------------------------------------------------------------------------- targets


def test_mask_targets_supervise_white_cell_channels_everywhere_and_others_inside_the_cell():
    label_mask = np.array([[0, 128, 255, 30, 200, 100]], np.uint8)
    target, weight = mask_targets(label_mask)
    np.testing.assert_array_equal(target[0, :, 0], [0, 0, 1, 0, 1, 0])  # nucleus
    np.testing.assert_array_equal(target[0, :, 1], [0, 1, 1, 0, 1, 1])  # whole cell
    np.testing.assert_array_equal(target[0, :, 2:], 0)
    np.testing.assert_array_equal(weight[0, :, :2], 1)
    np.testing.assert_array_equal(weight[0, :, 2], [0, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(weight[0, :, 3], [0, 1, 1, 0, 1, 1])
    with pytest.raises(ValueError, match="label_mask must be two-dimensional"):
        mask_targets(np.zeros((2, 2, 3)))


def test_ellipse_mask_is_inscribed_in_its_box():
    small = ellipse_mask((1, 1, 4, 6), (6, 8))
    expected = np.zeros((6, 8), bool)
    expected[1, 2:5] = expected[3, 2:5] = True
    expected[2, 1:6] = True
    np.testing.assert_array_equal(small, expected)
    big = ellipse_mask((10, 20, 70, 120), (100, 150))
    assert big.sum() == pytest.approx(math.pi * 30 * 50, rel=0.01)
    rows, cols = np.nonzero(big)
    assert (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1) == (10, 20, 70, 120)
    assert ellipse_mask((10, 20, 70, 120), (100, 150), 0.5).sum() == pytest.approx(big.sum() / 4, rel=0.03)
    with pytest.raises(ValueError, match="scale must be positive"):
        ellipse_mask((0, 0, 4, 4), (8, 8), 0)
    with pytest.raises(ValueError, match="bbox must have row_max >= row_min"):
        ellipse_mask((4, 0, 2, 4), (8, 8))


def test_box_targets_leave_rings_and_unlabelled_red_cells_unsupervised_and_pseudo_label_nuclei():
    image = np.empty((120, 160, 3), np.uint8)
    image[:] = BACKGROUND
    image[disc((120, 160), (30, 30), 16)] = PALETTE["rbc"]  # boxed
    image[disc((120, 160), (90, 130), 16)] = PALETTE["rbc"]  # not boxed
    image[disc((120, 160), (60, 80), 22)] = PALETTE["cytoplasm"]
    image[disc((120, 160), (60, 80), 8)] = (100, 80, 200)  # a blue-violet nucleus
    boxes = {"rbc": [(14, 14, 46, 46)], "wbc": [(38, 58, 82, 102)], "platelet": []}
    target, weight = box_targets(normalise_field(image), boxes, 32.0, band=0.15)
    nucleus, wbc, rbc, platelet = range(4)
    assert target[60, 80, wbc] == 1 and weight[60, 80, wbc] == 1
    assert weight[60, 80 + 22, wbc] == 0  # on the ring
    assert target[5, 5, wbc] == 0 and weight[5, 5, wbc] == 1
    assert target[60, 80, nucleus] == 1 and weight[60, 80, nucleus] == 1  # colour pseudo-label
    assert target[60, 95, nucleus] == 0 and weight[60, 95, nucleus] == 1  # clearly cytoplasm
    assert weight[60, 80 + 22, nucleus] == 0 and target[5, 5, nucleus] == 0 and weight[5, 5, nucleus] == 1
    assert target[30, 30, rbc] == 1 and weight[30, 30, rbc] == 1
    assert weight[90, 130, rbc] == 0  # an unlabelled red cell is not a negative
    assert target[5, 150, rbc] == 0 and weight[5, 150, rbc] == 1  # confident background
    assert target[60, 80, rbc] == 0 and weight[60, 80, rbc] == 1  # inside a white cell
    assert target[..., platelet].sum() == 0 and weight[..., platelet].all()
    with pytest.raises(ValueError, match="band must be in \\[0, 1\\)"):
        box_targets(normalise_field(image), boxes, 32.0, band=1.0)
    with pytest.raises(ValueError, match="unknown kinds: \\['neutrophil'\\]"):
        box_targets(normalise_field(image), {"neutrophil": []}, 32.0)


def test_background_mask_and_box_diameter():
    image = np.empty((64, 64, 3), np.uint8)
    image[:] = BACKGROUND
    image[disc((64, 64), (32, 32), 10)] = PALETTE["rbc"]
    background = background_mask(normalise_field(image), 20.0)
    assert background[2, 2] and not background[32, 32] and not background[32, 43]
    with pytest.raises(ValueError, match="rbc_diameter_px must be positive"):
        background_mask(normalise_field(image), 0)
    with pytest.raises(ValueError, match="image_normalised must have shape"):
        background_mask(np.zeros((4, 4)), 10)
    assert rbc_diameter_from_boxes([(0, 0, 10, 10), (0, 0, 20, 20), (0, 0, 30, 30)]) == 20.0
    assert rbc_diameter_from_boxes([(0, 0, 10, 10)]) is None


def test_load_mask_and_box_datasets_at_the_working_scale(tmp_path):
    masks = load_mask_dataset(write_masks_dataset(tmp_path / "dataset1"), ["000", "001"], 64.0)
    assert [m.name for m in masks] == ["dataset1/000", "dataset1/001"]
    assert masks[0].image.shape == (24, 24, 3) and masks[0].target.shape == (24, 24, 4)
    assert masks[0].target[12, 12, 0] == 1 and masks[0].weight[0, 0, 2] == 0
    boxes = load_box_dataset(write_boxes_dataset(tmp_path / "bccd"), ["img0"])
    assert boxes[0].source == "boxes" and boxes[0].image.shape == (64, 96, 3)  # D = 20 < 32: never enlarged
    assert boxes[0].target[46, 48, 1] == 1


def test_dataset_problems_name_the_file(tmp_path):
    bad_size = write_masks_dataset(tmp_path / "bad-size", n=1, size=48, mask_size=40)
    with pytest.raises(BadDatasetError, match="000.png: mask is 40x40 pixels but its image 000.png is 48x48"):
        load_mask_dataset(bad_size, ["000"], 32.0)
    no_mask = write_masks_dataset(tmp_path / "no-mask", n=1)
    (no_mask / "masks" / "000.png").unlink()
    with pytest.raises(BadDatasetError, match="masks/000.png: no mask for image 000.png"):
        load_mask_dataset(no_mask, ["000"], 32.0)
    with pytest.raises(BadDatasetError, match="no image named 'zzz'"):
        load_mask_dataset(no_mask, ["zzz"], 32.0)
    with pytest.raises(ValueError, match="rbc_diameter_px must be positive"):
        load_mask_dataset(no_mask, ["000"], 0.0)
    (no_mask / "images" / "000.png").write_bytes(b"garbage")
    (no_mask / "masks" / "000.png").write_bytes(b"garbage")
    with pytest.raises(BadDatasetError, match="000.png: not a readable image"):
        load_mask_dataset(no_mask, ["000"], 32.0)
    boxes = write_boxes_dataset(tmp_path / "boxes", n=1)
    (boxes / "annotations" / "img0.xml").unlink()
    with pytest.raises(BadDatasetError, match="annotations/img0.xml: no annotation for image img0.jpg"):
        load_box_dataset(boxes, ["img0"])
    with pytest.raises(BadDatasetError, match="no image named 'zzz'"):
        load_box_dataset(boxes, ["zzz"])
    few = write_boxes_dataset(tmp_path / "few", n=1, rbc_boxes=1)
    with pytest.raises(BadDatasetError, match="no selected image has 3 red-cell boxes"):
        load_box_dataset(few, ["img0"])
    (few / "images" / "img0.jpg").write_bytes(b"garbage")
    with pytest.raises(BadDatasetError, match="img0.jpg: not a readable image"):
        load_box_dataset(few, ["img0"])
    with pytest.raises(BadDatasetError, match="no images/ folder"):
        load_box_dataset(tmp_path, ["img0"])


def test_patch_sampler_is_deterministic_and_mixes_sources(tmp_path):
    images = load_mask_dataset(write_masks_dataset(tmp_path / "m"), ["000"], 32.0)
    images += load_box_dataset(write_boxes_dataset(tmp_path / "b"), ["img0"])
    sampler = PatchSampler(images, size_px=32, batch_size=6, seed=3)
    x, y = sampler.batch(7)
    assert x.shape == (6, 32, 32, 3) and y.shape == (6, 32, 32, 8)
    assert x.dtype == y.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert set(np.unique(y)) <= {0.0, 1.0}
    again = PatchSampler(images, size_px=32, batch_size=6, seed=3).batch(7)
    np.testing.assert_array_equal(x, again[0])
    np.testing.assert_array_equal(y, again[1])
    assert not np.array_equal(x, sampler.batch(8)[0])
    with pytest.raises(ValueError, match="images must not be empty"):
        PatchSampler([], size_px=32, batch_size=2)
    with pytest.raises(ValueError, match="size_px and batch_size must be positive"):
        PatchSampler(images, size_px=0, batch_size=2)
    with pytest.raises(ValueError, match="scale_jitter must be at least 1"):
        PatchSampler(images, size_px=8, batch_size=2, scale_jitter=0.5)


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"learning_rate": 0}, "learning_rate must be positive"),
        ({"holdout_fraction": 1.0}, "holdout_fraction must be in"),
        ({"input_size_px": 30}, "input_size_px must be a positive multiple"),
        ({"mask_rbc_diameter_px": [["dataset1", 0]]}, "mask_rbc_diameter_px\\['dataset1'\\]=0"),
    ],
)
def test_train_config_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNetTrainConfig.from_dict(kwargs)


def test_train_config_round_trips():
    config = UNetTrainConfig(epochs=2, filters=(8, 16, 32, 64))
    assert UNetTrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_find_datasets_and_training_input_errors(tmp_path):
    root = tmp_path / "wbcseg"
    write_masks_dataset(root / "dataset1", n=1)
    write_boxes_dataset(root / "boxes", n=1)
    assert find_datasets(root, "masks") == [root / "dataset1"]
    assert find_datasets(root / "dataset1", "masks") == [root / "dataset1"]
    assert find_datasets(root) == [root / "boxes", root / "dataset1"]
    with pytest.raises(BadDatasetError, match="no masks-layout dataset here"):
        find_datasets(tmp_path / "wbcseg" / "boxes" / "annotations", "masks")
    with pytest.raises(BadDatasetError, match="missing: no such dataset folder"):
        find_datasets(tmp_path / "missing", "masks")
    with pytest.raises(ValueError, match="layout must be 'masks' or 'boxes'"):
        find_datasets(root, "points")
    with pytest.raises(ValueError, match="at least one dataset folder"):
        train_unet(tmp_path / "out")
    with pytest.raises(ValueError, match="distinct names"):
        train_unet(tmp_path / "out", mask_dirs=[root / "dataset1", root / "dataset1"])
    with pytest.raises(BadDatasetError, match="expected a masks-layout dataset, found the boxes layout"):
        train_unet(tmp_path / "out", mask_dirs=[root / "boxes"])
