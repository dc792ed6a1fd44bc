"""Registering slides and patients, a slide's status and its events.

Every function takes a ``Session`` and neither commits nor rolls back: the
caller owns the transaction.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from smearflow.db.models import (
    EVENT_KINDS,
    SLIDE_STATUSES,
    Patient,
    Slide,
    SlideEvent,
    utc_now,
)
from smearflow.db.values import (
    check_code,
    check_status,
    error_text,
    insert_unless_present,
    parse_collected_at,
)
from smearflow.errors import SlideConflictError
from smearflow.types import SlideInfo

logger = logging.getLogger(__name__)


def get_or_create_patient(session: Session, patient_code: str | None) -> Patient | None:
    """The patient ``patient_code``, inserted when new; ``None`` for no patient."""
    if patient_code is None:
        return None
    check_code("patient_id", patient_code)
    insert_unless_present(session, Patient, {"patient_code": patient_code}, "patient_code")
    return session.scalars(select(Patient).where(Patient.patient_code == patient_code)).one()


def slide_or_raise(session: Session, slide_code: str) -> Slide:
    """The slide ``slide_code``; a ``LookupError`` when none is registered."""
    slide = get_slide(session, slide_code)
    if slide is None:
        raise LookupError(f"No slide is registered under slide_code={slide_code!r}")
    return slide


def register_slide(
    session: Session,
    info: SlideInfo,
    status: str = "queued",
    *,
    reassign: bool = False,
    actor: str | None = None,
    done_dir: str | None = None,
    failed_dir: str | None = None,
) -> Slide:
    """Create or update the slide ``info.slide_id`` (an upsert keyed by slide code).

    The folder, patient (created when new), collection time and notes are
    taken from ``info``. Registering with ``status="queued"`` starts a fresh
    job: the attempt and requeue counters go back to 0, the error and the
    lease are cleared, ``queued_at`` is now, and ``done_dir`` / ``failed_dir``
    say where the worker moves the folder afterwards. Stored results are
    never touched.

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    info : SlideInfo
    status : {"queued", "running", "done", "partial", "failed"}, default "queued"
    reassign : bool
        Allow moving a stored slide to another patient (recorded as an event).
    actor : str, optional
        Who asked, recorded with a reassignment.
    done_dir, failed_dir : str, optional

    Returns
    -------
    Slide

    Raises
    ------
    ValueError
        When ``status`` is unknown or ``info.slide_id`` / ``info.patient_id``
        is empty.
    smearflow.errors.BadSlideError
        When ``info.collected_at`` is not ISO 8601.
    smearflow.errors.SlideConflictError
        When the slide is stored for another patient and ``reassign`` is false.
    """
    check_status("status", status, SLIDE_STATUSES)
    slide = upsert_slide(session, info, reassign=reassign, actor=actor)
    slide.status = status
    if status == "queued":
        slide.attempts = 0
        slide.requeues = 0
        slide.error = None
        slide.queued_at = utc_now()
        slide.heartbeat_at = slide.holder = slide.task_id = None
        slide.done_dir, slide.failed_dir = done_dir, failed_dir
    session.flush()
    return slide


def insert_slide_row(session: Session, slide_code: str) -> Slide:
    """The slide row ``slide_code``, inserted when missing (safe against a concurrent insert)."""
    insert_unless_present(session, Slide, {"slide_code": slide_code, "status": "queued", "attempts": 0, "requeues": 0}, "slide_code")
    return session.scalars(
        select(Slide).where(Slide.slide_code == slide_code).execution_options(populate_existing=True)
    ).one()


def upsert_slide(session: Session, info: SlideInfo, *, reassign: bool = False, actor: str | None = None) -> Slide:
    """The slide ``info.slide_id`` with its descriptive columns set from ``info``."""
    slide_code = check_code("slide_id", info.slide_id)
    collected_at = parse_collected_at(info.collected_at, slide_code)
    patient = get_or_create_patient(session, info.patient_id)
    slide = insert_slide_row(session, slide_code)
    _check_patient_change(session, slide, patient, reassign=reassign, actor=actor)
    slide.patient = patient
    slide.folder = info.folder
    slide.collected_at = collected_at
    slide.notes = info.notes
    return slide


def _check_patient_change(
    session: Session, slide: Slide, patient: Patient | None, *, reassign: bool, actor: str | None
) -> None:
    """Refuse to move a slide from its patient to another (or to none) unless asked to.

    A slide stored without a patient may be given one: nobody's results move.
    """
    old = slide.patient.patient_code if slide.patient is not None else None
    new = patient.patient_code if patient is not None else None
    if old is None or old == new:
        return
    if not reassign:
        raise SlideConflictError(
            f"slide {slide.slide_code} is stored for patient {old}; this folder names "
            f"{'patient ' + new if new else 'no patient'}. Refused: its results would move to another patient "
            "(re-run with --reassign if the slide really belongs to the new patient)"
        )
    add_slide_event(session, slide, "reassigned", f"patient {old} -> {new or 'none'}", actor=actor)
    logger.warning("slide %s reassigned from patient %s to %s by %s", slide.slide_code, old, new, actor or "unknown")


def add_slide_event(session: Session, slide: Slide, kind: str, detail: str, actor: str | None = None) -> SlideEvent:
    """Record something that happened to a slide (see ``EVENT_KINDS``).

    Raises
    ------
    ValueError
        When ``kind`` is not one of ``EVENT_KINDS``.
    """
    check_status("kind", kind, EVENT_KINDS)
    session.flush()
    event = SlideEvent(slide_id=slide.id, kind=kind, detail=detail, actor=actor, at=utc_now())
    session.add(event)
    session.flush()
    return event


def slide_events(session: Session, slide_code: str) -> list[SlideEvent]:
    """A slide's events, oldest first (empty for an unknown slide)."""
    return list(
        session.scalars(
            select(SlideEvent)
            .join(Slide, SlideEvent.slide_id == Slide.id)
            .where(Slide.slide_code == slide_code)
            .order_by(SlideEvent.at, SlideEvent.id)
        )
    )


def get_slide(session: Session, slide_code: str) -> Slide | None:
    """The slide registered as ``slide_code``, or ``None``."""
    return session.scalars(select(Slide).where(Slide.slide_code == slide_code)).first()


def set_slide_status(
    session: Session, slide_code: str, status: str, error: str | BaseException | None = None
) -> Slide:
    """Set a slide's status and error text.

    ``"running"`` stamps ``started_at``; ``"done"`` and ``"failed"`` stamp
    ``finished_at``. Stored results are not touched.

    Raises
    ------
    ValueError
        When ``status`` is unknown.
    LookupError
        When no slide is registered as ``slide_code``.
    """
    check_status("status", status, SLIDE_STATUSES)
    slide = slide_or_raise(session, slide_code)
    slide.status = status
    slide.error = error_text(error) if error is not None else None
    now = utc_now()
    if status == "running":
        slide.started_at = now
    elif status in ("done", "failed"):
        slide.finished_at = now
    session.flush()
    return slide
