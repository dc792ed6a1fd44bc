"""What one slide task does, as a plain function with injected dependencies.

The Celery task (:func:`smearflow.worker.tasks.analyze_slide`) only builds a
:class:`SlideJobContext` for its process and calls :func:`run_slide_job`;
tests call it directly.

Steps, each in its own transaction:

1. **Claim** the slide (:func:`smearflow.db.lifecycle.claim_slide`):
   ``running``, one more attempt, a lease held by this task. A finished
   slide is not claimed (a redelivered or duplicate task is a no-op), nor one
   another live worker holds, nor one that has used ``max_attempts`` (it is
   marked failed: a slide that keeps killing its worker stops there).
2. **Analyse** its folder, re-read from the database, with the same
   :func:`smearflow.jobs.analyze_folder` as ``smearflow analyze``, while a
   background thread renews the lease (:class:`LeaseKeeper`).
3. **Store** with :func:`smearflow.jobs.store_result` under a row lock,
   unless another delivery stored a result first or took the slide over:
   one set of results.
4. **Archive**: move the folder to the slide's ``done/`` or ``failed/``
   folder (with ``error.txt``) and record its new path.

Failure policy: a :class:`~smearflow.errors.TransientError` (database down)
propagates, and the task retries with backoff; if the retries run out,
reconciliation sends the slide again once its lease expires. A
:class:`~smearflow.errors.PermanentError` (unreadable slide folder, bad model
folder, a patient conflict) or a soft time limit is recorded and not
retried. Any other exception is recorded too, then re-raised so that the
task shows as failed in Flower; it is not retried either. A failed attempt
never changes a slide's stored metadata or results.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from smearflow.errors import PermanentError, TransientError
from smearflow.slides import DEFAULT_MAX_FIELDS

logger = logging.getLogger(__name__)


def default_holder() -> str:
    """How a worker process names itself in a slide's lease: ``"host pid 1234"``."""
    return f"{socket.gethostname()} pid {os.getpid()}"


@dataclass
class SlideJobContext:
    """What :func:`run_slide_job` needs from its process.

    Attributes
    ----------
    session_factory : sessionmaker
        Sessions on the results database.
    analyzer_for : callable
        ``session -> Analyzer``: the analyzer of the model to use now (the
        process loads it once and keeps it; the session is there to look
        up the active model version).
    max_attempts : int
        Claims of a slide before it is given up.
    analyze : callable, optional
        ``(folder, analyzer, *, slide_id=, max_fields=, propagate=) -> SlideResult``;
        :func:`smearflow.jobs.analyze_folder` by default.
    store : callable, optional
        ``(session, result, classifier) -> None``;
        :func:`smearflow.jobs.store_result` by default.
    lease_s, heartbeat_s : float
        A claimed slide's lease, renewed every ``heartbeat_s``.
    holder : str
        This process's name in a lease.
    max_fields : int
        A slide folder with more field images is refused.
    propagate : tuple of exception types
        Errors that end the slide instead of one field (a soft time limit).
    """

    session_factory: Any
    analyzer_for: Callable[[Any], Any]
    max_attempts: int = 3
    analyze: Callable[..., Any] | None = None
    store: Callable[..., Any] | None = None
    lease_s: float = 60.0
    heartbeat_s: float = 15.0
    holder: str = ""
    max_fields: int = DEFAULT_MAX_FIELDS
    propagate: tuple[type[BaseException], ...] = ()

    def __post_init__(self):
        self.holder = self.holder or default_holder()


@dataclass(frozen=True)
class SlideJobResult:
    """What became of one slide task.

    Attributes
    ----------
    slide_id : str
    outcome : {"done", "partial", "failed", "skipped", "unknown"}
        ``skipped``: nothing to do (already finished, held by another worker,
        or given up now); ``unknown``: no slide is registered under ``slide_id``.
    status : str or None
        The slide's status in the database afterwards.
    folder : str or None
        The slide's folder afterwards (moved when archived).
    error : str or None
    """

    slide_id: str
    outcome: str
    status: str | None
    folder: str | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the Celery task's return value)."""
        return asdict(self)


class LeaseKeeper:
    """Renews a claimed slide's lease every ``heartbeat_s`` in a background thread.

    Used as a context manager around the analysis. A renewal that fails
    (database down) is logged and tried again at the next beat; one that
    finds the slide taken over sets :attr:`lost`.
    """

    def __init__(self, session_factory, slide_id: str, task_id: str | None, heartbeat_s: float):
        self.session_factory = session_factory
        self.slide_id = slide_id
        self.task_id = task_id
        self.heartbeat_s = heartbeat_s
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{slide_id}", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=self.heartbeat_s + 5)

    def renew(self) -> None:
        """Renew once."""
        from smearflow.db import lifecycle, session_scope

        try:
            with session_scope(self.session_factory) as session:
                held = lifecycle.renew_lease(session, self.slide_id, self.task_id)
        except Exception as exc:  # noqa: BLE001 - the next beat tries again
            logger.warning("slide %s: could not renew its lease: %s", self.slide_id, exc)
            return
        if not held and not self.lost:
            self.lost = True
            logger.warning("slide %s: lease lost (another worker took the slide over)", self.slide_id)

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.renew()


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _lock_slide(session, slide_id: str):
    """The slide row, locked until the transaction ends (``FOR UPDATE`` on PostgreSQL)."""
    from sqlalchemy import select

    from smearflow.db.models import Slide

    return session.scalars(
        select(Slide).where(Slide.slide_code == slide_id).with_for_update().execution_options(populate_existing=True)
    ).first()


def _is_soft_time_limit(error: BaseException) -> bool:
    from celery.exceptions import SoftTimeLimitExceeded

    return isinstance(error, SoftTimeLimitExceeded)


@dataclass(frozen=True)
class _Claim:
    status: str | None
    error: str | None
    folder: str | None
    attempts: int
    done_dir: str | None
    failed_dir: str | None
    claimed: bool


def _claim(slide_id: str, context: SlideJobContext, task_id: str | None) -> _Claim | None:
    """Step 1; ``None`` for an unknown slide."""
    from smearflow.db import lifecycle, repository, session_scope, transient_database_errors

    with transient_database_errors(), session_scope(context.session_factory) as session:
        try:
            claimed = lifecycle.claim_slide(
                session, slide_id, context.max_attempts, task_id=task_id, holder=context.holder, lease_s=context.lease_s
            )
        except LookupError as exc:
            logger.error("slide task for an unregistered slide dropped: %s", exc)
            return None
        slide = claimed or repository.get_slide(session, slide_id)
        return _Claim(
            slide.status, slide.error, slide.folder, slide.attempts, slide.done_dir, slide.failed_dir, claimed is not None
        )


def run_slide_job(
    slide_id: str,
    context: SlideJobContext,
    *,
    task_id: str | None = None,
    done_dir: str | Path | None = None,
    failed_dir: str | Path | None = None,
) -> SlideJobResult:
    """Analyse one registered slide and store its result, exactly once.

    Parameters
    ----------
    slide_id : str
        The slide's code, as registered (``register_slide``).
    context : SlideJobContext
    task_id : str, optional
        The Celery task id: the slide's lease holder.
    done_dir, failed_dir : str or Path, optional
        Where to move the slide's folder when it ends done / failed; the
        folders registered with the slide when ``None``; the folder stays
        where it is when neither names one.

    Returns
    -------
    SlideJobResult

    Raises
    ------
    smearflow.errors.TransientError
        When the database is unavailable; retrying later may succeed.
    Exception
        An unexpected error, after the slide was recorded failed.
    """
    claim = _claim(slide_id, context, task_id)
    if claim is None:
        return SlideJobResult(slide_id, "unknown", None, None, f"No slide is registered under slide_code={slide_id!r}")
    destinations = {"done": done_dir or claim.done_dir, "failed": failed_dir or claim.failed_dir}
    if not claim.claimed:
        logger.info("slide %s is %s; nothing to analyse", slide_id, claim.status)
        folder = claim.folder
        if claim.status in ("done", "partial", "failed"):
            outcome = "failed" if claim.status == "failed" else "done"
            folder = archive_slide(context.session_factory, slide_id, destinations[outcome], _report(slide_id, claim, outcome))
        return SlideJobResult(slide_id, "skipped", claim.status, folder, claim.error)

    logger.info("slide %s: attempt %d, folder %s", slide_id, claim.attempts, claim.folder)
    try:
        with LeaseKeeper(context.session_factory, slide_id, task_id, context.heartbeat_s):
            outcome, status, error = _analyze_and_store(slide_id, claim.folder, context, task_id)
    except TransientError:
        raise
    except Exception as exc:
        return _record_failure(slide_id, exc, context, claim, destinations["failed"])
    destination = destinations["failed" if outcome == "failed" else "done"]
    report = _report(slide_id, claim, outcome, error) if outcome != "skipped" else None
    folder = archive_slide(context.session_factory, slide_id, destination, report) if outcome != "skipped" else claim.folder
    return SlideJobResult(slide_id, outcome, status, folder, error)


def _report(slide_id: str, claim: _Claim, outcome: str, error: str | None = None) -> str | None:
    from smearflow.worker.folders import error_report

    return error_report(slide_id, error or claim.error, claim.attempts) if outcome == "failed" else None


def _record_failure(slide_id: str, exc: Exception, context: SlideJobContext, claim: _Claim, failed_dir) -> SlideJobResult:
    """A permanent or unexpected error: record it (stored results are kept) and archive the folder."""
    from smearflow.db import repository, session_scope, transient_database_errors

    error = _error_text(exc)
    if _is_soft_time_limit(exc):
        error = f"the slide took longer than the soft time limit ({error})"
    logger.error("slide %s failed: %s", slide_id, error)
    with transient_database_errors(), session_scope(context.session_factory) as session:
        status = repository.record_slide_failure(session, slide_id, error).status
    folder = archive_slide(context.session_factory, slide_id, failed_dir, _report(slide_id, claim, "failed", error))
    if isinstance(exc, PermanentError) or _is_soft_time_limit(exc):
        return SlideJobResult(slide_id, "failed", status, folder, error)
    raise exc


def _analyze_and_store(
    slide_id: str, folder: str | None, context: SlideJobContext, task_id: str | None
) -> tuple[str, str, str | None]:
    """Steps 2 and 3; returns the outcome, the slide's status afterwards and the error."""
    from smearflow.db import session_scope, transient_database_errors
    from smearflow.errors import BadSlideError
    from smearflow.jobs import analyze_folder, store_result

    analyze = context.analyze or analyze_folder
    store = context.store or store_result
    if folder is None:
        raise BadSlideError(f"slide {slide_id!r} has no folder registered")
    with transient_database_errors(), session_scope(context.session_factory) as session:
        analyzer = context.analyzer_for(session)
    result = analyze(folder, analyzer, slide_id=slide_id, max_fields=context.max_fields, propagate=context.propagate)
    error = "; ".join(result.errors) or None
    with transient_database_errors(), session_scope(context.session_factory) as session:
        current = _lock_slide(session, slide_id)
        if current is not None and (current.status != "running" or current.task_id != task_id):
            # Another delivery finished first or took the slide over when our lease expired: keep its work.
            logger.info("slide %s is %s by another delivery; this result is dropped", slide_id, current.status)
            return "skipped", current.status, current.error
        store(session, result, getattr(analyzer, "classifier", None))
        status = current.status if current is not None else result.status
    logger.info("slide %s %s: %s", slide_id, result.status, result.counts)
    return result.status, status, error


def archive_slide(session_factory, slide_id: str, dest_dir: str | Path | None, error_text: str | None = None) -> str | None:
    """Move a slide's folder into ``dest_dir`` and record the new path.

    Safe to repeat: a folder already there is left alone, and a folder that
    was moved by an earlier delivery whose database update was lost is found
    in the destination and recorded. A folder that cannot be moved is logged
    and left where it is (the analysis stands). Symbolic links are never
    followed (see :func:`smearflow.worker.folders.move_slide_folder`).

    Parameters
    ----------
    session_factory : sessionmaker
    slide_id : str
    dest_dir : str or Path or None
        ``done/`` or ``failed/``; ``None`` leaves the folder where it is.
    error_text : str, optional
        Written to ``error.txt`` in the folder (a failed slide).

    Returns
    -------
    str or None
        The slide's folder afterwards.

    Raises
    ------
    smearflow.errors.TransientError
        When the database is unavailable.
    """
    from smearflow.db import repository, session_scope, transient_database_errors
    from smearflow.worker.folders import is_in_folder, move_slide_folder

    with transient_database_errors(), session_scope(session_factory) as session:
        slide = repository.get_slide(session, slide_id)
        folder = slide.folder if slide is not None else None
    if dest_dir is None or folder is None:
        return folder
    path = Path(folder)
    if is_in_folder(path, dest_dir):
        return folder
    if os.path.lexists(path):
        try:
            new_path = move_slide_folder(path, dest_dir, error_text)
        except OSError as exc:
            logger.error("slide %s: could not move %s to %s: %s", slide_id, path, dest_dir, exc)
            return folder
    elif (Path(dest_dir) / path.name).is_dir():
        new_path = Path(os.path.abspath(Path(dest_dir) / path.name))
        logger.info("slide %s: folder already moved to %s", slide_id, new_path)
    else:
        logger.warning("slide %s: folder %s is missing; not moved", slide_id, path)
        return folder
    with transient_database_errors(), session_scope(session_factory) as session:
        repository.get_slide(session, slide_id).folder = str(new_path)
    return str(new_path)
