"""Segmentation commands: ``evaluate-segmentation``, ``train-segmentation``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from smearflow.commands.common import JsonFlag, fail, stderr_console, stdout_console
from smearflow.errors import PermanentError
from smearflow.segmentation import (
    DEFAULT_SEGMENTER,
    check_segmenter_name,
    make_segmenter,
    segmenter_choices,
    segmenter_help,
)

SUBSETS = ("heldout", "tuning", "all")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``smearflow`` app."""
    app.command("evaluate-segmentation")(evaluate_segmentation)
    app.command("train-segmentation")(train_segmentation)


def evaluate_segmentation(
    path: Annotated[
        Path,
        typer.Argument(
            help="Dataset folder (images/ with annotations/ or masks/), or a folder of them such as wbcseg/."
        ),
    ],
    segmenter: Annotated[str, typer.Option(help=segmenter_help())] = DEFAULT_SEGMENTER,
    segmentation_model: Annotated[
        Optional[Path], typer.Option(help="U-Net model folder for --segmenter unet (default: the packaged one).")
    ] = None,
    rbc_diameter_px: Annotated[
        Optional[float], typer.Option(help="Red-cell diameter in pixels (estimated per field when omitted).")
    ] = None,
    subset: Annotated[
        str, typer.Option(help="heldout, tuning or all: which part of each dataset to score.")
    ] = "heldout",
    as_json: JsonFlag = False,
):
    """Score a segmenter on an annotated dataset: detection and counts (boxes) or Dice and IoU (masks).

    Each dataset is split the same way every time: 30% of its images, chosen by a hash of the image
    name, are held out; the U-Net trains on the other part (tuning) only. With --json, a dataset
    folder prints its figures as one object; a folder of datasets prints one object per dataset name.
    """
    if subset not in SUBSETS:
        raise fail(f"--subset must be one of {', '.join(SUBSETS)}. Received: --subset {subset}")
    try:
        check_segmenter_name(segmenter)
    except ValueError:
        raise fail(f"--segmenter must be {segmenter_choices()}. Received: --segmenter {segmenter}") from None
    from smearflow.datasets import find_datasets

    try:
        datasets = {folder.name or str(folder): folder for folder in find_datasets(path)}
        chosen = make_segmenter(segmenter, rbc_diameter_px=rbc_diameter_px, model_dir=segmentation_model)
        results = {name: _evaluate_one(folder, chosen, subset) for name, folder in datasets.items()}
    except (PermanentError, ValueError) as error:
        raise fail(str(error)) from None
    single = len(results) == 1 and next(iter(datasets.values())) == path
    if as_json:
        typer.echo(json.dumps(next(iter(results.values())) if single else results, indent=2))
        return
    console = stdout_console()
    for name, result in results.items():
        console.print(_result_table(f"{name}: {segmenter}, {subset} part", result))
        for skipped in result["skipped_files"]:
            console.print(f"[yellow]skipped[/yellow] {skipped['file']}: {skipped['error']}", highlight=False)


def _evaluate_one(folder: Path, segmenter, subset: str) -> dict:
    from smearflow.datasets import dataset_names, holdout_split
    from smearflow.evaluation.segmentation import evaluate_segmentation_dir

    names = None
    if subset != "all":
        tuning, held_out = holdout_split(dataset_names(folder))
        names = held_out if subset == "heldout" else tuning
    return evaluate_segmentation_dir(folder, segmenter, names)


def _result_table(title: str, result: dict):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    if result["layout"] == "masks":
        table.add_column("measure")
        table.add_column("nucleus", justify="right")
        table.add_column("whole cell", justify="right")
        table.add_row("Dice", f"{result['nucleus_dice']:.4f}", f"{result['cell_dice']:.4f}")
        table.add_row("IoU", f"{result['nucleus_iou']:.4f}", f"{result['cell_iou']:.4f}")
        table.caption = (
            f"{result['images']} images, {result['images_without_wbc']} without a white cell found, "
            f"{result['skipped']} skipped, {result['ms_per_image']:.0f} ms per image"
        )
    else:
        for column in ("class", "prec.", "recall", "F1", "TP", "FP", "FN", "count MAE", "exact"):
            table.add_column(column, justify="left" if column == "class" else "right", no_wrap=True)
        for name, s in result["per_class"].items():
            table.add_row(
                name,
                f"{s['precision']:.3f}",
                f"{s['recall']:.3f}",
                f"{s['f1']:.3f}",
                str(s["tp"]),
                str(s["fp"]),
                str(s["fn"]),
                f"{s['count_mae']:.2f}",
                f"{s['exact_count_rate']:.2f}",
            )
        table.caption = (
            f"{result['images']} images, {result['skipped']} skipped, {result['dropped_boxes']} degenerate boxes "
            f"left out, {result['ms_per_image']:.0f} ms per image"
        )
    table.caption_justify = "left"
    return table


def train_segmentation(
    wbcseg: Annotated[
        Optional[Path],
        typer.Option(help="Masks-layout dataset folder, or a folder of them (such as wbcseg/ with dataset1/, dataset2/)."),
    ] = None,
    bccd: Annotated[Optional[Path], typer.Option(help="Boxes-layout (Pascal VOC) dataset folder.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Model folder to write.")] = Path("runs/unet"),
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs.")] = None,
    steps_per_epoch: Annotated[Optional[int], typer.Option(help="Optimiser steps per epoch.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Patches per step.")] = None,
    size: Annotated[Optional[int], typer.Option("--size", help="Patch side in pixels (multiple of 8).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the weights and the patches.")] = None,
    evaluate: Annotated[
        bool, typer.Option("--evaluate/--no-evaluate", help="Score the held-out parts into metrics.json.")
    ] = True,
):
    """Train the U-Net segmenter and save a model folder for --segmenter unet --segmentation-model.

    Give --wbcseg, --bccd or both. With the wbcseg and BCCD data sets and no other option this
    reproduces the packaged default model. Each dataset's held-out part (30% of its images, chosen
    by a hash of the image name) never trains and is scored at the end.
    """
    if wbcseg is None and bccd is None:
        raise fail("train-segmentation needs training data: give --wbcseg DIR, --bccd DIR or both")
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from smearflow.datasets import find_datasets
    from smearflow.evaluation.heldout import evaluate_heldout
    from smearflow.segmentation.unet import update_unet_metrics
    from smearflow.segmentation.unet.training import UNetTrainConfig, train_unet

    overrides = {
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": batch_size,
        "input_size_px": size,
        "seed": seed,
    }
    try:
        config = UNetTrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
        mask_dirs = find_datasets(wbcseg, "masks") if wbcseg is not None else []
        box_dirs = find_datasets(bccd, "boxes") if bccd is not None else []
    except (PermanentError, ValueError) as error:
        raise fail(str(error)) from None
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    try:
        with Progress(*columns, console=stderr_console()) as progress:
            task = progress.add_task("training U-Net", total=config.epochs * config.steps_per_epoch)

            def on_step(step: int, total: int, loss: float) -> None:
                progress.update(task, completed=step, description=f"training U-Net loss {loss:.3f}")

            folder = train_unet(out, mask_dirs=mask_dirs, box_dirs=box_dirs, config=config, on_step=on_step)
        if evaluate:
            folder = update_unet_metrics(folder, evaluate_heldout(folder))
    except (PermanentError, ValueError) as error:
        raise fail(str(error)) from None
    metrics = folder.metrics
    console = stdout_console()
    console.print(
        f"saved {folder.path}: {metrics['steps']} steps in {metrics['train_seconds']:.0f} s, "
        f"final loss {metrics['final_loss']:.4f}",
        highlight=False,
    )
    for name, result in metrics.get("heldout", {}).items():
        diameter = result["rbc_diameter_px"]
        console.print(_result_table(f"{name}: held-out part, red-cell diameter {diameter}", result))
