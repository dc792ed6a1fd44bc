"""The field quality gate: generated bad fields are flagged with their reason, good fields are not.

Every bad field is generated here in code; the good ones are the project's own
synthetic fields (smearflow.synthetic, the worker tests' drawn fields) and,
when ../shared/data is present, the 255 real BCCD fields.
"""

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from smearflow.quality import FieldQuality, QualityConfig, assess_field, field_measures
from smearflow.synthetic import BACKGROUND_RGB, make_smear, write_demo_slides

SHAPE = (480, 640)
CONTENT_MEASURES = {
    "shrink_factor",
    "background_brightness",
    "intensity_range",
    "neighbour_correlation",
    "noise_sigma",
    "edge_blur_working_px",
    "straight_edge_fraction",
    "flat_fraction",
    "stained_fraction",
    "off_stain_fraction",
    "dark_fraction",
}


# --------------------------------------------------------------------------- generators


def _smear(seed=0, **kwargs):
    return make_smear(seed, **kwargs).image


def _uniform(colour, noise_sigma, seed, shape=SHAPE):
    rng = np.random.default_rng(seed)
    pixels = np.asarray(colour, float) + rng.normal(0.0, noise_sigma, (*shape, 3))
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def _add_noise(image, noise_sigma, seed):
    rng = np.random.default_rng(seed)
    return np.clip(np.round(image + rng.normal(0.0, noise_sigma, image.shape)), 0, 255).astype(np.uint8)


def _defocused(image, sigma_px, noise_sigma=2.0, seed=0):
    """A field blurred by a Gaussian of ``sigma_px``, then the camera's noise."""
    from scipy import ndimage

    return _add_noise(ndimage.gaussian_filter(image.astype(float), (sigma_px, sigma_px, 0)), noise_sigma, seed)


def _grey(image):
    luma = np.round(image.astype(float) @ [0.299, 0.587, 0.114]).astype(np.uint8)
    return np.repeat(luma[..., None], 3, axis=2)


def _restained(image, density_rgb):
    """The same field as if its stain absorbed light in the proportions ``density_rgb`` (R, G, B)."""
    background = np.asarray(BACKGROUND_RGB)
    darkness = -np.log(np.clip((image.astype(float) @ [0.299, 0.587, 0.114]) / (background @ [0.299, 0.587, 0.114]), 0.02, 1.0))
    density = np.asarray(density_rgb, float) / max(density_rgb) * 1.6
    return np.clip(np.round(background * np.exp(-darkness[..., None] * density)), 0, 255).astype(np.uint8)


def _jpeg(image, quality):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _viewer_screenshot(smear, seed):
    """A slide viewer: title bar, toolbar, a list of fields, an image pane with the smear."""
    import cv2

    rng = np.random.default_rng(seed)
    screen = np.full((*SHAPE, 3), 240, np.uint8)
    screen[:28] = (45, 45, 48)
    cv2.putText(screen, "SmearViewer 3.2 - slide S-2026-0001", (10, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (230, 230, 230), 1)
    screen[28:60] = (225, 228, 232)
    for i in range(8):
        colour = (70, 130, 200) if i % 3 == 0 else (200, 200, 205)
        cv2.rectangle(screen, (8 + 40 * i, 32), (40 + 40 * i, 56), colour, -1)
    screen[60:, :160] = 250
    for i in range(14):
        text = f"Field {i + 1:02d}  ok  {rng.integers(100, 999)}"
        cv2.putText(screen, text, (8, 80 + 26 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (20, 20, 20), 1)
    cv2.rectangle(screen, (8, 440), (150, 470), (60, 180, 75), -1)
    cv2.putText(screen, "Analyse", (40, 461), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1)
    screen[70:470, 170:630] = cv2.resize(smear, (460, 400), interpolation=cv2.INTER_AREA)
    return screen


def _document_screenshot(seed):
    """A report open in an editor: black text on a white page, a grey window around it."""
    import cv2

    screen = _viewer_screenshot(np.zeros((10, 10, 3), np.uint8), seed)
    screen[70:470, 170:630] = 255
    for i in range(15):
        cv2.putText(screen, f"Differential count, field {i}: 62 % neutrophils", (180, 95 + 25 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (30, 30, 30), 1)
    return screen


def _fullscreen_viewer(smear):
    """A viewer whose image pane fills most of the screen: thin title, tool and status bars."""
    import cv2

    screen = np.full((*SHAPE, 3), 236, np.uint8)
    screen[:24] = (32, 33, 36)
    cv2.putText(screen, "viewer - field 12 of 40", (8, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (235, 235, 235), 1)
    screen[24:48] = 246
    for i in range(6):
        cv2.rectangle(screen, (6 + 30 * i, 28), (30 + 30 * i, 44), (0, 120, 215) if i == 0 else (200, 200, 200), -1)
    screen[456:] = (0, 122, 204)
    cv2.putText(screen, "Ready   100%   x: 312 y: 201", (8, 472), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    screen[52:452, 20:620] = cv2.resize(smear, (600, 400), interpolation=cv2.INTER_AREA)
    return screen


def _clip_art(seed):
    """A drawing of a smear: flat discs on a flat background, no camera noise."""
    rng = np.random.default_rng(seed)
    image = np.empty((*SHAPE, 3), np.uint8)
    image[:] = (236, 222, 228)
    rows, cols = np.ogrid[: SHAPE[0], : SHAPE[1]]
    for _ in range(30):
        row, col = rng.integers(30, SHAPE[0] - 30), rng.integers(30, SHAPE[1] - 30)
        image[(rows - row) ** 2 + (cols - col) ** 2 <= 30**2] = (214, 128, 138)
    for row, col in ((120, 160), (330, 470)):
        image[(rows - row) ** 2 + (cols - col) ** 2 <= 50**2] = (190, 170, 215)
        image[(rows - row) ** 2 + (cols - col) ** 2 <= 30**2] = (95, 40, 140)
    return image


def _stain_palette_noise(seed):
    rng = np.random.default_rng(seed)
    palette = np.array([(228, 221, 226), (214, 128, 138), (95, 40, 140), (190, 170, 215)], np.uint8)
    return palette[rng.integers(0, len(palette), SHAPE)]


def _grey_noise(seed):
    rng = np.random.default_rng(seed)
    return np.repeat(rng.integers(0, 256, SHAPE, dtype=np.uint8)[..., None], 3, axis=2)


GREEN_STAIN = (1.0, 0.15, 0.9)
YELLOW_STAIN = (0.05, 0.25, 1.0)
ORANGE_STAIN = (0.05, 0.5, 1.0)
CYAN_STAIN = (1.0, 0.15, 0.1)
ROMANOWSKY_RED_CELL_STAIN = (0.10, 0.42, 0.30)  # the synthetic red cells' own optical density

BAD_FIELDS = {
    "blank": (
        "blank field (no contrast: intensity range ",
        [
            lambda: _uniform(250, 1.5, 0),
            lambda: _uniform(BACKGROUND_RGB, 2.5, 1),
            lambda: _uniform(128, 0.0, 2),
            lambda: _uniform((236, 222, 228), 4.0, 3),
            lambda: np.full((*SHAPE, 3), 255, np.uint8),
        ],
    ),
    "dark": (
        "black or very dark field (background brightness ",
        [
            lambda: np.zeros((*SHAPE, 3), np.uint8),
            lambda: _uniform(8, 2.0, 4),
            lambda: _uniform((20, 15, 25), 4.0, 5),
            lambda: (_smear(1) * 0.15).astype(np.uint8),
            lambda: (_smear(2) * 0.35).astype(np.uint8),
        ],
    ),
    "noise": (
        "pure noise (neighbouring pixels unrelated: correlation ",
        [
            lambda: np.random.default_rng(6).integers(0, 256, (*SHAPE, 3), dtype=np.uint8),
            lambda: _uniform(128, 50.0, 7),
            lambda: _stain_palette_noise(8),
            lambda: _grey_noise(9),
        ],
    ),
    "out of focus": (
        "out of focus (",
        [
            lambda: _defocused(_smear(3), 6.0, seed=10),
            lambda: _defocused(_smear(4), 8.0, noise_sigma=4.0, seed=11),
            lambda: _defocused(_smear(5), 12.0, seed=12),
            lambda: _smear(6, blur_sigma_px=6.0),
            lambda: _smear(7, blur_sigma_px=6.0, noise_sigma=6.0),
            lambda: _jpeg(_defocused(_smear(8), 6.0, seed=13), 75),
            lambda: _smear(9, shape=(240, 320), n_rbc=12, rbc_diameter_px=35.0, blur_sigma_px=6.0),
        ],
    ),
    "screenshot": (
        "screenshot or window capture, not a camera field (a straight edge runs across ",
        [
            lambda: _viewer_screenshot(_smear(10), 0),
            lambda: _viewer_screenshot(_smear(11), 1),
            lambda: _document_screenshot(2),
            lambda: _fullscreen_viewer(_smear(12)),
            lambda: _jpeg(_viewer_screenshot(_smear(13), 3), 85),
            lambda: _jpeg(_fullscreen_viewer(_smear(14)), 95),
        ],
    ),
    "drawing": (
        "drawing or heavily compressed image, not a camera field (",
        [lambda: _clip_art(0), lambda: _clip_art(1), lambda: _clip_art(2)],
    ),
    "grey": (
        "no stain colour, a grey image (",
        [lambda: _grey(_smear(15)), lambda: _grey(_smear(16, n_wbc=3)), lambda: _grey(_jpeg(_smear(17), 90))],
    ),
    "implausible colours": (
        "colours a Romanowsky stain does not give (orange, yellow, green or cyan: ",
        [
            lambda: _restained(_smear(18), GREEN_STAIN),
            lambda: _restained(_smear(19), YELLOW_STAIN),
            lambda: _restained(_smear(20), ORANGE_STAIN),
            lambda: _restained(_smear(21), CYAN_STAIN),
            lambda: np.ascontiguousarray(_smear(22)[..., [1, 0, 2]]),  # red and green swapped: green red cells
            lambda: np.ascontiguousarray(_smear(23)[..., [2, 0, 1]]),
        ],
    ),
}
BAD_CASES = [
    pytest.param(condition, index, id=f"{condition}-{index}")
    for condition, (_, makers) in BAD_FIELDS.items()
    for index in range(len(makers))
]


# --------------------------------------------------------------------------- bad fields


@pytest.mark.parametrize(("condition", "index"), BAD_CASES)
def test_generated_bad_fields_are_flagged_with_their_reason(condition, index):
    reason_start, makers = BAD_FIELDS[condition]
    verdict = assess_field(makers[index]())
    assert not verdict.usable
    assert any(reason.startswith(reason_start) for reason in verdict.reasons), verdict.reasons


@pytest.mark.parametrize(
    ("name", "reason_start"),
    [
        ("astronaut", "not a blood smear: large dark areas ("),
        ("coffee", "not a blood smear: large dark areas ("),
        ("chelsea", "colours a Romanowsky stain does not give ("),
        ("rocket", "not a blood smear: large dark areas ("),
        ("immunohistochemistry", "colours a Romanowsky stain does not give ("),
        ("retina", "not a blood smear: large dark areas ("),
        ("hubble_deep_field", "black or very dark field ("),
    ],
)
def test_photographs_of_something_else_are_flagged(name, reason_start):
    import skimage.data

    try:
        photo = getattr(skimage.data, name)()
    except Exception as error:  # noqa: BLE001 - a data file missing from this install
        pytest.skip(f"skimage.data.{name} does not load offline here: {error}")
    verdict = assess_field(np.ascontiguousarray(photo[..., :3]))
    assert not verdict.usable
    assert any(reason.startswith(reason_start) for reason in verdict.reasons), verdict.reasons


def test_the_first_three_conditions_are_decided_alone_with_their_figures():
    verdict = assess_field(np.zeros((*SHAPE, 3), np.uint8), rbc_count=0)
    assert verdict.reasons == ("black or very dark field (background brightness 0 < 100)",)
    assert set(verdict.measures) == {
        "shrink_factor",
        "background_brightness",
        "intensity_range",
        "neighbour_correlation",
        "rbc_count",
    }
    blank = assess_field(_uniform(230, 0.5, 0))
    assert blank.reasons == ("blank field (no contrast: intensity range 1 < 25)",)


def test_reasons_quote_the_figure_and_the_threshold():
    verdict = assess_field(_grey(_smear(15)), QualityConfig(min_stained_fraction=0.2))
    assert "no stain colour, a grey image (0.0% of pixels coloured < 20%)" in verdict.reasons


def test_too_few_red_cells_is_flagged_only_when_a_count_is_given():
    image = _smear(0)
    assert assess_field(image).usable
    assert assess_field(image, rbc_count=3).usable
    verdict = assess_field(image, rbc_count=2)
    assert verdict.reasons == ("too few red cells (2 < 3)",)
    assert verdict.measures["rbc_count"] == 2.0
    assert assess_field(image, QualityConfig(min_rbc_count=0), rbc_count=0).usable


def test_a_field_with_no_edge_above_the_noise_is_out_of_focus():
    image = _add_noise(_defocused(_smear(3), 12.0, noise_sigma=0.0), 12.0, seed=1)
    verdict = assess_field(image)
    assert verdict.measures["edge_blur_working_px"] == 100.0
    assert any(reason.startswith("out of focus (no edge stands out of the noise of") for reason in verdict.reasons)


# --------------------------------------------------------------------------- good fields


def _classical_segmenter():
    from smearflow.segmentation import make_segmenter

    return make_segmenter("classical")


def _worker_testdata():
    path = Path(__file__).parent / "worker" / "worker_testdata.py"
    spec = importlib.util.spec_from_file_location("quality_test_worker_testdata", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flagged(named_images, segmenter):
    flagged = {}
    for name, image in named_images:
        verdict = assess_field(image, rbc_count=segmenter.segment(image).count("rbc"))
        if not verdict.usable:
            flagged[name] = verdict.reasons
    return flagged


def test_synthetic_smears_are_usable():
    fields = [(f"make_smear({seed})", _smear(seed, n_wbc=1 + seed % 3)) for seed in range(12)]
    fields += [("make_smear(small)", _smear(1, shape=(240, 320), n_rbc=12, rbc_diameter_px=35.0))]
    assert _flagged(fields, _classical_segmenter()) == {}


@pytest.mark.parametrize("seed", [0, 3])
def test_demo_slide_fields_are_usable(tmp_path, seed):
    from smearflow.imageio import read_rgb

    paths = [p for folder in write_demo_slides(tmp_path, n_slides=3, seed=seed) for p in sorted(folder.glob("*.png"))]
    assert len(paths) == 7
    assert _flagged([(p.name, read_rgb(p)) for p in paths], _classical_segmenter()) == {}


def test_the_worker_tests_drawn_fields_are_usable():
    draw_field = _worker_testdata().draw_field
    fields = [(f"draw_field({seed})", draw_field(seed)) for seed in [s * 100 + i for s in range(10) for i in range(4)]]
    assert _flagged(fields, _classical_segmenter()) == {}


def test_a_romanowsky_restained_field_is_usable_as_a_control_for_the_colour_test():
    assert assess_field(_restained(_smear(18), ROMANOWSKY_RED_CELL_STAIN)).usable


@pytest.mark.parametrize(
    "transform",
    [
        lambda im: np.clip(im * 1.3, 0, 255).astype(np.uint8),  # overexposed: a clipped white background
        lambda im: (im * 0.6).astype(np.uint8),  # dim lamp
        lambda im: _jpeg(im, 60),
        lambda im: _add_noise(im, 5.0, 0),
    ],
    ids=["overexposed", "dim", "jpeg-60", "noisy"],
)
def test_ordinary_imperfections_are_not_flagged(transform):
    assert assess_field(transform(_smear(2))).usable


def test_measures_hold_every_figure_the_decision_used():
    verdict = assess_field(_smear(0), rbc_count=30)
    assert set(verdict.measures) == CONTENT_MEASURES | {"rbc_count"}
    assert all(isinstance(value, float) for value in verdict.measures.values())
    assert field_measures(_smear(0)).keys() == CONTENT_MEASURES


def test_large_fields_are_measured_on_a_shrunken_copy():
    import cv2

    image = _smear(4)
    big = cv2.resize(image, (2560, 1920), interpolation=cv2.INTER_CUBIC)
    small, large = field_measures(image), field_measures(big)
    assert abs(small["background_brightness"] - large["background_brightness"]) < 3
    assert abs(small["stained_fraction"] - large["stained_fraction"]) < 0.05
    assert assess_field(big).usable


# --------------------------------------------------------------------------- types and validation


def test_field_quality_is_frozen_and_hashable():
    verdict = assess_field(_smear(0))
    assert isinstance(verdict, FieldQuality)
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.usable = False
    assert hash(verdict) == hash(FieldQuality(True, (), {}))


def test_config_round_trips_through_a_dict_and_json():
    config = QualityConfig(max_edge_blur_working_px=1.5, off_stain_hue_deg=(40.0, 190.0), min_rbc_count=5)
    assert QualityConfig.from_dict(config.to_dict()) == config
    assert QualityConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert QualityConfig.from_dict({}) == QualityConfig()


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"working_side_px": 32}, "working_side_px must be an integer of at least 64. Received: working_side_px=32"),
        ({"working_side_px": 320.0}, "working_side_px must be an integer of at least 64. Received: working_side_px=320.0"),
        ({"min_background_brightness": -1}, "min_background_brightness must be an 8-bit level in \\[0, 255\\]. Received: min_background_brightness=-1"),
        ({"min_intensity_range": 300}, "min_intensity_range must be an 8-bit level in \\[0, 255\\]. Received: min_intensity_range=300"),
        ({"min_neighbour_correlation": 1.5}, "min_neighbour_correlation must be in \\[-1, 1\\]. Received: min_neighbour_correlation=1.5"),
        ({"max_edge_blur_working_px": 0}, "max_edge_blur_working_px must be positive. Received: max_edge_blur_working_px=0"),
        ({"max_edge_blur_working_px": float("nan")}, "max_edge_blur_working_px must be positive. Received: max_edge_blur_working_px=nan"),
        ({"min_straight_edge_step": -3}, "min_straight_edge_step must be an 8-bit level in \\[0, 255\\]. Received: min_straight_edge_step=-3"),
        ({"max_straight_edge_fraction": 1.5}, "max_straight_edge_fraction must be a fraction in \\[0, 1\\]. Received: max_straight_edge_fraction=1.5"),
        ({"max_flat_fraction": 1.2}, "max_flat_fraction must be a fraction in \\[0, 1\\]. Received: max_flat_fraction=1.2"),
        ({"min_chroma": -0.1}, "min_chroma must be a fraction in \\[0, 1\\]. Received: min_chroma=-0.1"),
        ({"min_stained_fraction": "5%"}, "min_stained_fraction must be a fraction in \\[0, 1\\]. Received: min_stained_fraction='5%'"),
        ({"max_off_stain_fraction": 2}, "max_off_stain_fraction must be a fraction in \\[0, 1\\]. Received: max_off_stain_fraction=2"),
        ({"dark_level": True}, "dark_level must be a fraction in \\[0, 1\\]. Received: dark_level=True"),
        ({"max_dark_fraction": -1}, "max_dark_fraction must be a fraction in \\[0, 1\\]. Received: max_dark_fraction=-1"),
        ({"off_stain_hue_deg": (200.0, 30.0)}, "off_stain_hue_deg must be two hues \\(from, to\\) in \\[0, 360\\] degrees with from < to. Received: off_stain_hue_deg=\\(200.0, 30.0\\)"),
        ({"off_stain_hue_deg": (30.0,)}, "off_stain_hue_deg must be two hues"),
        ({"off_stain_hue_deg": (30.0, 400.0)}, "off_stain_hue_deg must be two hues"),
        ({"min_rbc_count": -1}, "min_rbc_count must be zero or a positive integer. Received: min_rbc_count=-1"),
        ({"min_rbc_count": 2.5}, "min_rbc_count must be zero or a positive integer. Received: min_rbc_count=2.5"),
    ],
)
def test_config_validation_names_the_field_and_the_value(keywords, message):
    with pytest.raises(ValueError, match=message):
        QualityConfig(**keywords)


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="QualityConfig has no field\\(s\\) \\['max_blur'\\]"):
        QualityConfig.from_dict({"max_blur": 3})


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64, 4), np.uint8),
        np.zeros((64, 64, 3), np.float32),
        np.zeros((8, 64, 3), np.uint8),
        [[0, 0, 0]],
    ],
    ids=["grey", "rgba", "float", "too-small", "list"],
)
def test_assess_field_rejects_what_is_not_an_rgb_uint8_field(image):
    with pytest.raises(ValueError, match="image must be an \\(M, N, 3\\) uint8 RGB array with M, N >= 16. Received: shape="):
        assess_field(image)
    with pytest.raises(ValueError, match="image must be an \\(M, N, 3\\) uint8 RGB array"):
        field_measures(image)


@pytest.mark.parametrize("count", [-1, 2.5, True, "3"])
def test_assess_field_rejects_a_bad_red_cell_count(count):
    with pytest.raises(ValueError, match=f"rbc_count must be a non-negative integer or None. Received: rbc_count={count!r}"):
        assess_field(_smear(0), rbc_count=count)


# --------------------------------------------------------------------------- real fields


BCCD_BLUR_SIGMAS_PX = (6.0, 8.0)


@pytest.mark.data
def test_no_bccd_field_is_flagged_and_defocused_or_grey_copies_are(shared_data):
    """All 255 BCCD fields (another microscope, JPEG) with the classical segmenter's red-cell counts."""
    from smearflow.imageio import read_rgb

    paths = sorted((shared_data / "bccd" / "images").glob("*.jpg"))
    assert len(paths) == 255
    segmenter = _classical_segmenter()
    flagged = {}
    for path in paths:
        image = read_rgb(path)
        verdict = assess_field(image, rbc_count=segmenter.segment(image).count("rbc"))
        if not verdict.usable:
            flagged[path.name] = verdict.reasons
    assert flagged == {}
    for index, path in enumerate(paths[::32]):
        image = read_rgb(path)
        for sigma_px in BCCD_BLUR_SIGMAS_PX:
            reasons = assess_field(_defocused(image, sigma_px, noise_sigma=2.0, seed=index)).reasons
            assert any(r.startswith("out of focus (") for r in reasons), (path.name, sigma_px, reasons)
        assert assess_field(_grey(image)).reasons == (assess_field(_grey(image)).reasons[0],)
        assert assess_field(_grey(image)).reasons[0].startswith("no stain colour, a grey image (")
        assert not assess_field(np.ascontiguousarray(image[..., [1, 0, 2]])).usable
