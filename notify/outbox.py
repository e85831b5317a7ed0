"""The transactional outbox: what producers enqueue for integrations, and what a delivery
attempt gives.

Producers call ``enqueue`` (or ``enqueue_alert_event``) inside the transaction that records the
event, so an event is announced if and only if it happened, and once per (event, channel,
target) thanks to the outbox's unique key.  ``Notifier`` workers
(:mod:`notify.worker`) then deliver them.

An attempt's :class:`Outcome` says whether a failure is worth retrying (connection errors,
timeouts, HTTP 408/429/5xx, MQTT quota): those are retried with exponential backoff and
jitter (:func:`backoff_delay`); anything else fails at once.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import orjson

from core.settings import Settings

log = logging.getLogger("symbiont.notify")

LISTEN_CHANNEL = "symbiont_outbox"
USER_AGENT = "symbiont-notify/0.1"
DEFAULT_MAX_AGE = timedelta(hours=24)
ALERT_TOPIC = "symbiont/alerts/{subject}"


class Channel(StrEnum):
    webhook = "webhook"  # target: the URL
    alertmanager = "alertmanager"  # target: the base URL (…/api/v2/alerts is appended)
    mqtt = "mqtt"  # target: the topic
    mail = "mail"  # target: one recipient address (statements only; needs smtp_url)


class AlertEvent(StrEnum):
    firing = "firing"
    resolved = "resolved"
    acknowledged = "acknowledged"
    updated = "updated"  # severity changed while firing


ALERT_FIELDS = (
    "id",
    "fingerprint",
    "rule",
    "subject",
    "subject_kind",
    "severity",
    "status",
    "acknowledged_by",
    "acknowledged_at",
    "ack_comment",
    "started_at",
    "resolved_at",
    "summary",
    "details",
)


# ------------------------------------------------------------------------------ payloads


def rfc3339(value: datetime) -> str:
    """UTC with microseconds and a ``Z`` (fixed width, so strings sort like the times); a
    naive datetime is taken to be UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _field(alert: Mapping[str, Any], name: str) -> Any:
    try:
        return alert[name]
    except KeyError:
        return None


def alert_state(alert: Mapping[str, Any]) -> dict[str, Any]:
    """The alert's fields as JSON-ready values (an ``alerts`` row, asyncpg record or dict)."""
    state: dict[str, Any] = {}
    for name in ALERT_FIELDS:
        value = _field(alert, name)
        if isinstance(value, datetime):
            value = rfc3339(value)
        elif name == "details":
            if isinstance(value, str | bytes):
                value = orjson.loads(value)
            value = dict(value or {})
        state[name] = value
    return state


def alert_event_payload(
    event: AlertEvent | str, alert: Mapping[str, Any], *, at: datetime
) -> dict[str, Any]:
    """``{"event", "alert": {...current state...}, "at"}``: the body every integration gets."""
    return {"event": str(AlertEvent(event)), "alert": alert_state(alert), "at": rfc3339(at)}


def alert_targets(settings: Settings, alert: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Where an event of ``alert`` goes: every configured integration."""
    targets: list[tuple[str, str]] = [(Channel.webhook, url) for url in settings.alert_webhooks]
    if settings.alertmanager_url:
        targets.append((Channel.alertmanager, settings.alertmanager_url))
    if settings.alert_mqtt and settings.mqtt_url:
        targets.append((Channel.mqtt, ALERT_TOPIC.format(subject=_field(alert, "subject"))))
    return targets


async def enqueue(
    conn: asyncpg.Connection,
    *,
    event_key: str,
    payload: Mapping[str, Any],
    deliveries: Iterable[tuple[str, str]],
    max_age: timedelta = DEFAULT_MAX_AGE,
) -> int:
    """Add outbox rows for one event in the caller's transaction; returns how many were new.

    ``event_key`` identifies the event (e.g. ``alert-event:<alert_events.id>``): enqueueing it
    again for the same channel and target does nothing.  Workers are woken by a NOTIFY that
    PostgreSQL sends on commit.
    """
    pairs = list(dict.fromkeys((str(channel), target) for channel, target in deliveries))
    if not pairs:
        return 0
    rows = await conn.fetch(
        """
        INSERT INTO outbox (event_key, channel, target, payload, expires_at)
        SELECT $1, d.channel, d.target, $2::jsonb, now() + $5::interval
        FROM unnest($3::text[], $4::text[]) AS d (channel, target)
        ON CONFLICT (event_key, channel, target) DO NOTHING
        RETURNING id
        """,
        event_key,
        orjson.dumps(payload).decode(),
        [channel for channel, _ in pairs],
        [target for _, target in pairs],
        max_age,
    )
    if rows:
        await conn.execute("SELECT pg_notify($1, '')", LISTEN_CHANNEL)
    return len(rows)


async def enqueue_alert_event(
    conn: asyncpg.Connection,
    settings: Settings,
    *,
    event_key: str,
    event: AlertEvent | str,
    alert: Mapping[str, Any],
    at: datetime,
) -> int:
    """``enqueue`` one alert event to every integration ``alert_targets`` names."""
    return await enqueue(
        conn,
        event_key=event_key,
        payload=alert_event_payload(event, alert, at=at),
        deliveries=alert_targets(settings, alert),
        max_age=timedelta(hours=settings.notify_max_age_h),
    )


# ----------------------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to, and whether trying again could help."""

    ok: bool
    retryable: bool = False
    status_code: int | None = None
    error: str | None = None
    retry_after_s: float | None = None

    @classmethod
    def success(cls, status_code: int | None = None) -> Outcome:
        return cls(ok=True, status_code=status_code)

    @classmethod
    def retry(
        cls, error: str, status_code: int | None = None, retry_after_s: float | None = None
    ) -> Outcome:
        return cls(False, True, status_code, error, retry_after_s)

    @classmethod
    def fail(cls, error: str, status_code: int | None = None) -> Outcome:
        return cls(False, False, status_code, error)


@dataclass(frozen=True)
class OutboxRow:
    id: int
    event_key: str
    channel: str
    target: str
    payload: dict[str, Any]
    attempts: int  # before this attempt
    created_at: datetime
    expires_at: datetime


Sender = Callable[[OutboxRow], Awaitable[Outcome]]

RETRYABLE_HTTP = frozenset({408, 425, 429})


def backoff_delay(
    attempt: int,
    *,
    base_s: float,
    cap_s: float,
    retry_after_s: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    Exponential with "equal jitter" (between half and all of ``base × 2^(attempt−1)``, capped)
    so workers that failed together do not retry together, and never sooner than a
    ``Retry-After`` the receiver asked for (itself capped).
    """
    ceiling = min(cap_s, base_s * 2.0 ** min(attempt - 1, 62))
    delay = ceiling / 2 + rng() * ceiling / 2
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, cap_s))
    return delay


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError, IndexError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return None


def classify_response(response: httpx.Response) -> Outcome:
    """2xx delivered; 408, 425, 429 and 5xx worth retrying; any other status is final."""
    code = response.status_code
    if 200 <= code < 300:
        return Outcome.success(code)
    text = " ".join(response.text[:300].split())
    error = f"HTTP {code} {response.reason_phrase}" + (f": {text}" if text else "")
    if code in RETRYABLE_HTTP or code >= 500:
        return Outcome.retry(error, code, _retry_after(response.headers.get("retry-after")))
    return Outcome.fail(error, code)


def _http_target_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"invalid target: not an http(s) URL: {url!r}"
    return None


async def post_json(
    client: httpx.AsyncClient, url: str, body: bytes, headers: Mapping[str, str]
) -> Outcome:
    try:
        response = await client.post(
            url, content=body, headers={"content-type": "application/json", **headers}
        )
    except httpx.UnsupportedProtocol as exc:
        return Outcome.fail(f"invalid target {url!r}: {exc}")
    except httpx.InvalidURL as exc:
        return Outcome.fail(f"invalid target {url!r}: {exc}")
    except httpx.TimeoutException as exc:
        return Outcome.retry(f"timeout ({type(exc).__name__}) posting to {url}")
    except httpx.TransportError as exc:
        return Outcome.retry(f"{type(exc).__name__} posting to {url}: {exc}")
    return classify_response(response)


# ------------------------------------------------------------------------- alertmanager

# ---------------------------------------------------------------------------------- mqtt

# ---------------------------------------------------------------------------------- mail

# ------------------------------------------------------------------------------ notifier
