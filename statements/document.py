"""A statement as its JSON document, with the content hash: what is stored when a statement is
issued, and what the CSV and PDF are made from, so a stored statement renders the same way
later. Pure functions, no I/O, no clock.

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
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    pass

from statements.compute import (
    COVERAGE_PLACES,
    KINDS,
    Adjustment,
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
    """The statement as its JSON document, ``content_hash`` included."""
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


def _doc(doc: Mapping[str, Any] | Statement) -> Mapping[str, Any]:
    return statement_document(doc) if isinstance(doc, Statement) else doc


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
