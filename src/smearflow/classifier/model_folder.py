"""A trained classifier is a folder (:mod:`smearflow.model_folder`) with named classes and a calibration.

``model.keras``      the network
``config.json``      :class:`ClassifierConfig` (architecture, input size,
                     architecture parameters), and in its ``training``
                     section the ``TrainConfig`` that made it
``classes.json``     ordered class names: output ``i`` of the network is class ``i``
``metrics.json``     figures measured on the held-out test split
``splits.json``      which images trained, validated and tested it
``calibration.json`` (optional) temperature, confidence threshold and
                     test-time views fitted on a validation split (see
                     :mod:`smearflow.classifier.calibration`); absent: identity

Reading needs no Keras.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smearflow.classifier.calibration import Calibration
from smearflow.model_folder import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelFolder,
    Splits,
    read_folder,
    read_json,
    read_optional_file,
    write_folder,
)
from smearflow.serialisable import SerialisableConfig

CALIBRATION_FILE = "calibration.json"

__all__ = ["CALIBRATION_FILE", "WEIGHTS_FILE", "ClassifierConfig", "ClassifierFolder", "read_model_folder", "write_model_folder"]


@dataclass(frozen=True)
class ClassifierConfig(SerialisableConfig):
    """What a classifier network is: enough to rebuild it (the weights hold the rest).

    Attributes
    ----------
    architecture : str
        A name of ``smearflow.training.architectures.ARCHITECTURES``.
    image_size : int
        Input side in pixels.
    arch_params : dict
        Architecture options it was built with.
    """

    architecture: str
    image_size: int
    arch_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.architecture, str) or not self.architecture:
            raise ValueError(f"architecture must be a name. Received: architecture={self.architecture!r}")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"image_size must be a positive integer. Received: image_size={self.image_size!r}")


@dataclass(frozen=True)
class ClassifierFolder(ModelFolder[ClassifierConfig]):
    """A classifier model folder: the generic contents plus its calibration."""

    calibration: Calibration = Calibration()

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    @property
    def training(self) -> dict[str, Any]:
        """The training settings (``TrainConfig`` fields) that made it; empty when unknown."""
        return dict(self.metadata.get("training") or {})


def _classifier_config(raw: dict[str, Any]) -> ClassifierConfig:
    missing = [key for key in ("architecture", "image_size") if key not in raw]
    if missing:
        raise ValueError(f"missing key(s) {missing}")
    return ClassifierConfig(raw["architecture"], raw["image_size"], dict(raw.get("arch_params") or {}))


def read_model_folder(path: str | Path) -> ClassifierFolder:
    """Read and validate a classifier model folder without loading the network.

    A folder written by an older smearflow kept its training settings among
    the config's keys: they are read as the ``training`` section.

    Raises
    ------
    BadModelError
        When the folder or one of its files is missing, a JSON file does not
        parse, the config lacks a required key, or the class list is empty
        or has duplicates.
    """
    folder = read_folder(path, _classifier_config, with_classes=True, metrics_required=True)
    metadata = dict(folder.metadata)
    if "training" not in metadata:
        flat = read_json(folder.path / CONFIG_FILE)
        own = {f.name for f in dataclasses.fields(ClassifierConfig)} | {"classes", "keras_version", "keras_backend"}
        metadata["training"] = {k: v for k, v in flat.items() if k not in own} | {
            "architecture": folder.config.architecture,
            "image_size": folder.config.image_size,
            "arch_params": folder.config.arch_params,
        }
    fields_of = {f.name: getattr(folder, f.name) for f in dataclasses.fields(ModelFolder)}
    return ClassifierFolder(**(fields_of | {"metadata": metadata}), calibration=_read_calibration(folder.path))


def _read_calibration(path: Path) -> Calibration:
    return read_optional_file(path / CALIBRATION_FILE, Calibration.from_dict, Calibration())


def write_model_folder(
    path: str | Path,
    model,
    *,
    config: ClassifierConfig | dict[str, Any],
    classes: list[str] | tuple[str, ...],
    metrics: dict[str, Any],
    training: dict[str, Any] | None = None,
    splits: Splits | None = None,
    calibration: dict[str, Any] | None = None,
) -> ClassifierFolder:
    """Save a Keras model with its config, classes, metrics, splits and (optionally) calibration.

    ``config`` may be a plain dict (``architecture``, ``image_size``, ``arch_params``).

    Raises
    ------
    ValueError
        When a dict ``config`` lacks ``architecture`` or ``image_size``.
    """
    import json

    import keras

    if isinstance(config, dict):
        config = _classifier_config(config)

    def save(weights_path: Path) -> None:
        network = model
        if getattr(network, "optimizer", None) is not None and isinstance(network, keras.Model) and network.inputs:
            # An uncompiled view of the same layers: the file holds weights, not
            # optimizer state, which would triple its size and serve no inference.
            inputs = network.inputs[0] if len(network.inputs) == 1 else network.inputs
            outputs = network.outputs[0] if len(network.outputs) == 1 else network.outputs
            network = keras.Model(inputs, outputs, name=network.name)
        network.save(weights_path)

    metadata = {"training": training or {}, "keras_version": keras.__version__, "keras_backend": keras.backend.backend()}
    path = write_folder(path, save, config, classes=classes, metrics=metrics, splits=splits, metadata=metadata)
    if calibration is not None:
        (path / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=2, sort_keys=True) + "\n")
    return read_model_folder(path)
