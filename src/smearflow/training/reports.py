"""Benchmark reports: plots (matplotlib, Agg), CSV rows and the Markdown table.

Everything here draws or formats what it is given; the benchmark decides
what to compute and where the files go.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from smearflow.training.results import ArchitectureSummary, BenchmarkResults

SUMMARY_METRICS = (
    "accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "weighted_precision",
    "weighted_recall",
    "weighted_f1",
    "roc_auc_macro_ovr",
)
"""The scalar figures that are averaged over folds and written to CSV."""

REFERENCE_TEST_ACCURACY = 0.9851
"""The reference study's best: InceptionV3 + Xception hybrid, 8-class PBC test accuracy."""


def _save(figure, path: str | Path) -> Path:
    """Lay out ``figure`` and write it to ``path`` (parent folders made)."""
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def plot_confusion_matrix(matrix, classes, path: str | Path, title: str) -> Path:
    """Save a confusion matrix (rows true, columns predicted) with its counts as a PNG.

    Parameters
    ----------
    matrix : array-like of shape (k, k), int
    classes : sequence of str, length k
    path : str or Path
        The PNG to write.
    title : str

    Raises
    ------
    ValueError
        When the matrix is not ``(k, k)`` for the ``k`` classes.
    """
    matrix = np.asarray(matrix)
    k = len(classes)
    if matrix.shape != (k, k):
        raise ValueError(f"matrix must have shape ({k}, {k}) for {k} classes. Received: shape={matrix.shape}")
    size = 1.2 + 0.65 * k
    figure = _figure(size + 1.0, size)
    axes = figure.add_subplot()
    row_sums = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, row_sums, out=np.zeros(matrix.shape, dtype=float), where=row_sums > 0)
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    for i in range(k):
        for j in range(k):
            axes.text(
                j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=8,
                color="white" if shares[i, j] > 0.5 else "black",
            )
    axes.set_xticks(range(k), classes, rotation=45, ha="right")
    axes.set_yticks(range(k), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=10)
    return _save(figure, path)


def plot_reliability(calibration: dict, path: str | Path, title: str) -> Path:
    """Save a reliability diagram: accuracy against mean confidence per bin, with the diagonal.

    Parameters
    ----------
    calibration : dict
        From :func:`smearflow.evaluation.metrics.expected_calibration_error`
        (``bins``, ``n_bins``, ``ece``).
    path : str or Path
        The PNG to write.
    title : str

    Raises
    ------
    ValueError
        When ``calibration`` has no ``bins`` list.
    """
    bins = calibration.get("bins") if isinstance(calibration, dict) else None
    if not isinstance(bins, list):
        raise ValueError(f"calibration must hold a list of bins. Received keys: {sorted(calibration or {})}")
    figure = _figure(5.0, 5.0)
    axes = figure.add_subplot()
    width = 1.0 / calibration.get("n_bins", 15)
    centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
    axes.bar(centres, [b["accuracy"] for b in bins], width=width * 0.95, color="#4c72b0", label="accuracy")
    axes.bar(
        centres,
        [b["confidence"] - b["accuracy"] for b in bins],
        bottom=[b["accuracy"] for b in bins],
        width=width * 0.95,
        color="#dd8452",
        alpha=0.5,
        label="gap to mean confidence",
    )
    for centre, b in zip(centres, bins):
        axes.text(centre, 0.02, str(b["images"]), ha="center", va="bottom", fontsize=6, rotation=90, color="white")
    axes.plot([0, 1], [0, 1], color="black", linewidth=1, linestyle="--", label="perfect calibration")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence (top probability)")
    axes.set_ylabel("accuracy")
    axes.set_title(f"{title}\nECE ({calibration.get('n_bins', 15)} bins) = {calibration.get('ece', float('nan')):.4f}", fontsize=9)
    axes.legend(loc="upper left", fontsize=8)
    return _save(figure, path)


def plot_training_curves(histories: dict[str, list[dict]], path: str | Path, title: str) -> Path:
    """Save loss and accuracy per epoch, one line per run, as a PNG.

    Parameters
    ----------
    histories : dict of str to list of dict
        Run label → epoch rows (``epoch``, ``stage``, ``loss``, ``accuracy`` …,
        as :class:`~smearflow.training.train.HistoryRecorder` records them).
        A contrastive stage's loss is drawn dashed (another loss scale).
    path : str or Path
    title : str
    """
    figure = _figure(10, 3.8)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for index, (label, rows) in enumerate(histories.items()):
        color = f"C{index % 10}"
        for stage in dict.fromkeys(row.get("stage", "train") for row in rows):
            stage_rows = [row for row in rows if row.get("stage", "train") == stage]
            epochs = [row["epoch"] + 1 for row in stage_rows]
            style = "--" if stage == "contrastive" else "-"
            first = stage == rows[0].get("stage", "train")
            if any("loss" in row for row in stage_rows):
                loss_axes.plot(epochs, [row.get("loss", np.nan) for row in stage_rows], style, color=color,
                               label=label if first else None)
            if any("accuracy" in row for row in stage_rows):
                accuracy_axes.plot(epochs, [row.get("accuracy", np.nan) for row in stage_rows], style, color=color)
    from matplotlib.ticker import MaxNLocator

    for axes in (loss_axes, accuracy_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("training loss")
    accuracy_axes.set_xlabel("epoch")
    accuracy_axes.set_ylabel("training accuracy (augmented)")
    if histories:
        loss_axes.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    return _save(figure, path)


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """Write dict rows as CSV; the columns are the union of keys, in first-seen order."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    path = Path(path)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def mean_std(values) -> dict:
    """``{"mean", "std", "n"}`` of the finite values (sample std, 0 for one value); None means when empty."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(values) == 0:
        return {"mean": None, "std": None, "n": 0}
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "n": len(values)}


def _pct(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    if stat.get("n", 1) > 1:
        return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"
    return f"{100 * stat['mean']:.2f}"


def render_report(results: BenchmarkResults) -> str:
    """The Markdown report of a benchmark: protocol, comparison table, SMOTE effect, plots.

    Parameters
    ----------
    results : BenchmarkResults
        The content of ``results.json``.
    """
    lines = _protocol_lines(results) + _comparison_lines(results)
    if results.config["smote"]:
        lines += _smote_lines(results)
    if len(results.config["seeds"]) > 1:
        lines += _seed_lines(results)
    lines += ["", "## Plots", ""]
    for name, summary in results.architectures.items():
        links = ", ".join(f"[{label}]({path})" for label, path in summary.plots.items())
        lines.append(f"- {name}: {links}")
    lines.append("")
    lines.append(f"Per-fold figures: `results.json` and `results.csv`; splits: `splits.json`. {results.finished_note}")
    return "\n".join(lines) + "\n"


def _protocol_lines(results: BenchmarkResults) -> list[str]:
    config = results.config
    smote_note = "; SMOTE on penultimate-layer embeddings of each training fold, softmax head refitted"
    trained = config.get("folds_trained") or {}
    single = f"; only the first fold of {', '.join(trained)}" if trained else ""
    stopping = (
        (f"; early stopping on validation accuracy, patience {config['patience']}" if config.get("patience") else "")
        + (f"; {config['time_budget_s']:.0f} s of training per architecture" if config.get("time_budget_s") else "")
        + "".join(f", {name} {seconds:.0f} s" for name, seconds in (config.get("time_budgets_s") or {}).items())
    )
    return [
        "# Classifier benchmark",
        "",
        f"- data: `{results.data}`, {len(results.classes)} classes ({', '.join(results.classes)})",
        f"- images: {results.images['total']} used"
        + (f" (at most {config['subset_per_class']} per class)" if config.get("subset_per_class") else "")
        + f"; held-out test split {results.images['test']} images "
        f"({config['test_fraction']:.0%}, stratified, seed {config['split_seed']}), never used for training or SMOTE",
        f"- protocol: stratified {config['folds']}-fold cross-validation of the other {results.images['train']} "
        f"images, seeds {', '.join(str(s) for s in config['seeds'])}{single}; every fold model is also scored on "
        "the test split, and the fold models' mean probabilities give the fold-ensemble test figure",
        f"- training: at most {config['epochs']} epochs per fold{stopping}",
        f"- class imbalance: class weights ({config['class_weight']})" + (smote_note if config["smote"] else ""),
        f"- weights: {', '.join(f'{k}={v}' for k, v in config['weights'].items()) or 'none (trained from scratch)'}"
        + (f"; backbones frozen for {frozen} epoch(s)" if (frozen := config["freeze_backbone_epochs"]) else ""),
        "- figures: mean ± sample std over folds (and seeds), in %",
        "",
        "| architecture | image size | epochs | runs | val accuracy | val macro-F1 | test accuracy | test macro-F1 "
        "| fold-ensemble test accuracy | SMOTE val accuracy | SMOTE val macro-F1 | SMOTE test accuracy | s / fold "
        "| parameters | stopped | machine |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]


def _comparison_lines(results: BenchmarkResults) -> list[str]:
    lines, best = [], None
    for name, summary in results.architectures.items():
        network = summary.variants.get("network", {})
        smote = summary.variants.get("smote", {})
        cells = [
            name, str(summary.image_size), _epochs(summary), str(summary.runs),
            _pct(network.get("validation", {}).get("accuracy")), _pct(network.get("validation", {}).get("macro_f1")),
            _pct(network.get("test", {}).get("accuracy")), _pct(network.get("test", {}).get("macro_f1")),
            _pct(summary.ensemble_test.get("network", {}).get("accuracy")),
            _pct(smote.get("validation", {}).get("accuracy")), _pct(smote.get("validation", {}).get("macro_f1")),
            _pct(smote.get("test", {}).get("accuracy")),
            f"{summary.seconds_per_fold['mean']:.0f}" if summary.seconds_per_fold["mean"] else "–",
            f"{summary.params / 1e6:.1f} M" if summary.params else "–",
            "; ".join(f"{reason} ×{n}" for reason, n in summary.stop_reasons.items()) or "–",
            "; ".join(summary.machines),
        ]
        lines.append("| " + " | ".join(cells) + " |")
        for variant, stats in summary.ensemble_test.items():
            accuracy = stats.get("accuracy", {}).get("mean")
            if accuracy is not None and (best is None or accuracy > best[0]):
                best = (accuracy, name, variant)
    lines += [
        "",
        f"Reference: InceptionV3 + Xception hybrid, {100 * REFERENCE_TEST_ACCURACY:.2f}% test accuracy "
        "(8-class PBC; ImageNet weights, 224 px, 5-fold CV and a 70/30 split, SMOTE).",
    ]
    if best is not None:
        verdict = "beats" if best[0] > REFERENCE_TEST_ACCURACY else "does not beat"
        lines.append(
            f"Best fold-ensemble test accuracy here: {100 * best[0]:.2f}% ({best[1]}, {best[2]} head), "
            f"which {verdict} the reference at this run's image size, epochs and data."
        )
    return lines


def _smote_lines(results: BenchmarkResults) -> list[str]:
    lines = [
        "",
        "## Effect of SMOTE",
        "",
        "Same trained network per fold, three softmax heads: the network's own (`network`), a head refitted on the "
        "training fold's embeddings as they are (`refit`, the control), and one refitted on SMOTE-balanced "
        "embeddings (`smote`). Validation figures; macro-F1 is the one that weighs rare classes.",
        "",
        "| architecture | network accuracy | network macro-F1 | refit accuracy | refit macro-F1 "
        "| SMOTE accuracy | SMOTE macro-F1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, summary in results.architectures.items():
        cells = []
        for variant in ("network", "refit", "smote"):
            validation = summary.variants.get(variant, {}).get("validation", {})
            cells += [_pct(validation.get("accuracy")), _pct(validation.get("macro_f1"))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _seed_lines(results: BenchmarkResults) -> list[str]:
    seeds = results.config["seeds"]
    lines = [
        "",
        "## Shuffling study",
        "",
        "Per seed (another fold assignment, batch order, augmentation and initialisation), the mean validation "
        "accuracy over folds; then mean ± std of those means over seeds.",
        "",
        "| architecture | " + " | ".join(f"seed {s}" for s in seeds) + " | over seeds |",
        "|---|" + "---:|" * (len(seeds) + 1),
    ]
    for name, summary in results.architectures.items():
        per_seed = summary.per_seed
        cells = [_pct({"mean": per_seed.get(str(s)), "n": 1}) if per_seed.get(str(s)) is not None else "–" for s in seeds]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_pct(summary.over_seeds)} |")
    return lines


def _epochs(summary: ArchitectureSummary) -> str:
    """Planned epochs, with the range trained when early stopping or the budget cut folds short."""
    run = summary.epochs_run
    if not run or (min(run) == max(run) == summary.epochs):
        return str(summary.epochs)
    return f"{min(run)}–{max(run)} of {summary.epochs}"
