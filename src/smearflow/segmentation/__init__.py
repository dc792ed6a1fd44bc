"""Find the cells of a stained blood-smear field.

A segmenter takes one RGB field and returns a :class:`Segmentation`: the
white cells, red cells and platelets it found as :class:`smearflow.types.Cell`
records, the red-cell diameter it worked with, and (when it separates them)
the white cells' nucleus pixels. Segmenters are registered by name in
:data:`SEGMENTERS` and built with :func:`make_segmenter`:

- ``"classical"``: colour thresholds, morphology and a distance-transform
  watershed (:mod:`smearflow.segmentation.classical`);
- ``"unet"``: a trained U-Net loaded from a model folder
  (:mod:`smearflow.segmentation.unet`).

What else lives here:

``base``       :class:`Segmentation` and the :class:`Segmenter` protocol
``registry``   :data:`SEGMENTERS`, :func:`make_segmenter` and the name checks
``border``     the border rule (which cut cells are counted) and visible fractions
``diameter``   the red-cell diameter estimated from a field
``colour``     background colour, illumination balance and the colour maps
``regions``    mask and labelled-region helpers shared by the segmenters
``crops``      square crops of cells for the classifier
``metrics``    box matching, Dice and IoU

Importing this package loads numpy only; OpenCV, scikit-image and Keras load
with the segmenter module that needs them, when a segmenter is first built.
"""

from __future__ import annotations

from smearflow.segmentation.base import Segmentation, Segmenter
from smearflow.segmentation.registry import (
    DEFAULT_SEGMENTER,
    SEGMENTERS,
    SegmenterEntry,
    check_segmenter_name,
    make_segmenter,
    segmenter_choices,
    segmenter_help,
)

__all__ = [
    "DEFAULT_SEGMENTER",
    "SEGMENTERS",
    "Segmentation",
    "Segmenter",
    "SegmenterEntry",
    "check_segmenter_name",
    "make_segmenter",
    "segmenter_choices",
    "segmenter_help",
]
