"""Train one classifier on a class-folder dataset and save it as a model folder."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from smearflow.classifier.model_folder import (
    ClassifierConfig,
    ClassifierFolder,
    write_model_folder,
)
from smearflow.datasets import (
    ImageDataset,
    concatenate_datasets,
    scan_class_folders,
    stratified_holdout,
)
from smearflow.model_folder import Splits, read_splits
from smearflow.training.checkpoint import TrainingCheckpoint
from smearflow.training.fit import (
    HistoryRecorder,
    class_weights,
    compile_for_training,
    fit_classifier,
    predict_dataset,
    predict_with_classifier,
    recalibrate_batch_norm,
)
from smearflow.training.train_config import CLASS_WEIGHTS, TrainConfig

logger = logging.getLogger(__name__)

__all__ = [
    "CLASS_WEIGHTS", "HistoryRecorder", "TrainConfig", "class_weights", "compile_for_training", "fit_classifier",
    "predict_dataset", "predict_with_classifier", "recalibrate_batch_norm", "train_classifier",
]


def initial_model(config: TrainConfig, classes: tuple[str, ...], test_set: ImageDataset):
    """The network training starts from: a fresh build, or the weights of ``config.init_model``.

    Raises
    ------
    BadModelError
        When the initial model's architecture, input size or classes differ
        from this run's, or it does not load.
    BadDatasetError
        When one of this run's test images trained the initial model: the
        test figures would not be held out.
    """
    from smearflow.training.architectures import build_model

    if config.init_model is None:
        return build_model(config.architecture, config.image_size, len(classes), **config.arch_params)
    from smearflow.classifier.classifier import Classifier
    from smearflow.errors import BadModelError

    loaded = Classifier.load(config.init_model)
    folder = loaded.folder
    for what, theirs, ours in (
        ("architecture", folder.architecture, config.architecture),
        ("image size", folder.image_size, config.image_size),
        ("classes", list(folder.classes), list(classes)),
    ):
        if theirs != ours:
            raise BadModelError(f"{folder.path}: the initial model has {what} {theirs!r}, this run {ours!r}")
    check_not_trained_on(folder.path, test_set)
    return loaded.model


def images_trained_on(model_dir: str | Path) -> set[str] | None:
    """Dataset-relative names of every image that trained a model, earlier stages included.

    None when the folder has no ``splits.json``, or its history is unknown.
    """
    splits = read_splits(model_dir)
    return None if splits is None else splits.trained_on()


def check_not_trained_on(model_dir: str | Path, test_set: ImageDataset) -> None:
    """Raise when an image of ``test_set`` trained the model in ``model_dir``.

    Raises
    ------
    BadDatasetError
        On any overlap, naming one such image.
    """
    from smearflow.errors import BadDatasetError

    trained = images_trained_on(model_dir)
    if trained is None:
        logger.warning("%s has no splits.json: cannot check that the test images did not train it", model_dir)
        return
    overlap = sorted(trained & set(_relative_names(test_set)))
    if overlap:
        raise BadDatasetError(
            f"{model_dir}: {len(overlap)} of this run's test images trained the initial model (e.g. {overlap[0]}); "
            "use the seed and test fraction it was trained with"
        )


def _relative_names(dataset: ImageDataset) -> list[str]:
    return [Path(p).relative_to(dataset.root).as_posix() for p in dataset.paths]


def extra_training_images(config: TrainConfig, classes: tuple[str, ...]) -> ImageDataset | None:
    """``config.extra_data`` listed under ``classes``, each image ``extra_repeat`` times (None without it)."""
    if config.extra_data is None:
        return None
    extra = scan_class_folders(config.extra_data, classes, allow_missing=True)
    logger.info("extra training images from %s: %s", config.extra_data, extra.class_counts())
    return extra.subset(np.repeat(np.arange(len(extra)), config.extra_repeat))


def make_splits(
    config: TrainConfig,
    train_set: ImageDataset,
    test_set: ImageDataset,
    extra,
    validation_set: ImageDataset | None = None,
) -> Splits:
    """Which images trained, validated and tested the model, for anyone to check for leaks."""
    details: dict[str, Any] = {"seed": config.splits_seed, "classes": list(train_set.classes)}
    earlier: tuple[str, ...] | None = ()
    if extra is not None:
        details["extra_data"] = str(config.extra_data)
    if config.init_model is not None:
        details["init_model"] = str(config.init_model)
        trained = images_trained_on(config.init_model)
        # Only what this run's lists lack, so the record stays small when the split is the same.
        earlier = None if trained is None else tuple(sorted(trained - set(_relative_names(train_set))))
    return Splits(
        train=tuple(_relative_names(train_set)),
        validation=tuple(_relative_names(validation_set)) if validation_set is not None else (),
        test=tuple(_relative_names(test_set)),
        earlier_train=earlier,
        extra=tuple(sorted(set(_relative_names(extra)))) if extra is not None else (),
        details=details,
    )


def classifier_config(config: TrainConfig) -> ClassifierConfig:
    """What the network of a training run is (``config.json``); the run's settings go to its ``training`` section."""
    return ClassifierConfig(config.architecture, config.image_size, dict(config.arch_params))


def listed_holdout(dataset: ImageDataset, list_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` indices: the test split is the images ``list_path`` names (``class/file`` per line).

    Listed images the dataset no longer holds are ignored.

    Raises
    ------
    BadDatasetError
        When the list cannot be read or names none of the dataset's images.
    """
    from smearflow.errors import BadDatasetError

    try:
        listed = {line.strip() for line in Path(list_path).read_text(encoding="utf-8").splitlines() if line.strip()}
    except OSError as error:
        raise BadDatasetError(f"{list_path}: the test image list cannot be read ({error.strerror})") from None
    in_test = np.array([name in listed for name in _relative_names(dataset)], dtype=bool)
    if not in_test.any():
        raise BadDatasetError(f"{list_path}: names none of the {len(dataset)} images of {dataset.root}")
    return np.flatnonzero(~in_test), np.flatnonzero(in_test)


def split_dataset(dataset: ImageDataset, config: TrainConfig) -> tuple[ImageDataset, ImageDataset | None, ImageDataset]:
    """``(train, validation, test)``: the stratified test split, then the validation split carved from the rest.

    The test split depends only on ``config.test_fraction`` and the split seed
    (the same images whatever the validation fraction); validation is None
    when ``config.validation_fraction`` is 0 and holds at least one image of
    each class otherwise.

    Raises
    ------
    ValueError
        When the training part is too small to hold out one image per class.
    """
    seed = config.splits_seed
    if config.test_images is not None:
        train_idx, test_idx = listed_holdout(dataset, config.test_images)
    else:
        train_idx, test_idx = stratified_holdout(dataset.labels, config.test_fraction, seed)
    train_set, test_set = dataset.subset(train_idx), dataset.subset(test_idx)
    if config.validation_fraction == 0:
        return train_set, None, test_set
    # At least one image of each class, so that a tiny dataset still splits stratified.
    n_classes = len(np.unique(train_set.labels))
    if np.bincount(train_set.labels).max(initial=0) < 2:
        raise ValueError(
            f"the training part ({len(train_set)} images) has no class with two images: nothing to hold out for "
            f"validation. Received: validation_fraction={config.validation_fraction}"
        )
    fraction = max(config.validation_fraction, n_classes / max(len(train_set), 1))
    fit_idx, validation_idx = stratified_holdout(train_set.labels, fraction, seed)
    return train_set.subset(fit_idx), train_set.subset(validation_idx), test_set


TTA_COMPARED = ("none", "flips")
"""Test-time views whose validation accuracy and time every training run records."""

THRESHOLD_TARGET_ACCURACY = 0.995
"""The recommended confidence threshold is the lowest at which the validation cells kept reach this accuracy."""


def in_memory_classifier(model, config: TrainConfig, classes, calibration: dict | None = None):
    """A :class:`~smearflow.classifier.Classifier` around a model still in memory (before its folder is written)."""
    from smearflow.classifier.classifier import Classifier

    folder = ClassifierFolder(Path("."), classifier_config(config), classes=tuple(classes))
    return Classifier(model, folder, calibration=calibration or {})


def calibrate(model, config: TrainConfig, validation_set: ImageDataset | None) -> tuple[dict, dict]:
    """Fit the temperature and recommend a confidence threshold on the validation split.

    Returns
    -------
    calibration : dict
        For ``calibration.json`` (see :mod:`smearflow.classifier.calibration`).
    figures : dict
        Validation figures for ``metrics.json``: accuracy, negative
        log-likelihood and ECE before and after the temperature, and the
        coverage/accuracy table of the thresholds.
    """
    from smearflow.classifier.calibration import (
        apply_temperature,
        fit_temperature,
        recommend_threshold,
        threshold_table,
    )
    from smearflow.evaluation.metrics import (
        expected_calibration_error,
        negative_log_likelihood,
    )

    if validation_set is None or len(validation_set) == 0:
        return {"temperature": 1.0, "test_time_augmentation": config.test_time_augmentation, "fitted_on": None}, {}
    views = {}
    for mode in dict.fromkeys([config.test_time_augmentation, *TTA_COMPARED]):
        untempered = in_memory_classifier(model, config, validation_set.classes, {"test_time_augmentation": mode})
        started = time.perf_counter()
        views[mode] = (*predict_with_classifier(untempered, validation_set), time.perf_counter() - started)
    probabilities, labels, _ = views[config.test_time_augmentation]
    temperature = fit_temperature(probabilities, labels)
    tempered = apply_temperature(probabilities, temperature)
    table = threshold_table(labels, tempered)
    threshold = recommend_threshold(table, THRESHOLD_TARGET_ACCURACY)
    calibration = {
        "temperature": round(temperature, 4),
        "confidence_threshold": threshold,
        "test_time_augmentation": config.test_time_augmentation,
        "fitted_on": f"validation split ({len(labels)} images, {config.validation_fraction:.0%} of the training part)",
        "threshold_rule": f"lowest threshold whose kept validation cells are >= {THRESHOLD_TARGET_ACCURACY:.1%} correct",
    }
    figures = {
        "images": len(labels),
        "accuracy": float(np.mean(probabilities.argmax(axis=1) == labels)),
        "nll_before": negative_log_likelihood(labels, probabilities),
        "nll_after": negative_log_likelihood(labels, tempered),
        "ece_before": expected_calibration_error(labels, probabilities)["ece"],
        "ece_after": expected_calibration_error(labels, tempered)["ece"],
        "thresholds": table,
        # Whether test-time views pay for themselves: accuracy and time of each on the validation split.
        "test_time_augmentation": {
            mode: {"accuracy": float(np.mean(p.argmax(axis=1) == y)), "seconds": round(seconds, 2)}
            for mode, (p, y, seconds) in views.items()
        },
    }
    return calibration, figures


def train_classifier(
    data_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig = TrainConfig(),
    *,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    checkpoint_dir: str | Path | None = None,
):
    """Train ``config.architecture`` on a stratified split and save a model folder.

    The test split (``config.test_fraction``, stratified, fixed seed) is never
    seen during training; its figures go to ``metrics.json``. The file lists of
    both splits go to ``splits.json`` beside the model so that anyone can
    check that nothing leaked.

    Parameters
    ----------
    data_dir : str or Path
        Class-folder dataset.
    out_dir : str or Path
        The model folder to write.
    config : TrainConfig
    on_epoch_end : callable, optional
        Called as ``(epoch, logs)`` after each epoch (epochs counted over
        all stages, from 0).
    checkpoint_dir : str or Path, optional
        Saves the run after every epoch (:class:`~smearflow.training.checkpoint.TrainingCheckpoint`);
        training the same data and ``config`` with the same folder again
        resumes after the last saved epoch. Removed once the model folder
        is written.

    Returns
    -------
    ModelFolder
        The saved folder ``out_dir``.

    Raises
    ------
    ValueError
        When ``checkpoint_dir`` holds the checkpoint of other settings.
    """
    import keras

    from smearflow.evaluation.metrics import (
        classification_metrics,
        expected_calibration_error,
    )
    from smearflow.training.machine import machine_description

    checkpoint = None
    if checkpoint_dir is not None:
        checkpoint = TrainingCheckpoint(checkpoint_dir, {"data": str(data_dir), "training": config.to_dict()})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    dataset = scan_class_folders(data_dir)
    num_classes = len(dataset.classes)
    train_set, validation_set, test_set = split_dataset(dataset, config)
    model = initial_model(config, dataset.classes, test_set)
    extra = extra_training_images(config, dataset.classes)
    splits = make_splits(config, train_set, test_set, extra, validation_set)
    fit_set = train_set if extra is None else concatenate_datasets(train_set, extra)
    history = HistoryRecorder(checkpoint.history if checkpoint is not None else ())
    callbacks = []
    if on_epoch_end is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: on_epoch_end(epoch, logs)))
    started = time.perf_counter()
    fitted = fit_classifier(
        model, config, fit_set, num_classes, callbacks=callbacks, history=history, prior_labels=train_set.labels,
        checkpoint=checkpoint,
    )
    train_seconds = time.perf_counter() - started if checkpoint is None else checkpoint.elapsed_seconds()
    history.write_csv(out_dir / "history.csv")
    calibration, validation_figures = calibrate(model, config, validation_set)
    calibrated = in_memory_classifier(model, config, dataset.classes, calibration)
    probabilities, labels = predict_with_classifier(calibrated, test_set)
    metrics = classification_metrics(labels, probabilities, dataset.classes)
    metrics["calibration"] = expected_calibration_error(labels, probabilities)
    metrics.update(
        {
            "split": f"stratified {config.test_fraction:.0%} test split of {Path(data_dir).name}, "
            f"seed {config.splits_seed}",
            "validation": validation_figures,
            "train_images": len(train_set),
            "extra_train_images": 0 if extra is None else len(extra) // config.extra_repeat,
            "test_images": len(test_set),
            "train_seconds": round(train_seconds, 1),
            "keras_backend": keras.backend.backend(),
            "machine": machine_description(),
        }
    )
    metrics["bn_recalibration_images"] = fitted["bn_recalibration_images"]
    if fitted["weights_loaded"]:
        metrics["weights_loaded"] = fitted["weights_loaded"]
    folder = write_model_folder(
        out_dir, model, config=classifier_config(config), training=config.to_dict(), classes=dataset.classes,
        metrics=metrics, splits=splits, calibration=calibration,
    )
    if checkpoint is not None:
        checkpoint.discard()
    return folder
