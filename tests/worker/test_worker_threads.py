"""A threads-pool worker: several slides in one process share one model and its batches (issue 14)."""

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from lab import Lab
from smearflow_testkit import PlantedSegmenter, planted_cell
from worker_testdata import slide_info, write_slide

from smearflow.classifier.shared_batches import SharedBatcher
from smearflow.config import PipelineConfig
from smearflow.db import repository, session_scope
from smearflow.jobs import Analyzer, analyze_folder
from smearflow.types import Classification
from smearflow.worker import tasks
from smearflow.worker.app import celery_config, make_celery_app
from smearflow.worker.settings import WorkerSettings
from smearflow.worker.slide_job import run_slide_job
from smearflow.worker.tasks import WorkerRuntime

LONG_WAIT_MS = 60_000.0
"""Long enough that a shared call goes only once its crops are all waiting: counts depend on no timing."""


class MeanColourClassifier:
    """Labels a crop by its mean colour; records the size of every call."""

    version = "cnn-0123456789"
    classes = ("lymphocyte", "neutrophil", "monocyte")
    confidence_threshold = 0.0
    folder = SimpleNamespace(architecture="cnn", path=Path("/models/cnn"), metrics={})

    def __init__(self):
        self.calls = []
        self._lock = threading.Lock()

    def classify(self, crops, batch_size=32, exclude=()):
        with self._lock:
            self.calls.append(len(crops))
        return [Classification(self.classes[int(np.argmax(crop.reshape(-1, 3).mean(axis=0)))], 0.9) for crop in crops]


def _stand_in_loader(classifiers, config):
    def load(model_dir):
        classifiers.append(MeanColourClassifier())
        return Analyzer(PlantedSegmenter([planted_cell("wbc", 40, 40)]), classifiers[-1], config)

    return load


def test_the_pool_and_concurrency_are_read_from_the_environment_and_reach_celery():
    settings = WorkerSettings.from_env(
        {"SMEARFLOW_WORKER_POOL": "threads", "SMEARFLOW_WORKER_CONCURRENCY": "3", "SMEARFLOW_BATCH_WAIT_MS": "5"}
    )
    assert (settings.worker_pool, settings.worker_concurrency, settings.batch_wait_ms) == ("threads", 3, 5.0)
    config = celery_config(settings)
    assert (config["worker_pool"], config["worker_concurrency"]) == ("threads", 3)
    defaults = celery_config(WorkerSettings())
    assert (defaults["worker_pool"], defaults["worker_concurrency"]) == ("prefork", None)  # None: Celery's own default


@pytest.mark.parametrize(
    "values, message",
    [
        ({"worker_pool": "eventlet"}, "worker_pool must be one of ['prefork', 'threads', 'solo']. Received: worker_pool='eventlet'"),
        ({"worker_concurrency": 0}, "worker_concurrency must be at least 1. Received: worker_concurrency=0"),
        ({"batch_wait_ms": -1.0}, "batch_wait_ms must be a finite number of at least 0. Received: batch_wait_ms=-1.0"),
    ],
)
def test_bad_pool_settings_are_refused(values, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        WorkerSettings(**values)


def test_a_worker_built_with_a_threads_pool_shares_batches_and_a_prefork_one_does_not(monkeypatch, sqlite_url):
    from celery import _state as celery_state

    # Building a worker marks this process as a worker (result.get() refused); undone after the test.
    monkeypatch.setattr(celery_state, "_task_join_will_block", celery_state.task_join_will_block())
    settings = WorkerSettings(broker_url="memory://", database_url=sqlite_url, worker_pool="threads", worker_concurrency=2)
    app = make_celery_app(settings)
    runtime = WorkerRuntime(settings)
    preloads = []
    runtime.preload = lambda: preloads.append(True)
    monkeypatch.setattr(tasks, "_runtime", runtime)
    quiet = {"without_heartbeat": True, "without_mingle": True, "without_gossip": True}
    app.WorkController(app=app, pool_cls="prefork", **quiet)
    assert runtime.share_batches is False and preloads == []
    worker = app.WorkController(app=app, **quiet)  # the pool and concurrency of the settings
    assert worker.concurrency == 2
    assert runtime.share_batches is True and preloads == [True]


def test_two_slides_in_one_process_share_one_model_call_and_store_what_they_get_alone(tmp_path, sqlite_url):
    # Two fields of one white cell per slide: each slide alone makes one call of 2 crops; together, one call of 4.
    config = PipelineConfig(check_quality=False, batch_size=4, classify_platelets=False)
    classifiers = []
    settings = WorkerSettings(database_url=sqlite_url, classify_batch_size=4, batch_wait_ms=LONG_WAIT_MS)
    runtime = WorkerRuntime(settings, load_analyzer=_stand_in_loader(classifiers, config), share_batches=True)
    codes = ["S-T1", "S-T2"]
    with session_scope(runtime.session_factory()) as session:
        for seed, code in enumerate(codes):
            folder = write_slide(tmp_path / code, seed=seed, slide_json={"slide_id": code, "patient_id": "P-1"})
            repository.register_slide(session, slide_info(code, folder))
    context = runtime.slide_context()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda code: run_slide_job(code, context), codes))
    assert [r.outcome for r in results] == ["done", "done"]
    assert len(classifiers) == 1 and classifiers[0].calls == [4]  # one model loaded, one call for both slides
    assert isinstance(runtime._analyzer.classifier, SharedBatcher)
    for code in codes:
        alone = analyze_folder(tmp_path / code, _stand_in_loader([], config)(None), slide_id=code)
        with session_scope(runtime.session_factory()) as session:
            (row,) = repository.counts_for(session, slide_code=code)
        assert row["status"] == "done" and row["model_version"] == "cnn-0123456789"
        assert row["wbc_total"] == alone.wbc_total == 2
        assert {k: v for k, v in row["counts"].items() if v} == alone.counts


def test_a_new_model_serves_the_next_slides_and_the_old_one_is_released_after_its_last_slide(sqlite_url, tiny_model_dir):
    import gc

    from smearflow.worker.nightly import register_model_folder

    classifiers = []
    config = PipelineConfig(check_quality=False)
    runtime = WorkerRuntime(
        WorkerSettings(database_url=sqlite_url, batch_wait_ms=0), load_analyzer=_stand_in_loader(classifiers, config), share_batches=True
    )
    factory = runtime.session_factory()
    with session_scope(factory) as session:
        in_flight = runtime.analyzer_for(session)  # a slide that started on the packaged model
        assert runtime.analyzer_for(session) is in_flight
    old_batcher = in_flight.classifier
    with session_scope(factory) as session:
        repository.activate_model_version(session, register_model_folder(session, tiny_model_dir).name)
    with session_scope(factory) as session:
        newer = runtime.analyzer_for(session)
    assert newer.classifier is not old_batcher and len(classifiers) == 2
    # The slide in flight finishes on the model it started with.
    crops = np.zeros((2, 8, 8, 3), np.uint8)
    assert len(in_flight.classifier.classify(crops)) == 2 and classifiers[0].calls == [2]
    assert not old_batcher.closed
    del in_flight
    gc.collect()
    assert old_batcher.closed and not old_batcher._thread.is_alive()
    assert not newer.classifier.closed


@pytest.fixture
def threads_app(monkeypatch):
    """An in-memory app whose settings ask for a threads pool of 3; captures the argv ``smearflow worker`` builds."""
    from smearflow.commands import deployment

    app = make_celery_app(WorkerSettings(broker_url="memory://", queue_prefix="cli-", worker_pool="threads", worker_concurrency=3))
    app.argv = []
    app.worker_main = app.argv.append
    monkeypatch.setattr(deployment, "_celery_app", lambda: app)
    return app


def test_smearflow_worker_takes_the_pool_from_the_settings_unless_told(cli, threads_app):
    assert cli("worker", "-Q", "slides").exit_code == 0
    assert cli("worker", "-Q", "slides", "--pool", "prefork", "-c", "1").exit_code == 0
    assert threads_app.argv == [
        ["worker", "--queues=cli-slides", "--concurrency=3", "--pool=threads", "--loglevel=INFO"],
        ["worker", "--queues=cli-slides", "--concurrency=1", "--pool=prefork", "--loglevel=INFO"],
    ]


def test_smearflow_worker_refuses_a_pool_it_does_not_support(cli, threads_app):
    result = cli("worker", "--pool", "eventlet")
    assert result.exit_code == 2 and "must be one of ['prefork', 'threads', 'solo']" in result.output
    assert threads_app.argv == []


@pytest.mark.integration
def test_a_real_threads_pool_worker_analyses_two_slides_at_once_in_one_process(tmp_path, pg_url, redis_url, tiny_model_dir):
    from smearflow.classifier.classifier import Classifier
    from smearflow.segmentation import make_segmenter

    lab = Lab(tmp_path / "lab", redis_url, pg_url, tiny_model_dir)
    try:
        worker = lab.worker(pool="threads", concurrency=2, field_delay_s=1.0)
        codes = ["S-TH1", "S-TH2"]
        folders = [write_slide(lab.root / "slides" / code, n_fields=4, seed=seed) for seed, code in enumerate(codes, 7)]
        # one command, so that the second slide is queued before the first can finish on a loaded machine
        assert lab.cli("enqueue", *map(str, folders)).returncode == 0
        slides = lab.wait_for_status(codes, statuses=("done",))
        # both slides were in flight together, in the worker's one process
        assert max(slides[c]["started_at"] for c in codes) < min(slides[c]["finished_at"] for c in codes)
        assert worker.children() == []
        assert "(thread)" in worker.log()  # Celery's banner: "concurrency: 2 (thread)"
        alone = Analyzer(make_segmenter("classical"), Classifier.load(tiny_model_dir), PipelineConfig())
        for code, folder in zip(codes, folders):
            assert (slides[code]["attempts"], slides[code]["n_fields"]) == (1, 4)
            stored, expected = lab.counts(code), analyze_folder(folder, alone, slide_id=code)
            assert {k: v for k, v in stored["counts"].items() if v} == expected.counts
            assert (stored["rbc_count"], stored["platelet_count"]) == (expected.rbc_count, expected.platelet_count)
    finally:
        lab.close()
