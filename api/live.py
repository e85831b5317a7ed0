"""The live view: one snapshot per API process, kept fresh by PostgreSQL LISTEN/NOTIFY.

One connection LISTENs for the rules engine (``symbiont_windows``: windows were updated),
alert events (``symbiont_alerts``: payload = alert id), ingest (``symbiont_dirty``: new
readings) and network changes.  Each burst of notifications costs one refresh of the
snapshot (at most every ``min_interval_s``), however many clients watch: ``/live`` is served
from memory, and every server-sent-events stream gets the changed exchanges and alerts from
its own bounded queue.  Without notifications the snapshot is still refreshed every
``idle_refresh_s`` (meter ages, a lost connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from api.scope import Scope
from api.wcache import WindowsCache
from core.network import CANONICAL_UNIT, Kind, Network
from core.units import canonical_unit
from rules.engine import DIRTY_CHANNEL, WINDOWS_CHANNEL
from rules.lifecycle import ALERTS_CHANNEL, alert_view

log = logging.getLogger("symbiont.api.live")

NETWORK_CHANNEL = "symbiont_network"
EXCHANGE_WINDOWS_CHANNEL = "symbiont_exchange_windows"  # payload: exchange ids (migration 0005)

_EXCHANGES = """
SELECT e.id, w.window_start, w.window_end, w.sent, w.received, w.imbalance, w.z,
       w.coverage, w.status
FROM exchanges e
LEFT JOIN LATERAL (
    SELECT * FROM exchange_windows w
    WHERE w.exchange_id = e.id AND w.window_end <= now()
    ORDER BY w.window_start DESC LIMIT 1
) w ON true
WHERE e.retired_at IS NULL
"""

_METERS = """
SELECT m.id, r.ts, r.value
FROM meters m
LEFT JOIN LATERAL (
    SELECT ts, value FROM readings r
    WHERE r.meter_id = m.id AND r.ts <= now() + interval '5 minutes'
    ORDER BY r.ts DESC LIMIT 1
) r ON true
WHERE m.retired_at IS NULL
"""

_OPEN_ALERTS = "SELECT * FROM alerts WHERE status = 'firing' ORDER BY started_at DESC, id DESC"


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # flow | alert
    data: dict[str, Any]
    subject: str
    subject_kind: str  # exchange | meter | partner


@dataclass
class Snapshot:
    generated_at: datetime
    exchanges: dict[str, dict[str, Any]]
    meters: dict[str, dict[str, Any]]
    alerts: list[dict[str, Any]]


@dataclass(eq=False)
class Subscriber:
    scope: Scope
    queue: asyncio.Queue[Event]
    dropped: int = 0

    def offer(self, event: Event) -> None:
        if not self.scope.everything:
            if event.kind == "flow" and event.subject not in self.scope.exchanges:
                return
            if event.kind == "alert" and not self.scope.sees_alert(
                event.subject, event.subject_kind
            ):
                return
            if event.kind == "alert":
                event = Event(
                    "alert", self.scope.redact_alert(event.data), event.subject, event.subject_kind
                )
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1  # a client that does not read loses events, never the server


def _rate(quantity: float | None, start: datetime | None, end: datetime | None) -> float | None:
    if quantity is None or start is None or end is None:
        return None
    hours = (end - start).total_seconds() / 3600.0
    return quantity / hours if hours > 0 else None


@dataclass
class LiveHub:
    dsn: str
    pool: asyncpg.Pool
    network: Callable[[], Network | None]
    on_network_change: Callable[[], None] = lambda: None
    min_interval_s: float = 0.25
    idle_refresh_s: float = 15.0
    queue_size: int = 1000
    max_subscribers: int = 2000
    snapshot: Snapshot | None = None
    subscribers: set[Subscriber] = field(default_factory=set)
    refreshes: int = 0
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _alert_ids: asyncio.Queue[int] = field(default_factory=asyncio.Queue)
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False
    connected: bool = False
    windows_cache: WindowsCache = field(default_factory=WindowsCache)

    def __post_init__(self) -> None:
        # Cached window histories are trusted only while notifications can reach us.
        self.windows_cache.enabled = lambda: self.connected

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="live-hub")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- subscribers -----------------------------------------------------------------------
    def subscribe(self, scope: Scope) -> Subscriber | None:
        if len(self.subscribers) >= self.max_subscribers:
            return None
        sub = Subscriber(scope, asyncio.Queue(self.queue_size))
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def _publish(self, event: Event) -> None:
        for sub in list(self.subscribers):
            sub.offer(event)

    # -- the snapshot ----------------------------------------------------------------------
    async def current(self) -> Snapshot:
        if self.snapshot is None:
            await self.refresh()
        assert self.snapshot is not None
        return self.snapshot

    async def refresh(self) -> None:
        net = self.network()
        async with self.pool.acquire() as conn:
            ex_rows = await conn.fetch(_EXCHANGES)
            meter_rows = await conn.fetch(_METERS)
            alert_rows = await conn.fetch(_OPEN_ALERTS)
        alerts = [alert_view(r) for r in alert_rows]
        open_by_subject: dict[str, int] = {}
        for a in alerts:
            open_by_subject[a["subject"]] = open_by_subject.get(a["subject"], 0) + 1
        exchanges: dict[str, dict[str, Any]] = {}
        known = {e.id: e for e in net.exchanges} if net else {}
        for r in ex_rows:
            ex = known.get(r["id"])
            if ex is None:
                continue
            unit = CANONICAL_UNIT[Kind(ex.kind)]
            meters_open = sum(open_by_subject.get(m, 0) for m in (*ex.sent, *ex.received))
            exchanges[ex.id] = {
                "id": ex.id,
                "provider": ex.provider,
                "receiver": ex.receiver,
                "kind": ex.kind.value,
                "unit": unit,
                "window_start": r["window_start"],
                "window_end": r["window_end"],
                "sent": r["sent"],
                "received": r["received"],
                "sent_rate": _rate(r["sent"], r["window_start"], r["window_end"]),
                "received_rate": _rate(r["received"], r["window_start"], r["window_end"]),
                "rate_unit": f"{unit}/h",
                "status": r["status"],
                "imbalance": r["imbalance"],
                "z": r["z"],
                "coverage": r["coverage"],
                "open_alerts": open_by_subject.get(ex.id, 0) + meters_open,
            }
        meters: dict[str, dict[str, Any]] = {}
        meter_info = {m.id: m for m in net.meters} if net else {}
        for r in meter_rows:
            m = meter_info.get(r["id"])
            if m is None:
                continue
            meters[m.id] = {
                "id": m.id,
                "partner": m.partner,
                "unit": canonical_unit(m.kind, m.reading),
                "last_ts": r["ts"],
                "last_value": r["value"],
            }
        previous = self.snapshot
        self.snapshot = Snapshot(datetime.now(UTC), exchanges, meters, alerts)
        self.refreshes += 1
        if previous is not None:
            for ex_id, entry in exchanges.items():
                if previous.exchanges.get(ex_id) != entry:
                    self._publish(Event("flow", entry, ex_id, "exchange"))

    async def _alert_events(self) -> None:
        ids: list[int] = []
        while not self._alert_ids.empty():
            ids.append(self._alert_ids.get_nowait())
        if not ids:
            return
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT * FROM alerts WHERE id = ANY($1::bigint[]) ORDER BY id", ids
            )
        for row in rows:
            data = alert_view(row)
            self._publish(Event("alert", data, row["subject"], row["subject_kind"]))

    # -- the listener ----------------------------------------------------------------------
    def _notified(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        if channel == ALERTS_CHANNEL:
            with contextlib.suppress(ValueError):
                self._alert_ids.put_nowait(int(payload))
        elif channel == EXCHANGE_WINDOWS_CHANNEL:
            self.windows_cache.notified(payload)
            return  # the snapshot follows symbiont_windows, sent by the same transactions
        elif channel == NETWORK_CHANNEL:
            self.windows_cache.clear()
            self.on_network_change()
        self._wake.set()

    async def _listen(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self.dsn, server_settings={"application_name": "symbiont-api-live"}
        )
        channels = (
            WINDOWS_CHANNEL,
            ALERTS_CHANNEL,
            DIRTY_CHANNEL,
            NETWORK_CHANNEL,
            EXCHANGE_WINDOWS_CHANNEL,
        )
        for channel in channels:
            await conn.add_listener(channel, self._notified)
        conn.add_termination_listener(self._lost)
        return conn

    def _lost(self, _conn: object) -> None:
        """The listening connection closed: notifications may be missed from now on."""
        self.connected = False
        self.windows_cache.clear()
        self._wake.set()

    async def _run(self) -> None:
        conn: asyncpg.Connection | None = None
        backoff = 0.5
        while not self._stopping:
            try:
                if conn is None or conn.is_closed():
                    self.connected = False
                    conn = await self._listen()
                    self.windows_cache.clear()  # whatever changed while nobody listened
                    self.connected = True
                    backoff = 0.5
                    self._wake.set()  # whatever happened while not listening
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.idle_refresh_s)
                self._wake.clear()
                started = time.monotonic()
                await self._alert_events()
                await self.refresh()
                # Coalesce bursts: one refresh per min_interval_s at most.
                await asyncio.sleep(max(0.0, self.min_interval_s - (time.monotonic() - started)))
            except asyncio.CancelledError:
                break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self.connected = False
                self.windows_cache.clear()
                log.warning("live view: %s; retrying in %.1f s", exc, backoff)
                if conn is not None and not conn.is_closed():
                    conn.terminate()
                conn = None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        if conn is not None and not conn.is_closed():
            await conn.close()
