"""White-cell crops of labelled whole fields as training images (``export-crops``)."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from smearflow.cli import app
from smearflow.config import PipelineConfig
from smearflow.errors import BadDatasetError
from smearflow.imageio import write_rgb
from smearflow.segmentation import Segmentation
from smearflow.training.field_crops import export_field_crops
from smearflow_testkit import planted_cell as _cell


class _CellsByBrightness:
    """Finds as many white cells as the field's grey level says (0, 1 or 2), plus a red cell.

    Every field also holds a white cell mostly outside it, and grey 150 adds
    one that the border rule leaves uncounted but is in full view (grey 50:
    the only white cell).
    """

    def segment(self, image):
        grey = int(image[0, 0, 0])
        n_wbc = grey // 100
        cells = [_cell("wbc", 20 + 20 * k, 30) for k in range(n_wbc)] + [_cell("rbc", 50, 50)]
        cells.append(_cell("wbc", 75, 75, counted=False, visible=0.3))
        if grey in (50, 150):
            cells.append(_cell("wbc", 60, 30, counted=False))
        return Segmentation(cells=tuple(cells), rbc_diameter_px=10.0, image_shape=image.shape[:2])


def test_export_field_crops_writes_one_crop_per_single_cell_field(tmp_path):
    fields = tmp_path / "fields"
    for name, grey in (("a.jpg", 100), ("b.jpg", 10), ("c.jpg", 200), ("d.jpg", 100), ("f.jpg", 150), ("g.jpg", 50)):
        write_rgb(fields / name, np.full((80, 80, 3), grey, np.uint8))
    (fields / "e.jpg").write_text("broken")
    labels = {"a.jpg": "neutrophil", "b.jpg": "monocyte", "c.jpg": "lymphocyte", "d.jpg": "neutrophil"}
    labels |= {"e.jpg": "eosinophil", "f.jpg": "monocyte", "g.jpg": "lymphocyte"}
    report = export_field_crops(fields, labels, _CellsByBrightness(), tmp_path / "crops", PipelineConfig())
    assert report["written"] == {"lymphocyte": 1, "neutrophil": 2}
    # f.jpg: its uncounted but visible cell is a second white cell
    assert report["skipped_fields"] == {"no white cell": 1, "several white cells": 2, "unreadable": 1}
    crops = sorted((tmp_path / "crops").rglob("*.png"))
    names = [p.relative_to(tmp_path / "crops").as_posix() for p in crops]
    assert names == ["lymphocyte/g.png", "neutrophil/a.png", "neutrophil/d.png"]
    from smearflow.imageio import read_rgb

    assert read_rgb(crops[0]).shape == (224, 224, 3)


def test_export_field_crops_keeps_to_the_named_subset(tmp_path):
    write_rgb(tmp_path / "a.jpg", np.full((80, 80, 3), 100, np.uint8))
    write_rgb(tmp_path / "b.jpg", np.full((80, 80, 3), 100, np.uint8))
    labels = {"a.jpg": "neutrophil", "b.jpg": "monocyte"}
    report = export_field_crops(tmp_path, labels, _CellsByBrightness(), tmp_path / "crops", names=["b.jpg"])
    assert report["written"] == {"monocyte": 1}
    with pytest.raises(BadDatasetError, match="no labelled image to export"):
        export_field_crops(tmp_path, labels, _CellsByBrightness(), tmp_path / "crops", names=["z.jpg"])


def test_export_crops_command_writes_the_tuning_part(tmp_path, monkeypatch):
    import smearflow.cli

    fields = tmp_path / "fields"
    names = [f"f{i}.jpg" for i in range(10)]
    for name in names:
        write_rgb(fields / name, np.full((80, 80, 3), 100, np.uint8))
    (tmp_path / "c.csv").write_text("image,label\n" + "".join(f"{n},NEUTROPHIL\n" for n in names))
    monkeypatch.setattr(smearflow.cli, "make_segmenter", lambda name, **kwargs: _CellsByBrightness())
    out = tmp_path / "crops"
    args = ["export-crops", str(fields), "--labels", str(tmp_path / "c.csv"), "--out", str(out), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    from smearflow.datasets import holdout_split

    tuning, _ = holdout_split(Path(n).stem for n in names)
    assert sorted(p.stem for p in out.rglob("*.png")) == sorted(tuning)
    assert json.loads(result.output)["written"] == {"neutrophil": len(tuning)}


def test_export_crops_command_errors(tmp_path):
    missing = CliRunner().invoke(app, ["export-crops", str(tmp_path), "--labels", str(tmp_path / "no.csv"), "--out", "x"])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    (tmp_path / "c.csv").write_text("image,label\n")
    empty = CliRunner().invoke(app, ["export-crops", str(tmp_path), "--labels", str(tmp_path / "c.csv"), "--out", "x"])
    assert empty.exit_code == 2 and "no labelled image" in " ".join(empty.output.split())
