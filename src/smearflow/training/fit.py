"""Fit a classifier in place: class weights, the optimiser, the training stages, batch-norm recalibration.

The pieces :func:`smearflow.training.train.train_classifier` and the
benchmark share; no files are written here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from sklearn.utils.class_weight import compute_class_weight

from smearflow.datasets import ImageDataset
from smearflow.training.architectures import (
    get_architecture,
    load_backbone_weights,
    model_backbones,
    set_backbones_trainable,
)
from smearflow.training.checkpoint import TrainingCheckpoint
from smearflow.training.data import batches
from smearflow.training.train_config import CLASS_WEIGHTS, TrainConfig

logger = logging.getLogger(__name__)


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
        counts = np.bincount(labels, minlength=num_classes)
        if np.any(counts == 0):
            raise ValueError(f"every class needs at least one training image. Received counts: {counts.tolist()}")
        weights = compute_class_weight("balanced", classes=np.arange(num_classes), y=labels)
        return {i: float(w) for i, w in enumerate(weights)}
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

    def __init__(self, rows: Iterable[dict] = ()):
        self.rows: list[dict] = [dict(row) for row in rows]
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
    checkpoint: TrainingCheckpoint | None = None,
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
    checkpoint : TrainingCheckpoint, optional
        Saves every epoch; a stage it holds resumes after its last saved
        epoch, and a finished stage is only restored.

    Returns
    -------
    dict
        ``weights_loaded`` (backbone → file) and ``stages`` (name and epochs).

    Raises
    ------
    ValueError, FileNotFoundError
        For weights that do not apply or do not exist.
    """
    architecture = get_architecture(config.architecture)
    callbacks = list(callbacks)
    if history is not None:
        callbacks.append(history.callback())
    loaded = load_backbone_weights(model, config.weights) if config.weights else {}
    if config.weights and not loaded:
        logger.info("%s has no backbone the given weights apply to: training from scratch", config.architecture)
    stages: list[dict] = []

    def run_stage(name: str, fit, epochs: int, initial_epoch: int = 0, fitted=model):
        if history is not None:
            history.stage = name
        stages.append({"stage": name, "epochs": epochs - initial_epoch})
        saving = []
        if checkpoint is not None:
            initial_epoch = max(initial_epoch, checkpoint.restore(fitted, name))
            saving = [checkpoint.callback(name, history.rows if history is not None else [])]
        if initial_epoch < epochs:
            fit(epochs, initial_epoch, saving)

    if architecture.contrastive:
        _fit_contrastive_encoder(model, config, train_set, callbacks, decoded, run_stage)
        for layer in model.layers:
            layer.trainable = layer.name == "probabilities"
    train_batches = batches(
        train_set, config.image_size, config.batch_size, training=True, seed=config.seed, num_classes=num_classes,
        cache=True, decoded=decoded, augmentation=config.augmentation, augment_strength=config.augment_strength,
    )
    class_weight = class_weights(config.class_weight, train_set.labels, num_classes, prior_labels)

    def fit(epochs, initial_epoch, saving):
        train_batches.start_at_epoch(initial_epoch)
        model.fit(
            train_batches,
            epochs=epochs,
            initial_epoch=initial_epoch,
            class_weight=class_weight,
            callbacks=callbacks + saving,
            shuffle=False,  # the batches shuffle themselves, by seed and epoch
            verbose=0,
        )

    _train_stages(model, config, len(train_batches), fit, run_stage, bool(loaded))
    recalibrated = recalibrate_batch_norm(
        model, train_set, config.image_size, config.recalibrate_bn_images, seed=config.seed
    )
    return {"weights_loaded": loaded, "stages": stages, "bn_recalibration_images": recalibrated}


def _train_stages(model, config: TrainConfig, steps_per_epoch: int, fit, run_stage, loaded: bool) -> None:
    """The classifier's stages: the head (contrastive), one plain fit, or frozen backbones then fine-tuning."""
    architecture = get_architecture(config.architecture)
    freeze = min(config.freeze_backbone_epochs, config.epochs) if model_backbones(model) else 0
    if freeze and not loaded and not architecture.contrastive:
        logger.warning("%s: freezing backbones that hold random weights (no --weights given)", config.architecture)
    if architecture.contrastive:
        compile_for_training(model, config, steps_per_epoch)
        first_epoch = config.contrastive_epochs or config.epochs
        run_stage("head", fit, first_epoch + config.epochs, first_epoch)
    elif freeze == 0:
        compile_for_training(model, config, steps_per_epoch)
        run_stage("train", fit, config.epochs)
    else:
        set_backbones_trainable(model, False)
        compile_for_training(model, config, steps_per_epoch, epochs=freeze)
        run_stage("frozen_backbone", fit, freeze)
        if config.epochs > freeze:
            set_backbones_trainable(model, True)
            fine_tune_rate = config.fine_tune_learning_rate or config.learning_rate / 10
            compile_for_training(model, config, steps_per_epoch, learning_rate=fine_tune_rate, epochs=config.epochs - freeze)
            run_stage("fine_tune", fit, config.epochs, freeze)


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

    def fit(epochs, initial_epoch, saving):
        contrastive_batches.start_at_epoch(initial_epoch)
        projector.fit(
            contrastive_batches, epochs=epochs, initial_epoch=initial_epoch, callbacks=callbacks + saving,
            shuffle=False, verbose=0,
        )

    run_stage("contrastive", fit, epochs, fitted=projector)
    return epochs
