"""Square cell crops: size, centring and padding at the field edge."""

import numpy as np
import pytest

from smearflow.segmentation.crops import background_colour, crop_cells, crop_side_px
from smearflow.types import Cell

BACKGROUND = (220, 214, 218)


def _cell_at(row, col):
    return Cell("wbc", (row - 1, col - 1, row + 2, col + 2), (float(row), float(col)), 9, np.ones((3, 3), bool))


@pytest.fixture
def field():
    image = np.empty((100, 120, 3), np.uint8)
    image[:] = BACKGROUND
    image[40:60, 50:70] = (90, 60, 150)  # a purple square, centre (49.5, 59.5)
    image[0:10, 0:10] = (180, 120, 130)  # a pink corner cell
    return image


def test_crop_side_is_a_multiple_of_the_red_cell_diameter():
    assert crop_side_px(100.0) == 450
    assert crop_side_px(40.0, 5.0) == 200
    assert crop_side_px(0.1, 1.0) == 1


@pytest.mark.parametrize("args, message", [((0.0,), "rbc_diameter_px=0.0"), ((40.0, 0.0), "crop_side_rbc_diameters=0.0")])
def test_crop_side_refuses_non_positive_values(args, message):
    with pytest.raises(ValueError, match=message):
        crop_side_px(*args)


def test_crops_have_the_output_shape_when_shrunk_or_enlarged(field):
    cells = [_cell_at(50, 60), _cell_at(20, 30)]
    assert crop_cells(field, cells, side_px=40, out_size_px=16).shape == (2, 16, 16, 3)
    assert crop_cells(field, cells, side_px=40, out_size_px=64).shape == (2, 64, 64, 3)
    crops = crop_cells(field, cells, side_px=40, out_size_px=40)
    assert crops.shape == (2, 40, 40, 3) and crops.dtype == np.uint8


def test_no_cells_give_an_empty_batch(field):
    crops = crop_cells(field, [], side_px=40, out_size_px=32)
    assert crops.shape == (0, 32, 32, 3) and crops.dtype == np.uint8


def test_crop_is_centred_on_the_cell(field):
    (crop,) = crop_cells(field, [_cell_at(50, 60)], side_px=30, out_size_px=30)
    assert (crop[15, 15] == (90, 60, 150)).all()
    assert (crop[0, 0] == BACKGROUND).all() and (crop[-1, -1] == BACKGROUND).all()


def test_parts_outside_the_field_are_background_not_reflection(field):
    (crop,) = crop_cells(field, [_cell_at(2, 2)], side_px=40, out_size_px=40)
    # The field starts at crop row/col 18: everything before it is padding.
    assert (crop[:18, :, :] == BACKGROUND).all() and (crop[:, :18, :] == BACKGROUND).all()
    assert (crop[20, 20] == (180, 120, 130)).all()
    # A reflected pad would have repeated the pink corner cell above and left of it.
    assert not (crop[:18, :18] == (180, 120, 130)).all(axis=-1).any()


def test_a_cell_far_outside_gives_a_plain_background_crop(field):
    (crop,) = crop_cells(field, [_cell_at(-500, -500)], side_px=20, out_size_px=8)
    assert (crop == BACKGROUND).all()


def test_background_colour_ignores_the_darker_cells_and_glare(field):
    field[70:72, 100:102] = 255  # glare
    assert tuple(background_colour(field)) == BACKGROUND


@pytest.mark.parametrize(
    "image, side, out, message",
    [
        (np.zeros((10, 10), np.uint8), 4, 4, "image must be"),
        (np.zeros((10, 10, 3), np.float32), 4, 4, "dtype=float32"),
        (np.zeros((10, 10, 3), np.uint8), 0, 4, "side_px=0"),
        (np.zeros((10, 10, 3), np.uint8), 2.5, 4, "side_px=2.5"),
        (np.zeros((10, 10, 3), np.uint8), 4, 0, "out_size_px=0"),
    ],
)
def test_bad_arguments_are_refused(image, side, out, message):
    with pytest.raises(ValueError, match=message):
        crop_cells(image, [_cell_at(5, 5)], side_px=side, out_size_px=out)


def _background_by_numpy(image):
    """The definition background_colour computes by counting levels: percentiles and median by numpy."""
    pixels = image.reshape(-1, 3)
    brightness = pixels.astype(np.int32).sum(axis=1)
    low, high = np.percentile(brightness, (80, 97))
    chosen = pixels[(brightness >= low) & (brightness <= high)]
    return np.median(chosen if len(chosen) else pixels, axis=0).round().astype(np.uint8)


def test_background_colour_equals_numpys_percentiles_and_median():
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, size=(rng.integers(1, 50), rng.integers(1, 50), 3), dtype=np.uint8) for _ in range(300)]
    images += [rng.integers(100, 102, size=(2, 3, 3), dtype=np.uint8) for _ in range(100)]
    images += [np.full((4, 5, 3), value, np.uint8) for value in (0, 17, 255)]
    for image in images:
        assert np.array_equal(background_colour(image), _background_by_numpy(image))
