"""The slide report: one self-contained HTML page and its PNGs, from what the database holds.

``load_slide_report`` reads a slide (the caller owns the session);
``write_slide_report`` writes ``report.html`` (no external style sheet,
script or font), ``differential.png``, ``fields/NN.png`` (each field with its
cells outlined in their class colour) and ``cells/ID.png`` (a crop per
classified white cell, cut from the field images; see
:mod:`smearflow.reporting.images`). Every number on the page comes from the
same slide result ``counts --json`` prints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from smearflow import WBC_CLASSES
from smearflow.errors import BadImageError
from smearflow.reporting.flags import FlagConfig, is_uncertain

logger = logging.getLogger(__name__)

__all__ = ["SlideReport", "gallery", "load_slide_report", "write_slide_report"]

CROP_SIZE_PX = 96
"""Side of the crops shown in reports and the review station."""

FIELD_MAX_SIDE_PX = 1024
"""Longest side of a field picture in a report."""


@dataclass
class SlideReport:
    """Everything one slide report shows."""

    result: dict[str, Any]
    notes: str | None
    fields: list[dict[str, Any]]
    cells: list[Any]
    rbc_diameters_px: dict[int, float]
    config: FlagConfig
    generated_at: datetime
    history: list[dict[str, Any]] = field(default_factory=list)


def load_slide_report(session, slide_code: str, config: FlagConfig | None = None) -> SlideReport:
    """Read one slide's report from the database.

    Raises
    ------
    LookupError
        When no slide is registered as ``slide_code``.
    """
    from smearflow.db import review
    from smearflow.db.models import utc_now
    from smearflow.reporting.schema import from_stored

    config = config or FlagConfig()
    stored = review.stored_slide(session, slide_code, config.uncertain_below)
    fields = [
        {
            "id": row.id, "name": row.name, "status": row.status, "error": row.error,
            "quality": dict(row.quality or {}), "width_px": row.width_px, "height_px": row.height_px,
        }
        for row in review.slide_fields(session, slide_code)
    ]
    return SlideReport(
        result=from_stored(stored, config),
        notes=stored.notes,
        fields=fields,
        cells=review.slide_cells(session, slide_code),
        rbc_diameters_px=review.rbc_diameters_px(session, [f["id"] for f in fields]),
        config=config,
        generated_at=utc_now(),
        history=review.review_history(session, slide_code),
    )


def cell_is_uncertain(cell, config: FlagConfig) -> bool:
    """Whether a stored cell is uncertain (its stored flag, else its confidence)."""
    return is_uncertain(cell.confidence, cell.uncertain, config)


def gallery(cells: Sequence, config: FlagConfig) -> list[tuple[str, list]]:
    """The reviewable cells grouped by their current class, least confident first in each group.

    Groups follow the PBC class order, then ``artefact`` and any other label;
    empty classes are left out. Uncertain cells come first, then by rising
    confidence, then by id.
    """
    from smearflow.db.review import ARTEFACT

    groups: dict[str, list] = {}
    for cell in cells:
        if cell.reviewable:
            groups.setdefault(cell.final_label, []).append(cell)
    order = list(WBC_CLASSES) + [ARTEFACT] + sorted(set(groups) - set(WBC_CLASSES) - {ARTEFACT})
    return [
        (
            label,
            sorted(
                groups[label],
                key=lambda c: (not cell_is_uncertain(c, config), c.confidence if c.confidence is not None else 0.0, c.id),
            ),
        )
        for label in order
        if label in groups
    ]


def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("smearflow.reporting", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def write_slide_report(
    report: SlideReport, out_dir: str | Path, read_field: Callable[[str | None, str], np.ndarray] | None = None
) -> Path:
    """Write the report of one slide into ``out_dir`` (created); returns the path of ``report.html``.

    Parameters
    ----------
    report : SlideReport
    out_dir : str or Path
    read_field : callable, optional
        ``(folder, name) -> RGB image``; :func:`smearflow.reporting.images.read_field` by default.
        A field that cannot be read is shown as "image not available" with the reason.
    """
    from smearflow.imageio import write_rgb
    from smearflow.reporting import images
    from smearflow.reporting.plots import differential_png
    from smearflow.reporting.schema import differential_rows

    read_field = read_field or images.read_field
    out_dir = Path(out_dir)
    (out_dir / "fields").mkdir(parents=True, exist_ok=True)
    (out_dir / "cells").mkdir(parents=True, exist_ok=True)
    result = report.result
    by_field: dict[int, list] = {}
    for cell in report.cells:
        by_field.setdefault(cell.field_id, []).append(cell)
    crops: dict[int, str] = {}
    field_pictures = []
    for index, field_row in enumerate(report.fields, start=1):
        picture = {"field": field_row, "src": None, "problem": None, "cells": by_field.get(field_row["id"], [])}
        field_pictures.append(picture)
        if field_row["status"] == "failed":
            picture["problem"] = "not analysed"
            continue
        try:
            image = read_field(result["folder"], field_row["name"])
        except BadImageError as error:
            picture["problem"] = f"image not available: {error}"
            logger.warning("slide %s: %s", result["slide_id"], error)
            continue
        name = f"fields/{index:02d}.png"
        write_rgb(out_dir / name, images.draw_cells(image, picture["cells"], FIELD_MAX_SIDE_PX))
        picture["src"] = name
        diameter = report.rbc_diameters_px.get(field_row["id"])
        for cell in picture["cells"]:
            if cell.reviewable:
                crop = images.cell_crop(image, cell.centroid, cell.bbox, diameter, CROP_SIZE_PX)
                crops[cell.id] = f"cells/{cell.id}.png"
                write_rgb(out_dir / crops[cell.id], crop)

    model_rows = differential_rows(result["counts"])
    verified_rows = differential_rows(result["verified_counts"]) if result["verified_counts"] is not None else None
    shown_rows = verified_rows if verified_rows is not None else model_rows
    differential_png(
        shown_rows,
        f"{result['slide_id']}: {result['differential']} differential ({sum_wbc(result)} white cells)",
        out_dir / "differential.png",
    )
    html = _environment().get_template("report.html").render(
        result=result,
        notes=report.notes,
        model_rows=model_rows,
        verified_rows={row["class"]: row for row in verified_rows} if verified_rows is not None else None,
        fields=field_pictures,
        gallery=gallery(report.cells, report.config),
        crops=crops,
        config=report.config,
        colours={label: "#%02x%02x%02x" % rgb for label, rgb in images.CLASS_COLOURS.items()},
        uncertain=lambda cell: cell_is_uncertain(cell, report.config),
        history=report.history,
        generated_at=report.generated_at,
    )
    path = out_dir / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def sum_wbc(result: dict[str, Any]) -> int:
    """White cells of the differential reported (verified when there is one)."""
    if result["verified_wbc_total"] is not None:
        return result["verified_wbc_total"]
    return result["wbc_total"]
