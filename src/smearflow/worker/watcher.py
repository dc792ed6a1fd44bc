"""The watched inbox: complete slide folders are registered and enqueued once.

Every direct sub-folder of the inbox is a slide folder (hidden ones, and
``done/`` or ``failed/`` when they live inside the inbox, are ignored). A
folder is taken when it is complete:

- its ``slide.json`` exists (scanners write it last), or
- it holds at least one entry and nothing in it (names, sizes, modification
  times) has changed for ``settle_seconds``, or
- it has stayed empty for ``empty_seconds`` (it is then rejected: every
  folder ends in ``done/`` or ``failed/``).

A symbolic link in the inbox is taken at once and rejected: nothing outside
the inbox is ever read or moved (the link itself goes to ``failed/``). The
signature of a folder reads at most ``max_entries`` entries.

A complete folder is handed to :func:`smearflow.worker.enqueue.enqueue_slide_folder`,
which checks the database first, so a restart never sends a slide twice.
The worker that analyses a slide moves its folder out of the inbox.

``watchdog`` events wake the watcher at once; it also scans at start-up
(nothing dropped while it was down is missed), whenever a folder may have
settled, and every ``rescan_seconds`` (events do not arrive from network
filesystems; use ``polling=True`` there). It also runs reconciliation at
start-up and every ``reconcile_seconds`` (:mod:`smearflow.worker.reconcile`).
:class:`InboxScanner` holds the decisions and takes an injectable clock, so
tests need no sleeping.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from smearflow.errors import TransientError

logger = logging.getLogger(__name__)

SLIDE_FILE = "slide.json"

Signature = tuple[tuple[str, int, int], ...]

LINK_SIGNATURE: Signature = (("<symbolic link>", 0, 0),)
"""The signature of an inbox entry that is a symbolic link: complete at once, never read."""

DEFAULT_MAX_ENTRIES = 10_000
"""Entries of one folder read to decide whether it has settled."""


def folder_signature(folder: Path, max_entries: int = DEFAULT_MAX_ENTRIES) -> Signature:
    """Names, sizes and modification times (ns) of a folder's entries, sorted; links are not followed.

    A folder that disappears reads as empty; a symbolic link reads as
    :data:`LINK_SIGNATURE`; at most ``max_entries`` entries are read.
    """
    if folder.is_symlink():
        return LINK_SIGNATURE
    entries = []
    try:
        with os.scandir(folder) as scan:
            for entry in scan:
                try:
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                entries.append((entry.name, stat.st_size, stat.st_mtime_ns))
                if len(entries) >= max_entries:
                    break
    except (FileNotFoundError, NotADirectoryError):
        return ()
    return tuple(sorted(entries))


@dataclass
class _Pending:
    signature: Signature
    changed_at: float
    retry_at: float = 0.0


def is_complete(
    folder: Path, signature: Signature, unchanged_s: float, settle_seconds: float, empty_seconds: float = float("inf")
) -> bool:
    """Whether a slide folder is ready: a link, ``slide.json`` present, settled, or empty for long.

    Parameters
    ----------
    folder : Path
    signature : tuple
        Its current :func:`folder_signature`.
    unchanged_s : float
        How long the signature has stayed the same.
    settle_seconds : float
    empty_seconds : float
        How long an empty folder waits before it is taken (and rejected).
    """
    if signature == LINK_SIGNATURE or any(name == SLIDE_FILE for name, _, _ in signature):
        return True
    return unchanged_s >= (settle_seconds if signature else empty_seconds)


class InboxScanner:
    """Decides which inbox folders are complete and hands each one over once.

    Parameters
    ----------
    inbox : str or Path
        The watched folder.
    take : callable
        ``take(folder)``, called once per complete folder; returns anything.
        A :class:`~smearflow.errors.TransientError` makes the scanner try
        that folder again ``retry_seconds`` later.
    settle_seconds : float
        How long a folder without ``slide.json`` must stay unchanged.
    ignore : iterable of path, optional
        Folders inside the inbox that are not slides (``done/``, ``failed/``).
    clock : callable
        Seconds, monotonic; ``time.monotonic`` unless a test replaces it.
    retry_seconds : float
        Delay before a folder whose ``take`` failed transiently is retried.
    empty_seconds : float
        How long a folder must stay empty before it is taken (and rejected).
    max_entries : int
        Entries of a folder read for its signature.

    Raises
    ------
    ValueError
        When ``settle_seconds``, ``retry_seconds`` or ``empty_seconds`` is
        negative, or ``max_entries`` is below 1.
    """

    def __init__(
        self,
        inbox: str | Path,
        take: Callable[[Path], object],
        *,
        settle_seconds: float = 30.0,
        ignore=(),
        clock: Callable[[], float] = time.monotonic,
        retry_seconds: float = 10.0,
        empty_seconds: float = 300.0,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ):
        for name, value in (("settle_seconds", settle_seconds), ("retry_seconds", retry_seconds), ("empty_seconds", empty_seconds)):
            if value < 0:
                raise ValueError(f"{name} must not be negative. Received: {name}={value}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1. Received: max_entries={max_entries}")
        self.inbox = Path(os.path.abspath(inbox))
        self.take = take
        self.settle_seconds = float(settle_seconds)
        self.retry_seconds = float(retry_seconds)
        self.empty_seconds = float(empty_seconds)
        self.max_entries = max_entries
        self.clock = clock
        self.ignore = {Path(os.path.abspath(p)) for p in ignore}
        self.pending: dict[str, _Pending] = {}
        self.handled: set[str] = set()
        self.last_scan_at = float("-inf")

    def candidates(self) -> list[Path]:
        """The inbox's slide folders, and its symbolic links, sorted by name."""
        try:
            children = sorted(self.inbox.iterdir())
        except FileNotFoundError:
            logger.warning("inbox %s does not exist", self.inbox)
            return []
        return [
            child
            for child in children
            if (child.is_symlink() or child.is_dir()) and not child.name.startswith(".") and child not in self.ignore
        ]

    def forget_handled(self) -> None:
        """Check every folder against the database again at the next scan (the periodic rescan)."""
        self.handled.clear()

    def scan(self) -> list[Path]:
        """Hand every newly complete folder to ``take``; returns those taken.

        Folders already handled since the last :meth:`forget_handled` are
        skipped; folders gone from the inbox are forgotten.
        """
        now = self.last_scan_at = self.clock()
        present = self.candidates()
        names = {folder.name for folder in present}
        self.handled &= names
        for name in set(self.pending) - names:
            del self.pending[name]
        taken = []
        for folder in present:
            if folder.name in self.handled:
                continue
            signature = folder_signature(folder, self.max_entries)
            state = self.pending.get(folder.name)
            if state is None or state.signature != signature:
                state = self.pending[folder.name] = _Pending(signature, now, state.retry_at if state else 0.0)
            unchanged_s = now - state.changed_at
            if now < state.retry_at or not is_complete(folder, signature, unchanged_s, self.settle_seconds, self.empty_seconds):
                continue
            try:
                self.take(folder)
            except TransientError as exc:
                logger.warning("%s: will retry in %.0f s: %s", folder, self.retry_seconds, exc)
                state.retry_at = now + self.retry_seconds
                continue
            except Exception:
                if not os.path.lexists(folder):
                    logger.debug("%s left the inbox while it was being enqueued", folder)
                else:
                    # One bad folder must not stop the inbox; it is retried at the next rescan.
                    logger.exception("%s: could not be enqueued", folder)
                self.handled.add(folder.name)
                del self.pending[folder.name]
                continue
            self.handled.add(folder.name)
            del self.pending[folder.name]
            taken.append(folder)
        return taken

    def seconds_until_next_check(self, default: float) -> float:
        """How long the watcher may sleep before a pending folder could become complete."""
        now = self.clock()
        waits = [default]
        for state in self.pending.values():
            wait_s = self.settle_seconds if state.signature else self.empty_seconds
            ready_at = max(state.changed_at + wait_s, state.retry_at)
            if ready_at > self.last_scan_at:
                waits.append(ready_at - now)
        return max(0.05, min(waits))


class InboxWatcher:
    """Runs an :class:`InboxScanner` on watchdog events, settle deadlines and a periodic rescan.

    Parameters
    ----------
    scanner : InboxScanner
    rescan_seconds : float
        Every so often every folder is checked against the database again.
    polling : bool
        Use watchdog's polling observer (network filesystems send no events).
    reconcile : callable, optional
        Called at start-up and every ``reconcile_seconds`` (its errors are
        logged, never fatal).
    reconcile_seconds : float

    Raises
    ------
    ValueError
        When ``rescan_seconds`` or ``reconcile_seconds`` is not positive.
    """

    def __init__(
        self,
        scanner: InboxScanner,
        *,
        rescan_seconds: float = 300.0,
        polling: bool = False,
        reconcile: Callable[[], object] | None = None,
        reconcile_seconds: float = 60.0,
    ):
        for name, value in (("rescan_seconds", rescan_seconds), ("reconcile_seconds", reconcile_seconds)):
            if not value > 0:
                raise ValueError(f"{name} must be positive. Received: {name}={value}")
        self.scanner = scanner
        self.rescan_seconds = float(rescan_seconds)
        self.polling = polling
        self.reconcile = reconcile
        self.reconcile_seconds = float(reconcile_seconds)
        self.wake = threading.Event()
        self.stop = threading.Event()

    def _observer(self):
        from watchdog.events import FileSystemEventHandler

        if self.polling:
            from watchdog.observers.polling import PollingObserver as Observer
        else:
            from watchdog.observers import Observer

        wake = self.wake

        class _Wake(FileSystemEventHandler):
            def on_any_event(self, event):
                if event.event_type not in ("opened", "closed_no_write"):
                    wake.set()

        observer = Observer()
        observer.schedule(_Wake(), str(self.scanner.inbox), recursive=True)
        return observer

    def run(self) -> None:
        """Watch until :attr:`stop` is set (a signal handler sets it)."""
        self.scanner.inbox.mkdir(parents=True, exist_ok=True)
        observer = self._observer()
        observer.start()
        logger.info("watching %s (settle %.0f s, rescan every %.0f s)", self.scanner.inbox, self.scanner.settle_seconds, self.rescan_seconds)
        try:
            next_rescan = next_reconcile = 0.0
            while not self.stop.is_set():
                now = time.monotonic()
                if now >= next_rescan:
                    self.scanner.forget_handled()
                    next_rescan = now + self.rescan_seconds
                if now >= next_reconcile:
                    self._reconcile()
                    next_reconcile = now + self.reconcile_seconds
                self.wake.clear()
                self.scanner.scan()
                next_due = min(next_rescan, next_reconcile if self.reconcile else next_rescan)
                timeout = self.scanner.seconds_until_next_check(max(0.05, next_due - time.monotonic()))
                self.wake.wait(timeout)
                if self.wake.is_set() and not self.stop.is_set():
                    # Let a burst of events (a folder being copied) pass before scanning.
                    self.stop.wait(0.2)
        finally:
            observer.stop()
            observer.join(timeout=5)
            logger.info("stopped watching %s", self.scanner.inbox)

    def _reconcile(self) -> None:
        if self.reconcile is None:
            return
        try:
            self.reconcile()
        except Exception as exc:  # noqa: BLE001 - the database or broker may be down; try again later
            logger.warning("reconciliation failed, will try again in %.0f s: %s", self.reconcile_seconds, exc)

    def request_stop(self) -> None:
        """Stop :meth:`run` (safe from a signal handler)."""
        self.stop.set()
        self.wake.set()
