"""One classifier shared by several threads: their crops go through the model together.

A worker that analyses several slides at once in one process (Celery's
threads pool) holds one model. :class:`SharedBatcher` stands in for that
model's classifier: each slide's thread calls :meth:`SharedBatcher.classify`
as it would call the classifier, and one thread of the batcher gathers the
requests of every slide into one call of the classifier, so that a slide's
last partial batch and small slides share calls with the others.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Self

import numpy as np

logger = logging.getLogger(__name__)


class BatcherClosedError(RuntimeError):
    """The shared batcher was closed before it classified the crops."""


@dataclass
class _Request:
    crops: np.ndarray
    batch_size: int
    exclude: tuple[str, ...]
    arrived_s: float
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple:
        """Requests with the same key can share one classifier call."""
        return (self.batch_size, self.exclude, self.crops.shape[1:], self.crops.dtype)


class SharedBatcher:
    """A classifier that gathers the crops of concurrent callers into shared calls.

    Callers in any thread use :meth:`classify` (or :meth:`submit`). One
    background thread waits until ``batch_size`` crops are waiting or the
    oldest request has waited ``max_wait_ms``, then classifies the waiting
    requests that can go together (same forward batch size, same excluded
    classes, same crop shape) in one call of ``classifier.classify`` and
    hands each caller its own answers. Only this thread calls the classifier.

    A call that fails is made again for each request alone, so a request
    fails only with the error its own crops raise, and the others get their
    answers. The answers are the classifier's for the same crops.

    Attributes other than those below are the wrapped classifier's
    (``classes``, ``image_size``, ``version``, ``folder`` ...).

    Parameters
    ----------
    classifier : Classifier
        Anything with ``classify(crops, batch_size, exclude) -> list[Classification]``.
    batch_size : int
        Crops gathered before a call goes without waiting (a request is never split).
    max_wait_ms : float
        Longest wait for more crops after the oldest waiting request arrived.

    Raises
    ------
    ValueError
        When ``batch_size`` is below 1 or ``max_wait_ms`` is negative or not finite.
    """

    def __init__(self, classifier, batch_size: int = 64, max_wait_ms: float = 20.0):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number of at least 1. Received: batch_size={batch_size!r}")
        if not (isinstance(max_wait_ms, (int, float)) and math.isfinite(max_wait_ms) and max_wait_ms >= 0):
            raise ValueError(f"max_wait_ms must be a finite number of at least 0. Received: max_wait_ms={max_wait_ms!r}")
        self.classifier = classifier
        self.batch_size = batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self._pending: deque[_Request] = deque()
        self._waiting_crops = 0
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="smearflow-shared-batches", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str):
        if name == "classifier":  # not set yet: never look it up on itself
            raise AttributeError(name)
        return getattr(self.classifier, name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def classify(self, crops: np.ndarray, batch_size: int = 32, exclude: tuple[str, ...] = ()) -> list:
        """Classify crops together with other callers' and wait for their answers.

        Parameters
        ----------
        crops : ndarray of shape (n, M, N, 3), uint8
        batch_size : int
            Crops per forward pass of the network (passed on to the classifier).
        exclude : tuple of str
            Classes ruled out (see :meth:`smearflow.classifier.classifier.Classifier.classify`).

        Returns
        -------
        list of Classification
            One per crop, in order.

        Raises
        ------
        BatcherClosedError
            When the batcher is closed before the crops are classified.
        Exception
            Whatever the classifier raises on these crops alone.
        """
        return self.submit(crops, batch_size, exclude).result()

    def submit(self, crops: np.ndarray, batch_size: int = 32, exclude: tuple[str, ...] = ()) -> Future:
        """Queue crops for classification; the future's result is :meth:`classify`'s.

        Raises
        ------
        BatcherClosedError
            When the batcher is closed.
        """
        request = _Request(np.asarray(crops), int(batch_size), tuple(exclude), time.monotonic())
        with self._changed:
            if self._closed:
                raise BatcherClosedError("the shared batcher is closed: no crop can be classified through it")
            self._pending.append(request)
            self._waiting_crops += len(request.crops)
            self._changed.notify()
        return request.future

    def close(self) -> None:
        """Stop the batcher: the call in progress ends, waiting requests fail with :class:`BatcherClosedError`."""
        with self._changed:
            self._closed = True
            self._changed.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        while True:
            requests = self._next_requests()
            if requests is None:
                return
            self._answer(requests)

    def _next_requests(self) -> list[_Request] | None:
        """The requests of the next call, once it is due; ``None`` once closed."""
        with self._changed:
            while not self._closed and not self._pending:
                self._changed.wait()
            while not self._closed and self._waiting_crops < self.batch_size:
                left_s = self._pending[0].arrived_s + self.max_wait_s - time.monotonic()
                if left_s <= 0:
                    break
                self._changed.wait(left_s)
            if self._closed:
                self._fail_pending()
                return None
            return self._take()

    def _take(self) -> list[_Request]:
        """The oldest request and the later ones that fit with it, up to ``batch_size`` crops."""
        key = self._pending[0].key
        taken, kept, n_crops = [], deque(), 0
        for request in self._pending:
            if request.key == key and (not taken or n_crops + len(request.crops) <= self.batch_size):
                taken.append(request)
                n_crops += len(request.crops)
            else:
                kept.append(request)
        self._pending = kept
        self._waiting_crops -= n_crops
        return taken

    def _fail_pending(self) -> None:
        for request in self._pending:
            request.future.set_exception(
                BatcherClosedError(f"the shared batcher was closed before classifying {len(request.crops)} crops")
            )
        self._pending.clear()
        self._waiting_crops = 0

    def _answer(self, requests: list[_Request]) -> None:
        if len(requests) == 1:
            self._answer_alone(requests[0])
            return
        try:
            answers = self._classify(np.concatenate([r.crops for r in requests]), requests[0])
        except Exception as error:  # noqa: BLE001 - the callers' own calls below decide who fails
            logger.warning("a shared call for %d requests failed (%s: %s); each goes alone", len(requests), type(error).__name__, error)
            for request in requests:
                self._answer_alone(request)
            return
        start = 0
        for request in requests:
            request.future.set_result(answers[start : start + len(request.crops)])
            start += len(request.crops)

    def _answer_alone(self, request: _Request) -> None:
        try:
            request.future.set_result(self._classify(request.crops, request))
        except Exception as error:  # noqa: BLE001 - handed to the caller, who decides
            request.future.set_exception(error)

    def _classify(self, crops: np.ndarray, like: _Request) -> list:
        answers = list(self.classifier.classify(crops, batch_size=like.batch_size, exclude=like.exclude))
        if len(answers) != len(crops):
            raise RuntimeError(f"the classifier answered {len(answers)} times for {len(crops)} crops")
        return answers
