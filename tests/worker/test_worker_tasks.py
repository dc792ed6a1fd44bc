"""The thin tasks: Celery's retries, reconciliation, and the per-process runtime."""

from smearflow.db import repository, session_scope
from smearflow.errors import TransientError
from smearflow.worker import tasks
from smearflow.worker.settings import WorkerSettings
from smearflow.worker.tasks import WorkerRuntime
from worker_testdata import slide_info


def _runtime(url, **settings):
    return WorkerRuntime(WorkerSettings(database_url=url, **settings), load_analyzer=lambda model_dir: ("analyzer", model_dir))


def test_a_transient_error_is_retried_by_celery_with_capped_jittered_backoff_then_fails(monkeypatch, sqlite_url):
    from celery.exceptions import Retry

    from smearflow.worker.app import make_celery_app
    from smearflow.worker.settings import ANALYZE_SLIDE_TASK

    settings = WorkerSettings(
        broker_url="memory://", result_backend="cache+memory://", database_url=sqlite_url,
        max_retries=3, retry_backoff_s=2, retry_backoff_max_s=5,
    )
    app = make_celery_app(settings)
    task = app.tasks[ANALYZE_SLIDE_TASK]
    assert (task.autoretry_for, task.retry_backoff, task.retry_backoff_max, task.max_retries) == ((TransientError,), 2, 5, 3)
    monkeypatch.setattr(tasks, "_runtime", WorkerRuntime(settings))
    calls, countdowns = [], []

    def database_down(*args, **kwargs):
        calls.append(args[0])
        raise TransientError("database down")

    monkeypatch.setattr("smearflow.worker.slide_job.run_slide_job", database_down)
    retry, scheduled = task.retry, []

    def recording_retry(*args, **kwargs):
        countdowns.append(kwargs["countdown"])
        try:
            return retry(*args, **kwargs)
        except Retry as retrying:  # Celery schedules the retry by raising Retry with its countdown
            scheduled.append((retrying.when, str(retrying.exc)))
            raise

    monkeypatch.setattr(task, "retry", recording_retry)
    result = task.apply(args=["S-1"])
    assert result.state == "FAILURE" and isinstance(result.result, TransientError)
    assert calls == ["S-1"] * 4  # the first run and three retries
    assert len(countdowns) == 4 and all(0 <= c <= min(5, 2 * 2**i) for i, c in enumerate(countdowns))
    # Three retries were scheduled, each with the backoff asked for; the fourth call gave up and failed.
    assert scheduled == [(countdown, "database down") for countdown in countdowns[:3]]


def test_the_reconcile_task_sends_lost_slides_again(monkeypatch, sqlite_url):
    from smearflow.worker.app import make_celery_app
    from smearflow.worker.settings import RECONCILE_TASK

    settings = WorkerSettings(
        broker_url="memory://", result_backend="cache+memory://", database_url=sqlite_url, lease_s=2, heartbeat_s=1
    )
    app = make_celery_app(settings)
    monkeypatch.setattr(tasks, "_runtime", WorkerRuntime(settings))
    from smearflow.db import lifecycle

    with session_scope(tasks._runtime.session_factory()) as session:
        repository.register_slide(session, slide_info("S-LOST", "/inbox/S-LOST"))
        lifecycle.claim_slide(session, "S-LOST", 3, task_id="dead")
        repository.get_slide(session, "S-LOST").heartbeat_at = repository.get_slide(session, "S-LOST").started_at.replace(year=2000)
    sent = []
    app.send_task = lambda name, **kwargs: sent.append((name, kwargs["args"]))
    result = app.tasks[RECONCILE_TASK].apply()
    assert result.result == {"resent": ["S-LOST"], "given_up": [], "broker_checked": False}
    assert sent == [("smearflow.analyze_slide", ["S-LOST"])]


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
    from celery.exceptions import SoftTimeLimitExceeded

    context = _runtime(sqlite_url, max_attempts=4, lease_s=30, heartbeat_s=5, max_fields=9).slide_context()
    assert (context.max_attempts, context.lease_s, context.heartbeat_s, context.max_fields) == (4, 30, 5, 9)
    assert context.propagate == (SoftTimeLimitExceeded,) and " pid " in context.holder


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
    assert (result["outcome"], result["folder"]) == ("failed", str(tmp_path / "failed" / "S-T"))
    # No SMEARFLOW_TRAIN_DATA: each run is recorded failed, and the task fails (what Flower shows).
    for task, message in ((tasks.retrain, "no training dataset"), (tasks.rebenchmark, "no benchmark dataset")):
        outcome = task.apply()
        assert outcome.state == "FAILURE" and message in str(outcome.result)




def test_the_default_analyzer_carries_the_worker_settings(sqlite_url, tiny_model_dir):
    settings = WorkerSettings(
        database_url=sqlite_url, max_field_pixels=1234, segmenter="classical", classify_batch_size=16,
        prefetch_fields=3, prepare_threads=2, inference_precision="bfloat16",
    )
    analyzer = WorkerRuntime(settings)._load_default_analyzer(tiny_model_dir)
    assert (analyzer.config.max_field_pixels, analyzer.config.segmenter) == (1234, "classical")
    assert (analyzer.config.batch_size, analyzer.config.prefetch_fields, analyzer.config.prepare_threads) == (16, 3, 2)
    assert analyzer.config.inference_precision == analyzer.classifier.precision == "bfloat16"
