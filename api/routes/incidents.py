"""Incidents: alerts that share a cause, grouped, with the timeline of their events.

Scope as for alerts: a partner sees an incident only if it may see one of its alerts, and
then only those alerts (the incident's status, times, severity and summary are worked out
from them, so nothing of the rest shows through).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, Query

from api.deps import ALL_ROLES, Caller, State, allow, not_found
from api.params import Cursor, Limit, int_cursor, since
from api.schemas import IncidentDetail, IncidentPage, Problem
from api.scope import Scope
from rules import lifecycle

router = APIRouter(
    prefix="/api/v1",
    tags=["alerts"],
    responses={401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem}},
)

IncidentReader = Annotated[Caller, Depends(allow(*ALL_ROLES))]

# The incidents with an alert the caller may see, their status and start from those alerts.
_LIST = """
    SELECT incident_id FROM alerts a
    WHERE incident_id IS NOT NULL
      AND ($1::boolean
           OR (a.subject_kind = 'exchange' AND a.subject = ANY($2::text[]))
           OR (a.subject_kind = 'meter' AND a.subject = ANY($3::text[]))
           OR (a.subject_kind = 'partner' AND a.subject = ANY($4::text[])))
      AND ($7::bigint IS NULL OR incident_id < $7)
    GROUP BY incident_id
    HAVING ($5::text IS NULL OR bool_or(a.status = 'firing') = ($5::text = 'open'))
       AND ($6::timestamptz IS NULL OR min(a.started_at) >= $6)
    ORDER BY incident_id DESC LIMIT $8
"""


def _visibility(scope: Scope) -> tuple[bool, list[str], list[str], list[str]]:
    if scope.everything:
        return True, [], [], []
    return False, sorted(scope.exchanges), sorted(scope.meters), sorted(scope.partners)


def _incident(scope: Scope, row: asyncpg.Record, alerts: list[asyncpg.Record]) -> dict[str, Any]:
    """One incident as ``caller`` may see it, from the alerts it may see (oldest first)."""
    firing = any(a["status"] == "firing" for a in alerts)
    subject, kind = row["subject"], row["subject_kind"]
    if not scope.sees_alert(subject, kind):
        subject, kind = alerts[0]["subject"], alerts[0]["subject_kind"]
    by_subject: dict[tuple[str, str], list[str]] = {}
    for a in alerts:
        rules = by_subject.setdefault((a["subject_kind"], a["subject"]), [])
        if a["rule"] not in rules:
            rules.append(a["rule"])
    summary = "; ".join(f"{k} {s}: {', '.join(r)}" for (k, s), r in by_subject.items())
    return {
        "id": row["id"],
        "subject": subject,
        "subject_kind": kind,
        "status": "open" if firing else "resolved",
        "severity": "critical" if any(a["severity"] == "critical" for a in alerts) else "warning",
        "started_at": min(a["started_at"] for a in alerts),
        "resolved_at": None if firing else max(a["resolved_at"] or a["started_at"] for a in alerts),
        "summary": scope.redact(summary),
        "rules": sorted({a["rule"] for a in alerts}),
        "alert_ids": [a["id"] for a in alerts],
    }


async def _alerts_of(
    state: State, scope: Scope, incident_ids: list[int]
) -> dict[int, list[asyncpg.Record]]:
    rows = await state.pool.fetch(
        "SELECT * FROM alerts WHERE incident_id = ANY($1::bigint[]) ORDER BY started_at, id",
        incident_ids,
    )
    out: dict[int, list[asyncpg.Record]] = {}
    for r in rows:
        if scope.sees_alert(r["subject"], r["subject_kind"]):
            out.setdefault(r["incident_id"], []).append(r)
    return out


@router.get("/incidents", response_model=IncidentPage)
async def incidents(
    state: State,
    caller: IncidentReader,
    status: Literal["open", "resolved"] | None = None,
    since_: Annotated[datetime | None, Query(alias="since", description="started at or after")] = (
        None
    ),
    limit: Limit = 100,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Incidents, newest first: alerts that share a cause (an exchange's imbalance and drift
    and the alerts on its meters, close in time) grouped, each with its alerts' ids."""
    scope = caller.scope
    everything, exchanges, meters, partners = _visibility(scope)
    found = await state.pool.fetch(
        _LIST,
        everything,
        exchanges,
        meters,
        partners,
        status,
        since(since_),
        int_cursor(cursor),
        limit + 1,
    )
    ids = [r["incident_id"] for r in found]
    more = len(ids) > limit
    ids = ids[:limit]
    rows = {
        r["id"]: r
        for r in await state.pool.fetch("SELECT * FROM incidents WHERE id = ANY($1::bigint[])", ids)
    }
    alerts = await _alerts_of(state, scope, ids)
    items = [_incident(scope, rows[i], alerts[i]) for i in ids if i in rows and alerts.get(i)]
    return {"items": items, "next_cursor": str(ids[-1]) if more else None}


@router.get("/incidents/{incident_id}", response_model=IncidentDetail)
async def incident(incident_id: int, state: State, caller: IncidentReader) -> dict[str, Any]:
    """One incident: its alerts and the timeline of their firing, resolve, acknowledge and
    severity events, in order."""
    if not 1 <= incident_id < 2**63:
        raise not_found("incident", str(incident_id))
    scope = caller.scope
    row = await state.pool.fetchrow("SELECT * FROM incidents WHERE id = $1", incident_id)
    alerts = (await _alerts_of(state, scope, [incident_id])).get(incident_id) if row else None
    if row is None or not alerts:
        raise not_found("incident", str(incident_id))
    by_id = {a["id"]: a for a in alerts}
    events = await state.pool.fetch(
        """SELECT id, alert_id, kind, at, payload FROM alert_events
           WHERE alert_id = ANY($1::bigint[]) ORDER BY at, id""",
        list(by_id),
    )
    timeline = []
    for e in events:
        payload = e["payload"]
        if isinstance(payload, str):
            payload = json.loads(payload)
        then = payload.get("alert") or {}
        alert = by_id[e["alert_id"]]
        timeline.append(
            {
                "at": e["at"],
                "event": e["kind"],
                "alert_id": e["alert_id"],
                "rule": alert["rule"],
                "subject": alert["subject"],
                "severity": then.get("severity") or alert["severity"],
                "summary": scope.redact(then.get("summary") or alert["summary"]),
                "by": then.get("acknowledged_by") if e["kind"] == "acknowledged" else None,
                "comment": (
                    scope.redact(then.get("ack_comment")) if e["kind"] == "acknowledged" else None
                ),
            }
        )
    return {
        **_incident(scope, row, alerts),
        "alerts": [scope.redact_alert(lifecycle.alert_view(a)) for a in alerts],
        "timeline": timeline,
    }
