"""The segmentation package's public surface: the segmenter registry, Segmentation, light imports."""

import subprocess
import sys
import types

import numpy as np
import pytest

from smearflow.config import PipelineConfig
from smearflow.segmentation import (
    DEFAULT_SEGMENTER,
    SEGMENTERS,
    Segmentation,
    Segmenter,
    SegmenterEntry,
    check_segmenter_name,
    make_segmenter,
    segmenter_choices,
    segmenter_help,
)
from smearflow.segmentation.classical import ClassicalSegmenter
from smearflow.types import Cell
from smearflow.worker.settings import WorkerSettings


def _cell(kind, counted=True):
    return Cell(kind, (0, 0, 1, 1), (0.0, 0.0), 1, np.ones((1, 1), bool), counted=counted)


def test_make_segmenter_builds_the_classical_segmenter():
    segmenter = make_segmenter()
    assert DEFAULT_SEGMENTER == "classical"
    assert isinstance(segmenter, ClassicalSegmenter) and isinstance(segmenter, Segmenter)
    assert segmenter.config.rbc_diameter_px is None
    assert make_segmenter("classical", rbc_diameter_px=42.0).config.rbc_diameter_px == 42.0


def test_make_segmenter_loads_the_unet_from_its_module_only_when_built(monkeypatch, tmp_path):
    calls = []

    def build_segmenter(*, rbc_diameter_px=None, model_dir=None):
        calls.append((model_dir, rbc_diameter_px))
        return "a U-Net"

    fake_module = types.ModuleType("smearflow.segmentation.unet")
    fake_module.build_segmenter = build_segmenter
    monkeypatch.setitem(sys.modules, "smearflow.segmentation.unet", fake_module)
    assert make_segmenter("unet", model_dir=tmp_path, rbc_diameter_px=30.0) == "a U-Net"
    assert make_segmenter("unet") == "a U-Net"  # the loader picks its packaged default
    assert calls == [(tmp_path, 30.0), (None, None)]


def test_every_entry_names_its_own_module_and_describes_itself():
    assert list(SEGMENTERS) == ["classical", "unet"]
    for name, entry in SEGMENTERS.items():
        assert isinstance(entry, SegmenterEntry) and entry.name == name
        assert entry.module.startswith("smearflow.segmentation.") and entry.description
        assert "``" not in entry.description


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "watershed"}, "name must be 'classical' or 'unet'. Received: name='watershed'"),
        ({"rbc_diameter_px": 0}, "rbc_diameter_px=0"),
        ({"rbc_diameter_px": -3.0}, "rbc_diameter_px=-3.0"),
    ],
)
def test_make_segmenter_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_segmenter(**kwargs)


def test_names_checks_and_help_come_from_the_registry(monkeypatch):
    assert segmenter_choices() == "classical or unet"
    assert segmenter_choices(quoted=True) == "'classical' or 'unet'"
    help_text = segmenter_help()
    assert all(name in help_text and entry.description in help_text for name, entry in SEGMENTERS.items())
    check_segmenter_name("unet")
    with pytest.raises(ValueError, match="segmenter must be 'classical' or 'unet'. Received: segmenter='magic'"):
        check_segmenter_name("magic")
    with pytest.raises(ValueError, match="segmenter must be 'classical' or 'unet'"):
        PipelineConfig(segmenter="magic")
    extra = SegmenterEntry("watershed", "smearflow.segmentation.classical", "another one")
    monkeypatch.setitem(SEGMENTERS, "watershed", extra)
    assert segmenter_choices() == "classical, unet or watershed"
    assert PipelineConfig(segmenter="watershed").segmenter == "watershed"
    assert WorkerSettings(segmenter="watershed").segmenter == "watershed"
    assert isinstance(make_segmenter("watershed"), ClassicalSegmenter)


def test_segmentation_selects_and_counts_by_kind():
    segmentation = Segmentation(
        cells=(_cell("wbc"), _cell("wbc", counted=False), _cell("rbc"), _cell("platelet")),
        rbc_diameter_px=30.0,
        image_shape=(10, 10),
    )
    assert len(segmentation.of_kind("wbc")) == 2
    assert segmentation.count("wbc") == 1 and segmentation.count("rbc") == 1 and segmentation.count("platelet") == 1
    assert segmentation.nucleus_mask is None


def test_importing_the_package_loads_no_segmenter_nor_its_libraries():
    code = (
        "import sys, smearflow.segmentation, smearflow.config; "
        "print(*(m in sys.modules for m in ('cv2', 'skimage', 'keras', 'smearflow.segmentation.classical', "
        "'smearflow.segmentation.unet')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False"] * 5
