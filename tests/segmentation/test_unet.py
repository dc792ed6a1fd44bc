"""The U-Net segmenter: network contract, loss masking, config, model folder, cells from probabilities, errors."""

import dataclasses
import json
import math

import numpy as np
import pytest
from unet_drawing import ColourOracle, disc, drawn_field

from smearflow.errors import BadModelError
from smearflow.segmentation import Segmentation, make_segmenter
from smearflow.segmentation.unet import (
    CHANNELS,
    UNetConfig,
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
from smearflow.segmentation.unet import folder as folder_module
from smearflow.segmentation.unet.network import working_field
from smearflow.types import Cell

TINY = UNetConfig(filters=(4, 8), input_size_px=16)


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
    assert folder.config == TINY and folder.metrics == {"note": "test"}
    assert folder.datasets() == {"a": {"path": None, "layout": None, "train": [], "heldout": []}}
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
    monkeypatch.setattr(folder_module, "DEFAULT_MODEL_DIR", tmp_path / "absent")
    with pytest.raises(BadModelError, match="--segmentation-model"):
        UNetSegmenter.load()
    with pytest.raises(BadModelError, match="no packaged default at .*absent"):
        make_segmenter("unet")
    monkeypatch.setattr(folder_module, "DEFAULT_MODEL_DIR", tiny_unet_dir)
    assert UNetSegmenter.load().folder.path == tiny_unet_dir


def test_the_packaged_default_if_present_is_a_valid_small_model_folder():
    folder = folder_module.DEFAULT_MODEL_DIR
    if not (folder / "model.keras").is_file():
        pytest.skip("no packaged default U-Net")
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 5 * 1024 * 1024
    packaged = read_unet_folder(folder)
    assert packaged.config.channels == CHANNELS
    for name, split in packaged.datasets().items():
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
                probabilities[..., channel], disc(shape, truth.centroid, truth.radius_px)
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
    touching = disc((100, 160), (50, 40), 28) | disc((100, 160), (50, 94), 28)
    probabilities[..., 1] = touching
    probabilities[..., 0] = disc((100, 160), (50, 40), 10) | disc((100, 160), (50, 94), 10)
    probabilities[..., 1] += disc((100, 160), (50, 140), 8)  # a white-cell blob with no nucleus
    probabilities[..., 0] += disc((100, 160), (85, 140), 2)  # a speck of nucleus
    segmentation = cells_from_probabilities(probabilities, (100, 160), 32.0)
    wbcs = sorted(segmentation.of_kind("wbc"), key=lambda c: c.centroid[1])
    assert len(wbcs) == 2
    assert wbcs[0].centroid[1] < 67 < wbcs[1].centroid[1]
    # The same cells with nuclei 24 px apart are taken for one cell with a lobed nucleus.
    probabilities[..., 0] = disc((100, 160), (50, 45), 10) | disc((100, 160), (50, 89), 10)
    assert len(cells_from_probabilities(probabilities, (100, 160), 32.0).of_kind("wbc")) == 1


def test_pinholes_in_a_nucleus_are_filled_but_not_large_gaps():
    probabilities = np.zeros((80, 80, 4), np.float32)
    probabilities[..., 1] = disc((80, 80), (40, 40), 30)
    pinhole = disc((80, 80), (30, 40), 2)
    gap = disc((80, 80), (45, 40), 8)  # 201 px, more than 0.1 red-cell areas (80 px)
    probabilities[..., 0] = disc((80, 80), (40, 40), 20) & ~pinhole & ~gap
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


def test_working_field_scales_to_the_working_diameter_within_max_upscale():
    image = drawn_field()
    assert working_field(image, 32.0, 32.0, 1.0) is image
    assert working_field(image, 64.0, 32.0, 1.0).shape == (80, 80, 3)
    assert working_field(image, 16.0, 32.0, 1.0) is image  # never enlarged beyond max_upscale
    enlarged = working_field(image, 16.0, 32.0, 1.5)
    assert enlarged.shape == (240, 240, 3) and enlarged.dtype == np.uint8
