"""Rules engine under sparse load: many meters, each sending one reading a minute.

``python -m benchmarks.run --only rules-sparse --rate 2500 --seconds 180 [--workers 2]
[--baseline REV]``

The live case the dense rules benchmark (``benchmarks/rules_engine.py``) does not cover: N
readings/s come from 60·N meters (250/s → 15,000 meters, 2,500/s → 150,000), one reading per
MQTT message (QoS 1), each meter sending one reading a minute timestamped "now". So every
reading lands in a window of its own meter that the engine has not seen since a minute ago,
and the engine's cost is per reading rather than per batch of many readings of one meter.

The stack is started here: a private Mosquitto, ``symbiont ingest`` and ``symbiont rules``
(``--workers`` processes, each ``--worker-id`` of its own) as subprocesses, PostgreSQL in a
fresh database with the network ``rules_engine.bench_network`` builds (30·N exchanges, each a
``total`` sent meter and a ``total`` or ``rate`` received meter reading every 60 s, hourly
windows, 20 partners). Before the run, not measured:

1. the network is applied. Every process runs with ``SYMBIONT_STATEMENT_GRACE`` at
   ``STATEMENT_GRACE`` (90 days), so no month's statements are due: the previous month has no
   data here, so its statements would be held and the service would try them again every
   minute of the run, for every partner;
2. each meter gets ``--history-minutes`` of history (one reading a minute, at its own second
   of the minute, the newest less than a minute old), copied into ``readings`` and marked dirty
   as ingest marks them, and ``symbiont rules --once`` computes their windows: the run updates
   windows that exist, as it does in steady state. That takes minutes at 150,000 meters, so
   the network judges its meters stale after a day (``STALE_AFTER_S``) rather than after three
   minutes: otherwise every meter would be alerted stale, and resolved, during the run. The
   time-driven check still runs its queries;
3. ``VACUUM ANALYZE``; the services start.

``--once`` runs this checkout's engine, also with ``--baseline REV``: then only the live
``symbiont rules`` processes run the code of revision REV (its ``cli``, ``core``, ``ingest``,
``rules``, ``notify`` and ``statements``, exported with ``git archive`` and put first on the
path; ``symbiont ingest`` is this checkout's), against this checkout's schema.
For that engine the applied network is stored as its model reads it (without a meter's
``sparkplug`` source, which it does not know), and ``dirty_subjects`` gets a trigger keeping a
re-marked subject's first ``marked_at`` (as this checkout's engine does itself; the older one
set it anew at each mark, which would make its backlog look younger than it is). The engines
claim work by window start, not by ``marked_at``, so the trigger changes nothing they do.

The publisher (``python -m benchmarks.rules_sparse publish``, a process of its own) sends
message n at start + n/N to meter n mod 60·N, with the minimal QoS 1 client
``benchmarks.clients.QoS1Publisher`` (far cheaper than paho on the shared cores), writing
the messages that fell due together every 2 ms at most.

Measured from the first publish until nothing is pending (or ``--drain-timeout`` after the
last publish):

- CPU seconds per reading published, from /proc/<pid>/stat: the rules process(es), their
  PostgreSQL backends (connections named ``symbiont-rules:<worker>…``), ingest and its
  backends (``symbiont-ingest:…``), the broker, the publisher (its whole life), the other
  backends of the database (the rules service's listener and notifier), and the machine;
- the age of the oldest pending change, sampled every ``--sample-interval`` s by a connection
  of its own: now − min(``marked_at``) over ``dirty_windows`` and ``dirty_subjects`` (0 when
  nothing is pending), with the pending counts; p50, p99 and max over the publishing span;
- the drain time: from the last reading published to the first sample at which every reading
  is stored (counted from ingest's ``symbiont_dirty`` notifications) and nothing is pending;
- whether the publisher kept up: achieved rate, at worst how far behind its schedule.

Each run is one row of the section in BENCHMARKS.md, keyed by engine (this checkout or the
baseline revision), rate and workers: a rerun replaces only its own row, so the matrix
(rates × engines × workers) builds up one run at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.clients import QoS1Publisher  # noqa: E402
from benchmarks.harness import BenchError, log, postgres, proc, reports, services  # noqa: E402
from benchmarks.harness.reports import mib  # noqa: E402
from benchmarks.rules_engine import TIMEZONE, bench_network, window_starts  # noqa: E402
from core.db import asyncpg_dsn  # noqa: E402
from core.network import parse_network  # noqa: E402
from core.windows import WindowCutter  # noqa: E402
from ingest.writer import MARK_DIRTY  # noqa: E402
from tests.services import Mosquitto  # noqa: E402

SECTION = "## Rules engine under sparse load (issue 14)"
ON_MACHINE = "Everything (PostgreSQL, broker, services, publisher, harness) on this machine."
PARTNERS = 20
WORKER = "bench-sparse"  # the rules workers are bench-sparse-1, bench-sparse-2 …
SAMPLER = "bench-sparse-sampler"  # application_name of the sampling connection
BASELINE_PACKAGES = ("cli", "core", "ingest", "rules", "notify", "statements")
# Meters are judged stale after a day instead of three intervals: the set-up before the run
# (the history's ``--once`` above all) takes minutes at 150,000 meters, and every meter would
# be alerted stale, then resolved, during the run. The checks still run (same queries).
STALE_AFTER_S = 86_400.0
PACE_TICK_S = 0.002
CODE_PATHS = ("rules", "core", "ingest", "notify", "statements", "benchmarks")
STATEMENT_GRACE = "90d"  # no month's statements are due during the run (see above)

# Keeps a re-marked subject's first mark (the older engine set marked_at anew on each mark).
_KEEP_FIRST_MARK = """
CREATE FUNCTION bench_keep_first_mark() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.marked_at := OLD.marked_at;
    RETURN NEW;
END $$;
CREATE TRIGGER bench_keep_first_mark BEFORE UPDATE ON dirty_subjects
    FOR EACH ROW EXECUTE FUNCTION bench_keep_first_mark();
"""

# The applied network as an older engine's model reads it: without the meters' Sparkplug B
# source (added since; this network uses none).
_FOR_OLDER_MODEL = """
UPDATE network SET document = jsonb_set(document, '{meters}',
    (SELECT jsonb_agg(m - 'sparkplug') FROM jsonb_array_elements(document -> 'meters') AS m))
"""

_PENDING = """
SELECT extract(epoch FROM clock_timestamp() - least(w.m, s.m))::float8 AS age,
       w.n AS windows, s.n AS subjects
FROM (SELECT min(marked_at) AS m, count(*) AS n FROM dirty_windows) w,
     (SELECT min(marked_at) AS m, count(*) AS n FROM dirty_subjects) s
"""


# --------------------------------------------------------------------------------- options


@dataclass
class Options:
    rate: float = 250.0  # readings/s; 60 × rate meters
    seconds: float = 180.0  # of publishing
    workers: int = 1
    baseline: str | None = None  # git revision whose engine the rules workers run
    history_minutes: int = 5
    sample_interval: float = 0.5
    drain_timeout: float = 600.0
    quiet_wait: float = 10.0
    write: Path | None = ROOT / "BENCHMARKS.md"
    command: str = ""

    @property
    def meters(self) -> int:
        return 2 * self.exchanges

    @property
    def exchanges(self) -> int:
        return max(1, round(30 * self.rate))


DESCRIPTION = (
    "Rules engine under sparse load: one reading per message, every meter once a minute "
    "(benchmarks/rules_sparse.py)."
)
QUICK = {"rate": 50.0, "seconds": 10.0, "history_minutes": 3, "quiet_wait": 3.0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Options()
    p.add_argument(
        "--rate",
        type=float,
        default=d.rate,
        help="readings/s, from 60 × RATE meters sending one a minute (default %(default)s)",
    )
    p.add_argument(
        "--seconds", type=float, default=d.seconds, help="publishing time (default %(default)s)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=d.workers,
        help="symbiont rules processes (default %(default)s)",
    )
    p.add_argument(
        "--baseline",
        default=None,
        metavar="REV",
        help="the rules workers run the engine (core, ingest, rules, notify, statements) of "
        "this git revision instead of this checkout's; a row of its own in the report",
    )
    p.add_argument(
        "--history-minutes",
        type=int,
        default=d.history_minutes,
        help="minutes of readings each meter has before the run (default %(default)s)",
    )
    p.add_argument(
        "--sample-interval",
        type=float,
        default=d.sample_interval,
        help="seconds between samples of the pending work (default %(default)s)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=d.drain_timeout,
        help="give up waiting for the engine this many seconds after the last publish "
        "(default %(default)s)",
    )


# ------------------------------------------------------------------------------ the meters


@dataclass(frozen=True)
class MeterPlan:
    """What the history and the publisher send: per meter (in publishing order) its topic,
    whether it is a register (``total``) and its flow; registers rise at the flow from 0 at
    ``t_ref``, plus ``base``; rates waver by 0.3 % around the flow (a rate meter whose readings
    in a window are all equal is stuck, and the ``meter_stuck`` rule would fire)."""

    ids: list[str]
    topics: list[bytes]
    total: list[bool]
    flow: list[float]
    base: list[float]

    def value(self, i: int, t: float, t_ref: float) -> float:
        if self.total[i]:
            return self.base[i] + self.flow[i] * (t - t_ref) / 3600.0
        return self.flow[i] * (1.0 + 0.003 * math.sin(t))


def sparse_network(exchanges: int) -> dict[str, Any]:
    """``rules_engine.bench_network`` with ``exchanges`` exchanges between ``PARTNERS``
    partners, its meters judged stale only after ``STALE_AFTER_S``."""
    doc = bench_network(exchanges, PARTNERS)
    doc["network"] = "bench-rules-sparse"
    stale = {"meter_stale": {"after_s": STALE_AFTER_S}}
    doc["meter_rules"] = {meter["id"]: stale for meter in doc["meters"]}
    return doc


def meter_plan(exchanges: int) -> MeterPlan:
    doc = sparse_network(exchanges)
    flows: dict[str, float] = {}
    for ex in doc["exchanges"]:
        for mid in ex["sent"]:
            flows[mid] = ex["nominal"]
        for mid in ex["received"]:
            flows[mid] = ex["nominal"] * (1 - ex["loss"])
    meters = doc["meters"]
    return MeterPlan(
        ids=[m["id"] for m in meters],
        topics=[f"symbiont/readings/{m['partner']}/{m['id']}".encode() for m in meters],
        total=[m["reading"] == "total" for m in meters],
        flow=[flows[m["id"]] for m in meters],
        base=[10_000.0 + 10.0 * (i % 1000) for i in range(len(meters))],
    )


def phase(i: int, n: int) -> float:
    """Meter i's second of the minute: the publisher reaches it i/n of a minute after it
    starts, and its history is on the same beat."""
    return 60.0 * i / n


async def load_history(
    url: str, plan: MeterPlan, minutes: int, until: float, t_ref: float
) -> tuple[int, int]:
    """``minutes`` readings per meter, one a minute, the newest in [until − 60 s, until), copied
    into ``readings``; the (meter, window) pairs marked dirty as ingest marks them. Returns
    (readings, dirty pairs)."""
    n = len(plan.ids)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        first = until - 60.0 * (minutes + 1)
        for at in (first, until):
            await conn.execute(
                "SELECT symbiont_ensure_partition($1)", datetime.fromtimestamp(at, UTC)
            )
        records: list[tuple[str, datetime, float]] = []
        stamps: list[float] = []
        owners: list[str] = []
        for i, mid in enumerate(plan.ids):
            for k in range(minutes):
                t = round(until - 60.0 * (k + 1) + phase(i, n), 3)
                records.append((mid, datetime.fromtimestamp(t, UTC), plan.value(i, t, t_ref)))
                stamps.append(t)
                owners.append(mid)
        await conn.copy_records_to_table(
            "readings", records=records, columns=["meter_id", "ts", "value"]
        )
        cutter = WindowCutter(ZoneInfo(TIMEZONE))
        starts = window_starts(cutter, np.array(stamps, dtype=np.float64), 3600.0)
        pairs = sorted({(mid, float(s)) for mid, s in zip(owners, starts, strict=True)})
        await conn.execute(
            MARK_DIRTY,
            [mid for mid, _ in pairs],
            [datetime.fromtimestamp(s, UTC) for _, s in pairs],
        )
    finally:
        await conn.close()
    return len(records), len(pairs)


# -------------------------------------------------------------------------- the publisher


def publish_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True)
    p.add_argument("--client-id", required=True)
    p.add_argument("--rate", type=float, required=True, help="readings (messages) per second")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--exchanges", type=int, required=True)
    p.add_argument("--t-ref", type=float, required=True, help="when the registers were at base")
    p.add_argument("--start-at", type=float, required=True, help="when to start (epoch s)")


def run_publish(args: argparse.Namespace) -> dict[str, Any]:
    """Message n at start + n/rate to meter n mod meters, one reading timestamped now; every
    2 ms at most, the messages that fell due are written together."""
    plan = meter_plan(args.exchanges)
    n_meters = len(plan.ids)
    rate = args.rate
    total = int(rate * args.seconds)
    t_ref = args.t_ref
    topics, value = plan.topics, plan.value
    pub = QoS1Publisher(args.url, args.client_id, window=60_000)
    behind_max = 0.0
    published = 0
    late = time.time() - args.start_at  # > 0: it was not ready in time
    time.sleep(max(0.0, -late))
    t0 = time.time()
    first = last = t0
    try:
        while published < total:
            tick = time.time()
            due = min(total, int((tick - t0) * rate) + 1)
            if due > published:
                at = time.time()
                chunk = []
                for k in range(published, due):
                    i = k % n_meters
                    payload = f'{{"ts":{at:.3f},"value":{value(i, at, t_ref):.6f}}}'
                    chunk.append((topics[i], payload.encode()))
                behind_max = max(behind_max, at - (t0 + published / rate))
                pub.publish(chunk)
                if published == 0:
                    first = at
                last = at
                published = due
            sleep = max(t0 + published / rate, tick + PACE_TICK_S) - time.time()
            if sleep > 0:
                time.sleep(sleep)
        acked_all = pub.wait_acked(120)
    finally:
        pub.close()
    span = last - first
    return {
        "published": published,
        "acked": pub.acked,
        "acked_all": acked_all,
        "first_at": first,
        "last_at": last,
        "achieved_rate": (published - 1) / span if span > 0 else 0.0,
        "max_behind_s": behind_max,
        "late_start_s": max(0.0, late),
        "cpu_s": proc.rusage_cpu(),
    }


# ---------------------------------------------------------------------------- the sampler


class Sampler:
    """In a thread of its own, on one connection (``SAMPLER``): counts the readings ingest
    committed (``symbiont_dirty`` notifications) and samples the pending work every
    ``interval`` s (every 0.1 s once ``expect`` was called and less than 1,000 windows and
    subjects are pending); notes when every expected
    reading was stored and nothing was pending (``drained_at``)."""

    def __init__(self, url: str, interval: float) -> None:
        self.dsn = asyncpg_dsn(url)
        self.interval = interval
        self.samples: list[tuple[float, float, int, int]] = []  # (at, age s, windows, subjects)
        self.stored = 0
        self.expected: int | None = None
        self.drained_at: float | None = None
        self.drained = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(15)
        if self._error is not None:
            raise BenchError(f"sampler failed: {self._error}")

    def expect(self, readings: int) -> None:
        self.expected = readings

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self.stored += int(payload or 0)

    async def _main(self) -> None:
        conn = await asyncpg.connect(self.dsn, server_settings={"application_name": SAMPLER})
        try:
            await conn.add_listener(postgres.DIRTY, self._notified)
            self._ready.set()
            while not self._stop.is_set():
                began = time.time()
                stored = self.stored
                row = await conn.fetchrow(_PENDING)
                at = time.time()
                assert row is not None
                age = max(0.0, row["age"]) if row["age"] is not None else 0.0
                self.samples.append((at, age, row["windows"], row["subjects"]))
                expected = self.expected
                if (
                    expected is not None
                    and self.drained_at is None
                    and stored >= expected
                    and row["windows"] == 0
                    and row["subjects"] == 0
                ):
                    self.drained_at = at
                    self.drained.set()
                # every 0.1 s once the publisher is done and little is left (the drain's end
                # is what is timed then); a large backlog is sampled at the usual interval, as
                # counting it costs PostgreSQL CPU the engine could use
                small = row["windows"] + row["subjects"] < 1000
                step = 0.1 if expected is not None and small else self.interval
                await asyncio.sleep(max(0.0, began + step - time.time()))
        finally:
            await conn.close()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            self.drained.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)
        if self._error is not None:
            raise BenchError(f"sampler failed: {self._error}")


# -------------------------------------------------------------------------------- the run


@dataclass
class Result:
    engine: str  # "current" or the baseline's short hash
    code: str  # the code measured (this checkout's commit, or the baseline's)
    meters: int
    exchanges: int
    history_readings: int = 0
    statements: int = 0  # issued during the run
    once_history_s: float = 0.0
    pub: dict[str, Any] = field(default_factory=dict)
    stored: int = 0
    samples: list[tuple[float, float, int, int]] = field(default_factory=list)
    drained_at: float | None = None
    cpu: dict[str, Any] = field(default_factory=dict)
    span_s: float = 0.0
    rules_peak_kib: list[int | None] = field(default_factory=list)
    ingest_peak_kib: int | None = None
    alerts: dict[str, int] = field(default_factory=dict)
    windows_failed: int = 0
    report: reports.RunReport = field(default_factory=reports.RunReport)

    @property
    def readings(self) -> int:
        return int(self.pub.get("published", 0))

    def ages(self) -> list[float]:
        """The samples' ages over the publishing span."""
        first, last = self.pub["first_at"], self.pub["last_at"]
        return [age for at, age, _, _ in self.samples if first <= at <= last]

    @property
    def drain_s(self) -> float | None:
        return None if self.drained_at is None else self.drained_at - float(self.pub["last_at"])

    def per_reading_ms(self, *keys: str) -> float | None:
        spent = proc.total([self.cpu.get(k) for k in keys])
        if spent is None or not self.readings:
            return None
        return 1000.0 * spent / self.readings


def run(opts: Options) -> Result:
    if opts.workers < 1:
        raise BenchError("--workers must be at least 1")
    code_now = reports.code_version(*CODE_PATHS)
    result = Result(
        engine=services.describe(opts.baseline) if opts.baseline else "current",
        code=f"commit {services.describe(opts.baseline)}" if opts.baseline else code_now,
        meters=opts.meters,
        exchanges=opts.exchanges,
    )
    result.report.code = code_now
    with reports.timed_run(result.report):
        workdir = services.make_workdir("rsparse")
        baseline_code = (
            services.export_code(opts.baseline, workdir, BASELINE_PACKAGES)
            if opts.baseline
            else None
        )
        proc.wait_quiet(opts.quiet_wait)
        log(f"network: {opts.exchanges:,} exchanges, {opts.meters:,} meters")
        net = parse_network(sparse_network(opts.exchanges))
        dbs = postgres.Databases(net, "rsparse")
        try:
            url = dbs.fresh("live")
            if baseline_code is not None:
                postgres.execute(url, _FOR_OLDER_MODEL, _KEEP_FIRST_MARK)
            with Mosquitto(autosave_interval=1) as broker:
                _live(url, broker, opts, result, workdir, baseline_code)
        finally:
            dbs.close()
    return result


def _live(
    url: str,
    broker: Mosquitto,
    opts: Options,
    result: Result,
    workdir: Path,
    baseline_code: Path | None,
) -> None:
    env = {**services.service_env(url, broker.url), "SYMBIONT_STATEMENT_GRACE": STATEMENT_GRACE}
    plan = meter_plan(opts.exchanges)
    until = time.time()
    t_ref = until - 60.0 * (opts.history_minutes + 1)
    if opts.history_minutes > 0:
        result.history_readings, dirty = asyncio.run(
            load_history(url, plan, opts.history_minutes, until, t_ref)
        )
        log(f"history: {result.history_readings:,} readings, {dirty:,} dirty windows")
    result.once_history_s = services.rules_once(env, timeout=3600)
    log(f"symbiont rules --once computed the history in {result.once_history_s:.1f} s")
    postgres.execute(url, "VACUUM ANALYZE")
    alerts_before = _alerts(url)
    statements_before = _count(url, "statements")
    ingest_id = f"bench-ingest-{secrets.token_hex(3)}"
    ingest = services.ingest_service(env, ingest_id, workdir / "ingest.log")
    workers = [
        services.rules_service(
            env, f"{WORKER}-{k + 1}", workdir / f"rules-{k + 1}.log", code=baseline_code
        )
        for k in range(opts.workers)
    ]
    sampler = Sampler(url, opts.sample_interval)
    try:
        for service in (ingest, *workers):
            service.start()
        for service in (ingest, *workers):
            service.wait_ready(120)
        sampler.start()

        def cpu_now() -> proc.Snapshot:
            pids = {"ingest": ingest.pid, "broker": broker.pid}
            pids.update({f"rules-{k}": w.pid for k, w in enumerate(workers)})
            return proc.snapshot(pids, backends=lambda: postgres.backend_cpu(url))

        log(
            f"publishing {opts.rate:,.0f} readings/s to {opts.meters:,} meters for "
            f"{opts.seconds:g} s ({opts.workers} rules worker(s), engine {result.engine})"
        )
        # the publisher builds its meters and connects first, then starts at start_at; the
        # CPU is counted from then
        start_at = time.time() + 3.0 + opts.meters / 20_000
        first: list[proc.Snapshot] = []

        def tick() -> None:
            if not first and time.time() >= start_at - 0.1:
                first.append(cpu_now())

        result.pub = _run_publisher(broker.url, opts, t_ref, start_at, workdir, tick)
        if not first:
            raise BenchError("the publisher finished before it was due to start")
        cpu0 = first[0]
        if not result.pub["acked_all"]:
            raise BenchError(
                f"only {result.pub['acked']} of {result.pub['published']} PUBACKs arrived"
            )
        sampler.expect(result.pub["published"])
        left = result.pub["last_at"] + opts.drain_timeout - time.time()
        while not sampler.drained.wait(min(1.0, max(0.0, left))):
            left = result.pub["last_at"] + opts.drain_timeout - time.time()
            if left <= 0:
                log(f"not drained within {opts.drain_timeout:g} s of the last publish")
                break
            dead = [s for s in (ingest, *workers) if not s.alive()]
            if dead:
                raise BenchError(f"{dead[0].name} died:\n{dead[0].log_tail()}")
        cpu1 = cpu_now()
        result.cpu = proc.spent(
            cpu0,
            cpu1,
            {
                "rules_backends": "symbiont-rules:",
                "ingest_backends": "symbiont-ingest:",
                "sampler_backend": SAMPLER,
                "all_backends": "",
            },
        )
        result.cpu["rules"] = proc.total([result.cpu[f"rules-{k}"] for k in range(opts.workers)])
        result.cpu["other_backends"] = max(
            0.0,
            result.cpu["all_backends"]
            - result.cpu["rules_backends"]
            - result.cpu["ingest_backends"]
            - result.cpu["sampler_backend"],
        )
        result.cpu["publisher"] = result.pub["cpu_s"]
        result.span_s = cpu1.t - cpu0.t
        result.rules_peak_kib = [w.memory_kib() for w in workers]
        result.ingest_peak_kib = ingest.memory_kib()
    finally:
        with contextlib.suppress(BenchError):
            sampler.stop()
        for service in (*workers, ingest):
            service.stop()
    result.samples = sampler.samples
    result.stored = sampler.stored
    result.drained_at = sampler.drained_at
    result.statements = _count(url, "statements") - statements_before
    alerts_after = _alerts(url)
    result.alerts = {
        rule: n - alerts_before.get(rule, 0)
        for rule, n in alerts_after.items()
        if n > alerts_before.get(rule, 0)
    }
    result.windows_failed = postgres.fetch(
        url, "SELECT count(*) AS n FROM exchange_windows WHERE error IS NOT NULL"
    )[0]["n"]
    ages = result.ages()
    log(
        f"published {result.readings:,} at {result.pub['achieved_rate']:,.0f}/s; oldest pending "
        f"p50 {reports.percentile_of(ages, 50):.2f} s, p99 {reports.percentile_of(ages, 99):.2f} "
        f"s, max {max(ages, default=math.nan):.2f} s; drain "
        + ("not reached" if result.drain_s is None else f"{result.drain_s:.1f} s")
    )


def _count(url: str, table: str) -> int:
    n: int = postgres.fetch(url, f"SELECT count(*) AS n FROM {table}")[0]["n"]
    return n


def _alerts(url: str) -> dict[str, int]:
    """Alerts by rule."""
    sql = "SELECT rule, count(*) AS n FROM alerts GROUP BY rule ORDER BY rule"
    return {r["rule"]: r["n"] for r in postgres.fetch(url, sql)}


def _run_publisher(
    broker_url: str,
    opts: Options,
    t_ref: float,
    start_at: float,
    workdir: Path,
    tick: Callable[[], None],
) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "benchmarks.rules_sparse", "publish",
        "--url", broker_url, "--client-id", f"bench-pub-{secrets.token_hex(3)}",
        "--rate", repr(opts.rate), "--seconds", repr(opts.seconds),
        "--exchanges", str(opts.exchanges), "--t-ref", repr(t_ref),
        "--start-at", repr(start_at),
    ]  # fmt: skip
    return services.run_json(
        cmd,
        what="publisher",
        env=services.clean_env(),
        timeout=opts.seconds + 300,
        tick=tick,
        interval=0.05,
        stderr_to=workdir / "publisher.log",
    )


# -------------------------------------------------------------------------------- output

TABLE_HEAD = (
    "| engine | readings/s (meters) | rules workers | CPU ms per reading: engine + its "
    "backends (engine / backends) | ingest + its backends | oldest pending p50 / p99 / max | "
    "drain | publisher: achieved/s, at worst behind, CPU ms per reading | code, measured |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---|",
)
ROW_KEY = re.compile(r"^\| ([^|]+?) \| ([0-9,.]+)/s \([^)]*\) \| (\d+) \|")
NOTE_KEY = re.compile(r"^- \*\*([^*]+)\*\*")


def _ms(value: float | None, places: int = 2) -> str:
    return "–" if value is None else f"{value:.{places}f}"


def _age(value: float) -> str:
    if math.isnan(value):
        return "–"
    return f"{value:.1f} s" if value >= 10 else f"{value:.2f} s"


def row_key(engine: str, rate: float, workers: int) -> str:
    return f"{engine}, {rate:,.0f}/s, {workers} worker{'s' if workers != 1 else ''}"


def table_row(r: Result, opts: Options) -> str:
    ages = r.ages()
    both = r.per_reading_ms("rules", "rules_backends")
    if r.drain_s is not None:
        drain, at_least = f"{r.drain_s:.1f} s", ""
    else:
        # the work left is not in the CPU figures: they are lower bounds
        _, _, windows, subjects = r.samples[-1] if r.samples else (0, 0, 0, 0)
        left = f"{windows:,} windows, {subjects:,} subjects still pending"
        drain = f"> {opts.drain_timeout:g} s ({left})"
        at_least = "≥ "
    measured = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"| {r.engine} | {opts.rate:,.0f}/s ({r.meters:,}) | {opts.workers} | "
        f"{at_least}**{_ms(both)}** ({_ms(r.per_reading_ms('rules'))} / "
        f"{_ms(r.per_reading_ms('rules_backends'))}) | "
        f"{_ms(r.per_reading_ms('ingest', 'ingest_backends'))} | "
        f"{_age(reports.percentile_of(ages, 50))} / **{_age(reports.percentile_of(ages, 99))}**"
        f" / {_age(max(ages, default=math.nan))} | {drain} | "
        f"{r.pub['achieved_rate']:,.0f}, {r.pub['max_behind_s'] * 1000:,.0f} ms, "
        f"{_ms(r.per_reading_ms('publisher'), 3)} | {r.code.removeprefix('commit ')}, "
        f"{measured} |"
    )


def note(r: Result, opts: Options) -> str:
    c = r.cpu
    first = r.pub["first_at"]
    samples = [(at - first, age) for at, age, _, _ in r.samples if at >= first]
    step = 30.0 if opts.seconds >= 90 else 10.0
    trend = ", ".join(
        f"{label} {_age(vals[-1])}" for label, vals in reports.by_interval(samples, step)
    )
    peak_w = max((w for _, _, w, _ in r.samples), default=0)
    peak_s = max((s for _, _, _, s in r.samples), default=0)
    busy = c.get("machine")
    cores = os.cpu_count() or 1
    machine = "–"
    if busy is not None:
        machine = f"{busy:.1f} of {cores * r.span_s:.0f} ({busy / r.span_s:.2f} cores)"
    others = proc.others(
        busy, c.get("rules"), c.get("all_backends"), c.get("ingest"), c.get("broker"),
        c.get("publisher"),
    )  # fmt: skip
    alerts = ", ".join(f"{k} {v}" for k, v in r.alerts.items()) or "none"
    rss = ", ".join(mib(k) for k in r.rules_peak_kib)
    baseline = f", rules workers on commit {r.engine}" if opts.baseline else ""
    late = r.pub.get("late_start_s", 0.0)
    parts = [
        f"- **{row_key(r.engine, opts.rate, opts.workers)}**: `{opts.command}`; code measured "
        f"{r.report.code}{baseline}.",
        f"{r.exchanges:,} exchanges, {r.meters:,} meters, {opts.history_minutes} minutes of "
        f"history ({r.history_readings:,} readings, computed by `--once` in "
        f"{r.once_history_s:.0f} s).",
        f"Published {r.readings:,} readings in {opts.seconds:g} s"
        + (f" (started {late:.1f} s late)" if late > 0.05 else "")
        + f", stored {r.stored:,}.",
        f"CPU s over the {r.span_s:.0f} s from the first publish to drained: rules "
        f"{_ms(c.get('rules'), 1)}, its backends {_ms(c.get('rules_backends'), 1)}, the rules "
        f"services' other connections (listener, notifier) {_ms(c.get('other_backends'), 1)}, "
        f"ingest {_ms(c.get('ingest'), 1)}, its backends {_ms(c.get('ingest_backends'), 1)}, "
        f"Mosquitto {_ms(c.get('broker'), 1)}, publisher {_ms(c.get('publisher'), 1)} (whole "
        f"life), the sampler's backend {_ms(c.get('sampler_backend'), 1)}; whole machine "
        f"{machine}, of which everything else {_ms(others, 1)}.",
        f"Oldest pending, the largest sample by {step:g} s of the run: {trend}; at most "
        f"{peak_w:,} windows and {peak_s:,} subjects pending.",
        f"Alerts raised during the run: {alerts}; statements issued: {r.statements}; "
        f"exchange windows with an error: {r.windows_failed}.",
        f"Peak RSS (VmHWM): rules {rss}, ingest {mib(r.ingest_peak_kib)}.",
        f"Load average before {r.report.load_before}, after {r.report.load_after}; the whole "
        f"run took {r.report.seconds:.0f} s.",
    ]
    return " ".join(parts)


METHOD = (
    "Method (details in `benchmarks/rules_sparse.py`): N readings/s come from 60·N meters of "
    "the rules benchmark's network (`benchmarks.rules_engine.bench_network`: 30·N heat "
    "exchanges between 20 partners, hourly windows in Europe/Copenhagen, one `total` sent "
    "meter and a `total` or `rate` received meter each, all reading every 60 s), one reading "
    "per QoS 1 message timestamped now, every meter once a minute on its own second. A "
    "private Mosquitto, `symbiont ingest` and `symbiont rules` (one process per worker) run "
    "against a fresh database. Before the run the network is applied, each meter gets a few "
    "minutes of history (one reading a minute, the newest under a minute old), `symbiont "
    "rules --once` computes it, then `VACUUM ANALYZE`: the run updates existing windows. So "
    "that nothing else runs meanwhile, no statements are due (`SYMBIONT_STATEMENT_GRACE=90d`; "
    "the previous month has no data, so its statements would be held and retried every "
    "minute) and meters are judged stale after a day (the set-up takes minutes at 150,000 "
    "meters; the time-driven check still runs). *Engine* `current` is the code measured; a "
    "revision (`--baseline REV`) means the rules workers ran that revision's `cli`, `core`, "
    "`ingest`, `rules`, `notify` and `statements` on this schema (`--once` and ingest are "
    "always the current code). CPU per reading is from /proc/<pid>/stat over the span from "
    "the first publish until nothing is pending, divided by the readings published; "
    "*backends* are the PostgreSQL backends of the rules workers' engine connections "
    "(`symbiont-rules:<worker>`), ingest's likewise. *Oldest pending* is now − "
    "min(`marked_at`) over `dirty_windows` and `dirty_subjects` (a re-marked row keeps its "
    "first mark), sampled every 0.5 s on a connection of its own; its percentiles are over "
    "the publishing span. *Drain* runs from the last publish to the first sample with every "
    "reading stored and nothing pending. The publisher is `benchmarks.clients.QoS1Publisher` "
    "in a process of its own; *behind* is how late its worst message left against its "
    "schedule. The rows come from separate runs, each replacing only its own row (engine, "
    "rate, workers): a run on a busy machine (see its load and *everything else*) "
    "understates the engine."
)


def _existing(path: Path | None) -> tuple[list[str], list[str]]:
    """The table rows and the notes of the section as ``path`` has it."""
    if path is None or not path.exists():
        return [], []
    lines = path.read_text().splitlines()
    try:
        start = lines.index(SECTION)
    except ValueError:
        return [], []
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), None)
    body = lines[start + 1 : end]
    rows = [line for line in body if ROW_KEY.match(line)]
    notes = [line for line in body if NOTE_KEY.match(line)]
    return rows, notes


def _row_sort(line: str) -> tuple[int, float, int, str]:
    m = ROW_KEY.match(line)
    assert m is not None
    engine, rate, workers = m.group(1), float(m.group(2).replace(",", "")), int(m.group(3))
    return (0 if engine == "current" else 1, rate, workers, engine)


def _note_sort(line: str) -> tuple[int, float, int, str]:
    m = NOTE_KEY.match(line)
    assert m is not None
    engine, rate, workers = m.group(1).split(", ")
    return (
        0 if engine == "current" else 1,
        float(rate.removesuffix("/s").replace(",", "")),
        int(workers.split()[0]),
        engine,
    )


def markdown(r: Result, opts: Options, info: dict[str, str]) -> str:
    """The section: this run's row and note replace its own (same engine, rate and workers)
    among those the file already holds."""
    key = (r.engine, f"{opts.rate:,.0f}", str(opts.workers))
    rows, notes = _existing(opts.write)
    rows = [
        line
        for line in rows
        if (m := ROW_KEY.match(line)) is not None and (m.group(1), m.group(2), m.group(3)) != key
    ]
    mine = row_key(r.engine, opts.rate, opts.workers)
    notes = [line for line in notes if not line.startswith(f"- **{mine}**")]
    rows = sorted([*rows, table_row(r, opts)], key=_row_sort)
    notes = sorted([*notes, note(r, opts)], key=_note_sort)
    heading = reports.heading(SECTION, opts.command, r.report.code, info, ON_MACHINE, broker=True)
    return (
        "\n".join(
            [
                SECTION,
                "",
                "Each row is a run of `python -m benchmarks.run --only rules-sparse --rate N "
                "--seconds S [--workers W] [--baseline REV]` (the exact commands are in the notes "
                "below the table); the latest run replaced its own row.",
                "",
                heading[-1],
                "",
                *TABLE_HEAD,
                *rows,
                "",
                *notes,
                "",
                METHOD,
            ]
        )
        + "\n"
    )


def main(opts: Options) -> Result:
    info = reports.machine()
    result = run(opts)
    reports.publish(markdown(result, opts, info), opts.write, SECTION)
    return result


def cli(argv: Sequence[str] | None = None) -> int:
    """The helper role run as a process of its own: ``publish``; it prints one JSON line."""
    roles: dict[str, services.Role] = {"publish": (publish_arguments, run_publish)}
    return services.role_main("python -m benchmarks.rules_sparse", roles, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
