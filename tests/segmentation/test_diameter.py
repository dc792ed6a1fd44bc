"""The red-cell diameter estimated from a field's own pixels."""

import numpy as np
import pytest
from smearflow_testkit import BAD_IMAGES

from smearflow.segmentation.diameter import DiameterConfig, estimate_rbc_diameter_px
from smearflow.synthetic import make_smear


@pytest.mark.parametrize("diameter_px, n_rbc, shape", [(40.0, 40, (360, 480)), (70.0, 40, (480, 640)), (90.0, 20, (480, 640))])
def test_red_cell_diameter_estimate_is_within_15_percent(diameter_px, n_rbc, shape):
    smear = make_smear(3, shape=shape, n_rbc=n_rbc, rbc_diameter_px=diameter_px, touching_rbc_pairs=3)
    assert estimate_rbc_diameter_px(smear.image) == pytest.approx(diameter_px, rel=0.15)


def test_an_empty_field_gets_a_sixth_of_its_shorter_side_clamped():
    blank = np.full((120, 160, 3), (228, 221, 226), np.uint8)
    assert estimate_rbc_diameter_px(blank) == pytest.approx(120 / 6)
    assert estimate_rbc_diameter_px(blank, DiameterConfig(min_rbc_diameter_px=25.0)) == 25.0
    assert estimate_rbc_diameter_px(blank, DiameterConfig(max_rbc_diameter_px=12.0)) == 12.0


def test_float_images_in_unit_range_give_the_same_estimate():
    smear = make_smear(4, shape=(240, 320), n_wbc=1, n_rbc=12, n_platelets=1, rbc_diameter_px=40.0, touching_rbc_pairs=1)
    assert estimate_rbc_diameter_px(smear.image / 255.0) == estimate_rbc_diameter_px(smear.image)


@pytest.mark.parametrize("image, message", BAD_IMAGES)
def test_bad_images_are_refused_naming_what_was_received(image, message):
    with pytest.raises(ValueError, match=message):
        estimate_rbc_diameter_px(image)


@pytest.mark.parametrize(
    "field, value",
    [
        ("min_rbc_diameter_px", 0.0),
        ("max_rbc_diameter_px", 4.0),
        ("foreground_min", 0.0),
        ("max_pallor_area_rbc", 0.0),
    ],
)
def test_config_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"{field}={value}"):
        DiameterConfig(**{field: value})


def test_config_round_trips_through_a_dict():
    config = DiameterConfig(min_rbc_diameter_px=12.0, nucleus_blue_green_min=0.3)
    assert DiameterConfig.from_dict(config.to_dict()) == config
