"""What the U-Net trains on: training images read from dataset folders, and random augmented patches.

Every training image becomes a :class:`TrainingImage` at the working
resolution (red-cell diameter ``working_rbc_diameter_px``): the normalised
field with its targets and weights (:mod:`smearflow.segmentation.unet.targets`).
The folders are read through :mod:`smearflow.datasets`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from smearflow.datasets import image_files, read_boxes_field, read_mask_field
from smearflow.errors import BadDatasetError
from smearflow.segmentation.unet.network import CHANNELS, normalise_field, working_field
from smearflow.segmentation.unet.targets import MIN_RBC_BOXES, box_targets, mask_targets, rbc_diameter_from_boxes

__all__ = ["PatchSampler", "TrainingImage", "load_box_dataset", "load_mask_dataset"]


@dataclass(frozen=True)
class TrainingImage:
    """One training field at the working resolution.

    Attributes
    ----------
    name : str
        ``<dataset>/<image stem>``.
    source : {"masks", "boxes"}
        Which kind of truth the targets come from.
    image : ndarray of shape (m, n, 3), float32
        :func:`~smearflow.segmentation.unet.network.normalise_field` of the resized field.
    target : ndarray of shape (m, n, 4), uint8
        0/1 per channel.
    weight : ndarray of shape (m, n, 4), uint8
        1 where the target is known.
    """

    name: str
    source: str
    image: np.ndarray
    target: np.ndarray
    weight: np.ndarray


def load_mask_dataset(
    path: str | Path,
    names: Iterable[str],
    rbc_diameter_px: float,
    *,
    working_rbc_diameter_px: float = 32.0,
    max_upscale: float = 1.0,
) -> list[TrainingImage]:
    """Read images and label masks of a masks-layout folder as training images.

    Parameters
    ----------
    path : str or Path
        Folder with ``images/<name>.<ext>`` and ``masks/<name>.png``.
    names : iterable of str
        Image stems to read.
    rbc_diameter_px : float
        Red-cell diameter of this dataset's images in pixels.
    working_rbc_diameter_px, max_upscale : float
        The network's scale (see :class:`~smearflow.segmentation.unet.config.UNetConfig`).

    Returns
    -------
    list of TrainingImage

    Raises
    ------
    BadDatasetError
        When an image or mask is missing or unreadable, or a mask does not
        have the size of its image (the message names the file).
    ValueError
        When ``rbc_diameter_px`` is not positive.
    """
    if not rbc_diameter_px > 0:
        raise ValueError(f"rbc_diameter_px must be positive. Received: rbc_diameter_px={rbc_diameter_px}")
    path = Path(path)
    images = image_files(path)
    out = []
    for name in names:
        image, label_mask = read_mask_field(path, name, images)
        work = working_field(image, rbc_diameter_px, working_rbc_diameter_px, max_upscale)
        target, weight = mask_targets(label_mask)
        target = np.stack([_resize_binary(target[..., c], work.shape[:2]) for c in range(len(CHANNELS))], -1)
        weight = np.stack([_resize_binary(weight[..., c], work.shape[:2]) for c in range(len(CHANNELS))], -1)
        out.append(
            TrainingImage(
                name=f"{path.name}/{name}",
                source="masks",
                image=normalise_field(work),
                target=target.astype(np.uint8),
                weight=weight.astype(np.uint8),
            )
        )
    return out


def load_box_dataset(
    path: str | Path,
    names: Iterable[str],
    *,
    working_rbc_diameter_px: float = 32.0,
    max_upscale: float = 1.0,
    band: float = 0.15,
) -> list[TrainingImage]:
    """Read images and Pascal VOC boxes of a boxes-layout folder as training images.

    The red-cell diameter of each image is the median size of its red-cell
    boxes (:func:`rbc_diameter_from_boxes`), or the median over the whole
    selection for images with fewer than three.

    Parameters
    ----------
    path : str or Path
        Folder with ``images/<name>.<ext>`` and ``annotations/<name>.xml``.
    names : iterable of str
        Image stems to read.
    working_rbc_diameter_px, max_upscale : float
        The network's scale.
    band : float
        See :func:`box_targets`.

    Returns
    -------
    list of TrainingImage

    Raises
    ------
    BadDatasetError
        When an image or annotation is missing or unreadable, or no image of
        the selection has three red-cell boxes to tell the scale.
    """
    path = Path(path)
    images = image_files(path)
    fields = []
    for name in names:
        image, boxes, _ = read_boxes_field(path, name, images)
        fields.append((name, image, boxes, rbc_diameter_from_boxes(boxes["rbc"])))
    known = [d for *_, d in fields if d is not None]
    if fields and not known:
        raise BadDatasetError(
            f"{path}: no selected image has {MIN_RBC_BOXES} red-cell boxes, so the red-cell diameter is unknown"
        )
    fallback = float(np.median(known)) if known else 0.0
    out = []
    for name, image, boxes, diameter in fields:
        diameter = diameter if diameter is not None else fallback
        work = working_field(image, diameter, working_rbc_diameter_px, max_upscale)
        factor_rows, factor_cols = work.shape[0] / image.shape[0], work.shape[1] / image.shape[1]
        scaled = {
            kind: [
                (b[0] * factor_rows, b[1] * factor_cols, b[2] * factor_rows, b[3] * factor_cols) for b in kind_boxes
            ]
            for kind, kind_boxes in boxes.items()
        }
        normalised = normalise_field(work)
        target, weight = box_targets(normalised, scaled, diameter * math.sqrt(factor_rows * factor_cols), band)
        out.append(TrainingImage(f"{path.name}/{name}", "boxes", normalised, target, weight))
    return out


def _resize_binary(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape[:2] == shape:
        return mask.astype(bool)
    return cv2.resize(mask.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) >= 0.5


class PatchSampler:
    """Random augmented patches, deterministic in ``(seed, step)``.

    Each patch comes from a source (``"masks"`` or ``"boxes"``) picked with
    equal odds among those present, then an image of that source picked
    uniformly. The patch is a square of ``size_px / s`` working pixels,
    ``s`` log-uniform in ``[1 / scale_jitter, scale_jitter]``, resized to
    ``size_px`` (so the network sees red cells of ``working_rbc_diameter_px
    * s``), then rotated by a multiple of 90 degrees, maybe mirrored, and
    jittered in contrast, per-channel gain and brightness. Where a patch
    overhangs its image, the image is mirrored and the weights are 0.

    Parameters
    ----------
    images : sequence of TrainingImage
    size_px : int
        Patch side.
    batch_size : int
    seed : int
    scale_jitter : float
        At least 1 (1: no scale change).

    Raises
    ------
    ValueError
        When ``images`` is empty or a size is not positive.
    """

    def __init__(
        self,
        images: Sequence[TrainingImage],
        *,
        size_px: int,
        batch_size: int,
        seed: int = 0,
        scale_jitter: float = 1.25,
    ):
        if not images:
            raise ValueError("images must not be empty. Received: 0 training images")
        if size_px < 1 or batch_size < 1:
            raise ValueError(
                f"size_px and batch_size must be positive. Received: size_px={size_px}, batch_size={batch_size}"
            )
        if not scale_jitter >= 1.0:
            raise ValueError(f"scale_jitter must be at least 1. Received: scale_jitter={scale_jitter}")
        self.images = list(images)
        self.size_px = size_px
        self.batch_size = batch_size
        self.seed = seed
        self.scale_jitter = scale_jitter
        by_source: dict[str, list[int]] = {}
        for index, item in enumerate(self.images):
            by_source.setdefault(item.source, []).append(index)
        self._by_source = [by_source[s] for s in sorted(by_source)]

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The patches of one training step.

        Returns
        -------
        x : ndarray of shape (batch_size, size_px, size_px, 3), float32
        y : ndarray of shape (batch_size, size_px, size_px, 8), float32
            Targets then weights, as :func:`~smearflow.segmentation.unet.loss.masked_segmentation_loss` takes them.
        """
        rng = np.random.default_rng([self.seed, step])
        xs, ys = [], []
        for _ in range(self.batch_size):
            pool = self._by_source[rng.integers(len(self._by_source))]
            x, y = self._patch(self.images[pool[rng.integers(len(pool))]], rng)
            xs.append(x)
            ys.append(y)
        return np.stack(xs), np.stack(ys)

    def _patch(self, item: TrainingImage, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        size = self.size_px
        jitter = math.log(self.scale_jitter)
        side = max(2, int(round(size / math.exp(rng.uniform(-jitter, jitter)))))
        image, labels = item.image, np.concatenate([item.target, item.weight], axis=-1)
        rows, cols = image.shape[:2]
        pad_rows, pad_cols = max(0, side - rows), max(0, side - cols)
        if pad_rows or pad_cols:
            top, left = int(rng.integers(pad_rows + 1)), int(rng.integers(pad_cols + 1))
            pads = ((top, pad_rows - top), (left, pad_cols - left), (0, 0))
            image = np.pad(image, pads, mode="symmetric")
            labels = np.pad(labels, pads, mode="constant")
            rows, cols = image.shape[:2]
        r0, c0 = int(rng.integers(rows - side + 1)), int(rng.integers(cols - side + 1))
        image = image[r0 : r0 + side, c0 : c0 + side]
        labels = labels[r0 : r0 + side, c0 : c0 + side]
        if side != size:
            interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
            image = cv2.resize(image, (size, size), interpolation=interpolation)
            labels = cv2.resize(labels.astype(np.float32), (size, size), interpolation=cv2.INTER_NEAREST)
        k = int(rng.integers(4))
        image, labels = np.rot90(image, k), np.rot90(labels, k)
        if rng.random() < 0.5:
            image, labels = image[:, ::-1], labels[:, ::-1]
        contrast = rng.uniform(0.85, 1.15)
        gain = rng.uniform(0.93, 1.07, size=3)
        offset = rng.uniform(-0.04, 0.04)
        mean = image.mean()
        image = np.clip((image - mean) * contrast + mean, 0.0, 1.0) * gain + offset
        return np.clip(image, 0.0, 1.0).astype(np.float32), np.ascontiguousarray(labels, dtype=np.float32)
