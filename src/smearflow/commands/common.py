"""Options and helpers shared by every ``smearflow`` command module."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

DatabaseUrl = Annotated[
    Optional[str],
    typer.Option(
        "--database-url",
        envvar="SMEARFLOW_DATABASE_URL",
        help="SQLAlchemy URL; default sqlite:///smearflow.db in the working directory.",
        show_envvar=True,
    ),
]
ModelDir = Annotated[
    Optional[Path], typer.Option("--model", help="Classifier model folder (default: the packaged model).")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
PrecisionOption = Annotated[
    str,
    typer.Option(
        "--precision",
        envvar="SMEARFLOW_INFERENCE_PRECISION",
        help="What the classifier computes in: float32 or bfloat16.",
        show_envvar=True,
    ),
]


def plain_metavars(command) -> None:
    """Name every option's value after the option (``--model MODEL``), not its Python type (``<path>``).

    Options that name their metavar keep it; flags show none.

    Parameters
    ----------
    command : click.Command
        The command line as built by ``typer.main.get_command``; groups are walked.
    """
    for param in command.params:
        if param.param_type_name == "option" and param.metavar is None and not param.is_flag:
            param.metavar = param.name.upper()
        elif param.param_type_name == "argument":
            param.get_usage_pieces = _plain_usage(param)
    for sub in getattr(command, "commands", {}).values():
        plain_metavars(sub)


def _plain_usage(argument):
    """The usage piece of ``argument`` in click's plain form (``PATHS...``, ``[NAME]``), not ``{paths}...``."""
    piece = (argument.metavar or argument.name).upper()
    if not argument.required:
        piece = f"[{piece}]"
    if argument.nargs != 1:
        piece += "..."
    return lambda ctx: [piece]


def setup_logging(verbose: bool = False) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=stderr_console(), show_path=False, show_time=False)],
        force=True,
    )


class _QuietNativeStartup:
    """Import hook: while ``tensorflow`` is first imported, its native libraries' start-up lines are hidden.

    TensorFlow's C++ libraries print to file descriptor 2 as they load, before
    any logging setting applies (``TF_CPP_MIN_LOG_LEVEL`` does not reach
    them); only redirecting the descriptor during that import silences them.
    """

    def find_spec(self, fullname, path, target=None):
        import importlib.util
        import sys

        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; and so that find_spec below finds the real module
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            exec_module = spec.loader.exec_module

            def quietly(module):
                with _native_stderr_silenced():
                    exec_module(module)

            spec.loader.exec_module = quietly
        return spec


def _native_stderr_silenced():
    import os
    from contextlib import contextmanager

    @contextmanager
    def silenced():
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)

    return silenced()


def quiet_native_startup() -> None:
    """Hide TensorFlow's native start-up lines for the rest of this process (the CLI without --verbose)."""
    import os
    import sys

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietNativeStartup) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietNativeStartup())


def progress_wanted(as_json: bool) -> bool:
    """Show progress bars: not with ``--json``, nor when stdout is not a terminal (a pipe, a file, a service)."""
    import sys

    return not as_json and sys.stdout.isatty()


class SlideProgress:
    """Progress of an analysis run: the slides done, and the fields done of the slide being analysed.

    Parameters
    ----------
    n_slides : int
    enabled : bool
        False shows nothing (see :func:`progress_wanted`).
    console : rich.console.Console, optional
        Where to draw; standard error by default.
    """

    def __init__(self, n_slides: int, *, enabled: bool = True, console=None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console or stderr_console(),
            disable=not enabled,
            transient=True,
        )
        self.slides = self.progress.add_task("slides", total=n_slides)
        self.fields = self.progress.add_task("fields", total=None, visible=False)

    def __enter__(self) -> "SlideProgress":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.progress.__exit__(*exc_info)

    def start_slide(self, info) -> None:
        """A slide's fields start (``info``: its :class:`~smearflow.types.SlideInfo`)."""
        self.progress.reset(
            self.fields, total=len(info.field_paths), description=f"slide {info.slide_id}: fields", visible=True
        )

    def field_done(self, field=None) -> None:
        """One field of the current slide is done (called with its result)."""
        self.progress.advance(self.fields)

    def slide_done(self) -> None:
        self.progress.advance(self.slides)


def stderr_console():
    from rich.console import Console

    # soft_wrap: a message stays one line however narrow the terminal (the terminal wraps it, not rich).
    return Console(stderr=True, soft_wrap=True)


def stdout_console():
    from rich.console import Console

    return Console(soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print an error for the user and return the ``Exit`` to raise."""
    stderr_console().print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code=code)


def open_database(database_url: str | None, *, migrate: bool = True):
    """Engine and session factory of the results database, checked before anything heavy loads.

    A command that writes (``migrate=True``) creates the database or brings
    its schema up to date; a read-only command (``migrate=False``) never
    creates or changes anything and says which database is missing or
    behind. Either way a problem ends the command with one line naming the
    database (password masked).
    """
    from sqlalchemy.exc import SQLAlchemyError

    from smearflow.db.engine import make_engine, resolve_database_url, session_factory
    from smearflow.db.migrate import check_database, database_error_line, upgrade_database
    from smearflow.errors import DatabaseNotReadyError

    url = resolve_database_url(database_url)
    try:
        if migrate:
            upgrade_database(url)
        else:
            check_database(url)
        engine = make_engine(url)
    except DatabaseNotReadyError as error:
        raise fail(str(error)) from None
    except (SQLAlchemyError, ValueError, ImportError) as error:
        raise fail(database_error_line(error, url)) from None
    return engine, session_factory(engine)
