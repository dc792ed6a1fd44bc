import pytest

from smearflow_testkit import tiny_backbone_model


@pytest.fixture
def tiny_registry(monkeypatch):
    from smearflow.training.architectures import ARCHITECTURES, Architecture

    monkeypatch.setitem(
        ARCHITECTURES, "tiny_backbone", Architecture("tiny_backbone", tiny_backbone_model, 16, "test", "unit", ("mobilenetv2",))
    )
    monkeypatch.setitem(
        ARCHITECTURES,
        "tiny_supcon",
        Architecture(
            "tiny_supcon",
            lambda s, k: tiny_backbone_model(s, k, contrastive=True),
            16,
            "test",
            "unit",
            ("mobilenetv2",),
            contrastive=True,
        ),
    )
