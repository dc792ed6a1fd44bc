"""A one-line description of the machine a model was trained or benchmarked on."""

from __future__ import annotations

import os
import platform


def machine_description() -> str:
    """CPU count, accelerator and Keras backend, for the report's machine column."""
    import keras

    backend = keras.backend.backend()
    parts = [f"{os.cpu_count()} CPU {platform.machine()}"]
    accelerator = _accelerator_name(backend)
    if accelerator:
        parts.append(accelerator)
    parts.append(f"keras {keras.__version__} {backend}")
    return ", ".join(parts)


def _accelerator_name(backend: str) -> str:
    # Ask only the active backend: with KERAS_BACKEND=jax, TensorFlow is never imported.
    try:
        if backend == "jax":
            import jax

            names = [d.device_kind for d in jax.devices() if d.platform != "cpu"]
        elif backend == "tensorflow":
            import tensorflow as tf

            names = [
                tf.config.experimental.get_device_details(d).get("device_name", d.name)
                for d in tf.config.list_physical_devices("GPU")
            ]
        elif backend == "torch":
            import torch

            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        else:
            names = []
    except Exception:  # noqa: BLE001 - a description must never fail the run
        names = []
    if not names:
        return ""
    return f"{len(names)}× {names[0]}" if len(names) > 1 else names[0]
