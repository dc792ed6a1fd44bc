"""Training images from labelled whole fields: the white-cell crops ``analyze`` would classify.

A laboratory whose microscope differs from the training images' one labels
whole fields by the type of their white cell; :func:`export_field_crops` cuts
those cells exactly as the pipeline does, as a class-folder dataset for
``smearflow train --extra-data``.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from smearflow.config import PipelineConfig
from smearflow.datasets import chosen_names
from smearflow.errors import BadImageError
from smearflow.imageio import read_rgb, write_rgb
from smearflow.segmentation.crops import crop_cells, crop_side_px

logger = logging.getLogger(__name__)


def export_field_crops(
    images_dir: str | Path, labels: dict[str, str], segmenter, out_dir: str | Path, config=None, names=None
) -> dict:
    """Write the white-cell crops of labelled fields as a class-folder dataset.

    A laboratory whose microscope differs from the training images' one
    (another stain, camera or objective) can label whole fields by the type
    of their white cell and train on the crops smearflow itself would
    classify (``smearflow train --extra-data``). Only fields where exactly one
    white cell is found are used, so that the field's label is that cell's
    label; the others are counted in ``skipped_fields``. A cell counts here
    when at least ``config.min_visible_fraction`` of it is inside the field,
    whether or not the border rule counts it: that rule keeps counts
    unbiased, while a training crop only needs to show the cell.

    Parameters
    ----------
    images_dir : str or Path
        Folder holding the field images named in ``labels``.
    labels : dict
        Image name → class (from :func:`read_field_labels`).
    segmenter : Segmenter
        Anything with ``segment(image) -> Segmentation``.
    out_dir : str or Path
        Receives ``<class>/<image stem>.png``.
    config : PipelineConfig, optional
        Crop geometry and visibility rule; default ``PipelineConfig()``.
    names : iterable of str, optional
        Restrict to these image names (the tuning part of a split).

    Returns
    -------
    dict
        ``written`` (class → crops), ``skipped_fields`` (reason → fields).

    Raises
    ------
    BadDatasetError
        When no labelled image is chosen.
    """
    config = config or PipelineConfig()
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    chosen = chosen_names(images_dir, labels, names, "export")
    written: Counter = Counter()
    skipped: Counter = Counter()
    for name in chosen:
        try:
            image = read_rgb(images_dir / name)
        except BadImageError as error:
            logger.warning("skipping %s", error)
            skipped["unreadable"] += 1
            continue
        segmentation = segmenter.segment(image)
        wbcs = [
            cell
            for cell in segmentation.cells
            if cell.kind == "wbc" and cell.visible_fraction >= config.min_visible_fraction
        ]
        if len(wbcs) != 1:
            skipped["no white cell" if not wbcs else "several white cells"] += 1
            continue
        side_px = crop_side_px(segmentation.rbc_diameter_px, config.crop.crop_side_rbc_diameters)
        crop = crop_cells(image, wbcs, side_px, config.crop.crop_size_px)[0]
        write_rgb(out_dir / labels[name] / f"{Path(name).stem}.png", crop)
        written[labels[name]] += 1
    return {"written": dict(sorted(written.items())), "skipped_fields": dict(skipped)}
