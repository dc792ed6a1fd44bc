"""Training commands: ``train``, ``benchmark`` and ``evaluate-classifier``."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from smearflow.commands.common import DatabaseUrl, JsonFlag, ModelDir, PrecisionOption, stderr_console, stdout_console

logger = logging.getLogger(__name__)

WeightsOption = Annotated[
    Optional[str],
    typer.Option(
        "--weights",
        help="Local ImageNet weights: imagenet=FOLDER (Keras' standard notop file names, e.g. ~/.keras/models) "
        "and/or per backbone, e.g. inceptionv3=FILE,xception=FILE. Default: train from scratch.",
    ),
]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``smearflow`` app."""
    app.command()(train)
    app.command("train-default")(train_default)
    app.command()(benchmark)
    app.command("evaluate-classifier")(evaluate_classifier)


def parse_weights(text: str | None) -> dict[str, str]:
    """``"imagenet=DIR"`` or ``"inceptionv3=FILE,xception=FILE"`` → ``{name: path}``.

    Raises
    ------
    typer.BadParameter
        For an item without ``=`` or a name given twice.
    """
    weights: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise typer.BadParameter(f"expected NAME=PATH items separated by commas. Received: {item!r}")
        if name.strip() in weights:
            raise typer.BadParameter(f"weights for {name.strip()!r} given twice")
        weights[name.strip()] = path.strip()
    return weights


def parse_names(text: str) -> tuple[str, ...]:
    """``"cnn,hybrid"`` → ``("cnn", "hybrid")``; ``"all"`` → every registered architecture."""
    from smearflow.training.architectures import ARCHITECTURES

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if names == ("all",):
        return tuple(ARCHITECTURES)
    return names


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """``"1,2,3"`` → ``(1, 2, 3)``.

    Raises
    ------
    typer.BadParameter
        For an item that is not an integer.
    """
    try:
        return tuple(int(n) for n in text.split(",") if n.strip())
    except ValueError:
        raise typer.BadParameter(f"{option} takes integers separated by commas. Received: {text!r}") from None


def _fail(error: Exception) -> None:
    stderr_console().print(f"[red]error:[/red] {error}", highlight=False)
    raise typer.Exit(code=1)


def train(
    data: Annotated[Path, typer.Option("--data", help="Class-folder dataset (the PBC layout).")],
    out: Annotated[Path, typer.Option("--out", help="Model folder to write.")] = Path("runs/default-cnn"),
    arch: Annotated[str, typer.Option("--arch", help="Architecture name from the registry.")] = "cnn",
    image_size: Annotated[Optional[int], typer.Option(help="Input size in pixels.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed of weights and augmentation (and splits).")] = None,
    split_seed: Annotated[
        Optional[int], typer.Option(help="Seed of the test and validation splits (default: --seed).")
    ] = None,
    learning_rate: Annotated[Optional[float], typer.Option(help="Initial learning rate.")] = None,
    weights: WeightsOption = None,
    freeze_backbone_epochs: Annotated[
        Optional[int], typer.Option(help="Epochs with frozen backbones (head only); >= epochs: head only throughout.")
    ] = None,
    fine_tune_learning_rate: Annotated[
        Optional[float], typer.Option(help="Learning rate after the frozen epochs (default learning rate / 10).")
    ] = None,
    class_weight: Annotated[
        Optional[str], typer.Option(help="prior (keep the dataset's class shares), balanced or none.")
    ] = None,
    augmentation: Annotated[Optional[str], typer.Option(help="domain or basic.")] = None,
    augment_strength: Annotated[Optional[float], typer.Option(help="Scales the domain augmentation.")] = None,
    validation_fraction: Annotated[
        Optional[float], typer.Option(help="Share of the training part kept to fit temperature and threshold.")
    ] = None,
    tta: Annotated[Optional[str], typer.Option("--tta", help="Test-time views: none, flips or dihedral.")] = None,
    init_model: Annotated[
        Optional[Path], typer.Option(help="Model folder to start from (fine-tuning); same architecture and size.")
    ] = None,
    extra_data: Annotated[
        Optional[Path], typer.Option(help="Class folders added to the training images only (e.g. export-crops).")
    ] = None,
    extra_repeat: Annotated[Optional[int], typer.Option(help="Times each extra image is seen per epoch.")] = None,
    checkpoint: Annotated[
        Optional[Path],
        typer.Option(help="Save every epoch here; the same command resumes after the last saved epoch."),
    ] = None,
):
    """Train a classifier and save it as a model folder usable by ``analyze --model``.

    With no options this trains the base of the packaged default model
    (``train-default`` runs the whole recipe).
    """
    from smearflow.errors import SmearflowError
    from smearflow.training.train import TrainConfig, train_classifier

    overrides = {
        "image_size": image_size,
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "split_seed": split_seed,
        "learning_rate": learning_rate,
        "freeze_backbone_epochs": freeze_backbone_epochs,
        "fine_tune_learning_rate": fine_tune_learning_rate,
        "weights": parse_weights(weights) or None,
        "class_weight": class_weight,
        "init_model": None if init_model is None else str(init_model),
        "extra_data": None if extra_data is None else str(extra_data),
        "extra_repeat": extra_repeat,
        "augmentation": augmentation,
        "augment_strength": augment_strength,
        "validation_fraction": validation_fraction,
        "test_time_augmentation": tta,
    }
    try:
        from smearflow.training.architectures import get_architecture

        get_architecture(arch)
        config = TrainConfig.from_dict({"architecture": arch} | {k: v for k, v in overrides.items() if v is not None})
        folder = _with_epoch_progress(
            f"training {arch}",
            config.total_epochs(),
            lambda report: train_classifier(data, out, config, on_epoch_end=report, checkpoint_dir=checkpoint),
        )
    except (SmearflowError, ValueError, FileNotFoundError) as error:
        _fail(error)
    _print_saved(folder)


def train_default(
    data: Annotated[Path, typer.Option("--data", help="Class-folder dataset (the PBC layout).")],
    fields: Annotated[
        Optional[Path], typer.Option(help="Whole-field images whose white-cell crops are mixed into training.")
    ] = None,
    field_labels: Annotated[
        Optional[Path], typer.Option(help="CSV naming each field image's white-cell class.")
    ] = None,
    label_column: Annotated[str, typer.Option(help="Column of --field-labels with the class.")] = "label",
    image_column: Annotated[str, typer.Option(help="Column of --field-labels with the image file name.")] = "image",
    seed: Annotated[
        Optional[int], typer.Option(help="Training seed (weights, augmentation, order); the splits keep theirs.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the stages (field-crops/, model/).")] = Path(
        "runs/default"
    ),
):
    """Train the default model as the packaged one was made: field crops mixed into one training run.

    The model folder is OUT/model. The test and validation splits are those of the packaged
    model (split seed 20261125) whatever --seed is. Every epoch is saved in OUT/checkpoint:
    after an interruption, the same command resumes after the last saved epoch.
    """
    from smearflow.errors import SmearflowError
    from smearflow.training.recipe import DEFAULT_RECIPE, train_default_model

    if (fields is None) != (field_labels is None):
        raise typer.BadParameter("give both --fields and --field-labels, or neither")
    config = DEFAULT_RECIPE
    if seed is not None:
        config = replace(config, seed=seed, split_seed=config.splits_seed)
    try:
        folder = _with_epoch_progress(
            "training the default model",
            config.total_epochs(),
            lambda report: train_default_model(
                data, out, field_images=fields, field_labels=field_labels, config=config, on_epoch_end=report,
                columns=(image_column, label_column),
            ),
        )
    except (SmearflowError, ValueError, FileNotFoundError) as error:
        _fail(error)
    _print_saved(folder)


def _with_epoch_progress(label: str, total: int, run):
    """``run(on_epoch_end)`` under a progress bar that advances one step per epoch, over all stages.

    When stderr is not a terminal (a log file, a service), each epoch is one plain line instead, so a
    run of an hour or more shows where it is.
    """
    from rich.progress import Progress

    console = stderr_console()
    if not console.is_terminal:

        def log_epoch(epoch, logs):
            figures = " ".join(f"{name} {value:.4f}" for name, value in sorted(logs.items()))
            console.print(f"{label}: epoch {epoch + 1}/{total} {figures}", soft_wrap=True)

        return run(log_epoch)
    with Progress(console=console) as progress:
        task = progress.add_task(label, total=total)

        def on_epoch_end(epoch, logs):
            # ``epoch`` counts over all stages, and a resumed run starts past 0.
            progress.update(task, completed=epoch + 1, description=f"{label} loss {logs.get('loss', 0):.3f}")

        return run(on_epoch_end)


def _print_saved(folder) -> None:
    metrics = folder.metrics
    console = stdout_console()
    console.print(
        f"saved {folder.path}: test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
        f"on {metrics['test_images']} held-out images; trained in {metrics['train_seconds']:.0f} s"
    )
    views = metrics["validation"]["test_time_augmentation"]
    console.print(
        "validation accuracy by test-time views: "
        + ", ".join(f"{name} {figures['accuracy']:.4f} ({figures['seconds']:.1f} s)" for name, figures in views.items())
    )


def benchmark(
    data: Annotated[Path, typer.Option("--data", help="Class-folder dataset (the PBC layout). Required.")],
    preset: Annotated[
        Optional[str],
        typer.Option("--preset", help="Named settings, e.g. cpu (all ten architectures sized for a 2-core CPU host); "
                     "options given beside it override them."),
    ] = None,
    archs: Annotated[Optional[str], typer.Option("--archs", help="Architectures, comma-separated, or 'all' [all].")] = None,
    folds: Annotated[Optional[int], typer.Option(help="Stratified cross-validation folds [5].")] = None,
    image_size: Annotated[
        Optional[int], typer.Option(help="Input size in pixels (inceptionv3/hybrid need 75, xception 71) [224].")
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Most training epochs per fold [28].")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step [64].")] = None,
    patience: Annotated[
        Optional[int], typer.Option(help="Stop a fold when validation accuracy has not improved for this many epochs.")
    ] = None,
    time_budget: Annotated[
        Optional[float], typer.Option("--time-budget", help="Training seconds per architecture, shared by its folds.")
    ] = None,
    weights: WeightsOption = None,
    freeze_backbone_epochs: Annotated[Optional[int], typer.Option(help="Epochs with frozen backbones (head only) [0].")] = None,
    fine_tune_learning_rate: Annotated[
        Optional[float], typer.Option(help="Learning rate after the frozen epochs (default learning rate / 10).")
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", help="Run folder (default runs/benchmark-<image size>px-<epochs>ep).")
    ] = None,
    subset: Annotated[Optional[int], typer.Option("--subset", help="At most N images per class (a reduced run).")] = None,
    smote: Annotated[Optional[bool], typer.Option("--smote/--no-smote", help="Also report SMOTE-refitted heads [on].")] = None,
    seeds: Annotated[
        Optional[str], typer.Option("--seeds", help="Seeds, comma-separated: one cross-validation each [20261125].")
    ] = None,
    split_seed: Annotated[Optional[int], typer.Option(help="Seed of the subset and of the held-out test split.")] = None,
    test_fraction: Annotated[Optional[float], typer.Option(help="Share of images held out for the final test [0.15].")] = None,
    arch_params: Annotated[
        Optional[str], typer.Option(help='Builder parameters as JSON, e.g. \'{"cnn": {"filters": [16, 32]}}\'.')
    ] = None,
    promote: Annotated[
        bool,
        typer.Option("--promote", help="Train the winner on the whole dataset and send it through the retraining "
                     "gate: it becomes the active model only if it beats the one in use (needs a database)."),
    ] = False,
    models_dir: Annotated[
        Path, typer.Option("--models-dir", help="Where a promoted candidate's model folder is written.")
    ] = Path("models"),
    database_url: DatabaseUrl = None,
):
    """Benchmark architectures with stratified k-fold CV, SMOTE and a held-out test split.

    Writes results.json, results.csv, report.md and plots to the run folder. Running the same
    command again resumes an interrupted run: finished folds are read back, not retrained.
    With a database URL (--database-url or SMEARFLOW_DATABASE_URL) the run and one row per
    architecture and fold are recorded there too.
    """
    from smearflow.errors import SmearflowError

    given = {
        "architectures": parse_names(archs) if archs else None, "folds": folds, "image_size": image_size,
        "epochs": epochs, "batch_size": batch_size, "seeds": parse_ints(seeds, "--seeds") if seeds else None,
        "split_seed": split_seed, "test_fraction": test_fraction, "subset_per_class": subset, "smote": smote,
        "weights": parse_weights(weights) or None, "freeze_backbone_epochs": freeze_backbone_epochs,
        "fine_tune_learning_rate": fine_tune_learning_rate, "arch_params": _json_option(arch_params, "--arch-params"),
        "patience": patience, "time_budget_s": time_budget,
    }
    try:
        config = benchmark_config(preset, {k: v for k, v in given.items() if v is not None})
    except ValueError as error:
        _fail(error)
    if promote and not database_url:
        _fail(ValueError("--promote needs a database (--database-url or SMEARFLOW_DATABASE_URL)"))
    out = out or Path("runs") / f"benchmark-{config.image_size}px-{config.epochs}ep"
    try:
        results = _run_with_progress(data, out, config, database_url)
    except (SmearflowError, ValueError, FileNotFoundError) as error:
        _fail(error)
    _print_summary(results)
    if promote:
        _promote(results, config, data, models_dir, database_url)


def benchmark_config(preset: str | None, given: dict):
    """The benchmark settings: a named preset (or the defaults) with the options given applied.

    Raises
    ------
    ValueError
        For an unknown preset or settings a :class:`BenchmarkConfig` refuses.
    """
    from smearflow.training.benchmark import BenchmarkConfig, preset_config

    return preset_config(preset, **given) if preset else BenchmarkConfig.from_dict(given)


def _json_option(text: str | None, option: str):
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError as error:
        raise typer.BadParameter(f"{option} is not valid JSON ({error}). Received: {text!r}") from None


def _run_with_progress(data: Path, out: Path, config, database_url: str | None):
    """Run the benchmark under a progress bar, recording it in the database when a URL is given."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from smearflow.training.benchmark import run_benchmark
    from smearflow.worker.rebenchmark import finished_so_far

    recorder = _start_recorder(database_url, config, out) if database_url else None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr_console()) as progress:
        try:
            results = run_benchmark(data, out, config, callbacks=_ProgressCallbacks(progress, recorder))
        except BaseException as error:
            progress.stop()
            if recorder is not None:
                recorder.finish("failed", error, finished_so_far(out))
            raise
    if recorder is not None:
        recorder.finish("done", None, results)
    return results


def _print_summary(results) -> None:
    from rich.table import Table

    table = Table(title=f"benchmark in {results.run_folder}", title_justify="left")
    columns = ("architecture", "runs", "epochs run", "val accuracy", "val macro-F1", "ensemble test accuracy",
               "SMOTE val macro-F1")
    for column in columns:
        table.add_column(column, justify="left" if column == "architecture" else "right")

    def pct(stat):
        if not stat or stat.get("mean") is None:
            return "–"
        return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"

    for name, summary in results.architectures.items():
        network = summary.variants["network"]
        table.add_row(
            name,
            str(summary.runs),
            ", ".join(str(n) for n in summary.epochs_run),
            pct(network["validation"]["accuracy"]),
            pct(network["validation"]["macro_f1"]),
            pct(summary.ensemble_test.get("network", {}).get("accuracy")),
            pct(summary.variants.get("smote", {}).get("validation", {}).get("macro_f1")),
        )
    console = stdout_console()
    console.print(table)
    console.print(f"report: {Path(results.run_folder) / 'report.md'}")


class _ProgressCallbacks:
    """Rich progress over the epochs still to train; forwards fold results to the database recorder."""

    def __init__(self, progress, recorder):
        self.progress = progress
        self.recorder = recorder
        self.task_id = None
        self.done_epochs = 0
        self.total = 1

    def on_start(self, plan, run_folder):
        pending = [t for t in plan if not t.done]
        total = sum(t.epochs for t in pending)
        resumed = len(plan) - len(pending)
        description = f"benchmark ({resumed} fold(s) resumed)" if resumed else "benchmark"
        self.total = max(total, 1)
        self.task_id = self.progress.add_task(description, total=self.total)

    def on_epoch_end(self, task, epoch, logs):
        self.done_epochs += 1
        self.progress.update(
            self.task_id,
            completed=self.done_epochs,
            description=f"{task.label} epoch {epoch + 1}/{task.epochs} loss {logs.get('loss', float('nan')):.3f}",
        )

    def on_fold_end(self, task, entry, resumed):
        if self.recorder is not None:
            self.recorder.on_fold_end(task, entry, resumed)

    def on_end(self, results):
        self.progress.update(self.task_id, completed=self.total, description="benchmark done")
        if self.recorder is not None:
            self.recorder.on_end(results)


def _start_recorder(database_url: str, config, run_folder: Path):
    """Start a database run for this run folder and return its recorder.

    A resumed run folder gets a new database run holding every fold (read
    back or trained); the interrupted one, still ``running`` after a hard
    kill, is marked failed through the folder's ``database_run.json``.
    """
    from smearflow.commands.common import open_database
    from smearflow.db import repository, session_scope
    from smearflow.db.models import BenchmarkRun
    from smearflow.worker.rebenchmark import BenchmarkRecorder

    _, factory = open_database(database_url)
    marker = Path(run_folder) / "database_run.json"
    with session_scope(factory) as session:
        if marker.is_file():
            previous = session.get(BenchmarkRun, json.loads(marker.read_text()).get("run_id"))
            if previous is not None and previous.status == "running":
                repository.finish_benchmark_run(session, previous, status="failed", error="interrupted; resumed as a new run")
        run = repository.start_benchmark_run(
            session, f"benchmark {', '.join(config.architectures)}", config=config.to_dict(),
            run_folder=str(Path(run_folder).resolve()),
        )
        run_id = run.id
    Path(run_folder).mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"run_id": run_id}) + "\n")
    return BenchmarkRecorder(factory, run_id)


def _promote(results, config, data: Path, models_dir: Path, database_url: str) -> None:
    """Send the benchmark's winner through the retraining gate and say what the gate decided."""
    from smearflow.commands.common import open_database
    from smearflow.errors import SmearflowError
    from smearflow.worker.rebenchmark import promote_winner

    _, factory = open_database(database_url)
    try:
        outcome = promote_winner(factory, results, config, data_dir=data, models_dir=models_dir)
    except (SmearflowError, ValueError) as error:
        _fail(error)
    stdout_console().print(f"promotion: {outcome.outcome}: {outcome.reason}", highlight=False)


def evaluate_classifier(
    data: Annotated[Path, typer.Argument(help="Class-folder dataset to score the classifier on.")],
    model: ModelDir = None,
    as_json: JsonFlag = False,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    split: Annotated[
        Optional[str], typer.Option(help="Score only this list of the model's splits.json (e.g. test).")
    ] = None,
    plots: Annotated[
        Optional[Path], typer.Option("--plots", help="Write confusion_matrix.png and reliability.png here.")
    ] = None,
    precision: PrecisionOption = "float32",
):
    """Score a classifier model folder on a class-folder dataset.

    Prints per-class figures, the confusion matrix and the expected calibration error (15 bins)
    of the calibrated probabilities. Data folders that are not model classes and unreadable
    images are skipped and reported; model classes without a folder are reported and left out
    of the macro averages.
    """
    from smearflow.classifier.classifier import Classifier
    from smearflow.errors import SmearflowError
    from smearflow.evaluation.classifier import evaluate_classifier as evaluate

    try:
        classifier = Classifier.load(model, precision=precision)
        only = None if split is None else _split_names(classifier.folder.path, split)
        result = evaluate(classifier, data, batch_size=batch_size, only=only)
    except (SmearflowError, ValueError) as error:
        _fail(error)
    result["precision"] = precision
    if split is not None:
        result["split"] = split
    if plots is not None:
        result["plots"] = write_evaluation_plots(result, plots, f"{result['model_version']} on {Path(data).name}")
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    _print_evaluation(result)


def _split_names(model_dir: Path, split: str) -> list[str]:
    """The image names of one list (``train``, ``test`` …) of a model folder's ``splits.json``."""
    from smearflow.errors import BadModelError

    path = Path(model_dir) / "splits.json"
    if not path.is_file():
        raise BadModelError(f"{path}: the model folder has no splits.json")
    names = json.loads(path.read_text()).get(split)
    if not isinstance(names, list):
        raise BadModelError(f"{path}: no list named {split!r}")
    return names


def write_evaluation_plots(result: dict, folder: Path, title: str) -> list[str]:
    """``confusion_matrix.png`` and, when ``result`` has calibration bins, ``reliability.png`` in ``folder``."""
    from smearflow.training.reports import plot_confusion_matrix, plot_reliability

    written = [plot_confusion_matrix(result["confusion_matrix"], result["classes"], folder / "confusion_matrix.png", title)]
    if result.get("calibration"):
        written.append(plot_reliability(result["calibration"], folder / "reliability.png", title))
    return [str(path) for path in written]


def per_class_table(title: str, per_class: dict):
    """A rich table of precision, recall, F1 and support per class (figures in %)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("class", "precision", "recall", "F1", "images"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, figures in per_class.items():
        table.add_row(
            name,
            f"{100 * figures['precision']:.1f}",
            f"{100 * figures['recall']:.1f}",
            f"{100 * figures['f1']:.1f}",
            str(figures["support"]),
        )
    return table


def confusion_table(title: str, matrix, row_classes, column_classes=None):
    """A rich table of a confusion matrix: rows true classes, columns predicted ones."""
    from rich.table import Table

    column_classes = row_classes if column_classes is None else column_classes
    table = Table(title=title, title_justify="left")
    table.add_column("true \\ predicted")
    for name in column_classes:
        table.add_column(name[:5], justify="right")
    for name, row in zip(row_classes, matrix):
        table.add_row(name, *(str(int(n)) if n else "·" for n in row))
    return table


def _print_evaluation(result: dict) -> None:
    console = stdout_console()
    title = (
        f"{result['model_version']} on {result['dataset']}: {result['images']} images, "
        f"accuracy {100 * result['accuracy']:.2f}%, macro-F1 {100 * result['macro_f1']:.2f}%"
    )
    console.print(per_class_table(title, result["per_class"]))
    console.print(confusion_table("confusion matrix", result["confusion_matrix"], result["classes"]))
    calibration, confidence = result["calibration"], result["confidence"]
    kept = "-" if confidence["accuracy_kept"] is None else f"{100 * confidence['accuracy_kept']:.2f}%"
    console.print(
        f"ECE ({calibration['n_bins']} bins) {calibration['ece']:.4f} at temperature {confidence['temperature']:.3f}"
        f" (test-time views: {confidence['test_time_augmentation']}); "
        f"threshold {confidence['confidence_threshold']:.2f} keeps {100 * confidence['coverage']:.1f}% "
        f"of images at {kept} accuracy, {confidence['uncertain']} uncertain",
        highlight=False,
    )
    for path in result.get("plots", ()):
        console.print(f"wrote {path}", highlight=False)
    skipped = result["skipped"]
    if skipped["unreadable_images"]:
        console.print(f"skipped {skipped['unreadable_images']} unreadable image(s)")
    if skipped["data_classes_not_in_model"]:
        console.print(f"ignored data folders that are not model classes: {skipped['data_classes_not_in_model']}")
    if skipped["model_classes_without_data"]:
        console.print(f"model classes without data (left out of the averages): {skipped['model_classes_without_data']}")
