"""Nightly retraining with a real training worker, Redis and PostgreSQL, at tiny scale."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from sqlalchemy import select

from lab import Lab
from smearflow.db import session_scope
from smearflow.db.models import TrainingRun
from worker_testdata import write_colour_classes

pytestmark = pytest.mark.integration

TINY_TRAINING = {"image_size": 32, "epochs": 1, "batch_size": 8, "test_fraction": 0.3, "arch_params": {"filters": [4, 8]}}


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
        deadline = time.monotonic() + 240
        while killed < 3:
            assert time.monotonic() < deadline, trainer.log()[-4000:]
            runs = _training_runs(lab)
            if runs and runs[0][0] == "running" and runs[0][1] > killed:
                for pid in trainer.children():  # the training process dies, as out of memory would kill it
                    os.kill(pid, signal.SIGKILL)
                killed = runs[0][1]
            time.sleep(0.3)
        while _training_runs(lab)[0][0] == "running":
            assert time.monotonic() < deadline, trainer.log()[-4000:]
            time.sleep(0.3)
        ((outcome, attempts, error, candidate_dir),) = _training_runs(lab)
        assert (outcome, attempts) == ("failed", 4)
        assert "started 3 times and its process died each time" in error
        while lab.queue_length(lab.training_queue) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert lab.queue_length(lab.training_queue) == 0  # nothing left to redeliver: the queue is idle
        assert not os.path.exists(candidate_dir)  # no orphan candidate folder
        while lab.task_state(task_id) != "FAILURE":  # a failed run is a failed task, as Flower shows it
            assert time.monotonic() < deadline, (lab.task_state(task_id), trainer.log()[-4000:])
            time.sleep(0.3)
    finally:
        lab.close()
