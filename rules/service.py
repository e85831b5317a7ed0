"""``symbiont rules`` as a process: the rules engine's passes whenever ingest marks data dirty,
its time-driven checks every 15 s, retention hourly, the outbox's notifier beside it, the
statements that fall due issued by a function the command line passes in (statements are
issued from the rules process, but the rules package does not depend on them), and, when it
serves metrics, the backlog of the engine and of the outbox measured into them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import asyncpg

from core.settings import Settings
from rules.engine import DIRTY_CHANNEL, Engine
from rules.passes import Stats

log = logging.getLogger("symbiont.rules")

# Issues the statements due at an instant with the engine's network; returns how many.
Issue = Callable[[Engine, asyncpg.Connection, datetime], Awaitable[int]]


class Service:
    """One rules worker as a process: the engine's passes whenever ingest marks data dirty (and
    every few seconds), its time-driven checks, retention, the outbox's notifier, the
    statements' issue when ``issue`` is given, and with ``observe_backlog`` (when it serves
    metrics) the engine's and the outbox's backlog measured every 15 s."""

    def __init__(
        self, engine: Engine, issue: Issue | None = None, *, observe_backlog: bool = False
    ) -> None:
        self.engine = engine
        self.issue = issue
        self.observe_backlog = observe_backlog
        self._last_retention = float("-inf")

    async def _backlog_loop(self, stop: asyncio.Event) -> None:
        """Measure the engine's and the outbox's backlog into the metrics, on a connection of
        its own so the numbers stay current during a long pass."""
        from notify import metrics as notify_metrics
        from rules import metrics

        conn: asyncpg.Connection | None = None
        try:
            while not stop.is_set():
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(
                            self.engine.dsn,
                            server_settings={
                                "application_name": f"symbiont-rules:{self.engine.worker}:metrics",
                                "statement_timeout": "10s",
                            },
                        )
                    await metrics.observe_backlog(conn)
                    await notify_metrics.observe_outbox(conn)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.debug("could not measure the backlog (%s)", exc)
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            await conn.close()
                    conn = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=metrics.BACKLOG_INTERVAL_S)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def _statements_loop(self, stop: asyncio.Event) -> None:
        assert self.issue is not None
        while not stop.is_set():
            try:
                conn = await asyncpg.connect(self.engine.dsn)
                try:
                    n = await self.issue(self.engine, conn, datetime.now(UTC))
                    if n:
                        log.info("issued %d statements", n)
                finally:
                    await conn.close()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("could not issue statements (%s); retrying", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=60.0)

    async def run(self, stop: asyncio.Event) -> None:
        conn = await self._connect_forever(stop)
        if conn is None:
            return
        wake = asyncio.Event()
        listener = await asyncpg.connect(self.engine.dsn)
        await listener.add_listener(DIRTY_CHANNEL, lambda *_: wake.set())
        notifier_task = None
        try:
            from notify import worker

            notifier = worker.Notifier(self.engine.settings)
            notifier_task = asyncio.create_task(notifier.run(stop))
        except (ImportError, AttributeError):  # pragma: no cover
            pass
        statements_task = (
            asyncio.create_task(self._statements_loop(stop)) if self.issue is not None else None
        )
        backlog_task = (
            asyncio.create_task(self._backlog_loop(stop)) if self.observe_backlog else None
        )
        last_periodic = 0.0
        log.info("rules worker %s started", self.engine.worker)
        try:
            while not stop.is_set():
                # Cleared before the work, not after: a NOTIFY that arrives while a batch is
                # processed sets it again, so that data is not left waiting for the timeout.
                wake.clear()
                try:
                    started = time.perf_counter()
                    stats = await self.engine.process_pending(conn)
                    _observe(stats, time.perf_counter() - started)
                    if stats.meter_windows or stats.exchange_windows or stats.alerts:
                        log.info(
                            "%d meter windows, %d exchange windows, %d reconciliations; "
                            "alerts: %s; %s",
                            stats.meter_windows,
                            stats.exchange_windows,
                            stats.reconciliations,
                            dict(stats.alerts) or "no change",
                            _failed_text(stats),
                        )
                    if time.monotonic() - last_periodic > 15:
                        periodic = await self.engine.periodic(conn, datetime.now(UTC))
                        if periodic.alerts:
                            log.info("time-driven alerts: %s", dict(periodic.alerts))
                        last_periodic = time.monotonic()
                        await self._retention(conn)
                except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
                    log.warning("database unavailable (%s); reconnecting", exc)
                    await asyncio.sleep(2)
                    conn = await self._connect_forever(stop)
                    if conn is None:
                        return
                    with contextlib.suppress(Exception):
                        await listener.close()
                    listener = await asyncpg.connect(self.engine.dsn)
                    await listener.add_listener(DIRTY_CHANNEL, lambda *_: wake.set())
                    continue
                except asyncpg.PostgresError as exc:
                    # A deadlock, a serialization failure, a statement timeout …: the pass's
                    # transactions rolled back and its dirty windows are still there; try again
                    # rather than let the worker die.
                    log.warning("rules pass failed (%s: %s); retrying", type(exc).__name__, exc)
                    if conn.is_in_transaction():
                        await conn.close()
                        conn = await self._connect_forever(stop)
                        if conn is None:
                            return
                    await asyncio.sleep(1)
                    continue
                # Passes are sized by time: what arrives during the rest of the interval
                # waits for the next pass, which takes it all at once.
                rest = self.engine.settings.rules_pass_interval_s - (time.perf_counter() - started)
                if rest > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=rest)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=5.0)
        finally:
            if backlog_task is not None:
                backlog_task.cancel()
            if statements_task is not None:
                statements_task.cancel()
            if notifier_task is not None:
                notifier_task.cancel()
            with contextlib.suppress(Exception):
                await listener.close()
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def _retention(self, conn: asyncpg.Connection) -> None:
        """Drop expired reading partitions, at most hourly, by one worker at a time."""
        keep = self.engine.settings.readings_retention_days
        if keep is None or time.monotonic() - self._last_retention < 3600:
            return
        self._last_retention = time.monotonic()
        if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext('symbiont_retention'))"):
            return
        try:
            from rules.retention import prune

            pruned = await prune(
                conn, keep, datetime.now(UTC), backfill_days=self.engine.settings.backfill_days
            )
            if pruned.partitions or pruned.rejections:
                log.info(
                    "retention: dropped %s and %d rejections",
                    ", ".join(pruned.partitions) or "no partitions",
                    pruned.rejections,
                )
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext('symbiont_retention'))")

    async def _connect_forever(self, stop: asyncio.Event) -> asyncpg.Connection | None:
        while not stop.is_set():
            try:
                conn: asyncpg.Connection = await asyncpg.connect(
                    self.engine.dsn,
                    server_settings={"application_name": f"symbiont-rules:{self.engine.worker}"},
                )
                return conn
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("database not reachable (%s); retrying", exc)
                await asyncio.sleep(2)
        return None


def _failed_text(stats: Stats) -> str:
    """How many windows could not be computed, by kind, for people."""
    if not stats.failed:
        return "no window failed"
    kinds: dict[str, int] = defaultdict(int)
    for kind, _, _ in stats.failures:
        kinds[kind] += 1
    parts = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    return (
        f"{stats.failed} window{'s' if stats.failed > 1 else ''} could not be computed "
        f"({parts}; see the rules_error alerts); everything else was processed"
    )


def _observe(stats: Stats, seconds: float) -> None:
    from rules import metrics

    metrics.PASS_SECONDS.observe(seconds)
    for kind, _, _ in stats.failures:
        metrics.WINDOW_ERRORS.labels(kind).inc()
    metrics.METER_WINDOWS.inc(stats.meter_windows)
    metrics.EXCHANGE_WINDOWS.inc(stats.exchange_windows)
    metrics.RECONCILIATIONS.inc(stats.reconciliations)
    for rule, n in stats.alerts.items():
        metrics.ALERT_CHANGES.labels(str(rule)).inc(n)


def run(
    settings: Settings,
    *,
    once: bool = False,
    worker_id: str | None = None,
    issue: Issue | None = None,
) -> int:
    """``symbiont rules``: one pass (``once``) or the service until SIGINT/SIGTERM; ``issue``
    issues the statements that fall due, after a pass and, in the service, every minute in a
    task of its own, so rendering never delays windows."""
    engine = Engine(settings, worker_id=worker_id)
    if settings.metrics_port and not once:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.metrics_host)

    async def main() -> None:
        if once:
            conn = await asyncpg.connect(engine.dsn)
            try:
                stats = await engine.process_pending(conn)
                periodic = await engine.periodic(conn, datetime.now(UTC))
                stats.add(periodic)
                if issue is not None:
                    stats.statements += await issue(engine, conn, datetime.now(UTC))
                print(
                    f"processed {stats.meter_windows} meter windows, {stats.exchange_windows} "
                    f"exchange windows, {stats.reconciliations} reconciliations; alerts: "
                    f"{dict(stats.alerts) or 'no change'}; {_failed_text(stats)}"
                )
            finally:
                await conn.close()
            return
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Service(engine, issue, observe_backlog=bool(settings.metrics_port)).run(stop)

    asyncio.run(main())
    return 0
