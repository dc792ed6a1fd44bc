"""Training data of the U-Net: targets and per-pixel weights from expert masks and from boxes.

Every training image becomes a :class:`TrainingImage` at the working
resolution (red-cell diameter ``working_rbc_diameter_px``): the normalised
field, a 0/1 ``target`` per channel of
:data:`smearflow.segmentation.unet.CHANNELS` and a 0/1 ``weight`` per channel
saying where that target is known. The loss
(:func:`smearflow.segmentation.unet.masked_segmentation_loss`) ignores pixels
of weight 0, so partial truth never teaches the network that an unlabelled
cell is background.

Masks layout (wbcseg: one white cell, 255 nucleus, 128 cytoplasm, 0 other)
    ``nucleus`` and ``wbc`` are known everywhere (grey >= 192; grey >= 64).
    ``rbc`` and ``platelet`` are known only inside the white cell (where they
    are 0): the background of these images holds unlabelled red cells.

Boxes layout (BCCD: Pascal VOC ``WBC``, ``RBC``, ``Platelets`` boxes)
    A box becomes the ellipse inscribed in it. Its inner part (semi-axes
    shrunk by ``band``) is the positive target; the ring out to semi-axes
    grown by ``band`` has weight 0, because a box's ellipse only
    approximates the cell outline.

    - ``wbc`` and ``platelet``: the boxes are complete, so everything outside
      the rings is a known negative.
    - ``nucleus``: boxes do not outline nuclei, so inside the inner ellipse
      of a white cell the nucleus is a colour pseudo-label: pixels clearly
      purple (blue minus red of the background-balanced field above 0.25)
      are nucleus, pixels clearly not (below 0.12) are not, the rest and the
      ring have weight 0. Outside white cells the nucleus is 0. Without
      these pseudo-labels the nucleus channel, taught by one stain only,
      misses the nuclei of other stains.
    - ``rbc``: red-cell boxes are **incomplete** (many red cells are not
      boxed), so only three kinds of pixel are supervised: the inner ellipses
      of red-cell boxes (positive), white cells and platelets (negative), and
      confident background (negative): pixels near the background colour,
      outside every red-cell box, at least ``0.1 D`` away from any stained
      pixel, with enclosed holes up to the size of a central pallor counted
      as stained. Stained pixels outside any box (unlabelled red cells) have
      weight 0.

File access goes through :mod:`smearflow.imageio`; everything else here is
pure.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smearflow.errors import BadDatasetError
from smearflow.segmentation.regions import fill_small_holes
from smearflow.segmentation.unet import CHANNELS, normalise_field

__all__ = [
    "PatchSampler",
    "TrainingImage",
    "background_mask",
    "box_targets",
    "ellipse_mask",
    "load_box_dataset",
    "load_mask_dataset",
    "mask_targets",
    "rbc_diameter_from_boxes",
]

logger = logging.getLogger(__name__)

_NUCLEUS, _WBC, _RBC, _PLATELET = (CHANNELS.index(name) for name in ("nucleus", "wbc", "rbc", "platelet"))
_NUCLEUS_MIN_GREY = 192
_CELL_MIN_GREY = 64
_NUCLEUS_PURPLE_MIN = 0.25
_CYTOPLASM_PURPLE_MAX = 0.12
_BACKGROUND_MAX_SCORE = 0.15
_BACKGROUND_MARGIN_RBC = 0.1
_PALLOR_AREA_RBC = 0.3
_MIN_RBC_BOXES = 3


@dataclass(frozen=True)
class TrainingImage:
    """One training field at the working resolution.

    Attributes
    ----------
    name : str
        ``<dataset>/<image stem>``.
    source : {"masks", "boxes"}
        Which kind of truth the targets come from.
    image : ndarray of shape (m, n, 3), float32
        :func:`smearflow.segmentation.unet.normalise_field` of the resized field.
    target : ndarray of shape (m, n, 4), uint8
        0/1 per channel.
    weight : ndarray of shape (m, n, 4), uint8
        1 where the target is known.
    """

    name: str
    source: str
    image: np.ndarray
    target: np.ndarray
    weight: np.ndarray


# --------------------------------------------------------------------------- targets (pure)


def mask_targets(label_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Targets and weights from a one-white-cell label mask (0 / 128 / 255).

    Parameters
    ----------
    label_mask : ndarray of shape (M, N), uint8
        Grey levels: below 64 background, 64-191 cytoplasm, 192 and up nucleus.

    Returns
    -------
    target, weight : ndarray of shape (M, N, 4), uint8
        ``nucleus`` and ``wbc`` supervised everywhere; ``rbc`` and
        ``platelet`` supervised (as 0) inside the white cell only.

    Raises
    ------
    ValueError
        When ``label_mask`` is not two-dimensional.
    """
    label_mask = np.asarray(label_mask)
    if label_mask.ndim != 2:
        raise ValueError(f"label_mask must be two-dimensional. Received: shape={label_mask.shape}")
    nucleus = label_mask >= _NUCLEUS_MIN_GREY
    cell = label_mask >= _CELL_MIN_GREY
    target = np.zeros((*label_mask.shape, len(CHANNELS)), dtype=np.uint8)
    weight = np.zeros_like(target)
    target[..., _NUCLEUS] = nucleus
    target[..., _WBC] = cell
    weight[..., _NUCLEUS] = 1
    weight[..., _WBC] = 1
    weight[..., _RBC] = cell
    weight[..., _PLATELET] = cell
    return target, weight


def ellipse_mask(bbox: tuple[int, int, int, int], shape: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """The ellipse inscribed in a box, its semi-axes multiplied by ``scale``.

    Parameters
    ----------
    bbox : tuple of int
        ``(row_min, col_min, row_max, col_max)``, max exclusive.
    shape : tuple of int
        ``(rows, cols)`` of the output; the ellipse is clipped to it.
    scale : float
        Semi-axis factor (1.0: touches the box sides).

    Returns
    -------
    ndarray of shape ``shape``, bool
        Pixels whose centres lie inside the ellipse.

    Raises
    ------
    ValueError
        When ``scale`` is not positive or the box has a max below its min.
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive. Received: scale={scale}")
    row_min, col_min, row_max, col_max = bbox
    if row_max < row_min or col_max < col_min:
        raise ValueError(f"bbox must have row_max >= row_min and col_max >= col_min. Received: bbox={bbox}")
    out = np.zeros(shape, dtype=bool)
    centre_row, centre_col = (row_min + row_max) / 2.0, (col_min + col_max) / 2.0
    semi_rows, semi_cols = scale * (row_max - row_min) / 2.0, scale * (col_max - col_min) / 2.0
    if semi_rows <= 0 or semi_cols <= 0:
        return out
    r0 = max(0, int(math.floor(centre_row - semi_rows)))
    r1 = min(shape[0], int(math.ceil(centre_row + semi_rows)))
    c0 = max(0, int(math.floor(centre_col - semi_cols)))
    c1 = min(shape[1], int(math.ceil(centre_col + semi_cols)))
    if r0 >= r1 or c0 >= c1:
        return out
    rows = (np.arange(r0, r1) + 0.5 - centre_row)[:, None] / semi_rows
    cols = (np.arange(c0, c1) + 0.5 - centre_col)[None, :] / semi_cols
    out[r0:r1, c0:c1] = rows**2 + cols**2 <= 1.0
    return out


def background_mask(image_normalised: np.ndarray, rbc_diameter_px: float) -> np.ndarray:
    """Confident background: near the background colour and away from any stained pixel.

    Parameters
    ----------
    image_normalised : ndarray of shape (M, N, 3), float32
        Output of :func:`smearflow.segmentation.unet.normalise_field`.
    rbc_diameter_px : float
        Red-cell diameter in the same pixels.

    Returns
    -------
    ndarray of shape (M, N), bool

    Raises
    ------
    ValueError
        When ``rbc_diameter_px`` is not positive or the image is not ``(M, N, 3)``.
    """
    import cv2

    if not rbc_diameter_px > 0:
        raise ValueError(f"rbc_diameter_px must be positive. Received: rbc_diameter_px={rbc_diameter_px}")
    image_normalised = np.asarray(image_normalised, dtype=np.float32)
    if image_normalised.ndim != 3 or image_normalised.shape[2] != 3:
        raise ValueError(f"image_normalised must have shape (M, N, 3). Received: shape={image_normalised.shape}")
    balanced = image_normalised * 1.25
    score = np.sqrt(np.sum((1.0 - np.minimum(balanced, 1.5)) ** 2, axis=-1))
    stained = score > _BACKGROUND_MAX_SCORE
    stained = fill_small_holes(stained, _PALLOR_AREA_RBC * math.pi * rbc_diameter_px**2 / 4.0)
    margin = max(1, int(round(_BACKGROUND_MARGIN_RBC * rbc_diameter_px)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1))
    near_stain = cv2.dilate(stained.astype(np.uint8), kernel).astype(bool)
    return ~near_stain


def box_targets(
    image_normalised: np.ndarray,
    boxes: Mapping[str, Iterable[tuple[int, int, int, int]]],
    rbc_diameter_px: float,
    band: float = 0.15,
) -> tuple[np.ndarray, np.ndarray]:
    """Targets and weights from white-cell, red-cell and platelet boxes (see the module docstring).

    Parameters
    ----------
    image_normalised : ndarray of shape (M, N, 3), float32
        The field, normalised; used for the confident background of ``rbc``.
    boxes : mapping of str to iterable of tuple of int
        ``"wbc"``, ``"rbc"``, ``"platelet"`` → boxes ``(row_min, col_min,
        row_max, col_max)`` in the field's pixels, max exclusive. Missing
        kinds have no boxes.
    rbc_diameter_px : float
        Red-cell diameter in the field's pixels.
    band : float
        Half-width of the unsupervised ring around each ellipse, as a share
        of its semi-axes, in ``[0, 1)``.

    Returns
    -------
    target, weight : ndarray of shape (M, N, 4), uint8

    Raises
    ------
    ValueError
        When ``band`` is outside ``[0, 1)``, a kind is unknown, or as
        :func:`background_mask`.
    """
    if not 0.0 <= band < 1.0:
        raise ValueError(f"band must be in [0, 1). Received: band={band}")
    unknown = sorted(set(boxes) - {"wbc", "rbc", "platelet"})
    if unknown:
        raise ValueError(f"boxes must be keyed by 'wbc', 'rbc', 'platelet'. Received unknown kinds: {unknown}")
    shape = image_normalised.shape[:2]

    def union(kind: str, scale: float) -> np.ndarray:
        out = np.zeros(shape, dtype=bool)
        for bbox in boxes.get(kind, ()):
            out |= ellipse_mask(bbox, shape, scale)
        return out

    wbc_inner, wbc_outer = union("wbc", 1.0 - band), union("wbc", 1.0 + band)
    platelet_inner, platelet_outer = union("platelet", 1.0 - band), union("platelet", 1.0 + band)
    rbc_inner = union("rbc", 1.0 - band) & ~wbc_outer & ~platelet_outer
    rbc_outer = union("rbc", 1.0 + band)
    background = background_mask(image_normalised, rbc_diameter_px)

    target = np.zeros((*shape, len(CHANNELS)), dtype=np.uint8)
    weight = np.ones_like(target)
    target[..., _WBC] = wbc_inner
    weight[..., _WBC] = ~(wbc_outer & ~wbc_inner)
    balanced = np.asarray(image_normalised, dtype=np.float32) * 1.25
    purple = balanced[..., 2] - balanced[..., 0]
    nucleus = wbc_inner & (purple > _NUCLEUS_PURPLE_MIN)
    target[..., _NUCLEUS] = nucleus
    weight[..., _NUCLEUS] = ~wbc_outer | nucleus | (wbc_inner & (purple < _CYTOPLASM_PURPLE_MAX))
    target[..., _PLATELET] = platelet_inner
    weight[..., _PLATELET] = ~(platelet_outer & ~platelet_inner)
    target[..., _RBC] = rbc_inner
    weight[..., _RBC] = rbc_inner | wbc_inner | platelet_inner | (background & ~rbc_outer & ~wbc_outer & ~platelet_outer)
    return target, weight


def rbc_diameter_from_boxes(boxes: Iterable[tuple[int, int, int, int]]) -> float | None:
    """Median of ``sqrt(height * width)`` over red-cell boxes; None for fewer than three boxes."""
    sides = [math.sqrt(max(0, b[2] - b[0]) * max(0, b[3] - b[1])) for b in boxes]
    sides = [s for s in sides if s > 0]
    if len(sides) < _MIN_RBC_BOXES:
        return None
    return float(np.median(sides))


def _working_scale(rbc_diameter_px: float, working_rbc_diameter_px: float, max_upscale: float) -> float:
    return min(max_upscale, working_rbc_diameter_px / rbc_diameter_px)


def _resize_image(image: np.ndarray, scale: float) -> np.ndarray:
    import cv2

    rows, cols = image.shape[:2]
    shape = (max(1, round(rows * scale)), max(1, round(cols * scale)))
    if shape == (rows, cols):
        return image
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (shape[1], shape[0]), interpolation=interpolation)


def _resize_binary(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    if mask.shape[:2] == shape:
        return mask.astype(bool)
    return cv2.resize(mask.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) >= 0.5


# --------------------------------------------------------------------------- loading (I/O)


def _image_paths(path: Path) -> dict[str, Path]:
    from smearflow.imageio import is_image_file

    images = path / "images"
    if not images.is_dir():
        raise BadDatasetError(f"{path}: no images/ folder")
    return {p.stem: p for p in sorted(images.iterdir()) if is_image_file(p)}


def _read_labelled_image(path: Path, paths: dict[str, Path], name: str, label_path: Path, what: str):
    """The RGB image ``name`` of a dataset folder, once its label file ``label_path`` is known to exist.

    Raises
    ------
    BadDatasetError
        When the image or its label file is missing, or the image is unreadable.
    """
    from smearflow.errors import BadImageError
    from smearflow.imageio import read_rgb

    if name not in paths:
        raise BadDatasetError(f"{path / 'images'}: no image named {name!r}")
    if not label_path.is_file():
        raise BadDatasetError(f"{label_path}: no {what} for image {paths[name].name}")
    try:
        return read_rgb(paths[name])
    except BadImageError as error:
        raise BadDatasetError(str(error)) from None


def load_mask_dataset(
    path: str | Path,
    names: Iterable[str],
    rbc_diameter_px: float,
    *,
    working_rbc_diameter_px: float = 32.0,
    max_upscale: float = 1.0,
) -> list[TrainingImage]:
    """Read images and label masks of a masks-layout folder as training images.

    Parameters
    ----------
    path : str or Path
        Folder with ``images/<name>.<ext>`` and ``masks/<name>.png``.
    names : iterable of str
        Image stems to read.
    rbc_diameter_px : float
        Red-cell diameter of this dataset's images in pixels.
    working_rbc_diameter_px, max_upscale : float
        The network's scale (see :class:`smearflow.segmentation.unet.UNetConfig`).

    Returns
    -------
    list of TrainingImage

    Raises
    ------
    BadDatasetError
        When an image or mask is missing or unreadable, or a mask does not
        have the size of its image (the message names the file).
    ValueError
        When ``rbc_diameter_px`` is not positive.
    """
    from smearflow.errors import BadImageError
    from smearflow.imageio import read_mask

    if not rbc_diameter_px > 0:
        raise ValueError(f"rbc_diameter_px must be positive. Received: rbc_diameter_px={rbc_diameter_px}")
    path = Path(path)
    paths = _image_paths(path)
    scale = _working_scale(rbc_diameter_px, working_rbc_diameter_px, max_upscale)
    out = []
    for name in names:
        mask_path = path / "masks" / f"{name}.png"
        image = _read_labelled_image(path, paths, name, mask_path, "mask")
        try:
            label_mask = read_mask(mask_path)
        except BadImageError as error:
            raise BadDatasetError(str(error)) from None
        if label_mask.shape != image.shape[:2]:
            raise BadDatasetError(
                f"{mask_path}: mask is {label_mask.shape[1]}x{label_mask.shape[0]} pixels but its image "
                f"{paths[name].name} is {image.shape[1]}x{image.shape[0]}"
            )
        work = _resize_image(image, scale)
        target, weight = mask_targets(label_mask)
        target = np.stack([_resize_binary(target[..., c], work.shape[:2]) for c in range(len(CHANNELS))], -1)
        weight = np.stack([_resize_binary(weight[..., c], work.shape[:2]) for c in range(len(CHANNELS))], -1)
        out.append(
            TrainingImage(
                name=f"{path.name}/{name}",
                source="masks",
                image=normalise_field(work),
                target=target.astype(np.uint8),
                weight=weight.astype(np.uint8),
            )
        )
    return out


def load_box_dataset(
    path: str | Path,
    names: Iterable[str],
    *,
    working_rbc_diameter_px: float = 32.0,
    max_upscale: float = 1.0,
    band: float = 0.15,
) -> list[TrainingImage]:
    """Read images and Pascal VOC boxes of a boxes-layout folder as training images.

    The red-cell diameter of each image is the median size of its red-cell
    boxes (:func:`rbc_diameter_from_boxes`), or the median over the whole
    selection for images with fewer than three.

    Parameters
    ----------
    path : str or Path
        Folder with ``images/<name>.<ext>`` and ``annotations/<name>.xml``.
    names : iterable of str
        Image stems to read.
    working_rbc_diameter_px, max_upscale : float
        The network's scale.
    band : float
        See :func:`box_targets`.

    Returns
    -------
    list of TrainingImage

    Raises
    ------
    BadDatasetError
        When an image or annotation is missing or unreadable, or no image of
        the selection has three red-cell boxes to tell the scale.
    """
    from smearflow.segeval import read_voc_boxes

    path = Path(path)
    paths = _image_paths(path)
    fields = []
    for name in names:
        annotation = path / "annotations" / f"{name}.xml"
        image = _read_labelled_image(path, paths, name, annotation, "annotation")
        boxes, _ = read_voc_boxes(annotation, image.shape[:2])
        fields.append((name, image, boxes, rbc_diameter_from_boxes(boxes["rbc"])))
    known = [d for *_, d in fields if d is not None]
    if fields and not known:
        raise BadDatasetError(
            f"{path}: no selected image has {_MIN_RBC_BOXES} red-cell boxes, so the red-cell diameter is unknown"
        )
    fallback = float(np.median(known)) if known else 0.0
    out = []
    for name, image, boxes, diameter in fields:
        diameter = diameter if diameter is not None else fallback
        scale = _working_scale(diameter, working_rbc_diameter_px, max_upscale)
        work = _resize_image(image, scale)
        factor_rows, factor_cols = work.shape[0] / image.shape[0], work.shape[1] / image.shape[1]
        scaled = {
            kind: [
                (b[0] * factor_rows, b[1] * factor_cols, b[2] * factor_rows, b[3] * factor_cols) for b in kind_boxes
            ]
            for kind, kind_boxes in boxes.items()
        }
        normalised = normalise_field(work)
        target, weight = box_targets(normalised, scaled, diameter * math.sqrt(factor_rows * factor_cols), band)
        out.append(TrainingImage(f"{path.name}/{name}", "boxes", normalised, target, weight))
    return out


# --------------------------------------------------------------------------- patches


class PatchSampler:
    """Random augmented patches, deterministic in ``(seed, step)``.

    Each patch comes from a source (``"masks"`` or ``"boxes"``) picked with
    equal odds among those present, then an image of that source picked
    uniformly. The patch is a square of ``size_px / s`` working pixels,
    ``s`` log-uniform in ``[1 / scale_jitter, scale_jitter]``, resized to
    ``size_px`` (so the network sees red cells of ``working_rbc_diameter_px
    * s``), then rotated by a multiple of 90 degrees, maybe mirrored, and
    jittered in contrast, per-channel gain and brightness. Where a patch
    overhangs its image, the image is mirrored and the weights are 0.

    Parameters
    ----------
    images : sequence of TrainingImage
    size_px : int
        Patch side.
    batch_size : int
    seed : int
    scale_jitter : float
        At least 1 (1: no scale change).

    Raises
    ------
    ValueError
        When ``images`` is empty or a size is not positive.
    """

    def __init__(
        self,
        images: Sequence[TrainingImage],
        *,
        size_px: int,
        batch_size: int,
        seed: int = 0,
        scale_jitter: float = 1.25,
    ):
        if not images:
            raise ValueError("images must not be empty. Received: 0 training images")
        if size_px < 1 or batch_size < 1:
            raise ValueError(
                f"size_px and batch_size must be positive. Received: size_px={size_px}, batch_size={batch_size}"
            )
        if not scale_jitter >= 1.0:
            raise ValueError(f"scale_jitter must be at least 1. Received: scale_jitter={scale_jitter}")
        self.images = list(images)
        self.size_px = size_px
        self.batch_size = batch_size
        self.seed = seed
        self.scale_jitter = scale_jitter
        by_source: dict[str, list[int]] = {}
        for index, item in enumerate(self.images):
            by_source.setdefault(item.source, []).append(index)
        self._by_source = [by_source[s] for s in sorted(by_source)]

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """The patches of one training step.

        Returns
        -------
        x : ndarray of shape (batch_size, size_px, size_px, 3), float32
        y : ndarray of shape (batch_size, size_px, size_px, 8), float32
            Targets then weights, as :func:`masked_segmentation_loss` takes them.
        """
        rng = np.random.default_rng([self.seed, step])
        xs, ys = [], []
        for _ in range(self.batch_size):
            pool = self._by_source[rng.integers(len(self._by_source))]
            x, y = self._patch(self.images[pool[rng.integers(len(pool))]], rng)
            xs.append(x)
            ys.append(y)
        return np.stack(xs), np.stack(ys)

    def _patch(self, item: TrainingImage, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        size = self.size_px
        jitter = math.log(self.scale_jitter)
        side = max(2, int(round(size / math.exp(rng.uniform(-jitter, jitter)))))
        image, labels = item.image, np.concatenate([item.target, item.weight], axis=-1)
        rows, cols = image.shape[:2]
        pad_rows, pad_cols = max(0, side - rows), max(0, side - cols)
        if pad_rows or pad_cols:
            top, left = int(rng.integers(pad_rows + 1)), int(rng.integers(pad_cols + 1))
            pads = ((top, pad_rows - top), (left, pad_cols - left), (0, 0))
            image = np.pad(image, pads, mode="symmetric")
            labels = np.pad(labels, pads, mode="constant")
            rows, cols = image.shape[:2]
        r0, c0 = int(rng.integers(rows - side + 1)), int(rng.integers(cols - side + 1))
        image = image[r0 : r0 + side, c0 : c0 + side]
        labels = labels[r0 : r0 + side, c0 : c0 + side]
        if side != size:
            interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
            image = cv2.resize(image, (size, size), interpolation=interpolation)
            labels = cv2.resize(labels.astype(np.float32), (size, size), interpolation=cv2.INTER_NEAREST)
        k = int(rng.integers(4))
        image, labels = np.rot90(image, k), np.rot90(labels, k)
        if rng.random() < 0.5:
            image, labels = image[:, ::-1], labels[:, ::-1]
        contrast = rng.uniform(0.85, 1.15)
        gain = rng.uniform(0.93, 1.07, size=3)
        offset = rng.uniform(-0.04, 0.04)
        mean = image.mean()
        image = np.clip((image - mean) * contrast + mean, 0.0, 1.0) * gain + offset
        return np.clip(image, 0.0, 1.0).astype(np.float32), np.ascontiguousarray(labels, dtype=np.float32)
