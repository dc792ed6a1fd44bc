"""ClassicalSegmenter on synthetic smears whose cells are known."""

import math

import numpy as np
import pytest

from smearflow.segmentation import Segmentation
from smearflow.segmentation.classical import ClassicalConfig, ClassicalSegmenter
from smearflow.segmentation.diameter import DiameterConfig
from smearflow.segmentation.metrics import dice
from smearflow.synthetic import make_smear

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def segmented():
    """Three default synthetic smears (2 WBC, 40 RBC with 5 touching pairs, 4 platelets) and their segmentation."""
    segmenter = ClassicalSegmenter()
    result = []
    for seed in SEEDS:
        smear = make_smear(seed)
        result.append((smear, segmenter.segment(smear.image)))
    return result


def _nearest(cells, centroid):
    return min(cells, key=lambda c: math.dist(c.centroid, centroid), default=None)


def test_every_planted_white_cell_is_found_once(segmented):
    for smear, segmentation in segmented:
        wbcs = segmentation.of_kind("wbc")
        assert len(wbcs) == len(smear.of_kind("wbc")) == 2
        assert segmentation.count("wbc") == smear.count("wbc")
        for truth in smear.of_kind("wbc"):
            found = _nearest(wbcs, truth.centroid)
            assert math.dist(found.centroid, truth.centroid) < 0.25 * truth.radius_px


def test_lobed_nuclei_stay_one_white_cell():
    smear = make_smear(7, n_wbc=3, n_rbc=20, touching_rbc_pairs=2, lobed_fraction=1.0)
    assert all(t.n_lobes >= 2 for t in smear.of_kind("wbc"))
    segmentation = ClassicalSegmenter().segment(smear.image)
    assert len(segmentation.of_kind("wbc")) == 3
    assert not segmentation.of_kind("platelet") or len(segmentation.of_kind("platelet")) == len(smear.of_kind("platelet"))


def test_white_cell_masks_match_the_drawn_ones(segmented):
    for smear, segmentation in segmented:
        wbc_mask = np.zeros(smear.image.shape[:2], bool)
        for cell in segmentation.of_kind("wbc"):
            r0, c0, r1, c1 = cell.bbox
            wbc_mask[r0:r1, c0:c1] |= cell.mask
        assert dice(wbc_mask, smear.wbc_mask) > 0.85
        assert dice(segmentation.nucleus_mask, smear.nucleus_mask) > 0.8
        assert not (segmentation.nucleus_mask & ~wbc_mask).any()


def test_red_cell_count_is_within_ten_percent_of_the_planted_count(segmented):
    for smear, segmentation in segmented:
        assert len(segmentation.of_kind("rbc")) == pytest.approx(len(smear.of_kind("rbc")), rel=0.10)
        assert segmentation.count("rbc") == pytest.approx(smear.count("rbc"), rel=0.10)


def test_touching_red_cell_pairs_are_split(segmented):
    checked = 0
    for smear, segmentation in segmented:
        rbcs = segmentation.of_kind("rbc")
        pairs = {}
        for truth in smear.of_kind("rbc"):
            if truth.pair_id >= 0:
                pairs.setdefault(truth.pair_id, []).append(truth)
        for first, second in pairs.values():
            if first.touches_border or second.touches_border:
                continue
            found_first = _nearest(rbcs, first.centroid)
            found_second = _nearest(rbcs, second.centroid)
            assert found_first is not found_second
            for truth, found in ((first, found_first), (second, found_second)):
                assert math.dist(found.centroid, truth.centroid) < 0.3 * smear.rbc_diameter_px
            checked += 1
    assert checked >= 6


def test_platelets_are_found(segmented):
    for smear, segmentation in segmented:
        platelets = segmentation.of_kind("platelet")
        assert len(platelets) == len(smear.of_kind("platelet"))
        for truth in smear.of_kind("platelet"):
            assert math.dist(_nearest(platelets, truth.centroid).centroid, truth.centroid) < 2 * truth.radius_px


def test_segmentation_reports_the_diameter_it_used(segmented):
    smear, estimated = segmented[0]
    assert estimated.rbc_diameter_px == pytest.approx(smear.rbc_diameter_px, rel=0.15)
    given = ClassicalSegmenter(ClassicalConfig(rbc_diameter_px=66.0)).segment(smear.image)
    assert given.rbc_diameter_px == 66.0
    assert len(given.of_kind("wbc")) == 2


def test_cells_are_well_formed_records(segmented):
    smear, segmentation = segmented[0]
    assert isinstance(segmentation, Segmentation)
    assert segmentation.image_shape == smear.image.shape[:2]
    assert segmentation.nucleus_mask.shape == smear.image.shape[:2] and segmentation.nucleus_mask.dtype == bool
    rows, cols = smear.image.shape[:2]
    for cell in segmentation.cells:
        r0, c0, r1, c1 = cell.bbox
        assert 0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols
        assert cell.mask.dtype == bool and cell.mask.shape == (r1 - r0, c1 - c0)
        assert cell.mask[0].any() and cell.mask[-1].any() and cell.mask[:, 0].any() and cell.mask[:, -1].any()
        assert cell.area_px == int(cell.mask.sum())
        assert r0 <= cell.centroid[0] < r1 and c0 <= cell.centroid[1] < c1
        assert 0.0 < cell.visible_fraction <= 1.0
        assert cell.touches_border == (r0 == 0 or c0 == 0 or r1 == rows or c1 == cols)
        assert cell.counted == (r1 < rows and c1 < cols)


def test_float_images_in_unit_range_give_the_same_cells():
    smear = make_smear(4, shape=(240, 320), n_wbc=1, n_rbc=12, n_platelets=1, rbc_diameter_px=40.0, touching_rbc_pairs=1)
    segmenter = ClassicalSegmenter()
    as_uint8 = segmenter.segment(smear.image)
    as_float = segmenter.segment(smear.image / 255.0)
    assert [c.bbox for c in as_float.cells] == [c.bbox for c in as_uint8.cells]


def test_an_empty_field_has_no_cells():
    blank = np.full((120, 160, 3), (228, 221, 226), np.uint8)
    segmentation = ClassicalSegmenter().segment(blank)
    assert segmentation.cells == ()
    assert segmentation.rbc_diameter_px == pytest.approx(120 / 6)


@pytest.mark.parametrize(
    "field, value",
    [
        ("rbc_diameter_px", 0.0),
        ("min_rbc_diameter_px", 0.0),
        ("max_rbc_diameter_px", 4.0),
        ("working_rbc_diameter_px", 4.0),
        ("foreground_min", 0.0),
        ("nucleus_merge_distance_rbc", -1.0),
        ("min_wbc_nucleus_area_rbc", 0.0),
        ("min_lobe_area_fraction", 0.0),
        ("cytoplasm_max_margin_rbc", 0.0),
        ("min_platelet_area_rbc", 0.0),
        ("max_platelet_area_rbc", 0.0),
        ("max_pallor_area_rbc", 0.0),
        ("rbc_peak_window_rbc", 0.0),
        ("rbc_split_area_rbc", 0.0),
        ("rbc_split_share_rbc", 0.0),
        ("min_rbc_area_rbc", 0.0),
        ("min_border_rbc_area_rbc", 0.0),
        ("cytoplasm_min_margin_rbc", -0.1),
        ("platelet_exclusion_rbc", -0.1),
        ("platelet_margin_rbc", -0.1),
    ],
)
def test_config_refuses_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"{field}={value}"):
        ClassicalConfig(**{field: value})


def test_config_refuses_a_platelet_range_that_is_empty():
    with pytest.raises(ValueError, match="min_platelet_area_rbc must be below max_platelet_area_rbc"):
        ClassicalConfig(min_platelet_area_rbc=0.3, max_platelet_area_rbc=0.2)


def test_config_round_trips_through_a_dict():
    config = ClassicalConfig(rbc_diameter_px=55.0, foreground_min=0.09)
    assert ClassicalConfig.from_dict(config.to_dict()) == config
    assert ClassicalConfig.from_dict(ClassicalConfig().to_dict()).rbc_diameter_px is None


def test_the_diameter_estimate_uses_the_config_s_values():
    config = ClassicalConfig(min_rbc_diameter_px=10.0, max_rbc_diameter_px=50.0, foreground_min=0.1)
    assert config.diameter_config() == DiameterConfig(
        min_rbc_diameter_px=10.0, max_rbc_diameter_px=50.0, foreground_min=0.1
    )
    # The U-Net estimates with DiameterConfig(): the classical defaults.
    assert ClassicalConfig().diameter_config() == DiameterConfig()
