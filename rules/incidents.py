"""Incidents: the alerts of one cause, grouped, each alert still addressable on its own.

What belongs together. An alert is about one or more *keys*: an exchange alert (``imbalance``,
``drift``) about its exchange; a meter alert (``meter_suspect``, ``meter_stale``,
``meter_stuck`` …) about every exchange the meter measures, or about the meter itself when it
measures none; a partner alert (``rejections``) about its partner. Two alerts belong to one
incident when they share a key and overlap in time (``[started_at, resolved_at]``, a firing
alert open-ended), or the one starts less than ``GAP`` after the other ended; an incident is a
connected part of that relation. So a leak's ``imbalance``, the ``drift`` still firing when it
began and the ``meter_suspect`` that network reconciliation names on one of the exchange's
meters are one incident, also when the imbalance flickers off for a few windows and on again
during the leak; the same exchange's imbalance a week later is another.

The grouping depends only on the alerts' times, never on the order in which the rules raised
them (a backfill replays every meter before the exchanges), and it is redone, in the
transaction that changed them, for the alerts a pass fired or resolved and every alert they
could touch. Incident ids are stable: a group keeps the oldest incident id among its alerts;
when late data joins two incidents, the younger one's alerts move to the older and the empty
incident is deleted. An incident is ``open`` while any of its alerts fires and ``resolved``
(at the last of their ``resolved_at``) when all have resolved.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

GAP = timedelta(hours=12)
"""Alerts of one key that follow each other within this gap are one incident (an imbalance
that resolves after two clean windows and fires again during the same leak)."""


@dataclass(frozen=True)
class Member:
    """One alert as the grouping sees it."""

    alert_id: int
    keys: frozenset[str]
    start: datetime
    end: datetime | None  # None: still firing
    incident_id: int | None


@dataclass(frozen=True)
class Group:
    """One incident after grouping: the incident id it keeps (None: a new incident)."""

    incident_id: int | None
    members: tuple[Member, ...]


@dataclass(frozen=True)
class Keys:
    """What alerts are about, from the network: exchanges and the meters measuring them."""

    exchange_meters: Mapping[str, Sequence[str]]
    meter_exchanges: Mapping[str, Sequence[str]]

    def of(self, subject_kind: str, subject: str) -> frozenset[str]:
        if subject_kind == "exchange":
            return frozenset({f"exchange:{subject}"})
        if subject_kind == "meter":
            exchanges = self.meter_exchanges.get(subject, ())
            if exchanges:
                return frozenset(f"exchange:{e}" for e in exchanges)
            return frozenset({f"meter:{subject}"})
        return frozenset({f"{subject_kind}:{subject}"})

    def subjects(self, key: str) -> set[tuple[str, str]]:
        """The (subject_kind, subject) pairs whose alerts can be about ``key``."""
        kind, _, name = key.partition(":")
        if kind == "exchange":
            return {("exchange", name)} | {("meter", m) for m in self.exchange_meters.get(name, ())}
        return {(kind, name)}


def subject_of(key: str) -> tuple[str, str]:
    """(subject_kind, subject) an incident of ``key`` is about."""
    kind, _, name = key.partition(":")
    return kind, name


def plan(members: Sequence[Member]) -> list[Group]:
    """Group ``members`` (connected parts of "share a key and overlap in time, give or take
    ``GAP``") and choose
    each group's incident id: the oldest id among its members not already taken by an
    earlier group (groups in order of their first start), else a new incident."""
    parent = {m.alert_id: m.alert_id for m in members}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    by_key: dict[str, list[Member]] = defaultdict(list)
    for m in members:
        for key in m.keys:
            by_key[key].append(m)
    for items in by_key.values():
        # sweep in order of start: each member joins the run whose furthest end reaches it
        items.sort(key=lambda m: (m.start, m.alert_id))
        head = items[0]
        reach = head.end
        for m in items[1:]:
            if reach is None or m.start <= reach + GAP:
                parent[find(m.alert_id)] = find(head.alert_id)
                if reach is not None:
                    reach = None if m.end is None else max(reach, m.end)
            else:
                head, reach = m, m.end
    parts: dict[int, list[Member]] = defaultdict(list)
    for m in members:
        parts[find(m.alert_id)].append(m)
    ordered = sorted(parts.values(), key=lambda ms: min((m.start, m.alert_id) for m in ms))
    taken: set[int] = set()
    groups: list[Group] = []
    for ms in ordered:
        ids = sorted({m.incident_id for m in ms if m.incident_id is not None} - taken)
        keep = ids[0] if ids else None
        if keep is not None:
            taken.add(keep)
        ms.sort(key=lambda m: (m.start, m.alert_id))
        groups.append(Group(keep, tuple(ms)))
    return groups


_COLUMNS = "id, subject, subject_kind, started_at, resolved_at, status, incident_id"


async def regroup(conn: asyncpg.Connection, keys: Keys, touched: Iterable[int]) -> None:
    """Group the alerts ``touched`` (fired, resolved or changed by this transaction) with
    every alert they can belong with, and bring the incidents up to date. Serialised per key
    (transaction-scoped advisory locks), so workers that raise alerts of one exchange at the
    same time agree on its incidents."""
    ids = sorted(set(touched))
    if not ids:
        return
    seed = await conn.fetch(f"SELECT {_COLUMNS} FROM alerts WHERE id = ANY($1::bigint[])", ids)
    if not seed:
        return
    since = min(r["started_at"] for r in seed)
    rows: dict[int, asyncpg.Record] = {r["id"]: r for r in seed}
    locked: set[str] = set()
    pending: set[str] = set()
    for r in seed:
        pending |= keys.of(r["subject_kind"], r["subject"])
    while pending - locked:
        new = sorted(pending - locked)
        for key in new:
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('symbiont_incident'), hashtext($1))", key
            )
        locked.update(new)
        wanted: set[tuple[str, str]] = set()
        for key in new:
            wanted |= keys.subjects(key)
        found = await conn.fetch(
            f"""SELECT {_COLUMNS} FROM alerts
                WHERE subject = ANY($1::text[])
                AND (status = 'firing' OR resolved_at >= $2 OR id = ANY($3::bigint[]))""",
            sorted({s for _, s in wanted}),
            since - GAP,
            ids,
        )
        for r in found:
            if (r["subject_kind"], r["subject"]) in wanted:
                rows[r["id"]] = r
                pending |= keys.of(r["subject_kind"], r["subject"])
    # re-read the seed rows now that the locks are held (another worker may have grouped them)
    current = await conn.fetch(
        f"SELECT {_COLUMNS} FROM alerts WHERE id = ANY($1::bigint[])", sorted(rows)
    )
    members = [
        Member(
            r["id"],
            keys.of(r["subject_kind"], r["subject"]),
            r["started_at"],
            None if r["status"] == "firing" else r["resolved_at"] or r["started_at"],
            r["incident_id"],
        )
        for r in current
    ]
    groups = plan(members)
    affected: set[int] = {m.incident_id for m in members if m.incident_id is not None}
    moved_from: dict[int, int] = {}  # an incident id no group kept → where its others go
    for group in groups:
        incident = group.incident_id
        if incident is None:
            first = group.members[0]
            kind, subject = subject_of(sorted(first.keys)[0])
            incident = await conn.fetchval(
                """INSERT INTO incidents (subject, subject_kind, status, severity, started_at)
                   VALUES ($1, $2, 'open', 'warning', $3) RETURNING id""",
                subject,
                kind,
                first.start,
            )
            assert incident is not None
        changed = [m.alert_id for m in group.members if m.incident_id != incident]
        for m in group.members:
            if m.incident_id is not None and m.incident_id != incident:
                moved_from.setdefault(m.incident_id, incident)
        if changed:
            await conn.execute(
                "UPDATE alerts SET incident_id = $1 WHERE id = ANY($2::bigint[])", incident, changed
            )
        affected.add(incident)
    kept = {g.incident_id for g in groups if g.incident_id is not None}
    for old, target in moved_from.items():
        if old not in kept:  # its alerts not looked at here (older ones) follow the others
            await conn.execute(
                "UPDATE alerts SET incident_id = $1 WHERE incident_id = $2", target, old
            )
    await refresh(conn, affected)


async def refresh(conn: asyncpg.Connection, incident_ids: Iterable[int]) -> None:
    """Status, severity and times of incidents from their alerts; empty ones are deleted."""
    ids = sorted(set(incident_ids))
    if not ids:
        return
    await conn.execute(
        """UPDATE incidents i SET
               status = CASE WHEN s.firing THEN 'open' ELSE 'resolved' END,
               severity = CASE WHEN s.critical THEN 'critical' ELSE 'warning' END,
               started_at = s.started,
               resolved_at = CASE WHEN s.firing THEN NULL ELSE s.resolved END,
               updated_at = now()
           FROM (SELECT incident_id, bool_or(status = 'firing') AS firing,
                        bool_or(severity = 'critical') AS critical,
                        min(started_at) AS started, max(resolved_at) AS resolved
                 FROM alerts WHERE incident_id = ANY($1::bigint[]) GROUP BY incident_id) s
           WHERE i.id = s.incident_id""",
        ids,
    )
    await conn.execute(
        """DELETE FROM incidents i WHERE i.id = ANY($1::bigint[])
           AND NOT EXISTS (SELECT 1 FROM alerts a WHERE a.incident_id = i.id)""",
        ids,
    )
