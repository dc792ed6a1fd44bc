"""The command line through Typer's runner, on synthetic slides and the tiny model."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from smearflow.cli import build_command
from smearflow.synthetic import write_demo_slides


@pytest.fixture(scope="module")
def demo_slides(tmp_path_factory):
    return write_demo_slides(tmp_path_factory.mktemp("slides"), n_slides=2, seed=3)


@pytest.fixture
def slides(demo_slides, tmp_path):
    """Fresh copies of the demo slides, free to damage."""
    return [shutil.copytree(s, tmp_path / s.name) for s in demo_slides]


@pytest.fixture
def run(cli, tiny_model_dir, tmp_path):
    """The shared ``cli`` with a fresh database (created by the command) and the tiny model."""
    default_db = f"sqlite:///{tmp_path / 'cli.db'}"

    def invoke(*args, database_url=default_db, model=True):
        extra = ["--model", str(tiny_model_dir)] if model and args[0] in ("analyze", "demo") else []
        return cli(*args, *extra, database_url=database_url)

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
    assert run("db", "upgrade").exit_code == 0
    result = run("counts", "--patient", "nobody")
    assert result.exit_code == 1 and "no slides found for patient nobody" in result.output


def test_counts_rejects_two_formats(run):
    result = run("counts", "--json", "--csv")
    assert result.exit_code != 0 and "choose one" in result.output


def _break_first_field(slide, how):
    from PIL import Image

    field = sorted(p for p in slide.iterdir() if p.suffix == ".png")[0]
    if how == "truncated":
        field.write_bytes(field.read_bytes()[:200])
    elif how == "grayscale":
        Image.fromarray(np.zeros((100, 100), np.uint8)).save(field)
    elif how == "translucent":
        Image.fromarray(np.zeros((100, 100, 4), np.uint8)).save(field)
    elif how == "tiny":
        Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(field)
    elif how == "black":
        Image.fromarray(np.zeros((480, 640, 3), np.uint8)).save(field)
    return field.name


@pytest.mark.parametrize(
    ("how", "status", "message"),
    [
        ("truncated", "failed", "truncated"),
        ("grayscale", "failed", "grayscale"),
        ("translucent", "failed", "translucent"),
        ("tiny", "failed", "1×1 px"),
        ("black", "flagged", "dark"),
    ],
)
def test_a_bad_field_fails_alone(run, slides, how, status, message):
    name = _break_first_field(slides[0], how)
    result = run("analyze", *map(str, slides), "--json")
    assert result.exit_code == 1
    bad, good = _json(result)
    not_counted = [f for f in bad["fields"] if f["status"] != "done"]
    assert [(f["name"], f["status"]) for f in not_counted] == [(name, status)]
    assert message in not_counted[0]["error"] and name in not_counted[0]["error"]
    assert bad["status"] == "partial" and any(f["status"] == "done" for f in bad["fields"])
    assert good["status"] == "done" and good["errors"] == []


def test_folders_that_are_not_slides_are_rejected_and_others_go_on(run, slides, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("analyze", str(tmp_path / "missing"), str(tmp_path / "empty"), str(slides[0]), "--json")
    assert result.exit_code == 1
    missing, empty, good = _json(result)
    assert missing["status"] == "rejected" and "does not exist" in missing["errors"][0]
    assert empty["status"] == "rejected" and "holds no image" in empty["errors"][0]
    assert good["status"] == "done"
    assert {row["slide_id"]: row["status"] for row in _json(run("counts", "--json"))} == {good["slide_id"]: "done"}


def test_a_failed_reanalysis_keeps_stored_counts_and_metadata(run, slides):
    first = _json(run("analyze", str(slides[0]), "--json"))[0]
    for field in slides[0].glob("*.png"):
        field.write_bytes(b"broken")
    result = run("analyze", str(slides[0]), "--json")
    assert result.exit_code == 1 and _json(result)[0]["status"] == "failed"
    row = _json(run("counts", "--slide", first["slide_id"], "--json"))[0]
    assert (row["status"], row["patient_id"]) == ("done", first["patient_id"])
    assert {k: v for k, v in row["counts"].items() if v} == first["counts"]


def test_a_slide_id_stored_for_another_patient_is_refused_unless_reassigned(run, slides):
    first = _json(run("analyze", str(slides[0]), "--json"))[0]
    meta = json.loads((slides[0] / "slide.json").read_text())
    (slides[1] / "slide.json").write_text(json.dumps({**meta, "patient_id": "P-OTHER"}))
    refused = run("analyze", str(slides[1]), "--json")
    assert refused.exit_code == 1
    (summary,) = _json(refused)
    assert summary["status"] == "rejected" and summary["slide_id"] == first["slide_id"]
    assert f"stored for patient {first['patient_id']}; this folder names patient P-OTHER" in summary["errors"][0]
    assert _json(run("counts", "--slide", first["slide_id"], "--json"))[0]["patient_id"] == first["patient_id"]
    moved = run("analyze", str(slides[1]), "--reassign", "--json")
    assert _json(moved)[0]["status"] == "done"
    assert _json(run("counts", "--slide", first["slide_id"], "--json"))[0]["patient_id"] == "P-OTHER"


def _bad_slides(root):
    """One slide folder per mistake a laboratory makes, and one good one."""
    import os

    from PIL import Image

    from smearflow.synthetic import write_demo_slides

    (good,) = write_demo_slides(root / "source", n_slides=1, seed=5)
    made = {}

    def copy(name):
        made[name] = shutil.copytree(good, root / name)
        (made[name] / "slide.json").unlink()
        return made[name]

    outside = copy("outside")
    os.symlink(outside, root / "linked")
    made["linked"] = root / "linked"
    (copy("nul-id") / "slide.json").write_text('{"slide_id": "S\\u0000"}')
    for name, pixels in (("black", np.zeros((480, 640, 3), np.uint8)),
                         ("noise", np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))):
        folder = root / name
        folder.mkdir()
        Image.fromarray(pixels).save(folder / "field.png")
        made[name] = folder
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(copy("one-pixel") / "tiny.png")
    Image.new("RGB", (8000, 6000)).save(copy("huge") / "huge.png")
    linked_field = copy("linked-field")
    os.symlink(sorted(outside.glob("*.png"))[0], linked_field / "zz-link.png")
    undecodable = copy("undecodable-name")
    first = sorted(undecodable.glob("*.png"))[0]
    first.rename(undecodable / os.fsdecode(b"field-\xff.png"))
    made["good"] = good
    return made


def test_analyze_over_generated_bad_slides_prints_every_outcome_without_a_traceback(run, tmp_path):
    made = _bad_slides(tmp_path / "slides")
    result = run("analyze", *map(str, made.values()), "--json")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    by_folder = {Path(folder).name: name for name, folder in made.items()}
    outcomes = {by_folder[Path(s["folder"]).name]: s for s in _json(result)}
    assert set(outcomes) == set(made)
    assert outcomes["linked"]["status"] == "rejected" and "symbolic link" in outcomes["linked"]["errors"][0]
    assert outcomes["nul-id"]["status"] == "rejected" and "printable" in outcomes["nul-id"]["errors"][0]
    for name in ("black", "noise"):
        assert outcomes[name]["status"] == "failed" and outcomes[name]["fields"][0]["status"] == "flagged", name
    for name, words in (("one-pixel", "1×1 px"), ("huge", "pixels")):
        assert outcomes[name]["status"] == "partial", name
        assert any(words in e for e in outcomes[name]["errors"]), outcomes[name]["errors"]
    linked = outcomes["linked-field"]
    assert linked["status"] == "partial" and [f["status"] for f in linked["fields"]][-1] == "failed"
    assert "zz-link.png" in linked["errors"][0] and "symbolic link" in linked["errors"][0]
    assert outcomes["undecodable-name"]["status"] == "done"
    assert any("field-" in f["name"] for f in outcomes["undecodable-name"]["fields"])
    assert outcomes["good"]["status"] == "done" and outcomes["outside"]["status"] == "done"


@pytest.mark.parametrize("command", [["counts"], ["status"], ["analyze", "/nowhere/S-1"]])
def test_a_wrong_database_url_is_one_line_with_the_password_masked_before_any_model_loads(command):
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from smearflow.cli import app\n"
        "try:\n"
        f"    app({command!r} + ['--database-url', 'postgresql+psycopg://lab:s3cret@127.0.0.1:1/nowhere'])\n"
        "except SystemExit as exit:\n"
        "    print('exit', exit.code, 'tensorflow' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1] == "exit 2 False"
    (message,) = lines[:-1]
    assert message.startswith("error: cannot use the database postgresql+psycopg://lab:***@127.0.0.1:1/nowhere")
    assert "s3cret" not in done.stderr


def test_demo_writes_slides_and_prints_differentials(run, tmp_path):
    result = run("demo", "--out", str(tmp_path / "demo"))
    assert result.exit_code == 0, result.output
    assert "% of WBC" in result.output
    assert len([p for p in (tmp_path / "demo").iterdir() if p.is_dir()]) >= 2


def test_a_bad_model_folder_is_a_clear_error(cli, slides, tmp_path):
    result = cli("analyze", slides[0], "--model", tmp_path / "nomodel")
    assert result.exit_code == 2
    assert "model folder does not exist" in result.output


def test_tensorflow_start_up_lines_are_hidden_unless_verbose():
    import subprocess
    import sys

    def stderr_of(code):
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stderr

    loud = stderr_of("import tensorflow")
    if not loud.strip():
        pytest.skip("this TensorFlow prints nothing when it loads")
    quiet = stderr_of(
        "from smearflow.commands.common import quiet_native_startup\n"
        "quiet_native_startup()\n"
        "import tensorflow, sys\n"
        "print('still here', file=sys.stderr)\n"
    )
    assert quiet.strip() == "still here"


def test_help_shows_flags_as_flags_and_values_by_name():
    from click.testing import CliRunner as ClickRunner

    result = ClickRunner().invoke(build_command(), ["analyze", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--reassign  " in result.output and "--reassign <bool>" not in result.output
    assert "--model MODEL" in result.output and "--max-fields MAX_FIELDS" in result.output
    assert "<str>" not in result.output.split("Options:")[1]
    assert "analyze [OPTIONS] PATHS...\n" in result.output and "{paths}" not in result.output
    optional = ClickRunner().invoke(build_command(), ["report", "--help"], env={"COLUMNS": "200"})
    assert "report [OPTIONS] [SLIDE_ID]\n" in optional.output
