"""Alertmanager forgets a firing alert once its ``endsAt`` passes, so firing alerts must be
re-sent periodically (as Prometheus does): ``resend_firing_to_alertmanager`` posts every firing
alert with ``endsAt = now + 4 × alertmanager_resend_s``; ``Notifier.run`` calls it every
``alertmanager_resend_s``.  Those re-sends are state refreshes, not events: they do not go
through the outbox and are not recorded.  An alert a silence mutes is left out of them (and so
ends in Alertmanager at its ``endsAt`` if Alertmanager knew it): a silence holds back everything
symbiont would send of the alert.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson

from core.settings import Settings
from notify import silences
from notify.outbox import ALERT_FIELDS, alert_state, post_json, rfc3339

AM_RESEND_TTL_FACTOR = 4  # endsAt = now + 4 × the resend interval, as Prometheus does
AM_CHUNK = 500  # alerts per POST when re-sending
SEVERITIES = frozenset({"warning", "critical"})


def _describe(details: Mapping[str, Any]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    return ", ".join(f"{key}={fmt(value)}" for key, value in details.items())


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def alertmanager_alert(
    alert: Mapping[str, Any], *, now: datetime, ttl: timedelta
) -> dict[str, Any]:
    """One alert in Alertmanager's ``POST /api/v2/alerts`` form, from an ``alert_state``.

    Labels identify it (``alertname`` = rule, ``exchange``/``meter``/``partner`` = subject,
    ``severity``, ``symbiont_fingerprint``); a resolved alert ends at ``resolved_at``, a firing
    one at ``now + ttl`` (Alertmanager resolves it then unless it is re-sent).
    """
    kind = str(alert["subject_kind"])
    labels = {
        "alertname": str(alert["rule"]),
        kind: str(alert["subject"]),
        "severity": str(alert["severity"]),
        "symbiont_fingerprint": str(alert["fingerprint"]),
    }
    annotations = {"summary": str(alert.get("summary") or "")}
    details = alert.get("details") or {}
    if isinstance(details, Mapping) and details:
        annotations["description"] = _describe(details)
    if alert.get("acknowledged_by"):
        annotations["acknowledged_by"] = str(alert["acknowledged_by"])
        if alert.get("acknowledged_at"):
            annotations["acknowledged_at"] = rfc3339(_parse_time(alert["acknowledged_at"]) or now)
        if alert.get("ack_comment"):
            annotations["ack_comment"] = str(alert["ack_comment"])
    starts = _parse_time(alert.get("started_at")) or now
    if alert.get("status") == "resolved":
        ends = _parse_time(alert.get("resolved_at")) or now
    else:
        ends = now + ttl
    ends = max(ends, starts)
    return {
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339(starts),
        "endsAt": rfc3339(ends),
    }


def alertmanager_body(
    alert: Mapping[str, Any], *, now: datetime, ttl: timedelta
) -> list[dict[str, Any]]:
    """The ``POST /api/v2/alerts`` body for one alert event.

    Severity is a label, so a firing alert whose severity changed would leave its old
    label set firing in Alertmanager until that one's ``endsAt``.  A firing alert is therefore
    sent together with its twin at the other severity, resolved now: harmless if that twin
    never existed (Alertmanager notifies nobody of an alert that was never firing).
    """
    current = alertmanager_alert(alert, now=now, ttl=ttl)
    body = [current]
    severity = str(alert["severity"])
    if alert.get("status") != "resolved" and severity in SEVERITIES:
        (other,) = SEVERITIES - {severity}
        twin = {**current, "labels": {**current["labels"], "severity": other}}
        twin["endsAt"] = max(rfc3339(now), current["startsAt"])
        body.append(twin)
    return body


def alertmanager_ttl(settings: Settings) -> timedelta:
    return timedelta(seconds=AM_RESEND_TTL_FACTOR * settings.alertmanager_resend_s)


class DeliveryError(RuntimeError):
    """A delivery outside the outbox (the Alertmanager refresh) did not succeed."""


async def resend_firing_to_alertmanager(
    conn: asyncpg.Connection,
    settings: Settings,
    *,
    client: httpx.AsyncClient | None = None,
) -> int:
    """Post every firing alert to Alertmanager again so it does not expire them; returns how
    many.  Call it every ``alertmanager_resend_s`` (``Notifier.run`` does).  Idempotent, so
    several workers may do it; not an event, so not recorded.  ``DeliveryError`` on failure."""
    base = settings.alertmanager_url
    if not base:
        return 0
    rows = await conn.fetch(
        f"SELECT {', '.join(ALERT_FIELDS)} FROM alerts WHERE status = 'firing' ORDER BY id"
    )
    now = datetime.now(UTC)
    muted = await silences.silenced_by(conn, rows, now)
    rows = [row for row, silence in zip(rows, muted, strict=True) if silence is None]
    if not rows:
        return 0
    ttl = alertmanager_ttl(settings)
    alerts = [alertmanager_alert(alert_state(row), now=now, ttl=ttl) for row in rows]
    owned = client is None
    http = client or httpx.AsyncClient(timeout=settings.notify_timeout_s)
    try:
        for start in range(0, len(alerts), AM_CHUNK):
            body = orjson.dumps(alerts[start : start + AM_CHUNK])
            outcome = await post_json(http, f"{base}/api/v2/alerts", body, {})
            if not outcome.ok:
                raise DeliveryError(f"re-sending firing alerts to {base}: {outcome.error}")
    finally:
        if owned:
            await http.aclose()
    return len(alerts)
