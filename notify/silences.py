"""Silences: mute what is delivered of alerts, as Alertmanager's silences do.

A silence has matchers on ``rule``, ``subject`` and ``partner`` (every one must match), a
start, an end, a comment and its author. An alert's partners are the owner of a meter for a
meter alert, the provider and the receiver for an exchange alert, the partner itself for a
partner alert.

A silenced alert still fires, resolves and is acknowledged; its events are recorded and shown
as always. Only their delivery is held back, and the notifier decides that when it is about to
deliver an event (:func:`hold`), by its own clock: a silence also mutes events queued before
it began (to a webhook that was down, say), and an event delivered after the silence ended
goes out. A held row of the outbox becomes ``silenced``, with the id of the silence.

When no silence mutes an alert any more (its silence ended or was expired), :func:`release`
does what Alertmanager does as a silence lifts: an alert still firing is announced (its latest
event, after its ``firing`` event when the receiver never had that one), and an alert that
resolved while silenced is announced resolved only to a receiver that had been told it fired.
The rest of what was held becomes ``suppressed``: recorded, never sent. No event goes out
twice.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg

from core.network import Network
from core.text import quoted
from notify.outbox import OutboxRow

MATCHER_NAMES = ("rule", "subject", "partner")
MAX_MATCHERS = 10
MAX_VALUE = 200
MAX_COMMENT = 2000

Labels = Mapping[str, frozenset[str]]
SilenceState = Literal["pending", "active", "expired"]


@dataclass(frozen=True, slots=True)
class Matcher:
    """``name`` (rule, subject or partner) equals ``value``."""

    name: str
    value: str

    def matches(self, labels: Labels) -> bool:
        return self.value in labels.get(self.name, frozenset())


@dataclass(frozen=True, slots=True)
class Silence:
    id: int
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime
    comment: str
    created_by: str
    created_at: datetime
    expired_by: str | None = None
    expired_at: datetime | None = None

    def state(self, now: datetime) -> SilenceState:
        if self.ends_at <= now:
            return "expired"
        if self.starts_at > now:
            return "pending"
        return "active"

    def mutes(self, labels: Labels, now: datetime) -> bool:
        """Whether it is in force at ``now`` and every matcher matches."""
        return self.state(now) == "active" and all(m.matches(labels) for m in self.matchers)

    def as_json(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "matchers": [{"name": m.name, "value": m.value} for m in self.matchers],
            "starts_at": self.starts_at,
            "ends_at": self.ends_at,
            "comment": self.comment,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "expired_by": self.expired_by,
            "expired_at": self.expired_at,
            "state": self.state(now),
        }


def labels(rule: str, subject: str, partners: Iterable[str]) -> Labels:
    """What matchers look at in an alert."""
    return {
        "rule": frozenset({rule}),
        "subject": frozenset({subject}),
        "partner": frozenset(partners),
    }


def muting(silences: Iterable[Silence], alert_labels: Labels, now: datetime) -> Silence | None:
    """The silence (the oldest, when several) that mutes an alert with ``alert_labels``."""
    for silence in sorted(silences, key=lambda s: s.id):
        if silence.mutes(alert_labels, now):
            return silence
    return None


def problems(
    matchers: Sequence[tuple[str, str]],
    starts_at: datetime,
    ends_at: datetime,
    comment: str,
    now: datetime,
) -> list[tuple[str, str]]:
    """What is wrong with a new silence, as (field, message); empty when nothing is.

    What its values name (a rule, a subject, a partner that exists) the caller checks, since
    that needs the network."""
    found: list[tuple[str, str]] = []
    if not matchers:
        found.append(("matchers", "a silence needs at least one matcher"))
    if len(matchers) > MAX_MATCHERS:
        found.append(("matchers", f"at most {MAX_MATCHERS} matchers"))
    seen: set[str] = set()
    for name, value in matchers:
        if name not in MATCHER_NAMES:
            found.append(
                ("matchers", f"unknown matcher name {name!r} (use {', '.join(MATCHER_NAMES)})")
            )
        elif name in seen:
            found.append(("matchers", f"{name!r} is matched twice (one value per name)"))
        seen.add(name)
        if not value.strip():
            found.append(("matchers", f"the value of {name!r} is empty"))
        elif len(value) > MAX_VALUE or "\x00" in value:
            found.append(("matchers", f"the value of {name!r} is not a name this network uses"))
    if starts_at.tzinfo is None or ends_at.tzinfo is None:
        found.append(("ends_at", "times need a UTC offset (RFC 3339, e.g. 2026-10-01T06:00:00Z)"))
        return found
    if ends_at <= starts_at:
        found.append(("ends_at", "'ends_at' must be after 'starts_at'"))
    elif ends_at <= now:
        found.append(("ends_at", "'ends_at' is in the past: the silence would never mute anything"))
    if not comment.strip():
        found.append(("comment", "say why (a comment is required)"))
    elif len(comment) > MAX_COMMENT:
        found.append(("comment", f"the comment is longer than {MAX_COMMENT} characters"))
    elif "\x00" in comment:
        found.append(("comment", "the comment holds a NUL character"))
    return found


def value_problems(
    matchers: Sequence[tuple[str, str]], network: Network, rules: Iterable[str]
) -> list[str]:
    """Matcher values that name nothing (a rule not among ``rules``, a subject or partner not
    in ``network``): a silence on them would mute nothing, so they are refused."""
    known_rules = frozenset(rules)
    partners = {p.id for p in network.partners}
    subjects = partners | {m.id for m in network.meters} | {e.id for e in network.exchanges}
    found = []
    for name, value in matchers:
        if name == "rule" and value not in known_rules:
            found.append(f"no rule {quoted(value)} (one of {', '.join(sorted(known_rules))})")
        elif name == "subject" and value not in subjects:
            found.append(f"no exchange, meter or partner {quoted(value)} in the network")
        elif name == "partner" and value not in partners:
            found.append(f"no partner {quoted(value)} in the network")
    return found


# ------------------------------------------------------------------------------- storage

_COLUMNS = (
    "id, matchers::text AS matchers, starts_at, ends_at, comment, created_by, created_at,"
    " expired_by, expired_at"
)


def _silence(row: asyncpg.Record) -> Silence:
    raw = json.loads(row["matchers"])
    return Silence(
        id=row["id"],
        matchers=tuple(Matcher(str(m["name"]), str(m["value"])) for m in raw),
        starts_at=row["starts_at"],
        ends_at=row["ends_at"],
        comment=row["comment"],
        created_by=row["created_by"],
        created_at=row["created_at"],
        expired_by=row["expired_by"],
        expired_at=row["expired_at"],
    )


async def create(
    conn: asyncpg.Connection | asyncpg.Pool,
    matchers: Sequence[tuple[str, str]],
    starts_at: datetime,
    ends_at: datetime,
    comment: str,
    by: str,
) -> Silence:
    """Store a silence (check it with :func:`problems` first)."""
    row = await conn.fetchrow(
        f"""INSERT INTO silences (matchers, starts_at, ends_at, comment, created_by)
            VALUES ($1::jsonb, $2, $3, $4, $5) RETURNING {_COLUMNS}""",
        json.dumps([{"name": n, "value": v} for n, v in matchers]),
        starts_at,
        ends_at,
        comment,
        by,
    )
    assert row is not None
    return _silence(row)


async def get(conn: asyncpg.Connection | asyncpg.Pool, silence_id: int) -> Silence | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM silences WHERE id = $1", silence_id)
    return None if row is None else _silence(row)


async def expire(
    conn: asyncpg.Connection | asyncpg.Pool, silence_id: int, by: str, now: datetime
) -> Silence | None:
    """End a silence now (one not begun yet ends before it begins); one that has ended is left
    as it is. None when there is no such silence."""
    row = await conn.fetchrow(
        f"""UPDATE silences SET ends_at = $3, starts_at = least(starts_at, $3),
                                expired_by = $2, expired_at = $3
            WHERE id = $1 AND ends_at > $3 RETURNING {_COLUMNS}""",
        silence_id,
        by,
        now,
    )
    if row is not None:
        return _silence(row)
    return await get(conn, silence_id)


async def listing(
    conn: asyncpg.Connection | asyncpg.Pool,
    now: datetime,
    *,
    state: SilenceState | None = None,
    limit: int = 100,
    before: int | None = None,
) -> list[Silence]:
    """Silences, newest first; ``state`` at ``now``; ids below ``before`` (paging)."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM silences
            WHERE ($2::text IS NULL
                   OR ($2 = 'expired' AND ends_at <= $1)
                   OR ($2 = 'pending' AND starts_at > $1 AND ends_at > $1)
                   OR ($2 = 'active' AND starts_at <= $1 AND ends_at > $1))
              AND ($3::bigint IS NULL OR id < $3)
            ORDER BY id DESC LIMIT $4""",
        now,
        state,
        before,
        limit,
    )
    return [_silence(r) for r in rows]


async def in_force(conn: asyncpg.Connection | asyncpg.Pool, now: datetime) -> list[Silence]:
    """The silences that mute at ``now``."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM silences WHERE starts_at <= $1 AND ends_at > $1 ORDER BY id",
        now,
    )
    return [_silence(r) for r in rows]


async def muted_counts(
    conn: asyncpg.Connection | asyncpg.Pool, silence_ids: Sequence[int]
) -> dict[int, int]:
    """Per silence, how many deliveries it held back (delivered late or never)."""
    rows = await conn.fetch(
        "SELECT silence_id, count(*) AS n FROM outbox WHERE silence_id = ANY($1::bigint[])"
        " GROUP BY silence_id",
        list(silence_ids),
    )
    return {r["silence_id"]: r["n"] for r in rows}


async def partners_of(
    conn: asyncpg.Connection | asyncpg.Pool, subjects: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], frozenset[str]]:
    """The partners of each (subject_kind, subject): a meter's owner, an exchange's provider
    and receiver, a partner itself; nothing for what the network does not (or no longer)
    hold."""
    wanted = set(subjects)
    meters = sorted({s for k, s in wanted if k == "meter"})
    exchanges = sorted({s for k, s in wanted if k == "exchange"})
    out: dict[tuple[str, str], frozenset[str]] = {
        (k, s): frozenset({s}) if k == "partner" else frozenset() for k, s in wanted
    }
    if meters or exchanges:
        rows = await conn.fetch(
            """SELECT 'meter' AS kind, id, ARRAY[partner_id] AS partners FROM meters
               WHERE id = ANY($1::text[])
               UNION ALL
               SELECT 'exchange', id, ARRAY[provider_id, receiver_id] FROM exchanges
               WHERE id = ANY($2::text[])""",
            meters,
            exchanges,
        )
        for r in rows:
            out[(r["kind"], r["id"])] = frozenset(r["partners"])
    return out


async def silenced_by(
    conn: asyncpg.Connection | asyncpg.Pool,
    alerts: Sequence[Any],
    now: datetime,
    silences: Sequence[Silence] | None = None,
) -> list[Silence | None]:
    """For each alert (a row or mapping with ``rule``, ``subject``, ``subject_kind``), the
    silence muting it at ``now``, or None."""
    if silences is None:
        silences = await in_force(conn, now)
    if not silences or not alerts:
        return [None] * len(alerts)
    partners = await partners_of(conn, ((a["subject_kind"], a["subject"]) for a in alerts))
    return [
        muting(
            silences,
            labels(a["rule"], a["subject"], partners.get((a["subject_kind"], a["subject"]), ())),
            now,
        )
        for a in alerts
    ]


# ------------------------------------------------------------------- the notifier's part


def _alert_of(payload: Mapping[str, Any]) -> Mapping[str, Any] | None:
    alert = payload.get("alert")
    if not isinstance(alert, Mapping):
        return None
    if not all(isinstance(alert.get(k), str) for k in ("rule", "subject", "subject_kind")):
        return None
    return alert


async def hold(conn: asyncpg.Connection, rows: Sequence[OutboxRow], now: datetime) -> set[int]:
    """Mark the claimed ``rows`` whose alert a silence mutes at ``now`` as ``silenced`` (with
    the silence's id); returns their ids. Rows that carry no alert (statements) pass."""
    alerts = [(row, alert) for row in rows if (alert := _alert_of(row.payload)) is not None]
    if not alerts:
        return set()
    muted = await silenced_by(conn, [a for _, a in alerts], now)
    held = [(row.id, s.id) for (row, _), s in zip(alerts, muted, strict=True) if s is not None]
    if held:
        await conn.execute(
            """UPDATE outbox o SET status = 'silenced', silence_id = h.silence, silenced_at = $3,
                                   last_error = NULL
               FROM unnest($1::bigint[], $2::bigint[]) AS h (id, silence)
               WHERE o.id = h.id""",
            [i for i, _ in held],
            [s for _, s in held],
            now,
        )
    return {i for i, _ in held}


@dataclass(frozen=True)
class Released:
    released: int = 0
    suppressed: int = 0


@dataclass(frozen=True)
class _Held:
    id: int
    event: str
    alert_id: str
    rule: str
    subject: str
    kind: str


async def release(conn: asyncpg.Connection, now: datetime, max_age: timedelta) -> Released:
    """Settle the held rows of alerts that no silence mutes at ``now`` any more (see the
    module's text). Call in a transaction; one notifier at a time does it, others skip."""
    if not await conn.fetchval(
        "SELECT pg_try_advisory_xact_lock(hashtext('symbiont_notify'), hashtext('release'))"
    ):
        return Released()
    rows = await conn.fetch(
        """SELECT id, channel, target, payload->>'event' AS event,
                  payload #>> '{alert,fingerprint}' AS fingerprint,
                  payload #>> '{alert,id}' AS alert_id, payload #>> '{alert,rule}' AS rule,
                  payload #>> '{alert,subject}' AS subject,
                  payload #>> '{alert,subject_kind}' AS kind
           FROM outbox WHERE status = 'silenced' ORDER BY id FOR UPDATE SKIP LOCKED"""
    )
    if not rows:
        return Released()
    keys: dict[tuple[str, str, str], list[_Held]] = defaultdict(list)
    for r in rows:
        item = _Held(r["id"], r["event"], r["alert_id"], r["rule"], r["subject"], r["kind"])
        keys[(r["channel"], r["target"], r["fingerprint"])].append(item)
    latest = [items[-1] for items in keys.values()]
    muted = await silenced_by(
        conn, [{"rule": h.rule, "subject": h.subject, "subject_kind": h.kind} for h in latest], now
    )
    free = [key for key, m in zip(keys, muted, strict=True) if m is None]
    if not free:
        return Released()
    told_rows = await conn.fetch(
        """SELECT o.id, o.channel, o.target, k.fp, o.payload #>> '{alert,id}' AS alert_id,
                  o.status
           FROM unnest($1::text[], $2::text[], $3::text[]) AS k (channel, target, fp)
           JOIN outbox o ON o.channel = k.channel AND o.target = k.target
                        AND o.payload #>> '{alert,fingerprint}' = k.fp
           WHERE o.status IN ('pending', 'delivered', 'failed')""",
        [k[0] for k in free],
        [k[1] for k in free],
        [k[2] for k in free],
    )
    told: dict[tuple[str, str, str], list[tuple[int, str, str]]] = defaultdict(list)
    for r in told_rows:
        told[(r["channel"], r["target"], r["fp"])].append((r["id"], r["alert_id"], r["status"]))
    send: list[int] = []
    drop: list[int] = []
    for key in free:
        held = keys[key]
        last = held[-1]
        known = told.get(key, [])
        chosen: list[int] = []
        # A later event already sent: the receiver has a newer state than any held back. A
        # later one still pending goes out after what is released here (in order).
        newer = any(i > last.id and status != "pending" for i, _, status in known)
        if not newer:
            told_of_it = any(a == last.alert_id for i, a, _ in known if i < last.id)
            if last.event != "resolved":
                chosen.append(last.id)
                first = next(
                    (h for h in held if h.alert_id == last.alert_id and h.event == "firing"), None
                )
                if not told_of_it and first is not None and first.id != last.id:
                    chosen.append(first.id)
            elif told_of_it:
                chosen.append(last.id)
        send.extend(chosen)
        drop.extend(h.id for h in held if h.id not in chosen)
    if send:
        await conn.execute(
            """UPDATE outbox SET status = 'pending', next_attempt_at = $2::timestamptz,
                                 expires_at = greatest(expires_at, $2::timestamptz + $3::interval)
               WHERE id = ANY($1::bigint[])""",
            send,
            now,
            max_age,
        )
    if drop:
        await conn.execute(
            "UPDATE outbox SET status = 'suppressed' WHERE id = ANY($1::bigint[])", drop
        )
    return Released(len(send), len(drop))
