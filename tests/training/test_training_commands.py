"""The ``train`` and ``benchmark`` commands, with the database on SQLite."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from smearflow_testkit import write_class_folders
from smearflow.cli import app
from smearflow.commands.training import parse_ints, parse_names, parse_weights


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_class_folders(tmp_path_factory.mktemp("cmd-data"), per_class=8, size=32)


def _benchmark_args(data, out, database_url):
    return [
        "benchmark", "--data", str(data), "--archs", "cnn", "--folds", "2", "--image-size", "32", "--epochs", "1",
        "--batch-size", "8", "--out", str(out), "--arch-params", '{"cnn": {"filters": [4, 8]}}',
        "--test-fraction", "0.25", "--database-url", database_url,
    ]


def test_benchmark_command_records_the_database_and_resumes(data, tmp_path, monkeypatch):
    from sqlalchemy import select

    from smearflow.db import make_engine, session_factory
    from smearflow.db.models import BenchmarkResult, BenchmarkRun

    url = f"sqlite:///{tmp_path / 'bench.db'}"
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(app, _benchmark_args(data, out, url))
    assert result.exit_code == 0, result.output
    assert "report:" in result.stdout and (out / "report.md").is_file()

    import smearflow.training.train as train_module

    def no_training(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(train_module, "fit_classifier", no_training)
    again = runner.invoke(app, _benchmark_args(data, out, url))
    assert again.exit_code == 0, again.output

    engine = make_engine(url)
    with session_factory(engine)() as session:
        runs = session.scalars(select(BenchmarkRun).order_by(BenchmarkRun.id)).all()
        assert [r.status for r in runs] == ["done", "done"]
        assert runs[0].run_folder == str(out.resolve()) and runs[0].config["folds"] == 2
        for run in runs:
            rows = session.scalars(select(BenchmarkResult).where(BenchmarkResult.run_id == run.id)).all()
            assert sorted((r.architecture, r.fold) for r in rows) == [("cnn", -1), ("cnn", 0), ("cnn", 1)]
            fold0 = next(r for r in rows if r.fold == 0)
            assert fold0.accuracy == fold0.metrics["variants"]["network"]["validation"]["accuracy"]
            assert fold0.metrics["seed"] == 20261125 and fold0.seconds > 0
            assert {"network", "refit", "smote"} == set(fold0.metrics["variants"])
        first_rows = {r.fold: r.accuracy for r in runs[0].results}
        assert first_rows == {r.fold: r.accuracy for r in runs[1].results}
    engine.dispose()


def test_benchmark_command_failure_marks_the_database_run_failed(data, tmp_path, monkeypatch):
    from sqlalchemy import select

    from smearflow.db import make_engine, session_factory
    from smearflow.db.models import BenchmarkRun

    import smearflow.training.train as train_module

    def broken(*args, **kwargs):
        raise ValueError("simulated training failure")

    monkeypatch.setattr(train_module, "fit_classifier", broken)
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    result = CliRunner().invoke(app, _benchmark_args(data, tmp_path / "run", url))
    assert result.exit_code == 1 and "simulated training failure" in result.output
    engine = make_engine(url)
    with session_factory(engine)() as session:
        run = session.scalars(select(BenchmarkRun)).one()
        assert run.status == "failed" and "simulated training failure" in run.error
    engine.dispose()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--archs", "cnn,alexnet"], "Unknown architecture 'alexnet'"),
        (["--archs", "all", "--image-size", "64"], "image_size is below the minimum of inceptionv3 75, xception 71"),
        (["--archs", "resnet50", "--weights", "resnet50=/nowhere/r.h5"], "no file /nowhere/r.h5"),
        (["--archs", "cnn", "--folds", "1"], "folds must be an integer of at least 2"),
    ],
)
def test_benchmark_command_rejects_bad_settings(data, tmp_path, args, message):
    result = CliRunner().invoke(
        app, ["benchmark", "--data", str(data), "--image-size", "32", "--out", str(tmp_path / "r"), *args]
    )
    assert result.exit_code == 1, result.output
    assert message in " ".join(result.output.split())


def test_train_command_with_an_architecture(data, tmp_path):
    from smearflow.classifier.classifier import Classifier

    out = tmp_path / "model"
    result = CliRunner().invoke(
        app, ["train", "--data", str(data), "--out", str(out), "--arch", "cnn", "--image-size", "32", "--epochs", "1",
              "--batch-size", "8"],
    )
    assert result.exit_code == 0, result.output
    classifier = Classifier.load(out)
    assert classifier.image_size == 32 and classifier.folder.config.architecture == "cnn"
    assert classifier.predict_proba(np.zeros((1, 64, 64, 3), np.uint8)).shape == (1, 3)
    assert (out / "history.csv").read_text().startswith("epoch,stage,")
    # Not a terminal: one plain line per epoch instead of a progress bar.
    assert "training cnn: epoch 1/1 " in result.output and " loss " in result.output, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "alexnet"], "Unknown architecture 'alexnet'"),
        (["--arch", "xception", "--image-size", "32"], "xception needs image_size >= 71. Received: image_size=32"),
        (["--arch", "resnet50", "--weights", "resnet50=/nowhere/r.h5"], "no file /nowhere/r.h5"),
        (["--arch", "cnn", "--weights", "bogus"], "expected NAME=PATH"),
    ],
)
def test_train_command_rejects_bad_input(data, tmp_path, args, message):
    result = CliRunner().invoke(
        app, ["train", "--data", str(data), "--out", str(tmp_path / "m"), "--image-size", "32", "--epochs", "1", *args]
    )
    assert result.exit_code != 0
    assert message in " ".join(result.output.split())


def test_train_command_refuses_the_checkpoint_of_another_run(data, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "checkpoint.json").write_text(
        json.dumps({"settings": {"data": "elsewhere"}, "stages": {}, "history": [], "seconds": 0.0})
    )
    result = CliRunner().invoke(
        app, ["train", "--data", str(data), "--out", str(tmp_path / "m"), "--checkpoint", str(checkpoint)]
    )
    assert result.exit_code == 1
    assert "holds the checkpoint of a training run with other settings (data, training)" in " ".join(
        result.output.split()
    )
    assert not (tmp_path / "m").exists()


def test_option_parsers():
    import typer

    assert parse_weights("imagenet=/w, xception=/x.h5") == {"imagenet": "/w", "xception": "/x.h5"}
    assert parse_weights(None) == {}
    with pytest.raises(typer.BadParameter, match="given twice"):
        parse_weights("xception=/a,xception=/b")
    assert parse_names("all")[:2] == ("cnn", "unet_encoder") and len(parse_names("all")) == 10
    assert parse_names("cnn, hybrid") == ("cnn", "hybrid")
    assert parse_ints("1,2", "--seeds") == (1, 2)
    with pytest.raises(typer.BadParameter, match="--seeds takes integers"):
        parse_ints("1,x", "--seeds")
    json.dumps(parse_weights("a=b"))


def test_benchmark_command_rejects_bad_json(data, tmp_path):
    result = CliRunner().invoke(
        app, ["benchmark", "--data", str(data), "--archs", "cnn", "--arch-params", "{cnn:", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 2 and "--arch-params is not valid JSON" in " ".join(result.output.split())


def test_benchmark_command_needs_its_data_and_a_database_to_promote(data, tmp_path):
    missing = CliRunner().invoke(app, ["benchmark", "--archs", "cnn", "--out", str(tmp_path / "r")])
    assert missing.exit_code == 2 and "--data" in missing.output
    unknown = CliRunner().invoke(app, ["benchmark", "--data", str(data), "--preset", "gpu9"])
    assert unknown.exit_code == 1 and "Unknown benchmark preset 'gpu9'" in unknown.output
    promote = CliRunner().invoke(
        app, ["benchmark", "--data", str(data), "--archs", "cnn", "--image-size", "32", "--promote"],
        env={"SMEARFLOW_DATABASE_URL": ""},
    )
    assert promote.exit_code == 1 and "--promote needs a database" in promote.output


def test_benchmark_preset_with_overrides():
    from smearflow.commands.training import benchmark_config

    config = benchmark_config("cpu", {"architectures": ("cnn",), "epochs": 2})
    assert (config.architectures, config.epochs, config.image_size, config.patience) == (("cnn",), 2, 75, 2)
    assert benchmark_config(None, {}).folds == 5


def test_benchmark_promote_goes_through_the_gate_and_never_replaces_the_packaged_model_silently(data, tmp_path):
    """The packaged model (other classes) is the baseline: the gate refuses to judge, the run is recorded failed."""
    from sqlalchemy import select

    from smearflow.db import make_engine, session_factory
    from smearflow.db.models import ModelActivation, TrainingRun

    url = f"sqlite:///{tmp_path / 'bench.db'}"
    args = _benchmark_args(data, tmp_path / "run", url)
    result = CliRunner().invoke(app, [*args, "--no-smote", "--promote", "--models-dir", str(tmp_path / "models")])
    assert result.exit_code == 1 and "are not the dataset's" in result.output, result.output
    assert "report:" in result.stdout  # the benchmark itself finished and was reported first
    engine = make_engine(url)
    with session_factory(engine)() as session:
        run = session.scalars(select(TrainingRun)).one()
        assert run.outcome == "failed" and not session.scalars(select(ModelActivation)).all()
    engine.dispose()
