"""The Celery tasks: thin wrappers around plain functions.

- ``smearflow.analyze_slide(slide_id, done_dir=None, failed_dir=None)``:
  :func:`smearflow.worker.slide_job.run_slide_job` (queue ``slides``); a
  :class:`~smearflow.errors.TransientError` retries it with Celery's own
  exponential backoff and full jitter (``SMEARFLOW_RETRY_BACKOFF_S``,
  ``SMEARFLOW_RETRY_BACKOFF_MAX_S``, ``SMEARFLOW_MAX_RETRIES``);
- ``smearflow.reconcile()``: :func:`smearflow.worker.reconcile.reconcile_slides`
  (queue ``slides``; sent by beat, and by each worker when it starts);
- ``smearflow.retrain()``: :func:`smearflow.worker.nightly.run_retraining`
  (queue ``training``);
- ``smearflow.rebenchmark()``: :func:`smearflow.worker.rebenchmark.run_rebenchmark`
  (queue ``training``).

Each worker process holds one :class:`WorkerRuntime`: its database engine and
its loaded model. Importing this module loads neither; after the fork
(``worker_process_init``) the engine inherited from the parent, if any, is
disposed and the model is loaded in the child (or at its first slide). In a
threads pool (``SMEARFLOW_WORKER_POOL=threads``) the slides in flight are
threads of one process: the runtime is told so when the worker starts
(``worker_init``), and their crops share the model's calls through a
:class:`~smearflow.classifier.shared_batches.SharedBatcher`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref
from typing import Any, Callable

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_init, worker_process_init, worker_ready

from smearflow.errors import TransientError
from smearflow.worker.settings import (
    ANALYZE_SLIDE_TASK,
    REBENCHMARK_TASK,
    RECONCILE_TASK,
    RETRAIN_TASK,
    WorkerSettings,
)

logger = logging.getLogger(__name__)


class WorkerRuntime:
    """One worker process's engine and model, created when first needed.

    Parameters
    ----------
    settings : WorkerSettings
    load_analyzer : callable, optional
        ``model_dir or None -> Analyzer``; builds the segmenter and loads the
        classifier (:meth:`smearflow.jobs.Analyzer.load`) by default.
    share_batches : bool
        Several slides run at once in this process (a threads pool): each
        loaded analyzer's classifier is wrapped in a
        :class:`~smearflow.classifier.shared_batches.SharedBatcher`.

    Notes
    -----
    Safe to use from several threads: the engine is made and the model
    loaded under locks. A slide keeps the analyzer it started with, so a
    newly activated model serves the slides that start afterwards and no
    slide changes model half-way; the previous model (and its batcher) is
    released once the last slide holding it ends.
    """

    def __init__(
        self, settings: WorkerSettings, load_analyzer: Callable[[Any], Any] | None = None, share_batches: bool = False
    ):
        self.settings = settings
        self.share_batches = share_batches
        self._load_analyzer = load_analyzer or self._load_default_analyzer
        self._engine = None
        self._factory = None
        self._analyzer = None
        self._analyzer_key: str | None = None
        self._lock = threading.Lock()
        self._engine_lock = threading.Lock()

    def session_factory(self):
        """The process's session factory (the engine is made on first use)."""
        with self._engine_lock:
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
                analyzer = self._load_analyzer(model_dir)
                self._analyzer = self._with_shared_batches(analyzer) if self.share_batches else analyzer
                self._analyzer_key = key
            return self._analyzer

    def _with_shared_batches(self, analyzer):
        """``analyzer`` with its classifier behind a batcher that is closed when no slide holds the analyzer."""
        from smearflow.classifier.shared_batches import SharedBatcher

        batcher = SharedBatcher(
            analyzer.classifier, batch_size=self.settings.classify_batch_size, max_wait_ms=self.settings.batch_wait_ms
        )
        shared = dataclasses.replace(analyzer, classifier=batcher)
        weakref.finalize(shared, batcher.close)
        return shared

    def _load_default_analyzer(self, model_dir):
        from smearflow.config import PipelineConfig
        from smearflow.jobs import Analyzer

        return Analyzer.load(
            model_dir,
            PipelineConfig(
                segmenter=self.settings.segmenter,
                max_field_pixels=self.settings.max_field_pixels,
                batch_size=self.settings.classify_batch_size,
                prefetch_fields=self.settings.prefetch_fields,
                prepare_threads=self.settings.prepare_threads,
                inference_precision=self.settings.inference_precision,
            ),
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
            lease_s=self.settings.lease_s,
            heartbeat_s=self.settings.heartbeat_s,
            max_fields=self.settings.max_fields,
            propagate=(SoftTimeLimitExceeded,),
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


def _is_threads_pool(pool_cls) -> bool:
    from celery.concurrency import get_implementation
    from celery.concurrency.thread import TaskPool

    pool = get_implementation(pool_cls)
    return isinstance(pool, type) and issubclass(pool, TaskPool)


@worker_init.connect
def _share_batches_in_a_threads_pool(sender=None, **kwargs) -> None:
    """A threads-pool worker runs its slides in this one process: they share one model and its batches."""
    if sender is None or not _is_threads_pool(sender.pool_cls):
        return
    runtime = get_runtime(sender.app)
    runtime.share_batches = True
    if runtime.settings.preload_model and _consumes_slides(sender.app, runtime.settings):
        runtime.preload()


@worker_ready.connect
def _reconcile_at_start(sender=None, **kwargs) -> None:
    """A worker that starts asks for a reconciliation (run by a pool process, never here in the parent)."""
    app = getattr(sender, "app", None)
    if app is None:
        return
    from smearflow.worker.app import settings_of

    try:
        app.send_task(RECONCILE_TASK, queue=settings_of(app).slides_queue)
    except Exception as exc:  # noqa: BLE001 - beat sends the next one
        logger.warning("could not ask for a reconciliation at start-up: %s", exc)


@shared_task(name=ANALYZE_SLIDE_TASK, bind=True, autoretry_for=(TransientError,), retry_jitter=True)
def analyze_slide(self, slide_id: str, done_dir: str | None = None, failed_dir: str | None = None) -> dict:
    """Analyse the registered slide ``slide_id`` and store its result (idempotent)."""
    from smearflow.worker.slide_job import run_slide_job

    runtime = get_runtime(self.app)
    return run_slide_job(
        slide_id, runtime.slide_context(), task_id=self.request.id, done_dir=done_dir, failed_dir=failed_dir
    ).to_dict()


@shared_task(name=RECONCILE_TASK, bind=True)
def reconcile(self) -> dict:
    """Send again every slide whose worker or message was lost (:mod:`smearflow.worker.reconcile`)."""
    from smearflow.worker.enqueue import celery_sender
    from smearflow.worker.reconcile import broker_queue, limits_of, reconcile_slides

    runtime = get_runtime(self.app)
    settings = runtime.settings
    report = reconcile_slides(
        runtime.session_factory(), broker_queue(settings), celery_sender(self.app), limits_of(settings)
    )
    return report.to_dict()


@shared_task(name=RETRAIN_TASK, bind=True)
def retrain(self) -> dict:
    """Train a candidate on ``SMEARFLOW_TRAIN_DATA``; activate it if it beats the active model on the gate split.

    A failed run is recorded, then raised: the task ends as a failure.
    """
    from smearflow.worker.nightly import RetrainSettings, run_retraining

    runtime = get_runtime(self.app)
    settings = RetrainSettings.of(runtime.settings)
    return run_retraining(runtime.session_factory(), settings, task_id=self.request.id).to_dict()


@shared_task(name=REBENCHMARK_TASK, bind=True)
def rebenchmark(self) -> dict:
    """Run or resume the architecture benchmark on ``SMEARFLOW_TRAIN_DATA`` and record it."""
    from smearflow.worker.rebenchmark import run_rebenchmark

    runtime = get_runtime(self.app)
    settings = runtime.settings
    return run_rebenchmark(
        runtime.session_factory(),
        data_dir=settings.train_data,
        out_dir=settings.benchmark_dir,
        benchmark_config=settings.benchmark_config,
        task_id=self.request.id,
        max_attempts=settings.max_training_attempts,
        time_limit_s=settings.training_time_limit_s,
    )


__all__ = ["WorkerRuntime", "analyze_slide", "get_runtime", "rebenchmark", "reconcile", "retrain"]
