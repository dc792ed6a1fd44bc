"""The datasets smearflow reads, in one place.

- :mod:`smearflow.datasets.annotated`: annotated whole fields for
  segmentation (VOC boxes, nucleus/cytoplasm masks) and the held-out split;
- :mod:`smearflow.datasets.class_folders`: single-cell class-folder datasets
  (the PBC layout) and their stratified splits;
- :mod:`smearflow.datasets.labels`: per-image white-cell labels of whole fields.

Every problem with a file raises :class:`smearflow.errors.BadDatasetError`
naming it. Images are read through :mod:`smearflow.imageio`.
"""

from smearflow.datasets.annotated import (
    CELL_MIN_GREY,
    LAYOUTS,
    NUCLEUS_MIN_GREY,
    VOC_CLASSES,
    dataset_layout,
    dataset_names,
    find_datasets,
    holdout_split,
    image_files,
    label_mask_parts,
    read_boxes_field,
    read_mask_field,
    read_voc_boxes,
)
from smearflow.datasets.class_folders import (
    ImageDataset,
    concatenate_datasets,
    scan_class_folders,
    stratified_folds,
    stratified_holdout,
    subset_per_class,
)
from smearflow.datasets.labels import chosen_names, read_field_labels

__all__ = [
    "CELL_MIN_GREY",
    "ImageDataset",
    "LAYOUTS",
    "NUCLEUS_MIN_GREY",
    "VOC_CLASSES",
    "chosen_names",
    "concatenate_datasets",
    "dataset_layout",
    "dataset_names",
    "find_datasets",
    "holdout_split",
    "image_files",
    "label_mask_parts",
    "read_boxes_field",
    "read_field_labels",
    "read_mask_field",
    "read_voc_boxes",
    "scan_class_folders",
    "stratified_folds",
    "stratified_holdout",
    "subset_per_class",
]
