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


def shown_url(url: str) -> str:
    """A database URL fit to print: its password masked."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparseable URL is shown as given, minus anything after '@'
        return url.split("@")[-1]


def database_error_line(error: BaseException, url: str) -> str:
    """A database error as one line a person can act on, naming the (masked) URL."""
    reason = getattr(error, "orig", None) or error
    first_line = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    return f"cannot use the database {shown_url(url)}: {first_line}"


def require_database_file(url: str) -> None:
    """Refuse a SQLite URL whose file does not exist (connecting would create it).

    Raises
    ------
    smearflow.errors.DatabaseNotReadyError
        When the file is missing.
    ValueError
        When the URL cannot be parsed.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from smearflow.errors import DatabaseNotReadyError

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"Not a database URL. Received: url={shown_url(url)!r}") from exc
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():
            raise DatabaseNotReadyError(
                f"no database at {shown_url(url)}: run `smearflow db upgrade` (or `smearflow analyze`) to create it"
            )


def check_database(url: str | None = None) -> None:
    """Make sure a database exists and is at this version's schema, without creating or changing it.

    Raises
    ------
    smearflow.errors.DatabaseNotReadyError
        When the database file does not exist, cannot be reached, has no
        smearflow schema, or is at another revision; the message says what
        to do (``smearflow db upgrade``).
    """
    from sqlalchemy.exc import SQLAlchemyError

    from smearflow.errors import DatabaseNotReadyError

    url = resolve_database_url(url)
    require_database_file(url)
    try:
        current = current_revision(url)
    except (SQLAlchemyError, ValueError) as exc:
        raise DatabaseNotReadyError(database_error_line(exc, url)) from None
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise DatabaseNotReadyError(f"the database {shown_url(url)} has no smearflow schema: run `smearflow db upgrade`")
    raise DatabaseNotReadyError(
        f"the database {shown_url(url)} is at schema revision {current}; this smearflow needs {head}: "
        "run `smearflow db upgrade`"
    )


def head_revision() -> str:
    """The newest revision shipped with this package."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None  # the package always ships at least one revision
    return head
