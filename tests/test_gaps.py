"""Gaps in a meter's readings, end to end against a real migrated PostgreSQL, never mocks.

A register (or a rate) that falls silent for some windows and comes back is interpolated
across the silence: every window of the gap is computed, so a month's windows add up to the
register's difference over the month and the statement bills all of it, while the coverage
shows what was interpolated. A reading that arrives late inside a gap recomputes every
window of the gap, their exchange windows and, through them, the statements.

Expected quantities are computed here by hand from the readings the tests write.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import asyncpg
import numpy as np
import orjson
import pytest
from services import create_database, drop_database

from core.apply import apply_network
from core.db import asyncpg_dsn
from core.network import Network, parse_network
from core.settings import Settings
from ingest.parse import NetworkIndex, Parser
from ingest.writer import BatchWriter, Message
from rules.engine import Engine, _quiet, _silences
from rules.quantities import FloatArray
from statements.adjustments import billed_lines, compute_adjustments
from statements.compute import Statement, StatementLine
from statements.issue import draft

HOUR = timedelta(hours=1)
QUARTER = timedelta(minutes=15)
FEB = datetime(2026, 1, 31, 23, tzinfo=UTC)  # 1 February 2026, 00:00 in Copenhagen
MAR = datetime(2026, 2, 28, 23, tzinfo=UTC)  # 1 March
HOURS = 672  # February 2026 has no DST change: 28 × 24 hourly windows
AFTER = MAR + timedelta(days=2)  # "now" for the engine and the drafts: the month has ended

# wr (a water register) is silent for 1, 3 and 24 windows: {first silent hour: windows}
REGISTER_GAPS = {100: 1, 200: 3, 400: 24}
RATE_GAP = (300, 3)  # hs (a heat rate) is silent for windows 300–302
TICKET_SILENCE = range(300, 372)  # three days without a weighbridge ticket


def _meter(mid: str, partner: str, kind: str, reading: str, unit: str, **extra: Any) -> Any:
    return {
        "id": mid,
        "partner": partner,
        "kind": kind,
        "reading": reading,
        "unit": unit,
        "uncertainty": 0.01,
        **extra,
    }


def _exchange(xid: str, kind: str, sent: str, received: str, billing: str, price: str) -> Any:
    return {
        "id": xid,
        "provider": "plant",
        "receiver": "town",
        "kind": kind,
        "sent": [sent],
        "received": [received],
        "billing": billing,
        "terms": [{"from": "2026-01-01", "price": price}],
    }


NETWORK: dict[str, Any] = {
    "network": "gaps",
    "name": "Gap park",
    "timezone": "Europe/Copenhagen",
    "partners": [{"id": "plant", "name": "Plant"}, {"id": "town", "name": "Town"}],
    "meters": [
        _meter("ws", "plant", "water", "total", "m3", interval=900),
        _meter("wr", "town", "water", "total", "m3", interval=900),
        _meter("hs", "plant", "heat", "rate", "MW", interval=900),
        _meter("hr", "town", "heat", "total", "MWh", interval=900),
        _meter("ts", "plant", "material", "delta", "t"),
        _meter("tr", "town", "material", "delta", "t"),
    ],
    "exchanges": [
        _exchange("water", "water", "ws", "wr", "received", "2.50"),
        _exchange("heat", "heat", "hs", "hr", "sent", "40.00"),
        _exchange("slag", "material", "ts", "tr", "received", "12.00"),
    ],
}


# -- the readings ------------------------------------------------------------------------------


def _hours(t: datetime) -> float:
    return (t - FEB).total_seconds() / 3600.0


def water_register(t: datetime) -> float:
    """m3: 30 m3/h ± 12 m3/h over the day."""
    h = _hours(t)
    return 1000.0 + 30.0 * h - 12.0 * 24.0 / (2 * math.pi) * math.cos(2 * math.pi * h / 24.0)


def heat_rate(t: datetime) -> float:
    """MW: 12 MW ± 4 MW over the day."""
    return 12.0 + 4.0 * math.sin(2 * math.pi * _hours(t) / 24.0 + 1.0)


def heat_register(t: datetime) -> float:
    return 200.0 + 11.5 * _hours(t)


def _quarters(silent: set[int]) -> list[datetime]:
    """Every quarter hour from the month's start to its end, both included, except in the
    silent hourly windows (hours since the month's start)."""
    return [FEB + k * QUARTER for k in range(HOURS * 4 + 1) if k // 4 not in silent]


def _silent(gaps: dict[int, int]) -> set[int]:
    return {h for first, n in gaps.items() for h in range(first, first + n)}


def _tickets() -> list[tuple[datetime, float]]:
    return [
        (FEB + h * HOUR + timedelta(minutes=20), 20.0 + h % 7)
        for h in range(0, HOURS, 5)
        if h not in TICKET_SILENCE
    ]


def _interp(points: Sequence[tuple[datetime, float]], t: datetime) -> float:
    """The readings linear between the two around ``t`` (by hand, not numpy)."""
    for (ta, va), (tb, vb) in itertools.pairwise(points):
        if ta <= t <= tb:
            return va + (vb - va) * (t - ta) / (tb - ta)
    raise AssertionError(f"{t} is outside the readings")


def _trapezoids(points: Sequence[tuple[datetime, float]], lo: datetime, hi: datetime) -> float:
    """∫ rate dt in hours over [lo, hi], the rate linear between readings."""
    total = 0.0
    for (ta, ra), (tb, rb) in itertools.pairwise(points):
        a, b = max(ta, lo), min(tb, hi)
        if a < b:
            ya = ra + (rb - ra) * ((a - ta) / (tb - ta))
            yb = ra + (rb - ra) * ((b - ta) / (tb - ta))
            total += 0.5 * (ya + yb) * ((b - a) / HOUR)
    return total


# -- the services --------------------------------------------------------------------------------


def _settings(url: str, backfill_days: int = 400) -> Settings:
    return Settings(
        database_url=url,
        mqtt_url=None,
        alert_webhooks=[],
        alertmanager_url=None,
        backfill_days=backfill_days,
    )


async def _connect(url: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(asyncpg_dsn(url))
    return conn


async def _send(
    url: str, net: Network, meter_id: str, points: Sequence[tuple[datetime, float]]
) -> int:
    """Readings in the meter's own unit through ingest's parser and batch writer."""
    index = NetworkIndex.from_network(net)
    meter = net.meter(meter_id)
    writer = BatchWriter(asyncpg_dsn(url))
    inserted = 0
    try:
        for i in range(0, len(points), 2000):
            chunk = points[i : i + 2000]
            payload = orjson.dumps([{"ts": ts.timestamp(), "value": v} for ts, v in chunk])
            now_s = max(ts for ts, _ in chunk).timestamp()
            topic = f"symbiont/readings/{meter.partner}/{meter_id}"
            parsed = Parser(index).parse(topic, payload, now_s)
            assert parsed.rejections == []
            result = await writer.write([Message(parsed, time.time())], index)
            inserted += result.inserted
    finally:
        await writer.close()
    return inserted


async def _process(url: str, backfill_days: int = 400) -> None:
    conn = await _connect(url)
    try:
        engine = Engine(_settings(url, backfill_days), worker_id="gaps")
        await engine.process_pending(conn, now=AFTER)
        left = await conn.fetchval(
            "SELECT (SELECT count(*) FROM dirty_windows) + (SELECT count(*) FROM dirty_subjects)"
        )
        assert left == 0
    finally:
        await conn.close()


async def _fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await _connect(url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


def _meter_windows(url: str, meter_id: str, lo: datetime, hi: datetime) -> list[asyncpg.Record]:
    return asyncio.run(
        _fetch(
            url,
            """SELECT * FROM meter_windows WHERE meter_id = $1 AND window_start >= $2
               AND window_start < $3 ORDER BY window_start""",
            meter_id,
            lo,
            hi,
        )
    )


def _exchange_windows(url: str, ex_id: str, lo: datetime, hi: datetime) -> list[asyncpg.Record]:
    return asyncio.run(
        _fetch(
            url,
            """SELECT * FROM exchange_windows WHERE exchange_id = $1 AND window_start >= $2
               AND window_start < $3 ORDER BY window_start""",
            ex_id,
            lo,
            hi,
        )
    )


def _draft(url: str, net: Network, partner: str, year: int, month: int) -> Statement:
    async def go() -> Statement:
        conn = await _connect(url)
        try:
            return await draft(conn, net, partner, year, month, AFTER)
        finally:
            await conn.close()

    return asyncio.run(go())


def _line(statement: Statement, exchange: str) -> StatementLine:
    (line,) = [ln for ln in statement.lines if ln.exchange == exchange]
    return line


def _q3(value: float) -> Decimal:
    return Decimal(value).quantize(Decimal("0.001"), ROUND_HALF_UP)


# -- a month with gaps ---------------------------------------------------------------------------

Points = list[tuple[datetime, float]]


def _month_readings() -> dict[str, Points]:
    def of(times: list[datetime], f: Callable[[datetime], float]) -> Points:
        return [(t, f(t)) for t in times]

    dense = _quarters(set())
    return {
        "ws": of(dense, water_register),
        "wr": of(_quarters(_silent(REGISTER_GAPS)), water_register),
        "hs": of(_quarters(_silent({RATE_GAP[0]: RATE_GAP[1]})), heat_rate),
        "hr": of(dense, heat_register),
        "ts": _tickets(),
        "tr": _tickets(),
    }


@pytest.fixture(scope="module")
def month(postgres_admin_url: str, database_template: str) -> Iterator[tuple[str, Network]]:
    """February 2026 written through ingest and processed by the engine, once for the module."""
    name = f"symbiont_test_{secrets.token_hex(6)}"
    url = create_database(postgres_admin_url, name, template=database_template)
    net = parse_network(NETWORK)

    async def fill() -> None:
        conn = await _connect(url)
        try:
            await apply_network(conn, net)
        finally:
            await conn.close()
        for meter_id, points in _month_readings().items():
            assert await _send(url, net, meter_id, points) == len(points)
        await _process(url)

    asyncio.run(fill())
    yield url, net
    drop_database(postgres_admin_url, name)


def test_a_silent_register_is_billed_the_register_difference(
    month: tuple[str, Network],
) -> None:
    url, net = month
    readings = _month_readings()["wr"]
    rows = _meter_windows(url, "wr", FEB, MAR)
    # every window of the month is computed, none left without a quantity
    assert [r["window_start"] for r in rows] == [FEB + k * HOUR for k in range(HOURS)]
    assert [r["window_start"] for r in rows if r["quantity"] is None] == []
    # the windows add up to the register's difference over the month, to float precision
    first, last = readings[0], readings[-1]
    assert (first[0], last[0]) == (FEB, MAR)
    assert math.fsum(r["quantity"] for r in rows) == pytest.approx(last[1] - first[1], rel=1e-12)
    for k0, n in REGISTER_GAPS.items():
        # the window before the gap ends and every window of the gap lies between the
        # readings at (k0 - 1) h + 45 min and (k0 + n) h: the register is linear across
        for k in range(k0 - 1, k0 + n):
            ws, we = FEB + k * HOUR, FEB + (k + 1) * HOUR
            assert rows[k]["quantity"] == pytest.approx(
                _interp(readings, we) - _interp(readings, ws), rel=1e-9
            ), (k0, n, k)
        assert [r["readings"] for r in rows[k0 : k0 + n]] == [0] * n
        # coverage: the readings either side cover 7.5 minutes into the gap, the rest of
        # the gap is interpolated and not covered
        expected = [52.5 / 60] + [0.0] * (n - 1) + [7.5 / 60] + [1.0]
        if n == 1:
            expected = [52.5 / 60, 7.5 / 60, 1.0]
        got = [r["coverage"] for r in rows[k0 - 1 : k0 + n + 1]]
        assert got == pytest.approx(expected, abs=1e-9), (k0, n)

    # the exchange windows carry the quantities, incomplete where the meter was silent
    ex = _exchange_windows(url, "water", FEB, MAR)
    assert len(ex) == HOURS
    assert [r["window_start"] for r in ex if r["status"] == "no_data"] == []
    assert [r["received"] for r in ex] == pytest.approx([r["quantity"] for r in rows])
    silent = _silent(REGISTER_GAPS)
    assert {r["status"] for k, r in enumerate(ex) if k in silent} == {"incomplete"}

    # the statement bills the whole difference; its coverage shows the 28 silent hours
    for partner in ("plant", "town"):
        line = _line(_draft(url, net, partner, 2026, 2), "water")
        assert line.windows == HOURS
        assert line.received == line.billed == _q3(last[1] - first[1])
        assert line.coverage == Decimal("0.9583")  # (672 − 28) / 672, rounded down
        assert line.amount == (line.billed * Decimal("2.50")).quantize(Decimal("0.01"))


def test_a_silent_rate_meter_integrates_the_trapezoid_across_the_gap(
    month: tuple[str, Network],
) -> None:
    url, net = month
    readings = _month_readings()["hs"]
    rows = _meter_windows(url, "hs", FEB, MAR)
    assert len(rows) == HOURS
    assert [r["window_start"] for r in rows if r["quantity"] is None] == []
    k0, n = RATE_GAP
    before, after = readings[k0 * 4 - 1], readings[k0 * 4]
    assert (before[0], after[0]) == (FEB + k0 * HOUR - QUARTER, FEB + (k0 + n) * HOUR)
    # the two readings at the gap's ends bound one trapezoid, split across its windows
    for k in range(k0 - 1, k0 + n):
        ws, we = FEB + k * HOUR, FEB + (k + 1) * HOUR
        assert rows[k]["quantity"] == pytest.approx(_trapezoids(readings, ws, we), rel=1e-9)
    across = math.fsum(rows[k]["quantity"] for k in range(k0, k0 + n))
    whole = 0.5 * (before[1] + after[1]) * (after[0] - before[0]) / HOUR
    head = _trapezoids(readings, before[0], FEB + k0 * HOUR)
    assert across == pytest.approx(whole - head, rel=1e-9)
    month_total = _trapezoids(readings, FEB, MAR)
    assert math.fsum(r["quantity"] for r in rows) == pytest.approx(month_total, rel=1e-12)

    line = _line(_draft(url, net, "plant", 2026, 2), "heat")  # billed on the sent side
    assert line.sent == line.billed == _q3(month_total)
    assert line.coverage == Decimal("0.9955")  # (672 − 3) / 672, rounded down


def test_delta_meters_lose_nothing_across_a_silence(month: tuple[str, Network]) -> None:
    url, net = month
    tickets = _tickets()
    rows = _meter_windows(url, "tr", FEB, MAR)
    # a ticket counts in the window holding its ts; nothing is interpolated
    assert [(r["window_start"], r["quantity"]) for r in rows] == [
        (ts.replace(minute=0), value) for ts, value in tickets
    ]
    line = _line(_draft(url, net, "town", 2026, 2), "slag")
    assert line.billed == _q3(math.fsum(v for _, v in tickets))


# -- late data inside a gap ------------------------------------------------------------------------


def test_a_late_reading_inside_a_gap_recomputes_every_window_of_it(database_url: str) -> None:
    """wr is silent from 10:45 on 31 January to 11:00 on 1 February (UTC), across the end of
    January in Copenhagen (23:00 UTC). A reading that arrives later at 21:30 bends the
    interpolation: every window of the gap changes, on both sides of the month's end, and so
    do their exchange windows, the drafts and January's adjustment."""
    net = parse_network(NETWORK)
    lo, hi = FEB - timedelta(days=2), FEB + timedelta(days=2)
    last_before, first_after = datetime(2026, 1, 31, 10, 45, tzinfo=UTC), FEB + 12 * HOUR
    late_at = datetime(2026, 1, 31, 21, 30, tzinfo=UTC)

    def quarters() -> list[datetime]:
        n = int((hi - lo) / QUARTER)
        return [lo + k * QUARTER for k in range(n + 1)]

    dense = [(t, water_register(t)) for t in quarters()]
    gapped = [(t, v) for t, v in dense if not last_before < t < first_after]
    # the late reading says most of the gap's water came before 21:30
    late_value = water_register(last_before) + 0.8 * (
        water_register(first_after) - water_register(last_before)
    )
    gap_windows = [last_before.replace(minute=0) + k * HOUR for k in range(25)]

    async def fill() -> None:
        conn = await _connect(database_url)
        try:
            await apply_network(conn, net)
        finally:
            await conn.close()
        await _send(database_url, net, "ws", dense)
        await _send(database_url, net, "wr", gapped)
        await _process(database_url)

    asyncio.run(fill())
    before = {r["window_start"]: r for r in _meter_windows(database_url, "wr", lo, hi)}
    assert [w for w in gap_windows if w not in before or before[w]["quantity"] is None] == []
    jan_before = _draft(database_url, net, "town", 2026, 1)

    async def late() -> None:
        assert await _send(database_url, net, "wr", [(late_at, late_value)]) == 1
        await _process(database_url)

    asyncio.run(late())
    after = {r["window_start"]: r for r in _meter_windows(database_url, "wr", lo, hi)}
    ex = {r["window_start"]: r for r in _exchange_windows(database_url, "water", lo, hi)}
    points = sorted([*gapped, (late_at, late_value)])
    for ws in gap_windows:
        old, new = before[ws], after[ws]
        expected = _interp(points, ws + HOUR) - _interp(points, ws)
        assert new["quantity"] == pytest.approx(expected, rel=1e-9), ws
        assert new["quantity"] != pytest.approx(old["quantity"], rel=1e-6), ws
        assert new["computed_at"] > old["computed_at"], ws
        assert ex[ws]["received"] == pytest.approx(new["quantity"], rel=1e-12), ws
    # nothing lost either way: the windows still add up to the register's difference
    total = math.fsum(r["quantity"] for r in after.values() if r["quantity"] is not None)
    assert total == pytest.approx(gapped[-1][1] - gapped[0][1], rel=1e-12)

    # January now holds the part of the gap before the month's end at the late reading's slope
    jan = _line(_draft(database_url, net, "town", 2026, 1), "water")
    assert jan.billed == _q3(_interp(points, FEB) - gapped[0][1])
    feb = _line(_draft(database_url, net, "town", 2026, 2), "water")
    assert feb.billed == _q3(gapped[-1][1] - _interp(points, FEB))
    (adjustment,) = compute_adjustments(
        billed_lines(jan_before), billed_lines(_draft(database_url, net, "town", 2026, 1))
    )
    assert adjustment.month == "2026-01" and adjustment.exchange == "water"
    assert adjustment.delta_quantity == jan.billed - _line(jan_before, "water").billed
    assert adjustment.delta_quantity > 0


# -- the bound -------------------------------------------------------------------------------------


def test_a_silence_longer_than_the_backfill_horizon_is_a_break(database_url: str) -> None:
    """With a backfill horizon of one day, a two-day silence is not walked window by window:
    nothing is interpolated across it (its windows have no data, the count across it is
    billed nowhere), while a three-hour silence of the same register still is."""
    net = parse_network(NETWORK)
    short, long_ = range(10, 13), range(30, 78)  # silent hours since FEB
    silent = set(short) | set(long_)
    points = [(t, water_register(t)) for t in _quarters(silent) if t <= FEB + 96 * HOUR]

    async def fill() -> None:
        conn = await _connect(database_url)
        try:
            await apply_network(conn, net)
        finally:
            await conn.close()
        await _send(database_url, net, "wr", points)
        await _process(database_url, backfill_days=1)

    asyncio.run(fill())
    rows = {
        int((r["window_start"] - FEB) / HOUR): r
        for r in _meter_windows(database_url, "wr", FEB, FEB + 96 * HOUR)
    }
    for k in range(9, 13):  # the short silence: interpolated
        ws = FEB + k * HOUR
        expected = _interp(points, ws + HOUR) - _interp(points, ws)
        assert rows[k]["quantity"] == pytest.approx(expected, rel=1e-9), k
    # the long one: the window before it has only its readings' part, the rest no data
    before, after = FEB + 29 * HOUR + 45 * timedelta(minutes=1), FEB + 78 * HOUR
    assert rows[29]["quantity"] == pytest.approx(
        water_register(before) - water_register(FEB + 29 * HOUR), rel=1e-9
    )
    assert [k for k in long_ if k in rows and rows[k]["quantity"] is not None] == []
    assert rows[78]["quantity"] == pytest.approx(
        water_register(after + HOUR) - water_register(after), rel=1e-9
    )
    billed = math.fsum(r["quantity"] for r in rows.values() if r["quantity"] is not None)
    across = water_register(after) - water_register(before)
    assert billed == pytest.approx(points[-1][1] - points[0][1] - across, rel=1e-12)


# -- the work done -------------------------------------------------------------------------------


def test_only_windows_next_to_a_silence_cost_extra_work(database_url: str) -> None:
    """Counts, not timings. Readings every quarter hour, 20 s after it: a late reading
    writes its own window, nothing more (its two neighbours are recomputed, as they share its
    edges, and come out as stored). A meter that resumes after a week's silence computes the
    week once; its further readings in the windows after the silence leave the week's windows
    as they are (they come out unchanged)."""
    net = parse_network(NETWORK)
    lo = FEB
    silent = range(24, 24 + 7 * 24)  # a week from hour 24
    offset = timedelta(seconds=20)
    times = [lo + offset + k * QUARTER for k in range(4 * 24 * 9) if k // 4 not in silent]
    resumed = lo + offset + silent.stop * HOUR
    first_part = [(t, water_register(t)) for t in times if t <= resumed]
    rest = [(t, water_register(t)) for t in times if t > resumed]

    async def counts(points: Sequence[tuple[datetime, float]]) -> tuple[int, set[datetime]]:
        before = {r["window_start"]: r["computed_at"] for r in await _fetch(database_url, _MW)}
        assert await _send(database_url, net, "wr", points) == len(points)
        conn = await _connect(database_url)
        try:
            engine = Engine(_settings(database_url), worker_id="gaps")
            stats = await engine.process_pending(conn, now=AFTER)
        finally:
            await conn.close()
        after = {r["window_start"]: r["computed_at"] for r in await _fetch(database_url, _MW)}
        return stats.meter_windows, {w for w, at in after.items() if before.get(w) != at}

    async def go() -> None:
        conn = await _connect(database_url)
        try:
            await apply_network(conn, net)
        finally:
            await conn.close()
        # a day of readings, then the one that ends the week's silence
        n, _ = await counts(first_part[:-1])
        assert n == 24 + 2  # the day's windows and a neighbour either side
        n, changed = await counts(first_part[-1:])
        week = {lo + k * HOUR for k in range(23, silent.stop + 2)}
        assert changed == week and n == len(week)  # the silence, computed once
        # further readings in the first window after the silence: only it; its neighbours
        # and the silence's windows come out as stored and are not written again
        for k in range(3):
            n, changed = await counts(rest[k : k + 1])
            assert changed == {lo + silent.stop * HOUR}, k
            assert n == 1
        # the first reading of the next window: it, the window before, whose end is now
        # interpolated towards it, and the window after, not stored before
        n, changed = await counts(rest[3:4])
        assert changed == {lo + (silent.stop + d) * HOUR for d in (0, 1, 2)} and n == 3
        # a late reading in the dense day: its window only
        late = lo + 5 * HOUR + 20 * timedelta(minutes=1)
        n, changed = await counts([(late, water_register(late))])
        assert changed == {lo + 5 * HOUR} and n == 1

    asyncio.run(go())


_MW = "SELECT window_start, computed_at FROM meter_windows WHERE meter_id = 'wr'"


@pytest.mark.parametrize("offset", [0.0, 20.0, 899.0])
def test_dense_readings_walk_no_silence(offset: float) -> None:
    """The selection itself: claimed windows with their neighbours and readings every
    interval (on the window edges or off them) lean on no silence; a claimed window next to
    one does, and only up to the readings either side of it."""
    hour = 3600.0
    edges = np.array([(k * hour, (k + 1) * hour) for k in range(-1, 49)])
    claimed = edges[1:-1, 0].copy()
    ts = np.arange(-2 * hour, 50 * hour, 900.0) + offset
    assert _silences(ts, edges, claimed, 400 * 86400.0) == []
    # hours 10–12 silent; only windows 9 and 13 (with neighbours 8, 10, 12, 14) computed
    quiet = ts[(ts < 10 * hour) | (ts >= 13 * hour)]
    near = np.array([(k * hour, (k + 1) * hour) for k in (8, 9, 10, 12, 13, 14)])
    last, first = quiet[quiet < 10 * hour][-1], quiet[quiet >= 13 * hour][0]
    assert _silences(quiet, near, np.array([9 * hour, 13 * hour]), 400 * 86400.0) == [(last, first)]
    # no longer than max_gap: nothing
    assert _silences(quiet, near, np.array([9 * hour, 13 * hour]), first - last - 1) == []


def test_the_pass_wide_quiet_check_agrees_with_each_clusters_own() -> None:
    """Stage 1 skips the silence search for a cluster whose readings are never as far apart
    as its shortest window, judged for the whole pass at once: the same verdict as per
    cluster, also for clusters with no reading or one, and whatever their neighbours hold."""
    rng = np.random.default_rng(14)
    for _ in range(200):
        series: list[FloatArray] = []
        shortest: list[float] = []
        for _ in range(int(rng.integers(1, 8))):
            n = int(rng.choice([0, 1, 2, 3, 5, 20]))
            steps = rng.choice([60.0, 900.0, 3600.0, 7200.0], size=n) * rng.uniform(0.5, 1.5, n)
            series.append(np.cumsum(steps) + float(rng.uniform(-1e6, 1e6)))
            shortest.append(float(rng.choice([900.0, 3600.0])))
        expected = [
            s.size < 2 or float(np.max(np.diff(s))) < w
            for s, w in zip(series, shortest, strict=True)
        ]
        assert _quiet(series, shortest) == expected
    assert _quiet([], []) == []


def test_silences_left_out_by_earlier_versions_are_filled_by_the_migration(
    database_url: str,
) -> None:
    """A database from a version that computed only the windows next to a reading: the
    middle of each silence has no meter window. Migration 0009 marks the silences, and the
    engine fills them: the month adds up to the register difference again."""
    from core.db import downgrade, upgrade

    url, net = database_url, parse_network(NETWORK)
    readings = _month_readings()["wr"]

    async def fill() -> None:
        conn = await _connect(url)
        try:
            await apply_network(conn, net)
        finally:
            await conn.close()
        assert await _send(url, net, "wr", readings) == len(readings)
        await _process(url)

    asyncio.run(fill())
    k0, n = 400, REGISTER_GAPS[400]
    middle = [FEB + k * HOUR for k in range(k0 + 1, k0 + n - 1)]
    asyncio.run(  # as the earlier versions left it
        _fetch(
            url,
            "DELETE FROM meter_windows WHERE meter_id = 'wr' AND window_start = ANY($1)"
            " RETURNING 1",
            middle,
        )
    )
    assert len(_meter_windows(url, "wr", FEB, MAR)) == HOURS - len(middle)
    downgrade(url, "0008")
    upgrade(url)
    asyncio.run(_process(url))
    rows = _meter_windows(url, "wr", FEB, MAR)
    assert [r["window_start"] for r in rows] == [FEB + k * HOUR for k in range(HOURS)]
    first, last = readings[0], readings[-1]
    assert math.fsum(r["quantity"] for r in rows) == pytest.approx(last[1] - first[1], rel=1e-12)
