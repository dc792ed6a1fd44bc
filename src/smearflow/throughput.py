"""Measure how fast slides go from field image files to stored counts, part by part.

:func:`measure_throughput` times, on the same fields and in one process:

- the parts, one at a time: reading a field, checking and segmenting it,
  cropping its cells (``prepare``), the classifier network alone on ready
  tensors at the production batch size (the ceiling: the pipeline's forward
  pass, :func:`smearflow.pipeline.forward_batch_size`), storing a slide;
- the whole pipeline on a slide folder of those fields, stored in a SQLite
  database (``pipeline``), while the resident memory is sampled;
- the naive baseline: one ``model.predict`` per cell.

and derives ``pipeline_efficiency`` (pipeline ÷ classifier cells per
second), ``overhead_ratio`` (pipeline time ÷ the sum of its measured parts:
below 1 when the overlap of segmentation and classification gains more than
the batching and threads cost), ``speedup_vs_naive`` and ``slides_per_hour``
for a slide of :data:`SLIDE_WBC` white cells.

It writes only under the folder it is given (a slide folder and the
database); :func:`write_synthetic_fields` makes fields when no real ones are at hand.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smearflow.classifier.model_folder import write_model_folder
from smearflow.classifier.precision import with_precision
from smearflow.classifier.preprocessing import resize_rgb
from smearflow.config import PipelineConfig
from smearflow.db import make_engine, session_factory, session_scope, upgrade_database
from smearflow.imageio import is_image_file, read_rgb, write_rgb
from smearflow.jobs import Analyzer, analyze_folder, store_result
from smearflow.pipeline import PreparedField, forward_batch_size, prepare_field
from smearflow.segmentation import make_segmenter
from smearflow.synthetic import make_smear
from smearflow.training.architectures import build_model
from smearflow.training.machine import machine_description

logger = logging.getLogger(__name__)

SLIDE_WBC = 200
"""White cells in the slide ``slides_per_hour`` is given for (a manual differential counts 100 to 200)."""

FIGURES = (
    "read_ms_per_field",
    "segmentation_ms_per_field",
    "prepare_ms_per_field",
    "classifier_cells_per_s",
    "classifier_cells_per_s_bfloat16",
    "pipeline_cells_per_s",
    "pipeline_ms_per_field",
    "naive_cells_per_s",
    "pipeline_efficiency",
    "overhead_ratio",
    "speedup_vs_naive",
    "peak_rss_mb",
    "slides_per_hour",
)
"""Every figure measured for each model, in the order they are shown."""

_RSS_SAMPLE_S = 0.01


@dataclass(frozen=True)
class ModelUnderTest:
    """A classifier to measure: a model folder, or an architecture built with random weights.

    Attributes
    ----------
    name : str
        ``packaged``, or what the model is (``hybrid 224 px, random weights``).
    model_dir : str or Path, optional
        Its model folder (the packaged model when neither this nor
        ``architecture`` is given).
    architecture : str, optional
        A registered architecture to build with random weights (speed only).
    image_size : int
        The built architecture's input side.
    classes : tuple of str
        The built architecture's classes.
    """

    name: str
    model_dir: str | Path | None = None
    architecture: str | None = None
    image_size: int = 224
    classes: tuple[str, ...] = ()

    def write(self, work_dir: str | Path) -> "ModelUnderTest":
        """A built architecture written as a model folder in ``work_dir`` (a folder is returned as it is).

        The measured process then loads a folder, as a worker does, and holds no second copy.
        """
        if self.architecture is None:
            return self
        folder = write_model_folder(
            Path(work_dir) / f"{self.architecture}-{self.image_size}px",
            build_model(self.architecture, self.image_size, len(self.classes)),
            config={"architecture": self.architecture, "image_size": self.image_size},
            classes=self.classes,
            metrics={"note": "random weights: measured for speed only"},
        )
        return ModelUnderTest(self.name, model_dir=folder.path)

    def load(self, precision: str):
        """The :class:`~smearflow.classifier.classifier.Classifier` of a model folder (see :meth:`write`).

        Raises
        ------
        ValueError
            When the model is an architecture not written yet.
        """
        from smearflow.classifier.classifier import Classifier

        if self.architecture is not None:
            raise ValueError(f"write {self.name} to a model folder before loading it. Received: architecture={self.architecture!r}")
        return Classifier.load(self.model_dir, precision=precision)


@dataclass
class FieldStageTimes:
    """Per-field times of the stages before classification, and what they produced."""

    fields: int = 0
    read_s: float = 0.0
    segmentation_s: float = 0.0
    prepare_s: float = 0.0
    crops: list = field(default_factory=list, repr=False)
    """Up to ``keep_crops`` crops (kind, crop) for the naive baseline."""


def write_synthetic_fields(out_dir: str | Path, n_fields: int, seed: int = 0, n_distinct: int = 10) -> list[Path]:
    """Write ``n_fields`` synthetic 640 × 480 fields (PNG) drawn by :func:`smearflow.synthetic.make_smear`.

    Only ``n_distinct`` fields are drawn; the others repeat them (drawing is slower than analysing).

    Raises
    ------
    ValueError
        When ``n_fields`` or ``n_distinct`` is below 1.
    """

    if n_fields < 1 or n_distinct < 1:
        raise ValueError(
            f"n_fields and n_distinct must be at least 1. Received: n_fields={n_fields}, n_distinct={n_distinct}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = []
    for i in range(min(n_fields, n_distinct)):
        path = out_dir / f"synthetic-{i:04d}.png"
        write_rgb(path, make_smear(seed + i, n_wbc=2).image)
        drawn.append(path)
    return [drawn[i % len(drawn)] for i in range(n_fields)]


def field_images(data_dir: str | Path, n_fields: int) -> list[Path]:
    """The first ``n_fields`` images of a folder, by name, repeated in turn when it holds fewer.

    Raises
    ------
    ValueError
        When ``n_fields`` is below 1 or the folder holds no image.
    """

    if n_fields < 1:
        raise ValueError(f"n_fields must be at least 1. Received: n_fields={n_fields}")
    images = sorted(p for p in Path(data_dir).iterdir() if is_image_file(p) and not p.is_symlink())
    if not images:
        raise ValueError(f"{data_dir}: holds no field image (JPEG, PNG, TIFF or BMP)")
    return [images[i % len(images)] for i in range(n_fields)]


def make_slide_folder(images: Sequence[Path], folder: str | Path) -> Path:
    """Copy field images into a new slide folder, named in order (``field-0000.jpg`` …)."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        shutil.copyfile(image, folder / f"field-{i:04d}{Path(image).suffix.lower()}")
    return folder


def field_stage_times(paths: Sequence[str | Path], segmenter, config: PipelineConfig, keep_crops: int = 32) -> FieldStageTimes:
    """Time reading, segmenting and preparing (check, segment, crop) each field, one at a time.

    Only one image is held at a time.
    """

    times = FieldStageTimes()
    if paths:  # warm-up: the first field pays for lazy imports and caches
        prepare_field(Path(paths[0]).name, read_rgb(paths[0]), segmenter, config)
    for path in paths:
        start = time.perf_counter()
        image = read_rgb(path, max_pixels=config.max_field_pixels, min_side_px=config.min_field_side_px)
        read = time.perf_counter()
        segmenter.segment(image)
        segmented = time.perf_counter()
        prepared = prepare_field(Path(path).name, image, segmenter, config)
        times.prepare_s += time.perf_counter() - segmented
        times.read_s += read - start
        times.segmentation_s += segmented - read
        times.fields += 1
        if isinstance(prepared, PreparedField):
            for kind, (_, crops) in prepared.crops.items():
                times.crops.extend((kind, crop) for crop in crops[: max(keep_crops - len(times.crops), 0)])
    return times


def _timed_calls(call: Callable[[], object], min_seconds: float, min_calls: int) -> tuple[int, float]:
    call()  # warm-up: first-call tracing and allocation
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_seconds:
        call()
        calls += 1
    return calls, time.perf_counter() - start


def classifier_ceiling(
    model, image_size: int, batch_size: int, *, min_seconds: float = 3.0, min_cells: int = 64, seed: int = 0
) -> float:
    """Cells per second of the network alone: ready float32 tensors, ``batch_size`` per call, inference mode.

    The network runs as the pipeline runs it (:func:`~smearflow.classifier.inference.run_network`),
    measured over at least ``min_seconds`` and ``min_cells`` (and two calls) after one call that
    compiles it.
    """
    from smearflow.classifier.inference import run_network

    batch = np.random.default_rng(seed).integers(0, 256, size=(batch_size, image_size, image_size, 3)).astype(np.float32)
    min_calls = max(2, -(-min_cells // batch_size))
    run_network(model, batch)
    calls, seconds = _timed_calls(lambda: run_network(model, batch), min_seconds, min_calls)
    return calls * batch_size / seconds


def naive_rate(model, crops: Sequence[np.ndarray], image_size: int) -> float:
    """Cells per second with one ``model.predict`` call per cell (the baseline batching is measured against).

    Raises
    ------
    ValueError
        When there is no crop to classify.
    """

    if not len(crops):
        raise ValueError("naive_rate needs at least one crop. Received: 0 crops")
    ready = [resize_rgb(crop, image_size)[None].astype(np.float32) for crop in crops]
    model.predict(ready[0], verbose=0)
    start = time.perf_counter()
    for x in ready:
        model.predict(x, verbose=0)
    return len(ready) / (time.perf_counter() - start)


def resident_mb() -> float:
    """This process's resident memory now (Linux ``/proc``), else its peak so far (``getrusage``)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class RssSampler:
    """The highest resident memory seen while the ``with`` block runs (sampled every 10 ms)."""

    def __init__(self):
        self.peak_mb = resident_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, resident_mb())

    def _run(self) -> None:
        while not self._stop.wait(_RSS_SAMPLE_S):
            self.peak_mb = max(self.peak_mb, resident_mb())


@dataclass(frozen=True)
class PipelineRun:
    """One timed pipeline run: a slide folder analysed and stored."""

    seconds: float
    store_seconds: float
    fields: int
    done_fields: int
    classified_cells: int
    wbc: int
    peak_rss_mb: float
    status: str


def pipeline_run(slide_folder: str | Path, analyzer, database_url: str) -> PipelineRun:
    """Analyse a slide folder and store its result (timed together), then time storing it once more.

    The database must be migrated already.
    """

    engine = make_engine(database_url)
    factory = session_factory(engine)
    try:
        with RssSampler() as memory:
            start = time.perf_counter()
            result = analyze_folder(slide_folder, analyzer, max_fields=max(2000, len(os.listdir(slide_folder))))
            with session_scope(factory) as session:
                store_result(session, result, analyzer.classifier)
            seconds = time.perf_counter() - start
        start = time.perf_counter()
        with session_scope(factory) as session:
            store_result(session, result, analyzer.classifier)
        store_seconds = time.perf_counter() - start
    finally:
        engine.dispose()
    done = [f for f in result.fields if f.status == "done"]
    return PipelineRun(
        seconds=seconds,
        store_seconds=store_seconds,
        fields=len(result.fields),
        done_fields=len(done),
        classified_cells=sum(1 for f in done for c in f.cells if c.classification is not None),
        wbc=sum(n for f in done for label, n in f.wbc_counts.items() if label != "platelet"),
        peak_rss_mb=memory.peak_mb,
        status=result.status,
    )


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def model_figures(
    model: ModelUnderTest,
    slide_folder: Path,
    stages: FieldStageTimes,
    config: PipelineConfig,
    database_url: str,
    *,
    min_seconds: float = 3.0,
    naive_cells: int = 32,
) -> dict:
    """Every figure of :data:`FIGURES` for one model, on fields whose stages were timed already.

    Meant to run in a process of its own (see :func:`measure_throughput`):
    ``peak_rss_mb`` is then this model's alone, as in a worker.
    """
    segmenter = make_segmenter(config.segmenter)
    classifier = model.load(config.inference_precision)
    size = classifier.image_size
    # warm-up: a worker classifies many slides with one loaded model; its first call is not a slide's cost
    crop_px = config.crop.crop_size_px
    forward = forward_batch_size(classifier, config)
    classifier.predict_proba(np.zeros((config.batch_size, crop_px, crop_px, 3), np.uint8), batch_size=forward)
    run = pipeline_run(slide_folder, Analyzer(segmenter, classifier, config), database_url)
    ceiling = classifier_ceiling(classifier.model, size, forward, min_seconds=min_seconds, min_cells=config.batch_size)
    half = with_precision(classifier.model, "bfloat16") if classifier.precision == "float32" else classifier.model
    ceiling_bfloat16 = classifier_ceiling(half, size, forward, min_seconds=min_seconds, min_cells=config.batch_size)
    del half
    crops = [crop for _, crop in stages.crops[:naive_cells]]
    naive = naive_rate(classifier.model, crops, size) if crops else None
    pipeline_rate = run.classified_cells / run.seconds if run.classified_cells else None
    n = max(stages.fields, 1)
    parts_s = stages.read_s + stages.prepare_s + run.store_seconds
    parts_s += run.classified_cells / ceiling if ceiling else 0.0
    wbc_per_field = run.wbc / run.done_fields if run.done_fields else 0.0
    ms_per_field = 1000 * run.seconds / max(run.fields, 1)
    return {
        "name": model.name,
        "architecture": classifier.folder.architecture,
        "image_size": size,
        "precision": classifier.precision,
        "forward_batch_size": forward,
        "read_ms_per_field": 1000 * stages.read_s / n,
        "segmentation_ms_per_field": 1000 * stages.segmentation_s / n,
        "prepare_ms_per_field": 1000 * stages.prepare_s / n,
        "classifier_cells_per_s": ceiling,
        "classifier_cells_per_s_bfloat16": ceiling_bfloat16,
        "pipeline_cells_per_s": pipeline_rate,
        "pipeline_ms_per_field": ms_per_field,
        "naive_cells_per_s": naive,
        "pipeline_efficiency": _ratio(pipeline_rate, ceiling),
        "overhead_ratio": _ratio(run.seconds, parts_s),
        "speedup_vs_naive": _ratio(pipeline_rate, naive),
        "peak_rss_mb": run.peak_rss_mb,
        "slides_per_hour": 3600 / (SLIDE_WBC / wbc_per_field * ms_per_field / 1000) if wbc_per_field else None,
        "store_ms_per_slide": 1000 * run.store_seconds,
        "fields": run.fields,
        "done_fields": run.done_fields,
        "classified_cells": run.classified_cells,
        "wbc_per_field": wbc_per_field,
        "slide_status": run.status,
    }


def measure_throughput(
    images: Sequence[Path],
    models: Sequence[ModelUnderTest],
    work_dir: str | Path,
    config: PipelineConfig = PipelineConfig(),
    *,
    min_seconds: float = 3.0,
    naive_cells: int = 32,
    isolate: bool = True,
    on_step: Callable[[str], None] | None = None,
) -> dict:
    """Measure every model on the same fields: the figures of :data:`FIGURES` and what they were measured on.

    Reading and segmentation are timed once, here; each model is then
    measured in a fresh process (``isolate``), so that its peak memory is its
    own, as in a worker that loads one model.

    Parameters
    ----------
    images : sequence of Path
        Field image files (a slide of them is copied into ``work_dir``).
    models : sequence of ModelUnderTest
    work_dir : str or Path
        An empty folder for the slide folders, built models and the SQLite database.
    config : PipelineConfig
        The pipeline's settings: its segmenter, batch sizes and precision.
    min_seconds : float
        Least time each classifier ceiling is measured over.
    naive_cells : int
        Cells the naive baseline classifies one by one.
    isolate : bool
        Measure each model in a process of its own (spawned); False measures
        them here, one after the other (their memory adds up).
    on_step : callable, optional
        Called with a short description of each step as it starts (progress).

    Returns
    -------
    dict
        ``machine``, ``fields``, ``batch_size``, ``prefetch_fields``,
        ``prepare_threads``, ``slide_wbc``, ``isolated`` and ``models``: one dict per model with every figure.

    Raises
    ------
    ValueError
        When there is no image or no model.
    """
    if not images or not models:
        raise ValueError(f"measure_throughput needs images and models. Received: {len(images)} images, {len(models)} models")
    step = on_step or (lambda text: None)
    work_dir = Path(work_dir)
    database_url = f"sqlite:///{work_dir / 'throughput.db'}"
    upgrade_database(database_url)
    step(f"timing read and segmentation of {len(images)} fields")
    stages = field_stage_times(images, make_segmenter(config.segmenter), config, keep_crops=naive_cells)
    figures = []
    for i, model in enumerate(models):
        slide = make_slide_folder(images, work_dir / f"bench-slide-{i}")
        step(f"measuring {model.name}")
        arguments = (model.write(work_dir), slide, stages, config, database_url)
        options = {"min_seconds": min_seconds, "naive_cells": naive_cells}
        if isolate:
            figures.append(_in_fresh_process(model_figures, *arguments, **options))
        else:
            figures.append(model_figures(*arguments, **options))
    return {
        "machine": machine_description(),
        "fields": len(images),
        "batch_size": config.batch_size,
        "prefetch_fields": config.prefetch_fields,
        "prepare_threads": config.prepare_threads,
        "slide_wbc": SLIDE_WBC,
        "isolated": isolate,
        "models": figures,
    }


def _in_fresh_process(function, *args, **kwargs):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the parent may hold TensorFlow's threads and a fork would copy its memory
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args, **kwargs).result()
