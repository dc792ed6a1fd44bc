"""The review commands and `counts` through Typer's runner: report, serve, agreement, export-verified."""

from __future__ import annotations

import csv
import io
import json

import pytest
from review_testkit import store_review_slide

from smearflow.db import review
from smearflow.db.engine import session_scope
from smearflow.reporting.schema import SLIDE_RESULT_KEYS


@pytest.fixture
def stored(sqlite_review_db, tmp_path):
    """``(url, factory)`` with slides S-R1 and S-R2 of patient P-R, S-R1 reviewed and signed off."""
    url, factory = sqlite_review_db
    store_review_slide(factory, tmp_path / "inbox")
    store_review_slide(factory, tmp_path / "inbox", "S-R2", "P-R", fields=((("lymphocyte", 0.9), ("ig", 0.9)),), seed=1,
                       collected_at="2026-11-22")
    with session_scope(factory) as session:
        cells = sorted((c for c in review.slide_cells(session, "S-R1") if c.reviewable), key=lambda c: c.confidence)
        review.review_cell(session, "S-R1", cells[0].id, "lymphocyte", "Ann")  # the 0.3 neutrophil
        review.review_cell(session, "S-R1", cells[1].id, "artefact", "Ann")  # the 0.4 lymphocyte
        review.sign_off(session, "S-R1", "Ann")
    return url, factory


@pytest.fixture
def run(cli):
    """The shared ``cli`` (the database is given in each call's arguments)."""
    return cli


def test_counts_gives_both_differentials_of_a_verified_slide(run, stored):
    url, _ = stored
    result = run("counts", "--json", "--database-url", url)
    assert result.exit_code == 0, result.output
    first, second = json.loads(result.stdout)
    assert tuple(first) == SLIDE_RESULT_KEYS
    assert (first["differential"], first["verified_by"]) == ("verified", "Ann")
    assert first["counts"] == {"lymphocyte": 1, "monocyte": 1, "neutrophil": 3}
    assert first["verified_counts"] == {"lymphocyte": 1, "monocyte": 1, "neutrophil": 2}
    assert (first["verified_wbc_total"], first["artefacts"], first["changed_cells"]) == (4, 1, 2)
    assert second["differential"] == "pre-classified" and second["verified_counts"] is None
    table = run("counts", "--slide", "S-R1", "--database-url", url).output
    assert "verified by Ann" in table and "pre-classified count" in table and "verified count" in table
    assert "artefacts (verified)" in table and "flag:" in table


def test_counts_csv_carries_the_verified_differential(run, stored):
    url, _ = stored
    rows = list(csv.DictReader(io.StringIO(run("counts", "--csv", "--slide", "S-R1", "--database-url", url).stdout)))
    neutrophil = next(r for r in rows if r["class"] == "neutrophil")
    assert (neutrophil["count"], neutrophil["verified_count"], neutrophil["differential"]) == ("3", "2", "verified")
    assert (neutrophil["percent_of_wbc"], neutrophil["verified_percent_of_wbc"]) == ("60.0", "50.0")
    assert neutrophil["verified_by"] == "Ann" and json.loads(neutrophil["fields"])[0]["wbc"] == 3


def test_flag_settings_come_from_a_file_or_the_environment(run, stored, tmp_path):
    url, _ = stored
    settings = tmp_path / "flags.json"
    settings.write_text(json.dumps({"min_wbc": 2, "reference_ranges_percent": {}}))
    by_option = json.loads(run("counts", "--json", "--database-url", url, "--flags-config", str(settings)).stdout)
    by_env = json.loads(run("counts", "--json", "--database-url", url, env={"SMEARFLOW_FLAGS_CONFIG": str(settings)}).stdout)
    assert by_option == by_env and all(not r["flags"] for r in by_option)
    settings.write_text("{not json")
    broken = run("counts", "--database-url", url, "--flags-config", str(settings))
    assert broken.exit_code == 2 and "cannot read the flag settings" in broken.output


def test_analyze_and_counts_print_the_same_slide_result(run, tiny_model_dir, tmp_path):
    from smearflow.synthetic import write_demo_slides

    slides = write_demo_slides(tmp_path / "slides", n_slides=1, seed=5)
    url = f"sqlite:///{tmp_path / 'a.db'}"
    analysed = run("analyze", str(slides[0]), "--json", "--database-url", url, "--model", str(tiny_model_dir))
    assert analysed.exit_code in (0, 1), analysed.output
    (before,) = json.loads(analysed.stdout)
    (after,) = json.loads(run("counts", "--json", "--database-url", url).stdout)
    assert tuple(before) == tuple(after) == SLIDE_RESULT_KEYS
    assert {k: v for k, v in before.items() if k != "finished_at"} == {k: v for k, v in after.items() if k != "finished_at"}
    assert after["finished_at"] is not None


def test_report_writes_a_slide_report_and_a_patient_history(run, stored, tmp_path):
    url, _ = stored
    result = run("report", "S-R1", "--out", str(tmp_path / "r"), "--database-url", url)
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output and (tmp_path / "r" / "fields" / "01.png").exists()
    html = (tmp_path / "r" / "report.html").read_text(encoding="utf-8")
    assert "verified</span>" in html and "by Ann" in html
    history = run("report", "--patient", "P-R", "--out", str(tmp_path / "h"), "--database-url", url)
    assert history.exit_code == 0 and (tmp_path / "h" / "history.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["report"], "give either a SLIDE_ID or --patient"),
        (["report", "S-R1", "--patient", "P-R"], "give either a SLIDE_ID or --patient"),
        (["report", "nope"], "No slide is registered under slide_code='nope'"),
        (["report", "--patient", "nobody"], "No slide is stored for patient_code='nobody'"),
        (["agreement", "--since", "last week"], "--since must be an ISO 8601 date"),
        (["export-verified", "--out", "OUT", "--size-px", "4"], "size_px must be an integer of at least 8"),
        (["export-verified", "--out", "OUT", "--since", "soon"], "--since must be an ISO 8601 date"),
    ],
)
def test_bad_requests_end_with_one_line(run, stored, tmp_path, args, message):
    url, _ = stored
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    result = run(*args, "--database-url", url)
    assert result.exit_code == 2 and message in result.output, result.output


def test_report_cannot_write_into_a_file(run, stored, tmp_path):
    url, _ = stored
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("report", "S-R1", "--out", str(blocker), "--database-url", url)
    assert result.exit_code == 2 and "cannot write the report" in result.output


def test_read_only_commands_never_create_a_database(run, tmp_path):
    url = f"sqlite:///{tmp_path / 'missing.db'}"
    for args in (["report", "S-1"], ["agreement"], ["export-verified", "--out", str(tmp_path / "o")], ["serve"]):
        result = run(*args, "--database-url", url)
        assert result.exit_code == 2 and "missing.db" in result.output, (args, result.output)
    assert not (tmp_path / "missing.db").exists()


def test_agreement_reports_the_reviewers_changes(run, stored):
    url, _ = stored
    figures = json.loads(run("agreement", "--json", "--database-url", url).stdout)
    assert (figures["slides"], figures["cells"], figures["kept"], figures["changed"]) == (1, 5, 3, 2)
    assert figures["per_class"]["lymphocyte"]["to_artefact"] == 1
    text = run("agreement", "--database-url", url).output
    assert "1 verified slides, 5 white cells" in text and "confusion matrix" in text
    later = run("agreement", "--since", "2999-01-01", "--database-url", url)
    assert later.exit_code == 0 and "no verified slide since 2999-01-01" in later.output


def test_export_verified_writes_class_folders_and_follows_a_reopened_cell(run, stored, tmp_path):
    url, factory = stored
    out = tmp_path / "verified"
    (out / "neutrophil").mkdir(parents=True)
    (out / "neutrophil" / "lab-crop.png").write_bytes(b"not ours")
    result = run("export-verified", "--out", str(out), "--json", "--database-url", url)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["written"] == {"lymphocyte": 1, "monocyte": 1, "neutrophil": 2} and summary["artefacts"] == 1
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("verified-*.png"))
    assert len(files) == 4 and all(f.split("/")[1].startswith("verified-S-R1-") for f in files)
    manifest = list(csv.DictReader((out / "verified-manifest.csv").open(encoding="utf-8")))
    changed = next(r for r in manifest if r["model_class"] != r["class"])
    assert (changed["model_class"], changed["class"], changed["reviewed_by"]) == ("neutrophil", "lymphocyte", "Ann")
    with session_scope(factory) as session:
        review.reopen(session, "S-R1", "Bob")
        review.review_cell(session, "S-R1", int(changed["cell_id"]), "monocyte", "Bob")
        review.sign_off(session, "S-R1", "Bob")
    again = json.loads(run("export-verified", "--out", str(out), "--json", "--database-url", url).stdout)
    assert again["removed"] == 4 and again["written"] == {"monocyte": 2, "neutrophil": 2}
    assert not list((out / "lymphocyte").glob("verified-*.png"))
    assert (out / "neutrophil" / "lab-crop.png").read_bytes() == b"not ours"  # nothing else touched
    from smearflow.datasets import scan_class_folders

    dataset = scan_class_folders(out, ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte",
                                       "neutrophil", "platelet"), allow_missing=True)
    assert dataset.class_counts()["monocyte"] == 2


def test_export_verified_names_fields_it_cannot_read(run, stored, tmp_path):
    url, _ = stored
    (tmp_path / "inbox" / "S-R1" / "field_02.png").unlink()
    result = run("export-verified", "--out", str(tmp_path / "v"), "--database-url", url)
    assert result.exit_code == 0 and "not exported:" in result.output and "field_02.png" in result.output
    assert "wrote 2 crops" in result.output


def test_export_verified_refuses_a_linked_class_folder(run, stored, tmp_path):
    url, _ = stored
    out = tmp_path / "v"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "neutrophil").symlink_to(tmp_path / "elsewhere")
    result = run("export-verified", "--out", str(out), "--database-url", url)
    assert result.exit_code == 2 and "must be a folder, not a link" in result.output
    assert not list((tmp_path / "elsewhere").iterdir())


def test_serve_needs_a_token_to_bind_beyond_the_loopback(run, stored, monkeypatch):
    url, _ = stored
    started = {}
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda application, host, port, log_level: started.update(host=host, app=application))
    refused = run("serve", "--host", "0.0.0.0", "--database-url", url)
    assert refused.exit_code == 2 and "set SMEARFLOW_REVIEW_TOKEN" in refused.output and not started
    short = run("serve", "--database-url", url, env={"SMEARFLOW_REVIEW_TOKEN": "short"})
    assert short.exit_code == 2 and "at least 16 characters" in short.output
    assert run("serve", "--database-url", url).exit_code == 0 and started["host"] == "127.0.0.1"
    token = "a-long-enough-token-1234"
    result = run("serve", "--host", "0.0.0.0", "--database-url", url, env={"SMEARFLOW_REVIEW_TOKEN": token})
    assert result.exit_code == 0 and "token required" in result.output and started["host"] == "0.0.0.0"
    from fastapi.testclient import TestClient

    with TestClient(started["app"]) as client:
        assert client.get("/api/slides").status_code == 401
        assert client.get("/api/slides", headers={"Authorization": f"Bearer {token}"}).status_code == 200
