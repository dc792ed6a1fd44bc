"""Moving finished slide folders out of the inbox: ``done/`` and ``failed/``.

The worker that finished a slide moves its folder (it alone knows the
outcome), then records the new path in the database. A folder is moved with
one ``rename`` when the destination is on the same filesystem (the default
``INBOX/../done`` is), so the watcher never sees half a folder.
"""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)

ERROR_FILE = "error.txt"
"""Written into a failed slide's folder; ignored as a field by ``read_slide_folder``."""


def unique_destination(dest_dir: str | Path, name: str) -> Path:
    """``dest_dir / name``, or ``dest_dir / "name-2"``, ``"name-3"``… when taken.

    Raises
    ------
    ValueError
        When ``name`` is empty or contains a path separator.
    """
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"name must be a plain folder name. Received: name={name!r}")
    dest_dir = Path(dest_dir)
    candidate = dest_dir / name
    n = 2
    while candidate.exists():
        candidate = dest_dir / f"{name}-{n}"
        n += 1
    return candidate


def error_report(slide_id: str, error: str | None, attempts: int | None = None, now: datetime | None = None) -> str:
    """The text of a failed slide's ``error.txt``."""
    now = now or datetime.now(UTC)
    lines = [
        f"slide: {slide_id}",
        f"failed at: {now.isoformat(timespec='seconds')}",
    ]
    if attempts is not None:
        lines.append(f"attempts: {attempts}")
    lines += ["", (error or "unknown error").strip(), ""]
    return "\n".join(lines)


def is_in_folder(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is directly inside ``folder`` (both resolved)."""
    return Path(path).resolve().parent == Path(folder).resolve()


def move_slide_folder(folder: str | Path, dest_dir: str | Path, error_text: str | None = None) -> Path:
    """Move a slide folder into ``dest_dir``, writing ``error.txt`` first when failed.

    A folder that ends done loses a stale ``error.txt`` from an earlier
    failure. The destination is created when missing; a name already taken
    there gets a suffix (:func:`unique_destination`).

    Parameters
    ----------
    folder : str or Path
        The slide folder.
    dest_dir : str or Path
        ``done/`` or ``failed/``.
    error_text : str, optional
        The content of ``error.txt`` (see :func:`error_report`); ``None``
        for a slide that is done.

    Returns
    -------
    Path
        The folder's new path (absolute).

    Raises
    ------
    FileNotFoundError
        When ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"slide folder does not exist. Received: folder={str(folder)!r}")
    dest_dir = Path(dest_dir).resolve()
    error_path = folder / ERROR_FILE
    if error_text is not None:
        error_path.write_text(error_text, encoding="utf-8")
    elif error_path.is_file():
        error_path.unlink()
    dest_dir.mkdir(parents=True, exist_ok=True)
    destination = unique_destination(dest_dir, folder.resolve().name)
    # shutil.move renames (atomic) on one filesystem and copies across filesystems.
    shutil.move(str(folder), str(destination))
    logger.info("moved %s to %s", folder, destination)
    return destination
