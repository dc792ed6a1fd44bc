"""The classifier's forward pass: the compiled inference step, the same answers as calling the model."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from smearflow.classifier.inference import run_network


@pytest.fixture(scope="module")
def tiny_network():
    from smearflow.training.architectures import build_model

    return build_model("cnn", 32, 3, filters=(4, 8))


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_outputs_match_calling_the_model_in_inference_mode(tiny_network, rows):
    import keras

    batch = np.random.default_rng(rows).integers(0, 256, size=(rows, 32, 32, 3)).astype(np.uint8)
    out = run_network(tiny_network, batch)
    expected = keras.ops.convert_to_numpy(tiny_network(batch.astype(np.float32), training=False))
    assert out.dtype == np.float32 and out.shape == (rows, 3)
    np.testing.assert_allclose(out, expected, atol=1e-5)


JAX_CHECK = textwrap.dedent(
    """
    import json
    import numpy as np
    import keras
    from smearflow.classifier.inference import run_network
    from smearflow.training.architectures import build_model

    model = build_model("cnn", 32, 3, filters=(4, 8))
    shapes = []
    step = model.predict_on_batch
    model.predict_on_batch = lambda x: shapes.append(len(x)) or step(x)
    batch = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3)).astype(np.float32)
    out = run_network(model, batch)
    expected = keras.ops.convert_to_numpy(model(batch, training=False))
    print(json.dumps({"backend": keras.backend.backend(), "shapes": shapes, "rows": len(out),
                      "max_difference": float(np.abs(out - expected).max())}))
    """
)


def test_with_jax_batches_are_padded_to_a_power_of_two_and_cut_back():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", JAX_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["backend"] == "jax" and report["shapes"] == [8] and report["rows"] == 5
    assert report["max_difference"] < 1e-5
