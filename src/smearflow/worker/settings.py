"""Worker, watcher and schedule settings, read from the environment.

Every process of a deployment (workers, beat, watcher, Flower, the CLI) reads
the same ``SMEARFLOW_*`` variables, so one ``.env`` file configures a whole
lab. :meth:`WorkerSettings.from_env` is the only place that reads them.

Variables (default in brackets):

``SMEARFLOW_BROKER_URL``
    Celery broker [redis://127.0.0.1:6379/0]
``SMEARFLOW_RESULT_BACKEND``
    Celery result backend [the broker URL]
``SMEARFLOW_DATABASE_URL``
    SQLAlchemy URL of the results database [sqlite:///smearflow.db]
``SMEARFLOW_QUEUE_PREFIX``
    prefix of both queue names [empty]
``SMEARFLOW_SLIDES_QUEUE``
    queue of slide analyses (GPU workers) [<prefix>slides]
``SMEARFLOW_TRAINING_QUEUE``
    queue of retraining and benchmarks [<prefix>training]
``SMEARFLOW_MODEL_DIR``
    classifier folder; overrides the active model version [unset: the active version, else the packaged model]
``SMEARFLOW_SEGMENTER``
    a segmenter of ``smearflow.segmentation.SEGMENTERS``: classical or unet [classical]
``SMEARFLOW_SEGMENTATION_MODEL_DIR``
    U-Net folder of the unet segmenter [unset]
``SMEARFLOW_RBC_DIAMETER_PX``
    expected red-cell diameter in pixels [unset: estimated per field]
``SMEARFLOW_PRELOAD_MODEL``
    load the model when a worker process starts, not at its first slide [1]
``SMEARFLOW_MODEL_LOAD_TIMEOUT_S``
    how long a new worker process may take to start (and load) [300]
``SMEARFLOW_MAX_ATTEMPTS``
    claims of a slide before it is given up as failed [3]
``SMEARFLOW_MAX_RETRIES``
    retries after a transient error (database down), then reconciliation takes over [30]
``SMEARFLOW_RETRY_BACKOFF_S``
    first retry delay, doubled at each retry, drawn at random below it (Celery's full jitter) [5]
``SMEARFLOW_RETRY_BACKOFF_MAX_S``
    longest retry delay [60]
``SMEARFLOW_LEASE_S``
    a running slide whose worker has not renewed its lease for this long is given to another worker [60]
``SMEARFLOW_HEARTBEAT_S``
    how often a worker renews the lease of the slide it works on [15]
``SMEARFLOW_RECONCILE_INTERVAL_S``
    how often beat and the watcher look for slides whose worker or message was lost [60]
``SMEARFLOW_QUEUED_GRACE_S``
    how long a queued slide may go without a message on the broker before it is sent again [60]
``SMEARFLOW_MAX_REQUEUES``
    times a slide whose message was lost is sent again before it is given up [5]
``SMEARFLOW_MAX_FIELDS``
    field images one slide folder may hold [2000]
``SMEARFLOW_MAX_FIELD_PIXELS``
    pixels one field may have, checked from its header before decoding [40000000]
``SMEARFLOW_CLASSIFY_BATCH_SIZE``
    crops per classifier call, gathered across the fields of a slide [64]
``SMEARFLOW_WORKER_POOL``
    Celery pool of ``smearflow worker`` and ``celery -A smearflow.worker worker``: prefork (a process, and a model, per slide in flight), threads (the slides in flight share one process, one model and its batches) or solo [prefork]
``SMEARFLOW_WORKER_CONCURRENCY``
    slides in flight per worker: processes (prefork) or threads [unset: 1 for ``smearflow worker``, Celery's default for ``celery worker``]
``SMEARFLOW_BATCH_WAIT_MS``
    in a threads pool, how long crops wait for other slides' crops before a partial batch is classified [20]
``SMEARFLOW_PREFETCH_FIELDS``
    fields read and segmented ahead in a background thread while the classifier works [2]
``SMEARFLOW_PREPARE_THREADS``
    threads that read and segment fields at once in each slide [1]
``SMEARFLOW_INFERENCE_PRECISION``
    float32 or bfloat16 (faster on hardware with bfloat16 arithmetic; check its accuracy first) [float32]
``SMEARFLOW_MAX_MEMORY_PER_CHILD_KIB``
    resident memory (KiB) above which a worker process is replaced after its task (Celery's worker_max_memory_per_child) [unset: never]
``SMEARFLOW_SOFT_TIME_LIMIT_S``
    soft time limit of one slide (then recorded failed) [1200]
``SMEARFLOW_TIME_LIMIT_S``
    hard time limit of one slide (then killed) [1500]
``SMEARFLOW_TRAINING_TIME_LIMIT_S``
    hard time limit of retraining and the benchmark [14400]
``SMEARFLOW_VISIBILITY_TIMEOUT_S``
    Redis visibility timeout: above every hard limit [18000]
``SMEARFLOW_RESTORE_INTERVAL_S``
    how often workers look for messages past the visibility timeout [unset: Kombu's default, about 100 s]
``SMEARFLOW_TRAIN_DATA``
    class-folder dataset of retraining and the benchmark [unset: those runs fail, recorded]
``SMEARFLOW_TRAIN_CONFIG``
    JSON overrides of TrainConfig [{}]
``SMEARFLOW_MODELS_DIR``
    where nightly candidates are written [smearflow-models]
``SMEARFLOW_BENCHMARK_DIR``
    where nightly benchmarks are written [smearflow-benchmarks]
``SMEARFLOW_BENCHMARK_CONFIG``
    JSON overrides of BenchmarkConfig [{}]
``SMEARFLOW_RETRAIN_CRON``
    cron of retraining; off disables it [30 2 * * *]
``SMEARFLOW_BENCHMARK_CRON``
    cron of the re-benchmark; off disables it [30 4 * * 0]
``SMEARFLOW_RETRAIN_METRIC``
    the figure a candidate must win on [macro_f1]
``SMEARFLOW_RETRAIN_MARGIN``
    by how much it must win [0.01]
``SMEARFLOW_MAX_TRAINING_ATTEMPTS``
    deliveries of one retraining or benchmark task (its process killed) before the run is given up [3]
``SMEARFLOW_KEEP_CANDIDATES``
    nightly candidate folders kept; older ones are removed (never the active or the packaged model) [5]
``SMEARFLOW_TIMEZONE``
    time zone of the cron schedules [UTC]
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from smearflow.serialisable import SerialisableConfig
from smearflow.config import INFERENCE_PRECISIONS
from smearflow.segmentation.registry import check_segmenter_name

WORKER_POOLS = ("prefork", "threads", "solo")
"""Celery pools a worker may run; ``threads`` shares one model's batches between slides."""

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
"""The broker used when ``SMEARFLOW_BROKER_URL`` is not set."""

SLIDES = "slides"
"""Logical name of the queue of slide analyses."""

TRAINING = "training"
"""Logical name of the queue of retraining and benchmark runs."""

ANALYZE_SLIDE_TASK = "smearflow.analyze_slide"
RECONCILE_TASK = "smearflow.reconcile"
RETRAIN_TASK = "smearflow.retrain"
REBENCHMARK_TASK = "smearflow.rebenchmark"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _number(name: str, raw: str, kind: type) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name} must be a{'n integer' if kind is int else ' number'}. Received: {name}={raw!r}") from None
    if kind is float and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number. Received: {name}={raw!r}")
    return value


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be one of 1/0, true/false, yes/no, on/off. Received: {name}={raw!r}")


@dataclass(frozen=True)
class WorkerSettings(SerialisableConfig):
    """Everything a worker, beat or the watcher needs to know; the module lists the variables.

    Time limits and timeouts are in seconds. Validation makes sure that a
    message is never handed to a second worker while the first may still be
    working on it: the Redis visibility timeout must exceed every hard time
    limit and the longest retry delay.
    """

    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str | None = None
    database_url: str | None = None
    queue_prefix: str = ""
    slides_queue: str | None = None
    training_queue: str | None = None
    model_dir: str | None = None
    segmenter: str = "classical"
    segmentation_model_dir: str | None = None
    rbc_diameter_px: float | None = None
    preload_model: bool = True
    max_attempts: int = 3
    max_retries: int = 30
    retry_backoff_s: float = 5.0
    retry_backoff_max_s: float = 60.0
    lease_s: float = 60.0
    heartbeat_s: float = 15.0
    reconcile_interval_s: float = 60.0
    queued_grace_s: float = 60.0
    max_requeues: int = 5
    max_fields: int = 2000
    max_field_pixels: int = 40_000_000
    classify_batch_size: int = 64
    worker_pool: str = "prefork"
    worker_concurrency: int | None = None
    batch_wait_ms: float = 20.0
    prefetch_fields: int = 2
    prepare_threads: int = 1
    inference_precision: str = "float32"
    max_memory_per_child_kib: int | None = None
    soft_time_limit_s: float = 1200.0
    time_limit_s: float = 1500.0
    training_time_limit_s: float = 14400.0
    visibility_timeout_s: float = 18000.0
    restore_interval_s: float | None = None
    model_load_timeout_s: float = 300.0
    train_data: str | None = None
    train_config: dict[str, Any] = field(default_factory=dict)
    models_dir: str = "smearflow-models"
    benchmark_dir: str = "smearflow-benchmarks"
    benchmark_config: dict[str, Any] = field(default_factory=dict)
    retrain_cron: str | None = "30 2 * * *"
    benchmark_cron: str | None = "30 4 * * 0"
    retrain_metric: str = "macro_f1"
    retrain_margin: float = 0.01
    max_training_attempts: int = 3
    keep_candidates: int = 5
    timezone: str = "UTC"

    def __post_init__(self):
        if not self.broker_url:
            raise ValueError(f"broker_url must not be empty. Received: broker_url={self.broker_url!r}")
        if self.result_backend is None:
            object.__setattr__(self, "result_backend", self.broker_url)
        if self.slides_queue is None:
            object.__setattr__(self, "slides_queue", f"{self.queue_prefix}{SLIDES}")
        if self.training_queue is None:
            object.__setattr__(self, "training_queue", f"{self.queue_prefix}{TRAINING}")
        if self.slides_queue == self.training_queue:
            raise ValueError(
                "slides_queue and training_queue must differ. "
                f"Received: slides_queue={self.slides_queue!r}, training_queue={self.training_queue!r}"
            )
        check_segmenter_name(self.segmenter)
        for name, least in (
            ("max_attempts", 1), ("max_retries", 0), ("max_requeues", 0), ("max_fields", 1), ("max_field_pixels", 1),
            ("max_training_attempts", 1), ("keep_candidates", 0), ("classify_batch_size", 1), ("prefetch_fields", 0),
            ("prepare_threads", 1),
        ):
            value = getattr(self, name)
            if value < least:
                raise ValueError(f"{name} must be at least {least}. Received: {name}={value}")
        for name in (
            "retry_backoff_s",
            "retry_backoff_max_s",
            "lease_s",
            "heartbeat_s",
            "reconcile_interval_s",
            "queued_grace_s",
            "soft_time_limit_s",
            "time_limit_s",
            "training_time_limit_s",
            "visibility_timeout_s",
            "model_load_timeout_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive. Received: {name}={getattr(self, name)}")
        if self.heartbeat_s * 2 > self.lease_s:
            raise ValueError(
                "heartbeat_s must be at most half of lease_s, so one late heartbeat does not lose the lease. "
                f"Received: heartbeat_s={self.heartbeat_s}, lease_s={self.lease_s}"
            )
        if self.soft_time_limit_s >= self.time_limit_s:
            raise ValueError(
                "soft_time_limit_s must be below time_limit_s, so a slow slide is recorded failed before it is killed. "
                f"Received: soft_time_limit_s={self.soft_time_limit_s}, time_limit_s={self.time_limit_s}"
            )
        longest = max(self.time_limit_s, self.training_time_limit_s, self.retry_backoff_max_s)
        if self.visibility_timeout_s <= longest:
            raise ValueError(
                "visibility_timeout_s must exceed time_limit_s, training_time_limit_s and retry_backoff_max_s, "
                "or Redis hands a running task to a second worker. "
                f"Received: visibility_timeout_s={self.visibility_timeout_s}, time_limit_s={self.time_limit_s}, "
                f"training_time_limit_s={self.training_time_limit_s}, retry_backoff_max_s={self.retry_backoff_max_s}"
            )
        if self.worker_pool not in WORKER_POOLS:
            raise ValueError(f"worker_pool must be one of {list(WORKER_POOLS)}. Received: worker_pool={self.worker_pool!r}")
        if self.worker_concurrency is not None and self.worker_concurrency < 1:
            raise ValueError(f"worker_concurrency must be at least 1. Received: worker_concurrency={self.worker_concurrency}")
        if not (math.isfinite(self.batch_wait_ms) and self.batch_wait_ms >= 0):
            raise ValueError(f"batch_wait_ms must be a finite number of at least 0. Received: batch_wait_ms={self.batch_wait_ms}")
        if self.restore_interval_s is not None and not self.restore_interval_s > 0:
            raise ValueError(f"restore_interval_s must be positive. Received: restore_interval_s={self.restore_interval_s}")
        if self.max_memory_per_child_kib is not None and self.max_memory_per_child_kib < 1:
            raise ValueError(
                f"max_memory_per_child_kib must be at least 1. Received: max_memory_per_child_kib={self.max_memory_per_child_kib}"
            )
        if self.rbc_diameter_px is not None and not self.rbc_diameter_px > 0:
            raise ValueError(f"rbc_diameter_px must be positive. Received: rbc_diameter_px={self.rbc_diameter_px}")
        if self.inference_precision not in INFERENCE_PRECISIONS:
            raise ValueError(
                f"inference_precision must be one of {list(INFERENCE_PRECISIONS)}. "
                f"Received: inference_precision={self.inference_precision!r}"
            )
        if self.retrain_margin < 0:
            raise ValueError(f"retrain_margin must not be negative. Received: retrain_margin={self.retrain_margin}")
        for name in ("train_config", "benchmark_config"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a JSON object. Received: {name}={getattr(self, name)!r}")

    @property
    def queues(self) -> dict[str, str]:
        """Logical queue name (``"slides"``, ``"training"``) to the real one."""
        return {SLIDES: self.slides_queue, TRAINING: self.training_queue}

    def queue_names(self, logical: list[str] | tuple[str, ...]) -> list[str]:
        """The real names of logical queues.

        Raises
        ------
        ValueError
            When a name is neither ``"slides"`` nor ``"training"``.
        """
        unknown = [name for name in logical if name not in self.queues]
        if unknown:
            raise ValueError(f"queues must be among {sorted(self.queues)}. Received: {list(logical)}")
        return [self.queues[name] for name in logical]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "WorkerSettings":
        """Settings from ``SMEARFLOW_*`` variables (``os.environ`` by default).

        Field ``name`` is read from ``SMEARFLOW_<NAME>``; an unset or empty
        variable leaves the field's default. Values are parsed by the field's
        type (numbers, flags, JSON objects; ``off`` turns a cron schedule off).

        Raises
        ------
        ValueError
            When a number, flag or JSON value does not parse, or the values
            break a rule of :class:`WorkerSettings`.
        """
        env = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values = {}
        for setting in dataclasses.fields(cls):
            variable = f"SMEARFLOW_{setting.name.upper()}"
            raw = env.get(variable, "").strip()
            if raw:
                values[setting.name] = _parse(variable, raw, hints[setting.name], setting.name)
        return cls(**values)


def _parse(variable: str, raw: str, kind: Any, name: str) -> Any:
    """One variable's value, parsed by its field's type."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # "float | None" is read as float
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    if name.endswith("_cron"):
        return None if raw.lower() in ("off", "none", "disabled") else raw
    if kind is bool:
        return _flag(variable, raw)
    if kind in (int, float):
        return _number(variable, raw, kind)
    if kind is dict or typing.get_origin(kind) is dict:
        return _json_object(variable, raw)
    return raw


def _json_object(name: str, raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} must be a JSON object. Received: {name}={raw!r} ({exc})") from None
