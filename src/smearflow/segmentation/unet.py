"""A U-Net segmenter: per-pixel probabilities, then the same cell records as the classical one.

The network
-----------
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
(see :func:`masked_segmentation_loss` and
:mod:`smearflow.segmentation.unet_data`).

Scale and colour
----------------
Like the classical segmenter, the U-Net works at a fixed red-cell diameter:
a field is resized so that its red-cell diameter ``D`` (given, or estimated by
:func:`smearflow.segmentation.classical.estimate_rbc_diameter_px`) becomes
``working_rbc_diameter_px`` (never enlarged by more than ``max_upscale``),
then divided by its own background colour (:func:`normalise_field`) so that
the stain cast and lamp colour do not matter.

From probabilities to cells
---------------------------
:func:`cells_from_probabilities` (pure; no network involved):

1. The nucleus, white-cell and platelet probabilities are resized back to
   the field (bilinear, so boundaries keep sub-pixel accuracy) and
   thresholded.
2. **White cells** are connected components of ``wbc | nucleus`` holding at
   least ``min_wbc_nucleus_area_rbc`` red-cell areas of nucleus, holes
   filled. A component with several nucleus groups (fragments closer than
   ``nucleus_merge_distance_rbc`` are one group) is split between them.
   Holes in the nucleus up to ``max_nucleus_hole_area_rbc`` are filled.
3. **Platelets** are platelet components away from white cells, between
   ``min_platelet_area_rbc`` and ``max_platelet_area_rbc``; larger ones are
   split at their distance-transform peaks.
4. **Red cells**, at the working resolution: the red-cell mask minus white
   cells and platelets, central pallor filled, split by a marker watershed on
   its distance transform (peaks within ``rbc_peak_window_rbc``, at least
   ``min_rbc_peak_rbc`` deep), each region resized back to the field.
5. :func:`smearflow.segmentation.border.apply_border_rule` sets ``counted``,
   ``touches_border`` and ``visible_fraction``.

The model folder
----------------
``model.keras``   the network (Keras 3 format, no optimizer state)
``config.json``   :class:`UNetConfig` (architecture, filters, channels, input
                  size, working scale, thresholds, post-processing) plus a
                  ``training`` section describing how it was trained
``metrics.json``  held-out figures
``splits.json``   which images trained it and which were held out
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from smearflow.config import SerialisableConfig
from smearflow.errors import BadModelError
from smearflow.segmentation import Segmentation
from smearflow.segmentation.border import apply_border_rule
from smearflow.segmentation.regions import (
    as_rgb_uint8,
    disc,
    drop_small_regions,
    fill_small_holes,
    labelled_regions,
    make_cell,
    opened,
    split_clump,
    to_field,
)
from smearflow.types import Cell

__all__ = [
    "CHANNELS",
    "DEFAULT_MODEL_DIR",
    "UNET_ARCHITECTURES",
    "UNetConfig",
    "UNetModelFolder",
    "UNetPostprocess",
    "UNetSegmenter",
    "UNetThresholds",
    "build_unet",
    "cells_from_probabilities",
    "masked_segmentation_loss",
    "normalise_field",
    "read_unet_folder",
    "write_unet_folder",
]

logger = logging.getLogger(__name__)

CHANNELS = ("nucleus", "wbc", "rbc", "platelet")
"""Output channels of the network, in order."""
_NUCLEUS, _WBC, _RBC, _PLATELET = range(len(CHANNELS))

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_unet"
"""The packaged model folder used when no ``model_dir`` is given."""

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
SPLITS_FILE = "splits.json"
REQUIRED_FILES = (MODEL_FILE, CONFIG_FILE)
_CONFIG_METADATA_KEYS = ("training", "keras_version", "keras_backend")

_BACKGROUND_SAMPLES = 4000
_NORMALISED_MAX = 1.25
_MIN_PEAK_DEPTH_PX = 2.0


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class UNetThresholds(SerialisableConfig):
    """Probability above which a pixel belongs to each channel."""

    nucleus: float = 0.5
    wbc: float = 0.5
    rbc: float = 0.5
    platelet: float = 0.5

    def __post_init__(self):
        for name in CHANNELS:
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"thresholds.{name} must be in (0, 1). Received: {name}={value}")


@dataclass(frozen=True)
class UNetPostprocess(SerialisableConfig):
    """Sizes used to turn probabilities into cells.

    Suffix ``_rbc``: a multiple of the red-cell diameter ``D``; suffix
    ``_area_rbc``: a multiple of the red-cell disc area ``pi D^2 / 4``.
    """

    min_wbc_nucleus_area_rbc: float = 0.15
    min_wbc_area_rbc: float = 0.3
    nucleus_merge_distance_rbc: float = 1.0
    max_nucleus_hole_area_rbc: float = 0.1
    min_platelet_area_rbc: float = 0.005
    max_platelet_area_rbc: float = 0.25
    platelet_exclusion_rbc: float = 0.1
    max_pallor_area_rbc: float = 0.3
    rbc_peak_window_rbc: float = 0.5
    min_rbc_peak_rbc: float = 0.2
    min_rbc_area_rbc: float = 0.25
    min_border_rbc_area_rbc: float = 0.1

    def __post_init__(self):
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "platelet_exclusion_rbc":
                if value < 0:
                    raise ValueError(f"{item.name} must be zero or positive. Received: {item.name}={value}")
            elif not value > 0:
                raise ValueError(f"{item.name} must be positive. Received: {item.name}={value}")
        if self.min_platelet_area_rbc >= self.max_platelet_area_rbc:
            raise ValueError(
                "min_platelet_area_rbc must be below max_platelet_area_rbc. Received: "
                f"min_platelet_area_rbc={self.min_platelet_area_rbc}, max_platelet_area_rbc={self.max_platelet_area_rbc}"
            )


@dataclass(frozen=True)
class UNetConfig(SerialisableConfig):
    """Architecture, scale and post-processing of a U-Net segmenter (``config.json``).

    Attributes
    ----------
    architecture : str
        Name in :data:`UNET_ARCHITECTURES`.
    filters : tuple of int
        Filters per level, from the full-resolution level to the bottleneck;
        ``depth = len(filters) - 1`` poolings.
    channels : tuple of str
        Output channels; must equal :data:`CHANNELS`.
    input_size_px : int
        Side of the square training patches (inference takes any size).
    working_rbc_diameter_px : float
        Red-cell diameter at the network's resolution.
    rbc_diameter_px : float or None
        Red-cell diameter of the fields in pixels; ``None`` estimates it per field.
    max_upscale : float
        Largest enlargement of a field on its way to the working resolution.
    max_tile_px : int
        Fields larger than this at the working resolution are predicted in
        overlapping tiles (multiple of ``2 ** depth``).
    tile_overlap_px : int
        Margin of each tile that is discarded where tiles meet.
    flip_averaging : bool
        Average the probabilities over the field and its three mirror images
        (test-time augmentation; four times the network's work).
    thresholds : UNetThresholds
    postprocess : UNetPostprocess
    """

    architecture: str = "unet"
    filters: tuple[int, ...] = (16, 32, 64, 128)
    channels: tuple[str, ...] = CHANNELS
    input_size_px: int = 128
    working_rbc_diameter_px: float = 32.0
    rbc_diameter_px: float | None = None
    max_upscale: float = 1.0
    max_tile_px: int = 1024
    tile_overlap_px: int = 32
    flip_averaging: bool = True
    thresholds: UNetThresholds = UNetThresholds()
    postprocess: UNetPostprocess = UNetPostprocess()

    def __post_init__(self):
        if isinstance(self.thresholds, dict):
            object.__setattr__(self, "thresholds", UNetThresholds.from_dict(self.thresholds))
        if isinstance(self.postprocess, dict):
            object.__setattr__(self, "postprocess", UNetPostprocess.from_dict(self.postprocess))
        object.__setattr__(self, "filters", tuple(self.filters))
        object.__setattr__(self, "channels", tuple(self.channels))
        if self.architecture not in UNET_ARCHITECTURES:
            raise ValueError(
                f"architecture must be one of {sorted(UNET_ARCHITECTURES)}. Received: architecture={self.architecture!r}"
            )
        _check_filters(self.filters)
        if self.channels != CHANNELS:
            raise ValueError(f"channels must be {list(CHANNELS)}. Received: channels={list(self.channels)}")
        if self.input_size_px < self.multiple_px or self.input_size_px % self.multiple_px:
            raise ValueError(
                f"input_size_px must be a positive multiple of 2**depth = {self.multiple_px}. "
                f"Received: input_size_px={self.input_size_px}"
            )
        if not self.working_rbc_diameter_px >= 4:
            raise ValueError(
                f"working_rbc_diameter_px must be at least 4. Received: working_rbc_diameter_px={self.working_rbc_diameter_px}"
            )
        if self.rbc_diameter_px is not None and not self.rbc_diameter_px > 0:
            raise ValueError(f"rbc_diameter_px must be positive. Received: rbc_diameter_px={self.rbc_diameter_px}")
        if not self.max_upscale >= 1.0:
            raise ValueError(f"max_upscale must be at least 1. Received: max_upscale={self.max_upscale}")
        if self.max_tile_px % self.multiple_px or self.max_tile_px <= 2 * self.tile_overlap_px:
            raise ValueError(
                f"max_tile_px must be a multiple of {self.multiple_px} larger than 2 * tile_overlap_px. "
                f"Received: max_tile_px={self.max_tile_px}, tile_overlap_px={self.tile_overlap_px}"
            )
        if self.tile_overlap_px < 0:
            raise ValueError(f"tile_overlap_px must be zero or positive. Received: tile_overlap_px={self.tile_overlap_px}")

    @property
    def depth(self) -> int:
        """Number of poolings."""
        return len(self.filters) - 1

    @property
    def multiple_px(self) -> int:
        """Input sides must be multiples of this (``2 ** depth``)."""
        return 2**self.depth


def _check_filters(filters) -> None:
    if len(filters) < 2 or not all(isinstance(f, int) and f > 0 for f in filters):
        raise ValueError(
            f"filters must list at least two positive integers (one per level). Received: filters={list(filters)}"
        )


# --------------------------------------------------------------------------- network


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
    _check_filters(filters)
    if num_channels < 1:
        raise ValueError(f"num_channels must be at least 1. Received: num_channels={num_channels}")
    multiple = 2 ** (len(filters) - 1)
    if input_size_px is not None and (input_size_px < multiple or input_size_px % multiple):
        raise ValueError(
            f"input_size_px must be a positive multiple of 2**depth = {multiple}. Received: input_size_px={input_size_px}"
        )
    import keras
    from keras import layers

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


def build_from_config(config: UNetConfig, input_size_px: int | None = None):
    """The network a :class:`UNetConfig` describes (uncompiled, fresh weights)."""
    return UNET_ARCHITECTURES[config.architecture](
        filters=config.filters, num_channels=len(config.channels), input_size_px=input_size_px
    )


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
    from keras import ops

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


# --------------------------------------------------------------------------- colour


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
    rows, cols = image.shape[:2]
    step = max(1, int(math.sqrt(rows * cols / _BACKGROUND_SAMPLES)))
    pixels = image[::step, ::step].reshape(-1, 3).astype(np.float32)
    brightness = pixels.sum(axis=1)
    low, high = np.percentile(brightness, [80, 97])
    chosen = pixels[(brightness >= low) & (brightness <= high)]
    background = np.median(chosen if len(chosen) else pixels, axis=0)
    scale = (1.0 / (_NORMALISED_MAX * np.maximum(background, 1.0))).astype(np.float32)
    return np.clip(image.astype(np.float32) * scale, 0.0, 1.0)


# --------------------------------------------------------------------------- model folder


@dataclass(frozen=True)
class UNetModelFolder:
    """The parsed, validated contents of a U-Net model folder (weights not loaded)."""

    path: Path
    config: UNetConfig
    metrics: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def version(self) -> str:
        """``<architecture>-<first 10 hex of the weights' sha256>``."""
        digest = hashlib.sha256(self.weights_path.read_bytes()).hexdigest()[:10]
        return f"{self.config.architecture}-{digest}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BadModelError(f"{path}: not valid JSON ({error})") from None
    except OSError as error:
        raise BadModelError(f"{path}: unreadable ({error})") from None


def read_unet_folder(path: str | Path) -> UNetModelFolder:
    """Read and validate a U-Net model folder without loading the network.

    Parameters
    ----------
    path : str or Path
        The folder.

    Returns
    -------
    UNetModelFolder

    Raises
    ------
    BadModelError
        When the folder or a required file is missing, a JSON file does not
        parse, or ``config.json`` is not a valid :class:`UNetConfig` (the
        message names the file).
    """
    path = Path(path)
    if not path.is_dir():
        raise BadModelError(f"{path}: U-Net model folder does not exist")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise BadModelError(f"{path}: U-Net model folder is missing {', '.join(missing)}")
    raw = _read_json(path / CONFIG_FILE)
    if not isinstance(raw, dict):
        raise BadModelError(f"{path / CONFIG_FILE}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("architecture") not in UNET_ARCHITECTURES:
        raise BadModelError(
            f"{path / CONFIG_FILE}: not a U-Net segmentation model: architecture={raw.get('architecture')!r}, "
            f"expected one of {sorted(UNET_ARCHITECTURES)}"
        )
    training = raw.get("training") or {}
    settings = {k: v for k, v in raw.items() if k not in _CONFIG_METADATA_KEYS}
    try:
        config = UNetConfig.from_dict(settings)
    except (TypeError, ValueError) as error:
        raise BadModelError(f"{path / CONFIG_FILE}: invalid U-Net config: {error}") from None
    metrics: dict[str, Any] = {}
    if (path / METRICS_FILE).is_file():
        metrics = _read_json(path / METRICS_FILE)
        if not isinstance(metrics, dict):
            raise BadModelError(f"{path / METRICS_FILE}: expected a JSON object, got {type(metrics).__name__}")
    splits = _read_json(path / SPLITS_FILE) if (path / SPLITS_FILE).is_file() else None
    return UNetModelFolder(path=path, config=config, metrics=metrics, splits=splits, training=dict(training))


def write_unet_folder(
    path: str | Path,
    model,
    config: UNetConfig,
    *,
    metrics: dict[str, Any] | None = None,
    splits: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> UNetModelFolder:
    """Save a network with its config (and metrics, splits) as a U-Net model folder.

    The weights are copied into a fresh, uncompiled network of any input size
    before saving, so the file holds no optimizer state and no loss.

    Parameters
    ----------
    path : str or Path
        Folder to write (created if needed).
    model : keras.Model
        A network built by :func:`build_from_config` for ``config``.
    config : UNetConfig
    metrics, splits, training : dict, optional
        Written to ``metrics.json``, ``splits.json`` and the ``training``
        section of ``config.json``.

    Returns
    -------
    UNetModelFolder
    """
    import keras

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    clean = build_from_config(config)
    clean.set_weights(model.get_weights())
    clean.save(path / MODEL_FILE)
    document = config.to_dict() | {
        "training": training or {},
        "keras_version": keras.__version__,
        "keras_backend": keras.backend.backend(),
    }
    (path / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    (path / METRICS_FILE).write_text(json.dumps(metrics or {}, indent=2, sort_keys=True) + "\n")
    if splits is not None:
        (path / SPLITS_FILE).write_text(json.dumps(splits, indent=2, sort_keys=True) + "\n")
    return read_unet_folder(path)


# --------------------------------------------------------------------------- segmenter


class UNetSegmenter:
    """Segment white cells, red cells and platelets with a trained U-Net.

    Parameters
    ----------
    model : callable
        The network: maps a float32 batch ``(1, rows, cols, 3)`` to
        probabilities ``(1, rows, cols, len(CHANNELS))`` (a ``keras.Model``,
        or any callable with that contract).
    config : UNetConfig
    rbc_diameter_px : float, optional
        Red-cell diameter of the fields in pixels; overrides
        ``config.rbc_diameter_px``; estimated per field when both are None.
    folder : UNetModelFolder, optional
        Where the model came from.

    Raises
    ------
    ValueError
        When ``rbc_diameter_px`` is not positive.
    """

    def __init__(
        self,
        model,
        config: UNetConfig | None = None,
        *,
        rbc_diameter_px: float | None = None,
        folder: UNetModelFolder | None = None,
    ):
        if rbc_diameter_px is not None and not rbc_diameter_px > 0:
            raise ValueError(f"rbc_diameter_px must be positive. Received: rbc_diameter_px={rbc_diameter_px}")
        self.model = model
        self.config = config if config is not None else UNetConfig()
        self.rbc_diameter_px = rbc_diameter_px if rbc_diameter_px is not None else self.config.rbc_diameter_px
        self.folder = folder

    def __repr__(self) -> str:
        where = self.folder.path if self.folder is not None else "in memory"
        return f"UNetSegmenter({where}, rbc_diameter_px={self.rbc_diameter_px})"

    @property
    def version(self) -> str | None:
        """Version of the model folder (``unet-<sha>``), None for an in-memory model."""
        return self.folder.version if self.folder is not None else None

    @classmethod
    def load(cls, model_dir: str | Path | None = None, *, rbc_diameter_px: float | None = None) -> "UNetSegmenter":
        """Load a U-Net model folder.

        Parameters
        ----------
        model_dir : str or Path, optional
            The folder; the packaged default (:data:`DEFAULT_MODEL_DIR`) when omitted.
        rbc_diameter_px : float, optional
            Red-cell diameter of the fields in pixels (estimated per field when
            omitted and the config has none).

        Returns
        -------
        UNetSegmenter

        Raises
        ------
        BadModelError
            When no folder is given and none is packaged, the folder is
            incomplete or inconsistent, or ``model.keras`` does not load or
            does not match ``config.json``.
        ValueError
            When ``rbc_diameter_px`` is not positive.
        """
        if rbc_diameter_px is not None and not rbc_diameter_px > 0:
            raise ValueError(f"rbc_diameter_px must be positive. Received: rbc_diameter_px={rbc_diameter_px}")
        if model_dir is None:
            if not (DEFAULT_MODEL_DIR / MODEL_FILE).is_file():
                raise BadModelError(
                    f"no U-Net model folder given and no packaged default at {DEFAULT_MODEL_DIR}: pass "
                    "--segmentation-model DIR (model_dir=...) or train one with 'smearflow train-segmentation'"
                )
            model_dir = DEFAULT_MODEL_DIR
        folder = read_unet_folder(model_dir)
        model = _load_network(folder)
        return cls(model, folder.config, rbc_diameter_px=rbc_diameter_px, folder=folder)

    def segment(self, image: np.ndarray) -> Segmentation:
        """Segment one field.

        Parameters
        ----------
        image : ndarray of shape (M, N, 3), uint8 (or float in [0, 1])
            RGB field of view, at least 16 x 16 pixels.

        Returns
        -------
        Segmentation
            Cells in field pixels, the red-cell diameter used and the white
            cells' nucleus mask.

        Raises
        ------
        ValueError
            When ``image`` is not an RGB array of at least 16 x 16 pixels, or
            a float image leaves [0, 1].
        """
        import cv2

        from smearflow.segmentation.classical import estimate_rbc_diameter_px

        image = as_rgb_uint8(image)
        rbc_diameter_px = self.rbc_diameter_px
        if rbc_diameter_px is None:
            rbc_diameter_px = estimate_rbc_diameter_px(image)
        rows, cols = image.shape[:2]
        scale = min(self.config.max_upscale, self.config.working_rbc_diameter_px / rbc_diameter_px)
        work_shape = (max(1, round(rows * scale)), max(1, round(cols * scale)))
        if work_shape != (rows, cols):
            interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            work = cv2.resize(image, (work_shape[1], work_shape[0]), interpolation=interpolation)
        else:
            work = image
        probabilities = self.predict_probabilities(normalise_field(work))
        return cells_from_probabilities(probabilities, (rows, cols), float(rbc_diameter_px), self.config)

    def predict_probabilities(self, field_normalised: np.ndarray) -> np.ndarray:
        """Run the network on a whole normalised field, padding and tiling as needed.

        Parameters
        ----------
        field_normalised : ndarray of shape (m, n, 3), float32
            Output of :func:`normalise_field` at the working resolution.

        Returns
        -------
        ndarray of shape (m, n, len(CHANNELS)), float32
            Probabilities.

        Raises
        ------
        ValueError
            When the array is not ``(m, n, 3)``.
        """
        field_normalised = np.asarray(field_normalised, dtype=np.float32)
        if field_normalised.ndim != 3 or field_normalised.shape[2] != 3:
            raise ValueError(f"field must have shape (m, n, 3). Received: shape={field_normalised.shape}")
        rows, cols = field_normalised.shape[:2]
        tile, overlap = self.config.max_tile_px, self.config.tile_overlap_px
        if rows <= tile and cols <= tile:
            return self._predict_padded(field_normalised)
        out = np.zeros((rows, cols, len(self.config.channels)), dtype=np.float32)
        for r0 in _tile_starts(rows, tile, overlap):
            for c0 in _tile_starts(cols, tile, overlap):
                piece = self._predict_padded(field_normalised[r0 : r0 + tile, c0 : c0 + tile])
                top = overlap if r0 > 0 else 0
                left = overlap if c0 > 0 else 0
                bottom = piece.shape[0] - (overlap if r0 + tile < rows else 0)
                right = piece.shape[1] - (overlap if c0 + tile < cols else 0)
                out[r0 + top : r0 + bottom, c0 + left : c0 + right] = piece[top:bottom, left:right]
        return out

    def _predict_padded(self, x: np.ndarray) -> np.ndarray:
        from keras import ops

        rows, cols = x.shape[:2]
        multiple = self.config.multiple_px
        pad_rows = -rows % multiple
        pad_cols = -cols % multiple
        if pad_rows or pad_cols:
            x = np.pad(x, ((0, pad_rows), (0, pad_cols), (0, 0)), mode="symmetric")
        if self.config.flip_averaging:
            batch = np.stack([x, x[::-1], x[:, ::-1], x[::-1, ::-1]])
        else:
            batch = x[None]
        output = ops.convert_to_numpy(self.model(batch, training=False))
        expected = (len(batch), x.shape[0], x.shape[1], len(self.config.channels))
        if output.shape != expected:
            raise BadModelError(f"the network returned shape {output.shape} for input {batch.shape}; expected {expected}")
        if self.config.flip_averaging:
            output = (output[0] + output[1, ::-1] + output[2, :, ::-1] + output[3, ::-1, ::-1]) / 4.0
        else:
            output = output[0]
        return np.ascontiguousarray(output[:rows, :cols], dtype=np.float32)


def _load_network(folder: UNetModelFolder):
    import keras

    try:
        model = keras.saving.load_model(folder.weights_path, compile=False)
    except Exception as error:  # noqa: BLE001 - any failure to deserialise is a bad model file
        raise BadModelError(f"{folder.weights_path}: cannot load the network ({type(error).__name__}: {error})") from None
    input_shape = tuple(model.input_shape)
    output_shape = tuple(model.output_shape)
    if len(input_shape) != 4 or input_shape[-1] != 3:
        raise BadModelError(f"{folder.weights_path}: network input {input_shape} is not (batch, rows, cols, 3)")
    if len(output_shape) != 4 or output_shape[-1] != len(folder.config.channels):
        raise BadModelError(
            f"{folder.weights_path}: network output {output_shape} does not have the "
            f"{len(folder.config.channels)} channels {list(folder.config.channels)} of {folder.path / CONFIG_FILE}"
        )
    return model


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - 2 * overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


# --------------------------------------------------------------------------- probabilities → cells


def cells_from_probabilities(
    probabilities: np.ndarray,
    image_shape: tuple[int, int],
    rbc_diameter_px: float,
    config: UNetConfig | None = None,
) -> Segmentation:
    """Turn per-pixel probabilities into cells (see the module docstring).

    Parameters
    ----------
    probabilities : ndarray of shape (m, n, 4), float
        Channels :data:`CHANNELS` over the whole field at any resolution
        (usually the working one); resized to ``image_shape`` as needed.
    image_shape : tuple of int
        ``(rows, cols)`` of the field.
    rbc_diameter_px : float
        Red-cell diameter in field pixels.
    config : UNetConfig, optional
        Thresholds and post-processing sizes.

    Returns
    -------
    Segmentation
        Cells in field pixels, ``rbc_diameter_px`` and the nucleus mask.

    Raises
    ------
    ValueError
        When ``probabilities`` is not ``(m, n, 4)``, ``image_shape`` is not
        two positive sides, or ``rbc_diameter_px`` is not positive.
    """
    import cv2

    config = config if config is not None else UNetConfig()
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim != 3 or probabilities.shape[2] != len(CHANNELS) or min(probabilities.shape[:2]) < 1:
        raise ValueError(
            f"probabilities must have shape (m, n, {len(CHANNELS)}). Received: shape={probabilities.shape}"
        )
    if len(image_shape) < 2 or min(image_shape[:2]) < 1:
        raise ValueError(f"image_shape must be (rows, cols) with positive sides. Received: image_shape={image_shape}")
    if not rbc_diameter_px > 0:
        raise ValueError(f"rbc_diameter_px must be positive. Received: rbc_diameter_px={rbc_diameter_px}")
    rows, cols = int(image_shape[0]), int(image_shape[1])
    work_rows, work_cols = probabilities.shape[:2]
    thresholds, post = config.thresholds, config.postprocess
    field_channels = probabilities[..., [_NUCLEUS, _WBC, _PLATELET]]
    if (work_rows, work_cols) != (rows, cols):
        field_channels = cv2.resize(field_channels, (cols, rows), interpolation=cv2.INTER_LINEAR)
    nucleus = field_channels[..., 0] >= thresholds.nucleus
    cell_any = (field_channels[..., 1] >= thresholds.wbc) | nucleus
    wbc_labels = _white_cells(cell_any, nucleus, rbc_diameter_px, post)
    # Chromatin texture leaves pinholes in the predicted nucleus; a nucleus is solid.
    nucleus_mask = fill_small_holes(nucleus & (wbc_labels > 0), post.max_nucleus_hole_area_rbc * _rbc_area(rbc_diameter_px))
    nucleus_mask &= wbc_labels > 0
    platelet_labels = _platelets(field_channels[..., 2] >= thresholds.platelet, wbc_labels, rbc_diameter_px, post)

    scale_rows, scale_cols = work_rows / rows, work_cols / cols
    work_diameter = rbc_diameter_px * math.sqrt(scale_rows * scale_cols)
    taken = ((wbc_labels > 0) | (platelet_labels > 0)).astype(np.float32)
    if (work_rows, work_cols) != (rows, cols):
        taken = cv2.resize(taken, (work_cols, work_rows), interpolation=cv2.INTER_AREA)
    red = (probabilities[..., _RBC] >= thresholds.rbc) & ~(taken > 0.25)
    rbc_labels = _red_cells(red, work_diameter, post)

    cells: list[Cell] = []
    for kind, labels in (("wbc", wbc_labels), ("platelet", platelet_labels)):
        for bbox, mask in labelled_regions(labels):
            cells.append(make_cell(kind, bbox, mask))
    for work_bbox, work_mask in labelled_regions(rbc_labels):
        bbox, mask = to_field(work_mask, work_bbox, (rows, cols), (scale_rows, scale_cols))
        if mask is not None:
            cells.append(make_cell("rbc", bbox, mask))
    return Segmentation(
        cells=apply_border_rule(cells, (rows, cols), rbc_diameter_px),
        rbc_diameter_px=float(rbc_diameter_px),
        image_shape=(rows, cols),
        nucleus_mask=nucleus_mask,
    )


def _rbc_area(diameter: float) -> float:
    return math.pi * diameter * diameter / 4.0


def _white_cells(cell_any: np.ndarray, nucleus: np.ndarray, diameter: float, post: UNetPostprocess) -> np.ndarray:
    """Label image of white cells: components of the cell mask that hold enough nucleus."""
    import cv2
    from scipy import ndimage
    from skimage.segmentation import watershed

    labels = np.zeros(cell_any.shape, dtype=np.int32)
    min_nucleus = post.min_wbc_nucleus_area_rbc * _rbc_area(diameter)
    min_cell = post.min_wbc_area_rbc * _rbc_area(diameter)
    merge_radius = max(1, int(round(0.5 * post.nucleus_merge_distance_rbc * diameter)))
    _, components = cv2.connectedComponents(cell_any.astype(np.uint8), connectivity=8)
    next_label = 1
    for (row0, col0, row1, col1), component in labelled_regions(components):
        slices = np.s_[row0:row1, col0:col1]
        own_nucleus = nucleus[slices] & component
        if np.count_nonzero(own_nucleus) < min_nucleus or np.count_nonzero(component) < min_cell:
            continue
        component = ndimage.binary_fill_holes(component)
        grouped = cv2.dilate(own_nucleus.astype(np.uint8), disc(merge_radius)).astype(bool) & component
        n_groups, groups = cv2.connectedComponents(grouped.astype(np.uint8), connectivity=8)
        groups = np.where(own_nucleus, groups, 0)
        group_area = np.bincount(groups.ravel(), minlength=n_groups)
        kept = [g for g in range(1, n_groups) if group_area[g] >= min_nucleus]
        target = labels[slices]
        if len(kept) <= 1:
            target[component] = next_label
            next_label += 1
            continue
        # Touching white cells: each pixel goes to the nearest nucleus group.
        markers = np.zeros(component.shape, dtype=np.int32)
        for k, group in enumerate(kept, start=1):
            markers[groups == group] = k
        pieces = watershed(ndimage.distance_transform_edt(markers == 0), markers, mask=component)
        for k in range(1, len(kept) + 1):
            piece = pieces == k
            if np.count_nonzero(piece) >= min_cell:
                target[piece] = next_label
                next_label += 1
    return labels


def _platelets(candidates: np.ndarray, wbc_labels: np.ndarray, diameter: float, post: UNetPostprocess) -> np.ndarray:
    """Label image of platelets away from white cells; clumps split at distance peaks."""
    import cv2

    labels = np.zeros(candidates.shape, dtype=np.int32)
    candidates = candidates & (wbc_labels == 0)
    if not candidates.any():
        return labels
    exclusion = int(round(post.platelet_exclusion_rbc * diameter))
    near_wbc = wbc_labels > 0
    if exclusion > 0 and near_wbc.any():
        near_wbc = cv2.dilate(near_wbc.astype(np.uint8), disc(exclusion)).astype(bool)
    min_area = post.min_platelet_area_rbc * _rbc_area(diameter)
    max_area = post.max_platelet_area_rbc * _rbc_area(diameter)
    _, blobs = cv2.connectedComponents(candidates.astype(np.uint8), connectivity=8)
    next_label = 1
    for (row0, col0, row1, col1), blob in labelled_regions(blobs):
        slices = np.s_[row0:row1, col0:col1]
        area = np.count_nonzero(blob)
        if area < min_area or (near_wbc[slices] & blob).any():
            continue
        pieces = [blob] if area <= max_area else split_clump(blob, 0.5 * math.sqrt(max_area / math.pi))
        for piece in pieces:
            if np.count_nonzero(piece) >= min_area:
                labels[slices][piece] = next_label
                next_label += 1
    return labels


def _red_cells(red: np.ndarray, diameter: float, post: UNetPostprocess) -> np.ndarray:
    """Label image of red cells: pallor filled, touching discs split by a distance watershed."""
    import cv2
    from skimage.segmentation import watershed

    labels_shape = red.shape
    if not red.any():
        return np.zeros(labels_shape, dtype=np.int32)
    area = _rbc_area(diameter)
    foreground = opened(red)
    foreground = fill_small_holes(foreground, post.max_pallor_area_rbc * area)
    distance = cv2.distanceTransform(foreground.astype(np.uint8), cv2.DIST_L2, 5)
    window = max(3, int(round(post.rbc_peak_window_rbc * diameter)) | 1)
    peaks = (distance == cv2.dilate(distance, disc(window // 2))) & (
        distance >= max(_MIN_PEAK_DEPTH_PX, post.min_rbc_peak_rbc * diameter)
    )
    n_markers, markers = cv2.connectedComponents(peaks.astype(np.uint8), connectivity=8)
    if n_markers <= 1:
        return np.zeros(labels_shape, dtype=np.int32)
    labels = watershed(-distance, markers, mask=foreground).astype(np.int32)
    return drop_small_regions(labels, n_markers, post.min_rbc_area_rbc * area, post.min_border_rbc_area_rbc * area)
