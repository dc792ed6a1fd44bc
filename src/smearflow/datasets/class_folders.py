"""Class-folder datasets (the PBC layout): scanning, concatenating, stratified splits and subsets.

A dataset is a folder with one sub-folder per class, each holding that
class's images. Only file lists and labels are held here; pixels are read
when needed (:func:`smearflow.classifier.preprocessing.load_resized`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smearflow.errors import BadDatasetError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageDataset:
    """File paths with integer labels; ``classes[label]`` names a label."""

    root: Path
    paths: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices) -> "ImageDataset":
        indices = np.asarray(indices, dtype=int)
        return ImageDataset(self.root, tuple(self.paths[i] for i in indices), self.labels[indices], self.classes)

    def class_counts(self) -> dict[str, int]:
        return {c: int(np.sum(self.labels == i)) for i, c in enumerate(self.classes)}


def scan_class_folders(
    root: str | Path, classes: tuple[str, ...] | list[str] | None = None, *, allow_missing: bool = False
) -> ImageDataset:
    """List a class-folder dataset.

    Parameters
    ----------
    root : str or Path
        Folder with one sub-folder per class.
    classes : sequence of str, optional
        Expected class names in model order. When given, every one must be a
        non-empty folder under ``root``; extra folders are ignored with a
        warning. When None, every non-hidden sub-folder is a class, sorted.
    allow_missing : bool
        Let expected classes have no folder (extra training data that holds
        some classes only); labels still index ``classes``.

    Raises
    ------
    BadDatasetError
        When ``root`` does not exist, has no class folders, a class folder
        holds no image, an expected class is missing (unless
        ``allow_missing``), or no expected class has a folder.
    """
    from smearflow.imageio import is_image_file

    root = Path(root)
    if not root.is_dir():
        raise BadDatasetError(f"{root}: dataset folder does not exist")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise BadDatasetError(f"{root}: no class folders found")
    if classes is None:
        classes = tuple(found)
    else:
        classes = tuple(classes)
        missing = [c for c in classes if c not in found]
        if len(missing) == len(classes):
            raise BadDatasetError(f"{root}: none of the classes {list(classes)} has a folder in the dataset")
        if missing and not allow_missing:
            raise BadDatasetError(f"{root}: the model's class(es) {missing} have no folder in the dataset")
        extra = [c for c in found if c not in classes]
        if extra:
            logger.warning("%s: ignoring folder(s) %s that are not among the model's classes", root, extra)
    paths, labels = [], []
    for label, name in enumerate(classes):
        if name not in found:
            continue
        files = sorted(p for p in (root / name).iterdir() if is_image_file(p))
        if not files:
            raise BadDatasetError(f"{root / name}: class folder holds no image")
        paths.extend(str(p) for p in files)
        labels.extend([label] * len(files))
    return ImageDataset(root, tuple(paths), np.asarray(labels, dtype=np.int64), classes)


def concatenate_datasets(first: ImageDataset, *others: ImageDataset) -> ImageDataset:
    """One dataset holding the images of all, under ``first``'s root and classes.

    Raises
    ------
    ValueError
        When the class lists differ (labels would mean different classes).
    """
    for other in others:
        if other.classes != first.classes:
            raise ValueError(f"datasets have different classes: {list(first.classes)} and {list(other.classes)}")
    paths = sum((d.paths for d in others), first.paths)
    labels = np.concatenate([first.labels, *(d.labels for d in others)])
    return ImageDataset(first.root, paths, labels, first.classes)


def stratified_holdout(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` of a stratified split with a fixed seed."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1). Received: test_fraction={test_fraction}")
    indices = np.arange(len(labels))
    train, test = train_test_split(indices, test_size=test_fraction, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(test)


def stratified_folds(labels: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold cross-validation indices ``[(train, validation), ...]``.

    Parameters
    ----------
    labels : ndarray of shape (n,), int
        Class index of each image (of the training part only: the held-out
        test split never enters cross-validation).
    n_folds : int
        Number of folds, at least 2.
    seed : int
        Shuffles the images before they are dealt into folds; another seed
        gives another split order.

    Returns
    -------
    list of (ndarray, ndarray)
        Sorted index arrays into ``labels``; the validation parts partition
        ``range(n)``.

    Raises
    ------
    ValueError
        When ``n_folds`` < 2 or a class has fewer than ``n_folds`` images.
    """
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer of at least 2. Received: n_folds={n_folds!r}")
    counts = np.bincount(labels) if len(labels) else np.zeros(0, int)
    present = counts[counts > 0]
    if len(present) == 0 or present.min() < n_folds:
        raise ValueError(
            f"every class needs at least n_folds={n_folds} images for stratified folds. "
            f"Received class counts: {counts.tolist()}"
        )
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(np.sort(train), np.sort(val)) for train, val in splitter.split(np.zeros(len(labels)), labels)]


def subset_per_class(dataset: ImageDataset, per_class: int, seed: int) -> ImageDataset:
    """At most ``per_class`` images of each class, drawn at random with ``seed``.

    Used to run a benchmark at reduced size; classes with fewer images keep
    them all (logged). The drawn images keep the dataset's order.

    Raises
    ------
    ValueError
        When ``per_class`` < 1.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1. Received: per_class={per_class}")
    rng = np.random.default_rng(seed)
    chosen = []
    for label, name in enumerate(dataset.classes):
        members = np.flatnonzero(dataset.labels == label)
        if len(members) <= per_class:
            if len(members) < per_class:
                logger.info(
                    "class %s has %d images, fewer than the subset size %d: keeping all", name, len(members), per_class
                )
            chosen.append(members)
        else:
            chosen.append(rng.choice(members, size=per_class, replace=False))
    return dataset.subset(np.sort(np.concatenate(chosen)))
