"""Work on the next items in background threads while the caller consumes the current one.

The pipeline reads, checks and segments the next fields of a slide while the
classifier works on a batch of crops. At most ``depth`` items wait for the
caller, finished or in progress (plus one the producer holds), so memory stays
flat however many items there are.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_PUT_POLL_S = 0.1
"""How often a producer blocked on a full queue looks whether the consumer has gone."""

THREAD_NAME = "smearflow-prefetch"


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class Prefetcher(Generic[T, R]):
    """``work(item)`` for each item, in order, computed ahead in background threads.

    Use as a context manager and iterate it. An exception raised by ``work``
    (or by iterating ``items``) is raised to the caller where its result
    would have come. Leaving the ``with`` block early (the caller raised, or
    stopped iterating) drops the items not yet started and waits for those
    in progress: no work goes on behind the caller.

    Parameters
    ----------
    items : iterable
        Read in a background thread, in order.
    work : callable
        ``item -> result``; called in the worker threads, so with
        ``threads > 1`` it must be safe to call concurrently.
    depth : int
        Most items handed to the workers and not yet taken by the caller
        (one more waits in the producer). ``0`` does the work in the
        caller's thread, one item at a time, when the caller asks for it.
    threads : int
        Worker threads; up to ``min(threads, depth + 1)`` items are worked
        on at once. Results still come in the order of ``items``.

    Raises
    ------
    ValueError
        When ``depth`` is negative or ``threads`` below 1.
    """

    def __init__(self, items: Iterable[T], work: Callable[[T], R], depth: int, threads: int = 1):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth must be a whole number of at least 0. Received: depth={depth!r}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a whole number of at least 1. Received: threads={threads!r}")
        self._items = items
        self._work = work
        self.depth = depth
        self.threads = threads
        self._stop = threading.Event()
        self._results: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None

    def __enter__(self) -> Prefetcher[T, R]:
        if self.depth > 0:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix=THREAD_NAME)
            self._thread = threading.Thread(target=self._produce, name=f"{THREAD_NAME}-producer", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

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
            result = value.result()
            del value
            yield result
            del result  # the consumer's reference is the only one kept

    def _produce(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set() or not self._put(self._executor.submit(self._work, item)):
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
