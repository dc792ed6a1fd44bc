"""Registering a slide folder and sending its task once; rejecting what is not a slide."""

import os

import pytest

from smearflow.db import lifecycle, repository, session_scope
from smearflow.db.models import RejectedFolder
from smearflow.errors import TransientError
from smearflow.slides import read_slide_folder
from smearflow.worker.enqueue import celery_sender, enqueue_slide_folder, reject_folder
from worker_testdata import write_slide


class Sender:
    def __init__(self, fail=False):
        self.sent = []
        self.fail = fail

    def __call__(self, slide_id, done_dir, failed_dir):
        if self.fail:
            raise ConnectionError("Error 111 connecting to redis:6379. Connection refused.")
        self.sent.append((slide_id, done_dir, failed_dir))


def _status(factory, code):
    with session_scope(factory) as session:
        slide = repository.get_slide(session, code)
        return None if slide is None else (slide.status, slide.attempts, slide.error, slide.folder)


def _rejections(factory):
    from sqlalchemy import select

    with session_scope(factory) as session:
        return [(r.folder, r.slide_code, r.reason, r.moved_to) for r in session.scalars(select(RejectedFolder).order_by(RejectedFolder.id))]


def test_a_new_folder_is_registered_then_sent(tmp_path, db_factory):
    folder = write_slide(tmp_path / "inbox" / "S-1", slide_json={"slide_id": "S-100", "patient_id": "P-9"})
    send = Sender()
    outcome = enqueue_slide_folder(folder, db_factory, send, done_dir=tmp_path / "done", failed_dir=tmp_path / "failed")
    assert (outcome.slide_id, outcome.action, outcome.status, outcome.reason) == ("S-100", "enqueued", "queued", None)
    assert send.sent == [("S-100", str(tmp_path / "done"), str(tmp_path / "failed"))]
    assert _status(db_factory, "S-100")[:2] == ("queued", 0)
    with session_scope(db_factory) as session:
        slide = repository.get_slide(session, "S-100")
        assert (slide.done_dir, slide.failed_dir) == (str(tmp_path / "done"), str(tmp_path / "failed"))


@pytest.mark.parametrize("status", ["queued", "running", "done", "partial"])
def test_a_slide_in_hand_is_not_registered_or_sent_again(tmp_path, db_factory, status):
    folder = write_slide(tmp_path / "S-2")
    with session_scope(db_factory) as session:
        repository.register_slide(session, read_slide_folder(folder), status="queued")
        lifecycle.claim_slide(session, "S-2", 3)  # attempts 1, running
        if status != "running":
            repository.set_slide_status(session, "S-2", status)
    send = Sender()
    outcome = enqueue_slide_folder(folder, db_factory, send)
    assert (outcome.action, outcome.status, outcome.reason) == ("skipped", status, f"already {status}")
    assert send.sent == []
    assert _status(db_factory, "S-2")[:2] == (status, 1)  # attempts not reset


def test_force_sends_a_done_slide_again(tmp_path, db_factory):
    folder = write_slide(tmp_path / "S-3")
    send = Sender()
    enqueue_slide_folder(folder, db_factory, send)
    with session_scope(db_factory) as session:
        repository.set_slide_status(session, "S-3", "done")
    assert enqueue_slide_folder(folder, db_factory, send, force=True).action == "enqueued"
    assert [s[0] for s in send.sent] == ["S-3", "S-3"]


def test_a_failed_slide_is_enqueued_again(tmp_path, db_factory):
    folder = write_slide(tmp_path / "S-4")
    with session_scope(db_factory) as session:
        repository.record_slide_failure(session, read_slide_folder(folder), "BadImageError: truncated")
    outcome = enqueue_slide_folder(folder, db_factory, Sender())
    assert outcome.action == "enqueued"
    assert _status(db_factory, "S-4")[:3] == ("queued", 0, None)


def test_a_second_folder_with_a_slide_id_in_hand_is_rejected_and_moved_to_failed(tmp_path, db_factory):
    first = write_slide(tmp_path / "inbox" / "S-5")
    enqueue_slide_folder(first, db_factory, Sender())
    second = write_slide(tmp_path / "inbox" / "copy-of-S-5", slide_json={"slide_id": "S-5"})
    send = Sender()
    outcome = enqueue_slide_folder(second, db_factory, send, failed_dir=tmp_path / "failed")
    assert (outcome.action, outcome.slide_id) == ("rejected", "S-5")
    assert f"slide id S-5 is already queued from folder {first}" in outcome.reason
    assert send.sent == [] and not second.exists()
    moved = tmp_path / "failed" / "copy-of-S-5"
    assert outcome.moved_to == str(moved) and (moved / "field_00.png").is_file()
    assert "is already queued from folder" in (moved / "error.txt").read_text()
    assert _rejections(db_factory) == [(str(second), "S-5", outcome.reason, str(moved))]
    assert _status(db_factory, "S-5")[3] == str(first)  # the first slide is untouched


def test_a_slide_id_stored_for_another_patient_is_rejected_unless_reassigned(tmp_path, db_factory):
    enqueue_slide_folder(write_slide(tmp_path / "a" / "S-6", slide_json={"patient_id": "P-1"}), db_factory, Sender())
    with session_scope(db_factory) as session:
        repository.set_slide_status(session, "S-6", "failed")
    other = write_slide(tmp_path / "b" / "S-6", slide_json={"patient_id": "P-2"})
    outcome = enqueue_slide_folder(other, db_factory, Sender())
    assert outcome.action == "rejected"
    assert "slide S-6 is stored for patient P-1; this folder names patient P-2" in outcome.reason
    assert other.is_dir()  # no failed folder given: it stays where the operator put it
    outcome = enqueue_slide_folder(other, db_factory, Sender(), reassign=True, actor="tech-3")
    assert outcome.action == "enqueued"
    with session_scope(db_factory) as session:
        assert repository.get_slide(session, "S-6").patient.patient_code == "P-2"
        assert [(e.kind, e.actor) for e in repository.slide_events(session, "S-6")] == [("reassigned", "tech-3")]


def _empty_folder(root):
    (root / "empty").mkdir(parents=True)
    return root / "empty"


def _bad_json(root):
    folder = write_slide(root / "bad-json")
    (folder / "slide.json").write_text("{x")
    return folder


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_empty_folder, "holds no image"),
        (_bad_json, "not valid JSON"),
        (lambda root: write_slide(root / "nul", slide_json={"slide_id": "S\u0000"}), "must hold printable characters only"),
        (lambda root: write_slide(root / "many", n_fields=3), "a slide may hold at most 2 fields"),
    ],
)
def test_a_folder_that_is_not_a_slide_is_rejected_recorded_and_moved(tmp_path, db_factory, make, reason):
    folder = make(tmp_path / "inbox")
    send = Sender()
    outcome = enqueue_slide_folder(folder, db_factory, send, failed_dir=tmp_path / "failed", max_fields=2)
    assert outcome.action == "rejected" and reason in outcome.reason and outcome.slide_id is None
    assert send.sent == [] and not folder.exists()
    assert reason in (tmp_path / "failed" / folder.name / "error.txt").read_text()
    ((recorded_folder, _, recorded_reason, moved_to),) = _rejections(db_factory)
    assert (recorded_folder, recorded_reason, moved_to) == (str(folder), outcome.reason, str(tmp_path / "failed" / folder.name))


def test_a_linked_slide_folder_is_rejected_and_only_the_link_is_moved(tmp_path, db_factory):
    target = write_slide(tmp_path / "outside" / "S-TARGET")
    (tmp_path / "inbox").mkdir()
    link = tmp_path / "inbox" / "S-LINK"
    link.symlink_to(target)
    outcome = enqueue_slide_folder(link, db_factory, Sender(), failed_dir=tmp_path / "failed")
    assert outcome.action == "rejected" and "is a symbolic link" in outcome.reason
    assert sorted(p.name for p in target.iterdir()) == ["field_00.png", "field_01.png"]  # the target is untouched
    moved = tmp_path / "failed" / "S-LINK"
    assert (moved / "S-LINK").is_symlink() and os.readlink(moved / "S-LINK") == str(target)
    assert "is a symbolic link" in (moved / "error.txt").read_text()
    assert not os.path.lexists(link)


def test_broker_down_leaves_the_slide_queued_for_reconciliation(tmp_path, db_factory):
    folder = write_slide(tmp_path / "S-7")
    with pytest.raises(TransientError, match="is queued but its task was not sent, the broker is unavailable"):
        enqueue_slide_folder(folder, db_factory, Sender(fail=True))
    assert _status(db_factory, "S-7")[0] == "queued"
    assert enqueue_slide_folder(folder, db_factory, Sender()).action == "skipped"


def test_database_down_is_transient(tmp_path):
    from smearflow.db import make_engine, session_factory

    factory = session_factory(make_engine(f"sqlite:///{tmp_path}/missing-dir/x.db"))
    with pytest.raises(TransientError, match="The database is unavailable"):
        enqueue_slide_folder(write_slide(tmp_path / "S-8"), factory, Sender())
    with pytest.raises(TransientError, match="The database is unavailable"):
        reject_folder(factory, tmp_path / "S-8", "no reason")


def test_nothing_at_the_path_is_an_error(tmp_path, db_factory):
    with pytest.raises(ValueError, match="folder must be a slide folder"):
        enqueue_slide_folder(tmp_path / "nope", db_factory, Sender())


def test_celery_sender_sends_the_task_by_name_to_the_slides_queue():
    from smearflow.worker.app import make_celery_app
    from smearflow.worker.settings import WorkerSettings

    app = make_celery_app(WorkerSettings(broker_url="memory://", queue_prefix="q-"))
    sent = []
    app.send_task = lambda name, **kwargs: sent.append((name, kwargs))
    celery_sender(app)("S-9", "/done", None)
    assert sent == [("smearflow.analyze_slide", {"args": ["S-9"], "kwargs": {"done_dir": "/done", "failed_dir": None}, "queue": "q-slides"})]
