import numpy as np
import pytest

from smearflow.training.smote import SoftmaxHead, embedding_model, fit_softmax_head, softmax


def _imbalanced(rng, counts, d=6):
    centres = rng.normal(scale=3.0, size=(len(counts), d))
    x = np.concatenate([centres[k] + rng.normal(size=(n, d)) for k, n in enumerate(counts)])
    y = np.repeat(np.arange(len(counts)), counts)
    return x, y


def test_head_equals_scaler_plus_logistic_regression():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x, y = _imbalanced(rng, [30, 10, 5])
    head = fit_softmax_head(x, y, 3, smote=False, seed=0)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)).fit(x, y)
    np.testing.assert_allclose(head.predict_proba(x), pipeline.predict_proba(x), atol=1e-8)
    assert head.kernel.shape == (6, 3) and head.bias.shape == (3,)
    assert head.info == {"smote": False, "train_class_counts": [30, 10, 5], "fit_class_counts": [30, 10, 5]}


def test_smote_balances_and_interpolates_within_a_class(monkeypatch):
    import imblearn.over_sampling

    received = {}
    real = imblearn.over_sampling.SMOTE.fit_resample

    def spy(self, x, y):
        x_out, y_out = real(self, x, y)
        received.update(x=np.array(x), y=np.array(y), x_out=x_out, y_out=y_out)
        return x_out, y_out

    monkeypatch.setattr(imblearn.over_sampling.SMOTE, "fit_resample", spy)
    rng = np.random.default_rng(1)
    x, y = _imbalanced(rng, [20, 6, 3])
    head = fit_softmax_head(x, y, 3, smote=True, seed=0)
    assert head.info["fit_class_counts"] == [20, 20, 20] and head.info["k_neighbors"] == 2
    np.testing.assert_array_equal(received["x"], x)  # exactly the embeddings it was given
    synthetic, synthetic_y = received["x_out"][len(x):], received["y_out"][len(x):]
    for point, label in zip(synthetic, synthetic_y):
        members = x[y == label]
        # a SMOTE sample lies on a segment between two members of its own class
        distances = [
            _distance_to_segment(point, a, b) for i, a in enumerate(members) for b in members[i + 1 :]
        ]
        assert min(distances) < 1e-9


def _distance_to_segment(p, a, b):
    t = np.clip(np.dot(p - a, b - a) / np.dot(b - a, b - a), 0.0, 1.0)
    return np.linalg.norm(p - (a + t * (b - a)))


def test_binary_head():
    rng = np.random.default_rng(2)
    x, y = _imbalanced(rng, [12, 4])
    head = fit_softmax_head(x, y, 2, smote=True, seed=0)
    probabilities = head.predict_proba(x)
    assert probabilities.shape == (len(x), 2)
    assert (probabilities.argmax(axis=1) == y).mean() > 0.9


def test_errors():
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"embeddings must have shape \(n, n_features\)"):
        fit_softmax_head(x, np.array([0, 1]), 2, smote=False, seed=0)
    with pytest.raises(ValueError, match=r"every one of the 3 classes needs training embeddings. Received class counts: \[2, 2, 0\]"):
        fit_softmax_head(x, np.array([0, 0, 1, 1]), 3, smote=False, seed=0)
    with pytest.raises(ValueError, match=r"SMOTE needs at least 2 training samples per class. Received class counts: \[3, 1\]"):
        fit_softmax_head(np.random.default_rng(0).normal(size=(4, 3)), np.array([0, 0, 0, 1]), 2, smote=True, seed=0)


def test_softmax_and_head_shapes():
    head = SoftmaxHead(kernel=np.eye(2), bias=np.zeros(2))
    np.testing.assert_allclose(head.predict_proba(np.array([[0.0, 0.0]])), [[0.5, 0.5]])
    np.testing.assert_allclose(softmax(np.array([[1000.0, 1000.0]])), [[0.5, 0.5]])


def test_embedding_model_needs_a_probabilities_layer():
    import keras

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(inputs), name="bare")
    with pytest.raises(ValueError, match="model 'bare' has no layer named 'probabilities'"):
        embedding_model(model)
