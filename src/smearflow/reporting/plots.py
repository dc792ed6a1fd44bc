"""Plots of differentials (matplotlib, Agg, no display): a slide's percentages with their intervals, a patient's history."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from smearflow.reporting.images import CLASS_COLOURS

__all__ = ["differential_png", "history_png"]


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _png(figure, path: str | Path | None) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    data = buffer.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


def _colour(label: str) -> tuple[float, float, float]:
    return tuple(v / 255 for v in CLASS_COLOURS.get(label, (90, 90, 90)))  # type: ignore[return-value]


def differential_png(rows: list[dict[str, Any]], title: str, path: str | Path | None = None) -> bytes:
    """A bar per class: percentage of white cells with its 95% interval as an error bar.

    Parameters
    ----------
    rows : list of dict
        :func:`smearflow.reporting.schema.differential_rows` (rows without a percentage are left out).
    title : str
    path : str or Path, optional
        Also write the PNG there.

    Returns
    -------
    bytes
        The PNG.
    """
    shown = [r for r in rows if r["percent"] is not None]
    figure = _figure(6.4, 3.2)
    axes = figure.add_subplot(1, 1, 1)
    if shown:
        x = range(len(shown))
        percents = [r["percent"] for r in shown]
        errors = [[r["percent"] - r["ci_low"] for r in shown], [r["ci_high"] - r["percent"] for r in shown]]
        axes.bar(x, percents, color=[_colour(r["class"]) for r in shown], yerr=errors, capsize=4, ecolor="black")
        axes.set_xticks(list(x), [r["class"] for r in shown], rotation=30, ha="right")
        axes.set_ylim(0, 100)
    else:
        axes.text(0.5, 0.5, "no white cell counted", ha="center", va="center", transform=axes.transAxes)
    axes.set_ylabel("% of white cells (95% CI)")
    axes.set_title(title, fontsize=10)
    return _png(figure, path)


def history_png(points: list[dict[str, Any]], classes: list[str], title: str, path: str | Path | None = None) -> bytes:
    """Each class's percentage across a patient's slides, in collection order.

    Parameters
    ----------
    points : list of dict
        One per slide, in order: ``label`` (x tick), ``percents`` (class →
        percent or ``None``) and ``verified`` (a filled marker when true,
        hollow when pre-classified).
    classes : list of str
    title : str
    path : str or Path, optional

    Returns
    -------
    bytes
        The PNG.
    """
    figure = _figure(7.2, 3.8)
    axes = figure.add_subplot(1, 1, 1)
    x = list(range(len(points)))
    for label in classes:
        ys = [p["percents"].get(label) for p in points]
        if all(y is None or y == 0 for y in ys):
            continue
        colour = _colour(label)
        axes.plot(x, [float("nan") if y is None else y for y in ys], color=colour, label=label)
        for xi, yi, point in zip(x, ys, points):
            if yi is not None:
                axes.plot([xi], [yi], "o", color=colour, markerfacecolor=colour if point["verified"] else "white")
    axes.set_xticks(x, [p["label"] for p in points], rotation=30, ha="right", fontsize=8)
    axes.set_ylim(0, 100)
    axes.set_ylabel("% of white cells")
    axes.set_title(title, fontsize=10)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(figure, path)
