"""Settings and plan of a benchmark run: :class:`BenchmarkConfig`, its named presets, fold tasks and callbacks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smearflow.serialisable import SerialisableConfig
from smearflow.training.architectures import ARCHITECTURES, get_architecture
from smearflow.training.results import BenchmarkResults, FoldResult
from smearflow.training.train_config import TrainConfig

_FIRST_CLASS_TRAIN_FIELDS = frozenset(
    {
        "architecture",
        "image_size",
        "epochs",
        "batch_size",
        "seed",
        "class_weight",
        "test_fraction",
        "arch_params",
        "weights",
        "freeze_backbone_epochs",
        "fine_tune_learning_rate",
    }
)


@dataclass(frozen=True)
class BenchmarkConfig(SerialisableConfig):
    """Settings of a benchmark run; saved in the run folder as ``benchmark.json``.

    Attributes
    ----------
    architectures : tuple of str
        Registry names, in run order (default: all).
    folds : int
        Stratified cross-validation folds (at least 2).
    image_size : int
        Input side in pixels; at least every architecture's minimum.
    epochs, batch_size : int
        Per fold (a contrastive architecture adds its encoder stage).
    seeds : tuple of int
        One full cross-validation per seed (fold assignment, batch order,
        augmentation, initialisation): several seeds make the shuffling study.
    split_seed : int
        Fixes the subset and the held-out test split, the same for every seed.
    test_fraction : float
    subset_per_class : int, optional
        Keep at most this many images per class (a reduced run).
    smote : bool
        Also report SMOTE-refitted heads (and the refit control).
    class_weight : {"balanced", "none"}
    weights : dict of str to str
        Local ImageNet weights, as :attr:`TrainConfig.weights`.
    freeze_backbone_epochs : int
    fine_tune_learning_rate : float, optional
    arch_params : dict of str to dict
        Architecture name → keyword arguments of its builder.
    training : dict
        Further :class:`~smearflow.training.train.TrainConfig` fields for
        every architecture (``learning_rate``, ``contrastive_epochs`` …).
    patience : int, optional
        Early stopping: a fold stops when its validation accuracy has not
        improved for this many epochs, and keeps its best epoch's weights
        (``None``: train every epoch).
    time_budget_s : float, optional
        Training seconds per architecture, shared evenly by its folds and
        seeds; a fold that reaches its share stops (keeping its best
        weights). The stop reason of every fold is recorded.
    time_budgets_s : dict of str to float
        Architecture → its own training budget in seconds, instead of
        ``time_budget_s`` (the cross-validated cheap networks get more).
    folds_trained : dict of str to int
        Architecture → how many of the ``folds`` to train (the first ones);
        default all. One fold is a single train/validation split: where full
        cross-validation does not fit the time, the expensive networks get
        one split and the cheap ones every fold.
    stopping_images : int
        At most this many validation images (a fixed random draw) score each
        epoch for early stopping; the final figures use the whole fold.
    """

    architectures: tuple[str, ...] = tuple(ARCHITECTURES)
    folds: int = 5
    image_size: int = 224
    epochs: int = 28
    batch_size: int = 64
    seeds: tuple[int, ...] = (20261125,)
    split_seed: int = 20261125
    test_fraction: float = 0.15
    subset_per_class: int | None = None
    smote: bool = True
    class_weight: str = "balanced"
    weights: dict[str, str] = field(default_factory=dict)
    freeze_backbone_epochs: int = 0
    fine_tune_learning_rate: float | None = None
    arch_params: dict[str, dict] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    patience: int | None = None
    time_budget_s: float | None = None
    time_budgets_s: dict[str, float] = field(default_factory=dict)
    folds_trained: dict[str, int] = field(default_factory=dict)
    stopping_images: int = 1024

    def __post_init__(self):
        for name, n in self.folds_trained.items():
            if name not in ARCHITECTURES or isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.folds:
                raise ValueError(
                    f"folds_trained must map architecture names to 1..folds={self.folds}. "
                    f"Received: folds_trained={self.folds_trained!r}"
                )
        for name, seconds in self.time_budgets_s.items():
            if name not in ARCHITECTURES or isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
                raise ValueError(
                    "time_budgets_s must map architecture names to positive seconds. "
                    f"Received: time_budgets_s={self.time_budgets_s!r}"
                )
        if self.stopping_images < 1:
            raise ValueError(f"stopping_images must be positive. Received: stopping_images={self.stopping_images!r}")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise ValueError(f"patience must be a positive integer or None. Received: patience={self.patience!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(
                f"time_budget_s must be positive or None. Received: time_budget_s={self.time_budget_s!r}"
            )
        if isinstance(self.architectures, str) or not self.architectures:
            raise ValueError(f"architectures must be a non-empty list of names. Received: {self.architectures!r}")
        for name in self.architectures:
            get_architecture(name)
        if len(set(self.architectures)) != len(self.architectures):
            raise ValueError(f"architectures must not repeat. Received: {list(self.architectures)}")
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
            raise ValueError(f"folds must be an integer of at least 2. Received: folds={self.folds!r}")
        too_small = [n for n in self.architectures if self.image_size < get_architecture(n).min_image_size]
        if too_small:
            minimums = ", ".join(f"{n} {get_architecture(n).min_image_size}" for n in too_small)
            raise ValueError(
                f"image_size is below the minimum of {minimums} px. Received: image_size={self.image_size}; "
                "raise it or leave these architectures out"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list without repeats. Received: seeds={self.seeds!r}")
        if self.subset_per_class is not None and self.subset_per_class < self.folds + 1:
            raise ValueError(
                f"subset_per_class must leave each class at least folds + 1 images. "
                f"Received: subset_per_class={self.subset_per_class}, folds={self.folds}"
            )
        unknown = sorted(set(self.arch_params) - set(ARCHITECTURES))
        if unknown:
            raise ValueError(f"arch_params names unknown architecture(s) {unknown}. Known: {sorted(ARCHITECTURES)}")
        clash = sorted(set(self.training) & _FIRST_CLASS_TRAIN_FIELDS)
        if clash:
            raise ValueError(f"training must not set {clash}: they are benchmark settings of their own")
        # Every training setting must make a valid TrainConfig (raises on a bad one).
        TrainConfig.from_dict(self._train_fields(self.architectures[0], self.seeds[0]))

    def _train_fields(self, architecture: str, seed: int) -> dict:
        return {
            "architecture": architecture,
            "image_size": self.image_size,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "seed": seed,
            "class_weight": self.class_weight,
            "test_fraction": self.test_fraction,
            "arch_params": dict(self.arch_params.get(architecture, {})),
            "weights": dict(self.weights),
            "freeze_backbone_epochs": self.freeze_backbone_epochs,
            "fine_tune_learning_rate": self.fine_tune_learning_rate,
        } | dict(self.training)

    def train_config(self, architecture: str, seed: int):
        """The :class:`~smearflow.training.train.TrainConfig` of one fold."""
        return TrainConfig.from_dict(self._train_fields(architecture, seed))

    def trained_folds(self, architecture: str) -> int:
        """How many folds of ``architecture`` are trained (per seed)."""
        return self.folds_trained.get(architecture, self.folds)

    def fold_budget_s(self, architecture: str) -> float | None:
        """Training seconds of one fold: the architecture's budget shared by its trained folds and seeds."""
        budget = self.time_budgets_s.get(architecture, self.time_budget_s)
        if budget is None:
            return None
        return budget / (self.trained_folds(architecture) * len(self.seeds))


@dataclass(frozen=True)
class FoldTask:
    """One unit of benchmark work: an architecture on one fold of one seed."""

    architecture: str
    seed: int
    fold: int
    folds: int
    epochs: int
    done: bool = False

    @property
    def label(self) -> str:
        return f"{self.architecture} seed {self.seed} fold {self.fold + 1}/{self.folds}"


class BenchmarkCallbacks:
    """Hooks a caller overrides to follow a benchmark (progress bar, database).

    The default methods do nothing.
    """

    def on_start(self, plan: list[FoldTask], run_folder: Path) -> None:
        """Before any training; ``plan`` lists every fold, ``done`` ones are resumed."""

    def on_epoch_end(self, task: FoldTask, epoch: int, logs: dict) -> None:
        """After each training epoch of a fold (every stage)."""

    def on_fold_end(self, task: FoldTask, entry: FoldResult, resumed: bool) -> None:
        """After a fold is trained and scored, or read back from the run folder (``resumed``)."""

    def on_end(self, results: BenchmarkResults) -> None:
        """After ``results.json`` and the report are written."""


def fold_seed(seed: int, fold: int) -> int:
    """The seed of one fold's training (initialisation, batch order, augmentation, SMOTE)."""
    return int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])




_CPU_SINGLE_SPLIT = ("unet_encoder", "resnet50", "vgg16", "densenet201", "inceptionv3", "xception", "hybrid", "supcon")

_GPU_ORDER = (
    "hybrid", "mobilenetv2", "cnn", "resnet50", "xception", "inceptionv3", "densenet201", "vgg16", "unet_encoder", "supcon"
)

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "architectures": tuple(ARCHITECTURES),
        "folds": 3,
        "folds_trained": {name: 1 for name in _CPU_SINGLE_SPLIT},
        "image_size": 75,
        "epochs": 12,
        "batch_size": 32,
        "patience": 2,
        "time_budget_s": 420.0,
        "time_budgets_s": {"cnn": 1500.0, "mobilenetv2": 900.0},
    },
    "gpu-10min": {
        "architectures": _GPU_ORDER,
        "folds": 3,
        "folds_trained": {name: 1 for name in _GPU_ORDER},
        "image_size": 224,
        "epochs": 10,
        "batch_size": 64,
        "patience": 2,
        "time_budget_s": 150.0,
    },
}
"""Named benchmark settings (``benchmark --preset NAME``).

``cpu``: all ten architectures on the whole training split of a 2-core CPU
host in about 2.5 hours: 75 px (the smallest size every network accepts),
3-fold cross-validation for ``cnn`` and ``mobilenetv2`` and the first of the
three splits for the others, at most 12 epochs per fold with early stopping
(patience 2), and 7 minutes of training per architecture (25 minutes for
``cnn`` and 15 for ``mobilenetv2``, shared by their three folds). Scoring (the
validation fold, the test split, the training fold's embeddings for SMOTE)
comes on top; docs/benchmark.md gives the per-step costs it is sized from.

``gpu-10min``: the reference's size, 224 px, on one modern GPU within ten
minutes: the hybrid first, then as many others as the time allows, each
trained once on the first of three splits (the fixed held-out test split
scores it), 2.5 minutes of training each with early stopping (patience 2).
Run it under ``timeout``: results are written after every architecture.
"""


def preset_config(name: str, **changes: Any) -> BenchmarkConfig:
    """A :class:`BenchmarkConfig` from a named preset, with ``changes`` applied.

    Raises
    ------
    ValueError
        For an unknown preset name.
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown benchmark preset {name!r}. Known: {sorted(PRESETS)}")
    return BenchmarkConfig.from_dict(dict(PRESETS[name]) | changes)
