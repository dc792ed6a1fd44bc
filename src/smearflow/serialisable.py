"""Settings that round-trip through a plain dict: the base of every frozen config.

Every settings object round-trips through a plain dict (``to_dict`` /
``from_dict``) so that it can live in a model folder's ``config.json`` or a
benchmark run folder, and be reloaded with no code edits. This module imports
nothing of smearflow, so any layer can build on it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T", bound="SerialisableConfig")


class SerialisableConfig:
    """Mixin: ``to_dict`` / ``from_dict`` for frozen dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {unknown}. Received keys: {sorted(data)}")
        return cls(**{name: _lists_to_tuples(value) for name, value in data.items()})


def _lists_to_tuples(value: Any) -> Any:
    # JSON turns tuples into lists; frozen configs compare and hash as tuples.
    if isinstance(value, (list, tuple)):
        return tuple(_lists_to_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    return value
