"""Register a slide folder as ``queued`` and send its task, once; reject what is not a slide.

Shared by the inbox watcher and ``smearflow enqueue``. The database is the
source of truth: a slide already ``queued``, ``running``, ``done`` or
``partial`` from the same folder is not registered again (registering resets
its counters) nor sent again, so restarting the watcher or enqueueing a
folder twice sends one task. A ``failed`` slide is registered and sent
again: dropping a fixed folder back into the inbox retries it.

A folder that is not a slide is *rejected*: recorded in the database
(``rejected_folders``, shown by ``smearflow status``) with the reason and,
when a failed folder is given, moved there with an ``error.txt``. That
covers a folder that cannot be read as a slide (a symbolic link, no image,
too many images, an invalid ``slide.json`` or slide id), a second folder
with the id of a slide already stored or in flight from another folder, and
a slide id stored for another patient (unless the operator reassigns it).

The slide is committed as ``queued`` before its task is sent, so a worker
never receives a task for a slide it cannot find. When sending fails
(broker down) the slide stays ``queued``: reconciliation
(:mod:`smearflow.worker.reconcile`) sends it once the broker is back.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from smearflow.errors import BadSlideError, SlideConflictError, TransientError
from smearflow.slides import DEFAULT_MAX_FIELDS
from smearflow.types import SlideInfo

logger = logging.getLogger(__name__)

IN_HAND_STATUSES = ("queued", "running", "done", "partial")
"""Statuses in which a slide is never registered or sent again (without ``force``)."""

SendSlide = Callable[[str, "str | None", "str | None"], None]
"""``send(slide_id, done_dir, failed_dir)``: puts one slide task on the queue."""


@dataclass(frozen=True)
class EnqueueOutcome:
    """What :func:`enqueue_slide_folder` did with one folder.

    Attributes
    ----------
    slide_id : str or None
        ``None`` when the folder could not be read as a slide.
    folder : str
    action : {"enqueued", "skipped", "rejected"}
    status : str or None
        The slide's status in the database afterwards.
    reason : str or None
        Why it was skipped or rejected.
    moved_to : str or None
        Where a rejected folder was moved.
    """

    slide_id: str | None
    folder: str
    action: str
    status: str | None
    reason: str | None = None
    moved_to: str | None = None


def enqueue_slide_folder(
    folder: str | Path,
    session_factory,
    send: SendSlide,
    *,
    done_dir: str | Path | None = None,
    failed_dir: str | Path | None = None,
    force: bool = False,
    reassign: bool = False,
    actor: str | None = None,
    max_fields: int = DEFAULT_MAX_FIELDS,
) -> EnqueueOutcome:
    """Register ``folder`` as a queued slide and send its task, unless it is in hand or not a slide.

    Parameters
    ----------
    folder : str or Path
        A slide folder.
    session_factory : sessionmaker
    send : callable
        ``send(slide_id, done_dir, failed_dir)``; see :func:`celery_sender`.
    done_dir, failed_dir : str or Path, optional
        Where the worker moves the folder afterwards; a rejected folder is
        moved to ``failed_dir`` at once (it stays in place without one).
    force : bool
        Register and send even when the slide is queued, running or done,
        from this or another folder (re-analysis; a duplicate task is harmless).
    reassign : bool
        Allow the folder to move a stored slide to another patient (recorded).
    actor : str, optional
        Who asked, recorded with a reassignment.
    max_fields : int
        A folder with more field images is rejected.

    Returns
    -------
    EnqueueOutcome

    Raises
    ------
    smearflow.errors.TransientError
        When the database or the broker is unavailable (after sending
        failed, the slide stays queued and reconciliation sends it later).
    ValueError
        When nothing exists at ``folder``.
    """
    from smearflow.slides import read_slide_folder

    folder = Path(os.path.abspath(folder))
    if not os.path.lexists(folder):
        raise ValueError(f"folder must be a slide folder. Received: folder={str(folder)!r}")
    try:
        info = read_slide_folder(folder, max_fields=max_fields)
    except BadSlideError as exc:
        return reject_folder(session_factory, folder, str(exc), failed_dir=failed_dir)
    not_sent = _register_queued(
        session_factory, folder, info,
        done_dir=done_dir, failed_dir=failed_dir, force=force, reassign=reassign, actor=actor,
    )
    if not_sent is not None:
        return not_sent
    _send(send, folder, info.slide_id, done_dir, failed_dir)
    logger.info("enqueued slide %s from %s", info.slide_id, folder)
    return EnqueueOutcome(info.slide_id, str(folder), "enqueued", "queued")


def _register_queued(
    session_factory, folder: Path, info: SlideInfo, *, done_dir, failed_dir, force: bool, reassign: bool, actor: str | None
) -> EnqueueOutcome | None:
    """Register the slide as queued; the outcome when it is skipped or rejected instead, ``None`` to send it."""
    from smearflow.db import repository, session_scope, transient_database_errors

    with transient_database_errors(), session_scope(session_factory) as session:
        slide = repository.get_slide(session, info.slide_id)
        if slide is not None and slide.status in IN_HAND_STATUSES and not force:
            if slide.folder and Path(slide.folder) != folder:
                reason = (
                    f"slide id {info.slide_id} is already {slide.status} from folder {slide.folder}; "
                    "a second folder with the same id is not analysed"
                )
                return _reject_after(session, session_factory, folder, reason, info.slide_id, failed_dir)
            return EnqueueOutcome(info.slide_id, str(folder), "skipped", slide.status, f"already {slide.status}")
        try:
            repository.register_slide(
                session,
                info,
                status="queued",
                reassign=reassign,
                actor=actor,
                done_dir=_absolute(done_dir),
                failed_dir=_absolute(failed_dir),
            )
        except (SlideConflictError, BadSlideError) as exc:
            return _reject_after(session, session_factory, folder, str(exc), info.slide_id, failed_dir)
    return None


def _send(send: SendSlide, folder: Path, slide_id: str, done_dir, failed_dir) -> None:
    """Send the slide's task; a broker failure is transient (the slide stays queued for reconciliation)."""
    try:
        send(slide_id, _absolute(done_dir), _absolute(failed_dir))
    except Exception as exc:  # kombu and redis raise many types for an unreachable broker
        raise TransientError(
            f"{folder}: slide {slide_id} is queued but its task was not sent, the broker is unavailable "
            f"({type(exc).__name__}: {exc}); reconciliation sends it when the broker is back"
        ) from exc


def _absolute(path: str | Path | None) -> str | None:
    return None if path is None else os.path.abspath(path)


def _reject_after(session, session_factory, folder: Path, reason: str, slide_id: str, failed_dir) -> EnqueueOutcome:
    # Record the rejection in a transaction of its own: this one may be rolled back.
    session.rollback()
    return reject_folder(session_factory, folder, reason, slide_id=slide_id, failed_dir=failed_dir)


def reject_folder(
    session_factory,
    folder: str | Path,
    reason: str,
    *,
    slide_id: str | None = None,
    failed_dir: str | Path | None = None,
) -> EnqueueOutcome:
    """Record a folder that is not a slide and move it to ``failed_dir`` with an ``error.txt``.

    Raises
    ------
    smearflow.errors.TransientError
        When the database is unavailable (nothing was moved).
    """
    from smearflow.db import lifecycle, session_scope, transient_database_errors
    from smearflow.imageio import display_name
    from smearflow.worker.folders import move_slide_folder, rejection_report

    shown = display_name(folder)
    logger.warning("%s: rejected: %s", shown, reason)
    with transient_database_errors(), session_scope(session_factory) as session:
        row_id = lifecycle.record_rejected_folder(session, shown, reason, slide_code=slide_id).id
    moved_to = None
    if failed_dir is not None:
        try:
            moved_to = display_name(move_slide_folder(folder, failed_dir, rejection_report(shown, reason)))
        except OSError as exc:
            logger.error("%s: could not be moved to %s: %s", shown, failed_dir, exc)
    if moved_to is not None:
        with transient_database_errors(), session_scope(session_factory) as session:
            lifecycle.set_rejection_destination(session, row_id, moved_to)
    return EnqueueOutcome(slide_id, shown, "rejected", None, reason, moved_to)


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
