"""Register a slide folder as ``queued`` and send its task, once.

Shared by the inbox watcher and ``smearflow enqueue``. The database is the
source of truth: a slide already ``queued``, ``running`` or ``done`` is not
registered again (registering resets its attempt counter) nor sent again,
so restarting the watcher or enqueueing a folder twice sends one task.
A ``failed`` slide is registered and sent again: dropping a fixed folder
back into the inbox retries it.

The slide is committed as ``queued`` before its task is sent, so a worker
never receives a task for a slide it cannot find. When sending fails
(broker down) the slide is recorded ``failed`` with the reason, so the next
scan of the inbox, or the next ``smearflow enqueue``, tries again instead of
leaving a ``queued`` slide that no message will ever reach.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from smearflow.errors import BadSlideError, TransientError
from smearflow.types import SlideInfo

logger = logging.getLogger(__name__)

ACTIVE_STATUSES = ("queued", "running", "done")
"""Statuses in which a slide is never registered or sent again (without ``force``)."""

SendSlide = Callable[[str, "str | None", "str | None"], None]
"""``send(slide_id, done_dir, failed_dir)``: puts one slide task on the queue."""


@dataclass(frozen=True)
class EnqueueOutcome:
    """What :func:`enqueue_slide_folder` did with one folder.

    Attributes
    ----------
    slide_id : str
    folder : str
    action : {"enqueued", "skipped"}
    status : str
        The slide's status in the database afterwards.
    reason : str or None
        Why it was skipped, or why the folder could not be read (it is then
        enqueued all the same, to be recorded failed by the worker).
    """

    slide_id: str
    folder: str
    action: str
    status: str
    reason: str | None = None


def describe_slide_folder(folder: str | Path) -> tuple[SlideInfo, str | None]:
    """The folder's ``SlideInfo`` and ``None``, or a bare one and the reason it is unreadable.

    An unreadable slide folder (no image, invalid ``slide.json``) is still
    registered under its folder name and sent, so that the worker records
    it failed and moves it to ``failed/`` with its ``error.txt``, like any
    other failure.
    """
    from smearflow.slides import read_slide_folder

    folder = Path(folder)
    try:
        return read_slide_folder(folder), None
    except BadSlideError as exc:
        info = SlideInfo(
            slide_id=folder.resolve().name,
            patient_id=None,
            collected_at=None,
            notes=None,
            folder=str(folder.resolve()),
            field_paths=(),
        )
        return info, str(exc)


def enqueue_slide_folder(
    folder: str | Path,
    session_factory,
    send: SendSlide,
    *,
    done_dir: str | Path | None = None,
    failed_dir: str | Path | None = None,
    force: bool = False,
) -> EnqueueOutcome:
    """Register ``folder`` as a queued slide and send its task, unless it is already in hand.

    Parameters
    ----------
    folder : str or Path
        A slide folder.
    session_factory : sessionmaker
    send : callable
        ``send(slide_id, done_dir, failed_dir)``; see :func:`celery_sender`.
    done_dir, failed_dir : str or Path, optional
        Passed on to the task: where the worker moves the folder afterwards.
    force : bool
        Register and send even when the slide is queued, running or done
        (re-analysis; a duplicate task is harmless).

    Returns
    -------
    EnqueueOutcome

    Raises
    ------
    smearflow.errors.TransientError
        When the database or the broker is unavailable (after sending
        failed, the slide is recorded ``failed`` so that a later scan
        retries it).
    ValueError
        When ``folder`` is not a folder.
    """
    from smearflow.db import repository, session_scope, transient_database_errors

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder must be a slide folder. Received: folder={str(folder)!r}")
    info, unreadable = describe_slide_folder(folder)
    if unreadable is not None and not folder.is_dir():
        # Moved away meanwhile (a worker archiving it): nothing to enqueue.
        raise ValueError(f"folder must be a slide folder. Received: folder={str(folder)!r}")
    with transient_database_errors(), session_scope(session_factory) as session:
        slide = repository.get_slide(session, info.slide_id)
        if slide is not None and slide.status in ACTIVE_STATUSES and not force:
            if slide.folder and Path(slide.folder) != Path(info.folder):
                reason = f"slide {info.slide_id} is already {slide.status} from folder {slide.folder}"
                logger.warning("%s: not enqueued: %s", folder, reason)
            else:
                reason = f"already {slide.status}"
            return EnqueueOutcome(info.slide_id, info.folder, "skipped", slide.status, reason)
        try:
            repository.register_slide(session, info, status="queued")
        except (BadSlideError, ValueError) as exc:
            # The folder read fine but the database refuses a field: register it bare, the worker records why.
            session.rollback()
            unreadable = str(exc)
            bare = SlideInfo(info.slide_id, None, None, None, info.folder, ())
            repository.register_slide(session, bare, status="queued")
    try:
        send(info.slide_id, None if done_dir is None else str(done_dir), None if failed_dir is None else str(failed_dir))
    except Exception as exc:  # kombu and redis raise many types for an unreachable broker
        reason = f"not enqueued, the broker is unavailable: {type(exc).__name__}: {exc}"
        with transient_database_errors(), session_scope(session_factory) as session:
            repository.record_slide_failure(session, info.slide_id, reason)
        raise TransientError(f"{folder}: {reason}") from exc
    logger.info("enqueued slide %s from %s", info.slide_id, folder)
    return EnqueueOutcome(info.slide_id, info.folder, "enqueued", "queued", unreadable)


def celery_sender(app, queue: str | None = None) -> SendSlide:
    """A ``send(slide_id, done_dir, failed_dir)`` that sends the analysis task with ``app``.

    Parameters
    ----------
    app : celery.Celery
    queue : str, optional
        The real queue name; the app's slides queue by default.
    """
    from smearflow.worker.app import settings_of
    from smearflow.worker.settings import ANALYZE_SLIDE_TASK

    queue = queue or settings_of(app).slides_queue

    def send(slide_id: str, done_dir: str | None, failed_dir: str | None) -> None:
        app.send_task(
            ANALYZE_SLIDE_TASK,
            args=[slide_id],
            kwargs={"done_dir": done_dir, "failed_dir": failed_dir},
            queue=queue,
        )

    return send
