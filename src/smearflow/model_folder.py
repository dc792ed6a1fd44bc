"""A trained model is a folder: the one reader and writer shared by the classifier and the U-Net.

``model.keras``     the network (Keras 3 format, no optimizer state)
``config.json``     the model's typed config (a :class:`~smearflow.serialisable.SerialisableConfig`:
                    architecture, input size …), plus metadata sections
                    (``training``: how it was trained; ``keras_version``, ``keras_backend``)
``classes.json``    ordered class names: output ``i`` is class ``i`` (classifiers)
``metrics.json``    figures measured on data it never trained on
``splits.json``     which images trained, validated and tested it (:class:`Splits`)

Reading needs no Keras, so the database, the CLI and the worker can inspect
a model without loading a deep-learning backend. A folder written by an
older smearflow keeps its training settings beside the config's own keys in
``config.json``; they are read back into :attr:`ModelFolder.metadata`
``["training"]`` all the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from smearflow.errors import BadModelError

WEIGHTS_FILE = "model.keras"
CONFIG_FILE = "config.json"
CLASSES_FILE = "classes.json"
METRICS_FILE = "metrics.json"
SPLITS_FILE = "splits.json"
METADATA_KEYS = ("training", "keras_version", "keras_backend")
"""Sections of ``config.json`` that describe the model's history, not the model."""

ConfigT = TypeVar("ConfigT")
T = TypeVar("T")


@dataclass(frozen=True)
class Splits:
    """``splits.json``: the images (dataset-relative names, ``class/file``) that made a model.

    Attributes
    ----------
    train, validation, test : tuple of str
    earlier_train : tuple of str or None
        Images that trained an initial model this one started from (only
        those not already in ``train``); ``None`` when that history is unknown.
    extra : tuple of str
        Images of an extra dataset (another microscope's crops), relative to it.
    details : dict
        Everything else the writer recorded (seeds, class order, sources).
    """

    train: tuple[str, ...] = ()
    validation: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    earlier_train: tuple[str, ...] | None = ()
    extra: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    _LISTS = ("train", "validation", "test", "extra")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Splits":
        """Parse a ``splits.json`` document.

        Raises
        ------
        ValueError
            When a list is not a list of names.
        """
        values: dict[str, Any] = {}
        for key in (*cls._LISTS, "earlier_train"):
            value = data.get(key, () if key != "earlier_train" else ())
            if value is None and key == "earlier_train":
                values[key] = None
                continue
            if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) for name in value):
                raise ValueError(f"{key} must be a list of image names. Received: {key}={value!r:.80}")
            values[key] = tuple(value)
        known = (*cls._LISTS, "earlier_train")
        return cls(**values, details={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        """The ``splits.json`` document."""
        data = dict(self.details)
        for key in self._LISTS:
            data[key] = list(getattr(self, key))
        data["earlier_train"] = None if self.earlier_train is None else list(self.earlier_train)
        return data

    def trained_on(self) -> set[str] | None:
        """Images that trained the model, earlier stages included; ``None`` when part of that is unknown."""
        if self.earlier_train is None:
            return None
        return set(self.train) | set(self.earlier_train)

    def seen(self) -> set[str] | None:
        """Images the model trained or validated on (validation chose its epochs and calibration)."""
        trained = self.trained_on()
        return None if trained is None else trained | set(self.validation)


@dataclass(frozen=True)
class ModelFolder(Generic[ConfigT]):
    """The parsed, validated contents of a model folder (weights not loaded).

    Attributes
    ----------
    path : Path
    config : the model's typed config
        Anything with ``architecture``.
    metrics : dict
    classes : tuple of str
        Empty for a model without named outputs (the U-Net).
    splits : Splits or None
        ``None`` when the folder has no ``splits.json``.
    metadata : dict
        The ``config.json`` sections of :data:`METADATA_KEYS`.
    """

    path: Path
    config: ConfigT
    metrics: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    splits: Splits | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def architecture(self) -> str:
        return str(self.config.architecture)  # type: ignore[attr-defined]

    @property
    def version(self) -> str:
        """``<architecture>-<first 10 hex of the weights' sha256>``: names what produced a result."""
        digest = hashlib.sha256(self.weights_path.read_bytes()).hexdigest()[:10]
        return f"{self.architecture}-{digest}"


def read_json(path: Path, expected: type = dict) -> Any:
    """A JSON file of a model folder, of the ``expected`` type.

    Raises
    ------
    BadModelError
        When it does not parse, cannot be read, or is not of that type.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise BadModelError(f"{path}: not valid JSON ({error})") from None
    except OSError as error:
        raise BadModelError(f"{path}: unreadable ({error})") from None
    if not isinstance(data, expected):
        wanted = {dict: "object", list: "list"}.get(expected, expected.__name__)
        raise BadModelError(f"{path}: expected a JSON {wanted}, got {type(data).__name__}")
    return data


def read_folder(
    path: str | Path,
    parse_config: Callable[[dict[str, Any]], ConfigT],
    *,
    what: str = "model folder",
    with_classes: bool = False,
    metrics_required: bool = False,
) -> ModelFolder[ConfigT]:
    """Read and validate a model folder without loading the network.

    Parameters
    ----------
    path : str or Path
    parse_config : callable
        ``dict -> typed config`` of the model's own keys of ``config.json``
        (the metadata sections and ``classes`` removed); raises ``ValueError``
        or ``TypeError`` on a bad config.
    what : str
        Named in errors (``"model folder"``, ``"U-Net model folder"``).
    with_classes : bool
        ``classes.json`` is required and checked.
    metrics_required : bool
        ``metrics.json`` is required (else optional).

    Raises
    ------
    BadModelError
        When the folder or a required file is missing, a JSON file does not
        parse, the config is invalid, or the class list is empty or has duplicates.
    """
    path = Path(path)
    if not path.is_dir():
        raise BadModelError(f"{path}: {what} does not exist")
    required = [WEIGHTS_FILE, CONFIG_FILE] + ([CLASSES_FILE] if with_classes else []) + ([METRICS_FILE] if metrics_required else [])
    missing = [name for name in required if not (path / name).is_file()]
    if missing:
        raise BadModelError(f"{path}: {what} is missing {', '.join(missing)}")
    raw = read_json(path / CONFIG_FILE)
    metadata = {key: raw.pop(key) for key in METADATA_KEYS if key in raw}
    raw.pop("classes", None)  # older folders repeated classes.json in config.json
    try:
        config = parse_config(raw)
    except (TypeError, ValueError) as error:
        raise BadModelError(f"{path / CONFIG_FILE}: {error}") from None
    return ModelFolder(
        path=path,
        config=config,
        metrics=read_json(path / METRICS_FILE) if (path / METRICS_FILE).is_file() else {},
        classes=_read_classes(path / CLASSES_FILE) if with_classes else (),
        splits=read_splits(path),
        metadata=metadata,
    )


def _read_classes(path: Path) -> tuple[str, ...]:
    classes = read_json(path, list)
    if not classes or not all(isinstance(c, str) for c in classes):
        raise BadModelError(f"{path}: expected a non-empty list of class names, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise BadModelError(f"{path}: duplicate class names in {classes}")
    return tuple(classes)


def read_splits(path: str | Path) -> Splits | None:
    """The :class:`Splits` of a model folder; ``None`` when it has no ``splits.json``.

    Raises
    ------
    BadModelError
        When ``splits.json`` does not parse or lists something else than names.
    """
    return read_optional_file(Path(path) / SPLITS_FILE, Splits.from_dict, None)


def read_optional_file(file: Path, parse: Callable[[dict[str, Any]], T], default: T) -> T:
    """``parse`` of the JSON object in ``file``, an optional file of a model folder; ``default`` when it is absent.

    Raises
    ------
    BadModelError
        Naming the file, when it does not parse as a JSON object or ``parse``
        raises ``ValueError``.
    """
    if not file.is_file():
        return default
    try:
        return parse(read_json(file))
    except ValueError as error:
        raise BadModelError(f"{file}: {error}") from None


def write_folder(
    path: str | Path,
    save_network: Callable[[Path], None],
    config,
    *,
    classes: tuple[str, ...] | list[str] | None = None,
    metrics: dict[str, Any] | None = None,
    splits: Splits | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a model folder: the network (``save_network(weights_path)``), the typed config and the rest.

    Returns
    -------
    Path
        The folder; read it back with :func:`read_folder`.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_network(path / WEIGHTS_FILE)
    document = (config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)) | (metadata or {})
    (path / CONFIG_FILE).write_text(_json_text(document))
    if classes is not None:
        (path / CLASSES_FILE).write_text(json.dumps(list(classes), indent=2) + "\n")
    (path / METRICS_FILE).write_text(_json_text(metrics or {}))
    if splits is not None:
        (path / SPLITS_FILE).write_text(json.dumps(splits.to_dict()) + "\n")
    return path


def update_metrics(folder: ModelFolder, metrics: dict[str, Any]) -> None:
    """Add figures to a folder's ``metrics.json`` (a key given replaces the old one)."""
    (folder.path / METRICS_FILE).write_text(_json_text(folder.metrics | metrics))


def _json_text(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=_plain) + "\n"


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
