"""Streaming training batches from class-folder datasets (:mod:`smearflow.datasets.class_folders`).

Images stay on disk: batches are decoded, resized and augmented on the fly,
so memory holds one batch of pixels at a time.
"""

from __future__ import annotations

import logging

import numpy as np

from smearflow.classifier.preprocessing import load_resized
from smearflow.datasets import ImageDataset
from smearflow.errors import BadDatasetError

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
    import keras

    from smearflow.training.augment import augment

    if decoded is None:
        decoded = {}
        keep = cache
    else:
        keep = True
    source_size_px = size_px * AUGMENT_OVERSAMPLING if training else size_px

    def load(i: int) -> np.ndarray | None:
        key = (dataset.paths[i], source_size_px)
        if key in decoded:
            return decoded[key]
        image = load_resized(dataset.paths[i], source_size_px)
        if keep:
            decoded[key] = image
        return image

    def augmented(image, rng):
        return augment(image, rng, out_size_px=size_px, recipe=augmentation, strength=augment_strength)

    class _ClassFolderBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=2, use_multiprocessing=False)
            self.rng = np.random.default_rng(seed)
            self.order = np.arange(len(dataset))
            if training:
                self.rng.shuffle(self.order)
            self.n_skipped = 0

        def __len__(self):
            return int(np.ceil(len(dataset) / batch_size))

        def __getitem__(self, index):
            chosen = self.order[index * batch_size : (index + 1) * batch_size]
            images, labels = [], []
            # One generator per batch: deterministic for a seed even with worker threads.
            rng = np.random.default_rng([seed, index, self.epoch]) if training else None
            for i in chosen:
                image = load(i)
                if image is None:
                    self.n_skipped += 1
                    continue
                images.append(augmented(image, rng) if training else image)
                labels.append(dataset.labels[i])
            if not images and training:
                images, labels = self._borrow(index, len(chosen), rng)
            if images:
                x = np.stack(images).astype(np.float32)
            else:
                x = np.zeros((0, size_px, size_px, 3), dtype=np.float32)
            y = np.asarray(labels, dtype=np.int64)
            if num_classes is not None:
                y = np.eye(num_classes, dtype=np.float32)[y]
            return x, y

        def _borrow(self, index, wanted, rng):
            # The rest of the epoch's order, wrapping around, after this batch.
            start = (index + 1) * batch_size
            images, labels = [], []
            for i in np.roll(self.order, -start):
                image = load(i)
                if image is not None:
                    images.append(augmented(image, rng))
                    labels.append(dataset.labels[i])
                    if len(images) == wanted:
                        break
            if not images:
                raise BadDatasetError(f"{dataset.root}: none of the {len(dataset)} images can be read")
            logger.warning("batch %d held only unreadable images: filled with %d others", index, len(images))
            return images, labels

        epoch = 0

        def on_epoch_end(self):
            self.epoch += 1
            if training:
                self.rng.shuffle(self.order)

    return _ClassFolderBatches()
