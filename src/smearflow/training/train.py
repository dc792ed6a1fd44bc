"""Train one classifier on a class-folder dataset and save it as a model folder."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from smearflow.config import SerialisableConfig
from smearflow.training.data import ImageDataset, batches, scan_class_folders, stratified_holdout

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig(SerialisableConfig):
    """Everything that decides a training run; saved as the model's ``config.json``."""

    architecture: str = "cnn"
    image_size: int = 64
    epochs: int = 28
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    class_weight: str = "balanced"
    test_fraction: float = 0.15
    seed: int = 20261125
    arch_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1. Received: epochs={self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1. Received: batch_size={self.batch_size}")
        if self.class_weight not in ("balanced", "none"):
            raise ValueError(f"class_weight must be 'balanced' or 'none'. Received: class_weight={self.class_weight!r}")


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """``n / (k * n_c)`` per class, as scikit-learn's 'balanced' weights."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    if np.any(counts == 0):
        raise ValueError(f"every class needs at least one training image. Received counts: {counts.tolist()}")
    return {i: float(len(labels) / (num_classes * counts[i])) for i in range(num_classes)}


def compile_for_training(model, config: TrainConfig, steps_per_epoch: int):
    import keras

    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=max(1, config.epochs * steps_per_epoch), warmup_target=None
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )


def predict_dataset(model, dataset: ImageDataset, image_size: int, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and true labels for every readable image of ``dataset``."""
    import keras

    probabilities, labels = [], []
    sequence = batches(dataset, image_size, batch_size, training=False)
    for index in range(len(sequence)):
        x, y = sequence[index]
        probabilities.append(keras.ops.convert_to_numpy(model(x, training=False)))
        labels.append(y)
    return np.concatenate(probabilities), np.concatenate(labels)


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

    from smearflow.classifier.model_folder import write_model_folder
    from smearflow.training.architectures import build_model
    from smearflow.training.metrics import classification_metrics

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    dataset = scan_class_folders(data_dir)
    num_classes = len(dataset.classes)
    train_idx, test_idx = stratified_holdout(dataset.labels, config.test_fraction, config.seed)
    train_set, test_set = dataset.subset(train_idx), dataset.subset(test_idx)
    (out_dir / "splits.json").write_text(
        json.dumps(
            {
                "seed": config.seed,
                "classes": list(dataset.classes),
                "train": [str(Path(p).relative_to(dataset.root)) for p in train_set.paths],
                "test": [str(Path(p).relative_to(dataset.root)) for p in test_set.paths],
            }
        )
    )
    model = build_model(config.architecture, config.image_size, num_classes, **config.arch_params)
    train_batches = batches(
        train_set, config.image_size, config.batch_size, training=True, seed=config.seed, num_classes=num_classes, cache=True
    )
    compile_for_training(model, config, len(train_batches))
    class_weight = (
        balanced_class_weights(train_set.labels, num_classes) if config.class_weight == "balanced" else None
    )
    callbacks = [keras.callbacks.CSVLogger(str(out_dir / "history.csv"))]
    if on_epoch_end is not None:
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: on_epoch_end(epoch, logs)))
    started = time.perf_counter()
    model.fit(train_batches, epochs=config.epochs, class_weight=class_weight, callbacks=callbacks, verbose=0)
    train_seconds = time.perf_counter() - started
    probabilities, labels = predict_dataset(model, test_set, config.image_size)
    metrics = classification_metrics(labels, probabilities, dataset.classes)
    metrics.update(
        {
            "split": f"stratified {config.test_fraction:.0%} test split of {Path(data_dir).name}, seed {config.seed}",
            "train_images": len(train_set),
            "test_images": len(test_set),
            "train_seconds": round(train_seconds, 1),
            "keras_backend": keras.backend.backend(),
        }
    )
    model_config = config.to_dict() | {"classes": list(dataset.classes), "keras_version": keras.__version__}
    return write_model_folder(out_dir, model, config=model_config, classes=dataset.classes, metrics=metrics)
