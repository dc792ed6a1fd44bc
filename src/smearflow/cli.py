"""The ``smearflow`` command line: a thin shell over the library.

Heavy imports (Keras, OpenCV, SQLAlchemy) happen inside the commands, after
argument parsing, so ``smearflow --help`` answers at once.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from smearflow.segmentation import DEFAULT_SEGMENTER, make_segmenter, segmenter_help
from smearflow.commands.common import (
    DatabaseUrl,
    JsonFlag,
    ModelDir,
    PrecisionOption,
    fail,
    open_database,
    plain_metavars,
    progress_wanted,
    quiet_native_startup,
    setup_logging,
    stderr_console,
    stdout_console,
)
from smearflow.commands.review import FlagsConfig, load_flags


app = typer.Typer(
    help="Blood-smear slide folders in, white-cell differential counts out.",
    # Plain help: flags as flags, arguments as NAMES, no type tags a technologist has to decode.
    rich_markup_mode=None,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

SegmenterOption = Annotated[str, typer.Option(help=segmenter_help())]


@app.callback()
def main_callback(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details and TensorFlow's start-up.")] = False,
):
    if not verbose:
        quiet_native_startup()
    setup_logging(verbose)


def slide_summary(result, flag_config=None) -> dict:
    """The slide result of one analysed slide (:mod:`smearflow.reporting.schema`)."""
    from smearflow.reporting.schema import from_analysis

    return from_analysis(result, flag_config)


def rejected_summary(folder, reason: str, slide_id: str | None = None, status: str = "rejected") -> dict:
    """The slide result of a folder that was not analysed as a slide (same keys as :func:`slide_summary`)."""
    from smearflow.imageio import display_name
    from smearflow.reporting.schema import rejected

    return rejected(display_name(folder), reason, slide_id, status)


def differential_table(title: str, result: dict):
    """A rich table of a slide result: count, % of white cells and its exact 95% interval per class.

    A verified slide shows the verified differential beside the pre-classified one.
    """
    from rich.table import Table

    from smearflow.reporting.schema import class_order, differential_rows

    verified = result.get("verified_counts")
    table = Table(title=title, title_justify="left")
    table.add_column("class")
    columns = [("pre-classified", result["counts"])] + ([("verified", verified)] if verified is not None else [])
    for name, _ in columns:
        prefix = f"{name} " if verified is not None else ""
        table.add_column(f"{prefix}count", justify="right")
        table.add_column("% of WBC", justify="right")
        table.add_column("95% CI", justify="right")
    rows = [{row["class"]: row for row in differential_rows(counts)} for _, counts in columns]
    empty = {"count": 0, "percent": None}
    for label in class_order(*(counts for _, counts in columns)):
        found = [by_class.get(label, empty) for by_class in rows]
        if label == "platelet" and not any(row["count"] for row in found):
            continue
        name = "platelet-like WBC candidates" if label == "platelet" else label
        table.add_row(name, *[c for row in found for c in (str(row["count"]), _percent(row["percent"]), _interval(row))])
    table.add_section()
    totals = [result["wbc_total"]] + ([result["verified_wbc_total"]] if verified is not None else [])
    table.add_row("white cells", *[c for total in totals for c in (str(total), "100.0" if total else "-", "")])
    blank = [""] * (3 * len(columns) - 1)
    if result.get("artefacts"):
        table.add_row("artefacts (verified)", *([""] * 3), str(result["artefacts"]), "", "")
    table.add_row("platelets", str(result["platelet_count"]), *blank)
    table.add_row("red cells", str(result["rbc_count"]), *blank)
    return table


def _percent(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _interval(row) -> str:
    return "" if row.get("ci_low") is None else f"{row['ci_low']:.1f}-{row['ci_high']:.1f}"


def _print_slide(console, summary: dict) -> None:
    from rich.markup import escape

    state = summary["differential"]
    if state == "verified":
        state = f"verified by {summary['verified_by']} {summary['verified_at']}"
    title = escape(
        f"slide {summary['slide_id']}  patient {summary['patient_id'] or 'unknown'}  [{summary['status']}]  {state}"
    )
    console.print(differential_table(title, summary))
    for flag in summary["flags"]:
        console.print(f"[yellow]flag:[/yellow] {escape(flag['message'])}", highlight=False)
    for error in summary["errors"]:
        console.print(f"[red]error:[/red] {escape(error)}", highlight=False)


def run_analysis(paths, analyzer, session_factory, show_progress: bool = True, **options) -> list[dict]:
    """Analyse and store each slide folder; returns the JSON summaries.

    One slide never stops the others: a folder that is not a slide, a patient
    conflict, an unexpected error or a database failure becomes that slide's
    summary, and the next slide goes on. ``options`` go to :func:`analyze_one`.
    The progress shows the slides done and the current slide's fields done.
    """
    from smearflow.commands.common import SlideProgress

    summaries = []
    with SlideProgress(len(paths), enabled=show_progress) as progress:
        for path in paths:
            summaries.append(
                analyze_one(
                    path, analyzer, session_factory, on_start=progress.start_slide, on_field=progress.field_done, **options
                )
            )
            progress.slide_done()
    return summaries


def analyze_one(
    path, analyzer, session_factory, *, on_start=None, on_field=None, reassign=False, max_fields=2000, flag_config=None
) -> dict:
    """Analyse and store one slide folder; every problem ends up in the returned summary.

    A folder that is not a slide, or whose slide id is stored for another
    patient, is recorded as a rejected folder (status ``rejected``).
    """
    import getpass

    from sqlalchemy.exc import SQLAlchemyError

    from smearflow.db.migrate import database_error_line
    from smearflow.errors import BadSlideError, SlideConflictError
    from smearflow.imageio import display_name
    from smearflow.jobs import analyze_folder

    summary = None
    try:
        try:
            result = analyze_folder(path, analyzer, on_field=on_field, max_fields=max_fields, on_start=on_start)
        except BadSlideError as error:
            return _reject(session_factory, path, str(error))
        summary = slide_summary(result, flag_config)
        try:
            _store(session_factory, result, analyzer.classifier, reassign=reassign, actor=getpass.getuser())
        except SlideConflictError as error:
            return _reject(session_factory, path, str(error), result.info.slide_id)
    except SQLAlchemyError as error:
        summary = summary or rejected_summary(path, "not analysed", status="failed")
        summary["errors"].append(f"not stored: {database_error_line(error, str(session_factory.kw['bind'].url))}")
    except Exception as error:  # noqa: BLE001 - one slide never stops the run
        logging.getLogger(__name__).exception("%s could not be analysed", display_name(path))
        reason = f"{display_name(path)}: could not be analysed ({type(error).__name__}: {error})"
        summary = rejected_summary(path, reason, status="failed")
    return summary


def _store(session_factory, result, classifier, **options) -> None:
    from smearflow.db.engine import session_scope
    from smearflow.jobs import store_result

    with session_scope(session_factory) as session:
        store_result(session, result, classifier, **options)


def _reject(session_factory, path, reason: str, slide_id: str | None = None) -> dict:
    from smearflow.db import lifecycle
    from smearflow.db.engine import session_scope
    from smearflow.imageio import display_name

    with session_scope(session_factory) as session:
        lifecycle.record_rejected_folder(session, display_name(path), reason, slide_code=slide_id)
    return rejected_summary(path, reason, slide_id)


@app.command()
def analyze(
    paths: Annotated[list[Path], typer.Argument(help="Slide folders (one folder per slide).")],
    database_url: DatabaseUrl = None,
    model: ModelDir = None,
    segmenter: SegmenterOption = DEFAULT_SEGMENTER,
    segmentation_model: Annotated[
        Optional[Path], typer.Option(help="U-Net model folder for --segmenter unet.")
    ] = None,
    rbc_diameter_px: Annotated[
        Optional[float], typer.Option(help="Expected red-cell diameter in pixels (estimated when omitted).")
    ] = None,
    reassign: Annotated[
        bool, typer.Option("--reassign", help="Allow a folder to move a stored slide to another patient (recorded).")
    ] = False,
    max_fields: Annotated[int, typer.Option(help="Most field images one slide folder may hold.")] = 2000,
    max_field_pixels: Annotated[
        int, typer.Option(help="Most pixels one field may have (checked before decoding).")
    ] = 40_000_000,
    flags_config: FlagsConfig = None,
    as_json: JsonFlag = False,
):
    """Analyse slide folders, store the results and print a differential per slide.

    Exits with status 1 when any slide was rejected, failed or is partial, or
    any field failed or was flagged (the others are still analysed and stored).
    """
    from smearflow.config import PipelineConfig
    from smearflow.errors import PermanentError
    from smearflow.jobs import Analyzer

    flag_config = load_flags(flags_config)
    _, factory = open_database(database_url)
    try:
        analyzer = Analyzer.load(
            model,
            PipelineConfig(segmenter=segmenter, max_field_pixels=max_field_pixels),
            segmentation_model_dir=segmentation_model,
            rbc_diameter_px=rbc_diameter_px,
        )
    except (PermanentError, ValueError) as error:
        raise fail(str(error)) from None
    summaries = run_analysis(
        paths, analyzer, factory, show_progress=progress_wanted(as_json), reassign=reassign, max_fields=max_fields,
        flag_config=flag_config,
    )
    if as_json:
        typer.echo(json.dumps(summaries, indent=2))
    else:
        console = stdout_console()
        for summary in summaries:
            _print_slide(console, summary)
    if any(s["errors"] or s["status"] != "done" for s in summaries):
        raise typer.Exit(code=1)


@app.command()
def counts(
    patient: Annotated[Optional[str], typer.Option("--patient", help="Patient id.")] = None,
    slide: Annotated[Optional[str], typer.Option("--slide", help="Slide id.")] = None,
    database_url: DatabaseUrl = None,
    flags_config: FlagsConfig = None,
    as_json: JsonFlag = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV, one row per slide and class.")] = False,
):
    """Read stored differentials back, per slide: pre-classified, and verified once a reviewer signed it off.

    --json prints the same slide results as analyze --json; --csv has one row per slide and class with
    every key of a slide result (README, "Slide results").
    """
    from smearflow.db.engine import session_scope
    from smearflow.db.review import stored_slides
    from smearflow.reporting.schema import from_stored

    if as_json and as_csv:
        raise typer.BadParameter("choose one of --json and --csv")
    flag_config = load_flags(flags_config)
    _, factory = open_database(database_url, migrate=False)
    with session_scope(factory) as session:
        stored = stored_slides(
            session, patient_code=patient, slide_code=slide, uncertain_below=flag_config.uncertain_below
        )
    rows = [from_stored(s, flag_config) for s in stored]
    if not rows:
        what = f"patient {patient}" if patient else f"slide {slide}" if slide else "the database"
        stderr_console().print(f"no slides found for {what}")
        raise typer.Exit(code=1)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
    elif as_csv:
        _write_counts_csv(rows)
    else:
        console = stdout_console()
        for row in rows:
            _print_slide(console, row)


def _write_counts_csv(rows: list[dict]) -> None:
    import csv

    from smearflow.reporting.schema import CSV_COLUMNS, csv_rows

    writer = csv.writer(sys.stdout)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_rows(rows))


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Where to write the sample slide folders.")] = Path(
        "smearflow-demo"
    ),
    database_url: DatabaseUrl = None,
    model: ModelDir = None,
    as_json: JsonFlag = False,
):
    """Write a few synthetic sample slide folders and analyse them end to end."""
    from smearflow.synthetic import write_demo_slides

    slides = write_demo_slides(out)
    stderr_console().print(f"wrote {len(slides)} sample slide folders to {out}")
    analyze(slides, database_url=database_url, model=model, as_json=as_json)


SubsetOption = Annotated[str, typer.Option(help="heldout, tuning or all (the segmentation hold-out split).")]
ImageColumn = Annotated[str, typer.Option(help="CSV column with the image file name.")]
LabelColumn = Annotated[str, typer.Option(help="CSV column with the class.")]



def _labelled_fields(labels: Path, image_column: str, label_column: str, subset: str):
    """The labels read from ``labels`` and the image names of ``subset`` (None: all)."""
    from smearflow.errors import PermanentError
    from smearflow.datasets import read_field_labels
    from smearflow.datasets import holdout_split

    if subset not in ("heldout", "tuning", "all"):
        raise fail(f"--subset must be heldout, tuning or all. Received: {subset!r}")
    try:
        wanted = read_field_labels(labels, image_column, label_column)
    except PermanentError as error:
        raise fail(str(error)) from None
    if subset == "all":
        return wanted, None
    stems = {Path(name).stem: name for name in wanted}
    tuning, held_out = holdout_split(stems)
    return wanted, [stems[stem] for stem in (held_out if subset == "heldout" else tuning)]


@app.command("evaluate-fields")
def evaluate_fields_command(
    images: Annotated[Path, typer.Argument(help="Folder of whole-field images.")],
    labels: Annotated[Path, typer.Option("--labels", help="CSV naming each image's white-cell class.")],
    image_column: ImageColumn = "image",
    label_column: LabelColumn = "label",
    subset: SubsetOption = "all",
    model: ModelDir = None,
    segmenter: SegmenterOption = DEFAULT_SEGMENTER,
    as_json: JsonFlag = False,
    plots: Annotated[
        Optional[Path], typer.Option("--plots", help="Write confusion_matrix.png (and reliability.png) here.")
    ] = None,
    precision: PrecisionOption = "float32",
):
    """Analyse labelled whole fields and report how often the class found matches the label.

    Prints per-label agreement, precision and recall, the confusion matrix of labels against each
    field's majority class, and the expected calibration error (15 bins) of the white cells of
    single-cell fields.
    """
    from smearflow.commands.training import confusion_table, per_class_table, write_evaluation_plots
    from smearflow.config import PipelineConfig
    from smearflow.errors import PermanentError
    from smearflow.evaluation.fields import evaluate_fields
    from smearflow.jobs import Analyzer

    wanted, names = _labelled_fields(labels, image_column, label_column, subset)
    try:
        analyzer = Analyzer.load(model, PipelineConfig(segmenter=segmenter, inference_precision=precision))
        report = evaluate_fields(images, wanted, analyzer, names=names)
    except (PermanentError, ValueError) as error:
        raise fail(str(error)) from None
    report["subset"] = subset
    report["precision"] = precision
    if plots is not None:
        title = f"{analyzer.classifier.version}: {subset} fields of {images.name}"
        # the first rows are the columns' classes; labels outside them are left out of the plot
        square = {
            "classes": report["classes"],
            "confusion_matrix": report["confusion_matrix"][: len(report["classes"])],
            "calibration": report["calibration"],
        }
        report["plots"] = write_evaluation_plots(square, plots, title)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    console = stdout_console()
    agreement = "-" if report["agreement"] is None else f"{100 * report['agreement']:.1f}%"
    ms = "-" if report["ms_per_field"] is None else f"{report['ms_per_field']:.0f}"
    console.print(
        f"{report['fields']} fields ({subset}): majority class matches the label in {agreement} of "
        f"{report['classified_fields']} with a classified white cell; no white cell classified in "
        f"{report['no_wbc_found']}; {ms} ms per field",
        highlight=False,
    )
    console.print(per_class_table("per label (recall = agreement)", report["per_class"]))
    console.print(
        confusion_table(
            "fields by label (rows) and majority class", report["confusion_matrix"], report["label_classes"],
            report["classes"],
        )
    )
    calibration = report["calibration"]
    if calibration is not None:
        console.print(
            f"ECE ({calibration['n_bins']} bins) {calibration['ece']:.4f} over the {calibration['cells']} white cells "
            "of single-cell fields",
            highlight=False,
        )
    if report["uncertain_cells"] is not None:
        console.print(
            f"{report['uncertain_cells']} of {report['classified_cells']} white cells below the confidence threshold "
            f"{report['confidence_threshold']:.2f} (uncertain)",
            highlight=False,
        )
    for label, row in report["per_label"].items():
        console.print(f"  {label:<11} {row['fields']:>4} fields -> {row['predicted']}", highlight=False)
    for path in report.get("plots", ()):
        console.print(f"wrote {path}", highlight=False)


@app.command("export-crops")
def export_crops_command(
    images: Annotated[Path, typer.Argument(help="Folder of whole-field images.")],
    out: Annotated[Path, typer.Option("--out", help="Class-folder dataset to write.")],
    labels: Annotated[Path, typer.Option("--labels", help="CSV naming each image's white-cell class.")],
    image_column: ImageColumn = "image",
    label_column: LabelColumn = "label",
    subset: SubsetOption = "tuning",
    segmenter: SegmenterOption = DEFAULT_SEGMENTER,
    as_json: JsonFlag = False,
):
    """Write the white-cell crops of labelled fields as a class-folder dataset (for train --extra-data)."""
    from smearflow.config import PipelineConfig
    from smearflow.errors import PermanentError
    from smearflow.training.field_crops import export_field_crops

    wanted, names = _labelled_fields(labels, image_column, label_column, subset)
    try:
        config = PipelineConfig(segmenter=segmenter)
        report = export_field_crops(images, wanted, make_segmenter(config.segmenter), out, config, names=names)
    except (PermanentError, ValueError) as error:
        raise fail(str(error)) from None
    report["subset"] = subset
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    stdout_console().print(
        f"wrote {sum(report['written'].values())} crops to {out}: {report['written']}; "
        f"fields skipped: {report['skipped_fields']}",
        highlight=False,
    )


def _register_command_modules() -> None:
    from smearflow.commands import bench, deployment, quality, review, segmentation, training

    for module in (training, segmentation, quality, deployment, review, bench):
        module.register(app)


_register_command_modules()


def build_command():
    """The ``smearflow`` command line as click runs it, with plain help."""
    command = typer.main.get_command(app)
    plain_metavars(command)
    return command


def main() -> None:
    build_command()(prog_name="smearflow")


if __name__ == "__main__":
    main()
