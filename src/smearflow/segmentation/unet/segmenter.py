"""The U-Net segmenter: a field in, a :class:`~smearflow.segmentation.Segmentation` out.

Like the classical segmenter, the U-Net works at a fixed red-cell diameter:
a field is resized so that its red-cell diameter ``D`` (given, or estimated by
:func:`smearflow.segmentation.diameter.estimate_rbc_diameter_px`) becomes
``working_rbc_diameter_px`` (never enlarged by more than ``max_upscale``),
normalised (:func:`~smearflow.segmentation.unet.network.normalise_field`),
run through the network (in overlapping tiles when large, averaged over
mirror images when ``flip_averaging``), and the probabilities become cells
(:func:`~smearflow.segmentation.unet.postprocess.cells_from_probabilities`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from keras import ops

from smearflow.errors import BadModelError
from smearflow.segmentation.base import Segmentation
from smearflow.segmentation.diameter import estimate_rbc_diameter_px
from smearflow.segmentation.regions import as_rgb_uint8
from smearflow.segmentation.unet.config import UNetConfig
from smearflow.segmentation.unet.folder import UNetModelFolder, load_network, packaged_model_dir, read_unet_folder
from smearflow.segmentation.unet.network import normalise_field, working_field
from smearflow.segmentation.unet.postprocess import cells_from_probabilities

__all__ = ["UNetSegmenter", "build_segmenter"]


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
            The folder; the packaged default (:data:`~smearflow.segmentation.unet.folder.DEFAULT_MODEL_DIR`) when omitted.
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
        folder = read_unet_folder(model_dir if model_dir is not None else packaged_model_dir())
        model = load_network(folder)
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
        image = as_rgb_uint8(image)
        rbc_diameter_px = self.rbc_diameter_px
        if rbc_diameter_px is None:
            rbc_diameter_px = estimate_rbc_diameter_px(image)
        work = working_field(image, rbc_diameter_px, self.config.working_rbc_diameter_px, self.config.max_upscale)
        probabilities = self.predict_probabilities(normalise_field(work))
        return cells_from_probabilities(probabilities, image.shape[:2], float(rbc_diameter_px), self.config)

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


def build_segmenter(*, rbc_diameter_px: float | None = None, model_dir: str | Path | None = None) -> UNetSegmenter:
    """The registry's builder (:mod:`smearflow.segmentation.registry`): :meth:`UNetSegmenter.load`.

    Raises
    ------
    BadModelError
        As :meth:`UNetSegmenter.load`.
    ValueError
        When ``rbc_diameter_px`` is not positive.
    """
    return UNetSegmenter.load(model_dir, rbc_diameter_px=rbc_diameter_px)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - 2 * overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts
