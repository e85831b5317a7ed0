"""Sparkplug B ingest beside JSON: backlog drains of ``symbiont ingest`` and the parse alone.

The same readings, 100 ``total`` meters, reach ingest either as JSON on
``symbiont/readings/{partner}/{meter}`` or as Sparkplug B from one edge node whose NBIRTH
maps a metric (with an alias) to each meter, followed by NDATA messages that carry values by
alias. Each workload has its own broker and database: ingest opens its persistent session
and leaves, the backlog is published at QoS 1 while it is offline, then ingest starts alone
and drains it (the method of benchmarks/ingest_throughput.py, whose drain it reuses:
rate = N / (max − min ``received_at``), every reading checked stored, none rejected). One
ingest process only: a Sparkplug node's messages must reach one process in order.

The parse alone: ``Parser.parse`` in this process on the same payloads, no broker, no
database (CPU µs per message, best of 3 rounds: CPU time, which other work on a shared machine
disturbs far less than wall time), to say how much of the difference is the payload's
decoding.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.clients import QoS1Publisher  # noqa: E402
from benchmarks.harness import BenchError, arguments, log, postgres, proc, reports, services, slug  # noqa: E402
from benchmarks.harness.reports import mib, secs  # noqa: E402
from benchmarks.ingest_throughput import (  # noqa: E402
    INTERVAL_S,
    DrainResult,
    Ingest,
    backlog,
    bench_network,
    drain_ingest,
    readings_start,
    revision,
)
from core.network import parse_network  # noqa: E402
from ingest.parse import NetworkIndex, Parser  # noqa: E402
from ingest.sparkplug.session import SparkplugSessions  # noqa: E402
from ingest.sparkplug.sparkplug_b_pb2 import DataType, Payload  # noqa: E402
from tests.services import Mosquitto  # noqa: E402

SECTION = "## Sparkplug B ingest beside JSON"
GROUP, NODE = "bench", "gateway"


@dataclass
class Options:
    messages: int = 100_000  # single-reading (single-metric) messages
    batch_messages: int = 10_000  # messages of readings_per_message readings
    readings_per_message: int = 100
    meters: int = 100
    autosave_interval: int = 1
    parse_messages: int = 20_000  # for the in-process parse (0 skips)
    quiet_wait: float = arguments.QUIET_WAIT
    write: Path | None = ROOT / "BENCHMARKS.md"
    command: str = ""
    ingest_env: dict[str, str] = field(default_factory=dict)


DESCRIPTION = "Sparkplug B ingest beside JSON (benchmarks/sparkplug_throughput.py)."
QUICK = {"messages": 10_000, "batch_messages": 1_000, "parse_messages": 2_000, "quiet_wait": 3.0}


def network(meters: int) -> dict[str, Any]:
    """The ingest benchmark's network, each meter also the source of a Sparkplug metric."""
    doc = bench_network(meters)
    for i, meter in enumerate(doc["meters"]):
        meter["sparkplug"] = {"group": GROUP, "node": NODE, "metric": f"Energy/{i:03d}"}
    return doc


def sparkplug_backlog(n: int, per_message: int, meters: int) -> list[tuple[str, bytes]]:
    """The NBIRTH (every meter's metric, alias = its number, MWh as engUnit, no value yet),
    then ``n`` NDATA of ``per_message`` values of one metric each: the readings of
    ``ingest_throughput.backlog`` (same meters, instants and values)."""
    now_ms = int(time.time() * 1000)
    birth = Payload(timestamp=now_ms, seq=0)
    birth.metrics.add(name="bdSeq", datatype=DataType.Int64, long_value=0, timestamp=now_ms)
    for i in range(meters):
        metric = birth.metrics.add(
            name=f"Energy/{i:03d}", alias=i, datatype=DataType.Double, is_null=True
        )
        metric.properties.keys.append("engUnit")
        metric.properties.values.add(type=DataType.String, string_value="MWh")
    out = [(f"spBv1.0/{GROUP}/NBIRTH/{NODE}", birth.SerializeToString())]
    per_meter_msgs = -(-n // meters)
    start = readings_start(per_meter_msgs * per_message)
    topic = f"spBv1.0/{GROUP}/NDATA/{NODE}"
    for j in range(n):
        first = (j // meters) * per_message
        payload = Payload(timestamp=now_ms, seq=(j + 1) % 256)
        for k in range(first, first + per_message):
            payload.metrics.add(
                alias=j % meters,
                timestamp=(start + k * INTERVAL_S) * 1000,
                datatype=DataType.Double,
                double_value=round(1000.0 + k * 0.25, 3),
            )
        out.append((topic, payload.SerializeToString()))
    return out


def json_backlog(n: int, per_message: int, meters: int) -> list[tuple[str, bytes]]:
    return list(backlog(n, per_message, meters))


def publish_all(url: str, messages: list[tuple[str, bytes]]) -> float:
    pub = QoS1Publisher(url, f"bench-publisher-{secrets.token_hex(3)}")
    started = time.perf_counter()
    try:
        for i in range(0, len(messages), 200):
            pub.publish([(t.encode(), p) for t, p in messages[i : i + 200]])
        if not pub.wait_acked(120) or pub.acked < len(messages):
            raise BenchError(f"only {pub.acked} of {len(messages)} PUBACKs arrived")
    finally:
        pub.close()
    return time.perf_counter() - started


@dataclass
class ParseResult:
    workload: str
    us_per_message: float
    us_per_reading: float


@dataclass
class Report(reports.RunReport):
    drains: list[DrainResult] = field(default_factory=list)
    parses: list[ParseResult] = field(default_factory=list)


def drain(
    dbs: postgres.Databases,
    opts: Options,
    workload: str,
    messages: list[tuple[str, bytes]],
    readings: int,
    workdir: Path,
) -> DrainResult:
    with Mosquitto(autosave_interval=opts.autosave_interval) as broker:
        tag = secrets.token_hex(3)
        url = dbs.fresh(slug(workload))
        ingest = Ingest(
            broker,
            url,
            f"bench-sparkplug-{tag}",
            opts,
            workdir / f"ingest-{slug(workload)}.log",
            group=f"sp{tag}",
        )
        ingest.start()
        try:
            ingest.wait_ready()
        finally:
            ingest.stop()
        log(f"{workload}: publishing {len(messages):,} messages (QoS 1)")
        took = publish_all(broker.url, messages)
        log(f"{workload}: published in {took:.1f} s")
        return drain_ingest(
            opts,
            broker,
            workload,
            len(messages),
            0,
            url,
            [ingest],
            readings=readings,
        )


def parse_case(
    workload: str, messages: list[tuple[str, bytes]], readings: int, index: NetworkIndex
) -> ParseResult:
    """Best of three rounds of parsing every message (fresh Sparkplug sessions each), in CPU
    seconds of this process."""
    best = float("inf")
    for _ in range(3):
        parser = Parser(index, handler=SparkplugSessions())
        now = time.time()
        started = time.process_time()
        stored = 0
        for topic, payload in messages:
            parsed = parser.parse(topic, payload, now)
            stored += len(parsed.readings)
            if parsed.rejections:
                raise BenchError(f"{workload}: {parsed.rejections[0]}")
        best = min(best, time.process_time() - started)
        if stored != readings:
            raise BenchError(f"{workload}: parsed {stored} of {readings} readings")
    result = ParseResult(workload, best / len(messages) * 1e6, best / readings * 1e6)
    log(f"parse {workload}: {result.us_per_message:.1f} CPU µs/message")
    return result


def workloads(n: int, per_message: int, meters: int) -> list[tuple[str, list[Any], int]]:
    what = "reading" if per_message == 1 else "readings"
    return [
        (f"{per_message} {what}/msg, JSON", json_backlog(n, per_message, meters), n * per_message),
        (
            f"{per_message} {what}/msg, Sparkplug B",
            sparkplug_backlog(n, per_message, meters),
            n * per_message,
        ),
    ]


def run(opts: Options) -> Report:
    report = Report(code=revision())
    with reports.timed_run(report):
        workdir = services.make_workdir("bench-sparkplug")
        net = parse_network(network(opts.meters))
        index = NetworkIndex.from_network(net)
        if opts.parse_messages:
            for n, per in ((opts.parse_messages, 1), (opts.parse_messages // 10, 100)):
                for workload, messages, readings in workloads(n, per, opts.meters):
                    report.parses.append(parse_case(workload, messages, readings, index))
        dbs = postgres.Databases(net, "bench_sp")
        try:
            sizes = [(opts.messages, 1), (opts.batch_messages, opts.readings_per_message)]
            for n, per in sizes:
                if not n:
                    continue
                for workload, messages, readings in workloads(n, per, opts.meters):
                    proc.wait_quiet(opts.quiet_wait)
                    report.drains.append(drain(dbs, opts, workload, messages, readings, workdir))
        finally:
            dbs.close()
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Options()
    p.add_argument("--messages", type=int, default=d.messages, help="single-reading messages")
    p.add_argument(
        "--batch-messages", type=int, default=d.batch_messages, help="multi-reading messages"
    )
    p.add_argument(
        "--readings-per-message",
        type=int,
        default=d.readings_per_message,
        help="readings in each multi-reading message (default %(default)s)",
    )
    p.add_argument("--meters", type=int, default=d.meters, help="meters (default %(default)s)")
    p.add_argument(
        "--parse-messages",
        type=int,
        default=d.parse_messages,
        help="messages for the in-process parse (0 skips; default %(default)s)",
    )


def markdown(report: Report, opts: Options, info: dict[str, str]) -> str:
    out = [
        *reports.heading(
            SECTION,
            opts.command,
            report.code,
            info,
            "Broker, ingest and PostgreSQL all on this machine, which other work shares "
            "(see the CPU seconds of everything else, and the load average at the end).",
            broker=True,
            paho=True,
            code_label=", code at ",
        ),
        "",
        f"Network: 1 partner, {opts.meters} `total` meters in MWh, each also the source of a "
        "Sparkplug B metric of one edge node. The same readings (meters, instants, values) "
        "come as JSON (one object, or an array of them) or as Sparkplug B (one NBIRTH naming "
        "every metric with an alias and `engUnit`, then NDATA by alias, a timestamp per "
        "value, Double). Each drain: one `symbiont ingest` process with a broker and a "
        "database of its own, backlog published at QoS 1 while its session is offline, then "
        "drained alone; rate = N / (max − min `received_at`) of the stored readings, every "
        "reading checked stored and none rejected; messages include the NBIRTH.",
        "",
        "| Workload | Messages | Readings | Timed span | Messages/s | Readings/s | Peak RSS "
        "(VmHWM) | CPU s: ingest / its PG backends / broker / everything else | Messages per "
        "ingest CPU s after connecting |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d in report.drains:
        rate = d.msgs_per_cpu_s
        out.append(
            f"| {d.workload} | {d.messages:,} | {d.readings:,} | {d.seconds:.2f} s | "
            f"{d.msg_rate:,.0f} | {d.reading_rate:,.0f} | {mib(d.peak_kib)} | "
            f"{secs(d.cpu_consumer)} / {secs(d.cpu_backend)} / {secs(d.cpu_broker)} / "
            f"{secs(d.cpu_others)} | {'–' if rate is None else f'{rate:,.0f}'} |"
        )
    if report.parses:
        out += [
            "",
            "The parse alone (`Parser.parse` in one process: decoding, alias and meter "
            "lookup, unit conversion, checks; no broker, no database), CPU time, best of 3 "
            "rounds:",
            "",
            "| Workload | CPU µs per message | CPU µs per reading |",
            "|---|---:|---:|",
        ]
        out += [
            f"| {p.workload} | {p.us_per_message:.1f} | {p.us_per_reading:.2f} |"
            for p in report.parses
        ]
    out += ["", report.footer()]
    return "\n".join(out) + "\n"


def main(opts: Options) -> Report:
    info = reports.machine()
    report = run(opts)
    reports.publish(markdown(report, opts, info), opts.write, SECTION, stop="#")
    return report
