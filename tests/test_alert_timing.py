"""Alerts start and end at the instant their condition began and ended, not at the end of
the window in which the rules saw it — in a backfill (``symbiont rules --once``) exactly as
when the data comes live.

A small network is simulated over twelve hours from a base hour (10:00 here) with a meter
that goes silent from 13:00 (its last reading 12:59) to 14:30, a register that stops
counting at 15:17, a register reset at 17:23, a rate spiked at 18:41 and the first meter
silent again from 20:00 to 20:20 (between two window ends). Each alert's ``started_at`` must
be the instant itself (the silence plus its 3-minute tolerance, the first unchanged reading,
the reset, the spiked reading), and where the end is known, ``resolved_at`` too.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from ingest_helpers import symbiont_command
from services import create_database, drop_database

from cli.faults import Fault, parse_fault
from cli.simulate import MeterChunk, simulate
from core.apply import apply_network
from core.db import asyncpg_dsn
from core.network import Network, parse_network
from core.settings import Settings
from core.units import conversion
from ingest.parse import NetworkIndex, Parsed
from ingest.writer import BatchWriter, Message
from rules.engine import Engine

MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)

NET: dict[str, Any] = {
    "network": "timing",
    "name": "Timing park",
    "timezone": "Europe/Copenhagen",
    "partners": [{"id": "plant", "name": "Plant"}, {"id": "town", "name": "Town"}],
    "meters": [
        {
            "id": mid,
            "partner": owner,
            "kind": kind,
            "reading": reading,
            "unit": unit,
            "uncertainty": 0.01,
            "interval": 60,
        }
        for mid, owner, kind, reading, unit in (
            ("hs", "plant", "heat", "total", "MWh"),
            ("hr", "town", "heat", "total", "MWh"),
            ("ws", "plant", "water", "rate", "m3/h"),
            ("wr", "town", "water", "total", "m3"),
        )
    ],
    "exchanges": [
        {
            "id": "heat",
            "provider": "plant",
            "receiver": "town",
            "kind": "heat",
            "sent": ["hs"],
            "received": ["hr"],
            "loss": 0.02,
            "nominal": 10,
        },
        {
            "id": "water",
            "provider": "plant",
            "receiver": "town",
            "kind": "water",
            "sent": ["ws"],
            "received": ["wr"],
            "nominal": 50,
        },
    ],
}


def _faults(net: Network, base: datetime) -> list[Fault]:
    def at(h: int, m: int = 0) -> str:
        return (base + h * HOUR + m * MINUTE).isoformat()

    return [
        parse_fault(text, net)
        for text in (
            f"gap:hr@{at(3)}+90m",  # last reading 12:59, back at 14:30
            f"gap:hr@{at(10)}+20m",  # last reading 19:59, back at 20:20
            f"stuck:hs@{at(5, 17)}+3h",  # the register stops at 15:17, counts again at 18:17
            f"reset:wr@{at(7, 23)}",
            f"spike:ws:10@{at(8, 41)}",
        )
    ]


def _expected(base: datetime) -> dict[str, list[tuple[datetime, datetime | None]]]:
    """(started_at, resolved_at) of each alert per fingerprint; None: still firing."""

    def at(h: int, m: int = 0) -> datetime:
        return base + h * HOUR + m * MINUTE

    return {
        "meter_stale:hr": [(at(3, 2), at(4, 30)), (at(10, 2), at(10, 20))],
        "meter_stuck:hs": [(at(5, 18), at(8, 18))],  # first unchanged reading; first to move
        "counter_reset:wr": [(at(7, 23), None)],  # resolves a day after the reset
        "meter_spike:ws": [(at(8, 41), at(9))],  # the spiked reading; its window's end
    }


async def _write(url: str, net: Network, chunks: list[MeterChunk]) -> None:
    """Readings through ingest's batch writer, in canonical units as ingest stores them."""
    index = NetworkIndex.from_network(net)
    writer = BatchWriter(asyncpg_dsn(url))
    try:
        messages = []
        for c in chunks:
            if not len(c):
                continue
            meter = net.meter(c.meter_id)
            factor = conversion(c.unit, meter.kind, meter.reading)
            readings = [
                (c.meter_id, datetime.fromtimestamp(float(t), UTC), float(v) * factor)
                for t, v in zip(c.ts, c.value, strict=True)
            ]
            topic = f"symbiont/readings/{c.partner_id}/{c.meter_id}"
            messages.append(Message(Parsed(topic, c.partner_id, readings), time.time()))
        if messages:
            await writer.write(messages, index)
    finally:
        await writer.close()


async def _alerts(url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows: list[asyncpg.Record] = await conn.fetch("SELECT * FROM alerts ORDER BY id")
        return rows
    finally:
        await conn.close()


def _first_of(alerts: list[asyncpg.Record], fingerprint: str) -> asyncpg.Record:
    found = [a for a in alerts if a["fingerprint"] == fingerprint]
    assert found, f"no {fingerprint} alert; got {[a['fingerprint'] for a in alerts]}"
    return found[0]


def test_rules_once_stamps_alerts_at_the_instant_their_condition_began(
    database_url: str,
) -> None:
    """A backfill of the last 13 hours, then ``symbiont rules --once``."""
    net = parse_network(NET)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - HOUR
    base = end - 12 * HOUR

    async def fill() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            await apply_network(conn, net)
        finally:
            await conn.close()
        chunks = list(simulate(net, base, end, faults=_faults(net, base), seed=3))
        await _write(database_url, net, chunks)

    asyncio.run(fill())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYMBIONT_")}
    env["SYMBIONT_DATABASE_URL"] = database_url
    done = subprocess.run(
        [*symbiont_command(), "rules", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    alerts = asyncio.run(_alerts(database_url))
    for fingerprint, expected in _expected(base).items():
        got = [
            (a["started_at"], a["resolved_at"])
            for a in sorted(alerts, key=lambda a: a["started_at"])
            if a["fingerprint"] == fingerprint
        ]
        assert got == expected, fingerprint
    for a in alerts:  # never seen before it began
        assert a["detected_at"] >= a["started_at"], a["fingerprint"]
    # a backfilled silence is seen where it happened, as the live check would have seen it;
    # a spike when the window holding it has ended
    assert _first_of(alerts, "meter_stale:hr")["detected_at"] == base + 3 * HOUR + 2 * MINUTE
    assert _first_of(alerts, "meter_spike:ws")["detected_at"] == base + 9 * HOUR
    # the register that stopped counting makes the heat exchange imbalanced: one incident
    stuck, imbalance = _first_of(alerts, "meter_stuck:hs"), _first_of(alerts, "imbalance:heat")
    assert imbalance["started_at"] == base + 5 * HOUR  # the first imbalanced window
    assert stuck["incident_id"] == imbalance["incident_id"] is not None


@pytest.fixture
def second_database_url(postgres_admin_url: str, database_template: str) -> Iterator[str]:
    """Another fresh migrated database, for the backfill beside the live run."""
    name = f"symbiont_test_{secrets.token_hex(6)}"
    url = create_database(postgres_admin_url, name, template=database_template)
    yield url
    drop_database(postgres_admin_url, name)


def test_live_and_backfill_give_the_same_alerts(
    database_url: str, second_database_url: str
) -> None:
    """The same readings processed as they come (every few minutes, with the time-driven
    checks, as the service does) and all at once afterwards give the same alerts with the same
    instants."""
    net = parse_network(NET)
    base = datetime(2026, 3, 10, 10, tzinfo=UTC)
    end = base + 12 * HOUR
    faults = _faults(net, base)
    step = timedelta(minutes=20)

    async def setup(url: str) -> None:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            await apply_network(conn, net)
        finally:
            await conn.close()

    async def backfill() -> None:
        await setup(second_database_url)
        await _write(second_database_url, net, list(simulate(net, base, end, faults=faults)))
        conn = await asyncpg.connect(asyncpg_dsn(second_database_url))
        engine = Engine(Settings(database_url=second_database_url))
        try:
            await engine.process_pending(conn, now=end)
            await engine.periodic(conn, end)
        finally:
            await conn.close()

    async def live() -> None:
        await setup(database_url)
        everything = list(simulate(net, base, end, faults=faults))
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        engine = Engine(Settings(database_url=database_url))
        try:
            t = base
            while t < end:
                upto = t + step
                lo, hi = t.timestamp(), upto.timestamp()
                part = []
                for c in everything:
                    sel = (c.ts >= lo) & (c.ts < hi)
                    part.append(
                        MeterChunk(
                            c.meter_id,
                            c.partner_id,
                            c.unit,
                            c.reading,
                            lo,
                            hi,
                            c.ts[sel],
                            c.value[sel],
                        )
                    )
                await _write(database_url, net, part)
                await engine.process_pending(conn, now=upto)
                await engine.periodic(conn, upto)
                t = upto
        finally:
            await conn.close()

    asyncio.run(backfill())
    asyncio.run(live())

    def key(rows: list[asyncpg.Record]) -> list[tuple[Any, ...]]:
        return sorted(
            (r["fingerprint"], r["started_at"], r["resolved_at"], r["status"])
            for r in rows
            if r["rule"] in ("meter_stale", "meter_stuck", "counter_reset", "meter_spike")
            and r["subject"] in ("hs", "hr", "ws", "wr")
            and r["started_at"] < end - 5 * MINUTE  # not the silence after the last reading
        )

    once = key(asyncio.run(_alerts(second_database_url)))
    stepped = key(asyncio.run(_alerts(database_url)))
    assert once == stepped
    expected = _expected(base)
    assert sorted((f, s, r) for f, s, r, _ in once) == sorted(
        (f, s, r) for f, spans in expected.items() for s, r in spans
    )
