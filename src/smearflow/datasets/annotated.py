"""Annotated segmentation datasets: the one place their folders are read, and the held-out split.

Training the U-Net (:mod:`smearflow.segmentation.unet.training`) and scoring a
segmenter (:mod:`smearflow.evaluation.segmentation`) read the same folders
through this module. Two layouts are recognised from a folder's contents:

``boxes``
    ``images/<name>.jpg`` (any image suffix) and ``annotations/<name>.xml`` in
    Pascal VOC format with the classes ``RBC``, ``WBC`` and ``Platelets``
    (BCCD). VOC coordinates are 1-based and inclusive; they become
    ``(ymin - 1, xmin - 1, ymax, xmax)``.
``masks``
    ``images/<name>.png`` and ``masks/<name>.png``, one white cell per image,
    the mask coded 0 background, 128 cytoplasm, 255 nucleus (grey levels are
    read as: below 64 background, 64-191 cytoplasm, 192 and up nucleus; see
    :func:`label_mask_parts`).

Every problem with a file raises :class:`smearflow.errors.BadDatasetError`
naming it; callers decide whether that skips the file (evaluation) or stops
the run (training). Images are read through :mod:`smearflow.imageio`.
"""

from __future__ import annotations

import hashlib
import logging
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from smearflow.errors import BadDatasetError, BadImageError
from smearflow.imageio import is_image_file, read_mask, read_rgb

__all__ = [
    "CELL_MIN_GREY",
    "LAYOUTS",
    "NUCLEUS_MIN_GREY",
    "VOC_CLASSES",
    "dataset_layout",
    "dataset_names",
    "find_datasets",
    "holdout_split",
    "image_files",
    "label_mask_parts",
    "read_boxes_field",
    "read_mask_field",
    "read_voc_boxes",
]

logger = logging.getLogger(__name__)

LAYOUTS = ("boxes", "masks")
"""The dataset layouts, by the folder beside ``images/``: ``annotations/`` or ``masks/``."""

VOC_CLASSES = {"WBC": "wbc", "RBC": "rbc", "Platelets": "platelet"}
"""VOC class name → ``Cell.kind``."""

NUCLEUS_MIN_GREY = 192
"""A label-mask pixel at or above this grey level is nucleus."""
CELL_MIN_GREY = 64
"""A label-mask pixel at or above this grey level is part of the white cell (nucleus or cytoplasm)."""

_MIN_BOX_SIDE_PX = 2

Boxes = dict[str, list[tuple[int, int, int, int]]]


def holdout_split(
    names: Iterable[str], fraction: float = 0.3, seed: str = "smearflow"
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split names into a tuning part and a held-out part, the same way every time.

    Names are ranked by ``sha256(f"{seed}:{name}")``; the first
    ``round(fraction * len(names))`` are held out. A name's side depends only
    on the name and the seed, not on which other names are present.

    Parameters
    ----------
    names : iterable of str
        Item names, e.g. image file stems.
    fraction : float
        Share held out, in ``[0, 1]``.
    seed : str
        Salt of the hash.

    Returns
    -------
    tuning, held_out : tuple of str
        Both sorted.

    Raises
    ------
    ValueError
        When ``fraction`` is outside ``[0, 1]`` or a name repeats.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1]. Received: fraction={fraction}")
    names = list(names)
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"names must be unique. Received repeated names: {repeated[:5]}")
    ranked = sorted(names, key=lambda name: hashlib.sha256(f"{seed}:{name}".encode()).hexdigest())
    n_held_out = round(fraction * len(ranked))
    return tuple(sorted(ranked[n_held_out:])), tuple(sorted(ranked[:n_held_out]))


def dataset_layout(path: str | Path) -> str:
    """``"boxes"`` or ``"masks"``, from the sub-folders of a dataset folder.

    Raises
    ------
    BadDatasetError
        When the folder is missing, has no images, or is of neither layout.
    """
    path = Path(path)
    if not path.is_dir():
        raise BadDatasetError(f"{path}: no such dataset folder")
    images = path / "images"
    if not images.is_dir():
        raise BadDatasetError(
            f"{path}: not a segmentation dataset: expected images/ with annotations/ (boxes) or masks/ (masks)"
        )
    if not any(is_image_file(p) for p in images.iterdir()):
        raise BadDatasetError(f"{images}: no image files")
    if (path / "annotations").is_dir():
        return "boxes"
    if (path / "masks").is_dir():
        return "masks"
    raise BadDatasetError(f"{path}: images/ has neither annotations/ (boxes layout) nor masks/ (masks layout) beside it")


def dataset_names(path: str | Path) -> list[str]:
    """Sorted stems of the image files of a dataset folder (the names :func:`holdout_split` takes).

    Raises
    ------
    BadDatasetError
        As :func:`dataset_layout`.
    """
    dataset_layout(path)
    return sorted(image_files(path))


def find_datasets(path: str | Path, layout: str | None = None) -> list[Path]:
    """The dataset folders at ``path``: itself, or its immediate sub-folders.

    Parameters
    ----------
    path : str or Path
        A dataset folder (``images/`` beside ``masks/`` or ``annotations/``)
        or a folder of them (as wbcseg's ``dataset1``, ``dataset2``).
    layout : {"masks", "boxes"}, optional
        Keep only datasets of this layout; any layout when omitted.

    Returns
    -------
    list of Path
        Sorted by name.

    Raises
    ------
    BadDatasetError
        When ``path`` is missing, is a dataset folder that cannot be used, or
        holds no dataset (of that layout).
    ValueError
        When ``layout`` is unknown.
    """
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be 'masks' or 'boxes'. Received: layout={layout!r}")
    path = Path(path)
    if not path.is_dir():
        raise BadDatasetError(f"{path}: no such dataset folder")
    candidates = [path] if (path / "images").is_dir() else sorted(p for p in path.iterdir() if p.is_dir())
    found = []
    for candidate in candidates:
        try:
            found_layout = dataset_layout(candidate)
        except BadDatasetError:
            if candidate == path:
                raise
            continue
        if layout is None or found_layout == layout:
            found.append(candidate)
    if not found:
        if layout is None:
            dataset_layout(path)  # raises the layout error naming the folder
        raise BadDatasetError(f"{path}: no {layout}-layout dataset here or in its sub-folders")
    return found


def image_files(path: str | Path) -> dict[str, Path]:
    """The image files of a dataset folder by stem, in name order.

    Raises
    ------
    BadDatasetError
        When the folder has no ``images/`` sub-folder.
    """
    images = Path(path) / "images"
    if not images.is_dir():
        raise BadDatasetError(f"{path}: no images/ folder")
    return {p.stem: p for p in sorted(images.iterdir()) if is_image_file(p)}


def read_voc_boxes(path: str | Path, image_shape: tuple[int, int]) -> tuple[Boxes, int]:
    """Read the boxes of a Pascal VOC annotation.

    Parameters
    ----------
    path : str or Path
        The ``.xml`` file.
    image_shape : tuple of int
        ``(rows, cols)`` of its image; every box must lie inside it.

    Returns
    -------
    boxes : dict of str to list of tuple of int
        ``Cell.kind`` → ``(row_min, col_min, row_max, col_max)`` boxes, max exclusive.
    n_dropped : int
        Degenerate boxes (a side under 2 pixels, i.e. point annotations) left out.

    Raises
    ------
    BadDatasetError
        When the file does not parse, misses a coordinate, names an unknown
        class, or has a box outside the image.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as error:
        raise BadDatasetError(f"{path}: annotation does not parse ({error})") from None
    rows, cols = image_shape
    boxes: Boxes = {kind: [] for kind in VOC_CLASSES.values()}
    n_dropped = 0
    for index, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise BadDatasetError(f"{path}: object {index} has unknown class {name!r}; expected one of {sorted(VOC_CLASSES)}")
        try:
            box = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (int(round(float(box.findtext(k)))) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise BadDatasetError(f"{path}: object {index} ({name}) lacks a numeric bndbox xmin/ymin/xmax/ymax") from None
        if xmin < 0 or ymin < 0 or xmax > cols or ymax > rows or xmax < xmin or ymax < ymin:
            raise BadDatasetError(
                f"{path}: object {index} ({name}) box xmin={xmin}, ymin={ymin}, xmax={xmax}, ymax={ymax} "
                f"lies outside the {cols}x{rows} image"
            )
        bbox = (max(0, ymin - 1), max(0, xmin - 1), ymax, xmax)
        if bbox[2] - bbox[0] < _MIN_BOX_SIDE_PX or bbox[3] - bbox[1] < _MIN_BOX_SIDE_PX:
            logger.warning("%s: object %d (%s) is a degenerate box %s; left out", path, index, name, bbox)
            n_dropped += 1
            continue
        boxes[VOC_CLASSES[name]].append(bbox)
    return boxes, n_dropped


def label_mask_parts(label_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nucleus and the whole white cell of a masks-layout label mask.

    Parameters
    ----------
    label_mask : ndarray of shape (M, N), uint8
        Grey levels: below 64 background, 64-191 cytoplasm, 192 and up nucleus.

    Returns
    -------
    nucleus, cell : ndarray of shape (M, N), bool
        ``cell`` includes the nucleus.
    """
    label_mask = np.asarray(label_mask)
    return label_mask >= NUCLEUS_MIN_GREY, label_mask >= CELL_MIN_GREY


def read_boxes_field(
    path: str | Path, name: str, images: Mapping[str, Path] | None = None
) -> tuple[np.ndarray, Boxes, int]:
    """One image of a boxes-layout folder with its boxes.

    Parameters
    ----------
    path : str or Path
        The dataset folder.
    name : str
        Image stem.
    images : mapping of str to Path, optional
        :func:`image_files` of the folder, when the caller already has it.

    Returns
    -------
    image : ndarray of shape (M, N, 3), uint8
    boxes : dict of str to list of tuple of int
        As :func:`read_voc_boxes`.
    n_dropped : int
        Degenerate boxes left out.

    Raises
    ------
    BadDatasetError
        When the image or its annotation is missing or unreadable, or the
        annotation is invalid (the message names the file).
    """
    path = Path(path)
    annotation = path / "annotations" / f"{name}.xml"
    image, _ = _read_labelled_image(path, name, images, annotation, "annotation")
    boxes, n_dropped = read_voc_boxes(annotation, image.shape[:2])
    return image, boxes, n_dropped


def read_mask_field(
    path: str | Path, name: str, images: Mapping[str, Path] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One image of a masks-layout folder with its label mask.

    Parameters
    ----------
    path : str or Path
        The dataset folder.
    name : str
        Image stem.
    images : mapping of str to Path, optional
        :func:`image_files` of the folder, when the caller already has it.

    Returns
    -------
    image : ndarray of shape (M, N, 3), uint8
    label_mask : ndarray of shape (M, N), uint8
        See :func:`label_mask_parts`.

    Raises
    ------
    BadDatasetError
        When the image or its mask is missing or unreadable, or the mask does
        not have the size of its image (the message names the file).
    """
    path = Path(path)
    mask_path = path / "masks" / f"{name}.png"
    image, image_path = _read_labelled_image(path, name, images, mask_path, "mask")
    try:
        label_mask = read_mask(mask_path)
    except BadImageError as error:
        raise BadDatasetError(str(error)) from None
    if label_mask.shape != image.shape[:2]:
        raise BadDatasetError(
            f"{mask_path}: mask is {label_mask.shape[1]}x{label_mask.shape[0]} pixels but its image "
            f"{image_path.name} is {image.shape[1]}x{image.shape[0]}"
        )
    return image, label_mask


def _read_labelled_image(
    path: Path, name: str, images: Mapping[str, Path] | None, label_path: Path, what: str
) -> tuple[np.ndarray, Path]:
    """The RGB image ``name`` of a dataset folder and its path, once its label file is known to exist."""
    images = image_files(path) if images is None else images
    if name not in images:
        raise BadDatasetError(f"{path / 'images'}: no image named {name!r}")
    if not label_path.is_file():
        raise BadDatasetError(f"{label_path}: no {what} for image {images[name].name}")
    try:
        return read_rgb(images[name]), images[name]
    except BadImageError as error:
        raise BadDatasetError(str(error)) from None
