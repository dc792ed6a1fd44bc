"""The Keras ``PyDataset`` of :func:`smearflow.training.data.batches`: decode, resize, augment, batch."""

from __future__ import annotations

import logging

import keras
import numpy as np

from smearflow.classifier.preprocessing import load_resized
from smearflow.datasets import ImageDataset
from smearflow.errors import BadDatasetError
from smearflow.training.augment import augment

logger = logging.getLogger(__name__)


class ClassFolderBatches(keras.utils.PyDataset):
    """Batches of ``dataset`` at ``size_px``; see :func:`smearflow.training.data.batches` for the parameters.

    ``decoded`` caches resized images keyed by (path, source size) when
    ``keep``; ``source_size_px`` is the decode size (larger than ``size_px``
    for training images, which are warped and then shrunk).
    """

    def __init__(
        self,
        dataset: ImageDataset,
        size_px: int,
        batch_size: int,
        *,
        training: bool,
        seed: int,
        num_classes: int | None,
        decoded: dict,
        keep: bool,
        source_size_px: int,
        augmentation: str,
        augment_strength: float,
    ):
        super().__init__(workers=2, use_multiprocessing=False)
        self.dataset, self.size_px, self.batch_size = dataset, size_px, batch_size
        self.training, self.seed, self.num_classes = training, seed, num_classes
        self.decoded, self.keep, self.source_size_px = decoded, keep, source_size_px
        self.augmentation, self.augment_strength = augmentation, augment_strength
        self.n_skipped = 0
        self.start_at_epoch(0)

    def __len__(self):
        return int(np.ceil(len(self.dataset) / self.batch_size))

    def _load(self, i: int) -> np.ndarray | None:
        key = (self.dataset.paths[i], self.source_size_px)
        if key in self.decoded:
            return self.decoded[key]
        image = load_resized(self.dataset.paths[i], self.source_size_px)
        if self.keep:
            self.decoded[key] = image
        return image

    def _augmented(self, image, rng):
        return augment(image, rng, out_size_px=self.size_px, recipe=self.augmentation, strength=self.augment_strength)

    def __getitem__(self, index):
        chosen = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        images, labels = [], []
        # One generator per batch: deterministic for a seed even with worker threads.
        rng = np.random.default_rng([self.seed, index, self.epoch]) if self.training else None
        for i in chosen:
            image = self._load(i)
            if image is None:
                self.n_skipped += 1
                continue
            images.append(self._augmented(image, rng) if self.training else image)
            labels.append(self.dataset.labels[i])
        if not images and self.training:
            images, labels = self._borrow(index, len(chosen), rng)
        if images:
            x = np.stack(images).astype(np.float32)
        else:
            x = np.zeros((0, self.size_px, self.size_px, 3), dtype=np.float32)
        y = np.asarray(labels, dtype=np.int64)
        if self.num_classes is not None:
            y = np.eye(self.num_classes, dtype=np.float32)[y]
        return x, y

    def _borrow(self, index, wanted, rng):
        """Readable images from the rest of the epoch's order (wrapping around) for a batch of unreadable ones.

        Raises
        ------
        BadDatasetError
            When no image of the dataset can be read.
        """
        start = (index + 1) * self.batch_size
        images, labels = [], []
        for i in np.roll(self.order, -start):
            image = self._load(i)
            if image is not None:
                images.append(self._augmented(image, rng))
                labels.append(self.dataset.labels[i])
                if len(images) == wanted:
                    break
        if not images:
            raise BadDatasetError(f"{self.dataset.root}: none of the {len(self.dataset)} images can be read")
        logger.warning("batch %d held only unreadable images: filled with %d others", index, len(images))
        return images, labels

    def start_at_epoch(self, epoch: int) -> None:
        """Serve ``epoch`` (counted from 0 over all training stages) next.

        A training epoch's order and augmentation depend only on the seed
        and the epoch, so a run resumed at an epoch sees the batches an
        uninterrupted run would have seen.
        """
        self.epoch = epoch
        self.order = np.arange(len(self.dataset))
        if self.training:
            np.random.default_rng([self.seed, epoch]).shuffle(self.order)

    def on_epoch_end(self):
        self.start_at_epoch(self.epoch + 1)
