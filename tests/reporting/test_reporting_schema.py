"""One slide-result schema: analysis in memory, folders rejected, CSV rows."""

import csv
import io
import json

import numpy as np

from smearflow.reporting.flags import FlagConfig
from smearflow.reporting.schema import CSV_COLUMNS, SLIDE_RESULT_KEYS, csv_rows, differential_rows, from_analysis, rejected
from smearflow.types import Cell, Classification, ClassifiedCell, FieldResult, SlideInfo, SlideResult


def _result():
    def wbc(label, confidence):
        cell = Cell("wbc", (0, 0, 4, 4), (2.0, 2.0), 16, np.ones((4, 4), bool))
        return ClassifiedCell(cell, Classification(label, confidence))

    cells = (wbc("neutrophil", 0.9), wbc("neutrophil", 0.3), wbc("lymphocyte", 0.45))
    info = SlideInfo("S-1", "P-1", "2026-11-25", "notes", "/inbox/S-1", ("/inbox/S-1/a.png", "/inbox/S-1/b.png"))
    fields = (
        FieldResult("a.png", "done", cells=cells, wbc_counts={"neutrophil": 2, "lymphocyte": 1}, rbc_count=40, platelet_count=3),
        FieldResult("b.png", "failed", error="b.png: truncated"),
    )
    return SlideResult(info, "partial", fields, {"lymphocyte": 1, "neutrophil": 2}, 40, 3, "cnn-1", ("b.png: truncated",))


def test_an_analysis_has_every_key_of_the_schema_and_its_flags():
    summary = from_analysis(_result(), FlagConfig())
    assert tuple(summary) == SLIDE_RESULT_KEYS
    assert summary["collected_at"] == "2026-11-25T00:00:00+00:00"
    assert summary["differential"] == "pre-classified" and summary["verified_counts"] is None
    assert summary["uncertain_wbc"] == 2 and summary["wbc_total"] == 3
    assert summary["fields"][0] == {"name": "a.png", "status": "done", "error": None, "wbc": 3, "rbc": 40, "platelets": 3}
    assert [f["code"] for f in summary["flags"]][:3] == ["too-few-wbc", "many-uncertain", "fields-not-counted"]
    json.dumps(summary)  # plain JSON values only


def test_a_rejected_folder_has_the_same_keys():
    assert tuple(rejected("/inbox/x", "empty folder")) == SLIDE_RESULT_KEYS


def test_review_keys_are_null_before_a_sign_off():
    review_keys = ("verified_counts", "verified_wbc_total", "artefacts", "changed_cells", "verified_by", "verified_at")
    for summary in (from_analysis(_result(), FlagConfig()), rejected("/inbox/x", "empty folder")):
        assert {key: summary[key] for key in review_keys} == dict.fromkeys(review_keys)


def test_differential_rows_leave_platelets_out_of_the_percentages():
    rows = {r["class"]: r for r in differential_rows({"neutrophil": 50, "lymphocyte": 50, "platelet": 2})}
    assert rows["neutrophil"]["percent"] == 50.0 and (rows["neutrophil"]["ci_low"], rows["neutrophil"]["ci_high"]) == (39.8, 60.2)
    assert rows["platelet"]["percent"] is None and rows["basophil"]["count"] == 0
    assert all(r["percent"] is None for r in differential_rows({}))


def test_csv_rows_carry_every_key_on_each_row():
    summary = from_analysis(_result(), FlagConfig())
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_rows([summary]))
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert set(SLIDE_RESULT_KEYS) - {"counts", "verified_counts"} <= set(CSV_COLUMNS)
    assert [r["class"] for r in rows][-2:] == ["platelets_segmented", "rbc_segmented"]
    neutrophil = next(r for r in rows if r["class"] == "neutrophil")
    assert (neutrophil["count"], neutrophil["percent_of_wbc"], neutrophil["differential"]) == ("2", "66.7", "pre-classified")
    assert json.loads(neutrophil["errors"]) == ["b.png: truncated"] and json.loads(neutrophil["fields"])[1]["status"] == "failed"
    assert neutrophil["flags"].split(";")[:2] == ["too-few-wbc", "many-uncertain"]
    assert neutrophil["verified_count"] == ""
