"""Reading and writing slides, results, model versions and runs: one import for callers.

The functions live in modules by responsibility and are re-exported here:
:mod:`smearflow.db.slides` (registering slides, status, events),
:mod:`smearflow.db.results` (storing an analysis, recording a failure,
``counts_for``; its docstring states the failure policy),
:mod:`smearflow.db.model_versions` and :mod:`smearflow.db.run_records`.
Every function takes a ``Session`` and neither commits nor rolls back: the
caller owns the transaction (see :func:`smearflow.db.engine.session_scope`).
"""

from smearflow.db.model_versions import (
    activate_model_version,
    active_model_version,
    get_or_create_model_version,
    list_model_versions,
)
from smearflow.db.results import (
    PLATELET_LABEL,
    counts_for,
    record_slide_failure,
    store_slide_result,
)
from smearflow.db.run_records import (
    add_benchmark_result,
    finish_benchmark_run,
    record_training_run,
    start_benchmark_run,
)
from smearflow.db.slides import (
    add_slide_event,
    get_slide,
    register_slide,
    set_slide_status,
    slide_events,
)
from smearflow.db.values import insert_unless_present, parse_collected_at

__all__ = [
    "PLATELET_LABEL",
    "activate_model_version",
    "active_model_version",
    "add_benchmark_result",
    "add_slide_event",
    "counts_for",
    "finish_benchmark_run",
    "get_or_create_model_version",
    "get_slide",
    "insert_unless_present",
    "list_model_versions",
    "parse_collected_at",
    "record_slide_failure",
    "record_training_run",
    "register_slide",
    "set_slide_status",
    "slide_events",
    "start_benchmark_run",
    "store_slide_result",
]
