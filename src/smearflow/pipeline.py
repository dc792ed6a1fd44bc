"""Analyse one slide: segment → crop → classify → count.

No database, no Celery: the CLI and the worker both call
:func:`analyze_slide` and store its :class:`SlideResult` themselves.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from smearflow.config import PipelineConfig
from smearflow.errors import BadImageError
from smearflow.types import ClassifiedCell, FieldResult, SlideInfo, SlideResult

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
    """Segment one field, classify its white cells (and platelets) and count.

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

    segmentation = segmenter.segment(image)
    cells = list(segmentation.cells)
    chosen = cells_to_classify(cells, config)
    side_px = crop_side_px(segmentation.rbc_diameter_px, config.crop.crop_side_rbc_diameters)
    labels = {}
    for kind, exclude in (("wbc", _ruled_out_for_wbc(classifier, config)), ("platelet", ())):
        indices = [i for i in chosen if cells[i].kind == kind]
        if indices:
            crops = crop_cells(image, [cells[i] for i in indices], side_px, config.crop.crop_size_px)
            labels.update(zip(indices, classifier.classify(crops, batch_size=config.batch_size, exclude=exclude)))
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
    )


def _ruled_out_for_wbc(classifier, config: PipelineConfig) -> tuple[str, ...]:
    if config.wbc_never_platelet and "platelet" in getattr(classifier, "classes", ()):
        return ("platelet",)
    return ()


def failed_field(name: str, error: str) -> FieldResult:
    return FieldResult(name=name, status="failed", error=error)


def analyze_slide(
    info: SlideInfo,
    segmenter,
    classifier,
    config: PipelineConfig = PipelineConfig(),
    *,
    read_image: Callable[[str], np.ndarray] | None = None,
    on_field: Callable[[FieldResult], None] | None = None,
) -> SlideResult:
    """Analyse every field of a slide and total the differential.

    A field that cannot be read (:class:`BadImageError`) is recorded as
    ``failed`` with its error and the other fields go on. The slide is
    ``done`` when at least one field was analysed, ``failed`` otherwise; its
    ``errors`` list every field error either way.

    Parameters
    ----------
    info : SlideInfo
        From :func:`smearflow.slides.read_slide_folder`.
    segmenter, classifier
        See :func:`analyze_field`.
    config : PipelineConfig
    read_image : callable, optional
        ``path -> RGB uint8 image``; defaults to :func:`smearflow.imageio.read_rgb`.
    on_field : callable, optional
        Called with each :class:`FieldResult` as it completes (progress bars).
    """
    if read_image is None:
        from smearflow.imageio import read_rgb as read_image
    fields = []
    for path in info.field_paths:
        name = Path(path).name
        try:
            result = analyze_field(name, read_image(path), segmenter, classifier, config)
        except BadImageError as error:
            logger.warning("slide %s: %s", info.slide_id, error)
            result = failed_field(name, str(error))
        fields.append(result)
        if on_field is not None:
            on_field(result)
    return summarize_slide(info, fields, getattr(classifier, "version", None))


def summarize_slide(info: SlideInfo, fields: list[FieldResult], model_version: str | None) -> SlideResult:
    """Total per-field results into one :class:`SlideResult`."""
    done = [f for f in fields if f.status == "done"]
    counts: Counter[str] = Counter()
    for field in done:
        counts.update(field.wbc_counts)
    unclassified = sum(
        1 for f in done for c in f.cells if c.cell.kind == "wbc" and c.cell.counted and c.classification is None
    )
    errors = tuple(f.error for f in fields if f.error)
    if not done and not errors:
        errors = (f"{info.folder}: slide has no field to analyse",)
    return SlideResult(
        info=info,
        status="done" if done else "failed",
        fields=tuple(fields),
        counts=dict(sorted(counts.items())),
        rbc_count=sum(f.rbc_count for f in done),
        platelet_count=sum(f.platelet_count for f in done),
        model_version=model_version,
        errors=errors,
        unclassified_wbc=unclassified,
    )
