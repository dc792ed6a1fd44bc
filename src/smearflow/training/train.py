"""Train one classifier on a class-folder dataset and save it as a model folder."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
from smearflow.serialisable import SerialisableConfig
from smearflow.training.data import batches

logger = logging.getLogger(__name__)


CLASS_WEIGHTS = ("prior", "balanced", "none")
"""Accepted values of ``TrainConfig.class_weight``."""


@dataclass(frozen=True)
class TrainConfig(SerialisableConfig):
    """Everything that decides a training run; saved as the model's ``config.json``.

    The defaults train the base of the packaged model (``cnn`` at 64 px);
    :func:`smearflow.training.recipe.train_default_model` runs its whole recipe.

    Attributes
    ----------
    weights : dict of str to str
        Local ImageNet weights: ``{"imagenet": FOLDER}`` (Keras' standard
        notop file names) and/or ``{"xception": FILE, ...}`` per backbone.
        Empty: train from scratch. Ignored by architectures without a backbone.
    freeze_backbone_epochs : int
        Epochs at the start during which the backbones are frozen and only
        the head trains (at ``learning_rate``); the remaining epochs fine-tune
        everything but batch norm at ``fine_tune_learning_rate``. A value of
        ``epochs`` or more trains only the head, as the reference study did.
    fine_tune_learning_rate : float, optional
        Learning rate after the frozen epochs; default ``learning_rate / 10``.
    contrastive_epochs : int, optional
        Contrastive architectures (``supcon``): epochs of the first stage,
        which trains the encoder with the supervised contrastive loss;
        default ``epochs``. The second stage trains the softmax head on the
        frozen encoder for ``epochs``.
    contrastive_temperature : float
        Temperature of the supervised contrastive loss.
    projection_dim : int
        Size of the contrastive projection head's output.
    recalibrate_bn_images : int
        After training, batch-norm statistics are re-estimated on this many
        un-augmented training images (0: keep the running averages of
        training). Augmentation resamples every training image, which blurs
        it slightly; without re-estimation the statistics describe blurred
        images while the classifier sees sharp ones (measured on PBC at 64 px:
        91% accuracy on training images before, 99% with fresh statistics).
    init_model : str, optional
        Model folder whose weights training starts from (fine-tuning), of
        the same architecture, input size and classes. Its ``splits.json``
        must show that none of this run's test images trained it.
    extra_data : str, optional
        Class-folder dataset added to the training images only (never to
        the test split), e.g. a laboratory's own white-cell crops from
        ``smearflow export-crops``; it may hold a subset of the classes.
    extra_repeat : int
        Each extra image is seen this many times per epoch (differently
        augmented), so that a few hundred crops weigh against thousands.
    seed : int
        Seeds the weights, the augmentation and the batch order, and the
        splits unless ``split_seed`` is given.
    split_seed : int, optional
        Seeds the test and validation splits (default ``seed``): training
        seeds vary while the test split stays the same images.
    test_images : str, optional
        A text file listing images of the dataset (``class/file``, one per
        line) that form the test split instead of a stratified one: never
        trained or validated on. Nightly retraining passes its gate split
        this way, so a growing dataset never moves a gate image into training.
    class_weight : {"prior", "balanced", "none"}
        ``"prior"``: each class's total weight in the loss is its share of
        the main dataset, so extra images (another microscope's crops, mostly
        neutrophils) add appearance without shifting the class priors the
        model learns; without extra data this is ``"none"``. ``"balanced"``:
        every class weighs the same (scikit-learn's weights). ``"none"``: the
        images' own shares.
    augmentation : {"domain", "basic"}
        Recipe of :func:`smearflow.training.augment.augment`.
    augment_strength : float
        Scales the photometric ranges of the ``"domain"`` recipe.
    validation_fraction : float
        Share of the training part (stratified, same seed) kept out of
        training to fit the temperature and the confidence threshold
        (0: none; the temperature stays 1).
    test_time_augmentation : str
        Views averaged at inference (see
        :data:`smearflow.classifier.calibration.TTA_VIEWS`); stored in the
        model folder's ``calibration.json``.
    """

    architecture: str = "cnn"
    image_size: int = 64
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    class_weight: str = "prior"
    test_fraction: float = 0.15
    seed: int = 20261125
    arch_params: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)
    freeze_backbone_epochs: int = 0
    fine_tune_learning_rate: float | None = None
    contrastive_epochs: int | None = None
    contrastive_temperature: float = 0.1
    projection_dim: int = 128
    recalibrate_bn_images: int = 2048
    init_model: str | None = None
    extra_data: str | None = None
    extra_repeat: int = 8
    split_seed: int | None = None
    test_images: str | None = None
    augmentation: str = "domain"
    augment_strength: float = 0.5
    validation_fraction: float = 0.1
    test_time_augmentation: str = "none"

    def __post_init__(self):
        from smearflow.classifier.calibration import TTA_VIEWS
        from smearflow.training.augment import AUGMENTATIONS

        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1. Received: epochs={self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1. Received: batch_size={self.batch_size}")
        if self.class_weight not in CLASS_WEIGHTS:
            raise ValueError(f"class_weight must be one of {list(CLASS_WEIGHTS)}. Received: class_weight={self.class_weight!r}")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(
                f"augmentation must be one of {list(AUGMENTATIONS)}. Received: augmentation={self.augmentation!r}"
            )
        if self.augment_strength < 0:
            raise ValueError(f"augment_strength must be >= 0. Received: augment_strength={self.augment_strength}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in [0, 1). Received: validation_fraction={self.validation_fraction}"
            )
        if self.test_time_augmentation not in TTA_VIEWS:
            raise ValueError(
                f"test_time_augmentation must be one of {list(TTA_VIEWS)}. "
                f"Received: test_time_augmentation={self.test_time_augmentation!r}"
            )
        if self.freeze_backbone_epochs < 0:
            raise ValueError(
                f"freeze_backbone_epochs must be >= 0. Received: freeze_backbone_epochs={self.freeze_backbone_epochs}"
            )
        if self.fine_tune_learning_rate is not None and not self.fine_tune_learning_rate > 0:
            raise ValueError(
                f"fine_tune_learning_rate must be positive. Received: fine_tune_learning_rate={self.fine_tune_learning_rate}"
            )
        if self.contrastive_epochs is not None and self.contrastive_epochs < 1:
            raise ValueError(
                f"contrastive_epochs must be at least 1. Received: contrastive_epochs={self.contrastive_epochs}"
            )
        if not self.contrastive_temperature > 0:
            raise ValueError(
                f"contrastive_temperature must be positive. Received: contrastive_temperature={self.contrastive_temperature}"
            )
        if self.recalibrate_bn_images < 0:
            raise ValueError(
                f"recalibrate_bn_images must be >= 0. Received: recalibrate_bn_images={self.recalibrate_bn_images}"
            )
        if self.extra_repeat < 1:
            raise ValueError(f"extra_repeat must be at least 1. Received: extra_repeat={self.extra_repeat}")
        if self.projection_dim < 1:
            raise ValueError(f"projection_dim must be at least 1. Received: projection_dim={self.projection_dim}")
        if not isinstance(self.weights, dict):
            raise ValueError(f"weights must be a dict of name to path. Received: weights={self.weights!r}")

    @property
    def splits_seed(self) -> int:
        """The seed of the test and validation splits."""
        return self.seed if self.split_seed is None else self.split_seed

    def total_epochs(self) -> int:
        """Epochs over all training stages (the contrastive stage included)."""
        from smearflow.training.architectures import get_architecture

        if get_architecture(self.architecture).contrastive:
            return (self.contrastive_epochs or self.epochs) + self.epochs
        return self.epochs


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """``n / (k * n_c)`` per class, as scikit-learn's 'balanced' weights."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    if np.any(counts == 0):
        raise ValueError(f"every class needs at least one training image. Received counts: {counts.tolist()}")
    return {i: float(len(labels) / (num_classes * counts[i])) for i in range(num_classes)}


def class_weights(
    mode: str, labels: np.ndarray, num_classes: int, prior_labels: np.ndarray | None = None
) -> dict[int, float] | None:
    """Per-class loss weights for ``TrainConfig.class_weight``.

    Parameters
    ----------
    mode : {"prior", "balanced", "none"}
    labels : ndarray of shape (n,), int
        Labels of every training image (extra images included).
    num_classes : int
    prior_labels : ndarray of shape (m,), int, optional
        Labels of the main dataset, whose class shares ``"prior"`` keeps
        (default ``labels``: no weighting).

    Returns
    -------
    dict of int to float, or None
        None for ``"none"``, and for ``"prior"`` when the shares are already
        those of ``prior_labels``.

    Raises
    ------
    ValueError
        For an unknown mode, or a class with no image in ``labels`` (or in
        ``prior_labels`` for ``"prior"``).
    """
    if mode not in CLASS_WEIGHTS:
        raise ValueError(f"mode must be one of {list(CLASS_WEIGHTS)}. Received: mode={mode!r}")
    if mode == "none":
        return None
    if mode == "balanced":
        return balanced_class_weights(labels, num_classes)
    if prior_labels is None or len(prior_labels) == len(labels):
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    prior_counts = np.bincount(prior_labels, minlength=num_classes).astype(float)
    if np.any(counts == 0) or np.any(prior_counts == 0):
        raise ValueError(
            "every class needs at least one training image. "
            f"Received counts: {counts.tolist()}, main dataset counts: {prior_counts.tolist()}"
        )
    # Weight (main share / actual share): the weighted shares equal the main dataset's.
    shares = counts / counts.sum()
    prior_shares = prior_counts / prior_counts.sum()
    return {i: float(prior_shares[i] / shares[i]) for i in range(num_classes)}


def compile_for_training(
    model, config: TrainConfig, steps_per_epoch: int, *, learning_rate: float | None = None, epochs: int | None = None
):
    """AdamW with cosine decay over ``epochs`` (default ``config.epochs``) and label-smoothed cross-entropy."""
    import keras

    learning_rate = config.learning_rate if learning_rate is None else learning_rate
    epochs = config.epochs if epochs is None else epochs
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=max(1, epochs * steps_per_epoch), warmup_target=None
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )


def predict_dataset(
    model, dataset: ImageDataset, image_size: int, batch_size: int = 64, *, decoded: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and true labels for every readable image of ``dataset``.

    Unreadable images are skipped (logged); ``decoded`` is a shared cache of
    resized images by path (see :func:`~smearflow.training.data.batches`).
    """
    import keras

    probabilities, labels = [], []
    sequence = batches(dataset, image_size, batch_size, training=False, decoded=decoded)
    for index in range(len(sequence)):
        x, y = sequence[index]
        if len(x) == 0:
            continue
        probabilities.append(keras.ops.convert_to_numpy(model(x, training=False)))
        labels.append(y)
    if not probabilities:
        return np.zeros((0, int(model.output_shape[-1])), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(probabilities), np.concatenate(labels)


def predict_with_classifier(classifier, dataset: ImageDataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``classifier.predict_proba`` (temperature and test-time views included) over every readable image.

    Returns
    -------
    probabilities : ndarray of shape (n, n_classes), float32
    labels : ndarray of shape (n,), int
        Unreadable images are skipped (logged).
    """
    probabilities, labels = [], []
    sequence = batches(dataset, classifier.image_size, batch_size, training=False)
    for index in range(len(sequence)):
        x, y = sequence[index]
        if len(x):
            probabilities.append(classifier.predict_proba(x.astype(np.uint8), batch_size=batch_size))
            labels.append(y)
    if not probabilities:
        return np.zeros((0, len(classifier.classes)), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(probabilities), np.concatenate(labels)


class HistoryRecorder:
    """Collects the per-epoch logs of every training stage; ``rows`` is JSON-ready."""

    def __init__(self):
        self.rows: list[dict] = []
        self.stage = "train"

    def callback(self):
        import keras

        def record(epoch, logs):
            row = {"epoch": int(epoch), "stage": self.stage}
            row.update({k: float(v) for k, v in (logs or {}).items()})
            self.rows.append(row)

        return keras.callbacks.LambdaCallback(on_epoch_end=record)

    def write_csv(self, path: str | Path) -> None:
        import csv

        keys = sorted({k for row in self.rows for k in row} - {"epoch", "stage"})
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["epoch", "stage", *keys])
            writer.writeheader()
            writer.writerows(self.rows)


def fit_classifier(
    model,
    config: TrainConfig,
    train_set: ImageDataset,
    num_classes: int,
    *,
    callbacks: list | tuple = (),
    history: HistoryRecorder | None = None,
    decoded: dict | None = None,
    prior_labels: np.ndarray | None = None,
) -> dict:
    """Train ``model`` in place on ``train_set`` following the schedule of ``config``.

    The schedule: local ImageNet weights into the backbones (when
    ``config.weights`` applies); for a contrastive architecture, the encoder
    stage with the supervised contrastive loss and then the head on the
    frozen encoder; otherwise ``freeze_backbone_epochs`` head-only epochs and
    fine-tuning for the rest. Without backbones or freezing this is one plain
    ``fit``. Augmentation and class weights come from the training images
    only.

    Parameters
    ----------
    model : keras.Model
        From :func:`~smearflow.training.architectures.build_model` with
        ``config.architecture``.
    config : TrainConfig
    train_set : ImageDataset
        The images to learn from (a training fold, never validation or test).
    num_classes : int
    callbacks : sequence of keras.callbacks.Callback
        Called in every stage; epoch indices run on across stages.
    history : HistoryRecorder, optional
        Receives each epoch's logs with the stage's name.
    decoded : dict, optional
        Shared cache of resized images (see :func:`~smearflow.training.data.batches`).
    prior_labels : ndarray, optional
        Labels of the main dataset when ``train_set`` also holds extra
        images (see :func:`class_weights`).

    Returns
    -------
    dict
        ``weights_loaded`` (backbone → file) and ``stages`` (name and epochs).

    Raises
    ------
    ValueError, FileNotFoundError
        For weights that do not apply or do not exist.
    """
    from smearflow.training.architectures import (
        get_architecture,
        load_backbone_weights,
        model_backbones,
        set_backbones_trainable,
    )

    architecture = get_architecture(config.architecture)
    callbacks = list(callbacks)
    if history is not None:
        callbacks.append(history.callback())
    loaded = load_backbone_weights(model, config.weights) if config.weights else {}
    if config.weights and not loaded:
        logger.info("%s has no backbone the given weights apply to: training from scratch", config.architecture)
    stages: list[dict] = []

    def run_stage(name: str, fit, epochs: int, initial_epoch: int = 0):
        if history is not None:
            history.stage = name
        stages.append({"stage": name, "epochs": epochs - initial_epoch})
        fit(epochs, initial_epoch)

    first_epoch = 0
    if architecture.contrastive:
        first_epoch = _fit_contrastive_encoder(model, config, train_set, callbacks, decoded, run_stage)
        for layer in model.layers:
            layer.trainable = layer.name == "probabilities"
    train_batches = batches(
        train_set,
        config.image_size,
        config.batch_size,
        training=True,
        seed=config.seed,
        num_classes=num_classes,
        cache=True,
        decoded=decoded,
        augmentation=config.augmentation,
        augment_strength=config.augment_strength,
    )
    class_weight = class_weights(config.class_weight, train_set.labels, num_classes, prior_labels)

    def fit(epochs, initial_epoch):
        model.fit(
            train_batches,
            epochs=epochs,
            initial_epoch=initial_epoch,
            class_weight=class_weight,
            callbacks=callbacks,
            verbose=0,
        )

    freeze = min(config.freeze_backbone_epochs, config.epochs) if model_backbones(model) else 0
    if freeze and not loaded and not architecture.contrastive:
        logger.warning("%s: freezing backbones that hold random weights (no --weights given)", config.architecture)
    if architecture.contrastive:
        compile_for_training(model, config, len(train_batches))
        run_stage("head", fit, first_epoch + config.epochs, first_epoch)
    elif freeze == 0:
        compile_for_training(model, config, len(train_batches))
        run_stage("train", fit, config.epochs)
    else:
        set_backbones_trainable(model, False)
        compile_for_training(model, config, len(train_batches), epochs=freeze)
        run_stage("frozen_backbone", fit, freeze)
        if config.epochs > freeze:
            set_backbones_trainable(model, True)
            fine_tune_rate = config.fine_tune_learning_rate or config.learning_rate / 10
            compile_for_training(
                model, config, len(train_batches), learning_rate=fine_tune_rate, epochs=config.epochs - freeze
            )
            run_stage("fine_tune", fit, config.epochs, freeze)
    recalibrated = recalibrate_batch_norm(
        model, train_set, config.image_size, config.recalibrate_bn_images, seed=config.seed
    )
    return {"weights_loaded": loaded, "stages": stages, "bn_recalibration_images": recalibrated}


def _trainable_batch_norm_layers(layer) -> list:
    import keras

    found = []
    for child in getattr(layer, "layers", ()):
        if isinstance(child, keras.layers.BatchNormalization):
            if child.trainable:
                found.append(child)
        else:
            found.extend(_trainable_batch_norm_layers(child))
    return found


def recalibrate_batch_norm(
    model, dataset: ImageDataset, image_size: int, n_images: int, *, batch_size: int = 128, seed: int = 0
) -> int:
    """Re-estimate batch-norm statistics on un-augmented images, in place.

    Each trainable ``BatchNormalization`` layer's moving mean and variance
    become the average of its batch statistics over ``n_images`` images drawn
    from ``dataset`` (a training set: never validation or test images). The
    weights do not change. Frozen layers keep their statistics.

    Returns
    -------
    int
        Number of images used (0 when the model has no trainable batch norm).
    """
    layers = _trainable_batch_norm_layers(model)
    if not layers or n_images <= 0 or len(dataset) == 0:
        return 0
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(dataset), size=min(n_images, len(dataset)), replace=False))
    sequence = batches(dataset.subset(chosen), image_size, batch_size, training=False)
    momenta = [layer.momentum for layer in layers]
    used = n_batches = 0
    try:
        for k in range(len(sequence)):
            x, _ = sequence[k]
            if len(x) == 0:
                continue
            for layer in layers:
                # momentum n/(n+1) makes the moving value the running mean of the batch values
                layer.momentum = n_batches / (n_batches + 1)
            model(x, training=True)
            used += len(x)
            n_batches += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return used


def _fit_contrastive_encoder(model, config: TrainConfig, train_set, callbacks, decoded, run_stage) -> int:
    """Stage one of SupCon: the encoder and a projection head with the contrastive loss."""
    import keras

    from smearflow.training.contrastive import (
        SupervisedContrastiveLoss,
        projection_model,
    )

    epochs = config.contrastive_epochs or config.epochs
    projector = projection_model(model, config.projection_dim)
    contrastive_batches = batches(
        train_set,
        config.image_size,
        config.batch_size,
        training=True,
        seed=config.seed,
        cache=True,
        decoded=decoded,
        augmentation=config.augmentation,
        augment_strength=config.augment_strength,
    )
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=max(1, epochs * len(contrastive_batches))
    )
    projector.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay),
        loss=SupervisedContrastiveLoss(config.contrastive_temperature),
    )

    def fit(epochs, initial_epoch):
        projector.fit(contrastive_batches, epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks, verbose=0)

    run_stage("contrastive", fit, epochs)
    return epochs


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
):
    """Train ``config.architecture`` on a stratified split and save a model folder.

    The test split (``config.test_fraction``, stratified, fixed seed) is never
    seen during training; its figures go to ``metrics.json``. The file lists of
    both splits go to ``splits.json`` beside the model so that anyone can
    check that nothing leaked.

    Returns
    -------
    ModelFolder
        The saved folder ``out_dir``.
    """
    import keras

    from smearflow.evaluation.metrics import (
        classification_metrics,
        expected_calibration_error,
    )
    from smearflow.training.machine import machine_description

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
    history = HistoryRecorder()
    callbacks = []
    if on_epoch_end is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: on_epoch_end(epoch, logs)))
    started = time.perf_counter()
    fitted = fit_classifier(
        model, config, fit_set, num_classes, callbacks=callbacks, history=history, prior_labels=train_set.labels
    )
    train_seconds = time.perf_counter() - started
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
    return write_model_folder(
        out_dir, model, config=classifier_config(config), training=config.to_dict(), classes=dataset.classes,
        metrics=metrics, splits=splits, calibration=calibration,
    )
