"""The slide task's body with injected dependencies: exactly-once results and the failure policy."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from smearflow.db import lifecycle, repository, session_scope
from smearflow.db.models import SlideCount
from smearflow.errors import BadModelError, TransientError
from smearflow.worker.folders import ERROR_FILE
from smearflow.worker.slide_job import SlideJobContext, archive_slide, run_slide_job
from worker_testdata import slide_info, slide_result, write_bad_slide, write_slide

CLASSIFIER = SimpleNamespace(
    version="cnn-0123456789", folder=SimpleNamespace(architecture="cnn", path=Path("/models/cnn"), metrics={"accuracy": 0.9})
)


class FakeAnalysis:
    """Stands in for analyze_folder: a fixed result per call, or an error."""

    def __init__(self, error=None, n_fields=2):
        self.calls = []
        self.error = error
        self.n_fields = n_fields

    def __call__(self, folder, analyzer, *, slide_id=None, max_fields=None, propagate=()):
        self.calls.append((folder, slide_id))
        if self.error is not None:
            raise self.error
        return slide_result(slide_info(slide_id, folder), model_version=CLASSIFIER.version)


def _context(factory, analyze=None, max_attempts=3, **kwargs):
    analyzer = SimpleNamespace(classifier=CLASSIFIER)
    return SlideJobContext(
        session_factory=factory, analyzer_for=lambda session: analyzer, max_attempts=max_attempts,
        analyze=analyze or FakeAnalysis(), **kwargs,
    )


def _register(factory, folder, slide_id=None):
    info = slide_info(slide_id or Path(folder).name, folder)
    with session_scope(factory) as session:
        repository.register_slide(session, info)
    return info.slide_id


def _slide(factory, code):
    with session_scope(factory) as session:
        slide = repository.get_slide(session, code)
        n_counts = session.scalar(select(func.count()).select_from(SlideCount).where(SlideCount.slide_id == slide.id))
        return SimpleNamespace(
            status=slide.status, attempts=slide.attempts, error=slide.error, folder=slide.folder, n_counts=n_counts,
            model=slide.model_version.name if slide.model_version else None,
        )


def test_a_slide_is_analysed_stored_and_moved_to_done(tmp_path, db_factory):
    folder = write_slide(tmp_path / "inbox" / "S-1")
    code = _register(db_factory, folder)
    result = run_slide_job(
        code, _context(db_factory), task_id="t-1", done_dir=tmp_path / "done", failed_dir=tmp_path / "failed"
    )
    assert (result.outcome, result.status) == ("done", "done")
    slide = _slide(db_factory, code)
    assert (slide.status, slide.attempts, slide.n_counts, slide.model) == ("done", 1, 2, "cnn-0123456789")
    assert slide.folder == str(tmp_path / "done" / "S-1") == result.folder
    assert not folder.exists() and (tmp_path / "done" / "S-1" / "field_00.png").is_file()


def test_the_folders_registered_with_the_slide_are_used_when_the_task_names_none(tmp_path, db_factory):
    folder = write_slide(tmp_path / "inbox" / "S-1r")
    with session_scope(db_factory) as session:
        repository.register_slide(session, slide_info("S-1r", folder), done_dir=str(tmp_path / "done"))
    assert run_slide_job("S-1r", _context(db_factory)).folder == str(tmp_path / "done" / "S-1r")


def test_a_folder_stays_in_place_without_destinations(tmp_path, db_factory):
    folder = write_slide(tmp_path / "S-1b")
    code = _register(db_factory, folder)
    assert run_slide_job(code, _context(db_factory)).folder == str(folder)
    assert folder.is_dir()


def test_a_duplicate_or_redelivered_task_is_a_no_op(tmp_path, db_factory):
    folder = write_slide(tmp_path / "inbox" / "S-2")
    code = _register(db_factory, folder)
    analysis = FakeAnalysis()
    first = run_slide_job(code, _context(db_factory, analysis), done_dir=tmp_path / "done")
    second = run_slide_job(code, _context(db_factory, analysis), done_dir=tmp_path / "done")
    assert (first.outcome, second.outcome, second.status) == ("done", "skipped", "done")
    assert len(analysis.calls) == 1
    slide = _slide(db_factory, code)
    assert (slide.attempts, slide.n_counts) == (1, 2)
    assert second.folder == first.folder


def test_a_result_stored_meanwhile_by_another_delivery_wins(tmp_path, db_factory):
    folder = write_slide(tmp_path / "S-3")
    code = _register(db_factory, folder)

    def analyze_while_another_delivery_finishes(folder, analyzer, **kwargs):
        result = slide_result(slide_info(kwargs["slide_id"], folder), labels=("monocyte",))
        with session_scope(db_factory) as session:
            repository.store_slide_result(session, slide_result(slide_info(kwargs["slide_id"], folder)), None)
        return result

    result = run_slide_job(code, _context(db_factory, analyze_while_another_delivery_finishes))
    assert (result.outcome, result.status) == ("skipped", "done")
    with session_scope(db_factory) as session:
        assert repository.counts_for(session, slide_code=code)[0]["counts"] == {"lymphocyte": 1, "neutrophil": 1}


def test_an_unreadable_slide_is_recorded_failed_and_moved_with_error_txt(tmp_path, db_factory):
    from smearflow.jobs import Analyzer, analyze_folder

    folder = write_bad_slide(tmp_path / "inbox" / "S-4")
    folder_without_images = tmp_path / "inbox" / "S-5"
    folder_without_images.mkdir()
    # The real pipeline: a field that is not an image fails before any segmenter or classifier is called.
    analyzer = Analyzer(segmenter=None, classifier=None)
    for path, message in ((folder, "not a readable image"), (folder_without_images, "holds no image")):
        code = _register(db_factory, path)
        context = SlideJobContext(db_factory, lambda session: analyzer, analyze=analyze_folder)
        result = run_slide_job(code, context, done_dir=tmp_path / "done", failed_dir=tmp_path / "failed")
        assert (result.outcome, result.status) == ("failed", "failed")
        slide = _slide(db_factory, code)
        assert slide.status == "failed" and slide.attempts == 1
        moved = tmp_path / "failed" / path.name
        assert slide.folder == str(moved)
        assert message in (moved / ERROR_FILE).read_text()


def test_a_permanent_error_is_recorded_failed_and_not_raised(tmp_path, db_factory):
    folder = write_slide(tmp_path / "inbox" / "S-6")
    code = _register(db_factory, folder)
    context = _context(db_factory)
    context.analyzer_for = lambda session: (_ for _ in ()).throw(BadModelError("/models/x: model folder does not exist"))
    result = run_slide_job(code, context, failed_dir=tmp_path / "failed")
    assert (result.outcome, result.error) == ("failed", "BadModelError: /models/x: model folder does not exist")
    slide = _slide(db_factory, code)
    assert (slide.status, slide.error) == ("failed", "BadModelError: /models/x: model folder does not exist")
    assert "BadModelError" in (tmp_path / "failed" / "S-6" / ERROR_FILE).read_text()
    assert run_slide_job(code, _context(db_factory)).outcome == "skipped"  # not retried


def test_a_transient_error_propagates_and_a_later_try_succeeds(tmp_path, db_factory):
    folder = write_slide(tmp_path / "S-7")
    code = _register(db_factory, folder)
    with pytest.raises(TransientError, match="database down"):
        run_slide_job(code, _context(db_factory, FakeAnalysis(error=TransientError("database down"))), task_id="t-7")
    assert (_slide(db_factory, code).status, _slide(db_factory, code).attempts) == ("running", 1)
    assert run_slide_job(code, _context(db_factory), task_id="t-7").outcome == "done"  # Celery's retry: same task id
    assert _slide(db_factory, code).attempts == 2


def test_a_database_outage_while_storing_becomes_transient(tmp_path, db_factory):
    folder = write_slide(tmp_path / "S-8")
    code = _register(db_factory, folder)

    def store(session, result, classifier):
        raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))

    with pytest.raises(TransientError, match="The database is unavailable"):
        run_slide_job(code, _context(db_factory, store=store))
    assert _slide(db_factory, code).status == "running"


def test_an_unexpected_error_is_recorded_then_raised(tmp_path, db_factory):
    folder = write_slide(tmp_path / "inbox" / "S-9")
    code = _register(db_factory, folder)
    with pytest.raises(RuntimeError, match="bug"):
        run_slide_job(code, _context(db_factory, FakeAnalysis(error=RuntimeError("bug"))), failed_dir=tmp_path / "failed")
    slide = _slide(db_factory, code)
    assert (slide.status, slide.error) == ("failed", "RuntimeError: bug")
    assert (tmp_path / "failed" / "S-9" / ERROR_FILE).is_file()


def test_the_soft_time_limit_fails_the_slide_without_retry(tmp_path, db_factory):
    from celery.exceptions import SoftTimeLimitExceeded

    code = _register(db_factory, write_slide(tmp_path / "S-10"))
    result = run_slide_job(code, _context(db_factory, FakeAnalysis(error=SoftTimeLimitExceeded())))
    assert result.outcome == "failed" and "soft time limit" in result.error
    assert _slide(db_factory, code).status == "failed"


def test_a_slide_that_keeps_killing_its_worker_ends_failed(tmp_path, db_factory):
    folder = write_slide(tmp_path / "inbox" / "S-11")
    code = _register(db_factory, folder)
    for _ in range(2):  # the same message delivered twice; each time its worker process died mid-slide
        with session_scope(db_factory) as session:
            lifecycle.claim_slide(session, code, 2, task_id="t-11")
    result = run_slide_job(code, _context(db_factory, max_attempts=2), task_id="t-11", failed_dir=tmp_path / "failed")
    assert (result.outcome, result.status) == ("skipped", "failed")
    assert "Gave up after 2 attempt(s)" in result.error
    assert "Gave up after 2 attempt(s)" in (tmp_path / "failed" / "S-11" / ERROR_FILE).read_text()
    assert _slide(db_factory, code).folder == str(tmp_path / "failed" / "S-11")


def test_a_slide_held_by_another_live_worker_is_left_to_it(tmp_path, db_factory):
    folder = write_slide(tmp_path / "inbox" / "S-11b")
    code = _register(db_factory, folder)
    with session_scope(db_factory) as session:
        lifecycle.claim_slide(session, code, 3, task_id="first", holder="gpu1 pid 1")
    analysis = FakeAnalysis()
    result = run_slide_job(code, _context(db_factory, analysis), task_id="second", done_dir=tmp_path / "done")
    assert (result.outcome, result.status, result.folder) == ("skipped", "running", str(folder))
    assert analysis.calls == [] and folder.is_dir()


def test_the_lease_is_renewed_while_the_slide_is_analysed(tmp_path, db_factory):
    import time

    code = _register(db_factory, write_slide(tmp_path / "S-11c"))
    beats = []

    def slow_analysis(folder, analyzer, **kwargs):
        for _ in range(3):
            time.sleep(0.12)
            with session_scope(db_factory) as session:
                beats.append(repository.get_slide(session, code).heartbeat_at)
        return slide_result(slide_info(kwargs["slide_id"], folder))

    context = _context(db_factory, slow_analysis, heartbeat_s=0.05, lease_s=1.0)
    assert run_slide_job(code, context, task_id="t").outcome == "done"
    assert beats[0] < beats[-1]


def test_a_result_is_dropped_when_another_worker_took_the_slide_over(tmp_path, db_factory):
    code = _register(db_factory, write_slide(tmp_path / "S-11d"))

    def analysis_outlived_by_its_lease(folder, analyzer, **kwargs):
        with session_scope(db_factory) as session:
            slide = repository.get_slide(session, code)
            slide.task_id, slide.holder = "another", "gpu2 pid 9"
        return slide_result(slide_info(kwargs["slide_id"], folder))

    result = run_slide_job(code, _context(db_factory, analysis_outlived_by_its_lease), task_id="mine")
    assert (result.outcome, result.status) == ("skipped", "running")
    assert _slide(db_factory, code).n_counts == 0


def test_a_failed_reanalysis_keeps_the_stored_result_and_moves_the_folder_to_failed(tmp_path, db_factory):
    folder = write_slide(tmp_path / "inbox" / "S-11e")
    code = _register(db_factory, folder)
    run_slide_job(code, _context(db_factory))
    before = _slide(db_factory, code)
    _register(db_factory, folder)  # enqueued again with --force
    result = run_slide_job(
        code, _context(db_factory, FakeAnalysis(error=BadModelError("broken model"))), failed_dir=tmp_path / "failed"
    )
    assert (result.outcome, result.status) == ("failed", "done")
    after = _slide(db_factory, code)
    assert (after.status, after.n_counts, after.model) == ("done", before.n_counts, before.model)
    assert "broken model" in (tmp_path / "failed" / "S-11e" / ERROR_FILE).read_text()


def test_a_task_for_an_unregistered_slide_is_dropped(db_factory):
    result = run_slide_job("NOPE", _context(db_factory))
    assert (result.outcome, result.status) == ("unknown", None)
    assert "No slide is registered" in result.error


def test_a_slide_registered_without_folder_fails(db_factory):
    with session_scope(db_factory) as session:
        repository.record_slide_failure(session, "BARE", "earlier")
        repository.register_slide(session, slide_info("BARE", "/x"))
        repository.get_slide(session, "BARE").folder = None
    result = run_slide_job("BARE", _context(db_factory))
    assert result.outcome == "failed" and "has no folder registered" in result.error


def test_archive_finds_a_folder_moved_by_a_delivery_whose_database_update_was_lost(tmp_path, db_factory):
    folder = write_slide(tmp_path / "inbox" / "S-12")
    code = _register(db_factory, folder)
    with session_scope(db_factory) as session:
        repository.set_slide_status(session, code, "done")
    (tmp_path / "done").mkdir()
    folder.rename(tmp_path / "done" / "S-12")
    assert archive_slide(db_factory, code, tmp_path / "done", None) == str(tmp_path / "done" / "S-12")
    assert _slide(db_factory, code).folder == str(tmp_path / "done" / "S-12")


def test_archive_leaves_missing_or_unmovable_folders_alone(tmp_path, db_factory, monkeypatch, caplog):
    code = _register(db_factory, tmp_path / "inbox" / "S-13")
    with session_scope(db_factory) as session:
        repository.set_slide_status(session, code, "done")
    assert archive_slide(db_factory, code, tmp_path / "done", None) == str(tmp_path / "inbox" / "S-13")
    assert "is missing; not moved" in caplog.text

    write_slide(tmp_path / "inbox" / "S-13")

    def refuse(*args):
        raise PermissionError("read-only share")

    monkeypatch.setattr("smearflow.worker.folders.shutil.move", refuse)
    assert archive_slide(db_factory, code, tmp_path / "done", None) == str(tmp_path / "inbox" / "S-13")
    assert "could not move" in caplog.text
    assert archive_slide(db_factory, "NOPE", tmp_path / "done", None) is None
