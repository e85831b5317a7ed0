"""The live view: one snapshot per API process, kept fresh by PostgreSQL LISTEN/NOTIFY.

One connection LISTENs for the rules engine (``symbiont_windows``: windows were updated),
alert events (``symbiont_alerts``: payload = alert id), ingest (``symbiont_dirty``: new
readings) and network changes.  Each burst of notifications costs one refresh of the
snapshot (at most every ``min_interval_s``), however many clients watch: ``/live`` is served
from memory, and every server-sent-events stream gets the changed exchanges and alerts from
its own bounded queue.  Without notifications the snapshot is still refreshed every
``idle_refresh_s`` (meter ages, a lost connection).

What is live: per meter its last reading, its current rate from its latest readings (the span
they cover is given) and its state (ok, stale, stuck, suspect, no_data); per exchange the
current sent and received rates summed from its meters, and its last complete reconciled
window with the imbalance spelled out (Δ = S − R, Δ %, the expected loss l·S, d, σ, z).
The snapshot holds everything; :func:`exchange_view` and :func:`meter_view` cut it to what
a caller may see (a partner never learns of another partner's meters, their states or their
alerts, not even as a count).  Values shown to people are rounded to :data:`DIGITS`
significant digits; readings themselves are given as stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from api.scope import Scope
from api.wcache import WindowsCache
from core.network import CANONICAL_UNIT, Kind, Meter, Network, ReadingType
from core.rule_settings import rule_config
from core.units import canonical_unit
from rules.alerts import Rule, stale_limit
from rules.engine import DIRTY_CHANNEL, WINDOWS_CHANNEL
from rules.lifecycle import ALERTS_CHANNEL, alert_view

log = logging.getLogger("symbiont.api.live")

NETWORK_CHANNEL = "symbiont_network"
EXCHANGE_WINDOWS_CHANNEL = "symbiont_exchange_windows"  # payload: exchange ids (migration 0005)

_EXCHANGES = """
SELECT e.id, w.window_start, w.window_end, w.sent, w.received, w.loss, w.imbalance, w.sigma,
       w.z, w.coverage, w.status
FROM exchanges e
LEFT JOIN LATERAL (
    SELECT * FROM exchange_windows w
    WHERE w.exchange_id = e.id AND w.window_end <= now()
    ORDER BY w.window_start DESC LIMIT 1
) w ON true
WHERE e.retired_at IS NULL
"""

# Per meter: the last reading and what its current rate is made of.  ``span`` is how far back
# from the last reading the rate looks: $1 seconds (at least three reading intervals) for
# registers and rates, the meter's window for delta meters (a weighbridge's day).
_METERS = """
SELECT m.id, r.ts, r.value, f.ts AS first_ts, f.value AS first_value,
       s.n, s.total, s.mean, x.span
FROM meters m
CROSS JOIN LATERAL (
    SELECT CASE WHEN m.reading = 'delta' THEN m.window_s::double precision
                ELSE greatest($1, 3 * coalesce(m.interval_s, 0)) END AS span
) x
LEFT JOIN LATERAL (
    SELECT ts, value FROM readings r
    WHERE r.meter_id = m.id AND r.ts <= now() + interval '5 minutes'
    ORDER BY r.ts DESC LIMIT 1
) r ON true
LEFT JOIN LATERAL (
    SELECT ts, value FROM readings f
    WHERE f.meter_id = m.id AND f.ts >= r.ts - make_interval(secs => x.span) AND f.ts <= r.ts
    ORDER BY f.ts LIMIT 1
) f ON m.reading = 'total'
LEFT JOIN LATERAL (
    SELECT count(*) AS n, sum(value) AS total, avg(value) AS mean FROM readings s
    WHERE s.meter_id = m.id AND s.ts > r.ts - make_interval(secs => x.span) AND s.ts <= r.ts
) s ON m.reading <> 'total'
WHERE m.retired_at IS NULL
"""

_OPEN_ALERTS = "SELECT * FROM alerts WHERE status = 'firing' ORDER BY started_at DESC, id DESC"

RATE_SPAN_S = 600.0  # a register's or a rate meter's current rate: its last 10 minutes
DIGITS = 6  # significant digits of the values shown to people (rates, quantities, Δ)

# A meter's state, worst first: what colours the exchanges it measures.
METER_STATES = ("retired", "no_data", "offline", "stale", "stuck", "suspect", "ok")
_STATE_RULES = ((Rule.meter_stale, "stale"), (Rule.meter_stuck, "stuck"),
                (Rule.meter_suspect, "suspect"))  # fmt: skip


def shown(value: float | None, digits: int = DIGITS) -> float | None:
    """``value`` rounded to ``digits`` significant digits (None for None, NaN and ±inf): a
    window's sum is ``154.482`` to the people reading it, not ``154.48199999891222``."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def worst_state(states: Any) -> str:
    """The worst of some meter states (``ok`` for none)."""
    ranked = [s for s in states if s in METER_STATES]
    return min(ranked, key=METER_STATES.index) if ranked else "ok"


def stale_after(net: Network, meter: Meter) -> float | None:
    """Seconds of silence after which ``meter`` is stale (its meter_stale settings)."""
    cfg = rule_config(Rule.meter_stale, net.meter_rules.get(meter.id, {}).get(Rule.meter_stale))
    return stale_limit(meter.interval, cfg) if cfg.enabled else None


def meter_state(
    last_ts: datetime | None, firing: set[str], *, retired: bool = False, offline: bool = False
) -> str:
    """A meter's state: ``retired``; ``no_data`` (never read); ``offline`` while the Sparkplug
    B edge node or device it comes from is dead (its NDEATH or DDEATH, until its next birth);
    ``stale``, ``stuck`` or ``suspect`` while that alert fires on it (the rules decide: a
    meter's own limits, and a backfill of old readings is data arriving, not silence); else
    ``ok``.  ``firing``: the rules firing on it."""
    if retired:
        return "retired"
    if last_ts is None:
        return "no_data"
    if offline:
        return "offline"
    for rule, state in _STATE_RULES:
        if rule in firing:
            return state
    return "ok"


def meter_rate(meter: Meter, row: Any) -> tuple[float | None, datetime | None, datetime | None]:
    """(rate per hour in the canonical unit, from, to): a meter's current flow from its latest
    readings.  A register: its rise over the span over the hours; a rate meter: the mean of
    its readings in the span; a delta meter: what it counted in its last window per hour."""
    last_ts, last = row["ts"], row["value"]
    if last_ts is None or last is None:
        return None, None, None
    if meter.reading == ReadingType.total:
        first_ts, first = row["first_ts"], row["first_value"]
        if first_ts is None or first_ts >= last_ts or last < first:
            return None, None, None  # one reading only, or a counter reset in the span
        hours = (last_ts - first_ts).total_seconds() / 3600.0
        return (last - first) / hours, first_ts, last_ts
    if meter.reading == ReadingType.rate:
        return row["mean"], last_ts - timedelta(seconds=row["span"]), last_ts
    hours = row["span"] / 3600.0
    total = row["total"]
    return (
        (total / hours if total is not None else None),
        (last_ts - timedelta(seconds=row["span"])),
        last_ts,
    )


def meter_view(entry: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A meter of the snapshot as the API gives it, its age and state as of ``now``."""
    last = entry["last_ts"]
    return {
        "id": entry["id"],
        "partner": entry["partner"],
        "kind": entry["kind"],
        "reading": entry["reading"],
        "unit": entry["unit"],
        "last_ts": last,
        "last_value": entry["last_value"],
        "age_s": round((now - last).total_seconds(), 1) if last else None,
        "rate": shown(entry["rate"]),
        "rate_unit": entry["rate_unit"],
        "rate_from": entry["rate_from"],
        "rate_to": entry["rate_to"],
        "state": entry["state"],
        "offline_since": entry["offline_since"],
        "stale_after_s": entry["stale_after_s"],
        "open_alerts": entry["open_alerts"],
    }


def exchange_view(entry: dict[str, Any], scope: Scope) -> dict[str, Any]:
    """An exchange of the snapshot as ``scope`` may see it: the states and alerts of the meters
    it may see (a partner: its own), never those of a counterparty's meters."""
    meters = {mid: state for mid, state in entry["_meter_states"].items() if mid in scope.meters}
    alerts: int = entry["_exchange_alerts"]
    alerts += sum(n for mid, n in entry["_meter_alerts"].items() if mid in scope.meters)
    public = {k: v for k, v in entry.items() if not k.startswith("_")}
    public["meter_states"] = meters
    public["meter_state"] = worst_state(meters.values())
    public["open_alerts"] = alerts
    return public


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
        if event.kind == "flow":
            event = Event(
                "flow", exchange_view(event.data, self.scope), event.subject, event.subject_kind
            )
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1  # a client that does not read loses events, never the server


def _sum_rates(meters: dict[str, dict[str, Any]], ids: Sequence[str]) -> float | None:
    """The current flow of one end of an exchange: the sum of its meters' rates (None when
    one of them has none, or is stale: half a sum would pass for a drop in flow, and an old
    rate for the current one)."""
    rates: list[float] = []
    for m in ids:
        meter = meters.get(m)
        rate = meter["rate"] if meter and meter["state"] != "stale" else None
        if rate is None or not math.isfinite(rate):
            return None
        rates.append(rate)
    return float(sum(rates)) if rates else None


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
            meter_rows = await conn.fetch(_METERS, RATE_SPAN_S)
            offline = {
                r["meter_id"]: r["changed_at"]
                for r in await conn.fetch(
                    "SELECT meter_id, changed_at FROM meter_presence WHERE NOT online"
                )
            }
            alert_rows = await conn.fetch(_OPEN_ALERTS)
        now = datetime.now(UTC)
        alerts = [alert_view(r) for r in alert_rows]
        open_by_subject: dict[str, int] = {}
        firing: dict[str, set[str]] = {}
        for a in alerts:
            open_by_subject[a["subject"]] = open_by_subject.get(a["subject"], 0) + 1
            if a["subject_kind"] == "meter":
                firing.setdefault(a["subject"], set()).add(a["rule"])
        meters: dict[str, dict[str, Any]] = {}
        meter_info = {m.id: m for m in net.meters} if net else {}
        for r in meter_rows:
            m = meter_info.get(r["id"])
            if m is None or net is None:
                continue
            rate, rate_from, rate_to = meter_rate(m, r)
            limit = stale_after(net, m)
            on = firing.get(m.id, set())
            meters[m.id] = {
                "id": m.id,
                "partner": m.partner,
                "kind": m.kind.value,
                "reading": m.reading.value,
                "unit": canonical_unit(m.kind, m.reading),
                "last_ts": r["ts"],
                "last_value": r["value"],
                "rate": rate,
                "rate_unit": f"{CANONICAL_UNIT[Kind(m.kind)]}/h",
                "rate_from": rate_from,
                "rate_to": rate_to,
                "stale_after_s": limit,
                "firing": on,
                "state": meter_state(r["ts"], on, offline=m.id in offline),
                "offline_since": offline.get(m.id),
                "open_alerts": open_by_subject.get(m.id, 0),
            }
        exchanges: dict[str, dict[str, Any]] = {}
        known = {e.id: e for e in net.exchanges} if net else {}
        for r in ex_rows:
            ex = known.get(r["id"])
            if ex is None:
                continue
            unit = CANONICAL_UNIT[Kind(ex.kind)]
            ends = [meters.get(mid) for mid in (*ex.sent, *ex.received)]
            spans = [(m["rate_from"], m["rate_to"]) for m in ends if m and m["rate_to"]]
            sent, received, loss = r["sent"], r["received"], r["loss"]
            delta = sent - received if sent is not None and received is not None else None
            exchanges[ex.id] = {
                "id": ex.id,
                "provider": ex.provider,
                "receiver": ex.receiver,
                "kind": ex.kind.value,
                "unit": unit,
                "sent_rate": shown(_sum_rates(meters, ex.sent)),
                "received_rate": shown(_sum_rates(meters, ex.received)),
                "rate_unit": f"{unit}/h",
                "rates_from": min(a for a, _ in spans) if spans else None,
                "rates_to": max(b for _, b in spans) if spans else None,
                "window_start": r["window_start"],
                "window_end": r["window_end"],
                "sent": shown(sent),
                "received": shown(received),
                "loss": loss if loss is not None else ex.loss,
                "delta": shown(delta),
                "delta_pct": shown(100.0 * delta / sent, 3) if delta is not None and sent else None,
                "expected_loss": shown(loss * sent)
                if loss is not None and sent is not None
                else None,
                "imbalance": shown(r["imbalance"]),
                "sigma": shown(r["sigma"]),
                "z": shown(r["z"], 3),
                "coverage": shown(r["coverage"], 4),
                "status": r["status"],
                "_exchange_alerts": open_by_subject.get(ex.id, 0),
                "_meter_alerts": {
                    mid: open_by_subject.get(mid, 0) for mid in (*ex.sent, *ex.received)
                },
                "_meter_states": {
                    mid: meters[mid]["state"] if mid in meters else "no_data"
                    for mid in (*ex.sent, *ex.received)
                },
            }
        previous = self.snapshot
        self.snapshot = Snapshot(now, exchanges, meters, alerts)
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
