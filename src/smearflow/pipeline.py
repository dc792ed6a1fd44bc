"""Analyse one slide: segment → crop → classify → count.

No database, no Celery: the CLI and the worker both call
:func:`analyze_slide` and store its :class:`SlideResult` themselves.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
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


def analyze_field(name: str, image: np.ndarray, segmenter, classifier, config: PipelineConfig) -> FieldResult:
    """Check one field's quality, segment it, classify its white cells (and platelets) and count.

    A field the quality gate rejects (:func:`smearflow.quality.assess_field`:
    before segmentation, then for too few red cells) is returned ``flagged``
    with its reasons, and nothing in it counts.

    Parameters
    ----------
    name : str
        The field's name (its file name), used in results and errors.
    image : ndarray of shape (M, N, 3), uint8
        The RGB field.
    segmenter : Segmenter
        Anything with ``segment(image) -> Segmentation``.
    classifier : Classifier
        Anything with ``classify(crops, batch_size) -> list[Classification]``.
    config : PipelineConfig
    """
    from smearflow.segmentation.crops import crop_cells, crop_side_px

    quality = assess_field(image, config.quality) if config.check_quality else None
    if quality is not None and not quality.usable:
        return flagged_field(name, image, quality)
    segmentation = segmenter.segment(image)
    if quality is not None and segmentation.count("rbc") < config.quality.min_rbc_count:
        return flagged_field(name, image, assess_field(image, config.quality, rbc_count=segmentation.count("rbc")))
    cells = list(segmentation.cells)
    chosen = cells_to_classify(cells, config)
    side_px = crop_side_px(segmentation.rbc_diameter_px, config.crop.crop_side_rbc_diameters)
    labels = {}
    for kind, exclude in (("wbc", _ruled_out_for_wbc(classifier, config)), ("platelet", ())):
        indices = [i for i in chosen if cells[i].kind == kind]
        if indices:
            crops = crop_cells(image, [cells[i] for i in indices], side_px, config.crop.crop_size_px)
            answers = classifier.classify(crops, batch_size=config.batch_size, exclude=exclude)
            labels.update(zip(indices, judge(kind, answers, classifier, config)))
    classified = tuple(ClassifiedCell(cell, labels.get(i)) for i, cell in enumerate(cells))
    wbc_counts = Counter(
        c.classification.label for c in classified if c.cell.kind == "wbc" and c.classification is not None
    )
    return FieldResult(
        name=name,
        status="done",
        cells=classified,
        height_px=int(image.shape[0]),
        width_px=int(image.shape[1]),
        wbc_counts=dict(wbc_counts),
        rbc_count=sum(1 for c in cells if c.kind == "rbc" and c.counted),
        platelet_count=sum(1 for c in cells if c.kind == "platelet" and c.counted),
        quality=dict(quality.measures) if quality is not None else {},
    )


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


def analyze_path(
    path: str,
    segmenter,
    classifier,
    config: PipelineConfig,
    read_image: Callable[[str], np.ndarray],
    propagate: tuple[type[BaseException], ...] = (),
) -> FieldResult:
    """Read and analyse one field file; whatever goes wrong becomes that field's ``failed`` result.

    Parameters
    ----------
    path : str
    segmenter, classifier, config
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
        return analyze_field(name, image, segmenter, classifier, config)
    except propagate:
        raise
    except Exception as error:  # noqa: BLE001 - one field never stops a slide
        logger.exception("field %s could not be analysed", name)
        return failed_field(name, f"{name}: could not be analysed ({type(error).__name__}: {error})")


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
        See :func:`analyze_field`.
    config : PipelineConfig
    read_image : callable, optional
        ``path -> RGB uint8 image``; defaults to :func:`smearflow.imageio.read_rgb`
        with the limits of ``config``.
    on_field : callable, optional
        Called with each :class:`FieldResult` as it completes (progress bars).
    propagate : tuple of exception types
        Errors that end the slide instead of one field (a task's time limit).
    """
    if read_image is None:
        read_image = _image_reader(config)
    fields = []
    for path in info.field_paths:
        result = analyze_path(path, segmenter, classifier, config, read_image, propagate)
        if result.error:
            logger.warning("slide %s: %s", info.slide_id, result.error)
        fields.append(result)
        if on_field is not None:
            on_field(result)
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
