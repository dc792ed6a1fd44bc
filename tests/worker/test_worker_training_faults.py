"""Nightly retraining with a real training worker, Redis and PostgreSQL, at tiny scale."""

from __future__ import annotations

import json
import os
import signal

import pytest
from sqlalchemy import select

from fault_servers import wait_until
from lab import Lab
from smearflow.db import session_scope
from smearflow.db.models import TrainingRun
from worker_testdata import write_colour_classes

pytestmark = pytest.mark.integration

TINY_TRAINING = {"image_size": 32, "epochs": 1, "batch_size": 8, "test_fraction": 0.3, "arch_params": {"filters": [4, 8]}}


def _wait(trainer, condition, timeout_s: float, what: str) -> None:
    """``wait_until``, failing with the end of the trainer's log."""
    try:
        wait_until(condition, timeout_s, what, interval_s=0.3)
    except TimeoutError as timed_out:
        pytest.fail(f"{timed_out}\n{trainer.log()[-4000:]}")


def _training_runs(lab):
    with session_scope(lab.factory) as session:
        return [(r.outcome, r.attempts, r.error, r.candidate_dir) for r in session.scalars(select(TrainingRun))]


def test_a_training_process_killed_three_times_ends_in_one_failed_run_and_an_idle_queue(tmp_path, redis_url, pg_url, tiny_model_dir):
    data = write_colour_classes(tmp_path / "train", per_class=6, size_px=32)
    lab = Lab(
        tmp_path / "lab", redis_url, pg_url, tiny_model_dir,
        SMEARFLOW_TRAIN_CONFIG=json.dumps(TINY_TRAINING), SMEARFLOW_MAX_TRAINING_ATTEMPTS="3",
    )
    lab.env["SMEARFLOW_TRAIN_DATA"] = str(data)
    lab.env["SMEARFLOW_MODELS_DIR"] = str(tmp_path / "models")
    try:
        trainer = lab.worker("trainer", queue=lab.training_queue, TEST_TRAIN_DELAY_S="60")
        task_id = lab.send_task("smearflow.retrain", queue=lab.training_queue)
        killed = 0

        def kill_each_new_attempt():
            nonlocal killed
            runs = _training_runs(lab)
            if runs and runs[0][0] == "running" and runs[0][1] > killed:
                for pid in trainer.children():  # the training process dies, as out of memory would kill it
                    os.kill(pid, signal.SIGKILL)
                killed = runs[0][1]
            return killed >= 3

        _wait(trainer, kill_each_new_attempt, 240, "three training processes to be started and killed")
        _wait(trainer, lambda: _training_runs(lab)[0][0] != "running", 120, "the training run to end")
        ((outcome, attempts, error, candidate_dir),) = _training_runs(lab)
        assert (outcome, attempts) == ("failed", 4)
        assert "started 3 times and its process died each time" in error
        # Nothing left to redeliver: the queue is idle.
        _wait(trainer, lambda: lab.queue_length(lab.training_queue) == 0, 60, "the training queue to empty")
        assert not os.path.exists(candidate_dir)  # no orphan candidate folder
        # A failed run is a failed task, as Flower shows it.
        _wait(trainer, lambda: lab.task_state(task_id) == "FAILURE", 60, "the task to be marked FAILURE")
    finally:
        lab.close()
