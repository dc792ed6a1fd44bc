"""Slides per hour through the real queue, with one and with two worker processes (or a threads pool).

Not a test (it asserts nothing about time): a measurement, run by hand as root on a machine with
redis-server and PostgreSQL 15's binaries::

    PYTHONPATH=src python tests/worker/queue_throughput.py --data ../shared/data/bccd/images --slides 6 --fields 20

It starts its own Redis and PostgreSQL (``fault_servers``) in temporary folders, copies ``--slides``
slide folders of ``--fields`` images each (the first images of ``--data``, repeated when it holds
fewer), and for each worker count starts that many real Celery workers of concurrency 1 (the
deployment's unit: one process, one model) with the packaged model or ``--model``; ``threads:N`` in
``--workers`` starts one worker of the threads pool with N slides in flight sharing one model. It waits
until they are ready, enqueues every slide with ``smearflow enqueue`` and waits until all are done. It prints
one JSON object: per worker count, the seconds from the first slide started to the last finished
(``busy_s``, from the database), from the enqueue command to the last finished (``wall_s``), and
slides per hour over each. Everything is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from fault_servers import PostgresServer, RedisServer, wait_until  # noqa: E402
from lab import Lab  # noqa: E402


def _slides(root: Path, data: Path, n_slides: int, n_fields: int, prefix: str) -> list[Path]:
    from smearflow.imageio import IMAGE_SUFFIXES

    images = sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SystemExit(f"--data holds no images. Received: --data={data}")
    folders = []
    for s in range(n_slides):
        folder = root / f"{prefix}-S{s:02d}"
        folder.mkdir(parents=True)
        for f in range(n_fields):
            image = images[(s * n_fields + f) % len(images)]
            shutil.copyfile(image, folder / f"field-{f:03d}{image.suffix.lower()}")
        folders.append(folder)
    return folders


def _times(lab: Lab, codes: list[str]) -> tuple[float, float]:
    """First start and last finish of the slides, as POSIX seconds."""
    from sqlalchemy import select

    from smearflow.db import session_scope
    from smearflow.db.models import Slide

    with session_scope(lab.factory) as session:
        rows = session.execute(select(Slide.started_at, Slide.finished_at).where(Slide.slide_code.in_(codes))).all()
    return min(r[0].timestamp() for r in rows), max(r[1].timestamp() for r in rows)


def _setup(spec: str) -> tuple[int, str, int]:
    """``"N"``: N prefork workers of concurrency 1; ``"threads:N"``: one threads-pool worker of concurrency N."""
    pool, _, count = spec.strip().rpartition(":")
    if pool not in ("", "threads") or not count.isdigit() or int(count) < 1:
        raise SystemExit(f"--workers takes counts or threads:N. Received: {spec!r}")
    return (1, "threads", int(count)) if pool else (int(count), "prefork", 1)


def measure(root: Path, redis_url: str, database_url: str, model_dir: Path, data: Path, spec: str,
            n_slides: int, n_fields: int, run: int = 0) -> dict:
    n_workers, pool, concurrency = _setup(spec)
    lab = Lab(root / f"run{run}-{n_workers}", redis_url, database_url, model_dir)
    try:
        workers = [lab.worker(f"worker-{i}", pool=pool, concurrency=concurrency) for i in range(n_workers)]
        for worker in workers:
            wait_until(lambda w=worker: "ready." in w.log(), 300, f"{worker.name} to start", interval_s=0.5)
        folders = _slides(lab.root / "slides", data, n_slides, n_fields, prefix=f"R{run}W{n_workers}")
        codes = [folder.name for folder in folders]
        sent = time.time()
        result = lab.cli("enqueue", *map(str, folders), "--done-dir", str(lab.done))
        if result.returncode != 0:
            raise SystemExit(result.stdout + result.stderr)
        slides = lab.wait_for_status(codes, statuses=("done", "partial", "failed"), timeout_s=1800)
        statuses = sorted({s["status"] for s in slides.values()})
        first_started, last_finished = _times(lab, codes)
        busy_s, wall_s = last_finished - first_started, last_finished - sent
        return {
            "workers": n_workers, "pool": pool, "concurrency": concurrency, "slides": n_slides, "fields_per_slide": n_fields, "statuses": statuses,
            "busy_s": round(busy_s, 2), "wall_s": round(wall_s, 2),
            "slides_per_hour": round(3600 * n_slides / busy_s, 1),
            "slides_per_hour_from_enqueue": round(3600 * n_slides / wall_s, 1),
            "ms_per_field": round(1000 * busy_s / (n_slides * n_fields), 1),
            "load_average_1min": round(os.getloadavg()[0], 2),
        }
    finally:
        lab.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a folder of field images")
    parser.add_argument("--model", type=Path, default=None, help="classifier folder [the packaged model]")
    parser.add_argument("--slides", type=int, default=6)
    parser.add_argument("--fields", type=int, default=20)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (or threads:N) to measure")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or not PostgresServer.available() or shutil.which("redis-server") is None:
        raise SystemExit("needs root, redis-server and PostgreSQL's initdb/pg_ctl (see fault_servers)")
    from smearflow.classifier import default_model_dir
    from smearflow.db import upgrade_database

    model_dir = args.model or default_model_dir()
    redis_server, postgres = RedisServer(), PostgresServer()
    root = Path(tempfile.mkdtemp(prefix="smearflow-queue-throughput-"))
    try:
        redis_server.start()
        postgres.init().start()
        upgrade_database(postgres.url)
        runs = [
            measure(root, redis_server.url, postgres.url, Path(model_dir), args.data, spec, args.slides, args.fields, run)
            for run, spec in enumerate(args.workers.split(","))
        ]
        print(json.dumps({"model": str(model_dir), "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
                          "runs": runs}, indent=2))
    finally:
        redis_server.stop()
        postgres.remove()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
