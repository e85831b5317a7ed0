"""The rules engine against a real migrated PostgreSQL, never mocks: readings written through
ingest become meter windows, exchange windows and alerts.

Expected quantities are hand numbers from the readings each test writes, not the output of
the code under test. Networks are small dicts; every test runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import copy
import math
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from ingest_helpers import symbiont_command
from services import create_database, drop_database

from cli.backfill import write_simulation
from cli.faults import Fault, parse_fault
from core.apply import apply_network
from core.db import asyncpg_dsn
from core.network import Network, NetworkError, parse_network
from core.settings import Settings
from core.windows import local_midnight
from ingest.parse import NetworkIndex, Parser
from ingest.writer import BatchWriter, Message
from rules import lifecycle
from rules.engine import Engine
from rules.passes import Stats
from rules.reconcile import serial_elimination
from rules.store import claim_meter_windows, finish_meter_windows

CPH = "Europe/Copenhagen"
T0 = datetime(2026, 1, 15, tzinfo=UTC)  # 01:00 in Copenhagen: hourly windows are UTC hours
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)


def _meter(
    mid: str, partner: str, kind: str, reading: str, unit: str, unc: float, **extra: Any
) -> dict[str, Any]:
    return {
        "id": mid,
        "partner": partner,
        "kind": kind,
        "reading": reading,
        "unit": unit,
        "uncertainty": unc,
        **extra,
    }


def _exchange(
    xid: str, kind: str, sent: list[str], received: list[str], **extra: Any
) -> dict[str, Any]:
    return {
        "id": xid,
        "provider": "plant",
        "receiver": "town",
        "kind": kind,
        "sent": sent,
        "received": received,
        **extra,
    }


PARTNERS = [{"id": "plant", "name": "Plant"}, {"id": "town", "name": "Town"}]

# A heat exchange metered by two registers (GJ sent, MWh received, 5 % loss) and a water
# exchange metered by a rate (l/s) and a register (m3).
NETWORK: dict[str, Any] = {
    "network": "engine",
    "name": "Engine test park",
    "timezone": CPH,
    "partners": PARTNERS,
    "meters": [
        _meter("hs", "plant", "heat", "total", "GJ", 0.02, interval=60),
        _meter("hr", "town", "heat", "total", "MWh", 0.01, uncertainty_abs=0.05, interval=60),
        _meter("ws", "plant", "water", "rate", "l/s", 0.01, interval=60),
        _meter("wr", "town", "water", "total", "m3", 0.01, interval=60),
    ],
    "exchanges": [
        _exchange("heat", "heat", ["hs"], ["hr"], loss=0.05),
        _exchange("water", "water", ["ws"], ["wr"]),
    ],
}


# -- helpers ---------------------------------------------------------------------------------------


def _settings(url: str) -> Settings:
    return Settings(database_url=url, mqtt_url=None, alert_webhooks=[], alertmanager_url=None)


async def _connect(url: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(asyncpg_dsn(url))
    return conn


async def _apply(url: str, net: Network) -> None:
    conn = await _connect(url)
    try:
        await apply_network(conn, net)
    finally:
        await conn.close()


async def _send(
    url: str, net: Network, meter_id: str, points: Sequence[tuple[datetime, float]]
) -> int:
    """Readings in the meter's own unit through ingest's parser and batch writer."""
    index = NetworkIndex.from_network(net)
    meter = net.meter(meter_id)
    payload = orjson.dumps([{"ts": ts.timestamp(), "value": v} for ts, v in points])
    now_s = max(ts for ts, _ in points).timestamp()
    parsed = Parser(index).parse(f"symbiont/readings/{meter.partner}/{meter_id}", payload, now_s)
    assert parsed.rejections == []
    writer = BatchWriter(asyncpg_dsn(url))
    try:
        result = await writer.write([Message(parsed, time.time())], index)
    finally:
        await writer.close()
    return result.inserted


async def _process(url: str, now: datetime, worker: str = "test") -> Stats:
    conn = await _connect(url)
    try:
        return await Engine(_settings(url), worker_id=worker).process_pending(conn, now=now)
    finally:
        await conn.close()


async def _fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await _connect(url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


def _by_start(rows: list[asyncpg.Record], key: str) -> dict[tuple[str, datetime], asyncpg.Record]:
    return {(r[key], r["window_start"]): r for r in rows}


def _minutes(lo: int, hi: int, skip: range = range(0)) -> list[int]:
    return [m for m in range(lo, hi) if m not in skip]


def _at(m: int) -> datetime:
    return T0 + m * MINUTE


def W(k: int) -> datetime:  # the window W_k: [T0 + k h, T0 + (k + 1) h)
    return T0 + k * HOUR


def _hr_register(m: float) -> float:
    """The received heat register (MWh): 9.5 MWh/h, but 8 MWh/h in W1 (minutes 60–120)."""
    if m <= 60:
        return 500.0 + 9.5 * m / 60
    if m <= 120:
        return 500.0 + 9.5 + 8.0 * (m - 60) / 60
    return 500.0 + 9.5 + 8.0 + 9.5 * (m - 120) / 60


async def _dirty_left(url: str) -> tuple[int, int]:
    rows = await _fetch(
        url,
        "SELECT (SELECT count(*) FROM dirty_windows) AS w,"
        " (SELECT count(*) FROM dirty_subjects) AS s",
    )
    return int(rows[0]["w"]), int(rows[0]["s"])


@pytest.fixture
def network() -> Network:
    return parse_network(NETWORK)


# -- 1. window quantities end to end ---------------------------------------------------------------


def test_window_quantities_and_statuses_end_to_end(database_url: str, network: Network) -> None:
    """W0 ok, W1 imbalance, W2 incomplete (30 min of hr missing), W3 still running;
    water: ok until the received register stops at W2, then no_data."""
    now = T0 + 3 * HOUR + 59 * MINUTE

    async def go() -> None:
        await _apply(database_url, network)
        # hs: 36 GJ/h = 10 MWh/h, readings every minute from T0-2min to T0+4h02
        await _send(database_url, network, "hs", [(_at(m), 1000 + 0.6 * m) for m in range(-2, 243)])
        gap = range(131, 160)  # no hr readings from 02:11 to 02:59 (UTC)
        await _send(
            database_url,
            network,
            "hr",
            [(_at(m), _hr_register(m)) for m in _minutes(-2, 243, gap)],
        )
        # ws: 25 l/s = 90 m3/h; wr: 88.2 m3/h, its last reading exactly at T0+2h
        await _send(database_url, network, "ws", [(_at(m), 25.0) for m in range(-2, 243)])
        await _send(
            database_url, network, "wr", [(_at(m), 5000 + 88.2 * m / 60) for m in range(-2, 121)]
        )
        stats = await _process(database_url, now)
        assert stats.meter_windows > 0 and stats.exchange_windows > 0

    asyncio.run(go())
    mw = _by_start(asyncio.run(_fetch(database_url, "SELECT * FROM meter_windows")), "meter_id")
    ew = _by_start(
        asyncio.run(_fetch(database_url, "SELECT * FROM exchange_windows")), "exchange_id"
    )

    # meter windows
    hs0 = mw[("hs", W(0))]
    assert hs0["window_end"] == W(1)
    assert hs0["quantity"] == pytest.approx(10.0, rel=1e-9)  # 36 GJ
    assert hs0["coverage"] == pytest.approx(1.0)
    assert (hs0["readings"], hs0["first_ts"], hs0["last_ts"]) == (60, _at(0), _at(59))
    assert mw[("hr", W(0))]["quantity"] == pytest.approx(9.5, rel=1e-9)
    assert mw[("hr", W(1))]["quantity"] == pytest.approx(8.0, rel=1e-9)
    hr2 = mw[("hr", W(2))]
    assert hr2["quantity"] == pytest.approx(9.5, rel=1e-9)  # linear across the gap
    # readings at 120..130 and 160..179: the hole is (130.5, 159.5) minutes, 29 of 60 lost
    assert hr2["coverage"] == pytest.approx(31 / 60, rel=1e-9)
    assert hr2["readings"] == 31
    assert mw[("ws", W(0))]["quantity"] == pytest.approx(90.0, rel=1e-9)
    assert mw[("ws", W(0))]["coverage"] == pytest.approx(1.0)
    assert mw[("wr", W(1))]["quantity"] == pytest.approx(88.2, rel=1e-9)
    wr2 = mw[("wr", W(2))]
    assert wr2["quantity"] is None and wr2["coverage"] == 0.0 and wr2["readings"] == 1

    # heat, loss 5 %: σ_S = 0.02·S, σ_R² = (0.01·R)² + 0.05²
    def sigma(s: float, r: float) -> float:
        return math.sqrt((0.95 * 0.02 * s) ** 2 + (0.01 * r) ** 2 + 0.05**2)

    h0 = ew[("heat", W(0))]
    assert (h0["sent"], h0["received"]) == (pytest.approx(10.0), pytest.approx(9.5))
    assert h0["loss"] == 0.05
    assert h0["imbalance"] == pytest.approx(0.0, abs=1e-9)
    assert h0["sigma"] == pytest.approx(sigma(10, 9.5), rel=1e-9)
    assert h0["z"] == pytest.approx(0.0, abs=1e-7)
    assert (h0["status"], h0["coverage"]) == ("ok", pytest.approx(1.0))

    h1 = ew[("heat", W(1))]
    assert (h1["sent"], h1["received"]) == (pytest.approx(10.0), pytest.approx(8.0))
    assert h1["imbalance"] == pytest.approx(1.5, rel=1e-9)  # 0.95·10 − 8
    assert h1["sigma"] == pytest.approx(math.sqrt(0.045), rel=1e-9)
    assert h1["z"] == pytest.approx(1.5 / math.sqrt(0.045), rel=1e-9)  # 7.07 > 3
    assert h1["status"] == "imbalance"

    h2 = ew[("heat", W(2))]
    assert h2["received"] == pytest.approx(9.5) and h2["imbalance"] == pytest.approx(0, abs=1e-9)
    assert (h2["status"], h2["coverage"]) == ("incomplete", pytest.approx(31 / 60))

    h3 = ew[("heat", W(3))]  # fully covered, but it ends after `now`
    assert h3["window_end"] > now and h3["coverage"] == pytest.approx(1.0)
    assert (h3["sent"], h3["received"]) == (pytest.approx(10.0), pytest.approx(9.5))
    assert h3["status"] == "incomplete"

    # water, no loss: σ = sqrt((0.01·90)² + (0.01·88.2)²)
    for k in (0, 1):
        w = ew[("water", W(k))]
        assert (w["sent"], w["received"]) == (pytest.approx(90.0), pytest.approx(88.2))
        assert w["imbalance"] == pytest.approx(1.8, rel=1e-9)
        assert w["sigma"] == pytest.approx(math.sqrt(0.81 + 0.882**2), rel=1e-9)
        assert w["z"] == pytest.approx(1.8 / math.sqrt(0.81 + 0.882**2), rel=1e-9)
        assert w["status"] == "ok"
    for k in (2, 3):
        w = ew[("water", W(k))]
        assert w["sent"] == pytest.approx(90.0)
        assert (w["received"], w["imbalance"], w["z"]) == (None, None, None)
        assert w["status"] == "no_data"
    assert ew[("heat", W(-1))]["status"] == "incomplete"  # only two readings before T0
    assert asyncio.run(_dirty_left(database_url)) == (0, 0)


# -- 2. DST ----------------------------------------------------------------------------------------

DST_NETWORK: dict[str, Any] = {
    "network": "dst",
    "name": "DST park",
    "timezone": CPH,
    "partners": PARTNERS,
    "meters": [
        _meter("a-out", "plant", "heat", "total", "MWh", 0.01, interval=300),
        _meter("b-in", "town", "heat", "total", "MWh", 0.01, interval=300),
    ],
    "exchanges": [
        _exchange("hourly", "heat", ["a-out"], ["b-in"]),
        _exchange("daily", "heat", ["a-out"], ["b-in"], window="1d"),
    ],
}


def test_dst_days_have_23_and_25_hourly_windows_and_a_25_hour_day(database_url: str) -> None:
    net = parse_network(DST_NETWORK)
    spring, autumn = date(2026, 3, 29), date(2026, 10, 25)
    tz = net.tz

    async def go() -> None:
        await _apply(database_url, net)
        for day in (spring, autumn):
            lo = local_midnight(day, tz) - HOUR
            hi = local_midnight(day + timedelta(days=1), tz) + HOUR
            await write_simulation(asyncpg_dsn(database_url), net, lo, hi, seed=3)
        await _process(database_url, datetime(2026, 11, 1, tzinfo=UTC))

    asyncio.run(go())
    rows = asyncio.run(
        _fetch(database_url, "SELECT * FROM exchange_windows ORDER BY exchange_id, window_start")
    )
    for day, hours in ((spring, 23), (autumn, 25)):
        lo, hi = local_midnight(day, tz), local_midnight(day + timedelta(days=1), tz)
        assert hi - lo == timedelta(hours=hours)
        hourly = [r for r in rows if r["exchange_id"] == "hourly" and lo <= r["window_start"] < hi]
        assert len(hourly) == hours
        assert all(r["window_end"] - r["window_start"] == HOUR for r in hourly)
        assert [r["window_start"] for r in hourly] == [lo + k * HOUR for k in range(hours)]
        daily = [r for r in rows if r["exchange_id"] == "daily" and r["window_start"] == lo]
        assert len(daily) == 1
        d = daily[0]
        assert d["window_end"] == hi  # 23 h in spring, 25 h in autumn
        assert d["coverage"] == pytest.approx(1.0)
        # the day is the sum of its hours (the same meters, cut twice)
        assert d["sent"] == pytest.approx(math.fsum(r["sent"] for r in hourly), rel=1e-9)
        assert d["received"] == pytest.approx(math.fsum(r["received"] for r in hourly), rel=1e-9)
    autumn_day = next(
        r
        for r in rows
        if r["exchange_id"] == "daily" and r["window_start"] == local_midnight(autumn, tz)
    )
    assert autumn_day["window_end"] - autumn_day["window_start"] == timedelta(hours=25)


# -- 3. incremental processing and late data -------------------------------------------------------


def test_late_readings_recompute_only_touched_windows_and_neighbours(
    database_url: str, network: Network
) -> None:
    now = T0 + timedelta(days=1)
    gap = range(91, 150)  # hr silent 01:31–02:29, across the W1/W2 edge

    async def go() -> None:
        await _apply(database_url, network)
        await _send(database_url, network, "hs", [(_at(m), 1000 + 0.6 * m) for m in range(0, 361)])
        await _send(
            database_url, network, "hr", [(_at(m), _hr_register(m)) for m in _minutes(0, 361, gap)]
        )
        await _process(database_url, now)

    asyncio.run(go())
    sql_m = "SELECT * FROM meter_windows"
    sql_e = "SELECT * FROM exchange_windows"
    mw1 = _by_start(asyncio.run(_fetch(database_url, sql_m)), "meter_id")
    ew1 = _by_start(asyncio.run(_fetch(database_url, sql_e)), "exchange_id")
    # Before: the register is interpolated across the gap (01:30 → 02:30):
    # R(01:30) = A + 4, R(02:30) = A + 12.75, so R(02:00) ≈ A + 8.375.
    assert ew1[("heat", W(1))]["received"] == pytest.approx(8.375, rel=1e-9)
    assert ew1[("heat", W(2))]["received"] == pytest.approx(9.125, rel=1e-9)
    for k in (1, 2):
        assert ew1[("heat", W(k))]["status"] == "incomplete"
        assert ew1[("heat", W(k))]["coverage"] == pytest.approx(30.5 / 60, rel=1e-9)
    assert asyncio.run(_dirty_left(database_url)) == (0, 0)

    async def late() -> Stats:
        inserted = await _send(
            database_url, network, "hr", [(_at(m), _hr_register(m)) for m in gap]
        )
        assert inserted == len(gap)
        dirty = await _fetch(database_url, "SELECT meter_id, window_start FROM dirty_windows")
        assert sorted((r[0], r[1]) for r in dirty) == [("hr", W(1)), ("hr", W(2))]
        return await _process(database_url, now)

    stats = asyncio.run(late())
    mw2 = _by_start(asyncio.run(_fetch(database_url, sql_m)), "meter_id")
    ew2 = _by_start(asyncio.run(_fetch(database_url, sql_e)), "exchange_id")
    assert mw2.keys() == mw1.keys() and ew2.keys() == ew1.keys()
    changed_m = {k for k in mw2 if mw2[k]["computed_at"] != mw1[k]["computed_at"]}
    changed_e = {k for k in ew2 if ew2[k]["computed_at"] != ew1[k]["computed_at"]}
    # the touched windows W1, W2 — of hr only: their neighbours W0, W3 are recomputed (they
    # share an edge) but come out as stored, so neither they nor what derives from them is
    # written again
    assert changed_m == {("hr", W(k)) for k in (1, 2)}
    assert changed_e == {("heat", W(k)) for k in (1, 2)}
    assert (stats.meter_windows, stats.exchange_windows) == (2, 2)
    for k in (0, 3):
        assert dict(mw2[("hr", W(k))]) == dict(mw1[("hr", W(k))])
    assert all(mw2[k]["computed_at"] > mw1[k]["computed_at"] for k in changed_m)

    w1, w2 = ew2[("heat", W(1))], ew2[("heat", W(2))]
    assert w1["received"] == pytest.approx(8.0, rel=1e-9)
    assert w1["imbalance"] == pytest.approx(1.5, rel=1e-9)
    assert (w1["status"], w1["coverage"]) == ("imbalance", pytest.approx(1.0))
    assert w2["received"] == pytest.approx(9.5, rel=1e-9)
    assert (w2["status"], w2["coverage"]) == ("ok", pytest.approx(1.0))
    for k in (0, 3):  # recomputed, unchanged
        assert ew2[("heat", W(k))]["received"] == pytest.approx(ew1[("heat", W(k))]["received"])
    assert asyncio.run(_dirty_left(database_url)) == (0, 0)


# -- 4. versions -----------------------------------------------------------------------------------

_BUMP = """INSERT INTO dirty_windows (meter_id, window_start) VALUES ($1, $2)
           ON CONFLICT (meter_id, window_start)
           DO UPDATE SET version = dirty_windows.version + 1, marked_at = now()"""


def test_dirty_row_changed_while_claimed_survives_and_is_processed_next(
    database_url: str, network: Network
) -> None:
    async def go() -> None:
        await _apply(database_url, network)
        await _send(database_url, network, "hs", [(_at(m), 1000 + 0.6 * m) for m in range(0, 120)])
        conn = await _connect(database_url)
        try:
            claimed = await claim_meter_windows(conn, "w-a", 100)
            assert sorted(claimed) == [("hs", W(0), 1), ("hs", W(1), 1)]
            # claims never overlap
            assert await claim_meter_windows(conn, "w-b", 100) == []
            await conn.execute(_BUMP, "hs", W(1))  # ingest marks W1 again meanwhile
            await finish_meter_windows(conn, "w-a", claimed)
            left = await conn.fetch("SELECT * FROM dirty_windows")
            assert [(r["meter_id"], r["window_start"], r["version"]) for r in left] == [
                ("hs", W(1), 2)
            ]
            assert left[0]["claimed_by"] is None and left[0]["claimed_at"] is None
            stats = await Engine(_settings(database_url), worker_id="w-c").process_pending(
                conn, now=T0 + timedelta(days=1)
            )
            assert stats.meter_windows >= 1
            assert await conn.fetchval("SELECT count(*) FROM dirty_windows") == 0
            assert await conn.fetchval("SELECT count(*) FROM dirty_subjects") == 0
            q = await conn.fetchval(
                "SELECT quantity FROM meter_windows WHERE meter_id = 'hs' AND window_start = $1",
                W(1),
            )
            assert q == pytest.approx(35.4 / 3.6, rel=1e-9)  # 59 minutes of 0.6 GJ, no margin
        finally:
            await conn.close()

    asyncio.run(go())


# -- 5. two workers --------------------------------------------------------------------------------

SIX: dict[str, Any] = {
    "network": "six",
    "name": "Six meters",
    "timezone": CPH,
    "partners": [*PARTNERS, {"id": "farm", "name": "Farm"}],
    "meters": [
        _meter("p-heat", "plant", "heat", "total", "MWh", 0.01, interval=300),
        _meter("t-heat-in", "town", "heat", "rate", "MW", 0.01, interval=300),
        _meter("t-use", "town", "heat", "total", "GJ", 0.02, interval=300),
        _meter("p-water", "plant", "water", "total", "m3", 0.01, interval=300),
        _meter("f-water-a", "farm", "water", "rate", "m3/h", 0.01, interval=300),
        _meter("f-water-b", "farm", "water", "total", "m3", 0.015, interval=300),
    ],
    "exchanges": [
        _exchange("heat", "heat", ["p-heat"], ["t-heat-in"], loss=0.03, nominal=12),
        {
            **_exchange("water", "water", ["p-water"], ["f-water-a", "f-water-b"], nominal=40),
            "receiver": "farm",
        },
    ],
    # town's own use is derived by the simulator from what it receives: a consistent balance
    "balances": [
        {"id": "town", "kind": "heat", "in": ["t-heat-in"], "out": ["t-use"], "loss": 0.1}
    ],
}

_EW_COLS = "exchange_id, window_start, window_end, sent, received, imbalance, sigma, z, status"


@pytest.fixture
def second_database_url(postgres_admin_url: str, database_template: str) -> Iterator[str]:
    """Another fresh migrated database, for the single-worker reference run."""
    name = f"symbiont_test_{secrets.token_hex(6)}"
    url = create_database(postgres_admin_url, name, template=database_template)
    yield url
    drop_database(postgres_admin_url, name)


def test_two_workers_equal_one_worker(database_url: str, second_database_url: str) -> None:
    net = parse_network(SIX)
    start = datetime(2026, 5, 4, tzinfo=UTC)
    end = start + timedelta(days=7)
    now = end + timedelta(days=1)
    faults = [
        parse_fault("leak:water:8%@2026-05-06T09:00Z+5h", net),
        parse_fault("drift:t-use:8%@2026-05-07T00:00Z", net),  # named suspect by the balance
    ]

    async def fill(url: str) -> None:
        await _apply(url, net)
        await write_simulation(asyncpg_dsn(url), net, start, end, faults=faults, seed=11)

    async def solo() -> Stats:
        await fill(second_database_url)
        return await _process(second_database_url, now, "solo")

    async def pair() -> tuple[Stats, Stats]:
        await fill(database_url)
        c1, c2 = await _connect(database_url), await _connect(database_url)
        settings = _settings(database_url)
        a = Engine(settings, worker_id="worker-a", claim_limit=150, subject_limit=60)
        b = Engine(settings, worker_id="worker-b", claim_limit=150, subject_limit=60)
        try:
            sa, sb = await asyncio.gather(
                a.process_pending(c1, now=now), b.process_pending(c2, now=now)
            )
        finally:
            await c1.close()
            await c2.close()
        return sa, sb

    asyncio.run(solo())
    sa, sb = asyncio.run(pair())
    assert sa.meter_windows > 0 and sb.meter_windows > 0  # both took part

    sql = f"SELECT {_EW_COLS} FROM exchange_windows ORDER BY exchange_id, window_start"
    two = asyncio.run(_fetch(database_url, sql))
    one = asyncio.run(_fetch(second_database_url, sql))
    assert len(one) >= 2 * 7 * 24
    assert [(r["exchange_id"], r["window_start"]) for r in two] == [
        (r["exchange_id"], r["window_start"]) for r in one
    ]
    for x, y in zip(two, one, strict=True):
        assert x["window_end"] == y["window_end"] and x["status"] == y["status"], dict(x)
        for col in ("sent", "received", "imbalance", "sigma", "z"):
            if y[col] is None:
                assert x[col] is None
            else:
                assert x[col] == pytest.approx(y[col], rel=1e-9, abs=1e-9), (col, dict(x))
    assert any(r["status"] == "imbalance" for r in one)

    rec_sql = """SELECT component, window_start, statistic, passed, suspects
                 FROM reconciliations ORDER BY component, window_start"""
    rec_two = asyncio.run(_fetch(database_url, rec_sql))
    rec_one = asyncio.run(_fetch(second_database_url, rec_sql))
    assert len(rec_one) >= 7 * 24
    assert [(r[0], r[1], r[3], r[4]) for r in rec_two] == [
        (r[0], r[1], r[3], r[4]) for r in rec_one
    ]
    for x, y in zip(rec_two, rec_one, strict=True):
        assert x["statistic"] == pytest.approx(y["statistic"], rel=1e-6, abs=1e-9)
    assert sum("t-use" in r["suspects"] for r in rec_one) > 24

    # Alerts are not compared: see test_alert_replay_waits_for_earlier_windows_of_other_workers
    alerts = asyncio.run(
        _fetch(second_database_url, "SELECT fingerprint, started_at, detected_at FROM alerts")
    )
    leak = (datetime(2026, 5, 6, 9, tzinfo=UTC), datetime(2026, 5, 6, 11, tzinfo=UTC))
    assert ("imbalance:water", *leak) in {tuple(a) for a in alerts}
    assert asyncio.run(_dirty_left(database_url)) == (0, 0)
    assert asyncio.run(_dirty_left(second_database_url)) == (0, 0)


def test_serial_elimination_breaks_a_rounding_tie_by_column_order() -> None:
    """The two meters of a lone exchange have the same |z| in exact arithmetic; which one the
    last bits favour depends on how a quantity was summed (one worker or two), so the tie goes
    to the first in column order, as documented."""
    y = [9.890774388109604, 6.443080064681565]
    sigma = [0.2405700206144855, 0.050526513337777676]
    result = serial_elimination([[1.0, -1.0]], y, sigma, ids=["a", "b"])
    za, zb = (m.z for m in result.steps[0].meters)
    assert za is not None and zb is not None
    assert abs(za) == pytest.approx(abs(zb), rel=1e-12) and abs(zb) > abs(za)  # by rounding
    assert result.suspects == ("a",)


# -- 6. alert lifecycle ----------------------------------------------------------------------------

ALERT_NET: dict[str, Any] = {
    "network": "alerts",
    "name": "Alert park",
    "timezone": CPH,
    "partners": PARTNERS,
    "meters": [
        _meter(mid, owner, "heat", "total", "MWh", 0.01, interval=60)
        for mid, owner in (("as", "plant"), ("ar", "town"), ("bs", "plant"), ("br", "town"))
    ],
    "exchanges": [
        _exchange("heat-a", "heat", ["as"], ["ar"], nominal=10),
        _exchange("heat-b", "heat", ["bs"], ["br"], nominal=10),
    ],
}


def test_alert_lifecycle_leak_acknowledge_stale_and_inhibition(database_url: str) -> None:
    """heat-a: a 6-hour leak fires one imbalance alert and resolves it. heat-b: a 2-hour leak
    while br's last 5 minutes of each window are missing: the windows are still complete (≥ 90 %)
    and imbalanced, but meter_stale:br fires at their ends, so the imbalance is inhibited.
    ar: silent for the last half hour; the time-driven rule (periodic) fires meter_stale."""
    net = parse_network(ALERT_NET)
    day = datetime(2026, 2, 2, tzinfo=UTC)
    end = day + timedelta(hours=23, minutes=30)

    def at(h: int, m: int = 0) -> datetime:
        return day + timedelta(hours=h, minutes=m)

    faults: list[Fault] = [
        parse_fault(text, net)
        for text in (
            "leak:heat-a:10%@2026-02-02T04:00Z+6h",  # windows 04–09 imbalanced
            "leak:heat-b:10%@2026-02-02T14:00Z+2h",  # windows 14–15 imbalanced …
            "gap:br@2026-02-02T14:55Z+5m",  # … while br goes quiet at the end of each
            "gap:br@2026-02-02T15:55Z+5m",
            "gap:ar@2026-02-02T23:00Z",  # ar silent from 23:00 to the end of the period
        )
    ]

    async def go() -> None:
        await _apply(database_url, net)
        await write_simulation(asyncpg_dsn(database_url), net, day, end, faults=faults, seed=5)
        conn = await _connect(database_url)
        engine = Engine(_settings(database_url), worker_id="alerts")
        try:
            await engine.process_pending(conn, now=end)
            imb = await conn.fetch(
                "SELECT * FROM alerts WHERE rule = 'imbalance' ORDER BY started_at"
            )
            assert [r["fingerprint"] for r in imb] == ["imbalance:heat-a"]  # heat-b inhibited
            alert = imb[0]
            assert (alert["subject"], alert["subject_kind"]) == ("heat-a", "exchange")
            # seen at the end of the second imbalanced window and after two clean ones; the
            # episode itself runs from the first imbalanced window to the first clean one
            assert (alert["detected_at"], alert["resolve_detected_at"]) == (at(6), at(12))
            assert (alert["started_at"], alert["resolved_at"]) == (at(4), at(10))
            assert alert["status"] == "resolved"
            assert alert["severity"] in ("warning", "critical")
            assert "heat-a" in alert["summary"] and "\n" not in alert["summary"]
            details = orjson.loads(alert["details"])
            assert {"window_start", "sent", "received", "imbalance", "z"} <= details.keys()
            events = await conn.fetch(
                "SELECT kind, at FROM alert_events WHERE alert_id = $1 ORDER BY id", alert["id"]
            )
            assert [(e["kind"], e["at"]) for e in events] == [
                ("firing", at(4)),
                ("resolved", at(10)),
            ]

            # br's windows 14 and 15 end with a 6-minute silence: stale from 3 minutes after
            # its last reading (14:54, 15:54) to its next one (15:00, 16:00)
            stale_br = await conn.fetch(
                "SELECT * FROM alerts WHERE fingerprint = 'meter_stale:br' ORDER BY started_at"
            )
            assert [(r["started_at"], r["resolved_at"]) for r in stale_br] == [
                (at(14, 57), at(15)),
                (at(15, 57), at(16)),
            ]
            ex_b = await conn.fetch(
                "SELECT window_start, status FROM exchange_windows WHERE exchange_id = 'heat-b'"
                " AND window_start IN ($1, $2)",
                at(14),
                at(15),
            )
            assert [r["status"] for r in ex_b] == ["imbalance", "imbalance"]  # evidence was there

            # acknowledge: recorded once, idempotent
            ack = await lifecycle.acknowledge(conn, alert["id"], "alice", end)
            assert ack is not None
            assert (ack["acknowledged_by"], ack["acknowledged_at"]) == ("alice", end)
            again = await lifecycle.acknowledge(conn, alert["id"], "bob", end + HOUR)
            assert again is not None
            assert (again["acknowledged_by"], again["acknowledged_at"]) == ("alice", end)
            kinds = await conn.fetch(
                "SELECT kind FROM alert_events WHERE alert_id = $1 ORDER BY id", alert["id"]
            )
            assert [k["kind"] for k in kinds] == ["firing", "resolved", "acknowledged"]
            assert await lifecycle.acknowledge(conn, 10**9, "alice", end) is None

            # ar's last window (23:00–) has not ended: only the time-driven rule sees it stale
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM alerts WHERE fingerprint = 'meter_stale:ar'"
                )
                == 0
            )
            stats = await engine.periodic(conn, end)
            assert dict(stats.alerts) == {"fired": 1}
            await engine.periodic(conn, end + MINUTE)  # again: no duplicate
            stale = await conn.fetch("SELECT * FROM alerts WHERE fingerprint = 'meter_stale:ar'")
            assert len(stale) == 1
            # stale since its last reading (22:59) plus 3 × its interval, seen at 23:30
            assert (stale[0]["status"], stale[0]["started_at"]) == ("firing", at(23, 2))
            assert stale[0]["detected_at"] == end
            assert orjson.loads(stale[0]["details"])["last_reading"] == at(22, 59).isoformat()
            stale_events = await conn.fetch(
                "SELECT kind FROM alert_events WHERE alert_id = $1", stale[0]["id"]
            )
            assert [e["kind"] for e in stale_events] == ["firing"]
            # one firing alert per fingerprint, enforced by the database
            with pytest.raises(asyncpg.UniqueViolationError, match="alerts_one_firing"):
                await conn.execute(
                    """INSERT INTO alerts (fingerprint, rule, subject, subject_kind, severity,
                       status, started_at, summary) VALUES ('meter_stale:ar', 'meter_stale',
                       'ar', 'meter', 'warning', 'firing', now(), 'duplicate')"""
                )
        finally:
            await conn.close()

    asyncio.run(go())


def test_alert_replay_waits_for_earlier_windows_of_other_workers(database_url: str) -> None:
    """Worker A holds the windows before 08:00 (its stage-2 transaction is open) while worker B
    processes the later ones: the leak's alert must still start at 06:00 as with one worker."""
    net = parse_network(ALERT_NET)
    day = datetime(2026, 2, 2, tzinfo=UTC)
    now = day + timedelta(days=1)
    leak = [parse_fault("leak:heat-a:10%@2026-02-02T04:00Z+6h", net)]

    async def go() -> list[asyncpg.Record]:
        await _apply(database_url, net)
        await write_simulation(asyncpg_dsn(database_url), net, day, now, faults=leak, seed=5)
        settings = _settings(database_url)
        a, b = Engine(settings, worker_id="worker-a"), Engine(settings, worker_id="worker-b")
        conn_a, conn_b = await _connect(database_url), await _connect(database_url)
        try:
            topo_a, topo_b = await a.topology_for(conn_a), await b.topology_for(conn_b)
            assert topo_a is not None and topo_b is not None
            while (await a.stage1(conn_a, topo_a, now)).meter_windows:
                pass
            busy = conn_a.transaction()
            await busy.start()
            held = await conn_a.fetch(
                "SELECT 1 FROM dirty_subjects WHERE window_start < $1 FOR UPDATE", day + 8 * HOUR
            )
            assert held
            # B computes everything it can; the subjects waiting for A's windows come back
            # to it as deferred and are left for later
            while True:
                step = await b.stage2(conn_b, topo_b, now)
                if step.subjects <= step.deferred:
                    break
            await busy.rollback()
            await a.process_pending(conn_a, now=now)
            assert await conn_a.fetchval("SELECT count(*) FROM dirty_subjects") == 0
            rows: list[asyncpg.Record] = await conn_a.fetch(
                "SELECT * FROM alerts WHERE fingerprint = 'imbalance:heat-a' ORDER BY id"
            )
            return rows
        finally:
            await conn_a.close()
            await conn_b.close()

    alerts = asyncio.run(go())
    # one worker: seen at the end of the second imbalanced window and after two clean ones;
    # the episode runs from the first imbalanced window (04:00) to the first clean one (10:00)
    assert [(r["started_at"], r["resolved_at"]) for r in alerts] == [
        (day + 4 * HOUR, day + 10 * HOUR)
    ]
    assert [(r["detected_at"], r["resolve_detected_at"]) for r in alerts] == [
        (day + 6 * HOUR, day + 12 * HOUR)
    ]


# -- 7. the command line ---------------------------------------------------------------------------


def test_symbiont_rules_once_through_the_cli(database_url: str, network: Network) -> None:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)

    async def fill() -> None:
        await _apply(database_url, network)
        await write_simulation(asyncpg_dsn(database_url), network, now - 3 * HOUR, now, seed=1)

    asyncio.run(fill())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYMBIONT_")}
    env["SYMBIONT_DATABASE_URL"] = database_url
    done = subprocess.run(
        [*symbiont_command(), "rules", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    match = re.search(
        r"processed (\d+) meter windows, (\d+) exchange windows, (\d+) reconciliations",
        done.stdout,
    )
    assert match, done.stdout
    assert int(match.group(1)) > 0 and int(match.group(2)) > 0
    rows = asyncio.run(_fetch(database_url, "SELECT count(*) FROM exchange_windows"))
    assert rows[0][0] >= 2 * 3  # two exchanges, three hours
    assert asyncio.run(_dirty_left(database_url)) == (0, 0)


# -- 8. bad configuration --------------------------------------------------------------------------


def _mutate(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = copy.deepcopy(NETWORK)
    change(doc)
    return doc


def _set(path: Sequence[str | int], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        target: Any = doc
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(
            _set(["meter_rules"], {"ghost": {"meter_stale": {"after_s": 600}}}),
            "meter_rules.ghost: unknown meter 'ghost'",
            id="unknown-meter-in-rule",
        ),
        pytest.param(
            _set(["exchanges", 0, "loss"], -0.1),
            "exchanges[0].loss: Input should be greater than or equal to 0",
            id="negative-loss",
        ),
        pytest.param(
            _set(["exchanges", 1, "window"], "7h"),
            "exchanges[1].window: window '7h' does not divide a day",
            id="window-7h",
        ),
        pytest.param(
            _set(["exchanges", 0, "rules"], {"imbalance": {"bogus": 1}}),
            "exchanges[0].rules.imbalance.bogus: unknown setting",
            id="unknown-setting",
        ),
        pytest.param(
            _set(["exchanges", 0, "rules"], {"meter_stale": {"after_s": 600}}),
            "exchanges[0].rules.meter_stale: not a rule for this kind of subject",
            id="meter-rule-on-exchange",
        ),
        pytest.param(
            _set(["meter_rules"], {"hr": {"imbalance": {"z": 4}}}),
            "meter_rules.hr.imbalance: not a rule for this kind of subject",
            id="exchange-rule-on-meter",
        ),
    ],
)
def test_bad_configuration_is_refused_naming_the_path(
    change: Callable[[dict[str, Any]], None], expected: str
) -> None:
    with pytest.raises(NetworkError) as info:
        parse_network(_mutate(change))
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems
    assert expected in str(info.value)


def test_good_rule_overrides_are_accepted(network: Network) -> None:
    doc = _mutate(_set(["meter_rules"], {"hr": {"meter_stale": {"after_s": 600}}}))
    doc["exchanges"][0]["rules"] = {"imbalance": {"z": 4, "fire_after": 3}, "drift": "off"}
    net = parse_network(doc)
    assert net.meter_rules == {"hr": {"meter_stale": {"after_s": 600}}}
    assert net.exchanges[0].rules["imbalance"] == {"z": 4, "fire_after": 3}
