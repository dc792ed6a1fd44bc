"""Training commands: ``train`` (and later the benchmark and classifier evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from smearflow.commands.common import stderr_console, stdout_console


def register(app: typer.Typer) -> None:
    app.command()(train)


def train(
    data: Annotated[Path, typer.Option("--data", help="Class-folder dataset (the PBC layout).")] = Path(
        "../shared/data/pbc"
    ),
    out: Annotated[Path, typer.Option("--out", help="Model folder to write.")] = Path("runs/default-cnn"),
    arch: Annotated[str, typer.Option("--arch", help="Architecture name from the registry.")] = "cnn",
    image_size: Annotated[Optional[int], typer.Option(help="Input size in pixels.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed of split, weights and augmentation.")] = None,
):
    """Train a classifier and save it as a model folder usable by ``analyze --model``.

    With no options this reproduces the packaged default model.
    """
    from rich.progress import Progress

    from smearflow.training.train import TrainConfig, train_classifier

    overrides = {"image_size": image_size, "epochs": epochs, "batch_size": batch_size, "seed": seed}
    config = TrainConfig.from_dict(
        {"architecture": arch} | {k: v for k, v in overrides.items() if v is not None}
    )
    with Progress(console=stderr_console()) as progress:
        task = progress.add_task(f"training {arch}", total=config.epochs)

        def on_epoch_end(epoch, logs):
            progress.update(task, completed=epoch + 1, description=f"training {arch} loss {logs.get('loss', 0):.3f}")

        folder = train_classifier(data, out, config, on_epoch_end=on_epoch_end)
    metrics = folder.metrics
    stdout_console().print(
        f"saved {folder.path}: test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
        f"on {metrics['test_images']} held-out images"
    )
