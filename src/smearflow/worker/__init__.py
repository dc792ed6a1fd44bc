"""The lab deployment: a Celery app, thin tasks, the inbox watcher and the nightly schedule.

``celery -A smearflow.worker worker`` finds :data:`app` here. Note that the
package attribute ``smearflow.worker.app`` is the Celery app itself; import
the module's functions with ``from smearflow.worker.app import ...``.

- :mod:`smearflow.worker.settings`: every ``SMEARFLOW_*`` variable;
- :mod:`smearflow.worker.app`: the Celery app and its delivery settings;
- :mod:`smearflow.worker.tasks`: the tasks (thin) and the per-process state;
- :mod:`smearflow.worker.slide_job`: what one slide task does, as a plain function;
- :mod:`smearflow.worker.enqueue`: registering a slide folder and sending its task once;
- :mod:`smearflow.worker.folders`: moving finished slide folders to ``done/`` or ``failed/``;
- :mod:`smearflow.worker.watcher`: the watched inbox;
- :mod:`smearflow.worker.nightly`: retraining, the activation decision, the re-benchmark;
- :mod:`smearflow.worker.schedule`: the beat schedule.
"""

from smearflow.worker.app import app

__all__ = ["app"]
