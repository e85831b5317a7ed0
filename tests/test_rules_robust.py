"""The rules engine survives any stored value.

Readings no meter can send (1e200 m3, 1e308 MWh, -1e300, nan …) can still be in the
database: stored by an older version, a broken import or plain SQL. They must never stop the
engine: the windows they touch are stored as failed (``error`` with the cause) and raise
``rules_error`` on their meter and exchange, every other window is computed as without
them, and once the reading is corrected the windows compute and the alerts resolve.

The database tests run the real engine (in process, and ``symbiont rules`` as a subprocess)
on a real migrated PostgreSQL over the Kalundborg example network. The property tests check
the pure arithmetic (σ, one exchange, the network least squares, the alert series, window
quantities) over finite floats of any magnitude: it never raises, and a result is a finite
number or flagged as not representable.
"""

from __future__ import annotations

import asyncio
import decimal
import math
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_helpers import ServiceProcess, scrape_metrics, symbiont_command, wait_until
from services import free_port

from cli.backfill import write_simulation
from core.apply import apply_network
from core.db import asyncpg_dsn
from core.network import Network, ReadingType, load_network
from core.settings import Settings
from core.windows import local_text
from rules.alerts import (
    DriftConfig,
    ImbalanceConfig,
    WindowResult,
    drift_series,
    imbalance_series,
)
from rules.engine import Engine
from rules.passes import Stats
from rules.quantities import MAX_ABS_VALUE, window_quantities
from rules.reconcile import (
    MeterQuantity,
    balance_constraint,
    exchange_constraint,
    meter_sigma,
    meter_variance,
    reconcile_exchange,
    reconcile_network,
)

REPO = Path(__file__).resolve().parent.parent
KALUNDBORG = REPO / "examples" / "kalundborg.yaml"
T0 = datetime(2026, 1, 15, tzinfo=UTC)  # 01:00 in Copenhagen: hourly windows are UTC hours
HOUR = timedelta(hours=1)
END = T0 + 5 * HOUR
NOW = END + timedelta(minutes=10)
FLOAT_MAX = sys.float_info.max

# The reported cases and their kin, each on a meter of its own exchange, each the meter's
# newest reading (half a minute into the running hour, as a live meter would send it):
# (meter, stored canonical value, the exchange it feeds).
BAD_AT = END + timedelta(seconds=30)
BAD: list[tuple[str, float, str]] = [
    ("forsyning-water-equinor", 1e200, "water-forsyning-equinor"),  # a total m3 register
    ("asnaes-steam-novozymes", 1e308, "steam-asnaes-novozymes"),  # a total MWh register
    ("novozymes-biomass-out", -1e300, "biomass-novozymes-bioenergi"),  # a rate in t/h
    # 1e307 MW: finite, but its integral over seconds overflows
    ("asnaes-steam-equinor", 1e307, "steam-asnaes-equinor"),
    # a quantity of 2e160 MWh is finite, its σ² = (0.017 · 2e160)² is not
    ("forsyning-wwtp-heat", 2e160, "wwtp-heat-forsyning-kommune"),
    ("equinor-condensate-in", math.nan, "condensate-asnaes-equinor"),  # PostgreSQL takes nan
]
# A tiny but valid value: a weighbridge ticket of 1e-300 t is computed like any other.
TINY = ("novo-yeast-weighbridge", 1e-300, T0 + timedelta(hours=2, minutes=15), "yeast-novo-farms")

EXCHANGE_COLUMNS = (
    "sent",
    "received",
    "loss",
    "imbalance",
    "sigma",
    "z",
    "coverage",
    "status",
    "reconciled_sent",
    "reconciled_received",
    "error",
)
METER_COLUMNS = (
    "quantity",
    "coverage",
    "readings",
    "stuck",
    "negatives",
    "resets",
    "outliers",
    "first_ts",
    "last_ts",
    "error",
)


# -- helpers ---------------------------------------------------------------------------------------


def _settings(url: str) -> Settings:
    return Settings(database_url=url, mqtt_url=None, alert_webhooks=[], alertmanager_url=None)


async def _connect(url: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(asyncpg_dsn(url))
    return conn


async def _fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await _connect(url)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


async def _execute(url: str, sql: str, *args: Any) -> None:
    conn = await _connect(url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def _fill(url: str, net: Network, start: datetime, end: datetime) -> None:
    conn = await _connect(url)
    try:
        await apply_network(conn, net)
    finally:
        await conn.close()
    await write_simulation(asyncpg_dsn(url), net, start, end, seed=3)


async def _process(url: str, now: datetime = NOW) -> Stats:
    conn = await _connect(url)
    try:
        return await Engine(_settings(url), worker_id="robust").process_pending(conn, now=now)
    finally:
        await conn.close()


async def _store(url: str, meter_id: str, ts: datetime, value: float) -> None:
    """Store ``value`` (canonical unit) as the meter's reading at ``ts`` with plain SQL, as an
    import or an operator could, and mark its window dirty as ingest would."""
    conn = await _connect(url)
    try:
        async with conn.transaction():
            await conn.execute("SELECT symbiont_ensure_partition($1)", ts)
            await conn.execute(
                """INSERT INTO readings (meter_id, ts, value) VALUES ($1, $2, $3)
                   ON CONFLICT (meter_id, ts) DO UPDATE SET value = excluded.value""",
                meter_id,
                ts,
                value,
            )
            await _mark(conn, meter_id, ts)
    finally:
        await conn.close()


async def _mark(conn: asyncpg.Connection, meter_id: str, ts: datetime) -> None:
    """Mark the meter window holding ``ts`` dirty, as ingest does for a new reading (a window
    not computed yet by its hour: the engine takes any instant of a window for the window)."""
    start = await conn.fetchval(
        """SELECT window_start FROM meter_windows WHERE meter_id = $1
           AND window_start <= $2 AND window_end > $2""",
        meter_id,
        ts,
    )
    await conn.execute(
        """INSERT INTO dirty_windows (meter_id, window_start) VALUES ($1, $2)
           ON CONFLICT (meter_id, window_start)
           DO UPDATE SET version = dirty_windows.version + 1, marked_at = now()""",
        meter_id,
        start if start is not None else ts.replace(minute=0, second=0, microsecond=0),
    )


async def _mark_everything(url: str) -> None:
    """Every meter window dirty: the next pass recomputes the whole database."""
    await _execute(
        url,
        """INSERT INTO dirty_windows (meter_id, window_start)
           SELECT meter_id, window_start FROM meter_windows
           ON CONFLICT (meter_id, window_start)
           DO UPDATE SET version = dirty_windows.version + 1, marked_at = now()""",
    )


def _snapshot(url: str) -> dict[str, dict[tuple[str, datetime], tuple[Any, ...]]]:
    """Every stored window's results (not when it was computed)."""

    async def go() -> dict[str, dict[tuple[str, datetime], tuple[Any, ...]]]:
        ex = await _fetch(url, "SELECT * FROM exchange_windows")
        mw = await _fetch(url, "SELECT * FROM meter_windows")
        rec = await _fetch(
            url,
            """SELECT r.component, r.window_start, r.statistic, r.dof, r.passed, r.suspects,
                      r.error, array_agg(m.meter_id ORDER BY m.meter_id) AS meters,
                      array_agg(m.reconciled ORDER BY m.meter_id) AS reconciled
               FROM reconciliations r
               LEFT JOIN reconciliation_meters m ON m.reconciliation_id = r.id
               GROUP BY r.id""",
        )
        return {
            "exchange": {
                (r["exchange_id"], r["window_start"]): tuple(r[c] for c in EXCHANGE_COLUMNS)
                for r in ex
            },
            "meter": {
                (r["meter_id"], r["window_start"]): tuple(r[c] for c in METER_COLUMNS) for r in mw
            },
            "reconciliation": {
                (r["component"], r["window_start"]): (
                    r["statistic"],
                    r["dof"],
                    r["passed"],
                    tuple(r["suspects"]),
                    dict(zip(r["meters"], r["reconciled"], strict=True)),
                    r["error"],
                )
                for r in rec
            },
        }

    return asyncio.run(go())


def _close(a: Any, b: Any) -> bool:
    """Equal, numbers up to rounding (relative 1e-9)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _window(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0)


def _rules_errors(url: str) -> list[asyncpg.Record]:
    return asyncio.run(
        _fetch(url, "SELECT * FROM alerts WHERE rule = 'rules_error' ORDER BY subject, id")
    )


def _json(value: Any) -> dict[str, Any]:
    import json

    parsed: dict[str, Any] = json.loads(value) if isinstance(value, str) else dict(value)
    return parsed


def _component_meters(net: Network, component: str) -> tuple[str, ...]:
    """The meters reconciled together with a balance (its connected part of the network)."""
    from rules.topology import build_topology

    return build_topology(net).components[component].meters


# -- 1. the engine in process: isolation, exactness, recovery --------------------------------------


def test_extreme_stored_values_fail_only_their_windows_and_recover(database_url: str) -> None:
    net = load_network(KALUNDBORG)
    asyncio.run(_fill(database_url, net, T0, END))
    clean = asyncio.run(_process(database_url))
    assert clean.failed == 0 and clean.exchange_windows > 0
    baseline = _snapshot(database_url)
    assert not any(row[-1] for row in baseline["meter"].values())  # no error anywhere

    # Store the bad values (and a tiny valid one) and recompute everything at once.
    tiny_meter, tiny_value, tiny_at, tiny_exchange = TINY
    for meter_id, value, _ in BAD:
        asyncio.run(_store(database_url, meter_id, BAD_AT, value))
    asyncio.run(_store(database_url, tiny_meter, tiny_at, tiny_value))
    asyncio.run(_mark_everything(database_url))
    stats = asyncio.run(_process(database_url))  # this used to stop with OverflowError

    hour = _window(BAD_AT)
    bad_meters = {(m, hour) for m, _, _ in BAD}
    bad_exchanges = {(x, hour) for _, _, x in BAD}
    assert set(stats.failures) == (
        {("meter", m, w) for m, w in bad_meters} | {("exchange", x, w) for x, w in bad_exchanges}
    )
    after = _snapshot(database_url)

    # The failed windows: no numbers, the cause, and the exchange names the meter.
    for meter_id, value, exchange_id in BAD:
        mrow = dict(zip(METER_COLUMNS, after["meter"][meter_id, hour], strict=True))
        assert mrow["quantity"] is None and mrow["coverage"] == 0.0
        shown = f"{value:g}"
        what = "out of range" if math.isfinite(value) else "not a finite number"
        assert f"1 stored reading {what}: {shown} " in mrow["error"], mrow["error"]
        assert local_text(BAD_AT, net.tz, seconds=True) in mrow["error"]
        xrow = dict(zip(EXCHANGE_COLUMNS, after["exchange"][exchange_id, hour], strict=True))
        assert xrow["status"] == "error" and xrow["coverage"] == 0.0
        assert xrow["sent"] is None and xrow["received"] is None and xrow["z"] is None
        assert f"meter {meter_id}" in xrow["error"] and shown in xrow["error"]

    # Every other window is what it was without the bad readings: exactly for the other meters
    # and exchanges; for the earlier windows of a bad meter (and of its exchange) up to
    # rounding (a rate or register is summed over the readings around its windows).
    bad_ids = {m for m, _ in bad_meters} | {x for x, _ in bad_exchanges}
    for kind, failed in (("meter", bad_meters), ("exchange", bad_exchanges)):
        for key, row in baseline[kind].items():
            if key in failed or key[0] in (tiny_meter, tiny_exchange):
                continue
            if key[0] in bad_ids:
                assert _close(after[kind][key], row), (key, after[kind][key], row)
            else:
                assert after[kind][key] == row, key
    # A network reconciliation leaves a failed meter window out (as no data): no error there,
    # and the earlier windows of both components (each has a bad meter) are as before.
    assert all(row[-1] is None for row in after["reconciliation"].values())
    for key, row in baseline["reconciliation"].items():
        if key[1] < hour:
            assert _close(after["reconciliation"][key], row), key

    # The tiny ticket is a valid reading: its windows compute, with finite numbers.
    tiny_window = max(w for m, w in after["meter"] if m == tiny_meter and w <= tiny_at)
    tw = dict(zip(METER_COLUMNS, after["meter"][tiny_meter, tiny_window], strict=True))
    assert tw["error"] is None and tw["readings"] >= 1
    assert tw["quantity"] is not None and math.isfinite(tw["quantity"])
    for (x, _), row in after["exchange"].items():
        if x == tiny_exchange:
            assert row[EXCHANGE_COLUMNS.index("status")] != "error"

    # One rules_error per failed meter and exchange, naming the window and the cause.
    alerts = _rules_errors(database_url)
    subjects = {(a["subject_kind"], a["subject"]) for a in alerts}
    assert subjects == {("meter", m) for m, _, _ in BAD} | {("exchange", x) for _, _, x in BAD}
    assert len(alerts) == len(subjects) and all(a["status"] == "firing" for a in alerts)
    by_subject = {a["subject"]: a for a in alerts}
    for meter_id, value, exchange_id in BAD:
        for subject in (meter_id, exchange_id):
            alert = by_subject[subject]
            assert "\n" not in alert["summary"]
            assert f"{value:g}" in alert["summary"], alert["summary"]
            # the window's start in the network's zone, with its offset (01:00 +01:00 for 00:00Z)
            when = local_text(hour, net.tz)
            assert when.endswith(" +01:00")
            assert f"window from {when} could not be computed" in alert["summary"]
            details = _json(alert["details"])
            assert details["window_start"] == hour.isoformat()
            assert details["failed_windows"] == 1 and f"{value:g}" in details["error"]
            assert alert["started_at"] == NOW

    # Recomputed while still broken: still one alert per fingerprint, nothing new fires.
    asyncio.run(_mark_everything(database_url))
    again = asyncio.run(_process(database_url, NOW + timedelta(minutes=5)))
    assert set(again.failures) == set(stats.failures)
    assert not again.alerts.get("fired")
    assert len(_rules_errors(database_url)) == len(subjects)

    # Each bad reading replaced by a sane one (the register or rate carrying on): the windows
    # compute and every rules_error resolves.
    for meter_id, _, _ in BAD:
        asyncio.run(_store(database_url, meter_id, BAD_AT, _sane_next(database_url, meter_id)))
    fixed = asyncio.run(_process(database_url, NOW + timedelta(minutes=10)))
    assert fixed.failed == 0
    healed = _snapshot(database_url)
    for meter_id, _, exchange_id in BAD:
        mrow = dict(zip(METER_COLUMNS, healed["meter"][meter_id, hour], strict=True))
        assert mrow["error"] is None and mrow["quantity"] is not None
        xrow = dict(zip(EXCHANGE_COLUMNS, healed["exchange"][exchange_id, hour], strict=True))
        assert xrow["error"] is None and xrow["status"] in ("incomplete", "no_data")  # running
    for kind in ("meter", "exchange"):
        for key, row in baseline[kind].items():
            if key[0] not in bad_ids | {tiny_meter, tiny_exchange}:
                assert healed[kind][key] == row, key
    alerts = _rules_errors(database_url)
    assert len(alerts) == len(subjects)
    assert all(a["status"] == "resolved" for a in alerts)
    assert all(a["resolved_at"] == NOW + timedelta(minutes=10) for a in alerts)
    events = asyncio.run(
        _fetch(
            database_url,
            """SELECT e.kind, count(*) FROM alert_events e JOIN alerts a ON a.id = e.alert_id
               WHERE a.rule = 'rules_error' GROUP BY e.kind""",
        )
    )
    assert {r["kind"]: r["count"] for r in events} == {
        "firing": len(subjects),
        "resolved": len(subjects),
    }


def _sane_next(url: str, meter_id: str, before: datetime = END) -> float:
    """A plausible newest reading: a register carrying on at its last pace, a rate as it was."""
    rows = asyncio.run(
        _fetch(
            url,
            """SELECT value FROM readings WHERE meter_id = $1 AND ts < $2
               ORDER BY ts DESC LIMIT 2""",
            meter_id,
            before,
        )
    )
    last, previous = float(rows[0]["value"]), float(rows[1]["value"])
    reading = next(m.reading for m in load_network(KALUNDBORG).meters if m.id == meter_id)
    return last + (last - previous) / 2 if reading == ReadingType.total else last


def test_a_failing_network_reconciliation_is_recorded_and_raises_rules_error_on_its_meters(
    database_url: str,
) -> None:
    """A component window whose least squares fails for any reason (here: a constraint that
    names a stream nobody measures is taken away under it) is stored with its error; the
    exchange windows of the same meters and the other component windows compute."""
    net = load_network(KALUNDBORG)
    asyncio.run(_fill(database_url, net, T0, T0 + 2 * HOUR))
    engine = Engine(_settings(database_url), worker_id="robust")

    async def go() -> Stats:
        conn = await _connect(database_url)
        try:
            topo = await engine.topology_for(conn)
            assert topo is not None
            comp = topo.components["asnaes-steam-header"]
            broken = balance_constraint("asnaes-steam-header", ["no-such-meter"], [], 0.0)
            topo.components[comp.id] = type(comp)(
                comp.id, comp.meters, (*comp.constraints, broken), comp.window
            )
            return await engine.process_pending(conn, now=T0 + 2 * HOUR + timedelta(minutes=5))
        finally:
            await conn.close()

    stats = asyncio.run(go())
    failed = {(k, s) for k, s, _ in stats.failures}
    assert failed == {("reconciliation", "asnaes-steam-header")}
    rows = asyncio.run(
        _fetch(database_url, "SELECT component, error FROM reconciliations ORDER BY component")
    )
    errors = {r["component"]: r["error"] for r in rows}
    assert errors["asnaes-steam-header"] == (
        "ValueError: constraint 'asnaes-steam-header': unknown id 'no-such-meter'"
    )
    assert errors["forsyning-water-main"] is None
    statuses = asyncio.run(_fetch(database_url, "SELECT DISTINCT status FROM exchange_windows"))
    assert "error" not in {r["status"] for r in statuses}
    alerts = _rules_errors(database_url)
    header_meters = set(_component_meters(net, "asnaes-steam-header"))
    assert {a["subject"] for a in alerts} == header_meters
    assert all("network reconciliation of asnaes-steam-header" in a["summary"] for a in alerts)


def test_a_statement_counts_an_error_window_as_no_data() -> None:
    """An exchange window that could not be computed carries no numbers and covers nothing:
    the statement's coverage shows the gap (hourly and trucked exchanges alike), so the month
    is not taken as complete."""
    from core.windows import local_midnight, windows_between
    from statements.compute import WindowRow, build_statement

    net = load_network(REPO / "examples" / "small.yaml")
    start = local_midnight(datetime(2026, 10, 1).date(), net.tz)
    end = local_midnight(datetime(2026, 11, 1).date(), net.tz)

    def month(exchange: str, window: timedelta, failed: datetime | None) -> list[WindowRow]:
        return [
            WindowRow(exchange, ws, we, None, None, coverage=0.0, status="error")
            if ws == failed
            else WindowRow(exchange, ws, we, 10.0, 10.0, coverage=1.0, status="ok")
            for ws, we in windows_between(start, end, window, net.tz)
        ]

    def coverage(rows: list[WindowRow]) -> dict[str, Decimal]:
        st = build_statement(net, "plant", 2026, 10, rows)
        return {line.exchange: line.coverage for line in st.lines}

    clean = [
        *month("heat-plant-town", HOUR, None),
        *month("gypsum-plant-boards", 24 * HOUR, None),
    ]
    assert set(coverage(clean).values()) == {Decimal("1.0000")}
    failed = [
        *month("heat-plant-town", HOUR, start + 5 * HOUR),
        *month("gypsum-plant-boards", 24 * HOUR, start + 24 * HOUR),
    ]
    assert all(c < 1 for c in coverage(failed).values()), coverage(failed)


# -- 2. ``symbiont rules --once`` and the service ----------------------------------------------


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYMBIONT_")}
    env["SYMBIONT_DATABASE_URL"] = url
    return env


def _once(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*symbiont_command(), "rules", "--once"],
        env=_env(url),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_rules_once_finishes_reports_the_failed_windows_and_recovers(database_url: str) -> None:
    net = load_network(KALUNDBORG)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - HOUR
    asyncio.run(_fill(database_url, net, hour - 2 * HOUR, hour))
    # the newest readings, in the last hour that has ended
    bad_at = hour + timedelta(seconds=30)
    water = ("forsyning-water-equinor", 1e200)
    heat = ("bioenergi-gas-gyproc", 1e308 / 3.6)  # 1e308 GJ sent to a MWh register
    for meter_id, value in (water, heat):
        asyncio.run(_store(database_url, meter_id, bad_at, value))

    done = _once(database_url)
    assert done.returncode == 0, done.stderr  # this used to end in OverflowError, status 1
    assert "Traceback" not in done.stderr
    assert re.search(
        r"; 4 windows could not be computed \(2 exchange, 2 meter; see the rules_error alerts\)",
        done.stdout,
    ), done.stdout
    assert "1e+200 m3" in done.stderr and "2.77778e+307 MWh" in done.stderr  # logged causes
    firing = [a for a in _rules_errors(database_url) if a["status"] == "firing"]
    assert {a["subject"] for a in firing} == {
        "forsyning-water-equinor",
        "water-forsyning-equinor",
        "bioenergi-gas-gyproc",
        "biomethane-bioenergi-gyproc",
    }

    # Run again over everything (as a restart with the work still pending): the same windows
    # fail, the run finishes, the alerts stay one per subject.
    asyncio.run(_mark_everything(database_url))
    again = _once(database_url)
    assert again.returncode == 0, again.stderr
    assert "; 4 windows could not be computed" in again.stdout, again.stdout
    assert len(_rules_errors(database_url)) == 4

    for meter_id, _ in (water, heat):
        sane = _sane_next(database_url, meter_id, hour)
        asyncio.run(_store(database_url, meter_id, bad_at, sane))
    healed = _once(database_url)
    assert healed.returncode == 0, healed.stderr
    assert "no window failed" in healed.stdout
    assert all(a["status"] == "resolved" for a in _rules_errors(database_url))
    statuses = asyncio.run(_fetch(database_url, "SELECT DISTINCT status FROM exchange_windows"))
    assert "error" not in {r["status"] for r in statuses}


def test_the_service_logs_a_failure_once_and_counts_it_on_metrics(
    database_url: str, tmp_path: Path
) -> None:
    net = load_network(KALUNDBORG)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - HOUR
    asyncio.run(_fill(database_url, net, hour - HOUR, hour))
    bad_at = hour + timedelta(seconds=30)
    asyncio.run(_store(database_url, "forsyning-water-equinor", bad_at, 1e200))
    port = free_port()
    rules = ServiceProcess(
        ["rules", "--worker-id", "robust"],
        env={"SYMBIONT_DATABASE_URL": database_url, "SYMBIONT_METRICS_PORT": str(port)},
        log_path=tmp_path / "rules.log",
        name="rules",
    )
    line = "meter forsyning-water-equinor: window from"
    errors = "symbiont_rules_window_errors_total{kind=meter}"

    def idle() -> bool:
        rows = asyncio.run(
            _fetch(
                database_url,
                "SELECT (SELECT count(*) FROM dirty_windows) + (SELECT count(*) FROM "
                "dirty_subjects) AS n",
            )
        )
        return int(rows[0]["n"]) == 0

    with rules:
        rules.start()
        rules.wait_for_log(line, timeout=120)
        wait_until(idle, 60, "the first pass")
        wait_until(lambda: scrape_metrics(port).get(errors, 0) == 1, 30, "one meter error")

        # The same window computed again (still broken): counted again, not logged again.
        async def remark() -> None:
            conn = await _connect(database_url)
            try:
                await _mark(conn, "forsyning-water-equinor", bad_at)
            finally:
                await conn.close()

        asyncio.run(remark())
        wait_until(lambda: scrape_metrics(port).get(errors, 0) == 2, 60, "a second failure")
        wait_until(idle, 60, "the second pass")
        assert rules.alive
        log = rules.log_text()
        assert log.count(line) == 1, log
        assert "1e+200 m3" in log and "Traceback" not in log
        samples = scrape_metrics(port)
        assert samples.get("symbiont_rules_window_errors_total{kind=exchange}") == 2


# -- 3. the pure arithmetic, over floats of any magnitude ------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
magnitude = st.floats(min_value=0.0, max_value=FLOAT_MAX, allow_infinity=False)
uncertainty = st.floats(min_value=0.0, max_value=1.0)
coverage = st.floats(min_value=0.0, max_value=1.0)
loss = st.floats(min_value=0.0, max_value=0.99)


@settings(max_examples=500, deadline=None)
@given(finite, uncertainty, magnitude)
def test_meter_variance_and_sigma_never_raise_and_are_exact_or_infinite(
    q: float, u: float, a: float
) -> None:
    """Against the exact value (decimal, 60 digits): close to it, or ``inf`` when it is beyond
    the float range."""
    with decimal.localcontext() as ctx:
        ctx.prec, ctx.Emax, ctx.Emin = 60, 10**6, -(10**6)
        exact = (Decimal(u) * Decimal(q)) ** 2 + Decimal(a) ** 2
        root = exact.sqrt()
    for got, want in ((meter_variance(q, u, a), exact), (meter_sigma(q, u, a), root)):
        assert not math.isnan(got)
        if want > Decimal(FLOAT_MAX) * Decimal("1.000000000001"):
            assert got == math.inf  # flagged: beyond the float range
        elif want < Decimal(FLOAT_MAX) * Decimal("0.999999999999"):
            assert math.isclose(got, float(want), rel_tol=1e-12, abs_tol=1e-300), (got, want)


def meter_quantity(prefix: str, limit: float = FLOAT_MAX) -> st.SearchStrategy[MeterQuantity]:
    """A meter's window: quantity (or none) and absolute uncertainty up to ``limit``."""
    return st.builds(
        MeterQuantity,
        st.text(alphabet="abc", min_size=1, max_size=3).map(lambda s: prefix + s),
        st.one_of(st.none(), st.floats(min_value=-limit, max_value=limit)),
        uncertainty,
        st.floats(min_value=0.0, max_value=limit),
        coverage,
    )


def _unique(meters: list[MeterQuantity]) -> list[MeterQuantity]:
    seen: dict[str, MeterQuantity] = {}
    for m in meters:
        seen.setdefault(m.meter_id, m)
    return list(seen.values())


EXCHANGE_NUMBERS = (
    "sent",
    "received",
    "imbalance",
    "sigma",
    "sigma_sent",
    "sigma_received",
    "reconciled_sent",
    "reconciled_received",
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(meter_quantity("s"), min_size=1, max_size=3),
    st.lists(meter_quantity("r"), min_size=1, max_size=3),
    loss,
)
def test_exchange_reconciliation_never_raises_and_is_finite_or_flagged(
    sent: list[MeterQuantity], received: list[MeterQuantity], l_: float
) -> None:
    ex = reconcile_exchange(_unique(sent), _unique(received), l_)
    assert ex.status in ("ok", "imbalance", "incomplete", "no_data", "error")
    if ex.status == "error":
        assert ex.error and "floating-point range" in ex.error
        assert all(getattr(ex, name) is None for name in EXCHANGE_NUMBERS)
        assert ex.z is None
        return
    assert ex.error is None
    for name in EXCHANGE_NUMBERS:
        value = getattr(ex, name)
        assert value is None or math.isfinite(value), (name, value)
    assert ex.z is None or not math.isnan(ex.z)
    assert all(math.isfinite(v) for v in ex.reconciled_meters.values())


@settings(max_examples=300, deadline=None)
@given(
    st.lists(meter_quantity("s", 1e300), min_size=1, max_size=3),
    st.lists(meter_quantity("r", 1e300), min_size=1, max_size=3),
    loss,
)
def test_exchange_reconciliation_of_values_below_1e300_is_never_an_error(
    sent: list[MeterQuantity], received: list[MeterQuantity], l_: float
) -> None:
    assert reconcile_exchange(_unique(sent), _unique(received), l_).status != "error"


ordinary = st.floats(min_value=1e-3, max_value=1e6)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(ordinary, min_size=1, max_size=3),
    st.lists(ordinary, min_size=1, max_size=3),
    st.lists(st.floats(min_value=1e-4, max_value=0.1), min_size=6, max_size=6),
    st.lists(st.floats(min_value=0.0, max_value=10.0), min_size=6, max_size=6),
    loss,
    st.integers(min_value=-900, max_value=1000),
)
def test_exchange_reconciliation_at_any_scale_is_the_scaled_ordinary_one(
    s: list[float],
    r: list[float],
    u: list[float],
    a: list[float],
    l_: float,
    k: int,
) -> None:
    """Quantities scaled by 2^k (into the ranges where squares overflow or vanish) give the
    same window scaled by 2^k, bit for bit: the scaled form is exact."""

    def side(prefix: str, qs: list[float], f: int) -> list[MeterQuantity]:
        return [
            MeterQuantity(f"{prefix}{i}", math.ldexp(q, f), u[i], math.ldexp(a[i], f))
            for i, q in enumerate(qs)
        ]

    plain = reconcile_exchange(side("s", s, 0), side("r", r, 0), l_)
    scaled = reconcile_exchange(side("s", s, k), side("r", r, k), l_)
    assert scaled.status == plain.status and scaled.z == plain.z
    for name in EXCHANGE_NUMBERS:
        value = getattr(plain, name)
        assert getattr(scaled, name) == (None if value is None else math.ldexp(value, k)), name


def _header() -> tuple[list[Any], list[str]]:
    """The Asnæs steam header: a boiler meter, four branches, and the receivers of three."""
    constraints = [
        balance_constraint("header", ["h"], ["b1", "b2", "b3", "b4"], 0.0),
        exchange_constraint("x1", ["b1"], ["r1"], 0.02),
        exchange_constraint("x2", ["b2"], ["r2"], 0.02),
        exchange_constraint("x3", ["b3"], ["r3"], 0.0),
    ]
    return constraints, ["h", "b1", "b2", "b3", "b4", "r1", "r2", "r3"]


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.lists(finite, min_size=8, max_size=8),
    st.lists(magnitude, min_size=8, max_size=8),
    st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_network_least_squares_never_raises_and_is_finite_or_flagged(
    y: list[float], sigma: list[float], missing: list[bool]
) -> None:
    constraints, ids = _header()
    measurements = {m: (y[i], sigma[i]) for i, m in enumerate(ids) if not missing[i]}
    unmeasured = [m for i, m in enumerate(ids) if missing[i]]
    with np.errstate(all="ignore"):
        result = reconcile_network(constraints, measurements, unmeasured)
    for step in (*result.steps, result.final):
        problem = step.problem()
        if problem is None:
            for mr in step.meters:
                for value in (mr.reconciled, mr.adjustment):
                    assert value is None or math.isfinite(value)
                assert mr.z is None or not math.isnan(mr.z)
            assert not math.isnan(step.statistic)
        else:
            assert "floating-point range" in problem or "not a number" in problem
    if all(abs(v) <= 1e150 for v in y) and all(s <= 1e150 for s in sigma):
        assert result.final.problem() is None and result.steps[0].problem() is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.floats(min_value=1.0, max_value=1e6), min_size=8, max_size=8),
    st.lists(st.floats(min_value=0.01, max_value=100.0), min_size=8, max_size=8),
    st.integers(min_value=-1000, max_value=1000),
)
def test_network_least_squares_at_any_scale_is_the_scaled_ordinary_one(
    y: list[float], sigma: list[float], k: int
) -> None:
    constraints, ids = _header()
    plain = reconcile_network(constraints, {m: (y[i], sigma[i]) for i, m in enumerate(ids)})
    scaled = reconcile_network(
        constraints,
        {m: (math.ldexp(y[i], k), math.ldexp(sigma[i], k)) for i, m in enumerate(ids)},
    )
    assert scaled.suspects == plain.suspects
    first, first_s = plain.steps[0], scaled.steps[0]
    assert first_s.statistic == pytest.approx(first.statistic, rel=1e-9)
    for a, b in zip(plain.final.meters, scaled.final.meters, strict=True):
        if a.reconciled is None:
            assert b.reconciled is None
        else:
            assert b.reconciled is not None
            assert math.ldexp(b.reconciled, -k) == pytest.approx(a.reconciled, rel=1e-9)
        if a.z is not None:
            assert b.z == pytest.approx(a.z, rel=1e-6, abs=1e-9)


window_status = st.sampled_from(["ok", "imbalance", "incomplete", "no_data", "error"])
maybe = st.one_of(st.none(), finite)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(window_status, maybe, maybe, maybe, maybe, maybe), max_size=30))
def test_alert_series_take_any_finite_window(
    rows: list[tuple[str, float | None, float | None, float | None, float | None, float | None]],
) -> None:
    windows = []
    for i, (status, s, r, d, sigma, z) in enumerate(rows):
        if status == "imbalance" and z is None:
            z = 4.0
        start = T0 + i * HOUR
        windows.append(WindowResult(start, start + HOUR, status, s, r, d, sigma, z, 1.0))
    for verdict in imbalance_series("x", "MWh", windows, False, ImbalanceConfig()):
        assert "\n" not in verdict.summary
    verdicts, _ = drift_series("x", windows, DriftConfig())
    for verdict in verdicts:
        assert "\n" not in verdict.summary


# Timestamps as the database keeps them: whole microseconds (here within ten hours).
microseconds = st.integers(min_value=0, max_value=36_000_000_000).map(lambda us: us / 1e6)
reading_value = st.one_of(
    finite, st.sampled_from([math.nan, math.inf, -math.inf, 1e-300, -1e-300, 0.0])
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(list(ReadingType)),
    st.lists(st.tuples(microseconds, reading_value), max_size=60),
)
def test_window_quantities_take_any_stored_value(
    reading: ReadingType, points: list[tuple[float, float]]
) -> None:
    points = sorted(dict(points).items())
    ts = np.array([t for t, _ in points])
    value = np.array([v for _, v in points])
    windows = np.array([[h * 3600.0, (h + 1) * 3600.0] for h in range(10)])
    q = window_quantities(reading, ts, value, windows, interval=60.0, now=None)
    assert not np.isinf(q.quantity).any()
    # nan only where there is no data
    assert ((~np.isnan(q.quantity)) | (q.coverage == 0.0)).all()
    bad = ~(np.abs(value) <= MAX_ABS_VALUE)
    for i, (start, end) in enumerate(windows):
        inside = (ts >= start) & (ts < end)
        assert q.invalid[i] == int(np.sum(bad & inside))
        assert q.readings[i] == int(np.sum(~bad & inside))
