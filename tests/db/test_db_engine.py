"""Engines, sessions, URL resolution and the translation of connection failures."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from smearflow.db import (
    DEFAULT_DATABASE_URL,
    is_transient_database_error,
    make_engine,
    resolve_database_url,
    session_factory,
    session_scope,
    transient_database_errors,
)
from smearflow.errors import TransientError


def test_resolve_database_url_prefers_argument_then_environment(monkeypatch):
    monkeypatch.delenv("SMEARFLOW_DATABASE_URL", raising=False)
    assert resolve_database_url() == DEFAULT_DATABASE_URL == "sqlite:///smearflow.db"
    monkeypatch.setenv("SMEARFLOW_DATABASE_URL", "  ")
    assert resolve_database_url() == DEFAULT_DATABASE_URL
    monkeypatch.setenv("SMEARFLOW_DATABASE_URL", "sqlite:///from-env.db")
    assert resolve_database_url() == "sqlite:///from-env.db"
    assert resolve_database_url("sqlite:///arg.db") == "sqlite:///arg.db"


def test_make_engine_sqlite_enforces_foreign_keys_and_waits_for_locks(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.connect() as connection:
            assert connection.execute(sa.text("PRAGMA foreign_keys")).scalar() == 1
            assert connection.execute(sa.text("PRAGMA busy_timeout")).scalar() == 30000
    finally:
        engine.dispose()


def test_make_engine_uses_the_environment_when_no_url(monkeypatch, tmp_path):
    monkeypatch.setenv("SMEARFLOW_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    engine = make_engine()
    assert engine.url.database == str(tmp_path / "env.db")
    engine.dispose()


def test_make_engine_postgres_pings_before_use():
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert engine.pool._pre_ping
    engine.dispose()


def test_make_engine_rejects_a_bad_url():
    with pytest.raises(ValueError, match="Received: url='not a url'"):
        make_engine("not a url")


def test_session_scope_commits_or_rolls_back(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE t (x INTEGER)"))
    factory = session_factory(engine)
    with session_scope(factory) as session:
        session.execute(sa.text("INSERT INTO t VALUES (1)"))
    with pytest.raises(RuntimeError):
        with session_scope(factory) as session:
            session.execute(sa.text("INSERT INTO t VALUES (2)"))
            raise RuntimeError("boom")
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT x FROM t")).scalars().all() == [1]
    engine.dispose()


def test_unreachable_database_becomes_transient_error():
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    try:
        with pytest.raises(TransientError, match="database is unavailable") as caught:
            with transient_database_errors():
                engine.connect()
        assert isinstance(caught.value.__cause__, OperationalError)
    finally:
        engine.dispose()


def test_schema_errors_and_other_errors_are_not_transient(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with pytest.raises(OperationalError, match="no such table") as caught:
            with transient_database_errors(), engine.connect() as connection:
                connection.execute(sa.text("SELECT * FROM missing"))
        assert not is_transient_database_error(caught.value)
        with pytest.raises(KeyError):
            with transient_database_errors():
                raise KeyError("not a database error")
    finally:
        engine.dispose()


def test_invalidated_connection_is_transient():
    error = sa.exc.DBAPIError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)
    assert is_transient_database_error(error)
    assert not is_transient_database_error(ValueError("x"))
