"""Test data of the worker tests: slide folders, slide results, a colour dataset.

Slide images are drawn here (no dependency on ``smearflow.synthetic``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from smearflow.types import Cell, Classification, ClassifiedCell, FieldResult, SlideInfo, SlideResult


def draw_field(seed: int, size_px: int = 160) -> np.ndarray:
    """A pink background with red-cell discs and two purple white cells, RGB uint8."""
    rng = np.random.default_rng(seed)
    image = np.empty((size_px, size_px, 3), np.uint8)
    image[:] = (236, 222, 228)
    rows, cols = np.mgrid[0:size_px, 0:size_px]

    def disc(center, radius, colour):
        mask = (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2
        image[mask] = colour

    for _ in range(14):
        disc(rng.integers(10, size_px - 10, size=2), 8, (214, 128, 138))
    for center in ((45, 45), (110, 115)):
        disc(center, 15, (190, 170, 215))
        disc(center, 9, (95, 40, 140))
    noise = rng.integers(-4, 5, size=image.shape)
    return np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)


def write_slide(folder: Path, n_fields: int = 2, seed: int = 0, slide_json: dict | None = None) -> Path:
    """A slide folder of ``n_fields`` PNG fields; ``slide.json`` last when given."""
    from smearflow.imageio import write_rgb

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_fields):
        write_rgb(folder / f"field_{i:02d}.png", draw_field(seed * 100 + i))
    if slide_json is not None:
        (folder / "slide.json").write_text(json.dumps(slide_json))
    return folder


def write_bad_slide(folder: Path) -> Path:
    """A slide folder whose only field is not an image at all."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "field_00.png").write_bytes(b"this is not a PNG file")
    return folder


def write_colour_classes(root: Path, classes=("a", "b", "c"), per_class: int = 8, size_px: int = 32, seed: int = 0) -> Path:
    """A tiny class-folder dataset whose classes differ by colour (learnable in an epoch or two)."""
    from smearflow.imageio import write_rgb

    rng = np.random.default_rng(seed)
    palette = [(200, 60, 60), (60, 200, 60), (60, 60, 200), (200, 200, 60)]
    for k, name in enumerate(classes):
        (Path(root) / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-20, 20, size=(size_px, size_px, 3))
            image = np.clip(np.array(palette[k % len(palette)]) + noise, 0, 255).astype(np.uint8)
            write_rgb(Path(root) / name / f"{name}_{i}.png", image)
    return Path(root)


def slide_info(slide_id="S-1", folder="/inbox/S-1", patient_id="P-1"):
    """A ``SlideInfo`` with two field paths under ``folder``."""
    return SlideInfo(slide_id, patient_id, None, None, str(folder), (f"{folder}/f0.png", f"{folder}/f1.png"))


def slide_result(info, labels=("neutrophil", "lymphocyte"), model_version=None, status="done", errors=()):
    """A hand-made result: one field with the given white-cell labels and one red cell."""
    mask = np.ones((4, 4), bool)
    cells = [
        ClassifiedCell(Cell("wbc", (i * 10, 0, i * 10 + 4, 4), (i * 10 + 2.0, 2.0), 16, mask), Classification(label, 0.9))
        for i, label in enumerate(labels)
    ]
    cells.append(ClassifiedCell(Cell("rbc", (50, 50, 54, 54), (52.0, 52.0), 16, mask), None))
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    field = FieldResult(
        name="f0.png", status="done", cells=tuple(cells), height_px=64, width_px=64, wbc_counts=dict(counts), rbc_count=1
    )
    return SlideResult(
        info=info, status=status, fields=(field,), counts=counts, rbc_count=1, platelet_count=0,
        model_version=model_version, errors=tuple(errors),
    )
