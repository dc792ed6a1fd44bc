"""Stop a benchmark fold when its validation accuracy stops improving or its time budget is spent."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import keras

logger = logging.getLogger(__name__)

UNSCORED_STAGES = frozenset({"contrastive"})
"""Stages whose epochs train no classifier head: the budget applies, early stopping does not."""


class ValidationStopper(keras.callbacks.Callback):
    """Early stopping on validation accuracy plus a training-time budget; keeps the best epoch's weights.

    Scores ``score()`` (the validation accuracy of ``network``) after every
    epoch of a classifying stage; stops when it has not improved for
    ``patience`` epochs, or, checked after every step, when ``budget_s``
    seconds have passed since the first stage began. Once stopped, later
    stages stop after their first step. At the end of every stage the best
    scored epoch's weights are put back (before batch-norm recalibration).

    Parameters
    ----------
    network : keras.Model
        The classifier whose weights are kept (the fitted model may be a
        projection model built on it).
    score : callable
        ``() -> float``, the validation accuracy of ``network`` now.
    patience : int, optional
        ``None``: no early stopping.
    budget_s : float, optional
        ``None``: no time budget.
    stage : callable
        ``() -> str``, the name of the training stage running now.
    clock : callable
        Seconds, monotonic (injectable for tests).
    """

    def __init__(
        self,
        network,
        score: Callable[[], float],
        *,
        patience: int | None = None,
        budget_s: float | None = None,
        stage: Callable[[], str] = lambda: "train",
        clock: Callable[[], float] = time.perf_counter,
    ):
        super().__init__()
        self.network, self.score, self.patience, self.budget_s = network, score, patience, budget_s
        self.stage, self.clock = stage, clock
        self.started: float | None = None
        self.best_accuracy: float | None = None
        self.best_epoch: int | None = None
        self.best_weights = None
        self.epochs_run = 0
        self.waited = 0
        self.stop_reason: str | None = None

    def on_train_begin(self, logs=None):
        if self.started is None:
            self.started = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        if self.stop_reason is None and self.budget_s is not None and self.clock() - self.started >= self.budget_s:
            self.stop_reason = f"time budget of {self.budget_s:.0f} s spent"
        if self.stop_reason is not None:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.epochs_run += 1
        if self.stage() in UNSCORED_STAGES:
            return
        accuracy = float(self.score())
        if logs is not None:
            logs["val_accuracy"] = accuracy
        if self.best_accuracy is None or accuracy > self.best_accuracy:
            self.best_accuracy, self.best_epoch, self.waited = accuracy, epoch, 0
            self.best_weights = self.network.get_weights()
        else:
            self.waited += 1
        if self.stop_reason is None and self.patience is not None and self.waited >= self.patience:
            self.stop_reason = f"validation accuracy did not improve for {self.patience} epoch(s)"
        if self.stop_reason is not None:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        """Put back the weights of the best scored epoch (when one was scored)."""
        if self.best_weights is not None:
            self.network.set_weights(self.best_weights)
