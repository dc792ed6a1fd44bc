"""The deployment commands through Typer's runner (no broker: an in-memory app stands in)."""

import json

import pytest

from smearflow.commands import deployment
from smearflow.worker.app import make_celery_app
from smearflow.worker.settings import WorkerSettings
from worker_testdata import write_slide


@pytest.fixture
def celery_app(monkeypatch):
    """An app on the in-memory broker; captures what is sent, and the argv of worker/beat."""
    memory = make_celery_app(WorkerSettings(broker_url="memory://", queue_prefix="cli-"))
    memory.sent = []
    memory.argv = []
    memory.send_task = lambda name, **kwargs: memory.sent.append((name, kwargs))
    memory.worker_main = memory.argv.append
    memory.start = memory.argv.append
    monkeypatch.setattr(deployment, "_celery_app", lambda: memory)
    return memory


@pytest.fixture
def run(cli, sqlite_url, monkeypatch):
    """The shared ``cli`` on the migrated database, with an in-memory broker."""
    monkeypatch.setenv("SMEARFLOW_BROKER_URL", "memory://")  # status reads no real broker

    def invoke(*args, db=True):
        return cli(*args, database_url=sqlite_url if db else None)

    return invoke


def test_enqueue_then_status(tmp_path, run, celery_app):
    a, b = write_slide(tmp_path / "A"), write_slide(tmp_path / "B")
    result = run("enqueue", str(a), str(b), "--done-dir", str(tmp_path / "done"), "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["slide_id"], r["action"]) for r in rows] == [("A", "enqueued"), ("B", "enqueued")]
    name, kwargs = celery_app.sent[0]
    assert name == "smearflow.analyze_slide" and kwargs["queue"] == "cli-slides"
    assert kwargs["kwargs"] == {"done_dir": str(tmp_path / "done"), "failed_dir": None}

    again = run("enqueue", str(a))
    assert again.exit_code == 0 and "skipped" in again.output and "already queued" in again.output
    assert len(celery_app.sent) == 2

    status = run("status", "--json")
    summary = json.loads(status.output)
    assert summary["counts"] == {"queued": 2, "running": 0, "done": 0, "partial": 0, "failed": 0, "rejected": 0}
    assert summary["queue_depth"] is None  # the in-memory broker cannot be read
    assert {s["slide_id"] for s in summary["slides"]} == {"A", "B"}
    assert len(json.loads(run("status", "--json", "--limit", "1").output)["slides"]) == 2  # slides in hand always show
    table = run("status")
    assert table.exit_code == 0 and "queued" in table.output and "latest" in table.output


def test_enqueue_of_a_missing_folder_fails(tmp_path, run, celery_app):
    result = run("enqueue", str(tmp_path / "nope"), "--json")
    assert result.exit_code == 1
    assert json.loads(result.output)[0]["action"] == "error"


def test_enqueue_reports_an_unreachable_broker(tmp_path, run, celery_app):
    def refuse(name, **kwargs):
        raise ConnectionError("Connection refused")

    celery_app.send_task = refuse
    result = run("enqueue", str(write_slide(tmp_path / "C")), "--json")
    assert result.exit_code == 1 and "broker is unavailable" in json.loads(result.output)[0]["reason"]


def test_enqueue_rejects_a_slide_of_another_patient_unless_reassigned(tmp_path, run, celery_app):
    assert run("enqueue", str(write_slide(tmp_path / "a" / "S", slide_json={"patient_id": "P-1"}))).exit_code == 0
    run("enqueue", str(write_slide(tmp_path / "failed-copy" / "x", slide_json={"slide_id": "S"})))  # in hand: rejected
    other = write_slide(tmp_path / "b" / "S", slide_json={"patient_id": "P-2"})
    refused = run("enqueue", str(other), "--force", "--json")
    assert refused.exit_code == 1
    (row,) = json.loads(refused.stdout)
    assert row["action"] == "rejected" and "stored for patient P-1" in row["reason"]
    assert run("enqueue", str(other), "--force", "--reassign").exit_code == 0
    status = json.loads(run("status", "--json").stdout)
    assert status["counts"]["rejected"] == 2
    assert {r["slide_id"] for r in status["rejected"]} == {"S"}
    table = run("status").output
    assert "rejected folders" in table and "stored for patient P-1" in table


def test_reconcile_sends_a_slide_whose_lease_expired(tmp_path, run, celery_app, sqlite_url):
    from datetime import timedelta

    from smearflow.db import lifecycle, make_engine, session_factory, session_scope

    run("enqueue", str(write_slide(tmp_path / "S-R")))
    engine = make_engine(sqlite_url)
    with session_scope(session_factory(engine)) as session:
        slide = lifecycle.claim_slide(session, "S-R", 3, task_id="t", holder="gone pid 1")
        slide.heartbeat_at = slide.started_at - timedelta(hours=1)
    engine.dispose()
    stale = json.loads(run("status", "--json").stdout)["slides"][0]
    assert (stale["holder"], stale["stale"][:17]) == ("gone pid 1", "no heartbeat for ")
    result = run("reconcile", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"resent": ["S-R"], "given_up": [], "broker_checked": False}
    assert [name for name, _ in celery_app.sent] == ["smearflow.analyze_slide"] * 2
    assert "sent again: none" in run("reconcile").output


def test_models_register_list_activate(run, tiny_model_dir):
    registered = run("models", "register", str(tiny_model_dir), "--activate")
    assert registered.exit_code == 0 and "(active)" in registered.output
    listed = json.loads(run("models", "list", "--json").output)
    assert len(listed) == 1 and listed[0]["active"] and listed[0]["name"].startswith("cnn-")
    assert listed[0]["accuracy"] == 0.125 and listed[0]["path"] == str(tiny_model_dir.resolve())
    assert listed[0]["name"] in run("models", "list").output
    assert run("models", "activate", listed[0]["name"]).exit_code == 0


def test_activations_are_recorded_with_who_when_and_why_and_history_lists_them(run, tiny_model_dir, monkeypatch):
    import getpass

    monkeypatch.setattr(getpass, "getuser", lambda: "tech-9")
    assert "no retraining, benchmark or activation" in run("models", "history").output
    run("models", "register", str(tiny_model_dir), "--activate", "--reason", "validated on our fields")
    back = run("models", "activate", "--packaged", "--reason", "rollback after drift")
    assert back.exit_code == 0, back.output
    rows = json.loads(run("models", "history", "--json").stdout)
    assert [(r["kind"], r["actor"], r["reason"]) for r in rows] == [
        ("activation", "tech-9", "rollback after drift"), ("activation", "tech-9", "validated on our fields")
    ]
    assert rows[0]["baseline_model"] == rows[1]["model"]  # what the rollback replaced
    listed = {r["name"]: r for r in json.loads(run("models", "list", "--json").stdout)}
    assert listed[rows[0]["model"]]["active"] and len(listed) == 2
    assert "rollback after drift" in run("models", "history").output
    assert run("models", "activate").exit_code == 2  # neither a name nor --packaged
    assert run("models", "activate", rows[0]["model"], "--packaged").exit_code == 2


def test_models_errors(run, tmp_path):
    assert run("db", "upgrade").exit_code == 0
    assert "no model versions registered" in run("models", "list").output
    unknown = run("models", "activate", "cnn-nope")
    assert unknown.exit_code == 1 and "No model version is registered" in unknown.output
    bad = run("models", "register", str(tmp_path))
    assert bad.exit_code == 1 and "model folder is missing" in bad.output


def test_db_upgrade_and_current(tmp_path, cli):
    missing = cli("db", "current", database_url=f"sqlite:///{tmp_path}/new.db")
    assert missing.exit_code == 2 and "no database at sqlite:///" in missing.output
    assert not (tmp_path / "new.db").exists()
    result = cli("db", "upgrade", database_url=f"sqlite:///{tmp_path}/new.db")
    assert result.exit_code == 0 and "revision" in result.output
    current = cli("db", "current", database_url=f"sqlite:///{tmp_path}/new.db")
    assert current.exit_code == 0 and "current:" in current.output and "head:" in current.output


@pytest.mark.parametrize("command", [["status"], ["models", "list"], ["counts"], ["reconcile"]])
def test_read_only_commands_never_create_or_migrate_a_database(tmp_path, command, celery_app, monkeypatch, cli):
    import sqlalchemy as sa

    monkeypatch.setenv("SMEARFLOW_BROKER_URL", "memory://")
    missing = cli(*command, database_url=f"sqlite:///{tmp_path}/none.db")
    assert missing.exit_code == 2 and "no database at sqlite:///" in missing.output
    assert "smearflow db upgrade" in missing.output and not (tmp_path / "none.db").exists()
    engine = sa.create_engine(f"sqlite:///{tmp_path}/old.db")
    with engine.begin() as connection:  # a database at an older schema
        connection.execute(sa.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        connection.execute(sa.text("INSERT INTO alembic_version VALUES ('0001')"))
    engine.dispose()
    behind = cli(*command, database_url=f"sqlite:///{tmp_path}/old.db")
    assert behind.exit_code == 2 and "is at schema revision 0001; this smearflow needs" in behind.output
    engine = sa.create_engine(f"sqlite:///{tmp_path}/old.db")
    assert sa.inspect(engine).get_table_names() == ["alembic_version"]  # nothing migrated
    engine.dispose()


def test_worker_translates_logical_queue_names(run, celery_app):
    result = run("worker", "-Q", "slides,training", "-c", "2", "--pool", "solo", "-n", "gpu1@%h", "--max-tasks-per-child", "50", db=False)
    assert result.exit_code == 0, result.output
    assert celery_app.argv == [[
        "worker", "--queues=cli-slides,cli-training", "--concurrency=2", "--pool=solo", "--loglevel=INFO",
        "--hostname=gpu1@%h", "--max-tasks-per-child=50",
    ]]


def test_worker_rejects_unknown_queues_and_bad_concurrency(run, celery_app):
    assert run("worker", "-Q", "gpu", db=False).exit_code == 2
    assert run("worker", "-c", "0", db=False).exit_code == 2
    assert celery_app.argv == []


def test_beat_passes_its_schedule_file(run, celery_app, tmp_path):
    result = run("beat", "--schedule-file", str(tmp_path / "beat.db"), db=False)
    assert result.exit_code == 0
    assert celery_app.argv == [["beat", f"--schedule={tmp_path / 'beat.db'}", "--loglevel=INFO"]]


def test_watch_refuses_an_inbox_that_is_its_own_done_folder(run, tmp_path, celery_app):
    result = run("watch", str(tmp_path / "in"), "--done-dir", str(tmp_path / "in"))
    assert result.exit_code == 2


def test_watch_rejects_a_negative_settle_time(run, tmp_path, celery_app):
    assert run("watch", str(tmp_path / "in"), "--settle-seconds", "-1").exit_code == 2


def test_a_bad_setting_is_reported_by_the_command(monkeypatch, run):
    import sys

    monkeypatch.setenv("SMEARFLOW_MAX_ATTEMPTS", "many")
    monkeypatch.delitem(sys.modules, "smearflow.worker", raising=False)
    monkeypatch.delitem(sys.modules, "smearflow.worker.app", raising=False)
    result = run("worker", db=False)
    assert result.exit_code == 2 and "SMEARFLOW_MAX_ATTEMPTS must be an integer" in result.output
