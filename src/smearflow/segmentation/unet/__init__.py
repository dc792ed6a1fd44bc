"""A U-Net segmenter: per-pixel probabilities, then the same cell records as the classical one.

The network takes a field at a fixed red-cell diameter, divided by its own
background colour, and returns four independent sigmoid channels
(:data:`CHANNELS`: ``nucleus``, ``wbc``, ``rbc``, ``platelet``); the
probabilities become :class:`smearflow.types.Cell` records by thresholds,
connected components and a watershed. A trained network is a model folder.

Where things are:

``config``       :class:`UNetConfig` (architecture, scale, tiling, thresholds, post-processing)
``network``      :func:`build_unet`, the architecture table, the input convention :func:`normalise_field`
``loss``         :func:`masked_segmentation_loss` (cross-entropy and Dice, weighted per pixel)
``folder``       the model folder: read, write, the packaged default (``default_model/``)
``segmenter``    :class:`UNetSegmenter`: resize, predict (tiled), post-process
``postprocess``  :func:`cells_from_probabilities`
``targets``      training targets and weights from expert masks and from boxes (pure)
``data``         training images read from dataset folders; random augmented patches
``training``     :func:`train_unet`: the recipe that writes a model folder

Importing this package loads Keras; :func:`smearflow.segmentation.make_segmenter`
imports it only when a ``"unet"`` segmenter is built.
"""

from __future__ import annotations

from smearflow.segmentation.unet.config import UNetConfig, UNetPostprocess, UNetThresholds, build_from_config
from smearflow.segmentation.unet.folder import (
    DEFAULT_MODEL_DIR,
    UNetModelFolder,
    read_unet_folder,
    update_unet_metrics,
    write_unet_folder,
)
from smearflow.segmentation.unet.loss import masked_segmentation_loss
from smearflow.segmentation.unet.network import CHANNELS, UNET_ARCHITECTURES, build_unet, normalise_field
from smearflow.segmentation.unet.postprocess import cells_from_probabilities
from smearflow.segmentation.unet.segmenter import UNetSegmenter, build_segmenter

__all__ = [
    "CHANNELS",
    "DEFAULT_MODEL_DIR",
    "UNET_ARCHITECTURES",
    "UNetConfig",
    "UNetModelFolder",
    "UNetPostprocess",
    "UNetSegmenter",
    "UNetThresholds",
    "build_from_config",
    "build_segmenter",
    "build_unet",
    "cells_from_probabilities",
    "masked_segmentation_loss",
    "normalise_field",
    "read_unet_folder",
    "update_unet_metrics",
    "write_unet_folder",
]
