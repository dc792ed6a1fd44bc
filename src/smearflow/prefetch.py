"""Work on the next items in one background thread while the caller consumes the current one.

The pipeline reads, checks and segments the next fields of a slide while the
classifier works on a batch of crops. At most ``depth`` finished items wait
for the caller (plus the one the thread is working on), so memory stays flat
however many items there are.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_PUT_POLL_S = 0.1
"""How often a producer blocked on a full queue looks whether the consumer has gone."""


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class Prefetcher(Generic[T, R]):
    """``work(item)`` for each item, in order, computed ahead in one background thread.

    Use as a context manager and iterate it. An exception raised by ``work``
    (or by iterating ``items``) is raised to the caller where its result
    would have come, and the thread stops. Leaving the ``with`` block early
    (the caller raised, or stopped iterating) stops the thread and waits for
    it to finish the item it is working on: no work goes on behind the caller.

    Parameters
    ----------
    items : iterable
        Read in the background thread.
    work : callable
        ``item -> result``; called in the background thread.
    depth : int
        Most results waiting for the caller. ``0`` does the work in the
        caller's thread, one item at a time, when the caller asks for it.

    Raises
    ------
    ValueError
        When ``depth`` is negative.
    """

    def __init__(self, items: Iterable[T], work: Callable[[T], R], depth: int):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth must be a whole number of at least 0. Received: depth={depth!r}")
        self._items = items
        self._work = work
        self.depth = depth
        self._stop = threading.Event()
        self._results: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "Prefetcher[T, R]":
        if self.depth > 0:
            self._thread = threading.Thread(target=self._produce, name="smearflow-prefetch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def __iter__(self) -> Iterator[R]:
        if self.depth == 0:
            for item in self._items:
                yield self._work(item)
            return
        if self._thread is None:
            raise RuntimeError("iterate a Prefetcher inside its with block")
        while True:
            value = self._results.get()
            if value is _END:
                return
            if isinstance(value, _Failure):
                raise value.error
            yield value
            del value  # the consumer's reference is the only one kept

    def _produce(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set() or not self._put(self._work(item)):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(_Failure(error))
            return
        self._put(_END)

    def _put(self, value) -> bool:
        while not self._stop.is_set():
            try:
                self._results.put(value, timeout=_PUT_POLL_S)
                return True
            except queue.Full:
                continue
        return False
