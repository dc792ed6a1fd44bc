"""Preprocessing shared by training and inference.

Both paths resize with the same function so that the classifier sees crops
exactly as it saw its training images. Pixel scaling is not done here: every
architecture carries its own normalisation layers inside the model, so a
model folder is self-contained and takes raw ``0..255`` pixels.
"""

from __future__ import annotations

import logging

import numpy as np

from smearflow.errors import BadImageError
from smearflow.imageio import read_rgb

logger = logging.getLogger(__name__)


def resize_rgb(image: np.ndarray, size_px: int) -> np.ndarray:
    """Resize one RGB ``uint8`` image to ``(size_px, size_px, 3)``.

    Area interpolation when shrinking (no aliasing), bilinear when growing.
    """
    import cv2

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (M, N, 3). Received: shape={image.shape}")
    if size_px < 1:
        raise ValueError(f"size_px must be positive. Received: size_px={size_px}")
    if image.shape[0] == size_px and image.shape[1] == size_px:
        return image
    shrinking = image.shape[0] > size_px or image.shape[1] > size_px
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (size_px, size_px), interpolation=interpolation)


def resize_batch(images: np.ndarray, size_px: int) -> np.ndarray:
    """Resize a batch of shape (n, M, N, 3) to (n, size_px, size_px, 3), uint8."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape (n, M, N, 3). Received: shape={images.shape}")
    out = np.empty((len(images), size_px, size_px, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = resize_rgb(image, size_px)
    return out


def load_resized(path: str, size_px: int) -> np.ndarray | None:
    """Read one training image at ``size_px``; None (and a log line) when unreadable."""
    try:
        return resize_rgb(read_rgb(path), size_px)
    except BadImageError as error:
        logger.warning("skipping %s", error)
        return None
