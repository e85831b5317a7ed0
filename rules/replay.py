"""The alert replay of the rules engine: after a pass, the alert rules run over the exchange and
meter windows that changed, in time order, with the history before them, so an alert starts and
resolves at the window where the evidence appeared — whether the data came live or as a
backfill; and the rules that fire on the passing of time (stale meters, rejections)."""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np

from core.network import ReadingType
from core.windows import local_text
from rules import incidents, lifecycle
from rules.alerts import (
    Decision,
    DriftState,
    MeterWindow,
    Rule,
    Severity,
    Verdict,
    WindowFailure,
    WindowResult,
    drift_series,
    evaluate_counter_reset,
    evaluate_rejections,
    evaluate_rules_error,
    evaluate_stale,
    flag_series,
    imbalance_episodes,
    imbalance_series,
    stale_limit,
)
from rules.passes import Stats, _dt, window_bounds
from rules.quantities import (
    outlier_times,
    repeat_run,
)
from rules.store import (
    copy_upsert,
    fetch_series,
    jsonb,
)
from rules.topology import Topology


class AlertReplay:
    """The alert replay: the alert rules run over the windows a pass changed, in time order,
    so alerts start and resolve at the window where the evidence appeared; and the rules that
    fire on the passing of time (``periodic``). A part of :class:`rules.engine.Engine`."""

    _targets: lifecycle.Targets | None

    async def topology_for(self, conn: asyncpg.Connection) -> Topology | None:
        raise NotImplementedError  # the engine's

    async def _last_transition(
        self, conn: asyncpg.Connection, fingerprints: Sequence[str]
    ) -> dict[str, tuple[bool, datetime]]:
        """Per fingerprint: firing now?, and when the rules saw its state last change (the
        replay's clock: a window's end, not the instant the condition began or ended)."""
        rows = await conn.fetch(
            """SELECT DISTINCT ON (fingerprint) fingerprint, status,
                      CASE WHEN status = 'firing' THEN COALESCE(detected_at, started_at)
                           ELSE COALESCE(resolve_detected_at, resolved_at) END AS changed
               FROM alerts WHERE fingerprint = ANY($1::text[])
               ORDER BY fingerprint, id DESC""",
            list(fingerprints),
        )
        return {r["fingerprint"]: (r["status"] == "firing", r["changed"]) for r in rows}

    async def _replay(
        self,
        conn: asyncpg.Connection,
        subject: lifecycle.Subject,
        timeline: Sequence[tuple[datetime, Verdict]],
        state: tuple[bool, datetime] | None,
        now: datetime,
        stats: Stats,
        *,
        inhibited: Callable[[datetime], bool] | None = None,
        instant: Callable[[datetime, Verdict], Awaitable[datetime | None]] | None = None,
    ) -> None:
        """Apply the verdicts at their times (when the evidence was there: the end of the window
        that showed it, or for a silence the instant it became one), after the alert's last
        change, touching the database only on transitions (and once at the end to refresh a
        firing alert). ``instant`` finds, for a transition only, the instant the condition
        began or ended when that takes reading the readings."""
        firing, since = state if state else (False, datetime.min.replace(tzinfo=UTC))
        last_fire: tuple[datetime, Verdict] | None = None

        async def precise(at: datetime, verdict: Verdict) -> Verdict:
            if instant is None:
                return verdict
            when = await instant(at, verdict)
            return verdict if when is None else replace(verdict, at=when)

        for at, verdict in timeline:
            if at <= since or at > now:
                continue
            if verdict.decision == Decision.fire:
                last_fire = (at, verdict)
                if not firing:
                    blocked = inhibited(at) if inhibited else False
                    done = await lifecycle.apply_verdict(
                        conn,
                        subject,
                        verdict if blocked else await precise(at, verdict),
                        at,
                        targets=self._targets,
                        inhibited=blocked,
                        touched=stats.touched,
                    )
                    if done:
                        stats.alerts[done] += 1
                        firing = True
                        last_fire = None
            elif verdict.decision == Decision.resolve and firing:
                done = await lifecycle.apply_verdict(
                    conn,
                    subject,
                    await precise(at, verdict),
                    at,
                    targets=self._targets,
                    touched=stats.touched,
                )
                if done:
                    stats.alerts[done] += 1
                firing = False
                last_fire = None
        if firing and last_fire is not None:
            done = await lifecycle.apply_verdict(
                conn,
                subject,
                last_fire[1],
                last_fire[0],
                targets=self._targets,
                touched=stats.touched,
            )
            if done:
                stats.alerts[done] += 1

    async def _exchange_alerts(
        self,
        conn: asyncpg.Connection,
        topo: Topology,
        changed: dict[str, list[datetime]],
        now: datetime,
        stats: Stats,
    ) -> None:
        if not changed:
            return
        fps = [f"{r}:{e}" for e in changed for r in (Rule.imbalance, Rule.drift)]
        states = await self._last_transition(conn, fps)
        stale: dict[str, list[tuple[datetime, datetime | None]]] = defaultdict(list)
        for r in await conn.fetch(
            "SELECT subject, started_at, resolved_at FROM alerts WHERE rule = 'meter_stale'"
        ):
            stale[r["subject"]].append((r["started_at"], r["resolved_at"]))
        drift_rows: list[tuple[str, datetime, str]] = []
        for ex_id, starts in changed.items():
            ex = topo.exchanges[ex_id]
            first = min(starts)
            history_from = first - ex.window * HISTORY_WINDOWS
            rows = await conn.fetch(
                """SELECT window_start, window_end, status, sent, received, imbalance, sigma,
                          z, coverage
                   FROM exchange_windows WHERE exchange_id = $1
                   AND window_start >= $2 AND window_end <= $3 ORDER BY window_start""",
                ex_id,
                history_from,
                now,
            )
            windows = [
                WindowResult(
                    r["window_start"],
                    r["window_end"],
                    r["status"],
                    r["sent"],
                    r["received"],
                    r["imbalance"],
                    r["sigma"],
                    r["z"],
                    r["coverage"],
                )
                for r in rows
            ]
            if not windows:
                continue
            times = [w.end for w in windows]
            spans = [span for m in (*ex.sent, *ex.received) for span in stale.get(m, [])]

            def inhibited(
                at: datetime,
                spans: list[tuple[datetime, datetime | None]] = spans,
                window: timedelta = ex.window,
            ) -> bool:
                # a meter of the exchange was stale during the window that would fire it
                return any(a < at and (b is None or b > at - window) for a, b in spans)

            imb_cfg = topo.rule(Rule.imbalance, ex_id)
            imb = imbalance_series(ex_id, topo.unit(ex_id), windows, False, imb_cfg, tz=topo.tz)
            subject = lifecycle.Subject(Rule.imbalance, ex_id, "exchange")
            await self._replay(
                conn,
                subject,
                list(zip(times, imb, strict=True)),
                states.get(subject.fingerprint),
                now,
                stats,
                inhibited=inhibited,
            )
            # drift: the statistic carries on from the one stored after the last window
            # before the first that changed (from zero at the start of the history if none)
            saved = await conn.fetchrow(
                """SELECT window_start, state FROM drift_states WHERE exchange_id = $1
                   AND window_start >= $2 AND window_start < $3
                   ORDER BY window_start DESC LIMIT 1""",
                ex_id,
                history_from,
                first,
            )
            skip = 0
            carried: DriftState | None = None
            if saved is not None:
                skip = bisect.bisect_right([w.start for w in windows], saved["window_start"])
                carried = DriftState.from_json(_json(saved["state"]))
            drift, drift_states = drift_series(
                ex_id,
                windows[skip:],
                topo.rule(Rule.drift, ex_id),
                state=carried,
                episodes=imbalance_episodes(imb)[skip:],
                tz=topo.tz,
            )
            drift_rows.extend(
                (ex_id, w.start, jsonb(st.to_json()))
                for w, st in zip(windows[skip:], drift_states, strict=True)
            )
            subject = lifecycle.Subject(Rule.drift, ex_id, "exchange")
            await self._replay(
                conn,
                subject,
                list(zip(times[skip:], drift, strict=True)),
                states.get(subject.fingerprint),
                now,
                stats,
            )
        await copy_upsert(
            conn,
            "drift_states",
            ("exchange_id", "window_start", "state"),
            ("exchange_id", "window_start"),
            drift_rows,
        )

    async def _meter_histories(
        self,
        conn: asyncpg.Connection,
        topo: Topology,
        since: dict[str, datetime],
        now: datetime,
    ) -> tuple[
        dict[str, list[asyncpg.Record]],
        dict[str, list[asyncpg.Record]],
        dict[str, datetime | None],
    ]:
        """For every meter of ``since``, in one query each: its windows from ``since[meter]``
        that ended by ``now`` (in order); the windows of the exchange it is the counterpart of
        from then (its ``sent`` and ``received``); and, where its first window starts in a
        silence longer than its stale tolerance, its last reading before that window."""
        ids = list(since)
        windows_of: dict[str, list[asyncpg.Record]] = defaultdict(list)
        for r in await conn.fetch(
            """SELECT w.meter_id, w.window_start, w.window_end, w.quantity, w.coverage,
                      w.readings, w.stuck, w.negatives, w.resets, w.reset_events, w.outliers,
                      w.first_ts, w.last_ts
               FROM unnest($1::text[], $2::timestamptz[]) AS m(meter_id, lo)
               JOIN meter_windows w ON w.meter_id = m.meter_id AND w.window_start >= m.lo
                                   AND w.window_end <= $3
               ORDER BY w.meter_id, w.window_start""",
            ids,
            [since[m] for m in ids],
            now,
        ):
            windows_of[r["meter_id"]].append(r)
        paired = [m for m in ids if m in topo.counterpart]
        flows_of: dict[str, list[asyncpg.Record]] = defaultdict(list)
        if paired:
            for r in await conn.fetch(
                """SELECT c.meter_id, e.window_start, e.sent, e.received
                   FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS c(meter_id, ex, lo)
                   JOIN exchange_windows e ON e.exchange_id = c.ex AND e.window_start >= c.lo""",
                paired,
                [topo.counterpart[m][0] for m in paired],
                [since[m] for m in paired],
            ):
                flows_of[r["meter_id"]].append(r)
        # A silence may have begun before the windows looked at: the last reading before them
        # of every meter whose first window starts in a silence longer than its tolerance.
        before: dict[str, datetime] = {}
        for meter_id in since:
            rows = windows_of.get(meter_id)
            limit = stale_limit(
                topo.meters[meter_id].interval, topo.rule(Rule.meter_stale, meter_id)
            )
            if rows and limit is not None:
                head = rows[0]
                if (
                    head["first_ts"] is None
                    or (head["first_ts"] - head["window_start"]).total_seconds() > limit
                ):
                    before[meter_id] = head["window_start"]
        last_before: dict[str, datetime | None] = {}
        if before:
            last_before = {
                r["meter_id"]: r["last_ts"]
                for r in await conn.fetch(
                    """SELECT m.meter_id,
                              (SELECT w.last_ts FROM meter_windows w
                               WHERE w.meter_id = m.meter_id AND w.window_start < m.head
                                 AND w.last_ts IS NOT NULL
                               ORDER BY w.window_start DESC LIMIT 1) AS last_ts
                       FROM unnest($1::text[], $2::timestamptz[]) AS m(meter_id, head)""",
                    list(before),
                    list(before.values()),
                )
            }
        return windows_of, flows_of, last_before

    async def _meter_alerts(
        self,
        conn: asyncpg.Connection,
        topo: Topology,
        dirty: dict[str, set[datetime]],
        suspects: dict[str, dict[datetime, tuple[str, ...]]],
        now: datetime,
        stats: Stats,
    ) -> None:
        meters = set(dirty)
        for cid in suspects:
            meters.update(topo.components[cid].meters)
        if not meters:
            return
        rules = [r for r in Rule if r not in (Rule.imbalance, Rule.drift, Rule.rejections)]
        states = await self._last_transition(conn, [f"{r}:{m}" for m in meters for r in rules])
        # Every meter's recent windows, and its counterpart's flows, in one query each.
        since: dict[str, datetime] = {}
        for meter_id in sorted(meters):
            if meter_id in topo.meters:
                window = topo.meter_window[meter_id]
                starts = dirty.get(meter_id) or set()
                since[meter_id] = (min(starts) if starts else now - window * 48) - window * 48
        windows_of, flows_of, last_before = await self._meter_histories(conn, topo, since, now)
        for meter_id, lo in since.items():
            meter = topo.meters[meter_id]
            window = topo.meter_window[meter_id]
            rows = windows_of.get(meter_id, [])
            mws = [
                MeterWindow(
                    r["window_start"],
                    r["window_end"],
                    r["quantity"],
                    r["coverage"],
                    r["readings"],
                    r["stuck"],
                    r["negatives"],
                    r["resets"],
                )
                for r in rows
            ]
            times = [w.end for w in mws]
            starts_ = [w.start for w in mws]
            outliers = [int(r["outliers"]) for r in rows]

            async def replay(
                rule: Rule,
                timeline: list[tuple[datetime, Verdict]],
                meter_id: str = meter_id,
                instant: Callable[[datetime, Verdict], Awaitable[datetime | None]] | None = None,
            ) -> None:
                await self._replay(
                    conn,
                    lifecycle.Subject(rule, meter_id, "meter"),
                    timeline,
                    states.get(f"{rule}:{meter_id}"),
                    now,
                    stats,
                    instant=instant,
                )

            # stale: a silence between two readings longer than the tolerance, placed where
            # it happened (seen at the last reading plus the tolerance, as the live check sees
            # it; over at the first reading after it). Silences between two readings of one
            # window are not seen here (a window keeps only its first and last reading's time);
            # the silence after the newest reading is judged by the live check
            # (``periodic``), by the wall clock and by what arrives.
            stale_cfg = topo.rule(Rule.meter_stale, meter_id)
            limit = stale_limit(meter.interval, stale_cfg)
            last: datetime | None = last_before.get(meter_id)
            timeline: list[tuple[datetime, Verdict]] = []
            for r in rows:
                first_ts = r["first_ts"]
                if first_ts is not None and last is not None and limit is not None:
                    silence = evaluate_stale(
                        meter_id, last, meter.interval, first_ts, stale_cfg, tz=topo.tz
                    )
                    if silence.decision == Decision.fire and silence.at is not None:
                        timeline.append((silence.at, silence))
                        timeline.append((first_ts, Verdict(Decision.resolve, at=first_ts)))
                if r["last_ts"] is not None:
                    last = r["last_ts"]
            await replay(Rule.meter_stale, timeline)

            # stuck: no movement for a whole window while the counterpart shows flow
            if meter_id in topo.counterpart:
                ex_id, other = topo.counterpart[meter_id]
                flows = {r["window_start"]: r[other] for r in flows_of.get(meter_id, [])}
                known = [v for v in flows.values() if v is not None and math.isfinite(v)]
                usual = float(np.median(known)) if known else math.nan
                stuck_cfg = topo.rule(Rule.meter_stuck, meter_id)
                ex_window = topo.exchanges[ex_id].window
                flags = []
                for w in mws:
                    v = flows.get(window_bounds(w.start, ex_window, topo.tz)[0])
                    flowing = bool(
                        v is not None
                        and math.isfinite(usual)
                        and v > 0
                        and v > stuck_cfg.min_counterpart_share * usual
                    )
                    flags.append(stuck_cfg.enabled and w.stuck and w.readings >= 2 and flowing)

                def stuck_verdict(
                    i: int, run: int, mws: list[MeterWindow] = mws, meter_id: str = meter_id
                ) -> Verdict:
                    since = mws[i - run + 1].start
                    return Verdict(
                        Decision.fire,
                        Severity.warning,
                        f"meter {meter_id} stuck since {local_text(since, topo.tz)} while its "
                        "counterpart shows flow",
                        {"since": since.isoformat(), "windows": run},
                    )

                verdicts = flag_series(flags, 1, 1, stuck_verdict, starts_)

                async def stuck_instant(
                    at: datetime,
                    verdict: Verdict,
                    meter_id: str = meter_id,
                    window: timedelta = window,
                ) -> datetime | None:
                    # the first reading that repeats its predecessor; the first that moves again
                    if verdict.decision == Decision.fire:
                        since = datetime.fromisoformat(verdict.details["since"])
                        lo_, hi_ = since - window, since + window
                        anchor = since
                    elif verdict.at is not None:
                        lo_, hi_, anchor = verdict.at - window, at, verdict.at - window
                    else:
                        return None
                    ts, value = await fetch_series(conn, meter_id, lo_, hi_)
                    began, ended = repeat_run(ts, value, anchor.timestamp())
                    found = began if verdict.decision == Decision.fire else ended
                    return _dt(found) if found is not None else None

                await replay(
                    Rule.meter_stuck,
                    list(zip(times, verdicts, strict=True)),
                    instant=stuck_instant,
                )

            # counter resets: fire at the reset, resolve a while after the last one
            reset_cfg = topo.rule(Rule.counter_reset, meter_id)
            resets: list[tuple[datetime, float, float]] = []
            timeline = []
            for r in rows:
                for ev in _events(r["reset_events"]):
                    resets.append((datetime.fromisoformat(ev["at"]), ev["before"], ev["after"]))
                if resets:
                    timeline.append(
                        (
                            r["window_end"],
                            evaluate_counter_reset(
                                meter_id, resets, r["window_end"], reset_cfg, tz=topo.tz
                            ),
                        )
                    )
            await replay(Rule.counter_reset, timeline)

            # negative flow (rates and deltas; a register's small step back is jitter)
            if meter.reading != ReadingType.total:
                neg_cfg = topo.rule(Rule.negative_flow, meter_id)
                with_data = [(w.end, w) for w in mws if w.readings > 0]

                def negative_verdict(
                    i: int,
                    run: int,
                    with_data: list[tuple[datetime, MeterWindow]] = with_data,
                    meter_id: str = meter_id,
                ) -> Verdict:
                    w = with_data[i][1]
                    return Verdict(
                        Decision.fire,
                        Severity.warning,
                        f"meter {meter_id} reported {w.negatives} negative value(s) in the "
                        f"window from {local_text(w.start, topo.tz)}",
                        {"window_start": w.start.isoformat(), "negatives": w.negatives},
                    )

                verdicts = flag_series(
                    [neg_cfg.enabled and w.negatives > 0 for _, w in with_data],
                    1,
                    neg_cfg.clear_after,
                    negative_verdict,
                    [w.start for _, w in with_data],
                )
                await replay(
                    Rule.negative_flow,
                    [(t, v) for (t, _), v in zip(with_data, verdicts, strict=True)],
                )

            # spikes: single readings far off their neighbours (left out of the quantity)
            spike_cfg = topo.rule(Rule.meter_spike, meter_id)

            def spike_verdict(
                i: int,
                run: int,
                mws: list[MeterWindow] = mws,
                outliers: list[int] = outliers,
                meter_id: str = meter_id,
            ) -> Verdict:
                w = mws[i]
                return Verdict(
                    Decision.fire,
                    Severity.warning,
                    f"meter {meter_id} sent {outliers[i]} reading(s) far off its neighbours in "
                    f"the window from {local_text(w.start, topo.tz)} (left out of the quantity)",
                    {"window_start": w.start.isoformat(), "outliers": outliers[i]},
                )

            verdicts = flag_series(
                [spike_cfg.enabled and n > 0 for n in outliers],
                1,
                spike_cfg.clear_after,
                spike_verdict,
                starts_,
            )

            async def spike_instant(
                at: datetime,
                verdict: Verdict,
                meter_id: str = meter_id,
                meter: Any = meter,
                window: timedelta = window,
            ) -> datetime | None:
                # the first reading left out in the window that fired
                if verdict.decision != Decision.fire:
                    return None
                start = datetime.fromisoformat(verdict.details["window_start"])
                ts, value = await fetch_series(conn, meter_id, start, start + window)
                found = outlier_times(meter.reading, ts, value)
                found = found[(found >= start.timestamp()) & (found < at.timestamp())]
                return _dt(float(found[0])) if found.size else None

            await replay(
                Rule.meter_spike, list(zip(times, verdicts, strict=True)), instant=spike_instant
            )

            # suspects named by network reconciliation
            comp_id = topo.component_of.get(meter_id)
            if comp_id is not None:
                rec = await conn.fetch(
                    """SELECT window_start, window_end, suspects, statistic, critical
                       FROM reconciliations WHERE component = $1 AND window_start >= $2
                       AND window_end <= $3 ORDER BY window_start""",
                    comp_id,
                    lo,
                    now,
                )
                sus_cfg = topo.rule(Rule.meter_suspect, meter_id)

                def suspect_verdict(
                    i: int,
                    run: int,
                    rec: list[asyncpg.Record] = rec,
                    meter_id: str = meter_id,
                    cid: str = comp_id,
                ) -> Verdict:
                    r = rec[i]
                    return Verdict(
                        Decision.fire,
                        Severity.warning,
                        f"meter {meter_id} named suspect by network reconciliation of {cid} "
                        f"in {run} windows in a row (latest from "
                        f"{local_text(r['window_start'], topo.tz)}, "
                        f"χ² {r['statistic']:.1f} > {r['critical'] or 0:.1f})",
                        {
                            "component": cid,
                            "window_start": r["window_start"].isoformat(),
                            "statistic": r["statistic"],
                            "critical": r["critical"],
                            "consecutive": run,
                        },
                    )

                verdicts = flag_series(
                    [sus_cfg.enabled and meter_id in (r["suspects"] or []) for r in rec],
                    sus_cfg.fire_after,
                    sus_cfg.clear_after,
                    suspect_verdict,
                    [r["window_start"] for r in rec],
                )
                await replay(
                    Rule.meter_suspect,
                    [(r["window_end"], v) for r, v in zip(rec, verdicts, strict=True)],
                )

    async def _rules_errors(
        self,
        conn: asyncpg.Connection,
        topo: Topology,
        exchanges: set[str],
        meters: set[str],
        now: datetime,
        stats: Stats,
    ) -> None:
        """``rules_error`` of the exchanges and meters whose windows were just computed: firing
        while any of their windows stands as failed (a meter also for its network
        reconciliation), resolved once none does. Its time is the computation's (``now``)."""
        exchanges = {e for e in exchanges if e in topo.exchanges}
        meters = {m for m in meters if m in topo.meters}
        if not exchanges and not meters:
            return
        failures: dict[tuple[str, str], list[WindowFailure]] = defaultdict(list)
        for r in await conn.fetch(
            """SELECT exchange_id, window_start, window_end, error FROM exchange_windows
               WHERE exchange_id = ANY($1::text[]) AND status = 'error'""",
            list(exchanges),
        ):
            failures["exchange", r["exchange_id"]].append(
                WindowFailure(r["window_start"], r["window_end"], r["error"] or "unknown")
            )
        for r in await conn.fetch(
            """SELECT meter_id, window_start, window_end, error FROM meter_windows
               WHERE meter_id = ANY($1::text[]) AND error IS NOT NULL""",
            list(meters),
        ):
            failures["meter", r["meter_id"]].append(
                WindowFailure(r["window_start"], r["window_end"], r["error"])
            )
        components = {topo.component_of[m] for m in meters if m in topo.component_of}
        for r in await conn.fetch(
            """SELECT component, window_start, window_end, error FROM reconciliations
               WHERE component = ANY($1::text[]) AND error IS NOT NULL""",
            list(components),
        ):
            for mid in topo.components[r["component"]].meters:
                if mid in meters:
                    failures["meter", mid].append(
                        WindowFailure(
                            r["window_start"],
                            r["window_end"],
                            r["error"],
                            f"network reconciliation of {r['component']}",
                        )
                    )
        subjects = [("exchange", e) for e in sorted(exchanges)] + [
            ("meter", m) for m in sorted(meters)
        ]
        firing = {
            r["subject"]
            for r in await conn.fetch(
                """SELECT subject FROM alerts WHERE rule = $1 AND status = 'firing'
                   AND subject = ANY($2::text[])""",
                str(Rule.rules_error),
                [name for _, name in subjects],
            )
        }
        for kind, name in subjects:
            found = failures.get((kind, name), [])
            if not found and name not in firing:
                continue
            done = await lifecycle.apply_verdict(
                conn,
                lifecycle.Subject(Rule.rules_error, name, kind),
                evaluate_rules_error(kind, name, found, tz=topo.tz),
                now,
                targets=self._targets,
            )
            if done:
                stats.alerts[done] += 1

    # -- time-driven rules ------------------------------------------------------------------

    async def periodic(self, conn: asyncpg.Connection, now: datetime) -> Stats:
        """Rules that fire on the passing of time rather than on data: stale meters and
        partners' rejection rates."""
        stats = Stats()
        topo = await self.topology_for(conn)
        if topo is None:
            return stats
        # A meter is stale when its newest reading is old AND nothing of it has arrived for
        # as long (a backfill of old readings is data arriving, not silence). The newest
        # reading is the last one of the meter's latest window that holds one (an index probe
        # per meter); when anything last arrived is asked only of the meters that look stale.
        ids = list(topo.meters)
        since = now - timedelta(days=7)
        last: dict[str, datetime] = {
            r["meter_id"]: r["last"]
            for r in await conn.fetch(
                """SELECT c.meter_id, w.last_ts AS last
                   FROM unnest($1::text[]) AS c(meter_id)
                   CROSS JOIN LATERAL (
                       SELECT last_ts FROM meter_windows
                       WHERE meter_id = c.meter_id AND window_start > $2
                         AND last_ts IS NOT NULL
                       ORDER BY window_start DESC LIMIT 1) w""",
                ids,
                since,
            )
        }
        applied = await conn.fetchval("SELECT applied_at FROM network LIMIT 1")
        async with conn.transaction():
            stale_firing = await lifecycle.firing(conn, Rule.meter_stale)
            verdicts = {
                meter_id: evaluate_stale(
                    meter_id,
                    last.get(meter_id),
                    meter.interval,
                    now,
                    topo.rule(Rule.meter_stale, meter_id),
                    watched_since=applied,
                    tz=topo.tz,
                )
                for meter_id, meter in topo.meters.items()
            }
            quiet = [m for m, v in verdicts.items() if v.decision == Decision.fire]
            arrived: dict[str, datetime] = {
                r["meter_id"]: r["arrived"]
                for r in await conn.fetch(
                    """SELECT meter_id, max(computed_at) AS arrived FROM meter_windows
                       WHERE meter_id = ANY($1::text[]) AND window_start > $2
                       GROUP BY meter_id""",
                    quiet,
                    since,
                )
            }
            for meter_id, verdict in verdicts.items():
                meter = topo.meters[meter_id]
                if verdict.decision == Decision.fire and arrived.get(meter_id, now) < now:
                    backfill = evaluate_stale(
                        meter_id,
                        arrived[meter_id],
                        meter.interval,
                        now,
                        topo.rule(Rule.meter_stale, meter_id),
                    )
                    if backfill.decision != Decision.fire:
                        continue  # old readings still arriving: a backfill, not silence
                if verdict.decision != Decision.fire and (
                    f"{Rule.meter_stale}:{meter_id}" not in stale_firing
                ):
                    continue  # nothing firing to resolve, nothing to fire
                alert = stale_firing.get(f"{Rule.meter_stale}:{meter_id}")
                if verdict.decision == Decision.resolve and alert is not None:
                    # the silence ended at the first reading after it
                    details = _json(alert["details"])
                    quiet_since = details.get("last_reading")
                    resumed = await conn.fetchval(
                        "SELECT min(ts) FROM readings WHERE meter_id = $1 AND ts > $2",
                        meter_id,
                        datetime.fromisoformat(quiet_since) if quiet_since else alert["started_at"],
                    )
                    verdict = replace(verdict, at=resumed)
                done = await lifecycle.apply_verdict(
                    conn,
                    lifecycle.Subject(Rule.meter_stale, meter_id, "meter"),
                    verdict,
                    now,
                    targets=self._targets,
                    touched=stats.touched,
                )
                if done:
                    stats.alerts[done] += 1
            counts = await conn.fetch(
                """SELECT partner_id, sum(messages) AS messages, sum(rejected) AS rejected
                   FROM ingest_counts WHERE hour >= $1 GROUP BY partner_id""",
                now - timedelta(hours=1),
            )
            cfg = topo.rule(Rule.rejections, "")
            for r in counts:
                verdict = evaluate_rejections(
                    r["partner_id"], int(r["messages"]), int(r["rejected"]), cfg
                )
                done = await lifecycle.apply_verdict(
                    conn,
                    lifecycle.Subject(Rule.rejections, r["partner_id"], "partner"),
                    verdict,
                    now,
                    targets=self._targets,
                    touched=stats.touched,
                )
                if done:
                    stats.alerts[done] += 1
            await incidents.regroup(conn, topo.incident_keys, stats.touched)
        return stats


HISTORY_WINDOWS = 336  # how far back the alert replay looks for context (two weeks hourly)


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        import json

        parsed: dict[str, Any] = json.loads(value)
        return parsed
    return dict(value)


def _events(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, str):
        import json

        parsed: list[dict[str, Any]] = json.loads(value)
        return parsed
    return list(value)
