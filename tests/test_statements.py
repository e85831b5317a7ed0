"""Monthly statements: statements.compute and its renderings, pure and fast.

The windows fed to the statements are the simulator's true flows (``cli.simulate.
true_flows``), so the input is known exactly; every expected quantity and amount is computed
here by hand-written Decimal arithmetic from those flows and the terms of the network file,
never by calling the code under test.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import math
import random
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, localcontext
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
import yaml
from pypdf import PdfReader

from cli.simulate import ExchangeTruth, true_flows
from core.network import Exchange, Network, Terms, load_network, parse_network
from core.windows import month_bounds
from statements import pdf_charts
from statements.adjustments import (
    adjustments_from_document,
    billed_lines,
    compute_adjustments,
    with_adjustments,
)
from statements.compute import Statement, WindowRow, build_statement, daily_series
from statements.csv_export import render_csv
from statements.document import canonical_json, render_json, statement_document, verify_hash
from statements.pdf import render_pdf

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CPH = ZoneInfo("Europe/Copenhagen")
SEED = 11
ISSUED_AT = datetime(2026, 11, 4, 6, 0, tzinfo=UTC)
RECONCILED_FACTOR = 1.002  # the test's stand-in for x̂_R: received × 1.002


# ------------------------------------------------------------------------- by-hand arithmetic


def exact_sum(values: Iterable[float]) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 200
        total = Decimal(0)
        for v in values:
            total += Decimal(v)
        return total


def q3(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.001"), rounding=ROUND_HALF_UP)


def cents(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def terms_at(ex: Exchange, day: date) -> Terms:
    return [t for t in ex.terms if t.from_ <= day][-1]


def expected_money(billed: Decimal, t: Terms, role: str) -> dict[str, Decimal]:
    """The money rules by hand: amount, avoided cost, CO2, savings from a printed quantity."""
    amount = cents(billed * t.price)
    if role == "receiver":
        avoided = cents(billed * t.receiver_avoided_cost)
        co2 = q3(billed * t.receiver_avoided_co2)
        savings = avoided - amount
    else:
        avoided = cents(billed * t.provider_avoided_cost)
        co2 = q3(billed * t.provider_avoided_co2)
        savings = amount + avoided
    return {"amount": amount, "avoided_cost": avoided, "co2_avoided_t": co2, "savings": savings}


# ------------------------------------------------------------------------------------ inputs


def kalundborg() -> Network:
    return load_network(EXAMPLES / "kalundborg.yaml")


_TRUTH: dict[tuple[str, int, int], dict[str, ExchangeTruth]] = {}


def truth_for(net: Network, year: int, month: int) -> dict[str, ExchangeTruth]:
    """True flows of a month (cached per network and month: terms do not change flows)."""
    key = (net.network, year, month)
    if key not in _TRUTH:
        start, end = month_bounds(year, month, net.tz)
        _TRUTH[key] = true_flows(net, start, end, seed=SEED)
    return _TRUTH[key]


def rows_from(
    truth: dict[str, ExchangeTruth], keep: Callable[[str, int], bool] = lambda _e, _i: True
) -> list[WindowRow]:
    rows = []
    for eid, t in truth.items():
        for i, (a, b, s, r) in enumerate(
            zip(
                t.starts.tolist(),
                t.ends.tolist(),
                t.sent.tolist(),
                t.received.tolist(),
                strict=True,
            )
        ):
            if keep(eid, i):
                rows.append(
                    WindowRow(
                        exchange_id=eid,
                        window_start=datetime.fromtimestamp(a, UTC),
                        window_end=datetime.fromtimestamp(b, UTC),
                        sent=s,
                        received=r,
                        reconciled_sent=s * RECONCILED_FACTOR,
                        reconciled_received=r * RECONCILED_FACTOR,
                        coverage=1.0,
                        status="ok",
                    )
                )
    return rows


def billed_floats(ex: Exchange, t: ExchangeTruth, sel: Sequence[int]) -> list[float]:
    if ex.billing == "sent":
        return [float(t.sent[i]) for i in sel]
    if ex.billing == "received":
        return [float(t.received[i]) for i in sel]
    return [float(t.received[i]) * RECONCILED_FACTOR for i in sel]


def issued(net: Network, partner: str, year: int, month: int, rows: list[WindowRow]) -> Statement:
    return build_statement(net, partner, year, month, rows, status="issued", issued_at=ISSUED_AT)


# ---------------------------------------------------------------------------- whole months


@pytest.mark.parametrize("partner", ["asnaes", "novo", "novozymes", "kommune", "gyproc", "equinor"])
def test_october_dst_month_to_the_cent(partner: str) -> None:
    """October 2026 in Copenhagen has 745 hours; every line and total matches by hand."""
    net = kalundborg()
    start, end = month_bounds(2026, 10, net.tz)
    assert end - start == timedelta(hours=745)
    truth = truth_for(net, 2026, 10)
    st = issued(net, partner, 2026, 10, rows_from(truth))

    mine = [ex for ex in net.exchanges if partner in (ex.provider, ex.receiver)]
    assert [ln.exchange for ln in st.lines] == [ex.id for ex in mine]
    receivable = payable = avoided_total = savings_total = Decimal(0)
    co2_total = Decimal(0)
    for ex, line in zip(mine, st.lines, strict=True):
        t = truth[ex.id]
        n = t.starts.size
        assert n == (745 if ex.window == timedelta(hours=1) else 31)
        role = "provider" if ex.provider == partner else "receiver"
        billed = q3(exact_sum(billed_floats(ex, t, range(n))))
        terms = terms_at(ex, date(2026, 10, 1))
        money = expected_money(billed, terms, role)
        assert line.role == role
        assert line.counterparty == (ex.receiver if role == "provider" else ex.provider)
        assert line.period is None
        assert line.sent == q3(exact_sum(t.sent.tolist()))
        assert line.received == q3(exact_sum(t.received.tolist()))
        assert line.billed == billed
        assert line.basis == ex.billing
        assert line.coverage == Decimal("1.0000")
        assert line.windows == n
        assert line.price == terms.price
        assert line.amount == money["amount"]
        assert line.avoided_cost == money["avoided_cost"]
        assert line.co2_avoided_t == money["co2_avoided_t"]
        assert line.savings == money["savings"]
        if role == "provider":
            receivable += money["amount"]
        else:
            payable += money["amount"]
        avoided_total += money["avoided_cost"]
        savings_total += money["savings"]
        co2_total += money["co2_avoided_t"]
    assert st.totals.receivable == receivable
    assert st.totals.payable == payable
    assert st.totals.net_amount == receivable - payable
    assert st.totals.avoided_cost == avoided_total
    assert st.totals.net_savings == savings_total
    assert st.totals.co2_avoided_t == co2_total
    assert sum((t.receivable for t in st.totals_by_kind.values()), Decimal(0)) == receivable
    assert sum((t.net_savings for t in st.totals_by_kind.values()), Decimal(0)) == savings_total

    doc = statement_document(st)
    assert doc["month"] == "2026-10"
    assert doc["status"] == "issued"
    assert doc["timezone"] == "Europe/Copenhagen"
    assert doc["currency"] == "EUR"
    assert doc["period"] == {
        "start": "2026-10-01T00:00:00+02:00",
        "end": "2026-11-01T00:00:00+01:00",
    }
    assert doc["issued_at"] == "2026-11-04T07:00:00+01:00"


def test_a_known_line_by_hand() -> None:
    """One line spelt out: the receiver of a reconciled water exchange (novo)."""
    net = kalundborg()
    truth = truth_for(net, 2026, 10)
    doc = statement_document(issued(net, "novo", 2026, 10, rows_from(truth)))
    line = next(ln for ln in doc["lines"] if ln["exchange"] == "water-forsyning-novo")
    t = truth["water-forsyning-novo"]
    billed = q3(exact_sum(float(r) * RECONCILED_FACTOR for r in t.received.tolist()))
    assert line["basis"] == "reconciled"
    assert line["billed"] == str(billed)
    assert line["price"] == "0.80"
    assert line["avoided_cost_per_unit"] == "1.40"
    assert line["amount"] == str(cents(billed * Decimal("0.80")))
    assert line["avoided_cost"] == str(cents(billed * Decimal("1.40")))
    assert line["savings"] == str(cents(billed * Decimal("1.40")) - cents(billed * Decimal("0.80")))
    assert line["co2_avoided_t"] == str(q3(billed * Decimal("0.00002")))
    # Anyone can recompute the money from the printed quantity and factors.
    assert Decimal(line["amount"]) == cents(Decimal(line["billed"]) * Decimal(line["price"]))


def test_terms_change_on_the_first_of_july() -> None:
    """kalundborg.yaml changes two exchanges' terms on 2026-07-01: July is priced with the new
    terms, June with the old ones; neither month is split."""
    net = kalundborg()
    prices = {}
    for month in (6, 7):
        truth = truth_for(net, 2026, month)
        st = issued(net, "asnaes", 2026, month, rows_from(truth))
        assert all(ln.period is None for ln in st.lines)
        by_id = {ln.exchange: ln for ln in st.lines}
        prices[month] = (by_id["steam-asnaes-novo"].price, by_id["gypsum-asnaes-gyproc"].price)
        novo = by_id["steam-asnaes-novo"]
        assert novo.amount == cents(novo.billed * novo.price)  # type: ignore[operator]
    assert prices[6] == (Decimal("25.00"), Decimal("5.00"))
    assert prices[7] == (Decimal("26.50"), Decimal("5.50"))


def small_network(**terms: list[dict[str, Any]]) -> Network:
    data = yaml.safe_load((EXAMPLES / "small.yaml").read_text(encoding="utf-8"))
    for ex in data["exchanges"]:
        if ex["id"] in terms:
            ex["terms"] = terms[ex["id"]]
    return parse_network(data)


SPLIT_TERMS = {
    "heat-plant-town": [
        {"from": "2026-01-01", "price": "28.00", "receiver_avoided_cost": "45.00",
         "receiver_avoided_co2": "0.191"},
        {"from": "2026-10-15", "price": "31.25", "receiver_avoided_cost": "47.50",
         "receiver_avoided_co2": "0.191", "provider_avoided_cost": "1.10"},
    ],
    # No terms before 20 October: quantities reported, money zero, price None.
    "gypsum-plant-boards": [
        {"from": "2026-10-20", "price": "5.00", "receiver_avoided_cost": "15.00",
         "receiver_avoided_co2": "0.035", "provider_avoided_cost": "64.00"},
    ],
}  # fmt: skip


def test_terms_change_mid_month_splits_the_line() -> None:
    net = small_network(**SPLIT_TERMS)
    truth = truth_for(net, 2026, 10)
    heat = next(ex for ex in net.exchanges if ex.id == "heat-plant-town")
    mid = datetime(2026, 10, 15, tzinfo=CPH)
    for partner, role in (("plant", "provider"), ("town", "receiver")):
        st = issued(net, partner, 2026, 10, rows_from(truth))
        parts = [ln for ln in st.lines if ln.exchange == "heat-plant-town"]
        assert len(parts) == 2
        t = truth["heat-plant-town"]
        before = [i for i in range(t.starts.size) if t.starts[i] < mid.timestamp()]
        after = [i for i in range(t.starts.size) if t.starts[i] >= mid.timestamp()]
        assert (len(before), len(after)) == (14 * 24, 17 * 24 + 1)  # the DST hour is after
        for line, sel, day in ((parts[0], before, 1), (parts[1], after, 15)):
            assert line.windows == len(sel)
            assert line.coverage == Decimal("1.0000")
            billed = q3(exact_sum(float(t.received[i]) for i in sel))
            assert line.billed == billed
            money = expected_money(billed, terms_at(heat, date(2026, 10, day)), role)
            assert (line.amount, line.avoided_cost, line.savings, line.co2_avoided_t) == (
                money["amount"],
                money["avoided_cost"],
                money["savings"],
                money["co2_avoided_t"],
            )
        doc = statement_document(st)
        periods = [ln["period"] for ln in doc["lines"] if ln["exchange"] == "heat-plant-town"]
        assert periods == [
            {"start": "2026-10-01T00:00:00+02:00", "end": "2026-10-15T00:00:00+02:00"},
            {"start": "2026-10-15T00:00:00+02:00", "end": "2026-11-01T00:00:00+01:00"},
        ]
        total = sum((ln.amount for ln in st.lines), Decimal(0))
        assert total == (st.totals.receivable if role == "provider" else st.totals.payable)
        if partner != "plant":
            continue
        gypsum = [ln for ln in st.lines if ln.exchange == "gypsum-plant-boards"]
        assert [ln.windows for ln in gypsum] == [19, 12]
        assert gypsum[0].price is None
        assert gypsum[0].amount == gypsum[0].savings == Decimal("0.00")
        assert gypsum[0].billed > 0
        assert gypsum[1].price == Decimal("5.00")


def test_incomplete_month_bills_what_exists() -> None:
    net = kalundborg()
    truth = truth_for(net, 2026, 10)
    eid = "dh-asnaes-kommune"  # billing: received
    gone = set(range(9 * 24, 12 * 24))  # 72 windows missing (days 10-12)
    rows = rows_from(truth, lambda e, i: e != eid or i not in gone)
    half = set(range(100, 110))
    blind = set(range(200, 205))
    t = truth[eid]
    position = {float(s): k for k, s in enumerate(t.starts.tolist())}
    patched = []
    for w in rows:
        k = position[w.window_start.timestamp()] if w.exchange_id == eid else -1
        if k in half:
            w = WindowRow(**{**_fields(w), "coverage": 0.5, "status": "incomplete"})
        elif k in blind:
            w = WindowRow(
                **{
                    **_fields(w),
                    "received": None,
                    "reconciled_received": None,
                    "coverage": 0.0,
                    "status": "no_data",
                }
            )
        patched.append(w)
    assert sum(w.exchange_id == eid for w in patched) == 745 - 72
    st = issued(net, "kommune", 2026, 10, patched)
    line = next(ln for ln in st.lines if ln.exchange == eid)
    present = [k for k in range(745) if k not in gone]
    assert line.windows == len(present)
    billed = q3(exact_sum(float(t.received[k]) for k in present if k not in blind))
    assert line.billed == billed
    full = len(present) - len(half) - len(blind)
    expected_cov = (Decimal(full) + Decimal("0.5") * len(half)) / 745
    assert line.coverage == expected_cov.quantize(Decimal("0.0001"), rounding=ROUND_DOWN)
    assert line.coverage < 1
    ex = next(e for e in net.exchanges if e.id == eid)
    money = expected_money(billed, terms_at(ex, date(2026, 10, 1)), "receiver")
    assert line.amount == money["amount"]
    assert line.savings == money["savings"]


def _fields(w: WindowRow) -> dict[str, Any]:
    return {f: getattr(w, f) for f in WindowRow.__slots__}


def test_reconciled_basis_without_a_reconciled_value() -> None:
    """A window without x̂: the received value, or (1 − loss)·sent when received is missing."""
    net = kalundborg()
    ex = next(e for e in net.exchanges if e.id == "steam-asnaes-novozymes")  # reconciled
    start, _ = month_bounds(2026, 10, net.tz)
    hour = timedelta(hours=1)
    h = [start + k * hour for k in range(5)]
    x_r, r_only = 9.6, 9.0
    rows = [
        WindowRow(ex.id, h[0], h[1], 10.0, 9.5, 9.9, x_r, 1.0, "ok"),
        WindowRow(ex.id, h[1], h[2], None, r_only, None, None, 0.5, "no_data"),
        WindowRow(ex.id, h[2], h[3], 10.0, None, None, None, 0.5, "no_data"),
        WindowRow(ex.id, h[3], h[4], None, None, None, None, 0.0, "no_data"),
    ]
    st = build_statement(net, "novozymes", 2026, 10, rows)
    line = next(ln for ln in st.lines if ln.exchange == ex.id)
    expected = Decimal(x_r) + Decimal(r_only) + (1 - Decimal("0.04")) * Decimal(10)
    assert line.billed == q3(expected)
    assert line.sent == Decimal("20.000")
    assert line.received == Decimal("18.500")
    assert line.windows == 4
    assert line.coverage == (Decimal(2) / 745).quantize(Decimal("0.0001"), rounding=ROUND_DOWN)


def test_draft_coverage_runs_to_as_of() -> None:
    net = kalundborg()
    as_of = datetime(2026, 10, 10, 12, 0, tzinfo=CPH)
    start, _ = month_bounds(2026, 10, net.tz)
    truth = true_flows(net, start, as_of, seed=SEED)
    st = build_statement(net, "novo", 2026, 10, rows_from(truth), as_of=as_of)
    assert st.status == "draft"
    hourly = [ln for ln in st.lines if ln.exchange != "yeast-novo-farms"]
    assert all(ln.coverage == Decimal("1.0000") for ln in hourly)
    assert all(ln.windows == 9 * 24 + 12 for ln in hourly)
    doc = statement_document(st)
    assert doc["issued_at"] is None
    assert doc["as_of"] == "2026-10-10T12:00:00+02:00"


def test_bad_arguments() -> None:
    net = kalundborg()
    with pytest.raises(ValueError, match="unknown partner"):
        build_statement(net, "nobody", 2026, 10, [])
    with pytest.raises(ValueError, match="issued_at"):
        build_statement(net, "novo", 2026, 10, [], status="issued")
    with pytest.raises(ValueError, match="issued_at"):
        build_statement(net, "novo", 2026, 10, [], issued_at=ISSUED_AT)
    start, _ = month_bounds(2026, 10, net.tz)
    w = WindowRow("steam-asnaes-novo", start, start + timedelta(hours=1), 1.0, 1.0)
    with pytest.raises(ValueError, match="twice"):
        build_statement(net, "novo", 2026, 10, [w, w])
    naive = WindowRow("steam-asnaes-novo", datetime(2026, 10, 2), datetime(2026, 10, 2, 1), 1, 1)
    with pytest.raises(ValueError, match="no time zone"):
        build_statement(net, "novo", 2026, 10, [naive])


def test_a_partner_without_windows_has_zero_lines() -> None:
    net = kalundborg()
    st = build_statement(net, "kemira", 2026, 10, [])
    assert [ln.exchange for ln in st.lines] == ["sulphur-equinor-kemira"]
    line = st.lines[0]
    # sulphur is trucked (weighbridge tickets): a month without a ticket delivered nothing,
    # and its days are complete once they have ended
    assert (line.billed, line.amount, line.coverage, line.windows) == (
        Decimal("0.000"),
        Decimal("0.00"),
        Decimal("1.0000"),
        0,
    )
    doc = statement_document(st)
    assert doc["totals"]["payable"] == "0.00"
    assert doc["totals"]["by_kind"]["material"]["co2_avoided_t"] == "0.000"
    # metered exchanges without windows have no data at all
    novo = build_statement(net, "novo", 2026, 10, [])
    metered = [ln for ln in novo.lines if ln.exchange != "yeast-novo-farms"]
    assert metered and all(ln.coverage == Decimal("0.0000") for ln in metered)


TRUCKED = ("gypsum-asnaes-gyproc", "flyash-asnaes-aalborg-portland", "sulphur-equinor-kemira")


def test_trucked_exchanges_are_complete_on_days_without_tickets() -> None:
    """The engine has windows of a weighbridge exchange only for days with tickets (no
    trucks on Sundays, a sulphur tanker every few days); a delta meter's window is complete
    once it has ended, so those months are fully covered and billed as delivered."""
    net = kalundborg()
    truth = truth_for(net, 2026, 10)

    def ticketed(eid: str, i: int) -> bool:
        t = truth[eid]
        return eid not in TRUCKED or bool(t.sent[i] > 0 or t.received[i] > 0)

    rows = rows_from(truth, ticketed)
    for eid in TRUCKED:
        days = truth[eid].starts.size
        with_tickets = sum(ticketed(eid, i) for i in range(days))
        assert days == 31 and 0 < with_tickets < days  # some days without a truck
    for partner, eid in (("gyproc", TRUCKED[0]), ("kemira", TRUCKED[2])):
        st = issued(net, partner, 2026, 10, rows)
        (line,) = [ln for ln in st.lines if ln.exchange == eid]
        t = truth[eid]
        assert line.coverage == Decimal("1.0000")
        assert line.windows == sum(ticketed(eid, i) for i in range(t.starts.size))
        assert line.billed == q3(exact_sum(t.received.tolist()))

    # a draft: the days before the cut are complete, the day running at noon is half over
    as_of = datetime(2026, 10, 10, 12, 0, tzinfo=CPH)
    draft = build_statement(net, "kemira", 2026, 10, rows, as_of=as_of)
    hours = Decimal(9 * 24) + Decimal(12) * Decimal(12) / Decimal(24)
    expected = (hours / Decimal(9 * 24 + 12)).quantize(Decimal("0.0001"), rounding=ROUND_DOWN)
    assert draft.lines[0].coverage == expected == Decimal("0.9736")
    # and a metered exchange missing an hour is still short of complete
    steam = "steam-asnaes-novo"
    gap = rows_from(truth, lambda eid, i: eid != steam or i != 100)
    (line,) = [ln for ln in issued(net, "novo", 2026, 10, gap).lines if ln.exchange == steam]
    assert line.coverage < Decimal("1.0000")


# ------------------------------------------------------------------------------ adjustments


def test_a_changed_past_window_gives_one_adjustment() -> None:
    net = kalundborg()
    sept = truth_for(net, 2026, 9)
    rows = rows_from(sept)
    issued_doc = json.loads(render_json(issued(net, "asnaes", 2026, 9, rows)))

    # Late data: one window of steam-asnaes-novo (billing: received) gains 12.3456 MWh.
    target = next(w for w in rows if w.exchange_id == "steam-asnaes-novo")
    late = [
        WindowRow(**{**_fields(w), "received": float(w.received or 0) + 12.3456})
        if w is target
        else w
        for w in rows
    ]
    recomputed = issued(net, "asnaes", 2026, 9, late)
    adjustments = compute_adjustments(billed_lines(issued_doc), billed_lines(recomputed))
    assert len(adjustments) == 1
    adj = adjustments[0]
    t = sept["steam-asnaes-novo"]
    old_q = q3(exact_sum(t.received.tolist()))
    new_q = q3(exact_sum([*t.received.tolist(), 12.3456]))
    price = Decimal("26.50")
    assert (adj.month, adj.exchange, adj.role) == ("2026-09", "steam-asnaes-novo", "provider")
    assert adj.delta_quantity == new_q - old_q
    assert adj.delta_amount == cents(new_q * price) - cents(old_q * price)
    assert adj.delta_savings == adj.delta_amount  # provider, no avoided cost on steam
    assert "meter data" in adj.reason

    # The adjustment appears on October and adds to its totals.
    october = rows_from(truth_for(net, 2026, 10))
    plain = issued(net, "asnaes", 2026, 10, october)
    with_adj = build_statement(
        net, "asnaes", 2026, 10, october, status="issued", issued_at=ISSUED_AT,
        adjustments=adjustments,
    )  # fmt: skip
    assert with_adj.totals.receivable == plain.totals.receivable + adj.delta_amount
    assert with_adj.totals.payable == plain.totals.payable
    assert with_adj.totals.net_savings == plain.totals.net_savings + adj.delta_savings
    heat = with_adj.totals_by_kind[net.exchanges[0].kind]
    assert heat.receivable == plain.totals_by_kind[net.exchanges[0].kind].receivable + (
        adj.delta_amount
    )
    oct_doc = statement_document(with_adj)
    assert oct_doc["adjustments"] == [
        {
            "month": "2026-09",
            "exchange": "steam-asnaes-novo",
            "role": "provider",
            "kind": "heat",
            "unit": "MWh",
            "delta_quantity": str(new_q - old_q),
            "delta_amount": str(cents(new_q * price) - cents(old_q * price)),
            "delta_avoided_cost": "0.00",
            "delta_co2_avoided_t": "0.000",
            "delta_savings": str(cents(new_q * price) - cents(old_q * price)),
            "reason": adj.reason,
        }
    ]
    # Once issued, the same change is not reported again.
    baseline = with_adjustments(billed_lines(issued_doc), adjustments_from_document(oct_doc))
    assert compute_adjustments(baseline, billed_lines(recomputed)) == []
    # Unchanged data: nothing to adjust.
    assert compute_adjustments(billed_lines(issued_doc), billed_lines(issued_doc)) == []
    with pytest.raises(ValueError, match="cannot appear"):
        build_statement(net, "asnaes", 2026, 9, rows, adjustments=adjustments)


# --------------------------------------------------------------------------- hash and formats


def test_content_hash_is_stable_and_tamper_evident() -> None:
    net = kalundborg()
    truth = truth_for(net, 2026, 10)
    rows = rows_from(truth)
    a = statement_document(issued(net, "asnaes", 2026, 10, rows))
    b = statement_document(issued(net, "asnaes", 2026, 10, list(reversed(rows))))
    assert a == b
    assert a["content_hash"] == b["content_hash"]
    assert re.fullmatch(r"[0-9a-f]{64}", a["content_hash"])
    body = {k: v for k, v in a.items() if k != "content_hash"}
    manual = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert a["content_hash"] == hashlib.sha256(manual.encode("utf-8")).hexdigest()
    assert canonical_json(body) == manual.encode("utf-8")
    assert verify_hash(a)
    assert verify_hash(json.loads(render_json(a)))
    # Every decimal is a string: no float anywhere in the document.
    assert not list(_floats(a))

    for path, value in (
        (("lines", 0, "amount"), "0.01"),
        (("totals", "receivable"), "1.00"),
        (("status",), "draft"),
        (("adjustments",), [{"x": 1}]),
    ):
        tampered = copy.deepcopy(a)
        node: Any = tampered
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert not verify_hash(tampered)
    assert not verify_hash({k: v for k, v in a.items() if k != "content_hash"})

    # One window a little different: a different statement, a different hash.
    nudged = [
        WindowRow(**{**_fields(w), "received": float(w.received or 0) + 0.01})
        if i == 5 and w.exchange_id == "steam-asnaes-novo"
        else w
        for i, w in enumerate(rows)
    ]
    c = statement_document(issued(net, "asnaes", 2026, 10, nudged))
    assert c["content_hash"] != a["content_hash"]
    assert verify_hash(c)


def _floats(node: Any) -> Iterable[float]:
    if isinstance(node, float):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _floats(v)
    elif isinstance(node, list):
        for v in node:
            yield from _floats(v)


def pdf_pages(data: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))


def test_csv_and_pdf(tmp_path: Path) -> None:
    net = kalundborg()
    truth = truth_for(net, 2026, 10)
    rows = rows_from(truth)
    sept_doc = statement_document(
        issued(net, "asnaes", 2026, 9, rows_from(truth_for(net, 2026, 9)))
    )
    adj = compute_adjustments(
        [ln for ln in billed_lines(sept_doc) if ln.exchange != "cooling-equinor-asnaes"],
        billed_lines(sept_doc),
    )
    assert len(adj) == 1 and adj[0].reason.startswith("exchange not on")
    st = build_statement(
        net, "asnaes", 2026, 10, rows, status="issued", issued_at=ISSUED_AT,
        alerts={"steam-asnaes-novo": 2}, adjustments=adj,
    )  # fmt: skip
    doc = statement_document(st)

    text = render_csv(doc)
    frame = pd.read_csv(io.StringIO(text), dtype=str)
    assert list(frame["record"]).count("line") == len(doc["lines"]) == 8
    assert list(frame["record"]).count("adjustment") == 1
    assert list(frame["record"]).count("total") == 4
    lines = frame[frame["record"] == "line"]
    assert list(lines["amount"]) == [ln["amount"] for ln in doc["lines"]]
    assert list(lines["billed"]) == [ln["billed"] for ln in doc["lines"]]
    total = frame[(frame["record"] == "total") & frame["kind"].isna()].iloc[0]
    assert total["receivable"] == doc["totals"]["receivable"]
    assert total["savings"] == doc["totals"]["net_savings"]
    assert pd.read_csv(io.StringIO(text))["amount"].notna().sum() == 9  # parses as numbers too

    pdf = render_pdf(doc, daily_series(net, "asnaes", 2026, 10, rows))
    assert pdf.startswith(b"%PDF")
    # the invoice part, the metered detail and the savings on three pages, then the chart
    assert pdf_pages(pdf) == 4
    assert pdf == render_pdf(doc, daily_series(net, "asnaes", 2026, 10, rows))  # reproducible
    # the tables' text is in the PDF as text: every line's quantities and money, the totals
    text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages[:3])
    for ln in doc["lines"]:
        for key in ("sent", "received", "billed", "amount", "savings"):
            assert f"{Decimal(ln[key]):,f}".replace("-", "−") in text, (ln["exchange"], key)
    for key in ("receivable", "payable", "avoided_cost", "net_savings"):
        assert f"{Decimal(doc['totals'][key]):,f}".replace("-", "−") in text, key
    assert "Adjustments to issued months" in text and "Δ amount EUR" in text
    out = tmp_path / "asnaes-2026-10.pdf"
    out.write_bytes(pdf)
    if shutil.which("pdfinfo"):
        info = subprocess.run(["pdfinfo", str(out)], capture_output=True, text=True, check=True)
        pages = int(re.search(r"Pages:\s+(\d+)", info.stdout).group(1))  # type: ignore[union-attr]
        assert pages == 4

    # A split statement with a no-terms part renders too.
    small = small_network(**SPLIT_TERMS)
    small_rows = rows_from(truth_for(small, 2026, 10))
    draft = build_statement(small, "plant", 2026, 10, small_rows, as_of=ISSUED_AT)
    data = render_pdf(statement_document(draft), daily_series(small, "plant", 2026, 10, small_rows))
    assert pdf_pages(data) == 3  # the invoice part, the detail and savings, the chart
    frame = pd.read_csv(io.StringIO(render_csv(draft)), dtype=str)
    assert list(frame["period_start"][:2]) == [
        "2026-10-01T00:00:00+02:00",
        "2026-10-15T00:00:00+02:00",
    ]


def test_pdf_bytes_do_not_depend_on_what_was_rendered_before() -> None:
    """Chart pages are reused within a process: a statement renders to the same bytes
    whatever was rendered before it (other months, data gaps, exchanges without any data)."""
    net = kalundborg()
    oct_rows = rows_from(truth_for(net, 2026, 10))
    sept_rows = rows_from(truth_for(net, 2026, 9))
    doc = statement_document(issued(net, "asnaes", 2026, 10, oct_rows))
    daily = daily_series(net, "asnaes", 2026, 10, oct_rows)
    # September (30 days) with the first exchange's received side missing and, in a second
    # rendering, its other exchanges without any data
    gap = sept_rows[0].exchange_id
    gappy = [r for r in sept_rows if r.exchange_id != gap] + [
        WindowRow(r.exchange_id, r.window_start, r.window_end, r.sent, None)
        for r in sept_rows
        if r.exchange_id == gap
    ]
    other = statement_document(issued(net, "asnaes", 2026, 9, gappy))
    other_daily = daily_series(net, "asnaes", 2026, 9, gappy)
    nothing = [other_daily[0]] + [
        dataclasses.replace(s, sent=(None,) * len(s.days), received=(None,) * len(s.days))
        for s in other_daily[1:]
    ]

    def fresh(d: dict[str, Any], series: list[Any]) -> bytes:
        pdf_charts._CHARTS.clear()  # a process that has drawn no chart yet
        return render_pdf(d, series)

    expected = {k: fresh(*case) for k, case in enumerate(((doc, daily), (other, other_daily),
                                                          (other, nothing)))}  # fmt: skip
    assert len(set(expected.values())) == 3
    for k in (0, 1, 2, 0, 2, 1, 0):
        d, series = ((doc, daily), (other, other_daily), (other, nothing))[k]
        assert render_pdf(d, series) == expected[k]


def test_daily_series_are_local_days() -> None:
    net = kalundborg()
    truth = truth_for(net, 2026, 10)
    rows = rows_from(truth)
    series = {s.exchange: s for s in daily_series(net, "asnaes", 2026, 10, rows)}
    s = series["steam-asnaes-novo"]
    assert len(s.days) == 31 and s.days[0] == date(2026, 10, 1)
    t = truth["steam-asnaes-novo"]
    for day_index, day in enumerate(s.days):
        lo = datetime.combine(day, datetime.min.time(), tzinfo=CPH).timestamp()
        hi = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=CPH).timestamp()
        sel = (t.starts >= lo) & (t.starts < hi)
        assert int(sel.sum()) == (25 if day == date(2026, 10, 25) else 24)
        assert s.sent[day_index] == pytest.approx(float(t.sent[sel].sum()), rel=1e-12)
        assert s.received[day_index] == pytest.approx(float(t.received[sel].sum()), rel=1e-12)
    gypsum = series["gypsum-asnaes-gyproc"]
    assert gypsum.sent == tuple(
        pytest.approx(float(v), abs=1e-9) for v in truth[gypsum.exchange].sent
    )
    assert sum(s.sent) == pytest.approx(float(t.sent.sum()))  # type: ignore[arg-type]


def _decimal_sum(values: Sequence[Any]) -> Decimal:
    """The sums statements were defined with: exact Decimals of the finite values, added at
    100 digits."""
    with localcontext() as ctx:
        ctx.prec = 100
        total = Decimal(0)
        for v in values:
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                continue
            if isinstance(v, Decimal) and not v.is_finite():
                continue
            total += Decimal(v)
        return total


@pytest.mark.parametrize("seed", range(6))
def test_fast_exact_sums_equal_the_decimal_sums(seed: int) -> None:
    """Quantities and coverage are summed over integers; the sums are the Decimal sums, also
    where those round (more than 100 digits) and with gaps, infinities, ints and Decimals."""
    from statements.compute import _exact_total

    rng = random.Random(seed)
    scales = [1e-300, 1e-12, 1e-3, 1.0, 10.0, 7450.0, 1e9, 1e200]
    cases: list[list[Any]] = [[], [None], [0.1] * 745, [-0.0, 0.0], [float("inf"), 2.5, None]]
    for _ in range(40):
        wide = rng.random() < 0.2
        cases.append(
            [
                rng.choice([None, float("nan"), -float("inf"), 3, Decimal("1.25")])
                if rng.random() < 0.03
                else rng.uniform(-0.2, 1.0)
                * (rng.choice(scales) if wide else rng.choice(scales[2:6]))
                for _ in range(rng.randrange(1, 800))
            ]
        )
    for values in cases:
        got, want = _exact_total(values), _decimal_sum(values)
        assert got == want, values[:5]
