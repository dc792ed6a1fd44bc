"""The command line through Typer's runner, on synthetic slides and the tiny model."""

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from smearflow.cli import app
from smearflow.synthetic import write_demo_slides


@pytest.fixture(scope="module")
def demo_slides(tmp_path_factory):
    return write_demo_slides(tmp_path_factory.mktemp("slides"), n_slides=2, seed=3)


@pytest.fixture
def slides(demo_slides, tmp_path):
    """Fresh copies of the demo slides, free to damage."""
    return [shutil.copytree(s, tmp_path / s.name) for s in demo_slides]


@pytest.fixture
def run(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("SMEARFLOW_DATABASE_URL", raising=False)
    runner = CliRunner()
    default_db = f"sqlite:///{tmp_path / 'cli.db'}"

    def invoke(*args, database_url=default_db, model=True):
        extra = ["--database-url", database_url]
        if model and args[0] in ("analyze", "demo"):
            extra += ["--model", str(tiny_model_dir)]
        return runner.invoke(app, [*args, *extra], env={"COLUMNS": "200"})

    return invoke


def _json(result):
    assert result.stdout.strip(), result.output
    return json.loads(result.stdout)


def test_analyze_stores_counts_that_counts_reads_back(run, slides, database_url):
    result = run("analyze", *map(str, slides), "--json", database_url=database_url)
    assert result.exit_code == 0, result.output
    summaries = _json(result)
    assert [s["status"] for s in summaries] == ["done", "done"]
    for s in summaries:
        assert s["wbc_total"] == sum(n for label, n in s["counts"].items() if label != "platelet")
        # The untrained test model may call anything a platelet: count candidates, not classes.
        assert sum(s["counts"].values()) > 0 and s["rbc_count"] > 0 and s["errors"] == []
        assert {"slide_id", "patient_id", "fields", "counts"} <= set(s)
    patient = summaries[0]["patient_id"]
    stored = _json(run("counts", "--patient", patient, "--json", database_url=database_url))
    expected = {s["slide_id"]: s["counts"] for s in summaries if s["patient_id"] == patient}
    assert {row["slide_id"]: {k: v for k, v in row["counts"].items() if v} for row in stored} == expected


def test_reanalysis_replaces_previous_counts(run, slides):
    first = _json(run("analyze", str(slides[0]), "--json"))
    run("analyze", str(slides[0]), "--json")
    rows = _json(run("counts", "--slide", first[0]["slide_id"], "--json"))
    assert len(rows) == 1
    assert {k: v for k, v in rows[0]["counts"].items() if v} == first[0]["counts"]


def test_table_and_csv_outputs(run, slides):
    result = run("analyze", str(slides[0]))
    assert result.exit_code == 0, result.output
    assert "% of WBC" in result.output and "neutrophil" in result.output and "red cells" in result.output
    csv_text = run("counts", "--csv").output
    header, *rows = csv_text.strip().splitlines()
    assert header.startswith("slide_id,patient_id,status")
    assert any(",rbc_segmented," in row for row in rows)


def test_counts_for_an_unknown_patient_fails(run):
    result = run("counts", "--patient", "nobody")
    assert result.exit_code == 1 and "no slides found for patient nobody" in result.output


def test_counts_rejects_two_formats(run):
    result = run("counts", "--json", "--csv")
    assert result.exit_code != 0 and "choose one" in result.output


def _break_first_field(slide, how):
    field = sorted(p for p in slide.iterdir() if p.suffix == ".png")[0]
    if how == "truncated":
        field.write_bytes(field.read_bytes()[:200])
    elif how == "grayscale":
        from PIL import Image

        Image.fromarray(np.zeros((40, 40), np.uint8)).save(field)
    elif how == "rgba":
        from PIL import Image

        Image.fromarray(np.zeros((40, 40, 4), np.uint8)).save(field)
    elif how == "16-bit":
        import cv2

        cv2.imwrite(str(field), np.full((40, 40, 3), 30000, np.uint16))
    return field.name


@pytest.mark.parametrize(
    ("how", "message"),
    [("truncated", "truncated"), ("grayscale", "grayscale"), ("rgba", "alpha"), ("16-bit", "16 bits")],
)
def test_a_bad_field_fails_alone(run, slides, how, message):
    name = _break_first_field(slides[0], how)
    result = run("analyze", *map(str, slides), "--json")
    assert result.exit_code == 1
    bad, good = _json(result)
    failed_fields = [f for f in bad["fields"] if f["status"] == "failed"]
    assert [f["name"] for f in failed_fields] == [name]
    assert message in failed_fields[0]["error"] and name in failed_fields[0]["error"]
    assert bad["status"] == "done" and any(f["status"] == "done" for f in bad["fields"])
    assert good["status"] == "done" and good["errors"] == []


def test_missing_and_empty_slides_fail_and_others_go_on(run, slides, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("analyze", str(tmp_path / "missing"), str(tmp_path / "empty"), str(slides[0]), "--json")
    assert result.exit_code == 1
    missing, empty, good = _json(result)
    assert missing["status"] == "failed" and "does not exist" in missing["errors"][0]
    assert empty["status"] == "failed" and "holds no image" in empty["errors"][0]
    assert good["status"] == "done"
    status = {row["slide_id"]: row["status"] for row in _json(run("counts", "--json"))}
    assert status == {"missing": "failed", "empty": "failed", good["slide_id"]: "done"}


def test_a_failed_reanalysis_keeps_stored_counts(run, slides):
    first = _json(run("analyze", str(slides[0]), "--json"))[0]
    for field in slides[0].glob("*.png"):
        field.write_bytes(b"broken")
    result = run("analyze", str(slides[0]), "--json")
    assert result.exit_code == 1 and _json(result)[0]["status"] == "failed"
    row = _json(run("counts", "--slide", first["slide_id"], "--json"))[0]
    assert row["status"] == "failed" and row["error"]
    assert {k: v for k, v in row["counts"].items() if v} == first["counts"]


def test_demo_writes_slides_and_prints_differentials(run, tmp_path):
    result = run("demo", "--out", str(tmp_path / "demo"))
    assert result.exit_code == 0, result.output
    assert "% of WBC" in result.output
    assert len([p for p in (tmp_path / "demo").iterdir() if p.is_dir()]) >= 2


def test_a_bad_model_folder_is_a_clear_error(run, slides, tmp_path):
    result = CliRunner().invoke(app, ["analyze", str(slides[0]), "--model", str(tmp_path / "nomodel")])
    assert result.exit_code == 2
    assert "model folder does not exist" in result.output
