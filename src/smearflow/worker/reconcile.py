"""Reconciliation: no slide is stranded by a lost worker or a lost message.

The database says which slides are ``queued`` or ``running``; the broker
holds the messages that will make a worker analyse them. The two drift apart
when a worker dies with its slide (the slide stays ``running``, its lease
stops being renewed) or when the broker loses its queue (Redis restarted
empty: the slide stays ``queued`` with no message). :func:`reconcile_slides`
finds both and sends such slides again, within bounds:

- a ``running`` slide whose lease expired goes back to ``queued`` and is sent
  again (the claim already counted the attempt; ``max_attempts`` bounds it);
- a ``queued`` slide older than ``queued_grace_s`` with no message on the
  broker is sent again (``requeues`` counts it; ``max_requeues`` bounds it);
- past those bounds the slide is given up (``failed``, with the reason) and
  sent once more so that a worker moves its folder to ``failed/``.

A slide sent twice is harmless: the claim makes the second delivery a no-op.
It runs from Celery beat (every ``SMEARFLOW_RECONCILE_INTERVAL_S``), when a
worker starts, in the inbox watcher, and as ``smearflow reconcile``.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Protocol

from smearflow.worker.settings import ANALYZE_SLIDE_TASK

logger = logging.getLogger(__name__)

SendSlide = Callable[[str, "str | None", "str | None"], None]

# Kombu's Redis transport keeps a queue as a list per priority step, and every
# delivered, not yet acknowledged message in the "unacked" hash with its
# delivery time in the "unacked_index" sorted set.
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (0, 3, 6, 9)
_UNACKED = "unacked"
_UNACKED_INDEX = "unacked_index"


class BrokerQueue(Protocol):
    """What reconciliation needs to know of the broker."""

    def slide_ids_in_flight(self) -> set[str]:
        """Ids of the slides that have a message waiting or being worked on."""
        ...

    def depth(self) -> int:
        """Messages waiting on the slides queue."""
        ...


def slide_id_of(raw_message: bytes | str) -> str | None:
    """The slide id of a serialised analysis task message, or ``None`` for any other message."""
    try:
        payload = json.loads(raw_message)
        if payload.get("headers", {}).get("task") != ANALYZE_SLIDE_TASK:
            return None
        body = payload["body"]
        if payload.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, kwargs, _ = json.loads(body)
        return str(args[0]) if args else kwargs.get("slide_id")
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


@contextmanager
def _broker_errors() -> Iterator[None]:
    import redis

    from smearflow.errors import TransientError

    try:
        yield
    except redis.RedisError as exc:
        raise TransientError(f"the broker is unavailable: {exc}") from exc


def _unacked_message(entry: bytes | None, queue: str) -> str | None:
    """The serialised message of an ``unacked`` entry routed to ``queue`` (other deployments share the hash)."""
    try:
        message, _, routing_key = json.loads(entry)
    except (TypeError, ValueError):
        return None
    return json.dumps(message) if routing_key == queue else None


class RedisQueue:
    """The slides queue on a Redis broker, read without consuming anything.

    Parameters
    ----------
    url : str
        The broker URL.
    queue : str
        The slides queue's name.
    stale_unacked_s : float
        An unacknowledged message delivered longer ago than this does not
        count as in flight for a ``queued`` slide (its worker is gone; Redis
        would only restore it after the visibility timeout).
    clock : callable
        Seconds since the epoch (``time.time``).
    """

    def __init__(self, url: str, queue: str, *, stale_unacked_s: float, clock: Callable[[], float] = time.time):
        self.url = url
        self.queue = queue
        self.stale_unacked_s = stale_unacked_s
        self.clock = clock

    def _client(self):
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)

    def _queue_keys(self) -> list[str]:
        return [self.queue] + [f"{self.queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS[1:]]

    def depth(self) -> int:
        """Messages waiting on the queue.

        Raises
        ------
        smearflow.errors.TransientError
            When Redis cannot be reached.
        """
        with _broker_errors(), self._client() as client:
            return sum(int(client.llen(key)) for key in self._queue_keys())

    def slide_ids_in_flight(self) -> set[str]:
        """Slides with a message waiting on the queue or recently delivered and not yet acknowledged.

        Raises
        ------
        smearflow.errors.TransientError
            When Redis cannot be reached.
        """
        with _broker_errors(), self._client() as client:
            raw = [message for key in self._queue_keys() for message in client.lrange(key, 0, -1)]
            recent = client.zrangebyscore(_UNACKED_INDEX, self.clock() - self.stale_unacked_s, "+inf")
            for entry in client.hmget(_UNACKED, recent) if recent else ():
                message = _unacked_message(entry, self.queue)
                if message is not None:
                    raw.append(message)
        return {slide_id for slide_id in map(slide_id_of, raw) if slide_id is not None}



@dataclass(frozen=True)
class ReconcileLimits:
    """The bounds of reconciliation (see :class:`~smearflow.worker.settings.WorkerSettings`)."""

    lease_s: float
    queued_grace_s: float
    max_attempts: int
    max_requeues: int


@dataclass
class ReconcileReport:
    """What one reconciliation did: slides sent again, slides given up, and whether the broker was read."""

    resent: list[str] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)
    broker_checked: bool = False

    def to_dict(self) -> dict:
        return {"resent": self.resent, "given_up": self.given_up, "broker_checked": self.broker_checked}


def reconcile_slides(
    session_factory,
    broker: BrokerQueue | None,
    send: SendSlide,
    limits: ReconcileLimits,
    now: datetime | None = None,
) -> ReconcileReport:
    """Send again every slide whose worker or message was lost; give up those past their bounds.

    Parameters
    ----------
    session_factory : sessionmaker
    broker : BrokerQueue or None
        ``None`` (or a broker that cannot be read) skips the ``queued``
        slides: only expired leases are handled.
    send : callable
        ``send(slide_id, done_dir, failed_dir)``.
    limits : ReconcileLimits
    now : datetime, optional

    Returns
    -------
    ReconcileReport

    Raises
    ------
    smearflow.errors.TransientError
        When the database is unavailable, or sending fails (the slides stay
        ``queued`` and the next round sends them).
    """
    from smearflow.db import session_scope, transient_database_errors
    from smearflow.errors import TransientError

    report = ReconcileReport()
    in_flight = None
    if broker is not None:
        try:
            in_flight = broker.slide_ids_in_flight()
            report.broker_checked = True
        except TransientError as exc:
            logger.warning("reconciliation: queued slides not checked: %s", exc)
    with transient_database_errors(), session_scope(session_factory) as session:
        to_send = _expired_leases(session, limits, now, report)
        if in_flight is not None:
            to_send += _lost_messages(session, in_flight, limits, now, report)
    for slide_id, done_dir, failed_dir in to_send:
        try:
            send(slide_id, done_dir, failed_dir)
        except Exception as exc:  # kombu and redis raise many types for an unreachable broker
            raise TransientError(f"reconciliation could not send slide {slide_id}: {exc}") from exc
    if report.resent or report.given_up:
        logger.warning("reconciliation: sent again %s; given up %s", report.resent, report.given_up)
    return report


def _expired_leases(session, limits: ReconcileLimits, now, report: ReconcileReport) -> list[tuple]:
    from smearflow.db import lifecycle

    to_send = []
    for slide in lifecycle.expired_leases(session, limits.lease_s, now):
        if slide.attempts >= limits.max_attempts:
            lifecycle.give_up_slide(
                session,
                slide,
                f"Gave up after {slide.attempts} attempt(s) (max_attempts={limits.max_attempts}): "
                f"its worker ({slide.holder or 'unknown'}) stopped renewing its lease",
            )
            report.given_up.append(slide.slide_code)
        else:
            detail = f"no heartbeat from {slide.holder or 'its worker'} for over {limits.lease_s:.0f} s"
            lifecycle.requeue_slide(session, slide, "lease-expired", detail, now)
            report.resent.append(slide.slide_code)
        to_send.append((slide.slide_code, slide.done_dir, slide.failed_dir))
    return to_send


def _lost_messages(session, in_flight: set[str], limits: ReconcileLimits, now, report: ReconcileReport) -> list[tuple]:
    from smearflow.db import lifecycle

    to_send = []
    for slide in lifecycle.queued_before(session, limits.queued_grace_s, now):
        if slide.slide_code in in_flight:
            continue
        if slide.requeues >= limits.max_requeues:
            lifecycle.give_up_slide(
                session,
                slide,
                f"Gave up: its message was lost by the broker {slide.requeues + 1} time(s) "
                f"(max_requeues={limits.max_requeues})",
            )
            report.given_up.append(slide.slide_code)
        else:
            lifecycle.requeue_slide(session, slide, "requeued", "no message on the broker", now)
            report.resent.append(slide.slide_code)
        to_send.append((slide.slide_code, slide.done_dir, slide.failed_dir))
    return to_send


def reconciler_for(settings, app) -> Callable[[], ReconcileReport]:
    """A no-argument reconciliation with ``settings``' database, broker and bounds (for the watcher and tasks)."""
    from smearflow.db import make_engine, session_factory
    from smearflow.worker.enqueue import celery_sender

    factory = session_factory(make_engine(settings.database_url))
    return lambda: reconcile_slides(factory, broker_queue(settings), celery_sender(app), limits_of(settings))


def broker_queue(settings) -> BrokerQueue | None:
    """The slides queue of ``settings``' broker when it is Redis (the only broker smearflow reads)."""
    if not settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        return None
    return RedisQueue(
        settings.broker_url,
        settings.slides_queue,
        stale_unacked_s=settings.retry_backoff_max_s + settings.queued_grace_s,
    )


def limits_of(settings) -> ReconcileLimits:
    """The :class:`ReconcileLimits` of a :class:`~smearflow.worker.settings.WorkerSettings`."""
    return ReconcileLimits(
        lease_s=settings.lease_s,
        queued_grace_s=settings.queued_grace_s,
        max_attempts=settings.max_attempts,
        max_requeues=settings.max_requeues,
    )
