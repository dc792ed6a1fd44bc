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
from smearflow.errors import BadSlideError
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
        from smearflow.segmentation import make_segmenter

        segmenter = make_segmenter(
            config.segmenter, rbc_diameter_px=rbc_diameter_px, model_dir=segmentation_model_dir
        )
        return cls(segmenter=segmenter, classifier=Classifier.load(model_dir), config=config)

    def analyze(self, info: SlideInfo, on_field: Callable[[FieldResult], None] | None = None) -> SlideResult:
        from smearflow.pipeline import analyze_slide

        return analyze_slide(info, self.segmenter, self.classifier, self.config, on_field=on_field)


def failed_slide_result(folder: str | Path, error: str, slide_id: str | None = None) -> SlideResult:
    """A :class:`SlideResult` for a slide that could not be analysed at all."""
    folder = Path(folder)
    info = SlideInfo(
        slide_id=slide_id or folder.name or str(folder),
        patient_id=None,
        collected_at=None,
        notes=None,
        folder=str(folder.absolute()),
        field_paths=(),
    )
    return SlideResult(
        info=info, status="failed", fields=(), counts={}, rbc_count=0, platelet_count=0, model_version=None, errors=(error,)
    )


def analyze_folder(
    folder: str | Path,
    analyzer: Analyzer,
    on_field: Callable[[FieldResult], None] | None = None,
    slide_id: str | None = None,
) -> SlideResult:
    """Read a slide folder and analyse it; a bad folder becomes a failed result, not an exception."""
    from smearflow.slides import read_slide_folder

    try:
        info = read_slide_folder(folder)
    except BadSlideError as error:
        logger.warning("%s", error)
        return failed_slide_result(folder, str(error), slide_id)
    if slide_id is not None and slide_id != info.slide_id:
        info = dataclasses.replace(info, slide_id=slide_id)
    return analyzer.analyze(info, on_field=on_field)


def store_result(session, result: SlideResult, classifier=None) -> None:
    """Write one slide's result in the caller's transaction.

    A slide that failed as a whole keeps whatever results were stored for it
    before; only its status and error change.
    """
    from smearflow.db import repository

    if result.status == "failed" and not result.fields:
        repository.record_slide_failure(session, result.info, "; ".join(result.errors))
        return
    model_version = None
    if classifier is not None:
        folder = classifier.folder
        model_version = repository.get_or_create_model_version(
            session,
            name=classifier.version,
            architecture=folder.architecture,
            path=str(folder.path),
            metrics={k: v for k, v in folder.metrics.items() if isinstance(v, (int, float, str))},
        )
    repository.store_slide_result(session, result, model_version)

