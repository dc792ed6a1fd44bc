"""Registering a slide folder and sending its task once; the database decides."""

import pytest

from worker_testdata import write_slide
from smearflow.db import repository, session_scope
from smearflow.errors import TransientError
from smearflow.worker.enqueue import celery_sender, describe_slide_folder, enqueue_slide_folder


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


def test_a_new_folder_is_registered_then_sent(tmp_path, db_factory):
    folder = write_slide(tmp_path / "inbox" / "S-1", slide_json={"slide_id": "S-100", "patient_id": "P-9"})
    send = Sender()
    outcome = enqueue_slide_folder(folder, db_factory, send, done_dir=tmp_path / "done", failed_dir=tmp_path / "failed")
    assert (outcome.slide_id, outcome.action, outcome.status, outcome.reason) == ("S-100", "enqueued", "queued", None)
    assert send.sent == [("S-100", str(tmp_path / "done"), str(tmp_path / "failed"))]
    assert _status(db_factory, "S-100")[:2] == ("queued", 0)


@pytest.mark.parametrize("status", ["queued", "running", "done"])
def test_a_slide_in_hand_is_not_registered_or_sent_again(tmp_path, db_factory, status):
    folder = write_slide(tmp_path / "S-2")
    with session_scope(db_factory) as session:
        repository.register_slide(session, describe_slide_folder(folder)[0], status="queued")
        repository.claim_slide(session, "S-2", 3)  # attempts 1, running
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
        repository.record_slide_failure(session, describe_slide_folder(folder)[0], "BadImageError: truncated")
    outcome = enqueue_slide_folder(folder, db_factory, Sender())
    assert outcome.action == "enqueued"
    assert _status(db_factory, "S-4")[:3] == ("queued", 0, None)


def test_the_same_slide_id_from_another_folder_is_reported(tmp_path, db_factory):
    enqueue_slide_folder(write_slide(tmp_path / "a" / "S-5"), db_factory, Sender())
    outcome = enqueue_slide_folder(write_slide(tmp_path / "b" / "S-5"), db_factory, Sender())
    assert outcome.action == "skipped"
    assert "already queued from folder" in outcome.reason and str(tmp_path / "a" / "S-5") in outcome.reason


def test_an_unreadable_folder_is_enqueued_for_the_worker_to_record(tmp_path, db_factory):
    folder = tmp_path / "no-images"
    folder.mkdir()
    (folder / "notes.txt").write_text("forgot the fields")
    send = Sender()
    outcome = enqueue_slide_folder(folder, db_factory, send)
    assert (outcome.slide_id, outcome.action) == ("no-images", "enqueued")
    assert "holds no image" in outcome.reason
    assert send.sent[0][0] == "no-images"


def test_a_patient_id_the_database_refuses_is_registered_bare(tmp_path, db_factory):
    folder = write_slide(tmp_path / "S-6", slide_json={"patient_id": "   "})
    outcome = enqueue_slide_folder(folder, db_factory, Sender())
    assert outcome.action == "enqueued" and "patient_id must be a non-empty string" in outcome.reason
    assert _status(db_factory, "S-6")[0] == "queued"


def test_broker_down_records_the_slide_failed_so_a_rescan_retries(tmp_path, db_factory):
    folder = write_slide(tmp_path / "S-7")
    with pytest.raises(TransientError, match="the broker is unavailable: ConnectionError"):
        enqueue_slide_folder(folder, db_factory, Sender(fail=True))
    status, _, error, _ = _status(db_factory, "S-7")
    assert status == "failed" and error.startswith("not enqueued")
    assert enqueue_slide_folder(folder, db_factory, Sender()).action == "enqueued"


def test_database_down_is_transient(tmp_path):
    from smearflow.db import make_engine, session_factory

    factory = session_factory(make_engine(f"sqlite:///{tmp_path}/missing-dir/x.db"))
    with pytest.raises(TransientError, match="The database is unavailable"):
        enqueue_slide_folder(write_slide(tmp_path / "S-8"), factory, Sender())


def test_not_a_folder_is_rejected(tmp_path, db_factory):
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



def test_a_folder_moved_away_while_being_read_is_not_registered(tmp_path, db_factory, monkeypatch):
    from smearflow.worker import enqueue

    folder = write_slide(tmp_path / "S-10", slide_json={"slide_id": "REAL-ID"})

    def vanish(path):
        info = enqueue.SlideInfo(path.name, None, None, None, str(path), ())
        for child in path.iterdir():
            child.unlink()
        path.rmdir()
        return info, "does not exist"

    monkeypatch.setattr(enqueue, "describe_slide_folder", vanish)
    with pytest.raises(ValueError, match="folder must be a slide folder"):
        enqueue_slide_folder(folder, db_factory, Sender())
    assert _status(db_factory, "S-10") is None
