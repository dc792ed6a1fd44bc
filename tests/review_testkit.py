"""Slides stored with real field images, for the report, the review station and the review tests (imported by module name).

``store_review_slide`` writes a slide folder of synthetic fields and stores an
analysis of it as the pipeline would (``summarize_slide``, then the
repository), with white cells given the labels and confidences asked for: no
model is loaded.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from smearflow.types import Cell, Classification, ClassifiedCell, FieldResult, SlideInfo


@functools.lru_cache(maxsize=32)
def _smear(seed: int, n_wbc: int):
    from smearflow.synthetic import make_smear

    return make_smear(seed, n_wbc=n_wbc, n_rbc=30)


def _cell(kind, row, col, radius, counted=True):
    r = int(round(radius))
    return Cell(
        kind=kind,
        bbox=(int(row) - r, int(col) - r, int(row) + r, int(col) + r),
        centroid=(float(row), float(col)),
        area_px=int(round(np.pi * radius * radius)),
        mask=np.ones((1, 1), bool),
        counted=counted,
    )


def store_review_slide(
    session_factory,
    root: Path,
    slide_id: str = "S-R1",
    patient_id: str | None = "P-R",
    fields=((("neutrophil", 0.95), ("lymphocyte", 0.4), ("neutrophil", 0.8)), (("monocyte", 0.6), ("neutrophil", 0.3))),
    *,
    collected_at: str | None = "2026-11-20T08:00:00+00:00",
    notes: str | None = "EDTA",
    failed_field: bool = False,
    flagged_field: bool = False,
    unclassified: int = 0,
    seed: int = 0,
    model_name: str = "cnn-test0001",
):
    """Write ``root/slide_id`` (one PNG per entry of ``fields``) and store its analysis; returns the SlideResult.

    ``fields`` holds, per field, the ``(label, confidence)`` of its white cells. The first white cells sit
    on the field's drawn white cells, the others on a grid (their crops show red cells).
    """
    from smearflow.db import repository
    from smearflow.db.engine import session_scope
    from smearflow.imageio import write_rgb
    from smearflow.pipeline import summarize_slide
    folder = root / slide_id
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    paths = []
    for index, labels in enumerate(fields):
        name = f"field_{index + 1:02d}.png"
        smear = _smear(seed * 100 + index, min(3, max(1, len(labels))))
        write_rgb(folder / name, smear.image)
        paths.append(str(folder / name))
        drawn = list(smear.of_kind("wbc"))
        cells = []
        for k, (label, confidence) in enumerate(labels):
            if k < len(drawn):
                row, col = drawn[k].centroid
                radius = drawn[k].radius_px
            else:
                row, col, radius = 40 + 30 * (k // 18), 20 + 33 * (k % 18), 12.0
            # As the pipeline marks them (its threshold here 0.5): a cell below it is uncertain.
            answer = Classification(label, confidence, uncertain=confidence < 0.5)
            cells.append(ClassifiedCell(_cell("wbc", row, col, radius), answer))
        for k in range(unclassified):
            cells.append(ClassifiedCell(_cell("wbc", 5, 5 + 20 * k, 8), None))
        for truth in smear.of_kind("rbc"):
            cells.append(ClassifiedCell(_cell("rbc", *truth.centroid, truth.radius_px, truth.counted), None))
        for truth in smear.of_kind("platelet"):
            cells.append(ClassifiedCell(_cell("platelet", *truth.centroid, truth.radius_px), Classification("platelet", 0.9)))
        wbc_counts: dict[str, int] = {}
        for label, _ in labels:
            wbc_counts[label] = wbc_counts.get(label, 0) + 1
        results.append(
            FieldResult(
                name=name,
                status="done",
                cells=tuple(cells),
                width_px=smear.image.shape[1],
                height_px=smear.image.shape[0],
                wbc_counts=wbc_counts,
                rbc_count=smear.count("rbc"),
                platelet_count=smear.count("platelet"),
            )
        )
    if failed_field:
        results.append(FieldResult(name="broken.png", status="failed", error="broken.png: unreadable or truncated image"))
    if flagged_field:
        results.append(FieldResult(name="blank.png", status="flagged", error="blank.png: not counted: blank field"))
    (folder / "slide.json").write_text(json.dumps({"slide_id": slide_id}), encoding="utf-8")
    info = SlideInfo(slide_id=slide_id, patient_id=patient_id, collected_at=collected_at, notes=notes,
                     folder=str(folder), field_paths=tuple(paths))
    result = summarize_slide(info, results, model_name)
    with session_scope(session_factory) as session:
        version = repository.get_or_create_model_version(session, model_name, "cnn", None, {})
        repository.store_slide_result(session, result, version)
    return result
