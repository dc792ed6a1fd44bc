"""The one shape of a slide result: what ``analyze --json``, ``counts --json``, ``counts --csv`` and the API print.

A slide result is a JSON object with exactly the keys of
:data:`SLIDE_RESULT_KEYS` (README, "Slide results", documents each one). A
slide analysed in memory (:func:`from_analysis`), read back from the database
(:func:`from_stored`) or a folder that never became a slide
(:func:`rejected`) all give these keys; values that are not known there are
``null`` (an analysis that was not stored has no ``finished_at``).

``counts`` is always the model's pre-classified differential;
``verified_counts`` is the differential a reviewer signed off, ``null`` until
``differential`` is ``"verified"``. ``flags`` are computed on the
differential reported: the verified one when there is one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from smearflow import WBC_CLASSES
from smearflow.reporting.flags import FlagConfig, is_uncertain, slide_flags
from smearflow.reporting.stats import percent_interval

__all__ = [
    "CSV_COLUMNS",
    "SLIDE_RESULT_KEYS",
    "csv_rows",
    "differential_rows",
    "from_analysis",
    "from_stored",
    "rejected",
]

SLIDE_RESULT_KEYS = (
    "slide_id",
    "patient_id",
    "folder",
    "status",
    "collected_at",
    "finished_at",
    "model_version",
    "differential",
    "fields",
    "counts",
    "wbc_total",
    "unclassified_wbc",
    "uncertain_wbc",
    "rbc_count",
    "platelet_count",
    "verified_counts",
    "verified_wbc_total",
    "artefacts",
    "changed_cells",
    "verified_by",
    "verified_at",
    "flags",
    "errors",
)
"""The keys of a slide result, in the order they are printed."""

CSV_COLUMNS = (
    "slide_id",
    "patient_id",
    "status",
    "collected_at",
    "model_version",
    "class",
    "count",
    "percent_of_wbc",
    "ci95_low",
    "ci95_high",
    "verified_count",
    "verified_percent_of_wbc",
    "verified_ci95_low",
    "verified_ci95_high",
    "differential",
    "verified_by",
    "verified_at",
    "folder",
    "finished_at",
    "wbc_total",
    "verified_wbc_total",
    "unclassified_wbc",
    "uncertain_wbc",
    "rbc_count",
    "platelet_count",
    "artefacts",
    "changed_cells",
    "flags",
    "fields",
    "errors",
)
"""``counts --csv``: one row per slide and class, every slide-result key on each row.

``fields`` and ``errors`` are JSON text; ``flags`` the flag codes joined by
``;``. After the classes come two rows, ``platelets_segmented`` and
``rbc_segmented``, whose ``count`` is the segmenter's total."""


_NOT_VERIFIED = dict.fromkeys(
    ("verified_counts", "verified_wbc_total", "artefacts", "changed_cells", "verified_by", "verified_at")
)
"""The review keys of a slide result no reviewer has signed off: all ``null``."""


def _wbc_total(counts: dict[str, int]) -> int:
    return sum(n for label, n in counts.items() if label != "platelet")


def _iso(value: datetime | str | None) -> str | None:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _collected_at(value: str | None) -> str | None:
    from smearflow.db.repository import parse_collected_at
    from smearflow.errors import BadSlideError

    try:
        return _iso(parse_collected_at(value))
    except BadSlideError:
        return value


def _assemble(base: dict[str, Any], uncertain_wbc: int, config: FlagConfig) -> dict[str, Any]:
    if base["differential"] == "verified":
        flags = slide_flags(base["verified_counts"], base["fields"], 0, config)
    else:
        flags = slide_flags(base["counts"], base["fields"], uncertain_wbc, config)
    base["flags"] = flags
    return {key: base[key] for key in SLIDE_RESULT_KEYS}


def from_analysis(result, config: FlagConfig | None = None) -> dict[str, Any]:
    """The slide result of an analysis in memory (a :class:`smearflow.types.SlideResult`), before any review.

    A cell is uncertain when its classification says so or its confidence is
    below ``config.uncertain_below`` (:func:`~smearflow.reporting.flags.is_uncertain`).
    """
    config = config or FlagConfig()
    uncertain = sum(
        1
        for f in result.fields
        if f.status == "done"
        for c in f.cells
        if c.cell.kind == "wbc"
        and c.classification is not None
        and is_uncertain(c.classification.confidence, c.classification.uncertain, config)
    )
    base = {
        "slide_id": result.info.slide_id,
        "patient_id": result.info.patient_id,
        "folder": result.info.folder,
        "status": result.status,
        "collected_at": _collected_at(result.info.collected_at),
        "finished_at": None,
        "model_version": result.model_version,
        "differential": "pre-classified",
        "fields": [
            {
                "name": f.name,
                "status": f.status,
                "error": f.error,
                "wbc": sum(f.wbc_counts.values()),
                "rbc": f.rbc_count,
                "platelets": f.platelet_count,
            }
            for f in result.fields
        ],
        "counts": dict(result.counts),
        "wbc_total": result.wbc_total,
        "unclassified_wbc": result.unclassified_wbc,
        "uncertain_wbc": uncertain,
        "rbc_count": result.rbc_count,
        "platelet_count": result.platelet_count,
        **_NOT_VERIFIED,
        "errors": list(result.errors),
    }
    return _assemble(base, uncertain, config)


def from_stored(stored, config: FlagConfig | None = None) -> dict[str, Any]:
    """The slide result of a slide read back from the database (a :class:`smearflow.db.review.StoredSlide`)."""
    config = config or FlagConfig()
    verified = stored.differential == "verified"
    base = {
        "slide_id": stored.slide_id,
        "patient_id": stored.patient_id,
        "folder": stored.folder,
        "status": stored.status,
        "collected_at": _iso(stored.collected_at),
        "finished_at": _iso(stored.finished_at),
        "model_version": stored.model_version,
        "differential": stored.differential,
        "fields": [dict(f) for f in stored.fields],
        "counts": dict(stored.counts),
        "wbc_total": _wbc_total(stored.counts),
        "unclassified_wbc": stored.unclassified_wbc,
        "uncertain_wbc": stored.uncertain_wbc,
        "rbc_count": stored.rbc_count,
        "platelet_count": stored.platelet_count,
        "verified_counts": dict(stored.reviewed_counts) if verified else None,
        "verified_wbc_total": _wbc_total(stored.reviewed_counts) if verified else None,
        "artefacts": stored.artefacts if verified else None,
        "changed_cells": stored.changed_cells if verified else None,
        "verified_by": stored.verified_by,
        "verified_at": _iso(stored.verified_at),
        "errors": stored.errors,
    }
    return _assemble(base, stored.uncertain_wbc, config)


def rejected(folder: str, reason: str, slide_id: str | None = None, status: str = "rejected") -> dict[str, Any]:
    """The slide result of a folder that was not analysed as a slide (``status`` ``rejected`` or ``failed``)."""
    return {
        "slide_id": slide_id,
        "patient_id": None,
        "folder": folder,
        "status": status,
        "collected_at": None,
        "finished_at": None,
        "model_version": None,
        "differential": "pre-classified",
        "fields": [],
        "counts": {},
        "wbc_total": 0,
        "unclassified_wbc": 0,
        "uncertain_wbc": 0,
        "rbc_count": 0,
        "platelet_count": 0,
        **_NOT_VERIFIED,
        "flags": [],
        "errors": [reason],
    }


def class_order(*counts: dict[str, int] | None) -> list[str]:
    """The PBC classes, then any other label found in ``counts``, sorted."""
    extra = set()
    for c in counts:
        extra |= set(c or {})
    return list(WBC_CLASSES) + sorted(extra - set(WBC_CLASSES))


def differential_rows(counts: dict[str, int]) -> list[dict[str, Any]]:
    """Per class: ``class``, ``count``, ``percent`` of white cells and its exact 95% ``ci_low`` / ``ci_high``.

    ``platelet`` (a platelet clump classified as a white cell) is listed with
    its count and no percentage: it is not a white cell. Percentages are
    ``None`` when no white cell was counted.
    """
    total = _wbc_total(counts)
    rows = []
    for label in class_order(counts):
        n = int(counts.get(label, 0))
        if label == "platelet" or not total:
            rows.append({"class": label, "count": n, "percent": None, "ci_low": None, "ci_high": None})
            continue
        low, high = percent_interval(n, total)
        rows.append({"class": label, "count": n, "percent": round(100.0 * n / total, 1), "ci_low": low, "ci_high": high})
    return rows


def csv_rows(results: Iterable[dict[str, Any]]) -> list[list[Any]]:
    """The rows of ``counts --csv`` (without the header, :data:`CSV_COLUMNS`)."""
    out = []
    for result in results:
        common = {
            **{key: result[key] for key in SLIDE_RESULT_KEYS if key not in ("fields", "errors", "flags", "counts", "verified_counts")},
            "fields": json.dumps(result["fields"], ensure_ascii=False),
            "errors": json.dumps(result["errors"], ensure_ascii=False),
            "flags": ";".join(flag["code"] for flag in result["flags"]),
        }
        model = {row["class"]: row for row in differential_rows(result["counts"])}
        verified = (
            {row["class"]: row for row in differential_rows(result["verified_counts"])}
            if result["verified_counts"] is not None
            else {}
        )
        for label in class_order(result["counts"], result["verified_counts"]):
            m = model.get(label, {"count": 0, "percent": None, "ci_low": None, "ci_high": None})
            v = verified.get(label)
            row = {
                **common,
                "class": label,
                "count": m["count"],
                "percent_of_wbc": m["percent"],
                "ci95_low": m["ci_low"],
                "ci95_high": m["ci_high"],
                "verified_count": v["count"] if v else None,
                "verified_percent_of_wbc": v["percent"] if v else None,
                "verified_ci95_low": v["ci_low"] if v else None,
                "verified_ci95_high": v["ci_high"] if v else None,
            }
            out.append([_csv_value(row[column]) for column in CSV_COLUMNS])
        for label, key in (("platelets_segmented", "platelet_count"), ("rbc_segmented", "rbc_count")):
            row = {**common, "class": label, "count": result[key]}
            out.append([_csv_value(row.get(column)) for column in CSV_COLUMNS])
    return out


def _csv_value(value: Any) -> Any:
    return "" if value is None else value
