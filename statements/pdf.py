"""Statements out (SPEC §7): the JSON document with its content hash, CSV and PDF.

Pure functions from a :class:`statements.compute.Statement` or its JSON document to bytes or
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

Besides the lines, adjustments and totals, the document is an invoice basis:
``document_number`` (given when the statement is issued; ``null`` for a draft), ``parties``
(``partner`` and ``counterparties``, each ``id``, ``name``, ``address``, ``vat_id``),
``subtotals`` (per counterparty: ``receivable``, ``payable``, ``net_amount``, ``currency``;
they add up to the totals), ``savings`` (avoided cost, net savings and CO2 avoided, in all and
by kind: not amounts owed) and ``payment_terms``. A stored document may also carry
``revision`` and ``incomplete_reason``; the renderings show them when present, and render
documents made before these fields existed as well.

CSV
---
One row per line, per adjustment and per total (``record`` = ``line`` | ``adjustment`` |
``total``; totals for all kinds, then one per kind), then one per party (``party``: the
partner, then each counterparty, with ``address`` and ``vat_id``), one per counterparty's
subtotal (``subtotal``) and the payment terms (``payment_terms``). Every row carries the
partner and its legal name, month, currency, document number and issue time; values as exact
decimal text, instants as in the JSON. An adjustment row carries its Δs in ``billed``,
``amount``, ``avoided_cost``, ``co2_avoided_t`` and ``savings`` and its month in ``month``; a
total row has ``receivable``, ``payable``, ``net_amount``, ``avoided_cost``, ``savings`` (net)
and ``co2_avoided_t``; a subtotal row ``receivable``, ``payable`` and ``net_amount``. Written
with pandas, read back with ``pandas.read_csv`` (pass ``dtype=str`` to keep the decimals
exact).

PDF
---
A4 landscape, drawn with matplotlib's object API (``Figure`` and the PDF backend's
``PdfPages``; no pyplot, no GUI backend, no global state). First what an accountant books: the
header (document number, or "DRAFT — not an invoice"; issue time and statement period in the
network's zone with their UTC offsets; the partner's legal name, address and VAT id), the
counterparties with theirs, the lines grouped by counterparty (receivable and payable in
columns of their own), the adjustments, the subtotals per counterparty, the totals and the
payment terms. Then the metered quantities, the savings and CO2 avoided (a section of their
own: not amounts owed), and a chart of daily sent vs received per exchange, one panel per
exchange. Tables flow onto more pages (a short one moves whole to the next page, a long one
continues with its column titles repeated; more than 12 exchanges give more chart pages).
Column widths are measured in the font the cells are drawn in, figures right-aligned. The PDF
carries no creation date, so the same inputs give the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import math
import textwrap
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

from core.windows import human_time
from statements.compute import (
    COVERAGE_PLACES,
    KINDS,
    Adjustment,
    DailySeries,
    Party,
    Period,
    Statement,
    StatementLine,
    Subtotal,
    Totals,
)

DOCUMENT_VERSION = 2  # 2: parties, document number, subtotals, savings, payment terms
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


def _party(p: Party) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "address": p.address, "vat_id": p.vat_id}


def _subtotal(sub: Subtotal, currency: str) -> dict[str, Any]:
    return {
        "counterparty": sub.counterparty,
        "counterparty_name": sub.counterparty_name,
        "currency": currency,
        "receivable": _dec(sub.receivable),
        "payable": _dec(sub.payable),
        "net_amount": _dec(sub.net_amount),
    }


def _savings(t: Totals) -> dict[str, Any]:
    return {
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
    partner = st.partner_party or Party(st.partner, st.partner_name)
    doc: dict[str, Any] = {
        "version": DOCUMENT_VERSION,
        "document_number": st.document_number,
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
        "parties": {
            "partner": _party(partner),
            "counterparties": [_party(p) for p in st.counterparties],
        },
        "rounding": dict(ROUNDING),
        "lines": [_line(ln, tz) for ln in st.lines],
        "adjustments": [_adjustment(a) for a in st.adjustments],
        "subtotals": [_subtotal(sub, st.currency) for sub in st.subtotals],
        "totals": {
            **_totals(st.totals),
            "by_kind": {k.value: _totals(st.totals_by_kind[k]) for k in KINDS},
        },
        "savings": {
            **_savings(st.totals),
            "by_kind": {k.value: _savings(st.totals_by_kind[k]) for k in KINDS},
        },
        "payment_terms": st.payment_terms,
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
    "document_number",
    "issued_at",
    "partner_name",
    "counterparty_name",
    "address",
    "vat_id",
    "payment_terms",
)


def _doc(doc: Mapping[str, Any] | Statement) -> Mapping[str, Any]:
    return statement_document(doc) if isinstance(doc, Statement) else doc


def csv_frame(doc: Mapping[str, Any] | Statement) -> pd.DataFrame:
    """The CSV's rows as a DataFrame of strings (empty cells are None)."""
    d = _doc(doc)
    common = {
        "partner": d["partner"],
        "statement_month": d["month"],
        "currency": d["currency"],
        "document_number": d.get("document_number"),
        "issued_at": d.get("issued_at"),
        "partner_name": d.get("partner_name"),
    }
    rows: list[dict[str, Any]] = []
    other = _counterparties_of(d)
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
                "counterparty": other.get(a["exchange"], (None, None))[0],
                "counterparty_name": other.get(a["exchange"], (None, None))[1],
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
    # after the rows every statement has had: the parties, subtotals and payment terms
    parties = _parties(d)
    for role, party in [("partner", parties[0]), *(("counterparty", p) for p in parties[1:])]:
        rows.append(
            {
                **common,
                "record": "party",
                "role": role,
                "counterparty": party["id"] if role == "counterparty" else None,
                "counterparty_name": party["name"] if role == "counterparty" else None,
                "address": party.get("address"),
                "vat_id": party.get("vat_id"),
            }
        )
    for sub in d.get("subtotals", ()):
        rows.append(
            {
                **common,
                "record": "subtotal",
                "month": d["month"],
                "counterparty": sub["counterparty"],
                "counterparty_name": sub["counterparty_name"],
                "period_start": d["period"]["start"],
                "period_end": d["period"]["end"],
                "receivable": sub["receivable"],
                "payable": sub["payable"],
                "net_amount": sub["net_amount"],
            }
        )
    if d.get("payment_terms"):
        rows.append({**common, "record": "payment_terms", "payment_terms": d["payment_terms"]})
    if d.get("incomplete_reason"):  # issued although its data was incomplete: why
        rows.append({**common, "record": "incomplete", "reason": d["incomplete_reason"]})
    import pandas as pd  # here: processes that only render PDFs start without it

    frame = pd.DataFrame(rows, columns=list(CSV_COLUMNS), dtype=object)
    return frame.astype(object).where(frame.notna(), None)


def _parties(d: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The partner, then each counterparty, from the document (an older document without
    its parties names them from its lines)."""
    parties = d.get("parties")
    if parties:
        return [parties["partner"], *parties["counterparties"]]
    seen: dict[str, Mapping[str, Any]] = {}
    for ln in d["lines"]:
        seen.setdefault(
            ln["counterparty"], {"id": ln["counterparty"], "name": ln.get("counterparty_name")}
        )
    return [{"id": d["partner"], "name": d["partner_name"]}, *seen.values()]


def _counterparties_of(d: Mapping[str, Any]) -> dict[str, tuple[str, str | None]]:
    """Per exchange on the lines, its counterparty's id and legal name (for the adjustments,
    which name only the exchange)."""
    return {
        str(ln["exchange"]): (str(ln["counterparty"]), ln.get("counterparty_name"))
        for ln in d["lines"]
    }


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
GROUP_SHADE = "#f7f8fa"
DRAFT_COLOUR, ISSUED_COLOUR = "#b7791f", "#2f855a"
DRAFT_MARK = "DRAFT — not an invoice"
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


def _period_text(period: Mapping[str, str], zone: str | None = None) -> str:
    return f"{human_time(period['start'], zone)} – {human_time(period['end'], zone)}"


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


@dataclass
class _Block:
    """A heading and a table; tables may be split across pages."""

    heading: str
    columns: Sequence[_Column]
    rows: list[list[str]]
    note: str = ""
    emphasis: frozenset[int] = frozenset()  # row indices drawn bold
    groups: frozenset[int] = frozenset()  # rows heading a group: their first cell spans the row
    header: bool = True  # a row of column titles (repeated on every page the table is on)
    ruled: bool = True  # rules between rows
    invoice: bool = False  # part of what page 1 should hold (tables shrink a little for it)

    def height(self, scale: _Scale) -> float:
        return scale.heading + scale.row * (int(self.header) + len(self.rows))


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

    def shade(self, y: float, h: float, colour: str = SHADE) -> None:
        self.fig.add_artist(
            Rectangle(
                (MARGIN_X / PAGE_W, y / PAGE_H),
                (PAGE_W - 2 * MARGIN_X) / PAGE_W,
                h / PAGE_H,
                facecolor=colour,
                edgecolor="none",
                transform=self.fig.transFigure,
                zorder=0,
            )
        )


_WEIGHTS: dict[str, _Advances] = {}  # the font file's advances by weight (the same at any size)


def _text_width(s: str, font: float, weight: str = "normal") -> float:
    """The advance width of ``s`` in inches at ``font`` points (as :class:`_Cells` draws it)."""
    advances = _WEIGHTS.get(weight)
    if advances is None:
        advances = _WEIGHTS.setdefault(weight, _advances(FontProperties(weight=weight)))
    return advances.width(s, font / 72)


CELL_PAD = 0.07  # inches between a cell's text and its column's edge
COLUMN_GAP = 0.12  # inches more between the texts of neighbouring columns


def _widths(block: _Block, font: float) -> list[float]:
    """Column widths in inches: the widest text of each column (group rows span the row and
    do not count), measured in the font it is drawn in, with padding."""
    out = []
    for j, col in enumerate(block.columns):
        texts = [(col.title, "bold")] if block.header else []
        texts += [
            (row[j], "bold" if i in block.emphasis else "normal")
            for i, row in enumerate(block.rows)
            if i not in block.groups
        ]
        widest = max((_text_width(t, font, w) for t, w in texts if t), default=0.0)
        out.append(widest + 2 * CELL_PAD + COLUMN_GAP)
    return out


@dataclass(frozen=True)
class _Scale:
    """Table sizes, shrunk together when a statement's invoice part would not fit on the
    first page otherwise."""

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
    page: _Page, block: _Block, rows: Sequence[int], scale: _Scale, *, header: bool
) -> None:
    """Draw the rows of ``block`` with these indices under ``page.y`` (and its column
    titles first when ``header``)."""
    width = PAGE_W - 2 * MARGIN_X
    font, row_h = scale.font, scale.row
    widths = _widths(block, font)
    if sum(widths) > width:  # shrink the font until the texts fit between their paddings
        fixed = len(widths) * (2 * CELL_PAD + COLUMN_GAP)
        font = max(5.0, font * (width - fixed) / (sum(widths) - fixed))
        widths = _widths(block, font)
    spare = max(0.0, width - sum(widths)) / len(widths)
    widths = [w + spare for w in widths]
    xs = [MARGIN_X]
    for w in widths[:-1]:
        xs.append(xs[-1] + w)

    def row_text(cells: Sequence[str], y: float, weight: str) -> None:
        for j, (col, cell) in enumerate(zip(block.columns, cells, strict=True)):
            if col.align == "right":
                page.cells.add(xs[j] + widths[j] - CELL_PAD, y, cell, True, font, weight)
            else:
                page.cells.add(xs[j] + CELL_PAD, y, cell, False, font, weight)

    y = page.y
    if header:
        page.shade(y - row_h, row_h)
        row_text([c.title for c in block.columns], y - row_h / 2, "bold")
        page.rule(y - row_h, INK, 0.8)
        y -= row_h
    for i in rows:
        cells = block.rows[i]
        if i in block.groups:
            page.shade(y - row_h, row_h, GROUP_SHADE)
            page.cells.add(MARGIN_X + CELL_PAD, y - row_h / 2, cells[0], False, font, "bold")
        else:
            bold = i in block.emphasis
            if bold:
                page.rule(y, INK, 0.6)
            row_text(cells, y - row_h / 2, "bold" if bold else "normal")
        y -= row_h
        if block.ruled:
            page.rule(y, RULE, 0.4)
    page.y = y


def _fit(page: _Page, blocks: Sequence[_Block]) -> _Scale:
    """The scale at which the invoice blocks fit under ``page.y``: 1, or smaller down to
    MIN_SCALE; 1 where they would not fit even then (they flow onto the next page)."""
    need = sum(b.height(_Scale()) for b in blocks if b.invoice)
    room = page.y - MARGIN_BOTTOM - FOOTER_ROOM
    if need <= room or need * MIN_SCALE > room:
        return _Scale()
    return _Scale(room / need)


KEEP_ROWS = 12  # a table this short moves whole to the next page rather than split


def _flow_tables(page: _Page, blocks: Sequence[_Block], new_page: Callable[[], _Page]) -> None:
    """Place blocks top to bottom: a short table that does not fit under the last one starts
    a new page, a long one is split across pages (its column titles repeated, a group's
    heading row never left alone at the bottom of a page)."""
    scale = _fit(page, blocks)
    bottom = MARGIN_BOTTOM + FOOTER_ROOM
    full = PAGE_H - MARGIN_TOP - bottom
    for block in blocks:
        remaining = list(range(len(block.rows)))
        whole = block.height(scale)
        if len(block.rows) <= KEEP_ROWS and page.y - whole < bottom - 1e-9 and whole <= full:
            page = new_page()
        cont = False
        while True:
            # At least the header and two rows (or the whole table) under the heading.
            need = scale.heading + scale.row * (int(block.header) + min(len(remaining), 2))
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
            fit = int((page.y - bottom + 1e-9) // scale.row) - int(block.header)
            chunk = remaining[: max(fit, 1)]
            if len(chunk) > 1 and len(chunk) < len(remaining) and chunk[-1] in block.groups:
                chunk = chunk[:-1]
            _draw_table(page, block, chunk, scale, header=block.header)
            remaining = remaining[len(chunk) :]
            if not remaining:
                break
            page = new_page()
            cont = True


def _status_colour(d: Mapping[str, Any]) -> str:
    return DRAFT_COLOUR if d["status"] == "draft" else ISSUED_COLOUR


def _header(page: _Page, d: Mapping[str, Any]) -> None:
    """The document's head: what it is, who it is for, its number, dates and period."""
    zone = str(d["timezone"])
    draft = d["status"] == "draft"
    top = page.y
    partner = _parties(d)[0]
    kind = "Exchange statement  ·  draft" if draft else "Exchange statement  ·  invoice basis"
    page.text(MARGIN_X, top - 0.2, kind.upper(), fontsize=8, color=MUTED, weight="bold")
    page.text(
        PAGE_W - MARGIN_X,
        top - 0.22,
        DRAFT_MARK if draft else "ISSUED",
        fontsize=14,
        weight="bold",
        ha="right",
        color=_status_colour(d),
    )
    network = str(d["network_name"])
    page.text(PAGE_W - MARGIN_X, top - 0.45, network, fontsize=9, ha="right", color=MUTED)
    # the partner's legal name, smaller where it is long (it stays clear of the network's)
    name = str(partner.get("name") or d["partner"])
    room = PAGE_W - 2 * MARGIN_X - _text_width(network, 9) - 0.3
    size = max(9.0, min(17.0, 17.0 * room / max(_text_width(name, 17.0, "bold"), 1e-9)))
    page.text(MARGIN_X, top - 0.52, name, fontsize=size, weight="bold")
    who = [
        str(partner["address"]) if partner.get("address") else "",
        f"VAT {partner['vat_id']}" if partner.get("vat_id") else "",
        f"partner id {d['partner']}",
    ]
    page.text(MARGIN_X, top - 0.78, "   ·   ".join(w for w in who if w), fontsize=9.5)

    number = d.get("document_number")
    facts: list[tuple[str, str, str]] = [  # label, value, colour
        ("Document no.", "none (a draft)" if draft else str(number or "–"), _status_colour(d)),
        ("Data as of", human_time(str(d["as_of"]), zone), INK)
        if draft and d.get("as_of")
        else ("Issued", human_time(str(d["issued_at"]), zone), INK)
        if d.get("issued_at")
        else ("Issued", "not issued", INK),
        ("Currency", str(d["currency"]), INK),
        (f"Statement period ({zone})", _period_text(d["period"], zone), INK),
    ]
    revision = d.get("revision")
    if isinstance(revision, int) and not isinstance(revision, bool) and revision > 1:
        facts.insert(1, ("Revision", str(revision), INK))
    x, y = MARGIN_X, top - 1.08
    for label, value, colour in facts:
        span = max(_text_width(label, 7.5), _text_width(value, 9, "bold")) + 0.4
        if x > MARGIN_X and x + span - 0.4 > PAGE_W - MARGIN_X:
            x, y = MARGIN_X, y - 0.44
        page.text(x, y, label, fontsize=7.5, color=MUTED)
        page.text(x, y - 0.2, value, fontsize=9, weight="bold", color=colour)
        x += span
    y -= 0.36
    notes = []
    if d.get("incomplete_reason"):
        notes.append(f"Issued on incomplete data: {d['incomplete_reason']}")
    if isinstance(revision, int) and not isinstance(revision, bool) and revision > 1:
        replaced = d.get("supersedes") or {}
        notes.append(
            f"Revision {revision} replaces revision {replaced.get('revision', revision - 1)}"
            + (f" ({replaced['document_number']})" if replaced.get("document_number") else "")
            + f": {d.get('revision_reason') or 'no reason given'}"
        )
    if draft:
        notes.append(
            "A draft: its figures change while data arrives. It is not an invoice and has no "
            "document number."
        )
    for note in notes:
        for part in textwrap.wrap(note, 150):
            page.text(MARGIN_X, y - 0.04, part, fontsize=8.5, color=DRAFT_COLOUR)
            y -= 0.18
    page.y = y - 0.04
    page.rule(page.y, INK, 1.0)
    page.y -= 0.05


def _pct(coverage: str) -> str:
    return f"{(Decimal(coverage) * 100).quantize(Decimal('0.01'))} %"


def _blocks(d: Mapping[str, Any]) -> list[_Block]:
    """The statement's tables in the order they are read: who, what is owed, the terms, then
    the metered detail and the savings."""
    cur = d["currency"]
    lines = d["lines"]
    adjustments = d["adjustments"]
    split = any(ln.get("period") for ln in lines)
    period_col = [_Column("Period", "left")] if split else []

    def period_cell(ln: Mapping[str, Any]) -> list[str]:
        return [_days_text(ln.get("period"))] if split else []

    parties = _parties(d)
    names = {str(p["id"]): str(p.get("name") or p["id"]) for p in parties[1:]}
    blocks = [
        _Block(
            "Counterparties",
            [
                _Column("Legal name", "left"),
                _Column("Partner id", "left"),
                _Column("Address", "left"),
                _Column("VAT id", "left"),
            ],
            [
                [
                    str(p.get("name") or "–"),
                    str(p["id"] or "–"),
                    str(p.get("address") or "–"),
                    str(p.get("vat_id") or "–"),
                ]
                for p in parties[1:]
            ],
            note="the other party of each line; as named in the network file",
            invoice=True,
        )
    ]

    # the lines, grouped by counterparty in the order the counterparties first appear
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for ln in lines:
        groups.setdefault(str(ln["counterparty"]), []).append(ln)
    m_rows: list[list[str]] = []
    heads: set[int] = set()
    m_cols = [
        _Column("Exchange", "left"),
        _Column("Role", "left"),
        *period_col,
        _Column("Billed", "right"),
        _Column("Unit", "left"),
        _Column("Basis", "left"),
        _Column("Coverage", "right"),
        _Column(f"Price /unit {cur}", "right"),
        _Column(f"Receivable {cur}", "right"),
        _Column(f"Payable {cur}", "right"),
    ]
    for other, members in groups.items():
        name = str(members[0].get("counterparty_name") or names.get(other) or other)
        heads.add(len(m_rows))
        m_rows.append([f"{name}  ({other})", *([""] * (len(m_cols) - 1))])
        for ln in members:
            provider = ln["role"] == "provider"
            m_rows.append(
                [
                    str(ln["exchange"]),
                    str(ln["role"]),
                    *period_cell(ln),
                    _num(ln["billed"]),
                    str(ln["unit"]),
                    str(ln["basis"]),
                    _pct(ln["coverage"]),
                    _num(ln["price"]),
                    _num(ln["amount"]) if provider else "",
                    "" if provider else _num(ln["amount"]),
                ]
            )
    blocks.append(
        _Block(
            f"Lines by counterparty ({cur})",
            m_cols,
            m_rows,
            note=(
                "amount = billed × price, half-up to the cent; as provider the partner "
                "receives it, as receiver it pays it"
            ),
            groups=frozenset(heads),
            invoice=True,
        )
    )
    if adjustments:
        counterparty_of = _counterparties_of(d)
        blocks.append(
            _Block(
                "Adjustments to issued months",
                [
                    _Column("Month", "left"),
                    _Column("Exchange", "left"),
                    _Column("Counterparty", "left"),
                    _Column("Role", "left"),
                    _Column("Δ quantity", "right"),
                    _Column("Unit", "left"),
                    _Column(f"Δ amount {cur}", "right"),
                    _Column("Reason", "left"),
                ],
                [
                    [
                        str(a["month"]),
                        str(a["exchange"]),
                        counterparty_of.get(str(a["exchange"]), ("–", None))[0],
                        str(a["role"]),
                        _num(a["delta_quantity"]),
                        str(a["unit"]),
                        _num(a["delta_amount"]),
                        str(a["reason"]),
                    ]
                    for a in adjustments
                ],
                note="included in the subtotals and totals",
                invoice=True,
            )
        )
    subtotals = d.get("subtotals")
    if subtotals is not None:
        vat = {str(p["id"]): str(p.get("vat_id") or "–") for p in parties[1:]}
        blocks.append(
            _Block(
                f"Subtotals per counterparty ({cur})",
                [
                    _Column("Counterparty", "left"),
                    _Column("Partner id", "left"),
                    _Column("VAT id", "left"),
                    _Column(f"Receivable {cur}", "right"),
                    _Column(f"Payable {cur}", "right"),
                    _Column(f"Net amount {cur}", "right"),
                ],
                [
                    [
                        str(sub["counterparty_name"] or names.get(sub["counterparty"]) or "–"),
                        str(sub["counterparty"] or "–"),
                        vat.get(str(sub["counterparty"]), "–"),
                        _num(sub["receivable"]),
                        _num(sub["payable"]),
                        _num(sub["net_amount"]),
                    ]
                    for sub in subtotals
                ],
                note="net amount = receivable − payable (negative: the partner pays)",
                invoice=True,
            )
        )
    used = {ln["kind"] for ln in lines} | {a["kind"] for a in adjustments}
    totals = d["totals"]
    kinds = [k.value for k in KINDS if k.value in used]
    tot_rows = [[kind, *_owed_cells(totals["by_kind"][kind])] for kind in kinds]
    tot_rows.append(["Total", *_owed_cells(totals)])
    blocks.append(
        _Block(
            f"Totals ({cur})",
            [
                _Column("", "left"),
                _Column(f"Receivable {cur}", "right"),
                _Column(f"Payable {cur}", "right"),
                _Column(f"Net amount {cur}", "right"),
            ],
            tot_rows,
            note="the amounts owed, by kind and in all; net amount negative: the partner pays",
            emphasis=frozenset({len(tot_rows) - 1}),
            invoice=True,
        )
    )
    if d.get("payment_terms"):
        paragraphs = str(d["payment_terms"]).splitlines() or [""]
        wrapped = [part for p in paragraphs for part in (textwrap.wrap(p, 150) or [""])]
        blocks.append(
            _Block(
                "Payment terms",
                [_Column("", "left")],
                [[part] for part in wrapped],
                header=False,
                ruled=False,
                invoice=True,
            )
        )

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
            _pct(ln["coverage"]),
            str(ln["windows"]),
            str(ln["alerts"]),
        ]
        for ln in lines
    ]
    blocks.append(
        _Block(
            "Metered quantities",
            q_cols,
            q_rows,
            note=(
                "canonical units; billed = the basis agreed for the exchange; alerts on the "
                "exchange and its meters during the month"
            ),
        )
    )

    s_cols = [
        _Column("Exchange", "left"),
        _Column("Role", "left"),
        *period_col,
        _Column("Billed", "right"),
        _Column("Unit", "left"),
        _Column(f"Avoided /unit {cur}", "right"),
        _Column(f"Avoided cost {cur}", "right"),
        _Column(f"Savings {cur}", "right"),
        _Column("CO2 t/unit", "right"),
        _Column("CO2 avoided t", "right"),
    ]
    s_rows = [
        [
            str(ln["exchange"]),
            str(ln["role"]),
            *period_cell(ln),
            _num(ln["billed"]),
            str(ln["unit"]),
            _num(ln["avoided_cost_per_unit"]),
            _num(ln["avoided_cost"]),
            _num(ln["savings"]),
            _num(ln["co2_per_unit_t"]),
            _num(ln["co2_avoided_t"]),
        ]
        for ln in lines
    ] + [
        [
            f"{a['exchange']}, adjustment {a['month']}",
            str(a["role"]),
            *([""] if split else []),
            _num(a["delta_quantity"]),
            str(a["unit"]),
            "",
            _num(a["delta_avoided_cost"]),
            _num(a["delta_savings"]),
            "",
            _num(a["delta_co2_avoided_t"]),
        ]
        for a in adjustments
    ]
    blocks.append(
        _Block(
            "Savings and CO2 avoided (not amounts owed)",
            s_cols,
            s_rows,
            note=(
                "avoided cost = billed × avoided/unit; savings: receiver avoided cost − "
                "amount, provider amount + avoided cost; half-up"
            ),
        )
    )
    savings = d.get("savings") or totals
    sav_rows = [[kind, *_saved_cells(savings["by_kind"][kind])] for kind in kinds]
    sav_rows.append(["Total", *_saved_cells(savings)])
    blocks.append(
        _Block(
            "Savings and CO2 avoided, totals",
            [
                _Column("", "left"),
                _Column(f"Avoided cost {cur}", "right"),
                _Column(f"Net savings {cur}", "right"),
                _Column("CO2 avoided t", "right"),
            ],
            sav_rows,
            note="adjustments included",
            emphasis=frozenset({len(sav_rows) - 1}),
        )
    )
    return blocks


def _owed_cells(t: Mapping[str, str]) -> list[str]:
    return [_num(t["receivable"]), _num(t["payable"]), _num(t["net_amount"])]


def _saved_cells(t: Mapping[str, str]) -> list[str]:
    return [_num(t["avoided_cost"]), _num(t["net_savings"]), _num(t["co2_avoided_t"])]


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
    :func:`statements.compute.daily_series`)."""
    d = _doc(doc)
    digest = str(d.get("content_hash") or content_hash(d))
    numbered = f"{d['document_number']} · " if d.get("document_number") else ""
    footer = (
        f"symbiont · {d['network_name']} · statement {numbered}{d['partner']} {d['month']} "
        f"({d['status']}) · content hash SHA-256 {digest}"
    )
    out = io.BytesIO()
    metadata = {
        "Title": f"Exchange statement {numbered}{d['partner']} {d['month']}",
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
    rendering for :func:`statements.issue.issue_month` send back)."""
    wall, cpu = time.perf_counter(), time.process_time()
    pdf = render_pdf(doc, daily)
    return pdf, time.perf_counter() - wall, time.process_time() - cpu
