"""The Celery tasks: thin wrappers around plain functions.

- ``smearflow.analyze_slide(slide_id, done_dir=None, failed_dir=None)``:
  :func:`smearflow.worker.slide_job.run_slide_job` (queue ``slides``);
- ``smearflow.retrain()``: :func:`smearflow.worker.nightly.run_retraining`
  (queue ``training``);
- ``smearflow.rebenchmark()``: :func:`smearflow.worker.nightly.run_rebenchmark`
  (queue ``training``).

Each worker process holds one :class:`WorkerRuntime`: its database engine and
its loaded model. Importing this module loads neither; after the fork
(``worker_process_init``) the engine inherited from the parent, if any, is
disposed and the model is loaded in the child (or at its first slide).
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any, Callable

from celery import shared_task
from celery.signals import worker_process_init

from smearflow.errors import TransientError
from smearflow.worker.settings import ANALYZE_SLIDE_TASK, REBENCHMARK_TASK, RETRAIN_TASK, WorkerSettings

logger = logging.getLogger(__name__)


def retry_delay_s(retries: int, base_s: float, max_s: float, rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter: about ``base_s * 2**retries``, at most ``max_s``.

    Parameters
    ----------
    retries : int
        Retries so far (0 before the first).
    base_s, max_s : float
    rng : callable
        Uniform ``[0, 1)``; the delay is drawn in ``[d/2, d]`` so that workers
        that failed together do not retry together.

    Raises
    ------
    ValueError
        When ``retries`` is negative.
    """
    if retries < 0:
        raise ValueError(f"retries must not be negative. Received: retries={retries}")
    delay = min(max_s, base_s * 2.0 ** min(retries, 32))
    return delay / 2.0 + rng() * delay / 2.0


class WorkerRuntime:
    """One worker process's engine and model, created when first needed.

    Parameters
    ----------
    settings : WorkerSettings
    load_analyzer : callable, optional
        ``model_dir or None -> Analyzer``; builds the segmenter and loads the
        classifier (:meth:`smearflow.jobs.Analyzer.load`) by default.
    """

    def __init__(self, settings: WorkerSettings, load_analyzer: Callable[[Any], Any] | None = None):
        self.settings = settings
        self._load_analyzer = load_analyzer or self._load_default_analyzer
        self._engine = None
        self._factory = None
        self._analyzer = None
        self._analyzer_key: str | None = None
        self._lock = threading.Lock()

    def session_factory(self):
        """The process's session factory (the engine is made on first use)."""
        if self._factory is None:
            from smearflow.db import make_engine, session_factory

            self._engine = make_engine(self.settings.database_url)
            self._factory = session_factory(self._engine)
        return self._factory

    def after_fork(self) -> None:
        """Drop what a forked child must not share with its parent (SQLAlchemy's pooling FAQ)."""
        if self._engine is not None:
            self._engine.dispose(close=False)
        self._analyzer = None
        self._analyzer_key = None

    def analyzer_for(self, session):
        """The analyzer of the model to use now, loaded once and kept.

        The model is ``SMEARFLOW_MODEL_DIR``, else the active model version,
        else the packaged one; activating another version makes the next
        slide load it.
        """
        from smearflow.worker.nightly import resolve_model_dir

        model_dir = resolve_model_dir(self.settings.model_dir, session)
        key = str(model_dir) if model_dir is not None else "<packaged>"
        with self._lock:
            if self._analyzer is None or key != self._analyzer_key:
                logger.info("loading the classifier %s", key)
                self._analyzer = None
                self._analyzer = self._load_analyzer(model_dir)
                self._analyzer_key = key
            return self._analyzer

    def _load_default_analyzer(self, model_dir):
        from smearflow.config import PipelineConfig
        from smearflow.jobs import Analyzer

        return Analyzer.load(
            model_dir,
            PipelineConfig(segmenter=self.settings.segmenter),
            segmentation_model_dir=self.settings.segmentation_model_dir,
            rbc_diameter_px=self.settings.rbc_diameter_px,
        )

    def preload(self) -> None:
        """Load the model now; a failure is logged and the first slide tries again."""
        from smearflow.db import session_scope

        try:
            with session_scope(self.session_factory()) as session:
                self.analyzer_for(session)
        except Exception:  # noqa: BLE001 - the first slide records the real error
            logger.exception("could not load the model at start-up; the first slide will try again")

    def slide_context(self):
        """A :class:`~smearflow.worker.slide_job.SlideJobContext` for this process."""
        from smearflow.worker.slide_job import SlideJobContext

        return SlideJobContext(
            session_factory=self.session_factory(),
            analyzer_for=self.analyzer_for,
            max_attempts=self.settings.max_attempts,
            field_delay_s=self.settings.test_field_delay_s,
        )


_runtime: WorkerRuntime | None = None


def get_runtime(app=None) -> WorkerRuntime:
    """This process's :class:`WorkerRuntime`, made from ``app``'s settings on first use."""
    global _runtime
    if _runtime is None:
        from celery import current_app

        from smearflow.worker.app import settings_of

        _runtime = WorkerRuntime(settings_of(app or current_app))
    return _runtime


def _consumes_slides(app, settings: WorkerSettings) -> bool:
    try:
        return settings.slides_queue in app.amqp.queues.consume_from
    except Exception:  # noqa: BLE001 - when unsure, preload
        return True


@worker_process_init.connect
def _after_fork(**kwargs) -> None:
    from celery import current_app

    runtime = get_runtime(current_app)
    runtime.after_fork()
    if runtime.settings.preload_model and _consumes_slides(current_app, runtime.settings):
        runtime.preload()


def _give_up(runtime: WorkerRuntime, slide_id: str, exc: BaseException, retries: int) -> None:
    """Record a slide failed after its last retry, if the database answers at all."""
    from smearflow.db import repository, session_scope

    error = f"gave up after {retries} retries: {type(exc).__name__}: {exc}"
    try:
        with session_scope(runtime.session_factory()) as session:
            repository.record_slide_failure(session, slide_id, error)
    except Exception as record_error:  # noqa: BLE001 - the database is probably still down
        logger.error("slide %s: could not record the failure (%s): %s", slide_id, record_error, error)


def run_with_retries(task, slide_id: str, body: Callable[[], dict], runtime: WorkerRuntime) -> dict:
    """Run ``body``; on a :class:`TransientError` retry ``task`` with backoff, or give up.

    Raises
    ------
    celery.exceptions.Retry
        To retry later (Celery's way of ending a task that will run again).
    smearflow.errors.TransientError
        After the last retry; the slide is recorded failed when possible.
    """
    try:
        return body()
    except TransientError as exc:
        settings = runtime.settings
        retries = task.request.retries
        if retries >= settings.max_retries:
            logger.error("slide %s: giving up after %d retries: %s", slide_id, retries, exc)
            _give_up(runtime, slide_id, exc, retries)
            raise
        countdown = retry_delay_s(retries, settings.retry_backoff_s, settings.retry_backoff_max_s)
        logger.warning("slide %s: %s; retry %d in %.0f s", slide_id, exc, retries + 1, countdown)
        raise task.retry(exc=exc, countdown=countdown, max_retries=settings.max_retries)


@shared_task(name=ANALYZE_SLIDE_TASK, bind=True)
def analyze_slide(self, slide_id: str, done_dir: str | None = None, failed_dir: str | None = None) -> dict:
    """Analyse the registered slide ``slide_id`` and store its result (idempotent)."""
    from smearflow.worker.slide_job import run_slide_job

    runtime = get_runtime(self.app)

    def body() -> dict:
        return run_slide_job(slide_id, runtime.slide_context(), done_dir=done_dir, failed_dir=failed_dir).to_dict()

    return run_with_retries(self, slide_id, body, runtime)


@shared_task(name=RETRAIN_TASK, bind=True)
def retrain(self) -> dict:
    """Train a candidate on ``SMEARFLOW_TRAIN_DATA``; activate it if it beats the active model."""
    from smearflow.worker.nightly import run_retraining

    runtime = get_runtime(self.app)
    settings = runtime.settings
    return run_retraining(
        runtime.session_factory(),
        data_dir=settings.train_data,
        models_dir=settings.models_dir,
        train_config=settings.train_config,
        margin=settings.retrain_margin,
        metric=settings.retrain_metric,
        env_model_dir=settings.model_dir,
    ).to_dict()


@shared_task(name=REBENCHMARK_TASK, bind=True)
def rebenchmark(self) -> dict:
    """Re-run the architecture benchmark on ``SMEARFLOW_TRAIN_DATA`` and record it."""
    from smearflow.worker.nightly import run_rebenchmark

    runtime = get_runtime(self.app)
    settings = runtime.settings
    return run_rebenchmark(
        runtime.session_factory(),
        data_dir=settings.train_data,
        out_dir=settings.benchmark_dir,
        benchmark_config=settings.benchmark_config,
    )


__all__ = ["WorkerRuntime", "analyze_slide", "get_runtime", "rebenchmark", "retrain", "retry_delay_s"]
