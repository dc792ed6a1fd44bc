"""The border rule: which cut cells are counted, and how much of them shows."""

import math

import numpy as np
import pytest

from smearflow.segmentation.border import apply_border_rule, edges_touched, is_counted, visible_fraction
from smearflow.types import Cell

SHAPE = (100, 200)


def _disc_cell(kind, centre, radius, shape=SHAPE):
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    full = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
    row_any, col_any = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
    bbox = (int(row_any[0]), int(col_any[0]), int(row_any[-1]) + 1, int(col_any[-1]) + 1)
    mask = full[bbox[0] : bbox[2], bbox[1] : bbox[3]]
    ys, xs = np.nonzero(mask)
    return Cell(kind, bbox, (bbox[0] + ys.mean(), bbox[1] + xs.mean()), int(mask.sum()), mask)


@pytest.mark.parametrize(
    "bbox, expected, counted",
    [
        ((10, 10, 20, 20), set(), True),
        ((0, 10, 20, 20), {"top"}, True),
        ((10, 0, 20, 20), {"left"}, True),
        ((0, 0, 20, 20), {"top", "left"}, True),
        ((90, 10, 100, 20), {"bottom"}, False),
        ((10, 190, 20, 200), {"right"}, False),
        ((0, 190, 20, 200), {"top", "right"}, False),
        ((90, 0, 100, 20), {"left", "bottom"}, False),
        ((0, 0, 100, 200), {"top", "left", "bottom", "right"}, False),
    ],
)
def test_cells_cut_by_the_bottom_or_right_edge_are_not_counted(bbox, expected, counted):
    edges = edges_touched(bbox, SHAPE)
    assert edges == expected
    assert is_counted(edges) is counted


def test_tolerance_lets_hand_drawn_boxes_touch_an_edge():
    assert edges_touched((10, 10, 98, 20), SHAPE) == set()
    assert edges_touched((10, 10, 98, 20), SHAPE, tolerance_px=2) == {"bottom"}
    assert edges_touched((2, 2, 20, 20), SHAPE, tolerance_px=2) == {"top", "left"}


def test_rule_counts_each_cell_of_a_tiled_slide_once():
    # A 4 x 4 grid of cells on a 2 x 2 tiling of 50-pixel fields: every cell
    # straddling a tile seam is counted in exactly one tile.
    cells = [(r, c) for r in range(10, 100, 25) for c in range(10, 100, 25)]
    radius = 8
    counts = {cell: 0 for cell in cells}
    for tile_row in (0, 50):
        for tile_col in (0, 50):
            for row, col in cells:
                r0, r1 = max(row - radius, tile_row), min(row + radius + 1, tile_row + 50)
                c0, c1 = max(col - radius, tile_col), min(col + radius + 1, tile_col + 50)
                if r0 >= r1 or c0 >= c1:
                    continue
                local = (r0 - tile_row, c0 - tile_col, r1 - tile_row, c1 - tile_col)
                counts[(row, col)] += is_counted(edges_touched(local, (50, 50)))
    assert set(counts.values()) == {1}


def test_unknown_edge_names_and_negative_tolerance_are_refused():
    with pytest.raises(ValueError, match="edges must be among"):
        is_counted({"middle"})
    with pytest.raises(ValueError, match="tolerance_px=-1"):
        edges_touched((0, 0, 1, 1), SHAPE, tolerance_px=-1)


def test_visible_fraction_of_whole_and_cut_discs():
    whole = _disc_cell("rbc", (50, 100), 20)
    assert visible_fraction(whole.mask, whole.bbox, SHAPE, math.pi * 400) == 1.0
    half = _disc_cell("rbc", (50, 0), 20)
    assert visible_fraction(half.mask, half.bbox, SHAPE, math.pi * 400) == pytest.approx(0.5, abs=0.06)
    quarter = _disc_cell("rbc", (0, 0), 20)
    assert visible_fraction(quarter.mask, quarter.bbox, SHAPE, math.pi * 400) == pytest.approx(0.25, abs=0.06)
    mostly_in = _disc_cell("rbc", (50, 190), 20)  # a segment of 0.196 of the disc lies outside
    assert visible_fraction(mostly_in.mask, mostly_in.bbox, SHAPE, math.pi * 400) == pytest.approx(0.804, abs=0.04)


def test_visible_fraction_falls_back_to_the_typical_area_for_slivers():
    sliver = np.ones((30, 2), bool)  # too few boundary pixels off the edge for a circle fit
    assert visible_fraction(sliver, (20, 0, 50, 2), SHAPE, typical_area_px=600.0) == pytest.approx(0.1)


def test_visible_fraction_refuses_a_mask_that_does_not_fit_its_box_or_a_bad_area():
    with pytest.raises(ValueError, match=r"mask.shape=\(3, 3\)"):
        visible_fraction(np.ones((3, 3), bool), (0, 0, 4, 4), SHAPE, 10.0)
    with pytest.raises(ValueError, match="typical_area_px=0"):
        visible_fraction(np.ones((4, 4), bool), (0, 0, 4, 4), SHAPE, 0)


def test_apply_border_rule_sets_the_three_attributes():
    cells = [_disc_cell("rbc", (50, 100), 15), _disc_cell("wbc", (0, 100), 25), _disc_cell("platelet", (99, 50), 4)]
    whole, top, bottom = apply_border_rule(cells, SHAPE, rbc_diameter_px=30)
    assert (whole.touches_border, whole.counted, whole.visible_fraction) == (False, True, 1.0)
    assert top.touches_border and top.counted and top.visible_fraction == pytest.approx(0.5, abs=0.07)
    assert bottom.touches_border and not bottom.counted and bottom.visible_fraction < 0.7
    assert whole.mask is cells[0].mask and top.bbox == cells[1].bbox


def test_apply_border_rule_refuses_a_bad_diameter():
    with pytest.raises(ValueError, match="rbc_diameter_px=0"):
        apply_border_rule([], SHAPE, rbc_diameter_px=0)
