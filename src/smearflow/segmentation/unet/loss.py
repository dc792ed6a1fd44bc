"""The training loss of the U-Net: cross-entropy and soft Dice, weighted per pixel and channel."""

from __future__ import annotations

from typing import Callable

from keras import ops

__all__ = ["masked_segmentation_loss"]


def masked_segmentation_loss(dice_weight: float = 1.0, smooth: float = 1.0) -> Callable:
    """A Keras loss of binary cross-entropy plus soft Dice, each weighted per pixel and channel.

    ``y_true`` packs the targets and their weights,
    ``concatenate([target, weight], axis=-1)`` of shape
    ``(batch, rows, cols, 2 * C)``; ``y_pred`` holds the probabilities,
    ``(batch, rows, cols, C)``. For each channel ``c`` over the whole batch::

        bce_c  = sum(w * BCE(y, p)) / max(sum(w), 1)
        dice_c = 1 - (2 sum(w y p) + s) / (sum(w y) + sum(w p) + s)

    and the loss is ``mean_c(bce_c) + dice_weight * mean_c(dice_c)``. A pixel
    of weight 0 contributes nothing to either term, so a channel the batch
    does not supervise (all its weights 0) adds exactly 0.

    Parameters
    ----------
    dice_weight : float
        Weight of the Dice term (0 for cross-entropy alone).
    smooth : float
        ``s`` above; keeps the Dice term finite and 0 on empty supervision.

    Returns
    -------
    callable
        ``loss(y_true, y_pred) -> scalar``, written with ``keras.ops`` only.

    Raises
    ------
    ValueError
        When ``dice_weight`` is negative or ``smooth`` is not positive.
    """
    if dice_weight < 0:
        raise ValueError(f"dice_weight must be zero or positive. Received: dice_weight={dice_weight}")
    if not smooth > 0:
        raise ValueError(f"smooth must be positive. Received: smooth={smooth}")
    def loss(y_true, y_pred):
        n_channels = ops.shape(y_pred)[-1]
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        target = y_true[..., :n_channels]
        weight = y_true[..., n_channels:]
        p = ops.clip(y_pred, 1e-7, 1.0 - 1e-7)
        bce = -(target * ops.log(p) + (1.0 - target) * ops.log(1.0 - p))
        axes = (0, 1, 2)
        weight_sum = ops.sum(weight, axis=axes)
        bce_per_channel = ops.sum(weight * bce, axis=axes) / ops.maximum(weight_sum, 1.0)
        intersection = ops.sum(weight * target * y_pred, axis=axes)
        sizes = ops.sum(weight * target, axis=axes) + ops.sum(weight * y_pred, axis=axes)
        dice_per_channel = 1.0 - (2.0 * intersection + smooth) / (sizes + smooth)
        return ops.mean(bce_per_channel) + dice_weight * ops.mean(dice_per_channel)

    return loss
