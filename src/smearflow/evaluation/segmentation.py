"""Score a segmenter against an annotated dataset folder.

The folder layouts (``boxes``: Pascal VOC boxes, ``masks``: one white cell's
label mask per image) are described and read in :mod:`smearflow.datasets`.

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

import logging
import statistics
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from smearflow.datasets import (
    VOC_CLASSES,
    dataset_layout,
    image_files,
    label_mask_parts,
    read_boxes_field,
    read_mask_field,
)
from smearflow.errors import BadDatasetError
from smearflow.segmentation import Segmentation, Segmenter
from smearflow.segmentation.border import edges_touched, is_counted
from smearflow.segmentation.metrics import DetectionScore, detection_score, dice, mask_iou

__all__ = ["evaluate_segmentation_dir"]

logger = logging.getLogger(__name__)


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
        :func:`smearflow.datasets.holdout_split`); all images when omitted.
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
    images = image_files(path)
    if subset is not None:
        wanted = {Path(name).stem for name in subset}
        missing = sorted(wanted - set(images))
        if missing:
            raise ValueError(f"subset names images not in {path / 'images'}. Received unknown names: {missing[:5]}")
        images = {name: image_path for name, image_path in images.items() if name in wanted}
        if not images:
            raise ValueError(f"subset selects no image. Received: subset of {len(wanted)} names")
    if layout == "boxes":
        return _evaluate_boxes(path, images, segmenter, iou_threshold, edge_tolerance_px)
    return _evaluate_masks(path, images, segmenter)


def _timed_segment(segmenter: Segmenter, image: np.ndarray, times_ms: list[float]) -> Segmentation:
    start = time.perf_counter()
    segmentation = segmenter.segment(image)
    times_ms.append(1000.0 * (time.perf_counter() - start))
    return segmentation


def _skip(skipped: list[dict], file: Path, error: Exception) -> None:
    logger.warning("skipped %s: %s", file, error)
    skipped.append({"file": str(file), "error": str(error)})


def _check_some_scored(path: Path, times_ms: list[float], skipped: list[dict]) -> None:
    if not times_ms:
        raise BadDatasetError(f"{path}: every image was skipped ({len(skipped)} files); first problem: {skipped[0]['error']}")


def _evaluate_boxes(
    path: Path, images: dict[str, Path], segmenter: Segmenter, iou_threshold: float, edge_tolerance_px: int
) -> dict:
    scores = {kind: DetectionScore(0, 0, 0) for kind in VOC_CLASSES.values()}
    count_errors: dict[str, list[int]] = {kind: [] for kind in VOC_CLASSES.values()}
    skipped: list[dict] = []
    times_ms: list[float] = []
    n_dropped = 0
    for name, image_path in images.items():
        try:
            image, truth, dropped = read_boxes_field(path, name, images)
        except BadDatasetError as error:
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
    _check_some_scored(path, times_ms, skipped)
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


def _predicted_masks(segmentation: Segmentation) -> tuple[np.ndarray, np.ndarray] | None:
    """The scored white cell and its nucleus over the whole field; None when no white cell was found."""
    cell = _central_white_cell(segmentation)
    if cell is None:
        return None
    predicted_cell = np.zeros(segmentation.image_shape, dtype=bool)
    r0, c0, r1, c1 = cell.bbox
    predicted_cell[r0:r1, c0:c1] = cell.mask
    if segmentation.nucleus_mask is None:
        return np.zeros_like(predicted_cell), predicted_cell
    return segmentation.nucleus_mask & predicted_cell, predicted_cell


def _evaluate_masks(path: Path, images: dict[str, Path], segmenter: Segmenter) -> dict:
    scores: dict[str, list[float]] = {"nucleus_dice": [], "nucleus_iou": [], "cell_dice": [], "cell_iou": []}
    skipped: list[dict] = []
    times_ms: list[float] = []
    n_without_wbc = 0
    for name, image_path in images.items():
        try:
            image, label_mask = read_mask_field(path, name, images)
        except BadDatasetError as error:
            _skip(skipped, image_path, error)
            continue
        segmentation = _timed_segment(segmenter, image, times_ms)
        predicted = _predicted_masks(segmentation)
        if predicted is None:
            n_without_wbc += 1
            predicted = (np.zeros(image.shape[:2], dtype=bool),) * 2
        predicted_nucleus, predicted_cell = predicted
        true_nucleus, true_cell = label_mask_parts(label_mask)
        scores["nucleus_dice"].append(dice(predicted_nucleus, true_nucleus))
        scores["nucleus_iou"].append(mask_iou(predicted_nucleus, true_nucleus))
        scores["cell_dice"].append(dice(predicted_cell, true_cell))
        scores["cell_iou"].append(mask_iou(predicted_cell, true_cell))
    _check_some_scored(path, times_ms, skipped)
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
