"""Slide flags: each one, the thresholds, and the settings file."""

import json

import pytest

from smearflow.reporting.flags import DEFAULT_REFERENCE_RANGES, FlagConfig, is_uncertain, load_flag_config, slide_flags

DONE = [{"name": "f1.png", "status": "done", "error": None}]
NORMAL = {"neutrophil": 60, "lymphocyte": 30, "monocyte": 6, "eosinophil": 3, "basophil": 1}


def codes(flags):
    return [flag["code"] for flag in flags]


def test_a_normal_100_cell_differential_has_no_flag():
    assert slide_flags(NORMAL, DONE, uncertain_wbc=5, config=FlagConfig()) == []


def test_fewer_than_100_white_cells_is_flagged_and_platelets_do_not_count():
    counts = {"neutrophil": 59, "lymphocyte": 30, "monocyte": 6, "eosinophil": 3, "basophil": 1, "platelet": 5}
    flags = slide_flags(counts, DONE, 0, FlagConfig())
    assert codes(flags) == ["too-few-wbc"] and "99 white cells" in flags[0]["message"]
    assert slide_flags(counts, DONE, 0, FlagConfig(min_wbc=99)) == []


def test_many_uncertain_cells_is_flagged_above_the_fraction():
    assert codes(slide_flags(NORMAL, DONE, 21, FlagConfig())) == ["many-uncertain"]
    assert slide_flags(NORMAL, DONE, 20, FlagConfig()) == []  # 20% is not more than 20%


def test_failed_and_flagged_fields_are_named():
    fields = DONE + [
        {"name": "bad.png", "status": "failed", "error": "bad.png: truncated"},
        {"name": "blank.png", "status": "flagged", "error": "blank.png: not counted: blank"},
    ]
    (flag,) = slide_flags(NORMAL, fields, 0, FlagConfig())
    assert flag["code"] == "fields-not-counted"
    assert flag["message"] == "2 of 3 fields not counted: bad.png (failed), blank.png (flagged)"


def test_many_fields_left_out_are_shortened():
    fields = [{"name": f"f{i}.png", "status": "failed", "error": "x"} for i in range(8)]
    (flag,) = [f for f in slide_flags(NORMAL, fields, 0, FlagConfig()) if f["code"] == "fields-not-counted"]
    assert flag["message"].endswith("and 3 more")


def test_classes_outside_their_reference_range_are_flagged_with_the_interval():
    counts = dict(NORMAL, neutrophil=80, lymphocyte=10)
    flags = slide_flags(counts, DONE, 0, FlagConfig())
    assert [(f["code"], f["class"]) for f in flags] == [("out-of-range", "lymphocyte"), ("out-of-range", "neutrophil")]
    assert "below the reference range 20-45%" in flags[0]["message"] and "95% CI" in flags[0]["message"]
    ranges = dict(DEFAULT_REFERENCE_RANGES, neutrophil=(40.0, 85.0), lymphocyte=(5.0, 45.0))
    assert slide_flags(counts, DONE, 0, FlagConfig(reference_ranges_percent=ranges)) == []


def test_a_slide_without_white_cells_has_only_the_count_flag():
    assert codes(slide_flags({}, DONE, 0, FlagConfig())) == ["too-few-wbc"]


def test_a_cell_is_uncertain_when_the_pipeline_marked_it_or_below_the_labs_threshold():
    config = FlagConfig(uncertain_below=0.5)
    assert is_uncertain(0.4, False, config) and not is_uncertain(0.6, False, config)
    assert is_uncertain(0.9, True, config)  # below the model's own (calibrated) threshold
    assert not is_uncertain(None, False, config)


def test_the_config_round_trips_through_a_dict_and_a_file(tmp_path):
    config = FlagConfig(min_wbc=200, reference_ranges_percent={"neutrophil": [50, 70]})
    assert FlagConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({"min_wbc": 200, "reference_ranges_percent": {"neutrophil": [50, 70]}}))
    assert load_flag_config(path) == config
    assert load_flag_config(None) == FlagConfig()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"min_wbc": 0}, "min_wbc must be an integer of at least 1"),
        ({"min_wbc": True}, "min_wbc must be an integer"),
        ({"uncertain_below": 1.5}, "uncertain_below must be a number in"),
        ({"max_uncertain_fraction": "x"}, "max_uncertain_fraction must be a number in"),
        ({"reference_ranges_percent": [1, 2]}, "reference_ranges_percent must map a class"),
        ({"reference_ranges_percent": {"blast": [0, 1]}}, "unknown class"),
        ({"reference_ranges_percent": {"neutrophil": [70, 40]}}, r"reference_ranges_percent\['neutrophil'\] must be"),
        ({"reference_ranges_percent": {"neutrophil": [0]}}, r"must be \[low, high\]"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        FlagConfig.from_dict(settings)


def test_a_bad_settings_file_names_itself(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(ValueError, match="missing.json: cannot read"):
        load_flag_config(missing)
    listed = tmp_path / "list.json"
    listed.write_text("[1]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        load_flag_config(listed)
    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"min_cells": 3}')
    with pytest.raises(ValueError, match="unknown.json: FlagConfig has no field"):
        load_flag_config(unknown)
