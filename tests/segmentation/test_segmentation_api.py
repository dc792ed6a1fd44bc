"""The segmentation package's public surface: make_segmenter, Segmentation, light imports."""

import subprocess
import sys
import types

import numpy as np
import pytest

from smearflow.segmentation import Segmentation, Segmenter, make_segmenter
from smearflow.segmentation.classical import ClassicalSegmenter
from smearflow.types import Cell


def _cell(kind, counted=True):
    return Cell(kind, (0, 0, 1, 1), (0.0, 0.0), 1, np.ones((1, 1), bool), counted=counted)


def test_make_segmenter_builds_the_classical_segmenter():
    segmenter = make_segmenter()
    assert isinstance(segmenter, ClassicalSegmenter) and isinstance(segmenter, Segmenter)
    assert segmenter.config.rbc_diameter_px is None
    assert make_segmenter("classical", rbc_diameter_px=42.0).config.rbc_diameter_px == 42.0


def test_make_segmenter_loads_the_unet_lazily_from_its_module(monkeypatch, tmp_path):
    calls = []

    class FakeUNet:
        @classmethod
        def load(cls, model_dir, rbc_diameter_px=None):
            calls.append((model_dir, rbc_diameter_px))
            return cls()

    fake_module = types.ModuleType("smearflow.segmentation.unet")
    fake_module.UNetSegmenter = FakeUNet
    monkeypatch.setitem(sys.modules, "smearflow.segmentation.unet", fake_module)
    assert isinstance(make_segmenter("unet", model_dir=tmp_path, rbc_diameter_px=30.0), FakeUNet)
    assert isinstance(make_segmenter("unet"), FakeUNet)  # the loader picks its packaged default
    assert calls == [(tmp_path, 30.0), (None, None)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "watershed"}, "name='watershed'"),
        ({"rbc_diameter_px": 0}, "rbc_diameter_px=0"),
        ({"rbc_diameter_px": -3.0}, "rbc_diameter_px=-3.0"),
    ],
)
def test_make_segmenter_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_segmenter(**kwargs)


def test_segmentation_selects_and_counts_by_kind():
    segmentation = Segmentation(
        cells=(_cell("wbc"), _cell("wbc", counted=False), _cell("rbc"), _cell("platelet")),
        rbc_diameter_px=30.0,
        image_shape=(10, 10),
    )
    assert len(segmentation.of_kind("wbc")) == 2
    assert segmentation.count("wbc") == 1 and segmentation.count("rbc") == 1 and segmentation.count("platelet") == 1
    assert segmentation.nucleus_mask is None


def test_importing_the_package_loads_neither_opencv_nor_scikit_image():
    code = "import sys, smearflow.segmentation; print('cv2' in sys.modules, 'skimage' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
