import json

import numpy as np
import pytest

from conftest import write_class_folders
from smearflow.classifier.classifier import Classifier
from smearflow.training.architectures import build_model, get_architecture
from smearflow.training.train import TrainConfig, balanced_class_weights, train_classifier


def test_train_writes_a_loadable_model_folder_with_honest_splits(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=8, size=32)
    config = TrainConfig(image_size=32, epochs=2, batch_size=8, test_fraction=0.25, arch_params={"filters": (4, 8)})
    folder = train_classifier(data, tmp_path / "model", config)
    splits = json.loads((tmp_path / "model" / "splits.json").read_text())
    assert not set(splits["train"]) & set(splits["test"])
    assert len(splits["test"]) == 6 == folder.metrics["test_images"]
    assert folder.classes == ("a", "b", "c")
    assert 0.0 <= folder.metrics["accuracy"] <= 1.0
    saved = {k: v for k, v in folder.config.items() if k not in ("classes", "keras_version")}
    assert TrainConfig.from_dict(saved) == config
    crops = np.zeros((2, 224, 224, 3), np.uint8)
    assert Classifier.load(folder.path).predict_proba(crops).shape == (2, 3)


def test_train_config_validates():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="class_weight"):
        TrainConfig(class_weight="smote")


def test_balanced_class_weights():
    weights = balanced_class_weights(np.array([0, 0, 0, 1]), 2)
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0})
    with pytest.raises(ValueError, match="at least one training image"):
        balanced_class_weights(np.array([0, 0]), 2)


def test_registry_rejects_unknown_names_and_small_inputs():
    with pytest.raises(ValueError, match="Unknown architecture 'alexnet'"):
        get_architecture("alexnet")
    with pytest.raises(ValueError, match="needs image_size >= 32"):
        build_model("cnn", 16, 3)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("cnn", 32, 1)
