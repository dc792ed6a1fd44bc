"""Early stopping on validation accuracy and the time budget, with scripted scores and an injected clock."""

import itertools

import keras
import numpy as np

from smearflow.training.early_stopping import ValidationStopper


def _model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 3)).astype("float32"), rng.integers(0, 2, 16)


def test_it_stops_after_patience_epochs_without_improvement_and_keeps_the_best_weights():
    model = _model()
    x, y = _data()
    scores = iter([0.5, 0.7, 0.6, 0.7, 0.9])
    kept = {}

    def score():
        value = next(scores)
        if value == 0.7 and "weights" not in kept:
            kept["weights"] = [w.copy() for w in model.get_weights()]
        return value

    stopper = ValidationStopper(model, score, patience=2)
    model.fit(x, y, epochs=10, batch_size=4, callbacks=[stopper], verbose=0)
    assert stopper.epochs_run == 4 and stopper.best_epoch == 1 and stopper.best_accuracy == 0.7
    assert "did not improve for 2 epoch(s)" in stopper.stop_reason
    for restored, best in zip(model.get_weights(), kept["weights"]):
        np.testing.assert_array_equal(restored, best)


def test_the_time_budget_stops_within_an_epoch_and_later_stages_at_once():
    model = _model()
    x, y = _data()
    ticks = itertools.count(0.0, 1.0)  # one second per clock reading
    stopper = ValidationStopper(model, lambda: 0.5, budget_s=3, clock=lambda: next(ticks))
    model.fit(x, y, epochs=5, batch_size=2, callbacks=[stopper], verbose=0)
    assert stopper.epochs_run == 1 and stopper.stop_reason == "time budget of 3 s spent"
    model.fit(x, y, epochs=5, batch_size=2, callbacks=[stopper], verbose=0)  # a second stage
    assert stopper.epochs_run == 2


def test_unscored_stages_only_count_epochs():
    model = _model()
    x, y = _data()
    calls = []
    stopper = ValidationStopper(model, lambda: calls.append(1) or 0.5, patience=1, stage=lambda: "contrastive")
    model.fit(x, y, epochs=3, batch_size=8, callbacks=[stopper], verbose=0)
    assert stopper.epochs_run == 3 and not calls and stopper.stop_reason is None
