"""Throughput command: ``bench``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from smearflow.commands.common import JsonFlag, ModelDir, PrecisionOption, fail, progress_wanted, stderr_console, stdout_console

REFERENCE_ARCHITECTURE = "hybrid"
REFERENCE_SIZE_PX = 224


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``smearflow`` app."""
    app.command("bench")(bench)


def bench(
    model: ModelDir = None,
    fields: Annotated[int, typer.Option("--fields", help="Fields in the measured slide.")] = 60,
    data: Annotated[
        Optional[Path],
        typer.Option("--data", help="Folder of field images to measure on (default: synthetic 640 x 480 fields)."),
    ] = None,
    precision: PrecisionOption = "float32",
    batch_size: Annotated[int, typer.Option(help="Crops per classifier call (the pipeline's batch_size).")] = 64,
    prepare_threads: Annotated[
        int, typer.Option(help="Threads that read and segment fields at once (the pipeline's prepare_threads).")
    ] = 1,
    as_json: JsonFlag = False,
    reference_architecture: Annotated[
        str, typer.Option(hidden=True, help="Architecture measured beside the model (random weights).")
    ] = REFERENCE_ARCHITECTURE,
    reference_size: Annotated[int, typer.Option(hidden=True, help="Its input side in pixels.")] = REFERENCE_SIZE_PX,
    min_seconds: Annotated[float, typer.Option(hidden=True, help="Least time per classifier ceiling.")] = 3.0,
    naive_cells: Annotated[int, typer.Option(hidden=True, help="Cells of the one-predict-per-cell baseline.")] = 32,
    isolate: Annotated[
        bool, typer.Option("--isolate/--no-isolate", hidden=True, help="Measure each model in a process of its own.")
    ] = True,
):
    """Measure throughput, from field image files to stored counts, for the model and the hybrid at 224 px.

    Both are measured in one run on the same fields: the parts alone (reading, segmentation,
    the network on ready tensors at the batch size: the ceiling), the whole pipeline into a
    temporary SQLite database, and one model.predict per cell (the naive baseline). The hybrid has
    random weights: its speed, not its answers, is measured. Takes a few minutes on a CPU.
    """
    import tempfile

    from smearflow.config import PipelineConfig
    from smearflow.errors import PermanentError

    if fields < 1:
        raise fail(f"--fields must be at least 1. Received: {fields}")
    if data is not None and not data.is_dir():
        raise fail(f"--data must be a folder of field images. Received: {data}")
    try:
        config = PipelineConfig(batch_size=batch_size, inference_precision=precision, prepare_threads=prepare_threads)
    except ValueError as error:
        raise fail(str(error)) from None
    console = stderr_console()
    show = progress_wanted(as_json)
    with tempfile.TemporaryDirectory(prefix="smearflow-bench-") as work:
        try:
            report = _measure(
                Path(work), model, fields, data, config, reference_architecture, reference_size, min_seconds,
                naive_cells, isolate, console if show else None,
            )
        except (PermanentError, ValueError) as error:
            raise fail(str(error)) from None
    report["data"] = str(data) if data is not None else "synthetic (smearflow.synthetic.make_smear, 640 x 480)"
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_report(stdout_console(), report)


def _measure(work: Path, model_dir, n_fields, data, config, architecture, size_px, min_seconds, naive_cells, isolate, console):
    from smearflow.classifier.classifier import default_model_dir
    from smearflow.classifier.model_folder import read_model_folder
    from smearflow.throughput import ModelUnderTest, field_images, measure_throughput, write_synthetic_fields

    def step(text: str) -> None:
        if console is not None:
            console.print(text, highlight=False)

    classes = read_model_folder(model_dir if model_dir is not None else default_model_dir()).classes
    images = field_images(data, n_fields) if data is not None else write_synthetic_fields(work / "synthetic", n_fields)
    models = [
        ModelUnderTest("packaged" if model_dir is None else str(model_dir), model_dir=model_dir),
        ModelUnderTest(
            f"{architecture} {size_px} px, random weights", architecture=architecture, image_size=size_px, classes=classes
        ),
    ]
    return measure_throughput(
        images, models, work, config, min_seconds=min_seconds, naive_cells=naive_cells, isolate=isolate, on_step=step
    )


def _print_report(console, report: dict) -> None:
    from rich.table import Table

    from smearflow.throughput import FIGURES

    models = report["models"]
    table = Table(
        title=f"{report['fields']} fields, batch {report['batch_size']}, {report['machine']}", title_justify="left"
    )
    table.add_column("figure")
    for model in models:
        table.add_column(f"{model['name']} ({model['precision']})", justify="right")
    for figure in FIGURES:
        table.add_row(figure, *[_number(model[figure]) for model in models])
    console.print(table)
    console.print(f"fields: {report['data']}", highlight=False)


def _number(value) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}"
