"""Train the U-Net segmenter on masks-layout and boxes-layout folders and save a model folder.

The recipe (:func:`train_unet`):

1. Each dataset folder is split with :func:`smearflow.datasets.holdout_split`
   (30 % held out by the sha256 of the image name). Only the tuning part
   trains; ``splits.json`` lists both parts.
2. Training images are read at the working resolution with their targets and
   weights (:mod:`smearflow.segmentation.unet.data`): expert nucleus and
   cytoplasm masks supervise the ``nucleus`` and ``wbc`` channels; boxes
   supervise ``wbc``, ``platelet`` and, where known, ``rbc``.
3. ``epochs * steps_per_epoch`` Adam steps (cosine-decayed learning rate) on
   augmented patches from :class:`~smearflow.segmentation.unet.data.PatchSampler`
   minimise :func:`~smearflow.segmentation.unet.loss.masked_segmentation_loss`
   (:func:`fit_unet`). Seeds fix the weights, the patches and their order.
4. The model folder is written with the training record in ``config.json``
   (the red-cell diameter used for each masks dataset included) and the
   training figures in ``metrics.json``.

The held-out parts are scored afterwards from the folder alone, by
:func:`smearflow.evaluation.heldout.evaluate_heldout`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from smearflow.serialisable import SerialisableConfig
from smearflow.datasets import dataset_layout, dataset_names, holdout_split, image_files
from smearflow.errors import BadDatasetError
from smearflow.imageio import read_rgb
from smearflow.segmentation.diameter import estimate_rbc_diameter_px
from smearflow.segmentation.unet.config import UNetConfig, build_from_config
from smearflow.segmentation.unet.data import PatchSampler, TrainingImage, load_box_dataset, load_mask_dataset
from smearflow.segmentation.unet.folder import UNetModelFolder, write_unet_folder
from smearflow.segmentation.unet.loss import masked_segmentation_loss

__all__ = ["DEFAULT_MASK_RBC_DIAMETER_PX", "UNetTrainConfig", "fit_unet", "train_unet"]

logger = logging.getLogger(__name__)

DEFAULT_MASK_RBC_DIAMETER_PX = (("dataset1", 32.0), ("dataset2", 70.0))
"""Red-cell diameters of the wbcseg parts, measured on their images (dataset1:
red-cell outlines about 32 px across in the 120 px crops; dataset2: 70 px,
also the median of the classical estimator there)."""


@dataclass(frozen=True)
class UNetTrainConfig(SerialisableConfig):
    """Settings of :func:`train_unet` (saved under ``training`` in ``config.json``).

    Attributes
    ----------
    epochs, steps_per_epoch, batch_size : int
        ``epochs * steps_per_epoch`` optimiser steps of ``batch_size`` patches.
    input_size_px : int
        Patch side (a multiple of ``2 ** (len(filters) - 1)``).
    filters : tuple of int
        U-Net filters per level.
    working_rbc_diameter_px : float
        Red-cell diameter at the network's resolution.
    learning_rate : float
        Initial Adam learning rate, cosine-decayed to 2 % of it.
    dice_weight : float
        Weight of the soft-Dice term of the loss.
    scale_jitter : float
        Patches are rescaled by a log-uniform factor in ``[1/j, j]``.
    box_band : float
        Unsupervised ring around each box ellipse (share of its semi-axes).
    holdout_fraction : float
        Share of each dataset held out.
    holdout_seed : str
        Salt of the held-out split.
    seed : int
        Seed of the weights and the patches.
    mask_rbc_diameter_px : tuple of (str, float)
        Red-cell diameter of each masks-layout dataset, by folder name; a
        folder not listed gets the median of the estimated diameter
        (:mod:`smearflow.segmentation.diameter`) over its training images.
    """

    epochs: int = 12
    steps_per_epoch: int = 200
    batch_size: int = 8
    input_size_px: int = 128
    filters: tuple[int, ...] = (16, 32, 64, 128)
    working_rbc_diameter_px: float = 32.0
    learning_rate: float = 2e-3
    dice_weight: float = 1.0
    scale_jitter: float = 1.25
    box_band: float = 0.15
    holdout_fraction: float = 0.3
    holdout_seed: str = "smearflow"
    seed: int = 0
    mask_rbc_diameter_px: tuple[tuple[str, float], ...] = DEFAULT_MASK_RBC_DIAMETER_PX

    def __post_init__(self):
        for name in ("epochs", "steps_per_epoch", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive. Received: learning_rate={self.learning_rate}")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in [0, 1). Received: holdout_fraction={self.holdout_fraction}")
        object.__setattr__(self, "filters", tuple(self.filters))
        object.__setattr__(
            self, "mask_rbc_diameter_px", tuple((str(k), float(v)) for k, v in self.mask_rbc_diameter_px)
        )
        for name, diameter in self.mask_rbc_diameter_px:
            if not diameter > 0:
                raise ValueError(
                    f"mask_rbc_diameter_px must be positive. Received: mask_rbc_diameter_px[{name!r}]={diameter}"
                )
        self.unet_config()  # validates filters, input size and scale

    def unet_config(self) -> UNetConfig:
        """The :class:`UNetConfig` of the model this training produces."""
        return UNetConfig(
            filters=self.filters,
            input_size_px=self.input_size_px,
            working_rbc_diameter_px=self.working_rbc_diameter_px,
        )


def train_unet(
    out_dir: str | Path,
    *,
    mask_dirs: Sequence[str | Path] = (),
    box_dirs: Sequence[str | Path] = (),
    config: UNetTrainConfig = UNetTrainConfig(),
    on_step: Callable[[int, int, float], None] | None = None,
) -> UNetModelFolder:
    """Train a U-Net and write its model folder (see the module docstring).

    Parameters
    ----------
    out_dir : str or Path
        Model folder to write.
    mask_dirs : sequence of str or Path
        Masks-layout dataset folders (one white cell per image, 0/128/255 masks).
    box_dirs : sequence of str or Path
        Boxes-layout dataset folders (Pascal VOC ``WBC``/``RBC``/``Platelets``).
    config : UNetTrainConfig
    on_step : callable, optional
        ``on_step(step, total_steps, mean_loss)`` after each step (progress).

    Returns
    -------
    UNetModelFolder

    Raises
    ------
    ValueError
        When no dataset folder is given, or two share a name.
    BadDatasetError
        When a dataset folder or one of its training files cannot be used.
    """
    datasets = _checked_datasets(mask_dirs, box_dirs)
    start = time.perf_counter()
    splits, diameters, images = _read_tuning_images(datasets, config)
    load_seconds = time.perf_counter() - start
    logger.info("read %d training images in %.1f s", len(images), load_seconds)
    train_start = time.perf_counter()
    model, history = fit_unet(images, config, on_step)
    train_seconds = time.perf_counter() - train_start

    training = config.to_dict() | {
        "datasets": {key: {"layout": s["layout"], "path": s["path"]} for key, s in splits.items()},
        "mask_rbc_diameter_px_used": {k: v for k, v in diameters.items() if v is not None},
        "training_images": len(images),
        "history": history,
    }
    metrics: dict[str, Any] = {
        "train_seconds": round(train_seconds, 1),
        "load_seconds": round(load_seconds, 1),
        "steps": config.epochs * config.steps_per_epoch,
        "final_loss": history[-1]["loss"],
        "training_images": {key: len(s["train"]) for key, s in splits.items()},
        "heldout_images": {key: len(s["heldout"]) for key, s in splits.items()},
    }
    return write_unet_folder(out_dir, model, config.unet_config(), metrics=metrics, splits=splits, training=training)


def fit_unet(
    images: Sequence[TrainingImage],
    config: UNetTrainConfig,
    on_step: Callable[[int, int, float], None] | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """Train a fresh network on training images (step 3 of the recipe).

    Parameters
    ----------
    images : sequence of TrainingImage
    config : UNetTrainConfig
    on_step : callable, optional
        ``on_step(step, total_steps, mean_loss)`` after each step.

    Returns
    -------
    model : keras.Model
        Built for ``config.input_size_px`` patches.
    history : list of dict
        ``{"epoch": n, "loss": mean loss}`` per epoch.
    """
    keras.utils.set_random_seed(config.seed)
    sampler = PatchSampler(
        images, size_px=config.input_size_px, batch_size=config.batch_size, seed=config.seed, scale_jitter=config.scale_jitter
    )
    model = build_from_config(config.unet_config(), input_size_px=config.input_size_px)
    total_steps = config.epochs * config.steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=total_steps, alpha=0.02)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=schedule),
        loss=masked_segmentation_loss(config.dice_weight),
        jit_compile=False,
    )
    # Built up front, the optimizer's variables exist before the first step is
    # traced, so the step is traced once instead of twice.
    model.optimizer.build(model.trainable_variables)
    history = []
    for epoch in range(config.epochs):
        losses = []
        for step_in_epoch in range(config.steps_per_epoch):
            step = epoch * config.steps_per_epoch + step_in_epoch
            x, y = sampler.batch(step)
            loss = model.train_on_batch(x, y)
            losses.append(float(np.asarray(loss).reshape(-1)[0]))
            if on_step is not None:
                on_step(step + 1, total_steps, float(np.mean(losses)))
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses))})
        logger.info("epoch %d/%d loss %.4f", epoch + 1, config.epochs, history[-1]["loss"])
    return model, history


def _checked_datasets(mask_dirs: Sequence[str | Path], box_dirs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """The dataset folders with their layouts, checked: at least one, distinct names, the layout expected."""
    datasets = [(Path(p), "masks") for p in mask_dirs] + [(Path(p), "boxes") for p in box_dirs]
    if not datasets:
        raise ValueError("train_unet needs at least one dataset folder. Received: mask_dirs=(), box_dirs=()")
    keys = [p.name for p, _ in datasets]
    if len(set(keys)) != len(keys):
        raise ValueError(f"dataset folders must have distinct names. Received: {[str(p) for p, _ in datasets]}")
    for path, layout in datasets:
        found = dataset_layout(path)
        if found != layout:
            raise BadDatasetError(f"{path}: expected a {layout}-layout dataset, found the {found} layout")
    return datasets


def _read_tuning_images(
    datasets: list[tuple[Path, str]], config: UNetTrainConfig
) -> tuple[dict[str, dict[str, Any]], dict[str, float | None], list[TrainingImage]]:
    """Steps 1 and 2 of the recipe: the splits, the red-cell diameter of each masks dataset, the training images."""
    unet_config = config.unet_config()
    scale = {"working_rbc_diameter_px": unet_config.working_rbc_diameter_px, "max_upscale": unet_config.max_upscale}
    known_diameters = dict(config.mask_rbc_diameter_px)
    splits: dict[str, dict[str, Any]] = {}
    diameters: dict[str, float | None] = {}
    images: list[TrainingImage] = []
    for path, layout in datasets:
        tuning, held_out = holdout_split(dataset_names(path), config.holdout_fraction, config.holdout_seed)
        splits[path.name] = {"path": str(path), "layout": layout, "train": list(tuning), "heldout": list(held_out)}
        if layout == "masks":
            diameter = known_diameters.get(path.name) or _estimated_diameter(path, tuning)
            diameters[path.name] = diameter
            images += load_mask_dataset(path, tuning, diameter, **scale)
        else:
            diameters[path.name] = None
            images += load_box_dataset(path, tuning, band=config.box_band, **scale)
    if not images:
        raise BadDatasetError(f"no training image left after the held-out split of {[str(p) for p, _ in datasets]}")
    return splits, diameters, images


def _estimated_diameter(path: Path, names: Sequence[str]) -> float:
    """Median of the estimated red-cell diameter over the named images of a dataset folder."""
    images = image_files(path)
    estimates = [estimate_rbc_diameter_px(read_rgb(images[name])) for name in sorted(set(names) & set(images))]
    if not estimates:
        raise BadDatasetError(f"{path}: no training image to estimate the red-cell diameter from")
    diameter = float(np.median(estimates))
    logger.warning("%s: red-cell diameter not given; using the median estimate %.1f px", path, diameter)
    return diameter
