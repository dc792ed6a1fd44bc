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

With ``patience`` and ``time_budget_s`` a fold stops early (validation
accuracy no longer improving, or its share of the architecture's time
budget spent) and keeps its best epoch's weights; the stop reason is
recorded per fold.

The modules: settings and presets in :mod:`~smearflow.training.benchmark_config`,
the run folder's files in :mod:`~smearflow.training.run_folder`, one fold in
:mod:`~smearflow.training.benchmark_fold`, the aggregation and reports in
:mod:`~smearflow.training.aggregate`, the typed results in
:mod:`~smearflow.training.results`. The database is not touched here
(``training`` does not import ``db``); a caller records results through
:class:`BenchmarkCallbacks`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from smearflow.datasets import ImageDataset, scan_class_folders, stratified_folds, stratified_holdout, subset_per_class
from smearflow.training.aggregate import write_reports
from smearflow.training.architectures import get_architecture, resolve_weight_files
from smearflow.training.benchmark_config import (
    PRESETS,
    BenchmarkCallbacks,
    BenchmarkConfig,
    FoldTask,
    fold_seed,
    preset_config,
)
from smearflow.training.benchmark_fold import run_fold
from smearflow.training.results import BenchmarkResults, FoldResult
from smearflow.training.run_folder import check_or_start_run_folder, fold_path, relative_names

logger = logging.getLogger(__name__)

__all__ = [
    "PRESETS", "BenchmarkCallbacks", "BenchmarkConfig", "BenchmarkResults", "FoldResult", "FoldTask", "fold_seed",
    "preset_config", "run_benchmark", "write_reports",
]


def run_benchmark(
    data_dir: str | Path,
    out_dir: str | Path,
    config: BenchmarkConfig = BenchmarkConfig(),
    *,
    callbacks: BenchmarkCallbacks | None = None,
) -> BenchmarkResults:
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
    BenchmarkResults
        The content of ``results.json``.

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
    dataset, train_part, test_set, folds_by_seed = _split(data_dir, config)
    splits = _splits_record(dataset, train_part, test_set, folds_by_seed, config)
    check_or_start_run_folder(out_dir, config, splits, data_dir)
    plan = _plan(out_dir, config)
    callbacks.on_start(plan, out_dir)
    decoded: dict = {}
    results = None
    for name in config.architectures:
        for task in (t for t in plan if t.architecture == name):
            path = fold_path(out_dir, name, task.seed, task.fold)
            if task.done:
                logger.info("resuming: %s already in %s", task.label, path)
                callbacks.on_fold_end(task, FoldResult.read(path), True)
                continue
            train, val = folds_by_seed[task.seed][task.fold]
            sets = (train_part.subset(train), train_part.subset(val), test_set)
            entry = run_fold(task, config, dataset.classes, sets, out_dir, decoded, callbacks)
            callbacks.on_fold_end(task, entry, False)
        results = write_reports(out_dir)
    callbacks.on_end(results)
    return results


def _split(data_dir, config: BenchmarkConfig):
    """The dataset, its cross-validation part, the held-out test split and the folds of every seed."""
    dataset = scan_class_folders(data_dir)
    if config.subset_per_class is not None:
        dataset = subset_per_class(dataset, config.subset_per_class, config.split_seed)
    train_idx, test_idx = stratified_holdout(dataset.labels, config.test_fraction, config.split_seed)
    train_part, test_set = dataset.subset(train_idx), dataset.subset(test_idx)
    folds_by_seed = {seed: stratified_folds(train_part.labels, config.folds, seed) for seed in config.seeds}
    return dataset, train_part, test_set, folds_by_seed


def _splits_record(
    dataset: ImageDataset, train_part: ImageDataset, test_set: ImageDataset, folds_by_seed: dict, config
) -> dict:
    """The content of ``splits.json``: classes, seeds and every file list."""
    return {
        "classes": list(dataset.classes),
        "split_seed": config.split_seed,
        "subset_per_class": config.subset_per_class,
        "test_fraction": config.test_fraction,
        "train": relative_names(dataset, train_part.paths),
        "test": relative_names(dataset, test_set.paths),
        "folds": {
            str(seed): [
                {
                    "fold_seed": fold_seed(seed, k),
                    "train": relative_names(dataset, train_part.subset(train).paths),
                    "validation": relative_names(dataset, train_part.subset(val).paths),
                }
                for k, (train, val) in enumerate(folds)
            ]
            for seed, folds in folds_by_seed.items()
        },
    }


def _plan(out_dir: Path, config: BenchmarkConfig) -> list[FoldTask]:
    plan = []
    for name in config.architectures:
        epochs = config.train_config(name, config.seeds[0]).total_epochs()
        for seed in config.seeds:
            for k in range(config.trained_folds(name)):
                done = fold_path(out_dir, name, seed, k).is_file()
                plan.append(FoldTask(name, seed, k, config.folds, epochs, done))
    return plan
