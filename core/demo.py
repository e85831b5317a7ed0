"""``symbiont demo``: the whole system on one machine with embedded defaults.

With no ``SYMBIONT_DATABASE_URL`` it runs a PostgreSQL of its own (the ``pgserver`` package
ships the binaries); with no ``SYMBIONT_MQTT_URL`` a Mosquitto of its own. Then it migrates,
applies the example network, starts ingest, backfills the past month through MQTT, runs
the live simulator and reports what is happening until Ctrl-C, when it stops everything it
started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import asyncpg
from rich.console import Console

from core.apply import apply_network
from core.broker import LocalMosquitto
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
    server = pgserver.get_server(directory.resolve(), cleanup_mode="stop")  # type: ignore[attr-defined]
    uri: str = server.get_uri()
    return uri


class Services:
    """The child processes of the demo; all stopped on exit, whatever happens."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "core.cli", *args],
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


def _demo_faults(net: Network, now: datetime, days: int) -> list[str]:
    """A leak in the past (so history has alerts) and a meter that goes quiet two minutes
    into the live run (a `meter_stale` alert a few minutes after start)."""
    exchanges = {e.id for e in net.exchanges}
    meters = {m.id for m in net.meters}
    faults = []
    if "water-forsyning-equinor" in exchanges and days >= 3:
        at = (now - timedelta(days=min(days, 12))).strftime("%Y-%m-%dT%H:%MZ")
        faults.append(f"leak:water-forsyning-equinor:8%@{at}+2d")
    if "novo-steam-in" in meters:
        at = (now + timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%MZ")
        faults.append(f"gap:novo-steam-in@{at}+30m")
    return faults


def run(args: argparse.Namespace, settings: Settings) -> int:
    network_file: Path = args.network or EXAMPLE
    net = load_network(network_file)
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
            now = datetime.now(UTC).replace(second=0, microsecond=0)
            start = now - timedelta(days=args.days)
            faults = _demo_faults(net, now, args.days)
            console.print(
                f"simulator: {args.days} days of readings for {len(net.meters)} meters as a "
                "backfill, then live; injected faults:"
            )
            for fault in faults:
                console.print(f"  --fault {fault}")
            sim_args = ["simulate", str(network_file), "--from", start.isoformat()]
            for fault in faults:
                sim_args += ["--fault", fault]
            services.start("simulate", *sim_args)
            deadline = None if args.duration is None else time.monotonic() + args.duration
            last: dict[str, object] = {}
            while deadline is None or time.monotonic() < deadline:
                time.sleep(5)
                services.check()
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
