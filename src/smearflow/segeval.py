"""Score a segmenter against an annotated dataset folder (the I/O side of evaluation).

Two layouts are recognised from the folder's contents:

``boxes``
    ``images/<name>.jpg`` (any image suffix) and ``annotations/<name>.xml`` in
    Pascal VOC format with the classes ``RBC``, ``WBC`` and ``Platelets``
    (BCCD). VOC coordinates are 1-based and inclusive; they become
    ``(ymin - 1, xmin - 1, ymax, xmax)``.
``masks``
    ``images/<name>.png`` and ``masks/<name>.png``, one white cell per image,
    the mask coded 0 background, 128 cytoplasm, 255 nucleus (grey levels are
    read as: below 64 background, 64-191 cytoplasm, 192 and up nucleus).

How the boxes layout is scored
    *Detection* (precision, recall, F1) matches **all** detections of a kind,
    counted or not, one-to-one to the boxes of its class by bounding box at
    IoU >= 0.5. *Counting* (``count_mae``, ``exact_count_rate``) compares the
    number of **counted** detections (``Cell.counted``, the border rule of
    :mod:`smearflow.segmentation.border`) with the number of boxes the same
    rule counts: a box within ``edge_tolerance_px`` of the bottom or right
    edge is not counted. Both sides of a count therefore follow one rule.

How the masks layout is scored
    The scored white cell is the detected one whose mask holds the image
    centre, else the one whose centroid is nearest to it. Its ``mask`` is the
    predicted cell; ``Segmentation.nucleus_mask`` inside it is the predicted
    nucleus. An image where no white cell is found scores 0.

Per-file problems (an unreadable image, an annotation that does not parse or
names an unknown class, a box outside its image, a mask of another size than
its image, an image without annotation or mask) skip that file: they are
logged and listed under ``skipped_files``. A folder that is missing, empty or
of neither layout raises :class:`smearflow.errors.BadDatasetError`.
"""

from __future__ import annotations

import hashlib
import logging
import statistics
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from smearflow.errors import BadDatasetError, BadImageError
from smearflow.imageio import is_image_file, read_mask, read_rgb
from smearflow.segmentation import Segmentation, Segmenter
from smearflow.segmentation.border import edges_touched, is_counted
from smearflow.segmentation.metrics import DetectionScore, detection_score, dice, mask_iou

__all__ = [
    "VOC_CLASSES",
    "dataset_layout",
    "dataset_names",
    "evaluate_segmentation_dir",
    "holdout_split",
    "read_voc_boxes",
]

logger = logging.getLogger(__name__)

VOC_CLASSES = {"WBC": "wbc", "RBC": "rbc", "Platelets": "platelet"}
"""VOC class name → ``Cell.kind``."""

_MIN_BOX_SIDE_PX = 2
_NUCLEUS_MIN_GREY = 192
_CELL_MIN_GREY = 64


class _FileProblem(Exception):
    """A per-file defect: the file is skipped, the run goes on."""


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
    return sorted(p.stem for p in (Path(path) / "images").iterdir() if is_image_file(p))


def read_voc_boxes(path: str | Path, image_shape: tuple[int, int]) -> tuple[dict[str, list[tuple[int, int, int, int]]], int]:
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
    boxes: dict[str, list[tuple[int, int, int, int]]] = {kind: [] for kind in VOC_CLASSES.values()}
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


def evaluate_segmentation_dir(
    path: str | Path,
    segmenter: Segmenter,
    subset: Iterable[str] | None = None,
    *,
    iou_threshold: float = 0.5,
    edge_tolerance_px: int = 2,
) -> dict:
    """Score a segmenter on a dataset folder of either layout (see the module docstring).

    Parameters
    ----------
    path : str or Path
        Dataset folder.
    segmenter : Segmenter
        What is scored.
    subset : iterable of str, optional
        Image stems to score (for example the held-out part of
        :func:`holdout_split`); all images when omitted.
    iou_threshold : float
        Box matching threshold (boxes layout).
    edge_tolerance_px : int
        How near an edge a hand-drawn box may end and still touch it, for the
        border rule applied to true counts (boxes layout).

    Returns
    -------
    dict
        Boxes layout: ``layout``, ``per_class`` (``"WBC"``, ``"RBC"``,
        ``"Platelets"`` → ``precision``, ``recall``, ``f1``, ``tp``, ``fp``,
        ``fn``, ``count_mae``, ``exact_count_rate``), ``images``,
        ``skipped``, ``skipped_files``, ``dropped_boxes``, ``ms_per_image``.
        Masks layout: ``layout``, ``nucleus_dice``, ``nucleus_iou``,
        ``cell_dice``, ``cell_iou`` (means over images), ``images``,
        ``images_without_wbc``, ``skipped``, ``skipped_files``,
        ``ms_per_image``. ``ms_per_image`` is the median wall time of
        ``segmenter.segment`` in milliseconds.

    Raises
    ------
    BadDatasetError
        When the folder is missing, empty or of neither layout, or when
        every image was skipped.
    ValueError
        When ``subset`` names images that are not in the folder, or selects none.
    """
    path = Path(path)
    layout = dataset_layout(path)
    image_paths = sorted((p for p in (path / "images").iterdir() if is_image_file(p)), key=lambda p: p.name)
    if subset is not None:
        wanted = {Path(name).stem for name in subset}
        missing = sorted(wanted - {p.stem for p in image_paths})
        if missing:
            raise ValueError(f"subset names images not in {path / 'images'}. Received unknown names: {missing[:5]}")
        image_paths = [p for p in image_paths if p.stem in wanted]
        if not image_paths:
            raise ValueError(f"subset selects no image. Received: subset of {len(wanted)} names")
    if layout == "boxes":
        return _evaluate_boxes(path, image_paths, segmenter, iou_threshold, edge_tolerance_px)
    return _evaluate_masks(path, image_paths, segmenter)


def _timed_segment(segmenter: Segmenter, image: np.ndarray, times_ms: list[float]) -> Segmentation:
    start = time.perf_counter()
    segmentation = segmenter.segment(image)
    times_ms.append(1000.0 * (time.perf_counter() - start))
    return segmentation


def _skip(skipped: list[dict], file: Path, error: Exception) -> None:
    logger.warning("skipped %s: %s", file, error)
    skipped.append({"file": str(file), "error": str(error)})


def _evaluate_boxes(
    path: Path, image_paths: list[Path], segmenter: Segmenter, iou_threshold: float, edge_tolerance_px: int
) -> dict:
    scores = {kind: DetectionScore(0, 0, 0) for kind in VOC_CLASSES.values()}
    count_errors: dict[str, list[int]] = {kind: [] for kind in VOC_CLASSES.values()}
    skipped: list[dict] = []
    times_ms: list[float] = []
    n_dropped = 0
    for image_path in image_paths:
        annotation_path = path / "annotations" / f"{image_path.stem}.xml"
        try:
            if not annotation_path.is_file():
                raise _FileProblem(f"no annotation {annotation_path.name} for this image")
            image = read_rgb(image_path)
            truth, dropped = read_voc_boxes(annotation_path, image.shape[:2])
        except (_FileProblem, BadImageError, BadDatasetError) as error:
            _skip(skipped, image_path, error)
            continue
        n_dropped += dropped
        segmentation = _timed_segment(segmenter, image, times_ms)
        for kind, true_boxes in truth.items():
            cells = segmentation.of_kind(kind)
            scores[kind] += detection_score([c.bbox for c in cells], true_boxes, iou_threshold)
            true_count = sum(
                is_counted(edges_touched(box, image.shape[:2], edge_tolerance_px)) for box in true_boxes
            )
            count_errors[kind].append(sum(c.counted for c in cells) - true_count)
    if not times_ms:
        raise BadDatasetError(f"{path}: every image was skipped ({len(skipped)} files); first problem: {skipped[0]['error']}")
    per_class = {}
    for voc_name, kind in VOC_CLASSES.items():
        score = scores[kind]
        errors = np.abs(count_errors[kind])
        per_class[voc_name] = {
            "precision": score.precision,
            "recall": score.recall,
            "f1": score.f1,
            "tp": score.tp,
            "fp": score.fp,
            "fn": score.fn,
            "count_mae": float(errors.mean()),
            "exact_count_rate": float((errors == 0).mean()),
        }
    return {
        "layout": "boxes",
        "per_class": per_class,
        "images": len(times_ms),
        "skipped": len(skipped),
        "skipped_files": skipped,
        "dropped_boxes": n_dropped,
        "ms_per_image": statistics.median(times_ms),
    }


def _central_white_cell(segmentation: Segmentation):
    cells = segmentation.of_kind("wbc")
    if not cells:
        return None
    centre_row, centre_col = segmentation.image_shape[0] / 2.0, segmentation.image_shape[1] / 2.0
    row, col = int(centre_row), int(centre_col)
    for cell in cells:
        r0, c0, r1, c1 = cell.bbox
        if r0 <= row < r1 and c0 <= col < c1 and cell.mask[row - r0, col - c0]:
            return cell
    return min(cells, key=lambda c: (c.centroid[0] - centre_row) ** 2 + (c.centroid[1] - centre_col) ** 2)


def _evaluate_masks(path: Path, image_paths: list[Path], segmenter: Segmenter) -> dict:
    scores: dict[str, list[float]] = {"nucleus_dice": [], "nucleus_iou": [], "cell_dice": [], "cell_iou": []}
    skipped: list[dict] = []
    times_ms: list[float] = []
    n_without_wbc = 0
    for image_path in image_paths:
        mask_path = path / "masks" / f"{image_path.stem}.png"
        try:
            if not mask_path.is_file():
                raise _FileProblem(f"no mask {mask_path.name} for this image")
            image = read_rgb(image_path)
            truth = read_mask(mask_path)
            if truth.shape != image.shape[:2]:
                raise _FileProblem(f"mask {mask_path.name} is {truth.shape[1]}x{truth.shape[0]}, image is {image.shape[1]}x{image.shape[0]}")
        except (_FileProblem, BadImageError) as error:
            _skip(skipped, image_path, error)
            continue
        segmentation = _timed_segment(segmenter, image, times_ms)
        predicted_cell = np.zeros(image.shape[:2], dtype=bool)
        predicted_nucleus = np.zeros(image.shape[:2], dtype=bool)
        cell = _central_white_cell(segmentation)
        if cell is None:
            n_without_wbc += 1
        else:
            r0, c0, r1, c1 = cell.bbox
            predicted_cell[r0:r1, c0:c1] = cell.mask
            if segmentation.nucleus_mask is not None:
                predicted_nucleus = segmentation.nucleus_mask & predicted_cell
        true_nucleus = truth >= _NUCLEUS_MIN_GREY
        true_cell = truth >= _CELL_MIN_GREY
        scores["nucleus_dice"].append(dice(predicted_nucleus, true_nucleus))
        scores["nucleus_iou"].append(mask_iou(predicted_nucleus, true_nucleus))
        scores["cell_dice"].append(dice(predicted_cell, true_cell))
        scores["cell_iou"].append(mask_iou(predicted_cell, true_cell))
    if not times_ms:
        raise BadDatasetError(f"{path}: every image was skipped ({len(skipped)} files); first problem: {skipped[0]['error']}")
    result: dict = {"layout": "masks"}
    result.update({name: float(np.mean(values)) for name, values in scores.items()})
    result.update(
        {
            "images": len(times_ms),
            "images_without_wbc": n_without_wbc,
            "skipped": len(skipped),
            "skipped_files": skipped,
            "ms_per_image": statistics.median(times_ms),
        }
    )
    return result
