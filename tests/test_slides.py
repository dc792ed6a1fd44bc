import json
import logging

import numpy as np
import pytest

from smearflow.errors import BadSlideError
from smearflow.imageio import write_rgb
from smearflow.slides import read_slide_folder


def _field(folder, name):
    write_rgb(folder / name, np.zeros((4, 4, 3), np.uint8))


def test_slide_json_describes_the_slide(tmp_path):
    folder = tmp_path / "scan-17"
    folder.mkdir()
    _field(folder, "b.png")
    _field(folder, "a.jpg")
    meta = {"slide_id": "S-1", "patient_id": "P-0042", "collected_at": "2026-11-25T08:30:00+00:00", "notes": "n"}
    (folder / "slide.json").write_text(json.dumps(meta))
    info = read_slide_folder(folder)
    assert (info.slide_id, info.patient_id, info.collected_at, info.notes) == ("S-1", "P-0042", meta["collected_at"], "n")
    assert [p.rsplit("/", 1)[1] for p in info.field_paths] == ["a.jpg", "b.png"]


def test_without_slide_json_the_folder_name_is_the_id(tmp_path):
    folder = tmp_path / "scan-18"
    folder.mkdir()
    _field(folder, "f.bmp")
    info = read_slide_folder(folder)
    assert info.slide_id == "scan-18" and info.patient_id is None


def test_hidden_and_non_image_files_are_ignored_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "s"
    folder.mkdir()
    _field(folder, "f.tif")
    (folder / ".DS_Store").write_bytes(b"\0")
    (folder / "notes.txt").write_text("x")
    (folder / "sub").mkdir()
    with caplog.at_level(logging.WARNING):
        info = read_slide_folder(folder)
    assert len(info.field_paths) == 1
    assert ".DS_Store" in caplog.text and "notes.txt" in caplog.text and "sub" in caplog.text


def test_missing_path(tmp_path):
    with pytest.raises(BadSlideError, match="does not exist"):
        read_slide_folder(tmp_path / "nope")


def test_a_file_is_not_a_slide(tmp_path):
    _field(tmp_path, "f.png")
    with pytest.raises(BadSlideError, match="not a folder"):
        read_slide_folder(tmp_path / "f.png")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(BadSlideError, match="holds no image"):
        read_slide_folder(tmp_path / "empty")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"patient_id": 42}', "patient_id must be a string"),
        ('{"slide_id": "  "}', "slide_id is empty"),
        ('{"collected_at": "yesterday"}', "ISO 8601"),
    ],
)
def test_bad_slide_json(tmp_path, content, message):
    folder = tmp_path / "s"
    folder.mkdir()
    _field(folder, "f.png")
    (folder / "slide.json").write_text(content)
    with pytest.raises(BadSlideError, match=message) as info:
        read_slide_folder(folder)
    assert "slide.json" in str(info.value)


def test_unknown_keys_are_warned_about(tmp_path, caplog):
    folder = tmp_path / "s"
    folder.mkdir()
    _field(folder, "f.png")
    (folder / "slide.json").write_text('{"slide_id": "X", "stain": "MGG"}')
    with caplog.at_level(logging.WARNING):
        assert read_slide_folder(folder).slide_id == "X"
    assert "stain" in caplog.text
