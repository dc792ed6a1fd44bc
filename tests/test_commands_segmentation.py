"""``smearflow train-segmentation`` and ``evaluate-segmentation`` on tiny generated datasets."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from smearflow.cli import app

BACKGROUND = (236, 226, 232)
RBC, CYTOPLASM, NUCLEUS = (205, 120, 130), (200, 175, 215), (90, 50, 140)


def _disc(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def _write_masks(root, n=6, size=48):
    from PIL import Image

    from smearflow.imageio import write_rgb

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        centre = (size // 2 + int(rng.integers(-3, 4)), size // 2 + int(rng.integers(-3, 4)))
        image = np.empty((size, size, 3), np.uint8)
        image[:] = BACKGROUND
        mask = np.zeros((size, size), np.uint8)
        image[_disc(image.shape[:2], centre, 12)] = CYTOPLASM
        mask[_disc(mask.shape, centre, 12)] = 128
        image[_disc(image.shape[:2], centre, 6)] = NUCLEUS
        mask[_disc(mask.shape, centre, 6)] = 255
        write_rgb(root / "images" / f"{i:03d}.png", image)
        Image.fromarray(mask).save(root / "masks" / f"{i:03d}.png")
    return root


def _write_boxes(root, n=6):
    from smearflow.imageio import write_rgb

    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i in range(n):
        image = np.empty((64, 96, 3), np.uint8)
        image[:] = BACKGROUND
        objects = []
        for k in range(3):
            centre = (16, 16 + 30 * k)
            image[_disc((64, 96), centre, 10)] = RBC
            objects.append(("RBC", centre[1] - 10, centre[0] - 10, centre[1] + 10, centre[0] + 10))
        image[_disc((64, 96), (46, 48), 14)] = CYTOPLASM
        image[_disc((64, 96), (46, 48), 7)] = NUCLEUS
        objects.append(("WBC", 34, 32, 62, 60))
        write_rgb(root / "images" / f"BloodImage_{i:05d}.jpg", image)
        xml = "".join(
            f"<object><name>{name}</name><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
            for name, x0, y0, x1, y1 in objects
        )
        (root / "annotations" / f"BloodImage_{i:05d}.xml").write_text(f"<annotation>{xml}</annotation>")
    return root


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("segdata")
    _write_masks(root / "wbcseg" / "dataset1")
    _write_boxes(root / "bccd")
    return root


@pytest.fixture(scope="module")
def trained(data):
    out = data / "unet"
    result = invoke(
        "train-segmentation",
        "--wbcseg", data / "wbcseg",
        "--bccd", data / "bccd",
        "--out", out,
        "--epochs", 1,
        "--steps-per-epoch", 2,
        "--batch-size", 2,
        "--size", 32,
        "--seed", 1,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, result


def test_train_segmentation_writes_a_model_folder_with_honest_splits_and_heldout_metrics(trained):
    out, result = trained
    assert {"model.keras", "config.json", "metrics.json", "splits.json"} <= {p.name for p in out.iterdir()}
    from smearflow.segmentation.unet import read_unet_folder

    datasets = read_unet_folder(out).datasets()
    assert set(datasets) == {"dataset1", "bccd"}
    for split in datasets.values():
        assert split["heldout"] and not set(split["train"]) & set(split["heldout"])
    splits = json.loads((out / "splits.json").read_text())  # one typed splits.json, as for a classifier
    assert not set(splits["train"]) & set(splits["test"]) and splits["test"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["heldout_images"] == {"dataset1": 2, "bccd": 2}
    assert metrics["heldout"]["dataset1"]["layout"] == "masks"
    assert metrics["heldout"]["dataset1"]["rbc_diameter_px"] == 32.0
    assert metrics["heldout_estimated_diameter"]["dataset1"]["images"] == 2
    assert set(metrics["heldout"]["bccd"]["per_class"]) == {"WBC", "RBC", "Platelets"}
    assert "nucleus_dice_pooled" in metrics["summary"] and "bccd_WBC_f1" in metrics["summary"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "unet" and config["input_size_px"] == 32
    assert config["channels"] == ["nucleus", "wbc", "rbc", "platelet"]
    assert config["training"]["seed"] == 1 and config["training"]["steps_per_epoch"] == 2
    assert "saved" in result.output and "held-out" in result.output


def test_evaluate_segmentation_json_has_the_keys_the_evaluation_returns(data, trained):
    from smearflow.datasets import dataset_names, holdout_split
    from smearflow.evaluation.segmentation import evaluate_segmentation_dir
    from smearflow.segmentation.unet import UNetSegmenter

    folder = data / "wbcseg" / "dataset1"
    result = invoke(
        "evaluate-segmentation", folder, "--segmenter", "unet", "--segmentation-model", trained[0],
        "--rbc-diameter-px", 32, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    held_out = holdout_split(dataset_names(folder))[1]
    direct = evaluate_segmentation_dir(folder, UNetSegmenter.load(trained[0], rbc_diameter_px=32), held_out)
    assert set(printed) == set(direct)
    assert printed["images"] == len(held_out) == 2
    assert printed["cell_dice"] == pytest.approx(direct["cell_dice"])


def test_evaluate_segmentation_prints_tables_for_a_folder_of_datasets(data):
    result = invoke("evaluate-segmentation", data, "--rbc-diameter-px", 20, "--subset", "all")
    assert result.exit_code == 0, result.output
    assert "dataset1" not in result.output  # data/ itself holds bccd and wbcseg/, not dataset1
    assert "bccd: classical, all part" in result.output and "Platelets" in result.output
    result = invoke("evaluate-segmentation", data / "wbcseg", "--subset", "tuning", "--json", "--rbc-diameter-px", 32)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dataset1"]["images"] == 4
    result = invoke("evaluate-segmentation", data / "wbcseg", "--rbc-diameter-px", 32)
    assert "dataset1: classical, heldout part" in result.output and "Dice" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--subset", "everything"], "--subset must be one of heldout, tuning, all"),
        (["--segmenter", "magic"], "--segmenter must be classical or unet"),
        (["--segmenter", "unet", "--segmentation-model", "{tmp}/nope"], "nope: U-Net model folder does not exist"),
        (["--rbc-diameter-px", "-3"], "rbc_diameter_px must be positive"),
    ],
)
def test_evaluate_segmentation_reports_bad_options(data, tmp_path, args, message):
    result = invoke("evaluate-segmentation", data / "bccd", *[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2 and message in result.output


def test_evaluate_segmentation_reports_a_missing_or_empty_folder(tmp_path):
    result = invoke("evaluate-segmentation", tmp_path / "absent")
    assert result.exit_code == 2 and "absent: no such dataset folder" in result.output
    result = invoke("evaluate-segmentation", tmp_path)
    assert result.exit_code == 2 and "not a segmentation dataset" in result.output


def test_evaluate_segmentation_names_a_broken_model_config(data, trained, tmp_path):
    import shutil

    broken = shutil.copytree(trained[0], tmp_path / "broken")
    (broken / "config.json").write_text("{")
    result = invoke("evaluate-segmentation", data / "bccd", "--segmenter", "unet", "--segmentation-model", broken)
    assert result.exit_code == 2 and "config.json: not valid JSON" in result.output


def test_train_segmentation_reports_bad_inputs(tmp_path, data):
    result = invoke("train-segmentation", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "give --wbcseg DIR, --bccd DIR or both" in result.output
    assert not (tmp_path / "o").exists()
    result = invoke("train-segmentation", "--wbcseg", tmp_path / "absent", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "absent: no such dataset folder" in result.output
    result = invoke("train-segmentation", "--bccd", data / "bccd", "--size", 30, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "input_size_px must be a positive multiple" in result.output
    result = invoke("train-segmentation", "--wbcseg", data / "bccd", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "no masks-layout dataset" in result.output


def test_analyze_runs_with_the_unet_segmenter(trained, tiny_model_dir, tmp_path):
    synthetic = pytest.importorskip("smearflow.synthetic")
    slides = synthetic.write_demo_slides(tmp_path / "slides", n_slides=1, seed=3)
    result = invoke(
        "analyze", *slides, "--segmenter", "unet", "--segmentation-model", trained[0], "--model", tiny_model_dir,
        "--database-url", f"sqlite:///{tmp_path / 'db.sqlite'}", "--json",
    )  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    summary = json.loads(result.stdout)[0]
    assert summary["status"] in ("done", "failed") and "counts" in summary


@pytest.mark.parametrize("command", ["evaluate-segmentation", "train-segmentation"])
def test_help_is_plain_text_without_module_names_or_developer_paths(command):
    from smearflow.segmentation import SEGMENTERS

    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for word in ("``", "segeval", "holdout_split", "evaluate_segmentation_dir", "smearflow.", "../shared"):
        assert word not in text, word
    if command == "evaluate-segmentation":
        assert all(entry.description in text for entry in SEGMENTERS.values())
