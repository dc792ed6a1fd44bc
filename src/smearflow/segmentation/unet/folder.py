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

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from smearflow.errors import BadModelError
from smearflow.model_folder import (
    CONFIG_FILE,
    METRICS_FILE,
    SPLITS_FILE,
    WEIGHTS_FILE,
    ModelFolder,
    Splits,
    read_folder,
    update_metrics,
    write_folder,
)
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

MODEL_FILE = WEIGHTS_FILE


@dataclass(frozen=True)
class UNetModelFolder(ModelFolder[UNetConfig]):
    """A U-Net model folder (:mod:`smearflow.model_folder`) with its training section."""

    @property
    def training(self) -> dict[str, Any]:
        """How it was trained (the ``training`` section of ``config.json``)."""
        return dict(self.metadata.get("training") or {})

    def datasets(self) -> dict[str, dict[str, Any]]:
        """Per dataset it trained on: ``path``, ``layout``, ``train`` and ``heldout`` image names."""
        return datasets_of(self.splits)


def _unet_config(raw: dict[str, Any]) -> UNetConfig:
    if raw.get("architecture") not in UNET_ARCHITECTURES:
        raise ValueError(
            f"not a U-Net segmentation model: architecture={raw.get('architecture')!r}, "
            f"expected one of {sorted(UNET_ARCHITECTURES)}"
        )
    try:
        return UNetConfig.from_dict(raw)
    except (TypeError, ValueError) as error:
        raise ValueError(f"invalid U-Net config: {error}") from None


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
    folder = read_folder(path, _unet_config, what="U-Net model folder")
    contents = {f.name: getattr(folder, f.name) for f in dataclasses.fields(ModelFolder)}
    return UNetModelFolder(**(contents | {"splits": _per_dataset_form_read(folder.splits)}))


def write_unet_folder(
    path: str | Path,
    model,
    config: UNetConfig,
    *,
    metrics: dict[str, Any] | None = None,
    splits: dict[str, dict[str, Any]] | None = None,
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
    metrics : dict, optional
        Written to ``metrics.json``.
    splits : dict, optional
        Per dataset key: ``path``, ``layout``, ``train`` and ``heldout`` image names.
    training : dict, optional
        The ``training`` section of ``config.json``.

    Returns
    -------
    UNetModelFolder
    """

    def save(weights_path: Path) -> None:
        clean = build_from_config(config)
        clean.set_weights(model.get_weights())
        clean.save(weights_path)

    metadata = {"training": training or {}, "keras_version": keras.__version__, "keras_backend": keras.backend.backend()}
    write_folder(
        path, save, config, metrics=metrics, splits=unet_splits(splits) if splits is not None else None, metadata=metadata
    )
    return read_unet_folder(path)


def update_unet_metrics(folder: UNetModelFolder, metrics: dict[str, Any]) -> UNetModelFolder:
    """Add figures to the ``metrics.json`` of a model folder (a key given replaces the old one).

    Returns
    -------
    UNetModelFolder
        The folder read again.
    """
    update_metrics(folder, metrics)
    return read_unet_folder(folder.path)


def unet_splits(per_dataset: dict[str, dict[str, Any]]) -> Splits:
    """The :class:`~smearflow.model_folder.Splits` of a U-Net: names are ``<dataset key>/<image name>``."""
    return Splits(
        train=tuple(f"{key}/{name}" for key, split in per_dataset.items() for name in split.get("train", ())),
        test=tuple(f"{key}/{name}" for key, split in per_dataset.items() for name in split.get("heldout", ())),
        details={
            "datasets": {key: {"path": s.get("path"), "layout": s.get("layout")} for key, s in per_dataset.items()}
        },
    )


def datasets_of(splits: Splits | None) -> dict[str, dict[str, Any]]:
    """Per dataset key: ``path``, ``layout``, ``train`` and ``heldout`` names (inverse of :func:`unet_splits`)."""
    if splits is None:
        return {}
    result = {key: dict(info, train=[], heldout=[]) for key, info in (splits.details.get("datasets") or {}).items()}
    for part, names in (("train", splits.train), ("heldout", splits.test)):
        for name in names:
            key, image = name.split("/", 1)
            result[key][part].append(image)
    return result


def _per_dataset_form_read(splits: Splits | None) -> Splits | None:
    """Older versions wrote ``splits.json`` per dataset key (``{key: {path, layout, train, heldout}}``)."""
    details = splits.details if splits is not None else {}
    if splits is None or splits.train or splits.test or not details:
        return splits
    if all(isinstance(v, dict) and {"path", "layout", "train", "heldout"} <= set(v) for v in details.values()):
        return unet_splits(details)
    return splits


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
