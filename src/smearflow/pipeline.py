"""Analyse one slide: segment → crop → classify → count.

No database, no Celery: the CLI and the worker both call
:func:`analyze_slide` and store its :class:`SlideResult` themselves.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from smearflow.config import PipelineConfig
from smearflow.errors import BadImageError
from smearflow.quality import assess_field
from smearflow.types import Classification, ClassifiedCell, FieldResult, SlideInfo, SlideResult

logger = logging.getLogger(__name__)


def cells_to_classify(cells, config: PipelineConfig) -> list[int]:
    """Indices of the cells the classifier sees: counted, visible enough, of a classified kind."""
    kinds = {"wbc", "platelet"} if config.classify_platelets else {"wbc"}
    return [
        i
        for i, cell in enumerate(cells)
        if cell.kind in kinds and cell.counted and cell.visible_fraction >= config.min_visible_fraction
    ]


@dataclass(frozen=True)
class PreparedField:
    """A field checked, segmented and cropped, waiting for its crops' classes.

    It holds no image: only the cells, the crops the classifier must see and
    what the result needs from the field, so that a queue of prepared fields
    stays small whatever the field size.

    Attributes
    ----------
    name : str
    cells : tuple of Cell
        Every segmented cell, in the segmenter's order.
    crops : dict of str to (list of int, ndarray of shape (n, S, S, 3), uint8)
        Per kind (``wbc``, ``platelet``): the indices into ``cells`` of the
        cells to classify and their crops, in that order.
    height_px, width_px : int
    quality : dict of str to float
        The quality gate's measures (empty when it is off).
    """

    name: str
    cells: tuple
    crops: dict
    height_px: int
    width_px: int
    quality: dict

    @property
    def n_crops(self) -> int:
        return sum(len(indices) for indices, _ in self.crops.values())


CLASSIFIED_KINDS = ("wbc", "platelet")
"""The kinds of cell the classifier may see, in the order their crops are classified."""


def prepare_field(name: str, image: np.ndarray, segmenter, config: PipelineConfig) -> PreparedField | FieldResult:
    """Check one field's quality, segment it and crop the cells to classify.

    Returns
    -------
    PreparedField, or FieldResult
        The field's ``flagged`` result when the quality gate rejects it
        (:func:`smearflow.quality.assess_field`: before segmentation, then for
        too few red cells): nothing in it counts.
    """
    from smearflow.segmentation.crops import crop_cells, crop_side_px

    quality = assess_field(image, config.quality) if config.check_quality else None
    if quality is not None and not quality.usable:
        return flagged_field(name, image, quality)
    segmentation = segmenter.segment(image)
    if quality is not None and segmentation.count("rbc") < config.quality.min_rbc_count:
        return flagged_field(name, image, assess_field(image, config.quality, rbc_count=segmentation.count("rbc")))
    cells = tuple(segmentation.cells)
    chosen = cells_to_classify(cells, config)
    side_px = crop_side_px(segmentation.rbc_diameter_px, config.crop.crop_side_rbc_diameters)
    # one crop_cells call per field: it measures the field's background colour each time
    all_crops = crop_cells(image, [cells[i] for i in chosen], side_px, config.crop.crop_size_px)
    crops = {}
    for kind in CLASSIFIED_KINDS:
        rows = [row for row, i in enumerate(chosen) if cells[i].kind == kind]
        if rows:
            crops[kind] = ([chosen[row] for row in rows], all_crops[rows])
    return PreparedField(
        name=name,
        cells=cells,
        crops=crops,
        height_px=int(image.shape[0]),
        width_px=int(image.shape[1]),
        quality=dict(quality.measures) if quality is not None else {},
    )


def finish_field(field: PreparedField, labels: dict[int, Classification]) -> FieldResult:
    """The field's result once its crops are classified (``labels``: cell index → judged classification)."""
    classified = tuple(ClassifiedCell(cell, labels.get(i)) for i, cell in enumerate(field.cells))
    wbc_counts = Counter(
        c.classification.label for c in classified if c.cell.kind == "wbc" and c.classification is not None
    )
    return FieldResult(
        name=field.name,
        status="done",
        cells=classified,
        height_px=field.height_px,
        width_px=field.width_px,
        wbc_counts=dict(wbc_counts),
        rbc_count=sum(1 for c in field.cells if c.kind == "rbc" and c.counted),
        platelet_count=sum(1 for c in field.cells if c.kind == "platelet" and c.counted),
        quality=field.quality,
    )


def forward_batch_size(classifier, config: PipelineConfig) -> int:
    """Crops per forward pass of the network: ``config.batch_size``, fewer for a large input (``max_batch_pixels``).

    A classifier without ``image_size`` (a stand-in) gets ``config.batch_size``.
    """
    side_px = getattr(classifier, "image_size", None)
    if not side_px:
        return config.batch_size
    return max(1, min(config.batch_size, config.max_batch_pixels // (side_px * side_px)))


def classify_kind(kind: str, crops: np.ndarray, classifier, config: PipelineConfig) -> list[Classification]:
    """Classify crops of one kind of cell and judge the answers (see :func:`judge`)."""
    exclude = _ruled_out_for_wbc(classifier, config) if kind == "wbc" else ()
    answers = classifier.classify(crops, batch_size=forward_batch_size(classifier, config), exclude=exclude)
    return judge(kind, answers, classifier, config)


def analyze_field(name: str, image: np.ndarray, segmenter, classifier, config: PipelineConfig) -> FieldResult:
    """Check one field's quality, segment it, classify its white cells (and platelets) and count.

    A field the quality gate rejects (:func:`smearflow.quality.assess_field`:
    before segmentation, then for too few red cells) is returned ``flagged``
    with its reasons, and nothing in it counts. A slide's fields go through
    :func:`analyze_slide` instead, which classifies crops of many fields together.

    Parameters
    ----------
    name : str
        The field's name (its file name), used in results and errors.
    image : ndarray of shape (M, N, 3), uint8
        The RGB field.
    segmenter : Segmenter
        Anything with ``segment(image) -> Segmentation``.
    classifier : Classifier
        Anything with ``classify(crops, batch_size, exclude) -> list[Classification]``.
    config : PipelineConfig
    """
    field = prepare_field(name, image, segmenter, config)
    if isinstance(field, FieldResult):
        return field
    labels = {}
    for kind, (indices, crops) in field.crops.items():
        labels.update(zip(indices, classify_kind(kind, crops, classifier, config)))
    return finish_field(field, labels)


TOP_CLASSES = 3
"""Most probable classes kept with each classified cell."""

PLATELET, ARTEFACT = "platelet", "artefact"


def judge(kind: str, answers, classifier, config: PipelineConfig) -> list[Classification]:
    """The classifier's answers as the cells' classifications: top classes, uncertainty, platelet decision.

    A white cell keeps its class. A platelet candidate becomes ``platelet``
    when the classifier's most probable class is ``platelet`` (or the model
    has no such class) and ``artefact`` otherwise: never a white-cell class.
    Either is ``uncertain`` when its confidence is below the threshold
    (``config.confidence_threshold``, else the model folder's).
    """
    classes = tuple(getattr(classifier, "classes", ()))
    threshold = config.confidence_threshold
    if threshold is None:
        threshold = getattr(classifier, "confidence_threshold", 0.0)
    judged = []
    for answer in answers:
        top = _top_classes(answer, classes)
        label, confidence = answer.label, answer.confidence
        if kind == "platelet" and PLATELET in classes:
            p_platelet = answer.probabilities[classes.index(PLATELET)] if answer.probabilities else float(label == PLATELET)
            label = PLATELET if answer.label == PLATELET else ARTEFACT
            confidence = p_platelet if label == PLATELET else 1.0 - p_platelet
        elif kind == "platelet":
            label = PLATELET
        judged.append(replace(answer, label=label, confidence=confidence, top_classes=top, uncertain=confidence < threshold))
    return judged


def _top_classes(answer, classes: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    if not answer.probabilities or len(answer.probabilities) != len(classes):
        return ((answer.label, float(answer.confidence)),)
    order = np.argsort(answer.probabilities)[::-1][:TOP_CLASSES]
    return tuple((classes[i], float(answer.probabilities[i])) for i in order)


def _ruled_out_for_wbc(classifier, config: PipelineConfig) -> tuple[str, ...]:
    if config.wbc_never_platelet and "platelet" in getattr(classifier, "classes", ()):
        return ("platelet",)
    return ()


def failed_field(name: str, error: str) -> FieldResult:
    return FieldResult(name=name, status="failed", error=error)


def flagged_field(name: str, image: np.ndarray, quality) -> FieldResult:
    """A field the quality gate left out of the counts, with its reasons and measures."""
    return FieldResult(
        name=name,
        status="flagged",
        error=f"{name}: not counted: {'; '.join(quality.reasons)}",
        height_px=int(image.shape[0]),
        width_px=int(image.shape[1]),
        quality=dict(quality.measures),
    )


def prepare_path(
    path: str,
    segmenter,
    config: PipelineConfig,
    read_image: Callable[[str], np.ndarray],
    propagate: tuple[type[BaseException], ...] = (),
) -> PreparedField | FieldResult:
    """Read and prepare one field file (:func:`prepare_field`); whatever goes wrong becomes its ``failed`` result.

    Parameters
    ----------
    path : str
    segmenter, config
        See :func:`analyze_field`.
    read_image : callable
        ``path -> RGB uint8 image``.
    propagate : tuple of exception types
        Errors that must end the whole slide instead (a time limit).
    """
    from smearflow.imageio import display_name

    name = display_name(Path(path).name)
    try:
        image = read_image(path)
    except propagate:
        raise
    except BadImageError as error:
        return failed_field(name, str(error))
    except Exception as error:  # noqa: BLE001 - one field never stops a slide
        return failed_field(name, f"{name}: could not be read ({type(error).__name__}: {error})")
    try:
        return prepare_field(name, image, segmenter, config)
    except propagate:
        raise
    except Exception as error:  # noqa: BLE001 - one field never stops a slide
        logger.exception("field %s could not be analysed", name)
        return failed_field(name, _analysis_error(name, error))


def _analysis_error(name: str, error: BaseException) -> str:
    return f"{name}: could not be analysed ({type(error).__name__}: {error})"


@dataclass
class _Waiting:
    field: PreparedField
    labels: dict
    missing: int


class CropBatches:
    """Crops of many fields, classified ``config.batch_size`` at a time, kind by kind.

    A field's result is handed to ``on_done`` once every one of its crops has
    its class, so at most about ``batch_size`` crops of each kind wait here.
    A batch the classifier fails on is classified again field by field: the
    field whose crops fail alone is ``failed``, the others go on.

    Parameters
    ----------
    classifier : Classifier
        Anything with ``classify(crops, batch_size, exclude) -> list[Classification]``.
    config : PipelineConfig
    on_done : callable
        ``(index, FieldResult) -> None``.
    propagate : tuple of exception types
        Errors that end the slide instead of one field.
    """

    def __init__(self, classifier, config: PipelineConfig, on_done, propagate: tuple[type[BaseException], ...] = ()):
        self.classifier = classifier
        self.config = config
        self.on_done = on_done
        self.propagate = propagate
        self._waiting: dict[int, _Waiting] = {}
        self._queues: dict[str, deque] = {kind: deque() for kind in CLASSIFIED_KINDS}

    @property
    def waiting_crops(self) -> int:
        """Crops added and not yet classified."""
        return sum(len(q) for q in self._queues.values())

    def add(self, index: int, field: PreparedField) -> None:
        """Queue a prepared field's crops; classify every full batch."""
        if field.n_crops == 0:
            self.on_done(index, finish_field(field, {}))
            return
        self._waiting[index] = _Waiting(field, {}, field.n_crops)
        for kind, (indices, crops) in field.crops.items():
            self._queues[kind].extend((index, i, crop) for i, crop in zip(indices, crops))
        for kind in CLASSIFIED_KINDS:
            while len(self._queues[kind]) >= self.config.batch_size:
                self._classify(kind, [self._queues[kind].popleft() for _ in range(self.config.batch_size)])

    def flush(self) -> None:
        """Classify whatever waits, in batches of at most ``batch_size``."""
        for kind in CLASSIFIED_KINDS:
            waiting = self._queues[kind]
            while waiting:
                self._classify(kind, [waiting.popleft() for _ in range(min(self.config.batch_size, len(waiting)))])

    def _classify(self, kind: str, entries: list) -> None:
        entries = [entry for entry in entries if entry[0] in self._waiting]  # a failed field's crops are dropped
        if not entries:
            return
        try:
            judged = classify_kind(kind, np.stack([crop for _, _, crop in entries]), self.classifier, self.config)
            if len(judged) != len(entries):
                raise RuntimeError(f"the classifier answered {len(judged)} times for {len(entries)} crops")
        except self.propagate:
            raise
        except Exception as error:  # noqa: BLE001 - one field never stops a slide
            fields = list(dict.fromkeys(index for index, _, _ in entries))
            if len(fields) == 1:
                self._fail(fields[0], error)
            else:  # find the field that fails alone
                for index in fields:
                    self._classify(kind, [entry for entry in entries if entry[0] == index])
            return
        for (index, cell_index, _), classification in zip(entries, judged):
            waiting = self._waiting[index]
            waiting.labels[cell_index] = classification
            waiting.missing -= 1
            if waiting.missing == 0:
                del self._waiting[index]
                self.on_done(index, finish_field(waiting.field, waiting.labels))

    def _fail(self, index: int, error: BaseException) -> None:
        name = self._waiting.pop(index).field.name
        logger.error("field %s could not be classified: %s: %s", name, type(error).__name__, error)
        self.on_done(index, failed_field(name, _analysis_error(name, error)))


def analyze_slide(
    info: SlideInfo,
    segmenter,
    classifier,
    config: PipelineConfig = PipelineConfig(),
    *,
    read_image: Callable[[str], np.ndarray] | None = None,
    on_field: Callable[[FieldResult], None] | None = None,
    propagate: tuple[type[BaseException], ...] = (),
) -> SlideResult:
    """Analyse every field of a slide and total the differential.

    Fields are read, checked and segmented in background threads
    (``config.prepare_threads``), at most ``config.prefetch_fields`` ahead,
    while the classifier works on crops gathered from many fields
    (``config.batch_size`` per call): the model is
    kept busy and neither the slide's images nor its crops are ever all in
    memory. The classes are the same as classifying each field alone.

    Any error while reading, checking, segmenting or classifying one field
    makes that field ``failed`` with the file name and the reason; a field
    the quality gate rejects is ``flagged``; the other fields go on. The
    slide is ``done`` when every field counted, ``partial`` when some did,
    ``failed`` when none did; its ``errors`` list every field's problem.

    Parameters
    ----------
    info : SlideInfo
        From :func:`smearflow.slides.read_slide_folder`.
    segmenter, classifier
        See :func:`analyze_field`. The segmenter runs in the background
        threads, the classifier in the caller's.
    config : PipelineConfig
    read_image : callable, optional
        ``path -> RGB uint8 image``; defaults to :func:`smearflow.imageio.read_rgb`
        with the limits of ``config``. Called in the background threads.
    on_field : callable, optional
        Called in the caller's thread with each :class:`FieldResult` as it
        completes (progress bars); fields may complete out of order.
    propagate : tuple of exception types
        Errors that end the slide instead of one field (a task's time limit).
    """
    from smearflow.prefetch import Prefetcher

    if read_image is None:
        read_image = _image_reader(config)
    fields: list[FieldResult | None] = [None] * len(info.field_paths)

    def done(index: int, result: FieldResult) -> None:
        if result.error:
            logger.warning("slide %s: %s", info.slide_id, result.error)
        fields[index] = result
        if on_field is not None:
            on_field(result)

    def prepare(item: tuple[int, str]) -> tuple[int, PreparedField | FieldResult]:
        index, path = item
        return index, prepare_path(path, segmenter, config, read_image, propagate)

    batches = CropBatches(classifier, config, done, propagate)
    fields_ahead = Prefetcher(
        enumerate(info.field_paths), prepare, depth=config.prefetch_fields, threads=config.prepare_threads
    )
    with fields_ahead as prepared:
        for index, field in prepared:
            if isinstance(field, FieldResult):
                done(index, field)
            else:
                batches.add(index, field)
            del field
    batches.flush()
    return summarize_slide(info, fields, getattr(classifier, "version", None))


def _image_reader(config: PipelineConfig) -> Callable[[str], np.ndarray]:
    from functools import partial

    from smearflow.imageio import read_rgb

    return partial(read_rgb, max_pixels=config.max_field_pixels, min_side_px=config.min_field_side_px)


def summarize_slide(info: SlideInfo, fields: list[FieldResult], model_version: str | None) -> SlideResult:
    """Total per-field results into one :class:`SlideResult`."""
    done = [f for f in fields if f.status == "done"]
    counts: Counter[str] = Counter()
    for field in done:
        counts.update(field.wbc_counts)
    unclassified = sum(
        1 for f in done for c in f.cells if c.cell.kind == "wbc" and c.cell.counted and c.classification is None
    )
    uncertain = sum(
        1 for f in done for c in f.cells if c.cell.kind == "wbc" and c.classification is not None and c.classification.uncertain
    )
    errors = tuple(f.error for f in fields if f.error)
    if not done and not errors:
        errors = (f"{info.folder}: slide has no field to analyse",)
    return SlideResult(
        info=info,
        status=slide_status(len(done), len(fields)),
        fields=tuple(fields),
        counts=dict(sorted(counts.items())),
        rbc_count=sum(f.rbc_count for f in done),
        platelet_count=sum(f.platelet_count for f in done),
        model_version=model_version,
        errors=errors,
        unclassified_wbc=unclassified,
        uncertain_wbc=uncertain,
    )


def slide_status(n_counted: int, n_fields: int) -> str:
    """``done`` when every field counted, ``partial`` when some did, ``failed`` when none did."""
    if n_counted == 0:
        return "failed"
    return "done" if n_counted == n_fields else "partial"
