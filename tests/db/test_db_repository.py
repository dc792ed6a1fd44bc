"""Repository functions on SQLite and (marked integration) PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy import func, select

from smearflow.db import repository as repo
from smearflow.db.models import BenchmarkResult, Cell, Field, ModelVersion, Slide, SlideCount, TrainingRun
from smearflow.db.values import parse_iso_time
from smearflow.errors import BadSlideError
from smearflow.types import Cell as PipelineCell
from smearflow.types import ClassifiedCell, FieldResult, SlideResult


def _n(session, model, *where):
    return session.scalar(select(func.count()).select_from(model).where(*where))


# --------------------------------------------------------------------------- slides


def test_slide_round_trip(db_session, make_slide_info, make_slide_result):
    session = db_session
    info = make_slide_info()
    slide = repo.register_slide(session, info)
    assert (slide.status, slide.attempts, slide.patient.patient_code) == ("queued", 0, "P-01")
    assert slide.collected_at == datetime(2024, 3, 1, 8, 30, tzinfo=UTC)
    model = repo.get_or_create_model_version(session, "cnn-3f2a9c1b", "cnn", "/models/cnn", {"accuracy": 0.9})
    repo.store_slide_result(
        session, make_slide_result(info, failed_field=True, model_version="cnn-3f2a9c1b"), model
    )
    repo.register_slide(session, make_slide_info("S-002", patient_id="P-02"))
    session.commit()
    session.expunge_all()

    slide = repo.get_slide(session, "S-001")
    assert slide.status == "done"
    assert slide.error == "f2.png: BadImageError: truncated"
    assert slide.finished_at.tzinfo is not None
    assert slide.collected_at == datetime(2024, 3, 1, 8, 30, tzinfo=UTC)  # aware UTC after a reload
    fields = {f.name: f for f in slide.fields}
    assert (fields["f1.png"].width_px, fields["f1.png"].height_px, fields["f1.png"].status) == (128, 96, "done")
    assert (fields["f2.png"].status, fields["f2.png"].error) == ("failed", "BadImageError: truncated")
    cells = fields["f1.png"].cells
    assert len(cells) == 3 + 3 + 1
    wbc = [c for c in cells if c.kind == "wbc"]
    assert sorted(c.label for c in wbc) == ["lymphocyte", "neutrophil", "neutrophil"]
    assert all(c.model_version_id == model.id and c.confidence == pytest.approx(0.9) for c in wbc)
    rbc = sorted((c for c in cells if c.kind == "rbc"), key=lambda c: c.bbox_row_min)
    assert [c.counted for c in rbc] == [False, True, True]
    assert (rbc[0].label, rbc[0].model_version_id, rbc[0].touches_border) == (None, None, True)
    assert (rbc[0].bbox_row_min, rbc[0].bbox_col_min, rbc[0].bbox_row_max, rbc[0].bbox_col_max) == (50, 5, 54, 9)
    assert (rbc[0].centroid_row, rbc[0].area_px) == (52.0, 4)

    expected = {
        "slide_id": "S-001",
        "patient_id": "P-01",
        "status": "done",
        "collected_at": "2024-03-01T08:30:00+00:00",
        "model_version": "cnn-3f2a9c1b",
        "counts": {"lymphocyte": 1, "neutrophil": 2},
        "wbc_total": 3,
        "rbc_count": 2,
        "platelet_count": 1,
        "finished_at": slide.finished_at.isoformat(),
        "error": "f2.png: BadImageError: truncated",
    }
    assert repo.counts_for(session, patient_code="P-01") == [expected]
    assert repo.counts_for(session, slide_code="S-001") == [expected]
    assert repo.counts_for(session, patient_code="P-01", slide_code="S-002") == []
    assert repo.counts_for(session, patient_code="nobody") == []
    everything = repo.counts_for(session)
    assert [row["slide_id"] for row in everything] == ["S-001", "S-002"]
    assert everything[1] | {"finished_at": None} == {
        "slide_id": "S-002", "patient_id": "P-02", "status": "queued",
        "collected_at": "2024-03-01T08:30:00+00:00", "model_version": None, "counts": {},
        "wbc_total": 0, "rbc_count": None, "platelet_count": None, "finished_at": None, "error": None,
    }


def test_wbc_total_leaves_out_the_platelet_label(db_session, make_slide_result):
    result = make_slide_result(labels=("neutrophil", "platelet", "platelet"))
    repo.store_slide_result(db_session, result, None)
    [row] = repo.counts_for(db_session)
    assert row["counts"] == {"neutrophil": 1, "platelet": 2}
    assert row["wbc_total"] == result.wbc_total == 1
    assert row["model_version"] is None


def test_register_slide_upserts_and_requeues(db_session, make_slide_info):
    session = db_session
    slide = repo.register_slide(session, make_slide_info(patient_id="P-01"))
    slide.attempts, slide.requeues, slide.error = 2, 1, "killed"
    repo.register_slide(
        session, make_slide_info(patient_id="P-01", folder="/moved", collected_at=None), done_dir="/d", failed_dir="/f"
    )
    assert _n(session, Slide) == 1
    assert (slide.folder, slide.patient.patient_code, slide.collected_at) == ("/moved", "P-01", None)
    assert (slide.status, slide.attempts, slide.requeues, slide.error) == ("queued", 0, 0, None)
    assert (slide.done_dir, slide.failed_dir) == ("/d", "/f") and slide.queued_at is not None
    repo.register_slide(
        session, make_slide_info(patient_id="P-09", collected_at="2024-03-02"), status="running", reassign=True
    )
    assert slide.patient.patient_code == "P-09"
    assert slide.collected_at == datetime(2024, 3, 2, tzinfo=UTC)
    assert slide.status == "running"


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"status": "paused"}, ValueError, "status must be one of .* Received: status='paused'"),
        ({"slide_id": " "}, ValueError, "Received: slide_id=' '"),
        ({"patient_id": ""}, ValueError, "Received: patient_id=''"),
        ({"collected_at": "yesterday"}, BadSlideError, "Received: collected_at='yesterday'"),
    ],
)
def test_register_slide_rejects_bad_input(db_session, make_slide_info, changes, error, match):
    changes = dict(changes)
    status = changes.pop("status", "queued")
    info = make_slide_info(**{k: v for k, v in changes.items() if k != "slide_id"})
    if "slide_id" in changes:
        info = make_slide_info(slide_id=changes["slide_id"])
    with pytest.raises(error, match=match):
        repo.register_slide(db_session, info, status=status)


def test_parse_collected_at_forms():
    assert repo.parse_collected_at(None) is None
    assert repo.parse_collected_at("") is None
    assert repo.parse_collected_at("2024-03-01T10:00:00Z") == datetime(2024, 3, 1, 10, tzinfo=UTC)
    assert repo.parse_collected_at("2024-03-01 10:00") == datetime(2024, 3, 1, 10, tzinfo=UTC)


def test_parse_iso_time_forms():
    assert parse_iso_time("2026-12-01") == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_iso_time("2026-12-01T09:30") == datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    kept = parse_iso_time("2026-12-01T09:30+01:00")
    assert kept.utcoffset() == timedelta(hours=1) and kept == datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
    for bad in ("last week", "2026-13-01", ""):
        with pytest.raises(ValueError):
            parse_iso_time(bad)


def test_reanalysis_replaces_the_previous_result(db_session, make_slide_result):
    session = db_session
    repo.store_slide_result(session, make_slide_result(labels=("neutrophil", "monocyte")), None)
    session.commit()
    second = make_slide_result(labels=("eosinophil",), n_rbc=5)
    slide = repo.store_slide_result(session, second, None)
    session.commit()
    assert _n(session, SlideCount) == 1
    assert _n(session, Field) == 1
    assert _n(session, Cell) == 1 + 5 + 1
    [row] = repo.counts_for(session, slide_code="S-001")
    assert row["counts"] == {"eosinophil": 1}
    assert (row["rbc_count"], row["wbc_total"]) == (4, 1)
    assert [c.label for c in slide.counts] == ["eosinophil"]  # the loaded collections are fresh

    session.add(SlideCount(slide_id=slide.id, label="eosinophil", count=3))
    with pytest.raises(sa.exc.IntegrityError):
        session.flush()


def test_deleting_a_slide_cascades_to_fields_cells_and_counts(db_session, make_slide_result):
    session = db_session
    slide = repo.store_slide_result(session, make_slide_result(), None)
    session.commit()
    session.execute(sa.delete(Slide).where(Slide.id == slide.id))
    session.commit()
    assert (_n(session, Field), _n(session, Cell), _n(session, SlideCount)) == (0, 0, 0)


def test_failure_keeps_the_earlier_result(db_session, make_slide_info, make_slide_result):
    session = db_session
    repo.store_slide_result(session, make_slide_result(), None)
    session.commit()
    before = repo.counts_for(session)[0]

    slide = repo.record_slide_failure(session, make_slide_info(), FileNotFoundError("no folder"))
    session.commit()
    after = repo.counts_for(session)[0]
    assert after == before  # status, counts, patient and error all unchanged
    assert slide.status == "done"
    assert [(e.kind, e.detail) for e in repo.slide_events(session, "S-001")] == [
        ("analysis-failed", "FileNotFoundError: no folder")
    ]

    failed = SlideResult(
        info=make_slide_info(), status="failed", errors=("every field failed",), counts={},
        fields=(FieldResult(name="f1.png", status="failed", error="BadImageError: x"),),
        rbc_count=0, platelet_count=0, model_version=None,
    )
    repo.store_slide_result(session, failed, None)
    session.commit()
    assert repo.counts_for(session)[0] == before
    assert repo.slide_events(session, "S-001")[-1].detail == "every field failed"
    assert _n(session, Field, Field.status == "done") == 1


def test_failed_result_of_a_new_slide_is_stored_field_by_field(db_session, make_slide_info):
    failed = SlideResult(
        info=make_slide_info("S-NEW"), status="failed", errors=(), counts={},
        fields=(FieldResult(name="f1.png", status="failed", error="BadImageError: x"),),
        rbc_count=0, platelet_count=0, model_version=None,
    )
    slide = repo.store_slide_result(db_session, failed, None)
    assert (slide.status, slide.error) == ("failed", None)
    assert [(f.name, f.error) for f in slide.fields] == [("f1.png", "BadImageError: x")]


def test_record_slide_failure_creates_the_slide(db_session, make_slide_info):
    session = db_session
    slide = repo.record_slide_failure(session, "S-GONE", "folder missing")
    assert (slide.slide_code, slide.status, slide.folder) == ("S-GONE", "failed", None)
    assert slide.error == "folder missing"
    assert repo.record_slide_failure(session, "S-GONE", "again") is slide
    bad = make_slide_info("S-BAD", patient_id=" ", collected_at="not a date")
    slide = repo.record_slide_failure(session, bad, BadSlideError("bad slide.json"))
    assert (slide.collected_at, slide.patient, slide.error) == (None, None, "BadSlideError: bad slide.json")


def test_record_slide_failure_rejects_bad_input(db_session):
    with pytest.raises(TypeError, match="Received: int 42"):
        repo.record_slide_failure(db_session, 42, "x")
    with pytest.raises(ValueError, match="Received: slide_id=''"):
        repo.record_slide_failure(db_session, "", "x")


def test_store_slide_result_rejects_bad_results(db_session, make_slide_result):
    session = db_session
    result = make_slide_result()
    with pytest.raises(ValueError, match="Received: result.status='running'"):
        repo.store_slide_result(session, SlideResult(**{**result.__dict__, "status": "running"}), None)
    bad_field = FieldResult(name="f9.png", status="queued")
    with pytest.raises(ValueError, match="status of field 'f9.png'.*Received.*'queued'"):
        repo.store_slide_result(session, SlideResult(**{**result.__dict__, "fields": (bad_field,)}), None)
    mask = np.ones((2, 2), bool)
    blob = PipelineCell(kind="blob", bbox=(0, 0, 2, 2), centroid=(1, 1), area_px=4, mask=mask)
    odd = ClassifiedCell(blob, None)
    odd_field = FieldResult(name="f3.png", status="done", cells=(odd,))
    with pytest.raises(ValueError, match="kind of a cell in field 'f3.png'.*Received.*'blob'"):
        repo.store_slide_result(session, SlideResult(**{**result.__dict__, "fields": (odd_field,)}), None)
    model = repo.get_or_create_model_version(session, "cnn-a", "cnn", None, None)
    with pytest.raises(ValueError, match="Received: result.model_version='cnn-b', model_version='cnn-a'"):
        repo.store_slide_result(session, SlideResult(**{**result.__dict__, "model_version": "cnn-b"}), model)
    assert _n(session, Slide) == 0


def test_set_slide_status(db_session, make_slide_info):
    session = db_session
    repo.register_slide(session, make_slide_info())
    slide = repo.set_slide_status(session, "S-001", "running")
    assert slide.started_at is not None and slide.finished_at is None
    slide = repo.set_slide_status(session, "S-001", "queued", error=ConnectionError("broker down"))
    assert (slide.status, slide.error) == ("queued", "ConnectionError: broker down")
    slide = repo.set_slide_status(session, "S-001", "done")
    assert slide.finished_at is not None and slide.error is None
    with pytest.raises(ValueError, match="Received: status='finished'"):
        repo.set_slide_status(session, "S-001", "finished")
    with pytest.raises(LookupError, match="slide_code='S-404'"):
        repo.set_slide_status(session, "S-404", "done")


def test_a_slide_is_never_moved_to_another_patient_without_reassign(db_session, make_slide_info, make_slide_result):
    from smearflow.errors import SlideConflictError

    session = db_session
    repo.store_slide_result(session, make_slide_result(make_slide_info("S-001", patient_id="P-01")), None)
    session.commit()
    for patient in ("P-02", None):
        with pytest.raises(SlideConflictError, match="slide S-001 is stored for patient P-01; this folder names") as info:
            repo.store_slide_result(session, make_slide_result(make_slide_info("S-001", patient_id=patient)), None)
        assert (patient or "no patient") in str(info.value) and "--reassign" in str(info.value)
        session.rollback()
        with pytest.raises(SlideConflictError, match="stored for patient P-01"):
            repo.register_slide(session, make_slide_info("S-001", patient_id=patient))
        session.rollback()
    assert repo.counts_for(session, patient_code="P-01")[0]["slide_id"] == "S-001"

    repo.store_slide_result(
        session, make_slide_result(make_slide_info("S-001", patient_id="P-02")), None, reassign=True, actor="tech-7"
    )
    session.commit()
    assert repo.counts_for(session, patient_code="P-01") == []
    assert repo.counts_for(session, patient_code="P-02")[0]["slide_id"] == "S-001"
    (event,) = repo.slide_events(session, "S-001")
    assert (event.kind, event.detail, event.actor) == ("reassigned", "patient P-01 -> P-02", "tech-7")


def test_a_slide_without_a_patient_may_be_given_one(db_session, make_slide_info, make_slide_result):
    session = db_session
    repo.store_slide_result(session, make_slide_result(make_slide_info("S-001", patient_id=None)), None)
    repo.store_slide_result(session, make_slide_result(make_slide_info("S-001", patient_id="P-05")), None)
    session.commit()
    assert repo.counts_for(session, patient_code="P-05")[0]["slide_id"] == "S-001"
    assert repo.slide_events(session, "S-001") == []


def test_a_failed_attempt_never_changes_stored_metadata_or_results(db_session, make_slide_info, make_slide_result):
    session = db_session
    repo.store_slide_result(session, make_slide_result(make_slide_info("S-001", patient_id="P-01")), None)
    session.commit()
    before = repo.counts_for(session, slide_code="S-001")
    bare = make_slide_info("S-001", patient_id=None, collected_at=None)
    repo.record_slide_failure(session, bare, "bad slide.json")
    repo.store_slide_result(session, make_slide_result(bare, status="failed", labels=()), None)
    repo.record_slide_failure(session, "S-001", "the folder vanished")
    session.commit()
    assert repo.counts_for(session, slide_code="S-001") == before
    assert repo.counts_for(session, patient_code="P-01")[0]["status"] == "done"
    events = repo.slide_events(session, "S-001")
    assert [e.kind for e in events] == ["analysis-failed"] * 3
    assert events[0].detail == "bad slide.json" and events[2].detail == "the folder vanished"


def test_a_partial_result_keeps_partial_after_a_failed_attempt(db_session, make_slide_info, make_slide_result):
    session = db_session
    info = make_slide_info()
    repo.store_slide_result(session, make_slide_result(info, failed_field=True, status="partial"), None)
    repo.record_slide_failure(session, "S-001", "gone")
    session.commit()
    assert repo.get_slide(session, "S-001").status == "partial"


def test_flagged_fields_are_stored_with_their_reason_and_measures(db_session, make_slide_info):
    session = db_session
    info = make_slide_info()
    fields = (
        FieldResult(name="f1.png", status="flagged", error="f1.png: not counted: blank field", quality={"contrast": 2.0}),
        FieldResult(name="f2.png", status="failed", error="f2.png: unreadable"),
    )
    result = SlideResult(info, "failed", fields, {}, 0, 0, None, tuple(f.error for f in fields))
    repo.store_slide_result(session, result, None)
    session.commit()
    slide = repo.get_slide(session, "S-001")
    stored = {f.name: f for f in slide.fields}
    assert (stored["f1.png"].status, stored["f1.png"].quality) == ("flagged", {"contrast": 2.0})
    assert stored["f2.png"].quality is None and slide.status == "failed"


def test_insert_unless_present_refuses_other_databases():
    from types import SimpleNamespace

    fake = SimpleNamespace(get_bind=lambda: SimpleNamespace(dialect=SimpleNamespace(name="mysql")))
    with pytest.raises(NotImplementedError, match="Received: dialect='mysql'"):
        repo.insert_unless_present(fake, Slide, {"slide_code": "S"}, "slide_code")


def test_add_slide_event_checks_the_kind(db_session, make_slide_info):
    slide = repo.register_slide(db_session, make_slide_info())
    with pytest.raises(ValueError, match="Received: kind='renamed'"):
        repo.add_slide_event(db_session, slide, "renamed", "x")


# --------------------------------------------------------------------------- model versions


def test_model_versions_activate_exclusively(db_session):
    session = db_session
    a = repo.get_or_create_model_version(session, "cnn-a", "cnn", "/m/a", {"accuracy": np.float32(0.5)})
    b = repo.get_or_create_model_version(session, "vgg-b", "vgg16", "/m/b", None)
    assert repo.active_model_version(session) is None
    assert a.metrics == {"accuracy": 0.5} and b.metrics == {}
    repo.activate_model_version(session, "cnn-a")
    repo.activate_model_version(session, "vgg-b")
    session.commit()
    assert repo.active_model_version(session) is b
    assert [(v.name, v.active) for v in repo.list_model_versions(session)] == [("cnn-a", False), ("vgg-b", True)]
    repo.activate_model_version(session, "vgg-b")  # activating the active one changes nothing
    assert _n(session, ModelVersion, ModelVersion.active.is_(True)) == 1
    again = repo.get_or_create_model_version(session, "cnn-a", "cnn", "/moved/a", {"ignored": 1})
    assert again is a and a.path == "/moved/a" and a.metrics == {"accuracy": 0.5}


def test_model_version_errors(db_session):
    session = db_session
    repo.get_or_create_model_version(session, "cnn-a", "cnn", None, None)
    with pytest.raises(ValueError, match="architecture 'cnn'. Received: architecture='vgg16'"):
        repo.get_or_create_model_version(session, "cnn-a", "vgg16", None, None)
    with pytest.raises(ValueError, match="Received: name=''"):
        repo.get_or_create_model_version(session, "", "cnn", None, None)
    with pytest.raises(TypeError, match="metrics must be a dict. Received: metrics=\\[0.5\\]"):
        repo.get_or_create_model_version(session, "cnn-b", "cnn", None, [0.5])
    with pytest.raises(TypeError, match="Received a object"):
        repo.get_or_create_model_version(session, "cnn-b", "cnn", None, {"x": object()})
    with pytest.raises(LookupError, match="name='nope'"):
        repo.activate_model_version(session, "nope")


# --------------------------------------------------------------------------- runs


def test_benchmark_run_recording(db_session, tmp_path):
    session = db_session
    run = repo.start_benchmark_run(session, "nightly", {"folds": 5, "seed": np.int64(7)}, str(tmp_path))
    assert (run.status, run.config) == ("running", {"folds": 5, "seed": 7})
    metrics = {
        "accuracy": np.float64(0.8),
        "macro_f1": 0.75,
        "confusion": np.eye(2, dtype=int),
        "loss": float("nan"),
    }
    fold0 = repo.add_benchmark_result(session, run, "cnn", 0, metrics, seconds=12.5)
    aggregate = repo.add_benchmark_result(session, run, "cnn", -1, {}, accuracy=0.81, macro_f1=0.7)
    assert (fold0.accuracy, fold0.macro_f1, fold0.seconds) == (0.8, 0.75, 12.5)
    assert fold0.metrics["confusion"] == [[1, 0], [0, 1]] and fold0.metrics["loss"] is None
    assert (aggregate.fold, aggregate.accuracy) == (-1, 0.81)
    repo.finish_benchmark_run(session, run, "failed", error=MemoryError("oom"))
    session.commit()
    session.expunge_all()
    stored = session.scalars(select(BenchmarkResult).order_by(BenchmarkResult.id)).all()
    assert [r.fold for r in stored] == [0, -1]
    assert stored[0].run.status == "failed" and stored[0].run.error == "MemoryError: oom"
    assert stored[0].run.finished_at.tzinfo is not None


def test_benchmark_errors(db_session):
    session = db_session
    with pytest.raises(ValueError, match="Received: name=''"):
        repo.start_benchmark_run(session, "")
    run = repo.start_benchmark_run(session, "b")
    with pytest.raises(ValueError, match="Received: fold=-2"):
        repo.add_benchmark_result(session, run, "cnn", -2, {})
    with pytest.raises(ValueError, match="Received: architecture=''"):
        repo.add_benchmark_result(session, run, "", 0, {})
    with pytest.raises(ValueError, match="Received: status='running'"):
        repo.finish_benchmark_run(session, run, "running")


def test_training_run_recording(db_session):
    session = db_session
    candidate = repo.get_or_create_model_version(session, "cnn-c", "cnn", None, None)
    started = datetime(2024, 3, 1, 2, 0)  # naive: taken as UTC
    run = repo.record_training_run(
        session, outcome="kept-active", dataset="pbc", architecture="cnn",
        metrics={"macro_f1": np.float32(0.5)}, candidate=candidate, started_at=started,
    )
    session.commit()
    session.expunge_all()
    stored = session.get(TrainingRun, run.id)
    assert (stored.outcome, stored.metrics) == ("kept-active", {"macro_f1": 0.5})
    assert stored.candidate_model_version.name == "cnn-c"
    assert stored.started_at == datetime(2024, 3, 1, 2, 0, tzinfo=UTC)
    failed = repo.record_training_run(session, outcome="failed", error=RuntimeError("nan loss"))
    assert (failed.error, failed.metrics, failed.candidate_model_version) == ("RuntimeError: nan loss", {}, None)
    with pytest.raises(ValueError, match="Received: outcome=''"):
        repo.record_training_run(session, outcome="")


def test_cells_store_their_top_classes_and_uncertainty(db_session, make_slide_info):
    from smearflow.types import Cell as PipelineCell
    from smearflow.types import Classification

    mask = np.ones((4, 4), bool)
    answer = Classification("ig", 0.41, top_classes=(("ig", 0.41), ("neutrophil", 0.39), ("basophil", 0.1)), uncertain=True)
    cell = ClassifiedCell(PipelineCell("wbc", (0, 0, 4, 4), (2.0, 2.0), 16, mask), answer)
    field = FieldResult(name="f1.png", status="done", cells=(cell,), wbc_counts={"ig": 1})
    repo.store_slide_result(db_session, SlideResult(make_slide_info(), "done", (field,), {"ig": 1}, 0, 0, None), None)
    db_session.commit()
    stored = db_session.scalars(select(Cell)).one()
    assert stored.uncertain is True
    assert stored.top_classes == [["ig", 0.41], ["neutrophil", 0.39], ["basophil", 0.1]]
