"""Faults a laboratory meets, with real workers: no slide is stranded, lost, or counted twice.

The tests that restart a server start their own (``fault_servers``) on their
own ports and stop them; the others use the shared services with a fresh
schema and queue names of their own. Every slide must end ``done`` exactly
once, with the counts an undisturbed analysis gives. Leases, reconciliation
and retries use short test settings (seconds, not minutes).
"""

from __future__ import annotations


import pytest
import sqlalchemy as sa

from fault_servers import PostgresServer, RedisServer, wait_until
from lab import Lab
from smearflow.db import upgrade_database
from worker_testdata import write_slide

pytestmark = pytest.mark.integration

FAST = {
    "SMEARFLOW_LEASE_S": "6",
    "SMEARFLOW_HEARTBEAT_S": "2",
    "SMEARFLOW_RECONCILE_INTERVAL_S": "3",
    "SMEARFLOW_QUEUED_GRACE_S": "4",
    "SMEARFLOW_MAX_RETRIES": "2",
    "SMEARFLOW_RETRY_BACKOFF_S": "1",
    "SMEARFLOW_RETRY_BACKOFF_MAX_S": "2",
}


@pytest.fixture(scope="module")
def reference_analyzer(tiny_model_dir):
    """The tiny model loaded in this process: what an undisturbed analysis counts."""
    from smearflow.jobs import Analyzer

    return Analyzer.load(tiny_model_dir)


def _expected(analyzer, folder) -> dict:
    from smearflow.jobs import analyze_folder

    result = analyze_folder(folder, analyzer)
    return {"status": result.status, "counts": result.counts, "rbc_count": result.rbc_count, "platelet_count": result.platelet_count}


def _slides(lab, analyzer, n, n_fields=2):
    """``n`` slide folders beside the inbox, with the counts each must end with."""
    expected = {}
    for i in range(n):
        folder = write_slide(lab.root / "slides" / f"S-{i:02d}", n_fields=n_fields, seed=40 + i)
        expected[folder.name] = _expected(analyzer, folder)
    return expected


def _enqueue_all(lab, expected):
    folders = [str(lab.root / "slides" / code) for code in expected]
    result = lab.cli("enqueue", *folders, "--done-dir", str(lab.done))
    assert result.returncode == 0, result.stdout + result.stderr


def _assert_done_once_with_unchanged_counts(lab, expected, timeout_s):
    slides = lab.wait_for_status(list(expected), statuses=("done",), timeout_s=timeout_s)
    for code, want in expected.items():
        assert slides[code]["n_fields"] == len(list((lab.done / code).glob("field_*.png"))), slides[code]
        assert lab.counts(code) == want, code
        assert (lab.done / code).is_dir() and not (lab.done / f"{code}-2").exists()
    return slides


@pytest.fixture
def own_redis():
    server = RedisServer()
    if not server.available():
        pytest.skip("redis-server is not installed")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_postgres():
    if not PostgresServer.available():
        pytest.skip("PostgreSQL's initdb/pg_ctl or runuser is not available (or not root)")
    server = PostgresServer().init().start()
    try:
        upgrade_database(server.url)
        yield server
    finally:
        server.remove()


def _gave_up_retrying(worker) -> bool:
    return any(
        "smearflow.analyze_slide[" in line and "raised unexpected: TransientError" in line
        for line in worker.log().splitlines()
    )


def _lab(tmp_path, broker_url, database_url, tiny_model_dir):
    return Lab(tmp_path / "lab", broker_url, database_url, tiny_model_dir, **FAST)


def test_killing_a_workers_main_process_mid_slide_strands_nothing(tmp_path, redis_url, pg_url, tiny_model_dir, reference_analyzer):
    lab = _lab(tmp_path, redis_url, pg_url, tiny_model_dir)
    try:
        expected = _slides(lab, reference_analyzer, 1, n_fields=4)
        worker = lab.worker("worker-1", field_delay_s=1.5)
        lab.beat()
        _enqueue_all(lab, expected)
        lab.wait_for_status(list(expected), statuses=("running",), timeout_s=120)
        worker.kill_main_process()
        lab.worker("worker-2", field_delay_s=1.5)  # what a restart policy does
        slides = _assert_done_once_with_unchanged_counts(lab, expected, timeout_s=180)
        assert all(s["attempts"] <= 2 for s in slides.values())
    finally:
        lab.close()


def test_redis_restarted_empty_with_slides_queued_loses_none(tmp_path, own_redis, pg_url, tiny_model_dir, reference_analyzer):
    lab = _lab(tmp_path, own_redis.url, pg_url, tiny_model_dir)
    try:
        expected = _slides(lab, reference_analyzer, 8)
        worker = lab.worker(field_delay_s=1.0)
        lab.beat()
        _enqueue_all(lab, expected)
        wait_until(lambda: any(lab.slide(code)["status"] == "done" for code in expected), 120, "a first slide done")
        own_redis.stop()
        own_redis.start()  # same port, every queue gone
        waiting = [code for code in expected if lab.slide(code)["status"] == "queued"]
        assert waiting, "the restart came too late to lose any message"
        slides = _assert_done_once_with_unchanged_counts(lab, expected, timeout_s=180)
        assert any(slides[code]["requeues"] >= 1 for code in waiting)
        assert worker.process.poll() is None  # the worker rode out the restart
    finally:
        lab.close()


def test_postgresql_down_beyond_the_retry_window_strands_nothing(tmp_path, redis_url, own_postgres, tiny_model_dir, reference_analyzer):
    lab = _lab(tmp_path, redis_url, own_postgres.url, tiny_model_dir)
    try:
        expected = _slides(lab, reference_analyzer, 4)
        worker = lab.worker(field_delay_s=1.0)
        lab.beat()
        _enqueue_all(lab, expected)
        lab.wait_for_status(list(expected)[:1], statuses=("running", "done"), timeout_s=120)
        own_postgres.stop()
        # Beyond the retry window: at least one task used up its retries while the database was down.
        wait_until(lambda: _gave_up_retrying(worker), 120, "a slide task to give up its retries")
        own_postgres.start()
        _assert_done_once_with_unchanged_counts(lab, expected, timeout_s=180)
    finally:
        lab.close()


def test_two_workers_storing_their_first_slides_on_a_fresh_database(tmp_path, redis_url, pg_url, tiny_model_dir, reference_analyzer):
    from smearflow.db.models import ModelVersion

    lab = _lab(tmp_path, redis_url, pg_url, tiny_model_dir)
    try:
        expected = _slides(lab, reference_analyzer, 4)
        first, second = lab.worker("worker-a"), lab.worker("worker-b")
        for worker in (first, second):
            wait_until(lambda w=worker: "ready." in w.log(), 120, f"{worker.name} to start")
        _enqueue_all(lab, expected)
        slides = _assert_done_once_with_unchanged_counts(lab, expected, timeout_s=120)
        assert {s["attempts"] for s in slides.values()} == {1}
        with lab.engine.connect() as connection:
            assert connection.scalar(sa.select(sa.func.count()).select_from(ModelVersion)) == 1
    finally:
        lab.close()
