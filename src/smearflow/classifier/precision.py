"""The number format a classifier network computes in at inference."""

from __future__ import annotations

from smearflow.config import INFERENCE_PRECISIONS

KERAS_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
"""Keras dtype policy of each inference precision (``mixed_*``: float32 weights, lower-precision arithmetic)."""

OUTPUT_LAYER = "probabilities"
"""The softmax layer every architecture ends in; it stays float32 so that probabilities keep their resolution."""


def check_precision(precision: str) -> str:
    """``precision`` when it is one of :data:`~smearflow.config.INFERENCE_PRECISIONS`.

    Raises
    ------
    ValueError
        Naming the precision received and the known ones.
    """
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"precision must be one of {list(INFERENCE_PRECISIONS)}. Received: precision={precision!r}")
    return precision


def with_precision(model, precision: str):
    """``model`` computing in ``precision``: the same network and weights under another dtype policy.

    ``float32`` returns ``model`` itself. Otherwise every layer (nested
    backbones included) is rebuilt under the precision's Keras policy
    (:data:`KERAS_POLICIES`), except the softmax output layer, and the
    weights are copied; variables stay float32.

    Parameters
    ----------
    model : keras.Model
    precision : {"float32", "bfloat16"}

    Raises
    ------
    ValueError
        For an unknown precision.
    """
    import keras

    policy = KERAS_POLICIES[check_precision(precision)]
    if precision == "float32":
        return model

    def rebuild(layer):
        config = layer.get_config()
        if layer.name != OUTPUT_LAYER and "dtype" in config:
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    converted = keras.models.clone_model(model, clone_function=rebuild, recursive=True)
    converted.set_weights(model.get_weights())
    return converted
