"""The daily chart pages of a statement's PDF: sent vs received per exchange, one panel per
exchange, at most 12 panels a page. A page's figure and axes are built once per process and
filled anew for every statement, with the same bytes a fresh page would give.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import matplotlib as mpl
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D
from matplotlib.markers import TICKDOWN, TICKLEFT, MarkerStyle
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, MaxNLocator

if TYPE_CHECKING:
    pass

from statements.compute import DailySeries
from statements.pdf_layout import (
    AXIS_ZORDER,
    GRID,
    INK,
    MARGIN_BOTTOM,
    MARGIN_X,
    MAX_PANEL_H,
    MUTED,
    PAGE_H,
    PAGE_W,
    RECEIVED_COLOUR,
    SENT_COLOUR,
    _esc,
    _Page,
)


def _thousands(value: float, _pos: int) -> str:
    if value == 0 or abs(value) >= 10:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


@dataclass
class _Chart:
    """A chart page with ``n`` panels: its figure, axes and lines, built once per process and
    filled anew for every statement (building axes and their ticks is most of the cost of
    drawing the page). The filled page is what a fresh one would be, byte for byte: every
    statement sets all that it shows (texts, data, limits) and nothing else changes."""

    page: _Page
    note: Text
    axes: list[Axes]
    lines: list[tuple[Line2D, Line2D]]
    grids: list[LineCollection]  # per panel: its grid lines
    marks: list[tuple[Line2D, Line2D]]  # per panel: its x and y tick marks
    footer: Text
    number: Text
    lock: threading.Lock


_CHARTS: dict[int, _Chart] = {}
_CHARTS_LOCK = threading.Lock()


@contextlib.contextmanager
def _chart(n: int) -> Iterator[_Chart]:
    """The chart page with ``n`` panels of this process, for this thread's use (another
    thread drawing one with as many panels at the same time gets a new one)."""
    with _CHARTS_LOCK:
        chart = _CHARTS.get(n)
        if chart is None:
            chart = _CHARTS[n] = _build_chart(n)
    if not chart.lock.acquire(blocking=False):
        chart = _build_chart(n)
        chart.lock.acquire()
    try:
        yield chart
    finally:
        chart.lock.release()


def _build_chart(n: int) -> _Chart:
    page = _Page()
    page.text(
        MARGIN_X,
        page.y - 0.2,
        "Daily sent vs received per exchange",
        fontsize=12,
        weight="bold",
    )
    note = page.text(MARGIN_X, page.y - 0.42, "", fontsize=8, color=MUTED)
    fig = page.fig
    fig.legend(
        handles=[
            Line2D([], [], color=SENT_COLOUR, linewidth=1.6, label="sent"),
            Line2D([], [], color=RECEIVED_COLOUR, linewidth=1.6, label="received"),
        ],
        loc="upper right",
        bbox_to_anchor=(1 - MARGIN_X / PAGE_W, (page.y - 0.05) / PAGE_H),
        ncols=2,
        frameon=False,
        fontsize=9,
    )
    ncols = 1 if n == 1 else 2 if n <= 4 else 3
    nrows = math.ceil(n / ncols)
    top = page.y - 0.7
    room = top - (MARGIN_BOTTOM + 0.35)
    height = min(room, nrows * MAX_PANEL_H)  # panels no taller than MAX_PANEL_H
    grid = fig.add_gridspec(
        nrows,
        ncols,
        left=(MARGIN_X + 0.45) / PAGE_W,
        right=1 - MARGIN_X / PAGE_W,
        top=top / PAGE_H,
        bottom=(top - height) / PAGE_H,
        hspace=0.55,
        wspace=0.22,
    )
    axes: list[Axes] = []
    lines: list[tuple[Line2D, Line2D]] = []
    grids: list[LineCollection] = []
    marks: list[tuple[Line2D, Line2D]] = []
    for i in range(n):
        ax = fig.add_subplot(grid[i // ncols, i % ncols])
        (sent,) = ax.plot([], [], color=SENT_COLOUR, linewidth=1.3, marker="o", markersize=1.8)
        (received,) = ax.plot(
            [], [], color=RECEIVED_COLOUR, linewidth=1.3, marker="o", markersize=1.8
        )
        ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.yaxis.set_major_formatter(FuncFormatter(_thousands))
        # Grid lines and tick marks as one artist each per panel, where the axes would draw
        # one line and one marker per tick (the same look, a fraction of the drawing); the
        # axes keep the tick labels.
        ax.tick_params(labelsize=7, length=2, bottom=False, left=False)
        grid_lines = LineCollection(
            [], colors=GRID, linewidths=0.5, capstyle="projecting", zorder=AXIS_ZORDER
        )
        ax.add_collection(grid_lines, autolim=False)
        x_marks, y_marks = (
            Line2D(
                [],
                [],
                transform=transform,
                marker=MarkerStyle(marker),
                markersize=2,
                markeredgewidth=mpl.rcParams["xtick.major.width"],
                color=mpl.rcParams["xtick.color"],
                linestyle="None",
                clip_on=False,
                zorder=AXIS_ZORDER,
            )
            for transform, marker in (
                (ax.get_xaxis_transform(), TICKDOWN),
                (ax.get_yaxis_transform(), TICKLEFT),
            )
        )
        ax.add_artist(x_marks)
        ax.add_artist(y_marks)
        # no axis label to place (the lowest panels of the columns get an x label)
        ax.yaxis.set_label_coords(-0.1, 0.5)
        if i + ncols < n:
            ax.xaxis.set_label_coords(0.5, -0.1)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        axes.append(ax)
        lines.append((sent, received))
        grids.append(grid_lines)
        marks.append((x_marks, y_marks))
    footer = page.text(MARGIN_X, MARGIN_BOTTOM - 0.2, "", fontsize=6.5, color=MUTED)
    number = page.text(
        PAGE_W - MARGIN_X, MARGIN_BOTTOM - 0.2, "", fontsize=6.5, color=MUTED, ha="right"
    )
    return _Chart(page, note, axes, lines, grids, marks, footer, number, threading.Lock())


def _fill_chart(chart: _Chart, series: Sequence[DailySeries], d: Mapping[str, Any]) -> None:
    chart.note.set_text(
        _esc(
            f"Sums per day in {d['timezone']}, canonical unit per day; sent = provider meters, "
            "received = receiver meters; a gap is a day without data."
        )
    )
    n = len(series)
    ncols = 1 if n == 1 else 2 if n <= 4 else 3
    for i, (s, ax, (sent_line, received_line)) in enumerate(
        zip(series, chart.axes, chart.lines, strict=True)
    ):
        x = [day.day for day in s.days]
        sent_line.set_data(x, [math.nan if v is None else v for v in s.sent])
        received_line.set_data(x, [math.nan if v is None else v for v in s.received])
        ax.set_title(
            _esc(f"{s.exchange}  ({s.unit}/day, {s.role})"),
            fontsize=8,
            loc="left",
            color=INK,
            y=1.0,  # where matplotlib would put it (nothing above the axes): no search for room
        )
        # The limits of a new axes: x as given, y from 0 to the data's top with the usual
        # margin (or matplotlib's default view without data).
        ax.relim()
        ax.set_xlim(0.5, len(x) + 0.5)
        ax.set_autoscaley_on(True)
        ax.viewLim.intervaly = (0.0, 1.0)
        ax.autoscale_view(scalex=False)
        ax.set_ylim(bottom=0)
        x0, x1 = ax.get_xlim()
        y0, y1 = ax.get_ylim()
        xs, ys = _ticks_in(ax.get_xticks(), x0, x1), _ticks_in(ax.get_yticks(), y0, y1)
        chart.grids[i].set_segments(
            [[(x, y0), (x, y1)] for x in xs] + [[(x0, y), (x1, y)] for y in ys]
        )
        chart.marks[i][0].set_data(xs, [0.0] * len(xs))
        chart.marks[i][1].set_data([0.0] * len(ys), ys)
        if i + ncols >= n:  # the lowest panel of its column
            ax.set_xlabel(f"day of {s.days[0]:%B}", fontsize=7, color=MUTED)


def _ticks_in(ticks: Iterable[float], lo: float, hi: float) -> list[float]:
    """The ticks an axis shows for the view [lo, hi] (within 1e-10 of its span, as
    matplotlib's axes keep them)."""
    tol = abs(hi - lo) * 1e-10
    return [float(t) for t in ticks if min(lo, hi) - tol <= t <= max(lo, hi) + tol]
