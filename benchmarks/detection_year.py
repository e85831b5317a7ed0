"""Detection over a simulated year of the example network: the detection table of docs/alerts.md.

    python -m benchmarks.detection_year [--days N] [--seed S] [--write FILE | --no-write]

The same path as ``tests/test_detection.py`` (which keeps to a month so the test suite can
afford it): the example network (``examples/kalundborg.yaml``, 34 meters, 16 exchanges) is
simulated with ``cli.simulate`` over the year 2026 (UTC, both DST changes in it) with the
faults in ``FAULTS`` and written through the ingest batch writer (as ``cli.backfill`` does)
into a fresh migrated database on the system PostgreSQL; the rules engine runs over what has
been written after every ``--part`` days (default 30), as ``symbiont rules --once`` would after
each part of a backfill. (In one pass over a whole year's backlog, stage 1's bookkeeping of
the ~300,000 claimed meter windows takes minutes per claim; a month's is quick.) Printed (and
written to BENCHMARKS.md):

* per fault, the alert that caught it, the windows from the fault's start until the rules saw
  it (``detected_at``), for drifts the meter's error by then, and how its ``started_at`` and
  the end of what it raised stand to the fault's start and end;
* every alert on the exchanges without a fault (false alarms: there should be none), and on
  the faulted exchanges outside their faults;
* the incidents the faults' alerts make;
* how long writing and the rules engine took.

Faults share exchanges only at different times, so that ten exchanges stay clean all year.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness.reports import write_section  # noqa: E402
from cli.backfill import simulated_message  # noqa: E402
from cli.faults import Fault, parse_fault  # noqa: E402
from cli.simulate import simulate  # noqa: E402
from core.apply import apply_network  # noqa: E402
from core.db import asyncpg_dsn, upgrade  # noqa: E402
from core.network import Network, parse_network  # noqa: E402
from core.settings import Settings  # noqa: E402
from ingest.parse import NetworkIndex  # noqa: E402
from ingest.writer import BatchWriter, Message  # noqa: E402
from rules.engine import Engine  # noqa: E402
from rules.passes import Stats  # noqa: E402
from tests.services import create_database, drop_database, system_postgres_url  # noqa: E402

SECTION = "## Detection over a simulated year"
START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Case:
    fault: str  # the --fault spec
    size: str  # for the table
    rule: str  # the alert expected to catch it
    subject: str


FAULTS = [
    Case(
        "drift:novo-water-in:3%@2026-02-01T00:00Z+30d",
        "0 → 3 % in 30 days (3 %/month), 1 % meters",
        "drift",
        "water-forsyning-novo",
    ),
    Case(
        "drift:novo-water-in:3%@2026-05-01T00:00Z+15d",
        "0 → 3 % in 15 days (6 %/month), 1 % meters",
        "drift",
        "water-forsyning-novo",
    ),
    Case(
        "drift:novo-water-in:-4%@2026-08-01T00:00Z+30d",
        "0 → −4 % in 30 days, 1 % meters",
        "drift",
        "water-forsyning-novo",
    ),
    Case(
        "drift:kommune-dh-asnaes-in:3%@2026-03-01T00:00Z+30d",
        "0 → 3 % in 30 days (3 %/month), 1.8 % meter (1.7 % other side)",
        "drift",
        "dh-asnaes-kommune",
    ),
    Case(
        "drift:kommune-dh-asnaes-in:3%@2026-06-01T00:00Z+15d",
        "0 → 3 % in 15 days (6 %/month), 1.8 % meter (1.7 % other side)",
        "drift",
        "dh-asnaes-kommune",
    ),
    Case(
        "leak:water-forsyning-equinor:5%@2026-04-10T00:00Z+2d",
        "5 % of the flow for 2 days",
        "imbalance",
        "water-forsyning-equinor",
    ),
    Case(
        "leak:wwtp-heat-forsyning-kommune:3%@2026-09-10T00:00Z+2d",
        "3 % of the flow for 2 days (1.7 %/1.8 % meters: z ≈ 1.3)",
        "drift",
        "wwtp-heat-forsyning-kommune",
    ),
    Case(
        "stuck:asnaes-cooling-in@2026-07-12T06:00Z+6h",
        "6 h",
        "meter_stuck",
        "asnaes-cooling-in",
    ),
    Case("gap:novo-steam-in@2026-10-14T06:00Z+2h", "2 h", "meter_stale", "novo-steam-in"),
    Case(
        "reset:equinor-water-in@2026-11-16T12:00Z",
        "register to ≈ 0",
        "counter_reset",
        "equinor-water-in",
    ),
    Case(
        "spike:equinor-cooling-out:10@2026-07-20T08:00Z",
        "one rate reading × 10",
        "meter_spike",
        "equinor-cooling-out",
    ),
    Case(
        "spike:asnaes-steam-novo:10@2026-10-21T08:00Z",
        "one register reading × 10",
        "meter_spike",
        "asnaes-steam-novo",
    ),
]


def _exchange_of(net: Network, subject: str) -> str:
    for ex in net.exchanges:
        if subject == ex.id or subject in (*ex.sent, *ex.received):
            return ex.id
    return subject


def _window(net: Network, subject: str) -> timedelta:
    for ex in net.exchanges:
        if ex.id == subject:
            return ex.window
    return net.meter_windows()[subject]


def _span(fault: Fault, end: datetime) -> tuple[datetime, datetime]:
    start = fault.start or START
    return start, (start + fault.duration) if fault.duration else end


def _fmt_delta(delta: timedelta) -> str:
    minutes = round(delta.total_seconds() / 60)
    if abs(minutes) < 60:
        return f"{minutes:+d} min"
    return f"{minutes / 60:+.0f} h"


async def _run(
    url: str, net: Network, faults: list[Fault], end: datetime, seed: int, part: timedelta
) -> Any:
    """Simulate [START, end), write it and run the engine after every ``part``; returns
    (readings, write seconds, engine seconds, engine stats, alerts, incidents, windows)."""
    dsn = asyncpg_dsn(url)
    conn = await asyncpg.connect(dsn)
    index = NetworkIndex.from_network(net)
    meters = {m.id: m for m in net.meters}
    writer = BatchWriter(dsn, application_name="symbiont-backfill")
    engine = Engine(Settings(database_url=url))
    stats = Stats()
    write_s = engine_s = 0.0
    readings = 0
    pending: list[Message] = []

    async def flush() -> None:
        nonlocal readings, write_s
        t = time.perf_counter()
        if pending:
            readings += (await writer.write(pending, index)).inserted
            pending.clear()
        write_s += time.perf_counter() - t

    async def rules(now: datetime) -> None:
        nonlocal engine_s
        t = time.perf_counter()
        stats.add(await engine.process_pending(conn, now=now))
        engine_s += time.perf_counter() - t
        print(f"{now:%Y-%m-%d}: {readings:,} readings, {engine_s:.0f} s", file=sys.stderr)

    try:
        await apply_network(conn, net)
        cut = START + part
        size = 0
        for piece in simulate(net, START, end, faults=faults, seed=seed):
            if datetime.fromtimestamp(piece.start, UTC) >= cut:
                await flush()
                await rules(cut)
                cut += part
            pending.append(simulated_message(piece, meters[piece.meter_id]))
            size += piece.ts.size
            if size >= 50_000:
                await flush()
                size = 0
        await flush()
        await rules(end)
        alerts = await conn.fetch("SELECT * FROM alerts ORDER BY started_at, id")
        incidents = await conn.fetch("SELECT * FROM incidents ORDER BY id")
        windows = await conn.fetch(
            "SELECT exchange_id, count(*) AS n FROM exchange_windows GROUP BY exchange_id"
        )
        return readings, write_s, engine_s, stats, alerts, incidents, windows
    finally:
        await writer.close()
        await conn.close()


def section(fire_after: int | None) -> str:
    if fire_after is None:
        return SECTION
    return f"{SECTION} (imbalance after {fire_after} windows)"


def example(fire_after: int | None) -> Network:
    """The example network, with every exchange's imbalance rule firing after ``fire_after``
    imbalanced windows instead of the default when given."""
    doc = yaml.safe_load((ROOT / "examples" / "kalundborg.yaml").read_text(encoding="utf-8"))
    if fire_after is not None:
        for ex in doc["exchanges"]:
            ex.setdefault("rules", {})["imbalance"] = {"fire_after": fire_after}
    return parse_network(doc)


def report(days: int, seed: int, keep: bool, part: int, fire_after: int | None) -> str:
    net = example(fire_after)
    end = START + timedelta(days=days)
    cases = [c for c in FAULTS if _span(parse_fault(c.fault, net), end)[0] < end]
    faults = [parse_fault(c.fault, net) for c in cases]
    admin = system_postgres_url()
    name = f"symbiont_detect_year_{os.getpid()}_{secrets.token_hex(3)}"
    url = create_database(admin, name)
    try:
        upgrade(url)
        readings, write_s, engine_s, stats, alerts, incidents, windows = asyncio.run(
            _run(url, net, faults, end, seed, timedelta(days=part))
        )
    finally:
        if keep:
            print(f"kept the database {name}", file=sys.stderr)
        else:
            with contextlib.suppress(Exception):
                drop_database(admin, name)
    n_windows = {r["exchange_id"]: int(r["n"]) for r in windows}
    faulted = {_exchange_of(net, c.subject) for c in cases} | {
        _exchange_of(net, f.subject) for f in faults
    }
    clean = [ex for ex in net.exchanges if ex.id not in faulted]
    clean_subjects = {ex.id for ex in clean} | {m for ex in clean for m in (*ex.sent, *ex.received)}

    lines = [
        section(fire_after),
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with "
        f"`python -m benchmarks.detection_year --days {days} --seed {seed} --part {part}"
        + (f" --imbalance-fire-after {fire_after}" if fire_after else "")
        + "`.",
        "",
        f"The example network, {START:%Y-%m-%d} to {end:%Y-%m-%d} (UTC, {days} days, hourly "
        f"windows but for the four trucked exchanges' daily ones): {readings:,} readings "
        f"written through the ingest batch writer in {write_s:,.0f} s, the rules engine run "
        f"after every {part} days, {engine_s:,.0f} s in all "
        f"({stats.meter_windows:,} meter windows, "
        f"{stats.exchange_windows:,} exchange windows, {stats.reconciliations:,} network "
        f"reconciliations). Simulation seed {seed}.",
        "",
        "| fault | size | alert | subject | windows to detect | meter's error then | starts | "
        "all ended |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_incident: dict[int, list[asyncpg.Record]] = defaultdict(list)
    for a in alerts:
        by_incident[a["incident_id"]].append(a)
    explained: set[int] = set()
    incident_lines = []
    for case, fault in zip(cases, faults, strict=True):
        begin, finish = _span(fault, end)
        window = _window(net, case.subject)
        found = next(
            (
                a
                for a in alerts
                if a["rule"] == case.rule
                and a["subject"] == case.subject
                and a["detected_at"] > begin
                and a["detected_at"] <= finish + 6 * window
            ),
            None,
        )
        kind = f"`{fault.kind.value}`"
        if found is None:
            lines.append(
                f"| {kind} | {case.size} | `{case.rule}` | {case.subject} | missed | | | |"
            )
            continue
        windows_to = (found["detected_at"] - begin) / window
        error = ""
        if fault.kind.value == "drift" and fault.size is not None and fault.duration:
            share = min(1.0, (found["detected_at"] - begin) / fault.duration)
            error = f"{fault.size * share * 100:+.2f} %"
        members = by_incident[found["incident_id"]]
        explained |= {a["id"] for a in members}
        ended = "firing"
        if all(a["status"] == "resolved" for a in members):
            last = max(a["resolved_at"] for a in members)
            ended = f"{_fmt_delta(last - finish)} after its end" if fault.duration else "yes"
        lines.append(
            f"| {kind} | {case.size} | `{case.rule}` | {case.subject} | {windows_to:.0f} | "
            f"{error} | {_fmt_delta(found['started_at'] - begin)} | {ended} |"
        )
        rules: dict[str, int] = defaultdict(int)
        for a in members:
            rules[f"`{a['rule']}` {a['subject']}"] += 1
        incident_lines.append(
            f"- `{case.fault}`: incident {found['incident_id']}: "
            + ", ".join(f"{k}{f' ×{n}' if n > 1 else ''}" for k, n in rules.items())
        )
    false = [a for a in alerts if a["subject"] in clean_subjects]
    other = [a for a in alerts if a["id"] not in explained and a["subject"] not in clean_subjects]
    clean_windows = sum(n_windows.get(ex.id, 0) for ex in clean)
    # the imbalance rule's own rate: N windows in a row beyond |z| > 3 on one side by chance
    one_side = math.erfc(3 / math.sqrt(2)) / 2
    chance = clean_windows * 2 * one_side ** (fire_after or 2)
    lines += [
        "",
        f"Clean exchanges ({len(clean)}: {', '.join(ex.id for ex in clean)}; "
        f"{clean_windows:,} exchange windows): **{len(false)} alerts**" + (":" if false else "."),
    ]
    for a in false:
        lines.append(
            f"- `{a['rule']}` {a['subject']} from {a['started_at']:%Y-%m-%d %H:%M}: {a['summary']}"
        )
    lines += [
        "",
        f"With normal z the imbalance rule fires by chance about {chance:.2g} times in as many "
        f"windows, drift about {clean_windows / 8.6e6:.2g} times.",
        "",
    ]
    lines.append(
        f"Alerts on the faulted exchanges outside the faults' incidents: {len(other)}"
        + (":" if other else ".")
    )
    for a in other:
        lines.append(
            f"- `{a['rule']}` {a['subject']} {a['started_at']:%Y-%m-%d %H:%M} – "
            f"{a['resolved_at'] or 'firing'}: {a['summary']}"
        )
    lines += [
        "",
        f"Incidents: {len(incidents)} for {len(alerts)} alerts. The faults' incidents:",
        *incident_lines,
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.detection_year")
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--part", type=int, default=30, help="run the engine every PART days")
    p.add_argument("--keep", action="store_true", help="keep the database")
    p.add_argument(
        "--imbalance-fire-after",
        type=int,
        default=None,
        metavar="N",
        help="imbalanced windows in a row to fire the imbalance rule (default: the rule's)",
    )
    p.add_argument("--write", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    text = report(args.days, args.seed, args.keep, args.part, args.imbalance_fire_after)
    print(text)
    if not args.no_write:
        write_section(args.write, section(args.imbalance_fire_after), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
