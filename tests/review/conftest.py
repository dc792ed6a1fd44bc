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
def sqlite_review_db(tmp_path):
    """``(url, session_factory)`` of a migrated SQLite database in ``tmp_path``."""
    from smearflow.db import make_engine, session_factory, upgrade_database

    url = f"sqlite:///{tmp_path / 'review.db'}"
    upgrade_database(url)
    engine = make_engine(url)
    yield url, session_factory(engine)
    engine.dispose()
