"""The settings of one training run: :class:`TrainConfig`, saved as a model folder's ``config.json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from smearflow.serialisable import SerialisableConfig

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
