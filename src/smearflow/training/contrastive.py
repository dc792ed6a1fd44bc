"""Supervised contrastive learning (Khosla et al. 2020) with ``keras.ops`` only.

The loss takes ``(labels, projections)``: integer (or one-hot) labels and
projections of shape ``(batch, dim)``, which it L2-normalises itself, so an
ordinary ``model.fit`` trains an encoder with it on every Keras backend.
Normalising inside the loss (idempotent for inputs already on the unit
sphere) keeps the gradient finite for an all-zero projection, where
``keras.layers.UnitNormalization`` gives NaN on JAX. Positives of an anchor
are the other images of its class in the same batch (one augmented view per
image; the batch streamer augments every image).
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="smearflow")
class SupervisedContrastiveLoss(keras.losses.Loss):
    """The SupCon loss ``L_out`` of Khosla et al. (2020), eq. 2.

    For anchor ``i`` with positives ``P(i)`` (same label, ``j != i``) and all
    others ``A(i)``::

        loss_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a in A(i)} exp(z_i.z_a / t) )

    An anchor without a positive in the batch contributes 0.

    Parameters
    ----------
    temperature : float
        ``t`` above; must be positive.

    Raises
    ------
    ValueError
        For a non-positive temperature.
    """

    def __init__(self, temperature: float = 0.1, name: str = "supervised_contrastive", **kwargs):
        super().__init__(name=name, **kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive. Received: temperature={temperature}")
        self.temperature = float(temperature)

    def call(self, y_true, y_pred):
        if len(y_true.shape) == 2 and y_true.shape[-1] not in (None, 1):
            labels = ops.argmax(y_true, axis=-1)
        else:
            labels = ops.reshape(y_true, (-1,))
        labels = ops.cast(labels, "int32")
        z = ops.cast(y_pred, "float32")
        z = z / ops.sqrt(ops.sum(ops.square(z), axis=1, keepdims=True) + 1e-12)
        logits = ops.matmul(z, ops.transpose(z)) / self.temperature
        logits = logits - ops.stop_gradient(ops.max(logits, axis=1, keepdims=True))
        index = ops.arange(ops.shape(z)[0])
        not_self = ops.cast(ops.not_equal(index[:, None], index[None, :]), "float32")
        same_label = ops.cast(ops.equal(labels[:, None], labels[None, :]), "float32")
        positives = same_label * not_self
        # The floor keeps a batch of one image (no other sample) finite: a -inf here
        # would make 0 * inf = NaN in the gradient even where the anchor is masked out.
        log_denominator = ops.log(ops.maximum(ops.sum(ops.exp(logits) * not_self, axis=1, keepdims=True), 1e-30))
        log_prob = logits - log_denominator
        n_positives = ops.sum(positives, axis=1)
        mean_log_prob = ops.sum(positives * log_prob, axis=1) / ops.maximum(n_positives, 1.0)
        return ops.where(n_positives > 0, -mean_log_prob, ops.zeros_like(mean_log_prob))

    def get_config(self):
        return super().get_config() | {"temperature": self.temperature}


def projection_model(model, projection_dim: int = 128, hidden_units: int | None = None):
    """The encoder of ``model`` with a projection head: pixels → projections.

    The projections are L2-normalised by :class:`SupervisedContrastiveLoss`.

    Parameters
    ----------
    model : keras.Model
        A classifier with a layer named ``"embedding"`` (see
        :func:`~smearflow.training.architectures.build_supcon`); the returned
        model shares its encoder weights.
    projection_dim : int
        Size of the projections.
    hidden_units : int, optional
        Width of the hidden ReLU layer (default: the embedding's width).

    Raises
    ------
    ValueError
        When ``model`` has no ``"embedding"`` layer, or ``projection_dim`` < 1.
    """
    from keras import layers

    if projection_dim < 1:
        raise ValueError(f"projection_dim must be at least 1. Received: projection_dim={projection_dim}")
    try:
        embedding = model.get_layer("embedding").output
    except ValueError:
        raise ValueError(f"model {model.name!r} has no layer named 'embedding' to project") from None
    hidden_units = hidden_units or int(embedding.shape[-1])
    x = layers.Dense(hidden_units, activation="relu", name="projection_hidden")(embedding)
    x = layers.Dense(projection_dim, name="projection")(x)
    return keras.Model(model.inputs[0], x, name=f"{model.name}_projection")
