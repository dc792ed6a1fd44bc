"""What one slide task does, as a plain function with injected dependencies.

The Celery task (:func:`smearflow.worker.tasks.analyze_slide`) only builds a
:class:`SlideJobContext` for its process and calls :func:`run_slide_job`;
tests call it directly.

Steps, each in its own transaction:

1. **Claim** the slide (``claim_slide``): ``running``, one more attempt. A
   slide already ``done`` or ``failed`` is not claimed (a redelivered or
   duplicate task is a no-op), nor one that has used ``max_attempts`` (it is
   marked failed: a slide that keeps killing its worker stops there).
2. **Analyse** its folder, re-read from the database, with the same
   :func:`smearflow.jobs.analyze_folder` as ``smearflow analyze``.
3. **Store** with :func:`smearflow.jobs.store_result` under a row lock,
   unless another delivery stored a result first: one set of results.
4. **Archive**: when asked, move the folder to ``done/`` or ``failed/``
   (with ``error.txt``) and record its new path.

Failure policy: a :class:`~smearflow.errors.TransientError` (database down)
propagates, and the task retries with backoff. A
:class:`~smearflow.errors.PermanentError` (unreadable slide, bad model
folder) or a soft time limit is recorded ``failed`` and not retried. Any
other exception is recorded ``failed`` too, then re-raised so that the task
shows as failed in Flower; it is not retried either.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from smearflow.errors import BadSlideError, PermanentError, TransientError

logger = logging.getLogger(__name__)


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
        Claims of a slide before it is given up (``claim_slide``).
    analyze : callable, optional
        ``(folder, analyzer, on_field=, slide_id=) -> SlideResult``;
        :func:`smearflow.jobs.analyze_folder` by default.
    store : callable, optional
        ``(session, result, classifier) -> None``;
        :func:`smearflow.jobs.store_result` by default.
    field_delay_s : float
        Test hook: sleep this long after every field.
    sleep : callable
        ``time.sleep`` unless a test replaces it.
    """

    session_factory: Any
    analyzer_for: Callable[[Any], Any]
    max_attempts: int = 3
    analyze: Callable[..., Any] | None = None
    store: Callable[..., Any] | None = None
    field_delay_s: float = 0.0
    sleep: Callable[[float], None] = field(default=time.sleep)


@dataclass(frozen=True)
class SlideJobResult:
    """What became of one slide task.

    Attributes
    ----------
    slide_id : str
    outcome : {"done", "failed", "skipped", "unknown"}
        ``skipped``: nothing to do (already done or failed, or given up now);
        ``unknown``: no slide is registered under ``slide_id``.
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
    try:
        from celery.exceptions import SoftTimeLimitExceeded
    except ImportError:  # pragma: no cover - celery is a dependency
        return False
    return isinstance(error, SoftTimeLimitExceeded)


def run_slide_job(
    slide_id: str,
    context: SlideJobContext,
    *,
    done_dir: str | Path | None = None,
    failed_dir: str | Path | None = None,
) -> SlideJobResult:
    """Analyse one registered slide and store its result, exactly once.

    Parameters
    ----------
    slide_id : str
        The slide's code, as registered (``register_slide``).
    context : SlideJobContext
    done_dir, failed_dir : str or Path, optional
        Where to move the slide's folder when it ends done / failed; it
        stays where it is when ``None``.

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
    from smearflow.db import repository, session_scope, transient_database_errors

    factory = context.session_factory
    with transient_database_errors(), session_scope(factory) as session:
        try:
            slide = repository.claim_slide(session, slide_id, context.max_attempts)
        except LookupError as exc:
            logger.error("slide task for an unregistered slide dropped: %s", exc)
            return SlideJobResult(slide_id, "unknown", None, None, str(exc))
        if slide is None:
            current = repository.get_slide(session, slide_id)
            status, error = current.status, current.error
        else:
            folder, attempts = slide.folder, slide.attempts
    if slide is None:
        logger.info("slide %s is %s; nothing to analyse", slide_id, status)
        new_folder = archive_slide(factory, slide_id, done_dir, failed_dir)
        return SlideJobResult(slide_id, "skipped", status, new_folder, error)

    logger.info("slide %s: attempt %d, folder %s", slide_id, attempts, folder)
    try:
        status, error = _analyze_and_store(slide_id, folder, context)
    except TransientError:
        raise
    except Exception as exc:
        error = _error_text(exc)
        if _is_soft_time_limit(exc):
            error = f"the slide took longer than the soft time limit ({error})"
        logger.error("slide %s failed: %s", slide_id, error)
        with transient_database_errors(), session_scope(factory) as session:
            repository.record_slide_failure(session, slide_id, error)
        new_folder = archive_slide(factory, slide_id, done_dir, failed_dir)
        if isinstance(exc, PermanentError) or _is_soft_time_limit(exc):
            return SlideJobResult(slide_id, "failed", "failed", new_folder, error)
        raise
    new_folder = archive_slide(factory, slide_id, done_dir, failed_dir)
    outcome = status if status in ("done", "failed") else "skipped"
    return SlideJobResult(slide_id, outcome, status, new_folder, error)


def _analyze_and_store(slide_id: str, folder: str | None, context: SlideJobContext) -> tuple[str, str | None]:
    """Steps 2 and 3; returns the slide's status and error afterwards."""
    from smearflow.db import session_scope, transient_database_errors
    from smearflow.jobs import analyze_folder, store_result

    analyze = context.analyze or analyze_folder
    store = context.store or store_result
    if folder is None:
        raise BadSlideError(f"slide {slide_id!r} has no folder registered")
    with transient_database_errors(), session_scope(context.session_factory) as session:
        analyzer = context.analyzer_for(session)

    def on_field(field_result) -> None:
        if context.field_delay_s > 0:
            context.sleep(context.field_delay_s)

    result = analyze(folder, analyzer, on_field=on_field, slide_id=slide_id)
    with transient_database_errors(), session_scope(context.session_factory) as session:
        current = _lock_slide(session, slide_id)
        if current is not None and current.status == "done":
            # Another delivery of this slide finished first: keep its results.
            logger.info("slide %s was stored by another delivery; this result is dropped", slide_id)
            return "done", current.error
        store(session, result, getattr(analyzer, "classifier", None))
    error = "; ".join(result.errors) or None
    logger.info("slide %s %s: %s", slide_id, result.status, result.counts)
    return result.status, error


def archive_slide(
    session_factory,
    slide_id: str,
    done_dir: str | Path | None,
    failed_dir: str | Path | None,
) -> str | None:
    """Move a finished slide's folder to ``done_dir`` / ``failed_dir`` and record the new path.

    Safe to repeat: a folder already there is left alone, and a folder that
    was moved by an earlier delivery whose database update was lost is
    found in the destination and recorded. A folder that cannot be moved is
    logged and left where it is (the analysis stands).

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
    from smearflow.worker.folders import error_report, is_in_folder, move_slide_folder

    with transient_database_errors(), session_scope(session_factory) as session:
        slide = repository.get_slide(session, slide_id)
        if slide is None:
            return None
        status, folder, error, attempts = slide.status, slide.folder, slide.error, slide.attempts
    dest_dir = {"done": done_dir, "failed": failed_dir}.get(status)
    if dest_dir is None or folder is None:
        return folder
    path = Path(folder)
    if is_in_folder(path, dest_dir):
        return folder
    if path.is_dir():
        report = error_report(slide_id, error, attempts) if status == "failed" else None
        try:
            new_path = move_slide_folder(path, dest_dir, report)
        except OSError as exc:
            logger.error("slide %s: could not move %s to %s: %s", slide_id, path, dest_dir, exc)
            return folder
    elif (Path(dest_dir) / path.name).is_dir():
        new_path = (Path(dest_dir) / path.name).resolve()
        logger.info("slide %s: folder already moved to %s", slide_id, new_path)
    else:
        logger.warning("slide %s: folder %s is missing; not moved", slide_id, path)
        return folder
    with transient_database_errors(), session_scope(session_factory) as session:
        slide = repository.get_slide(session, slide_id)
        slide.folder = str(new_path)
    return str(new_path)
