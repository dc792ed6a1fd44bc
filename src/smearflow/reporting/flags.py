"""What a slide's result warns about: too few cells, uncertain cells, fields left out, values out of range.

Every flag is a dict ``{"code": ..., "message": ...}`` (``"class"`` too for
``out-of-range``), computed from numbers alone, so the same flags come out of
``analyze``, ``counts``, the slide report and the review station:

``too-few-wbc``
    Fewer than ``min_wbc`` (100) white cells classified: the percentages are
    too imprecise to report without a look (their 95% intervals are wide).
``many-uncertain``
    More than ``max_uncertain_fraction`` (20%) of the classified white cells
    are *uncertain*: the pipeline marked them (their confidence is below the
    model's threshold, ``calibration.json``), or their confidence is below the
    laboratory's ``uncertain_below`` (0.5).
``fields-not-counted``
    Fields that failed (unreadable, could not be analysed) or that the
    quality gate flagged; their names and reasons.
``out-of-range``
    A class whose percentage lies outside ``reference_ranges_percent``. The
    defaults are typical adult ranges; a laboratory sets its own in a JSON
    file (``--flags-config``, ``SMEARFLOW_FLAGS_CONFIG``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smearflow import WBC_CLASSES
from smearflow.config import SerialisableConfig
from smearflow.reporting.stats import percent_interval

__all__ = ["DEFAULT_REFERENCE_RANGES", "FlagConfig", "is_uncertain", "load_flag_config", "slide_flags"]

DEFAULT_REFERENCE_RANGES: dict[str, tuple[float, float]] = {
    "basophil": (0.0, 2.0),
    "eosinophil": (0.0, 6.0),
    "erythroblast": (0.0, 0.0),
    "ig": (0.0, 2.0),
    "lymphocyte": (20.0, 45.0),
    "monocyte": (2.0, 10.0),
    "neutrophil": (40.0, 75.0),
}
"""Typical adult reference ranges, percent of white cells (erythroblasts per 100 white cells)."""

FLAG_CODES = ("too-few-wbc", "many-uncertain", "fields-not-counted", "out-of-range")
"""Every flag code, in the order flags are listed."""

_NAMES_SHOWN = 5


@dataclass(frozen=True)
class FlagConfig(SerialisableConfig):
    """Thresholds of the slide flags (see the module docstring).

    Attributes
    ----------
    min_wbc : int
        Fewer classified white cells is flagged ``too-few-wbc``.
    uncertain_below : float
        A cell without a stored ``uncertain`` flag is uncertain when its
        confidence is below this; it also orders galleries (least confident first).
    max_uncertain_fraction : float
        A larger share of uncertain white cells is flagged ``many-uncertain``.
    reference_ranges_percent : dict of str to (float, float)
        Class → (low, high) percent of white cells; classes left out are not checked.
    """

    min_wbc: int = 100
    uncertain_below: float = 0.5
    max_uncertain_fraction: float = 0.2
    reference_ranges_percent: dict[str, tuple[float, float]] = field(
        default_factory=lambda: dict(DEFAULT_REFERENCE_RANGES)
    )

    def __post_init__(self):
        if isinstance(self.min_wbc, bool) or not isinstance(self.min_wbc, int) or self.min_wbc < 1:
            raise ValueError(f"min_wbc must be an integer of at least 1. Received: min_wbc={self.min_wbc!r}")
        for name in ("uncertain_below", "max_uncertain_fraction"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1]. Received: {name}={value!r}")
        if not isinstance(self.reference_ranges_percent, Mapping):
            raise ValueError(
                "reference_ranges_percent must map a class to [low, high]. "
                f"Received: reference_ranges_percent={self.reference_ranges_percent!r}"
            )
        ranges = {}
        for label, bounds in self.reference_ranges_percent.items():
            if label not in WBC_CLASSES:
                raise ValueError(
                    f"reference_ranges_percent names an unknown class; classes are {list(WBC_CLASSES)}. "
                    f"Received: {label!r}"
                )
            ok = isinstance(bounds, (list, tuple)) and len(bounds) == 2 and all(_is_number(b) for b in bounds)
            if not ok or not 0.0 <= bounds[0] <= bounds[1] <= 100.0:
                raise ValueError(
                    f"reference_ranges_percent[{label!r}] must be [low, high] with 0 <= low <= high <= 100. "
                    f"Received: {bounds!r}"
                )
            ranges[label] = (float(bounds[0]), float(bounds[1]))
        object.__setattr__(self, "reference_ranges_percent", ranges)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_flag_config(path: str | Path | None) -> FlagConfig:
    """The flag settings in a JSON file (keys of :class:`FlagConfig`, any subset); defaults for ``None``.

    Raises
    ------
    ValueError
        When the file cannot be read, is not a JSON object, has an unknown key
        or a value out of range; the message names the file.
    """
    if path is None or str(path) == "":
        return FlagConfig()
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read the flag settings ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the flag settings must be a JSON object. Received: {type(data).__name__}")
    try:
        return FlagConfig.from_dict(data)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None


def is_uncertain(confidence: float | None, stored_flag: bool | None, config: FlagConfig) -> bool:
    """Whether a classified cell is uncertain: the pipeline marked it (below the model's confidence
    threshold), or its confidence is below the laboratory's ``uncertain_below``."""
    return bool(stored_flag) or (confidence is not None and confidence < config.uncertain_below)


def slide_flags(
    counts: Mapping[str, int],
    fields: Sequence[Mapping[str, Any]],
    uncertain_wbc: int,
    config: FlagConfig,
) -> list[dict[str, Any]]:
    """The flags of one slide's differential.

    Parameters
    ----------
    counts : mapping of str to int
        The differential reported (class → cells); ``platelet`` is not a white cell.
    fields : sequence of mapping
        Each with ``name``, ``status`` (``done``, ``flagged``, ``failed``) and ``error``.
    uncertain_wbc : int
        Classified white cells that are uncertain (:func:`is_uncertain`).
    config : FlagConfig

    Returns
    -------
    list of dict
        ``{"code", "message"}`` (and ``"class"`` for ``out-of-range``), in the
        order of ``FLAG_CODES``; empty when nothing is wrong.
    """
    wbc = {label: int(n) for label, n in counts.items() if label != "platelet"}
    total = sum(wbc.values())
    flags: list[dict[str, Any]] = []
    if total < config.min_wbc:
        flags.append({
            "code": "too-few-wbc",
            "message": f"{total} white cells classified, fewer than {config.min_wbc}: "
            "the percentages are imprecise (see their 95% intervals)",
        })
    if total and uncertain_wbc / total > config.max_uncertain_fraction:
        flags.append({
            "code": "many-uncertain",
            "message": f"{uncertain_wbc} of {total} white cells ({100.0 * uncertain_wbc / total:.0f}%) are uncertain, "
            f"more than {100.0 * config.max_uncertain_fraction:.0f}%: review them",
        })
    left_out = [f for f in fields if f.get("status") != "done"]
    if left_out:
        shown = ", ".join(f"{f['name']} ({f['status']})" for f in left_out[:_NAMES_SHOWN])
        more = f" and {len(left_out) - _NAMES_SHOWN} more" if len(left_out) > _NAMES_SHOWN else ""
        flags.append({
            "code": "fields-not-counted",
            "message": f"{len(left_out)} of {len(fields)} fields not counted: {shown}{more}",
        })
    if total:
        for label in WBC_CLASSES:
            if label not in config.reference_ranges_percent:
                continue
            low, high = config.reference_ranges_percent[label]
            n = wbc.get(label, 0)
            percent = 100.0 * n / total
            if low <= percent <= high:
                continue
            interval = percent_interval(n, total)
            side = "above" if percent > high else "below"
            flags.append({
                "code": "out-of-range",
                "class": label,
                "message": f"{label} {percent:.1f}% ({n} of {total}; 95% CI {interval[0]:.1f}-{interval[1]:.1f}%) "
                f"is {side} the reference range {low:g}-{high:g}%",
            })
    return flags
