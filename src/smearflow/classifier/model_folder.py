"""A trained classifier is a folder.

``model.keras``   the network (architecture and weights, Keras 3 format)
``config.json``   architecture, input size and training settings
``classes.json``  ordered class names: output ``i`` of the network is class ``i``
``metrics.json``  figures measured on the held-out test split
``calibration.json`` (optional) temperature, confidence threshold and
                  test-time views fitted on a validation split (see
                  :mod:`smearflow.classifier.calibration`); absent: identity

Reading and writing these files needs no Keras, so the database, the CLI and
the worker can inspect a model without loading a deep-learning backend.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smearflow.classifier.calibration import Calibration
from smearflow.errors import BadModelError

WEIGHTS_FILE = "model.keras"
REQUIRED_FILES = ("model.keras", "config.json", "classes.json", "metrics.json")
REQUIRED_CONFIG_KEYS = ("architecture", "image_size")
CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class ModelFolder:
    """The parsed, validated contents of a model folder (weights not loaded)."""

    path: Path
    config: dict[str, Any]
    classes: tuple[str, ...]
    metrics: dict[str, Any]
    calibration: Calibration = Calibration()

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def architecture(self) -> str:
        return str(self.config["architecture"])

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def version(self) -> str:
        """``<architecture>-<first 10 hex of the weights' sha256>``: names what produced a count."""
        digest = hashlib.sha256(self.weights_path.read_bytes()).hexdigest()[:10]
        return f"{self.architecture}-{digest}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BadModelError(f"{path}: not valid JSON ({error})") from None


def read_model_folder(path: str | Path) -> ModelFolder:
    """Read and validate a model folder without loading the network.

    Raises
    ------
    BadModelError
        When the folder or one of its files is missing, a JSON file does not
        parse, the config lacks a required key, or the class list is empty
        or has duplicates.
    """
    path = Path(path)
    if not path.is_dir():
        raise BadModelError(f"{path}: model folder does not exist")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise BadModelError(f"{path}: model folder is missing {', '.join(missing)}")
    config = _read_json(path / "config.json")
    if not isinstance(config, dict):
        raise BadModelError(f"{path / 'config.json'}: expected a JSON object, got {type(config).__name__}")
    absent = [key for key in REQUIRED_CONFIG_KEYS if key not in config]
    if absent:
        raise BadModelError(f"{path / 'config.json'}: missing key(s) {absent}")
    classes = _read_json(path / "classes.json")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise BadModelError(f"{path / 'classes.json'}: expected a non-empty list of class names, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise BadModelError(f"{path / 'classes.json'}: duplicate class names in {classes}")
    metrics = _read_json(path / "metrics.json")
    if not isinstance(metrics, dict):
        raise BadModelError(f"{path / 'metrics.json'}: expected a JSON object, got {type(metrics).__name__}")
    return ModelFolder(
        path=path, config=config, classes=tuple(classes), metrics=metrics, calibration=_read_calibration(path)
    )


def _read_calibration(path: Path) -> Calibration:
    file = path / CALIBRATION_FILE
    if not file.is_file():
        return Calibration()
    data = _read_json(file)
    if not isinstance(data, dict):
        raise BadModelError(f"{file}: expected a JSON object, got {type(data).__name__}")
    try:
        return Calibration.from_dict(data)
    except ValueError as error:
        raise BadModelError(f"{file}: {error}") from None


def write_model_folder(
    path: str | Path,
    model,
    *,
    config: dict[str, Any],
    classes: list[str] | tuple[str, ...],
    metrics: dict[str, Any],
    calibration: dict[str, Any] | None = None,
) -> ModelFolder:
    """Save a Keras model with its config, classes, metrics and (optionally) calibration as a model folder."""
    import keras

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if getattr(model, "optimizer", None) is not None and isinstance(model, keras.Model) and model.inputs:
        # An uncompiled view of the same layers: the file holds weights, not
        # optimizer state, which would triple its size and serve no inference.
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        outputs = model.outputs[0] if len(model.outputs) == 1 else model.outputs
        model = keras.Model(inputs, outputs, name=model.name)
    model.save(path / WEIGHTS_FILE)
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (path / "classes.json").write_text(json.dumps(list(classes), indent=2) + "\n")
    (path / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if calibration is not None:
        (path / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=2, sort_keys=True) + "\n")
    return read_model_folder(path)
