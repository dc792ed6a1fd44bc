"""Checks and conversions shared by the repository modules.

Validation of codes and statuses (errors name the argument and what was
received), JSON-safe metrics, ISO 8601 times and an insert that is safe
against a concurrent insert of the same row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy.orm import Session

from smearflow.errors import BadSlideError


def check_code(name: str, value: object) -> str:
    """``value`` when it is a non-empty string; a ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string. Received: {name}={value!r}")
    return value


def check_status(name: str, value: object, allowed: tuple[str, ...]) -> str:
    """``value`` when it is one of ``allowed``; a ``ValueError`` naming ``name`` otherwise."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}. Received: {name}={value!r}")
    return value  # type: ignore[return-value]


def parse_collected_at(value: str | None, slide_id: str = "?") -> datetime | None:
    """Parse ``SlideInfo.collected_at`` into an aware UTC datetime.

    Parameters
    ----------
    value : str or None
        An ISO 8601 date (``"2024-03-01"``, taken as midnight UTC) or datetime
        (``"2024-03-01T09:30:00+01:00"``; without an offset it is taken as UTC).
    slide_id : str
        Named in the error message.

    Returns
    -------
    datetime or None

    Raises
    ------
    smearflow.errors.BadSlideError
        When ``value`` is not ISO 8601.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    else:
        try:
            parsed = datetime.fromisoformat(str(value).strip())
        except ValueError as exc:
            raise BadSlideError(
                f"collected_at of slide {slide_id!r} must be an ISO 8601 date or datetime. "
                f"Received: collected_at={value!r}"
            ) from exc
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_iso_time(value: str) -> datetime:
    """An ISO 8601 date (midnight) or date-time as an aware datetime; without an offset it is UTC.

    Unlike :func:`parse_collected_at` an offset is kept as given, not converted to UTC.

    Raises
    ------
    ValueError
        When ``value`` is neither an ISO 8601 date nor a date-time.
    """
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = datetime.combine(date.fromisoformat(value), datetime.min.time())
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def jsonable(value: Any, name: str) -> Any:
    """Plain JSON values from metrics that may hold numpy scalars and arrays."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, name) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, name) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return jsonable(value.tolist(), name)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(
        f"{name} must hold JSON values (numbers, strings, lists, dicts). "
        f"Received a {type(value).__name__}: {value!r}"
    )


def metrics_dict(metrics: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """``metrics`` as plain JSON values (``{}`` for ``None``); a ``TypeError`` naming ``name`` otherwise."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(f"{name} must be a dict. Received: {name}={metrics!r}")
    return jsonable(metrics, name)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 text of ``value``, or ``None``."""
    return value.isoformat() if value is not None else None


def error_text(error: str | BaseException) -> str:
    """The stored text of an error: ``"TypeName: message"`` for an exception."""
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    return str(error)


def insert_unless_present(session: Session, model: type, values: dict[str, Any], key: str) -> None:
    """``INSERT ... ON CONFLICT (key) DO NOTHING``: safe when another process inserts the same row.

    A select-then-insert lets two processes both see no row and both insert;
    the second fails on the unique constraint. Column defaults are applied.

    Raises
    ------
    NotImplementedError
        On a database other than PostgreSQL or SQLite.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:
        raise NotImplementedError(f"smearflow supports PostgreSQL and SQLite. Received: dialect={dialect!r}")
    session.execute(dialect_insert(model).values(**values).on_conflict_do_nothing(index_elements=[key]))
