"""The background producer the pipeline reads and segments fields with."""

import threading

import pytest

from smearflow.prefetch import Prefetcher


def test_results_come_in_order_computed_in_one_background_thread():
    threads = set()

    def work(item):
        threads.add(threading.current_thread().name)
        return item * 10

    with Prefetcher(range(20), work, depth=2) as results:
        assert list(results) == [i * 10 for i in range(20)]
    assert len(threads) == 1 and threads.pop().startswith("smearflow-prefetch")


def test_several_threads_work_at_once_and_results_keep_their_order():
    both_working = threading.Barrier(2, timeout=30)
    threads = set()

    def work(item):
        threads.add(threading.current_thread().name)
        if item < 2:
            both_working.wait()  # broken (an error) unless two items are worked on at the same time
        if item % 3 == 0:
            threading.Event().wait(0.005)  # later items finish first
        return item

    with Prefetcher(range(30), work, depth=3, threads=2) as results:
        assert list(results) == list(range(30))
    assert len(threads) == 2


def test_one_thread_works_on_one_item_at_a_time():
    both_working = threading.Barrier(2, timeout=0.5)

    def work(item):
        both_working.wait()
        return item

    with pytest.raises(threading.BrokenBarrierError):
        with Prefetcher(range(2), work, depth=3, threads=1) as results:
            list(results)


def test_depth_zero_works_in_the_callers_thread_when_asked():
    done = []

    def work(item):
        done.append((item, threading.current_thread() is threading.main_thread()))
        return item

    with Prefetcher(range(3), work, depth=0) as results:
        iterator = iter(results)
        assert done == []
        assert next(iterator) == 0 and done == [(0, True)]
        assert list(iterator) == [1, 2]


def _wait_until(condition, timeout_s=30.0):
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        threading.Event().wait(0.01)


def test_at_most_depth_results_wait_for_the_caller():
    started = []

    def work(item):
        started.append(item)
        return item

    with Prefetcher(range(100), work, depth=3) as prefetcher:
        iterator = iter(prefetcher)
        assert next(iterator) == 0
        # then 3 results queued and a 4th held by the thread, blocked until the caller takes one
        _wait_until(lambda: len(started) == 5 and prefetcher._results.full())
        assert started == [0, 1, 2, 3, 4]
        assert next(iterator) == 1
        _wait_until(lambda: len(started) == 6 and prefetcher._results.full())
        assert list(iterator) == list(range(2, 100))


def test_an_error_in_the_work_is_raised_to_the_caller_at_its_place():
    def work(item):
        if item == 3:
            raise KeyError("field 3")
        return item

    got = []
    with pytest.raises(KeyError, match="field 3"):
        with Prefetcher(range(10), work, depth=2) as results:
            for value in results:
                got.append(value)
    assert got == [0, 1, 2]


def test_leaving_early_stops_the_thread():
    with Prefetcher(iter(range(10_000)), lambda item: item, depth=1) as prefetcher:
        for value in prefetcher:
            if value == 2:
                break
    assert not prefetcher._thread.is_alive()
    assert not any(thread.is_alive() for thread in prefetcher._executor._threads)


def test_the_caller_raising_stops_the_thread():
    class TimeLimit(Exception):
        pass

    with pytest.raises(TimeLimit):
        with Prefetcher(range(10_000), lambda item: item, depth=1) as prefetcher:
            for _ in prefetcher:
                raise TimeLimit()
    assert not prefetcher._thread.is_alive()
    assert not any(thread.is_alive() for thread in prefetcher._executor._threads)


def test_bad_depth_and_iterating_outside_the_with_block_are_refused():
    with pytest.raises(ValueError, match="depth must be a whole number of at least 0. Received: depth=-1"):
        Prefetcher([], lambda item: item, depth=-1)
    with pytest.raises(ValueError, match="threads must be a whole number of at least 1. Received: threads=0"):
        Prefetcher([], lambda item: item, depth=1, threads=0)
    with pytest.raises(RuntimeError, match="inside its with block"):
        list(Prefetcher([1], lambda item: item, depth=1))
