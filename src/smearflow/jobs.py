"""Analyse a slide folder and store the outcome: the unit of work shared by
``smearflow analyze`` and the Celery worker.

The database session lifecycle lives here, outside the pipeline and the
repository functions: one transaction per slide, so a re-analysis replaces the
previous results atomically and a failure never deletes what was stored.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from smearflow.config import PipelineConfig
from smearflow.segmentation import make_segmenter
from smearflow.slides import DEFAULT_MAX_FIELDS
from smearflow.types import FieldResult, SlideInfo, SlideResult

logger = logging.getLogger(__name__)


@dataclass
class Analyzer:
    """A segmenter and a classifier loaded once and reused for many slides."""

    segmenter: object
    classifier: object
    config: PipelineConfig = PipelineConfig()

    @classmethod
    def load(
        cls,
        model_dir: str | Path | None = None,
        config: PipelineConfig = PipelineConfig(),
        *,
        segmentation_model_dir: str | Path | None = None,
        rbc_diameter_px: float | None = None,
    ) -> "Analyzer":
        """Load the classifier (packaged default when ``model_dir`` is None) and the segmenter."""
        from smearflow.classifier.classifier import Classifier

        segmenter = make_segmenter(
            config.segmenter, rbc_diameter_px=rbc_diameter_px, model_dir=segmentation_model_dir
        )
        classifier = Classifier.load(model_dir, precision=config.inference_precision)
        return cls(segmenter=segmenter, classifier=classifier, config=config)

    def analyze(
        self,
        info: SlideInfo,
        on_field: Callable[[FieldResult], None] | None = None,
        propagate: tuple[type[BaseException], ...] = (),
    ) -> SlideResult:
        from smearflow.pipeline import analyze_slide

        return analyze_slide(
            info, self.segmenter, self.classifier, self.config, on_field=on_field, propagate=propagate
        )


def analyze_folder(
    folder: str | Path,
    analyzer: Analyzer,
    on_field: Callable[[FieldResult], None] | None = None,
    slide_id: str | None = None,
    *,
    max_fields: int = DEFAULT_MAX_FIELDS,
    propagate: tuple[type[BaseException], ...] = (),
    on_start: Callable[[SlideInfo], None] | None = None,
) -> SlideResult:
    """Read a slide folder and analyse it.

    Parameters
    ----------
    folder : str or Path
    analyzer : Analyzer
    on_field : callable, optional
        Called with each field's result as it completes.
    slide_id : str, optional
        The id the slide is registered under (the worker's); replaces the folder's own.
    max_fields : int
        A folder with more field images is refused.
    propagate : tuple of exception types
        Errors that end the slide instead of one field (a task's time limit).
    on_start : callable, optional
        Called with the slide's :class:`SlideInfo` before its first field (a progress bar's total).

    Raises
    ------
    smearflow.errors.BadSlideError
        When the folder cannot be read as a slide (see
        :func:`smearflow.slides.read_slide_folder`); no field was analysed.
    """
    from smearflow.slides import read_slide_folder

    info = read_slide_folder(folder, max_fields=max_fields)
    if slide_id is not None and slide_id != info.slide_id:
        info = dataclasses.replace(info, slide_id=slide_id)
    if on_start is not None:
        on_start(info)
    return analyzer.analyze(info, on_field=on_field, propagate=propagate)


def store_result(session, result: SlideResult, classifier=None, *, reassign: bool = False, actor: str | None = None) -> None:
    """Write one slide's result in the caller's transaction.

    A failed result never changes a stored slide's metadata or results (see
    :func:`smearflow.db.repository.store_slide_result`).

    Raises
    ------
    smearflow.errors.SlideConflictError
        When the slide is stored for another patient and ``reassign`` is false.
    """
    from smearflow.db import repository

    model_version = None
    if classifier is not None and result.status != "failed":
        folder = classifier.folder
        model_version = repository.get_or_create_model_version(
            session,
            name=classifier.version,
            architecture=folder.architecture,
            path=str(folder.path),
            metrics={k: v for k, v in folder.metrics.items() if isinstance(v, (int, float, str))},
        )
    repository.store_slide_result(session, result, model_version, reassign=reassign, actor=actor)
