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
        ('{"patient_id": 42}', "patient_id: Input should be a valid string"),
        ('{"slide_id": "  "}', "slide_id: must not be empty"),
        ('{"slide_id": "S-1\\u0000"}', "slide_id: must hold printable characters only"),
        ('{"patient_id": "P\\u0007"}', "patient_id: must hold printable characters only"),
        ('{"slide_id": "../../etc"}', "slide_id: must not contain a path separator"),
        ('{"slide_id": "a\\\\b"}', "slide_id: must not contain a path separator"),
        ('{"slide_id": ".."}', "slide_id: must not contain a path separator or be"),
        ('{"slide_id": "' + "x" * 65 + '"}', "slide_id: must be at most 64 characters"),
        ('{"notes": "ok\\u0000"}', "notes: must not contain control characters"),
        ('{"notes": "' + "n" * 2001 + '"}', "notes: String should have at most 2000 characters"),
        ('{"collected_at": "yesterday"}', "ISO 8601"),
        ("\xff\xfe", "not valid JSON"),
    ],
)
def test_bad_slide_json(tmp_path, content, message):
    folder = tmp_path / "s"
    folder.mkdir()
    _field(folder, "f.png")
    (folder / "slide.json").write_bytes(content.encode("utf-8", "surrogateescape") if "\xff" not in content else b"\xff\xfe")
    with pytest.raises(BadSlideError, match=message) as info:
        read_slide_folder(folder)
    assert "slide.json" in str(info.value)
    str(info.value).encode("utf-8")  # printable and storable whatever the file held


def test_notes_keep_newlines_and_tabs_and_ids_are_stripped(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    _field(folder, "f.png")
    (folder / "slide.json").write_text(json.dumps({"slide_id": " S-9 ", "notes": "line 1\n\tline 2", "collected_at": "2026-11-25"}))
    info = read_slide_folder(folder)
    assert (info.slide_id, info.notes, info.collected_at) == ("S-9", "line 1\n\tline 2", "2026-11-25")


def test_a_slide_json_too_large_is_refused(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    _field(folder, "f.png")
    (folder / "slide.json").write_text(json.dumps({"notes": "x" * 70_000}))
    with pytest.raises(BadSlideError, match="larger than 65536 bytes"):
        read_slide_folder(folder)


def test_a_linked_slide_folder_is_refused_and_its_target_never_read(tmp_path):
    target = tmp_path / "outside"
    target.mkdir()
    _field(target, "f.png")
    (tmp_path / "inbox").mkdir()
    link = tmp_path / "inbox" / "S-LINK"
    link.symlink_to(target)
    with pytest.raises(BadSlideError, match="is a symbolic link; slide folders are not followed"):
        read_slide_folder(link)


def test_a_linked_slide_json_is_refused(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    _field(folder, "f.png")
    outside = tmp_path / "elsewhere.json"
    outside.write_text('{"slide_id": "STOLEN"}')
    (folder / "slide.json").symlink_to(outside)
    with pytest.raises(BadSlideError, match="slide.json: is a symbolic link"):
        read_slide_folder(folder)


def test_a_linked_field_is_listed_so_that_reading_it_fails_by_name(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    _field(folder, "a.png")
    _field(tmp_path, "outside.png")
    (folder / "b.png").symlink_to(tmp_path / "outside.png")
    (folder / "sub.png").symlink_to(tmp_path, target_is_directory=True)
    info = read_slide_folder(folder)
    assert [p.rsplit("/", 1)[1] for p in info.field_paths] == ["a.png", "b.png", "sub.png"]


def test_too_many_fields_are_refused(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    for i in range(4):
        _field(folder, f"f{i}.png")
    assert len(read_slide_folder(folder, max_fields=4).field_paths) == 4
    with pytest.raises(BadSlideError, match="holds 4 images; a slide may hold at most 3 fields"):
        read_slide_folder(folder, max_fields=3)
    with pytest.raises(ValueError, match="max_fields must be at least 1"):
        read_slide_folder(folder, max_fields=0)


def test_a_folder_name_that_is_not_a_valid_id_needs_slide_json(tmp_path):
    import os

    folder = tmp_path / os.fsdecode(b"scan-\xff")
    folder.mkdir()
    _field(folder, "f.png")
    with pytest.raises(BadSlideError, match="the folder name cannot be a slide id") as info:
        read_slide_folder(folder)
    str(info.value).encode("utf-8")
    (folder / "slide.json").write_text('{"slide_id": "S-OK"}')
    assert read_slide_folder(folder).slide_id == "S-OK"


def test_unknown_keys_are_warned_about(tmp_path, caplog):
    folder = tmp_path / "s"
    folder.mkdir()
    _field(folder, "f.png")
    (folder / "slide.json").write_text('{"slide_id": "X", "stain": "MGG"}')
    with caplog.at_level(logging.WARNING):
        assert read_slide_folder(folder).slide_id == "X"
    assert "stain" in caplog.text
