"""Synthetic smears: deterministic, as asked for, and looking like a Giemsa smear."""

import json
import math
from datetime import datetime

import numpy as np
import pytest

from smearflow.imageio import read_rgb
from smearflow.synthetic import BACKGROUND_RGB, make_smear, write_demo_slides


@pytest.fixture(scope="module")
def smear():
    return make_smear(5)


def test_one_seed_gives_one_field(smear):
    again = make_smear(5)
    assert np.array_equal(again.image, smear.image) and again.truth == smear.truth
    assert not np.array_equal(make_smear(6).image, smear.image)


def test_the_field_holds_the_cells_asked_for(smear):
    assert smear.image.shape == (480, 640, 3) and smear.image.dtype == np.uint8
    assert [len(smear.of_kind(k)) for k in ("wbc", "rbc", "platelet")] == [2, 40, 4]
    assert smear.rbc_diameter_px == 70.0
    for cell in smear.of_kind("rbc"):
        assert 0.94 * 35 <= cell.radius_px <= 1.06 * 35


def test_touching_pairs_overlap_slightly_and_other_cells_do_not_touch(smear):
    pairs = {}
    for cell in smear.of_kind("rbc"):
        if cell.pair_id >= 0:
            pairs.setdefault(cell.pair_id, []).append(cell)
    assert sorted(pairs) == [0, 1, 2, 3, 4] and all(len(p) == 2 for p in pairs.values())
    for first, second in pairs.values():
        ratio = math.dist(first.centroid, second.centroid) / (first.radius_px + second.radius_px)
        assert 0.75 <= ratio <= 0.9
    cells = smear.truth
    for i, a in enumerate(cells):
        for b in cells[i + 1 :]:
            if a.pair_id >= 0 and a.pair_id == b.pair_id:
                continue
            assert math.dist(a.centroid, b.centroid) >= a.radius_px + b.radius_px


def test_white_cells_and_platelets_lie_inside_and_the_border_rule_is_applied(smear):
    rows, cols = smear.image.shape[:2]
    for cell in smear.of_kind("wbc") + smear.of_kind("platelet"):
        assert not cell.touches_border and cell.counted and cell.visible_fraction == 1.0
    cut = [c for c in smear.of_kind("rbc") if c.touches_border]
    assert cut, "red cells are allowed to be cut by the edge"
    for cell in smear.of_kind("rbc"):
        row, col = cell.centroid
        past_exclusion_edge = row + cell.radius_px > rows - 0.5 or col + cell.radius_px > cols - 0.5
        assert cell.counted == (not past_exclusion_edge)
        assert 0.0 < cell.visible_fraction <= 1.0
    assert smear.count("rbc") == sum(c.counted for c in smear.of_kind("rbc")) < 40


def test_colours_look_like_a_giemsa_smear(smear):
    image = smear.image.astype(int)
    background = np.median(image.reshape(-1, 3), axis=0)
    assert (background > 190).all()
    nucleus = image[smear.nucleus_mask].mean(axis=0)
    assert nucleus[2] > nucleus[1] + 40 and nucleus.sum() < background.sum() - 200  # dark purple
    rbc = smear.of_kind("rbc")[0]
    row, col = (int(v) for v in rbc.centroid)
    ring = image[min(max(row, 0), 479), min(max(col + int(0.8 * rbc.radius_px), 0), 639)]
    assert ring[0] > ring[1] + 30  # pink: red passes, green is absorbed
    assert tuple(BACKGROUND_RGB) == (228.0, 221.0, 226.0)


def test_nucleus_lies_in_its_white_cell_and_lobes_follow_the_fraction():
    lobed = make_smear(2, n_wbc=3, n_rbc=10, touching_rbc_pairs=1, lobed_fraction=1.0)
    assert all(2 <= c.n_lobes <= 4 for c in lobed.of_kind("wbc"))
    assert not (lobed.nucleus_mask & ~lobed.wbc_mask).any() and lobed.nucleus_mask.any()
    round_nuclei = make_smear(2, n_wbc=3, n_rbc=10, touching_rbc_pairs=1, lobed_fraction=0.0)
    assert all(c.n_lobes == 1 for c in round_nuclei.of_kind("wbc"))
    assert all(c.n_lobes == 0 for c in round_nuclei.of_kind("rbc"))


def test_a_clean_field_without_noise_or_blur():
    smear = make_smear(1, shape=(100, 120), n_wbc=0, n_rbc=0, n_platelets=0, rbc_diameter_px=20, touching_rbc_pairs=0, noise_sigma=0, blur_sigma_px=0, vignetting=0)
    assert (smear.image == np.round(BACKGROUND_RGB).astype(np.uint8)).all() and smear.truth == ()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_wbc": -1}, "n_wbc=-1"),
        ({"n_rbc": -1, "touching_rbc_pairs": 0}, "n_rbc=-1"),
        ({"n_platelets": -2}, "n_platelets=-2"),
        ({"touching_rbc_pairs": -1}, "touching_rbc_pairs=-1"),
        ({"n_rbc": 5, "touching_rbc_pairs": 3}, "touching_rbc_pairs=3, n_rbc=5"),
        ({"rbc_diameter_px": 0}, "rbc_diameter_px=0"),
        ({"rbc_diameter_px": 300}, "rbc_diameter_px=300"),
        ({"lobed_fraction": 1.5}, "lobed_fraction=1.5"),
        ({"vignetting": -0.1}, "vignetting=-0.1"),
        ({"noise_sigma": -1}, "noise_sigma=-1"),
        ({"blur_sigma_px": -1}, "blur_sigma_px=-1"),
        ({"n_rbc": 200, "touching_rbc_pairs": 0}, "do not fit"),
        (
            {"shape": (110, 110), "n_wbc": 1, "n_platelets": 0, "rbc_diameter_px": 50, "n_rbc": 2, "touching_rbc_pairs": 1},
            "could not place touching red-cell pair 0",
        ),
    ],
)
def test_bad_requests_are_refused_naming_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_smear(0, **kwargs)


@pytest.fixture(scope="module")
def demo_slides(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, write_demo_slides(out, n_slides=3, seed=1)


def test_demo_slides_are_folders_of_fields_with_slide_json(demo_slides):
    out, slides = demo_slides
    assert [s.name for s in slides] == ["DEMO-SLIDE-001", "DEMO-SLIDE-002", "DEMO-SLIDE-003"]
    infos = []
    for slide in slides:
        assert slide.parent == out
        fields = sorted(slide.glob("field_*.png"))
        assert 2 <= len(fields) <= 3
        assert read_rgb(fields[0]).shape == (480, 640, 3)
        info = json.loads((slide / "slide.json").read_text())
        assert set(info) == {"slide_id", "patient_id", "collected_at", "notes"}
        assert info["slide_id"] == slide.name and datetime.fromisoformat(info["collected_at"]).tzinfo is not None
        infos.append(info)
    assert [i["patient_id"] for i in infos] == ["DEMO-001", "DEMO-001", "DEMO-002"]


def test_demo_slides_need_at_least_one_slide(tmp_path):
    with pytest.raises(ValueError, match="n_slides=0"):
        write_demo_slides(tmp_path, n_slides=0)
