"""The watched inbox: complete slide folders are registered and enqueued once.

Every direct sub-folder of the inbox is a slide folder (hidden ones, and
``done/`` or ``failed/`` when they live inside the inbox, are ignored). A
folder is taken when it is complete:

- its ``slide.json`` exists (scanners write it last), or
- it holds at least one entry and nothing in it (names, sizes, modification
  times) has changed for ``settle_seconds``.

A complete folder is handed to :func:`smearflow.worker.enqueue.enqueue_slide_folder`,
which checks the database first, so a restart never sends a slide twice.
The worker that analyses a slide moves its folder out of the inbox.

``watchdog`` events wake the watcher at once; it also scans at start-up
(nothing dropped while it was down is missed), whenever a folder may have
settled, and every ``rescan_seconds`` (events do not arrive from network
filesystems; use ``polling=True`` there). :class:`InboxScanner` holds the
decisions and takes an injectable clock, so tests need no sleeping.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from smearflow.errors import TransientError

logger = logging.getLogger(__name__)

SLIDE_FILE = "slide.json"

Signature = tuple[tuple[str, int, int], ...]


def folder_signature(folder: Path) -> Signature:
    """Names, sizes and modification times (ns) of a folder's entries, sorted.

    A folder that disappears reads as empty.
    """
    entries = []
    try:
        for entry in folder.iterdir():
            try:
                stat = entry.stat()
            except FileNotFoundError:
                continue
            entries.append((entry.name, stat.st_size, stat.st_mtime_ns))
    except FileNotFoundError:
        return ()
    return tuple(sorted(entries))


@dataclass
class _Pending:
    signature: Signature
    changed_at: float
    retry_at: float = 0.0


def is_complete(folder: Path, signature: Signature, unchanged_s: float, settle_seconds: float) -> bool:
    """Whether a slide folder is ready: ``slide.json`` present, or non-empty and settled.

    Parameters
    ----------
    folder : Path
    signature : tuple
        Its current :func:`folder_signature`.
    unchanged_s : float
        How long the signature has stayed the same.
    settle_seconds : float
    """
    if any(name == SLIDE_FILE for name, _, _ in signature):
        return True
    return bool(signature) and unchanged_s >= settle_seconds


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

    Raises
    ------
    ValueError
        When ``settle_seconds`` or ``retry_seconds`` is negative.
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
    ):
        if settle_seconds < 0:
            raise ValueError(f"settle_seconds must not be negative. Received: settle_seconds={settle_seconds}")
        if retry_seconds < 0:
            raise ValueError(f"retry_seconds must not be negative. Received: retry_seconds={retry_seconds}")
        self.inbox = Path(inbox)
        self.take = take
        self.settle_seconds = float(settle_seconds)
        self.retry_seconds = float(retry_seconds)
        self.clock = clock
        self.ignore = {Path(p).resolve() for p in ignore}
        self.pending: dict[str, _Pending] = {}
        self.handled: set[str] = set()
        self.last_scan_at = float("-inf")

    def candidates(self) -> list[Path]:
        """The inbox's slide folders, sorted by name."""
        try:
            children = sorted(self.inbox.iterdir())
        except FileNotFoundError:
            logger.warning("inbox %s does not exist", self.inbox)
            return []
        return [
            child
            for child in children
            if child.is_dir() and not child.name.startswith(".") and child.resolve() not in self.ignore
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
            signature = folder_signature(folder)
            state = self.pending.get(folder.name)
            if state is None or state.signature != signature:
                state = self.pending[folder.name] = _Pending(signature, now, state.retry_at if state else 0.0)
            if now < state.retry_at or not is_complete(folder, signature, now - state.changed_at, self.settle_seconds):
                continue
            try:
                self.take(folder)
            except TransientError as exc:
                logger.warning("%s: will retry in %.0f s: %s", folder, self.retry_seconds, exc)
                state.retry_at = now + self.retry_seconds
                continue
            except Exception:
                if not folder.is_dir():
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
            if not state.signature:
                continue  # an empty folder becomes complete only through a change, which wakes us
            ready_at = max(state.changed_at + self.settle_seconds, state.retry_at)
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

    Raises
    ------
    ValueError
        When ``rescan_seconds`` is not positive.
    """

    def __init__(self, scanner: InboxScanner, *, rescan_seconds: float = 300.0, polling: bool = False):
        if not rescan_seconds > 0:
            raise ValueError(f"rescan_seconds must be positive. Received: rescan_seconds={rescan_seconds}")
        self.scanner = scanner
        self.rescan_seconds = float(rescan_seconds)
        self.polling = polling
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
            next_rescan = 0.0
            while not self.stop.is_set():
                now = time.monotonic()
                if now >= next_rescan:
                    self.scanner.forget_handled()
                    next_rescan = now + self.rescan_seconds
                self.wake.clear()
                self.scanner.scan()
                timeout = self.scanner.seconds_until_next_check(max(0.05, next_rescan - time.monotonic()))
                self.wake.wait(timeout)
                if self.wake.is_set() and not self.stop.is_set():
                    # Let a burst of events (a folder being copied) pass before scanning.
                    self.stop.wait(0.2)
        finally:
            observer.stop()
            observer.join(timeout=5)
            logger.info("stopped watching %s", self.scanner.inbox)

    def request_stop(self) -> None:
        """Stop :meth:`run` (safe from a signal handler)."""
        self.stop.set()
        self.wake.set()
