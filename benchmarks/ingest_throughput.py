"""Ingest throughput, latency and memory against a real Mosquitto and PostgreSQL.

Broker, consumers and PostgreSQL share this machine. Every figure is QoS 1 with the
acknowledgement after the commit, and every drain checks that all readings were stored.

Backlog drain (separates the publisher's CPU from the consumer's): each consumer first opens
its persistent session (a shared subscription to ``symbiont/readings/#``, QoS 1) and leaves;
the backlog is published while it is offline and queues in the broker (one publish feeds
every session); then the consumer starts alone and is timed until it has taken everything.

- raw paho: ``benchmarks.clients raw``, a subscriber doing nothing but ``json.loads``, MQTT 5
  (ingest's protocol) and MQTT 3.1.1; the rate is N / (last message − connect).
- ingest: ``symbiont ingest`` as a subprocess; the rate is N / (max − min ``received_at``)
  over the stored readings (``received_at`` is each batch's transaction start), and the
  wall time runs from the process start to the last commit (its NOTIFY on ``symbiont_dirty``).
- naive (optional): ``benchmarks.clients naive``, one INSERT and commit per message.
- ingest with several workers (``--workers 1,2``): N ``symbiont ingest`` processes with
  distinct client ids in one share group of their own, started together on the same backlog
  (the broker queued half of it, round-robin, for each offline session); the rate is N /
  (max − min ``received_at``) over all their readings, CPU seconds are summed over the
  workers and their backends, and each worker's count comes from its log.

Latency: ingest (one latency run per number of workers, at half the single-reading rate that
many drained) runs live while ``benchmarks.clients pace`` publishes single-reading
messages at a steady rate, each carrying its publish time as its value. Every batch's
commit NOTIFYs once; the k-th notification belongs to the k-th distinct ``received_at``, so
a reading's latency is its batch's notification arrival minus its publish time.

Peak memory is VmHWM from ``/proc/<pid>/status`` just before each process is stopped.
CPU seconds of every process involved, and of the whole machine, are read from /proc, so a
run disturbed by other work on the box says so. The publishers are ``QoS1Publisher`` (4 µs of
CPU per message in bulk, 20–30 µs paced) rather than paho (about 100 µs): they share the cores
too.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.clients import QoS1Publisher, create_session  # noqa: E402
from benchmarks.harness import BenchError, arguments, log, postgres, proc, reports, services, slug  # noqa: E402
from benchmarks.harness.reports import mib, secs  # noqa: E402
from core.db import asyncpg_dsn  # noqa: E402
from core.network import parse_network  # noqa: E402
from core.settings import Settings  # noqa: E402
from tests.services import Mosquitto  # noqa: E402

PARTNER = "bench"
METER_PREFIX = "bench-m"
INTERVAL_S = 60
SECTION = "## Ingest throughput (issue: ingestion pipeline)"
TARGET_MSGS = 15_000.0
TARGET_READINGS = 150_000.0


# --------------------------------------------------------------------------------- options


@dataclass
class Options:
    messages: int = 200_000  # single-reading backlog
    batch_messages: int = 20_000  # backlog of multi-reading messages
    readings_per_message: int = 100
    naive_messages: int = 10_000  # 0 skips the naive baseline
    latency_seconds: float = 20.0  # 0 skips the latency run
    latency_rate: float | None = None  # default: half the measured single-reading rate
    meters: int = 100
    autosave_interval: int = 1  # Mosquitto's, as in tests.services
    raw_v311: bool = True  # also drain with a raw MQTT 3.1.1 subscriber
    # before each measurement, wait up to this long for an idle box
    quiet_wait: float = arguments.QUIET_WAIT
    write: Path | None = ROOT / "BENCHMARKS.md"
    command: str = ""
    ingest_env: dict[str, str] = field(default_factory=dict)
    workers: tuple[int, ...] = (1, 2)  # ingest drains with this many workers each


DESCRIPTION = "Ingest throughput, latency and memory (benchmarks/ingest_throughput.py)."
# --quick: small sizes for a smoke run
QUICK = {
    "messages": 20_000,
    "batch_messages": 2_000,
    "naive_messages": 2_000,
    "latency_seconds": 5.0,
    "quiet_wait": 3.0,
}


# ---------------------------------------------------------------------------- environment


def bench_network(meters: int) -> dict[str, Any]:
    return {
        "network": "bench",
        "name": "Ingest benchmark",
        "timezone": "UTC",
        "partners": [{"id": PARTNER, "name": "Benchmark partner"}],
        "meters": [
            {
                "id": f"{METER_PREFIX}{i:03d}",
                "partner": PARTNER,
                "kind": "heat",
                "reading": "total",
                "unit": "MWh",
                "uncertainty": 0.02,
                "interval": INTERVAL_S,
            }
            for i in range(meters)
        ],
    }


class Ingest(services.Service):
    """``symbiont ingest`` as a subprocess, logging to a file."""

    def __init__(
        self,
        broker: Mosquitto,
        database_url: str,
        client_id: str,
        opts: Options,
        log_path: Path,
        group: str | None = None,
    ) -> None:
        env = dict(os.environ)
        for key in ("SYMBIONT_METRICS_PORT", "SYMBIONT_LOG_JSON"):
            env.pop(key, None)
        env.update(opts.ingest_env)
        env.update(
            SYMBIONT_DATABASE_URL=database_url,
            SYMBIONT_MQTT_URL=broker.url,
            SYMBIONT_INGEST_CLIENT_ID=client_id,
            SYMBIONT_LOG_LEVEL="INFO",
        )
        if group is not None:
            env["SYMBIONT_INGEST_SHARE_GROUP"] = group
        super().__init__("ingest", ["ingest"], env, log_path, ready=services.INGEST_READY)
        self.client_id = client_id

    def connected(self) -> bool:
        """Whether it has logged its connection to the broker since it was started."""
        return self.logged(services.INGEST_READY)

    def stopped_messages(self) -> int | None:
        """Messages this run committed, from its last "ingest stopped: N messages" line."""
        found = re.findall(rb"ingest stopped: (\d+) messages", self.log_since_start())
        return int(found[-1]) if found else None


def run_client(
    role: str, *args: str, tick: Callable[[], None] | None = None
) -> tuple[dict[str, Any], float]:
    """Run ``benchmarks.clients ROLE``; its JSON result and the time it was started.

    ``tick()`` is called every 0.1 s while it runs."""
    started = time.time()
    result = services.run_json(
        [sys.executable, "-m", "benchmarks.clients", role, *args],
        what=f"benchmarks.clients {role}",
        timeout=900.0,
        tick=tick,
    )
    return result, started


# -------------------------------------------------------------------------------- backlog


def readings_start(per_meter: int) -> int:
    """Epoch second of every meter's first reading: the last one lands a day before now."""
    now = int(time.time()) // INTERVAL_S * INTERVAL_S
    return now - per_meter * INTERVAL_S - 86400


def backlog(n: int, per_message: int, meters: int) -> Iterator[tuple[str, bytes]]:
    """``n`` messages of ``per_message`` readings (a JSON object, or an array of them),
    round-robin over the meters; every (meter, ts) is distinct, 60 s apart per meter."""
    per_meter_msgs = -(-n // meters)
    start = readings_start(per_meter_msgs * per_message)
    stamps = [
        datetime.fromtimestamp(start + k * INTERVAL_S, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for k in range(per_meter_msgs * per_message)
    ]
    topics = [f"symbiont/readings/{PARTNER}/{METER_PREFIX}{m:03d}" for m in range(meters)]
    for j in range(n):
        first = (j // meters) * per_message
        items = [
            {"ts": stamps[k], "value": round(1000.0 + k * 0.25, 3)}
            for k in range(first, first + per_message)
        ]
        yield topics[j % meters], orjson.dumps(items[0] if per_message == 1 else items)


def publish_backlog(url: str, n: int, per_message: int, meters: int) -> float:
    """Publish the backlog at QoS 1 and wait for every PUBACK; returns the seconds taken."""
    pub = QoS1Publisher(url, f"bench-publisher-{secrets.token_hex(3)}")
    started = time.perf_counter()
    chunk: list[tuple[bytes, bytes]] = []
    try:
        for topic, payload in backlog(n, per_message, meters):
            chunk.append((topic.encode(), payload))
            if len(chunk) >= 200:
                pub.publish(chunk)
                chunk = []
        if chunk:
            pub.publish(chunk)
        if not pub.wait_acked(120) or pub.acked < n:
            raise BenchError(f"only {pub.acked} of {n} PUBACKs arrived ({pub.error or 'timeout'})")
    finally:
        pub.close()
    return time.perf_counter() - started


# -------------------------------------------------------------------------------- results


@dataclass
class DrainResult:
    workload: str
    consumer: str
    messages: int
    readings: int
    seconds: float  # the timed span the rate is computed over
    wall_s: float  # from process start to the last message / commit
    peak_kib: int | None
    stored: int | None = None  # readings found in the database
    rejected: int | None = None
    batches: int | None = None
    cpu_consumer: float | None = None  # CPU seconds of the consumer process
    cpu_backend: float | None = None  # of its PostgreSQL backend (ingest only)
    cpu_broker: float | None = None  # of Mosquitto while this consumer drained
    cpu_machine: float | None = None  # of the whole machine (all processes) meanwhile
    cpu_startup: float | None = None  # of the consumer until it connected to the broker
    workers: int = 1  # ingest processes that drained together
    per_worker: list[int | None] = field(default_factory=list)  # messages each committed

    @property
    def cpu_others(self) -> float | None:
        """CPU seconds of everything else while this consumer drained."""
        return proc.others(self.cpu_machine, self.cpu_consumer, self.cpu_backend, self.cpu_broker)

    @property
    def msg_rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def msgs_per_cpu_s(self) -> float | None:
        """Messages per CPU second the consumer process spent after connecting: about what
        it could manage with a core of its own and nothing to wait for."""
        if self.cpu_consumer is None:
            return None
        spent = self.cpu_consumer - (self.cpu_startup or 0.0)
        return self.messages / spent if spent > 0 else None

    @property
    def reading_rate(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0


@dataclass
class LatencyResult:
    workers: int
    target_rate: float
    achieved_rate: float
    published: int
    stored: int
    batches: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    max_behind_s: float
    peak_kib: int | None
    cpu_ingest: float | None  # while the publisher ran and ingest caught up
    cpu_publisher: float | None
    cpu_machine: float | None  # all processes, same span
    span_s: float  # wall time of that span


@dataclass
class Report(reports.RunReport):
    drains: list[DrainResult] = field(default_factory=list)
    latencies: list[LatencyResult] = field(default_factory=list)


# ---------------------------------------------------------------------------------- cases


RAW_CONSUMERS = (
    ("5", "raw paho MQTT 5 + json.loads"),
    ("3.1.1", "raw paho MQTT 3.1.1 + json.loads"),
)
INGEST = "symbiont ingest"


def drain_raw(
    quiet: float,
    broker: Mosquitto,
    workload: str,
    n: int,
    per_message: int,
    protocol: str,
    label: str,
    client_id: str,
    group: str,
) -> DrainResult:
    proc.wait_quiet(quiet)
    log(f"{workload}: {label} draining")
    before = proc.snapshot({"broker": broker.pid})
    raw, started = run_client(
        "raw", "--url", broker.url, "--client-id", client_id, "--group", group,
        "--n", str(n), "--protocol", protocol,
    )  # fmt: skip
    cpu = proc.spent(before, proc.snapshot({"broker": broker.pid}))
    if not raw["complete"]:
        raise BenchError(f"{label} received {raw['received']} of {n} messages")
    result = client_drain(
        workload, label, n, n * per_message, raw, started,
        cpu_broker=cpu["broker"], cpu_machine=cpu["machine"],
    )  # fmt: skip
    log(f"{workload}: {label} {result.msg_rate:,.0f} msg/s")
    return result


def client_drain(
    workload: str,
    consumer: str,
    n: int,
    readings: int,
    res: dict[str, Any],
    started: float,
    **figures: Any,
) -> DrainResult:
    """The drain of a ``benchmarks.clients`` consumer started at ``started``, from its
    result ``res``; ``figures`` are the ones the harness measured around it."""
    return DrainResult(
        workload, consumer, n, readings,
        seconds=res["last_at"] - res["connect_at"],
        wall_s=res["last_at"] - started,
        peak_kib=res["vm_hwm_kib"],
        cpu_consumer=res["cpu_s"],
        cpu_startup=res["startup_cpu_s"],
        **figures,
    )  # fmt: skip


def ingest_label(workers: int) -> str:
    return INGEST if workers == 1 else f"{INGEST} × {workers} workers"


def drain_case(
    dbs: postgres.Databases, opts: Options, workload: str, n: int, per_message: int, workdir: Path
) -> list[DrainResult]:
    """The raw paho subscribers and ingest (with each number of workers in ``opts.workers``)
    drain the same backlog, published once while all of them are offline, one after the
    other."""
    results: list[DrainResult] = []
    with Mosquitto(autosave_interval=opts.autosave_interval) as broker:
        tag = secrets.token_hex(3)
        raws = [
            (protocol, label, f"bench-raw{i}-{tag}", f"raw{i}{tag}")
            for i, (protocol, label) in enumerate(RAW_CONSUMERS)
            if protocol == "5" or opts.raw_v311
        ]
        for protocol, _, client_id, group in raws:
            create_session(broker.url, client_id, group, protocol=protocol)
        # Per number of workers: a database, and that many ingest sessions in a share group
        # of their own (so each group receives the whole backlog, split among its members).
        teams: list[tuple[str, list[Ingest]]] = []
        for workers in opts.workers:
            url = dbs.fresh(f"{slug(workload)}_w{workers}")
            group = f"ingest{workers}w{tag}"
            team = [
                Ingest(
                    broker,
                    url,
                    f"bench-ingest{workers}w{k}-{tag}",
                    opts,
                    workdir / f"ingest-{slug(workload)}-{workers}w{k}.log",
                    group=group,
                )
                for k in range(workers)
            ]
            teams.append((url, team))
        for _, team in teams:
            for ingest in team:
                ingest.start()
            try:
                for ingest in team:
                    ingest.wait_ready()
            finally:
                for ingest in team:
                    ingest.stop()

        log(f"{workload}: publishing {n:,} messages × {per_message} readings (QoS 1)")
        took = publish_backlog(broker.url, n, per_message, opts.meters)
        log(f"{workload}: published in {took:.1f} s ({n / took:,.0f} msg/s)")

        for protocol, label, raw_id, group in raws:
            results.append(
                drain_raw(
                    opts.quiet_wait,
                    broker,
                    workload,
                    n,
                    per_message,
                    protocol,
                    label,
                    raw_id,
                    group,
                )
            )
        for url, team in teams:
            results.append(drain_ingest(opts, broker, workload, n, per_message, url, team))
    return results


def drain_ingest(
    opts: Options,
    broker: Mosquitto,
    workload: str,
    n: int,
    per_message: int,
    url: str,
    team: list[Ingest],
    *,
    readings: int | None = None,
) -> DrainResult:
    """Start every ingest process of ``team`` at once on its queued backlog, time the drain
    and check that every reading was stored (``readings``, default ``n × per_message``)."""
    readings = n * per_message if readings is None else readings
    label = ingest_label(len(team))
    proc.wait_quiet(opts.quiet_wait)
    log(f"{workload}: {label} draining")
    listener = postgres.Listener(url)
    listener.start()
    backends = [postgres.Backends(url, f"symbiont-ingest:{ingest.client_id}") for ingest in team]
    startup: dict[int, float | None] = {}

    def tick() -> None:
        for backend in backends:
            backend.poll()
        for k, ingest in enumerate(team):
            if k not in startup and ingest.connected():
                startup[k] = ingest.cpu_seconds()  # within 0.1 s of the connection

    def alive() -> bool:
        return all(ingest.alive() for ingest in team)

    before = proc.snapshot({"broker": broker.pid})
    try:
        listener.expect(readings)
        for ingest in team:
            ingest.start()
        complete = listener.progress_wait(60.0, alive, tick)
        last_commit = listener.events[-1][0] if listener.events else time.time()
        peaks = [ingest.memory_kib() for ingest in team]
        cpu_ingest = proc.total([ingest.cpu_seconds() for ingest in team])
        cpu_backend = proc.total([backend.cpu_seconds() for backend in backends])
        cpu = proc.spent(before, proc.snapshot({"broker": broker.pid}))
    finally:
        for ingest in team:
            ingest.stop()
        listener.stop()
    if not complete:
        tails = "\n".join(ingest.log_tail() for ingest in team)
        raise BenchError(f"{label} stored {listener.total} of {readings} readings:\n{tails}")
    row = postgres.fetch(
        url,
        """SELECT count(*) AS n, count(DISTINCT received_at) AS batches,
                  extract(epoch FROM max(received_at) - min(received_at)) AS span,
                  (SELECT count(*) FROM rejections) AS rejected
           FROM readings""",
    )[0]
    result = DrainResult(
        workload, label, n, readings,
        seconds=float(row["span"]),
        wall_s=last_commit - min(ingest.started_at for ingest in team),
        peak_kib=max((p for p in peaks if p), default=None),
        stored=row["n"],
        rejected=row["rejected"],
        batches=row["batches"],
        cpu_consumer=cpu_ingest,
        cpu_startup=proc.total([startup.get(k) for k in range(len(team))]),
        cpu_backend=cpu_backend,
        cpu_broker=cpu["broker"],
        cpu_machine=cpu["machine"],
        workers=len(team),
        per_worker=[ingest.stopped_messages() for ingest in team],
    )  # fmt: skip
    if row["n"] != readings or row["rejected"]:
        raise BenchError(
            f"{label} stored {row['n']} of {readings} readings, {row['rejected']} rejected"
        )
    log(
        f"{workload}: {label} {result.msg_rate:,.0f} msg/s, "
        f"{result.reading_rate:,.0f} readings/s, {row['batches']} batches"
        + (f", messages per worker {result.per_worker}" if len(team) > 1 else "")
    )
    return result


def naive_case(dbs: postgres.Databases, opts: Options, n: int) -> DrainResult:
    url = dbs.fresh("naive")
    with Mosquitto(autosave_interval=opts.autosave_interval) as broker:
        tag = secrets.token_hex(3)
        client_id, group = f"bench-naive-{tag}", f"naive{tag}"
        create_session(broker.url, client_id, group)
        log(f"naive: publishing {n:,} single-reading messages")
        publish_backlog(broker.url, n, 1, opts.meters)
        proc.wait_quiet(opts.quiet_wait)
        log("naive: per-message INSERT + commit draining")
        backend = postgres.Backends(url, client_id)
        last: dict[str, float | None] = {}

        def tick() -> None:
            backend.poll()
            value = backend.cpu_seconds()
            if value is not None:
                last["backend"] = value  # the last reading before it exits

        before = proc.snapshot({"broker": broker.pid})
        res, started = run_client(
            "naive", "--url", broker.url, "--client-id", client_id, "--group", group,
            "--n", str(n), "--database", asyncpg_dsn(url), tick=tick,
        )  # fmt: skip
        cpu = proc.spent(before, proc.snapshot({"broker": broker.pid}))
    stored = postgres.fetch(url, "SELECT count(*) AS n FROM readings")[0]["n"]
    if not res["complete"] or stored != n:
        raise BenchError(f"naive consumer stored {stored} of {n} readings")
    result = client_drain(
        "1 reading/msg",
        "naive INSERT+commit per msg",
        n,
        n,
        res,
        started,
        stored=stored,
        rejected=0,
        cpu_backend=last.get("backend"),
        cpu_broker=cpu["broker"],
        cpu_machine=cpu["machine"],
    )
    log(f"naive: {result.msg_rate:,.0f} msg/s")
    return result


def latency_case(
    dbs: postgres.Databases, opts: Options, rate: float, workdir: Path, workers: int = 1
) -> LatencyResult:
    url = dbs.fresh(f"latency_w{workers}")
    with Mosquitto(autosave_interval=opts.autosave_interval) as broker:
        tag = secrets.token_hex(3)
        team = [
            Ingest(
                broker,
                url,
                f"bench-ingest-live{workers}w{k}-{tag}",
                opts,
                workdir / f"ingest-latency-{workers}w{k}.log",
                group=f"live{workers}w{tag}",
            )
            for k in range(workers)
        ]
        listener = postgres.Listener(url)
        listener.start()

        def alive() -> bool:
            return all(ingest.alive() for ingest in team)

        try:
            for ingest in team:
                ingest.start()
            for ingest in team:
                ingest.wait_ready()
            proc.wait_quiet(opts.quiet_wait)
            workers_pids = {f"ingest{k}": ingest.pid for k, ingest in enumerate(team)}
            before = proc.snapshot(workers_pids)
            total = int(rate * opts.latency_seconds)
            per_meter = -(-total // opts.meters)
            start_ts = int(time.time()) - per_meter - 86400
            log(
                f"latency: publishing {rate:,.0f} msg/s for {opts.latency_seconds:g} s "
                f"to {ingest_label(workers)}, live"
            )
            pub, _ = run_client(
                "pace",
                "--url",
                broker.url,
                "--client-id",
                f"bench-pace-{secrets.token_hex(3)}",
                "--rate",
                repr(rate),
                "--duration",
                repr(opts.latency_seconds),
                "--partner",
                PARTNER,
                "--meter-prefix",
                METER_PREFIX,
                "--meters",
                str(opts.meters),
                "--start-ts",
                str(start_ts),
            )
            if pub["acked"] != pub["published"]:
                raise BenchError(f"only {pub['acked']} of {pub['published']} PUBACKs arrived")
            listener.expect(pub["published"])
            if not listener.progress_wait(30.0, alive):
                tails = "\n".join(ingest.log_tail() for ingest in team)
                raise BenchError(f"ingest stored {listener.total} of {pub['published']}:\n{tails}")
            peak = max((p for p in (i.memory_kib() for i in team) if p), default=None)
            cpu = proc.spent(before, proc.snapshot(workers_pids))
        finally:
            for ingest in team:
                ingest.stop()
            listener.stop()
    rows = postgres.fetch(url, "SELECT value, received_at FROM readings")
    batches = sorted({r["received_at"] for r in rows})
    if len(batches) != len(listener.events):
        raise BenchError(
            f"{len(batches)} batches stored but {len(listener.events)} notifications arrived"
        )
    committed = {at: listener.events[k][0] for k, at in enumerate(batches)}
    latencies = sorted(committed[r["received_at"]] - r["value"] for r in rows)
    if len(rows) != pub["published"]:
        raise BenchError(f"ingest stored {len(rows)} of {pub['published']} readings")
    result = LatencyResult(
        workers=workers,
        target_rate=rate,
        achieved_rate=pub["achieved_rate"],
        published=pub["published"],
        stored=len(rows),
        batches=len(batches),
        p50_ms=reports.percentile(latencies, 50) * 1000,
        p99_ms=reports.percentile(latencies, 99) * 1000,
        max_ms=latencies[-1] * 1000,
        max_behind_s=pub["max_behind_s"],
        peak_kib=peak,
        cpu_ingest=proc.total([cpu[name] for name in workers_pids]),
        cpu_publisher=pub["cpu_s"],
        cpu_machine=cpu["machine"],
        span_s=cpu["wall"],
    )
    log(
        f"latency ({ingest_label(workers)}): p50 {result.p50_ms:.1f} ms, "
        f"p99 {result.p99_ms:.1f} ms, "
        f"max {result.max_ms:.1f} ms at {result.achieved_rate:,.0f} msg/s"
    )
    return result


# -------------------------------------------------------------------------------- running


def revision() -> str:
    """The commit measured, and whether ingest's code differed from it."""
    state = reports.git_state(["ingest", "core"])
    if state is None:
        return "unknown"
    head, changed = state
    return head + (" with uncommitted changes in ingest/ or core/" if changed else "")


def run(opts: Options) -> Report:
    report = Report(code=revision())
    with reports.timed_run(report):
        run_cases(opts, report, services.make_workdir("bench"))
    return report


def run_cases(opts: Options, report: Report, workdir: Path) -> None:
    dbs = postgres.Databases(parse_network(bench_network(opts.meters)), "bench")
    try:
        single_rates: dict[int, float] = {}
        if opts.messages:
            drains = drain_case(dbs, opts, "1 reading/msg", opts.messages, 1, workdir)
            report.drains.extend(drains)
            single_rates = {d.workers: d.msg_rate for d in drains if d.consumer.startswith(INGEST)}
        if opts.batch_messages:
            report.drains.extend(
                drain_case(
                    dbs,
                    opts,
                    f"{opts.readings_per_message} readings/msg",
                    opts.batch_messages,
                    opts.readings_per_message,
                    workdir,
                )
            )
        if opts.naive_messages:
            report.drains.append(naive_case(dbs, opts, opts.naive_messages))
        if opts.latency_seconds:
            # At half of what each number of workers drained (or at --latency-rate).
            for workers in opts.workers:
                measured = single_rates.get(workers)
                rate = opts.latency_rate or (measured / 2 if measured else None)
                if rate is None:
                    log("latency: skipped (no single-reading rate measured; pass --latency-rate)")
                    continue
                report.latencies.append(latency_case(dbs, opts, rate, workdir, workers))
    finally:
        dbs.close()


# ---------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Options()
    p.add_argument(
        "--messages",
        type=int,
        default=d.messages,
        help="single-reading messages in the backlog (0 skips; default %(default)s)",
    )
    p.add_argument(
        "--batch-messages",
        type=int,
        default=d.batch_messages,
        help="multi-reading messages in the backlog (0 skips; default %(default)s)",
    )
    p.add_argument(
        "--readings-per-message",
        type=int,
        default=d.readings_per_message,
        help="readings in each multi-reading message (default %(default)s)",
    )
    p.add_argument(
        "--naive-messages",
        type=int,
        default=d.naive_messages,
        help="messages for the per-message INSERT baseline (0 skips; default %(default)s)",
    )
    p.add_argument(
        "--latency-seconds",
        type=float,
        default=d.latency_seconds,
        help="length of the live latency run (0 skips; default %(default)s)",
    )
    p.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="messages/s for the latency run (default: half the measured "
        "single-reading ingest rate)",
    )
    p.add_argument(
        "--meters",
        type=int,
        default=d.meters,
        help="meters in the benchmark network (default %(default)s)",
    )
    p.add_argument(
        "--autosave-interval",
        type=int,
        default=d.autosave_interval,
        help="Mosquitto autosave interval in s (default %(default)s, as the tests)",
    )
    p.add_argument("--no-raw-v311", action="store_true", help="skip the raw MQTT 3.1.1 subscriber")
    p.add_argument(
        "--workers",
        type=_workers,
        default=d.workers,
        help="ingest drains with this many `symbiont ingest` processes sharing the "
        "subscription, comma-separated (default 1,2); a latency run for each number, "
        "at half of what it drained; the naive baseline stays single-process",
    )
    p.add_argument(
        "--batch-readings",
        type=int,
        default=None,
        help="SYMBIONT_INGEST_BATCH_READINGS for ingest (default: its setting)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=None,
        help="SYMBIONT_INGEST_BATCH_WAIT_MS for ingest (default: its setting)",
    )


def _workers(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of worker counts: {text!r}") from None
    if not counts or any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"worker counts must be 1 or more: {text!r}")
    return tuple(dict.fromkeys(counts))


def from_args(args: argparse.Namespace, *, command: str = "") -> Options:
    """Options from parsed arguments; what ``args`` lacks keeps its default."""
    opts = arguments.options_from(Options, args, QUICK, command=command)
    for option, setting in (
        ("batch_readings", "SYMBIONT_INGEST_BATCH_READINGS"),
        ("batch_wait_ms", "SYMBIONT_INGEST_BATCH_WAIT_MS"),
    ):
        if getattr(args, option, None) is not None:
            opts.ingest_env[setting] = str(getattr(args, option))
    return opts


# -------------------------------------------------------------------------------- output


def settings_used(opts: Options) -> str:
    s = Settings()  # what ingest reads from this environment, before the options' overrides
    env = opts.ingest_env
    batch = env.get("SYMBIONT_INGEST_BATCH_READINGS", str(s.ingest_batch_readings))
    wait = env.get("SYMBIONT_INGEST_BATCH_WAIT_MS", str(s.ingest_batch_wait_ms))
    return f"SYMBIONT_INGEST_BATCH_READINGS={batch}, SYMBIONT_INGEST_BATCH_WAIT_MS={wait}"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def table(report: Report) -> list[str]:
    lines = [
        "| Workload | Consumer | Messages | Readings | Timed span | Messages/s | Readings/s "
        "| Wall from process start | Peak RSS (VmHWM) | CPU s: consumer / its PG backend / "
        "broker / everything else | Messages per consumer CPU s after connecting |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d in report.drains:
        lines.append(
            f"| {d.workload} | {d.consumer} | {d.messages:,} | {d.readings:,} | "
            f"{d.seconds:.2f} s | {d.msg_rate:,.0f} | {d.reading_rate:,.0f} | "
            f"{d.wall_s:.2f} s | {mib(d.peak_kib)} | {secs(d.cpu_consumer)} / "
            f"{secs(d.cpu_backend)} / {secs(d.cpu_broker)} / {secs(d.cpu_others)} | "
            f"{_rate(d.msgs_per_cpu_s)} |"
        )
    return lines


def verdicts(report: Report) -> list[str]:
    lines: list[str] = []
    by = {(d.workload, d.consumer): d for d in report.drains}
    for workload in dict.fromkeys(d.workload for d in report.drains):
        raw = by.get((workload, RAW_CONSUMERS[0][1]))
        raw3 = by.get((workload, RAW_CONSUMERS[1][1]))
        ing = by.get((workload, INGEST))
        if raw is None or ing is None:
            continue
        single = workload.startswith("1 ")
        value = ing.msg_rate if single else ing.reading_rate
        target = TARGET_MSGS if single else TARGET_READINGS
        unit = "messages/s" if single else "readings/s"
        also = (
            f", {ing.msg_rate / raw3.msg_rate:.2f} × raw paho MQTT 3.1.1 "
            f"({raw3.msg_rate:,.0f} msg/s)"
            if raw3 is not None
            else ""
        )
        lines.append(
            f"- {workload}: ingest {value:,.0f} {unit} = **{ing.msg_rate / raw.msg_rate:.2f} × "
            f"raw paho MQTT 5** ({raw.msg_rate:,.0f} msg/s, same protocol as ingest){also}. "
            f"Target {target:,.0f} {unit}: **{'met' if value >= target else 'not met'}**. "
            f"Stored {ing.stored:,} of {ing.readings:,} readings, {ing.rejected} rejected, in "
            f"{ing.batches:,} batches."
        )
        for team in (d for d in report.drains if d.workload == workload and d.workers > 1):
            team_value = team.msg_rate if single else team.reading_rate
            split = ", ".join(f"{m:,}" if m is not None else "?" for m in team.per_worker)
            verdict = "met" if team_value >= target else "not met"
            lines.append(
                f"- {workload}: {team.workers} ingest workers {team_value:,.0f} {unit} = "
                f"**{team.msg_rate / ing.msg_rate:.2f} × one worker**, "
                f"{team.msg_rate / raw.msg_rate:.2f} × raw paho MQTT 5. Target {target:,.0f} "
                f"{unit}: **{verdict}**. Messages committed per worker {split}; stored "
                f"{team.stored:,} of {team.readings:,} readings, {team.rejected} rejected, in "
                f"{team.batches:,} batches."
            )
    return lines


def markdown(report: Report, opts: Options, info: dict[str, str]) -> str:
    out = [
        *reports.heading(
            SECTION,
            opts.command,
            report.code,
            info,
            "Broker, consumers and PostgreSQL all on this machine.",
            broker=True,
            paho=True,
            code_label=", code at ",
        ),
        "",
        f"Ingest settings: {settings_used(opts)}. Mosquitto from `tests.services` "
        f"(persistence on, unlimited queues, autosave every {opts.autosave_interval} s). "
        f"Network: 1 partner, {opts.meters} `total` meters in MWh.",
        "",
        "Backlog drain: each consumer's persistent session (shared subscription, QoS 1; MQTT 5 "
        "unless marked 3.1.1, with Receive Maximum 65535 for raw paho and ingest's "
        "SYMBIONT_INGEST_QUEUE_MESSAGES for ingest) is created, the backlog is published "
        "once while all are offline, then each consumer in turn drains its queue alone. Raw "
        "paho (one process, `loop_forever`, `json.loads` in `on_message`, automatic PUBACK): "
        "N / (last message − connect). Ingest (`symbiont ingest`, PUBACK after commit): N / "
        "(max − min `received_at`) of the stored readings, after checking that every reading "
        "was stored and none rejected; wall = process start → last commit (its NOTIFY). CPU "
        "seconds from /proc: the consumer process over its whole life, the PostgreSQL backends "
        "of ingest's writer connections, Mosquitto during that drain, and everything else the "
        "machine ran meanwhile (PostgreSQL's background writers, this harness, and any other "
        "work on the box: the 2 cores hold 2 CPU seconds per second of wall time). The last "
        "column divides the messages by the consumer's CPU seconds after it connected: about "
        "the rate it could reach with a core to itself, a figure other work on the box "
        "disturbs far less than the rates."
        + (
            " Rows with several ingest workers: that many `symbiont ingest` processes (distinct "
            "client ids, one share group) drain together the backlog the broker queued for "
            "their sessions, half each; their CPU seconds and their backends' are summed "
            "(the last column divides by the sum), and the peak RSS is the larger worker's."
            if any(n > 1 for n in opts.workers)
            else ""
        ),
        "",
        *table(report),
        "",
        *verdicts(report),
    ]
    for lat in report.latencies:
        who = "Ingest" if lat.workers == 1 else f"{lat.workers} ingest workers"
        out += [
            "",
            f"Latency at half load ({ingest_label(lat.workers)}): a publisher aimed at "
            f"{lat.target_rate:,.0f} single-reading messages/s for {opts.latency_seconds:g} s and "
            f"achieved {lat.achieved_rate:,.0f} msg/s (at worst {lat.max_behind_s * 1000:.0f} ms "
            f"behind schedule); {lat.stored:,} of {lat.published:,} readings stored in "
            f"{lat.batches:,} batches. Publish → committed (NOTIFY received): "
            f"p50 {lat.p50_ms:.1f} ms, **p99 {lat.p99_ms:.1f} ms**, max {lat.max_ms:.1f} ms. "
            f"{who} peak RSS {mib(lat.peak_kib)}. CPU seconds meanwhile: ingest "
            f"{secs(lat.cpu_ingest)}, publisher {secs(lat.cpu_publisher)}, the whole machine "
            f"{secs(lat.cpu_machine)} (of {2 * lat.span_s:.1f} available on 2 cores in those "
            f"{lat.span_s:.1f} s).",
        ]
    peaks = [d.peak_kib for d in report.drains if d.consumer.startswith(INGEST) and d.peak_kib]
    peaks += [lat.peak_kib for lat in report.latencies if lat.peak_kib]
    if peaks:
        out += ["", f"Ingest peak memory (largest VmHWM of all runs): {mib(max(peaks))}."]
    out += ["", report.footer()]
    return "\n".join(out) + "\n"


def main(opts: Options) -> Report:
    info = reports.machine()
    report = run(opts)
    reports.publish(markdown(report, opts, info), opts.write, SECTION, stop="#")
    return report
