"""A slide's way through the queue: claims, leases, requeues, rejections and the operator's view.

A worker that starts a slide *claims* it (``running``, one more attempt) and
holds a *lease*: it renews ``heartbeat_at`` while it works
(:func:`renew_lease`). A slide whose lease expired lost its worker; a slide
``queued`` for long with no message on the broker lost its message.
Reconciliation (:mod:`smearflow.worker.reconcile`) finds both with
:func:`expired_leases` and :func:`queued_before` and sends them again
(:func:`requeue_slide`) or, past their bounds, gives them up
(:func:`give_up_slide`). Every function takes a ``Session``; the caller owns
the transaction.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from smearflow.db.models import SLIDE_STATUSES, RejectedFolder, Slide, utc_now
from smearflow.db.results import record_slide_failure
from smearflow.db.slides import add_slide_event

logger = logging.getLogger(__name__)

DEFAULT_LEASE_S = 60.0
"""How long a running slide's worker may go without renewing its lease."""

_SEND_GRACE_S = 5.0  # a slide is committed as queued just before its message is sent


def _locked(query, session: Session):
    """``FOR UPDATE SKIP LOCKED`` on PostgreSQL (two reconcilers never take the same row)."""
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return query.execution_options(populate_existing=True)


def claim_slide(
    session: Session,
    slide_code: str,
    max_attempts: int,
    *,
    task_id: str | None = None,
    holder: str | None = None,
    lease_s: float = DEFAULT_LEASE_S,
    now: datetime | None = None,
) -> Slide | None:
    """Take a slide for analysis: mark it running, count the attempt, start its lease.

    The row is locked (``SELECT ... FOR UPDATE`` on PostgreSQL) until the
    caller's transaction ends, so commit right after claiming.

    A ``running`` slide is claimable again when its lease expired (its worker
    died) or when ``task_id`` is the task that holds it (the same message
    delivered again: the earlier delivery's process died). Each claim counts,
    so a slide that keeps killing workers ends failed.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    slide_code : str
    max_attempts : int
        How many claims a slide gets before it is given up.
    task_id : str, optional
        The claiming task's id.
    holder : str, optional
        Who claims, for the operator (``"host pid 123"``).
    lease_s : float
        How old a holder's last heartbeat may be before the lease is expired.
    now : datetime, optional

    Returns
    -------
    Slide or None
        The claimed slide; ``None`` when there is nothing to do: the slide is
        finished (``done``, ``partial``, ``failed``), held by another live
        worker, or has used its ``max_attempts`` (then it is marked failed here).

    Raises
    ------
    ValueError
        When ``max_attempts`` is below 1 or ``lease_s`` is not positive.
    LookupError
        When no slide is registered as ``slide_code``.
    """
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts must be an integer of at least 1. Received: max_attempts={max_attempts!r}")
    if not lease_s > 0:
        raise ValueError(f"lease_s must be positive. Received: lease_s={lease_s!r}")
    now = now or utc_now()
    slide = session.scalars(
        select(Slide).where(Slide.slide_code == slide_code).with_for_update().execution_options(populate_existing=True)
    ).first()
    if slide is None:
        raise LookupError(f"No slide is registered under slide_code={slide_code!r}")
    if slide.status in ("done", "partial", "failed"):
        logger.info("slide %s is already %s; not claimed", slide_code, slide.status)
        return None
    if slide.status == "running" and lease_is_live(slide, lease_s, now) and (task_id is None or task_id != slide.task_id):
        logger.info("slide %s is held by %s; not claimed", slide_code, slide.holder)
        return None
    if slide.attempts >= max_attempts:
        give_up_slide(
            session,
            slide,
            f"Gave up after {slide.attempts} attempt(s) (max_attempts={max_attempts}); last error: {slide.error}",
        )
        return None
    slide.attempts += 1
    slide.status = "running"
    slide.started_at = slide.heartbeat_at = now
    slide.holder, slide.task_id = holder, task_id
    session.flush()
    return slide


def lease_is_live(slide: Slide, lease_s: float, now: datetime | None = None) -> bool:
    """Whether a running slide's holder renewed its lease within ``lease_s``."""
    beat = slide.heartbeat_at or slide.started_at
    return beat is not None and (now or utc_now()) - beat < timedelta(seconds=lease_s)


def renew_lease(session: Session, slide_code: str, task_id: str | None, now: datetime | None = None) -> bool:
    """Renew the lease of a slide the task ``task_id`` holds.

    Returns
    -------
    bool
        False when the task no longer holds the slide (it finished, or another
        worker claimed it after the lease expired).
    """
    slide = session.scalars(select(Slide).where(Slide.slide_code == slide_code)).first()
    if slide is None or slide.status != "running" or slide.task_id != task_id:
        return False
    slide.heartbeat_at = now or utc_now()
    session.flush()
    return True


def expired_leases(session: Session, lease_s: float, now: datetime | None = None) -> list[Slide]:
    """Running slides whose holder has not renewed its lease within ``lease_s`` (locked)."""
    limit = (now or utc_now()) - timedelta(seconds=lease_s)
    beat = func.coalesce(Slide.heartbeat_at, Slide.started_at, Slide.updated_at)
    query = select(Slide).where(Slide.status == "running", beat < limit).order_by(Slide.id)
    return list(session.scalars(_locked(query, session)))


def queued_before(session: Session, age_s: float, now: datetime | None = None) -> list[Slide]:
    """Slides queued more than ``age_s`` ago (locked): candidates for a lost message."""
    limit = (now or utc_now()) - timedelta(seconds=age_s)
    since = func.coalesce(Slide.queued_at, Slide.created_at)
    query = select(Slide).where(Slide.status == "queued", since < limit).order_by(Slide.id)
    return list(session.scalars(_locked(query, session)))


def requeue_slide(session: Session, slide: Slide, kind: str, detail: str, now: datetime | None = None) -> Slide:
    """Put a slide back to ``queued`` to be sent again; the event says why.

    ``kind`` ``"requeued"`` (its message was lost) counts in ``requeues``;
    ``"lease-expired"`` (its worker died) was already counted as an attempt.
    """
    slide.status = "queued"
    slide.queued_at = now or utc_now()
    slide.heartbeat_at = slide.holder = slide.task_id = None
    if kind == "requeued":
        slide.requeues += 1
    add_slide_event(session, slide, kind, detail)
    session.flush()
    return slide


def give_up_slide(session: Session, slide: Slide, error: str) -> Slide:
    """Stop trying a slide: failed with ``error`` (a stored earlier result is kept)."""
    logger.warning("slide %s: %s", slide.slide_code, error)
    add_slide_event(session, slide, "gave-up", error)
    return record_slide_failure(session, slide.slide_code, error)


def record_rejected_folder(
    session: Session, folder: str, reason: str, *, slide_code: str | None = None, moved_to: str | None = None
) -> RejectedFolder:
    """Record a folder that never became a slide, and why.

    Raises
    ------
    ValueError
        When ``folder`` or ``reason`` is empty.
    """
    for name, value in (("folder", folder), ("reason", reason)):
        if not value:
            raise ValueError(f"{name} must not be empty. Received: {name}={value!r}")
    row = RejectedFolder(folder=folder, reason=reason, slide_code=slide_code, moved_to=moved_to, rejected_at=utc_now())
    session.add(row)
    session.flush()
    return row


def set_rejection_destination(session: Session, rejection_id: int, moved_to: str) -> None:
    """Record where a rejected folder was moved."""
    session.get(RejectedFolder, rejection_id).moved_to = moved_to
    session.flush()


def status_summary(
    session: Session,
    *,
    lease_s: float = DEFAULT_LEASE_S,
    stale_queued_s: float = 600.0,
    in_flight: set[str] | None = None,
    limit: int = 50,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Slides per status, the latest slides with their age, attempts and holder, and rejected folders.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    lease_s : float
        A running slide whose last heartbeat is older is marked stale.
    stale_queued_s : float
        A queued slide waiting longer is marked stale; so is one that
        ``in_flight`` shows has no message.
    in_flight : set of str, optional
        Slide ids with a message on the broker; ``None`` when unknown.
    limit : int
        Slides and rejected folders listed, newest first; 0 lists all.
    now : datetime, optional

    Returns
    -------
    dict
        ``counts`` (every status, and ``rejected``), ``slides`` (dicts with
        ``slide_id``, ``status``, ``attempts``, ``requeues``, ``holder``,
        ``age_s``, ``heartbeat_age_s``, ``stale`` (a reason or ``None``),
        ``error``, ``folder``, ``updated_at``) and ``rejected`` (``folder``,
        ``slide_id``, ``reason``, ``moved_to``, ``rejected_at``).
    """
    now = now or utc_now()
    counts = {status: 0 for status in SLIDE_STATUSES}
    for status, n in session.execute(select(Slide.status, func.count()).group_by(Slide.status)):
        counts[status] = n
    counts["rejected"] = session.scalar(select(func.count()).select_from(RejectedFolder)) or 0
    in_hand = or_(Slide.status.in_(("queued", "running")), Slide.id.in_(_latest(Slide.updated_at, limit)))
    slides = session.scalars(select(Slide).where(in_hand).order_by(Slide.updated_at.desc(), Slide.slide_code))
    rejected = session.scalars(select(RejectedFolder).order_by(RejectedFolder.rejected_at.desc()).limit(limit or None))
    return {
        "counts": counts,
        "slides": [_slide_row(slide, lease_s, stale_queued_s, in_flight, now) for slide in slides],
        "rejected": [
            {
                "folder": row.folder,
                "slide_id": row.slide_code,
                "reason": row.reason,
                "moved_to": row.moved_to,
                "rejected_at": row.rejected_at.isoformat(),
            }
            for row in rejected
        ],
    }


def _latest(column, limit: int):
    return select(Slide.id).order_by(column.desc()).limit(limit or None).scalar_subquery()


def _seconds(since: datetime | None, now: datetime) -> float | None:
    return None if since is None else round((now - since).total_seconds(), 1)


def _slide_row(slide: Slide, lease_s: float, stale_queued_s: float, in_flight: set[str] | None, now: datetime) -> dict:
    since = slide.started_at if slide.status == "running" else (slide.queued_at or slide.created_at)
    return {
        "slide_id": slide.slide_code,
        "status": slide.status,
        "attempts": slide.attempts,
        "requeues": slide.requeues,
        "holder": slide.holder if slide.status == "running" else None,
        "age_s": _seconds(since, now) if slide.status in ("queued", "running") else None,
        "heartbeat_age_s": _seconds(slide.heartbeat_at, now) if slide.status == "running" else None,
        "stale": _staleness(slide, lease_s, stale_queued_s, in_flight, now),
        "error": slide.error,
        "folder": slide.folder,
        "updated_at": slide.updated_at.isoformat() if slide.updated_at else None,
    }


def _staleness(slide: Slide, lease_s: float, stale_queued_s: float, in_flight: set[str] | None, now: datetime) -> str | None:
    if slide.status == "running" and not lease_is_live(slide, lease_s, now):
        return f"no heartbeat for over {lease_s:.0f} s: its worker is probably gone"
    if slide.status != "queued":
        return None
    waited = _seconds(slide.queued_at or slide.created_at, now) or 0.0
    if in_flight is not None and slide.slide_code not in in_flight and waited > _SEND_GRACE_S:
        return "no message on the broker"
    if waited > stale_queued_s:
        return f"queued for {waited:.0f} s"
    return None
