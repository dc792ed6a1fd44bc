"""The database layer: tables, engines and sessions, repository functions, migrations.

``smearflow.db.models`` holds the tables, ``smearflow.db.repository`` the
functions that read and write them (each takes a ``Session``; the caller owns
the transaction), ``smearflow.db.engine`` the engine and session helpers.
"""

from smearflow.db.engine import (
    DEFAULT_DATABASE_URL,
    is_transient_database_error,
    make_engine,
    resolve_database_url,
    session_factory,
    session_scope,
    transient_database_errors,
)
from smearflow.db.migrate import current_revision, head_revision, upgrade_database

__all__ = [
    "DEFAULT_DATABASE_URL",
    "current_revision",
    "head_revision",
    "is_transient_database_error",
    "make_engine",
    "resolve_database_url",
    "session_factory",
    "session_scope",
    "transient_database_errors",
    "upgrade_database",
]
