"""``symbiont demo``: the whole system on one machine with embedded defaults.

With no ``SYMBIONT_DATABASE_URL`` it runs a PostgreSQL of its own (the ``pgserver`` package
ships the binaries); with no ``SYMBIONT_MQTT_URL`` a Mosquitto of its own. Then it migrates,
applies the example network, starts ingest, the rules engine and the API (dashboard), makes
tokens for an operator and two partners, publishes everything since the start of the previous
month through MQTT (with a leak in the past) and goes on live (with a meter that falls silent
a few minutes in), issues last month's statements once the history is reconciled and every
line of them has its data (saying what they hold, or that the month is held and why), and
reports what is happening until Ctrl-C, when it stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import IO

import asyncpg
from rich.console import Console

from cli.broker import LocalMosquitto
from core.apply import apply_network
from core.db import asyncpg_dsn, upgrade
from core.network import Network, load_network
from core.settings import Settings

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "kalundborg.yaml"
STATE = Path(".demo")

console = Console()


def _embedded_postgres(directory: Path) -> str:
    try:
        import pgserver
    except ImportError:
        raise RuntimeError(
            "no database configured and the embedded PostgreSQL (pgserver) is not installed: "
            "`pip install symbiont[embedded]`, or set SYMBIONT_DATABASE_URL"
        ) from None
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    directory.mkdir(parents=True, exist_ok=True)
    prune_server_handles(directory)
    server = pgserver.get_server(directory.resolve(), cleanup_mode="stop")  # type: ignore[attr-defined]
    uri: str = server.get_uri()
    return uri


def prune_server_handles(directory: Path) -> list[int]:
    """Forget the processes pgserver recorded as using the server that no longer exist.

    pgserver stops the server when the last process using it exits, and keeps those processes
    in ``.handle_pids.json``. A demo that was killed outright never took itself off that list,
    and every later demo would then leave the server running. Returns the pids kept."""
    handles = directory / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(pids, list) or not all(isinstance(p, int) for p in pids):
        return []
    alive = [p for p in pids if _running(p)]
    if alive != pids:
        handles.write_text(json.dumps(alive))
    return alive


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demo as Ctrl-C does, children and server too


class Services:
    """The child processes of the demo; all stopped on exit, whatever happens."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to the demo, which stops children in order
        )
        self.procs.append((name, proc, log))
        return proc

    def wait_log(self, name: str, text: str, timeout: float) -> None:
        path = self.logs / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and text in path.read_text(errors="replace"):
                return
            for pname, proc, _ in self.procs:
                if pname == name and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited early; see {path}")
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not report '{text}' within {timeout:.0f} s; see {path}")

    def check(self) -> None:
        for name, proc, _ in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} stopped (exit {proc.returncode}); see {self.logs / (name + '.log')}"
                )

    def stop(self) -> None:
        for _name, proc, _ in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _name, proc, log in reversed(self.procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


async def _status(dsn: str) -> dict[str, object]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            """SELECT (SELECT count(*) FROM readings) AS readings,
                      (SELECT count(*) FROM readings WHERE received_at > now() - interval '10 s')
                          AS recent,
                      (SELECT count(*) FROM rejections) AS rejections,
                      (SELECT max(ts) FROM readings) AS latest,
                      (SELECT count(*) FROM dirty_windows) AS dirty,
                      (SELECT count(*) FROM exchange_windows) AS windows,
                      (SELECT count(*) FROM exchange_windows WHERE status = 'imbalance')
                          AS imbalanced,
                      (SELECT count(*) FROM alerts WHERE status = 'firing') AS firing"""
        )
        return dict(row) if row else {}
    finally:
        await conn.close()


@contextlib.contextmanager
def _embedded(settings: Settings) -> Iterator[tuple[str, str]]:
    broker: LocalMosquitto | None = None
    try:
        if settings.database_url:
            db_url = settings.database_url
            console.print("database: SYMBIONT_DATABASE_URL")
        else:
            console.print("database: starting an embedded PostgreSQL in .demo/pg …")
            db_url = _embedded_postgres(STATE / "pg")
        if settings.mqtt_url:
            mqtt_url = settings.mqtt_url
            console.print(f"broker: {mqtt_url}")
        else:
            broker = LocalMosquitto(STATE / "mqtt")
            broker.start()
            mqtt_url = broker.url
            console.print(f"broker: started Mosquitto on {mqtt_url}")
        yield db_url, mqtt_url
    finally:
        if broker is not None:
            broker.stop()


def _demo_faults(net: Network, now: datetime, start: datetime, days: int) -> list[str]:
    """A leak in the past (so history has alerts) and a meter that goes quiet two minutes
    into the live run (a `meter_stale` alert a few minutes after start).

    The leak is placed from the history's ``start``, not from now: a demo started again
    publishes the same history, so the broker and ingest see duplicates, not conflicting
    readings (a leak on a register meter changes every later reading of it)."""
    exchanges = {e.id for e in net.exchanges}
    meters = {m.id for m in net.meters}
    faults = []
    if "water-forsyning-equinor" in exchanges and days >= 3:
        at = (start + timedelta(days=min(20, days - 2))).strftime("%Y-%m-%dT%H:%MZ")
        faults.append(f"leak:water-forsyning-equinor:8%@{at}+2d")
    if "novo-steam-in" in meters:
        at = (now + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%MZ")
        faults.append(f"gap:novo-steam-in@{at}+30m")
    return faults


def _free_port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            pass
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_http(url: str, timeout: float, services: Services) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        services.check()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (local URL)
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s; see .demo/logs/api.log")


def _demo_partners(net: Network) -> list[str]:
    """Two partners to sign in as: the receiver of the demo's leak and one other."""
    wanted = [e.receiver for e in net.exchanges if e.id == "water-forsyning-equinor"]
    wanted += [p.id for p in net.partners]
    chosen: list[str] = []
    for partner in wanted:
        if partner not in chosen and any(
            partner in (e.provider, e.receiver) for e in net.exchanges
        ):
            chosen.append(partner)
    return chosen[:2]


async def _tokens(dsn: str, net: Network) -> list[tuple[str, str]]:
    from api.tokens import create_token

    conn = await asyncpg.connect(dsn)
    try:
        made = [("operator", (await create_token(conn, "operator", name="demo")).token)]
        for partner in _demo_partners(net):
            created = await create_token(conn, "partner", partner, name="demo")
            made.append((f"partner {partner}", created.token))
        return made
    finally:
        await conn.close()


async def _caught_up(dsn: str) -> bool:
    """The backfill is stored and reconciled: readings reach the present, nothing is dirty."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            """SELECT (SELECT max(ts) FROM readings) > now() - interval '3 minutes' AS recent,
                      NOT EXISTS (SELECT 1 FROM dirty_windows)
                      AND NOT EXISTS (SELECT 1 FROM dirty_subjects) AS clean"""
        )
        return bool(row and row["recent"] and row["clean"])
    finally:
        await conn.close()


@dataclass(frozen=True)
class LastMonth:
    """Where last month's statements stand: how many are issued, the lowest line coverage
    (of the issued statements once all are, else of the lines short of data; None when no
    line is), and the windows of the month still to reconcile."""

    label: str
    name: str  # "October"
    partners: int
    issued: int
    coverage: Decimal | None
    pending: int

    @property
    def done(self) -> bool:
        return self.issued == self.partners

    def report(self) -> str:
        if self.done:
            return (
                f"{self.name} issued: {self.issued} statements, coverage {_percent(self.coverage)}"
                " on every line"
            )
        waiting = f", {self.pending:,} windows to reconcile" if self.pending else ""
        issued = f"; {self.issued} of {self.partners} issued" if self.issued else ""
        if self.coverage is None:  # no line short of data
            return f"{self.name} held: its data is in, waiting for it to be reconciled{waiting}"
        return (
            f"{self.name} held: waiting for data (coverage {_percent(self.coverage)}{waiting})"
            f"{issued}"
        )


def _percent(value: Decimal | None) -> str:
    """A coverage as a percentage, rounded down (99.95 % is not 100 %)."""
    if value is None:
        return "-"
    shown = (value * 100).quantize(Decimal("0.1"), rounding=ROUND_DOWN)
    return f"{shown.normalize():f} %"


async def _last_month(dsn: str, net: Network, settings: Settings, *, issue: bool) -> LastMonth:
    """Last month's statements: issued now if ``issue`` and their data is complete (never
    on incomplete data), and what they hold."""
    from statements.compute import month_label
    from statements.issue import IncompleteMonth, issue_month, month_gate, previous_month

    conn = await asyncpg.connect(dsn)
    try:
        now = datetime.now(UTC)
        year, month = previous_month(now, net)
        label = month_label(year, month)
        if issue:
            try:
                await issue_month(conn, net, year, month, now, settings=settings)
                held = []
            except IncompleteMonth as exc:
                held = exc.held
        else:
            held = await month_gate(conn, net, year, month, now)
        docs = [
            json.loads(r["document"])
            for r in await conn.fetch(
                "SELECT DISTINCT ON (partner_id) document FROM statements WHERE month = $1"
                " ORDER BY partner_id, revision DESC",
                label,
            )
        ]
        lowest = [s.coverage if s.windows else 0.0 for h in held for s in h.short]
        coverage = Decimal(repr(min(lowest))) if lowest else None
        if len(docs) == len(net.partners):
            lines = [Decimal(ln["coverage"]) for d in docs for ln in d["lines"]]
            coverage = min(lines, default=Decimal(1))
        return LastMonth(
            label=label,
            name=f"{datetime(year, month, 1):%B}",
            partners=len(net.partners),
            issued=len(docs),
            coverage=coverage,
            pending=max((h.pending for h in held), default=0),
        )
    finally:
        await conn.close()


def _history_start(net: Network, now: datetime, days: int | None) -> datetime:
    """The start of the previous calendar month in the network's zone (so that month can be
    issued), or ``days`` back when given (from that day's midnight, UTC)."""
    if days is not None:  # from a midnight (UTC): the same history for every start that day
        return (now - timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)
    local = now.astimezone(net.tz)
    first = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    previous = (first - timedelta(days=1)).replace(day=1)
    return previous.astimezone(UTC)


def run(args: argparse.Namespace, settings: Settings) -> int:
    network_file: Path = args.network or EXAMPLE
    net = load_network(network_file)
    signal.signal(signal.SIGTERM, _terminate)
    began = time.monotonic()
    STATE.mkdir(exist_ok=True)
    logs = STATE / "logs"
    logs.mkdir(exist_ok=True)
    with _embedded(settings) as (db_url, mqtt_url):
        upgrade(db_url)
        dsn = asyncpg_dsn(db_url)

        async def apply() -> str:
            conn = await asyncpg.connect(dsn)
            try:
                return (await apply_network(conn, net)).summary()
            finally:
                await conn.close()

        console.print(f"network '{net.network}' ({network_file}): {asyncio.run(apply())}")
        env = {**os.environ, "SYMBIONT_DATABASE_URL": db_url, "SYMBIONT_MQTT_URL": mqtt_url}
        services = Services(env, logs)
        try:
            services.start("ingest", "ingest")
            services.wait_log("ingest", "subscribed to", 60)
            console.print("ingest: subscribed (logs in .demo/logs/ingest.log)")
            services.start("rules", "rules")
            console.print("rules: reconciling as data arrives (logs in .demo/logs/rules.log)")
            port = _free_port(settings.api_port)
            services.start("api", "api", "--port", str(port))
            _wait_http(f"http://127.0.0.1:{port}/healthz", 60, services)
            tokens = asyncio.run(_tokens(dsn, net))
            now = datetime.now(UTC).replace(second=0, microsecond=0)
            start = _history_start(net, now, args.days)
            days = (now - start).days
            faults = _demo_faults(net, now, start, days)
            console.print(
                f"simulator: {days} days of readings for {len(net.meters)} meters as a "
                "backfill over MQTT, then live; injected faults:"
            )
            for fault in faults:
                console.print(f"  --fault {fault}")
            sim_args = ["simulate", str(network_file), "--from", start.isoformat()]
            for fault in faults:
                sim_args += ["--fault", fault]
            services.start("simulate", *sim_args)
            token_file = STATE / "tokens.txt"
            token_file.write_text("".join(f"{who}: {token}\n" for who, token in tokens))
            token_file.chmod(0o600)
            console.print(
                f"\n[bold green]dashboard: http://127.0.0.1:{port}/[/]  (API docs: "
                f"http://127.0.0.1:{port}/docs) — ready after {time.monotonic() - began:.0f} s;"
                " sign in with one of these tokens (also in .demo/tokens.txt):"
            )
            for who, token in tokens:
                console.print(f"  {who:<18} {token}")
            console.print(
                "history is filling in; last month's statements are issued once it is"
                " reconciled and every line has its data.\n"
            )
            deadline = None if args.duration is None else time.monotonic() + args.duration
            last: dict[str, object] = {}
            month_done = caught_up = False
            said = ""
            next_look = 0.0
            while deadline is None or time.monotonic() < deadline:
                time.sleep(5)
                services.check()
                if not month_done and time.monotonic() >= next_look:
                    next_look = time.monotonic() + 15
                    # issued only once the whole history is stored and reconciled: a month
                    # whose last hours are still on their way is not issued on 99 % of them
                    # (once caught up, what comes is live data of this month)
                    caught_up = caught_up or asyncio.run(_caught_up(dsn))
                    state = asyncio.run(_last_month(dsn, net, settings, issue=caught_up))
                    report = state.report()
                    if state.done:
                        month_done = True
                        report += (
                            f" (history reconciled after {time.monotonic() - began:.0f} s;"
                            " see them in the dashboard)"
                        )
                    elif caught_up:
                        report += (
                            f": the history does not cover the month; issue it anyway with"
                            f" `symbiont statements issue {state.label} --accept-incomplete"
                            " --reason TEXT`"
                        )
                    if report != said:
                        console.print(report, soft_wrap=True)  # one line, to grep for
                        said = report
                status = asyncio.run(_status(dsn))
                if status != last:
                    latest = status.get("latest")
                    console.print(
                        f"[bold]{datetime.now():%H:%M:%S}[/] readings stored: "
                        f"{status['readings']:,} (+{status['recent']:,} in 10 s), "
                        f"rejected: {status['rejections']}, windows to reconcile: "
                        f"{status['dirty']:,}, exchange windows: {status['windows']:,} "
                        f"({status['imbalanced']} imbalanced), alerts firing: "
                        f"{status['firing']}, newest reading: "
                        f"{latest.isoformat() if isinstance(latest, datetime) else '-'}"
                    )
                    last = status
        except KeyboardInterrupt:
            console.print("stopping …")
        finally:
            services.stop()
    console.print("demo stopped; its data stays in .demo/ (delete it to start afresh)")
    return 0
