"""The packaged default model's recipe, as one call: base training, field crops, fine-tuning."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Callable

from smearflow.training.train import TrainConfig, train_classifier

logger = logging.getLogger(__name__)

FINE_TUNE_OVERRIDES = {"class_weight": "none", "epochs": 3, "learning_rate": 5e-4, "extra_repeat": 16}
"""How the base model is fine-tuned with the crops (the packaged model's second stage)."""


def train_default_model(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    field_images: str | Path | None = None,
    field_labels: str | Path | None = None,
    base_config: TrainConfig = TrainConfig(),
    fine_tune_overrides: dict | None = None,
    segmenter=None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
):
    """Train the default model the way the packaged one was made.

    1. ``base_config`` on ``data_dir`` → ``out_dir/base``.
    2. With labelled whole fields: the white-cell crops of their tuning part
       (:func:`smearflow.segeval.holdout_split`, so the held-out fields stay
       unseen) → ``out_dir/field-crops``.
    3. The base fine-tuned on the same training split plus those crops
       (``FINE_TUNE_OVERRIDES``) → ``out_dir/model``.

    Without ``field_images`` the base is the result (``out_dir/base``).

    Parameters
    ----------
    data_dir : str or Path
        Class-folder dataset (the PBC layout).
    out_dir : str or Path
        Receives the stages' folders.
    field_images, field_labels : str or Path, optional
        Whole-field images and the CSV naming each one's white-cell class
        (the BCCD layout: ``image`` and ``kaggle_wbc_category`` columns).
    base_config : TrainConfig
    fine_tune_overrides : dict, optional
        Replaces ``FINE_TUNE_OVERRIDES``.
    segmenter : Segmenter, optional
        Finds the white cells; the classical segmenter by default.
    on_epoch_end : callable, optional
        Called as ``(epoch, logs)`` in both training stages.

    Returns
    -------
    ModelFolder
        The final model folder.

    Raises
    ------
    ValueError
        When only one of ``field_images`` and ``field_labels`` is given.
    """
    from smearflow.fieldeval import export_field_crops, read_field_labels
    from smearflow.segeval import holdout_split

    if (field_images is None) != (field_labels is None):
        raise ValueError("field_images and field_labels go together: give both or neither")
    out_dir = Path(out_dir)
    base = train_classifier(data_dir, out_dir / "base", base_config, on_epoch_end=on_epoch_end)
    if field_images is None:
        return base
    labels = read_field_labels(field_labels, "image", "kaggle_wbc_category")
    stems = {Path(name).stem: name for name in labels}
    tuning, _ = holdout_split(stems)
    if segmenter is None:
        from smearflow.segmentation import make_segmenter

        segmenter = make_segmenter("classical")
    crops_dir = out_dir / "field-crops"
    exported = export_field_crops(field_images, labels, segmenter, crops_dir, names=[stems[s] for s in tuning])
    logger.info("field crops for fine-tuning: %s", exported)
    overrides = FINE_TUNE_OVERRIDES if fine_tune_overrides is None else fine_tune_overrides
    config = replace(base_config, init_model=str(base.path), extra_data=str(crops_dir), **overrides)
    return train_classifier(data_dir, out_dir / "model", config, on_epoch_end=on_epoch_end)
