import numpy as np
import pytest

from smearflow.training.contrastive import SupervisedContrastiveLoss, projection_model


def _numpy_supcon(labels, z, temperature):
    """Eq. 2 of Khosla et al. (2020), written out with loops."""
    n = len(labels)
    losses = np.zeros(n)
    for i in range(n):
        others = [a for a in range(n) if a != i]
        positives = [p for p in others if labels[p] == labels[i]]
        if not positives:
            continue
        denominator = np.sum([np.exp(z[i] @ z[a] / temperature) for a in others])
        losses[i] = -np.mean([np.log(np.exp(z[i] @ z[p] / temperature) / denominator) for p in positives])
    return losses


def _unit_rows(rng, n, d):
    z = rng.normal(size=(n, d))
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def test_matches_the_paper_formula():
    import keras

    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 0, 2, 1, 0])  # class 2 has no positive: contributes 0
    z = _unit_rows(rng, 6, 5)
    loss = SupervisedContrastiveLoss(temperature=0.5)
    per_sample = keras.ops.convert_to_numpy(loss.call(keras.ops.convert_to_tensor(labels), keras.ops.convert_to_tensor(z)))
    np.testing.assert_allclose(per_sample, _numpy_supcon(labels, z, 0.5), rtol=1e-4, atol=1e-5)
    assert float(loss(labels, z)) == pytest.approx(_numpy_supcon(labels, z, 0.5).mean(), rel=1e-4)
    one_hot = np.eye(3)[labels]
    assert float(loss(one_hot, z)) == pytest.approx(float(loss(labels, z)), rel=1e-5)


def test_clustered_projections_have_lower_loss():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 4)
    centres = _unit_rows(rng, 3, 8)
    clustered = centres[labels] + 0.01 * rng.normal(size=(12, 8))
    clustered /= np.linalg.norm(clustered, axis=1, keepdims=True)
    loss = SupervisedContrastiveLoss(0.1)
    assert float(loss(labels, clustered)) < float(loss(labels, _unit_rows(rng, 12, 8)))


def test_config_round_trip_and_bad_temperature():
    import keras

    loss = SupervisedContrastiveLoss(temperature=0.2)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, SupervisedContrastiveLoss) and again.temperature == 0.2
    with pytest.raises(ValueError, match="temperature must be positive. Received: temperature=0"):
        SupervisedContrastiveLoss(temperature=0)


def test_projection_model_needs_an_embedding_layer():
    from smearflow.training.architectures import build_model

    with pytest.raises(ValueError, match="model 'cnn' has no layer named 'embedding'"):
        projection_model(build_model("cnn", 32, 3, filters=(4,)))
    with pytest.raises(ValueError, match="projection_dim must be at least 1. Received: projection_dim=0"):
        projection_model(build_model("cnn", 32, 3, filters=(4,)), projection_dim=0)


def test_fit_with_the_loss_in_a_compiled_training_step():
    """``model.fit`` traces the loss (dynamic batch size, a smaller last batch)."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    x = keras.layers.Dense(8, activation="relu")(inputs)
    x = keras.layers.Dense(3)(x)
    model = keras.Model(inputs, x)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=SupervisedContrastiveLoss(0.2))
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 10)
    features = rng.normal(size=(20, 4)) + 3 * labels[:, None]
    history = model.fit(features, labels, batch_size=8, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_unnormalised_and_zero_projections():
    """The loss normalises its input, and its gradient stays finite at an all-zero projection."""
    import keras

    rng = np.random.default_rng(3)
    labels = np.array([0, 0, 1, 1])
    z = _unit_rows(rng, 4, 3)
    loss = SupervisedContrastiveLoss(0.5)
    assert float(loss(labels, 7.0 * z)) == pytest.approx(float(loss(labels, z)), rel=1e-5)
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(3, kernel_initializer="zeros")(inputs))  # all-zero projections
    model.compile(optimizer="sgd", loss=loss)
    assert np.isfinite(float(model.train_on_batch(rng.normal(size=(4, 2)), labels)))
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    # a batch of one image (the last batch of an epoch can be): no positive, loss 0, finite gradient
    assert float(model.train_on_batch(rng.normal(size=(1, 2)), labels[:1])) == 0.0
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
