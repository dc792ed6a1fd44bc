"""The U-Net network: its output channels, its input convention and its architecture.

:func:`build_unet` is a plain U-Net written with Keras 3 layers only (it runs
under the TensorFlow, JAX and PyTorch backends). It takes a field of any size
divisible by ``2 ** depth`` (``depth = len(filters) - 1``), RGB float in
``[0, 1]`` after :func:`normalise_field`, and returns four independent sigmoid
channels, in the order of :data:`CHANNELS`:

``nucleus``   white-cell nucleus
``wbc``       the whole white cell, nucleus and cytoplasm
``rbc``       red cell, central pallor included
``platelet``  platelet

The channels are independent (sigmoid, not softmax) because the truth is
partial: a training image may supervise some channels at some pixels only
(see :func:`smearflow.segmentation.unet.loss.masked_segmentation_loss` and
:mod:`smearflow.segmentation.unet.targets`).

The input is a field resized to the working red-cell diameter
(:func:`working_field`), the same in training and in use, divided by the
field's own background colour (:func:`normalise_field`) so that the stain
cast and lamp colour do not matter.
"""

from __future__ import annotations

from typing import Callable

import cv2
import keras
import numpy as np
from keras import layers

from smearflow.segmentation.colour import background_rgb

__all__ = ["CHANNELS", "UNET_ARCHITECTURES", "build_unet", "check_filters", "normalise_field", "working_field"]

CHANNELS = ("nucleus", "wbc", "rbc", "platelet")
"""Output channels of the network, in order."""

_BACKGROUND_SAMPLES = 4000
_NORMALISED_MAX = 1.25


def check_filters(filters) -> None:
    """Refuse filters that are not at least two positive integers.

    Raises
    ------
    ValueError
        Naming the filters received.
    """
    if len(filters) < 2 or not all(isinstance(f, int) and f > 0 for f in filters):
        raise ValueError(
            f"filters must list at least two positive integers (one per level). Received: filters={list(filters)}"
        )


def build_unet(
    *,
    filters: tuple[int, ...] = (16, 32, 64, 128),
    num_channels: int = len(CHANNELS),
    input_size_px: int | None = None,
):
    """Build an uncompiled U-Net with sigmoid outputs.

    Each level is two 3x3 convolutions with batch norm and ReLU; the encoder
    halves the resolution ``len(filters) - 1`` times with max pooling, the
    decoder doubles it with bilinear upsampling and concatenates the skip.

    Parameters
    ----------
    filters : tuple of int
        Filters per level, full resolution first, bottleneck last.
    num_channels : int
        Output channels.
    input_size_px : int, optional
        Fixed square input side (a multiple of ``2 ** depth``); ``None`` takes
        any size.

    Returns
    -------
    keras.Model
        Input ``(batch, rows, cols, 3)`` float in [0, 1]; output
        ``(batch, rows, cols, num_channels)`` float32 probabilities.

    Raises
    ------
    ValueError
        When ``filters`` has fewer than two levels or a non-positive entry,
        ``num_channels`` is below 1, or ``input_size_px`` is not a multiple of
        ``2 ** depth``.
    """
    filters = tuple(filters)
    check_filters(filters)
    if num_channels < 1:
        raise ValueError(f"num_channels must be at least 1. Received: num_channels={num_channels}")
    multiple = 2 ** (len(filters) - 1)
    if input_size_px is not None and (input_size_px < multiple or input_size_px % multiple):
        raise ValueError(
            f"input_size_px must be a positive multiple of 2**depth = {multiple}. Received: input_size_px={input_size_px}"
        )
    def conv_block(x, n_filters: int, name: str):
        for k in range(2):
            x = layers.Conv2D(n_filters, 3, padding="same", use_bias=False, name=f"{name}_conv{k}")(x)
            x = layers.BatchNormalization(name=f"{name}_bn{k}")(x)
            x = layers.Activation("relu", name=f"{name}_relu{k}")(x)
        return x

    inputs = keras.Input(shape=(input_size_px, input_size_px, 3), name="field")
    x = inputs
    skips = []
    for level, n_filters in enumerate(filters[:-1]):
        x = conv_block(x, n_filters, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(name=f"down{level}_pool")(x)
    x = conv_block(x, filters[-1], "bottleneck")
    for level in reversed(range(len(filters) - 1)):
        x = layers.UpSampling2D(interpolation="bilinear", name=f"up{level}_upsample")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = conv_block(x, filters[level], f"up{level}")
    outputs = layers.Conv2D(num_channels, 1, activation="sigmoid", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="unet")


UNET_ARCHITECTURES: dict[str, Callable] = {"unet": build_unet}
"""Segmentation architectures by name; each takes ``filters``, ``num_channels``, ``input_size_px``."""


def normalise_field(image: np.ndarray) -> np.ndarray:
    """Divide a field by its background colour: the network's input convention.

    The background colour is the median of the pixels between the 80th and
    97th brightness percentile (the brightest few percent are glare). After
    division the background is 1.0 in every channel; values are clipped to
    ``[0, 1.25]`` and scaled into ``[0, 1]``.

    Parameters
    ----------
    image : ndarray of shape (M, N, 3), uint8
        RGB field.

    Returns
    -------
    ndarray of shape (M, N, 3), float32
        In ``[0, 1]``; background at 0.8.

    Raises
    ------
    ValueError
        When ``image`` is not an ``(M, N, 3)`` uint8 array.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be an (M, N, 3) uint8 array. Received: shape={image.shape}, dtype={image.dtype}"
        )
    background = background_rgb(image, _BACKGROUND_SAMPLES)
    scale = (1.0 / (_NORMALISED_MAX * np.maximum(background, 1.0))).astype(np.float32)
    return np.clip(image.astype(np.float32) * scale, 0.0, 1.0)


def working_field(
    image: np.ndarray, rbc_diameter_px: float, working_rbc_diameter_px: float, max_upscale: float
) -> np.ndarray:
    """A field resized so that its red-cell diameter becomes ``working_rbc_diameter_px``.

    The scale is ``min(max_upscale, working_rbc_diameter_px / rbc_diameter_px)``;
    shrinking uses area interpolation, enlarging bilinear. A field whose size
    would not change is returned as it is.

    Parameters
    ----------
    image : ndarray of shape (M, N, ...)
        The field.
    rbc_diameter_px : float
        Its red-cell diameter in pixels, positive.
    working_rbc_diameter_px, max_upscale : float
        The network's scale (see :class:`~smearflow.segmentation.unet.config.UNetConfig`).

    Returns
    -------
    ndarray of shape (m, n, ...), the dtype of ``image``
    """
    scale = min(max_upscale, working_rbc_diameter_px / rbc_diameter_px)
    rows, cols = image.shape[:2]
    shape = (max(1, round(rows * scale)), max(1, round(cols * scale)))
    if shape == (rows, cols):
        return image
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (shape[1], shape[0]), interpolation=interpolation)
