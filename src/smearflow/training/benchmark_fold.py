"""Train and score one benchmark fold: the network, its refit control head and its SMOTE head."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import keras
import numpy as np

from smearflow.datasets import ImageDataset
from smearflow.evaluation.metrics import classification_metrics
from smearflow.training import smote as smote_module
from smearflow.training import train as train_module
from smearflow.training.architectures import build_model
from smearflow.training.benchmark_config import BenchmarkCallbacks, BenchmarkConfig, FoldTask, fold_seed
from smearflow.training.early_stopping import ValidationStopper
from smearflow.training.machine import machine_description
from smearflow.training.reports import plot_confusion_matrix
from smearflow.training.results import FoldResult, VariantResult
from smearflow.training.run_folder import fold_path, write_json

logger = logging.getLogger(__name__)


def run_fold(
    task: FoldTask,
    config: BenchmarkConfig,
    classes: tuple[str, ...],
    sets: tuple[ImageDataset, ImageDataset, ImageDataset],
    out_dir: Path,
    decoded: dict,
    callbacks: BenchmarkCallbacks,
) -> FoldResult:
    """Train ``task`` on the training fold, score every head, write the fold's files; return its result.

    Parameters
    ----------
    sets : (train_fold, validation_fold, test_set)
    decoded : dict
        Shared cache of resized images.

    Raises
    ------
    FloatingPointError
        When the trained network outputs non-finite probabilities.
    """
    train_fold, val_fold, test_set = sets
    logger.info("training %s on %d images", task.label, len(train_fold))
    seed = fold_seed(task.seed, task.fold)
    train_config = config.train_config(task.architecture, seed)
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    model = build_model(task.architecture, config.image_size, len(classes), **train_config.arch_params)
    history = train_module.HistoryRecorder()
    stopper = _stopper(model, config, task.architecture, _stopping_images(val_fold, config, seed), decoded, history)
    epoch_callback = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: callbacks.on_epoch_end(task, epoch, dict(logs or {}))
    )
    fitted = train_module.fit_classifier(
        model, train_config, train_fold, len(classes), callbacks=[c for c in (stopper, epoch_callback) if c],
        history=history, decoded=decoded,
    )
    train_seconds = time.perf_counter() - started
    probabilities, labels, heads, smote_skipped = _score_heads(task, config, model, sets, decoded, history, seed)
    variants = {
        variant: VariantResult(
            classification_metrics(labels[0], val_p, classes), classification_metrics(labels[1], test_p, classes),
            heads.get(variant),
        )
        for variant, (val_p, test_p) in probabilities.items()
    }
    result = FoldResult(
        architecture=task.architecture, seed=task.seed, fold=task.fold, fold_seed=seed,
        image_size=config.image_size, epochs=train_config.total_epochs(), train_images=len(train_fold),
        validation_images=len(labels[0]), test_images=len(labels[1]),
        unreadable_images={"validation": len(val_fold) - len(labels[0]), "test": len(test_set) - len(labels[1])},
        train_seconds=round(train_seconds, 2), seconds=round(time.perf_counter() - started, 2),
        machine=machine_description(), keras_backend=keras.backend.backend(),
        weights_loaded=fitted["weights_loaded"], stages=fitted["stages"], smote_skipped=smote_skipped,
        history=history.rows, variants=variants, finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
        params=int(model.count_params()),
        epochs_run=stopper.epochs_run if stopper else train_config.total_epochs(),
        best_epoch=stopper.best_epoch if stopper else None,
        stop_reason=(stopper.stop_reason if stopper else None) or "all epochs trained",
        time_budget_s=config.fold_budget_s(task.architecture),
    )
    _write_fold(out_dir, task, result, probabilities, labels, classes)
    return result


def _stopping_images(val_fold: ImageDataset, config: BenchmarkConfig, seed: int) -> ImageDataset:
    """At most ``config.stopping_images`` validation images, a fixed random draw, to score each epoch."""
    if len(val_fold) <= config.stopping_images:
        return val_fold
    chosen = np.random.default_rng(seed).choice(len(val_fold), size=config.stopping_images, replace=False)
    return val_fold.subset(np.sort(chosen))


def _stopper(model, config: BenchmarkConfig, architecture, val_fold, decoded, history) -> ValidationStopper | None:
    if config.patience is None and config.time_budget_s is None:
        return None

    def validation_accuracy() -> float:
        probabilities, labels = train_module.predict_dataset(
            model, val_fold, config.image_size, config.batch_size, decoded=decoded
        )
        return float(np.mean(np.argmax(probabilities, axis=1) == labels)) if len(labels) else 0.0

    return ValidationStopper(
        model, validation_accuracy, patience=config.patience, budget_s=config.fold_budget_s(architecture),
        stage=lambda: history.stage,
    )


def _score_heads(task, config, model, sets, decoded, history, seed):
    """Probabilities of every head on the validation fold and the test split, the labels, head info, SMOTE skip."""
    train_fold, val_fold, test_set = sets
    size, batch = config.image_size, config.batch_size
    emb_val, prob_val, y_val = smote_module.embed_and_predict(model, val_fold, size, batch, decoded=decoded)
    emb_test, prob_test, y_test = smote_module.embed_and_predict(model, test_set, size, batch, decoded=decoded)
    if not (np.all(np.isfinite(prob_val)) and np.all(np.isfinite(prob_test))):
        raise FloatingPointError(
            f"{task.label}: the trained network outputs non-finite probabilities (training diverged; "
            f"last logs {history.rows[-1] if history.rows else {}}). Lower the learning rate or drop the architecture"
        )
    probabilities = {"network": (prob_val, prob_test)}
    heads, smote_skipped = {}, None
    if config.smote:
        emb_train, _, y_train = smote_module.embed_and_predict(model, train_fold, size, batch, decoded=decoded)
        num_classes = prob_val.shape[1]
        try:
            for variant, use_smote in (("refit", False), ("smote", True)):
                head = smote_module.fit_softmax_head(emb_train, y_train, num_classes, smote=use_smote, seed=seed)
                probabilities[variant] = (head.predict_proba(emb_val), head.predict_proba(emb_test))
                heads[variant] = head.info
        except ValueError as error:
            smote_skipped = str(error)
            logger.warning("%s: SMOTE skipped: %s", task.label, error)
            probabilities = {"network": probabilities["network"]}
            heads = {}
    return probabilities, (y_val, y_test), heads, smote_skipped


def _write_fold(out_dir, task, result: FoldResult, probabilities, labels, classes) -> None:
    path = fold_path(out_dir, task.architecture, task.seed, task.fold)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"validation_labels": labels[0], "test_labels": labels[1]}
    for variant, (val_p, test_p) in probabilities.items():
        arrays[f"validation_{variant}"] = np.asarray(val_p, dtype=np.float32)
        arrays[f"test_{variant}"] = np.asarray(test_p, dtype=np.float32)
    np.savez_compressed(path.with_suffix(".npz"), **arrays)
    plot_confusion_matrix(
        result.variants["network"].validation["confusion_matrix"], classes,
        path.with_name(path.stem + "_confusion.png"), f"{task.label}: validation",
    )
    write_json(path, result.to_dict())  # last: its presence marks the fold finished
