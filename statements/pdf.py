"""A statement's PDF, made from its JSON document (:mod:`statements.document`); the table layout
is :mod:`statements.pdf_layout`, the daily charts :mod:`statements.pdf_charts`. No I/O, no clock.

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

import io
import textwrap
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from matplotlib.backends.backend_pdf import PdfPages

if TYPE_CHECKING:
    pass

from core.windows import human_time
from statements.compute import KINDS, DailySeries, Statement
from statements.document import _counterparties_of, _doc, _parties, content_hash
from statements.pdf_charts import _chart, _fill_chart
from statements.pdf_layout import (
    DRAFT_COLOUR,
    DRAFT_MARK,
    INK,
    ISSUED_COLOUR,
    MARGIN_BOTTOM,
    MARGIN_X,
    MUTED,
    PAGE_W,
    PANELS_PER_PAGE,
    _Block,
    _Column,
    _esc,
    _flow_tables,
    _Page,
    _text_width,
)

# -------------------------------------------------------------------------------------- PDF


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
        notes.append(f"Issued with incomplete data: {d['incomplete_reason']}")
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
