"""Crops cut from stored fields and fields drawn with their cells."""

from types import SimpleNamespace

import numpy as np
import pytest

from smearflow.errors import BadImageError
from smearflow.imageio import encode_png
from smearflow.reporting.images import CLASS_COLOURS, cell_crop, crop_side_for, draw_cells, field_path, read_field


def test_a_field_is_its_folder_and_its_plain_name(tmp_path):
    assert field_path(str(tmp_path), "f1.png") == tmp_path / "f1.png"


@pytest.mark.parametrize("name", ["../f1.png", "sub/f1.png", "..", ".", "a\\b.png", ""])
def test_a_name_that_is_not_a_plain_file_name_is_refused(tmp_path, name):
    with pytest.raises(BadImageError, match="not a plain file name"):
        field_path(str(tmp_path), name)


def test_a_slide_without_a_folder_has_no_field_images():
    with pytest.raises(BadImageError, match="no folder on record"):
        read_field(None, "f1.png")


def test_a_missing_field_names_the_file(tmp_path):
    with pytest.raises(BadImageError, match="f1.png"):
        read_field(str(tmp_path), "f1.png")


def test_the_crop_is_centred_on_the_cell_and_sized_in_red_cell_diameters():
    image = np.full((200, 300, 3), 230, np.uint8)
    image[90:110, 140:160] = (40, 20, 120)  # the cell
    crop = cell_crop(image, (100.0, 150.0), (90, 140, 110, 160), rbc_diameter_px=10.0, out_size_px=50)
    assert crop.shape == (50, 50, 3) and crop.dtype == np.uint8
    assert tuple(crop[25, 25]) == (40, 20, 120) and tuple(crop[2, 2]) == (230, 230, 230)
    assert (crop[:, :, 0] < 100).sum() == pytest.approx(20 * 20, rel=0.1)  # 20 px of a 50 px square: 2/5 a side


def test_without_red_cells_the_crop_is_twice_the_cells_box():
    assert crop_side_for((0, 0, 30, 20), None, 5.0) == 60
    assert crop_side_for((0, 0, 2, 2), None, 5.0) == 8
    assert crop_side_for((0, 0, 30, 20), 70.0, 5.0) == 350


def test_fields_are_drawn_with_class_colours_and_shrunk():
    image = np.full((2000, 1000, 3), 255, np.uint8)
    cell = SimpleNamespace(kind="wbc", bbox=(100, 100, 300, 300), counted=True, final_label="neutrophil")
    drawn = draw_cells(image, [cell], max_side_px=1000)
    assert drawn.shape == (1000, 500, 3)
    colour = np.array(CLASS_COLOURS["neutrophil"])
    assert (np.abs(drawn.astype(int) - colour).sum(axis=2) < 30).sum() > 50


def test_encode_png_refuses_what_is_not_an_rgb_image():
    assert encode_png(np.zeros((4, 4, 3), np.uint8))[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"must be an \(M, N, 3\) uint8 array"):
        encode_png(np.zeros((4, 4), np.uint8))
