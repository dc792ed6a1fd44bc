"""Watcher completeness logic with a fake clock, and one run on real filesystem events."""

import threading
import time

import pytest

from smearflow.errors import TransientError
from smearflow.worker.watcher import LINK_SIGNATURE, InboxScanner, InboxWatcher, folder_signature, is_complete


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _field(folder, name="f0.png", data=b"png"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def scanner_with(tmp_path):
    def make(take=None, settle=10.0, **kwargs):
        taken = []
        clock = Clock()
        scanner = InboxScanner(
            tmp_path / "inbox", take or taken.append, settle_seconds=settle, clock=clock, **kwargs
        )
        (tmp_path / "inbox").mkdir(exist_ok=True)
        return scanner, clock, taken

    return make


def test_is_complete_rules(tmp_path):
    assert is_complete(tmp_path, (("slide.json", 2, 1),), 0.0, 30)
    assert not is_complete(tmp_path, (("f.png", 3, 1),), 29.9, 30)
    assert is_complete(tmp_path, (("f.png", 3, 1),), 30.0, 30)
    assert not is_complete(tmp_path, (), 1e6, 30)  # an empty folder waits for empty_seconds
    assert not is_complete(tmp_path, (), 299, 30, empty_seconds=300)
    assert is_complete(tmp_path, (), 300, 30, empty_seconds=300)
    assert is_complete(tmp_path, LINK_SIGNATURE, 0.0, 30)


def test_folder_signature_sees_size_changes_and_survives_a_vanished_folder(tmp_path):
    folder = _field(tmp_path / "s")
    before = folder_signature(folder)
    (folder / "f0.png").write_bytes(b"png and more")
    assert folder_signature(folder) != before
    assert folder_signature(tmp_path / "gone") == ()


def test_folder_signature_follows_no_link_and_reads_a_bounded_number_of_entries(tmp_path):
    outside = _field(tmp_path / "outside")
    folder = _field(tmp_path / "s")
    (folder / "link.png").symlink_to(outside / "f0.png")
    names = [name for name, _, _ in folder_signature(folder)]
    assert names == ["f0.png", "link.png"]
    link = tmp_path / "linked-folder"
    link.symlink_to(outside)
    assert folder_signature(link) == LINK_SIGNATURE
    for i in range(5):
        _field(folder, f"extra{i}.png")
    assert len(folder_signature(folder, max_entries=3)) == 3


def test_slide_json_makes_a_folder_complete_at_once(tmp_path, scanner_with):
    scanner, clock, taken = scanner_with()
    folder = _field(tmp_path / "inbox" / "S-1")
    (folder / "slide.json").write_text("{}")
    assert scanner.scan() == [folder]
    assert taken == [folder]


def test_a_folder_without_slide_json_waits_until_settled(tmp_path, scanner_with):
    scanner, clock, taken = scanner_with(settle=10)
    folder = _field(tmp_path / "inbox" / "S-2")
    assert scanner.scan() == []
    clock.now += 6
    _field(folder, "f1.png")  # still copying: the timer restarts
    assert scanner.scan() == []
    clock.now += 6
    assert scanner.scan() == []
    assert scanner.seconds_until_next_check(300) == pytest.approx(4.0)
    clock.now += 4
    assert scanner.scan() == [folder]
    assert scanner.scan() == []  # taken once


def test_hidden_empty_and_ignored_folders_are_not_taken(tmp_path, scanner_with):
    done = tmp_path / "inbox" / "done"
    scanner, clock, taken = scanner_with(settle=0, ignore=[done])
    _field(tmp_path / "inbox" / ".partial")
    (tmp_path / "inbox" / "empty").mkdir()
    _field(done / "old")
    _field(tmp_path / "inbox" / "real")
    (tmp_path / "inbox" / "loose-file.png").write_bytes(b"x")
    clock.now += 1
    assert [f.name for f in scanner.scan()] == ["real"]
    assert scanner.seconds_until_next_check(600) == pytest.approx(300)  # the empty folder is rejected then


def test_an_empty_folder_is_taken_once_it_stayed_empty_for_long(tmp_path, scanner_with):
    scanner, clock, taken = scanner_with(settle=1, empty_seconds=60)
    empty = tmp_path / "inbox" / "forgotten"
    empty.mkdir()
    assert scanner.scan() == []
    clock.now += 59
    assert scanner.scan() == []
    clock.now += 1
    assert scanner.scan() == [empty]


def test_a_link_in_the_inbox_is_taken_at_once_without_reading_its_target(tmp_path, scanner_with):
    scanner, clock, taken = scanner_with(settle=30)
    outside = _field(tmp_path / "outside")
    link = tmp_path / "inbox" / "S-LINK"
    link.symlink_to(outside)
    dangling = tmp_path / "inbox" / "S-GONE"
    dangling.symlink_to(tmp_path / "nowhere")
    assert scanner.scan() == [dangling, link]


def test_a_rescan_hands_folders_over_again_and_gone_folders_are_forgotten(tmp_path, scanner_with):
    scanner, clock, taken = scanner_with(settle=0)
    folder = _field(tmp_path / "inbox" / "S-3")
    clock.now += 1
    scanner.scan()
    scanner.forget_handled()
    clock.now += 1
    assert scanner.scan() == [folder]  # the database, not the scanner, decides whether to enqueue
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    scanner.scan()
    assert scanner.handled == set() and scanner.pending == {}


def test_a_transient_failure_is_retried_later(tmp_path, scanner_with):
    calls = []

    def take(folder):
        calls.append(folder)
        if len(calls) == 1:
            raise TransientError("broker down")

    scanner, clock, _ = scanner_with(take=take, settle=0, retry_seconds=5)
    folder = _field(tmp_path / "inbox" / "S-4")
    clock.now += 1
    assert scanner.scan() == []
    clock.now += 1
    assert scanner.scan() == []  # not before retry_seconds
    assert scanner.seconds_until_next_check(300) == pytest.approx(4.0)
    clock.now += 4
    assert scanner.scan() == [folder]
    assert len(calls) == 2


def test_an_unexpected_failure_does_not_stop_the_inbox(tmp_path, scanner_with, caplog):
    def take(folder):
        if folder.name == "bad":
            raise RuntimeError("boom")

    scanner, clock, _ = scanner_with(take=take, settle=0)
    _field(tmp_path / "inbox" / "bad")
    good = _field(tmp_path / "inbox" / "good")
    clock.now += 1
    assert scanner.scan() == [good]
    assert "could not be enqueued" in caplog.text


def test_scanner_and_watcher_validate(tmp_path):
    with pytest.raises(ValueError, match="settle_seconds must not be negative"):
        InboxScanner(tmp_path, print, settle_seconds=-1)
    with pytest.raises(ValueError, match="retry_seconds must not be negative"):
        InboxScanner(tmp_path, print, retry_seconds=-1)
    with pytest.raises(ValueError, match="empty_seconds must not be negative"):
        InboxScanner(tmp_path, print, empty_seconds=-1)
    with pytest.raises(ValueError, match="max_entries must be at least 1"):
        InboxScanner(tmp_path, print, max_entries=0)
    with pytest.raises(ValueError, match="rescan_seconds must be positive"):
        InboxWatcher(InboxScanner(tmp_path, print), rescan_seconds=0)
    with pytest.raises(ValueError, match="reconcile_seconds must be positive"):
        InboxWatcher(InboxScanner(tmp_path, print), reconcile_seconds=0)


def test_missing_inbox_is_reported_not_fatal(tmp_path, caplog):
    scanner = InboxScanner(tmp_path / "missing", print)
    assert scanner.scan() == []
    assert "does not exist" in caplog.text


@pytest.mark.parametrize("polling", [False, True])
def test_watcher_takes_a_folder_dropped_while_running_and_one_dropped_before(tmp_path, polling):
    inbox = tmp_path / "inbox"
    before = _field(inbox / "before")
    (before / "slide.json").write_text("{}")
    taken = []
    scanner = InboxScanner(inbox, taken.append, settle_seconds=0.3)
    watcher = InboxWatcher(scanner, rescan_seconds=60, polling=polling)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        _field(inbox / "during")
        deadline = time.monotonic() + 10
        while len(taken) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.request_stop()
        thread.join(timeout=10)
    assert sorted(f.name for f in taken) == ["before", "during"]
    assert not thread.is_alive()


def test_the_watcher_reconciles_at_start_and_survives_a_failing_reconciliation(tmp_path, caplog):
    calls = []

    def reconcile():
        calls.append(time.monotonic())
        raise TransientError("database down")

    watcher = InboxWatcher(InboxScanner(tmp_path / "inbox", print), reconcile=reconcile, reconcile_seconds=0.2)
    thread = threading.Thread(target=watcher.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.request_stop()
        thread.join(timeout=10)
    assert len(calls) >= 2 and "reconciliation failed" in caplog.text


def test_a_folder_that_leaves_while_being_taken_is_skipped_quietly(tmp_path, scanner_with, caplog):
    def take(folder):
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
        raise ValueError("folder must be a slide folder")

    scanner, clock, _ = scanner_with(take=take, settle=0)
    _field(tmp_path / "inbox" / "moving")
    clock.now += 1
    assert scanner.scan() == []
    assert "could not be enqueued" not in caplog.text
