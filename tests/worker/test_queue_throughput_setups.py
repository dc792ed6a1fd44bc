"""The worker setups the queue measurement (``queue_throughput.py``, run by hand) understands."""

import pytest
from queue_throughput import _setup


def test_counts_are_prefork_workers_and_threads_n_is_one_shared_process():
    assert _setup("2") == (2, "prefork", 1)
    assert _setup(" threads:3 ") == (1, "threads", 3)


@pytest.mark.parametrize("spec", ["0", "two", "threads:", "threads:0", "eventlet:2"])
def test_other_setups_are_refused_naming_the_value(spec):
    with pytest.raises(SystemExit, match="--workers takes counts or threads:N. Received"):
        _setup(spec)
