"""Moving finished slide folders to done/ and failed/."""

from datetime import UTC, datetime

import pytest

from smearflow.worker.folders import ERROR_FILE, error_report, is_in_folder, move_slide_folder, unique_destination


def _slide(path):
    path.mkdir(parents=True)
    (path / "f0.png").write_bytes(b"png")
    return path


def test_done_folder_is_moved_and_loses_a_stale_error_file(tmp_path):
    folder = _slide(tmp_path / "inbox" / "S-1")
    (folder / ERROR_FILE).write_text("old failure")
    moved = move_slide_folder(folder, tmp_path / "done")
    assert moved == tmp_path / "done" / "S-1"
    assert not folder.exists() and (moved / "f0.png").is_file()
    assert not (moved / ERROR_FILE).exists()
    assert is_in_folder(moved, tmp_path / "done")


def test_failed_folder_gets_its_error_file(tmp_path):
    folder = _slide(tmp_path / "inbox" / "S-2")
    report = error_report("S-2", "BadSlideError: no image", attempts=2, now=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    moved = move_slide_folder(folder, tmp_path / "failed", report)
    text = (moved / ERROR_FILE).read_text()
    assert text.startswith("slide: S-2\nfailed at: 2026-01-02T03:04:05+00:00\nattempts: 2\n")
    assert "BadSlideError: no image" in text


def test_a_taken_name_gets_a_suffix(tmp_path):
    (tmp_path / "done" / "S-1").mkdir(parents=True)
    (tmp_path / "done" / "S-1-2").mkdir()
    assert unique_destination(tmp_path / "done", "S-1") == tmp_path / "done" / "S-1-3"
    moved = move_slide_folder(_slide(tmp_path / "inbox" / "S-1"), tmp_path / "done")
    assert moved.name == "S-1-3"


def test_moving_a_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="slide folder does not exist"):
        move_slide_folder(tmp_path / "nope", tmp_path / "done")


@pytest.mark.parametrize("name", ["", "a/b", ".."])
def test_unique_destination_needs_a_plain_name(tmp_path, name):
    with pytest.raises(ValueError, match="name must be a plain folder name"):
        unique_destination(tmp_path, name)


def test_error_report_without_error_or_attempts():
    text = error_report("S", None)
    assert "attempts" not in text and "unknown error" in text


def test_a_linked_slide_folder_is_moved_as_a_link_and_its_target_never_touched(tmp_path):
    target = _slide(tmp_path / "outside" / "data")
    (tmp_path / "inbox").mkdir()
    link = tmp_path / "inbox" / "S-LINK"
    link.symlink_to(target)
    moved = move_slide_folder(link, tmp_path / "failed", "rejected: a symbolic link")
    assert moved == tmp_path / "failed" / "S-LINK"
    assert (moved / "S-LINK").is_symlink() and (moved / ERROR_FILE).read_text() == "rejected: a symbolic link"
    assert sorted(p.name for p in target.iterdir()) == ["f0.png"]  # no error.txt written into the target


def test_an_error_file_planted_as_a_link_is_replaced_not_followed(tmp_path):
    folder = _slide(tmp_path / "inbox" / "S-3")
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    (folder / ERROR_FILE).symlink_to(outside)
    moved = move_slide_folder(folder, tmp_path / "failed", "the real report")
    assert outside.read_text() == "keep me"
    assert not (moved / ERROR_FILE).is_symlink() and (moved / ERROR_FILE).read_text() == "the real report"


def test_a_dangling_link_in_the_destination_is_not_overwritten(tmp_path):
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "S-4").symlink_to(tmp_path / "gone")
    moved = move_slide_folder(_slide(tmp_path / "inbox" / "S-4"), tmp_path / "done")
    assert moved.name == "S-4-2" and (tmp_path / "done" / "S-4").is_symlink()
