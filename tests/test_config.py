import pytest

from smearflow.config import CropConfig, PipelineConfig


def test_pipeline_config_round_trips_through_a_dict():
    config = PipelineConfig(segmenter="unet", min_visible_fraction=0.4, crop=CropConfig(crop_size_px=128))
    assert PipelineConfig.from_dict(config.to_dict()) == config


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="has no field"):
        PipelineConfig.from_dict({"segmentr": "classical"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"segmenter": "magic"}, "segmenter must be"),
        ({"min_visible_fraction": 1.5}, "min_visible_fraction"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_pipeline_config_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PipelineConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"crop_size_px": 4}, "crop_size_px"), ({"crop_side_rbc_diameters": 0}, "crop_side_rbc_diameters")],
)
def test_crop_config_validates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CropConfig(**kwargs)
