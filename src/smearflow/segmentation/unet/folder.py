"""The U-Net model folder: read, validate, write, load its network; the packaged default.

``model.keras``   the network (Keras 3 format, no optimizer state)
``config.json``   :class:`~smearflow.segmentation.unet.config.UNetConfig`
                  (architecture, filters, channels, input size, working
                  scale, thresholds, post-processing) plus a ``training``
                  section describing how it was trained
``metrics.json``  held-out figures
``splits.json``   which images trained it and which were held out

The packaged default lives in ``default_model/`` beside this module.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from smearflow.errors import BadModelError
from smearflow.segmentation.unet.config import UNetConfig, build_from_config
from smearflow.segmentation.unet.network import UNET_ARCHITECTURES

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_MODEL_DIR",
    "METRICS_FILE",
    "MODEL_FILE",
    "SPLITS_FILE",
    "UNetModelFolder",
    "load_network",
    "packaged_model_dir",
    "read_unet_folder",
    "update_unet_metrics",
    "write_unet_folder",
]

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
"""The packaged model folder used when no ``model_dir`` is given."""

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
SPLITS_FILE = "splits.json"
REQUIRED_FILES = (MODEL_FILE, CONFIG_FILE)
_CONFIG_METADATA_KEYS = ("training", "keras_version", "keras_backend")


@dataclass(frozen=True)
class UNetModelFolder:
    """The parsed, validated contents of a U-Net model folder (weights not loaded)."""

    path: Path
    config: UNetConfig
    metrics: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def version(self) -> str:
        """``<architecture>-<first 10 hex of the weights' sha256>``."""
        digest = hashlib.sha256(self.weights_path.read_bytes()).hexdigest()[:10]
        return f"{self.config.architecture}-{digest}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BadModelError(f"{path}: not valid JSON ({error})") from None
    except OSError as error:
        raise BadModelError(f"{path}: unreadable ({error})") from None


def read_unet_folder(path: str | Path) -> UNetModelFolder:
    """Read and validate a U-Net model folder without loading the network.

    Parameters
    ----------
    path : str or Path
        The folder.

    Returns
    -------
    UNetModelFolder

    Raises
    ------
    BadModelError
        When the folder or a required file is missing, a JSON file does not
        parse, or ``config.json`` is not a valid :class:`UNetConfig` (the
        message names the file).
    """
    path = Path(path)
    if not path.is_dir():
        raise BadModelError(f"{path}: U-Net model folder does not exist")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise BadModelError(f"{path}: U-Net model folder is missing {', '.join(missing)}")
    raw = _read_json(path / CONFIG_FILE)
    if not isinstance(raw, dict):
        raise BadModelError(f"{path / CONFIG_FILE}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("architecture") not in UNET_ARCHITECTURES:
        raise BadModelError(
            f"{path / CONFIG_FILE}: not a U-Net segmentation model: architecture={raw.get('architecture')!r}, "
            f"expected one of {sorted(UNET_ARCHITECTURES)}"
        )
    training = raw.get("training") or {}
    settings = {k: v for k, v in raw.items() if k not in _CONFIG_METADATA_KEYS}
    try:
        config = UNetConfig.from_dict(settings)
    except (TypeError, ValueError) as error:
        raise BadModelError(f"{path / CONFIG_FILE}: invalid U-Net config: {error}") from None
    metrics: dict[str, Any] = {}
    if (path / METRICS_FILE).is_file():
        metrics = _read_json(path / METRICS_FILE)
        if not isinstance(metrics, dict):
            raise BadModelError(f"{path / METRICS_FILE}: expected a JSON object, got {type(metrics).__name__}")
    splits = _read_json(path / SPLITS_FILE) if (path / SPLITS_FILE).is_file() else None
    return UNetModelFolder(path=path, config=config, metrics=metrics, splits=splits, training=dict(training))


def write_unet_folder(
    path: str | Path,
    model,
    config: UNetConfig,
    *,
    metrics: dict[str, Any] | None = None,
    splits: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> UNetModelFolder:
    """Save a network with its config (and metrics, splits) as a U-Net model folder.

    The weights are copied into a fresh, uncompiled network of any input size
    before saving, so the file holds no optimizer state and no loss.

    Parameters
    ----------
    path : str or Path
        Folder to write (created if needed).
    model : keras.Model
        A network built by :func:`build_from_config` for ``config``.
    config : UNetConfig
    metrics, splits, training : dict, optional
        Written to ``metrics.json``, ``splits.json`` and the ``training``
        section of ``config.json``.

    Returns
    -------
    UNetModelFolder
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    clean = build_from_config(config)
    clean.set_weights(model.get_weights())
    clean.save(path / MODEL_FILE)
    document = config.to_dict() | {
        "training": training or {},
        "keras_version": keras.__version__,
        "keras_backend": keras.backend.backend(),
    }
    (path / CONFIG_FILE).write_text(_json_text(document))
    (path / METRICS_FILE).write_text(_json_text(metrics or {}))
    if splits is not None:
        (path / SPLITS_FILE).write_text(_json_text(splits))
    return read_unet_folder(path)


def update_unet_metrics(folder: UNetModelFolder, metrics: dict[str, Any]) -> UNetModelFolder:
    """Add figures to the ``metrics.json`` of a model folder (a key given replaces the old one).

    Returns
    -------
    UNetModelFolder
        The folder read again.
    """
    (folder.path / METRICS_FILE).write_text(_json_text(folder.metrics | metrics))
    return read_unet_folder(folder.path)


def packaged_model_dir() -> Path:
    """The packaged default model folder, :data:`DEFAULT_MODEL_DIR`.

    Raises
    ------
    BadModelError
        When the package holds no default model.
    """
    if not (DEFAULT_MODEL_DIR / MODEL_FILE).is_file():
        raise BadModelError(
            f"no U-Net model folder given and no packaged default at {DEFAULT_MODEL_DIR}: pass "
            "--segmentation-model DIR (model_dir=...) or train one with 'smearflow train-segmentation'"
        )
    return DEFAULT_MODEL_DIR


def _json_text(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def load_network(folder: UNetModelFolder):
    """The network of a model folder, checked against its config.

    Raises
    ------
    BadModelError
        When ``model.keras`` does not load, or its input or output does not
        fit ``config.json`` (the message names the file).
    """
    try:
        model = keras.saving.load_model(folder.weights_path, compile=False)
    except Exception as error:  # noqa: BLE001 - any failure to deserialise is a bad model file
        raise BadModelError(f"{folder.weights_path}: cannot load the network ({type(error).__name__}: {error})") from None
    input_shape = tuple(model.input_shape)
    output_shape = tuple(model.output_shape)
    if len(input_shape) != 4 or input_shape[-1] != 3:
        raise BadModelError(f"{folder.weights_path}: network input {input_shape} is not (batch, rows, cols, 3)")
    if len(output_shape) != 4 or output_shape[-1] != len(folder.config.channels):
        raise BadModelError(
            f"{folder.weights_path}: network output {output_shape} does not have the "
            f"{len(folder.config.channels)} channels {list(folder.config.channels)} of {folder.path / CONFIG_FILE}"
        )
    return model
