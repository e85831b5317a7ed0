"""API speed: ``/live`` and a month of windows under load, and 500 live streams (issue 5).

Set-up, everything on this machine: a fresh migrated database with the example network
(``examples/kalundborg.yaml``), ``days`` of simulated readings up to the current minute
(``cli.backfill.write_simulation``, seed 5, a 25 % leak on ``steam-asnaes-novo`` from the
start, as ``tests/api_system.py`` does) reconciled by ``symbiont rules --once``; then a
private Mosquitto, ``symbiont ingest``, ``symbiont rules`` and ``symbiont api --port P`` as
processes of their own, and a publisher process (``python -m benchmarks.api_latency
publish``) sending ``ingest_rate`` readings/s for as long as the measurements last.

The publisher continues the backfill's simulation (same network, faults and seed, simulated
from the backfill's start so that the registers carry on where the backfill stopped):
``readings_per_message`` readings per QoS 1 message, round-robin over the 26 meters that read
continuously (the weighbridges are left out), each message holding its meter's readings since
its previous message, evenly spaced up to now and interpolated from the simulation. The last
complete windows, which is what ``/live`` shows and the live streams announce, only change
when an hour ends or late data arrives, so the publisher also sends ``late_per_s`` late
readings per second, each one reading of a rate meter somewhere in the previous hour (the
simulated value ± 1 %): the rules engine recomputes that window and the API's live hub
announces the changed exchange as a ``flow`` event.

Measurements, one after the other while ingest, rules and the publisher run:

- ``/api/v1/live`` and ``/api/v1/exchanges/steam-asnaes-novo/windows?from=…&to=…`` (the
  ``days`` × 24 hourly windows of the backfill), each for ``seconds`` at ``rate`` requests/s
  with an operator token, from a load generator process (``python -m benchmarks.api_latency
  load``). It is open loop: request i is due at t0 + i / rate whatever happened before, goes
  out on the first free one of ``connections`` keep-alive connections (HTTP/1.1 on raw asyncio
  streams: little CPU of its own), and its latency runs from when it was due to the last byte
  of the response, so time spent queueing, for a connection or in the server, is counted.
- ``streams`` server-sent-event streams (``/api/v1/live/stream``, half with an operator token,
  half with the token of partner ``novo``), opened at once from one client process (``python
  -m benchmarks.api_latency sse``) and held for ``hold_seconds`` while readings flow; per
  stream the events received, per event how long it took to reach every stream that got it.
  The API's resident memory (VmRSS from /proc) is sampled every second before, during and
  after.

CPU seconds of every process involved (the API and its PostgreSQL backends, rules and its
backends, ingest and its backends, Mosquitto, the publisher, the load generator) and of the
whole machine are read from /proc around each measurement, so a run disturbed by other work on
the box says so.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.clients import QoS1Publisher, split_url  # noqa: E402
from benchmarks.harness import BenchError, arguments, log, postgres, proc, reports, services  # noqa: E402
from benchmarks.harness.reports import mib, secs  # noqa: E402
from cli.faults import parse_fault  # noqa: E402
from cli.simulate import simulate  # noqa: E402
from core.db import asyncpg_dsn  # noqa: E402
from core.network import Network, ReadingType, load_network  # noqa: E402
from tests.services import Mosquitto, free_port, wait_port  # noqa: E402

SECTION = "## API (issue 5: speed)"
ON_MACHINE = (
    "Everything (PostgreSQL, broker, ingest, rules, API, publisher, load generator, harness) "
    "on this machine."
)
NETWORK_FILE = ROOT / "examples" / "kalundborg.yaml"
LEAKING = "steam-asnaes-novo"  # leaks 25 % from the start of the backfill, as in the API tests
WINDOWS_EXCHANGE = LEAKING
PARTNER = "novo"  # the partner token of half the live streams (receiver of LEAKING)
SEED = 5
RULES_WORKER = "bench-api-rules"
TARGET_LIVE_P99_S = 0.050
TARGET_WINDOWS_P99_S = 0.100
PUB_WINDOW = 1000  # unacknowledged messages the publisher allows itself
# What the code measured is: its commit, and which of these differ from it.
CODE_PATHS = ("api", "core", "ingest", "rules", "benchmarks")


def faults_for(start: datetime) -> list[str]:
    return [f"leak:{LEAKING}:25%@{start.isoformat()}"]


# --------------------------------------------------------------------------------- options


QUIET_WAIT = 60.0  # the default of --quiet-wait on this benchmark's own command line


@dataclass
class Options:
    days: int = 30
    rate: float = 200.0  # requests/s in each HTTP measurement
    windows_extra_rates: tuple[float, ...] = (50.0,)  # the windows request at these rates too
    seconds: float = 60.0  # length of each HTTP measurement
    connections: int = 32  # keep-alive connections of the load generator
    ingest_rate: float = 5000.0  # readings/s published meanwhile
    readings_per_message: int = 100
    late_per_s: float = 2.0  # late readings/s into the previous hour (0: none)
    streams: int = 500
    hold_seconds: float = 60.0
    warmup: float = 15.0  # publishing before the first measurement
    rules: bool = True  # run `symbiont rules` beside ingest during the measurements
    pool_size: int | None = None  # SYMBIONT_API_POOL_SIZE for the API (None: its default)
    windows_cache_mb: float | None = None  # SYMBIONT_API_WINDOWS_CACHE_MB (None: its default)
    profile: Path | None = None  # directory for py-spy profiles of the API (collapsed stacks)
    quiet_wait: float = QUIET_WAIT
    write: Path | None = ROOT / "BENCHMARKS.md"
    command: str = ""


DESCRIPTION = "API latency under load and live streams (benchmarks/api_latency.py)."
# --quick: small sizes for a smoke run
QUICK = {
    "days": 3,
    "seconds": 10.0,
    "hold_seconds": 10.0,
    "streams": 50,
    "warmup": 5.0,
    "quiet_wait": 3.0,
}


# -------------------------------------------------------------------------- the publisher


def publish_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True)
    p.add_argument("--client-id", required=True)
    p.add_argument("--network", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--fault", action="append", default=[])
    p.add_argument("--sim-start", required=True, help="the backfill's start (ISO)")
    p.add_argument("--live-from", type=float, required=True, help="the backfill's end (epoch)")
    p.add_argument("--rate", type=float, required=True, help="readings/s")
    p.add_argument("--per-message", type=int, required=True)
    p.add_argument("--late-per-s", type=float, default=0.0)
    p.add_argument("--max-seconds", type=float, required=True)
    p.add_argument("--ready-file", required=True)


def run_publish(args: argparse.Namespace) -> dict[str, Any]:
    """Publish ``rate`` readings/s until SIGTERM (or ``max_seconds``); see the module
    docstring. Writes ``ready_file`` once the simulation is done and it is connected."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    net = load_network(args.network)
    faults = [parse_fault(f, net) for f in args.fault]
    sim_start = datetime.fromisoformat(args.sim_start)
    live_from = float(args.live_from)
    horizon = datetime.fromtimestamp(live_from + args.max_seconds + 600, UTC)
    keep_from = live_from - 3 * 3600
    continuous = [
        m for m in net.meters if m.interval is not None and m.reading != ReadingType.delta
    ]
    wanted = {m.id for m in continuous}
    pieces: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for piece in simulate(net, sim_start, horizon, faults=faults, seed=args.seed):
        if piece.meter_id in wanted and len(piece) and piece.end > keep_from:
            keep = piece.ts >= keep_from
            pieces[piece.meter_id].append((piece.ts[keep], piece.value[keep]))
    series = {
        mid: (np.concatenate([t for t, _ in ps]), np.concatenate([v for _, v in ps]))
        for mid, ps in pieces.items()
    }
    topics = [f"symbiont/readings/{m.partner}/{m.id}".encode() for m in continuous]
    # Late readings go to rate meters of hourly exchanges: one more reading changes the window.
    hourly = {
        mid
        for ex in net.exchanges
        if ex.window == timedelta(hours=1)
        for mid in (*ex.sent, *ex.received)
    }
    late_meters = [
        (i, m.id) for i, m in enumerate(continuous) if m.id in hourly and m.reading == "rate"
    ]
    pub = QoS1Publisher(args.url, args.client_id, window=PUB_WINDOW)
    Path(args.ready_file).write_text("ready\n")
    rng = random.Random(args.seed)
    per = args.per_message
    msg_rate = args.rate / per
    n = len(continuous)
    last = [live_from] * n
    published = readings = late = 0
    behind_max = 0.0
    per_second: dict[int, int] = defaultdict(int)
    t0 = time.time()
    first = t0
    next_late = t0
    late_period = 1.0 / args.late_per_s if args.late_per_s > 0 else math.inf
    try:
        while not stop.is_set() and time.time() - t0 < args.max_seconds:
            due = t0 + published / msg_rate
            wait = due - time.time()
            if wait > 0:
                time.sleep(min(wait, 0.05))
                continue
            now = time.time()
            behind_max = max(behind_max, now - due)
            i = published % n
            mid = continuous[i].id
            ts, val = series[mid]
            step = (now - last[i]) / per
            stamps = np.round(last[i] + step * np.arange(1, per + 1), 6)
            values = np.interp(stamps, ts, val)
            payload = orjson.dumps(
                [
                    {"ts": t, "value": v}
                    for t, v in zip(stamps.tolist(), values.tolist(), strict=True)
                ]
            )
            batch = [(topics[i], payload)]
            if late_meters and now >= next_late:
                j, late_id = late_meters[late % len(late_meters)]
                hour = math.floor(now / 3600) * 3600 - 3600
                at = round(hour + rng.uniform(30.0, 3570.0), 6)
                ts_l, val_l = series[late_id]
                value = float(np.interp(at, ts_l, val_l)) * (1 + rng.uniform(-0.01, 0.01))
                batch.append((topics[j], orjson.dumps([{"ts": at, "value": value}])))
                late += 1
                next_late += late_period
            pub.publish(batch)
            last[i] = float(stamps[-1])
            if published == 0:
                first = now
            published += 1
            readings += per
            per_second[int(now)] += per
        last_at = time.time()
        pub.wait_acked()
    finally:
        pub.close()
    span = last_at - first
    return {
        "published": published + late,
        "acked": pub.acked,
        "readings": readings,
        "late": late,
        "first_at": first,
        "last_at": last_at,
        "achieved_readings_per_s": readings / span if span > 0 else 0.0,
        "max_behind_s": behind_max,
        "meters": n,
        "late_meters": [mid for _, mid in late_meters],
        "per_second": sorted(per_second.items()),
        "cpu_s": proc.rusage_cpu(),
    }


# ----------------------------------------------------------------- HTTP over raw asyncio


class HttpConnection:
    """One keep-alive HTTP/1.1 connection: a GET, then read the whole response."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def get(self, request: bytes) -> tuple[int, int]:
        """(status, body bytes); reconnects first if the connection was closed."""
        if self.writer is None or self.writer.is_closing():
            await self.connect()
        assert self.reader is not None and self.writer is not None
        self.writer.write(request)
        status, headers = await read_head(self.reader)
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            size = 0
            while True:
                chunk = await read_chunk(self.reader)
                if chunk is None:
                    break
                size += len(chunk)
        elif b"content-length" in headers:
            size = len(await self.reader.readexactly(int(headers[b"content-length"])))
        else:
            size = len(await self.reader.read())
            self.close()
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, size


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def read_chunk(reader: asyncio.StreamReader) -> bytes | None:
    """One chunk of a chunked body; None at its end."""
    size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
    if size == 0:
        await reader.readuntil(b"\r\n")
        return None
    data = await reader.readexactly(size + 2)
    return data[:-2]


def request_bytes(host: str, port: int, path: str, token: str, accept: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Accept: {accept}\r\nUser-Agent: symbiont-bench\r\n\r\n"
    ).encode()


def load_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--grace", type=float, default=30.0, help="wait after the last send")


async def open_loop(args: argparse.Namespace) -> dict[str, Any]:
    """Requests due at t0 + i / rate, each on the first free connection; latency from when it
    was due to the end of its response."""
    host, port = split_url(args.url.rstrip("/"))
    request = request_bytes(host, port, args.path, args.token, "application/json")
    startup_cpu = proc.rusage_cpu()
    idle: asyncio.Queue[HttpConnection] = asyncio.Queue()
    for _ in range(args.connections):
        conn = HttpConnection(host, port)
        await conn.connect()
        idle.put_nowait(conn)
    loop = asyncio.get_running_loop()
    total = int(args.rate * args.duration)
    results: list[list[float | None]] = []
    errors: list[str] = []
    reconnects = 0
    t0 = loop.time() + 0.2
    wall0 = time.time() + (t0 - loop.time())

    async def one(due: float) -> None:
        nonlocal reconnects
        began = loop.time()  # later than ``due`` only when this process lags
        conn = await idle.get()
        try:
            try:
                status, size = await conn.get(request)
            except (OSError, asyncio.IncompleteReadError) as exc:
                # The server closed an idle keep-alive connection: once more on a new one.
                reconnects += 1
                conn.close()
                errors.append(f"retried after {type(exc).__name__}")
                status, size = await conn.get(request)
            results.append([due - t0, loop.time() - due, status, size, began - due])
        except Exception as exc:
            conn.close()
            errors.append(f"{type(exc).__name__}: {exc}")
            results.append([due - t0, loop.time() - due, 0, 0, began - due])
        finally:
            idle.put_nowait(conn)

    tasks: dict[asyncio.Task[None], float] = {}
    for i in range(total):
        due = t0 + i / args.rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(due))
        tasks[task] = due
        task.add_done_callback(lambda t: tasks.pop(t, None))
    # A server that cannot keep up leaves requests queued: give them ``grace`` s more, then
    # count those still unanswered with their waiting so far (a lower bound) as status -1.
    if tasks:
        await asyncio.wait(list(tasks), timeout=args.grace)
    ended = loop.time()
    unanswered = 0
    for task, due in list(tasks.items()):
        task.cancel()
        unanswered += 1
        results.append([due - t0, ended - due, -1, 0, None])
    if unanswered:
        await asyncio.wait(list(tasks), timeout=5)
    while not idle.empty():
        idle.get_nowait().close()
    return {
        "requests": total,
        "results": results,
        "errors": errors[:20],
        "error_count": len(errors),
        "reconnects": reconnects,
        "unanswered": unanswered,
        "started_at": wall0,
        "span_s": ended - t0,
        "cpu_s": proc.rusage_cpu() - startup_cpu,
    }


def sse_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--token", action="append", required=True, help="LABEL:TOKEN:COUNT")
    p.add_argument("--hold", type=float, required=True)


async def hold_streams(args: argparse.Namespace) -> dict[str, Any]:
    """Open every stream at once, hold them ``hold`` s after the last one answered, count
    what each received; then close them all."""
    host, port = split_url(args.url.rstrip("/"))
    startup_cpu = proc.rusage_cpu()
    plan: list[tuple[str, str]] = []
    for spec in args.token:
        label, token, count = spec.split(":", 2)
        plan += [(label, token)] * int(count)
    loop = asyncio.get_running_loop()
    opened = asyncio.Event()
    answered = 0
    t_open = loop.time()
    arrivals: dict[bytes, list[float]] = defaultdict(list)  # event (kind + data) → arrivals
    streams: list[dict[str, Any]] = []

    def answer() -> None:
        nonlocal answered
        answered += 1
        if answered == len(plan):
            opened.set()

    async def stream(label: str, token: str) -> None:
        rec: dict[str, Any] = {
            "label": label,
            "status": 0,
            "connect_s": None,
            "counts": defaultdict(int),
            "bytes": 0,
            "error": None,
        }
        streams.append(rec)
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request_bytes(host, port, args.path, token, "text/event-stream"))
            status, headers = await read_head(reader)
            rec["status"] = status
            rec["connect_s"] = loop.time() - t_open
            answer()
            if status != 200:
                return
            chunked = headers.get(b"transfer-encoding", b"").lower() == b"chunked"
            pending = b""
            kind = b"message"
            seen: dict[bytes, int] = {}
            while True:  # until cancelled at the end of the hold
                data = await (read_chunk(reader) if chunked else reader.read(65536))
                if not data:
                    rec["error"] = "the server ended the stream"
                    return
                at = loop.time()
                rec["bytes"] += len(data)
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.startswith(b"event:"):
                        kind = line[6:].strip()
                    elif line.startswith(b"data:"):
                        rec["counts"][kind.decode()] += 1
                        # The same payload may be sent again later (a value changed back):
                        # its n-th arrival on each stream is the same event.
                        key = kind + b"\0" + hashlib.blake2b(line, digest_size=16).digest()
                        n = seen.get(key, 0)
                        seen[key] = n + 1
                        arrivals[key + n.to_bytes(4, "big")].append(at)
                    elif line.startswith(b":"):
                        word = line[1:].strip().split(b" ")[0].decode()
                        rec["counts"][word or "comment"] += 1
                    elif not line.strip():
                        kind = b"message"
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
            if rec["connect_s"] is None:
                answer()
        finally:
            if writer is not None:
                writer.close()

    tasks = [asyncio.create_task(stream(label, token)) for label, token in plan]
    await asyncio.wait_for(opened.wait(), 120)
    all_open = loop.time()
    wall_open = time.time()
    await asyncio.sleep(args.hold)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    closed = time.time()
    spreads = [
        {
            "kind": key.split(b"\0", 1)[0].decode(),
            "streams": len(times),
            "spread_s": max(times) - min(times),
        }
        for key, times in arrivals.items()
    ]
    return {
        "streams": [{**s, "counts": dict(s["counts"])} for s in streams],
        "open_s": all_open - t_open,
        "held_from": wall_open,
        "closed_at": closed,
        "events": spreads,
        "cpu_s": proc.rusage_cpu() - startup_cpu,
    }


# ------------------------------------------------------------------------------ processes


GROUPS = ("api", "api_pg", "rules", "rules_pg", "ingest", "ingest_pg", "broker", "publisher")
# The PostgreSQL backends of each service, by the prefix of their application_name.
BACKEND_GROUPS = {
    "api_pg": "symbiont-api",
    "rules_pg": "symbiont-rules",
    "ingest_pg": "symbiont-ingest",
}


@dataclass
class Processes:
    url: str
    api: services.Service
    rules: services.Service
    ingest: services.Service
    broker: Mosquitto
    publisher: subprocess.Popen[bytes] | None = None

    def snapshot(self) -> proc.Snapshot:
        """CPU seconds of every process and of their backends, and the API's VmRSS."""
        pids = {
            "api": self.api.pid,
            "rules": self.rules.pid,
            "ingest": self.ingest.pid,
            "broker": self.broker.pid,
            "publisher": self.publisher.pid if self.publisher else None,
        }
        return proc.snapshot(pids, backends=lambda: postgres.backend_cpu(self.url), rss_of=("api",))


def cpu_spent(a: proc.Snapshot, b: proc.Snapshot) -> dict[str, float | None]:
    """CPU seconds per group between two snapshots (backends by application name; one that
    appeared in between counts from zero)."""
    return proc.spent(a, b, BACKEND_GROUPS)


def run_client(
    cmd: Sequence[str], procs: Processes, timeout: float
) -> tuple[dict[str, Any], list[proc.Snapshot]]:
    """A client role as a process; samples the processes every second while it runs. Returns
    its JSON result and the samples (first before it started, last after it ended)."""
    samples = [procs.snapshot()]
    result = services.run_json(
        [sys.executable, "-m", "benchmarks.api_latency", *cmd],
        what=cmd[0],
        env=services.clean_env(),
        timeout=timeout,
        tick=lambda: samples.append(procs.snapshot()),
        interval=1.0,
    )
    samples.append(procs.snapshot())
    return result, samples


# ----------------------------------------------------------------------------- the phases


@dataclass
class HttpPhase:
    name: str
    path: str
    who: str
    target_rate: float
    seconds: float
    connections: int
    result: dict[str, Any]
    cpu: dict[str, float | None]
    rss_kib: list[int]
    metrics_before: dict[str, float] = field(default_factory=dict)
    metrics_after: dict[str, float] = field(default_factory=dict)

    def metric_delta(self, name: str) -> float | None:
        if name not in self.metrics_before or name not in self.metrics_after:
            return None
        return self.metrics_after[name] - self.metrics_before[name]

    @property
    def ok(self) -> list[list[float]]:
        return [r for r in self.result["results"] if r[2] == 200]

    @property
    def latencies(self) -> list[float]:
        return sorted(r[1] for r in self.result["results"])

    def p(self, q: float) -> float:
        return reports.percentile_of(self.latencies, q)

    @property
    def achieved(self) -> float:
        """200 responses per second, from the first due time to the last response."""
        span = self.result["span_s"]
        return len(self.ok) / span if span > 0 else 0.0

    @property
    def errors(self) -> int:
        return sum(1 for r in self.result["results"] if r[2] != 200)

    @property
    def body_bytes(self) -> int:
        sizes = sorted(r[3] for r in self.ok)
        return int(sizes[len(sizes) // 2]) if sizes else 0

    @property
    def max_send_lag(self) -> float:
        return max((r[4] for r in self.result["results"] if r[4] is not None), default=0.0)

    def by_phase(self, step: float = 10.0) -> list[tuple[str, int, float]]:
        groups = reports.by_interval(((r[0], r[1]) for r in self.result["results"]), step)
        return [(label, len(v), reports.percentile(v, 99)) for label, v in groups]


@dataclass
class SsePhase:
    streams: int
    hold_seconds: float
    result: dict[str, Any]
    cpu: dict[str, float | None]
    rss_before_kib: int | None
    rss_during_kib: list[int]
    rss_end_kib: int | None
    rss_after_kib: int | None
    hwm_kib: int | None
    metrics_during: dict[str, float]
    metrics_after: dict[str, float]


def scrape(base: str) -> dict[str, float]:
    """A few gauges of the API's /metrics."""
    try:
        text = httpx.get(f"{base}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    out = {}
    for line in text.splitlines():
        for name in (
            "symbiont_api_live_streams",
            "symbiont_api_live_refreshes",
            "symbiont_api_windows_cache_hits",
            "symbiont_api_windows_cache_misses",
        ):
            if line.startswith(name + " "):
                out[name] = float(line.split()[1])
    return out


def http_phase(
    name: str,
    path: str,
    who: str,
    token: str,
    rate: float,
    base: str,
    procs: Processes,
    opts: Options,
) -> HttpPhase:
    log(f"{name}: {rate:g} requests/s for {opts.seconds:g} s: GET {path}")
    spy = _py_spy(procs, opts, f"{name}-{rate:g}", opts.seconds + 2)
    before = scrape(base)
    cmd = [
        "load", "--url", base, "--path", path, "--token", token,
        "--rate", repr(rate), "--duration", repr(opts.seconds),
        "--connections", str(opts.connections),
    ]  # fmt: skip
    result, samples = run_client(cmd, procs, timeout=opts.seconds * 5 + 120)
    _py_spy_wait(spy)
    phase = HttpPhase(
        name,
        path,
        who,
        rate,
        opts.seconds,
        opts.connections,
        result,
        cpu_spent(samples[0], samples[-1]),
        [rss for s in samples if (rss := s.rss_kib["api"])],
        before,
        scrape(base),
    )
    log(
        f"{name}: {len(result['results']):,} requests, p50 {_ms(phase.p(50))}, p99 "
        f"{_ms(phase.p(99))}, max {_ms(phase.p(100))}, errors {phase.errors}"
    )
    return phase


def sse_phase(token_specs: list[str], base: str, procs: Processes, opts: Options) -> SsePhase:
    time.sleep(3.0)
    rss_before = procs.api.memory_kib("VmRSS")
    log(f"sse: {opts.streams} streams held for {opts.hold_seconds:g} s (API RSS {mib(rss_before)})")
    spy = _py_spy(procs, opts, "sse", opts.hold_seconds + 5)
    metrics_during: dict[str, float] = {}

    def midway() -> None:
        time.sleep(opts.hold_seconds / 2 + 5)
        metrics_during.update(scrape(base))

    probe = threading.Thread(target=midway, daemon=True)
    probe.start()
    result, samples = run_client(
        ["sse", "--url", base, "--path", "/api/v1/live/stream", "--hold", repr(opts.hold_seconds)]
        + [arg for spec in token_specs for arg in ("--token", spec)],
        procs,
        timeout=opts.hold_seconds + 300,
    )
    _py_spy_wait(spy)
    probe.join(5)
    held_from, closed = result["held_from"], result["closed_at"]
    during = [rss for s in samples if held_from <= s.t <= closed and (rss := s.rss_kib["api"])]
    end = samples[-1].rss_kib["api"]
    hwm = procs.api.memory_kib("VmHWM")
    time.sleep(10.0)
    after = procs.api.memory_kib("VmRSS")
    phase = SsePhase(
        opts.streams,
        opts.hold_seconds,
        result,
        cpu_spent(samples[0], samples[-1]),
        rss_before,
        during,
        end,
        after,
        hwm,
        metrics_during,
        scrape(base),
    )
    counts = [
        sum(v for k, v in s["counts"].items() if k in ("flow", "alert")) for s in result["streams"]
    ]
    log(
        f"sse: events per stream min {min(counts, default=0)}, max {max(counts, default=0)}; "
        f"API RSS max {mib(max(phase.rss_during_kib, default=None))}, after {mib(after)}"
    )
    return phase


def _py_spy(
    procs: Processes, opts: Options, name: str, seconds: float
) -> subprocess.Popen[bytes] | None:
    if opts.profile is None or procs.api.pid is None:
        return None
    opts.profile.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(services.PY_SPY), "record", "--pid", str(procs.api.pid), "--rate", "100",
        "--duration", str(int(seconds)), "--nonblocking",
        "--format", "raw", "-o", str(opts.profile / f"api-{name}.txt"),
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _py_spy_wait(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.terminate()


# ------------------------------------------------------------------------------- set-up


@dataclass
class Prepared:
    start: datetime
    end: datetime
    readings: int
    load_s: float
    tokens: dict[str, str]


async def prepare(url: str, net: Network, opts: Options) -> Prepared:
    """The backfill and the tokens, in a database with the network applied."""
    dsn = asyncpg_dsn(url)
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(days=opts.days)
    from api.tokens import create_token
    from cli.backfill import write_simulation

    conn = await asyncpg.connect(dsn)
    try:
        faults = [parse_fault(f, net) for f in faults_for(start)]
        began = time.perf_counter()
        readings = await write_simulation(dsn, net, start, end, faults=faults, seed=SEED)
        load_s = time.perf_counter() - began
        tokens = {
            "operator": (await create_token(conn, "operator", name="bench operator")).token,
            "partner": (await create_token(conn, "partner", PARTNER, name="bench partner")).token,
        }
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return Prepared(start, end, readings, load_s, tokens)


def warm_up(base: str, paths: Sequence[str], token: str, windows_expected: int) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        for path in paths:
            for _ in range(20):
                response = client.get(path)
                if response.status_code != 200:
                    raise BenchError(f"GET {path}: {response.status_code} {response.text[:500]}")
        items = len(client.get(paths[1]).json()["items"])
        if items != windows_expected:
            raise BenchError(
                f"the windows request returned {items} windows, not {windows_expected}"
            )


# -------------------------------------------------------------------------------- running


@dataclass
class Report(reports.RunReport):
    prepared: Prepared | None = None
    once_s: float = 0.0
    api_env: dict[str, str] = field(default_factory=dict)
    phases: list[HttpPhase] = field(default_factory=list)
    sse: SsePhase | None = None
    publisher: dict[str, Any] = field(default_factory=dict)
    stored: int = 0
    alert_events: dict[str, int] = field(default_factory=dict)
    api_errors: list[str] = field(default_factory=list)
    api_rss_start_kib: int | None = None
    windows_path: str = ""
    windows_count: int = 0
    workdir: str = ""


def run(opts: Options) -> Report:
    report = Report(code=reports.code_version(*CODE_PATHS))
    try:
        with reports.timed_run(report):
            workdir = services.make_workdir("abench")
            report.workdir = str(workdir)
            net = load_network(NETWORK_FILE)
            proc.wait_quiet(opts.quiet_wait)
            dbs = postgres.Databases(net, "abench")
            try:
                url = dbs.fresh("api")
                log(f"set-up: {opts.days} days of the example network (write_simulation)")
                prep = asyncio.run(prepare(url, net, opts))
                report.prepared = prep
                log(
                    f"set-up: {prep.readings:,} readings in {prep.load_s:.1f} s; "
                    "symbiont rules --once"
                )
                with Mosquitto(autosave_interval=1) as broker:
                    _measure(url, net, prep, broker, opts, workdir, report)
            finally:
                dbs.close()
    finally:
        save_raw(report)
    return report


def _measure(
    url: str,
    net: Network,
    prep: Prepared,
    broker: Mosquitto,
    opts: Options,
    workdir: Path,
    report: Report,
) -> None:
    env = services.service_env(url, broker.url)
    report.once_s = services.rules_once(env, timeout=1800)
    api_env = dict(env)
    if opts.pool_size is not None:
        api_env["SYMBIONT_API_POOL_SIZE"] = str(opts.pool_size)
    if opts.windows_cache_mb is not None:
        api_env["SYMBIONT_API_WINDOWS_CACHE_MB"] = f"{opts.windows_cache_mb:g}"
    report.api_env = {
        k: v
        for k, v in api_env.items()
        if k in ("SYMBIONT_API_POOL_SIZE", "SYMBIONT_API_WINDOWS_CACHE_MB")
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ingest = services.ingest_service(
        env, f"bench-api-ingest-{secrets.token_hex(3)}", workdir / "ingest.log"
    )
    rules = services.rules_service(env, RULES_WORKER, workdir / "rules.log")
    api = services.Service("api", ["api", "--port", str(port)], api_env, workdir / "api.log")
    procs = Processes(url, api, rules, ingest, broker)
    publisher: subprocess.Popen[bytes] | None = None
    try:
        ingest.start()
        ingest.wait_ready()
        api.start()
        wait_port("127.0.0.1", port, timeout=60)
        report.api_rss_start_kib = api.memory_kib("VmRSS")
        if opts.rules:
            rules.start()
            rules.wait_ready()
        ready = workdir / "publisher.ready"
        ready.unlink(missing_ok=True)
        phases = 2 + len(opts.windows_extra_rates)
        budget = opts.warmup + phases * (opts.seconds + 40) + opts.hold_seconds + 600
        cmd = [
            sys.executable, "-m", "benchmarks.api_latency", "publish",
            "--url", broker.url, "--client-id", f"bench-api-pub-{secrets.token_hex(3)}",
            "--network", str(NETWORK_FILE), "--seed", str(SEED),
            "--sim-start", prep.start.isoformat(), "--live-from", repr(prep.end.timestamp()),
            "--rate", repr(opts.ingest_rate), "--per-message", str(opts.readings_per_message),
            "--late-per-s", repr(opts.late_per_s), "--max-seconds", repr(budget),
            "--ready-file", str(ready),
            *[arg for f in faults_for(prep.start) for arg in ("--fault", f)],
        ]  # fmt: skip
        published_from = datetime.now(UTC)  # ingest's received_at of every later batch
        with (
            (workdir / "publisher.out").open("wb") as out,
            (workdir / "publisher.log").open("wb") as err,
        ):
            publisher = subprocess.Popen(
                cmd, cwd=ROOT, env=services.clean_env(), stdout=out, stderr=err
            )
        procs.publisher = publisher
        deadline = time.monotonic() + 300
        while not ready.exists():
            if publisher.poll() is not None or time.monotonic() > deadline:
                tail = (workdir / "publisher.log").read_text()[-3000:]
                raise BenchError(f"the publisher did not start:\n{tail}")
            time.sleep(0.1)
        log(f"publishing {opts.ingest_rate:,.0f} readings/s; warming up for {opts.warmup:g} s")
        to = prep.end.replace(minute=0)
        frm = to - timedelta(days=opts.days)
        report.windows_path = (
            f"/api/v1/exchanges/{WINDOWS_EXCHANGE}/windows?from={frm:%Y-%m-%dT%H:%M:%SZ}"
            f"&to={to:%Y-%m-%dT%H:%M:%SZ}"
        )
        report.windows_count = opts.days * 24
        paths = ["/api/v1/live", report.windows_path]
        warm_up(base, paths, prep.tokens["operator"], report.windows_count)
        time.sleep(opts.warmup)
        for service in (ingest, rules, api) if opts.rules else (ingest, api):
            if not service.alive():
                raise BenchError(f"{service.name} died:\n{service.log_tail()}")
        operator = prep.tokens["operator"]
        measurements = [("live", paths[0], opts.rate), ("windows", paths[1], opts.rate)]
        measurements += [("windows", paths[1], r) for r in opts.windows_extra_rates]
        for name, path, rate in measurements:
            report.phases.append(
                http_phase(name, path, "operator", operator, rate, base, procs, opts)
            )
        half = opts.streams // 2
        specs = [
            f"operator:{prep.tokens['operator']}:{opts.streams - half}",
            f"partner {PARTNER}:{prep.tokens['partner']}:{half}",
        ]
        if opts.streams > 0 and opts.hold_seconds > 0:
            report.sse = sse_phase(specs, base, procs, opts)
        publisher.send_signal(signal.SIGTERM)
        publisher.wait(120)
        lines = [
            line
            for line in (workdir / "publisher.out").read_bytes().splitlines()
            if line.startswith(b"{")
        ]
        if publisher.returncode != 0 or not lines:
            raise BenchError(
                f"the publisher failed:\n{(workdir / 'publisher.log').read_text()[-3000:]}"
            )
        report.publisher = orjson.loads(lines[-1])
        expected = report.publisher["readings"] + report.publisher["late"]
        deadline = time.monotonic() + 120
        while True:
            report.stored = postgres.fetch(
                url, "SELECT count(*) AS n FROM readings WHERE received_at >= $1", published_from
            )[0]["n"]
            if report.stored >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        report.alert_events = {
            f"{r['rule']} {r['kind']}": r["n"]
            for r in postgres.fetch(
                url,
                "SELECT a.rule, e.kind, count(*) AS n FROM alert_events e JOIN alerts a "
                "ON a.id = e.alert_id WHERE e.at >= $1 GROUP BY 1, 2 ORDER BY 1, 2",
                published_from,
            )
        }
    finally:
        if publisher is not None and publisher.poll() is None:
            publisher.kill()
            publisher.wait()
        api.stop()
        rules.stop()
        ingest.stop()
    report.api_errors = [
        line
        for line in (workdir / "api.log").read_text(errors="replace").splitlines()
        if "Traceback" in line or " ERROR " in line or "Exception" in line
    ][:10]


# -------------------------------------------------------------------------------- output


def _ms(value: float) -> str:
    if value != value:  # nan
        return "n/a"
    return f"{value * 1000:,.1f} ms" if value < 0.1 else f"{value * 1000:,.0f} ms"


def _others(cpu: dict[str, float | None], client: float) -> float | None:
    return proc.others(cpu["machine"], *(cpu[g] for g in GROUPS), client)


def cpu_line(cpu: dict[str, float | None], client: float, client_name: str) -> str:
    return (
        f"API {secs(cpu['api'])}, its PostgreSQL backends {secs(cpu['api_pg'])}; rules "
        f"{secs(cpu['rules'])} + backends {secs(cpu['rules_pg'])}; ingest {secs(cpu['ingest'])} + "
        f"backends {secs(cpu['ingest_pg'])}; Mosquitto {secs(cpu['broker'])}; publisher "
        f"{secs(cpu['publisher'])}; {client_name} {client:.1f}; everything else "
        f"{secs(_others(cpu, client))}; whole machine {secs(cpu['machine'])} of "
        f"{2 * (cpu['wall'] or 0):.0f} in {cpu['wall'] or 0:.0f} s"
    )


def _stats(values: list[int]) -> str:
    if not values:
        return "n/a"
    s = sorted(values)
    return f"{s[0]} / {s[len(s) // 2]} / {s[-1]}"


def markdown(report: Report, opts: Options, info: dict[str, str]) -> str:
    prep = report.prepared
    assert prep is not None
    pub = report.publisher
    pool = report.api_env.get("SYMBIONT_API_POOL_SIZE", "default (10)")
    cache_mb = report.api_env.get("SYMBIONT_API_WINDOWS_CACHE_MB", "default (64)")
    out = [
        *reports.heading(SECTION, opts.command, report.code, info, ON_MACHINE, broker=True),
        "",
        f"Set-up: the example network (`examples/kalundborg.yaml`), {opts.days} days of "
        f"simulated readings up to {prep.end:%Y-%m-%d %H:%M} UTC (seed {SEED}, a 25 % leak on "
        f"`{LEAKING}` from the start; {prep.readings:,} readings through "
        f"`cli.backfill.write_simulation` in {prep.load_s:.0f} s), reconciled by `symbiont "
        f"rules --once` ({report.once_s:.0f} s). Then private Mosquitto, `symbiont ingest`, "
        + ("`symbiont rules` " if opts.rules else "(**no** `symbiont rules`: `--without-rules`) ")
        + f"and `symbiont api --port P` (one uvicorn process, pool size {pool}, window-history "
        f"cache {cache_mb} MiB) "
        f"as processes, and a publisher continuing the simulation at {opts.ingest_rate:,.0f} "
        f"readings/s ({opts.readings_per_message} readings per QoS 1 message, round-robin over "
        f"the {pub.get('meters', '?')} continuous meters) plus {opts.late_per_s:g} late "
        "readings/s into the previous hour of a rate meter, so that the last complete windows "
        "change and the streams get `flow` events. The publisher achieved "
        f"{pub.get('achieved_readings_per_s', 0):,.0f} readings/s over "
        f"{pub.get('last_at', 0) - pub.get('first_at', 0):.0f} s (at worst "
        f"{pub.get('max_behind_s', 0) * 1000:.0f} ms behind schedule); ingest stored "
        f"{report.stored:,} of {pub.get('readings', 0) + pub.get('late', 0):,} readings. "
        f"Measuring started after {opts.warmup:g} s of publishing.",
        "",
        f"| Open loop for {opts.seconds:g} s, {opts.connections} keep-alive connections, "
        "operator token | rate | requests | achieved | body | p50 | p95 | **p99** | max | "
        "errors | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    targets = {"live": TARGET_LIVE_P99_S, "windows": TARGET_WINDOWS_P99_S}
    for ph in report.phases:
        target = targets[ph.name]
        verdict = "met" if ph.p(99) < target else "**not met**"
        if ph.target_rate < opts.rate:
            verdict = f"(the target is at {opts.rate:g}/s)"
        label = (
            "`GET /api/v1/live`"
            if ph.name == "live"
            else f"`GET /api/v1/exchanges/{WINDOWS_EXCHANGE}/windows?from=…&to=…` "
            f"({report.windows_count} hourly windows)"
        )
        out.append(
            f"| {label} | {ph.target_rate:g}/s | {len(ph.result['results']):,} | "
            f"{ph.achieved:,.1f}/s | "
            f"{ph.body_bytes / 1024:,.1f} KiB | {_ms(ph.p(50))} | {_ms(ph.p(95))} | "
            f"**{_ms(ph.p(99))}** | {_ms(ph.p(100))} | {ph.errors} | p99 < "
            f"{target * 1000:.0f} ms: {verdict} |"
        )
    out.append("")
    for ph in report.phases:
        phases = "; ".join(f"{k}: p99 {_ms(p99)}" for k, n, p99 in ph.by_phase())
        out += [
            f"- `{ph.name}` at {ph.target_rate:g}/s: by 10 s of the run: {phases}. "
            + (
                f"{ph.result['unanswered']:,} requests were still unanswered 30 s after the "
                "last one was due (counted with their wait until then, a lower bound). "
                if ph.result.get("unanswered")
                else ""
            )
            + _cache_line(ph)
            + f"The load generator took up each request at worst {ph.max_send_lag * 1000:.1f} ms "
            "after it was due. CPU s: "
            + cpu_line(ph.cpu, ph.result["cpu_s"], "load generator")
            + ".",
        ]
    if report.sse is not None:
        out += ["", *sse_lines(report.sse, opts, report.api_rss_start_kib)]
    alerts = ", ".join(f"{k} {v}" for k, v in report.alert_events.items()) or "none"
    out += [
        "",
        f"Alert events during the run: {alerts}. "
        + (
            f"API log errors: {'; '.join(report.api_errors)}."
            if report.api_errors
            else "No errors in the API's log."
        ),
        "",
        "Method (details in `benchmarks/api_latency.py`): the load generator is open loop "
        "(request i is due at t0 + i / rate and goes out on the first free keep-alive "
        "connection, HTTP/1.1 on raw asyncio streams), and a latency runs from when the request "
        "was due to the last byte of its response, so queueing (for a connection, in the "
        "server) counts. Percentiles are nearest-rank over every request of the run. RSS is "
        "VmRSS of the API process from /proc, CPU seconds from /proc/<pid>/stat and "
        "/proc/stat.",
        "",
        report.footer(),
    ]
    return "\n".join(out) + "\n"


def _cache_line(ph: HttpPhase) -> str:
    hits = ph.metric_delta("symbiont_api_windows_cache_hits")
    misses = ph.metric_delta("symbiont_api_windows_cache_misses")
    if ph.name != "windows" or hits is None or misses is None:
        return ""
    if not hits:
        return f"Window-history cache: every one of the {misses:,.0f} read from the database. "
    return (
        f"Window-history cache: {hits:,.0f} answered from memory, {misses:,.0f} read from the "
        "database (the exchange's windows change with every rules pass). "
    )


def sse_lines(sse: SsePhase, opts: Options, rss_start_kib: int | None) -> list[str]:
    res = sse.result
    streams = res["streams"]
    ok = [s for s in streams if s["status"] == 200 and not s["error"]]
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in streams:
        by_label[s["label"]].append(s)
    per_label = "; ".join(
        f"{label} ({len(group)} streams): "
        + ", ".join(
            f"{kind} {_stats([s['counts'].get(kind, 0) for s in group])}"
            for kind in ("flow", "alert", "ping")
        )
        for label, group in by_label.items()
    )
    spreads = sorted(e["spread_s"] for e in res["events"] if e["streams"] > 1)
    fan = (
        f"{len(res['events'])} events; the time from an event's first to its last "
        f"arrival over the streams that got it: p50 {_ms(reports.percentile(spreads, 50))}, p99 "
        f"{_ms(reports.percentile(spreads, 99))}, max {_ms(spreads[-1])}"
        if spreads
        else f"{len(res['events'])} distinct events"
    )
    errors = [s["error"] or f"status {s['status']}" for s in streams if s not in ok]
    during = sse.rss_during_kib
    streams_gauge = sse.metrics_during.get("symbiont_api_live_streams")
    after_gauge = sse.metrics_after.get("symbiont_api_live_streams")
    return [
        f"**{opts.streams} live streams** (`GET /api/v1/live/stream`, "
        f"{len(by_label)} tokens: {', '.join(by_label)}), opened at once from one client process "
        f"and held {opts.hold_seconds:g} s after the last one answered, while the publisher "
        "ran.",
        "",
        "| | |",
        "|---|---|",
        f"| Streams answered 200 | {len(ok)} of {len(streams)}, all within "
        f"{res['open_s'] * 1000:,.0f} ms"
        + (f" (failed: {'; '.join(errors[:5])})" if errors else "")
        + " |",
        f"| Events per stream, min / median / max | {per_label} |",
        f"| Fan-out | {fan} |",
        f"| API RSS (VmRSS) | once started {mib(rss_start_kib)}; before the streams "
        f"{mib(sse.rss_before_kib)}; while held: max "
        f"{mib(max(during, default=None))}, at the end {mib(sse.rss_end_kib)}; 10 s after "
        f"closing {mib(sse.rss_after_kib)}; peak since start (VmHWM) {mib(sse.hwm_kib)} |",
        f"| Open streams by the API's gauge | {streams_gauge:g} midway, {after_gauge:g} after |"
        if streams_gauge is not None and after_gauge is not None
        else "| Open streams by the API's gauge | n/a |",
        f"| CPU s from opening to closing | {cpu_line(sse.cpu, res['cpu_s'], 'stream client')} |",
    ]


def save_raw(report: Report) -> None:
    """Everything measured, as JSON in the run's log directory (before the figures are
    formatted, so that nothing is lost if that fails)."""
    if not report.workdir:
        return
    path = Path(report.workdir) / "report.json"
    path.write_bytes(orjson.dumps(report, default=str, option=orjson.OPT_SERIALIZE_DATACLASS))
    log(f"raw results in {path}")


def main(opts: Options) -> Report:
    info = reports.machine()
    report = run(opts)
    reports.publish(markdown(report, opts, info), opts.write, SECTION, stop="#")
    return report


# ---------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = Options()
    p.add_argument(
        "--days", type=int, default=d.days, help="days of backfill (default %(default)s)"
    )
    p.add_argument("--rate", type=float, default=d.rate, help="requests/s (default %(default)s)")
    p.add_argument(
        "--seconds",
        type=float,
        default=d.seconds,
        help="per HTTP measurement (default %(default)s)",
    )
    p.add_argument(
        "--connections",
        type=int,
        default=d.connections,
        help="keep-alive connections (default %(default)s)",
    )
    p.add_argument(
        "--ingest-rate",
        type=float,
        default=d.ingest_rate,
        help="readings/s published meanwhile (default %(default)s)",
    )
    p.add_argument(
        "--readings-per-message",
        type=int,
        default=d.readings_per_message,
        help="default %(default)s",
    )
    p.add_argument(
        "--late-per-s",
        type=float,
        default=d.late_per_s,
        help="late readings/s into the previous hour, so that streams get events "
        "(default %(default)s)",
    )
    p.add_argument(
        "--streams", type=int, default=d.streams, help="live streams (0: none; default %(default)s)"
    )
    p.add_argument(
        "--hold-seconds",
        type=float,
        default=d.hold_seconds,
        help="how long they are held (default %(default)s)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=d.warmup,
        help="publishing before measuring (default %(default)s)",
    )
    p.add_argument(
        "--windows-extra-rates",
        default=",".join(f"{r:g}" for r in d.windows_extra_rates),
        help="also measure the windows request at these rates, comma-separated ('' for none; "
        "default %(default)s)",
    )
    p.add_argument(
        "--without-rules",
        action="store_true",
        help="do not run `symbiont rules` during the measurements (ingest only; the streams "
        "then get no flow events)",
    )
    p.add_argument("--pool-size", type=int, default=None, help="SYMBIONT_API_POOL_SIZE for the API")
    p.add_argument(
        "--windows-cache-mb",
        type=float,
        default=None,
        help="SYMBIONT_API_WINDOWS_CACHE_MB for the API (0: no window-history cache)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="directory for py-spy profiles of the API, one per measurement (collapsed stacks, "
        "for flamegraph.pl or speedscope)",
    )


def _rates(text: str | None, default: tuple[float, ...]) -> tuple[float, ...]:
    if text is None:
        return default
    return tuple(float(r) for r in text.split(",") if r.strip())


def from_args(args: argparse.Namespace, *, command: str = "") -> Options:
    """Options from parsed arguments; what ``args`` lacks keeps its default."""
    return arguments.options_from(
        Options,
        args,
        QUICK,
        command=command,
        windows_extra_rates=_rates(
            getattr(args, "windows_extra_rates", None), Options().windows_extra_rates
        ),
        rules=not getattr(args, "without_rules", False),
    )


def cli(argv: Sequence[str] | None = None) -> int:
    """The roles that run as processes of their own, each printing one JSON line: ``publish``
    (readings over MQTT until SIGTERM), ``load`` (open-loop GETs), ``sse`` (live streams)."""
    roles: dict[str, services.Role] = {
        "publish": (publish_arguments, run_publish),
        "load": (load_arguments, lambda args: asyncio.run(open_loop(args))),
        "sse": (sse_arguments, lambda args: asyncio.run(hold_streams(args))),
    }
    return services.role_main("python -m benchmarks.api_latency", roles, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
