"""The Celery application of smearflow.

``celery -A smearflow.worker worker -Q slides`` and ``smearflow worker`` both
use :data:`app`, configured from the environment (see
:mod:`smearflow.worker.settings`). Building the app imports Celery only: the
task module is imported by the worker, and the model loads in each worker
process after the fork (:mod:`smearflow.worker.tasks`).

Delivery guarantees
-------------------
- ``task_acks_late`` with ``worker_prefetch_multiplier=1``: a message is
  acknowledged when its task has finished, and a worker holds at most one
  message per process, so a worker that dies loses nothing.
- ``task_reject_on_worker_lost``: a task whose worker process was killed is
  put back on the queue at once; the slide's attempt counter
  (``claim_slide``) makes a slide that keeps killing workers end failed.
- A running slide holds a lease its worker renews; when a whole worker dies
  (its main process killed), reconciliation sends the slide again once the
  lease expires, long before Redis' ``visibility_timeout`` (which exceeds
  every hard time limit) would redeliver the message.
- Reconciliation also sends again a queued slide whose message the broker
  lost (Redis restarted empty), and a slide whose retries ran out while the
  database was down.

Pools
-----
``worker_pool`` and ``worker_concurrency`` (``SMEARFLOW_WORKER_POOL``,
``SMEARFLOW_WORKER_CONCURRENCY``): with ``prefork`` each slide in flight has a
process and a model of its own; with ``threads`` the slides in flight are
threads of one process that share one model and its batches
(:class:`smearflow.classifier.shared_batches.SharedBatcher`). Celery enforces
no time limit in a threads pool: a slide that hangs keeps its thread, and
renews its lease, until the worker is restarted.

Memory
------
``worker_max_memory_per_child`` (``SMEARFLOW_MAX_MEMORY_PER_CHILD_KIB``, unset
by default): a worker process whose resident memory is above it when a task
ends is replaced by a fresh one, which loads the model again. A process that
analysed a very large field keeps that memory otherwise.
"""

from __future__ import annotations

from smearflow.worker.settings import (
    ANALYZE_SLIDE_TASK,
    REBENCHMARK_TASK,
    RECONCILE_TASK,
    RETRAIN_TASK,
    WorkerSettings,
)

TASK_MODULE = "smearflow.worker.tasks"


def celery_config(settings: WorkerSettings) -> dict:
    """The Celery configuration for ``settings`` (plain dict, for tests and :func:`make_celery_app`).

    Raises
    ------
    ValueError
        When a cron expression of the schedule is invalid.
    """
    from smearflow.worker.schedule import beat_schedule

    transport_options = {"visibility_timeout": settings.visibility_timeout_s}
    if settings.restore_interval_s is not None:
        # Kombu scans for messages past the visibility timeout every interval * throttle seconds.
        transport_options.update(unacked_restore_interval=settings.restore_interval_s, unacked_restore_throttle=1)
    training_limits = {
        "soft_time_limit": settings.training_time_limit_s * 0.95,
        "time_limit": settings.training_time_limit_s,
    }
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "broker_transport_options": transport_options,
        "result_backend_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_expires": 24 * 3600,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # A slide running when the broker connection drops is left to finish: its late ack may be lost,
        # but the redelivery finds the slide done and does nothing.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_proc_alive_timeout": settings.model_load_timeout_s,
        "worker_pool": settings.worker_pool,
        "worker_concurrency": settings.worker_concurrency,
        # Checked after each task: a process that kept a very large field's memory is replaced, not reused.
        "worker_max_memory_per_child": settings.max_memory_per_child_kib,
        "task_track_started": True,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "task_default_queue": settings.slides_queue,
        "task_routes": {
            ANALYZE_SLIDE_TASK: {"queue": settings.slides_queue},
            RECONCILE_TASK: {"queue": settings.slides_queue},
            RETRAIN_TASK: {"queue": settings.training_queue},
            REBENCHMARK_TASK: {"queue": settings.training_queue},
        },
        "task_annotations": {
            ANALYZE_SLIDE_TASK: {
                "soft_time_limit": settings.soft_time_limit_s,
                "time_limit": settings.time_limit_s,
                "max_retries": settings.max_retries,
                "retry_backoff": settings.retry_backoff_s,
                "retry_backoff_max": settings.retry_backoff_max_s,
            },
            RECONCILE_TASK: {"soft_time_limit": 120, "time_limit": 150, "max_retries": 0},
            RETRAIN_TASK: dict(training_limits, max_retries=0),
            REBENCHMARK_TASK: dict(training_limits, max_retries=0),
        },
        "timezone": settings.timezone,
        "enable_utc": True,
        "beat_schedule": beat_schedule(settings),
    }


def make_celery_app(
    settings: WorkerSettings | None = None, main: str = "smearflow", *, set_as_current: bool = False
):
    """A Celery app configured from ``settings`` (from the environment when None).

    Parameters
    ----------
    settings : WorkerSettings, optional
    main : str
        The app's name (shown by Flower and in worker names).
    set_as_current : bool
        Make it Celery's current app (what ``shared_task`` proxies resolve to).

    Returns
    -------
    celery.Celery
        Its ``smearflow_settings`` attribute holds ``settings``.
    """
    from celery import Celery

    settings = WorkerSettings.from_env() if settings is None else settings
    app = Celery(main, include=[TASK_MODULE], set_as_current=set_as_current)
    app.conf.update(celery_config(settings))
    app.smearflow_settings = settings
    return app


def settings_of(app) -> WorkerSettings:
    """The :class:`WorkerSettings` an app was made with (from the environment if none)."""
    settings = getattr(app, "smearflow_settings", None)
    return settings if isinstance(settings, WorkerSettings) else WorkerSettings.from_env()


app = make_celery_app(set_as_current=True)
"""The app ``celery -A smearflow.worker`` finds (also ``smearflow.worker.app``)."""
