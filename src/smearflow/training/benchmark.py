"""The architecture benchmark: k-fold cross-validation, SMOTE, a held-out test split, reports.

Protocol (:func:`run_benchmark`):

1. scan the class folders (optionally keep at most ``subset_per_class``
   images per class, drawn with ``split_seed``);
2. hold out a stratified test split (``test_fraction``, ``split_seed``); it
   is never used to train, to pick anything, or to fit SMOTE;
3. for every architecture, every seed and every fold of a stratified k-fold
   split of the rest (the seed shuffles the fold assignment): train on the
   training fold (augmentation and class weights from it only), score the
   validation fold and the test split; with ``smote``, also refit the
   softmax head on SMOTE-balanced training-fold embeddings and score again
   (see :mod:`smearflow.training.smote`);
4. aggregate: mean ± std over folds and seeds, out-of-fold confusion
   matrices, and the fold-ensemble (mean probabilities of the k fold
   models) on the test split.

Every split (file lists), seed and the class order go to ``splits.json`` in
the run folder; each finished fold goes to ``folds/<arch>/seed<S>-fold<K>.json``
(plus its probabilities in ``.npz``), so an interrupted run resumes where it
stopped. ``results.json``, ``results.csv``, ``report.md`` and ``plots/`` are
rewritten after each architecture and at the end.

The database is not touched here (``training`` does not import ``db``); a
caller records results through :class:`BenchmarkCallbacks`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from smearflow.datasets import (
    ImageDataset,
    scan_class_folders,
    stratified_folds,
    stratified_holdout,
    subset_per_class,
)
from smearflow.serialisable import SerialisableConfig
from smearflow.training.architectures import (
    ARCHITECTURES,
    get_architecture,
    resolve_weight_files,
)
from smearflow.training.machine import machine_description

logger = logging.getLogger(__name__)

_FIRST_CLASS_TRAIN_FIELDS = frozenset(
    {
        "architecture",
        "image_size",
        "epochs",
        "batch_size",
        "seed",
        "class_weight",
        "test_fraction",
        "arch_params",
        "weights",
        "freeze_backbone_epochs",
        "fine_tune_learning_rate",
    }
)


@dataclass(frozen=True)
class BenchmarkConfig(SerialisableConfig):
    """Settings of a benchmark run; saved in the run folder as ``benchmark.json``.

    Attributes
    ----------
    architectures : tuple of str
        Registry names, in run order (default: all).
    folds : int
        Stratified cross-validation folds (at least 2).
    image_size : int
        Input side in pixels; at least every architecture's minimum.
    epochs, batch_size : int
        Per fold (a contrastive architecture adds its encoder stage).
    seeds : tuple of int
        One full cross-validation per seed (fold assignment, batch order,
        augmentation, initialisation): several seeds make the shuffling study.
    split_seed : int
        Fixes the subset and the held-out test split, the same for every seed.
    test_fraction : float
    subset_per_class : int, optional
        Keep at most this many images per class (a reduced run).
    smote : bool
        Also report SMOTE-refitted heads (and the refit control).
    class_weight : {"balanced", "none"}
    weights : dict of str to str
        Local ImageNet weights, as :attr:`TrainConfig.weights`.
    freeze_backbone_epochs : int
    fine_tune_learning_rate : float, optional
    arch_params : dict of str to dict
        Architecture name → keyword arguments of its builder.
    training : dict
        Further :class:`~smearflow.training.train.TrainConfig` fields for
        every architecture (``learning_rate``, ``contrastive_epochs`` …).
    """

    architectures: tuple[str, ...] = tuple(ARCHITECTURES)
    folds: int = 5
    image_size: int = 224
    epochs: int = 28
    batch_size: int = 64
    seeds: tuple[int, ...] = (20261125,)
    split_seed: int = 20261125
    test_fraction: float = 0.15
    subset_per_class: int | None = None
    smote: bool = True
    class_weight: str = "balanced"
    weights: dict[str, str] = field(default_factory=dict)
    freeze_backbone_epochs: int = 0
    fine_tune_learning_rate: float | None = None
    arch_params: dict[str, dict] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        from smearflow.training.train import TrainConfig

        if isinstance(self.architectures, str) or not self.architectures:
            raise ValueError(f"architectures must be a non-empty list of names. Received: {self.architectures!r}")
        for name in self.architectures:
            get_architecture(name)
        if len(set(self.architectures)) != len(self.architectures):
            raise ValueError(f"architectures must not repeat. Received: {list(self.architectures)}")
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
            raise ValueError(f"folds must be an integer of at least 2. Received: folds={self.folds!r}")
        too_small = [n for n in self.architectures if self.image_size < get_architecture(n).min_image_size]
        if too_small:
            minimums = ", ".join(f"{n} {get_architecture(n).min_image_size}" for n in too_small)
            raise ValueError(
                f"image_size is below the minimum of {minimums} px. Received: image_size={self.image_size}; "
                "raise it or leave these architectures out"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list without repeats. Received: seeds={self.seeds!r}")
        if self.subset_per_class is not None and self.subset_per_class < self.folds + 1:
            raise ValueError(
                f"subset_per_class must leave each class at least folds + 1 images. "
                f"Received: subset_per_class={self.subset_per_class}, folds={self.folds}"
            )
        unknown = sorted(set(self.arch_params) - set(ARCHITECTURES))
        if unknown:
            raise ValueError(f"arch_params names unknown architecture(s) {unknown}. Known: {sorted(ARCHITECTURES)}")
        clash = sorted(set(self.training) & _FIRST_CLASS_TRAIN_FIELDS)
        if clash:
            raise ValueError(f"training must not set {clash}: they are benchmark settings of their own")
        # Every training setting must make a valid TrainConfig (raises on a bad one).
        TrainConfig.from_dict(self._train_fields(self.architectures[0], self.seeds[0]))

    def _train_fields(self, architecture: str, seed: int) -> dict:
        return {
            "architecture": architecture,
            "image_size": self.image_size,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "seed": seed,
            "class_weight": self.class_weight,
            "test_fraction": self.test_fraction,
            "arch_params": dict(self.arch_params.get(architecture, {})),
            "weights": dict(self.weights),
            "freeze_backbone_epochs": self.freeze_backbone_epochs,
            "fine_tune_learning_rate": self.fine_tune_learning_rate,
        } | dict(self.training)

    def train_config(self, architecture: str, seed: int):
        """The :class:`~smearflow.training.train.TrainConfig` of one fold."""
        from smearflow.training.train import TrainConfig

        return TrainConfig.from_dict(self._train_fields(architecture, seed))


@dataclass(frozen=True)
class FoldTask:
    """One unit of benchmark work: an architecture on one fold of one seed."""

    architecture: str
    seed: int
    fold: int
    folds: int
    epochs: int
    done: bool = False

    @property
    def label(self) -> str:
        return f"{self.architecture} seed {self.seed} fold {self.fold + 1}/{self.folds}"


class BenchmarkCallbacks:
    """Hooks a caller overrides to follow a benchmark (progress bar, database).

    The default methods do nothing.
    """

    def on_start(self, plan: list[FoldTask], run_folder: Path) -> None:
        """Before any training; ``plan`` lists every fold, ``done`` ones are resumed."""

    def on_epoch_end(self, task: FoldTask, epoch: int, logs: dict) -> None:
        """After each training epoch of a fold (every stage)."""

    def on_fold_end(self, task: FoldTask, entry: dict, resumed: bool) -> None:
        """After a fold is trained and scored, or read back from the run folder (``resumed``)."""

    def on_end(self, results: dict) -> None:
        """After ``results.json`` and the report are written."""


def _relative(dataset: ImageDataset, paths) -> list[str]:
    return [str(Path(p).relative_to(dataset.root)) for p in paths]


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=1, default=_json_default) + "\n")
    os.replace(temporary, path)


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _normalised(data) -> Any:
    return json.loads(json.dumps(data, default=_json_default))


def fold_seed(seed: int, fold: int) -> int:
    """The seed of one fold's training (initialisation, batch order, augmentation, SMOTE)."""
    return int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])


def run_benchmark(
    data_dir: str | Path,
    out_dir: str | Path,
    config: BenchmarkConfig = BenchmarkConfig(),
    *,
    callbacks: BenchmarkCallbacks | None = None,
) -> dict:
    """Run (or resume) a benchmark and write its run folder.

    Parameters
    ----------
    data_dir : str or Path
        Class-folder dataset (the PBC layout).
    out_dir : str or Path
        Run folder. When it already holds a benchmark with the same settings
        (architectures may differ), finished folds are read back, not
        retrained.
    config : BenchmarkConfig
    callbacks : BenchmarkCallbacks, optional

    Returns
    -------
    dict
        The content of ``results.json``: ``config``, ``data``, ``classes``,
        ``images``, ``machine``, ``folds`` (one entry per architecture × seed ×
        fold, every variant's validation and test metrics), ``architectures``
        (aggregates per architecture) and ``run_folder``.

    Raises
    ------
    ValueError
        When the run folder holds a benchmark with other settings or other
        splits (the data changed), or a class has too few images for the folds.
    FileNotFoundError
        When a weights file is missing (checked before any training).
    smearflow.errors.BadDatasetError
        For an unusable dataset (missing, empty class folder …).
    """
    callbacks = callbacks or BenchmarkCallbacks()
    out_dir = Path(out_dir)
    for name in config.architectures:
        architecture = get_architecture(name)
        resolve_weight_files(config.weights, architecture.backbone_names(config.arch_params.get(name)))

    dataset = scan_class_folders(data_dir)
    if config.subset_per_class is not None:
        dataset = subset_per_class(dataset, config.subset_per_class, config.split_seed)
    train_idx, test_idx = stratified_holdout(dataset.labels, config.test_fraction, config.split_seed)
    train_part, test_set = dataset.subset(train_idx), dataset.subset(test_idx)
    folds_by_seed = {seed: stratified_folds(train_part.labels, config.folds, seed) for seed in config.seeds}
    splits = {
        "classes": list(dataset.classes),
        "split_seed": config.split_seed,
        "subset_per_class": config.subset_per_class,
        "test_fraction": config.test_fraction,
        "train": _relative(dataset, train_part.paths),
        "test": _relative(dataset, test_set.paths),
        "folds": {
            str(seed): [
                {
                    "fold_seed": fold_seed(seed, k),
                    "train": _relative(dataset, train_part.subset(train).paths),
                    "validation": _relative(dataset, train_part.subset(val).paths),
                }
                for k, (train, val) in enumerate(folds)
            ]
            for seed, folds in folds_by_seed.items()
        },
    }
    _check_or_start_run_folder(out_dir, config, splits, data_dir)

    plan = []
    for name in config.architectures:
        epochs = config.train_config(name, config.seeds[0]).total_epochs()
        for seed in config.seeds:
            for k in range(config.folds):
                done = _fold_path(out_dir, name, seed, k).is_file()
                plan.append(FoldTask(name, seed, k, config.folds, epochs, done))
    callbacks.on_start(plan, out_dir)
    decoded: dict = {}
    for name in config.architectures:
        for task in (t for t in plan if t.architecture == name):
            path = _fold_path(out_dir, name, task.seed, task.fold)
            if task.done:
                logger.info("resuming: %s already in %s", task.label, path)
                callbacks.on_fold_end(task, json.loads(path.read_text()), True)
                continue
            train, val = folds_by_seed[task.seed][task.fold]
            entry = _run_fold(
                task, config, dataset.classes, train_part.subset(train), train_part.subset(val), test_set,
                out_dir, decoded, callbacks,
            )
            callbacks.on_fold_end(task, entry, False)
        results = write_reports(out_dir)
    callbacks.on_end(results)
    return results


def _fold_path(out_dir: Path, architecture: str, seed: int, fold: int) -> Path:
    return out_dir / "folds" / architecture / f"seed{seed}-fold{fold}.json"


def _check_or_start_run_folder(out_dir: Path, config: BenchmarkConfig, splits: dict, data_dir) -> None:
    settings_path, splits_path = out_dir / "benchmark.json", out_dir / "splits.json"
    current = _normalised(config.to_dict())
    if settings_path.is_file():
        stored = json.loads(settings_path.read_text())["config"]
        differing = sorted(
            key for key in set(stored) | set(current) if key != "architectures" and stored.get(key) != current.get(key)
        )
        if differing:
            raise ValueError(
                f"{out_dir} holds a benchmark with other settings ({', '.join(differing)}): "
                f"stored {[stored.get(k) for k in differing]}, received {[current.get(k) for k in differing]}. "
                "Resume with the same settings or choose another run folder"
            )
        if splits_path.is_file() and json.loads(splits_path.read_text()) != _normalised(splits):
            raise ValueError(
                f"{out_dir}: the splits of {data_dir} differ from those in {splits_path} "
                "(the dataset changed since the run started); choose another run folder"
            )
        logger.info("resuming the benchmark in %s", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(splits_path, splits)
    _write_json(
        settings_path,
        {"config": current, "data": str(Path(data_dir)), "updated_at": datetime.now(UTC).isoformat(timespec="seconds")},
    )


def _run_fold(task, config, classes, train_fold, val_fold, test_set, out_dir, decoded, callbacks) -> dict:
    import keras

    from smearflow.evaluation.metrics import classification_metrics
    from smearflow.training.architectures import build_model
    from smearflow.training.reports import plot_confusion_matrix
    from smearflow.training.smote import embed_and_predict, fit_softmax_head
    from smearflow.training.train import HistoryRecorder, fit_classifier

    logger.info("training %s on %d images", task.label, len(train_fold))
    num_classes = len(classes)
    seed = fold_seed(task.seed, task.fold)
    train_config = config.train_config(task.architecture, seed)
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    model = build_model(task.architecture, config.image_size, num_classes, **train_config.arch_params)
    history = HistoryRecorder()
    epoch_callback = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: callbacks.on_epoch_end(task, epoch, dict(logs or {}))
    )
    fitted = fit_classifier(
        model, train_config, train_fold, num_classes, callbacks=[epoch_callback], history=history, decoded=decoded
    )
    train_seconds = time.perf_counter() - started
    size, batch = config.image_size, config.batch_size
    emb_val, prob_val, y_val = embed_and_predict(model, val_fold, size, batch, decoded=decoded)
    emb_test, prob_test, y_test = embed_and_predict(model, test_set, size, batch, decoded=decoded)
    if not (np.all(np.isfinite(prob_val)) and np.all(np.isfinite(prob_test))):
        raise FloatingPointError(
            f"{task.label}: the trained network outputs non-finite probabilities (training diverged; "
            f"last logs {history.rows[-1] if history.rows else {}}). Lower the learning rate or drop the architecture"
        )
    probabilities = {"network": (prob_val, prob_test)}
    heads, smote_skipped = {}, None
    if config.smote:
        emb_train, _, y_train = embed_and_predict(model, train_fold, size, batch, decoded=decoded)
        try:
            for variant, use_smote in (("refit", False), ("smote", True)):
                head = fit_softmax_head(emb_train, y_train, num_classes, smote=use_smote, seed=seed)
                probabilities[variant] = (head.predict_proba(emb_val), head.predict_proba(emb_test))
                heads[variant] = head.info
        except ValueError as error:
            smote_skipped = str(error)
            logger.warning("%s: SMOTE skipped: %s", task.label, error)
            probabilities = {"network": probabilities["network"]}
            heads = {}
    variants = {
        variant: {
            "validation": classification_metrics(y_val, val_p, classes),
            "test": classification_metrics(y_test, test_p, classes),
            **({"head": heads[variant]} if variant in heads else {}),
        }
        for variant, (val_p, test_p) in probabilities.items()
    }
    entry = {
        "architecture": task.architecture,
        "seed": task.seed,
        "fold": task.fold,
        "fold_seed": seed,
        "image_size": config.image_size,
        "epochs": train_config.total_epochs(),
        "train_images": len(train_fold),
        "validation_images": len(y_val),
        "test_images": len(y_test),
        "unreadable_images": {"validation": len(val_fold) - len(y_val), "test": len(test_set) - len(y_test)},
        "train_seconds": round(train_seconds, 2),
        "seconds": round(time.perf_counter() - started, 2),
        "machine": machine_description(),
        "keras_backend": keras.backend.backend(),
        "weights_loaded": fitted["weights_loaded"],
        "stages": fitted["stages"],
        "smote_skipped": smote_skipped,
        "history": history.rows,
        "variants": variants,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path = _fold_path(out_dir, task.architecture, task.seed, task.fold)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"validation_labels": y_val, "test_labels": y_test}
    for variant, (val_p, test_p) in probabilities.items():
        arrays[f"validation_{variant}"] = np.asarray(val_p, dtype=np.float32)
        arrays[f"test_{variant}"] = np.asarray(test_p, dtype=np.float32)
    np.savez_compressed(path.with_suffix(".npz"), **arrays)
    plot_confusion_matrix(
        variants["network"]["validation"]["confusion_matrix"], classes, path.with_name(path.stem + "_confusion.png"),
        f"{task.label}: validation",
    )
    _write_json(path, entry)  # last: its presence marks the fold finished
    return entry


def _aggregate_metrics(metrics_list: list[dict]) -> dict:
    from smearflow.training.reports import SUMMARY_METRICS, mean_std

    return {key: mean_std([m.get(key) for m in metrics_list]) for key in SUMMARY_METRICS}


def write_reports(out_dir: str | Path) -> dict:
    """Aggregate the finished folds of a run folder into results.json, results.csv, report.md and plots.

    Returns
    -------
    dict
        The content of ``results.json``.

    Raises
    ------
    ValueError
        When ``out_dir`` holds no benchmark.
    """
    from smearflow.evaluation.metrics import classification_metrics
    from smearflow.training.reports import (
        mean_std,
        plot_confusion_matrix,
        plot_training_curves,
        render_report,
        write_csv,
    )

    out_dir = Path(out_dir)
    if not (out_dir / "benchmark.json").is_file():
        raise ValueError(f"{out_dir} holds no benchmark (no benchmark.json)")
    settings = json.loads((out_dir / "benchmark.json").read_text())
    config, splits = settings["config"], json.loads((out_dir / "splits.json").read_text())
    classes = splits["classes"]
    order = {name: i for i, name in enumerate(config["architectures"])}
    order.update({name: len(order) + i for i, name in enumerate(ARCHITECTURES) if name not in order})
    fold_files = sorted(
        (out_dir / "folds").glob("*/seed*-fold*.json"),
        key=lambda p: (order.get(p.parent.name, 99), p.parent.name, p.stem),
    )
    entries = [json.loads(p.read_text()) for p in fold_files]
    architectures, rows = {}, []
    for name in dict.fromkeys(e["architecture"] for e in entries):
        mine = [e for e in entries if e["architecture"] == name]
        variants = sorted({v for e in mine for v in e["variants"]}, key=["network", "refit", "smote"].index)
        summary = {
            "architecture": name,
            "image_size": mine[0]["image_size"],
            "epochs": mine[0]["epochs"],
            "runs": len(mine),
            "seeds": sorted({e["seed"] for e in mine}),
            "machines": sorted({e["machine"] for e in mine}),
            "seconds_per_fold": mean_std([e["seconds"] for e in mine]),
            "variants": {},
            "ensemble_test": {},
        }
        for variant in variants:
            have = [e for e in mine if variant in e["variants"]]
            validation = [e["variants"][variant]["validation"] for e in have]
            summary["variants"][variant] = {
                "validation": _aggregate_metrics(validation),
                "test": _aggregate_metrics([e["variants"][variant]["test"] for e in have]),
                "validation_confusion_matrix": np.sum([m["confusion_matrix"] for m in validation], axis=0).tolist(),
                "validation_per_class_f1": {
                    c: mean_std([m["per_class"][c]["f1"] for m in validation])["mean"] for c in classes
                },
            }
            ensembles = []
            for seed in summary["seeds"]:
                stack = []
                labels = None
                for e in (e for e in have if e["seed"] == seed):
                    arrays = np.load(_fold_path(out_dir, name, seed, e["fold"]).with_suffix(".npz"))
                    stack.append(arrays[f"test_{variant}"])
                    labels = arrays["test_labels"]
                if stack and len(stack) == config["folds"]:
                    ensemble = classification_metrics(labels, np.mean(stack, axis=0), classes)
                    ensembles.append(ensemble)
                    rows.append(_csv_row(name, seed, "ensemble", variant, "test", ensemble, None, summary))
            if ensembles:
                summary["ensemble_test"][variant] = _aggregate_metrics(ensembles) | {
                    "confusion_matrix": np.sum([m["confusion_matrix"] for m in ensembles], axis=0).tolist()
                }
        network_by_seed = {}
        for e in mine:
            network_by_seed.setdefault(str(e["seed"]), []).append(e["variants"]["network"]["validation"]["accuracy"])
        summary["per_seed"] = {seed: float(np.mean(v)) for seed, v in network_by_seed.items()}
        summary["over_seeds"] = mean_std(list(summary["per_seed"].values()))
        plots = {}
        network = summary["variants"]["network"]
        plots["validation confusion (out-of-fold)"] = plot_confusion_matrix(
            network["validation_confusion_matrix"], classes, out_dir / "plots" / f"{name}_confusion_validation.png",
            f"{name}: validation folds, summed",
        )
        if "network" in summary["ensemble_test"]:
            plots["test confusion (fold ensemble)"] = plot_confusion_matrix(
                summary["ensemble_test"]["network"]["confusion_matrix"], classes,
                out_dir / "plots" / f"{name}_confusion_test_ensemble.png", f"{name}: held-out test, fold ensemble",
            )
        plots["training curves"] = plot_training_curves(
            {f"seed {e['seed']} fold {e['fold'] + 1}": e["history"] for e in mine},
            out_dir / "plots" / f"{name}_curves.png", f"{name}: training curves",
        )
        summary["plots"] = {label: str(path.relative_to(out_dir)) for label, path in plots.items()}
        architectures[name] = summary
        for e in mine:
            for variant, figures in e["variants"].items():
                for split in ("validation", "test"):
                    rows.append(_csv_row(name, e["seed"], e["fold"], variant, split, figures[split], e, summary))
    n_train, n_test = len(splits["train"]), len(splits["test"])
    images = {"total": n_train + n_test, "train": n_train, "test": n_test}
    total_folds = len(config["architectures"]) * len(config["seeds"]) * config["folds"]
    finished = sum(1 for e in entries if e["architecture"] in config["architectures"])
    results = {
        "config": config,
        "data": settings["data"],
        "classes": classes,
        "images": images,
        "machine": machine_description(),
        "run_folder": str(out_dir),
        "complete": finished == total_folds,
        "finished_note": f"{finished} of {total_folds} folds of this configuration finished.",
        "architectures": architectures,
        "folds": [{k: v for k, v in e.items() if k != "history"} for e in entries],
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _write_json(out_dir / "results.json", results)
    write_csv(rows, out_dir / "results.csv")
    (out_dir / "report.md").write_text(render_report(results))
    return results


def _csv_row(name, seed, fold, variant, split, metrics, entry, summary) -> dict:
    from smearflow.training.reports import SUMMARY_METRICS

    return {
        "architecture": name,
        "seed": seed,
        "fold": fold,
        "variant": variant,
        "split": split,
        "images": metrics["images"],
        **{key: metrics.get(key) for key in SUMMARY_METRICS},
        "seconds": entry["seconds"] if entry else None,
        "image_size": summary["image_size"],
        "epochs": summary["epochs"],
        "machine": entry["machine"] if entry else "; ".join(summary["machines"]),
    }
