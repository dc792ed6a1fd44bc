"""Score a trained U-Net model folder on the held-out part of each dataset it was trained on.

``smearflow train-segmentation`` runs :func:`evaluate_heldout` after training
and adds its figures to the folder's ``metrics.json``. Importing this module
loads Keras.
"""

from __future__ import annotations

from typing import Any

from smearflow.evaluation.segmentation import evaluate_segmentation_dir
from smearflow.segmentation.unet import UNetModelFolder, UNetSegmenter

__all__ = ["evaluate_heldout"]


def evaluate_heldout(folder: UNetModelFolder) -> dict[str, Any]:
    """Score a U-Net model folder on the held-out part of each dataset it was trained on.

    The datasets, their held-out images (``splits.json``) and the red-cell
    diameter each masks dataset was trained at (the ``training`` section of
    ``config.json``) come from the folder; the datasets must still be where
    ``splits.json`` says.

    Parameters
    ----------
    folder : UNetModelFolder
        As written by :func:`smearflow.segmentation.unet.training.train_unet`.

    Returns
    -------
    dict
        ``heldout``: dataset name → the result of
        :func:`~smearflow.evaluation.segmentation.evaluate_segmentation_dir`
        (plus ``rbc_diameter_px``: the diameter given, or ``"estimated"``);
        ``heldout_estimated_diameter``: the same for masks datasets with the
        diameter estimated per field; ``summary``: headline figures.

    Raises
    ------
    BadDatasetError
        When a dataset folder is gone or unusable.
    """
    splits = folder.datasets()
    diameters = folder.training.get("mask_rbc_diameter_px_used", {})
    estimated = UNetSegmenter.load(folder.path)
    heldout: dict[str, Any] = {}
    heldout_estimated: dict[str, Any] = {}
    for key, split in splits.items():
        if not split["heldout"]:
            continue
        diameter = diameters.get(key)
        segmenter = UNetSegmenter(estimated.model, folder.config, rbc_diameter_px=diameter, folder=folder)
        result = evaluate_segmentation_dir(split["path"], segmenter, split["heldout"])
        heldout[key] = result | {"rbc_diameter_px": diameter if diameter is not None else "estimated"}
        if diameter is not None:
            result = evaluate_segmentation_dir(split["path"], estimated, split["heldout"])
            heldout_estimated[key] = result | {"rbc_diameter_px": "estimated"}
    return {"heldout": heldout, "heldout_estimated_diameter": heldout_estimated, "summary": _summary(heldout)}


def _summary(heldout: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    masks = [r for r in heldout.values() if r.get("layout") == "masks"]
    if masks:
        n = sum(r["images"] for r in masks)
        for name in ("nucleus_dice", "cell_dice"):
            summary[f"{name}_pooled"] = sum(r[name] * r["images"] for r in masks) / n
        summary["mask_images"] = n
    for key, result in heldout.items():
        if result.get("layout") == "boxes":
            for voc_name, scores in result["per_class"].items():
                summary[f"{key}_{voc_name}_f1"] = scores["f1"]
            summary[f"{key}_images"] = result["images"]
    return summary
