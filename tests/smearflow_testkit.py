"""Stand-ins and generated data shared by the tests (imported by module name, not via conftest)."""

import numpy as np

from smearflow.segmentation import Segmentation
from smearflow.types import Cell, Classification

BAD_IMAGES = [
    (np.zeros((64, 64), np.uint8), "shape"),
    (np.zeros((64, 64, 4), np.uint8), "shape"),
    (np.zeros((8, 64, 3), np.uint8), "shape"),
    (np.zeros((64, 64, 3), np.int16), "dtype"),
    (np.full((64, 64, 3), 2.0), "max=2.0"),
]
"""Fields every segmenter and the red-cell diameter estimate refuse, with the part of the error naming what was received."""


def planted_cell(kind, row, col, radius=10, counted=True, visible=1.0):
    size = 2 * radius
    return Cell(
        kind=kind,
        bbox=(row - radius, col - radius, row + radius, col + radius),
        centroid=(float(row), float(col)),
        area_px=size * size,
        mask=np.ones((size, size), bool),
        counted=counted,
        visible_fraction=visible,
    )


class PlantedSegmenter:
    """Returns the same planted cells for every field."""

    def __init__(self, cells):
        self.cells = tuple(cells)

    def segment(self, image):
        return Segmentation(cells=self.cells, rbc_diameter_px=20.0, image_shape=image.shape[:2])


class ColumnClassifier:
    """Labels a crop by where it came from: the label list is consumed in order."""

    version = "fake-1"

    def __init__(self, labels):
        self.labels = list(labels)
        self.seen_shapes = []
        self.excluded = []

    def classify(self, crops, batch_size=32, exclude=()):
        self.seen_shapes.append(crops.shape)
        self.excluded.append(exclude)
        return [Classification(self.labels.pop(0), 0.9) for _ in range(len(crops))]


def write_class_folders(root, classes=("a", "b", "c"), per_class=6, size=40, seed=0):
    """A tiny class-folder dataset whose classes differ by colour (learnable in one epoch)."""
    from smearflow.imageio import write_rgb

    rng = np.random.default_rng(seed)
    palette = [(200, 60, 60), (60, 200, 60), (60, 60, 200), (200, 200, 60), (60, 200, 200)]
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-20, 20, size=(size, size, 3))
            image = np.clip(np.array(palette[k % len(palette)]) + noise, 0, 255).astype(np.uint8)
            write_rgb(root / name / f"{name}_{i}.png", image)
    return root


def assert_same_classifications(cells, reference_cells, atol=1e-5):
    """Assert two analyses of one field gave each cell the same class and probabilities.

    ``reference_cells`` is the cell-by-cell analysis; a cell it left unclassified
    (a platelet, an edge cell) must be unclassified in ``cells`` too.
    """
    for cell, reference in zip(cells, reference_cells, strict=True):
        if reference.classification is None:
            assert cell.classification is None
            continue
        assert cell.classification.label == reference.classification.label
        np.testing.assert_allclose(cell.classification.probabilities, reference.classification.probabilities, atol=atol)


def tiny_backbone_model(image_size, num_classes, *, contrastive=False):
    """A small stand-in with the registry's conventions: a nested backbone named like an ImageNet one."""
    import keras
    from keras import layers

    backbone_in = keras.Input((image_size, image_size, 3))
    x = layers.Conv2D(4, 3, strides=2)(backbone_in)
    x = layers.BatchNormalization()(x)
    backbone = keras.Model(backbone_in, layers.Activation("relu")(x), name="mobilenetv2")
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = layers.Rescaling(1 / 255, name="preprocessed")(inputs)
    x = layers.GlobalAveragePooling2D(name="embedding" if contrastive else "pool")(backbone(x))
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs)
