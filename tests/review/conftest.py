"""Fixtures of the review tests: migrated databases (slides are stored with ``review_testkit``)."""

import pytest


@pytest.fixture
def review_db(migrated_database_url):
    """``(url, session_factory)`` of a migrated, empty test database (SQLite, and PostgreSQL when marked)."""
    from smearflow.db import make_engine, session_factory

    engine = make_engine(migrated_database_url)
    yield migrated_database_url, session_factory(engine)
    engine.dispose()


@pytest.fixture
def sqlite_review_db(sqlite_db_url):
    """``(url, session_factory)`` of the shared migrated SQLite database (``sqlite_db_url``)."""
    from smearflow.db import make_engine, session_factory

    engine = make_engine(sqlite_db_url)
    yield sqlite_db_url, session_factory(engine)
    engine.dispose()
