"""``smearflow check-fields`` on generated fields, registered on a fresh Typer app."""

import json
import os

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from smearflow.commands import quality
from smearflow.imageio import write_rgb
from smearflow.synthetic import make_smear


def _app():
    app = typer.Typer()

    @app.callback()
    def main():
        """Test shell: sub-commands only."""

    quality.register(app)
    return app


def run(*args):
    return CliRunner().invoke(_app(), ["check-fields", *[str(a) for a in args]], env={"COLUMNS": "400"})


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    for seed in range(2):
        write_rgb(folder / f"field_{seed}.png", make_smear(seed).image)
    (folder / "notes.txt").write_text("not a field")
    return folder


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    from scipy import ndimage

    folder = tmp_path_factory.mktemp("mixed")
    smear = make_smear(3).image
    write_rgb(folder / "a_good.png", smear)
    write_rgb(folder / "b_blank.png", np.full((480, 640, 3), 250, np.uint8))
    blurred = ndimage.gaussian_filter(smear.astype(float), (8, 8, 0))
    rng = np.random.default_rng(0)
    write_rgb(folder / "c_blurred.png", np.clip(blurred + rng.normal(0, 2, blurred.shape), 0, 255).astype(np.uint8))
    grey = np.repeat(np.round(smear @ [0.299, 0.587, 0.114]).astype(np.uint8)[..., None], 3, axis=2)
    write_rgb(folder / "d_grey.png", grey)
    (folder / "e_broken.png").write_bytes(b"not a PNG")
    return folder


def test_good_fields_pass_with_status_0(good_folder):
    result = run(good_folder)
    assert result.exit_code == 0, result.output
    assert result.output.count("usable ") == 2
    assert "rbc_count=" in result.output and "edge_blur_working_px=" in result.output
    assert "2 fields: 2 usable, 0 flagged, 0 unreadable" in result.output
    assert "notes.txt" not in result.output


def test_flagged_and_unreadable_fields_are_reported_and_the_command_goes_on(mixed_folder):
    result = run(mixed_folder)
    assert result.exit_code == 1
    output = result.output
    assert "5 fields: 1 usable, 3 flagged, 1 unreadable" in output
    assert "blank field (no contrast: intensity range" in output
    assert "out of focus (sharpest edges blurred over" in output
    assert "no stain colour, a grey image" in output
    assert "e_broken.png: not a readable image" in output
    assert "min_edge_blur_working_px" not in output and "max_edge_blur_working_px = 1.1" in output


def test_json_gives_every_field_and_the_summary(mixed_folder, good_folder):
    result = run(mixed_folder, good_folder / "field_0.png", "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    by_name = {os.path.basename(f["field"]): f for f in report["fields"]}
    assert [by_name[n]["status"] for n in ("a_good.png", "b_blank.png", "c_blurred.png", "d_grey.png", "e_broken.png")] == [
        "usable",
        "flagged",
        "flagged",
        "flagged",
        "unreadable",
    ]
    assert by_name["field_0.png"]["status"] == "usable"
    assert by_name["b_blank.png"]["reasons"][0].startswith("blank field (no contrast")
    assert set(by_name["b_blank.png"]["measures"]) == {
        "shrink_factor",
        "background_brightness",
        "intensity_range",
        "neighbour_correlation",
        "rbc_count",
    }
    assert by_name["e_broken.png"]["error"].endswith("not a readable image (not JPEG, PNG, TIFF or BMP, or corrupt)")
    summary = report["summary"]
    assert (summary["fields"], summary["usable"], summary["flagged"], summary["unreadable"]) == (6, 2, 3, 1)
    assert summary["by_reason"] == {"blank field": 1, "out of focus": 1, "no stain colour, a grey image": 1}
    blur = summary["measures"]["edge_blur_working_px"]
    assert blur["threshold"] == "max_edge_blur_working_px = 1.1" and blur["fields"] == 4
    assert blur["closest"] == blur["max"] and blur["margin"] < 0
    brightness = summary["measures"]["background_brightness"]
    assert brightness["closest"] == brightness["min"] and brightness["fields"] == 5


def test_red_cells_are_not_counted_when_asked(good_folder):
    result = run(good_folder / "field_1.png", "--no-count-red-cells", "--json")
    assert result.exit_code == 0
    (field,) = json.loads(result.output)["fields"]
    assert "rbc_count" not in field["measures"]
    assert "rbc_count" not in json.loads(result.output)["summary"]["measures"]


def test_missing_paths_links_and_empty_folders_are_unreadable(tmp_path, good_folder):
    (tmp_path / "empty").mkdir()
    (tmp_path / "link.png").symlink_to(good_folder / "field_0.png")
    result = run(tmp_path / "absent.png", tmp_path / "empty", tmp_path / "link.png", "--json")
    assert result.exit_code == 1
    errors = [f["error"] for f in json.loads(result.output)["fields"]]
    assert any(e.endswith("empty: folder holds no image (JPEG, PNG, TIFF or BMP)") for e in errors)
    assert any(e.endswith("absent.png: no such image file") for e in errors)
    assert any(e.endswith("link.png: is a symbolic link; links are not followed") for e in errors)


def test_a_field_name_that_is_not_utf8_is_printed_escaped(tmp_path):
    path = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"field_\xff.png"))
    write_rgb(path, make_smear(5).image)
    result = run(path, "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["fields"][0]["field"].endswith("field_\\xff.png")


def test_no_path_is_a_usage_error():
    assert run().exit_code == 2
