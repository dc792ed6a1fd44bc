"""Resume an interrupted training run where it stopped.

A :class:`TrainingCheckpoint` keeps in its folder, after every finished
epoch, the weights and optimiser state of the stage being trained, the
per-epoch history and the seconds trained so far. Training the same settings
with the same folder again restores the last saved epoch of each stage and
goes on from there (an epoch's data order and augmentation depend only on the
seed and the epoch, see
:meth:`~smearflow.training.class_folder_batches.ClassFolderBatches.start_at_epoch`).
The random generators' states (dropout) are saved too, so on the same
machine a resumed run ends with the weights an uninterrupted one would have.

Each save writes a new weights file and then replaces the state file in one
step, so a run killed while saving resumes from the epoch before.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

STATE_FILE = "checkpoint.json"


class TrainingCheckpoint:
    """The resumable state of one training run, in ``folder``.

    Parameters
    ----------
    folder : str or Path
        Created on the first save; an existing state is read back.
    settings : dict
        JSON-ready description of the run (data and training settings). A
        state saved under other settings is never resumed.

    Raises
    ------
    ValueError
        When ``folder`` holds the state of a run with other settings, or a
        state file that cannot be read.
    """

    def __init__(self, folder: str | Path, settings: dict):
        self.folder = Path(folder)
        self.settings = json.loads(json.dumps(settings))
        self._state = {"settings": self.settings, "stages": {}, "history": [], "seconds": 0.0}
        path = self.folder / STATE_FILE
        if path.is_file():
            self._state = _read_state(path)
            if self._state.get("settings") != self.settings:
                differing = ", ".join(_differences(self._state.get("settings"), self.settings))
                raise ValueError(
                    f"{self.folder} holds the checkpoint of a training run with other settings ({differing}): "
                    "remove it to start again, or train into another folder"
                )
            logger.info("resuming training from %s: %s", self.folder, self.describe())
        self._started = time.perf_counter()

    @property
    def history(self) -> list[dict]:
        """Per-epoch logs of the epochs saved so far (see :class:`~smearflow.training.fit.HistoryRecorder`)."""
        return [dict(row) for row in self._state["history"]]

    def elapsed_seconds(self) -> float:
        """Seconds trained before this process plus the seconds since this checkpoint was opened."""
        return float(self._state["seconds"]) + time.perf_counter() - self._started

    def epochs_done(self, stage: str) -> int:
        """Epochs (counted over all stages) finished when ``stage``'s last state was saved; 0 when none was."""
        saved = self._state["stages"].get(stage)
        return 0 if saved is None else int(saved["epochs_done"])

    def describe(self) -> str:
        """Where each saved stage stands, for logs."""
        stages = self._state["stages"]
        if not stages:
            return "no epoch saved"
        return ", ".join(f"{name} up to epoch {saved['epochs_done']}" for name, saved in stages.items())

    def restore(self, model, stage: str) -> int:
        """Load ``stage``'s last saved weights and optimiser state into the compiled ``model``.

        Returns
        -------
        int
            The epochs finished at that save (0, and ``model`` untouched,
            when ``stage`` has none).
        """
        saved = self._state["stages"].get(stage)
        if saved is None:
            return 0
        if model.optimizer is not None and not model.optimizer.built:
            # The optimiser's variables must exist before its saved state can be loaded into them.
            model.optimizer.build(model.trainable_variables)
        model.load_weights(self.folder / saved["weights"])
        for variable, value in zip(_random_states(model), saved["random_states"]):
            variable.assign(np.asarray(value, dtype=variable.dtype))
        return int(saved["epochs_done"])

    def save(self, model, stage: str, epochs_done: int, history: list[dict]) -> None:
        """Record ``model`` (weights and optimiser state) as ``stage`` after ``epochs_done`` epochs."""
        import keras

        self.folder.mkdir(parents=True, exist_ok=True)
        weights = f"{stage}-epoch{epochs_done:03d}.weights.h5"
        model.save_weights(self.folder / weights, overwrite=True)
        previous = self._state["stages"].get(stage)
        state = dict(self._state, history=[dict(row) for row in history], seconds=self.elapsed_seconds())
        random_states = [keras.ops.convert_to_numpy(variable).tolist() for variable in _random_states(model)]
        saved = {"epochs_done": epochs_done, "weights": weights, "random_states": random_states}
        state["stages"] = dict(state["stages"], **{stage: saved})
        _write_state(self.folder / STATE_FILE, state)
        self._state, self._started = state, time.perf_counter()
        if previous is not None and previous["weights"] != weights:
            (self.folder / previous["weights"]).unlink(missing_ok=True)

    def callback(self, stage: str, history_rows: list[dict]):
        """A Keras callback that saves ``stage`` after every epoch, with ``history_rows`` as they are then.

        Put it after the callback that records the history, so that a save
        holds the epoch it follows.
        """
        import keras

        checkpoint = self

        class SaveEveryEpoch(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                checkpoint.save(self.model, stage, epoch + 1, history_rows)

        return SaveEveryEpoch()

    def discard(self) -> None:
        """Remove the folder (the run finished: nothing is left to resume)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _differences(saved, wanted, prefix: str = "") -> list[str]:
    """Dotted names of the settings whose values differ, e.g. ``training.seed``."""
    if not isinstance(saved, dict) or not isinstance(wanted, dict):
        return [prefix or "settings"] if saved != wanted else []
    names = []
    for key in sorted(saved.keys() | wanted.keys()):
        names += _differences(saved.get(key), wanted.get(key), f"{prefix}.{key}" if prefix else key)
    return names


def _random_states(model) -> list:
    """The model's variables that are not weights: the states of its random generators (dropout)."""
    weights = {id(variable) for variable in model.weights}
    return [variable for variable in model.variables if id(variable) not in weights]


def _read_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict) or not {"settings", "stages", "history", "seconds"} <= state.keys():
            raise ValueError("keys settings, stages, history and seconds are missing")
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{path}: the training checkpoint cannot be read ({error}); remove its folder to start again"
        ) from error
    return state


def _write_state(path: Path, state: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(state, indent=1))
    os.replace(partial, path)
