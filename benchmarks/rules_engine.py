"""Rules engine: a month reconciled from scratch, and the live latency of the windows.

Backfill (issue goal: a month of one-minute data for 100 exchanges, 200 meters, reconciled
from scratch in under 60 s). A network of ``exchanges`` heat exchanges between ``partners``
partners (hourly windows, Europe/Copenhagen): each has one ``total`` sent meter and one
received meter, ``rate`` or ``total`` alternately, all one-minute, MWh (MW for rates),
1 % uncertainty, nominal flows 1–25.75 MW. The month (2026-10-01 – 2026-11-01 UTC, with the
25-hour DST day) is simulated by ``cli.simulate.simulate`` and loaded with a binary COPY
straight into ``readings`` (``--loader writer`` goes through ``cli.backfill.
write_simulation``, the ingest batch writer, instead: slower, same rows). The loader marks
the dirty (meter, window) pairs exactly as ingest does (``WindowCutter.start`` of every
reading, vectorised), then ``VACUUM ANALYZE`` and ``CHECKPOINT`` (not timed). The timed part
is ``Engine(settings).process_pending(conn, now=end)`` in a process of its own
(``python -m benchmarks.rules_engine engine``), so its peak RSS (``ru_maxrss``) is the
engine's; the CPU of its PostgreSQL backend is read from /proc. A few faults (``FAULTS``: a
leak, a drift, a stuck meter, a gap, a counter reset, two spikes) are injected so that the
replay also starts and resolves alerts (``--no-faults``: a clean month). ``--baseline REV``
also times the engine (``core``, ``ingest``, ``rules``) of git revision REV on a copy of the
same loaded database and compares what both produced (md5 per table).

Latency (issue goal: p99 from a committed batch to updated windows and alerts under 1 s at
5,000 readings/s). ``symbiont ingest`` and ``symbiont rules`` run as subprocesses against a
private Mosquitto and a fresh database with the same network; a publisher process (``python
-m benchmarks.rules_engine publish``) sends ``rate / readings_per_message`` messages/s
round-robin over the meters, each carrying the meter's readings since its previous message,
timestamped up to "now" (registers rising at the exchange's nominal flow, rates at it).
Before the services start, ``symbiont rules --once`` issues the previous month's statements
(due, since its grace period is over), so that the run measures the steady state;
``--statements-during-run`` leaves them to the live service instead.

For every committed ingest batch the latency is measured from its commit to the commit of
the rules transaction that stored the last exchange window covering its readings (that
transaction also replays the alert rules over those windows):

- one listener connection LISTENs on ``symbiont_dirty`` (ingest NOTIFYs once per committed
  batch) and ``symbiont_windows`` (the engine NOTIFYs once per stage-2 transaction, payload =
  exchange windows written); both times are the arrival times of the notifications on that
  connection (``time.time()``), so they are delivered the same way;
- the k-th ``symbiont_dirty`` notification is the k-th distinct ``received_at`` of the stored
  readings (one ingest writer: transactions commit in the order they start);
- the benchmark database (only it) gets statement-level triggers on ``meter_windows`` and
  ``exchange_windows`` logging each written row with ``clock_timestamp()`` and the
  transaction id. For a batch and each meter in it, with τ its newest reading there: the
  first logged meter window holding τ with ``last_ts ≥ τ`` (the first stage-1 write that saw
  the batch), then for each exchange of the meter the first logged exchange window holding τ
  written after it; the batch is done when the last of those transactions commits, i.e. at
  the arrival of that transaction's ``symbiont_windows`` notification (the n-th notification
  with a non-zero payload is the n-th logged transaction, checked by the row counts).

The simpler pairing "each batch → the first ``symbiont_windows`` after it" is reported too:
it is optimistic when a batch commits while the engine computes a cycle that claimed its work
before the batch.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import io
import math
import secrets
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import asyncpg
import numpy as np
import numpy.typing as npt
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.clients import split_url  # noqa: E402
from benchmarks.harness import BenchError, arguments, log, postgres, proc, reports, services  # noqa: E402
from benchmarks.harness.reports import mib, secs  # noqa: E402
from cli.faults import Fault, parse_fault  # noqa: E402
from cli.simulate import simulate  # noqa: E402
from core.db import asyncpg_dsn  # noqa: E402
from core.network import Network, ReadingType, parse_network  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.units import conversion  # noqa: E402
from core.windows import WindowCutter, window_bounds  # noqa: E402
from ingest.writer import MARK_DIRTY  # noqa: E402
from tests.services import Mosquitto  # noqa: E402

SECTION = "## Rules engine (issue: rules engine)"
ON_MACHINE = "Everything (PostgreSQL, broker, services, publisher, harness) on this machine."
TIMEZONE = "Europe/Copenhagen"
START = datetime(2026, 10, 1, tzinfo=UTC)  # October: includes the 25-hour DST day
TARGET_BACKFILL_S = 60.0
TARGET_P99_S = 1.0
PG_EPOCH = 946_684_800.0  # 2000-01-01T00:00:00Z, the origin of PostgreSQL's timestamps
PUB_WINDOW = 1000  # unacknowledged messages the publisher allows itself
RULES_WORKER = "bench-rules"
# Injected into the month (``--no-faults`` leaves it clean), one of each kind the alert rules
# look for, so the replay also starts and resolves alerts; the latency run has none.
FAULTS = (
    "leak:x010:5%@2026-10-08T00:00Z",
    "drift:x020-recv:3%",
    "stuck:x030-recv@2026-10-12T06:00Z+6h",
    "gap:x040-recv@2026-10-14T06:00Z+2h",
    "reset:x050-sent@2026-10-16T12:00Z",
    "spike:x060-recv:10@2026-10-20T08:00Z",
    "spike:x061-recv:10@2026-10-21T08:00Z",
)

FloatArray = npt.NDArray[np.float64]
T = TypeVar("T")
# What the code measured is: its commit, and which of these differ from it.
CODE_PATHS = ("rules", "core", "ingest", "benchmarks")


# --------------------------------------------------------------------------------- options


@dataclass
class MonthOptions:
    """The simulated month (from 2026-10-01) the rules and the statements benchmarks load."""

    exchanges: int = 100
    partners: int = 20
    days: int = 31
    seed: int = 1
    faults: bool = True
    loader: str = "copy"  # or "writer" (cli.backfill.write_simulation)

    @property
    def start(self) -> datetime:
        return START

    @property
    def end(self) -> datetime:
        return START + timedelta(days=self.days)


def add_month_arguments(p: argparse.ArgumentParser, d: MonthOptions) -> None:
    """The options of ``MonthOptions`` (``d``: the defaults)."""
    p.add_argument("--exchanges", type=int, default=d.exchanges, help="default %(default)s")
    p.add_argument("--partners", type=int, default=d.partners, help="default %(default)s")
    p.add_argument(
        "--days",
        type=int,
        default=d.days,
        help="days of data from 2026-10-01 (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="simulation seed")
    p.add_argument("--no-faults", action="store_true", help="a clean month (no faults)")
    p.add_argument(
        "--loader",
        choices=("copy", "writer"),
        default=d.loader,
        help="how the month is loaded (not timed): binary COPY or the ingest batch writer "
        "(cli.backfill.write_simulation); default %(default)s",
    )


@dataclass
class Options(MonthOptions):
    backfill: bool = True
    latency_seconds: float = 60.0  # 0 skips the latency run
    latency_rate: float = 5000.0  # readings/s
    readings_per_message: int = 100
    quiet_wait: float = 10.0
    profile: Path | None = None  # py-spy flame graph of the timed engine run
    baseline: str | None = None  # git revision whose engine is timed on the same data too
    statements_during_run: bool = False  # leave last month's statements to the live service
    write: Path | None = ROOT / "BENCHMARKS.md"
    command: str = ""


DESCRIPTION = "Rules engine: a month from scratch, live latency (benchmarks/rules_engine.py)."
QUICK = {"days": 3, "latency_seconds": 15.0, "quiet_wait": 3.0}  # --quick: a smoke run


# --------------------------------------------------------------------------------- network


def sent_id(i: int) -> str:
    return f"x{i:03d}-sent"


def received_id(i: int) -> str:
    return f"x{i:03d}-recv"


def bench_network(exchanges: int, partners: int) -> dict[str, Any]:
    """``exchanges`` hourly heat exchanges, one sent ``total`` meter and one received meter
    each (``rate`` for odd, ``total`` for even exchanges), one-minute readings."""
    if partners < 2:
        raise ValueError("at least two partners")
    meters: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    for i in range(exchanges):
        provider = i % partners
        receiver = (provider + 1 + (i // partners) % (partners - 1)) % partners
        rate = i % 2 == 1
        meters.append(
            {
                "id": sent_id(i),
                "partner": f"p{provider:02d}",
                "kind": "heat",
                "reading": "total",
                "unit": "MWh",
                "uncertainty": 0.01,
                "interval": 60,
            }
        )
        meters.append(
            {
                "id": received_id(i),
                "partner": f"p{receiver:02d}",
                "kind": "heat",
                "reading": "rate" if rate else "total",
                "unit": "MW" if rate else "MWh",
                "uncertainty": 0.01,
                "interval": 60,
            }
        )
        links.append(
            {
                "id": f"x{i:03d}",
                "provider": f"p{provider:02d}",
                "receiver": f"p{receiver:02d}",
                "kind": "heat",
                "sent": [sent_id(i)],
                "received": [received_id(i)],
                "loss": round((i % 4) * 0.01, 2),
                "window": "1h",
                "nominal": 1.0 + (i * 37 % 100) / 4,
            }
        )
    return {
        "network": "bench-rules",
        "name": "Rules engine benchmark",
        "timezone": TIMEZONE,
        "partners": [{"id": f"p{p:02d}", "name": f"Partner {p}"} for p in range(partners)],
        "meters": meters,
        "exchanges": links,
    }


# -------------------------------------------------------------------------------- loading

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension
_COPY_TRAILER = b"\xff\xff"


def copy_rows(meter_id: str, ts: FloatArray, value: FloatArray) -> bytes:
    """Binary COPY tuples (meter_id text, ts timestamptz, value float8) for one meter."""
    mid = meter_id.encode()
    dtype = np.dtype(
        [
            ("n", ">i2"),
            ("l1", ">i4"),
            ("id", f"S{len(mid)}"),
            ("l2", ">i4"),
            ("ts", ">i8"),
            ("l3", ">i4"),
            ("v", ">f8"),
        ]
    )
    rows = np.empty(len(ts), dtype=dtype)
    rows["n"] = 3
    rows["l1"] = len(mid)
    rows["id"] = mid
    rows["l2"] = 8
    rows["ts"] = np.rint((ts - PG_EPOCH) * 1e6).astype(np.int64)
    rows["l3"] = 8
    rows["v"] = value
    return rows.tobytes()


def window_starts(cutter: WindowCutter, ts: FloatArray, window_s: float) -> FloatArray:
    """``cutter.start(t, window_s)`` for every t, as ingest's writer computes it, vectorised
    over the 15-minute buckets that ``WindowCutter.day`` caches."""
    if not len(ts):
        return ts
    buckets = np.floor_divide(ts, 900.0)
    uniq, inverse = np.unique(buckets, return_inverse=True)
    lows = np.array([cutter.day(float(b) * 900.0)[0] for b in uniq])[inverse]
    if window_s >= 86400:
        return lows
    result: FloatArray = lows + np.floor_divide(ts - lows, window_s) * window_s
    return result


@dataclass
class LoadResult:
    loader: str
    readings: int
    dirty: int
    seconds: float


async def load_copy(
    url: str, net: Network, start: datetime, end: datetime, seed: int, faults: Sequence[Fault]
) -> int:
    """Simulate [start, end) and COPY it into ``readings``, marking windows dirty as ingest
    does; returns the readings written."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        month = datetime(start.year, start.month, 1, tzinfo=UTC)
        while month < end:
            await conn.execute("SELECT symbiont_ensure_partition($1)", month)
            month = datetime(month.year + (month.month == 12), month.month % 12 + 1, 1, tzinfo=UTC)
        meters = {m.id: m for m in net.meters}
        windows = {mid: w.total_seconds() for mid, w in net.meter_windows().items()}
        cutter = WindowCutter(ZoneInfo(net.timezone))
        dirty: set[tuple[str, float]] = set()
        written = 0
        parts: list[bytes] = []
        chunk_start: float | None = None
        for piece in simulate(net, start, end, faults=faults, seed=seed):
            if chunk_start is not None and piece.start != chunk_start and parts:
                written += await _copy(conn, parts)
                parts = []
            chunk_start = piece.start
            if not len(piece):
                continue
            meter = meters[piece.meter_id]
            factor = conversion(piece.unit, meter.kind, meter.reading)
            value = piece.value.astype(np.float64) * factor
            parts.append(copy_rows(piece.meter_id, piece.ts.astype(np.float64), value))
            w = windows[piece.meter_id]
            for s in np.unique(window_starts(cutter, piece.ts.astype(np.float64), w)):
                dirty.add((piece.meter_id, float(s)))
        if parts:
            written += await _copy(conn, parts)
        ids, starts = zip(*sorted(dirty), strict=True)
        await conn.execute(MARK_DIRTY, list(ids), [datetime.fromtimestamp(s, UTC) for s in starts])
    finally:
        await conn.close()
    return written


async def _copy(conn: asyncpg.Connection, parts: list[bytes]) -> int:
    data = _COPY_HEADER + b"".join(parts) + _COPY_TRAILER
    status = await conn.copy_to_table(
        "readings", source=io.BytesIO(data), columns=["meter_id", "ts", "value"], format="binary"
    )
    return int(str(status).rsplit(" ", 1)[1])


def load_month(url: str, net: Network, opts: MonthOptions) -> LoadResult:
    faults = [parse_fault(f, net) for f in FAULTS] if opts.faults else []
    began = time.perf_counter()
    if opts.loader == "writer":
        from cli.backfill import write_simulation

        readings = asyncio.run(
            write_simulation(
                asyncpg_dsn(url), net, opts.start, opts.end, faults=faults, seed=opts.seed
            )
        )
    else:
        readings = asyncio.run(load_copy(url, net, opts.start, opts.end, opts.seed, faults))
    seconds = time.perf_counter() - began
    dirty = postgres.fetch(url, "SELECT count(*) AS n FROM dirty_windows")[0]["n"]
    postgres.execute(url, "VACUUM ANALYZE", "CHECKPOINT")
    return LoadResult(opts.loader, readings, dirty, seconds)


# --------------------------------------------------------------------- the timed engine run


def engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", required=True)
    p.add_argument("--now", required=True, type=datetime.fromisoformat)


async def engine_run(database_url: str, now: datetime) -> dict[str, Any]:
    """``Engine.process_pending(conn, now)`` once, timed per stage (runs in its own process:
    ``python -m benchmarks.rules_engine engine``)."""
    import rules.engine
    from rules.engine import Engine
    from rules.passes import Stats
    from rules.topology import Topology

    timings: dict[str, float] = defaultdict(float)
    passes: dict[str, int] = defaultdict(int)

    async def timed(stage: str, work: Awaitable[T]) -> T:
        t = time.perf_counter()
        try:
            return await work
        finally:
            timings[stage] += time.perf_counter() - t
            passes[stage] += 1

    class TimedEngine(Engine):
        async def stage1(self, conn: asyncpg.Connection, topo: Topology, at: datetime) -> Stats:
            return await timed("stage1", super().stage1(conn, topo, at))

        async def stage2(self, conn: asyncpg.Connection, topo: Topology, at: datetime) -> Stats:
            return await timed("stage2", super().stage2(conn, topo, at))

    engine = TimedEngine(Settings(database_url=database_url))
    conn = await asyncpg.connect(
        engine.dsn, server_settings={"application_name": "bench-rules-backfill"}
    )
    try:
        with proc.Span(conn.get_server_pid()) as span:
            stats = await engine.process_pending(conn, now=now)
        counts = {
            "meter_windows": await conn.fetchval("SELECT count(*) FROM meter_windows"),
            "exchange_windows": await conn.fetchval("SELECT count(*) FROM exchange_windows"),
            "reconciliations": await conn.fetchval("SELECT count(*) FROM reconciliations"),
            "dirty_windows": await conn.fetchval("SELECT count(*) FROM dirty_windows"),
            "dirty_subjects": await conn.fetchval("SELECT count(*) FROM dirty_subjects"),
        }
        statuses = {
            r["status"]: r["n"]
            for r in await conn.fetch(
                "SELECT status, count(*) AS n FROM exchange_windows GROUP BY status"
            )
        }
        alerts = [
            {"rule": r["rule"], "status": r["status"], "n": r["n"]}
            for r in await conn.fetch(
                "SELECT rule, status, count(*) AS n FROM alerts GROUP BY rule, status "
                "ORDER BY rule, status"
            )
        ]
    finally:
        await conn.close()
    return {
        **span.figures(),
        "stage1_s": timings["stage1"],
        "stage2_s": timings["stage2"],
        "stage1_passes": passes["stage1"],
        "stage2_passes": passes["stage2"],
        "stats": {
            "meter_windows": stats.meter_windows,
            "exchange_windows": stats.exchange_windows,
            "reconciliations": stats.reconciliations,
            "subjects": stats.subjects,
            "alerts": dict(stats.alerts),
        },
        "counts": counts,
        "statuses": statuses,
        "alerts": alerts,
        "engine_file": rules.engine.__file__,
    }


@dataclass
class BackfillResult:
    load: LoadResult
    engine: dict[str, Any]
    readings_in_db: int
    windows_expected: int
    digest: dict[str, str] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None  # the same run with the engine of ``baseline_rev``
    baseline_digest: dict[str, str] = field(default_factory=dict)
    baseline_rev: str = ""


# What the engine produced, as one md5 per table (timestamps of the computation left out):
# equal digests mean equal windows, alerts and alert events.
_DIGESTS = {
    "meter_windows": """SELECT md5(string_agg(concat_ws('|', meter_id, window_start, window_end,
        quantity, coverage, readings, stuck, negatives, resets, reset_events, outliers,
        first_ts, last_ts), E'\n' ORDER BY meter_id, window_start)) FROM meter_windows""",
    "exchange_windows": """SELECT md5(string_agg(concat_ws('|', exchange_id, window_start,
        window_end, sent, received, loss, imbalance, sigma, z, coverage, status,
        reconciled_sent, reconciled_received), E'\n' ORDER BY exchange_id, window_start))
        FROM exchange_windows""",
    "alerts": """SELECT md5(string_agg(concat_ws('|', fingerprint, rule, subject, status,
        severity, summary, details, started_at, resolved_at), E'\n' ORDER BY id)) FROM alerts""",
    "alert_events": """SELECT md5(string_agg(concat_ws('|', a.fingerprint, e.kind), E'\n'
        ORDER BY e.id)) FROM alert_events e JOIN alerts a ON a.id = e.alert_id""",
}


def digest(url: str) -> dict[str, str]:
    return {table: str(postgres.fetch(url, sql)[0][0]) for table, sql in _DIGESTS.items()}


def timed_engine(
    url: str, opts: Options, workdir: Path, code: Path | None = None
) -> dict[str, Any]:
    """``python -m benchmarks.rules_engine engine`` on ``url``; with ``code``, the engine (and
    everything it imports from core, ingest and rules) comes from that directory."""
    cmd = [
        sys.executable, "-m", "benchmarks.rules_engine", "engine",
        "--database-url", url, "--now", opts.end.isoformat(),
    ]  # fmt: skip
    if opts.profile is not None and code is None:
        cmd = services.py_spy_record(cmd, opts.profile, "--rate", "50")
    env = services.clean_env()
    if code is not None:
        env["PYTHONPATH"] = str(ROOT)  # benchmarks and tests; core, ingest, rules from ``code``
    label = "baseline" if code is not None else "current"
    return services.run_json(
        cmd,
        what="engine run",
        env=env,
        cwd=code or ROOT,
        stderr_to=workdir / f"engine-backfill-{label}.log",
    )


def backfill_case(dbs: postgres.Databases, opts: Options, workdir: Path) -> BackfillResult:
    url = dbs.fresh("backfill")
    log(f"backfill: loading {opts.days} days of {len(dbs.network.meters)} meters ({opts.loader})")
    load = load_month(url, dbs.network, opts)
    stored = postgres.fetch(url, "SELECT count(*) AS n FROM readings")[0]["n"]
    log(
        f"backfill: {load.readings:,} readings, {load.dirty:,} dirty windows loaded in "
        f"{load.seconds:.1f} s"
    )
    baseline_url = dbs.copy(url, "baseline") if opts.baseline else None
    tz = ZoneInfo(TIMEZONE)
    hours = int((opts.end - opts.start).total_seconds() // 3600)
    starts = {window_bounds(opts.start + timedelta(hours=h), timedelta(hours=1), tz)[0] for h in
              range(hours)}  # fmt: skip
    proc.wait_quiet(opts.quiet_wait)
    log("backfill: Engine.process_pending from scratch")
    result = timed_engine(url, opts, workdir)
    log(
        f"backfill: {result['wall_s']:.1f} s, {result['counts']['meter_windows']:,} meter "
        f"windows, {result['counts']['exchange_windows']:,} exchange windows; everything else "
        f"on the machine meanwhile {secs(others_in(result))} CPU s"
    )
    out = BackfillResult(load, result, stored, len(starts), digest=digest(url))
    if opts.baseline and baseline_url is not None:
        code = services.export_code(opts.baseline, workdir)
        proc.wait_quiet(opts.quiet_wait)
        log(f"backfill: the same with the engine of {opts.baseline}")
        out.baseline = timed_engine(baseline_url, opts, workdir, code)
        out.baseline_digest = digest(baseline_url)
        out.baseline_rev = services.describe(opts.baseline)
        log(
            f"backfill: baseline ({out.baseline['engine_file']}) "
            f"{out.baseline['wall_s']:.1f} s "
            f"(everything else {secs(others_in(out.baseline))} CPU s); "
            "results " + ("identical" if out.baseline_digest == out.digest else "DIFFER")
        )
    return out


# -------------------------------------------------------------------------- the publisher


def publish_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True)
    p.add_argument("--client-id", required=True)
    p.add_argument("--rate", type=float, required=True, help="readings per second")
    p.add_argument("--per-message", type=int, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--exchanges", type=int, required=True)
    p.add_argument("--partners", type=int, required=True)


def run_publish(args: argparse.Namespace) -> dict[str, Any]:
    """Publish ``rate`` readings/s as messages of ``per_message`` readings, round-robin over
    the meters, each message holding its meter's readings since its previous message, evenly
    spaced up to now."""
    net = parse_network(bench_network(args.exchanges, args.partners))
    flows: dict[str, float] = {}
    for ex in net.exchanges:
        for mid in ex.sent:
            flows[mid] = ex.nominal or 10.0
        for mid in ex.received:
            flows[mid] = (ex.nominal or 10.0) * (1 - ex.loss)
    meters = [(m.id, m.partner, m.reading) for m in net.meters]
    topics = [f"symbiont/readings/{partner}/{mid}" for mid, partner, _ in meters]
    host, port = split_url(args.url)
    # MQTT 3.1.1: no property block to decode on every PUBACK (CPU taken from the others).
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv311
    )
    client.max_inflight_messages_set(PUB_WINDOW)
    cond = threading.Condition()
    acked = 0
    published = 0

    def window_open() -> bool:
        return published - acked < PUB_WINDOW

    def on_publish(c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
        nonlocal acked
        with cond:
            acked += 1
            cond.notify()

    client.on_publish = on_publish
    client.connect(host, port, keepalive=60)
    client.loop_start()
    per = args.per_message
    msg_rate = args.rate / per
    total = int(args.duration * msg_rate)
    n = len(meters)
    t0 = time.time()
    period = n / msg_rate
    last = [t0 - period] * n
    base = [10_000.0 + 1_000.0 * i for i in range(n)]
    behind_max = 0.0
    readings = 0
    first = t0
    while published < total:
        due = t0 + published / msg_rate
        wait = due - time.time()
        if wait > 0:
            time.sleep(wait)
        if not window_open():
            with cond:
                cond.wait_for(window_open, timeout=30)
        now = time.time()
        behind_max = max(behind_max, now - due)
        i = published % n
        mid, _, reading = meters[i]
        a = last[i]
        step = (now - a) / per
        stamps = [round(a + step * (k + 1), 6) for k in range(per)]
        flow = flows[mid]
        if reading == ReadingType.total:
            values = [round(base[i] + flow * (t - t0) / 3600.0, 6) for t in stamps]
        else:
            values = [round(flow * (1 + 0.003 * math.sin(t)), 6) for t in stamps]
        payload = orjson.dumps([{"ts": t, "value": v} for t, v in zip(stamps, values, strict=True)])
        client.publish(topics[i], payload, qos=1)
        last[i] = stamps[-1]
        if published == 0:
            first = now
        published += 1
        readings += per
    last_at = time.time()
    with cond:
        cond.wait_for(lambda: acked >= published, timeout=60)
    client.disconnect()
    client.loop_stop()
    span = last_at - first
    return {
        "published": published,
        "acked": acked,
        "readings": readings,
        "first_at": first,
        "last_at": last_at,
        "achieved_readings_per_s": readings / span if span > 0 else 0.0,
        "max_behind_s": behind_max,
        "cpu_s": proc.rusage_cpu(),
    }


# ---------------------------------------------------------------------- latency machinery

_TRACE = """
CREATE TABLE bench_trace (
    tbl          text NOT NULL,
    subject      text NOT NULL,
    window_start timestamptz NOT NULL,
    last_ts      timestamptz,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    xid          text NOT NULL DEFAULT pg_current_xact_id()::text
);
CREATE FUNCTION bench_trace_meter() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_trace (tbl, subject, window_start, last_ts)
    SELECT 'meter', meter_id, window_start, last_ts FROM new_rows;
    RETURN NULL;
END $$;
CREATE FUNCTION bench_trace_exchange() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_trace (tbl, subject, window_start)
    SELECT 'exchange', exchange_id, window_start FROM new_rows;
    RETURN NULL;
END $$;
CREATE TRIGGER bench_trace_mw_i AFTER INSERT ON meter_windows
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench_trace_meter();
CREATE TRIGGER bench_trace_mw_u AFTER UPDATE ON meter_windows
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench_trace_meter();
CREATE TRIGGER bench_trace_xw_i AFTER INSERT ON exchange_windows
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench_trace_exchange();
CREATE TRIGGER bench_trace_xw_u AFTER UPDATE ON exchange_windows
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench_trace_exchange();
"""


CHANNELS = ("symbiont_dirty", "symbiont_windows")  # what the listener records


@dataclass
class LatencyResult:
    target_rate: float
    achieved_rate: float
    messages: int
    readings: int
    stored: int
    batches: int
    cycles: int  # stage-2 transactions that wrote exchange windows
    latencies: list[float]  # per batch, seconds (exact pairing)
    naive: list[float]  # per batch, first windows notification after the batch
    missing: int  # batches never reflected in the exchange windows
    max_behind_s: float
    publisher_cpu_s: float
    ingest_cpu_s: float | None
    rules_cpu_s: float | None
    rules_backend_cpu_s: float | None
    ingest_backend_cpu_s: float | None
    broker_cpu_s: float | None
    machine_cpu_s: float | None
    seconds: float  # wall time of the measured span
    rules_peak_kib: int | None
    ingest_peak_kib: int | None
    alerts: dict[str, int] = field(default_factory=dict)
    by_phase: list[tuple[str, int, float, float]] = field(default_factory=list)
    once_s: float | None = None  # ``symbiont rules --once`` before the run (None: skipped)
    statements_before: int = 0  # statements issued before the run
    statements_during: int = 0  # statements issued during the run

    @property
    def others_cpu_s(self) -> float | None:
        """CPU seconds of everything on the machine but the processes listed."""
        return proc.others(
            self.machine_cpu_s,
            self.rules_cpu_s,
            self.rules_backend_cpu_s,
            self.ingest_cpu_s,
            self.ingest_backend_cpu_s,
            self.broker_cpu_s,
            self.publisher_cpu_s,
        )

    def p(self, q: float, naive: bool = False) -> float:
        return reports.percentile_of(self.naive if naive else self.latencies, q)


def latency_case(dbs: postgres.Databases, opts: Options, workdir: Path) -> LatencyResult:
    # Wait for a quiet machine before the network is applied: meters that send nothing for
    # three intervals after that are (rightly) alerted stale by the engine's periodic check.
    proc.wait_quiet(opts.quiet_wait)
    url = dbs.fresh("latency")
    net = dbs.network
    postgres.fetch(url, "SELECT 1")  # connectable
    postgres.execute(url, _TRACE)
    with Mosquitto(autosave_interval=1) as broker:
        env = services.service_env(url, broker.url)
        ingest_id = f"bench-ingest-{secrets.token_hex(3)}"
        ingest = services.ingest_service(env, ingest_id, workdir / "ingest-live.log")
        rules = services.rules_service(env, RULES_WORKER, workdir / "rules-live.log")
        # The rules service issues last month's statements once its grace period is over (PDFs
        # included), beside the windows: done here, before the run, for a steady state, unless
        # --statements-during-run asks for that once-a-month case.
        once_s = None if opts.statements_during_run else services.rules_once(env, timeout=900)
        statements_before = postgres.fetch(url, "SELECT count(*) AS n FROM statements")[0]["n"]
        listener = postgres.Listener(url, CHANNELS)
        listener.start()
        try:
            for service in (ingest, rules):
                service.start()
                service.wait_ready()
            backend = postgres.wait_backend(url, f"symbiont-rules:{RULES_WORKER}")

            def cpu_now() -> proc.Snapshot:
                return proc.snapshot(
                    {
                        "ingest": ingest.pid,
                        "rules": rules.pid,
                        "backend": backend,
                        "broker": broker.pid,
                    }
                )

            proc.wait_quiet(min(opts.quiet_wait, 10.0))
            cpu0 = cpu_now()
            began = time.time()
            log(
                f"latency: publishing {opts.latency_rate:,.0f} readings/s "
                f"({opts.readings_per_message}/message) for {opts.latency_seconds:g} s"
            )
            pub = _run_publisher(broker.url, opts)
            if pub["acked"] != pub["published"]:
                raise BenchError(f"only {pub['acked']} of {pub['published']} PUBACKs arrived")
            _wait_settled(url, listener, pub["readings"], ingest, rules)
            seconds = time.time() - began
            cpu = proc.spent(cpu0, cpu_now())
            # ingest's writer connects at its first batch: its whole life is this run
            writer = postgres.wait_backend(url, f"symbiont-ingest:{ingest_id}", timeout=2.0)
            cpu["writer"] = proc.cpu_seconds(writer)
            rules_peak = rules.memory_kib()
            ingest_peak = ingest.memory_kib()
        finally:
            rules.stop()
            ingest.stop()
            listener.stop()

    result = _latencies(url, net, listener.events)
    alerts = {
        r["rule"]: r["n"]
        for r in postgres.fetch(
            url, "SELECT rule, count(*) AS n FROM alerts GROUP BY rule ORDER BY rule"
        )
    }
    lat = LatencyResult(
        target_rate=opts.latency_rate,
        achieved_rate=pub["achieved_readings_per_s"],
        messages=pub["published"],
        readings=pub["readings"],
        stored=result["stored"],
        batches=result["batches"],
        cycles=result["cycles"],
        latencies=result["latencies"],
        naive=result["naive"],
        missing=result["missing"],
        max_behind_s=pub["max_behind_s"],
        publisher_cpu_s=pub["cpu_s"],
        ingest_cpu_s=cpu["ingest"],
        rules_cpu_s=cpu["rules"],
        rules_backend_cpu_s=cpu["backend"],
        ingest_backend_cpu_s=cpu["writer"],
        broker_cpu_s=cpu["broker"],
        machine_cpu_s=cpu["machine"],
        seconds=seconds,
        rules_peak_kib=rules_peak,
        ingest_peak_kib=ingest_peak,
        alerts=alerts,
        by_phase=result["by_phase"],
        once_s=once_s,
        statements_before=statements_before,
        statements_during=postgres.fetch(url, "SELECT count(*) AS n FROM statements")[0]["n"]
        - statements_before,
    )
    if lat.stored != lat.readings:
        raise BenchError(f"ingest stored {lat.stored} of {lat.readings} readings")
    log(
        f"latency: {lat.batches} batches, p50 {lat.p(50) * 1000:.0f} ms, "
        f"p99 {lat.p(99) * 1000:.0f} ms, max {max(lat.latencies, default=math.nan) * 1000:.0f} ms"
    )
    return lat


def _run_publisher(broker_url: str, opts: Options) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "benchmarks.rules_engine", "publish",
        "--url", broker_url, "--client-id", f"bench-pub-{secrets.token_hex(3)}",
        "--rate", repr(opts.latency_rate), "--per-message", str(opts.readings_per_message),
        "--duration", repr(opts.latency_seconds),
        "--exchanges", str(opts.exchanges), "--partners", str(opts.partners),
    ]  # fmt: skip
    return services.run_json(cmd, what="publisher", env=services.clean_env())


def _wait_settled(
    url: str,
    listener: postgres.Listener,
    readings: int,
    ingest: services.Service,
    rules: services.Service,
) -> None:
    """Until every reading is stored and the engine has nothing left to do (and has announced
    windows after the last batch)."""
    deadline = time.monotonic() + 120
    while listener.total < readings:
        if time.monotonic() > deadline or not ingest.alive():
            raise BenchError(f"ingest stored {listener.total} of {readings}:\n{ingest.log_tail()}")
        time.sleep(0.1)
    while True:
        pending = postgres.fetch(
            url,
            "SELECT (SELECT count(*) FROM dirty_windows) + "
            "(SELECT count(*) FROM dirty_subjects) AS n",
        )[0]["n"]
        events = list(listener.events)
        last_dirty = max((t for t, c, _ in events if c == "symbiont_dirty"), default=0.0)
        last_windows = max((t for t, c, _ in events if c == "symbiont_windows"), default=0.0)
        if pending == 0 and last_windows > last_dirty:
            time.sleep(0.5)  # let the last notifications arrive
            return
        if time.monotonic() > deadline or not rules.alive():
            raise BenchError(f"the rules engine did not settle:\n{rules.log_tail()}")
        time.sleep(0.2)


def _latencies(url: str, net: Network, events: list[tuple[float, str, str]]) -> dict[str, Any]:
    """Pair batches with the rules transactions that made their exchange windows (see the
    module docstring)."""
    tz = ZoneInfo(net.timezone)
    meter_window = net.meter_windows()
    exchanges_of: dict[str, list[tuple[str, timedelta]]] = defaultdict(list)
    for ex in net.exchanges:
        for mid in (*ex.sent, *ex.received):
            exchanges_of[mid].append((ex.id, ex.window))
    dirty = [(t, int(p or 0)) for t, c, p in events if c == "symbiont_dirty"]
    windows = [(t, int(p or 0)) for t, c, p in events if c == "symbiont_windows"]
    batches = postgres.fetch(
        url,
        "SELECT received_at, count(*) AS n FROM readings GROUP BY received_at ORDER BY 1",
    )
    inserted = [(t, n) for t, n in dirty if n > 0]
    if len(batches) != len(inserted) or any(
        b["n"] != n for b, (_, n) in zip(batches, inserted, strict=True)
    ):
        raise BenchError(
            f"{len(batches)} batches stored but {len(inserted)} notifications with readings"
        )
    committed = {b["received_at"]: t for b, (t, _) in zip(batches, inserted, strict=True)}
    newest = postgres.fetch(
        url, "SELECT received_at, meter_id, max(ts) AS ts FROM readings GROUP BY 1, 2"
    )
    trace = postgres.fetch(
        url,
        "SELECT tbl, subject, window_start, last_ts, at, xid FROM bench_trace ORDER BY at, xid",
    )
    # Logged stage-2 transactions in commit order ↔ windows notifications with a payload.
    xw_xids: list[str] = []
    xw_rows: dict[str, int] = defaultdict(int)
    for r in trace:
        if r["tbl"] == "exchange":
            if r["xid"] not in xw_rows:
                xw_xids.append(r["xid"])
            xw_rows[r["xid"]] += 1
    with_rows = [(t, n) for t, n in windows if n > 0]
    if len(with_rows) != len(xw_xids) or any(
        xw_rows[x] != n for x, (_, n) in zip(xw_xids, with_rows, strict=True)
    ):
        raise BenchError(
            f"{len(xw_xids)} logged exchange-window transactions but {len(with_rows)} "
            "windows notifications with a payload"
        )
    xid_commit = {x: t for x, (t, _) in zip(xw_xids, with_rows, strict=True)}
    meter_log: dict[tuple[str, datetime], list[tuple[datetime, datetime]]] = defaultdict(list)
    ex_log: dict[tuple[str, datetime], list[tuple[datetime, str]]] = defaultdict(list)
    for r in trace:
        key = (r["subject"], r["window_start"])
        if r["tbl"] == "meter":
            if r["last_ts"] is not None:
                meter_log[key].append((r["at"], r["last_ts"]))
        else:
            ex_log[key].append((r["at"], r["xid"]))
    done: dict[datetime, float] = {}
    missing_batches: set[datetime] = set()
    for r in newest:
        batch, mid, tau = r["received_at"], r["meter_id"], r["ts"]
        ws = window_bounds(tau, meter_window[mid], tz)[0]
        seen = next((at for at, last in meter_log.get((mid, ws), []) if last >= tau), None)
        if seen is None:
            missing_batches.add(batch)
            continue
        for ex_id, ex_window in exchanges_of.get(mid, []):
            xws = window_bounds(tau, ex_window, tz)[0]
            entries = ex_log.get((ex_id, xws), [])
            k = bisect.bisect_right([at for at, _ in entries], seen)
            if k >= len(entries):
                missing_batches.add(batch)
                continue
            at_commit = xid_commit[entries[k][1]]
            done[batch] = max(done.get(batch, 0.0), at_commit)
    latencies: list[float] = []
    naive: list[float] = []
    window_times = [t for t, _ in windows]
    phases: list[tuple[float, float]] = []  # (batch commit from the first, its latency)
    first_commit = min(committed.values(), default=0.0)
    for batch, t in committed.items():
        k = bisect.bisect_right(window_times, t)
        if k < len(window_times):
            naive.append(window_times[k] - t)
        if batch in done and batch not in missing_batches:
            latencies.append(done[batch] - t)
            phases.append((t - first_commit, done[batch] - t))
    by_phase = [
        (label, len(vals), reports.percentile(vals, 50), reports.percentile(vals, 99))
        for label, vals in reports.by_interval(phases)
    ]
    return {
        "stored": sum(b["n"] for b in batches),
        "batches": len(batches),
        "cycles": len(xw_xids),
        "latencies": latencies,
        "naive": naive,
        "missing": len(missing_batches),
        "by_phase": by_phase,
    }


# -------------------------------------------------------------------------------- running


@dataclass
class Report(reports.RunReport):
    backfill: BackfillResult | None = None
    latency: LatencyResult | None = None


def run(opts: Options) -> Report:
    report = Report(code=reports.code_version(*CODE_PATHS))
    with reports.timed_run(report):
        workdir = services.make_workdir("rbench")
        dbs = postgres.Databases(
            parse_network(bench_network(opts.exchanges, opts.partners)), "rbench"
        )
        try:
            if opts.backfill:
                report.backfill = backfill_case(dbs, opts, workdir)
            if opts.latency_seconds > 0:
                report.latency = latency_case(dbs, opts, workdir)
        finally:
            dbs.close()
    return report


# -------------------------------------------------------------------------------- output


def _ms(value: float) -> str:
    return f"{value * 1000:,.0f} ms"


def others_in(run: dict[str, Any]) -> float | None:
    """CPU seconds the rest of the machine spent during a timed engine run."""
    return proc.others(run["machine_cpu_s"], run["cpu_s"], run["backend_cpu_s"])


def backfill_lines(b: BackfillResult, opts: Options, n_meters: int) -> list[str]:
    e = b.engine
    c = e["counts"]
    alerts = e["alerts"]
    alert_text = (
        ", ".join(f"{a['rule']} {a['status']} {a['n']}" for a in alerts) if alerts else "none"
    )
    statuses = ", ".join(f"{k} {v:,}" for k, v in sorted(e["statuses"].items()))
    verdict = "met" if e["wall_s"] < TARGET_BACKFILL_S else "not met"
    loader = (
        "binary COPY into `readings` + dirty windows marked as ingest marks them"
        if b.load.loader == "copy"
        else "`cli.backfill.write_simulation` (the ingest batch writer)"
    )
    base = []
    if b.baseline is not None:
        same = b.baseline_digest == b.digest
        bl = b.baseline
        base = [
            f"- Baseline: the engine (`core`, `ingest`, `rules`) of commit {b.baseline_rev}, "
            f"timed the same way on a copy of the same loaded database: **{bl['wall_s']:.1f} s** "
            f"(stage 1 {bl['stage1_s']:.1f} s / stage 2 {bl['stage2_s']:.1f} s; CPU s engine / "
            f"backend / everything else {secs(bl['cpu_s'])} / {secs(bl['backend_cpu_s'])} / "
            f"{secs(others_in(bl))}; peak RSS {mib(bl['peak_rss_kib'])}). What the two "
            "produced (md5 of meter windows, exchange windows, alerts and alert events, "
            f"computation times left out) is **{'identical' if same else 'different'}**.",
        ]
    return [
        f"**Backfill from scratch** — {opts.exchanges} exchanges, {n_meters} meters, "
        f"{opts.start:%Y-%m-%d} – {opts.end:%Y-%m-%d} UTC ({opts.days} days, "
        f"{b.windows_expected} hourly windows in {TIMEZONE}): {b.readings_in_db:,} readings, "
        f"{b.load.dirty:,} dirty (meter, window) pairs, loaded in {b.load.seconds:.1f} s "
        f"({loader}; not timed), then `VACUUM ANALYZE` and `CHECKPOINT`.",
        "",
        "| Timed: `Engine.process_pending(conn, now=2026-11-01T00:00Z)` | |",
        "|---|---:|",
        f"| Wall time | **{e['wall_s']:.1f} s** |",
        f"| Stage 1 (meter windows) / stage 2 (exchange windows, alerts) | "
        f"{e['stage1_s']:.1f} s in {e['stage1_passes']} passes / {e['stage2_s']:.1f} s in "
        f"{e['stage2_passes']} passes |",
        f"| Meter windows stored (written, with neighbours recomputed) | {c['meter_windows']:,} "
        f"({e['stats']['meter_windows']:,}) |",
        f"| Exchange windows stored (written) | {c['exchange_windows']:,} "
        f"({e['stats']['exchange_windows']:,}) — {statuses} |",
        f"| Alerts | {alert_text} |",
        f"| Left dirty afterwards | {c['dirty_windows']} windows, {c['dirty_subjects']} subjects |",
        f"| Engine process peak RSS (`ru_maxrss`) | {mib(e['peak_rss_kib'])} "
        f"({mib(e['rss_before_kib'])} before the run) |",
        f"| CPU s: engine process / its PostgreSQL backend / everything else on the machine "
        f"(PostgreSQL's background writers and autovacuum, other work) | {secs(e['cpu_s'])} / "
        f"{secs(e['backend_cpu_s'])} / {secs(others_in(e))} |",
        "",
        f"- Target: a month for 100 exchanges reconciled from scratch in under "
        f"{TARGET_BACKFILL_S:.0f} s: **{verdict}** ({e['wall_s']:.1f} s).",
        *base,
    ]


def latency_lines(lat: LatencyResult, opts: Options) -> list[str]:
    verdict = "met" if lat.p(99) < TARGET_P99_S else "not met"
    phases = "; ".join(
        f"{name}: {n} batches, p50 {_ms(p50)}, p99 {_ms(p99)}" for name, n, p50, p99 in lat.by_phase
    )
    alerts = ", ".join(f"{k} {v}" for k, v in lat.alerts.items()) or "none"
    if lat.once_s is not None:
        prewarm = (
            f"Before they start, `symbiont rules --once` runs once ({lat.once_s:.1f} s; it issued "
            f"{lat.statements_before} statements for the previous month, whose grace period is "
            "over), so that the service does not issue them, PDFs included, during the run "
            f"(statements issued during the run: {lat.statements_during}). "
        )
    else:
        prewarm = (
            "The previous month's statements are due (its grace period is over) and the service "
            f"issued {lat.statements_during} of them, PDFs included, during the run. "
        )
    return [
        f"**Live latency** — `symbiont ingest` and `symbiont rules` (one worker) as "
        f"subprocesses, private Mosquitto, same network (freshly applied, no readings yet). "
        f"{prewarm}A publisher process aimed at "
        f"{lat.target_rate:,.0f} readings/s for {opts.latency_seconds:g} s "
        f"({opts.readings_per_message} readings per message, "
        f"{lat.target_rate / opts.readings_per_message:,.0f} messages/s, QoS 1, round-robin "
        f"over the meters, timestamps up to now) and achieved {lat.achieved_rate:,.0f} "
        f"readings/s (at worst {lat.max_behind_s * 1000:.0f} ms behind schedule); "
        f"{lat.stored:,} of {lat.readings:,} readings stored in {lat.batches:,} batches; "
        f"the engine wrote exchange windows in {lat.cycles:,} stage-2 transactions.",
        "",
        "| Committed batch → its exchange windows committed | p50 | p99 | max | batches |",
        "|---|---:|---:|---:|---:|",
        f"| Exact pairing (trace triggers, see below) | {_ms(lat.p(50))} | "
        f"**{_ms(lat.p(99))}** | {_ms(max(lat.latencies, default=math.nan))} | "
        f"{len(lat.latencies):,} |",
        f"| First `symbiont_windows` after the batch (optimistic) | {_ms(lat.p(50, True))} | "
        f"{_ms(lat.p(99, True))} | {_ms(max(lat.naive, default=math.nan))} | "
        f"{len(lat.naive):,} |",
        "",
        f"- Target: p99 under {TARGET_P99_S:g} s at {opts.latency_rate:,.0f} readings/s: "
        f"**{verdict}** (p99 {_ms(lat.p(99))}). Batches never reflected: {lat.missing}.",
        f"- Over the run (by batch commit time): {phases}.",
        f"- CPU s over the {lat.seconds:.0f} s from the first publish to settled: rules "
        f"{secs(lat.rules_cpu_s)}, its PostgreSQL backend {secs(lat.rules_backend_cpu_s)}, ingest "
        f"{secs(lat.ingest_cpu_s)}, its PostgreSQL writer backend {secs(lat.ingest_backend_cpu_s)} "
        "(whole life), "
        f"Mosquitto {secs(lat.broker_cpu_s)}, publisher {secs(lat.publisher_cpu_s)} (whole life); "
        f"whole machine {secs(lat.machine_cpu_s)}, of which everything else (PostgreSQL's "
        f"background processes, other work) {secs(lat.others_cpu_s)}. Peak RSS (VmHWM): rules "
        f"{mib(lat.rules_peak_kib)}, ingest {mib(lat.ingest_peak_kib)}. Alerts raised during "
        f"the run: {alerts}.",
    ]


METHOD = (
    "Method (details in `benchmarks/rules_engine.py`): the latency of a batch runs from its "
    "commit to the commit of the rules transaction that wrote the last exchange window "
    "covering its readings (that transaction also replays the alert rules over those "
    "windows). Both ends are arrival times of NOTIFYs on one listener connection "
    "(`symbiont_dirty`, sent by ingest per committed batch; `symbiont_windows`, sent by the "
    "engine per stage-2 transaction). Which transaction first covered a batch is found "
    "through statement-level triggers added to the benchmark database only, which log every "
    "`meter_windows`/`exchange_windows` row written with `clock_timestamp()` and the "
    "transaction id: per meter of the batch, the first meter window holding its newest "
    "reading τ with `last_ts ≥ τ`, then the first exchange window holding τ written after it. "
    "The second row pairs every batch with the first `symbiont_windows` after it, which is "
    "optimistic for batches that commit while the engine computes a cycle that claimed its "
    "work before them. Every meter receives 25 readings/s here (5,000 readings/s over 200 "
    "meters, one message per meter every 4 s), so each stage-1 computation of a meter re-reads "
    "all its readings in the current hour and the one before (a total register's window shares "
    "its edges with its neighbours): up to 1,500 after the minute this run lasts."
)


def markdown(report: Report, opts: Options, info: dict[str, str], n_meters: int) -> str:
    out = [
        *reports.heading(SECTION, opts.command, report.code, info, ON_MACHINE, broker=True),
        "",
        f"Network (built by `benchmarks.rules_engine.bench_network`): {opts.partners} "
        f"partners, {opts.exchanges} heat exchanges with hourly windows in {TIMEZONE}, each "
        "with one `total` sent meter (MWh) and one received meter (`rate` in MW for odd, "
        "`total` in MWh for even exchanges), all reading every 60 s with 1 % uncertainty; "
        "losses 0–3 %, nominal flows 1–25.75 MW; no balances (so no network reconciliations). "
        f"Simulation seed {opts.seed}; "
        + (
            "faults injected into the month: " + ", ".join(f"`{f}`" for f in FAULTS) + "."
            if opts.faults
            else "no faults injected."
        ),
        "",
    ]
    if report.backfill is not None:
        out += [*backfill_lines(report.backfill, opts, n_meters), ""]
    if report.latency is not None:
        out += [*latency_lines(report.latency, opts), "", METHOD, ""]
    out.append(report.footer())
    return "\n".join(out) + "\n"


def main(opts: Options) -> Report:
    info = reports.machine()
    report = run(opts)
    reports.publish(markdown(report, opts, info, 2 * opts.exchanges), opts.write, SECTION)
    return report


# ---------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Options()
    add_month_arguments(p, d)
    p.add_argument("--no-backfill", action="store_true", help="skip the backfill run")
    p.add_argument(
        "--latency-seconds",
        type=float,
        default=d.latency_seconds,
        help="length of the live run (0 skips; default %(default)s)",
    )
    p.add_argument(
        "--latency-rate",
        type=float,
        default=d.latency_rate,
        help="readings/s in the live run (default %(default)s)",
    )
    p.add_argument(
        "--readings-per-message",
        type=int,
        default=d.readings_per_message,
        help="readings per message in the live run (default %(default)s)",
    )
    arguments.add_baseline_arguments(
        p,
        "also time the engine (core, ingest, rules) of this git revision on a copy of the "
        "same loaded database, and compare what both produced",
        "record a py-spy flame graph (SVG) of the timed engine run",
    )
    p.add_argument(
        "--statements-during-run",
        action="store_true",
        help="do not issue the previous month's statements before the live run (the service "
        "then issues them during it)",
    )


def cli(argv: Sequence[str] | None = None) -> int:
    """The helper roles run as processes of their own: ``engine`` (the timed backfill run)
    and ``publish`` (the live publisher); each prints one JSON line."""
    roles: dict[str, services.Role] = {
        "engine": (engine_arguments, lambda a: asyncio.run(engine_run(a.database_url, a.now))),
        "publish": (publish_arguments, run_publish),
    }
    return services.role_main("python -m benchmarks.rules_engine", roles, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
