"""PostgreSQL for the benchmarks: one-off queries, throwaway databases with a network applied,
a thread LISTENing for the services' notifications, and the CPU of the backends serving a
service's connections (found by their application_name; their CPU is readable from /proc when
the server runs on this machine)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from benchmarks.harness import BenchError
from benchmarks.harness.proc import BackendCpu, cpu_seconds, total
from core.apply import apply_network
from core.db import asyncpg_dsn
from core.network import Network
from tests.services import (
    create_database,
    create_migrated_template,
    drop_database,
    system_postgres_url,
)

T = TypeVar("T")

DIRTY = "symbiont_dirty"  # ingest NOTIFYs it once per committed batch, payload = readings


async def session(url: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """``work(conn)`` on a connection of its own to ``url``."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await work(conn)
    finally:
        await conn.close()


def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def go(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows

    return asyncio.run(session(url, go))


def execute(url: str, *statements: str) -> None:
    """Run ``statements`` one after the other on one connection (each may hold several)."""

    async def go(conn: asyncpg.Connection) -> None:
        for sql in statements:
            await conn.execute(sql)

    asyncio.run(session(url, go))


class Databases:
    """A migrated template on the system PostgreSQL and fresh databases cloned from it, each
    with ``network`` applied; ``close()`` drops them all. Their names start with
    ``symbiont_<prefix>_``."""

    def __init__(self, network: Network, prefix: str) -> None:
        self.admin = system_postgres_url()
        self.prefix = prefix
        self.tag = f"{os.getpid()}_{secrets.token_hex(3)}"
        self.template = f"symbiont_{prefix}_tpl_{self.tag}"
        self.created: list[str] = []
        self.network = network
        create_migrated_template(self.admin, self.template)

    def fresh(self, label: str) -> str:
        name = f"symbiont_{self.prefix}_{label}_{self.tag}"
        url = create_database(self.admin, name, template=self.template)
        self.created.append(name)
        asyncio.run(session(url, lambda conn: apply_network(conn, self.network)))
        return url

    def copy(self, url: str, label: str) -> str:
        """A new database cloned from the one at ``url`` (nobody may be connected to it)."""
        name = f"symbiont_{self.prefix}_{label}_{self.tag}"
        source = url.rsplit("/", 1)[1].split("?", 1)[0]
        created = create_database(self.admin, name, template=source)
        self.created.append(name)
        return created

    def close(self) -> None:
        for name in [*self.created, self.template]:
            with contextlib.suppress(Exception):
                drop_database(self.admin, name)


# ------------------------------------------------------------------------------- backends


def backend_pids(url: str, application_name: str, *, numbered: bool = True) -> set[int]:
    """The backends serving the connections named ``application_name`` (and, if
    ``numbered``, ``application_name/2`` …: ingest's further writer connections)."""
    if numbered:
        sql = """SELECT pid FROM pg_stat_activity
                 WHERE application_name = $1 OR application_name LIKE $1 || '/%'"""
    else:
        sql = "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
    return {r["pid"] for r in fetch(url, sql, application_name)}


def wait_backend(url: str, application_name: str, timeout: float = 10.0) -> int | None:
    """The backend serving the connection named exactly ``application_name``, once it is
    there (None if it is not within ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = backend_pids(url, application_name, numbered=False)
        if pids:
            return min(pids)
        time.sleep(0.1)
    return None


def backend_cpu(url: str) -> BackendCpu:
    """CPU seconds of every PostgreSQL backend of the database at ``url`` (but the one asking),
    by pid, with its application_name."""
    rows = fetch(
        url,
        "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()",
    )
    out: BackendCpu = {}
    for r in rows:
        cpu = cpu_seconds(r["pid"])
        if cpu is not None:
            out[r["pid"]] = (r["application_name"] or "", cpu)
    return out


class Backends:
    """The backends of a service's connections (see ``backend_pids``), collected while it
    runs: ``poll()`` often (it queries at most every 0.2 s), then ``cpu_seconds()`` before the
    service stops gives their CPU over their whole life."""

    def __init__(self, url: str, application_name: str) -> None:
        self.url = url
        self.application_name = application_name
        self.pids: set[int] = set()
        self._next = 0.0

    def poll(self) -> None:
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + 0.2
        self.pids |= backend_pids(self.url, self.application_name)

    def cpu_seconds(self) -> float | None:
        if not self.pids:
            return None
        return total([cpu_seconds(pid) for pid in sorted(self.pids)])


# ------------------------------------------------------------------------------- listening


class Listener:
    """LISTENs on ``channels`` on one connection, in a thread of its own; records each
    notification's arrival time (``time.time()``), channel and payload, and sums the payloads
    of ``symbiont_dirty`` (the readings of each batch ingest committed) in ``total``."""

    def __init__(self, url: str, channels: Sequence[str] = (DIRTY,)) -> None:
        self.dsn = asyncpg_dsn(url)
        self.channels = tuple(channels)
        self.events: list[tuple[float, str, str]] = []
        self.total = 0
        self.target = math.inf
        self.reached = threading.Event()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="listener", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(15)
        if self._error is not None:
            raise BenchError(f"LISTEN failed: {self._error}")

    def expect(self, readings: int) -> None:
        """``reached`` is set once ``readings`` readings were committed."""
        self.target = readings
        if self.total >= readings:
            self.reached.set()

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self.events.append((time.time(), channel, payload))
        if channel == DIRTY:
            self.total += int(payload or 0)
            if self.total >= self.target:
                self.reached.set()

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            conn = await asyncpg.connect(self.dsn)
            try:
                for channel in self.channels:
                    await conn.add_listener(channel, self._notified)
                self._ready.set()
                await self._stop.wait()
            finally:
                await conn.close()

        try:
            asyncio.run(main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def progress_wait(
        self, stall_s: float, alive: Callable[[], bool], tick: Callable[[], None] | None = None
    ) -> bool:
        """Wait until the expected readings were committed; False if nothing came for
        ``stall_s`` or ``alive()`` turned false. ``tick()`` is called every 0.1 s meanwhile."""
        last_total, last_change = self.total, time.monotonic()
        while not self.reached.wait(0.1):
            if tick is not None:
                tick()
            if self.total != last_total:
                last_total, last_change = self.total, time.monotonic()
            elif time.monotonic() - last_change > stall_s or not alive():
                return self.reached.is_set()
        return True

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
