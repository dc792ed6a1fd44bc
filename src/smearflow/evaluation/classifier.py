"""Evaluate a trained classifier on any class-folder dataset."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from smearflow.errors import BadDatasetError
from smearflow.classifier.preprocessing import load_resized
from smearflow.datasets import scan_class_folders

logger = logging.getLogger(__name__)


def evaluate_classifier(classifier, data_dir: str | Path, batch_size: int = 64, only=None) -> dict:
    """Score a :class:`~smearflow.classifier.Classifier` on a class-folder dataset.

    Images go through the same resize and ``predict_proba`` as crops do in
    ``analyze``. Mismatches between the model and the data are skipped and
    reported, never guessed:

    - a data folder whose name is not one of the model's classes is ignored
      (logged; its image count is reported);
    - a model class without a data folder is reported; the macro and weighted
      figures average over the classes present in the data, while per-class
      figures and the confusion matrix keep every model class (so
      predictions of an absent class still show as errors);
    - unreadable images are skipped, logged and counted.

    Parameters
    ----------
    classifier : Classifier
    data_dir : str or Path
        One sub-folder per class.
    batch_size : int
        Images per forward pass.
    only : iterable of str, optional
        Dataset-relative names (``class/file.jpg``) to score, e.g. the
        ``test`` list of a model's ``splits.json``; the other images are left
        out and named images absent from the folder are counted in
        ``skipped["listed_but_absent"]``.

    Returns
    -------
    dict
        JSON-ready: the keys of
        :func:`~smearflow.evaluation.metrics.classification_metrics`
        (``accuracy``, ``macro_precision``, ``macro_recall``, ``macro_f1``,
        ``per_class``, ``confusion_matrix``, ``classes``, ``images`` …), plus
        ``calibration`` (ECE over 15 bins and the reliability table, of the
        calibrated probabilities), ``confidence`` (the model's temperature,
        threshold and test-time views, and the coverage and accuracy of the
        images at or above the threshold), ``skipped`` (``unreadable_images``, ``unreadable_files``,
        ``data_classes_not_in_model``, ``model_classes_without_data``),
        ``dataset`` and ``model_version``.

    Raises
    ------
    BadDatasetError
        When the folder is missing, has no class folder, shares no class with
        the model, a shared class folder holds no image, no image can be read,
        or none of the ``only`` names is in the folder.
    ValueError
        When ``batch_size`` < 1.
    """
    from smearflow.evaluation.metrics import classification_metrics, expected_calibration_error

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1. Received: batch_size={batch_size}")
    root = Path(data_dir)
    model_classes = list(classifier.classes)
    present, missing, extra = _match_class_folders(root, model_classes)
    dataset = scan_class_folders(root, classes=present)  # logs the ignored extra folders
    absent = 0
    if only is not None:
        dataset, absent = _keep_named(dataset, only)
    to_model = np.asarray([model_classes.index(c) for c in present])
    labels, probabilities, unreadable = _predict(classifier, dataset, root, to_model, batch_size)
    metrics = classification_metrics(labels, probabilities, model_classes, average_over=to_model)
    metrics["calibration"] = expected_calibration_error(labels, probabilities)
    metrics["confidence"] = confidence_summary(classifier, labels, probabilities)
    metrics["skipped"] = {
        "unreadable_images": len(unreadable),
        "unreadable_files": unreadable,
        "data_classes_not_in_model": extra,
        "model_classes_without_data": missing,
    }
    if only is not None:
        metrics["skipped"]["listed_but_absent"] = absent
    metrics["dataset"] = str(root)
    metrics["model_version"] = classifier.version
    return metrics


def _match_class_folders(root: Path, model_classes: list[str]) -> tuple[list[str], list[str], dict[str, int]]:
    """The model classes with a folder, those without, and the image count of each folder the model lacks.

    Raises
    ------
    BadDatasetError
        When ``root`` is missing or none of its folders is a model class.
    """
    from smearflow.imageio import is_image_file

    if not root.is_dir():
        raise BadDatasetError(f"{root}: dataset folder does not exist")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    present = [c for c in model_classes if c in folders]
    missing = [c for c in model_classes if c not in folders]
    extra = {c: sum(1 for p in (root / c).iterdir() if is_image_file(p)) for c in folders if c not in model_classes}
    if not present:
        raise BadDatasetError(
            f"{root}: no class folder matches the model's classes {model_classes}. Received folders: {folders}"
        )
    if missing:
        logger.warning(
            "%s: the model's class(es) %s have no folder; averaging over the %d present", root, missing, len(present)
        )
    return present, missing, extra


def _predict(classifier, dataset, root: Path, to_model: np.ndarray, batch_size: int):
    """Model-class labels and probabilities of the readable images, and the unreadable ones (relative names).

    Raises
    ------
    BadDatasetError
        When no image can be read.
    """
    probabilities, labels, unreadable = [], [], []
    for start in range(0, len(dataset), batch_size):
        images = []
        for path, label in zip(dataset.paths[start : start + batch_size], dataset.labels[start : start + batch_size]):
            image = load_resized(path, classifier.image_size)
            if image is None:
                unreadable.append(str(Path(path).relative_to(root)))
                continue
            images.append(image)
            labels.append(to_model[label])
        if images:
            probabilities.append(classifier.predict_proba(np.stack(images), batch_size=batch_size))
    if not labels:
        raise BadDatasetError(f"{root}: none of the {len(dataset)} images can be read")
    return np.asarray(labels), np.concatenate(probabilities), unreadable


def confidence_summary(classifier, labels: np.ndarray, probabilities: np.ndarray) -> dict:
    """The classifier's calibration settings and what its threshold keeps of these images.

    Returns
    -------
    dict
        ``temperature``, ``confidence_threshold``, ``test_time_augmentation``,
        ``coverage`` (share of images at or above the threshold),
        ``accuracy_kept`` (their accuracy; None when none is kept) and
        ``uncertain`` (images below).
    """
    from smearflow.classifier.calibration import threshold_table

    row = threshold_table(labels, probabilities, [classifier.confidence_threshold])[0]
    return {
        "temperature": float(classifier.temperature),
        "confidence_threshold": float(classifier.confidence_threshold),
        "test_time_augmentation": classifier.test_time_augmentation,
        "coverage": row["coverage"],
        "accuracy_kept": row["accuracy"],
        "uncertain": row["uncertain"],
    }


def _keep_named(dataset, names) -> tuple:
    """The images of ``dataset`` named in ``names``, and how many names were not found."""
    wanted = set(names)
    relative = [Path(p).relative_to(dataset.root).as_posix() for p in dataset.paths]
    keep = [i for i, name in enumerate(relative) if name in wanted]
    if not keep:
        raise BadDatasetError(f"{dataset.root}: none of the {len(wanted)} listed images is in the dataset")
    absent = len(wanted - set(relative))
    if absent:
        logger.warning("%s: %d listed images are not in the dataset", dataset.root, absent)
    return dataset.subset(keep), absent
