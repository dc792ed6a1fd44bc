"""Measure how well smearflow's parts work, on annotated data kept apart from training.

- :mod:`smearflow.evaluation.segmentation`: score a segmenter on a dataset
  folder (detection and counts on boxes, Dice and IoU on masks);
- :mod:`smearflow.evaluation.heldout`: score a trained U-Net model folder on
  the held-out part of each dataset it was trained on.

The dataset folders themselves are read by :mod:`smearflow.datasets`.
Importing this package loads nothing; each module loads what it scores.
"""
