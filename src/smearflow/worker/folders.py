"""Moving finished slide folders out of the inbox: ``done/`` and ``failed/``.

The worker that finished a slide moves its folder (it alone knows the
outcome), then records the new path in the database. A folder is moved with
one ``rename`` when the destination is on the same filesystem (the default
``INBOX/../done`` is), so the watcher never sees half a folder.
"""

from __future__ import annotations

import logging
import os
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
    while os.path.lexists(candidate):
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


def rejection_report(folder: str, reason: str, now: datetime | None = None) -> str:
    """The text of a rejected folder's ``error.txt``."""
    now = now or datetime.now(UTC)
    return "\n".join(
        [f"folder: {folder}", f"rejected at: {now.isoformat(timespec='seconds')}", "", reason.strip(), ""]
    )


def is_in_folder(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` is directly inside ``folder`` (absolute paths, links not followed)."""
    return Path(os.path.abspath(path)).parent == Path(os.path.abspath(folder))


def write_error_file(folder: Path, text: str) -> None:
    """Write ``folder/error.txt`` without following a link planted under that name."""
    path = folder / ERROR_FILE
    if path.is_symlink():
        path.unlink()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)


def move_slide_folder(folder: str | Path, dest_dir: str | Path, error_text: str | None = None) -> Path:
    """Move a slide folder into ``dest_dir``, writing ``error.txt`` first when failed.

    A folder that ends done loses a stale ``error.txt`` from an earlier
    failure. The destination is created when missing; a name already taken
    there gets a suffix (:func:`unique_destination`).

    A symbolic link is never followed: the link itself (not its target) is
    moved into a new folder of that name in ``dest_dir``, where
    ``error.txt`` is written.

    Parameters
    ----------
    folder : str or Path
        The slide folder (or a link in its place).
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
        When nothing exists at ``folder``.
    """
    folder = Path(os.path.abspath(folder))
    if not os.path.lexists(folder):
        raise FileNotFoundError(f"slide folder does not exist. Received: folder={str(folder)!r}")
    dest_dir = Path(os.path.abspath(dest_dir))
    dest_dir.mkdir(parents=True, exist_ok=True)
    destination = unique_destination(dest_dir, folder.name)
    if folder.is_symlink() or not folder.is_dir():
        destination.mkdir()
        os.rename(folder, destination / folder.name)  # renames the link itself; its target is never touched
        write_error_file(destination, error_text or "not a slide folder\n")
        logger.info("moved the link %s into %s", folder, destination)
        return destination
    if error_text is not None:
        write_error_file(folder, error_text)
    elif (folder / ERROR_FILE).is_file() and not (folder / ERROR_FILE).is_symlink():
        (folder / ERROR_FILE).unlink()
    # shutil.move renames (atomic) on one filesystem and copies across filesystems.
    shutil.move(str(folder), str(destination))
    logger.info("moved %s to %s", folder, destination)
    return destination
