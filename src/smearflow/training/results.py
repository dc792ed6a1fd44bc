"""The typed results of a benchmark: written once by the benchmark, read by the reports, the CLI and the recorder.

A run folder holds one :class:`FoldResult` per architecture × seed × fold
(``folds/<arch>/seed<S>-fold<K>.json``) and one :class:`BenchmarkResults`
(``results.json``) aggregating them. Both round-trip through plain dicts
(``to_dict`` / ``from_dict``); folds written before a field existed read
with its default.

:func:`benchmark_rows` turns results into the database rows of a run: the
one mapping both the ``benchmark`` command and the nightly re-benchmark use.
This module is pure data: no Keras, no database.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VARIANTS = ("network", "refit", "smote")
"""The three softmax heads scored per fold: the network's own, the refit control (no SMOTE) and the SMOTE head."""


def _known(cls, data: dict) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}. Received keys: {sorted(data)}")
    return dict(data)


@dataclass(frozen=True)
class VariantResult:
    """One head's figures on one fold: validation and test metrics (``classification_metrics`` dicts)."""

    validation: dict[str, Any]
    test: dict[str, Any]
    head: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {"validation": self.validation, "test": self.test}
        return data | ({"head": self.head} if self.head is not None else {})

    @classmethod
    def from_dict(cls, data: dict) -> VariantResult:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class FoldResult:
    """One architecture trained on one fold of one seed, scored on its validation fold and the test split.

    ``epochs`` is the planned number; ``epochs_run`` the number trained
    (fewer after early stopping or the time budget, see ``stop_reason``).
    """

    architecture: str
    seed: int
    fold: int
    fold_seed: int
    image_size: int
    epochs: int
    train_images: int
    validation_images: int
    test_images: int
    train_seconds: float
    seconds: float
    machine: str
    keras_backend: str
    variants: dict[str, VariantResult]
    unreadable_images: dict[str, int] = field(default_factory=dict)
    weights_loaded: Any = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    smote_skipped: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    finished_at: str | None = None
    params: int | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    stop_reason: str | None = None
    time_budget_s: float | None = None

    def to_dict(self, *, history: bool = True) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["variants"] = {name: variant.to_dict() for name, variant in self.variants.items()}
        if not history:
            del data["history"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> FoldResult:
        data = _known(cls, data)
        data["variants"] = {name: VariantResult.from_dict(v) for name, v in data["variants"].items()}
        return cls(**data)

    @classmethod
    def read(cls, path: str | Path) -> FoldResult:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def figure(self, variant: str, split: str, metric: str) -> float | None:
        """One scalar, e.g. ``figure("network", "validation", "accuracy")``; ``None`` when absent."""
        chosen = self.variants.get(variant)
        return None if chosen is None else getattr(chosen, split).get(metric)


@dataclass(frozen=True)
class ArchitectureSummary:
    """An architecture's aggregate over its folds and seeds (mean ± std dicts ``{"mean", "std", "n"}``).

    The flat headline figures (``test_accuracy`` … ``heads``) are what a
    reader of ``results.json`` needs first: ``test_*`` the fold-ensemble on
    the held-out test split (the mean over folds when the ensemble is
    incomplete), ``val_accuracy`` the mean over validation folds,
    ``train_seconds`` summed over folds, ``heads`` the SMOTE and control
    (``refit``) heads' figures.
    """

    architecture: str
    image_size: int
    epochs: int
    runs: int
    seeds: list[int]
    machines: list[str]
    seconds_per_fold: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    ensemble_test: dict[str, dict[str, Any]]
    per_seed: dict[str, float] = field(default_factory=dict)
    over_seeds: dict[str, Any] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)
    test_accuracy: float | None = None
    test_macro_f1: float | None = None
    val_accuracy: float | None = None
    train_seconds: float | None = None
    params: int | None = None
    epochs_run: list[int] = field(default_factory=list)
    stop_reasons: dict[str, int] = field(default_factory=dict)
    time_budget_s: float | None = None
    heads: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ArchitectureSummary:
        return cls(**_known(cls, data))


@dataclass(frozen=True)
class BenchmarkResults:
    """The content of a run folder's ``results.json``."""

    config: dict[str, Any]
    data: str
    classes: list[str]
    images: dict[str, int]
    machine: str
    run_folder: str
    complete: bool
    finished_note: str
    architectures: dict[str, ArchitectureSummary]
    folds: list[FoldResult]
    written_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["architectures"] = {name: s.to_dict() for name, s in self.architectures.items()}
        data["folds"] = [fold.to_dict(history=False) for fold in self.folds]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> BenchmarkResults:
        data = _known(cls, data)
        data["architectures"] = {n: ArchitectureSummary.from_dict(s) for n, s in data["architectures"].items()}
        data["folds"] = [FoldResult.from_dict(f) for f in data["folds"]]
        return cls(**data)

    @classmethod
    def read(cls, run_folder: str | Path) -> BenchmarkResults:
        """Read ``results.json`` of a run folder.

        Raises
        ------
        FileNotFoundError
            When the folder has no ``results.json``.
        """
        path = Path(run_folder) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{run_folder} holds no results.json (no finished benchmark)")
        return cls.from_dict(json.loads(path.read_text()))

    def best(self) -> ArchitectureSummary | None:
        """The architecture with the highest test accuracy (``test_accuracy``; ``None`` when none has one)."""
        scored = [s for s in self.architectures.values() if s.test_accuracy is not None]
        return max(scored, key=lambda s: s.test_accuracy) if scored else None


@dataclass(frozen=True)
class BenchmarkRow:
    """One database row of a benchmark run (``benchmark_results``): a fold, or an architecture's aggregate (fold -1)."""

    architecture: str
    fold: int
    metrics: dict[str, Any]
    accuracy: float | None
    macro_f1: float | None
    seconds: float | None

    @property
    def key(self) -> tuple[str, int, Any]:
        return (self.architecture, self.fold, self.metrics.get("seed"))


AGGREGATE_NOTE = "accuracy and macro_f1: held-out test split, fold ensemble"


def fold_row(fold: FoldResult) -> BenchmarkRow:
    """The row of one fold: the whole entry (less its epoch history); accuracy and macro-F1 of the network on validation."""
    metrics = {k: v for k, v in fold.to_dict(history=False).items() if k not in ("architecture", "fold")}
    return BenchmarkRow(
        fold.architecture, fold.fold, metrics, fold.figure("network", "validation", "accuracy"),
        fold.figure("network", "validation", "macro_f1"), fold.seconds,
    )


def aggregate_row(summary: ArchitectureSummary) -> BenchmarkRow:
    """The row of an architecture's aggregate (fold -1): its fold-ensemble test figures."""
    ensemble = summary.ensemble_test.get("network", {})
    return BenchmarkRow(
        summary.architecture, -1, {"aggregate": summary.to_dict(), "note": AGGREGATE_NOTE},
        ensemble.get("accuracy", {}).get("mean"), ensemble.get("macro_f1", {}).get("mean"),
        summary.seconds_per_fold.get("mean"),
    )


def benchmark_rows(results: BenchmarkResults) -> list[BenchmarkRow]:
    """Every row of a benchmark: one per fold, then one aggregate per architecture."""
    return [fold_row(f) for f in results.folds] + [aggregate_row(s) for s in results.architectures.values()]
