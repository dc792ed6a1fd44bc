"""Review in the database: the model's class kept, every change recorded, sign-off, agreement (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from review_testkit import store_review_slide
from sqlalchemy import select

from smearflow.db import review
from smearflow.db.engine import session_factory, session_scope
from smearflow.db.models import Cell, CellReview, SlideSignoff


@pytest.fixture
def factory(db_engine):
    return session_factory(db_engine)


def _wbc(factory, slide="S-R1"):
    with session_scope(factory) as session:
        return [c for c in review.slide_cells(session, slide) if c.reviewable]


def test_a_stored_slide_reads_back_pre_classified_with_the_analysis_numbers(factory, tmp_path):
    result = store_review_slide(factory, tmp_path, failed_field=True, unclassified=1)
    with session_scope(factory) as session:
        (stored,) = review.stored_slides(session, uncertain_below=0.5)
    assert stored.differential == "pre-classified" and stored.status == "partial"
    assert stored.counts == stored.reviewed_counts == result.counts
    assert stored.unclassified_wbc == result.unclassified_wbc == 2
    assert stored.uncertain_wbc == 2  # confidences 0.4 and 0.3
    assert [f["wbc"] for f in stored.fields] == [3, 2, 0] and stored.fields[2]["status"] == "failed"
    assert stored.errors == list(result.errors)


def test_reclassifying_keeps_the_models_class_and_records_who_and_when(factory, tmp_path):
    store_review_slide(factory, tmp_path)
    cell = _wbc(factory)[0]
    at = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    with session_scope(factory) as session:
        changed = review.review_cell(session, "S-R1", cell.id, "monocyte", "  Ann  ", now=at)
    assert (changed.label, changed.review_label, changed.reviewed_by, changed.reviewed_at) == (cell.label, "monocyte", "Ann", at)
    with session_scope(factory) as session:
        stored = review.stored_slide(session, "S-R1")
        row = session.get(Cell, cell.id)
        assert row.label == cell.label  # never overwritten
        history = review.review_history(session, "S-R1")
    assert stored.differential == "in review" and stored.counts["neutrophil"] == 3
    assert stored.reviewed_counts == {"lymphocyte": 1, "monocyte": 2, "neutrophil": 2}
    assert stored.changed_cells == 1
    assert history == [{"at": at, "who": "Ann", "what": "cell", "cell_id": cell.id, "field": "field_01.png",
                        "model_label": "neutrophil", "previous_label": "neutrophil", "label": "monocyte"}]


def test_every_change_is_history_and_an_artefact_leaves_the_differential(factory, tmp_path):
    store_review_slide(factory, tmp_path)
    cell = _wbc(factory)[0]
    with session_scope(factory) as session:
        review.review_cell(session, "S-R1", cell.id, "monocyte", "Ann")
        review.review_cell(session, "S-R1", cell.id, "monocyte", "Ann")  # no change: no row
        review.review_cell(session, "S-R1", cell.id, "artefact", "Bob")
        review.review_cell(session, "S-R1", cell.id, "neutrophil", "Bob")  # back to the model's class
        review.review_cell(session, "S-R1", cell.id, "artefact", "Bob")
    with session_scope(factory) as session:
        rows = session.scalars(select(CellReview).order_by(CellReview.id)).all()
        stored = review.stored_slide(session, "S-R1")
    assert [(r.previous_label, r.label, r.reviewer) for r in rows] == [
        ("neutrophil", "monocyte", "Ann"), ("monocyte", "artefact", "Bob"),
        ("artefact", "neutrophil", "Bob"), ("neutrophil", "artefact", "Bob"),
    ]
    assert stored.artefacts == 1 and sum(stored.reviewed_counts.values()) == 4


def test_confirming_the_models_class_is_recorded_once(factory, tmp_path):
    store_review_slide(factory, tmp_path)
    cell = _wbc(factory)[0]
    with session_scope(factory) as session:
        review.review_cell(session, "S-R1", cell.id, cell.label, "Ann")
        review.review_cell(session, "S-R1", cell.id, cell.label, "Ann")
        assert len(review.review_history(session, "S-R1")) == 1
        stored = review.stored_slide(session, "S-R1")
    assert stored.differential == "in review" and stored.changed_cells == 0 and stored.reviewed_cells == 1


def test_sign_off_verifies_and_freezes_the_slide_until_reopened(factory, tmp_path):
    store_review_slide(factory, tmp_path)
    cells = _wbc(factory)
    with session_scope(factory) as session:
        review.review_cell(session, "S-R1", cells[1].id, "artefact", "Ann")
        signoff = review.sign_off(session, "S-R1", "Ann", note="ok")
    assert signoff.counts == {"artefact": 1, "monocyte": 1, "neutrophil": 3}
    with session_scope(factory) as session:
        stored = review.stored_slide(session, "S-R1")
    assert (stored.differential, stored.verified_by) == ("verified", "Ann")
    with session_scope(factory) as session, pytest.raises(review.ReviewConflictError, match="is verified: reopen it"):
        review.review_cell(session, "S-R1", cells[0].id, "monocyte", "Bob")
    with session_scope(factory) as session, pytest.raises(review.ReviewConflictError, match="already verified"):
        review.sign_off(session, "S-R1", "Bob")
    with session_scope(factory) as session:
        review.reopen(session, "S-R1", "Bob", note="typo")
        assert review.stored_slide(session, "S-R1").differential == "in review"
        review.review_cell(session, "S-R1", cells[0].id, "monocyte", "Bob")
        review.sign_off(session, "S-R1", "Bob")
        assert [e["what"] for e in review.review_history(session, "S-R1")] == ["cell", "verified", "reopened", "cell", "verified"]
    with session_scope(factory) as session:
        review.reopen(session, "S-R1", "Bob")
        with pytest.raises(review.ReviewConflictError, match="nothing to reopen"):
            review.reopen(session, "S-R1", "Bob")


def test_a_reanalysis_makes_the_sign_off_stale_and_keeps_the_history(factory, tmp_path):
    store_review_slide(factory, tmp_path)
    cell = _wbc(factory)[0]
    with session_scope(factory) as session:
        review.review_cell(session, "S-R1", cell.id, "monocyte", "Ann")
        review.sign_off(session, "S-R1", "Ann")
    store_review_slide(factory, tmp_path)  # analysed again: new cells
    with session_scope(factory) as session:
        stored = review.stored_slide(session, "S-R1")
        history = review.review_history(session, "S-R1")
    assert stored.differential == "pre-classified" and stored.stale_signoff and stored.verified_by is None
    assert history[0]["cell_id"] is None and history[0]["label"] == "monocyte"
    assert [e["what"] for e in history] == ["cell", "verified"]


def test_agreement_counts_every_cell_of_verified_slides_only(factory, tmp_path):
    store_review_slide(factory, tmp_path, "S-A", fields=((("neutrophil", 0.9), ("neutrophil", 0.9), ("lymphocyte", 0.9)),))
    store_review_slide(factory, tmp_path, "S-B", fields=((("monocyte", 0.9), ("neutrophil", 0.9)),), seed=1)
    store_review_slide(factory, tmp_path, "S-C", fields=((("ig", 0.9),),), seed=2)  # never verified
    a, b = _wbc(factory, "S-A"), _wbc(factory, "S-B")
    early = datetime(2026, 1, 1, tzinfo=UTC)
    with session_scope(factory) as session:
        review.review_cell(session, "S-A", a[0].id, "monocyte", "Ann")
        review.review_cell(session, "S-A", a[2].id, "artefact", "Ann")
        review.sign_off(session, "S-A", "Ann", now=early)
        review.sign_off(session, "S-B", "Bob")
        review.review_cell(session, "S-C", _wbc(factory, "S-C")[0].id, "neutrophil", "Ann")
    with session_scope(factory) as session:
        figures = review.agreement(session)
        recent = review.agreement(session, since=early + timedelta(days=1))
    assert (figures["slides"], figures["cells"], figures["kept"], figures["changed"]) == (2, 5, 3, 2)
    assert figures["per_class"]["neutrophil"] == {"cells": 3, "kept": 2, "changed": 1, "to_artefact": 0,
                                                  "kept_fraction": pytest.approx(2 / 3)}
    assert figures["per_class"]["lymphocyte"]["to_artefact"] == 1
    matrix = figures["confusion_matrix"]
    columns = figures["reviewer_classes"]
    row = figures["model_classes"].index("neutrophil")
    assert matrix[row][columns.index("neutrophil")] == 2 and matrix[row][columns.index("monocyte")] == 1
    assert columns[-1] == "artefact" and len(figures["model_classes"]) == 8
    assert (recent["slides"], recent["cells"], recent["kept"]) == (1, 2, 2)


def test_verified_cells_carry_their_final_class(factory, tmp_path):
    store_review_slide(factory, tmp_path)
    cell = _wbc(factory)[0]
    with session_scope(factory) as session:
        review.review_cell(session, "S-R1", cell.id, "monocyte", "Ann")
        assert review.verified_cells(session) == []
        review.sign_off(session, "S-R1", "Ann")
    with session_scope(factory) as session:
        cells = review.verified_cells(session)
        diameters = review.rbc_diameters_px(session, sorted({c.cell.field_id for c in cells}))
    assert len(cells) == 5 and cells[0].cell.final_label == "monocyte" and cells[0].verified_by == "Ann"
    assert all(60 < d < 80 for d in diameters.values())  # synthetic red cells are 70 px across


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda s, c: review.review_cell(s, "S-R1", c, "blast", "Ann"), ValueError, "label must be one of"),
        (lambda s, c: review.review_cell(s, "S-R1", c, "monocyte", " "), ValueError, "a reviewer name is required"),
        (lambda s, c: review.review_cell(s, "S-R1", c, "monocyte", "x" * 65), ValueError, "at most 64 characters"),
        (lambda s, c: review.review_cell(s, "S-R1", c, "monocyte", "A\x00nn"), ValueError, "printable"),
        (lambda s, c: review.review_cell(s, "nope", c, "monocyte", "Ann"), LookupError, "No slide"),
        (lambda s, c: review.review_cell(s, "S-R1", 10**9, "monocyte", "Ann"), LookupError, "has no cell"),
        (lambda s, c: review.get_cell(s, "S-R1", 10**9), LookupError, "has no cell"),
        (lambda s, c: review.stored_slide(s, "nope"), LookupError, "No slide"),
        (lambda s, c: review.slide_cells(s, "nope"), LookupError, "No slide"),
        (lambda s, c: review.slide_fields(s, "nope"), LookupError, "No slide"),
        (lambda s, c: review.slide_folder(s, "nope"), LookupError, "No slide"),
        (lambda s, c: review.review_history(s, "nope"), LookupError, "No slide"),
        (lambda s, c: review.sign_off(s, "nope", "Ann"), LookupError, "No slide"),
        (lambda s, c: review.reopen(s, "S-R1", "Ann"), review.ReviewConflictError, "nothing to reopen"),
        (lambda s, c: review.sign_off(s, "S-R1", "Ann", note="x" * 2001), ValueError, "note must be at most"),
    ],
)
def test_bad_review_requests_are_refused(factory, tmp_path, call, error, message):
    store_review_slide(factory, tmp_path)
    cell = _wbc(factory)[0]
    with session_scope(factory) as session, pytest.raises(error, match=message):
        call(session, cell.id)


def test_only_cells_of_the_differential_and_finished_slides_are_reviewed(factory, tmp_path):
    store_review_slide(factory, tmp_path, unclassified=1)
    with session_scope(factory) as session:
        cells = review.slide_cells(session, "S-R1")
        rbc = next(c for c in cells if c.kind == "rbc")
        unclassified = next(c for c in cells if c.kind == "wbc" and c.label is None)
        for cell in (rbc, unclassified):
            with pytest.raises(review.ReviewConflictError, match="not part of the differential"):
                review.review_cell(session, "S-R1", cell.id, "monocyte", "Ann")
        from smearflow.db import repository

        repository.set_slide_status(session, "S-R1", "running")
        with pytest.raises(review.ReviewConflictError, match="only a done or partial slide"):
            review.sign_off(session, "S-R1", "Ann")
    with session_scope(factory) as session:
        assert session.scalars(select(SlideSignoff)).all() == []
