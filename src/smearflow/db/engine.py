"""Engines, sessions and the translation of connection failures.

The session lifecycle lives here and in the caller, never in the repository
functions::

    engine = make_engine(resolve_database_url())
    factory = session_factory(engine)
    with transient_database_errors(), session_scope(factory) as session:
        repository.register_slide(session, info)

A worker process that forks after creating an engine must call
``engine.dispose(close=False)`` in the child (SQLAlchemy's pooling FAQ).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from smearflow.errors import TransientError

DEFAULT_DATABASE_URL = "sqlite:///smearflow.db"
"""A SQLite file called ``smearflow.db`` in the current working directory."""

DATABASE_URL_ENV = "SMEARFLOW_DATABASE_URL"
"""The environment variable read by :func:`resolve_database_url`."""

SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long a SQLite connection waits for another writer's lock."""

POSTGRES_CONNECT_TIMEOUT_S = 10
"""How long a PostgreSQL connection attempt may take before it fails."""


def resolve_database_url(url: str | None = None) -> str:
    """Pick the database URL: the argument, else the environment, else the default.

    Parameters
    ----------
    url : str, optional
        An SQLAlchemy URL. Wins when given and not empty.

    Returns
    -------
    str
        ``url``, else ``$SMEARFLOW_DATABASE_URL`` when set and not empty, else
        :data:`DEFAULT_DATABASE_URL`.
    """
    if url:
        return url
    from_env = os.environ.get(DATABASE_URL_ENV, "").strip()
    return from_env or DEFAULT_DATABASE_URL


def _enable_sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.close()


def make_engine(url: str | None = None, **kwargs: Any) -> Engine:
    """Create an engine with the settings smearflow relies on.

    SQLite connections enforce foreign keys (so deleting a slide's fields
    deletes their cells) and wait up to :data:`SQLITE_BUSY_TIMEOUT_S` for a
    lock. PostgreSQL connections are pinged before use, so a connection
    dropped by a database restart is replaced instead of failing a job, and
    give up connecting after :data:`POSTGRES_CONNECT_TIMEOUT_S`.

    Parameters
    ----------
    url : str, optional
        An SQLAlchemy URL; resolved with :func:`resolve_database_url`.
    **kwargs
        Passed on to :func:`sqlalchemy.create_engine`, overriding the defaults.

    Returns
    -------
    sqlalchemy.Engine

    Raises
    ------
    ValueError
        When the URL cannot be parsed.
    """
    url = resolve_database_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"Not a database URL. Received: url={url!r}") from exc
    backend = parsed.get_backend_name()
    options: dict[str, Any] = {}
    if backend == "sqlite":
        options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    elif backend == "postgresql":
        options["pool_pre_ping"] = True
        options["connect_args"] = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S}
    options.update(kwargs)
    engine = create_engine(parsed, **options)
    if backend == "sqlite":
        event.listen(engine, "connect", _enable_sqlite_pragmas)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to ``engine``.

    Objects stay readable after commit (``expire_on_commit=False``) so that a
    caller can use what a :func:`session_scope` returned once it has closed.
    """
    return sessionmaker(bind=engine, expire_on_commit=False)


def session_scope(factory: sessionmaker[Session]):
    """One unit of work: commit when the block ends, roll back when it raises (``sessionmaker.begin()``).

    Parameters
    ----------
    factory : sessionmaker
        From :func:`session_factory`.

    Returns
    -------
    context manager yielding sqlalchemy.orm.Session
    """
    return factory.begin()


def is_transient_database_error(exc: BaseException) -> bool:
    """Whether retrying later may help: the database was unreachable or busy.

    ``OperationalError`` covers refused connections, dropped connections and
    SQLite's "database is locked". SQLite also reports a missing table or
    column as ``OperationalError``; that is a schema problem, not transient.
    """
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError):
        return False
    message = str(exc.orig) if exc.orig is not None else str(exc)
    return not message.startswith("no such ")


@contextmanager
def transient_database_errors() -> Iterator[None]:
    """Re-raise connection failures inside the block as ``TransientError``.

    Raises
    ------
    smearflow.errors.TransientError
        When the block raises an error for which
        :func:`is_transient_database_error` is true; the original error is
        its ``__cause__``. Every other error passes through unchanged.
    """
    try:
        yield
    except DBAPIError as exc:
        if is_transient_database_error(exc):
            reason = exc.orig if exc.orig is not None else exc
            raise TransientError(f"The database is unavailable: {reason}") from exc
        raise
