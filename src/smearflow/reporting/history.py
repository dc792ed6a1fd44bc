"""A patient's history: each class's percentage across the patient's slides over time, as a plot and a table.

Each slide contributes its reported differential: the verified one when a
reviewer signed it off, the pre-classified one otherwise (marked so). Slides
are in collection order; a slide without a collection time comes last, by id.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smearflow import WBC_CLASSES
from smearflow.reporting.flags import FlagConfig

__all__ = ["history_rows", "load_patient_history", "write_patient_history"]

CLASSES = tuple(c for c in WBC_CLASSES if c != "platelet")


def history_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per slide result: ``slide_id``, ``collected_at``, ``differential``, ``wbc_total``, ``percents``, ``flags``.

    ``percents`` maps each white-cell class to its percentage of the reported
    differential (``None`` when no white cell was counted).
    """
    def when(result):
        text = result["collected_at"]
        stamp = datetime.fromisoformat(text) if text else datetime.max.replace(tzinfo=UTC)
        return (stamp, result["slide_id"])

    rows = []
    for result in sorted(results, key=when):
        verified = result["differential"] == "verified"
        counts = result["verified_counts"] if verified else result["counts"]
        total = sum(n for label, n in counts.items() if label != "platelet")
        rows.append({
            "slide_id": result["slide_id"],
            "collected_at": result["collected_at"],
            "differential": result["differential"],
            "status": result["status"],
            "wbc_total": total,
            "percents": {label: (round(100.0 * counts.get(label, 0) / total, 1) if total else None) for label in CLASSES},
            "flags": [flag["code"] for flag in result["flags"]],
        })
    return rows


def load_patient_history(session, patient_code: str, config: FlagConfig | None = None) -> list[dict[str, Any]]:
    """The slide results of one patient (see :func:`history_rows`).

    Raises
    ------
    LookupError
        When the patient has no slide.
    """
    from smearflow.db.review import stored_slides
    from smearflow.reporting.schema import from_stored

    config = config or FlagConfig()
    stored = stored_slides(session, patient_code=patient_code, uncertain_below=config.uncertain_below)
    if not stored:
        raise LookupError(f"No slide is stored for patient_code={patient_code!r}")
    return history_rows([from_stored(s, config) for s in stored])


def plot_points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history rows as points of :func:`smearflow.reporting.plots.history_png`."""
    return [
        {
            "label": (row["collected_at"] or "")[:10] or row["slide_id"],
            "percents": row["percents"],
            "verified": row["differential"] == "verified",
        }
        for row in rows
    ]


def write_patient_history(patient_code: str, rows: list[dict[str, Any]], out_dir: str | Path) -> Path:
    """Write ``history.html`` and ``history.png`` into ``out_dir`` (created); returns the page's path."""
    import jinja2

    from smearflow.db.models import utc_now
    from smearflow.reporting.plots import history_png

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    history_png(plot_points(rows), list(CLASSES), f"patient {patient_code}: % of white cells per slide", out_dir / "history.png")
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("smearflow.reporting", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    html = environment.get_template("history.html").render(
        patient_id=patient_code, rows=rows, classes=CLASSES, generated_at=utc_now()
    )
    path = out_dir / "history.html"
    path.write_text(html, encoding="utf-8")
    return path
