"""Run the Alembic migrations that ship inside the package.

Alembic is configured in code, so this works from an installed package and
from any working directory; ``alembic.ini`` next to this file is only for
developers who use the ``alembic`` command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from smearflow.db.engine import make_engine, resolve_database_url

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Connection

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
"""The Alembic script directory (``env.py``, ``versions/``)."""


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` pointing at the packaged migrations.

    Parameters
    ----------
    connection : sqlalchemy.Connection, optional
        Handed to ``env.py``, which then runs on it instead of connecting.

    Returns
    -------
    alembic.config.Config
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_database(url: str | None = None, revision: str = "head") -> None:
    """Bring the database schema up to ``revision`` (``alembic upgrade``).

    Safe to call at every start: an up-to-date database is left as it is.

    Parameters
    ----------
    url : str, optional
        An SQLAlchemy URL; resolved with
        :func:`smearflow.db.engine.resolve_database_url`.
    revision : str, default "head"
        The Alembic revision to upgrade to.

    Raises
    ------
    sqlalchemy.exc.OperationalError
        When the database cannot be reached (wrap the call in
        :func:`smearflow.db.engine.transient_database_errors` to get a
        ``TransientError``).
    """
    from alembic import command

    engine = make_engine(resolve_database_url(url))
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), revision)
    finally:
        engine.dispose()


def current_revision(url: str | None = None) -> str | None:
    """The revision the database is at; ``None`` for a database never migrated."""
    from alembic.migration import MigrationContext

    engine = make_engine(resolve_database_url(url))
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    """The newest revision shipped with this package."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None  # the package always ships at least one revision
    return head
