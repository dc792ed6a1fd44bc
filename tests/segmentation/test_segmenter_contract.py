"""One contract, run on every registered segmenter: built by name, it segments a small synthetic field."""

import importlib
import inspect
import math

import pytest
from smearflow_testkit import BAD_IMAGES

from smearflow.segmentation import SEGMENTERS, Segmentation, Segmenter, make_segmenter
from smearflow.segmentation.border import edges_touched, is_counted
from smearflow.synthetic import make_smear

KINDS = ("wbc", "rbc", "platelet")


@pytest.fixture(scope="module")
def field():
    """A 192 x 256 field: 2 white cells, 14 red cells (one touching pair), 2 platelets, red-cell diameter 32 px."""
    return make_smear(5, shape=(192, 256), n_wbc=2, n_rbc=14, n_platelets=2, rbc_diameter_px=32.0, touching_rbc_pairs=1)


@pytest.mark.parametrize("name", list(SEGMENTERS))
def test_the_builder_has_the_shared_signature(name):
    builder = importlib.import_module(SEGMENTERS[name].module).build_segmenter
    parameters = inspect.signature(builder).parameters
    assert list(parameters) == ["rbc_diameter_px", "model_dir"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is None for p in parameters.values())


@pytest.mark.parametrize("name", list(SEGMENTERS))
def test_a_registered_segmenter_gives_a_valid_segmentation_of_a_synthetic_field(name, field):
    segmenter = make_segmenter(name)  # its defaults: a packaged model where it needs one
    assert isinstance(segmenter, Segmenter)
    segmentation = segmenter.segment(field.image)
    assert isinstance(segmentation, Segmentation)
    rows, cols = field.image.shape[:2]
    assert segmentation.image_shape == (rows, cols)
    assert math.isfinite(segmentation.rbc_diameter_px) and segmentation.rbc_diameter_px > 0
    assert segmentation.of_kind("wbc") and segmentation.of_kind("rbc")
    for cell in segmentation.cells:
        assert cell.kind in KINDS
        r0, c0, r1, c1 = cell.bbox
        assert 0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols
        assert cell.mask.dtype == bool and cell.mask.shape == (r1 - r0, c1 - c0)
        assert cell.area_px == int(cell.mask.sum()) > 0
        edges = edges_touched(cell.bbox, (rows, cols))
        assert cell.touches_border == bool(edges)
        assert cell.counted == is_counted(edges)
        assert 0.0 < cell.visible_fraction <= 1.0
    for kind in KINDS:
        assert segmentation.count(kind) == sum(cell.counted for cell in segmentation.of_kind(kind))
    if segmentation.nucleus_mask is not None:
        assert segmentation.nucleus_mask.shape == (rows, cols) and segmentation.nucleus_mask.dtype == bool


@pytest.mark.parametrize("name", list(SEGMENTERS))
def test_a_given_red_cell_diameter_is_the_one_used(name, field):
    segmentation = make_segmenter(name, rbc_diameter_px=field.rbc_diameter_px).segment(field.image)
    assert segmentation.rbc_diameter_px == field.rbc_diameter_px


@pytest.mark.parametrize("name", list(SEGMENTERS))
def test_bad_images_are_refused_naming_what_was_received(name):
    segmenter = make_segmenter(name)
    for image, message in BAD_IMAGES:
        with pytest.raises(ValueError, match=message):
            segmenter.segment(image)
