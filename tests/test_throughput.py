"""The throughput measurement and ``smearflow bench`` at tiny scale: every figure is there (no timing asserted)."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from smearflow.cli import app
from smearflow.throughput import FIGURES, field_images, measure_throughput, naive_rate, write_synthetic_fields

TINY = ["--reference-architecture", "cnn", "--reference-size", "32", "--min-seconds", "0.01", "--naive-cells", "2"]


def _bench(*args):
    return CliRunner().invoke(app, ["bench", *args], env={"COLUMNS": "200"})


def test_bench_json_has_every_figure_for_both_models(tiny_model_dir):
    # each model measured in a spawned process of its own, as bench runs by default
    result = _bench("--model", str(tiny_model_dir), "--fields", "2", "--json", *TINY)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["fields"] == 2 and report["batch_size"] == 64 and report["data"].startswith("synthetic")
    assert report["isolated"] is True and report["prepare_threads"] == 1
    assert [m["forward_batch_size"] for m in report["models"]] == [64, 64]  # 32 px inputs
    assert [m["name"] for m in report["models"]] == [str(tiny_model_dir), "cnn 32 px, random weights"]
    for model in report["models"]:
        missing = [figure for figure in FIGURES if figure not in model]
        assert missing == []
        assert all(isinstance(model[figure], float) and model[figure] > 0 for figure in FIGURES), model
        assert model["slide_status"] == "done" and model["classified_cells"] > 0


def test_bench_measures_real_files_from_a_folder_and_prints_a_table(tiny_model_dir, tmp_path):
    fields = write_synthetic_fields(tmp_path / "fields", 2, n_distinct=2)
    result = _bench(
        "--model", str(tiny_model_dir), "--fields", "3", "--data", str(fields[0].parent), "--no-isolate", *TINY
    )
    assert result.exit_code == 0, result.output
    for figure in FIGURES:
        assert figure in result.stdout
    assert "3 fields" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fields", "0"], "--fields must be at least 1. Received: 0"),
        (["--data", "/nonexistent/fields"], "--data must be a folder of field images"),
        (["--precision", "float16"], "inference_precision must be one of"),
        (["--model", "/nonexistent/model"], "nonexistent/model"),
        (["--fields", "1", "--no-isolate", "--reference-architecture", "nonet"], "Unknown architecture 'nonet'"),
    ],
)
def test_bench_refuses_bad_options(args, message):
    result = _bench(*TINY, *args)
    assert result.exit_code == 2
    assert message in result.output.replace("\n", "")


def test_field_images_repeat_a_small_folder_and_refuse_an_empty_one(tmp_path):
    images = write_synthetic_fields(tmp_path / "fields", 2, n_distinct=2)
    assert field_images(tmp_path / "fields", 5) == [images[0], images[1], images[0], images[1], images[0]]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no field image"):
        field_images(tmp_path / "empty", 3)
    with pytest.raises(ValueError, match="n_fields must be at least 1. Received: n_fields=0"):
        field_images(tmp_path / "fields", 0)
    with pytest.raises(ValueError, match="Received: n_fields=0, n_distinct=1"):
        write_synthetic_fields(tmp_path / "more", 0, n_distinct=1)


def test_measuring_needs_images_models_and_crops(tmp_path):
    with pytest.raises(ValueError, match="Received: 0 images, 0 models"):
        measure_throughput([], [], tmp_path)
    with pytest.raises(ValueError, match="at least one crop. Received: 0 crops"):
        naive_rate(model=None, crops=np.zeros((0, 8, 8, 3), np.uint8), image_size=8)


def test_a_built_architecture_is_written_before_it_is_loaded(tmp_path):
    from smearflow.throughput import ModelUnderTest

    built = ModelUnderTest("cnn 32 px", architecture="cnn", image_size=32, classes=("a", "b"))
    with pytest.raises(ValueError, match="write cnn 32 px to a model folder before loading it"):
        built.load("float32")
    written = built.write(tmp_path)
    assert written.architecture is None and written.load("float32").classes == ("a", "b")
    assert written.write(tmp_path) is written
