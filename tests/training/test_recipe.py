import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from smearflow.classifier import default_model_dir, read_model_folder
from smearflow.cli import app
from smearflow.imageio import write_rgb
from smearflow.datasets import holdout_split
from smearflow.segmentation import Segmentation
from smearflow.training.recipe import DEFAULT_RECIPE, train_default_model
from smearflow.training.train import TrainConfig
from smearflow_testkit import planted_cell, write_class_folders


class _OneWhiteCell:
    def segment(self, image):
        cells = (planted_cell("wbc", 40, 40), planted_cell("rbc", 10, 10))
        return Segmentation(cells=cells, rbc_diameter_px=10.0, image_shape=image.shape[:2])


def _labelled_fields(root, n=10):
    names = [f"f{i}.jpg" for i in range(n)]
    for name in names:
        write_rgb(root / name, np.full((80, 80, 3), 120, np.uint8))
    rows = "".join(f"{name},{'A' if i % 2 else 'B'}\n" for i, name in enumerate(names))
    (root / "labels.csv").write_text("image,label\n" + rows)
    return names


TINY = TrainConfig(image_size=32, epochs=1, batch_size=8, test_fraction=0.25, arch_params={"filters": (4, 8)})


def test_default_recipe_mixes_the_tuning_fields_crops_into_one_training_run(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=8, size=32)
    names = _labelled_fields(tmp_path / "fields")
    folder = train_default_model(
        data,
        tmp_path / "run",
        field_images=tmp_path / "fields",
        field_labels=tmp_path / "fields" / "labels.csv",
        config=TINY,
        segmenter=_OneWhiteCell(),
    )
    assert folder.path == tmp_path / "run" / "model"
    assert folder.training["init_model"] is None and folder.training["class_weight"] == "prior"
    assert folder.training["extra_data"] == str(tmp_path / "run" / "field-crops")
    splits = json.loads((folder.path / "splits.json").read_text())
    tuning, _ = holdout_split(Path(n).stem for n in names)
    assert sorted(Path(n).stem for n in splits["extra"]) == sorted(tuning)
    assert (folder.path / "calibration.json").is_file() and splits["validation"]
    assert not (tmp_path / "run" / "checkpoint").exists()  # kept only until the model folder is written


def test_default_recipe_without_fields_trains_on_the_dataset_alone(tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=8, size=32)
    folder = train_default_model(data, tmp_path / "run", config=TINY)
    assert folder.path == tmp_path / "run" / "model" and folder.training["extra_data"] is None


def test_default_recipe_needs_fields_and_labels_together(tmp_path):
    with pytest.raises(ValueError, match="field_images and field_labels go together"):
        train_default_model(tmp_path, tmp_path / "run", field_images=tmp_path)


def test_train_default_command_passes_its_options(tmp_path, monkeypatch):
    import smearflow.training.recipe as recipe

    calls = []

    def fake_recipe(data, out, *, field_images, field_labels, config, on_epoch_end, columns):
        calls.append((data, out, field_images, field_labels, config.seed, config.splits_seed, columns))
        on_epoch_end(12, {"loss": 1.0})  # epochs are counted over the run: a resumed one starts past 0
        views = {"none": {"accuracy": 0.91, "seconds": 2.0}, "flips": {"accuracy": 0.92, "seconds": 7.5}}
        metrics = {"accuracy": 0.9, "macro_f1": 0.8, "test_images": 5, "train_seconds": 61.4,
                   "validation": {"test_time_augmentation": views}}
        return SimpleNamespace(path=out / "model", metrics=metrics)

    monkeypatch.setattr(recipe, "train_default_model", fake_recipe)
    runner = CliRunner()
    result = runner.invoke(app, ["train-default", "--data", "d", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    seed, splits_seed = recipe.DEFAULT_RECIPE.seed, recipe.DEFAULT_RECIPE.splits_seed
    assert calls[-1] == (Path("d"), tmp_path, None, None, seed, splits_seed, ("image", "label"))
    assert "test accuracy 0.9000" in result.stdout and "trained in 61 s" in result.stdout
    assert "none 0.9100 (2.0 s), flips 0.9200 (7.5 s)" in result.stdout
    assert f"epoch 13/{recipe.DEFAULT_RECIPE.total_epochs()} loss 1.0000" in result.output
    args = ["train-default", "--data", "d", "--fields", "f", "--field-labels", "l.csv", "--label-column",
            "kaggle_wbc_category", "--out", str(tmp_path), "--seed", "7"]
    assert runner.invoke(app, args).exit_code == 0
    # another training seed, the same test and validation splits
    assert calls[-1][2:] == (Path("f"), Path("l.csv"), 7, splits_seed, ("image", "kaggle_wbc_category"))
    missing = runner.invoke(app, ["train-default", "--data", "d", "--fields", "f"])
    assert missing.exit_code == 2 and "give both --fields and --field-labels" in missing.output
    assert runner.invoke(app, ["train-default"]).exit_code == 2  # the dataset is required: no developer default


def test_train_default_command_reports_errors(tmp_path):
    result = CliRunner().invoke(app, ["train-default", "--data", str(tmp_path / "none")])
    assert result.exit_code == 1 and "does not exist" in result.output


def test_the_packaged_model_was_trained_with_the_default_recipe():
    packaged = TrainConfig.from_dict(read_model_folder(default_model_dir()).training)
    # train-default reproduces the packaged model: same seed, splits and settings (the crops' folder aside)
    assert replace(packaged, extra_data=None) == DEFAULT_RECIPE
