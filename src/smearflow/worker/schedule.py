"""The nightly schedule of Celery beat: retraining and re-benchmarking."""

from __future__ import annotations

from typing import Any

from smearflow.worker.settings import REBENCHMARK_TASK, RECONCILE_TASK, RETRAIN_TASK, WorkerSettings


def parse_cron(expression: str):
    """A Celery ``crontab`` from a five-field cron expression.

    Parameters
    ----------
    expression : str
        ``"minute hour day-of-month month day-of-week"``, e.g. ``"30 2 * * *"``
        for 02:30 every night.

    Returns
    -------
    celery.schedules.crontab

    Raises
    ------
    ValueError
        When the expression does not have five fields or a field is out of range.
    """
    from celery.schedules import crontab

    fields = str(expression).split()
    if len(fields) != 5:
        raise ValueError(
            "a cron expression has five fields (minute hour day-of-month month day-of-week). "
            f"Received: expression={expression!r}"
        )
    minute, hour, day_of_month, month_of_year, day_of_week = fields
    try:
        return crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )
    except ValueError as exc:
        raise ValueError(f"not a valid cron expression ({exc}). Received: expression={expression!r}") from None


def beat_schedule(settings: WorkerSettings) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule``: reconciliation on the slides queue, retraining and the re-benchmark on the training queue.

    A schedule whose cron is ``None`` (``SMEARFLOW_*_CRON=off``) is left out.

    Raises
    ------
    ValueError
        When a cron expression is invalid (see :func:`parse_cron`).
    """
    schedule: dict[str, dict[str, Any]] = {
        "reconcile-slides": {
            "task": RECONCILE_TASK,
            "schedule": settings.reconcile_interval_s,
            # A reconciliation that waited a whole interval is replaced by the next one.
            "options": {"queue": settings.slides_queue, "expires": settings.reconcile_interval_s},
        }
    }
    entries = (("nightly-retrain", RETRAIN_TASK, settings.retrain_cron), ("nightly-benchmark", REBENCHMARK_TASK, settings.benchmark_cron))
    for name, task, cron in entries:
        if cron is None:
            continue
        schedule[name] = {
            "task": task,
            "schedule": parse_cron(cron),
            # A missed run is not worth running hours late on top of the next one.
            "options": {"queue": settings.training_queue, "expires": 12 * 3600},
        }
    return schedule
