"""Alert lifecycle: verdicts become firing, updated and resolved alerts, with events and
outbox rows written in the caller's transaction (so an alert and its notifications commit
together or not at all).

An alert's identity is its fingerprint (rule + subject, and a key where one rule can fire
several times for a subject: ``statement_held`` once per month); the partial unique index
``alerts_one_firing`` guarantees at most one firing alert per fingerprint.

Two clocks: ``started_at``/``resolved_at`` are when the condition began and ended (a
verdict's ``at``, else the time it was seen), ``detected_at``/``resolve_detected_at`` when the
rules saw it (the end of the window that showed it, or the clock of a live check). The events
of an alert are stamped with the condition's instants, so an incident's timeline reads the
same whether its data came live or as a backfill.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from rules.alerts import Decision, Verdict

ALERTS_CHANNEL = "symbiont_alerts"

Targets = Callable[[dict[str, Any]], Sequence[tuple[str, str]]]


@dataclass(frozen=True)
class Subject:
    rule: str
    subject: str
    kind: str  # exchange | meter | partner
    key: str = ""  # tells apart alerts of one rule and subject (a statement's month)

    @property
    def fingerprint(self) -> str:
        return f"{self.rule}:{self.subject}" + (f":{self.key}" if self.key else "")


def alert_json(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    def ts(value: Any) -> str | None:
        return value.isoformat() if isinstance(value, datetime) else None

    details = row["details"]
    if isinstance(details, str):
        details = json.loads(details)
    return {
        "id": row["id"],
        "fingerprint": row["fingerprint"],
        "rule": row["rule"],
        "subject": row["subject"],
        "subject_kind": row["subject_kind"],
        "severity": row["severity"],
        "status": row["status"],
        "acknowledged_by": row["acknowledged_by"],
        "acknowledged_at": ts(row["acknowledged_at"]),
        "ack_comment": row["ack_comment"],
        "started_at": ts(row["started_at"]),
        "resolved_at": ts(row["resolved_at"]),
        "summary": row["summary"],
        "details": details,
    }


def alert_view(row: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """``alert_json`` with what the API shows beside it: the incident the alert belongs to and
    when the rules saw it fire."""
    detected = row["detected_at"]
    return {
        **alert_json(row),
        "incident_id": row["incident_id"],
        "detected_at": detected.isoformat() if isinstance(detected, datetime) else None,
    }


async def _event(
    conn: asyncpg.Connection,
    row: asyncpg.Record,
    kind: str,
    now: datetime,
    targets: Targets | None,
) -> None:
    from notify import outbox

    alert = alert_json(row)
    payload = {"event": kind, "alert": alert, "at": now.isoformat()}
    event_id = await conn.fetchval(
        "INSERT INTO alert_events (alert_id, kind, at, payload) VALUES ($1, $2, $3, $4::jsonb) "
        "RETURNING id",
        row["id"],
        kind,
        now,
        json.dumps(payload),
    )
    if targets is not None:
        deliveries = list(targets(alert))
        if deliveries:
            await outbox.enqueue(
                conn, event_key=f"alert-event-{event_id}", payload=payload, deliveries=deliveries
            )
    await conn.execute("SELECT pg_notify($1, $2)", ALERTS_CHANNEL, str(row["id"]))


_SELECT = "SELECT * FROM alerts WHERE fingerprint = $1 AND status = 'firing' FOR UPDATE"


async def apply_verdict(
    conn: asyncpg.Connection,
    subject: Subject,
    verdict: Verdict,
    now: datetime,
    *,
    targets: Targets | None = None,
    inhibited: bool = False,
    touched: set[int] | None = None,
) -> str | None:
    """Bring the alert of ``subject`` in line with ``verdict`` as seen at ``now``; returns
    what happened (``fired``, ``resolved``, ``updated``) or None, and adds the alert's id to
    ``touched`` when it fired or resolved. Call inside a transaction."""
    current = await conn.fetchrow(_SELECT, subject.fingerprint)
    if verdict.decision == Decision.fire:
        if current is None:
            if inhibited:
                return None
            started = min(verdict.at, now) if verdict.at is not None else now
            row = await conn.fetchrow(
                """INSERT INTO alerts (fingerprint, rule, subject, subject_kind, severity, status,
                                       started_at, summary, details, updated_at, detected_at)
                   VALUES ($1, $2, $3, $4, $5, 'firing', $6, $7, $8::jsonb, $9, $9)
                   ON CONFLICT (fingerprint) WHERE status = 'firing' DO NOTHING
                   RETURNING *""",
                subject.fingerprint,
                subject.rule,
                subject.subject,
                subject.kind,
                verdict.severity.value,
                started,
                verdict.summary,
                json.dumps(verdict.details, default=str),
                now,
            )
            if row is None:  # another worker fired it a moment ago
                return None
            await _event(conn, row, "firing", started, targets)
            if touched is not None:
                touched.add(row["id"])
            return "fired"
        severity_changed = current["severity"] != verdict.severity.value
        row = await conn.fetchrow(
            """UPDATE alerts SET severity = $2, summary = $3, details = $4::jsonb, updated_at = $5
               WHERE id = $1 RETURNING *""",
            current["id"],
            verdict.severity.value,
            verdict.summary,
            json.dumps(verdict.details, default=str),
            now,
        )
        if severity_changed and row is not None:
            await _event(conn, row, "updated", now, targets)
            if touched is not None:
                touched.add(row["id"])
            return "updated"
        return None
    if verdict.decision == Decision.resolve and current is not None:
        ended = min(verdict.at, now) if verdict.at is not None else now
        ended = max(ended, current["started_at"])
        row = await conn.fetchrow(
            """UPDATE alerts SET status = 'resolved', resolved_at = $2, updated_at = $3,
                                 resolve_detected_at = $3
               WHERE id = $1 RETURNING *""",
            current["id"],
            ended,
            now,
        )
        assert row is not None
        await _event(conn, row, "resolved", ended, targets)
        if touched is not None:
            touched.add(row["id"])
        return "resolved"
    return None


async def acknowledge(
    conn: asyncpg.Connection,
    alert_id: int,
    by: str,
    now: datetime,
    *,
    comment: str | None = None,
    targets: Targets | None = None,
) -> asyncpg.Record | None:
    """Acknowledge an alert, by whom and with an optional comment (idempotent: a second
    acknowledgement changes nothing, its comment included)."""
    async with conn.transaction():
        row = await conn.fetchrow("SELECT * FROM alerts WHERE id = $1 FOR UPDATE", alert_id)
        if row is None:
            return None
        if row["acknowledged_at"] is not None:
            return row
        row = await conn.fetchrow(
            """UPDATE alerts SET acknowledged_by = $2, acknowledged_at = $3, updated_at = $3,
                                 ack_comment = $4
               WHERE id = $1 RETURNING *""",
            alert_id,
            by,
            now,
            comment,
        )
        assert row is not None
        await _event(conn, row, "acknowledged", now, targets)
        return row


async def firing(conn: asyncpg.Connection, rule: str | None = None) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(
        "SELECT * FROM alerts WHERE status = 'firing' AND ($1::text IS NULL OR rule = $1)", rule
    )
    return {r["fingerprint"]: r for r in rows}
