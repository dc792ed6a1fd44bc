"""Aggregate a run folder's finished folds into results.json, results.csv, report.md and plots."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from smearflow.evaluation.metrics import classification_metrics
from smearflow.training.architectures import ARCHITECTURES
from smearflow.training.machine import machine_description
from smearflow.training.reports import (
    SUMMARY_METRICS,
    mean_std,
    plot_confusion_matrix,
    plot_training_curves,
    render_report,
    write_csv,
)
from smearflow.training.results import VARIANTS, ArchitectureSummary, BenchmarkResults, FoldResult
from smearflow.training.run_folder import fold_files, fold_path, write_json


def write_reports(out_dir: str | Path) -> BenchmarkResults:
    """Aggregate the finished folds of a run folder into results.json, results.csv, report.md and plots.

    Returns
    -------
    BenchmarkResults
        The content of ``results.json``.

    Raises
    ------
    ValueError
        When ``out_dir`` holds no benchmark.
    """
    out_dir = Path(out_dir)
    if not (out_dir / "benchmark.json").is_file():
        raise ValueError(f"{out_dir} holds no benchmark (no benchmark.json)")
    settings = json.loads((out_dir / "benchmark.json").read_text())
    config, splits = settings["config"], json.loads((out_dir / "splits.json").read_text())
    classes = splits["classes"]
    folds = _read_folds(out_dir, config["architectures"])
    architectures, rows = {}, []
    for name in dict.fromkeys(f.architecture for f in folds):
        mine = [f for f in folds if f.architecture == name]
        summary, ensemble_rows = _summarise(out_dir, name, mine, config, classes)
        architectures[name] = summary
        rows += ensemble_rows
        rows += [
            _csv_row(name, f.seed, f.fold, variant, split, getattr(figures, split), f, summary)
            for f in mine for variant, figures in f.variants.items() for split in ("validation", "test")
        ]
    n_train, n_test = len(splits["train"]), len(splits["test"])
    trained = config.get("folds_trained") or {}
    total_folds = sum(trained.get(n, config["folds"]) for n in config["architectures"]) * len(config["seeds"])
    finished = sum(1 for f in folds if f.architecture in config["architectures"])
    results = BenchmarkResults(
        config=config, data=settings["data"], classes=classes,
        images={"total": n_train + n_test, "train": n_train, "test": n_test}, machine=machine_description(),
        run_folder=str(out_dir), complete=finished == total_folds,
        finished_note=f"{finished} of {total_folds} folds of this configuration finished.",
        architectures=architectures, folds=folds, written_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    write_json(out_dir / "results.json", results.to_dict())
    write_csv(rows, out_dir / "results.csv")
    (out_dir / "report.md").write_text(render_report(results))
    return results


def _read_folds(out_dir: Path, architectures: list[str]) -> list[FoldResult]:
    """The finished folds, in the run's architecture order, then by seed and fold."""
    order = {name: i for i, name in enumerate(architectures)}
    order.update({name: len(order) + i for i, name in enumerate(ARCHITECTURES) if name not in order})
    paths = sorted(fold_files(out_dir), key=lambda p: (order.get(p.parent.name, 99), p.parent.name, p.stem))
    return [FoldResult.read(p) for p in paths]


def _aggregate_metrics(metrics_list: list[dict]) -> dict:
    return {key: mean_std([m.get(key) for m in metrics_list]) for key in SUMMARY_METRICS}


def _variant_summary(folds: list[FoldResult], variant: str, classes) -> dict:
    validation = [f.variants[variant].validation for f in folds]
    return {
        "validation": _aggregate_metrics(validation),
        "test": _aggregate_metrics([f.variants[variant].test for f in folds]),
        "validation_confusion_matrix": np.sum([m["confusion_matrix"] for m in validation], axis=0).tolist(),
        "validation_per_class_f1": {c: mean_std([m["per_class"][c]["f1"] for m in validation])["mean"] for c in classes},
    }


def _ensembles(out_dir, name, folds: list[FoldResult], variant: str, n_folds: int, classes) -> dict[int, dict]:
    """Per seed with every fold finished: the metrics of the fold models' mean test probabilities."""
    ensembles = {}
    for seed in sorted({f.seed for f in folds}):
        stack, labels = [], None
        for f in (f for f in folds if f.seed == seed):
            arrays = np.load(fold_path(out_dir, name, seed, f.fold).with_suffix(".npz"))
            stack.append(arrays[f"test_{variant}"])
            labels = arrays["test_labels"]
        if stack and len(stack) == n_folds:
            ensembles[seed] = classification_metrics(labels, np.mean(stack, axis=0), classes)
    return ensembles


def _summarise(out_dir: Path, name: str, mine: list[FoldResult], config: dict, classes):
    """An architecture's :class:`ArchitectureSummary` and its fold-ensemble CSV rows."""
    variants, ensemble_test, ensemble_rows = {}, {}, []
    for variant in (v for v in VARIANTS if any(v in f.variants for f in mine)):
        have = [f for f in mine if variant in f.variants]
        variants[variant] = _variant_summary(have, variant, classes)
        ensembles = _ensembles(out_dir, name, have, variant, config["folds"], classes)
        ensemble_rows += [(seed, variant, metrics) for seed, metrics in ensembles.items()]
        if ensembles:
            ensemble_test[variant] = _aggregate_metrics(list(ensembles.values())) | {
                "confusion_matrix": np.sum([m["confusion_matrix"] for m in ensembles.values()], axis=0).tolist()
            }
    per_seed: dict[str, list] = {}
    for f in mine:
        per_seed.setdefault(str(f.seed), []).append(f.figure("network", "validation", "accuracy"))
    per_seed_mean = {seed: float(np.mean(v)) for seed, v in per_seed.items()}
    summary = ArchitectureSummary(
        architecture=name, image_size=mine[0].image_size, epochs=mine[0].epochs, runs=len(mine),
        seeds=sorted({f.seed for f in mine}), machines=sorted({f.machine for f in mine}),
        seconds_per_fold=mean_std([f.seconds for f in mine]), variants=variants, ensemble_test=ensemble_test,
        per_seed=per_seed_mean, over_seeds=mean_std(list(per_seed_mean.values())),
        plots=_plots(out_dir, name, mine, variants, ensemble_test, classes), **_headline(mine, variants, ensemble_test),
    )
    rows = [_csv_row(name, seed, "ensemble", variant, "test", m, None, summary) for seed, variant, m in ensemble_rows]
    return summary, rows


def _headline(mine: list[FoldResult], variants: dict, ensemble_test: dict) -> dict:
    """The flat figures of :class:`ArchitectureSummary` (see its docstring)."""

    def test_figure(variant: str, metric: str):
        ensemble = ensemble_test.get(variant, {}).get(metric, {}).get("mean")
        return ensemble if ensemble is not None else variants.get(variant, {}).get("test", {}).get(metric, {}).get("mean")

    heads = {
        variant: {
            "val_accuracy": variants[variant]["validation"]["accuracy"]["mean"],
            "val_macro_f1": variants[variant]["validation"]["macro_f1"]["mean"],
            "test_accuracy": test_figure(variant, "accuracy"),
            "test_macro_f1": test_figure(variant, "macro_f1"),
        }
        for variant in ("refit", "smote") if variant in variants
    }
    reasons: dict[str, int] = {}
    for f in mine:
        reasons[f.stop_reason or "all epochs trained"] = reasons.get(f.stop_reason or "all epochs trained", 0) + 1
    return {
        "test_accuracy": test_figure("network", "accuracy"),
        "test_macro_f1": test_figure("network", "macro_f1"),
        "val_accuracy": variants["network"]["validation"]["accuracy"]["mean"],
        "train_seconds": round(sum(f.train_seconds for f in mine), 2),
        "params": mine[0].params,
        "epochs_run": [f.epochs_run if f.epochs_run is not None else f.epochs for f in mine],
        "stop_reasons": reasons,
        "time_budget_s": mine[0].time_budget_s,
        "heads": heads,
    }


def _plots(out_dir: Path, name: str, mine: list[FoldResult], variants: dict, ensemble_test: dict, classes) -> dict:
    plots = {
        "validation confusion (out-of-fold)": plot_confusion_matrix(
            variants["network"]["validation_confusion_matrix"], classes,
            out_dir / "plots" / f"{name}_confusion_validation.png", f"{name}: validation folds, summed",
        )
    }
    if "network" in ensemble_test:
        plots["test confusion (fold ensemble)"] = plot_confusion_matrix(
            ensemble_test["network"]["confusion_matrix"], classes,
            out_dir / "plots" / f"{name}_confusion_test_ensemble.png", f"{name}: held-out test, fold ensemble",
        )
    plots["training curves"] = plot_training_curves(
        {f"seed {f.seed} fold {f.fold + 1}": f.history for f in mine},
        out_dir / "plots" / f"{name}_curves.png", f"{name}: training curves",
    )
    return {label: str(path.relative_to(out_dir)) for label, path in plots.items()}


def _csv_row(name, seed, fold, variant, split, metrics, entry: FoldResult | None, summary: ArchitectureSummary) -> dict:
    return {
        "architecture": name,
        "seed": seed,
        "fold": fold,
        "variant": variant,
        "split": split,
        "images": metrics["images"],
        **{key: metrics.get(key) for key in SUMMARY_METRICS},
        "seconds": entry.seconds if entry else None,
        "image_size": summary.image_size,
        "epochs": summary.epochs,
        "epochs_run": entry.epochs_run if entry else None,
        "machine": entry.machine if entry else "; ".join(summary.machines),
    }
