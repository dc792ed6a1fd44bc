"""Fixtures of the worker tests: a migrated SQLite database, slide results, PostgreSQL and Redis."""

from __future__ import annotations

import uuid

import pytest

REDIS_TEST_URL = "redis://127.0.0.1:6379/9"
"""Redis database of the integration tests (not the default 0)."""


@pytest.fixture
def sqlite_url(sqlite_db_url):
    """A migrated SQLite database (the shared ``sqlite_db_url``)."""
    return sqlite_db_url


@pytest.fixture
def db_factory(sqlite_url):
    """A session factory on :func:`sqlite_url`; the engine is disposed afterwards."""
    from smearflow.db import make_engine, session_factory

    engine = make_engine(sqlite_url)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def pg_url(postgres_server_url):
    """A fresh, migrated PostgreSQL schema (dropped afterwards); skips when PostgreSQL is down."""
    import sqlalchemy as sa

    from smearflow.db import upgrade_database

    schema = f"smearflow_worker_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_server_url)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.engine.make_url(postgres_server_url).update_query_dict({"options": f"-csearch_path={schema}"})
    url = url.render_as_string(hide_password=False)
    try:
        upgrade_database(url)
        yield url
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def redis_url():
    """``REDIS_TEST_URL`` once it answers a PING; skips the test when it does not."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        pytest.skip(f"Redis is not reachable at {REDIS_TEST_URL}: {exc}")
    finally:
        client.close()
    return REDIS_TEST_URL


@pytest.fixture
def any_db_factory(migrated_database_url):
    """A session factory on SQLite and (marked integration) on a fresh PostgreSQL schema."""
    from smearflow.db import make_engine, session_factory

    engine = make_engine(migrated_database_url)
    yield session_factory(engine)
    engine.dispose()
