"""Progress of ``smearflow analyze``: per field on long slides, quiet with --json or off a terminal."""

import io
import sys

import pytest
from rich.console import Console
from typer.testing import CliRunner

from smearflow import cli
from smearflow.cli import app
from smearflow.commands import common
from smearflow.commands.common import SlideProgress, progress_wanted
from smearflow.synthetic import write_demo_slides
from smearflow.types import SlideInfo


class _Stdout:
    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize(("tty", "as_json", "wanted"), [(True, False, True), (True, True, False), (False, False, False)])
def test_progress_shows_only_on_a_terminal_without_json(monkeypatch, tty, as_json, wanted):
    monkeypatch.setattr(sys, "stdout", _Stdout(tty))
    assert progress_wanted(as_json) is wanted


def _terminal():
    buffer = io.StringIO()
    return buffer, Console(file=buffer, force_terminal=True, width=120)


def test_the_bar_counts_the_fields_of_the_slide_being_analysed():
    buffer, console = _terminal()
    info = SlideInfo("S-218", None, None, None, "/slides/S-218", tuple(f"f{i}.png" for i in range(218)))
    with SlideProgress(1, console=console) as progress:
        progress.start_slide(info)
        for _ in range(100):
            progress.field_done()
        progress.progress.refresh()
        assert "slide S-218: fields" in buffer.getvalue() and "100/218" in buffer.getvalue()
        fields = progress.progress.tasks[progress.fields]
        assert (fields.completed, fields.total) == (100, 218)


def test_a_disabled_bar_draws_nothing():
    buffer, console = _terminal()
    with SlideProgress(1, enabled=False, console=console) as progress:
        progress.start_slide(SlideInfo("S", None, None, None, "/s", ("f.png",)))
        progress.field_done()
        progress.slide_done()
    assert buffer.getvalue() == ""


@pytest.mark.parametrize("as_json", [False, True])
def test_analyze_draws_field_progress_on_a_terminal_and_none_with_json(tiny_model_dir, tmp_path, monkeypatch, as_json):
    (slide,) = write_demo_slides(tmp_path / "slides", n_slides=1, seed=5)
    n_fields = sum(1 for p in slide.iterdir() if p.suffix == ".png")
    buffer, console = _terminal()
    monkeypatch.setattr(common, "stderr_console", lambda: console)
    # the runner swaps stdout for a buffer: stand in for a terminal there
    monkeypatch.setattr(cli, "progress_wanted", lambda as_json: not as_json)
    args = ["analyze", str(slide), "--model", str(tiny_model_dir), "--database-url", f"sqlite:///{tmp_path / 'p.db'}"]
    result = CliRunner().invoke(app, args + (["--json"] if as_json else []))
    assert result.exit_code in (0, 1), result.output
    drawn = buffer.getvalue()
    if as_json:
        assert "fields" not in drawn
    else:
        assert f"{n_fields}/{n_fields}" in drawn and ": fields" in drawn and "1/1" in drawn
