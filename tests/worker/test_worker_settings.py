"""Settings from the environment, queue names and the beat schedule."""

import pytest

from smearflow.worker.schedule import beat_schedule, parse_cron
from smearflow.worker.settings import DEFAULT_BROKER_URL, WorkerSettings


def test_defaults_without_environment():
    settings = WorkerSettings.from_env({})
    assert settings.broker_url == DEFAULT_BROKER_URL == "redis://127.0.0.1:6379/0"
    assert settings.result_backend == settings.broker_url
    assert (settings.slides_queue, settings.training_queue) == ("slides", "training")
    assert settings.database_url is None and settings.model_dir is None
    assert settings.max_attempts == 3 and settings.preload_model is True
    assert settings.visibility_timeout_s > max(settings.time_limit_s, settings.training_time_limit_s)
    assert settings.retrain_cron == "30 2 * * *"
    assert settings.max_memory_per_child_kib is None
    assert settings == WorkerSettings()


def test_every_variable_is_read():
    env = {
        "SMEARFLOW_BROKER_URL": "redis://redis:6379/3",
        "SMEARFLOW_RESULT_BACKEND": "redis://redis:6379/4",
        "SMEARFLOW_DATABASE_URL": "postgresql+psycopg://u@db/x",
        "SMEARFLOW_QUEUE_PREFIX": "lab1-",
        "SMEARFLOW_MODEL_DIR": "/models/cnn",
        "SMEARFLOW_SEGMENTER": "unet",
        "SMEARFLOW_SEGMENTATION_MODEL_DIR": "/models/unet",
        "SMEARFLOW_RBC_DIAMETER_PX": "18.5",
        "SMEARFLOW_PRELOAD_MODEL": "off",
        "SMEARFLOW_MAX_ATTEMPTS": "5",
        "SMEARFLOW_MAX_RETRIES": "2",
        "SMEARFLOW_RETRY_BACKOFF_S": "1",
        "SMEARFLOW_RETRY_BACKOFF_MAX_S": "8",
        "SMEARFLOW_SOFT_TIME_LIMIT_S": "50",
        "SMEARFLOW_TIME_LIMIT_S": "60",
        "SMEARFLOW_TRAINING_TIME_LIMIT_S": "70",
        "SMEARFLOW_VISIBILITY_TIMEOUT_S": "80",
        "SMEARFLOW_RESTORE_INTERVAL_S": "2",
        "SMEARFLOW_MODEL_LOAD_TIMEOUT_S": "30",
        "SMEARFLOW_TRAIN_DATA": "/data/pbc",
        "SMEARFLOW_TRAIN_CONFIG": '{"epochs": 2}',
        "SMEARFLOW_MODELS_DIR": "/data/models",
        "SMEARFLOW_BENCHMARK_DIR": "/data/bench",
        "SMEARFLOW_BENCHMARK_CONFIG": '{"folds": 3}',
        "SMEARFLOW_RETRAIN_CRON": "0 3 * * 1-5",
        "SMEARFLOW_BENCHMARK_CRON": "off",
        "SMEARFLOW_RETRAIN_METRIC": "accuracy",
        "SMEARFLOW_RETRAIN_MARGIN": "0.02",
        "SMEARFLOW_TIMEZONE": "Europe/Madrid",
        "SMEARFLOW_LEASE_S": "40",
        "SMEARFLOW_HEARTBEAT_S": "10",
        "SMEARFLOW_RECONCILE_INTERVAL_S": "20",
        "SMEARFLOW_QUEUED_GRACE_S": "30",
        "SMEARFLOW_MAX_REQUEUES": "7",
        "SMEARFLOW_MAX_FIELDS": "300",
        "SMEARFLOW_MAX_FIELD_PIXELS": "1000000",
        "SMEARFLOW_CLASSIFY_BATCH_SIZE": "16",
        "SMEARFLOW_PREFETCH_FIELDS": "0",
        "SMEARFLOW_PREPARE_THREADS": "2",
        "SMEARFLOW_INFERENCE_PRECISION": "bfloat16",
        "SMEARFLOW_MAX_MEMORY_PER_CHILD_KIB": "1300000",
    }
    s = WorkerSettings.from_env(env)
    assert (s.broker_url, s.result_backend, s.database_url) == (
        "redis://redis:6379/3", "redis://redis:6379/4", "postgresql+psycopg://u@db/x"
    )
    assert (s.slides_queue, s.training_queue) == ("lab1-slides", "lab1-training")
    assert (s.model_dir, s.segmenter, s.segmentation_model_dir, s.rbc_diameter_px) == ("/models/cnn", "unet", "/models/unet", 18.5)
    assert s.preload_model is False
    assert (s.max_attempts, s.max_retries, s.retry_backoff_s, s.retry_backoff_max_s) == (5, 2, 1.0, 8.0)
    assert (s.soft_time_limit_s, s.time_limit_s, s.training_time_limit_s, s.visibility_timeout_s) == (50, 60, 70, 80)
    assert s.model_load_timeout_s == 30 and s.restore_interval_s == 2
    assert (s.train_data, s.train_config, s.models_dir) == ("/data/pbc", {"epochs": 2}, "/data/models")
    assert (s.benchmark_dir, s.benchmark_config) == ("/data/bench", {"folds": 3})
    assert (s.retrain_cron, s.benchmark_cron) == ("0 3 * * 1-5", None)
    assert (s.retrain_metric, s.retrain_margin, s.timezone) == ("accuracy", 0.02, "Europe/Madrid")
    assert (s.lease_s, s.heartbeat_s, s.reconcile_interval_s, s.queued_grace_s) == (40, 10, 20, 30)
    assert (s.max_requeues, s.max_fields, s.max_field_pixels) == (7, 300, 1_000_000)
    assert (s.classify_batch_size, s.prefetch_fields, s.inference_precision) == (16, 0, "bfloat16")
    assert s.prepare_threads == 2
    assert s.max_memory_per_child_kib == 1_300_000


def test_queue_names_can_be_overridden_one_by_one():
    s = WorkerSettings.from_env({"SMEARFLOW_QUEUE_PREFIX": "t-", "SMEARFLOW_SLIDES_QUEUE": "gpu"})
    assert s.queues == {"slides": "gpu", "training": "t-training"}
    assert s.queue_names(["training", "slides"]) == ["t-training", "gpu"]
    with pytest.raises(ValueError, match=r"queues must be among \['slides', 'training'\]. Received: \['gpu'\]"):
        s.queue_names(["gpu"])


@pytest.mark.parametrize(
    "env, message",
    [
        ({"SMEARFLOW_MAX_ATTEMPTS": "three"}, "SMEARFLOW_MAX_ATTEMPTS must be an integer. Received: SMEARFLOW_MAX_ATTEMPTS='three'"),
        ({"SMEARFLOW_RETRAIN_MARGIN": "a lot"}, "SMEARFLOW_RETRAIN_MARGIN must be a number"),
        ({"SMEARFLOW_TIME_LIMIT_S": "inf"}, "SMEARFLOW_TIME_LIMIT_S must be a finite number"),
        ({"SMEARFLOW_PRELOAD_MODEL": "maybe"}, "SMEARFLOW_PRELOAD_MODEL must be one of"),
        ({"SMEARFLOW_TRAIN_CONFIG": "{epochs: 2}"}, "SMEARFLOW_TRAIN_CONFIG must be a JSON object"),
        ({"SMEARFLOW_BENCHMARK_CONFIG": "[1, 2]"}, "benchmark_config must be a JSON object"),
        ({"SMEARFLOW_TRAIN_CONFIG": "3"}, "train_config must be a JSON object"),
    ],
)
def test_from_env_names_the_bad_variable(env, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        WorkerSettings.from_env(env)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"broker_url": ""}, "broker_url must not be empty"),
        ({"slides_queue": "q", "training_queue": "q"}, "slides_queue and training_queue must differ"),
        ({"segmenter": "magic"}, "segmenter must be 'classical' or 'unet'"),
        ({"max_attempts": 0}, "max_attempts must be at least 1"),
        ({"max_retries": -1}, "max_retries must be at least 0"),
        ({"retry_backoff_s": 0}, "retry_backoff_s must be positive"),
        ({"model_load_timeout_s": -1}, "model_load_timeout_s must be positive"),
        ({"soft_time_limit_s": 100, "time_limit_s": 100}, "soft_time_limit_s must be below time_limit_s"),
        ({"visibility_timeout_s": 1500}, "visibility_timeout_s must exceed time_limit_s"),
        ({"training_time_limit_s": 20000}, "visibility_timeout_s must exceed"),
        ({"restore_interval_s": 0}, "restore_interval_s must be positive"),
        ({"rbc_diameter_px": 0}, "rbc_diameter_px must be positive"),
        ({"retrain_margin": -0.1}, "retrain_margin must not be negative"),
        ({"lease_s": 0}, "lease_s must be positive"),
        ({"reconcile_interval_s": -5}, "reconcile_interval_s must be positive"),
        ({"heartbeat_s": 40, "lease_s": 60}, "heartbeat_s must be at most half of lease_s"),
        ({"max_requeues": -1}, "max_requeues must be at least 0"),
        ({"max_fields": 0}, "max_fields must be at least 1"),
        ({"max_field_pixels": 0}, "max_field_pixels must be at least 1"),
        ({"classify_batch_size": 0}, "classify_batch_size must be at least 1"),
        ({"prefetch_fields": -1}, "prefetch_fields must be at least 0"),
        ({"max_memory_per_child_kib": 0}, "max_memory_per_child_kib must be at least 1. Received: max_memory_per_child_kib=0"),
        ({"inference_precision": "float16"}, r"inference_precision must be one of \['float32', 'bfloat16'\]"),
    ],
)
def test_settings_validate(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WorkerSettings(**kwargs)


def test_no_test_hook_is_a_production_setting():
    import dataclasses

    assert not [f.name for f in dataclasses.fields(WorkerSettings) if "test" in f.name]


def test_settings_round_trip_through_a_dict():
    s = WorkerSettings(queue_prefix="x-", train_config={"epochs": 1})
    assert WorkerSettings.from_dict(s.to_dict()) == s


def test_parse_cron_uses_cron_field_order():
    schedule = parse_cron("30 2 1 6 0")
    assert schedule.minute == {30} and schedule.hour == {2}
    assert schedule.day_of_month == {1} and schedule.month_of_year == {6} and schedule.day_of_week == {0}


@pytest.mark.parametrize("expression, message", [("30 2 * *", "has five fields"), ("61 2 * * *", "not a valid cron expression")])
def test_parse_cron_rejects_bad_expressions(expression, message):
    with pytest.raises(ValueError, match=message):
        parse_cron(expression)


def test_beat_schedule_runs_both_jobs_on_the_training_queue_and_can_turn_one_off():
    s = WorkerSettings(queue_prefix="t-", retrain_cron="0 1 * * *", benchmark_cron=None)
    schedule = beat_schedule(s)
    assert list(schedule) == ["reconcile-slides", "nightly-retrain"]
    entry = schedule["nightly-retrain"]
    assert entry["task"] == "smearflow.retrain" and entry["options"]["queue"] == "t-training"
    assert entry["schedule"].hour == {1} and entry["schedule"].minute == {0}
    assert set(beat_schedule(WorkerSettings())) == {"reconcile-slides", "nightly-retrain", "nightly-benchmark"}
    with pytest.raises(ValueError, match="five fields"):
        beat_schedule(WorkerSettings(retrain_cron="nightly"))


def test_every_variable_read_is_documented():
    import re

    from smearflow.worker import settings as module

    import dataclasses

    read = {f"SMEARFLOW_{f.name.upper()}" for f in dataclasses.fields(module.WorkerSettings)}
    documented = set(re.findall(r"``(SMEARFLOW_[A-Z0-9_]+)``", module.__doc__))
    assert read == documented


def test_the_documented_numeric_defaults_are_the_real_ones():
    import dataclasses
    import re

    from smearflow.worker import settings as module

    defaults = {f"SMEARFLOW_{f.name.upper()}": f.default for f in dataclasses.fields(module.WorkerSettings)}
    checked = 0
    for name, text in re.findall(r"``(SMEARFLOW_[A-Z0-9_]+)``\n    (.+?)(?=\n``|\n\"\"\"|\Z)", module.__doc__, re.S):
        documented = re.search(r"\[([0-9.]+)\]\s*$", text.strip())
        if documented:
            assert float(documented.group(1)) == float(defaults[name]), name
            checked += 1
    assert checked >= 15
