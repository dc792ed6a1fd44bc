"""The Celery app: delivery settings, routing, and that `celery -A smearflow.worker` finds it."""

from smearflow.worker.app import celery_config, make_celery_app, settings_of
from smearflow.worker.settings import WorkerSettings


def test_delivery_settings_make_long_jobs_safe():
    settings = WorkerSettings(visibility_timeout_s=20000, time_limit_s=900, soft_time_limit_s=800)
    config = celery_config(settings)
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert config["broker_transport_options"] == {"visibility_timeout": 20000}
    limits = config["task_annotations"]["smearflow.analyze_slide"]
    assert (limits["soft_time_limit"], limits["time_limit"]) == (800, 900)
    assert config["task_annotations"]["smearflow.retrain"]["max_retries"] == 0
    assert config["accept_content"] == ["json"]
    assert config["worker_proc_alive_timeout"] == settings.model_load_timeout_s
    fast = celery_config(WorkerSettings(restore_interval_s=2))["broker_transport_options"]
    assert fast == {"visibility_timeout": 18000.0, "unacked_restore_interval": 2, "unacked_restore_throttle": 1}


def test_max_memory_per_child_reaches_the_worker_that_would_start(monkeypatch):
    from celery import _state as celery_state

    # Building a worker marks this process as a worker (result.get() refused); undone after the test.
    monkeypatch.setattr(celery_state, "_task_join_will_block", celery_state.task_join_will_block())
    assert celery_config(WorkerSettings())["worker_max_memory_per_child"] is None  # Celery's default: never
    app = make_celery_app(WorkerSettings(broker_url="memory://", max_memory_per_child_kib=1_300_000))
    assert app.conf.worker_max_memory_per_child == 1_300_000
    # What `celery worker` / `smearflow worker` builds from the app (not started): its pool replaces a child above it.
    worker = app.WorkController(app=app, pool_cls="solo", without_heartbeat=True, without_mingle=True, without_gossip=True)
    assert worker.max_memory_per_child == 1_300_000


def test_tasks_are_routed_to_their_queues():
    app = make_celery_app(WorkerSettings(queue_prefix="t1-", broker_url="memory://"))
    router = app.amqp.router
    assert router.route({}, "smearflow.analyze_slide")["queue"].name == "t1-slides"
    assert router.route({}, "smearflow.retrain")["queue"].name == "t1-training"
    assert router.route({}, "smearflow.rebenchmark")["queue"].name == "t1-training"
    assert router.route({}, "smearflow.reconcile")["queue"].name == "t1-slides"
    assert app.conf.task_default_queue == "t1-slides"
    assert settings_of(app).queue_prefix == "t1-"


def test_annotations_reach_the_tasks():
    app = make_celery_app(WorkerSettings(broker_url="memory://", soft_time_limit_s=11, time_limit_s=12))
    app.loader.import_default_modules()
    task = app.tasks["smearflow.analyze_slide"]
    assert (task.soft_time_limit, task.time_limit, task.acks_late) == (11, 12, True)


def test_celery_command_line_finds_the_app():
    from celery.app.utils import find_app

    import smearflow.worker

    found = find_app("smearflow.worker")
    assert found is smearflow.worker.app
    assert {"smearflow.analyze_slide", "smearflow.reconcile", "smearflow.retrain", "smearflow.rebenchmark"} <= set(found.tasks.keys())


def test_settings_of_an_app_without_settings_reads_the_environment(monkeypatch):
    from celery import Celery

    monkeypatch.setenv("SMEARFLOW_QUEUE_PREFIX", "env-")
    assert settings_of(Celery("plain", set_as_current=False)).slides_queue == "env-slides"


def test_beat_reconciles_on_the_slides_queue_every_interval():
    config = celery_config(WorkerSettings(queue_prefix="t2-", reconcile_interval_s=45))
    entry = config["beat_schedule"]["reconcile-slides"]
    assert (entry["task"], entry["schedule"], entry["options"]) == (
        "smearflow.reconcile", 45, {"queue": "t2-slides", "expires": 45}
    )


def test_a_starting_worker_asks_for_a_reconciliation():
    from types import SimpleNamespace

    from smearflow.worker import tasks

    app = make_celery_app(WorkerSettings(queue_prefix="t3-", broker_url="memory://"))
    sent = []
    app.send_task = lambda name, **kwargs: sent.append((name, kwargs))
    tasks._reconcile_at_start(sender=SimpleNamespace(app=app))
    assert sent == [("smearflow.reconcile", {"queue": "t3-slides"})]
    tasks._reconcile_at_start(sender=None)  # no app: nothing to do
    assert len(sent) == 1
