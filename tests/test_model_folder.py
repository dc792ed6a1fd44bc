"""The one model folder of smearflow: typed config, classes, metrics and splits round-trip."""

import json

import pytest

from smearflow.errors import BadModelError
from smearflow.model_folder import Splits, read_folder, read_splits, write_folder
from smearflow.serialisable import SerialisableConfig


class TinyConfig(SerialisableConfig):
    def __init__(self, architecture, size=4):
        self.architecture, self.size = architecture, size

    def to_dict(self):
        return {"architecture": self.architecture, "size": self.size}

    def __eq__(self, other):
        return self.to_dict() == other.to_dict()


def _write(path, **kwargs):
    return write_folder(path, lambda weights: weights.write_bytes(b"weights"), TinyConfig("tiny"), **kwargs)


def test_write_then_read_gives_back_what_was_written(tmp_path):
    splits = Splits(
        train=("a/1.png", "b/2.png"), validation=("a/3.png",), test=("b/4.png",), earlier_train=("a/0.png",),
        extra=("b/x.png",), details={"seed": 7},
    )
    _write(tmp_path / "m", classes=("a", "b"), metrics={"accuracy": 0.5}, splits=splits, metadata={"training": {"epochs": 2}})
    folder = read_folder(tmp_path / "m", lambda raw: TinyConfig(**raw), with_classes=True)
    assert folder.config == TinyConfig("tiny") and folder.classes == ("a", "b")
    assert (folder.metrics, folder.splits, folder.metadata) == ({"accuracy": 0.5}, splits, {"training": {"epochs": 2}})
    assert folder.version.startswith("tiny-") and len(folder.version) == 15
    assert Splits.from_dict(splits.to_dict()) == splits
    assert splits.trained_on() == {"a/0.png", "a/1.png", "b/2.png"} and splits.seen() == {"a/0.png", "a/1.png", "a/3.png", "b/2.png"}
    assert Splits(earlier_train=None).seen() is None and Splits.from_dict({"earlier_train": None}).trained_on() is None


def test_a_folder_without_splits_has_none(tmp_path):
    _write(tmp_path / "m")
    assert read_splits(tmp_path / "m") is None
    assert read_folder(tmp_path / "m", lambda raw: TinyConfig(**raw)).splits is None


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("config.json", "[1]", "config.json: expected a JSON object, got list"),
        ("config.json", "{bad", "config.json: not valid JSON"),
        ("classes.json", '["a", "a"]', "duplicate class names"),
        ("classes.json", "[]", "expected a non-empty list of class names"),
        ("splits.json", '{"train": "a/1.png"}', "splits.json: train must be a list of image names"),
    ],
)
def test_bad_files_are_named(tmp_path, file, content, message):
    _write(tmp_path / "m", classes=("a",))
    (tmp_path / "m" / file).write_text(content)
    with pytest.raises(BadModelError, match=message):
        read_folder(tmp_path / "m", lambda raw: TinyConfig(**raw), with_classes=True)


def test_missing_folder_files_and_bad_configs_are_named(tmp_path):
    with pytest.raises(BadModelError, match="model folder does not exist"):
        read_folder(tmp_path / "none", TinyConfig)
    _write(tmp_path / "m")
    (tmp_path / "m" / "model.keras").unlink()
    with pytest.raises(BadModelError, match="model folder is missing model.keras"):
        read_folder(tmp_path / "m", TinyConfig)
    _write(tmp_path / "n")
    with pytest.raises(BadModelError, match="config.json: no size here"):
        read_folder(tmp_path / "n", lambda raw: (_ for _ in ()).throw(ValueError("no size here")))
    assert json.loads((tmp_path / "n" / "config.json").read_text()) == {"architecture": "tiny", "size": 4}
