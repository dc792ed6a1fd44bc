"""Model versions: registering a trained model and choosing the one active model.

Every function takes a ``Session``; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from smearflow.db.models import ModelVersion
from smearflow.db.values import check_code, insert_unless_present, metrics_dict


def get_or_create_model_version(
    session: Session,
    name: str,
    architecture: str,
    path: str | None,
    metrics: Mapping[str, Any] | None,
) -> ModelVersion:
    """The model version called ``name``, created (inactive) when new.

    An existing row is returned as it is; its ``path`` is updated when a
    different one is given (a model folder that moved).

    Parameters
    ----------
    session : sqlalchemy.orm.Session
    name : str
        Unique, e.g. ``"cnn-3f2a9c1b"``.
    architecture : str
    path : str or None
        The model folder.
    metrics : dict or None
        JSON values; numpy scalars and arrays are converted.

    Returns
    -------
    ModelVersion

    Raises
    ------
    ValueError
        When ``name`` or ``architecture`` is empty, or ``name`` is already
        registered with another architecture.
    TypeError
        When ``metrics`` is not a dict of JSON values.
    """
    check_code("name", name)
    check_code("architecture", architecture)
    metrics_json = metrics_dict(metrics, "metrics")
    insert_unless_present(
        session,
        ModelVersion,
        {"name": name, "architecture": architecture, "path": path, "metrics": metrics_json, "active": False},
        "name",
    )
    version = session.scalars(
        select(ModelVersion).where(ModelVersion.name == name).execution_options(populate_existing=True)
    ).one()
    if version.architecture != architecture:
        raise ValueError(
            f"Model version {name!r} is registered with architecture {version.architecture!r}. "
            f"Received: architecture={architecture!r}"
        )
    if path is not None and version.path != path:
        version.path = path
    session.flush()
    return version


def activate_model_version(session: Session, name: str) -> ModelVersion:
    """Make ``name`` the one active model version; every other one is deactivated.

    Raises
    ------
    LookupError
        When no model version is called ``name``.
    """
    version = session.scalars(select(ModelVersion).where(ModelVersion.name == name)).first()
    if version is None:
        raise LookupError(f"No model version is registered under name={name!r}")
    for other in session.scalars(
        select(ModelVersion).where(ModelVersion.active.is_(True), ModelVersion.id != version.id)
    ):
        other.active = False
    # Deactivate before activating, or the one-active index sees two rows.
    session.flush()
    version.active = True
    session.flush()
    return version


def active_model_version(session: Session) -> ModelVersion | None:
    """The active model version, or ``None`` when none is active."""
    return session.scalars(select(ModelVersion).where(ModelVersion.active.is_(True))).first()


def list_model_versions(session: Session) -> list[ModelVersion]:
    """Every model version, oldest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.created_at, ModelVersion.id)))
