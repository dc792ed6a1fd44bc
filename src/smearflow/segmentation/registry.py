"""The segmenter registry: every segmenter's name, one-line description and builder.

Every segmenter module (or package) defines the same builder::

    build_segmenter(*, rbc_diameter_px=None, model_dir=None) -> Segmenter

with ``rbc_diameter_px`` the expected red-cell diameter in field pixels
(``None``: estimated per field) and ``model_dir`` a model folder (``None``:
the segmenter's packaged default; ignored by segmenters without a model).
Adding a segmenter is that module and one line in :data:`SEGMENTERS`; the
names accepted by the settings, the command-line options and their help text
all come from this table, and one contract test
(``tests/segmentation/test_segmenter_contract.py``) runs on every entry.

The table names each builder's module instead of importing it: the settings
(:mod:`smearflow.config`, :mod:`smearflow.worker.settings`) validate names
against it, while the segmenter modules import :mod:`smearflow.config`; and
``import smearflow.segmentation`` stays free of OpenCV, scikit-image and
Keras. A segmenter's module loads when it is first built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from smearflow.segmentation.base import Segmenter

__all__ = [
    "DEFAULT_SEGMENTER",
    "SEGMENTERS",
    "SegmenterEntry",
    "check_segmenter_name",
    "make_segmenter",
    "segmenter_choices",
    "segmenter_help",
]


@dataclass(frozen=True)
class SegmenterEntry:
    """A registered segmenter.

    Attributes
    ----------
    name : str
        The name settings and options use.
    module : str
        Dotted name of the module whose ``build_segmenter`` builds it.
    description : str
        One line for help texts, in plain words.
    """

    name: str
    module: str
    description: str

    def build(self, *, rbc_diameter_px: float | None = None, model_dir: str | Path | None = None) -> Segmenter:
        """Load the segmenter's module and build it (see the module docstring for the arguments)."""
        builder = importlib.import_module(self.module).build_segmenter
        return builder(rbc_diameter_px=rbc_diameter_px, model_dir=model_dir)


SEGMENTERS: dict[str, SegmenterEntry] = {
    "classical": SegmenterEntry(
        "classical",
        "smearflow.segmentation.classical",
        "colour thresholds, shape and watershed, with no model",
    ),
    "unet": SegmenterEntry(
        "unet",
        "smearflow.segmentation.unet",
        "a trained U-Net model folder, the packaged one unless another is named",
    ),
}
"""Segmenters by name."""

DEFAULT_SEGMENTER = "classical"
"""The segmenter used when none is named."""


def segmenter_choices(quoted: bool = False) -> str:
    """The registered names as text: ``"classical or unet"`` (``"'classical' or 'unet'"`` when ``quoted``)."""
    return _one_of([repr(name) if quoted else name for name in SEGMENTERS])


def segmenter_help() -> str:
    """Help text of a ``--segmenter`` option: each name with its description."""
    described = _one_of([f"{entry.name} ({entry.description})" for entry in SEGMENTERS.values()])
    return f"Which segmenter finds the cells: {described}."


def _one_of(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


def check_segmenter_name(name: str, argument: str = "segmenter") -> None:
    """Refuse a name that is not in :data:`SEGMENTERS`.

    Parameters
    ----------
    name : str
        The name received.
    argument : str
        What the caller calls it, for the message.

    Raises
    ------
    ValueError
        ``"<argument> must be 'classical' or 'unet'. Received: <argument>=<name>"``.
    """
    if name not in SEGMENTERS:
        raise ValueError(f"{argument} must be {segmenter_choices(quoted=True)}. Received: {argument}={name!r}")


def make_segmenter(
    name: str = DEFAULT_SEGMENTER,
    *,
    rbc_diameter_px: float | None = None,
    model_dir: str | Path | None = None,
) -> Segmenter:
    """Build a registered segmenter by name.

    Parameters
    ----------
    name : str
        A key of :data:`SEGMENTERS`.
    rbc_diameter_px : float, optional
        Expected red-cell diameter in field pixels; estimated from each field
        when omitted.
    model_dir : str or Path, optional
        Model folder of a segmenter that has one (its packaged default when
        omitted); ignored by the others.

    Returns
    -------
    Segmenter

    Raises
    ------
    ValueError
        When ``name`` is not registered or ``rbc_diameter_px`` is not positive.
    smearflow.errors.BadModelError
        From a segmenter's loader, when its model folder is missing or broken.
    """
    check_segmenter_name(name, "name")
    if rbc_diameter_px is not None and not rbc_diameter_px > 0:
        raise ValueError(f"rbc_diameter_px must be positive. Received: rbc_diameter_px={rbc_diameter_px}")
    return SEGMENTERS[name].build(rbc_diameter_px=rbc_diameter_px, model_dir=model_dir)
