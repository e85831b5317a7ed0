"""Monthly exchange statements: pure computation, no I/O, no clock.

A statement is one partner's account of one calendar month, cut in the network's time zone
(``core.windows.month_bounds``: October 2026 in Europe/Copenhagen runs from
``2026-10-01T00:00:00+02:00`` to ``2026-11-01T00:00:00+01:00``, 745 hours). Everything the
statement needs comes in as arguments: the network model, the reconciled exchange windows
(rows of ``exchange_windows``), alert counts, earlier issued months for adjustments, and the
instants (``issued_at``, ``as_of``); nothing here reads the clock or the database.
``statements.document``, ``statements.csv_export`` and ``statements.pdf`` turn a
:class:`Statement` into JSON (with its content hash), CSV and PDF.

Lines
-----
One line per exchange the partner takes part in (``role`` provider or receiver), in the order
of the network file, also when no window has data (quantities 0, coverage 0, except for a
trucked exchange: see ``coverage``).

* A window belongs to the month of its **start**, and to the terms whose ``from`` date (local
  midnight in the network's zone) is the latest one at or before its start.
* ``sent`` / ``received``: Σ over the month's windows of the measured quantities (a side
  without data in a window adds nothing).
* ``billed`` by the exchange's ``billing`` (the ``basis`` of the line):

  - ``received``: Σ ``received``;
  - ``sent``: Σ ``sent``;
  - ``reconciled``: Σ ``reconciled_received``, the receiver-side reconciled value x̂_R. The
    receiver side is billed because it is what arrives and what the receiver can use; the
    sent side differs from it only by the agreed transit loss, ``R̂ = (1 − loss)·Ŝ``, which by
    contract is the provider's. Where a window has no reconciled value, its estimate with the
    missing side unmeasured is used: ``received`` when only the sent side is missing (or the
    reconciliation had no solution), ``(1 − loss)·sent`` when only the received side is
    missing. A window with neither side adds nothing.

  ``sent`` and ``received`` never estimate: a window without data on the billed side adds
  nothing, and ``coverage`` shows how much of the month is behind the figure.
* ``coverage``: the duration-weighted mean of the windows' coverage over the period of the
  line (the month, or the part of it up to ``as_of`` for a draft); a missing window counts 0.
  So an incomplete month has ``coverage < 1`` and is billed from what exists.
  A *trucked* exchange, whose meters are all ticket meters (``delta`` without an
  ``interval``: weighbridges), has a window only on days with a ticket. Its coverage is
  therefore taken from time alone, as coverage is defined for delta meters: a window that has
  ended by the cut is complete (with or without tickets: a day without a truck delivered
  nothing), the window running at the cut counts its elapsed fraction.
* ``windows``: how many windows were summed.

Terms that change during the month split the exchange into one line per terms period, each
with its ``period`` (start and end); an unsplit line has ``period`` ``None``. Before an
exchange's first terms (or without any) the quantities are reported with ``price`` ``None``
and all money zero.

Rounding (``decimal``, ``ROUND_HALF_UP``: halves away from zero)
-------------------------------------------------------------
1. Quantities are summed exactly (each float converted exactly to ``Decimal``) and rounded
   to **3 decimals** of the canonical unit (kWh, litre, kg): ``sent``, ``received``,
   ``billed``. Money is computed from the *rounded* ``billed``, so anyone can recompute a line
   from the printed quantity and the printed factors.
2. ``amount = round(billed × price, 2)``.
3. Receiver: ``avoided_cost = round(billed × receiver_avoided_cost, 2)``,
   ``savings = avoided_cost − amount``, ``co2_avoided_t = round(billed × receiver_avoided_co2,
   3)``.
   Provider: ``avoided_cost = round(billed × provider_avoided_cost, 2)``,
   ``savings = amount + avoided_cost``, ``co2_avoided_t = round(billed × provider_avoided_co2,
   3)``.
   The line prints the factors it used (``price``, ``avoided_cost_per_unit``,
   ``co2_per_unit_t``).
4. CO2 in tonnes to **3 decimals** (kg).
5. Coverage to 4 decimals, rounded **down**, so ``1.0000`` means every window is complete.
6. Totals and adjustments are sums and differences of the rounded line values: no further
   rounding, so a total always equals the sum of the column it totals.

Totals
------
``receivable`` = Σ amount as provider, ``payable`` = Σ amount as receiver, ``net_amount`` =
receivable − payable, ``avoided_cost``, ``net_savings`` = Σ savings, ``co2_avoided_t``; the
same per kind (heat, water, material; every kind is present, zero when unused). Adjustments
add to the totals of the statement they appear on (Δ amount to receivable or payable by role).

Parties and subtotals
---------------------
A statement is an invoice basis: it names the partner and every counterparty (legal name,
and the address and VAT id when the network file gives them), and subtotals the money per
counterparty: ``receivable`` (Σ amount as provider), ``payable`` (Σ amount as receiver) and
``net_amount`` with each, adjustments included (an adjustment belongs to the counterparty of
its exchange). The subtotals add up to the totals. The document number is given by whoever
issues the statement; a draft has none.

Alerts
------
A line's ``alerts`` counts the alerts on its exchange and on the exchange's meters (sent and
received) that were firing at some time during the month: :func:`exchange_alert_counts`.

Adjustments
-----------
An issued statement never changes. When data that arrives later changes an issued month, the
month is recomputed and compared per exchange with what was billed (the issued statement plus
any adjustments for that month already issued): :func:`billed_lines` summarises both,
:func:`compute_adjustments` gives one :class:`Adjustment` per exchange that differs (Δ
quantity, Δ amount, Δ avoided cost, Δ CO2, Δ savings, reason), and :func:`build_statement`
puts them on the partner's next statement.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, localcontext
from typing import Any, Literal
from zoneinfo import ZoneInfo

from core.network import (
    CANONICAL_UNIT,
    Billing,
    Exchange,
    Kind,
    Meter,
    Network,
    ReadingType,
    Terms,
)
from core.windows import local_midnight, month_bounds, windows_between

Role = Literal["provider", "receiver"]
Status = Literal["draft", "issued"]
Number = float | int | Decimal

QUANTITY_PLACES = Decimal("0.001")
MONEY_PLACES = Decimal("0.01")
CO2_PLACES = Decimal("0.001")
COVERAGE_PLACES = Decimal("0.0001")
ZERO = Decimal(0)
KINDS: tuple[Kind, ...] = (Kind.heat, Kind.water, Kind.material)

# Sums of exactly converted floats need more digits than the default context (28): a float
# near 1,000 has ~46 significant decimal digits. 100 digits keep every sum here exact.
_EXACT_PREC = 100
_MICRO = timedelta(microseconds=1)


def _round(value: Decimal, places: Decimal, rounding: str = ROUND_HALF_UP) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = _EXACT_PREC
        out = value.quantize(places, rounding=rounding)
    return out.copy_abs() if out.is_zero() else out  # never "-0.00"


def _at_least(value: Decimal, places: int) -> Decimal:
    """``value`` unchanged, shown with at least ``places`` decimals (25.0 → 25.00)."""
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent >= places:
        return value
    return value.quantize(Decimal(1).scaleb(-places))


def _dec(value: Number) -> Decimal:
    """An exact Decimal of a number (a float's exact binary value)."""
    return value if isinstance(value, Decimal) else Decimal(value)


def _finite(value: Number | None) -> Number | None:
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Decimal) and not value.is_finite():
        return None
    return value


def month_label(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


def parse_month(text: str) -> tuple[int, int]:
    """``2026-10`` → ``(2026, 10)``."""
    try:
        year_s, month_s = text.split("-")
        year, month = int(year_s), int(month_s)
    except ValueError:
        raise ValueError(f"bad month {text!r} (use YYYY-MM, e.g. 2026-10)") from None
    if len(year_s) != 4 or len(month_s) != 2 or not 1 <= month <= 12:
        raise ValueError(f"bad month {text!r} (use YYYY-MM, e.g. 2026-10)")
    return year, month


# ----------------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class WindowRow:
    """One reconciled exchange window (a row of ``exchange_windows``), canonical unit.

    ``sent``/``received`` are ``None`` when that side had no data; the reconciled values are
    ``None`` when the reconciliation gave none. ``coverage`` is in [0, 1].
    """

    exchange_id: str
    window_start: datetime
    window_end: datetime
    sent: Number | None
    received: Number | None
    reconciled_sent: Number | None = None
    reconciled_received: Number | None = None
    coverage: float = 1.0
    status: str = "ok"

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> WindowRow:
        """From a database row or dict with the ``exchange_windows`` column names."""
        return cls(
            exchange_id=row["exchange_id"],
            window_start=row["window_start"],
            window_end=row["window_end"],
            sent=row.get("sent"),
            received=row.get("received"),
            reconciled_sent=row.get("reconciled_sent"),
            reconciled_received=row.get("reconciled_received"),
            coverage=float(row.get("coverage") or 0.0),
            status=str(row.get("status") or "ok"),
        )


# ---------------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Period:
    """[start, end) as aware instants."""

    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class StatementLine:
    exchange: str
    role: Role
    counterparty: str
    counterparty_name: str
    kind: Kind
    unit: str
    period: Period | None  # set when the exchange's terms change within the month
    sent: Decimal
    received: Decimal
    billed: Decimal
    basis: Billing
    coverage: Decimal
    windows: int
    price: Decimal | None  # None: no terms in force
    avoided_cost_per_unit: Decimal | None
    co2_per_unit_t: Decimal | None
    amount: Decimal
    avoided_cost: Decimal
    co2_avoided_t: Decimal
    savings: Decimal
    alerts: int


@dataclass(frozen=True, slots=True)
class Adjustment:
    """A change to an issued month, shown on a later statement (all values are Δ)."""

    month: str
    exchange: str
    role: Role
    kind: Kind
    unit: str
    delta_quantity: Decimal
    delta_amount: Decimal
    delta_avoided_cost: Decimal
    delta_co2_avoided_t: Decimal
    delta_savings: Decimal
    reason: str


@dataclass(frozen=True, slots=True)
class Party:
    """One party to a statement as the network file names it."""

    id: str
    name: str
    address: str | None = None
    vat_id: str | None = None


@dataclass(frozen=True, slots=True)
class Subtotal:
    """The money between the partner and one counterparty (adjustments included)."""

    counterparty: str
    counterparty_name: str
    receivable: Decimal = Decimal("0.00")
    payable: Decimal = Decimal("0.00")

    @property
    def net_amount(self) -> Decimal:
        """What the partner receives from this counterparty net (negative: pays)."""
        return self.receivable - self.payable

    def add(self, role: Role, amount: Decimal) -> Subtotal:
        return Subtotal(
            self.counterparty,
            self.counterparty_name,
            self.receivable + (amount if role == "provider" else ZERO),
            self.payable + (amount if role == "receiver" else ZERO),
        )


@dataclass(frozen=True, slots=True)
class Totals:
    receivable: Decimal = Decimal("0.00")
    payable: Decimal = Decimal("0.00")
    avoided_cost: Decimal = Decimal("0.00")
    net_savings: Decimal = Decimal("0.00")
    co2_avoided_t: Decimal = Decimal("0.000")

    @property
    def net_amount(self) -> Decimal:
        """What the partner receives net (negative: pays)."""
        return self.receivable - self.payable

    def add(
        self,
        role: Role,
        amount: Decimal,
        avoided_cost: Decimal,
        savings: Decimal,
        co2: Decimal,
    ) -> Totals:
        return Totals(
            receivable=self.receivable + (amount if role == "provider" else ZERO),
            payable=self.payable + (amount if role == "receiver" else ZERO),
            avoided_cost=self.avoided_cost + avoided_cost,
            net_savings=self.net_savings + savings,
            co2_avoided_t=self.co2_avoided_t + co2,
        )


@dataclass(frozen=True, slots=True)
class Statement:
    network: str
    network_name: str
    partner: str
    partner_name: str
    month: str
    status: Status
    issued_at: datetime | None
    as_of: datetime | None  # drafts: the data cut (coverage counts up to here)
    currency: str
    timezone: str
    period: Period
    lines: tuple[StatementLine, ...]
    adjustments: tuple[Adjustment, ...]
    totals: Totals
    totals_by_kind: Mapping[Kind, Totals] = field(default_factory=dict)
    document_number: str | None = None  # given on issue; a draft has none
    partner_party: Party | None = None  # the partner's name, address, VAT id
    counterparties: tuple[Party, ...] = ()  # in the order they first appear on the lines
    subtotals: tuple[Subtotal, ...] = ()  # per counterparty, in the same order
    payment_terms: str | None = None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


# ------------------------------------------------------------------------------ computation


def partner_exchanges(network: Network, partner: str) -> list[tuple[Exchange, Role]]:
    """The exchanges ``partner`` takes part in, in network order, with its role."""
    out: list[tuple[Exchange, Role]] = []
    for ex in network.exchanges:
        if ex.provider == partner:
            out.append((ex, "provider"))
        elif ex.receiver == partner:
            out.append((ex, "receiver"))
    return out


def terms_periods(
    exchange: Exchange, start: datetime, end: datetime, tz: ZoneInfo
) -> list[tuple[Period, Terms | None]]:
    """The terms in force over [start, end): each ``from`` holds from local midnight of its
    date until the next one; before the first (or without any) there are no terms."""
    edges: list[tuple[datetime | None, Terms | None]] = [(None, None)]
    edges += [(local_midnight(t.from_, tz), t) for t in sorted(exchange.terms, key=_from)]
    out: list[tuple[Period, Terms | None]] = []
    for i, (begin, terms) in enumerate(edges):
        following = edges[i + 1][0] if i + 1 < len(edges) else None
        p_start = start if begin is None else max(start, begin)
        p_end = end if following is None else min(end, following)
        if p_start < p_end:
            out.append((Period(p_start, p_end), terms))
    return out


def _from(terms: Terms) -> date:
    return terms.from_


def _billed_value(ex: Exchange, w: WindowRow) -> Number | None:
    """What a window adds to the billed quantity (a float as it is; see :func:`_exact_total`),
    None for nothing."""
    sent = _finite(w.sent)
    received = _finite(w.received)
    if ex.billing == Billing.sent:
        return sent
    if ex.billing == Billing.received:
        return received
    reconciled = _finite(w.reconciled_received)
    if reconciled is not None:
        return reconciled
    if received is not None:
        return received
    if sent is not None:
        return (1 - Decimal(repr(ex.loss))) * _dec(sent)
    return None


def _money(
    billed: Decimal, terms: Terms | None, role: Role
) -> tuple[Decimal | None, Decimal | None, Decimal | None, Decimal, Decimal, Decimal, Decimal]:
    """(price, avoided cost/unit, CO2/unit, amount, avoided_cost, co2_avoided_t, savings)."""
    if terms is None:
        zero_m = _round(ZERO, MONEY_PLACES)
        return None, None, None, zero_m, zero_m, _round(ZERO, CO2_PLACES), zero_m
    if role == "receiver":
        cost_rate, co2_rate = terms.receiver_avoided_cost, terms.receiver_avoided_co2
    else:
        cost_rate, co2_rate = terms.provider_avoided_cost, terms.provider_avoided_co2
    price = _at_least(terms.price, 2)
    cost_rate = _at_least(cost_rate, 2)
    co2_rate = _at_least(co2_rate, 3)
    amount = _round(billed * price, MONEY_PLACES)
    avoided_cost = _round(billed * cost_rate, MONEY_PLACES)
    co2 = _round(billed * co2_rate, CO2_PLACES)
    savings = avoided_cost - amount if role == "receiver" else amount + avoided_cost
    return price, cost_rate, co2_rate, amount, avoided_cost, co2, savings


def _exact_sum(values: Iterable[Decimal]) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = _EXACT_PREC
        total = Decimal(0)
        for v in values:
            total += v
    return total


def _exact_total(values: Sequence[Number | None]) -> Decimal:
    """The sum of the finite values, as :func:`_exact_sum` of their exact Decimals gives it.

    Floats (and ints) are summed as integers over a common power-of-two denominator, which is
    exact and several times faster than adding Decimals. When the sum or a partial sum could
    need more than ``_EXACT_PREC`` digits (where the Decimal sum rounds), or a value is no
    float, the Decimals are added as before, in the same order."""
    num = mag = shift = 0
    for v in values:
        kind = type(v)
        if kind is float:
            if v - v != 0:  # type: ignore[operator]  # inf or nan: no data
                continue
        elif kind is not int:
            if v is None:
                continue
            return _exact_sum(_dec(f) for x in values if (f := _finite(x)) is not None)
        n, d = v.as_integer_ratio()  # type: ignore[union-attr]
        k = d.bit_length() - 1  # d is 2**k
        if k > shift:
            num <<= k - shift
            mag <<= k - shift
            shift = k
        n <<= shift - k
        num += n
        mag += abs(n)
    # Every partial sum has at most this many digits: those of Σ|v| before the point, and
    # ``shift`` after it (n / 2**shift = n·5**shift / 10**shift).
    if len(str(mag >> shift)) + shift > _EXACT_PREC:
        return _exact_sum(_dec(f) for x in values if (f := _finite(x)) is not None)
    with localcontext() as ctx:
        ctx.prec = _EXACT_PREC
        return Decimal(num * 5**shift).scaleb(-shift)


def _coverage(rows: Sequence[WindowRow], period: Period, cut: datetime) -> Decimal:
    span_end = min(period.end, cut)
    span = (span_end - period.start) // _MICRO
    if span <= 0:
        return _round(ZERO, COVERAGE_PLACES)
    whole = 0  # microseconds of complete windows (coverage 1: exact integers)
    weighted = []
    for w in rows:
        seconds = (min(w.window_end, span_end) - max(w.window_start, period.start)) // _MICRO
        if seconds > 0:
            cov = min(max(float(w.coverage), 0.0), 1.0) if math.isfinite(w.coverage) else 0.0
            if cov == 1.0:
                whole += seconds
            elif cov > 0.0:
                weighted.append(Decimal(cov) * seconds)
    with localcontext() as ctx:
        ctx.prec = _EXACT_PREC
        value = min((Decimal(whole) + _exact_sum(weighted)) / span, Decimal(1))
    return _round(value, COVERAGE_PLACES, ROUND_DOWN)


def _trucked(meters: Mapping[str, Meter], ex: Exchange) -> bool:
    """Whether every meter of ``ex`` sends tickets (``delta`` without an ``interval``)."""
    return all(
        (m := meters.get(mid)) is not None and m.reading == ReadingType.delta and m.interval is None
        for mid in (*ex.sent, *ex.received)
    )


def _ticket_coverage(
    ex: Exchange, period: Period, cut: datetime, tz: ZoneInfo, failed: Set[datetime] = frozenset()
) -> Decimal:
    """Coverage of a trucked exchange over ``period`` up to ``cut`` (delta meters): the
    windows that have ended by ``cut`` are complete, the one running then counts the elapsed
    fraction of its length, whether or not any window has data; a window whose computation
    failed (its start in ``failed``) counts as no data."""
    span_end = min(period.end, cut)
    span = (span_end - period.start) // _MICRO
    if span <= 0:
        return _round(ZERO, COVERAGE_PLACES)
    weighted = []
    for ws, we in windows_between(period.start, span_end, ex.window, tz):
        seconds = (min(we, span_end) - max(ws, period.start)) // _MICRO
        if seconds <= 0 or ws in failed:
            continue
        if we <= cut:
            weighted.append(Decimal(seconds))
        else:
            weighted.append(Decimal((cut - ws) // _MICRO) / ((we - ws) // _MICRO) * seconds)
    with localcontext() as ctx:
        ctx.prec = _EXACT_PREC
        value = min(_exact_sum(weighted) / span, Decimal(1))
    return _round(value, COVERAGE_PLACES, ROUND_DOWN)


def _check_aware(ts: datetime, what: str) -> None:
    tz = ts.tzinfo
    if tz is None or (type(tz) is not timezone and ts.utcoffset() is None):
        raise ValueError(f"{what} {ts.isoformat()} has no time zone")


def _month_windows(
    network: Network, partner: str, start: datetime, end: datetime, windows: Iterable[WindowRow]
) -> dict[str, list[WindowRow]]:
    """The partner's windows that start in [start, end), by exchange, sorted; no duplicates."""
    wanted = {ex.id for ex, _ in partner_exchanges(network, partner)}
    by_exchange: dict[str, list[WindowRow]] = {eid: [] for eid in wanted}
    for w in windows:
        rows = by_exchange.get(w.exchange_id)
        if rows is None:
            continue
        ws, we = w.window_start, w.window_end
        # _check_aware, inline: this runs for every window of a month
        if type(ws.tzinfo) is not timezone or type(we.tzinfo) is not timezone:
            _check_aware(ws, "window_start")
            _check_aware(we, "window_end")
        if start <= ws < end:
            rows.append(w)
    for eid, rows in by_exchange.items():
        rows.sort(key=_start_of)
        for earlier, later in itertools.pairwise(rows):
            if earlier.window_start == later.window_start:
                raise ValueError(f"window of {eid} at {later.window_start.isoformat()} given twice")
    return by_exchange


def _start_of(w: WindowRow) -> datetime:
    return w.window_start


def build_statement(
    network: Network,
    partner: str,
    year: int,
    month: int,
    windows: Iterable[WindowRow],
    *,
    status: Status = "draft",
    issued_at: datetime | None = None,
    as_of: datetime | None = None,
    alerts: Mapping[str, int] | None = None,
    adjustments: Sequence[Adjustment] = (),
    document_number: str | None = None,
) -> Statement:
    """The statement of ``partner`` for ``year``-``month`` (see the module docstring).

    ``windows`` may hold any exchange windows: only the partner's, starting in the month,
    count. ``status="issued"`` needs ``issued_at``; a draft has none. ``as_of`` (a draft's
    data cut, usually "now") limits the span that coverage is measured against. ``alerts``:
    per exchange id, the number of alerts during the month on it and on its meters (shown on
    each of its lines; :func:`exchange_alert_counts` gives them). ``adjustments`` (for
    earlier months, from :func:`compute_adjustments`) are listed and added to the totals and
    to the subtotal of their counterparty. ``document_number``: an issued statement's number
    in the network, when the issuer gives it (a draft has none).
    """
    if not 1 <= month <= 12:
        raise ValueError(f"month must be 1-12, not {month}")
    try:
        who = network.partner(partner)
    except StopIteration:
        raise ValueError(f"unknown partner {partner!r}") from None
    if status == "issued" and issued_at is None:
        raise ValueError("an issued statement needs issued_at")
    if status == "draft" and issued_at is not None:
        raise ValueError("a draft has no issued_at")
    if status not in ("draft", "issued"):
        raise ValueError(f"status must be draft or issued, not {status!r}")
    if document_number is not None and (status != "issued" or not document_number.strip()):
        raise ValueError("only an issued statement has a document number, and not a blank one")
    for ts, what in ((issued_at, "issued_at"), (as_of, "as_of")):
        if ts is not None:
            _check_aware(ts, what)
    label = month_label(year, month)
    for adj in adjustments:
        if adj.month >= label:
            raise ValueError(
                f"adjustment for {adj.month} cannot appear on the statement of {label}"
            )

    tz = network.tz
    start, end = month_bounds(year, month, tz)
    cut = end if as_of is None else max(start, min(end, as_of))
    by_exchange = _month_windows(network, partner, start, end, windows)
    alert_counts = alerts or {}

    lines: list[StatementLine] = []
    meters = {m.id: m for m in network.meters}
    for ex, role in partner_exchanges(network, partner):
        other = ex.receiver if role == "provider" else ex.provider
        periods = terms_periods(ex, start, end, tz)
        trucked = _trucked(meters, ex)
        rows = by_exchange[ex.id]
        for period, terms in periods:
            part = [w for w in rows if period.start <= w.window_start < period.end]
            failed = {w.window_start for w in part if w.status == "error"}
            sent = _exact_total([w.sent for w in part])
            received = _exact_total([w.received for w in part])
            if ex.billing == Billing.sent:
                billed = sent
            elif ex.billing == Billing.received:
                billed = received
            else:
                billed = _exact_total([_billed_value(ex, w) for w in part])
            billed_q = _round(billed, QUANTITY_PLACES)
            price, cost_rate, co2_rate, amount, avoided, co2, savings = _money(
                billed_q, terms, role
            )
            lines.append(
                StatementLine(
                    exchange=ex.id,
                    role=role,
                    counterparty=other,
                    counterparty_name=network.partner(other).name,
                    kind=ex.kind,
                    unit=CANONICAL_UNIT[ex.kind],
                    period=period if len(periods) > 1 else None,
                    sent=_round(sent, QUANTITY_PLACES),
                    received=_round(received, QUANTITY_PLACES),
                    billed=billed_q,
                    basis=ex.billing,
                    coverage=(
                        _ticket_coverage(ex, period, cut, tz, failed)
                        if trucked
                        else _coverage(part, period, cut)
                    ),
                    windows=len(part),
                    price=price,
                    avoided_cost_per_unit=cost_rate,
                    co2_per_unit_t=co2_rate,
                    amount=amount,
                    avoided_cost=avoided,
                    co2_avoided_t=co2,
                    savings=savings,
                    alerts=int(alert_counts.get(ex.id, 0)),
                )
            )

    adjusted = tuple(sorted(adjustments, key=lambda a: (a.month, a.exchange)))
    subtotals: dict[str, Subtotal] = {}
    for role, other, amount in [
        *((ln.role, ln.counterparty, ln.amount) for ln in lines),
        *((a.role, _counterparty(network, a), a.delta_amount) for a in adjusted),
    ]:
        subtotal = subtotals.get(other) or Subtotal(other, _party(network, other).name)
        subtotals[other] = subtotal.add(role, amount)
    totals = Totals()
    by_kind = {k: Totals() for k in KINDS}
    for line in lines:
        args = (line.role, line.amount, line.avoided_cost, line.savings, line.co2_avoided_t)
        totals = totals.add(*args)
        by_kind[line.kind] = by_kind[line.kind].add(*args)
    for adj in adjusted:
        args = (
            adj.role,
            adj.delta_amount,
            adj.delta_avoided_cost,
            adj.delta_savings,
            adj.delta_co2_avoided_t,
        )
        totals = totals.add(*args)
        by_kind[adj.kind] = by_kind[adj.kind].add(*args)

    return Statement(
        network=network.network,
        network_name=network.name,
        partner=partner,
        partner_name=who.name,
        month=label,
        status=status,
        issued_at=issued_at,
        as_of=as_of,
        currency=network.currency,
        timezone=network.timezone,
        period=Period(start, end),
        lines=tuple(lines),
        adjustments=adjusted,
        totals=totals,
        totals_by_kind=by_kind,
        document_number=document_number,
        partner_party=_party(network, partner),
        counterparties=tuple(_party(network, other) for other in subtotals),
        subtotals=tuple(subtotals.values()),
        payment_terms=network.statements.payment_terms,
    )


def _party(network: Network, partner_id: str) -> Party:
    found = next((p for p in network.partners if p.id == partner_id), None)
    if found is None:  # an adjustment's exchange no longer in the network
        return Party(partner_id, "")
    return Party(found.id, found.name, found.address, found.vat_id)


def _counterparty(network: Network, adj: Adjustment) -> str:
    """The other party of an adjustment's exchange ('' where the exchange is no longer in
    the network)."""
    ex = next((e for e in network.exchanges if e.id == adj.exchange), None)
    if ex is None:
        return ""
    return ex.receiver if adj.role == "provider" else ex.provider


# ----------------------------------------------------------------------------------- alerts


@dataclass(frozen=True, slots=True)
class AlertSpan:
    """When one alert was firing: from ``started_at`` until ``resolved_at`` (``None``: it
    still is). ``subject_kind`` is ``exchange``, ``meter`` or ``partner``."""

    subject_kind: str
    subject: str
    started_at: datetime
    resolved_at: datetime | None = None


def exchange_alert_counts(
    network: Network, alerts: Iterable[AlertSpan], start: datetime, end: datetime
) -> dict[str, int]:
    """Per exchange, how many of ``alerts`` were firing at some time in [start, end) on the
    exchange itself or on one of its meters, sent or received (an alert on a meter counts on
    every exchange the meter belongs to). Exchanges without any are left out."""
    exchanges_of: dict[str, list[str]] = {}  # meter id → the exchanges it measures
    for ex in network.exchanges:
        for mid in dict.fromkeys((*ex.sent, *ex.received)):
            exchanges_of.setdefault(mid, []).append(ex.id)
    known = {ex.id for ex in network.exchanges}
    counts: dict[str, int] = {}
    for a in alerts:
        if a.started_at >= end or (a.resolved_at is not None and a.resolved_at <= start):
            continue
        if a.subject_kind == "exchange":
            targets = [a.subject] if a.subject in known else []
        elif a.subject_kind == "meter":
            targets = exchanges_of.get(a.subject, [])
        else:
            continue
        for eid in targets:
            counts[eid] = counts.get(eid, 0) + 1
    return counts


# ----------------------------------------------------------------------------- daily series


@dataclass(frozen=True, slots=True)
class DailySeries:
    """Daily sums of one exchange over a month, by local day of the window's start.

    ``sent``/``received`` hold ``None`` for a day without any data on that side.
    """

    exchange: str
    role: Role
    kind: Kind
    unit: str
    days: tuple[date, ...]
    sent: tuple[float | None, ...]
    received: tuple[float | None, ...]


def daily_series(
    network: Network, partner: str, year: int, month: int, windows: Iterable[WindowRow]
) -> list[DailySeries]:
    """Per exchange of ``partner`` (network order), daily sent and received in ``month``, the
    days cut in the network's time zone (for the statement's chart)."""
    tz = network.tz
    start, end = month_bounds(year, month, tz)
    by_exchange = _month_windows(network, partner, start, end, windows)
    first = date(year, month, 1)
    days = tuple(first + timedelta(days=i) for i in range((end.astimezone(tz).date() - first).days))
    index = {d: i for i, d in enumerate(days)}
    day_of: dict[datetime, int] = {}  # window start → its local day (windows share starts)
    out: list[DailySeries] = []
    for ex, role in partner_exchanges(network, partner):
        sent: list[list[float]] = [[] for _ in days]
        received: list[list[float]] = [[] for _ in days]
        for w in by_exchange[ex.id]:
            i = day_of.get(w.window_start, -1)
            if i < 0:
                i = day_of[w.window_start] = index[w.window_start.astimezone(tz).date()]
            if (s := _finite(w.sent)) is not None:
                sent[i].append(float(s))
            if (r := _finite(w.received)) is not None:
                received[i].append(float(r))
        out.append(
            DailySeries(
                exchange=ex.id,
                role=role,
                kind=ex.kind,
                unit=CANONICAL_UNIT[ex.kind],
                days=days,
                sent=tuple(math.fsum(v) if v else None for v in sent),
                received=tuple(math.fsum(v) if v else None for v in received),
            )
        )
    return out
