"""Deployment commands: worker, beat, watch, enqueue, status, models, db.

The Celery app (and with it the ``SMEARFLOW_*`` settings) is imported inside
each command, so ``smearflow --help`` stays fast and a bad setting is
reported by the command that needs it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from smearflow.commands.common import DatabaseUrl, JsonFlag, fail, open_database, stderr_console, stdout_console

logger = logging.getLogger(__name__)

LogLevel = Annotated[str, typer.Option("--loglevel", "-l", help="DEBUG, INFO, WARNING or ERROR.")]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``smearflow`` app."""
    app.command()(worker)
    app.command()(beat)
    app.command()(watch)
    app.command()(enqueue)
    app.command()(status)
    app.command()(reconcile)

    models_app = typer.Typer(help="Classifier model versions: list, register, activate, history.", no_args_is_help=True)
    models_app.command("list")(models_list)
    models_app.command("register")(models_register)
    models_app.command("activate")(models_activate)
    models_app.command("history")(models_history)
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
        Optional[int],
        typer.Option(
            "--concurrency", "-c",
            help="Slides in flight: processes (prefork; one per GPU) or threads (threads). Default SMEARFLOW_WORKER_CONCURRENCY, else 1.",
        ),
    ] = None,
    pool: Annotated[
        Optional[str],
        typer.Option(
            help="prefork (a process and a model per slide), threads (slides share one process, one model and its "
            "batches) or solo (in this process). Default SMEARFLOW_WORKER_POOL, else prefork."
        ),
    ] = None,
    hostname: Annotated[Optional[str], typer.Option("--hostname", "-n", help="Worker name, e.g. gpu1@%h.")] = None,
    max_tasks_per_child: Annotated[
        Optional[int], typer.Option(help="Replace a worker process after this many tasks (releases memory).")
    ] = None,
    loglevel: LogLevel = "INFO",
):
    """Start a Celery worker (same as ``celery -A smearflow.worker worker -Q ...``).

    Slide workers consume ``slides``; run one process per GPU, or one
    ``--pool threads`` process with several slides in flight that share the
    model's batches. Retraining and benchmarks go to ``training``: give that
    queue its own worker so that a night's training never holds up slides.
    """
    celery_app = _celery_app()
    from smearflow.worker.app import settings_of
    from smearflow.worker.settings import WORKER_POOLS

    settings = settings_of(celery_app)
    try:
        names = settings.queue_names([q.strip() for q in queues.split(",") if q.strip()])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--queues") from None
    concurrency = concurrency if concurrency is not None else settings.worker_concurrency or 1
    if concurrency < 1:
        raise typer.BadParameter(f"must be at least 1. Received: {concurrency}", param_hint="--concurrency")
    pool = pool or settings.worker_pool
    if pool not in WORKER_POOLS:
        raise typer.BadParameter(f"must be one of {list(WORKER_POOLS)}. Received: {pool!r}", param_hint="--pool")
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
    empty_seconds: Annotated[
        float, typer.Option(help="Reject a folder that stays empty this long (moved to the failed folder).")
    ] = 300.0,
    done_dir: Annotated[
        Optional[Path], typer.Option(help="Where analysed slides are moved (default: INBOX/../done).")
    ] = None,
    failed_dir: Annotated[
        Optional[Path], typer.Option(help="Where failed and rejected folders are moved, with error.txt (default: INBOX/../failed).")
    ] = None,
    rescan_seconds: Annotated[
        float, typer.Option(help="Check every inbox folder against the database this often.")
    ] = 300.0,
    polling: Annotated[bool, typer.Option(help="Poll the filesystem (network shares send no events).")] = False,
    database_url: DatabaseUrl = None,
):
    """Watch INBOX: register each complete slide folder as queued and enqueue it once.

    The worker that finishes a slide moves its folder to --done-dir or, with an
    error.txt, to --failed-dir, and records the new path. A folder that is not a
    slide (unreadable, a link, empty, a duplicate slide id) is recorded as
    rejected and moved to --failed-dir at once. Every SMEARFLOW_RECONCILE_INTERVAL_S
    the watcher also sends again slides whose worker or message was lost.
    Stop with Ctrl-C or SIGTERM.
    """
    import signal

    _logging_at_info()
    inbox = Path(os.path.abspath(inbox))
    done_dir = Path(os.path.abspath(done_dir or inbox.parent / "done"))
    failed_dir = Path(os.path.abspath(failed_dir or inbox.parent / "failed"))
    if inbox in (done_dir, failed_dir):
        raise typer.BadParameter("the inbox cannot be the done or failed folder", param_hint="INBOX")
    celery_app = _celery_app()
    from smearflow.worker.app import settings_of
    from smearflow.worker.enqueue import celery_sender, enqueue_slide_folder
    from smearflow.worker.reconcile import reconciler_for
    from smearflow.worker.watcher import InboxScanner, InboxWatcher

    settings = settings_of(celery_app)
    _, factory = open_database(database_url)
    send = celery_sender(celery_app)

    def take(folder: Path):
        outcome = enqueue_slide_folder(
            folder, factory, send, done_dir=done_dir, failed_dir=failed_dir, max_fields=settings.max_fields
        )
        if outcome.action != "enqueued":
            logger.info("slide %s %s: %s (%s)", outcome.slide_id, outcome.action, outcome.reason, folder)
        return outcome

    try:
        scanner = InboxScanner(
            inbox, take, settle_seconds=settle_seconds, empty_seconds=empty_seconds, ignore=(done_dir, failed_dir)
        )
        watcher = InboxWatcher(
            scanner,
            rescan_seconds=rescan_seconds,
            polling=polling,
            reconcile=reconciler_for(dataclasses.replace(settings, database_url=database_url or settings.database_url), celery_app),
            reconcile_seconds=settings.reconcile_interval_s,
        )
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
    reassign: Annotated[
        bool, typer.Option("--reassign", help="Allow a folder to move a stored slide to another patient (recorded).")
    ] = False,
    done_dir: Annotated[Optional[Path], typer.Option(help="Move each folder here once analysed.")] = None,
    failed_dir: Annotated[
        Optional[Path], typer.Option(help="Move each folder here, with error.txt, if it fails or is rejected.")
    ] = None,
    database_url: DatabaseUrl = None,
    as_json: JsonFlag = False,
):
    """Register slide folders as queued and send them to the workers (folders stay in place by default).

    A slide already queued, running or done is skipped unless --force; a failed
    one is enqueued again. A folder that is not a slide, or whose slide id is
    stored for another patient, is rejected (recorded). Exits with status 1 when
    a folder was rejected or could not be enqueued.
    """
    import getpass

    celery_app = _celery_app()
    from smearflow.errors import TransientError
    from smearflow.worker.app import settings_of
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
                done_dir=done_dir,
                failed_dir=failed_dir,
                force=force,
                reassign=reassign,
                actor=getpass.getuser(),
                max_fields=settings_of(celery_app).max_fields,
            )
            rows.append(dataclasses.asdict(outcome))
            failed = failed or outcome.action == "rejected"
        except (ValueError, TransientError) as exc:
            failed = True
            rows.append({"slide_id": None, "folder": str(path), "action": "error", "status": None, "reason": str(exc), "moved_to": None})
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
    limit: Annotated[int, typer.Option(help="Finished slides and rejected folders listed, newest first; 0 lists all.")] = 50,
):
    """Show slides per status, every queued and running slide (age, attempts, holder, stale ones marked),
    the latest finished slides, rejected folders and the broker's queue depth.
    """
    from smearflow.db import lifecycle
    from smearflow.db.engine import session_scope
    from smearflow.worker.settings import WorkerSettings

    try:
        settings = WorkerSettings.from_env()
    except ValueError as exc:
        raise fail(str(exc)) from None
    _, factory = open_database(database_url, migrate=False)
    queue_depth, in_flight = _broker_view(settings)
    with session_scope(factory) as session:
        summary = lifecycle.status_summary(
            session, lease_s=settings.lease_s, stale_queued_s=10 * settings.queued_grace_s, in_flight=in_flight, limit=limit
        )
    summary["queue_depth"] = queue_depth
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
        return
    _print_status(summary)


def _broker_view(settings) -> tuple[int | None, set[str] | None]:
    """The slides queue's depth and the slides with a message, or ``(None, None)`` when the broker cannot be read."""
    from smearflow.errors import TransientError
    from smearflow.worker.reconcile import broker_queue

    queue = broker_queue(settings)
    if queue is None:
        return None, None
    try:
        return queue.depth(), queue.slide_ids_in_flight()
    except TransientError as exc:
        stderr_console().print(f"broker not read: {exc}", highlight=False)
        return None, None


def _print_status(summary: dict) -> None:
    from rich.table import Table

    console = stdout_console()
    counts = Table(title="slides", title_justify="left")
    for name in summary["counts"]:
        counts.add_column(name, justify="right")
    counts.add_row(*(str(n) for n in summary["counts"].values()))
    console.print(counts)
    depth = summary["queue_depth"]
    console.print(f"messages waiting on the slides queue: {'unknown' if depth is None else depth}", highlight=False)
    if summary["slides"]:
        table = Table(title="slides in hand and latest", title_justify="left")
        for column in ("slide", "status", "attempts", "age", "holder", "stale", "error"):
            table.add_column(column)
        for slide in summary["slides"]:
            age = "" if slide["age_s"] is None else f"{slide['age_s']:.0f} s"
            table.add_row(
                slide["slide_id"], slide["status"], str(slide["attempts"]), age, slide["holder"] or "",
                slide["stale"] or "", slide["error"] or "",
            )
        console.print(table)
    if summary["rejected"]:
        table = Table(title="rejected folders", title_justify="left")
        for column in ("folder", "slide", "reason", "moved to", "when"):
            table.add_column(column)
        for row in summary["rejected"]:
            table.add_row(row["folder"], row["slide_id"] or "-", row["reason"], row["moved_to"] or "", row["rejected_at"])
        console.print(table)


def reconcile(database_url: DatabaseUrl = None, as_json: JsonFlag = False):
    """Send again every slide whose worker or message was lost, now (beat and the watcher do it every
    SMEARFLOW_RECONCILE_INTERVAL_S).
    """
    celery_app = _celery_app()
    from smearflow.errors import TransientError
    from smearflow.worker.app import settings_of
    from smearflow.worker.enqueue import celery_sender
    from smearflow.worker.reconcile import broker_queue, limits_of, reconcile_slides

    settings = settings_of(celery_app)
    _, factory = open_database(database_url, migrate=False)
    try:
        report = reconcile_slides(factory, broker_queue(settings), celery_sender(celery_app), limits_of(settings))
    except TransientError as exc:
        raise fail(str(exc), code=1) from None
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    stdout_console().print(
        f"sent again: {', '.join(report.resent) or 'none'}; given up: {', '.join(report.given_up) or 'none'}"
        + ("" if report.broker_checked else " (the broker was not read: queued slides not checked)"),
        highlight=False,
    )


def models_list(database_url: DatabaseUrl = None, as_json: JsonFlag = False):
    """List the registered model versions; the active one is what the workers use.

    Each version shows the outcome of the retraining that made it (when one did), the
    figure it was judged on against its baseline, and why; `models history` lists every run.
    """
    from smearflow.db import repository, runs
    from smearflow.db.engine import session_scope

    _, factory = open_database(database_url, migrate=False)
    with session_scope(factory) as session:
        produced = {row["model"]: row for row in runs.model_history(session, limit=0) if row["kind"] == "retraining"}
        rows = [_version_row(v, produced.get(v.name)) for v in repository.list_model_versions(session)]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        stderr_console().print("no model versions registered (smearflow models register PATH)")
        return
    from rich.table import Table

    table = Table(title="model versions", title_justify="left")
    for column in ("name", "active", "architecture", "accuracy", "macro-F1", "created", "outcome", "vs baseline", "reason", "path"):
        table.add_column(column)
    for row in rows:
        versus = "" if row["candidate"] is None else f"{_figure(row['candidate'])} vs {_figure(row['baseline'])}"
        table.add_row(
            row["name"], "*" if row["active"] else "", row["architecture"], _figure(row["accuracy"]),
            _figure(row["macro_f1"]), row["created_at"] or "", row["outcome"] or "", versus, row["reason"] or "",
            row["path"] or "(pruned)",
        )
    stdout_console().print(table)


def _version_row(version, run: dict | None) -> dict:
    run = run or {}
    return {
        "name": version.name,
        "architecture": version.architecture,
        "active": version.active,
        "created_at": version.created_at.isoformat() if version.created_at else None,
        "path": None if version.pruned_at else version.path,
        "accuracy": (version.metrics or {}).get("accuracy"),
        "macro_f1": (version.metrics or {}).get("macro_f1"),
        "outcome": run.get("outcome"),
        "metric": run.get("metric"),
        "candidate": run.get("candidate"),
        "baseline": run.get("baseline"),
        "baseline_model": run.get("baseline_model"),
        "reason": run.get("reason"),
    }


def models_history(
    database_url: DatabaseUrl = None,
    as_json: JsonFlag = False,
    limit: Annotated[int, typer.Option(help="Rows listed, newest first; 0 lists all.")] = 50,
):
    """List retraining runs, benchmark runs and activations: when, outcome, figures, reason, who."""
    from smearflow.db import runs
    from smearflow.db.engine import session_scope

    _, factory = open_database(database_url, migrate=False)
    with session_scope(factory) as session:
        rows = runs.model_history(session, limit=limit)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        stderr_console().print("no retraining, benchmark or activation recorded yet")
        return
    from rich.table import Table

    table = Table(title="model history", title_justify="left")
    for column in ("when", "what", "outcome", "model", "vs baseline", "by", "attempts", "reason"):
        table.add_column(column)
    for row in rows:
        versus = ""
        if row["candidate"] is not None:
            versus = f"{row['metric']} {_figure(row['candidate'])} vs {_figure(row['baseline'])} ({row['baseline_model']})"
        elif row["kind"] == "activation" and row["baseline_model"]:
            versus = f"replaced {row['baseline_model']}"
        table.add_row(
            row["at"] or "", row["kind"], row["outcome"] or "", row["model"] or "", versus, row["actor"] or "",
            "" if row["attempts"] is None else str(row["attempts"]), row["reason"] or "",
        )
    stdout_console().print(table)


def _figure(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def models_register(
    path: Annotated[Path, typer.Argument(help="A model folder (model.keras, config.json, classes.json, metrics.json).")],
    activate: Annotated[bool, typer.Option("--activate", help="Also make it the active model.")] = False,
    reason: Annotated[str, typer.Option(help="Why it is activated (recorded with --activate).")] = "registered and activated by hand",
    database_url: DatabaseUrl = None,
):
    """Register a model folder as a model version (named <architecture>-<weights hash>)."""
    import getpass

    from smearflow.db import runs
    from smearflow.db.engine import session_scope
    from smearflow.errors import BadModelError
    from smearflow.worker.nightly import register_model_folder

    _, factory = open_database(database_url)
    try:
        with session_scope(factory) as session:
            version = register_model_folder(session, path)
            if activate:
                runs.activate(session, version.name, actor=getpass.getuser(), reason=reason)
            name = version.name
    except BadModelError as exc:
        stderr_console().print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(code=1) from None
    stdout_console().print(f"registered {name}{' (active)' if activate else ''}", highlight=False)


def models_activate(
    name: Annotated[Optional[str], typer.Argument(help="A model version name from `smearflow models list`.")] = None,
    packaged: Annotated[bool, typer.Option("--packaged", help="Return to the model shipped with smearflow.")] = False,
    reason: Annotated[str, typer.Option(help="Why (recorded with who and when).")] = "activated by hand",
    database_url: DatabaseUrl = None,
):
    """Make NAME (or, with --packaged, the shipped model) the active model: workers load it for their next slide.

    The activation is recorded with who, when and why (`smearflow models history`). Workers
    started with SMEARFLOW_MODEL_DIR keep using that folder.
    """
    import getpass

    from smearflow.db import runs
    from smearflow.db.engine import session_scope
    from smearflow.worker.nightly import packaged_model_dir, register_model_folder

    if (name is None) == (not packaged):
        raise typer.BadParameter("give a model version NAME or --packaged, not both")
    _, factory = open_database(database_url)
    try:
        with session_scope(factory) as session:
            if packaged:
                name = register_model_folder(session, packaged_model_dir()).name
            runs.activate(session, name, actor=getpass.getuser(), reason=reason)
    except (LookupError, ValueError) as exc:
        stderr_console().print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(code=1) from None
    stdout_console().print(f"active model: {name}", highlight=False)


def db_upgrade(database_url: DatabaseUrl = None):
    """Create the database or run the Alembic migrations up to the newest schema (safe to repeat)."""
    from smearflow.db import current_revision, resolve_database_url

    url = resolve_database_url(database_url)
    open_database(url, migrate=True)[0].dispose()
    stdout_console().print(f"database at revision {current_revision(url)}", highlight=False)


def db_current(database_url: DatabaseUrl = None):
    """Print the database's schema revision and the newest one shipped (creates nothing)."""
    from sqlalchemy.exc import SQLAlchemyError

    from smearflow.db import current_revision, head_revision, resolve_database_url
    from smearflow.db.migrate import database_error_line, require_database_file
    from smearflow.errors import DatabaseNotReadyError

    url = resolve_database_url(database_url)
    try:
        require_database_file(url)
        current = current_revision(url)
    except DatabaseNotReadyError as error:
        raise fail(str(error)) from None
    except (SQLAlchemyError, ValueError) as error:
        raise fail(database_error_line(error, url)) from None
    stdout_console().print(f"current: {current}  head: {head_revision()}", highlight=False)
