

# --- database fixtures (owned by smearflow.db; append other sections, don't edit this one) ---
import os as _db_os
import uuid as _db_uuid

import pytest as _db_pytest

POSTGRES_TEST_URL = _db_os.environ.get(
    "SMEARFLOW_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
"""The PostgreSQL server the integration tests use; each test gets its own schema there."""


@_db_pytest.fixture(scope="session")
def postgres_server_url():
    """``POSTGRES_TEST_URL`` once it has answered; skips the test when it does not."""
    import sqlalchemy as sa

    engine = sa.create_engine(POSTGRES_TEST_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        _db_pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_TEST_URL}: {exc}")
    finally:
        engine.dispose()
    return POSTGRES_TEST_URL


@_db_pytest.fixture(
    params=["sqlite", _db_pytest.param("postgresql", marks=_db_pytest.mark.integration)]
)
def database_url(request, tmp_path):
    """An empty database: a SQLite file, or a fresh PostgreSQL schema dropped afterwards.

    Nothing is migrated; call ``smearflow.db.upgrade_database(database_url)``
    (or use ``migrated_database_url``).
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'smearflow-test.db'}"
        return
    import sqlalchemy as sa

    server_url = request.getfixturevalue("postgres_server_url")
    schema = f"smearflow_test_{_db_uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url)
    try:
        with admin.begin() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = sa.engine.make_url(server_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@_db_pytest.fixture
def migrated_database_url(database_url):
    """``database_url`` upgraded to the newest schema."""
    from smearflow.db import upgrade_database

    upgrade_database(database_url)
    return database_url


@_db_pytest.fixture
def db_engine(migrated_database_url):
    """An engine on a migrated test database, disposed afterwards."""
    from smearflow.db import make_engine

    engine = make_engine(migrated_database_url)
    yield engine
    engine.dispose()


@_db_pytest.fixture
def db_session(db_engine):
    """A session on a migrated test database; the test commits what it needs."""
    from smearflow.db import session_factory

    session = session_factory(db_engine)()
    yield session
    session.rollback()
    session.close()


# --- classifier fixtures (owned by smearflow.classifier / training) ---


@_db_pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A real, untrained 8-class model folder at 32 px: loads in a second, predicts anything."""
    from smearflow import WBC_CLASSES
    from smearflow.classifier.model_folder import write_model_folder
    from smearflow.training.architectures import build_model

    path = tmp_path_factory.mktemp("tiny-model")
    model = build_model("cnn", 32, len(WBC_CLASSES), filters=(4, 8))
    write_model_folder(
        path,
        model,
        config={"architecture": "cnn", "image_size": 32, "arch_params": {"filters": [4, 8]}},
        classes=WBC_CLASSES,
        metrics={"accuracy": 0.125, "macro_f1": 0.1, "note": "untrained test model"},
    )
    return path



# --- shared-data fixture (owned by smearflow.segmentation) ---
from pathlib import Path as _seg_Path

SHARED_DATA_DIR = _seg_Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
"""Real datasets, read-only, beside the repository; absent on most machines."""


@_db_pytest.fixture(scope="session")
def shared_data():
    """Path of ``../shared/data``; tests using it skip when it is absent (mark them ``data``)."""
    path = SHARED_DATA_DIR.resolve()
    if not path.is_dir():
        _db_pytest.skip(f"shared data not found at {path}")
    return path


# --- command-line fixtures (shared by the CLI tests: test_cli, worker, review and other command tests) ---
_CLI_ENVIRONMENT = ("SMEARFLOW_DATABASE_URL", "SMEARFLOW_FLAGS_CONFIG", "SMEARFLOW_REVIEW_TOKEN")
"""Settings of the developer's shell that would change what a command does; cleared for every CLI test."""


@_db_pytest.fixture
def sqlite_db_url(tmp_path):
    """A migrated SQLite database in ``tmp_path``: the one database the CLI and worker tests start from."""
    from smearflow.db import upgrade_database

    url = f"sqlite:///{tmp_path / 'smearflow-cli.db'}"
    upgrade_database(url)
    return url


@_db_pytest.fixture
def cli(monkeypatch):
    """``cli(*args, database_url=None, env=None)``: run ``smearflow`` through Typer's runner.

    The shell's smearflow settings are cleared, output is 200 columns wide, and
    ``--database-url`` is appended when ``database_url`` is given.
    """
    from typer.testing import CliRunner

    from smearflow.cli import app

    for name in _CLI_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()

    def invoke(*args, database_url: str | None = None, env: dict[str, str] | None = None):
        extra = ["--database-url", database_url] if database_url is not None else []
        return runner.invoke(app, [*map(str, args), *extra], env={"COLUMNS": "200", **(env or {})})

    return invoke
