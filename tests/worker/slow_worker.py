"""A real Celery worker whose every field takes a little longer: the fault tests' way to be "mid-slide".

The delay is injected here, in the tests, by wrapping the pipeline's
``analyze_field``; the product has no such setting. Run as
``python tests/worker/slow_worker.py worker ...`` with ``TEST_FIELD_DELAY_S``
set (seconds per field); prefork pool processes inherit the wrapper.
"""

import os
import sys
import time

from smearflow import pipeline

_DELAY_S = float(os.environ.get("TEST_FIELD_DELAY_S", "0"))
_analyze_field = pipeline.analyze_field


def _slow_analyze_field(*args, **kwargs):
    time.sleep(_DELAY_S)
    return _analyze_field(*args, **kwargs)


pipeline.analyze_field = _slow_analyze_field

if __name__ == "__main__":
    from smearflow.worker.app import app

    app.worker_main(sys.argv[1:])
