"""A small laboratory deployment for the integration and fault tests: workers, beat, the watcher.

Every process is a real subprocess in its own process group, logging to a
file in the test's folder, and is stopped for sure in teardown. Queue names
are unique to the test; the broker and database are whatever URLs the test
gives (the shared services, or servers the test started itself).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from fault_servers import wait_until
from smearflow.db import make_engine, repository, session_factory, session_scope
from smearflow.db.models import Field, SlideCount

SMEARFLOW = str(Path(sys.executable).with_name("smearflow"))
SLOW_WORKER = str(Path(__file__).with_name("slow_worker.py"))

BASE_ENV = {
    "SMEARFLOW_MAX_ATTEMPTS": "3",
    "SMEARFLOW_SOFT_TIME_LIMIT_S": "60",
    "SMEARFLOW_TIME_LIMIT_S": "70",
    "SMEARFLOW_TRAINING_TIME_LIMIT_S": "71",
    "SMEARFLOW_RETRY_BACKOFF_S": "1",
    "SMEARFLOW_RETRY_BACKOFF_MAX_S": "3",
    "SMEARFLOW_VISIBILITY_TIMEOUT_S": "72",
    "SMEARFLOW_RESTORE_INTERVAL_S": "2",
    "SMEARFLOW_RETRAIN_CRON": "off",
    "SMEARFLOW_BENCHMARK_CRON": "off",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "CUDA_VISIBLE_DEVICES": "",
    "COLUMNS": "200",
}


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

    def kill_main_process(self) -> None:
        """SIGKILL the main process only; its pool processes are left to fend for themselves."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, then SIGKILL when it does not exit in time; the group is always killed at the end."""
        if self.process is not None and self.process.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # orphaned pool processes too
            except ProcessLookupError:
                pass

    def children(self) -> list[int]:
        """Pids of the direct children (Celery's pool processes)."""
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Lab:
    """Folders, environment and processes of one test's deployment."""

    def __init__(self, root: Path, broker_url: str, database_url: str, model_dir: Path, **env):
        self.run_id = uuid.uuid4().hex[:10]
        self.root = root
        self.inbox, self.done, self.failed = root / "inbox", root / "done", root / "failed"
        self.inbox.mkdir(parents=True)
        self.broker_url = broker_url
        self.queue = f"test-{self.run_id}-slides"
        self.training_queue = f"test-{self.run_id}-training"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SMEARFLOW_")}
        self.env.update(
            BASE_ENV,
            SMEARFLOW_BROKER_URL=broker_url,
            SMEARFLOW_DATABASE_URL=database_url,
            SMEARFLOW_QUEUE_PREFIX=f"test-{self.run_id}-",
            SMEARFLOW_MODEL_DIR=str(model_dir),
            PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])),
        )
        self.env.update(env)
        self.engine = make_engine(database_url)
        self.factory = session_factory(self.engine)
        self.services: list[Service] = []

    def _start(self, name: str, argv: list[str], extra_env: dict) -> Service:
        service = Service(name, argv, {**self.env, **extra_env}, self.root)
        self.services.append(service)
        return service.start()

    def worker(
        self, name="worker", field_delay_s: float = 0.0, queue: str | None = None, prefix: tuple[str, ...] = (),
        pool: str = "prefork", concurrency: int = 1, **extra_env
    ) -> Service:
        """A worker (prefork, concurrency 1 unless told) on this lab's slides queue (or ``queue``); slower when asked.

        ``prefix`` runs it through another program, e.g. ``("ip", "netns", "exec", name)`` for another host.
        """
        slow = field_delay_s or extra_env.get("TEST_TRAIN_DELAY_S")
        program = [sys.executable, SLOW_WORKER] if slow else [sys.executable, "-m", "celery", "-A", "smearflow.worker"]
        argv = [
            *prefix, *program, "worker", f"--pool={pool}", "-c", str(concurrency), "-Q", queue or self.queue, "-n", f"{name}-{self.run_id}@%h",
            "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]
        return self._start(name, argv, {"TEST_FIELD_DELAY_S": str(field_delay_s), **extra_env})

    def beat(self, name="beat") -> Service:
        return self._start(name, [SMEARFLOW, "beat", "--schedule-file", str(self.root / f"{name}-schedule")], {})

    def watcher(self, name="watcher", *extra_args: str) -> Service:
        argv = [SMEARFLOW, "watch", str(self.inbox), "--settle-seconds", "1", "--rescan-seconds", "60", *extra_args]
        return self._start(name, argv, {})

    def cli(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([SMEARFLOW, *args], env=self.env, capture_output=True, text=True, timeout=120)

    def slide(self, code):
        with session_scope(self.factory) as session:
            slide = repository.get_slide(session, code)
            if slide is None:
                return None
            n_counts = session.scalar(select(func.count()).select_from(SlideCount).where(SlideCount.slide_id == slide.id))
            n_fields = session.scalar(select(func.count()).select_from(Field).where(Field.slide_id == slide.id))
            return {
                "status": slide.status, "attempts": slide.attempts, "requeues": slide.requeues, "error": slide.error,
                "folder": slide.folder, "n_counts": n_counts, "n_fields": n_fields,
                "model": slide.model_version.name if slide.model_version else None,
                "patient": slide.patient.patient_code if slide.patient else None,
                "started_at": slide.started_at, "finished_at": slide.finished_at,
            }

    def counts(self, code) -> dict:
        with session_scope(self.factory) as session:
            (row,) = repository.counts_for(session, slide_code=code)
            return {key: row[key] for key in ("status", "counts", "rbc_count", "platelet_count")}

    def wait_for_status(self, codes, statuses=("done", "failed"), timeout_s=150.0):
        """Wait until every slide has one of ``statuses``; on timeout, fail with every service's log."""
        def reached():
            try:
                slides = {code: self.slide(code) for code in codes}
            except Exception:  # noqa: BLE001 - the database may be down on purpose
                return None
            return slides if all(s is not None and s["status"] in statuses for s in slides.values()) else None

        try:
            return wait_until(reached, timeout_s, f"{codes} to be {statuses}", interval_s=0.5)
        except TimeoutError:
            logs = "\n\n".join(f"--- {s.name}\n{s.log()[-6000:]}" for s in self.services)
            pytest.fail(f"timed out waiting for {codes} to be {statuses}: { {c: self.slide(c) for c in codes} }\n{logs}")

    def wait_for_folder(self, code, parent: Path, timeout_s=60.0) -> dict:
        """Wait until the slide's folder is recorded in ``parent`` (a finished slide is archived just after its results)."""
        def moved():
            slide = self.slide(code)
            return slide if slide is not None and Path(slide["folder"]) == parent / code else None

        return wait_until(moved, timeout_s, f"{code}'s folder to be moved to {parent}", interval_s=0.2)

    def queue_length(self, queue: str | None = None) -> int:
        import redis

        client = redis.Redis.from_url(self.broker_url)
        try:
            return int(client.llen(queue or self.queue))
        finally:
            client.close()

    def send(self, code, **kwargs):
        self.send_task("smearflow.analyze_slide", args=[code], kwargs=kwargs, queue=self.queue)

    def send_task(self, name: str, **options) -> str:
        """Send a task by name; returns its id."""
        app = self.celery_app()
        try:
            return app.send_task(name, **options).id
        finally:
            app.close()

    def task_state(self, task_id: str) -> str:
        """The task's state in the result backend (``FAILURE``, ``SUCCESS`` …)."""
        app = self.celery_app()
        try:
            return app.AsyncResult(task_id).state
        finally:
            app.close()

    def celery_app(self):
        from smearflow.worker.app import make_celery_app
        from smearflow.worker.settings import WorkerSettings

        return make_celery_app(WorkerSettings.from_env(self.env))

    def close(self) -> None:
        for service in self.services:
            service.stop(timeout_s=10)
        self.engine.dispose()
        try:
            import redis

            client = redis.Redis.from_url(self.broker_url, socket_connect_timeout=2)
            for key in client.scan_iter(f"*test-{self.run_id}-*"):
                client.delete(key)
            client.close()
        except Exception:  # noqa: BLE001 - a server the test already stopped
            pass


def drop(inbox: Path, name: str, **kwargs) -> Path:
    """Write a slide folder beside the inbox and move it in with one rename, as a scanner's export would."""
    from worker_testdata import write_slide

    staging = inbox.parent / "staging" / name
    write_slide(staging, **kwargs)
    return staging.rename(inbox / name)
