"""scripts/gpu-benchmark.sh: its arguments, the options it hands `smearflow benchmark`, and a dry run with JAX."""

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import typer

from smearflow_testkit import write_class_folders
from smearflow.cli import app
from smearflow.training.benchmark_config import PRESETS

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu-benchmark.sh"

needs_jax = pytest.mark.skipif(find_spec("jax") is None, reason="jax is not installed")

# On PYTHONPATH, this makes TensorFlow unimportable in every Python process the script starts. Keras' own
# set_random_seed tries TensorFlow whenever it is installed, whatever the backend, and goes on without it.
NO_TENSORFLOW = """
import sys


class NoTensorflow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ImportError("tensorflow must not be needed with the jax backend")


sys.meta_path.insert(0, NoTensorflow())
"""

# Stands in for Python: records the arguments and environment of `python -m smearflow ...`, passes every check.
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = -m ]; then
    printf '%s\\0' "$@" >"$RECORD/argv"
    printf '%s\\0' "$KERAS_BACKEND" "$PYTHONPATH" >"$RECORD/env"
fi
"""


def run_script(*args, env=None, timeout=60):
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)], env=dict(os.environ) | (env or {}), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=timeout,
    )


def fake_python(folder: Path) -> Path:
    path = folder / "python"
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    return path


def test_the_script_is_valid_bash():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--bogus"], "unknown option --bogus"),
        ([], "PBC_DIR is missing"),
        (["/no/such/pbc"], "PBC_DIR is not a folder. Received: /no/such/pbc"),
        (["--wheels", "/no/such/wheels", "."], "--wheels is not a folder. Received: /no/such/wheels"),
        (["--time-limit", "ten", "."], "--time-limit must be whole seconds. Received: ten"),
    ],
)
def test_the_script_refuses_bad_arguments(args, message):
    done = run_script(*args, env={"PYTHON": "/no/such/python"})
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_the_script_hands_smearflow_benchmark_options_it_has(tmp_path):
    python = fake_python(tmp_path)
    extra = ["--archs", "hybrid,cnn", "--subset", "8", "--epochs", "1", "--image-size", "75"]
    done = run_script(
        "--no-install", "--weights", tmp_path / "imagenet", "--out", tmp_path / "run", tmp_path, *extra,
        env={"PYTHON": str(python), "RECORD": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    argv = (tmp_path / "argv").read_text().split("\0")[:-1]
    keras_backend, python_path = (tmp_path / "env").read_text().split("\0")[:-1]
    assert argv[:3] == ["-m", "smearflow", "benchmark"]
    assert keras_backend == "jax" and python_path.split(":")[0] == str(REPO / "src")

    command = typer.main.get_command(app).commands["benchmark"]
    params = command.make_context("benchmark", argv[3:]).params
    assert params["preset"] in PRESETS and params["data"] == tmp_path and params["out"] == tmp_path / "run"
    assert params["weights"] == f"imagenet={tmp_path / 'imagenet'}" and params["freeze_backbone_epochs"] == 1
    assert (params["archs"], params["subset"], params["epochs"], params["image_size"]) == ("hybrid,cnn", 8, 1, 75)


def test_the_script_gives_up_when_installing_left_no_time(tmp_path):
    python = fake_python(tmp_path)
    env = {"PYTHON": str(python), "RECORD": str(tmp_path)}
    done = run_script("--no-install", "--time-limit", "30", tmp_path, env=env)
    assert done.returncode == 2 and "no time to benchmark" in done.stderr, done.stderr
    assert not (tmp_path / "argv").exists()


@needs_jax
def test_the_script_stops_when_jax_sees_no_gpu(tmp_path):
    import jax

    if jax.devices()[0].platform == "gpu":
        pytest.skip("JAX sees a GPU here")
    env = {"PYTHON": sys.executable, "SMEARFLOW_ALLOW_CPU": ""}
    done = run_script("--no-install", "--out", tmp_path / "run", tmp_path, env=env)
    assert done.returncode != 0 and "JAX sees no GPU" in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@needs_jax
def test_the_gpu_script_runs_with_jax_and_without_tensorflow(tmp_path):
    """A CPU dry run of the script (cnn and a two-stage supcon) with TensorFlow unimportable in every process."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(NO_TENSORFLOW)
    data = write_class_folders(tmp_path / "data", per_class=8, size=32)
    arch_params = {"cnn": {"filters": [4, 8]}, "supcon": {"encoder": "mobilenetv2"}}
    env = {"PYTHON": sys.executable, "SMEARFLOW_ALLOW_CPU": "1", "PYTHONPATH": str(tmp_path / "hook")}
    done = run_script(
        "--no-install", "--out", tmp_path / "run", data, "--archs", "cnn,supcon", "--image-size", "32",
        "--epochs", "1", "--folds", "2", "--test-fraction", "0.25", "--arch-params", json.dumps(arch_params), env=env, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["complete"] and set(results["architectures"]) == {"cnn", "supcon"}
    assert {fold["keras_backend"] for fold in results["folds"]} == {"jax"}
    assert (tmp_path / "run" / "report.md").is_file()
