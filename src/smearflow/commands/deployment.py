"""Deployment commands: worker, beat, watch, enqueue, status, models, db.

The Celery app (and with it the ``SMEARFLOW_*`` settings) is imported inside
each command, so ``smearflow --help`` stays fast and a bad setting is
reported by the command that needs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from smearflow.commands.common import DatabaseUrl, JsonFlag, open_database, stderr_console, stdout_console

LogLevel = Annotated[str, typer.Option("--loglevel", "-l", help="DEBUG, INFO, WARNING or ERROR.")]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``smearflow`` app."""
    app.command()(worker)
    app.command()(beat)
    app.command()(watch)
    app.command()(enqueue)
    app.command()(status)

    models_app = typer.Typer(help="Classifier model versions: list, register, activate.", no_args_is_help=True)
    models_app.command("list")(models_list)
    models_app.command("register")(models_register)
    models_app.command("activate")(models_activate)
    app.add_typer(models_app, name="models")

    db_app = typer.Typer(help="The results database schema.", no_args_is_help=True)
    db_app.command("upgrade")(db_upgrade)
    db_app.command("current")(db_current)
    app.add_typer(db_app, name="db")


def _celery_app():
    """The configured Celery app; a bad ``SMEARFLOW_*`` setting ends the command with its message."""
    try:
        from smearflow.worker import app
    except ValueError as exc:
        stderr_console().print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(code=2) from None
    return app


def _logging_at_info() -> None:
    import logging

    # Long-running services report what they do without --verbose.
    logging.getLogger("smearflow").setLevel(logging.INFO)


def worker(
    queues: Annotated[
        str, typer.Option("--queues", "-Q", help="Comma-separated queues to consume: slides, training.")
    ] = "slides",
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", help="Worker processes; one per GPU for slides.")
    ] = 1,
    pool: Annotated[str, typer.Option(help="prefork (one process per slide) or solo (in this process).")] = "prefork",
    hostname: Annotated[Optional[str], typer.Option("--hostname", "-n", help="Worker name, e.g. gpu1@%h.")] = None,
    max_tasks_per_child: Annotated[
        Optional[int], typer.Option(help="Replace a worker process after this many tasks (releases memory).")
    ] = None,
    loglevel: LogLevel = "INFO",
):
    """Start a Celery worker (same as ``celery -A smearflow.worker worker -Q ...``).

    Slide workers consume ``slides``; run one process per GPU. Retraining and
    benchmarks go to ``training``: give that queue its own worker so that a
    night's training never holds up slides.
    """
    celery_app = _celery_app()
    from smearflow.worker.app import settings_of

    try:
        names = settings_of(celery_app).queue_names([q.strip() for q in queues.split(",") if q.strip()])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--queues") from None
    if concurrency < 1:
        raise typer.BadParameter(f"must be at least 1. Received: {concurrency}", param_hint="--concurrency")
    argv = ["worker", f"--queues={','.join(names)}", f"--concurrency={concurrency}", f"--pool={pool}", f"--loglevel={loglevel}"]
    if hostname:
        argv.append(f"--hostname={hostname}")
    if max_tasks_per_child:
        argv.append(f"--max-tasks-per-child={max_tasks_per_child}")
    celery_app.worker_main(argv)


def beat(
    schedule_file: Annotated[
        Path, typer.Option("--schedule-file", help="Where beat keeps the last run times (one beat per deployment).")
    ] = Path("celerybeat-schedule"),
    loglevel: LogLevel = "INFO",
):
    """Start Celery beat: nightly retraining and re-benchmarking (``SMEARFLOW_RETRAIN_CRON``, ``SMEARFLOW_BENCHMARK_CRON``)."""
    celery_app = _celery_app()
    celery_app.start(["beat", f"--schedule={schedule_file}", f"--loglevel={loglevel}"])


def watch(
    inbox: Annotated[Path, typer.Argument(help="The folder slide folders are dropped into.")],
    settle_seconds: Annotated[
        float, typer.Option(help="Take a folder without slide.json once unchanged this long.")
    ] = 30.0,
    done_dir: Annotated[
        Optional[Path], typer.Option(help="Where analysed slides are moved (default: INBOX/../done).")
    ] = None,
    failed_dir: Annotated[
        Optional[Path], typer.Option(help="Where failed slides are moved, with error.txt (default: INBOX/../failed).")
    ] = None,
    rescan_seconds: Annotated[
        float, typer.Option(help="Check every inbox folder against the database this often.")
    ] = 300.0,
    polling: Annotated[bool, typer.Option(help="Poll the filesystem (network shares send no events).")] = False,
    database_url: DatabaseUrl = None,
):
    """Watch INBOX: register each complete slide folder as queued and enqueue it once.

    The worker that finishes a slide moves its folder to --done-dir or, with an
    error.txt, to --failed-dir, and records the new path. Stop with Ctrl-C or SIGTERM.
    """
    import signal

    _logging_at_info()
    inbox = inbox.resolve()
    done_dir = (done_dir or inbox.parent / "done").resolve()
    failed_dir = (failed_dir or inbox.parent / "failed").resolve()
    if inbox in (done_dir, failed_dir):
        raise typer.BadParameter("the inbox cannot be the done or failed folder", param_hint="INBOX")
    celery_app = _celery_app()
    from smearflow.worker.enqueue import celery_sender, enqueue_slide_folder
    from smearflow.worker.watcher import InboxScanner, InboxWatcher

    _, factory = open_database(database_url)
    send = celery_sender(celery_app)

    def take(folder: Path):
        outcome = enqueue_slide_folder(folder, factory, send, done_dir=done_dir, failed_dir=failed_dir)
        if outcome.action == "skipped":
            import logging

            logging.getLogger(__name__).info("%s: slide %s not enqueued: %s", folder, outcome.slide_id, outcome.reason)
        return outcome

    try:
        scanner = InboxScanner(inbox, take, settle_seconds=settle_seconds, ignore=(done_dir, failed_dir))
        watcher = InboxWatcher(scanner, rescan_seconds=rescan_seconds, polling=polling)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: watcher.request_stop())
    watcher.run()


def enqueue(
    paths: Annotated[list[Path], typer.Argument(help="Slide folders.")],
    force: Annotated[
        bool, typer.Option("--force", help="Enqueue even slides already queued, running or done (re-analysis).")
    ] = False,
    done_dir: Annotated[Optional[Path], typer.Option(help="Move each folder here once analysed.")] = None,
    failed_dir: Annotated[Optional[Path], typer.Option(help="Move each folder here, with error.txt, if it fails.")] = None,
    database_url: DatabaseUrl = None,
    as_json: JsonFlag = False,
):
    """Register slide folders as queued and send them to the workers (folders stay in place by default).

    A slide already queued, running or done is skipped unless --force; a failed
    one is enqueued again. Exits with status 1 when a folder could not be enqueued.
    """
    celery_app = _celery_app()
    from smearflow.errors import TransientError
    from smearflow.worker.enqueue import celery_sender, enqueue_slide_folder

    _, factory = open_database(database_url)
    send = celery_sender(celery_app)
    rows, failed = [], False
    for path in paths:
        try:
            outcome = enqueue_slide_folder(
                path,
                factory,
                send,
                done_dir=done_dir.resolve() if done_dir else None,
                failed_dir=failed_dir.resolve() if failed_dir else None,
                force=force,
            )
            rows.append({**outcome.__dict__})
        except (ValueError, TransientError) as exc:
            failed = True
            rows.append({"slide_id": None, "folder": str(path), "action": "error", "status": None, "reason": str(exc)})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        from rich.table import Table

        table = Table(title="enqueue", title_justify="left")
        for column in ("slide", "action", "status", "folder", "note"):
            table.add_column(column)
        for row in rows:
            table.add_row(row["slide_id"] or "-", row["action"], row["status"] or "-", row["folder"], row["reason"] or "")
        stdout_console().print(table)
    if failed:
        raise typer.Exit(code=1)


def status(
    database_url: DatabaseUrl = None,
    as_json: JsonFlag = False,
    limit: Annotated[int, typer.Option(help="Slides listed, most recently updated first; 0 lists all.")] = 50,
):
    """Show how many slides are queued, running, done and failed, and the latest slides."""
    from smearflow.db import repository
    from smearflow.db.engine import session_scope

    _, factory = open_database(database_url)
    with session_scope(factory) as session:
        summary = repository.status_summary(session)
    if limit > 0:
        summary["slides"] = summary["slides"][:limit]
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    from rich.table import Table

    console = stdout_console()
    counts = Table(title="slides", title_justify="left")
    for name in summary["counts"]:
        counts.add_column(name, justify="right")
    counts.add_row(*(str(n) for n in summary["counts"].values()))
    console.print(counts)
    if summary["slides"]:
        table = Table(title="latest", title_justify="left")
        for column in ("slide", "status", "attempts", "updated", "error"):
            table.add_column(column)
        for slide in summary["slides"]:
            table.add_row(slide["slide_id"], slide["status"], str(slide["attempts"]), slide["updated_at"] or "", slide["error"] or "")
        console.print(table)


def models_list(database_url: DatabaseUrl = None, as_json: JsonFlag = False):
    """List the registered model versions; the active one is what the workers use."""
    from smearflow.db import repository
    from smearflow.db.engine import session_scope

    _, factory = open_database(database_url)
    with session_scope(factory) as session:
        rows = [
            {
                "name": v.name,
                "architecture": v.architecture,
                "active": v.active,
                "created_at": v.created_at.isoformat() if v.created_at else None,
                "path": v.path,
                "accuracy": (v.metrics or {}).get("accuracy"),
                "macro_f1": (v.metrics or {}).get("macro_f1"),
            }
            for v in repository.list_model_versions(session)
        ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        stderr_console().print("no model versions registered (smearflow models register PATH)")
        return
    from rich.table import Table

    table = Table(title="model versions", title_justify="left")
    for column in ("name", "active", "architecture", "accuracy", "macro-F1", "created", "path"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"],
            "*" if row["active"] else "",
            row["architecture"],
            _figure(row["accuracy"]),
            _figure(row["macro_f1"]),
            row["created_at"] or "",
            row["path"] or "",
        )
    stdout_console().print(table)


def _figure(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def models_register(
    path: Annotated[Path, typer.Argument(help="A model folder (model.keras, config.json, classes.json, metrics.json).")],
    activate: Annotated[bool, typer.Option("--activate", help="Also make it the active model.")] = False,
    database_url: DatabaseUrl = None,
):
    """Register a model folder as a model version (named <architecture>-<weights hash>)."""
    from smearflow.db import repository
    from smearflow.db.engine import session_scope
    from smearflow.errors import BadModelError
    from smearflow.worker.nightly import register_model_folder

    _, factory = open_database(database_url)
    try:
        with session_scope(factory) as session:
            version = register_model_folder(session, path)
            if activate:
                repository.activate_model_version(session, version.name)
            name = version.name
    except BadModelError as exc:
        stderr_console().print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(code=1) from None
    stdout_console().print(f"registered {name}{' (active)' if activate else ''}", highlight=False)


def models_activate(
    name: Annotated[str, typer.Argument(help="A model version name from `smearflow models list`.")],
    database_url: DatabaseUrl = None,
):
    """Make NAME the active model: workers load it for their next slide.

    Workers started with SMEARFLOW_MODEL_DIR keep using that folder.
    """
    from smearflow.db import repository
    from smearflow.db.engine import session_scope

    _, factory = open_database(database_url)
    try:
        with session_scope(factory) as session:
            repository.activate_model_version(session, name)
    except LookupError as exc:
        stderr_console().print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(code=1) from None
    stdout_console().print(f"active model: {name}", highlight=False)


def db_upgrade(database_url: DatabaseUrl = None):
    """Run the Alembic migrations up to the newest schema (safe to repeat)."""
    from smearflow.db import current_revision, resolve_database_url, upgrade_database

    url = resolve_database_url(database_url)
    upgrade_database(url)
    stdout_console().print(f"database at revision {current_revision(url)}", highlight=False)


def db_current(database_url: DatabaseUrl = None):
    """Print the database's schema revision and the newest one shipped."""
    from smearflow.db import current_revision, head_revision, resolve_database_url

    url = resolve_database_url(database_url)
    stdout_console().print(f"current: {current_revision(url)}  head: {head_revision()}", highlight=False)
