"""The packaged migrations build exactly the schema the models describe."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from smearflow.db import current_revision, head_revision, make_engine, upgrade_database
from smearflow.db.migrate import alembic_config
from smearflow.db.models import Base


def _diffs(engine):
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_upgrade_from_empty_matches_the_models(database_url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the migrations are found from any working directory
    assert current_revision(database_url) is None
    upgrade_database(database_url)
    assert current_revision(database_url) == head_revision() == "0005"
    upgrade_database(database_url)  # a second run is a no-op
    engine = make_engine(database_url)
    try:
        assert _diffs(engine) == []
        tables = set(sa.inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        # The comparison does see a schema that drifted from the models.
        with engine.begin() as connection:
            connection.execute(sa.text("ALTER TABLE slides DROP COLUMN notes"))
        assert any(diff[0] == "add_column" and diff[3].name == "notes" for diff in _diffs(engine))
    finally:
        engine.dispose()


def test_downgrade_to_base_removes_every_table(database_url):
    upgrade_database(database_url)
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "base")
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()


def test_at_most_one_model_is_active(db_engine):
    insert = sa.text(
        "INSERT INTO model_versions (name, architecture, metrics, created_at, active) "
        "VALUES (:name, 'cnn', '{}', CURRENT_TIMESTAMP, :active)"
    )
    with db_engine.begin() as connection:
        connection.execute(insert, [{"name": "a", "active": True}, {"name": "b", "active": False},
                                    {"name": "c", "active": False}])
    with pytest.raises(sa.exc.IntegrityError):
        with db_engine.begin() as connection:
            connection.execute(insert, {"name": "d", "active": True})
