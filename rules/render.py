"""Statements out (SPEC §7): the JSON document with its content hash, CSV and PDF.

Pure functions from a :class:`rules.statements.Statement` or its JSON document to bytes or
text; no I/O, no clock. CSV and PDF are made from the *document* (the dict that
:func:`statement_document` returns and that is stored when a statement is issued), so a
stored statement renders the same way later.

JSON and the content hash
-------------------------
Every decimal is a string with its exact places (``"14178.222"``, ``"354455.55"``), counts are
integers, instants are RFC 3339 with the network zone's offset (``"2026-10-01T00:00:00+02:00"``).
``content_hash`` is the lowercase hex SHA-256 of the document's **canonical JSON** without the
``content_hash`` key: ``json.dumps(doc, sort_keys=True, separators=(",", ":"),
ensure_ascii=False)`` encoded as UTF-8. :func:`verify_hash` checks it; :func:`render_json`
gives the canonical bytes of the whole document.

CSV
---
One row per line, per adjustment and per total (``record`` = ``line`` | ``adjustment`` |
``total``; totals for all kinds, then one per kind), every row carrying the partner, month and
currency; values as exact decimal text. An adjustment row carries its Δs in ``billed``,
``amount``, ``avoided_cost``, ``co2_avoided_t`` and ``savings`` and its month in ``month``; a
total row has ``receivable``, ``payable``, ``net_amount``, ``avoided_cost``, ``savings`` (net)
and ``co2_avoided_t``. Written with pandas, read back with
``pandas.read_csv`` (pass ``dtype=str`` to keep the decimals exact).

PDF
---
A4 landscape, drawn with matplotlib's object API (``Figure`` and the PDF backend's
``PdfPages``; no pyplot, no GUI backend, no global state): page 1 has the header (partner,
month, status, period, currency, time zone), the lines, the adjustments and the totals
(overall and by kind); page 2 has a chart of daily sent vs received per exchange, one panel per
exchange. Long statements flow onto more pages (a table continues with its header repeated;
more than 12 exchanges give more chart pages). The PDF carries no creation date, so the same
inputs give the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo

import matplotlib as mpl
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont
from matplotlib.ft2font import FT2Font, Kerning, LoadFlags
from matplotlib.lines import Line2D
from matplotlib.markers import TICKDOWN, TICKLEFT, MarkerStyle
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from matplotlib.ticker import FuncFormatter, MaxNLocator

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.ft2font import GlyphIndexType

from rules.statements import (
    COVERAGE_PLACES,
    KINDS,
    Adjustment,
    DailySeries,
    Period,
    Statement,
    StatementLine,
    Totals,
)

DOCUMENT_VERSION = 1
ROUNDING = {
    "mode": "ROUND_HALF_UP",
    "quantity": "0.001",
    "money": "0.01",
    "co2_t": "0.001",
    "coverage": str(COVERAGE_PLACES) + " (rounded down)",
}

# ------------------------------------------------------------------------------------- JSON


def _dec(value: Decimal | None) -> str | None:
    if value is None:
        return None
    if value.is_zero():
        value = value.copy_abs()
    return format(value, "f")


def _ts(value: datetime | None, tz: ZoneInfo) -> str | None:
    return None if value is None else value.astimezone(tz).isoformat()


def _period(period: Period | None, tz: ZoneInfo) -> dict[str, Any] | None:
    if period is None:
        return None
    return {"start": _ts(period.start, tz), "end": _ts(period.end, tz)}


def _line(line: StatementLine, tz: ZoneInfo) -> dict[str, Any]:
    return {
        "exchange": line.exchange,
        "role": line.role,
        "counterparty": line.counterparty,
        "counterparty_name": line.counterparty_name,
        "kind": line.kind.value,
        "unit": line.unit,
        "period": _period(line.period, tz),
        "sent": _dec(line.sent),
        "received": _dec(line.received),
        "billed": _dec(line.billed),
        "basis": line.basis.value,
        "coverage": _dec(line.coverage),
        "windows": line.windows,
        "price": _dec(line.price),
        "avoided_cost_per_unit": _dec(line.avoided_cost_per_unit),
        "co2_per_unit_t": _dec(line.co2_per_unit_t),
        "amount": _dec(line.amount),
        "avoided_cost": _dec(line.avoided_cost),
        "co2_avoided_t": _dec(line.co2_avoided_t),
        "savings": _dec(line.savings),
        "alerts": line.alerts,
    }


def _adjustment(adj: Adjustment) -> dict[str, Any]:
    return {
        "month": adj.month,
        "exchange": adj.exchange,
        "role": adj.role,
        "kind": adj.kind.value,
        "unit": adj.unit,
        "delta_quantity": _dec(adj.delta_quantity),
        "delta_amount": _dec(adj.delta_amount),
        "delta_avoided_cost": _dec(adj.delta_avoided_cost),
        "delta_co2_avoided_t": _dec(adj.delta_co2_avoided_t),
        "delta_savings": _dec(adj.delta_savings),
        "reason": adj.reason,
    }


def _totals(t: Totals) -> dict[str, Any]:
    return {
        "receivable": _dec(t.receivable),
        "payable": _dec(t.payable),
        "net_amount": _dec(t.net_amount),
        "avoided_cost": _dec(t.avoided_cost),
        "net_savings": _dec(t.net_savings),
        "co2_avoided_t": _dec(t.co2_avoided_t),
    }


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the bytes the content hash is taken over."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def content_hash(doc: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``doc`` without its ``content_hash``."""
    body = {k: v for k, v in doc.items() if k != "content_hash"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def verify_hash(doc: Mapping[str, Any]) -> bool:
    """Whether ``doc['content_hash']`` matches its content."""
    claimed = doc.get("content_hash")
    if not isinstance(claimed, str):
        return False
    return hmac.compare_digest(claimed, content_hash(doc))


def statement_document(st: Statement) -> dict[str, Any]:
    """The statement as its JSON document (SPEC §7), ``content_hash`` included."""
    tz = st.tz
    doc: dict[str, Any] = {
        "version": DOCUMENT_VERSION,
        "network": st.network,
        "network_name": st.network_name,
        "partner": st.partner,
        "partner_name": st.partner_name,
        "month": st.month,
        "status": st.status,
        "issued_at": _ts(st.issued_at, tz),
        "as_of": _ts(st.as_of, tz),
        "currency": st.currency,
        "timezone": st.timezone,
        "period": _period(st.period, tz),
        "rounding": dict(ROUNDING),
        "lines": [_line(ln, tz) for ln in st.lines],
        "adjustments": [_adjustment(a) for a in st.adjustments],
        "totals": {
            **_totals(st.totals),
            "by_kind": {k.value: _totals(st.totals_by_kind[k]) for k in KINDS},
        },
    }
    doc["content_hash"] = content_hash(doc)
    return doc


def render_json(doc: Mapping[str, Any] | Statement) -> bytes:
    """The canonical JSON bytes of the document (hash included)."""
    if isinstance(doc, Statement):
        doc = statement_document(doc)
    return canonical_json(dict(doc))


# -------------------------------------------------------------------------------------- CSV

CSV_COLUMNS = (
    "record",
    "partner",
    "statement_month",
    "currency",
    "month",
    "exchange",
    "role",
    "counterparty",
    "kind",
    "unit",
    "period_start",
    "period_end",
    "sent",
    "received",
    "billed",
    "basis",
    "coverage",
    "windows",
    "price",
    "amount",
    "avoided_cost_per_unit",
    "avoided_cost",
    "co2_per_unit_t",
    "co2_avoided_t",
    "savings",
    "alerts",
    "receivable",
    "payable",
    "net_amount",
    "reason",
)


def _doc(doc: Mapping[str, Any] | Statement) -> Mapping[str, Any]:
    return statement_document(doc) if isinstance(doc, Statement) else doc


def csv_frame(doc: Mapping[str, Any] | Statement) -> pd.DataFrame:
    """The CSV's rows as a DataFrame of strings (empty cells are None)."""
    d = _doc(doc)
    common = {"partner": d["partner"], "statement_month": d["month"], "currency": d["currency"]}
    rows: list[dict[str, Any]] = []
    for ln in d["lines"]:
        period = ln.get("period") or d["period"]
        rows.append(
            {
                **common,
                "record": "line",
                "month": d["month"],
                "period_start": period["start"],
                "period_end": period["end"],
                **{k: ln.get(k) for k in CSV_COLUMNS if k in ln and k != "period"},
            }
        )
    for a in d["adjustments"]:
        rows.append(
            {
                **common,
                "record": "adjustment",
                "month": a["month"],
                "exchange": a["exchange"],
                "role": a["role"],
                "kind": a["kind"],
                "unit": a["unit"],
                "billed": a["delta_quantity"],
                "amount": a["delta_amount"],
                "avoided_cost": a["delta_avoided_cost"],
                "co2_avoided_t": a["delta_co2_avoided_t"],
                "savings": a["delta_savings"],
                "reason": a["reason"],
            }
        )
    totals = d["totals"]
    for kind, t in [("", totals), *totals["by_kind"].items()]:
        rows.append(
            {
                **common,
                "record": "total",
                "month": d["month"],
                "kind": kind or None,
                "period_start": d["period"]["start"],
                "period_end": d["period"]["end"],
                "receivable": t["receivable"],
                "payable": t["payable"],
                "net_amount": t["net_amount"],
                "avoided_cost": t["avoided_cost"],
                "co2_avoided_t": t["co2_avoided_t"],
                "savings": t["net_savings"],
            }
        )
    if d.get("incomplete_reason"):  # issued although its data was incomplete: why
        rows.append({**common, "record": "incomplete", "reason": d["incomplete_reason"]})
    import pandas as pd  # here: processes that only render PDFs start without it

    frame = pd.DataFrame(rows, columns=list(CSV_COLUMNS), dtype=object)
    return frame.astype(object).where(frame.notna(), None)


def render_csv(doc: Mapping[str, Any] | Statement) -> str:
    """The statement as CSV text (UTF-8, ``\\n`` line ends, header row)."""
    return str(csv_frame(doc).to_csv(index=False, lineterminator="\n"))


# -------------------------------------------------------------------------------------- PDF

PAGE_W, PAGE_H = 11.69, 8.27  # A4 landscape, inches
MARGIN_X, MARGIN_TOP, MARGIN_BOTTOM = 0.5, 0.45, 0.5
FONT = 8.5  # table text, points
ROW_H = 0.22  # inches per table row
HEADING_H = 0.42  # inches for a table's heading line and the space above it
MIN_SCALE = 0.78  # tables shrink at most to this to fit the first page, then flow on
FOOTER_ROOM = 0.15  # inches kept free above the footer
INK, MUTED, RULE, SHADE = "#1a1a1a", "#666666", "#bbbbbb", "#eef1f5"
SENT_COLOUR, RECEIVED_COLOUR = "#d1603d", "#2b6cb0"
GRID = "#e5e5e5"
AXIS_ZORDER = 1.5  # where axes draw their ticks and grid (below the data lines)
PANELS_PER_PAGE = 12
MAX_PANEL_H = 2.4  # inches per row of chart panels, spacing included


def _esc(text: str) -> str:
    """Literal text for matplotlib (a ``$`` would start mathtext)."""
    return text.replace("$", r"\$")


def _num(value: str | None, places: int | None = None) -> str:
    if value is None:
        return "–"
    d = Decimal(value)
    if places is not None:
        d = d.quantize(Decimal(1).scaleb(-places))
    text = format(d, ",f")
    return text.replace("-", "−") if d < 0 else text


def _local(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


def _when(ts: str) -> str:
    """``2026-10-01T00:00:00+02:00`` → ``1 Oct 2026 00:00 (UTC+02:00)``."""
    local = _local(ts)
    offset = local.isoformat()[19:] or "+00:00"
    return f"{local.day} {local:%b %Y %H:%M} (UTC{offset})"


def _period_text(period: Mapping[str, str]) -> str:
    return f"{_when(period['start'])} – {_when(period['end'])}"


def _days_text(period: Mapping[str, str] | None) -> str:
    if period is None:
        return "month"
    start = _local(period["start"])
    last = _local(period["end"]) - timedelta(microseconds=1)
    if start.month == last.month:
        return f"{start.day}–{last.day} {start:%b}"
    return f"{start.day} {start:%b}–{last.day} {last:%b}"


@dataclass(frozen=True)
class _Column:
    title: str
    align: str  # "left" | "right"
    bold_last: bool = False


@dataclass
class _Block:
    """A heading and a table; tables may be split across pages."""

    heading: str
    columns: Sequence[_Column]
    rows: list[list[str]]
    note: str = ""
    emphasis: frozenset[int] = frozenset()  # row indices drawn bold


class _Cells(Artist):
    """The text of a page's tables, drawn straight through the renderer: one ``draw_text``
    per cell, without a :class:`~matplotlib.text.Text` (and its layout) for each. A cell sits
    on its row's baseline (where a one-line text centred on the row has it) and a
    right-aligned cell ends at the advance width of its text, so figures line up."""

    def __init__(self) -> None:
        super().__init__()
        self.set_zorder(3)  # where texts are
        # (x, y of the row's centre, in inches; text; right-aligned; size; weight)
        self.cells: list[tuple[float, float, str, bool, float, str]] = []

    def add(self, x: float, y: float, s: str, right: bool, size: float, weight: str) -> None:
        self.cells.append((x, y, s, right, size, weight))

    def draw(self, renderer: RendererBase) -> None:
        if not self.get_visible() or not self.cells:
            return
        fig = self.get_figure(root=True)
        assert fig is not None
        to_display = fig.dpi_scale_trans
        gc = renderer.new_gc()
        gc.set_foreground(INK)
        styles: dict[tuple[float, str], tuple[FontProperties, float, _Advances, float]] = {}
        for x, y, s, right, size, weight in self.cells:
            style = styles.get((size, weight))
            if style is None:
                prop = FontProperties(size=size, weight=weight)
                _, h, d = renderer.get_text_width_height_descent("lp", prop, ismath=False)
                pixels = cast(float, renderer.points_to_pixels(size))
                style = styles[(size, weight)] = (prop, d - h / 2, _advances(prop), pixels)
            prop, baseline, advances, pixels = style
            px, py = to_display.transform((x, y))
            if right:
                px -= advances.width(s, pixels)
            renderer.draw_text(gc, px, py + baseline, s, prop, 0.0)
        gc.restore()


class _Advances:
    """Advance widths (with kerning) of texts in one font file, in font units, cached for the
    process."""

    def __init__(self, path: str) -> None:
        self.font = FT2Font(path)
        self.units = self.font.units_per_EM
        self.glyphs: dict[str, tuple[GlyphIndexType, int]] = {}
        self.kerning: dict[tuple[GlyphIndexType, GlyphIndexType], int] = {}
        self.lock = threading.Lock()

    def width(self, s: str, pixels: float) -> float:
        """The advance width of ``s`` at a size of ``pixels`` (display units per em)."""
        total = 0
        previous: GlyphIndexType | None = None
        with self.lock:
            for ch in s:
                glyph = self.glyphs.get(ch)
                if glyph is None:
                    index = self.font.get_char_index(ord(ch))
                    advance = self.font.load_glyph(index, LoadFlags.NO_SCALE).horiAdvance
                    glyph = self.glyphs[ch] = (index, advance)
                index, advance = glyph
                if previous is not None:
                    kern = self.kerning.get((previous, index))
                    if kern is None:
                        kern = self.kerning[(previous, index)] = self.font.get_kerning(
                            previous, index, Kerning.UNSCALED
                        )
                    total += kern
                total += advance
                previous = index
        return total * pixels / self.units


_ADVANCES: dict[str, _Advances] = {}


def _advances(prop: FontProperties) -> _Advances:
    path = findfont(prop)
    found = _ADVANCES.get(path)
    if found is None:
        found = _ADVANCES.setdefault(path, _Advances(path))
    return found


class _Page:
    def __init__(self) -> None:
        self.fig = Figure(figsize=(PAGE_W, PAGE_H))
        self.y = PAGE_H - MARGIN_TOP  # inches from the bottom
        self.cells = _Cells()
        self.fig.add_artist(self.cells)

    def text(self, x: float, y: float, s: str, **kw: Any) -> Text:
        return self.fig.text(x / PAGE_W, y / PAGE_H, _esc(s), **kw)

    def rule(self, y: float, colour: str = RULE, width: float = 0.6) -> None:
        self.fig.add_artist(
            Line2D(
                [MARGIN_X / PAGE_W, 1 - MARGIN_X / PAGE_W],
                [y / PAGE_H, y / PAGE_H],
                color=colour,
                linewidth=width,
                transform=self.fig.transFigure,
            )
        )

    def shade(self, y: float, h: float) -> None:
        self.fig.add_artist(
            Rectangle(
                (MARGIN_X / PAGE_W, y / PAGE_H),
                (PAGE_W - 2 * MARGIN_X) / PAGE_W,
                h / PAGE_H,
                facecolor=SHADE,
                edgecolor="none",
                transform=self.fig.transFigure,
                zorder=0,
            )
        )


def _widths(columns: Sequence[_Column], rows: Sequence[Sequence[str]], font: float) -> list[float]:
    """Column widths in inches, from the longest text (a rough average glyph width)."""
    char = 0.6 * font / 72
    out = []
    for j, col in enumerate(columns):
        longest = max([len(col.title), *(len(r[j]) for r in rows)])
        out.append(longest * char + 0.16)
    return out


@dataclass(frozen=True)
class _Scale:
    """Table sizes, shrunk together when a statement would not fit on the first page."""

    factor: float = 1.0

    @property
    def font(self) -> float:
        return FONT * self.factor

    @property
    def row(self) -> float:
        return ROW_H * self.factor

    @property
    def heading(self) -> float:
        return HEADING_H * self.factor


def _draw_table(
    page: _Page, block: _Block, rows: list[list[str]], first: int, scale: _Scale
) -> None:
    width = PAGE_W - 2 * MARGIN_X
    font, row_h = scale.font, scale.row
    widths = _widths(block.columns, block.rows, font)
    if sum(widths) > width:  # shrink the font until it fits
        font = max(5.0, font * width / sum(widths))
        widths = _widths(block.columns, block.rows, font)
    spare = max(0.0, width - sum(widths)) / len(widths)
    widths = [w + spare for w in widths]
    xs = [MARGIN_X]
    for w in widths[:-1]:
        xs.append(xs[-1] + w)
    pad = 0.06

    def row_text(cells: Sequence[str], y: float, weight: str) -> None:
        for j, (col, cell) in enumerate(zip(block.columns, cells, strict=True)):
            if col.align == "right":
                page.cells.add(xs[j] + widths[j] - pad, y, cell, True, font, weight)
            else:
                page.cells.add(xs[j] + pad, y, cell, False, font, weight)

    y = page.y
    page.shade(y - row_h, row_h)
    row_text([c.title for c in block.columns], y - row_h / 2, "bold")
    page.rule(y - row_h, INK, 0.8)
    y -= row_h
    for i, cells in enumerate(rows):
        bold = (first + i) in block.emphasis
        if bold:
            page.rule(y, INK, 0.6)
        row_text(cells, y - row_h / 2, "bold" if bold else "normal")
        y -= row_h
        page.rule(y, RULE, 0.4)
    page.y = y


def _fit(page: _Page, blocks: Sequence[_Block]) -> _Scale:
    """The scale at which all blocks fit under ``page.y`` (not below MIN_SCALE)."""
    need = sum(HEADING_H + ROW_H * (1 + len(b.rows)) for b in blocks)
    room = page.y - MARGIN_BOTTOM - FOOTER_ROOM
    return _Scale(min(1.0, max(MIN_SCALE, room / need)))


def _flow_tables(page: _Page, blocks: Sequence[_Block], new_page: Callable[[], _Page]) -> None:
    """Place blocks top to bottom, splitting tables across pages (header repeated)."""
    scale = _fit(page, blocks)
    bottom = MARGIN_BOTTOM + FOOTER_ROOM
    for block in blocks:
        remaining = list(block.rows)
        first = 0
        cont = False
        while True:
            # At least the header and two rows (or the whole table) under the heading.
            need = scale.heading + scale.row * (1 + min(len(remaining), 2))
            if page.y - need < bottom - 1e-9:
                page = new_page()
            title = block.heading + (" (continued)" if cont else "")
            mid = page.y - scale.heading * 0.55
            page.text(
                MARGIN_X, mid, title, fontsize=10.5 * scale.factor, weight="bold", va="center"
            )
            if block.note and not cont:
                page.text(
                    PAGE_W - MARGIN_X,
                    mid,
                    block.note,
                    fontsize=7.5 * scale.factor,
                    color=MUTED,
                    ha="right",
                    va="center",
                )
            page.y -= scale.heading
            fit = int((page.y - bottom + 1e-9) // scale.row) - 1
            chunk = remaining[: max(fit, 1)]
            _draw_table(page, block, chunk, first, scale)
            remaining = remaining[len(chunk) :]
            first += len(chunk)
            if not remaining:
                break
            page = new_page()
            cont = True


def _header(page: _Page, d: Mapping[str, Any]) -> None:
    status = str(d["status"]).upper()
    page.text(MARGIN_X, page.y - 0.22, "Exchange statement", fontsize=9, color=MUTED)
    page.text(
        PAGE_W - MARGIN_X,
        page.y - 0.22,
        status,
        fontsize=14,
        weight="bold",
        ha="right",
        color="#b7791f" if d["status"] == "draft" else "#2f855a",
    )
    page.text(MARGIN_X, page.y - 0.55, str(d["partner_name"]), fontsize=17, weight="bold")
    month = datetime.strptime(str(d["month"]), "%Y-%m")
    page.text(
        MARGIN_X,
        page.y - 0.83,
        f"{month:%B %Y}  ·  {d['network_name']}  ·  partner id {d['partner']}",
        fontsize=10,
        color=INK,
    )
    facts = [
        f"Period: {_period_text(d['period'])}, time zone {d['timezone']}",
        f"Currency: {d['currency']}   ·   "
        + (
            f"Issued: {_when(d['issued_at'])}"
            if d.get("issued_at")
            else "Draft: figures change while data arrives"
            + (f" (data as of {_when(d['as_of'])})" if d.get("as_of") else "")
        ),
    ]
    if d.get("incomplete_reason"):
        facts.append(f"Issued with incomplete data: {d['incomplete_reason']}")
    for i, fact in enumerate(facts):
        page.text(MARGIN_X, page.y - 1.07 - 0.18 * i, fact, fontsize=8, color=MUTED)
    page.y -= 1.07 + 0.18 * len(facts)
    page.rule(page.y, INK, 1.0)


def _blocks(d: Mapping[str, Any]) -> list[_Block]:
    cur = d["currency"]
    lines = d["lines"]
    split = any(ln.get("period") for ln in lines)
    period_col = [_Column("Period", "left")] if split else []

    def period_cell(ln: Mapping[str, Any]) -> list[str]:
        return [_days_text(ln.get("period"))] if split else []

    q_cols = [
        _Column("Exchange", "left"),
        _Column("Role", "left"),
        _Column("Counterparty", "left"),
        *period_col,
        _Column("Sent", "right"),
        _Column("Received", "right"),
        _Column("Billed", "right"),
        _Column("Unit", "left"),
        _Column("Basis", "left"),
        _Column("Coverage", "right"),
        _Column("Windows", "right"),
        _Column("Alerts", "right"),
    ]
    q_rows = [
        [
            str(ln["exchange"]),
            str(ln["role"]),
            str(ln["counterparty"]),
            *period_cell(ln),
            _num(ln["sent"]),
            _num(ln["received"]),
            _num(ln["billed"]),
            str(ln["unit"]),
            str(ln["basis"]),
            f"{(Decimal(ln['coverage']) * 100).quantize(Decimal('0.01'))} %",
            str(ln["windows"]),
            str(ln["alerts"]),
        ]
        for ln in lines
    ]
    m_cols = [
        _Column("Exchange", "left"),
        _Column("Role", "left"),
        *period_col,
        _Column("Billed", "right"),
        _Column("Unit", "left"),
        _Column("Price /unit", "right"),
        _Column("Amount", "right"),
        _Column("Avoided /unit", "right"),
        _Column("Avoided cost", "right"),
        _Column("Savings", "right"),
        _Column("CO2 t/unit", "right"),
        _Column("CO2 avoided t", "right"),
    ]
    m_rows = [
        [
            str(ln["exchange"]),
            str(ln["role"]),
            *period_cell(ln),
            _num(ln["billed"]),
            str(ln["unit"]),
            _num(ln["price"]),
            _num(ln["amount"]),
            _num(ln["avoided_cost_per_unit"]),
            _num(ln["avoided_cost"]),
            _num(ln["savings"]),
            _num(ln["co2_per_unit_t"]),
            _num(ln["co2_avoided_t"]),
        ]
        for ln in lines
    ]
    blocks = [
        _Block(
            "Quantities",
            q_cols,
            q_rows,
            note="canonical units; billed = the basis agreed for the exchange",
        ),
        _Block(
            f"Money ({cur})",
            m_cols,
            m_rows,
            note=(
                "amount = billed × price; avoided cost = billed × avoided/unit; "
                "savings: receiver avoided − amount, provider amount + avoided; half-up"
            ),
        ),
    ]
    if d["adjustments"]:
        adj_cols = [
            _Column("Month", "left"),
            _Column("Exchange", "left"),
            _Column("Role", "left"),
            _Column("Δ quantity", "right"),
            _Column("Unit", "left"),
            _Column(f"Δ amount {cur}", "right"),
            _Column(f"Δ avoided cost {cur}", "right"),
            _Column(f"Δ savings {cur}", "right"),
            _Column("Δ CO2 t", "right"),
            _Column("Reason", "left"),
        ]
        adj_rows = [
            [
                str(a["month"]),
                str(a["exchange"]),
                str(a["role"]),
                _num(a["delta_quantity"]),
                str(a["unit"]),
                _num(a["delta_amount"]),
                _num(a["delta_avoided_cost"]),
                _num(a["delta_savings"]),
                _num(a["delta_co2_avoided_t"]),
                str(a["reason"]),
            ]
            for a in d["adjustments"]
        ]
        blocks.append(
            _Block("Adjustments to issued months", adj_cols, adj_rows, note="included in totals")
        )
    tot_cols = [
        _Column("", "left"),
        _Column(f"Receivable {cur}", "right"),
        _Column(f"Payable {cur}", "right"),
        _Column(f"Net amount {cur}", "right"),
        _Column(f"Avoided cost {cur}", "right"),
        _Column(f"Net savings {cur}", "right"),
        _Column("CO2 avoided t", "right"),
    ]
    used = {ln["kind"] for ln in lines} | {a["kind"] for a in d["adjustments"]}
    totals = d["totals"]
    tot_rows = []
    for kind in (k.value for k in KINDS):
        if kind in used:
            t = totals["by_kind"][kind]
            tot_rows.append([kind, *_total_cells(t)])
    tot_rows.append(["Total", *_total_cells(totals)])
    blocks.append(
        _Block(
            "Totals",
            tot_cols,
            tot_rows,
            note="net amount = receivable − payable (negative: the partner pays)",
            emphasis=frozenset({len(tot_rows) - 1}),
        )
    )
    return blocks


def _total_cells(t: Mapping[str, str]) -> list[str]:
    return [
        _num(t["receivable"]),
        _num(t["payable"]),
        _num(t["net_amount"]),
        _num(t["avoided_cost"]),
        _num(t["net_savings"]),
        _num(t["co2_avoided_t"]),
    ]


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


def render_pdf(doc: Mapping[str, Any] | Statement, daily: Sequence[DailySeries] = ()) -> bytes:
    """The statement as a PDF (A4 landscape): header, lines, adjustments and totals, then a
    chart of daily sent vs received per exchange (``daily``, from
    :func:`rules.statements.daily_series`)."""
    d = _doc(doc)
    digest = str(d.get("content_hash") or content_hash(d))
    footer = (
        f"symbiont · {d['network_name']} · statement {d['partner']} {d['month']} "
        f"({d['status']}) · content hash SHA-256 {digest}"
    )
    out = io.BytesIO()
    metadata = {
        "Title": f"Exchange statement {d['partner']} {d['month']}",
        "Subject": f"{d['network_name']}: {d['partner_name']}, {d['month']} ({d['status']})",
        "Creator": "symbiont",
        "CreationDate": None,
    }
    with PdfPages(out, metadata=metadata) as pdf:
        pages: list[_Page] = []

        def new_page() -> _Page:
            page = _Page()
            pages.append(page)
            return page

        first = new_page()
        _header(first, d)
        _flow_tables(first, _blocks(d), new_page)
        panels = [s for s in daily if s.days]
        charts = [panels[k : k + PANELS_PER_PAGE] for k in range(0, len(panels), PANELS_PER_PAGE)]
        total = len(pages) + len(charts)
        for number, page in enumerate(pages, start=1):
            page.text(MARGIN_X, MARGIN_BOTTOM - 0.2, footer, fontsize=6.5, color=MUTED)
            page.text(
                PAGE_W - MARGIN_X,
                MARGIN_BOTTOM - 0.2,
                f"page {number} of {total}",
                fontsize=6.5,
                color=MUTED,
                ha="right",
            )
            pdf.savefig(page.fig)
        for number, group in enumerate(charts, start=len(pages) + 1):
            with _chart(len(group)) as chart:
                _fill_chart(chart, group, d)
                chart.footer.set_text(_esc(footer))
                chart.number.set_text(f"page {number} of {total}")
                pdf.savefig(chart.page.fig)
    return out.getvalue()


def render_pdf_timed(
    doc: Mapping[str, Any] | Statement, daily: Sequence[DailySeries] = ()
) -> tuple[bytes, float, float]:
    """:func:`render_pdf`, with the wall and CPU seconds it took (what worker processes
    rendering for :func:`rules.issue.issue_month` send back)."""
    wall, cpu = time.perf_counter(), time.process_time()
    pdf = render_pdf(doc, daily)
    return pdf, time.perf_counter() - wall, time.process_time() - cpu
