"""One forward pass of a classifier network on a batch of ready crops."""

from __future__ import annotations

import numpy as np


def run_network(model, batch: np.ndarray) -> np.ndarray:
    """The network's output for ``batch``, in inference mode, as float32 numpy.

    Runs Keras' compiled inference step (``predict_on_batch``): on a 2-core
    CPU with TensorFlow it was 2–6 times faster than calling the model
    eagerly, and unlike ``predict`` it builds no data pipeline per call.
    With JAX the step is compiled once per input shape, so the batch is
    padded with zeros up to the next power of two (a bounded set of shapes);
    each row's output does not depend on the others.

    Parameters
    ----------
    model : keras.Model
    batch : ndarray of shape (n, M, M, 3)
        Crops at the network's input size, ``n >= 1``.

    Returns
    -------
    ndarray of shape (n, outputs), float32
    """
    import keras

    batch = np.asarray(batch, dtype=np.float32)
    rows = len(batch)
    if keras.backend.backend() == "jax":
        padded_rows = 1 << (rows - 1).bit_length()
        if padded_rows != rows:
            batch = np.concatenate([batch, np.zeros((padded_rows - rows, *batch.shape[1:]), np.float32)])
    return np.asarray(model.predict_on_batch(batch), dtype=np.float32)[:rows]
