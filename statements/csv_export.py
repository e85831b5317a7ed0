"""A statement's CSV, made from its JSON document (:mod:`statements.document`). Pure
functions, no I/O.

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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from statements.compute import Statement
from statements.document import _counterparties_of, _doc, _parties

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


def render_csv(doc: Mapping[str, Any] | Statement) -> str:
    """The statement as CSV text (UTF-8, ``\\n`` line ends, header row)."""
    return str(csv_frame(doc).to_csv(index=False, lineterminator="\n"))
