"""The deployment end to end: real Celery workers, the watcher, Redis and PostgreSQL.

Each test starts its own processes (always killed in teardown), uses Redis
database 9 and queue names unique to the test, and a fresh PostgreSQL schema.
The classifier is the tiny untrained model (``SMEARFLOW_MODEL_DIR``); slides
are small drawn fields analysed by the real pipeline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from smearflow.db import make_engine, repository, session_factory, session_scope
from smearflow.db.models import Field, SlideCount
from worker_testdata import write_bad_slide, write_slide

pytestmark = pytest.mark.integration

SMEARFLOW = str(Path(sys.executable).with_name("smearflow"))


class Service:
    """A subprocess in its own process group, logging to a file; stopped for sure in teardown."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "Service":
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self

    def signal_group(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the whole group (the Celery parent and its pool processes)."""
        self.signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL when it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def children(self) -> list[int]:
        """Pids of the direct children (Celery's pool processes)."""
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def lab(tmp_path, pg_url, redis_url, tiny_model_dir):
    """Environment, folders and a process launcher for one test; every process is stopped afterwards."""
    run_id = uuid.uuid4().hex[:10]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMEARFLOW_")}
    env.update(
        SMEARFLOW_BROKER_URL=redis_url,
        SMEARFLOW_DATABASE_URL=pg_url,
        SMEARFLOW_QUEUE_PREFIX=f"test-{run_id}-",
        SMEARFLOW_MODEL_DIR=str(tiny_model_dir),
        SMEARFLOW_MAX_ATTEMPTS="3",
        SMEARFLOW_SOFT_TIME_LIMIT_S="60",
        SMEARFLOW_TIME_LIMIT_S="70",
        SMEARFLOW_TRAINING_TIME_LIMIT_S="71",
        SMEARFLOW_RETRY_BACKOFF_MAX_S="5",
        SMEARFLOW_VISIBILITY_TIMEOUT_S="72",
        SMEARFLOW_RESTORE_INTERVAL_S="2",
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
        COLUMNS="200",
    )
    engine = make_engine(pg_url)
    services: list[Service] = []

    class Lab:
        root = tmp_path / "lab"
        inbox = root / "inbox"
        done = root / "done"
        failed = root / "failed"
        queue = f"test-{run_id}-slides"
        factory = session_factory(engine)

        def __init__(self):
            self.env = env

        def worker(self, name="worker", **extra_env) -> Service:
            argv = [
                sys.executable, "-m", "celery", "-A", "smearflow.worker", "worker", "--pool=prefork", "-c", "1",
                "-Q", self.queue, "-n", f"{name}-{run_id}@%h", "--loglevel=INFO",
                "--without-gossip", "--without-mingle", "--without-heartbeat",
            ]
            service = Service(name, argv, {**env, **extra_env}, tmp_path)
            services.append(service)
            return service.start()

        def watcher(self, name="watcher") -> Service:
            argv = [SMEARFLOW, "watch", str(self.inbox), "--settle-seconds", "1", "--rescan-seconds", "60"]
            service = Service(name, argv, env, tmp_path)
            services.append(service)
            return service.start()

        def cli(self, *args) -> subprocess.CompletedProcess:
            return subprocess.run([SMEARFLOW, *args], env=env, capture_output=True, text=True, timeout=120)

        def slide(self, code):
            with session_scope(self.factory) as session:
                slide = repository.get_slide(session, code)
                if slide is None:
                    return None
                n_counts = session.scalar(select(func.count()).select_from(SlideCount).where(SlideCount.slide_id == slide.id))
                n_fields = session.scalar(select(func.count()).select_from(Field).where(Field.slide_id == slide.id))
                return {
                    "status": slide.status, "attempts": slide.attempts, "error": slide.error, "folder": slide.folder,
                    "n_counts": n_counts, "n_fields": n_fields,
                    "model": slide.model_version.name if slide.model_version else None,
                    "patient": slide.patient.patient_code if slide.patient else None,
                }

        def wait_for_status(self, codes, statuses=("done", "failed"), timeout_s=150.0):
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                slides = {code: self.slide(code) for code in codes}
                if all(s is not None and s["status"] in statuses for s in slides.values()):
                    return slides
                time.sleep(0.5)
            logs = "\n\n".join(f"--- {s.name}\n{s.log()[-6000:]}" for s in services)
            pytest.fail(f"timed out waiting for {codes} to be {statuses}: { {c: self.slide(c) for c in codes} }\n{logs}")

        def queue_length(self) -> int:
            import redis

            client = redis.Redis.from_url(redis_url)
            try:
                return int(client.llen(self.queue))
            finally:
                client.close()

        def send(self, code, **kwargs):
            from smearflow.worker.app import make_celery_app
            from smearflow.worker.settings import WorkerSettings

            app = make_celery_app(WorkerSettings.from_env(env))
            try:
                app.send_task("smearflow.analyze_slide", args=[code], kwargs=kwargs, queue=self.queue)
            finally:
                app.close()

    lab = Lab()
    lab.inbox.mkdir(parents=True)
    try:
        yield lab
    finally:
        for service in services:
            service.stop(timeout_s=10)
        engine.dispose()
        import redis

        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"*test-{run_id}-*"):
            client.delete(key)
        client.close()


def _drop(inbox: Path, name: str, **kwargs) -> Path:
    """Write a slide folder beside the inbox and move it in with one rename, as a scanner's export would."""
    staging = inbox.parent / "staging" / name
    write_slide(staging, **kwargs)
    return staging.rename(inbox / name)


def test_inbox_to_counts_in_postgres_with_failures_and_duplicates(lab):
    lab.worker()
    lab.watcher()
    _drop(lab.inbox, "S-A", seed=1, slide_json={"slide_id": "S-A", "patient_id": "P-A"})
    write_slide(lab.inbox / "S-B", seed=2)  # written in place, no slide.json: taken once settled
    write_bad_slide(lab.inbox / "S-BAD")  # its only field is not an image
    (lab.inbox / "S-JSON").mkdir()
    (lab.inbox / "S-JSON" / "slide.json").write_text("{not json")  # unreadable slide description

    slides = lab.wait_for_status(["S-A", "S-B", "S-BAD", "S-JSON"])
    for code in ("S-A", "S-B"):
        slide = slides[code]
        assert slide["status"] == "done", slide
        assert slide["attempts"] == 1 and slide["n_fields"] == 2 and slide["n_counts"] > 0
        assert slide["model"] is not None and slide["model"].startswith("cnn-")
        assert Path(slide["folder"]) == (lab.done / code).resolve()
        assert (lab.done / code / "field_00.png").is_file() and not (lab.inbox / code).exists()
    assert slides["S-A"]["patient"] == "P-A"
    for code, message in (("S-BAD", "not a readable image"), ("S-JSON", "not valid JSON")):
        slide = slides[code]
        assert slide["status"] == "failed" and message in slide["error"], slide
        assert Path(slide["folder"]) == (lab.failed / code).resolve()
        assert message in (lab.failed / code / "error.txt").read_text()
        assert not (lab.inbox / code).exists()
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
    deadline = time.monotonic() + 60
    while lab.queue_length() and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # let the last duplicate finish its no-op
    slide = lab.slide("S-DUP")
    assert (slide["status"], slide["attempts"], slide["n_fields"]) == ("done", 1, 2)
    assert Path(slide["folder"]) == elsewhere.resolve() and elsewhere.is_dir()  # enqueue leaves folders in place

    status = json.loads(lab.cli("status", "--json").stdout)
    assert status["counts"] == {"queued": 0, "running": 0, "done": 3, "failed": 2}


def test_a_worker_killed_mid_slide_is_restarted_and_the_slide_is_done_once(lab):
    # Slow fields make "mid-slide" reliable; a short visibility timeout makes redelivery quick.
    slow = {
        "SMEARFLOW_TEST_FIELD_DELAY_S": "1.5",
        "SMEARFLOW_SOFT_TIME_LIMIT_S": "25",
        "SMEARFLOW_TIME_LIMIT_S": "28",
        "SMEARFLOW_TRAINING_TIME_LIMIT_S": "29",
        "SMEARFLOW_VISIBILITY_TIMEOUT_S": "30",
    }
    worker = lab.worker("worker-1", **slow)
    folder = write_slide(lab.root / "slides" / "S-KILL", n_fields=4, seed=4)
    assert lab.cli("enqueue", str(folder), "--done-dir", str(lab.done)).returncode == 0
    lab.wait_for_status(["S-KILL"], statuses=("running",), timeout_s=120)
    time.sleep(2.0)  # inside the slide: its first field or two are done
    worker.kill()
    assert lab.slide("S-KILL")["status"] == "running"

    lab.worker("worker-2", **slow)
    slide = lab.wait_for_status(["S-KILL"], statuses=("done",), timeout_s=150)["S-KILL"]
    assert slide["attempts"] == 2 and slide["n_fields"] == 4 and slide["n_counts"] > 0
    assert Path(slide["folder"]) == (lab.done / "S-KILL").resolve()
    with session_scope(lab.factory) as session:
        (row,) = repository.counts_for(session, slide_code="S-KILL")
    assert row["status"] == "done" and row["wbc_total"] > 0


def test_a_slide_that_keeps_killing_its_worker_process_ends_failed(lab):
    worker = lab.worker(SMEARFLOW_MAX_ATTEMPTS="2", SMEARFLOW_TEST_FIELD_DELAY_S="3")
    folder = write_slide(lab.root / "slides" / "S-POISON", n_fields=3, seed=5)
    assert lab.cli("enqueue", str(folder), "--failed-dir", str(lab.failed)).returncode == 0
    killed = 0
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        slide = lab.slide("S-POISON")
        if slide["status"] == "failed":
            break
        if slide["status"] == "running" and slide["attempts"] > killed:
            for pid in worker.children():  # the pool process dies as if the slide crashed it
                os.kill(pid, signal.SIGKILL)
            killed = slide["attempts"]
        time.sleep(0.3)
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
    _drop(lab.inbox, "S-1", seed=7, slide_json={"slide_id": "S-1"})
    write_slide(lab.inbox / "S-2", seed=8)

    watcher = lab.watcher("watcher-1")
    lab.wait_for_status(["S-1", "S-2"], statuses=("queued",), timeout_s=60)
    deadline = time.monotonic() + 30
    while lab.queue_length() < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    watcher.stop()
    assert lab.queue_length() == 2

    _drop(lab.inbox, "S-3", seed=9, slide_json={"slide_id": "S-3"})  # dropped while the watcher was down
    lab.watcher("watcher-2")
    lab.wait_for_status(["S-3"], statuses=("queued",), timeout_s=60)
    time.sleep(3)  # settle time and more: S-1, S-2 and S-FINISHED had every chance to be sent again
    assert lab.queue_length() == 3
    assert lab.slide("S-FINISHED")["status"] == "done"
    assert {lab.slide(c)["attempts"] for c in ("S-1", "S-2", "S-3")} == {0}
