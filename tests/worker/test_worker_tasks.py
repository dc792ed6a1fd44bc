"""The thin tasks: backoff, retry or give up, and the per-process runtime."""

from types import SimpleNamespace

import pytest
from celery.exceptions import Retry

from smearflow.db import repository, session_scope
from smearflow.errors import TransientError
from smearflow.worker import tasks
from smearflow.worker.settings import WorkerSettings
from smearflow.worker.tasks import WorkerRuntime, retry_delay_s, run_with_retries
from worker_testdata import slide_info


def test_backoff_doubles_with_jitter_and_is_capped():
    assert retry_delay_s(0, 10, 600, rng=lambda: 1.0) == 10
    assert retry_delay_s(3, 10, 600, rng=lambda: 1.0) == 80
    assert retry_delay_s(3, 10, 600, rng=lambda: 0.0) == 40
    assert retry_delay_s(50, 10, 600, rng=lambda: 1.0) == 600
    with pytest.raises(ValueError, match="retries must not be negative"):
        retry_delay_s(-1, 10, 600)


class FakeTask:
    """What run_with_retries uses of a bound Celery task."""

    def __init__(self, retries):
        self.request = SimpleNamespace(retries=retries)
        self.retried = []

    def retry(self, exc, countdown, max_retries):
        self.retried.append((countdown, max_retries))
        return Retry(exc=exc, when=countdown)


def _runtime(url, **settings):
    return WorkerRuntime(WorkerSettings(database_url=url, **settings), load_analyzer=lambda model_dir: ("analyzer", model_dir))


def test_a_transient_error_is_retried_with_backoff(sqlite_url):
    runtime = _runtime(sqlite_url, max_retries=3, retry_backoff_s=2, retry_backoff_max_s=100)
    task = FakeTask(retries=2)

    def body():
        raise TransientError("database down")

    with pytest.raises(Retry):
        run_with_retries(task, "S-1", body, runtime)
    (countdown, max_retries), = task.retried
    assert 4 <= countdown <= 8 and max_retries == 3


def test_after_the_last_retry_the_slide_is_recorded_failed(sqlite_url):
    runtime = _runtime(sqlite_url, max_retries=3)
    with session_scope(runtime.session_factory()) as session:
        repository.register_slide(session, slide_info("S-2", "/inbox/S-2"))

    def body():
        raise TransientError("database down")

    with pytest.raises(TransientError):
        run_with_retries(FakeTask(retries=3), "S-2", body, runtime)
    with session_scope(runtime.session_factory()) as session:
        slide = repository.get_slide(session, "S-2")
        assert slide.status == "failed" and slide.error == "gave up after 3 retries: TransientError: database down"


def test_giving_up_while_the_database_is_still_down_only_logs(tmp_path, caplog):
    runtime = _runtime(f"sqlite:///{tmp_path}/missing/x.db", max_retries=0)
    with pytest.raises(TransientError):
        run_with_retries(FakeTask(retries=0), "S-3", lambda: (_ for _ in ()).throw(TransientError("down")), runtime)
    assert "could not record the failure" in caplog.text


def test_success_passes_through(sqlite_url):
    assert run_with_retries(FakeTask(0), "S", lambda: {"outcome": "done"}, _runtime(sqlite_url)) == {"outcome": "done"}


def test_the_model_loads_once_and_again_when_another_version_is_activated(sqlite_url, tiny_model_dir):
    from smearflow.worker.nightly import register_model_folder

    loads = []
    runtime = WorkerRuntime(WorkerSettings(database_url=sqlite_url), load_analyzer=lambda d: loads.append(d) or object())
    factory = runtime.session_factory()
    with session_scope(factory) as session:
        first = runtime.analyzer_for(session)
        assert runtime.analyzer_for(session) is first
    assert loads == [None]  # nothing active: the packaged model
    with session_scope(factory) as session:
        version = register_model_folder(session, tiny_model_dir)
        repository.activate_model_version(session, version.name)
    with session_scope(factory) as session:
        runtime.analyzer_for(session)
    assert loads == [None, tiny_model_dir.resolve()]


def test_an_environment_model_dir_wins_over_the_database(sqlite_url):
    runtime = _runtime(sqlite_url, model_dir="/models/pinned")
    with session_scope(runtime.session_factory()) as session:
        assert runtime.analyzer_for(session) == ("analyzer", __import__("pathlib").Path("/models/pinned"))


def test_after_fork_disposes_the_engine_and_drops_the_model(sqlite_url):
    runtime = _runtime(sqlite_url)
    factory = runtime.session_factory()
    with session_scope(factory) as session:
        runtime.analyzer_for(session)
    disposed = []
    runtime._engine.dispose = lambda close=True: disposed.append(close)
    runtime.after_fork()
    assert disposed == [False]
    assert runtime._analyzer is None and runtime.session_factory() is factory


def test_preload_failure_is_logged_not_raised(sqlite_url, caplog):
    def broken(model_dir):
        raise RuntimeError("no GPU memory")

    WorkerRuntime(WorkerSettings(database_url=sqlite_url), load_analyzer=broken).preload()
    assert "could not load the model at start-up" in caplog.text


def test_worker_process_init_resets_and_preloads(monkeypatch, sqlite_url):
    calls = []
    runtime = _runtime(sqlite_url)
    runtime.after_fork = lambda: calls.append("after_fork")
    runtime.preload = lambda: calls.append("preload")
    monkeypatch.setattr(tasks, "_runtime", runtime)
    tasks._after_fork()
    assert calls == ["after_fork", "preload"]
    runtime.settings = WorkerSettings(database_url=sqlite_url, preload_model=False)
    tasks._after_fork()
    assert calls == ["after_fork", "preload", "after_fork"]


def test_the_slide_context_carries_the_settings(sqlite_url):
    context = _runtime(sqlite_url, max_attempts=4, test_field_delay_s=0.5).slide_context()
    assert (context.max_attempts, context.field_delay_s) == (4, 0.5)


def test_importing_the_tasks_loads_no_model_or_database():
    import subprocess
    import sys

    code = (
        "import sys, smearflow.worker.tasks; "
        "print(any(m in sys.modules for m in ('tensorflow', 'keras', 'sqlalchemy.dialects.postgresql.psycopg')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_celery_tasks_run_their_bodies(tmp_path, sqlite_url, monkeypatch):
    from smearflow.jobs import Analyzer
    from worker_testdata import write_bad_slide

    runtime = WorkerRuntime(WorkerSettings(database_url=sqlite_url), load_analyzer=lambda d: Analyzer(None, None))
    monkeypatch.setattr(tasks, "_runtime", runtime)
    folder = write_bad_slide(tmp_path / "inbox" / "S-T")
    with session_scope(runtime.session_factory()) as session:
        repository.register_slide(session, slide_info("S-T", folder))
    result = tasks.analyze_slide.apply(args=["S-T"], kwargs={"failed_dir": str(tmp_path / "failed")}).get()
    assert (result["outcome"], result["folder"]) == ("failed", str((tmp_path / "failed" / "S-T").resolve()))
    assert tasks.retrain.apply().get()["outcome"] == "failed"  # no SMEARFLOW_TRAIN_DATA: recorded, not raised
    assert tasks.rebenchmark.apply().get()["status"] == "failed"


def test_a_transient_error_in_the_task_schedules_a_retry(sqlite_url, monkeypatch):
    runtime = _runtime(sqlite_url, max_retries=2)
    monkeypatch.setattr(tasks, "_runtime", runtime)
    monkeypatch.setattr(
        "smearflow.worker.slide_job.run_slide_job", lambda *a, **k: (_ for _ in ()).throw(TransientError("db down"))
    )
    outcome = tasks.analyze_slide.apply(args=["S-R"])
    # Eager mode runs the retries in place: two retries, then the error of the last one.
    assert isinstance(outcome.result, TransientError) and outcome.state == "FAILURE"
