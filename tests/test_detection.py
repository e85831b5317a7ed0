"""Detection on simulated data: a month of the Kalundborg example with one fault of each kind.

Every injected fault raises the right alert on the right subject within the expected number
of windows (counted to when the rules saw it), the alert starts at the instant the fault
began, and the exchanges without a fault raise no alert all month. Two two-day leaks end
mid-month: everything they raised resolves when they end, in one incident each. The
detection table (fault, size, windows to detect, start) is written to
``artifacts/detection.md``; the table in docs/alerts.md is the year measured by
``benchmarks/detection_year.py``.

A second, small network with a well-instrumented header checks that serial elimination names
a biased branch meter.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from services import create_database, drop_database, system_postgres_url

from cli.backfill import write_simulation
from cli.faults import parse_fault
from core.apply import apply_network
from core.db import asyncpg_dsn, upgrade
from core.network import Network, load_network, parse_network
from core.settings import Settings
from rules.engine import Engine

REPO = Path(__file__).resolve().parent.parent
START = datetime(2026, 10, 1, tzinfo=UTC)  # October: includes the 25-hour DST day
END = datetime(2026, 11, 1, tzinfo=UTC)
# The month is random but fixed. With the alert rules' defaults a clean hourly exchange raises a
# false imbalance alert with probability ≈ 745 × 0.0027² ≈ 0.5 % a month (two windows in a row
# beyond 3 σ), so about 6 % of months show one somewhere among the example's 12 hourly
# exchanges; this seed's month has none.
SEED = 1


@dataclass(frozen=True)
class Expect:
    fault: str  # the --fault spec
    size: str  # for the table
    rule: str
    subject: str
    within: int  # windows from the fault's start to the alert's detection
    starts: timedelta | None = None  # the alert's started_at after the fault's start, exactly


FAULTS = [
    Expect(
        "leak:water-forsyning-equinor:5%@2026-10-08T00:00Z",
        "5 % of the flow",
        "imbalance",
        "water-forsyning-equinor",
        4,
    ),
    Expect(
        "leak:steam-asnaes-novozymes:5%@2026-10-10T00:00Z",
        "5 % of the flow",
        "imbalance",
        "steam-asnaes-novozymes",
        6,
    ),
    # 0 → 3 % over the month (744 h) on a 1 % meter: caught before it is 1.5 % off
    Expect(
        "drift:novo-water-in:3%", "0 → 3 % over the month", "drift", "water-forsyning-novo", 371
    ),
    Expect(
        "stuck:asnaes-cooling-in@2026-10-12T06:00Z+6h",
        "6 h",
        "meter_stuck",
        "asnaes-cooling-in",
        1,
        timedelta(minutes=1),  # the register's first unchanged reading
    ),
    Expect(
        "gap:novo-steam-in@2026-10-14T06:00Z+2h",
        "2 h",
        "meter_stale",
        "novo-steam-in",
        1,
        timedelta(minutes=2),  # last reading 05:59 + 3 × 60 s
    ),
    Expect(
        "reset:equinor-water-in@2026-10-16T12:00Z",
        "register to ≈ 0",
        "counter_reset",
        "equinor-water-in",
        1,
        timedelta(0),
    ),
    Expect(
        "spike:equinor-cooling-out:10@2026-10-20T08:00Z",
        "one reading × 10",
        "meter_spike",
        "equinor-cooling-out",
        1,
        timedelta(0),
    ),
    Expect(
        "spike:asnaes-steam-novo:10@2026-10-21T08:00Z",
        "one register reading × 10",
        "meter_spike",
        "asnaes-steam-novo",
        1,
        timedelta(0),
    ),
    # two-day leaks that end: one the imbalance rule sees, one (on 1.7–1.8 % heat meters,
    # z ≈ 1.2) that only drift sees
    Expect(
        "leak:steam-asnaes-equinor:8%@2026-10-24T00:00Z+2d",
        "8 % for 2 days",
        "imbalance",
        "steam-asnaes-equinor",
        4,
    ),
    Expect(
        "leak:dh-asnaes-kommune:3%@2026-10-18T00:00Z+2d",
        "3 % for 2 days",
        "drift",
        "dh-asnaes-kommune",
        48,
    ),
]
ENDING = [e for e in FAULTS if e.fault.startswith("leak:") and "+" in e.fault]


def _fault_start(spec: str) -> datetime:
    return datetime.fromisoformat(spec.split("@")[1].split("+")[0]) if "@" in spec else START


def _fault_end(spec: str) -> datetime:
    return _fault_start(spec) + timedelta(days=int(spec.split("+")[1].removesuffix("d")))


@pytest.fixture(scope="module")
def month() -> Iterator[tuple[Network, list[asyncpg.Record]]]:
    admin = system_postgres_url()
    name = f"symbiont_detect_{secrets.token_hex(4)}"
    url = create_database(admin, name)
    try:
        upgrade(url)
        net = load_network(REPO / "examples" / "kalundborg.yaml")
        faults = [parse_fault(e.fault, net) for e in FAULTS]

        async def run() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(asyncpg_dsn(url))
            try:
                await apply_network(conn, net)
                await write_simulation(asyncpg_dsn(url), net, START, END, faults=faults, seed=SEED)
                engine = Engine(Settings(database_url=url))
                await engine.process_pending(conn, now=END)
                rows: list[asyncpg.Record] = await conn.fetch(
                    "SELECT * FROM alerts ORDER BY started_at, id"
                )
                return rows
            finally:
                await conn.close()

        yield net, asyncio.run(run())
    finally:
        drop_database(admin, name)


def _first(
    alerts: list[asyncpg.Record], rule: str, subject: str, after: datetime
) -> asyncpg.Record | None:
    return next(
        (
            a
            for a in alerts
            if a["rule"] == rule and a["subject"] == subject and a["detected_at"] > after
        ),
        None,
    )


def _offset(delta: timedelta) -> str:
    minutes = round(delta.total_seconds() / 60)
    if abs(minutes) < 60:
        return f"{minutes:+d} min"
    return f"{minutes / 60:+.0f} h"


def test_leaks_that_end_leave_nothing_firing_and_make_one_incident(
    month: tuple[Network, list[asyncpg.Record]],
) -> None:
    """After a two-day leak the imbalance, the drift (whose statistic restarts once the
    episode that drove it is resolved, or resolves once the bias is gone) and the alerts on
    the exchange's meters have all ended within a few windows, and nothing fires on that
    exchange again this month; what the leak raised is one incident."""
    net, alerts = month
    for e in ENDING:
        exchange = next(x for x in net.exchanges if x.id == e.subject)
        subjects = {exchange.id, *exchange.sent, *exchange.received}
        begin, end = _fault_start(e.fault), _fault_end(e.fault)
        raised = [a for a in alerts if a["subject"] in subjects and a["detected_at"] > begin]
        assert raised, e.fault
        for a in raised:
            assert a["started_at"] < end, (e.fault, a["rule"], a["subject"], a["started_at"])
            assert a["status"] == "resolved", (e.fault, a["rule"], a["subject"])
            assert a["resolved_at"] <= end + 6 * exchange.window, (
                e.fault,
                a["rule"],
                a["subject"],
                a["resolved_at"],
            )
        assert len({a["incident_id"] for a in raised}) == 1, [
            (a["rule"], a["subject"], a["incident_id"]) for a in raised
        ]


def test_every_fault_raises_the_right_alert_in_time(
    month: tuple[Network, list[asyncpg.Record]],
) -> None:
    net, alerts = month
    table = [
        "| fault | size | alert | subject | windows to detect | starts |",
        "|---|---|---|---|---|---|",
    ]
    missing = []
    for e in FAULTS:
        alert = _first(alerts, e.rule, e.subject, after=_fault_start(e.fault))
        if alert is None:
            missing.append(f"{e.fault}: no {e.rule} alert on {e.subject}")
            continue
        window = _window_of(net, e.subject)
        start = _fault_start(e.fault)
        windows = (alert["detected_at"] - start) / window
        assert alert["detected_at"] > start, f"{e.fault}: alert before the fault"
        assert windows <= e.within, f"{e.fault}: detected after {windows:.0f} windows"
        offset = alert["started_at"] - start
        if e.starts is not None:
            assert offset == e.starts, f"{e.fault}: starts {offset} after the fault"
        table.append(
            f"| `{e.fault.split(':')[0]}` | {e.size} | `{e.rule}` | {e.subject} | {windows:.0f} "
            f"| {_offset(offset)} |"
        )
    assert not missing, missing
    out = REPO / "artifacts"
    out.mkdir(exist_ok=True)
    (out / "detection.md").write_text("\n".join(table) + "\n")


def test_clean_exchanges_raise_no_alert_all_month(
    month: tuple[Network, list[asyncpg.Record]],
) -> None:
    net, alerts = month
    faulted: set[str] = set()
    for e in FAULTS:
        subject = e.fault.split(":")[1].split("@")[0]
        for ex in net.exchanges:
            if ex.id == subject or subject in (*ex.sent, *ex.received):
                faulted.add(ex.id)
    clean = [ex for ex in net.exchanges if ex.id not in faulted]
    assert len(clean) >= 8
    subjects = {ex.id for ex in clean} | {m for ex in clean for m in (*ex.sent, *ex.received)}
    noisy = [(a["rule"], a["subject"], a["summary"]) for a in alerts if a["subject"] in subjects]
    assert noisy == []
    # and nothing about partners (rejections) either
    assert not [a for a in alerts if a["subject_kind"] == "partner"]


def test_one_firing_alert_per_fingerprint(month: tuple[Network, list[asyncpg.Record]]) -> None:
    _, alerts = month
    firing = [a["fingerprint"] for a in alerts if a["status"] == "firing"]
    assert len(firing) == len(set(firing))
    for a in alerts:
        if a["status"] == "resolved":
            assert a["resolved_at"] > a["started_at"]


def _window_of(net: Network, subject: str) -> timedelta:
    for ex in net.exchanges:
        if ex.id == subject:
            return ex.window
    return net.meter_windows()[subject]


# -- serial elimination names the faulty meter ------------------------------------------------

HEADER: dict[str, Any] = {
    "network": "header",
    "name": "Header with branches",
    "timezone": "Europe/Copenhagen",
    "partners": [{"id": p, "name": p.title()} for p in ("plant", "a", "b", "c")],
    "meters": [
        {
            "id": "boiler",
            "partner": "plant",
            "kind": "heat",
            "reading": "rate",
            "unit": "MW",
            "uncertainty": 0.005,
            "interval": 60,
        },
        *[
            {
                "id": f"out-{p}",
                "partner": "plant",
                "kind": "heat",
                "reading": "rate",
                "unit": "MW",
                "uncertainty": 0.005,
                "interval": 60,
            }
            for p in ("a", "b", "c")
        ],
        *[
            {
                "id": f"in-{p}",
                "partner": p,
                "kind": "heat",
                "reading": "rate",
                "unit": "MW",
                "uncertainty": 0.005,
                "interval": 60,
            }
            for p in ("a", "b", "c")
        ],
    ],
    "exchanges": [
        {
            "id": f"steam-{p}",
            "provider": "plant",
            "receiver": p,
            "kind": "heat",
            "sent": [f"out-{p}"],
            "received": [f"in-{p}"],
            "loss": 0.02,
            "nominal": 10.0,
        }
        for p in ("a", "b", "c")
    ],
    "balances": [
        {"id": "header", "kind": "heat", "in": ["boiler"], "out": ["out-a", "out-b", "out-c"]}
    ],
}


def test_serial_elimination_names_the_biased_branch_meter(database_url: str) -> None:
    net = parse_network(HEADER)
    start = datetime(2026, 10, 5, tzinfo=UTC)
    end = start + timedelta(days=2)
    # a branch meter reading 4 % high from the second day on (a drift that ramps in 1 hour
    # and holds), well beyond its 0.5 % uncertainty
    fault = parse_fault("drift:out-b:4%@2026-10-06T00:00Z", net)

    async def run() -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            await apply_network(conn, net)
            await write_simulation(
                asyncpg_dsn(database_url), net, start, end, faults=[fault], seed=3
            )
            await Engine(Settings(database_url=database_url)).process_pending(conn, now=end)
            suspects = await conn.fetch(
                "SELECT window_start, suspects FROM reconciliations ORDER BY window_start"
            )
            alerts = await conn.fetch(
                "SELECT rule, subject FROM alerts WHERE rule = 'meter_suspect'"
            )
            return suspects, alerts
        finally:
            await conn.close()

    suspects, alerts = asyncio.run(run())
    late = [
        r["suspects"]
        for r in suspects
        if r["window_start"] >= datetime(2026, 10, 6, 12, tzinfo=UTC)
    ]
    assert late, "no reconciliations on the second day"
    named = sum(1 for s in late if s and s[0] == "out-b")
    assert named >= 0.8 * len(late), late
    assert {(a["rule"], a["subject"]) for a in alerts} == {("meter_suspect", "out-b")}
