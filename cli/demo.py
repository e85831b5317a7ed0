"""``symbiont demo``: the whole system on one machine with embedded defaults.

With no ``SYMBIONT_DATABASE_URL`` it runs a PostgreSQL of its own (the ``pgserver`` package
ships the binaries); with no ``SYMBIONT_MQTT_URL`` a Mosquitto of its own. Then it migrates,
applies the example network, starts ingest, the rules engine and the API (dashboard), and
publishes everything since the start of the previous month through MQTT (with a leak in the
past) before going on live (with a meter that falls silent a few minutes in). It issues last
month's statements once the history is reconciled and every line of them has its data
(saying what they hold, or that the month is held and why), and reports what is happening
until Ctrl-C, when it stops everything it started.

Its first screen says only what a person needs: the dashboard's address, a token for each
role (the same at every start while they stay valid: they are kept in ``.demo/tokens.txt``),
the database's and the broker's URLs for the command line, and what is going to happen.
Everything else, its own log lines included, goes to ``.demo/logs/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
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
TOKENS = STATE / "tokens.txt"

console = Console(soft_wrap=True)  # one printed line is one line of output, to grep for


def _embedded_postgres(directory: Path) -> str:
    try:
        with warnings.catch_warnings():
            # pgserver asks platformdirs for a runtime directory as it is imported; without
            # XDG_RUNTIME_DIR (a container, a root shell) that warns and falls back to
            # /tmp/runtime-<uid>, which serves its lock file just as well.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
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


_stopping = threading.Event()


def _terminate(signum: int, frame: object) -> None:
    """Ctrl-C and SIGTERM stop the demo, children and server too. Inside ``asyncio.run`` (a
    short status query) the request is only noted: asyncio would turn it into a cancellation,
    which a database driver's cleanup can swallow, and the demo would run on. The main loop
    looks at the note after each query and at every pause."""
    _stopping.set()
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no event loop here: stop at once
        raise KeyboardInterrupt from None


def _pause(seconds: float) -> None:
    """Sleep, unless a stop was asked for (then, or meanwhile: KeyboardInterrupt)."""
    if _stopping.wait(seconds):
        raise KeyboardInterrupt


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
            _pause(0.2)
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
        db_url = settings.database_url or _embedded_postgres(STATE / "pg")
        if settings.mqtt_url:
            mqtt_url = settings.mqtt_url
        else:
            broker = LocalMosquitto(STATE / "mqtt")
            broker.start()
            mqtt_url = broker.url
        yield db_url, mqtt_url
    finally:
        if broker is not None:
            broker.stop()


@dataclass(frozen=True)
class Fault:
    """A fault the demo injects: the simulator's ``--fault`` spec and what it is, in words."""

    spec: str
    said: str
    live: bool  # injected into the live run, not the history


def _demo_faults(net: Network, now: datetime, start: datetime, days: int) -> list[Fault]:
    """A leak in the past (so history has alerts) and a meter that goes quiet two minutes
    into the live run (a `meter_stale` alert a few minutes after start).

    The leak is placed from the history's ``start``, not from now: a demo started again
    publishes the same history, so the broker and ingest see duplicates, not conflicting
    readings (a leak on a register meter changes every later reading of it)."""
    exchanges = {e.id for e in net.exchanges}
    meters = {m.id for m in net.meters}
    faults = []
    if "water-forsyning-equinor" in exchanges and days >= 3:
        at = start + timedelta(days=min(20, days - 2))
        faults.append(
            Fault(
                f"leak:water-forsyning-equinor:8%@{at:%Y-%m-%dT%H:%MZ}+2d",
                "8 % of the water of exchange water-forsyning-equinor leaks for 2 days from"
                f" {_day(at, net)}",
                live=False,
            )
        )
    if "novo-steam-in" in meters:
        at = now + timedelta(minutes=2)
        faults.append(
            Fault(
                f"gap:novo-steam-in@{at:%Y-%m-%dT%H:%MZ}+30m",
                f"meter novo-steam-in falls silent at {at.astimezone():%H:%M} for 30 minutes:"
                " a meter_stale alert fires a few minutes later",
                live=True,
            )
        )
    return faults


def _day(at: datetime, net: Network) -> str:
    """The day of ``at`` in the network's zone: ``21 November``."""
    local = at.astimezone(net.tz)
    return f"{local.day} {local:%B}"


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


@dataclass(frozen=True)
class DemoToken:
    who: str  # "admin", "operator", "partner equinor"
    token: str
    kept: bool  # from an earlier start, still valid


def _wanted_tokens(net: Network) -> list[tuple[str, str, str | None]]:
    """(who, role, partner) of each token the demo offers."""
    wanted: list[tuple[str, str, str | None]] = [("operator", "operator", None)]
    wanted += [(f"partner {p}", "partner", p) for p in _demo_partners(net)]
    wanted.append(("admin", "admin", None))
    return wanted


def read_tokens(path: Path) -> dict[str, str]:
    """``who: token`` lines of a tokens file (empty when there is none)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    found = {}
    for line in lines:
        who, sep, token = line.partition(": ")
        if sep and who.strip() and token.strip():
            found[who.strip()] = token.strip()
    return found


def demo_tokens(dsn: str, net: Network, path: Path) -> list[DemoToken]:
    """A token for each role the demo offers, kept in ``path`` (mode 0600) for the next start."""
    tokens = asyncio.run(_tokens(dsn, net, read_tokens(path)))
    path.write_text("".join(f"{t.who}: {t.token}\n" for t in tokens))
    path.chmod(0o600)
    return tokens


async def _tokens(dsn: str, net: Network, stored: dict[str, str]) -> list[DemoToken]:
    """The token of the last start for each role while it is still valid in this database
    for the same role and partner, else a new one. A token the demo made before and no
    longer offers is revoked, so old demo tokens do not pile up."""
    from api.tokens import create_token, revoke_token, verify_token

    stored = dict(stored)
    conn = await asyncpg.connect(dsn)
    try:
        out = []
        for who, role, partner in _wanted_tokens(net):
            token = stored.pop(who, None)
            found = await verify_token(conn, token) if token else None
            if token and found and found.role == role and found.partner == partner:
                out.append(DemoToken(who, token, kept=True))
                continue
            created = await create_token(conn, role, partner, name="demo")
            out.append(DemoToken(who, created.token, kept=False))
        for token in stored.values():  # offered by an earlier start, not any more
            found = await verify_token(conn, token)
            if found is not None:
                await revoke_token(conn, found.token_id)
    finally:
        await conn.close()
    return out


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


def _log_to_file(path: Path) -> None:
    """The demo's own log lines (migrations, issued statements) and Python's warnings go to
    ``path``: the screen is for what a person needs."""
    root = logging.getLogger()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(
        root.handlers[0].formatter if root.handlers else logging.Formatter("%(message)s")
    )
    root.handlers[:] = [handler]
    logging.captureWarnings(True)


def _shown_url(url: str) -> str:
    """A URL to print: its password hidden, if it has one."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return url
    if not parsed.password:
        return url
    return parsed.render_as_string(hide_password=True)


def _command() -> str:
    """How to run ``symbiont`` from where the demo was started."""
    if shutil.which("symbiont"):
        return "symbiont"
    script = Path(sys.executable).with_name("symbiont")
    if script.is_file():
        try:
            return str(script.relative_to(Path.cwd()))
        except ValueError:
            return str(script)
    return f"{sys.executable} -m cli.main"


def first_screen(
    *,
    net: Network,
    network_file: Path,
    port: int,
    tokens: list[DemoToken],
    db_url: str,
    mqtt_url: str,
    own: dict[str, bool],
    history: str,
    faults: list[Fault],
    month: str,
    issued: bool,
) -> list[str]:
    """What the demo says once it is up: where to look, how to sign in, how to reach the
    database and broker from the command line, and what is going to happen."""
    symbiont = _command()
    partner = next((t.who.split()[1] for t in tokens if t.who.startswith("partner ")), None)
    kept = all(t.kept for t in tokens)
    lines = [
        f"[bold]symbiont demo[/]: {net.name}, {len(net.partners)} partners, {len(net.meters)}"
        f" meters, {len(net.exchanges)} exchanges ({network_file})",
        "",
        f"  Dashboard  [bold green]http://127.0.0.1:{port}/[/]   (API: http://127.0.0.1:{port}/docs)",
        "  Sign in with a token"
        + (" (the same as last time; " if kept else " (")
        + f"kept in {TOKENS}):",
    ]
    lines += [f"    {t.who:<22} {t.token}" for t in tokens]
    exports = [
        f"SYMBIONT_{name}='{url}'"
        for name, url in (("DATABASE_URL", db_url), ("MQTT_URL", mqtt_url))
        if own[name]
    ]
    lines += [
        "",
        f"  Database   {_shown_url(db_url)}" + ("" if own["DATABASE_URL"] else "  (yours)"),
        f"  Broker     {_shown_url(mqtt_url)}" + ("" if own["MQTT_URL"] else "  (yours)"),
        "  The command line works against them while the demo runs, e.g.:",
    ]
    if exports:
        lines.append(f"    export {' '.join(exports)}")
    lines.append(f"    {symbiont} network show")
    if partner:
        lines.append(f"    {symbiont} statements show {partner} {month} --format csv")
    lines += [
        "",
        "  What happens now:",
        f"    1. History: the readings {history} are published over MQTT as fast as ingest"
        " stores them, and reconciled.",
    ]
    lines += [f"       {f.said[0].upper()}{f.said[1:]}." for f in faults if not f.live]
    lines.append("    2. Live: then a reading a minute from every meter, as a real network sends.")
    lines += [f"       {f.said[0].upper()}{f.said[1:]}." for f in faults if f.live]
    lines.append(
        f"    3. Statements: {month} was issued at an earlier start: see them in the dashboard."
        if issued
        else f"    3. Statements: {month} is held until its history is reconciled and every line"
        " has its data, then issued; a line below says when."
    )
    lines += [
        f"  Ctrl-C stops everything. The data stays in {STATE}/ (delete it to start afresh);"
        f" logs in {STATE}/logs/.",
        "",
    ]
    return lines


def run(args: argparse.Namespace, settings: Settings) -> int:
    network_file: Path = args.network or EXAMPLE
    net = load_network(network_file)
    _stopping.clear()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    began = time.monotonic()
    STATE.mkdir(exist_ok=True)
    logs = STATE / "logs"
    logs.mkdir(exist_ok=True)
    _log_to_file(logs / "demo.log")
    shown_file = network_file
    with contextlib.suppress(ValueError):
        shown_file = network_file.resolve().relative_to(Path.cwd())
    console.print(
        f"starting the demo: database, broker, ingest, rules engine and API (logs in {logs}/) …"
    )
    with _embedded(settings) as (db_url, mqtt_url):
        upgrade(db_url)
        dsn = asyncpg_dsn(db_url)

        async def apply() -> str:
            conn = await asyncpg.connect(dsn)
            try:
                return (await apply_network(conn, net)).summary()
            finally:
                await conn.close()

        logging.getLogger("symbiont.demo").info(
            "network %s applied: %s", net.network, asyncio.run(apply())
        )
        env = {**os.environ, "SYMBIONT_DATABASE_URL": db_url, "SYMBIONT_MQTT_URL": mqtt_url}
        services = Services(env, logs)
        try:
            services.start("ingest", "ingest")
            services.wait_log("ingest", "subscribed to", 60)
            services.start("rules", "rules")
            port = _free_port(settings.api_port)
            services.start("api", "api", "--port", str(port))
            _wait_http(f"http://127.0.0.1:{port}/healthz", 60, services)
            tokens = demo_tokens(dsn, net, TOKENS)
            now = datetime.now(UTC).replace(second=0, microsecond=0)
            start = _history_start(net, now, args.days)
            days = (now - start).days
            faults = _demo_faults(net, now, start, days)
            sim_args = ["simulate", str(network_file), "--from", start.isoformat()]
            for fault in faults:
                sim_args += ["--fault", fault.spec]
            services.start("simulate", *sim_args)
            from statements.issue import previous_month

            year, month = previous_month(now, net)
            screen = first_screen(
                net=net,
                network_file=shown_file,
                port=port,
                tokens=tokens,
                db_url=db_url,
                mqtt_url=mqtt_url,
                own={
                    "DATABASE_URL": not settings.database_url,
                    "MQTT_URL": not settings.mqtt_url,
                },
                history=(
                    f"since the start of {start.astimezone(net.tz):%B}"
                    if args.days is None
                    else f"of the last {days} days"
                ),
                faults=faults,
                month=f"{year:04d}-{month:02d}",
                issued=asyncio.run(_last_month(dsn, net, settings, issue=False)).done,
            )
            console.print()
            for line in screen:
                console.print(line, highlight=False)
            console.print(f"ready after {time.monotonic() - began:.0f} s")
            deadline = None if args.duration is None else time.monotonic() + args.duration
            last: dict[str, object] = {}
            month_done = caught_up = False
            said = ""
            next_look = 0.0
            while deadline is None or time.monotonic() < deadline:
                _pause(5)
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
                        console.print(report)
                        said = report
                status = asyncio.run(_status(dsn))
                _pause(0)
                if status != last:
                    latest = status.get("latest")
                    newest = (
                        f"{latest.astimezone():%Y-%m-%d %H:%M}"
                        if isinstance(latest, datetime)
                        else "-"
                    )
                    console.print(
                        f"[bold]{datetime.now():%H:%M:%S}[/] readings stored: "
                        f"{status['readings']:,} (+{status['recent']:,} in 10 s, newest"
                        f" {newest}) · windows to reconcile: {status['dirty']:,} · exchange"
                        f" windows: {status['windows']:,} ({status['imbalanced']} imbalanced)"
                        f" · alerts firing: {status['firing']} · rejected:"
                        f" {status['rejections']}"
                    )
                    last = status
        except KeyboardInterrupt:
            console.print("stopping …")
        finally:
            services.stop()
    console.print(f"demo stopped; its data stays in {STATE}/ (delete it to start afresh)")
    return 0
