"""Streaming training batches from class-folder datasets (:mod:`smearflow.datasets.class_folders`).

Images stay on disk: batches are decoded, resized and augmented on the fly,
so memory holds one batch of pixels at a time.
"""

from __future__ import annotations

import logging

from smearflow.datasets import ImageDataset

logger = logging.getLogger(__name__)


AUGMENT_OVERSAMPLING = 2
"""Training images are warped at this multiple of the input size, then shrunk.

Rotating an image resamples it with bilinear interpolation, a slight blur.
Warping at twice the size and shrinking with area interpolation afterwards
leaves the training images as sharp as the un-augmented images the model
sees in use (both end with the same area resize); warping at the input size
made a measurable train/test gap (see ``TrainConfig.recalibrate_bn_images``).
"""


def batches(
    dataset: ImageDataset,
    size_px: int,
    batch_size: int,
    *,
    training: bool,
    seed: int = 0,
    num_classes: int | None = None,
    cache: bool = False,
    decoded: dict | None = None,
    augmentation: str = "domain",
    augment_strength: float = 1.0,
):
    """A Keras ``PyDataset`` over ``dataset`` (shuffled and augmented when training).

    Training images go through :func:`smearflow.training.augment.augment`
    with ``augmentation`` (the recipe) and ``augment_strength``.

    With ``cache`` the resized ``uint8`` images are kept after their first
    decode so later epochs skip JPEG decoding; augmentation still runs fresh.
    Training images are kept at ``AUGMENT_OVERSAMPLING`` times ``size_px``
    (``len(dataset) * (2 * size_px)**2 * 3`` bytes, about 590 MB for PBC at
    64 px). A ``decoded`` dict does the same keyed by file path and size, and
    can be shared by several sequences (the folds of a benchmark).

    Unreadable images are skipped (logged and counted in ``n_skipped``).
    When every image of a batch is unreadable, an evaluation batch comes back
    empty (shape ``(0, size_px, size_px, 3)``), and a training batch borrows
    readable images from the rest of the epoch so that ``fit`` never gets an
    empty batch.

    Raises
    ------
    BadDatasetError
        From a training batch, when no image of the dataset can be read.
    """
    # Keras loads here, when batches are first wanted, so that importing training code stays light.
    from smearflow.training.class_folder_batches import ClassFolderBatches

    keep = cache if decoded is None else True
    return ClassFolderBatches(
        dataset, size_px, batch_size, training=training, seed=seed, num_classes=num_classes,
        decoded={} if decoded is None else decoded, keep=keep,
        source_size_px=size_px * AUGMENT_OVERSAMPLING if training else size_px,
        augmentation=augmentation, augment_strength=augment_strength,
    )
