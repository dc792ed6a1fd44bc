"""Review commands: ``report``, ``serve``, ``agreement``, ``export-verified``; the ``--flags-config`` option."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from smearflow.commands.common import DatabaseUrl, JsonFlag, fail, open_database, stderr_console, stdout_console

FlagsConfig = Annotated[
    Optional[Path],
    typer.Option(
        "--flags-config",
        envvar="SMEARFLOW_FLAGS_CONFIG",
        show_envvar=True,
        help="JSON file of flag thresholds and reference ranges (see README, 'Slide results').",
    ),
]
Since = Annotated[
    Optional[str], typer.Option("--since", help="Only slides signed off at or after this ISO 8601 date or time.")
]

TOKEN_ENV = "SMEARFLOW_REVIEW_TOKEN"
"""The review station's access token; required when ``serve`` binds to anything but the loopback."""

MIN_TOKEN_LENGTH = 16


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``smearflow`` app."""
    app.command("report")(report)
    app.command("serve")(serve)
    app.command("agreement")(agreement)
    app.command("export-verified")(export_verified)


def load_flags(path: Path | None):
    """The flag settings of ``--flags-config``; a bad file ends the command with one line."""
    from smearflow.reporting.flags import load_flag_config

    try:
        return load_flag_config(path)
    except ValueError as error:
        raise fail(str(error)) from None


def parse_since(value: str | None):
    """``--since`` as an aware datetime (a date is midnight UTC; no offset is UTC); bad text ends the command."""
    from smearflow.db.values import parse_iso_time

    if value is None:
        return None
    try:
        return parse_iso_time(value)
    except ValueError:
        raise fail(f"--since must be an ISO 8601 date or date-time such as 2026-12-01. Received: {value!r}") from None


def report(
    slide_id: Annotated[Optional[str], typer.Argument(help="The slide to report.")] = None,
    patient: Annotated[Optional[str], typer.Option("--patient", help="Report a patient's history instead.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder to write the page and its PNGs into.")] = Path(
        "smearflow-report"
    ),
    database_url: DatabaseUrl = None,
    flags_config: FlagsConfig = None,
):
    """Write a slide report (report.html with its PNGs), or with --patient a patient's history over time.

    The slide report shows every field with its cells outlined by class, the crops of its white cells by
    class (least confident first), the differential with exact 95% intervals, platelet and red-cell
    counts, the model version and the flags.
    """
    from smearflow.db.engine import session_scope

    if (slide_id is None) == (patient is None):
        raise fail("give either a SLIDE_ID or --patient ID (one of them)")
    config = load_flags(flags_config)
    _, factory = open_database(database_url, migrate=False)
    try:
        if patient is not None:
            from smearflow.reporting.history import load_patient_history, write_patient_history

            with session_scope(factory) as session:
                rows = load_patient_history(session, patient, config)
            path = write_patient_history(patient, rows, out)
        else:
            from smearflow.reporting.report import load_slide_report, write_slide_report

            with session_scope(factory) as session:
                data = load_slide_report(session, slide_id, config)
            path = write_slide_report(data, out)
    except LookupError as error:
        raise fail(str(error)) from None
    except OSError as error:
        raise fail(f"cannot write the report into {out}: {error}") from None
    stdout_console().print(f"wrote {path}", highlight=False)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    host: Annotated[str, typer.Option(help="Address to bind; anything but the loopback needs SMEARFLOW_REVIEW_TOKEN.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    database_url: DatabaseUrl = None,
    flags_config: FlagsConfig = None,
):
    """Run the review station: slides by status and patient, a slide's cells by class, reclassify, sign off.

    Binds to 127.0.0.1 unless --host says otherwise; then the token in SMEARFLOW_REVIEW_TOKEN (at least 16
    characters) is required on every request. The database must exist at this version's schema
    (smearflow db upgrade); the station never creates one.
    """
    import os

    token = os.environ.get(TOKEN_ENV) or None
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise fail(f"{TOKEN_ENV} must be at least {MIN_TOKEN_LENGTH} characters. Received {len(token)} characters")
    if not _is_loopback(host) and token is None:
        raise fail(
            f"--host {host} makes the station reachable from other machines: set {TOKEN_ENV} to a secret of at "
            f"least {MIN_TOKEN_LENGTH} characters (for example: export {TOKEN_ENV}=$(openssl rand -hex 24))"
        )
    config = load_flags(flags_config)
    _, factory = open_database(database_url, migrate=False)
    import uvicorn

    from smearflow.review.app import create_app

    application = create_app(factory, token=token, flag_config=config)
    shown = f"[{host}]" if ":" in host else host
    stderr_console().print(
        f"review station on http://{shown}:{port}/{'  (token required)' if token else ''}; Ctrl-C stops it",
        highlight=False,
    )
    uvicorn.run(application, host=host, port=port, log_level="warning")


def agreement(
    since: Since = None,
    database_url: DatabaseUrl = None,
    as_json: JsonFlag = False,
):
    """How often reviewers kept or changed the model's class, per class, with the model-versus-reviewer
    confusion matrix (verified slides only)."""
    from rich.table import Table

    from smearflow.db.engine import session_scope
    from smearflow.db.review import agreement as compute

    when = parse_since(since)
    _, factory = open_database(database_url, migrate=False)
    with session_scope(factory) as session:
        figures = compute(session, when)
    if as_json:
        typer.echo(json.dumps(figures, indent=2))
        return
    console = stdout_console()
    if not figures["cells"]:
        console.print(f"no verified slide{' since ' + since if since else ''} yet: nothing to compare", highlight=False)
        return
    console.print(
        f"{figures['slides']} verified slides, {figures['cells']} white cells: reviewers kept the model's class for "
        f"{figures['kept']} ({100 * figures['agreement']:.1f}%) and changed {figures['changed']}",
        highlight=False,
    )
    table = Table(title="per class of the model", title_justify="left")
    for name in ("model class", "cells", "kept", "changed", "to artefact", "kept %"):
        table.add_column(name, justify="left" if name == "model class" else "right")
    for label in figures["model_classes"]:
        row = figures["per_class"][label]
        kept = "-" if row["kept_fraction"] is None else f"{100 * row['kept_fraction']:.1f}"
        table.add_row(label, str(row["cells"]), str(row["kept"]), str(row["changed"]), str(row["to_artefact"]), kept)
    console.print(table)
    matrix = Table(title="confusion matrix (rows: model, columns: reviewer)", title_justify="left")
    matrix.add_column("")
    for label in figures["reviewer_classes"]:
        matrix.add_column(label[:5], justify="right")
    for label, row in zip(figures["model_classes"], figures["confusion_matrix"]):
        matrix.add_row(label, *map(str, row))
    console.print(matrix)


def export_verified(
    out: Annotated[Path, typer.Option("--out", help="Class-folder dataset to write (PBC layout).")],
    since: Since = None,
    size_px: Annotated[int, typer.Option(help="Side of each crop in pixels (the pipeline's is 224).")] = 224,
    database_url: DatabaseUrl = None,
    as_json: JsonFlag = False,
):
    """Write the crops of verified white cells as class folders, under the class the reviewer signed off.

    For training: give OUT to `smearflow train --extra-data OUT` or as "extra_data" in SMEARFLOW_TRAIN_CONFIG
    (nightly retraining). Each export replaces the previous one's verified-*.png files; artefacts are left out.
    """
    from smearflow.db.engine import session_scope
    from smearflow.review.export import export_verified as run_export

    when = parse_since(since)
    _, factory = open_database(database_url, migrate=False)
    try:
        with session_scope(factory) as session:
            summary = run_export(session, out, since=when, size_px=size_px)
    except (ValueError, OSError) as error:
        raise fail(str(error)) from None
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console = stdout_console()
    total = sum(summary["written"].values())
    console.print(
        f"wrote {total} crops of {summary['slides']} verified slides to {out}: {summary['written']}; "
        f"artefacts left out: {summary['artefacts']}",
        highlight=False,
    )
    for problem in summary["unreadable"]:
        console.print(f"[yellow]not exported:[/yellow] {problem}", highlight=False)
