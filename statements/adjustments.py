"""Adjustments: what changed in an issued month since it was issued (late or corrected meter data,
changed terms, an exchange not on the statement), as lines of the next statement; and the billed
lines of a statement or stored document they are compared against.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from core.network import (
    Kind,
)
from statements.compute import ZERO, Adjustment, Role, Statement

# ------------------------------------------------------------------------------ adjustments


@dataclass(frozen=True, slots=True)
class BilledLine:
    """What a statement billed for one exchange in one month (split lines summed)."""

    month: str
    exchange: str
    role: Role
    kind: Kind
    unit: str
    billed: Decimal
    amount: Decimal
    avoided_cost: Decimal
    co2_avoided_t: Decimal
    savings: Decimal

    def plus(self, adj: Adjustment) -> BilledLine:
        return BilledLine(
            month=self.month,
            exchange=self.exchange,
            role=self.role,
            kind=self.kind,
            unit=self.unit,
            billed=self.billed + adj.delta_quantity,
            amount=self.amount + adj.delta_amount,
            avoided_cost=self.avoided_cost + adj.delta_avoided_cost,
            co2_avoided_t=self.co2_avoided_t + adj.delta_co2_avoided_t,
            savings=self.savings + adj.delta_savings,
        )


def billed_lines(statement: Statement | Mapping[str, Any]) -> list[BilledLine]:
    """Per exchange, what ``statement`` billed: from a :class:`Statement` or its JSON document
    (as stored when issued; decimals as strings)."""
    out: dict[str, BilledLine] = {}
    if isinstance(statement, Statement):
        month = statement.month
        items = [
            (
                ln.exchange,
                ln.role,
                ln.kind,
                ln.unit,
                (ln.billed, ln.amount, ln.avoided_cost, ln.co2_avoided_t, ln.savings),
            )
            for ln in statement.lines
        ]
    else:
        month = str(statement["month"])
        items = []
        for ln in statement["lines"]:
            role: Role = "provider" if ln["role"] == "provider" else "receiver"
            b, a, c, co2, sv = (
                Decimal(str(ln[k]))
                for k in ("billed", "amount", "avoided_cost", "co2_avoided_t", "savings")
            )
            items.append(
                (str(ln["exchange"]), role, Kind(ln["kind"]), str(ln["unit"]), (b, a, c, co2, sv))
            )
    for exchange, role, kind, unit, (billed, amount, avoided, co2, savings) in items:
        before = out.get(exchange)
        if before is None:
            out[exchange] = BilledLine(
                month, exchange, role, kind, unit, billed, amount, avoided, co2, savings
            )
        else:
            out[exchange] = BilledLine(
                month,
                exchange,
                role,
                kind,
                unit,
                before.billed + billed,
                before.amount + amount,
                before.avoided_cost + avoided,
                before.co2_avoided_t + co2,
                before.savings + savings,
            )
    return list(out.values())


def adjustments_from_document(doc: Mapping[str, Any]) -> list[Adjustment]:
    """The adjustments listed on a statement's JSON document."""
    return [
        Adjustment(
            month=str(a["month"]),
            exchange=str(a["exchange"]),
            role="provider" if a["role"] == "provider" else "receiver",
            kind=Kind(a["kind"]),
            unit=str(a["unit"]),
            delta_quantity=Decimal(str(a["delta_quantity"])),
            delta_amount=Decimal(str(a["delta_amount"])),
            delta_avoided_cost=Decimal(str(a["delta_avoided_cost"])),
            delta_co2_avoided_t=Decimal(str(a["delta_co2_avoided_t"])),
            delta_savings=Decimal(str(a["delta_savings"])),
            reason=str(a["reason"]),
        )
        for a in doc.get("adjustments", ())
    ]


def with_adjustments(
    lines: Sequence[BilledLine], adjustments: Iterable[Adjustment]
) -> list[BilledLine]:
    """``lines`` (what an issued statement billed) plus the adjustments already issued for
    the same month and exchange on later statements: the baseline for the next comparison."""
    out = {(ln.month, ln.exchange): ln for ln in lines}
    for adj in adjustments:
        key = (adj.month, adj.exchange)
        base = out.get(key)
        if base is None:
            zero = ZERO
            base = BilledLine(
                adj.month, adj.exchange, adj.role, adj.kind, adj.unit, zero, zero, zero, zero, zero
            )
        out[key] = base.plus(adj)
    return list(out.values())


REASON_QUANTITY = "late or corrected meter data changed the billed quantity"
REASON_TERMS = "terms changed"
REASON_NEW = "exchange not on the issued statement"


def compute_adjustments(
    billed_before: Sequence[BilledLine],
    billed_now: Sequence[BilledLine],
    *,
    reason: str | None = None,
) -> list[Adjustment]:
    """One adjustment per (month, exchange) whose recomputed values differ from those billed.

    ``billed_before``: what was billed (see :func:`with_adjustments`); ``billed_now``: the
    same months recomputed (``billed_lines(build_statement(...))``). An exchange that is not
    in the recomputation (retired from the network) is left as billed. ``reason`` overrides
    the derived one (quantity changed, terms changed, new exchange).
    """
    before = {(ln.month, ln.exchange): ln for ln in billed_before}
    out: list[Adjustment] = []
    for now in billed_now:
        key = (now.month, now.exchange)
        old = before.get(key)
        zero = ZERO
        if old is None:
            old = BilledLine(
                now.month, now.exchange, now.role, now.kind, now.unit, zero, zero, zero, zero, zero
            )
            why = REASON_NEW
        else:
            why = REASON_QUANTITY if now.billed != old.billed else REASON_TERMS
        deltas = (
            now.billed - old.billed,
            now.amount - old.amount,
            now.avoided_cost - old.avoided_cost,
            now.co2_avoided_t - old.co2_avoided_t,
            now.savings - old.savings,
        )
        if all(d.is_zero() for d in deltas):
            continue
        dq, da, dc, dco2, ds = (d.copy_abs() if d.is_zero() else d for d in deltas)
        out.append(
            Adjustment(
                month=now.month,
                exchange=now.exchange,
                role=now.role,
                kind=now.kind,
                unit=now.unit,
                delta_quantity=dq,
                delta_amount=da,
                delta_avoided_cost=dc,
                delta_co2_avoided_t=dco2,
                delta_savings=ds,
                reason=reason or why,
            )
        )
    out.sort(key=lambda a: (a.month, a.exchange))
    return out
