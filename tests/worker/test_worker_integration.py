"""The deployment end to end: real Celery workers, the watcher, Redis and PostgreSQL.

Each test starts its own processes (always killed in teardown), uses Redis
database 9 and queue names unique to the test, and a fresh PostgreSQL schema.
The classifier is the tiny untrained model (``SMEARFLOW_MODEL_DIR``); slides
are small drawn fields analysed by the real pipeline.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

from fault_servers import wait_until
from lab import Lab, drop
from smearflow.db import repository, session_scope
from worker_testdata import write_bad_slide, write_slide

pytestmark = pytest.mark.integration

@pytest.fixture
def lab(tmp_path, pg_url, redis_url, tiny_model_dir):
    """A deployment on the shared Redis (database 9) and a fresh PostgreSQL schema; stopped afterwards."""
    lab = Lab(tmp_path / "lab", redis_url, pg_url, tiny_model_dir)
    try:
        yield lab
    finally:
        lab.close()


def _succeeded(service, task="smearflow.analyze_slide") -> int:
    """How many tasks of ``task`` a worker's log reports as succeeded."""
    return sum(1 for line in service.log().splitlines() if f"{task}[" in line and "succeeded in" in line)


def test_inbox_to_counts_in_postgres_with_failures_rejections_and_duplicates(lab):
    worker = lab.worker()
    lab.watcher()
    drop(lab.inbox, "S-A", seed=1, slide_json={"slide_id": "S-A", "patient_id": "P-A"})
    write_slide(lab.inbox / "S-B", seed=2)  # written in place, no slide.json: taken once settled
    write_bad_slide(lab.inbox / "S-BAD")  # its only field is not an image
    (lab.inbox / "S-JSON").mkdir()
    (lab.inbox / "S-JSON" / "slide.json").write_text("{not json")  # unreadable slide description

    slides = lab.wait_for_status(["S-A", "S-B", "S-BAD"])
    for code in ("S-A", "S-B"):
        slide = slides[code]
        assert slide["status"] == "done", slide
        assert slide["attempts"] == 1 and slide["n_fields"] == 2 and slide["n_counts"] > 0
        assert slide["model"] is not None and slide["model"].startswith("cnn-")
        lab.wait_for_folder(code, lab.done)
        assert (lab.done / code / "field_00.png").is_file() and not (lab.inbox / code).exists()
    assert slides["S-A"]["patient"] == "P-A"
    bad = slides["S-BAD"]
    assert bad["status"] == "failed" and "not a readable image" in bad["error"], bad
    lab.wait_for_folder("S-BAD", lab.failed)
    assert "not a readable image" in (lab.failed / "S-BAD" / "error.txt").read_text()
    # A folder that is not a slide never reaches the queue: it is rejected, recorded and moved.
    wait_until((lab.failed / "S-JSON" / "error.txt").is_file, 60, "S-JSON to be rejected")
    assert "not valid JSON" in (lab.failed / "S-JSON" / "error.txt").read_text()
    assert not (lab.inbox / "S-JSON").exists() and lab.slide("S-JSON") is None
    with session_scope(lab.factory) as session:
        (row,) = repository.counts_for(session, slide_code="S-A")
    assert row["wbc_total"] > 0 and row["model_version"] == slides["S-A"]["model"]

    # A slide somewhere else, enqueued from the command line, then sent twice more by hand.
    elsewhere = write_slide(lab.root / "elsewhere" / "S-DUP", seed=3)
    first = lab.cli("enqueue", str(elsewhere), "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)[0]["action"] == "enqueued"
    lab.send("S-DUP")
    lab.send("S-DUP")
    again = lab.cli("enqueue", str(elsewhere), "--json")
    assert json.loads(again.stdout)[0]["action"] == "skipped"
    lab.wait_for_status(["S-DUP"], statuses=("done",))
    # S-A, S-B, S-BAD and S-DUP three times
    wait_until(lambda: _succeeded(worker) >= 6, 60, "six analyze_slide tasks to succeed", interval_s=0.5)
    assert _succeeded(worker) == 6
    slide = lab.slide("S-DUP")
    assert (slide["status"], slide["attempts"], slide["n_fields"]) == ("done", 1, 2)
    assert Path(slide["folder"]) == elsewhere and elsewhere.is_dir()  # enqueue leaves folders in place

    status = json.loads(lab.cli("status", "--json").stdout)
    assert status["counts"] == {"queued": 0, "running": 0, "done": 3, "partial": 0, "failed": 1, "rejected": 1}
    assert status["rejected"][0]["moved_to"] == str(lab.failed / "S-JSON")


def test_a_worker_killed_mid_slide_is_restarted_and_the_slide_is_done_once(lab):
    # Slow fields make "mid-slide" reliable; a short lease makes reconciliation quick.
    lease = {"SMEARFLOW_LEASE_S": "6", "SMEARFLOW_HEARTBEAT_S": "2", "SMEARFLOW_RECONCILE_INTERVAL_S": "3"}
    lab.env.update(lease)
    worker = lab.worker("worker-1", field_delay_s=1.5)
    lab.beat()
    folder = write_slide(lab.root / "slides" / "S-KILL", n_fields=4, seed=4)
    assert lab.cli("enqueue", str(folder), "--done-dir", str(lab.done)).returncode == 0
    lab.wait_for_status(["S-KILL"], statuses=("running",), timeout_s=120)
    worker.kill()
    assert lab.slide("S-KILL")["status"] == "running"

    lab.worker("worker-2", field_delay_s=1.5)
    slide = lab.wait_for_status(["S-KILL"], statuses=("done",), timeout_s=150)["S-KILL"]
    assert slide["attempts"] == 2 and slide["n_fields"] == 4 and slide["n_counts"] > 0
    lab.wait_for_folder("S-KILL", lab.done)
    with session_scope(lab.factory) as session:
        (row,) = repository.counts_for(session, slide_code="S-KILL")
    assert row["status"] == "done" and row["wbc_total"] > 0


def test_a_slide_that_keeps_killing_its_worker_process_ends_failed(lab):
    worker = lab.worker(field_delay_s=3, SMEARFLOW_MAX_ATTEMPTS="2")
    folder = write_slide(lab.root / "slides" / "S-POISON", n_fields=3, seed=5)
    assert lab.cli("enqueue", str(folder), "--failed-dir", str(lab.failed)).returncode == 0
    killed = 0

    def kill_each_attempt_until_failed():
        nonlocal killed
        slide = lab.slide("S-POISON")
        if slide["status"] == "running" and slide["attempts"] > killed:
            for pid in worker.children():  # the pool process dies as if the slide crashed it
                os.kill(pid, signal.SIGKILL)
            killed = slide["attempts"]
        return slide["status"] == "failed"

    wait_until(kill_each_attempt_until_failed, 150, "S-POISON to fail", interval_s=0.3)
    slide = lab.wait_for_status(["S-POISON"], statuses=("failed",), timeout_s=5)["S-POISON"]
    assert killed == 2 and slide["attempts"] == 2
    assert "Gave up after 2 attempt(s)" in slide["error"]
    assert "Gave up after 2 attempt(s)" in (lab.failed / "S-POISON" / "error.txt").read_text()


def test_restarting_the_watcher_never_enqueues_a_slide_twice(lab):
    # No worker: whatever the watcher sends stays countable on the queue.
    finished = write_slide(lab.inbox / "S-FINISHED", seed=6)  # done in the database, not yet moved
    with session_scope(lab.factory) as session:
        from smearflow.slides import read_slide_folder

        repository.register_slide(session, read_slide_folder(finished))
        repository.set_slide_status(session, "S-FINISHED", "done")
    drop(lab.inbox, "S-1", seed=7, slide_json={"slide_id": "S-1"})
    write_slide(lab.inbox / "S-2", seed=8)

    watcher = lab.watcher("watcher-1")
    lab.wait_for_status(["S-1", "S-2"], statuses=("queued",), timeout_s=60)
    wait_until(lambda: lab.queue_length() >= 2, 30, "two tasks on the queue")
    watcher.stop()
    assert lab.queue_length() == 2

    drop(lab.inbox, "S-3", seed=9, slide_json={"slide_id": "S-3"})  # dropped while the watcher was down
    second = lab.watcher("watcher-2")
    lab.wait_for_status(["S-3"], statuses=("queued",), timeout_s=60)
    # The start-up scan also looked at every older folder, and sent none.
    skipped = [f"slide {code} skipped" for code in ("S-1", "S-2", "S-FINISHED")]
    wait_until(lambda: all(line in second.log() for line in skipped), 60, f"{skipped} in the watcher's log")
    assert lab.queue_length() == 3
    assert lab.slide("S-FINISHED")["status"] == "done"
    assert {lab.slide(c)["attempts"] for c in ("S-1", "S-2", "S-3")} == {0}


def test_a_worker_process_above_the_memory_limit_is_replaced_after_its_slide(lab):
    # Every process is above 1 KiB: each is replaced after its task, and the next one takes the next slide.
    worker = lab.worker(SMEARFLOW_MAX_MEMORY_PER_CHILD_KIB="1")
    wait_until(lambda: "ready." in worker.log(), 120, "the worker to start", interval_s=0.5)
    for code, seed in (("S-MEM-1", 31), ("S-MEM-2", 32)):
        folder = write_slide(lab.root / "slides" / code, seed=seed)
        assert lab.cli("enqueue", str(folder)).returncode == 0
        slide = lab.wait_for_status([code], statuses=("done",), timeout_s=120)[code]
        assert slide["attempts"] == 1 and slide["n_counts"] > 0
    # Celery names its pool processes in order: each slide ran in a new one, and the worker lives on.
    ran_in = dict((code, process) for process, code in re.findall(r"/(ForkPoolWorker-\d+)\] slide (S-MEM-\d): attempt", worker.log()))
    assert ran_in.keys() == {"S-MEM-1", "S-MEM-2"} and ran_in["S-MEM-1"] != ran_in["S-MEM-2"], ran_in
    assert worker.process.poll() is None
