"""Field quality command: ``check-fields``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from smearflow.commands.common import JsonFlag, stdout_console


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``smearflow`` app."""
    app.command("check-fields")(check_fields)


def check_fields(
    paths: Annotated[
        list[Path], typer.Argument(help="Field images, or folders of them (a folder's sub-folders are not searched).")
    ],
    count_red_cells: Annotated[
        bool,
        typer.Option(
            "--count-red-cells/--no-count-red-cells",
            help="Count red cells with the classical segmenter (about 25 ms a field) and flag fields with too few.",
        ),
    ] = True,
    as_json: JsonFlag = False,
):
    """Run the field quality gate: print each field's verdict, reasons and measures, then a summary.

    The summary gives, for every measure, its threshold and the value closest to it among the
    fields checked (the margin). Unreadable images are reported with the reason and the
    command goes on. Exit status 1 when any field was flagged or unreadable.
    """
    from smearflow.imageio import display_name
    from smearflow.quality import QualityConfig

    config = QualityConfig()
    files, problems = _field_files(paths)
    segmenter = None
    if count_red_cells and files:
        from smearflow.segmentation import make_segmenter

        segmenter = make_segmenter("classical")
    records = [_record_problem(display_name(path), message) for path, message in problems]
    records += [_check_one(path, config, segmenter) for path in files]
    summary = _summary(records, config)
    if as_json:
        typer.echo(json.dumps({"fields": records, "summary": summary}, indent=2, ensure_ascii=False))
    else:
        _print(records, summary)
    if summary["flagged"] or summary["unreadable"] or not records:
        raise typer.Exit(code=1)


def _field_files(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The image files named or found in the folders named, and the paths that gave none."""
    from smearflow.imageio import is_image_file

    files, problems = [], []
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            found = sorted(p for p in path.iterdir() if is_image_file(p))
            if not found:
                problems.append((path, "folder holds no image (JPEG, PNG, TIFF or BMP)"))
            files.extend(found)
        else:
            files.append(path)  # read_rgb says why when it is missing, a link or not an image
    return files, problems


def _record_problem(name: str, message: str) -> dict:
    return {"field": name, "status": "unreadable", "reasons": [], "measures": {}, "error": f"{name}: {message}"}


def _check_one(path: Path, config, segmenter) -> dict:
    from smearflow.errors import BadImageError
    from smearflow.imageio import display_name, read_rgb
    from smearflow.quality import assess_field

    name = display_name(path)
    try:
        image = read_rgb(path)
    except BadImageError as error:
        return {"field": name, "status": "unreadable", "reasons": [], "measures": {}, "error": str(error)}
    rbc_count = segmenter.segment(image).count("rbc") if segmenter is not None else None
    verdict = assess_field(image, config, rbc_count=rbc_count)
    return {
        "field": name,
        "status": "usable" if verdict.usable else "flagged",
        "reasons": list(verdict.reasons),
        "measures": {key: round(value, 4) for key, value in verdict.measures.items()},
        "error": None,
    }


def _summary(records: list[dict], config) -> dict:
    from collections import Counter

    from smearflow.quality import MEASURE_THRESHOLDS

    by_reason = Counter(reason.split(" (", 1)[0] for record in records for reason in record["reasons"])
    measures = {}
    for measure, threshold_name in MEASURE_THRESHOLDS.items():
        values = [record["measures"][measure] for record in records if measure in record["measures"]]
        if not values:
            continue
        threshold = float(getattr(config, threshold_name))
        flagged_below = threshold_name.startswith("min_")
        closest = min(values) if flagged_below else max(values)
        measures[measure] = {
            "threshold": f"{threshold_name} = {threshold:g}",
            "fields": len(values),
            "min": min(values),
            "max": max(values),
            "closest": closest,
            "margin": round(closest - threshold if flagged_below else threshold - closest, 4),
        }
    return {
        "fields": len(records),
        "usable": sum(1 for r in records if r["status"] == "usable"),
        "flagged": sum(1 for r in records if r["status"] == "flagged"),
        "unreadable": sum(1 for r in records if r["status"] == "unreadable"),
        "by_reason": dict(by_reason.most_common()),
        "measures": measures,
    }


def _print(records: list[dict], summary: dict) -> None:
    from rich.table import Table

    console = stdout_console()
    colours = {"usable": "green", "flagged": "red", "unreadable": "yellow"}
    for record in records:
        status = record["status"]
        console.print(f"[{colours[status]}]{status:10s}[/{colours[status]}] {record['field']}", highlight=False)
        if record["error"]:
            console.print(f"    {record['error']}", highlight=False)
        for reason in record["reasons"]:
            console.print(f"    {reason}", highlight=False)
        if record["measures"]:
            console.print("    " + "  ".join(f"{k}={v:g}" for k, v in record["measures"].items()), highlight=False)
    table = Table(title="measures over the fields checked (margin: closest value to its threshold)", title_justify="left")
    for column in ("measure", "threshold", "fields", "min", "max", "closest", "margin"):
        table.add_column(column, justify="left" if column in ("measure", "threshold") else "right", no_wrap=True)
    for measure, figures in summary["measures"].items():
        table.add_row(
            measure,
            figures["threshold"],
            str(figures["fields"]),
            f"{figures['min']:g}",
            f"{figures['max']:g}",
            f"{figures['closest']:g}",
            f"{figures['margin']:g}",
        )
    console.print(table)
    console.print(
        f"{summary['fields']} fields: {summary['usable']} usable, {summary['flagged']} flagged, "
        f"{summary['unreadable']} unreadable",
        highlight=False,
    )
    for reason, count in summary["by_reason"].items():
        console.print(f"    {count:4d}  {reason}", highlight=False)
