"""``symbiont rules``: the event-driven, incremental rules engine.

Stage 1 claims the (meter, window) pairs ingest marked dirty, recomputes those meter
windows from readings (and their neighbours, whose edges a total register shares), stores
them and marks the exchange windows, reconciliation components and meters they feed.
Stage 2 claims those subjects ``FOR UPDATE SKIP LOCKED``, computes exchange windows
 and network reconciliations from the committed meter windows, then replays the
alert rules over the windows that changed (:mod:`rules.replay`). The process around the
engine is :mod:`rules.service`.

Several workers can run side by side: claims never overlap, and whatever changes while a
worker computes is marked again (versions) and recomputed.

A window whose computation fails (a stored reading no meter can send, a result beyond the
floating-point range, a bug) is stored as failed — a meter window with its ``error``, an
exchange window with status ``error`` and its ``error``, a network reconciliation with its
``error`` — and raises ``rules_error`` on its exchange or meter; every other window goes on.
Exchange windows built on a failed meter window fail too, naming it. Only the database being
unavailable stops a pass.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import os
import socket
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import numpy as np

from core.apply import load_applied
from core.db import asyncpg_dsn, require_database_url
from core.network import Meter, ReadingType
from core.settings import Settings
from core.text import safe_text
from core.units import canonical_unit
from core.windows import local_text, windows_between
from rules import incidents, lifecycle
from rules.alerts import (
    Rule,
)
from rules.passes import Stats, _dt, window_bounds
from rules.quantities import (
    MAX_ABS_VALUE,
    WindowQuantities,
    Windows,
    invalid_readings,
    window_quantities,
)
from rules.quantities_many import QuantityItem, window_quantities_many
from rules.reconcile import (
    Elimination,
    MeterQuantity,
    meter_sigma,
    reconcile_exchange,
    reconcile_network,
)
from rules.replay import AlertReplay
from rules.store import (
    FloatArray,
    claim_meter_windows,
    claim_subjects,
    copy_upsert,
    fetch_many,
    fetch_series,
    finish_meter_windows,
    jsonb,
    mark_subjects,
)
from rules.topology import Topology, build_topology

log = logging.getLogger("symbiont.rules")


DIRTY_CHANNEL = "symbiont_dirty"
WINDOWS_CHANNEL = "symbiont_windows"

METER_WINDOW_COLUMNS = (
    "meter_id",
    "window_start",
    "window_end",
    "quantity",
    "coverage",
    "readings",
    "stuck",
    "negatives",
    "resets",
    "reset_events",
    "outliers",
    "first_ts",
    "last_ts",
    "computed_at",
    "error",
)
EXCHANGE_WINDOW_COLUMNS = (
    "exchange_id",
    "window_start",
    "window_end",
    "sent",
    "received",
    "loss",
    "imbalance",
    "sigma",
    "z",
    "coverage",
    "status",
    "reconciled_sent",
    "reconciled_received",
    "computed_at",
    "error",
)


def _cause(exc: BaseException) -> str:
    """An exception as a failed window's cause: one line, safe to store, bounded."""
    text = " ".join(str(exc).split()) or "(no message)"
    return safe_text(f"{type(exc).__name__}: {text}", 1000)


def _num(value: float | None) -> float | None:
    """NULL for what JSON and people cannot use (nan), ±inf kept as a large finite z."""
    if value is None or math.isnan(value):
        return None
    if math.isinf(value):
        return math.copysign(1e300, value)
    return float(value)


class Engine(AlertReplay):
    def __init__(
        self,
        settings: Settings,
        *,
        worker_id: str | None = None,
        claim_limit: int = 200_000,
        subject_limit: int = 20_000,
    ) -> None:
        self.settings = settings
        self.dsn = asyncpg_dsn(require_database_url(settings.database_url))
        self.worker = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.claim_limit = claim_limit
        self.subject_limit = subject_limit
        self.topology: Topology | None = None
        self._targets = self._alert_targets()
        # when this worker last replayed the alerts of a subject (kind, id): the ``now`` of it
        self._replayed: dict[tuple[str, str], datetime] = {}
        # failed windows already logged, with their cause: each failure is logged once
        self._logged: dict[tuple[str, str, datetime], str] = {}

    def _failed(self, stats: Stats, kind: str, subject: str, start: datetime, cause: str) -> None:
        """Count a window that could not be computed; log it unless it was already logged
        with the same cause."""
        key = (kind, subject, start)
        stats.failures[key] = cause
        if self._logged.get(key) != cause:
            if len(self._logged) >= 100_000:
                self._logged.clear()
            self._logged[key] = cause
            log.warning(
                "%s %s: window from %s could not be computed: %s",
                kind,
                subject,
                start.isoformat(),
                cause,
            )

    def _computed(self, kind: str, subject: str, start: datetime) -> None:
        """A window computed cleanly: a later failure of it is news again."""
        if self._logged:
            self._logged.pop((kind, subject, start), None)

    def _alert_targets(self) -> lifecycle.Targets | None:
        try:
            from notify import outbox
        except ImportError:  # pragma: no cover - notify is part of the package
            return None
        settings = self.settings

        def targets(alert: dict[str, Any]) -> list[tuple[str, str]]:
            return list(outbox.alert_targets(settings, alert))

        return targets

    async def topology_for(self, conn: asyncpg.Connection) -> Topology | None:
        version = await conn.fetchval("SELECT applied_at FROM network LIMIT 1")
        if version is None:
            return None
        key = version.isoformat()
        if self.topology is None or self.topology.version != key:
            net = await load_applied(conn)
            assert net is not None
            self.topology = build_topology(net, key)
            log.info(
                "network loaded: %d exchanges, %d components",
                len(net.exchanges),
                len(self.topology.components),
            )
        return self.topology

    # -- the work loop ----------------------------------------------------------------------

    async def process_pending(self, conn: asyncpg.Connection, now: datetime | None = None) -> Stats:
        """Process everything pending (both stages) until nothing is left; ``now`` decides
        which windows have ended and is the time alerts are evaluated at."""
        total = Stats()
        topo = await self.topology_for(conn)
        if topo is None:
            return total
        while True:
            at = now or datetime.now(UTC)
            try:
                stage1 = await self.stage1(conn, topo, at)
                stage2 = await self.stage2(conn, topo, at)
            except BaseException:
                self._replayed.clear()  # what was rolled back is replayed in full again
                raise
            total.add(stage1)
            total.add(stage2)
            if not stage1.meter_windows and not stage2.subjects:
                return total
            if not stage1.meter_windows and stage2.deferred and not stage2.exchange_windows:
                await asyncio.sleep(0.2)  # waiting for another worker's earlier windows

    # -- stage 1: meter windows ------------------------------------------------------------

    async def stage1(self, conn: asyncpg.Connection, topo: Topology, now: datetime) -> Stats:
        stats = Stats()
        claimed = await claim_meter_windows(conn, self.worker, self.claim_limit)
        if not claimed:
            return stats
        by_meter: dict[str, set[datetime]] = defaultdict(set)
        for meter_id, start, _ in claimed:
            by_meter[meter_id].add(start)
        computed_at = datetime.now(UTC)
        max_gap = self.settings.backfill_days * 86400.0  # longer silences are breaks
        # The windows of every claimed meter, with the neighbours that share their edges, and
        # one request per cluster of them: the readings of the whole pass come in one query.
        plans: list[_MeterPlan] = []
        requests: list[tuple[str, datetime, datetime]] = []
        for meter_id, starts in by_meter.items():
            meter = topo.meters.get(meter_id)
            if meter is None:
                continue  # retired or unknown: nothing derives from it
            window = topo.meter_window[meter_id]
            claimed_bounds: set[tuple[datetime, datetime]] = set()
            bounds: set[tuple[datetime, datetime]] = set()
            for s in starts:
                b = window_bounds(s, window, topo.tz)
                claimed_bounds.add(b)
                bounds.add(b)
                if meter.reading != ReadingType.delta:  # edges shared with neighbours
                    bounds.add(window_bounds(b[0] - timedelta(seconds=1), window, topo.tz))
                    bounds.add(window_bounds(b[1], window, topo.tz))
            clusters = _clusters(sorted(bounds))
            margin = _margin(meter.interval)
            first = len(requests)
            requests.extend((meter_id, c[0][0] - margin, c[-1][1] + margin) for c in clusters)
            plans.append(
                _MeterPlan(meter_id, meter, window, starts, claimed_bounds, bounds, clusters, first)
            )
        series = await fetch_many(conn, requests)
        computed: list[
            tuple[_MeterPlan, list[tuple[Any, ...]], set[tuple[datetime, datetime]]]
        ] = []
        # Readings never further apart than the shortest window of their cluster cannot hold
        # a silence that reaches past a claimed window's neighbours: the usual case, found for
        # the whole pass in a few array operations.
        spans_of: dict[tuple[tuple[datetime, datetime], ...], tuple[FloatArray, float]] = {}

        def spans(cluster: list[tuple[datetime, datetime]]) -> tuple[FloatArray, float]:
            """The cluster's edges as epoch seconds, and its shortest window in seconds."""
            key = tuple(cluster)
            found = spans_of.get(key)
            if found is None:
                edges = np.array([(a.timestamp(), b.timestamp()) for a, b in cluster])
                edges.flags.writeable = False
                found = spans_of[key] = (edges, float(np.min(edges[:, 1] - edges[:, 0])))
            return found

        quiet = _quiet(
            [ts for ts, _ in series],
            [spans(c)[1] for plan in plans for c in plan.clusters],
        )
        jobs: list[_Job] = []
        for plan in plans:
            meter_id, meter, window = plan.meter_id, plan.meter, plan.window
            # A register or rate is interpolated across a silence: every window between its
            # two readings is computed with the windows that lean on them.
            fetched: dict[tuple[datetime, datetime, int], _Fetched] = {}
            loud: list[list[tuple[datetime, datetime]]] = []
            for i, cluster in enumerate(plan.clusters):
                ts, value = series[plan.first + i]
                fetched[(cluster[0][0], cluster[-1][1], len(cluster))] = (
                    spans(cluster)[0],
                    ts,
                    value,
                )
                if not quiet[plan.first + i]:
                    loud.append(cluster)
            walked: set[tuple[datetime, datetime]] = set()
            bounds = plan.bounds
            if meter.reading != ReadingType.delta and loud:
                walked = (
                    _across_silences(plan.starts, window, topo.tz, loud, fetched, max_gap) - bounds
                )
                bounds = bounds | walked
            for cluster in _clusters(sorted(bounds)) if walked else plan.clusters:
                lo, hi = cluster[0][0], cluster[-1][1]
                margin = _margin(meter.interval)
                ready = fetched.get((lo, hi, len(cluster)))
                edges: Windows = cluster
                if ready is None:
                    ts, value = await fetch_series(conn, meter_id, lo - margin, hi + margin)
                else:
                    ts, value = ready[1], ready[2]
                    if meter.reading != ReadingType.delta:
                        edges = ready[0]
                jobs.append(_Job(plan, cluster, edges, ts, value, walked))
        # The quantities of every cluster of the pass in one batch.
        quantities = window_quantities_many(
            [
                QuantityItem(
                    job.plan.meter.reading,
                    job.ts,
                    job.value,
                    job.edges,
                    interval=job.plan.meter.interval,
                    now=now,
                    max_gap=max_gap,
                )
                for job in jobs
            ],
            return_exceptions=True,
        )
        for job, q in zip(jobs, quantities, strict=True):
            rows_, _ = self._meter_rows(
                job.plan.meter_id,
                job.cluster,
                job.edges,
                job.ts,
                job.value,
                topo,
                now,
                computed_at,
                stats,
                max_gap,
                computed=q,
            )
            computed.append((job.plan, rows_, job.walked))
        # Windows computed only because they neighbour a claimed one (or lie in a silence it
        # is interpolated across) and that came out as they are stored are not written again,
        # nor is anything derived from them recomputed.
        same = await _unchanged(
            conn,
            [
                (row, cluster_plan.claimed_bounds, walked, now)
                for cluster_plan, rows_, walked in computed
                for row in rows_
            ],
        )
        rows: list[tuple[Any, ...]] = []
        subjects: list[tuple[str, str, datetime]] = []
        for _, rows_, _ in computed:
            for row in rows_:
                meter_id, ws = row[0], row[1]
                if (meter_id, ws) in same:
                    continue
                rows.append(row)
                subjects.append(("meter", meter_id, ws))
                for ex_id in topo.exchanges_of.get(meter_id, ()):
                    ex = topo.exchanges[ex_id]
                    subjects.append(("exchange", ex_id, window_bounds(ws, ex.window, topo.tz)[0]))
                comp = topo.component_of.get(meter_id)
                if comp is not None:
                    cw = topo.components[comp].window
                    subjects.append(("component", comp, window_bounds(ws, cw, topo.tz)[0]))
        async with conn.transaction():
            await copy_upsert(
                conn, "meter_windows", METER_WINDOW_COLUMNS, ("meter_id", "window_start"), rows
            )
            await mark_subjects(conn, subjects)
            await finish_meter_windows(conn, self.worker, claimed)
        stats.meter_windows = len(rows)
        return stats

    def _meter_rows(
        self,
        meter_id: str,
        cluster: list[tuple[datetime, datetime]],
        edges: Windows,
        ts: FloatArray,
        value: FloatArray,
        topo: Topology,
        now: datetime,
        computed_at: datetime,
        stats: Stats,
        max_gap: float | None = None,
        computed: WindowQuantities | BaseException | None = None,
    ) -> tuple[list[tuple[Any, ...]], WindowQuantities | None]:
        """One ``meter_windows`` row per window of ``cluster`` (whose edges ``edges`` gives,
        as the windows or as epoch seconds), and the quantities they came from; a window that
        cannot be computed gets a row with its ``error`` (and no quantity) instead.
        ``computed`` is the quantities (or the exception raised computing them) when they
        were computed in a batch beforehand."""
        meter = topo.meters[meter_id]

        def failed(i: int, cause: str, q: WindowQuantities | None = None) -> tuple[Any, ...]:
            ws, we = cluster[i]
            self._failed(stats, "meter", meter_id, ws, cause)
            return (
                meter_id,
                ws,
                we,
                None,
                0.0,
                int(q.readings[i]) if q is not None else 0,
                False,
                0,
                0,
                None,
                0,
                _dt(float(q.first_ts[i])) if q is not None else None,
                _dt(float(q.last_ts[i])) if q is not None else None,
                computed_at,
                cause,
            )

        try:
            if isinstance(computed, BaseException):
                raise computed
            q = computed or window_quantities(
                meter.reading, ts, value, edges, interval=meter.interval, now=now, max_gap=max_gap
            )
            resets_by_window: dict[int, list[dict[str, Any]]] = defaultdict(list)
            if len(q.reset_events.ts):
                starts_arr = np.array([c[0].timestamp() for c in cluster])
                for t, before, after in zip(
                    q.reset_events.ts,
                    q.reset_events.before,
                    q.reset_events.after,
                    strict=True,
                ):
                    i = int(np.searchsorted(starts_arr, t, side="right")) - 1
                    if 0 <= i < len(cluster) and t < cluster[i][1].timestamp():
                        resets_by_window[i].append(
                            {"at": _dt(float(t)), "before": float(before), "after": float(after)}
                        )
        except Exception as exc:  # the windows one by one, so only the failing ones fail
            if len(cluster) == 1:
                return [failed(0, _cause(exc))], None
            return [
                row
                for b in cluster
                for row in self._meter_rows(
                    meter_id, [b], [b], ts, value, topo, now, computed_at, stats, max_gap
                )[0]
            ], None
        rows: list[tuple[Any, ...]] = []
        quantity, coverage = q.quantity.tolist(), q.coverage.tolist()
        readings, stuck = q.readings.tolist(), q.stuck.tolist()
        negatives, resets, outliers = q.negatives.tolist(), q.resets.tolist(), q.outliers.tolist()
        first_ts, last_ts, invalid = q.first_ts.tolist(), q.last_ts.tolist(), q.invalid.tolist()
        for i, (ws, we) in enumerate(cluster):
            try:
                if invalid[i] or not math.isfinite(quantity[i]):
                    cause = _meter_window_problem(meter, q, i, ts, value, topo.tz)
                    if cause is not None:
                        rows.append(failed(i, cause, q))
                        continue
                rows.append(
                    (
                        meter_id,
                        ws,
                        we,
                        _num(quantity[i]),
                        coverage[i],
                        readings[i],
                        stuck[i],
                        negatives[i],
                        resets[i],
                        jsonb(resets_by_window[i]) if resets_by_window.get(i) else None,
                        outliers[i],
                        _dt(first_ts[i]),
                        _dt(last_ts[i]),
                        computed_at,
                        None,
                    )
                )
                self._computed("meter", meter_id, ws)
            except Exception as exc:
                rows.append(failed(i, _cause(exc)))
        return rows, q

    # -- stage 2: exchanges, components, alerts ---------------------------------------------

    async def stage2(self, conn: asyncpg.Connection, topo: Topology, now: datetime) -> Stats:
        stats = Stats()
        async with conn.transaction():
            rows = await claim_subjects(conn, self.subject_limit)
            if not rows:
                return stats
            stats.subjects = len(rows)
            work: dict[str, dict[str, set[datetime]]] = defaultdict(lambda: defaultdict(set))
            for r in rows:
                work[r["kind"]][r["subject"]].add(r["window_start"])
            exchange_results = await self._exchanges(conn, topo, work["exchange"], now, stats)
            component_results = await self._components(conn, topo, work["component"], stats)
            # Alerts are replayed over an unbroken history: a subject whose earlier windows
            # are still pending (another worker holds them, or their readings are not yet
            # turned into meter windows) waits, keeping its first and last rows for later.
            keep: set[tuple[str, str, datetime]] = set()
            meter_work = dict(work["meter"])
            waiting = await self._earlier_pending(
                conn,
                [("meter", m, [m], starts) for m, starts in meter_work.items()]
                + [
                    (
                        "exchange",
                        ex_id,
                        [*topo.exchanges[ex_id].sent, *topo.exchanges[ex_id].received],
                        set(ex_starts),
                    )
                    for ex_id, ex_starts in exchange_results.items()
                ],
            )
            for meter_id, starts in list(meter_work.items()):
                if ("meter", meter_id) in waiting:
                    del meter_work[meter_id]
                    keep |= {("meter", meter_id, min(starts)), ("meter", meter_id, max(starts))}
            for ex_id, ex_starts in list(exchange_results.items()):
                if ("exchange", ex_id) in waiting:
                    del exchange_results[ex_id]
                    keep |= {
                        ("exchange", ex_id, min(ex_starts)),
                        ("exchange", ex_id, max(ex_starts)),
                    }
            # The alert rules judge ended windows only: a subject whose changed windows are
            # all still running has nothing new to replay, if this worker replayed it after
            # the window before them had ended (nothing has ended since).
            for meter_id, starts in list(meter_work.items()):
                window = topo.meter_window.get(meter_id)
                if window is not None and self._nothing_ended(
                    ("meter", meter_id), [window_bounds(s, window, topo.tz) for s in starts], now
                ):
                    del meter_work[meter_id]
            for ex_id, ex_starts in list(exchange_results.items()):
                ex_window = topo.exchanges[ex_id].window
                if self._nothing_ended(
                    ("exchange", ex_id),
                    [window_bounds(s, ex_window, topo.tz) for s in ex_starts],
                    now,
                ):
                    del exchange_results[ex_id]
            for meter_id in meter_work:
                self._replayed[("meter", meter_id)] = now
            for ex_id in exchange_results:
                self._replayed[("exchange", ex_id)] = now
            stats.deferred = len(keep)
            await self._meter_alerts(conn, topo, meter_work, component_results, now, stats)
            await self._exchange_alerts(conn, topo, exchange_results, now, stats)
            touched = set(work["meter"])
            for cid in work["component"]:
                if cid in topo.components:
                    touched.update(topo.components[cid].meters)
            await self._rules_errors(conn, topo, set(work["exchange"]), touched, now, stats)
            await incidents.regroup(conn, topo.incident_keys, stats.touched)
            done = [r for r in rows if (r["kind"], r["subject"], r["window_start"]) not in keep]
            await conn.execute(
                """DELETE FROM dirty_subjects d
                   USING unnest($1::text[], $2::text[], $3::timestamptz[]) AS c(k, s, w)
                   WHERE d.kind = c.k AND d.subject = c.s AND d.window_start = c.w""",
                [r["kind"] for r in done],
                [r["subject"] for r in done],
                [r["window_start"] for r in done],
            )
            await conn.execute(
                "SELECT pg_notify($1, $2)", WINDOWS_CHANNEL, str(stats.exchange_windows)
            )
        return stats

    def _nothing_ended(
        self, key: tuple[str, str], bounds: list[tuple[datetime, datetime]], now: datetime
    ) -> bool:
        """Are all of a subject's changed windows (``bounds``) still running at ``now``, and
        did this worker replay the subject's alerts when the window before them had already
        ended? Then a replay would judge nothing new."""
        if any(end <= now for _, end in bounds):
            return False
        last = self._replayed.get(key)
        return last is not None and last >= min(start for start, _ in bounds)

    async def _earlier_pending(
        self,
        conn: asyncpg.Connection,
        subjects: Sequence[tuple[str, str, Sequence[str], set[datetime]]],
    ) -> set[tuple[str, str]]:
        """Of ``subjects`` (kind, subject, its meters, the window starts being processed), those
        with work on windows before the last of their starts still pending elsewhere: another
        of their subject windows, or a dirty window of one of their meters. Two queries for
        the whole pass."""
        if not subjects:
            return set()
        latest = [max(starts) for _, _, _, starts in subjects]
        processing = {(kind, name): starts for kind, name, _, starts in subjects}
        waiting: set[tuple[str, str]] = set()
        for r in await conn.fetch(
            """SELECT c.k, c.s, d.window_start FROM dirty_subjects d
               JOIN unnest($1::text[], $2::text[], $3::timestamptz[]) AS c(k, s, latest)
                 ON d.kind = c.k AND d.subject = c.s AND d.window_start < c.latest""",
            [k for k, _, _, _ in subjects],
            [name for _, name, _, _ in subjects],
            latest,
        ):
            if r["window_start"] not in processing[(r["k"], r["s"])]:
                waiting.add((r["k"], r["s"]))
        meters = sorted({m for _, _, ids, _ in subjects for m in ids})
        earliest = {
            r["meter_id"]: r["first"]
            # A join, not ``meter_id = ANY($1)``: in the generic plan of a prepared statement
            # that is a linear search of the array for every row of a large backlog (seconds
            # per pass at 150,000 dirty windows).
            for r in await conn.fetch(
                """SELECT d.meter_id, min(d.window_start) AS first FROM dirty_windows d
                   JOIN unnest($1::text[]) AS c(id) ON d.meter_id = c.id
                   GROUP BY d.meter_id""",
                meters,
            )
        }
        for (kind, name, ids, _), last in zip(subjects, latest, strict=True):
            if any(m in earliest and earliest[m] < last for m in ids):
                waiting.add((kind, name))
        return waiting

    async def _meter_windows_spans(
        self, conn: asyncpg.Connection, spans: dict[str, tuple[datetime, datetime]]
    ) -> dict[str, list[asyncpg.Record]]:
        """The meter windows starting in [lo, hi) per meter of ``spans``, in one query."""
        if not spans:
            return {}
        ids = list(spans)
        rows = await conn.fetch(
            """SELECT m.meter_id, m.window_start, m.window_end, m.quantity, m.coverage, m.error
               FROM meter_windows m
               JOIN unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS c(id, lo, hi)
                 ON m.meter_id = c.id AND m.window_start >= c.lo AND m.window_start < c.hi
               ORDER BY m.meter_id, m.window_start""",
            ids,
            [spans[i][0] for i in ids],
            [spans[i][1] for i in ids],
        )
        out: dict[str, list[asyncpg.Record]] = defaultdict(list)
        for r in rows:
            out[r["meter_id"]].append(r)
        return out

    async def _meter_windows(
        self, conn: asyncpg.Connection, meters: Sequence[str], lo: datetime, hi: datetime
    ) -> dict[str, list[asyncpg.Record]]:
        rows = await conn.fetch(
            """SELECT meter_id, window_start, window_end, quantity, coverage, error
               FROM meter_windows
               WHERE meter_id = ANY($1::text[]) AND window_start >= $2 AND window_start < $3
               ORDER BY meter_id, window_start""",
            list(meters),
            lo,
            hi,
        )
        out: dict[str, list[asyncpg.Record]] = defaultdict(list)
        for r in rows:
            out[r["meter_id"]].append(r)
        return out

    @staticmethod
    def _sum_windows(
        windows: list[asyncpg.Record], start: datetime, end: datetime
    ) -> tuple[float | None, float]:
        """A meter's quantity and coverage over [start, end) from its finer windows
        (``windows`` sorted by start)."""
        lo = bisect.bisect_left(windows, start, key=_window_start)
        inside = windows[lo : bisect.bisect_left(windows, end, lo, key=_window_start)]
        length = (end - start).total_seconds()
        if not inside:
            return None, 0.0
        covered = sum(
            w["coverage"] * (w["window_end"] - w["window_start"]).total_seconds() for w in inside
        )
        quantities = [w["quantity"] for w in inside if w["quantity"] is not None]
        quantity = math.fsum(quantities) if quantities else None
        return quantity, covered / length

    @staticmethod
    def _meter_failure(
        ids: Sequence[str],
        windows: dict[str, list[asyncpg.Record]],
        start: datetime,
        end: datetime,
        tz: ZoneInfo | None = None,
    ) -> str | None:
        """The first meter window of ``ids`` within [start, end) that could not be computed,
        as the cause of what depends on it; None when there is none."""
        for mid in ids:
            rows = windows.get(mid, [])
            lo = bisect.bisect_left(rows, start, key=_window_start)
            for w in rows[lo : bisect.bisect_left(rows, end, lo, key=_window_start)]:
                if w["error"] is not None:
                    return (
                        f"it depends on meter {mid}, whose window from "
                        f"{local_text(w['window_start'], tz or UTC)} failed: {w['error']}"
                    )
        return None

    def _side(
        self,
        topo: Topology,
        ids: Sequence[str],
        windows: dict[str, list[asyncpg.Record]],
        start: datetime,
        end: datetime,
    ) -> list[MeterQuantity]:
        result = []
        for mid in ids:
            m = topo.meters[mid]
            q, cov = self._sum_windows(windows.get(mid, []), start, end)
            result.append(MeterQuantity(mid, q, m.uncertainty, m.uncertainty_abs, cov))
        return result

    async def _exchanges(
        self,
        conn: asyncpg.Connection,
        topo: Topology,
        dirty: dict[str, set[datetime]],
        now: datetime,
        stats: Stats,
    ) -> dict[str, list[datetime]]:
        out: dict[str, list[datetime]] = {}
        rows: list[tuple[Any, ...]] = []
        computed_at = datetime.now(UTC)
        # The meter windows of every exchange of the pass, read at once: per meter, the span
        # from the first to the last exchange window that needs it.
        plans: list[tuple[str, Any, list[tuple[datetime, datetime]]]] = []
        spans: dict[str, tuple[datetime, datetime]] = {}
        for ex_id, starts in dirty.items():
            ex = topo.exchanges.get(ex_id)
            if ex is None:
                continue
            bounds = sorted({window_bounds(s, ex.window, topo.tz) for s in starts})
            plans.append((ex_id, ex, bounds))
            for mid in (*ex.sent, *ex.received):
                lo, hi = spans.get(mid, (bounds[0][0], bounds[-1][1]))
                spans[mid] = (min(lo, bounds[0][0]), max(hi, bounds[-1][1]))
        windows = await self._meter_windows_spans(conn, spans)
        for ex_id, ex, bounds in plans:
            meters = [*ex.sent, *ex.received]
            z_limit = topo.rule(Rule.imbalance, ex_id).z
            for ws, we in bounds:
                try:
                    cause = self._meter_failure(meters, windows, ws, we, topo.tz)
                    if cause is None:
                        res = reconcile_exchange(
                            self._side(topo, ex.sent, windows, ws, we),
                            self._side(topo, ex.received, windows, ws, we),
                            ex.loss,
                            z_threshold=z_limit,
                        )
                        cause = res.error
                except Exception as exc:
                    cause = _cause(exc)
                if cause is not None:
                    self._failed(stats, "exchange", ex_id, ws, cause)
                    rows.append(_failed_exchange_row(ex_id, ws, we, ex.loss, computed_at, cause))
                    continue
                self._computed("exchange", ex_id, ws)
                status = res.status
                if we > now and status != "no_data":
                    status = "incomplete"  # a window still running is never judged
                rows.append(
                    (
                        ex_id,
                        ws,
                        we,
                        _num(res.sent),
                        _num(res.received),
                        ex.loss,
                        _num(res.imbalance),
                        _num(res.sigma),
                        _num(res.z),
                        float(res.coverage),
                        status,
                        _num(res.reconciled_sent),
                        _num(res.reconciled_received),
                        computed_at,
                        None,
                    )
                )
            out[ex_id] = [b[0] for b in bounds]
        await copy_upsert(
            conn, "exchange_windows", EXCHANGE_WINDOW_COLUMNS, ("exchange_id", "window_start"), rows
        )
        stats.exchange_windows += len(rows)
        return out

    async def _components(
        self,
        conn: asyncpg.Connection,
        topo: Topology,
        dirty: dict[str, set[datetime]],
        stats: Stats,
    ) -> dict[str, dict[datetime, tuple[str, ...]]]:
        """Network reconciliation per component and window; returns the suspects per window."""
        suspects: dict[str, dict[datetime, tuple[str, ...]]] = {}
        for cid, starts in dirty.items():
            comp = topo.components.get(cid)
            if comp is None:
                continue
            bounds = sorted({window_bounds(s, comp.window, topo.tz) for s in starts})
            windows = await self._meter_windows(conn, comp.meters, bounds[0][0], bounds[-1][1])
            suspects[cid] = {}
            for ws, we in bounds:
                result: Elimination | None = None
                try:
                    # A meter whose window could not be computed is unmeasured, as one
                    # without data: the others are still reconciled.
                    measurements: dict[str, tuple[float, float]] = {}
                    unmeasured: list[str] = []
                    for mid in comp.meters:
                        m = topo.meters[mid]
                        q, cov = self._sum_windows(windows.get(mid, []), ws, we)
                        if (
                            q is None
                            or cov < 0.9
                            or self._meter_failure([mid], windows, ws, we) is not None
                        ):
                            unmeasured.append(mid)
                            continue
                        sigma = meter_sigma(q, m.uncertainty, m.uncertainty_abs)
                        if not sigma > 0:
                            sigma = 1e-9
                        measurements[mid] = (q, sigma)
                    cause = None
                    if len(measurements) >= 2:
                        result = reconcile_network(list(comp.constraints), measurements, unmeasured)
                        cause = result.final.problem() or result.steps[0].problem()
                except Exception as exc:
                    cause = _cause(exc)
                if cause is not None:
                    self._failed(stats, "reconciliation", cid, ws, cause)
                    await conn.execute(
                        """INSERT INTO reconciliations (component, window_start, window_end,
                               statistic, dof, critical, passed, suspects, computed_at, error)
                           VALUES ($1, $2, $3, NULL, 0, NULL, NULL, '{}', now(), $4)
                           ON CONFLICT (component, window_start) DO UPDATE SET
                               window_end = excluded.window_end, statistic = NULL, dof = 0,
                               critical = NULL, passed = NULL, suspects = '{}',
                               computed_at = excluded.computed_at, error = excluded.error""",
                        cid,
                        ws,
                        we,
                        cause,
                    )
                    await conn.execute(
                        """DELETE FROM reconciliation_meters WHERE reconciliation_id =
                           (SELECT id FROM reconciliations WHERE component = $1
                            AND window_start = $2)""",
                        cid,
                        ws,
                    )
                    continue
                self._computed("reconciliation", cid, ws)
                if result is None:  # fewer than two measurements: nothing to reconcile
                    await conn.execute(
                        """DELETE FROM reconciliations WHERE component = $1
                           AND window_start = $2 AND error IS NOT NULL""",
                        cid,
                        ws,
                    )
                    continue
                final = result.final
                rec_id = await conn.fetchval(
                    """INSERT INTO reconciliations (component, window_start, window_end,
                           statistic, dof, critical, passed, suspects, computed_at, error)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now(), NULL)
                       ON CONFLICT (component, window_start) DO UPDATE SET
                           window_end = excluded.window_end, statistic = excluded.statistic,
                           dof = excluded.dof, critical = excluded.critical,
                           passed = excluded.passed, suspects = excluded.suspects,
                           computed_at = excluded.computed_at, error = NULL
                       RETURNING id""",
                    cid,
                    ws,
                    we,
                    _num(result.steps[0].statistic),
                    result.steps[0].dof,
                    result.steps[0].critical,
                    result.steps[0].passed,
                    list(result.suspects),
                )
                await conn.execute(
                    "DELETE FROM reconciliation_meters WHERE reconciliation_id = $1", rec_id
                )
                first = result.steps[0]
                await conn.executemany(
                    """INSERT INTO reconciliation_meters (reconciliation_id, meter_id, measured,
                           reconciled, adjustment, z, suspect)
                       VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                    [
                        (
                            rec_id,
                            m.id,
                            m.measured,
                            _num(m.reconciled),
                            _num(m.adjustment),
                            _num(first.meter(m.id).z),
                            m.suspect,
                        )
                        for m in final.meters
                    ],
                )
                suspects[cid][ws] = result.suspects
                stats.reconciliations += 1
        return suspects


def _failed_exchange_row(
    exchange_id: str, start: datetime, end: datetime, loss: float, at: datetime, cause: str
) -> tuple[Any, ...]:
    """An ``exchange_windows`` row of a window that could not be computed: no numbers (as no
    data: coverage 0), status ``error`` and the cause."""
    return (
        exchange_id,
        start,
        end,
        None,  # sent
        None,  # received
        loss,
        None,  # imbalance
        None,  # sigma
        None,  # z
        0.0,  # coverage
        "error",
        None,  # reconciled_sent
        None,  # reconciled_received
        at,
        cause,
    )


def _meter_window_problem(
    meter: Meter,
    q: WindowQuantities,
    i: int,
    ts: FloatArray,
    value: FloatArray,
    tz: ZoneInfo | None = None,
) -> str | None:
    """Why window ``i`` of ``q`` cannot be taken as computed, or None: readings in it that no
    meter can send (left out of the quantities), or a quantity that is not a finite number
    although there is data."""
    if int(q.invalid[i]):
        unit = canonical_unit(meter.kind, meter.reading)
        start, end = float(q.start[i]), float(q.end[i])
        inside = (ts >= start) & (ts < end) & invalid_readings(value)
        k = int(np.flatnonzero(inside)[0])
        n = int(q.invalid[i])
        at = datetime.fromtimestamp(float(ts[k]), UTC)
        v = float(value[k])
        what = "out of range" if math.isfinite(v) else "not a finite number"
        when = local_text(at, tz or UTC, seconds=True)
        return (
            f"{n} stored reading{'s' if n > 1 else ''} {what}"
            f"{', the first' if n > 1 else ':'} {v:g} {unit} at {when} "
            f"(a reading must be a finite number within ±{MAX_ABS_VALUE:g} {unit}; correct or "
            "delete it)"
        )
    quantity = float(q.quantity[i])
    if math.isinf(quantity) or (math.isnan(quantity) and float(q.coverage[i]) > 0.0):
        return (
            f"the quantity ({quantity}) is not a finite number: the readings are beyond what "
            "floating point can add up"
        )
    return None


def _window_start(row: asyncpg.Record) -> datetime:
    start: datetime = row["window_start"]
    return start


_Fetched = tuple[FloatArray, FloatArray, FloatArray]
"""A cluster's window edges (an (n, 2) array of epoch seconds), reading times and values."""


def _margin(interval: float | None) -> timedelta:
    """Readings fetched either side of the windows computed."""
    return timedelta(seconds=max(interval or 0.0, 60.0) * 2)


def _silences(
    ts: FloatArray, edges: FloatArray, claimed: FloatArray, max_gap: float
) -> list[tuple[float, float]]:
    """The intervals between consecutive readings ``(a, b)`` (epoch seconds, ``ts``
    sorted) that an edge of a ``claimed`` window (its start, epoch seconds) falls in and that
    reach beyond the run of contiguous windows of ``edges`` (sorted ``(n, 2)`` start, end)
    holding the edge: the windows overlapping ``[a, b)`` that are not in ``edges`` are
    interpolated between the same two readings. Intervals longer than ``max_gap`` are left
    out (a break: nothing is interpolated across it). Claimed windows not in ``edges`` are
    ignored. ``edges`` holds the neighbours either side of every claimed window (as stage 1
    lays them out): readings never further apart than the shortest window then lean on no
    silence, which is checked first.

    Vectorised, so the usual case (readings every interval) costs a few array operations.
    """
    if ts.size < 2 or edges.size == 0 or claimed.size == 0:
        return []
    starts, ends = edges[:, 0], edges[:, 1]
    if float(np.max(np.diff(ts))) < float(np.min(ends - starts)):
        # No two readings further apart than a window: an interval around an edge of a
        # claimed window cannot reach past its neighbours, which ``edges`` always holds.
        return []
    i = np.clip(np.searchsorted(starts, claimed), 0, starts.size - 1)
    i = i[starts[i] == claimed]
    at = np.concatenate((starts[i], ends[i]))
    k = np.searchsorted(ts, at, side="left") - 1  # the last reading before each edge
    inside = (k >= 0) & (k < ts.size - 1)
    k = np.clip(k, 0, ts.size - 2)
    a, b = ts[k], ts[k + 1]
    new_run = np.concatenate(([True], starts[1:] != ends[:-1]))
    run_start = starts[new_run]
    run_end = ends[np.concatenate((new_run[1:], [True]))]
    r = np.clip(np.searchsorted(run_start, at, side="right") - 1, 0, run_start.size - 1)
    beyond = (a < run_start[r]) | (b > run_end[r])
    need = inside & beyond & (b - a <= max_gap)
    return sorted(set(zip(a[need].tolist(), b[need].tolist(), strict=True)))


def _quiet(series: Sequence[FloatArray], shortest: Sequence[float]) -> list[bool]:
    """Per cluster (its readings' times ``series[k]``, its shortest window ``shortest[k]``
    seconds): whether no two consecutive readings are as far apart as that window, so that
    none of its claimed windows' edges leans on a silence (see :func:`_silences`, which checks
    the same first). One pass over the readings of every cluster."""
    if not series:
        return []
    sizes = np.fromiter((s.size for s in series), np.int64, len(series))
    ends = np.cumsum(sizes)
    widest = np.full(len(series), -np.inf)
    several = sizes >= 2
    if several.any():
        gaps = np.diff(np.concatenate(series))
        # the gap from a cluster's last reading to the next cluster's first is nobody's
        across = ends[:-1] - 1
        gaps[across[(across >= 0) & (across < gaps.size)]] = -np.inf
        widest[several] = np.maximum.reduceat(gaps, (ends - sizes)[several])
    return (widest < np.asarray(shortest, dtype=np.float64)).tolist()  # type: ignore[no-any-return]


@dataclass
class _Job:
    """One cluster of one meter's windows for the batch of quantities: its windows, their
    edges (the windows or epoch seconds), the readings and the silence windows walked."""

    plan: _MeterPlan
    cluster: list[tuple[datetime, datetime]]
    edges: Windows
    ts: FloatArray
    value: FloatArray
    walked: set[tuple[datetime, datetime]]


@dataclass
class _MeterPlan:
    """What stage 1 computes for one claimed meter: its claimed windows (``starts``, and as
    bounds), those with their neighbours (``bounds``) in clusters, and the index of its first
    cluster's readings in the pass's batched fetch."""

    meter_id: str
    meter: Meter
    window: timedelta
    starts: set[datetime]
    claimed_bounds: set[tuple[datetime, datetime]]
    bounds: set[tuple[datetime, datetime]]
    clusters: list[list[tuple[datetime, datetime]]]
    first: int


def _across_silences(
    changed: set[datetime],
    window: timedelta,
    tz: ZoneInfo,
    clusters: list[list[tuple[datetime, datetime]]],
    fetched: dict[tuple[datetime, datetime, int], _Fetched],
    max_gap: float,
) -> set[tuple[datetime, datetime]]:
    """The windows of the silences that the ``changed`` windows (claimed: their readings
    changed) are interpolated across.

    An edge of a changed window between two readings further apart than the windows
    around it (a silence of the meter) is the register (or rate) interpolated between
    those two readings, and so is every window edge in between: all of those windows are
    computed, however long the silence (up to ``max_gap`` seconds, beyond which it is a
    break and nothing is interpolated). They are found from the readings (the last before
    and the first after each edge, in ``fetched`` per cluster: first start, last end, number
    of windows → window edges as epoch seconds and the readings), never by a fixed count of
    neighbours. Only the edges of the changed windows are looked at: their neighbours'
    readings did not change, and the windows added are not looked through in turn.
    """
    walked: set[tuple[datetime, datetime]] = set()
    starts = (window_bounds(s, window, tz)[0].timestamp() for s in changed)
    claimed = np.fromiter(starts, np.float64, len(changed))
    for cluster in clusters:
        edges, ts, _ = fetched[(cluster[0][0], cluster[-1][1], len(cluster))]
        for a, b in _silences(ts, edges, claimed, max_gap):
            first = datetime.fromtimestamp(a, UTC)
            walked.update(windows_between(first, datetime.fromtimestamp(b, UTC), window, tz))
    return walked


# meter_windows columns that must be exactly as stored for a recomputed neighbour to count as
# unchanged (besides its quantity and coverage, compared as a silence's windows are)
_EXACT = ("stuck", "negatives", "first_ts", "last_ts")
_EXACT_AT = tuple(METER_WINDOW_COLUMNS.index(c) for c in _EXACT)

_Bounds = set[tuple[datetime, datetime]]


async def _unchanged(
    conn: asyncpg.Connection,
    computed: Sequence[tuple[tuple[Any, ...], _Bounds, _Bounds, datetime]],
) -> set[tuple[str, datetime]]:
    """The recomputed meter windows, of those not claimed, that came out as they are stored:
    not written again, so that neither a meter that resumes after a long silence rewrites the
    whole silence (and everything derived from it) at each reading of its first windows, nor
    each reading of a live meter rewrites the windows either side of its own.

    ``computed`` holds per window its new ``meter_windows`` row (``METER_WINDOW_COLUMNS``),
    the claimed windows and the silence windows (``walked``) of its meter, and ``now``. A
    window of a silence is the same when its quantity and coverage agree within 1e-9 and its
    counts exactly; any other neighbour when, besides, its flags and first and last reading
    are exactly as stored and it was stored after the window had ended (what was computed
    while the window ran is judged again once it has ended). Within 1e-9, because a window's
    quantity computed among other windows may differ from the stored one in the last bits
    (the same readings summed in another grouping). A window that failed, or whose readings
    held a counter reset, is always written."""
    candidates: dict[tuple[str, datetime], tuple[tuple[Any, ...], bool, datetime]] = {}
    for row, claimed, walked, now in computed:
        bounds = (row[1], row[2])
        if bounds in claimed or row[-1] is not None:
            continue
        in_silence = bounds in walked
        if not in_silence and row[9] is not None:  # reset events
            continue
        candidates[(row[0], row[1])] = (row, in_silence, now)
    if not candidates:
        return set()
    ids, starts = zip(*candidates, strict=True)
    stored = await conn.fetch(
        """SELECT m.meter_id, m.window_start, m.window_end, m.computed_at, m.reset_events,
                  m.quantity, m.coverage, m.readings, m.resets, m.outliers, m.stuck,
                  m.negatives, m.first_ts, m.last_ts
           FROM meter_windows m
           JOIN unnest($1::text[], $2::timestamptz[]) AS c(meter_id, window_start)
             ON m.meter_id = c.meter_id AND m.window_start = c.window_start
           WHERE m.error IS NULL""",
        list(ids),
        list(starts),
    )
    same: set[tuple[str, datetime]] = set()
    for r in stored:
        key = (r["meter_id"], r["window_start"])
        row, in_silence, now = candidates[key]
        if in_silence:
            if _same_silence_window(r, row):
                same.add(key)
            continue
        if r["computed_at"] < r["window_end"] <= now:
            continue  # stored while it ran; it has ended since
        if (
            r["reset_events"] is None
            and all(r[c] == row[i] for c, i in zip(_EXACT, _EXACT_AT, strict=True))
            and _same_silence_window(r, row)
        ):
            same.add(key)
    return same


def _same_silence_window(stored: asyncpg.Record, row: tuple[Any, ...]) -> bool:
    """A window of a silence recomputed as it is stored (quantity and coverage within 1e-9,
    counts exact)."""
    quantity, coverage, readings, resets, outliers = row[3], row[4], row[5], row[8], row[10]
    if (stored["readings"], stored["resets"], stored["outliers"]) != (readings, resets, outliers):
        return False
    if not math.isclose(stored["coverage"], coverage, rel_tol=0.0, abs_tol=1e-9):
        return False
    if quantity is None or stored["quantity"] is None:
        return bool(quantity is None and stored["quantity"] is None)
    return math.isclose(quantity, stored["quantity"], rel_tol=1e-9, abs_tol=1e-9)


def _clusters(bounds: list[tuple[datetime, datetime]]) -> list[list[tuple[datetime, datetime]]]:
    """Split sorted windows where they are more than two days apart (separate fetches)."""
    out: list[list[tuple[datetime, datetime]]] = []
    for b in bounds:
        if out and b[0] - out[-1][-1][1] <= timedelta(days=2):
            out[-1].append(b)
        else:
            out.append([b])
    return out
