"""SMOTE on learned embeddings, fitted inside the training fold only.

Why embeddings and not pixels: SMOTE interpolates between a sample and one
of its nearest same-class neighbours. Between two cell photographs that is a
ghostly double exposure, and nearest neighbours in pixel space mostly
reflect stain and background; in the network's penultimate feature space
the interpolation stays on the manifold the classifier works on, and it is
cheap (hundreds to thousands of dimensions instead of ``size² × 3``).

The procedure for one fold (:func:`fit_softmax_head`):

1. the network is trained on the training fold as usual (class weights
   against imbalance);
2. the training fold's images (no augmentation) are embedded with the
   trained network's penultimate layer, the input of its ``"probabilities"``
   layer;
3. SMOTE balances those training-fold embeddings; no validation or test
   image is ever passed to it;
4. a standard scaler and a multinomial logistic regression (the same
   function as the network's softmax layer) are fitted to the balanced
   embeddings; the scaler is folded into the weights, so the result is a new
   ``(kernel, bias)`` for the softmax layer;
5. validation and test images are scored with the network's embeddings and
   the new head.

The same refit without step 3 (``smote=False``) is the control that
separates the effect of oversampling from the effect of refitting the head.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from smearflow.datasets import ImageDataset
from smearflow.training.data import batches

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SoftmaxHead:
    """Weights of a softmax layer: ``probabilities = softmax(embeddings @ kernel + bias)``.

    Attributes
    ----------
    kernel : ndarray of shape (n_features, n_classes), float
    bias : ndarray of shape (n_classes,), float
    info : dict
        JSON-ready: ``smote``, ``train_class_counts`` and ``fit_class_counts``
        (before and after oversampling), ``k_neighbors``.
    """

    kernel: np.ndarray
    bias: np.ndarray
    info: dict = field(default_factory=dict)

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Class probabilities, shape ``(n, n_classes)``."""
        return softmax(np.asarray(embeddings, dtype=np.float64) @ self.kernel + self.bias)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``logits`` of shape (n, k)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def embedding_model(model):
    """``model`` cut before its ``"probabilities"`` layer: pixels → (embeddings, probabilities).

    Raises
    ------
    ValueError
        When ``model`` has no layer named ``"probabilities"``.
    """
    import keras

    try:
        head = model.get_layer("probabilities")
    except ValueError:
        raise ValueError(f"model {model.name!r} has no layer named 'probabilities'") from None
    return keras.Model(model.inputs[0], [head.input, model.outputs[0]], name=f"{model.name}_embedding")


def embed_and_predict(
    model, dataset: ImageDataset, image_size: int, batch_size: int = 64, *, decoded: dict | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Penultimate-layer embeddings, probabilities and labels of every readable image.

    Images are not augmented. Unreadable images are skipped (logged).

    Returns
    -------
    embeddings : ndarray of shape (n, n_features), float32
    probabilities : ndarray of shape (n, n_classes), float32
    labels : ndarray of shape (n,), int
    """
    import keras

    cut = embedding_model(model)
    embeddings, probabilities, labels = [], [], []
    sequence = batches(dataset, image_size, batch_size, training=False, decoded=decoded)
    for index in range(len(sequence)):
        x, y = sequence[index]
        if len(x) == 0:
            continue
        features, probs = cut(x, training=False)
        embeddings.append(keras.ops.convert_to_numpy(features))
        probabilities.append(keras.ops.convert_to_numpy(probs))
        labels.append(y)
    if not labels:
        n_features = int(cut.outputs[0].shape[-1])
        n_classes = int(cut.outputs[1].shape[-1])
        return np.zeros((0, n_features), np.float32), np.zeros((0, n_classes), np.float32), np.zeros(0, np.int64)
    return np.concatenate(embeddings), np.concatenate(probabilities), np.concatenate(labels)


def fit_softmax_head(
    embeddings: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    smote: bool,
    seed: int,
    k_neighbors: int = 5,
    max_iter: int = 2000,
) -> SoftmaxHead:
    """Fit a softmax layer to training-fold embeddings, balanced by SMOTE when asked.

    Parameters
    ----------
    embeddings : ndarray of shape (n, n_features), float
        Embeddings of the training fold only.
    labels : ndarray of shape (n,), int
        Their classes; every one of ``range(num_classes)`` must occur.
    num_classes : int
    smote : bool
        Oversample every class to the largest one with SMOTE before fitting.
    seed : int
        Seeds SMOTE.
    k_neighbors : int
        SMOTE's neighbours; lowered to the smallest class size minus one.
    max_iter : int
        Iterations of the logistic regression.

    Returns
    -------
    SoftmaxHead

    Raises
    ------
    ValueError
        When shapes disagree, a class is missing, or (with ``smote``) a class
        has a single training sample (SMOTE needs a neighbour).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    embeddings = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(
            "embeddings must have shape (n, n_features) with one label per row. "
            f"Received: embeddings.shape={embeddings.shape}, labels.shape={labels.shape}"
        )
    counts = np.bincount(labels, minlength=num_classes)
    if len(counts) != num_classes or np.any(counts == 0):
        raise ValueError(
            f"every one of the {num_classes} classes needs training embeddings. Received class counts: {counts.tolist()}"
        )
    info = {"smote": smote, "train_class_counts": counts.tolist()}
    x, y = embeddings, labels
    if smote:
        if counts.min() < 2:
            raise ValueError(
                f"SMOTE needs at least 2 training samples per class. Received class counts: {counts.tolist()}"
            )
        from imblearn.over_sampling import SMOTE

        k = int(min(k_neighbors, counts.min() - 1))
        x, y = SMOTE(k_neighbors=k, random_state=seed).fit_resample(embeddings, labels)
        info["k_neighbors"] = k
    info["fit_class_counts"] = np.bincount(y, minlength=num_classes).tolist()
    scaler = StandardScaler().fit(x)
    regression = LogisticRegression(C=1.0, max_iter=max_iter).fit(scaler.transform(x), y)
    coef = regression.coef_
    intercept = regression.intercept_
    if num_classes == 2:  # binary: one logit for class 1, class 0 fixed at 0
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    # softmax(((x - mean) / scale) @ coef.T + b) = softmax(x @ (coef.T / scale) + (b - (mean / scale) @ coef.T))
    kernel = coef.T / scaler.scale_[:, None]
    bias = intercept - (scaler.mean_ / scaler.scale_) @ coef.T
    return SoftmaxHead(kernel=kernel, bias=bias, info=info)
