"""A real Celery worker whose fields and trainings take longer: the fault tests' way to be "mid-slide".

The delays are injected here, in the tests, by wrapping the pipeline's
``prepare_field`` (read, check, segment and crop one field) and ``train_classifier``; the product has no such setting.
Run as ``python tests/worker/slow_worker.py worker ...`` with
``TEST_FIELD_DELAY_S`` (seconds per field) and ``TEST_TRAIN_DELAY_S``
(seconds before each training) set; prefork pool processes inherit the wrappers.
"""

import os
import sys
import time

from smearflow import pipeline

_DELAY_S = float(os.environ.get("TEST_FIELD_DELAY_S", "0"))
_prepare_field = pipeline.prepare_field


def _slow_prepare_field(*args, **kwargs):
    time.sleep(_DELAY_S)
    return _prepare_field(*args, **kwargs)


pipeline.prepare_field = _slow_prepare_field

_TRAIN_DELAY_S = float(os.environ.get("TEST_TRAIN_DELAY_S", "0"))
if _TRAIN_DELAY_S:
    from smearflow.training import train as _train

    _train_classifier = _train.train_classifier

    def _slow_train_classifier(*args, **kwargs):
        time.sleep(_TRAIN_DELAY_S)
        return _train_classifier(*args, **kwargs)

    _train.train_classifier = _slow_train_classifier

if __name__ == "__main__":
    from smearflow.worker.app import app

    app.worker_main(sys.argv[1:])
