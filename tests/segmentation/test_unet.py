"""The U-Net segmenter: network contract, loss masking, targets, model folder, cells, errors."""

import dataclasses
import json
import math

import numpy as np
import pytest

from smearflow.errors import BadDatasetError, BadModelError
from smearflow.segmentation import Segmentation, make_segmenter
from smearflow.segmentation import unet as unet_module
from smearflow.segmentation.unet import (
    CHANNELS,
    UNetConfig,
    UNetPostprocess,
    UNetSegmenter,
    UNetThresholds,
    build_from_config,
    build_unet,
    cells_from_probabilities,
    masked_segmentation_loss,
    normalise_field,
    read_unet_folder,
    write_unet_folder,
)
from smearflow.segmentation.unet_data import (
    PatchSampler,
    TrainingImage,
    background_mask,
    box_targets,
    ellipse_mask,
    load_box_dataset,
    load_mask_dataset,
    mask_targets,
    rbc_diameter_from_boxes,
)
from smearflow.segmentation.unet_train import UNetTrainConfig, find_datasets, train_unet
from smearflow.types import Cell

TINY = UNetConfig(filters=(4, 8), input_size_px=16)

# --------------------------------------------------------------------------- a drawn field

BACKGROUND = (236, 226, 232)
PALETTE = {"rbc": (205, 120, 130), "cytoplasm": (200, 175, 215), "nucleus": (90, 50, 140), "platelet": (130, 80, 170)}


def _disc(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def drawn_field(scale=1):
    """A 160x160 field (times ``scale``), red-cell diameter 32 (times ``scale``).

    Two white cells (one cut by the right edge: not counted), three red cells
    (two touching), one platelet.
    """
    shape = (160 * scale, 160 * scale)
    image = np.empty((*shape, 3), np.uint8)
    image[:] = BACKGROUND
    s = scale
    for centre in ((120 * s, 40 * s), (120 * s, 70 * s), (40 * s, 130 * s)):
        image[_disc(shape, centre, 16 * s)] = PALETTE["rbc"]
    for centre, cell_r, nucleus_r in (((60 * s, 60 * s), 22 * s, 12 * s), ((100 * s, 150 * s), 22 * s, 10 * s)):
        image[_disc(shape, centre, cell_r)] = PALETTE["cytoplasm"]
        image[_disc(shape, centre, nucleus_r)] = PALETTE["nucleus"]
    image[_disc(shape, (142 * s, 128 * s), 4 * s)] = PALETTE["platelet"]
    return image


class ColourOracle:
    """A stand-in network: labels each pixel by the nearest drawn colour (pointwise, exact)."""

    def __init__(self):
        names = ["background", "rbc", "cytoplasm", "nucleus", "platelet"]
        colours = np.array([BACKGROUND] + [PALETTE[n] for n in names[1:]], np.uint8)[None]
        self.reference = normalise_field(np.repeat(colours, 20, axis=0))[0]
        self.names = names

    def __call__(self, x, training=False):
        x = np.asarray(x)
        distance = ((x[..., None, :] - self.reference) ** 2).sum(-1)
        nearest = np.array(self.names)[distance.argmin(-1)]
        out = np.stack(
            [
                nearest == "nucleus",
                (nearest == "nucleus") | (nearest == "cytoplasm"),
                nearest == "rbc",
                nearest == "platelet",
            ],
            axis=-1,
        )
        return out.astype(np.float32)


def _oracle_segmenter(**kwargs):
    return UNetSegmenter(ColourOracle(), UNetConfig(), **kwargs)


# --------------------------------------------------------------------------- network


def test_build_unet_takes_any_multiple_of_the_pooling_and_outputs_probabilities():
    model = build_unet(filters=(4, 8, 8))
    out = np.asarray(model(np.random.default_rng(0).random((2, 24, 40, 3), dtype=np.float32), training=False))
    assert out.shape == (2, 24, 40, len(CHANNELS))
    assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
    assert build_unet(filters=(4, 8), input_size_px=16).input_shape == (None, 16, 16, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"filters": (4,)}, "filters must list at least two"),
        ({"filters": (4, 0)}, "filters must list at least two"),
        ({"num_channels": 0}, "num_channels must be at least 1"),
        ({"filters": (4, 8, 8), "input_size_px": 18}, "input_size_px must be a positive multiple of 2\\*\\*depth = 4"),
    ],
)
def test_build_unet_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_unet(**kwargs)


def test_masked_loss_matches_a_hand_computation_and_ignores_masked_channels():
    p = np.array([[[[0.8, 0.6], [0.3, 0.1]]]], np.float32)  # (1, 1, 2, 2): two pixels, two channels
    target = np.array([[[[1, 0], [0, 1]]]], np.float32)
    weight = np.array([[[[1, 0], [1, 0]]]], np.float32)  # channel 1 is not supervised
    loss = masked_segmentation_loss(dice_weight=0.5)
    bce_0 = (-math.log(0.8) - math.log(0.7)) / 2
    dice_0 = 1 - (2 * 0.8 + 1) / ((1 + 0) + (0.8 + 0.3) + 1)
    expected = (bce_0 + 0.0) / 2 + 0.5 * (dice_0 + 0.0) / 2
    got = float(loss(np.concatenate([target, weight], -1), p))
    assert got == pytest.approx(expected, rel=1e-5)
    # Whatever the masked channel predicts or says, the loss is the same.
    p_other, target_other = p.copy(), target.copy()
    p_other[..., 1] = [0.99, 0.01]
    target_other[..., 1] = [1, 0]
    assert float(loss(np.concatenate([target_other, weight], -1), p_other)) == pytest.approx(got, rel=1e-6)
    # No supervision at all: exactly zero.
    assert float(loss(np.concatenate([target, 0 * weight], -1), p)) == 0.0


@pytest.mark.parametrize("kwargs, match", [({"dice_weight": -1}, "dice_weight"), ({"smooth": 0}, "smooth")])
def test_masked_loss_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        masked_segmentation_loss(**kwargs)


def test_contract_build_train_step_save_load_segment(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = build_from_config(TINY, input_size_px=16)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=masked_segmentation_loss(), jit_compile=False)
    model.optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    x = rng.random((2, 16, 16, 3), dtype=np.float32)
    y = np.concatenate([(rng.random((2, 16, 16, 4)) > 0.5), np.ones((2, 16, 16, 4))], -1).astype(np.float32)
    before = [w.copy() for w in model.get_weights()]
    loss = float(np.asarray(model.train_on_batch(x, y)).reshape(-1)[0])
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))

    folder = write_unet_folder(tmp_path / "unet", model, TINY, metrics={"note": "test"}, splits={"a": {}})
    assert folder.config == TINY and folder.metrics == {"note": "test"} and folder.splits == {"a": {}}
    assert folder.version.startswith("unet-")
    segmenter = UNetSegmenter.load(folder.path, rbc_diameter_px=32)
    single_pass = UNetSegmenter(segmenter.model, dataclasses.replace(TINY, flip_averaging=False))
    trained_output = np.asarray(model(x[:1], training=False))[0]
    np.testing.assert_allclose(single_pass.predict_probabilities(x[0]), trained_output, atol=1e-5)
    mirrors = np.stack([x[0], x[0, ::-1], x[0, :, ::-1], x[0, ::-1, ::-1]])
    out = np.asarray(model(mirrors, training=False))
    averaged = (out[0] + out[1, ::-1] + out[2, :, ::-1] + out[3, ::-1, ::-1]) / 4
    np.testing.assert_allclose(segmenter.predict_probabilities(x[0]), averaged, atol=1e-5)
    assert segmenter.predict_probabilities(rng.random((21, 37, 3), dtype=np.float32)).shape == (21, 37, 4)
    segmentation = segmenter.segment(drawn_field())
    assert isinstance(segmentation, Segmentation) and segmentation.image_shape == (160, 160)
    assert segmentation.nucleus_mask.shape == (160, 160) and segmentation.rbc_diameter_px == 32
    assert isinstance(make_segmenter("unet", model_dir=folder.path), UNetSegmenter)


# --------------------------------------------------------------------------- config and model folder


def test_config_round_trips_through_a_dict_and_json():
    config = UNetConfig(filters=(8, 16, 32), rbc_diameter_px=40.0, thresholds=UNetThresholds(nucleus=0.4))
    assert UNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.depth == 2 and config.multiple_px == 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"architecture": "segnet"}, "architecture must be one of"),
        ({"channels": ("nucleus", "wbc")}, "channels must be"),
        ({"input_size_px": 20}, "input_size_px must be a positive multiple of 2\\*\\*depth = 8"),
        ({"working_rbc_diameter_px": 2}, "working_rbc_diameter_px"),
        ({"rbc_diameter_px": 0}, "rbc_diameter_px must be positive"),
        ({"max_upscale": 0.5}, "max_upscale"),
        ({"max_tile_px": 60}, "max_tile_px"),
        ({"tile_overlap_px": -1, "max_tile_px": 64}, "tile_overlap_px"),
        ({"thresholds": {"rbc": 1.0}}, "thresholds.rbc"),
        ({"postprocess": {"min_rbc_area_rbc": 0}}, "min_rbc_area_rbc must be positive"),
        ({"postprocess": {"platelet_exclusion_rbc": -1}}, "platelet_exclusion_rbc must be zero or positive"),
        ({"postprocess": {"min_platelet_area_rbc": 0.5}}, "min_platelet_area_rbc must be below"),
    ],
)
def test_config_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig.from_dict(kwargs)


@pytest.fixture(scope="module")
def tiny_unet_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-unet")
    write_unet_folder(path, build_from_config(TINY), TINY, metrics={"note": "untrained"})
    return path


def _copy_folder(source, target):
    import shutil

    return shutil.copytree(source, target)


def test_missing_folder_and_files_are_named(tmp_path, tiny_unet_dir):
    with pytest.raises(BadModelError, match="nowhere: U-Net model folder does not exist"):
        UNetSegmenter.load(tmp_path / "nowhere")
    broken = _copy_folder(tiny_unet_dir, tmp_path / "broken")
    (broken / "model.keras").unlink()
    with pytest.raises(BadModelError, match="is missing model.keras"):
        UNetSegmenter.load(broken)


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "config.json: not valid JSON"),
        ("[1, 2]", "config.json: expected a JSON object"),
        ('{"architecture": "cnn", "image_size": 224}', "config.json: not a U-Net segmentation model"),
        ('{"architecture": "unet", "channels": ["wbc"]}', "config.json: invalid U-Net config: channels must be"),
        ('{"architecture": "unet", "colour": "red"}', "config.json: invalid U-Net config: .*no field"),
    ],
)
def test_bad_config_is_named(tmp_path, tiny_unet_dir, content, match):
    folder = _copy_folder(tiny_unet_dir, tmp_path / "bad")
    (folder / "config.json").write_text(content)
    with pytest.raises(BadModelError, match=match):
        read_unet_folder(folder)


def test_bad_metrics_and_weights_are_named(tmp_path, tiny_unet_dir):
    folder = _copy_folder(tiny_unet_dir, tmp_path / "bad-metrics")
    (folder / "metrics.json").write_text("[]")
    with pytest.raises(BadModelError, match="metrics.json: expected a JSON object"):
        read_unet_folder(folder)
    folder = _copy_folder(tiny_unet_dir, tmp_path / "bad-weights")
    (folder / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(BadModelError, match="model.keras: cannot load the network"):
        UNetSegmenter.load(folder)


def test_weights_that_do_not_match_the_config_are_named(tmp_path, tiny_unet_dir):
    folder = _copy_folder(tiny_unet_dir, tmp_path / "three-channels")
    build_unet(filters=(4, 8), num_channels=3).save(folder / "model.keras")
    with pytest.raises(BadModelError, match="model.keras: network output .* does not have the 4 channels"):
        UNetSegmenter.load(folder)


def test_without_a_folder_the_packaged_default_is_used_or_the_option_named(tmp_path, monkeypatch, tiny_unet_dir):
    monkeypatch.setattr(unet_module, "DEFAULT_MODEL_DIR", tmp_path / "absent")
    with pytest.raises(BadModelError, match="--segmentation-model"):
        UNetSegmenter.load()
    with pytest.raises(BadModelError, match="no packaged default at .*absent"):
        make_segmenter("unet")
    monkeypatch.setattr(unet_module, "DEFAULT_MODEL_DIR", tiny_unet_dir)
    assert UNetSegmenter.load().folder.path == tiny_unet_dir


def test_the_packaged_default_if_present_is_a_valid_small_model_folder():
    folder = unet_module.DEFAULT_MODEL_DIR
    if not (folder / "model.keras").is_file():
        pytest.skip("no packaged default U-Net")
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 5 * 1024 * 1024
    packaged = read_unet_folder(folder)
    assert packaged.config.channels == CHANNELS
    for name, split in packaged.splits.items():
        assert not set(split["train"]) & set(split["heldout"]), name
    segmenter = make_segmenter("unet", rbc_diameter_px=32)
    assert segmenter.folder.path == folder
    assert isinstance(segmenter.segment(drawn_field()), Segmentation)


# --------------------------------------------------------------------------- segmenting


def _check_cell_structure(cell, image_shape):
    assert isinstance(cell, Cell) and cell.kind in ("wbc", "rbc", "platelet")
    r0, c0, r1, c1 = cell.bbox
    assert all(isinstance(v, int) for v in cell.bbox)
    assert 0 <= r0 < r1 <= image_shape[0] and 0 <= c0 < c1 <= image_shape[1]
    assert cell.mask.dtype == bool and cell.mask.shape == (r1 - r0, c1 - c0)
    assert cell.area_px == int(cell.mask.sum()) > 0
    assert r0 <= cell.centroid[0] < r1 and c0 <= cell.centroid[1] < c1
    assert isinstance(cell.counted, bool) and isinstance(cell.touches_border, bool)
    assert 0.0 < cell.visible_fraction <= 1.0


@pytest.mark.parametrize("scale", [1, 2])
def test_segment_returns_the_cells_of_a_drawn_field_like_the_classical_segmenter(scale):
    from smearflow.segmentation.classical import ClassicalConfig, ClassicalSegmenter

    image = drawn_field(scale)
    unet = _oracle_segmenter(rbc_diameter_px=32 * scale).segment(image)
    classical = ClassicalSegmenter(ClassicalConfig(rbc_diameter_px=32 * scale)).segment(image)
    for segmentation in (unet, classical):
        assert isinstance(segmentation, Segmentation)
        assert segmentation.image_shape == image.shape[:2]
        assert segmentation.nucleus_mask.shape == image.shape[:2] and segmentation.nucleus_mask.dtype == bool
        for cell in segmentation.cells:
            _check_cell_structure(cell, image.shape[:2])
    assert [len(unet.of_kind(k)) for k in ("wbc", "rbc", "platelet")] == [2, 3, 1]
    assert [unet.count(k) for k in ("wbc", "rbc", "platelet")] == [1, 3, 1]
    edge_cell = max(unet.of_kind("wbc"), key=lambda c: c.centroid[1])
    assert edge_cell.touches_border and not edge_cell.counted and edge_cell.visible_fraction < 1.0
    whole = min(unet.of_kind("wbc"), key=lambda c: c.centroid[1])
    assert whole.centroid == pytest.approx((60 * scale, 60 * scale), abs=1.0 * scale)
    assert whole.area_px == pytest.approx(math.pi * (22 * scale) ** 2, rel=0.08)
    assert unet.nucleus_mask.sum() == pytest.approx(math.pi * ((12 * scale) ** 2 + (10 * scale) ** 2), rel=0.1)


def test_probabilities_of_a_synthetic_smear_give_its_cells_in_the_classical_records():
    synthetic = pytest.importorskip("smearflow.synthetic")
    from smearflow.segmentation.classical import ClassicalConfig, ClassicalSegmenter

    smear = synthetic.make_smear(seed=1, shape=(240, 320), n_wbc=1, n_rbc=14, n_platelets=2, rbc_diameter_px=40.0)
    shape = smear.image.shape[:2]
    probabilities = np.zeros((*shape, 4), np.float32)
    probabilities[..., 0] = smear.nucleus_mask
    probabilities[..., 1] = smear.wbc_mask
    for truth in smear.truth:
        if truth.kind in ("rbc", "platelet"):
            channel = 2 if truth.kind == "rbc" else 3
            probabilities[..., channel] = np.maximum(
                probabilities[..., channel], _disc(shape, truth.centroid, truth.radius_px)
            )
    unet = cells_from_probabilities(probabilities, shape, smear.rbc_diameter_px)
    classical = ClassicalSegmenter(ClassicalConfig(rbc_diameter_px=smear.rbc_diameter_px)).segment(smear.image)
    for segmentation in (unet, classical):
        for cell in segmentation.cells:
            _check_cell_structure(cell, shape)
    assert unet.count("wbc") == smear.count("wbc") and unet.count("platelet") == smear.count("platelet")
    assert abs(unet.count("rbc") - smear.count("rbc")) <= 1
    assert {c.kind for c in unet.cells} == {c.kind for c in classical.cells} == {"wbc", "rbc", "platelet"}


def test_segment_estimates_the_diameter_when_none_is_given():
    segmentation = _oracle_segmenter().segment(drawn_field())
    assert segmentation.rbc_diameter_px > 0


def test_tiling_gives_the_same_probabilities_as_one_pass():
    field = normalise_field(drawn_field())
    whole = UNetSegmenter(ColourOracle(), UNetConfig()).predict_probabilities(field)
    tiled = UNetSegmenter(ColourOracle(), UNetConfig(max_tile_px=64, tile_overlap_px=8)).predict_probabilities(field)
    np.testing.assert_array_equal(whole, tiled)


def test_cells_from_probabilities_keeps_separate_white_cells_apart_and_drops_small_blobs():
    probabilities = np.zeros((100, 160, 4), np.float32)
    # Nuclei 34 px apart: farther than nucleus_merge_distance_rbc (1.0 D = 32 px), so two cells.
    touching = _disc((100, 160), (50, 40), 28) | _disc((100, 160), (50, 94), 28)
    probabilities[..., 1] = touching
    probabilities[..., 0] = _disc((100, 160), (50, 40), 10) | _disc((100, 160), (50, 94), 10)
    probabilities[..., 1] += _disc((100, 160), (50, 140), 8)  # a white-cell blob with no nucleus
    probabilities[..., 0] += _disc((100, 160), (85, 140), 2)  # a speck of nucleus
    segmentation = cells_from_probabilities(probabilities, (100, 160), 32.0)
    wbcs = sorted(segmentation.of_kind("wbc"), key=lambda c: c.centroid[1])
    assert len(wbcs) == 2
    assert wbcs[0].centroid[1] < 67 < wbcs[1].centroid[1]
    # The same cells with nuclei 24 px apart are taken for one cell with a lobed nucleus.
    probabilities[..., 0] = _disc((100, 160), (50, 45), 10) | _disc((100, 160), (50, 89), 10)
    assert len(cells_from_probabilities(probabilities, (100, 160), 32.0).of_kind("wbc")) == 1


def test_pinholes_in_a_nucleus_are_filled_but_not_large_gaps():
    probabilities = np.zeros((80, 80, 4), np.float32)
    probabilities[..., 1] = _disc((80, 80), (40, 40), 30)
    pinhole = _disc((80, 80), (30, 40), 2)
    gap = _disc((80, 80), (45, 40), 8)  # 201 px, more than 0.1 red-cell areas (80 px)
    probabilities[..., 0] = _disc((80, 80), (40, 40), 20) & ~pinhole & ~gap
    nucleus = cells_from_probabilities(probabilities, (80, 80), 32.0).nucleus_mask
    assert nucleus[30, 40] and not nucleus[45, 40]


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.zeros((8, 8, 3)), (8, 8), 10.0), "probabilities must have shape"),
        ((np.zeros((8, 8, 4)), (0, 8), 10.0), "image_shape must be"),
        ((np.zeros((8, 8, 4)), (8, 8), 0.0), "rbc_diameter_px must be positive"),
    ],
)
def test_cells_from_probabilities_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        cells_from_probabilities(*args)


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((32, 32), np.uint8), "image must be an RGB array of shape"),
        (np.zeros((8, 32, 3), np.uint8), "M, N >= 16"),
        (np.full((32, 32, 3), 2.0), "a float image must lie in \\[0, 1\\]"),
        (np.zeros((32, 32, 3), np.int32), "image must be uint8 or float"),
    ],
)
def test_segment_rejects_bad_images(image, match):
    with pytest.raises(ValueError, match=match):
        _oracle_segmenter(rbc_diameter_px=32).segment(image)


def test_segmenter_rejects_bad_diameters_and_fields_and_wrong_networks(tiny_unet_dir):
    with pytest.raises(ValueError, match="rbc_diameter_px must be positive. Received: rbc_diameter_px=-1"):
        UNetSegmenter(ColourOracle(), rbc_diameter_px=-1)
    with pytest.raises(ValueError, match="rbc_diameter_px must be positive. Received: rbc_diameter_px=0"):
        UNetSegmenter.load(tiny_unet_dir, rbc_diameter_px=0)
    with pytest.raises(ValueError, match="field must have shape \\(m, n, 3\\)"):
        _oracle_segmenter().predict_probabilities(np.zeros((8, 8)))
    wrong = UNetSegmenter(lambda x, training=False: np.zeros((1, 4, 4, 4), np.float32), UNetConfig())
    with pytest.raises(BadModelError, match="the network returned shape"):
        wrong.predict_probabilities(np.zeros((16, 16, 3), np.float32))


def test_normalise_field_puts_the_background_at_a_fixed_level_and_validates():
    field = normalise_field(drawn_field())
    assert field.dtype == np.float32 and field.shape == (160, 160, 3)
    np.testing.assert_allclose(field[0, 0], 0.8, atol=1e-6)
    with pytest.raises(ValueError, match="uint8 array. Received: shape=\\(4, 4\\)"):
        normalise_field(np.zeros((4, 4), np.uint8))


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
    image[_disc((120, 160), (30, 30), 16)] = PALETTE["rbc"]  # boxed
    image[_disc((120, 160), (90, 130), 16)] = PALETTE["rbc"]  # not boxed
    image[_disc((120, 160), (60, 80), 22)] = PALETTE["cytoplasm"]
    image[_disc((120, 160), (60, 80), 8)] = (100, 80, 200)  # a blue-violet nucleus
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
    image[_disc((64, 64), (32, 32), 10)] = PALETTE["rbc"]
    background = background_mask(normalise_field(image), 20.0)
    assert background[2, 2] and not background[32, 32] and not background[32, 43]
    with pytest.raises(ValueError, match="rbc_diameter_px must be positive"):
        background_mask(normalise_field(image), 0)
    with pytest.raises(ValueError, match="image_normalised must have shape"):
        background_mask(np.zeros((4, 4)), 10)
    assert rbc_diameter_from_boxes([(0, 0, 10, 10), (0, 0, 20, 20), (0, 0, 30, 30)]) == 20.0
    assert rbc_diameter_from_boxes([(0, 0, 10, 10)]) is None


# --------------------------------------------------------------------------- data folders


def _write_masks_dataset(root, n=3, size=48, mask_size=None):
    from PIL import Image

    from smearflow.imageio import write_rgb

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image = np.empty((size, size, 3), np.uint8)
        image[:] = BACKGROUND
        image[_disc((size, size), (size // 2, size // 2), size // 4)] = PALETTE["cytoplasm"]
        image[_disc((size, size), (size // 2, size // 2), size // 8)] = PALETTE["nucleus"]
        write_rgb(root / "images" / f"{i:03d}.png", image)
        m = mask_size or size
        mask = np.zeros((m, m), np.uint8)
        mask[_disc((m, m), (m // 2, m // 2), m // 4)] = 128
        mask[_disc((m, m), (m // 2, m // 2), m // 8)] = 255
        Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")
    return root


def _write_boxes_dataset(root, n=3, rbc_boxes=3):
    from smearflow.imageio import write_rgb

    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i in range(n):
        image = np.empty((64, 96, 3), np.uint8)
        image[:] = BACKGROUND
        objects = []
        for k in range(rbc_boxes):
            centre = (16, 16 + 30 * k)
            image[_disc((64, 96), centre, 10)] = PALETTE["rbc"]
            objects.append(("RBC", centre[1] - 10, centre[0] - 10, centre[1] + 10, centre[0] + 10))
        image[_disc((64, 96), (46, 48), 14)] = PALETTE["cytoplasm"]
        image[_disc((64, 96), (46, 48), 7)] = PALETTE["nucleus"]
        objects.append(("WBC", 34, 32, 62, 60))
        write_rgb(root / "images" / f"img{i}.jpg", image)
        xml = "".join(
            f"<object><name>{name}</name><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for name, x0, y0, x1, y1 in objects
        )
        (root / "annotations" / f"img{i}.xml").write_text(f"<annotation>{xml}</annotation>")
    return root


def test_load_mask_and_box_datasets_at_the_working_scale(tmp_path):
    masks = load_mask_dataset(_write_masks_dataset(tmp_path / "dataset1"), ["000", "001"], 64.0)
    assert [m.name for m in masks] == ["dataset1/000", "dataset1/001"]
    assert masks[0].image.shape == (24, 24, 3) and masks[0].target.shape == (24, 24, 4)
    assert masks[0].target[12, 12, 0] == 1 and masks[0].weight[0, 0, 2] == 0
    boxes = load_box_dataset(_write_boxes_dataset(tmp_path / "bccd"), ["img0"])
    assert boxes[0].source == "boxes" and boxes[0].image.shape == (64, 96, 3)  # D = 20 < 32: never enlarged
    assert boxes[0].target[46, 48, 1] == 1


def test_dataset_problems_name_the_file(tmp_path):
    bad_size = _write_masks_dataset(tmp_path / "bad-size", n=1, size=48, mask_size=40)
    with pytest.raises(BadDatasetError, match="000.png: mask is 40x40 pixels but its image 000.png is 48x48"):
        load_mask_dataset(bad_size, ["000"], 32.0)
    no_mask = _write_masks_dataset(tmp_path / "no-mask", n=1)
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
    boxes = _write_boxes_dataset(tmp_path / "boxes", n=1)
    (boxes / "annotations" / "img0.xml").unlink()
    with pytest.raises(BadDatasetError, match="annotations/img0.xml: no annotation for image img0.jpg"):
        load_box_dataset(boxes, ["img0"])
    with pytest.raises(BadDatasetError, match="no image named 'zzz'"):
        load_box_dataset(boxes, ["zzz"])
    few = _write_boxes_dataset(tmp_path / "few", n=1, rbc_boxes=1)
    with pytest.raises(BadDatasetError, match="no selected image has 3 red-cell boxes"):
        load_box_dataset(few, ["img0"])
    (few / "images" / "img0.jpg").write_bytes(b"garbage")
    with pytest.raises(BadDatasetError, match="img0.jpg: not a readable image"):
        load_box_dataset(few, ["img0"])
    with pytest.raises(BadDatasetError, match="no images/ folder"):
        load_box_dataset(tmp_path, ["img0"])


def test_patch_sampler_is_deterministic_and_mixes_sources(tmp_path):
    images = load_mask_dataset(_write_masks_dataset(tmp_path / "m"), ["000"], 32.0)
    images += load_box_dataset(_write_boxes_dataset(tmp_path / "b"), ["img0"])
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
    _write_masks_dataset(root / "dataset1", n=1)
    _write_boxes_dataset(root / "boxes", n=1)
    assert find_datasets(root, "masks") == [root / "dataset1"]
    assert find_datasets(root / "dataset1", "masks") == [root / "dataset1"]
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
