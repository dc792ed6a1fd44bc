"""Builders of small, hand-made slide results for the database tests."""

from __future__ import annotations

import numpy as np
import pytest

from smearflow.types import Cell, Classification, ClassifiedCell, FieldResult, SlideInfo, SlideResult


def _cell(kind, row, col, size=4, label=None, confidence=0.9, counted=True):
    mask = np.zeros((size, size), dtype=bool)
    mask[1:-1, 1:-1] = True
    cell = Cell(
        kind=kind,
        # numpy integers, as regionprops hands them over
        bbox=tuple(np.int64(v) for v in (row, col, row + size, col + size)),
        centroid=(np.float64(row + size / 2), np.float64(col + size / 2)),
        area_px=int(mask.sum()),
        mask=mask,
        touches_border=not counted,
        visible_fraction=1.0 if counted else 0.5,
        counted=counted,
    )
    classification = Classification(label=label, confidence=confidence) if label is not None else None
    return ClassifiedCell(cell=cell, classification=classification)


def _slide_info(slide_id="S-001", patient_id="P-01", collected_at="2024-03-01T09:30:00+01:00", folder=None):
    return SlideInfo(
        slide_id=slide_id,
        patient_id=patient_id,
        collected_at=collected_at,
        notes="hand-made",
        folder=folder or f"/inbox/{slide_id}",
        field_paths=(f"/inbox/{slide_id}/f1.png", f"/inbox/{slide_id}/f2.png"),
    )


def _slide_result(info=None, labels=("neutrophil", "lymphocyte", "neutrophil"), status="done",
                  failed_field=False, model_version=None, n_rbc=3):
    info = info or _slide_info()
    cells = [_cell("wbc", 10 * i, 10 * i, label=label) for i, label in enumerate(labels)]
    cells += [_cell("rbc", 50 + 5 * i, 5, counted=i > 0) for i in range(n_rbc)]
    cells.append(_cell("platelet", 90, 90, size=3))
    wbc_counts: dict[str, int] = {}
    for label in labels:
        wbc_counts[label] = wbc_counts.get(label, 0) + 1
    fields = [
        FieldResult(
            name="f1.png",
            status="done",
            cells=tuple(cells),
            width_px=128,
            height_px=96,
            wbc_counts=dict(wbc_counts),
            rbc_count=n_rbc - 1,
            platelet_count=1,
        )
    ]
    errors: tuple[str, ...] = ()
    if failed_field:
        fields.append(FieldResult(name="f2.png", status="failed", error="BadImageError: truncated"))
        errors = ("f2.png: BadImageError: truncated",)
    return SlideResult(
        info=info,
        status=status,
        fields=tuple(fields),
        counts=wbc_counts,
        rbc_count=n_rbc - 1,
        platelet_count=1,
        model_version=model_version,
        errors=errors,
    )


@pytest.fixture
def make_slide_info():
    """``make_slide_info(slide_id=..., patient_id=..., collected_at=..., folder=...)``."""
    return _slide_info


@pytest.fixture
def make_slide_result():
    """``make_slide_result(info=None, labels=(...), status="done", failed_field=False, ...)``."""
    return _slide_result
