"""Two processes storing their first slides at the same moment on one fresh PostgreSQL database."""

from __future__ import annotations

import multiprocessing
import uuid

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.integration


def _store_first_slide(url: str, slide_id: str, barrier, results) -> None:
    """One 'worker': wait for the other, then store a slide with the same patient and model version."""
    from types import SimpleNamespace

    from smearflow.db import make_engine, session_factory, session_scope
    from smearflow.jobs import store_result
    from smearflow.types import FieldResult, SlideInfo, SlideResult

    engine = make_engine(url)
    classifier = SimpleNamespace(
        version="cnn-race", folder=SimpleNamespace(architecture="cnn", path="/models/cnn", metrics={"accuracy": 0.9})
    )
    info = SlideInfo(slide_id, "P-SHARED", None, None, f"/inbox/{slide_id}", ())
    field = FieldResult(name="f.png", status="done", wbc_counts={"lymphocyte": 1})
    result = SlideResult(info, "done", (field,), {"lymphocyte": 1}, 5, 1, "cnn-race")
    try:
        factory = session_factory(engine)
        barrier.wait(timeout=30)
        with session_scope(factory) as session:
            store_result(session, result, classifier)
        results.put((slide_id, "stored"))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        results.put((slide_id, f"{type(exc).__name__}: {exc}"))
    finally:
        engine.dispose()


@pytest.mark.parametrize("attempt", range(3))
def test_two_processes_store_their_first_slides_at_once(postgres_server_url, attempt):
    from smearflow.db import make_engine, repository, session_factory, session_scope, upgrade_database
    from smearflow.db.models import ModelVersion, Patient

    schema = f"smearflow_race_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_server_url)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.engine.make_url(postgres_server_url).update_query_dict({"options": f"-csearch_path={schema}"})
    url = url.render_as_string(hide_password=False)
    try:
        upgrade_database(url)
        context = multiprocessing.get_context("spawn")
        barrier, results = context.Barrier(2), context.Queue()
        workers = [context.Process(target=_store_first_slide, args=(url, code, barrier, results)) for code in ("S-A", "S-B")]
        for worker in workers:
            worker.start()
        outcomes = dict(results.get(timeout=120) for _ in workers)
        for worker in workers:
            worker.join(timeout=30)
        assert outcomes == {"S-A": "stored", "S-B": "stored"}
        engine = make_engine(url)
        with session_scope(session_factory(engine)) as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(ModelVersion)) == 1
            assert session.scalar(sa.select(sa.func.count()).select_from(Patient)) == 1
            assert {row["slide_id"] for row in repository.counts_for(session, patient_code="P-SHARED")} == {"S-A", "S-B"}
        engine.dispose()
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
