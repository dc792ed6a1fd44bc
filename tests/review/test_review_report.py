"""The slide report and the patient history: their numbers are the database's."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from review_testkit import store_review_slide
from sqlalchemy import func, select

from smearflow.db import review
from smearflow.db.engine import session_scope
from smearflow.db.models import Cell, Field, Slide
from smearflow.reporting.flags import FlagConfig
from smearflow.reporting.history import load_patient_history, write_patient_history
from smearflow.reporting.report import load_slide_report, write_slide_report
from smearflow.reporting.stats import percent_interval

LABELS = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "neutrophil", "lymphocyte", "neutrophil", "basophil")


class _Tables(HTMLParser):
    """The text of every cell of every row of the table with a given id."""

    def __init__(self, table_id):
        super().__init__()
        self.table_id, self.inside, self.rows, self.cell = table_id, False, [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id") == self.table_id:
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(self.cell.strip())
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def _table(html, table_id):
    parser = _Tables(table_id)
    parser.feed(html)
    return parser.rows


def _many_cells(n, offset=0):
    return tuple((LABELS[(i + offset) % len(LABELS)], round(0.25 + 0.7 * ((i * 37) % 100) / 100, 3)) for i in range(n))


@pytest.fixture
def big_slide(review_db, tmp_path):
    """A slide of 126 white cells over three fields (and a failed field), one cell changed, one artefact, signed off."""
    _, factory = review_db
    store_review_slide(factory, tmp_path, "S-BIG", "P-1", fields=(_many_cells(40), _many_cells(46, 3), _many_cells(40, 5)),
                       failed_field=True, unclassified=1, notes="<b>not bold</b>")
    with session_scope(factory) as session:
        cells = [c for c in review.slide_cells(session, "S-BIG") if c.reviewable]
        review.review_cell(session, "S-BIG", cells[0].id, "ig", "Ann")
        review.review_cell(session, "S-BIG", cells[1].id, "artefact", "Ann")
        review.sign_off(session, "S-BIG", "Ann")
    return factory


def _database_differential(session, slide_code, reviewed):
    label = func.coalesce(Cell.review_label, Cell.label) if reviewed else Cell.label
    query = (
        select(label, func.count())
        .join(Field, Cell.field_id == Field.id).join(Slide, Slide.id == Field.slide_id)
        .where(Slide.slide_code == slide_code, Cell.kind == "wbc", Cell.label.is_not(None), Field.status == "done")
        .group_by(label)
    )
    return {name: n for name, n in session.execute(query) if name != "artefact"}


def test_the_report_numbers_are_the_databases(big_slide, tmp_path):
    with session_scope(big_slide) as session:
        report = load_slide_report(session, "S-BIG", FlagConfig())
        model = _database_differential(session, "S-BIG", reviewed=False)
        verified = _database_differential(session, "S-BIG", reviewed=True)
        slide = session.scalars(select(Slide).where(Slide.slide_code == "S-BIG")).one()
        rbc, platelets = slide.rbc_count, slide.platelet_count
    html = write_slide_report(report, tmp_path / "out").read_text(encoding="utf-8")
    rows = {row[0]: row[1:] for row in _table(html, "differential")[1:]}
    model_total, verified_total = sum(model.values()), sum(verified.values())
    assert model_total == 126 and verified_total == 125
    for label in ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil"):
        n, v = model.get(label, 0), verified.get(label, 0)
        low, high = percent_interval(n, model_total)
        vlow, vhigh = percent_interval(v, verified_total)
        assert rows[label] == [str(n), f"{100 * n / model_total:.1f}", f"{low:.1f}–{high:.1f}",
                               str(v), f"{100 * v / verified_total:.1f}", f"{vlow:.1f}–{vhigh:.1f}"], label
    assert rows["white cells classified"][0] == "126" and rows["white cells classified"][3] == "125"
    assert rows["platelets (segmented)"][0] == str(platelets) and rows["red cells (segmented)"][0] == str(rbc)
    assert rows["white cells counted, too cut off to classify"][0] == "3"
    assert "verified</span>" in html and "by Ann" in html
    assert "&lt;b&gt;not bold&lt;/b&gt;" in html and "<b>not bold</b>" not in html
    assert "fields-not-counted" in html and "too-few-wbc" not in html


def test_the_report_writes_every_field_and_every_crop(big_slide, tmp_path):
    from PIL import Image

    with session_scope(big_slide) as session:
        report = load_slide_report(session, "S-BIG")
    out = tmp_path / "out"
    html = write_slide_report(report, out).read_text(encoding="utf-8")
    assert sorted(p.name for p in (out / "fields").iterdir()) == ["01.png", "02.png", "03.png"]
    assert len(list((out / "cells").iterdir())) == 126
    assert Image.open(out / "fields" / "01.png").size == (640, 480)
    assert Image.open(out / "differential.png").format == "PNG"
    assert "broken.png — failed" in html and "not analysed" in html
    assert 'src="http' not in html and "<script" not in html  # self-contained


def test_the_gallery_shows_the_least_confident_cells_first(big_slide, tmp_path):
    import re

    with session_scope(big_slide) as session:
        report = load_slide_report(session, "S-BIG")
    html = write_slide_report(report, tmp_path / "out").read_text(encoding="utf-8")
    gallery = html[html.index("<h2>Cells by class"):]
    section = gallery[gallery.index("neutrophil ("):gallery.index("<h2>", 10)]
    confidences = [float(c) for c in re.findall(r'class="caption">neutrophil (\d\.\d\d)<', section)]
    assert len(confidences) > 10 and confidences == sorted(confidences)


def test_a_missing_field_image_is_said_not_hidden(review_db, tmp_path):
    _, factory = review_db
    store_review_slide(factory, tmp_path, "S-GONE")
    (tmp_path / "S-GONE" / "field_02.png").unlink()
    with session_scope(factory) as session:
        report = load_slide_report(session, "S-GONE")
    out = tmp_path / "out"
    html = write_slide_report(report, out).read_text(encoding="utf-8")
    assert "image not available" in html and "field_02.png" in html
    assert len(list((out / "cells").iterdir())) == 3  # the cells of field_01 only


def test_an_unknown_slide_is_a_lookup_error(review_db):
    _, factory = review_db
    with session_scope(factory) as session, pytest.raises(LookupError, match="No slide"):
        load_slide_report(session, "nope")


def test_the_patient_history_follows_collection_time_and_reports_verified_differentials(review_db, tmp_path):
    _, factory = review_db
    store_review_slide(factory, tmp_path, "S-LATE", "P-H", fields=((("neutrophil", 0.9), ("lymphocyte", 0.9)),),
                       collected_at="2026-11-25T08:00:00+00:00")
    store_review_slide(factory, tmp_path, "S-EARLY", "P-H", fields=((("neutrophil", 0.9),) * 3 + (("monocyte", 0.9),),),
                       collected_at="2026-11-01", seed=1)
    store_review_slide(factory, tmp_path, "S-UNDATED", "P-H", collected_at=None, seed=2)
    with session_scope(factory) as session:
        cell = next(c for c in review.slide_cells(session, "S-LATE") if c.label == "lymphocyte")
        review.review_cell(session, "S-LATE", cell.id, "neutrophil", "Ann")
        review.sign_off(session, "S-LATE", "Ann")
        rows = load_patient_history(session, "P-H")
    assert [r["slide_id"] for r in rows] == ["S-EARLY", "S-LATE", "S-UNDATED"]
    assert rows[0]["percents"]["neutrophil"] == 75.0 and rows[0]["differential"] == "pre-classified"
    assert rows[1]["percents"]["neutrophil"] == 100.0 and rows[1]["differential"] == "verified"
    page = write_patient_history("P-H", rows, tmp_path / "history")
    table = _table(page.read_text(encoding="utf-8"), "history")
    assert table[1][:4] == ["S-EARLY", "2026-11-01T00:00:00+00:00", "pre-classified", "4"]
    assert table[2][table[0].index("neutrophil %")] == "100.0"
    assert (tmp_path / "history" / "history.png").stat().st_size > 1000
    with session_scope(factory) as session, pytest.raises(LookupError, match="No slide is stored for patient"):
        load_patient_history(session, "nobody")
