"""The architecture registry: one build signature for every classifier.

Every builder has the signature ``build(image_size, num_classes, **params)``
and returns an uncompiled Keras model that takes raw ``0..255`` RGB pixels of
shape ``(image_size, image_size, 3)`` and outputs class probabilities. Each
model carries its own input normalisation, so a saved model folder needs no
code to preprocess its inputs. Adding an architecture is one function and
one line in :data:`ARCHITECTURES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable
    min_image_size: int
    description: str


def build_cnn(
    image_size: int,
    num_classes: int,
    *,
    filters: tuple[int, ...] = (32, 64, 128, 192, 256),
    dropout: float = 0.3,
):
    """A plain convolutional baseline: blocks of two 3×3 conv + batch norm + ReLU.

    Every block but the last halves the resolution; the last is pooled
    globally, then dropout and a softmax layer.
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    for block, n_filters in enumerate(filters):
        for conv in range(2):
            x = layers.Conv2D(n_filters, 3, padding="same", use_bias=False, name=f"block{block}_conv{conv}")(x)
            x = layers.BatchNormalization(name=f"block{block}_bn{conv}")(x)
            x = layers.Activation("relu")(x)
        if block < len(filters) - 1:
            x = layers.MaxPooling2D(name=f"block{block}_pool")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn")


ARCHITECTURES: dict[str, Architecture] = {
    "cnn": Architecture("cnn", build_cnn, 32, "plain 5-block CNN trained from scratch"),
}


def get_architecture(name: str) -> Architecture:
    """Look an architecture up by name.

    Raises
    ------
    ValueError
        For a name not in the registry (the message lists the known names).
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {name!r}. Known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]


def build_model(name: str, image_size: int, num_classes: int, **params):
    """Build a registered architecture after checking the input size.

    Raises
    ------
    ValueError
        For an unknown name, an image size below the architecture's minimum,
        or fewer than two classes.
    """
    architecture = get_architecture(name)
    if image_size < architecture.min_image_size:
        raise ValueError(
            f"{name} needs image_size >= {architecture.min_image_size}. Received: image_size={image_size}"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2. Received: num_classes={num_classes}")
    return architecture.build(image_size, num_classes, **params)
