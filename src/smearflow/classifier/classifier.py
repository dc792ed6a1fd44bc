"""Classify cell crops with a model folder."""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path

import numpy as np

from smearflow.classifier.calibration import Calibration, apply_temperature, tta_views
from smearflow.classifier.inference import run_network
from smearflow.classifier.model_folder import ClassifierFolder, read_model_folder
from smearflow.classifier.precision import check_precision, with_precision
from smearflow.classifier.preprocessing import resize_batch
from smearflow.errors import BadModelError
from smearflow.types import Classification

logger = logging.getLogger(__name__)


def default_model_dir() -> Path:
    """The model folder shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "default_model"


class Classifier:
    """A loaded model folder that labels batches of RGB crops.

    Use :meth:`load`; the constructor takes an already built Keras model so
    that tests and training can wrap a model they hold in memory.

    Parameters
    ----------
    model : keras.Model
    folder : ClassifierFolder
    calibration : Calibration or dict, optional
        Replaces ``folder.calibration`` (training fits it before the folder
        is written).
    precision : {"float32", "bfloat16"}
        What the network computes in (see
        :func:`smearflow.classifier.precision.with_precision`).

    Attributes
    ----------
    temperature : float
        Applied inside :meth:`predict_proba` (1: none).
    confidence_threshold : float
        Recommended top probability below which a cell is uncertain (see
        :meth:`is_uncertain`).
    test_time_augmentation : str
        Views averaged inside :meth:`predict_proba`.
    precision : str

    Raises
    ------
    ValueError
        For an unknown ``precision``.
    """

    def __init__(
        self, model, folder: ClassifierFolder, calibration: Calibration | dict | None = None, precision: str = "float32"
    ):
        self.precision = check_precision(precision)
        self.model = with_precision(model, precision)
        self.folder = folder
        self.classes = folder.classes
        self.image_size = folder.image_size
        if calibration is None:
            calibration = folder.calibration
        elif isinstance(calibration, dict):
            calibration = Calibration.from_dict(calibration)
        self.calibration = calibration
        self.temperature = calibration.temperature
        self.confidence_threshold = calibration.confidence_threshold
        self.test_time_augmentation = calibration.test_time_augmentation

    @cached_property
    def version(self) -> str:
        """``<architecture>-<sha256 prefix of the weights>`` (see :attr:`ClassifierFolder.version`)."""
        return self.folder.version

    @classmethod
    def load(cls, path: str | Path | None = None, precision: str = "float32") -> "Classifier":
        """Load a model folder (the packaged default when ``path`` is None), to compute in ``precision``.

        Raises
        ------
        BadModelError
            When the folder is invalid, the network does not load, or its
            output size differs from the number of classes.
        ValueError
            For an unknown ``precision``.
        """
        import keras

        check_precision(precision)

        folder = read_model_folder(default_model_dir() if path is None else path)
        try:
            model = keras.saving.load_model(folder.weights_path, compile=False)
        except Exception as error:  # Keras raises many types for a bad file
            raise BadModelError(f"{folder.weights_path}: cannot load the network ({error})") from None
        n_outputs = int(model.output_shape[-1])
        if n_outputs != len(folder.classes):
            raise BadModelError(
                f"{folder.path}: network has {n_outputs} outputs but classes.json lists {len(folder.classes)} classes"
            )
        logger.info("loaded classifier %s from %s", folder.version, folder.path)
        return cls(model, folder, precision=precision)

    def predict_proba(self, crops: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Calibrated class probabilities for crops.

        The network's probabilities are averaged over the test-time views
        (``test_time_augmentation``), then tempered, ``softmax(log p / T)``
        with ``T = temperature`` (see :mod:`smearflow.classifier.calibration`).

        Parameters
        ----------
        crops : ndarray of shape (n, M, N, 3), uint8
            RGB crops of any square size; they are resized to the model's input.
        batch_size : int
            Crops per forward pass.

        Returns
        -------
        probabilities : ndarray of shape (n, n_classes), float32
        """
        if crops.ndim != 4 or crops.shape[-1] != 3:
            raise ValueError(f"crops must have shape (n, M, N, 3). Received: shape={crops.shape}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1. Received: batch_size={batch_size}")
        if len(crops) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        resized = resize_batch(crops, self.image_size)
        views = tta_views(resized, self.test_time_augmentation)
        outputs = [
            np.mean([run_network(self.model, view[i : i + batch_size]) for view in views], axis=0)
            for i in range(0, len(resized), batch_size)
        ]
        return apply_temperature(np.concatenate(outputs), self.temperature)

    def is_uncertain(self, probabilities: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Which rows' top probability is below the confidence threshold.

        Parameters
        ----------
        probabilities : ndarray of shape (n, n_classes)
            From :meth:`predict_proba`.
        threshold : float, optional
            Default ``confidence_threshold`` (the model folder's recommendation).

        Returns
        -------
        ndarray of shape (n,), bool

        Raises
        ------
        ValueError
            When ``threshold`` is outside [0, 1].
        """
        threshold = self.confidence_threshold if threshold is None else threshold
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1]. Received: threshold={threshold}")
        probabilities = np.asarray(probabilities)
        if len(probabilities) == 0:
            return np.zeros(0, dtype=bool)
        return probabilities.max(axis=1) < threshold

    def classify(self, crops: np.ndarray, batch_size: int = 32, exclude: tuple[str, ...] = ()) -> list[Classification]:
        """Label each crop with its most probable class and that probability.

        Parameters
        ----------
        crops : ndarray of shape (n, M, N, 3), uint8
        batch_size : int
        exclude : tuple of str
            Classes that other evidence has ruled out (a white-cell-sized
            object is not a platelet): their probability is set to zero and
            the rest renormalised.

        Raises
        ------
        ValueError
            When ``exclude`` names a class the model does not have, or all of them.
        """
        unknown = sorted(set(exclude) - set(self.classes))
        if unknown:
            raise ValueError(f"exclude names unknown classes {unknown}. Known: {list(self.classes)}")
        if set(exclude) >= set(self.classes):
            raise ValueError(f"exclude cannot rule out every class. Received: exclude={exclude}")
        probabilities = self.predict_proba(crops, batch_size=batch_size)
        if exclude and len(probabilities):
            keep = np.array([c not in exclude for c in self.classes])
            probabilities = probabilities * keep
            probabilities /= np.maximum(probabilities.sum(axis=1, keepdims=True), 1e-12)
        return [
            Classification(
                label=self.classes[int(np.argmax(p))],
                confidence=float(np.max(p)),
                probabilities=tuple(float(x) for x in p),
            )
            for p in probabilities
        ]
