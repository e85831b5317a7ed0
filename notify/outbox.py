"""Deliver alert and statement events to integrations through the transactional outbox.

Producers call ``enqueue`` (or ``enqueue_alert_event``) inside the transaction that records the
event, so an event is announced if and only if it happened, and once per (event, channel,
target) thanks to the outbox's unique key.  ``Notifier`` workers then deliver:

- claim due rows with ``FOR UPDATE SKIP LOCKED`` (several workers can run side by side),
  attempt them concurrently, write one ``deliveries`` row per attempt and the row's new state,
  and commit, all in the claiming transaction.  A row is locked from claim to commit, so once
  a success is committed nobody sends it again.  The only duplicate left is inherent to
  at-least-once delivery: a crash between a receiver's 2xx and our commit re-sends the event,
  with the same ``webhook-id`` so receivers can drop it.
- per (channel, target, alert fingerprint) — per (channel, topic) for MQTT — events go out in
  the order they were enqueued: a row waits while an earlier one is still pending, so a late
  retry of ``firing`` can never overwrite a ``resolved`` in Alertmanager or a retained topic.
- each notifier says whether a failure is worth retrying (connection errors, timeouts, HTTP
  408/429/5xx, MQTT quota): those are retried with exponential backoff and jitter
  (``notify_backoff_base_s`` × 2^(attempt−1), capped at ``notify_backoff_cap_s``, at least
  what a ``Retry-After`` asks) until the row's ``expires_at`` (``notify_max_age_h`` after
  enqueueing), with a last attempt at the deadline; then the row is ``failed``.  Anything else
  (HTTP 4xx, a bad URL or topic, a broker that refuses the topic) fails at once.
- ``now`` can be passed in to make time move in tests; it drives claiming and scheduling only.
  What leaves the process (``webhook-timestamp``, Alertmanager ``endsAt``) uses the wall clock,
  since receivers compare it with theirs.

Issued statements (statements/issue.py) go out as a signed webhook, a retained MQTT notice and, when
SMTP is configured (``smtp_url``), a mail per recipient address with the PDF and CSV attached.
A mail row's payload names the statement; the sender reads the stored PDF and CSV at send
time, so the outbox stays small.  SMTP replies 4xx and connection trouble are retried, 5xx
fail at once; the ``Message-ID`` is derived from the outbox row, the same on every retry, so a
receiving system can drop the duplicate left by a crash between the server's 250 and our
commit.

Alertmanager forgets a firing alert once its ``endsAt`` passes, so firing alerts must be
re-sent periodically (as Prometheus does): ``resend_firing_to_alertmanager`` posts every firing
alert with ``endsAt = now + 4 × alertmanager_resend_s``; ``Notifier.run`` calls it every
``alertmanager_resend_s``.  Those re-sends are state refreshes, not events: they do not go
through the outbox and are not recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import logging
import random
import re
import secrets
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from email.message import EmailMessage
from enum import StrEnum
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import unquote, urlsplit

import asyncpg
import httpx
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from core.db import ConfigError, connect, create_pool, require_database_url
from core.settings import Settings
from core.windows import human_time
from ingest.service import mqtt_client as make_mqtt_client
from ingest.service import parse_mqtt_url
from notify import webhook

log = logging.getLogger("symbiont.notify")

LISTEN_CHANNEL = "symbiont_outbox"
USER_AGENT = "symbiont-notify/0.1"
DEFAULT_MAX_AGE = timedelta(hours=24)
ALERT_TOPIC = "symbiont/alerts/{subject}"
AM_RESEND_TTL_FACTOR = 4  # endsAt = now + 4 × the resend interval, as Prometheus does
AM_CHUNK = 500  # alerts per POST when re-sending
SEVERITIES = frozenset({"warning", "critical"})


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
    if not rows:
        return 0
    now = datetime.now(UTC)
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


# ---------------------------------------------------------------------------------- mqtt

# PUBACK reason codes a retry cannot fix: not authorized, topic name invalid, payload invalid.
_MQTT_FINAL_REASONS = frozenset({0x87, 0x90, 0x99})


class MqttPublisher:
    """One paho client, kept connected by paho's own thread; ``publish`` awaits the PUBACK.

    PUBACKs are matched to waiting publishes by message id.  An acknowledgement may arrive
    before the publisher registered its future (``_early``); one for a publish that gave up
    waiting (``_abandoned``) is dropped, so a reused message id is never matched to a stale
    acknowledgement.  The lock guards only these dicts, never a paho call.
    """

    def __init__(self, url: str, client_id: str) -> None:
        self.target = parse_mqtt_url(url)
        self.client_id = client_id
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._waiting: dict[int, asyncio.Future[ReasonCode]] = {}
        self._early: dict[int, ReasonCode] = {}
        self._abandoned: set[int] = set()
        self._connected = threading.Event()
        self._stopping = False

    @property
    def where(self) -> str:
        return f"mqtt://{self.target.host}:{self.target.port}"

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        client = make_mqtt_client(self.target, self.client_id)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.connect_async(self.target.host, self.target.port, keepalive=30)
        client.loop_start()
        self._client = client

    async def wait_connected(self, within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while not self._connected.is_set():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def close(self) -> None:
        self._stopping = True
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            log.error("MQTT broker %s refused the notifier: %s", self.where, reason)
            return
        self._connected.set()
        log.info("notifier connected to %s as %s", self.where, self.client_id)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._connected.clear()
        if not self._stopping:
            log.warning("notifier lost %s (%s); reconnecting", self.where, reason)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        with self._lock:
            if mid in self._abandoned:
                self._abandoned.discard(mid)
                return
            future = self._waiting.pop(mid, None)
            if future is None:
                self._early[mid] = reason
                return
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_resolve, future, reason)

    async def publish(
        self, topic: str, payload: bytes, *, retain: bool, ack_within_s: float
    ) -> Outcome:
        client = self._client
        if client is None or not self._connected.is_set():
            return Outcome.retry(f"not connected to the MQTT broker at {self.where}")
        try:
            info = client.publish(topic, payload, qos=1, retain=retain)
        except ValueError as exc:
            return Outcome.fail(f"invalid topic {topic!r}: {exc}")
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            if info.rc == mqtt.MQTT_ERR_NO_CONN:  # paho queued it for the next connection
                with self._lock:
                    self._abandoned.add(info.mid)
            return Outcome.retry(f"publish to {self.where} failed: {mqtt.error_string(info.rc)}")
        future: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        with self._lock:
            reason = self._early.pop(info.mid, None)
            if reason is None:
                self._waiting[info.mid] = future
        if reason is None:
            try:
                reason = await asyncio.wait_for(future, ack_within_s)
            except (TimeoutError, asyncio.CancelledError) as exc:
                with self._lock:
                    if self._waiting.pop(info.mid, None) is not None:
                        self._abandoned.add(info.mid)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return Outcome.retry(f"no PUBACK from {self.where} within {ack_within_s:g} s")
        if reason.is_failure:
            error = f"broker {self.where} refused {topic!r}: {reason}"
            if reason.value in _MQTT_FINAL_REASONS:
                return Outcome.fail(error)
            return Outcome.retry(error)
        return Outcome.success()


def _resolve(future: asyncio.Future[ReasonCode], reason: ReasonCode) -> None:
    if not future.done():
        future.set_result(reason)


def _topic_problem(topic: str) -> str | None:
    if not topic or "+" in topic or "#" in topic or "\0" in topic:
        return f"invalid target: not an MQTT topic name: {topic!r}"
    return None


# ---------------------------------------------------------------------------------- mail

SmtpSecurity = Literal["starttls-if-offered", "starttls", "tls"]
_SMTP_SECURITY: dict[str, tuple[SmtpSecurity, int]] = {
    "smtp": ("starttls-if-offered", 25),
    "smtp+starttls": ("starttls", 587),
    "smtps": ("tls", 465),
}
STATEMENT_SUBJECT = "Exchange statement {month} — {name}"


@dataclass(frozen=True)
class SmtpServer:
    """Where statement mail goes, from ``smtp_url`` (see core/settings.py for the forms)."""

    host: str
    port: int
    security: SmtpSecurity
    user: str | None = None
    password: str | None = None

    @property
    def where(self) -> str:  # never the credentials
        return f"{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_smtp_url(url: str) -> SmtpServer:
    """``smtp://``, ``smtp+starttls://`` or ``smtps://`` ``[user[:password]@]host[:port]``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in _SMTP_SECURITY or not parts.hostname:
        raise ValueError("expected smtp://, smtp+starttls:// or smtps://[user[:pass]@]host[:port]")
    security, default_port = _SMTP_SECURITY[parts.scheme]
    return SmtpServer(
        host=parts.hostname,
        port=parts.port or default_port,
        security=security,
        user=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def mail_sender(settings: Settings, server: SmtpServer) -> str:
    """The From: ``smtp_from``, else the SMTP user if it is an address, else
    ``symbiont@<this host's FQDN>``."""
    if settings.smtp_from:
        return settings.smtp_from
    if server.user and mail_address(server.user):
        return server.user
    return f"symbiont@{socket.getfqdn()}"


def mail_address(target: str) -> str | None:
    """The bare address of one recipient (``a@b.example`` or ``Name <a@b.example>``), or
    ``None`` if ``target`` is not exactly one plausible address."""
    if "\r" in target or "\n" in target:
        return None
    found = email.utils.getaddresses([target])
    if len(found) != 1:
        return None
    address = found[0][1]
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or any(c.isspace() for c in address):
        return None
    return address


def mail_message_id(row: OutboxRow, sender: str) -> str:
    """A ``Message-ID`` that is the same on every attempt of the outbox row."""
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "symbiont.invalid"
    key = re.sub(r"[^A-Za-z0-9._-]", "-", row.event_key)
    return f"<symbiont.outbox-{row.id}.{key}@{domain}>"


def _amount(value: Any) -> str:
    try:
        return f"{Decimal(str(value)):,.2f}"
    except (InvalidOperation, ValueError):
        return str(value)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def statement_mail(
    doc: Mapping[str, Any],
    *,
    csv: bytes,
    pdf: bytes,
    sender: str,
    recipient: str,
    message_id: str,
    date: datetime | None = None,
) -> EmailMessage:
    """The mail of one issued statement: totals and content hash in a plain-text body, the
    stored PDF and CSV attached as ``statement-<partner>-<month>.pdf|.csv``."""
    partner, month, currency = str(doc["partner"]), str(doc["month"]), str(doc["currency"])
    name = _one_line(doc.get("partner_name") or partner)
    totals = doc["totals"]
    period = doc.get("period") or {}
    rows = [
        ("Receivable", _amount(totals["receivable"]), currency),
        ("Payable", _amount(totals["payable"]), currency),
        ("Net amount", _amount(totals["net_amount"]), currency),
        ("Avoided cost", _amount(totals["avoided_cost"]), currency),
        ("Net savings", _amount(totals["net_savings"]), currency),
        ("CO2 avoided", str(totals["co2_avoided_t"]), "t"),
    ]
    width = max(len(value) for _, value, _ in rows)
    zone = str(doc.get("timezone") or "") or None

    def when(ts: Any) -> str:  # as the PDF shows it: the network's time and UTC offset
        return human_time(ts, zone) if isinstance(ts, str) and ts else ""

    revision = int(doc.get("revision") or 1)
    issue: list[str] = []
    if doc.get("document_number"):
        issue.append(f"Document number: {doc['document_number']}")
    if revision > 1:
        replaced = doc.get("supersedes") or {}
        issue.append(
            f"Revision {revision}, replacing revision {replaced.get('revision', revision - 1)}"
            + (f" ({replaced['document_number']})" if replaced.get("document_number") else "")
            + f" whose content hash was {doc.get('previous_hash')}"
        )
        issue.append(f"Reason for the revision: {_one_line(doc.get('revision_reason') or '')}")
    if doc.get("incomplete_reason"):
        issue.append(
            f"Issued with incomplete data: {_one_line(doc.get('incomplete_reason') or '')}"
        )
    body = [
        f"Exchange statement of {name} ({partner}) for {month}",
        *(
            [f"Document number: {_one_line(str(doc['document_number']))}"]
            if doc.get("document_number")
            else []
        ),
        f"Network: {_one_line(doc.get('network_name') or doc.get('network') or '')}",
        f"Period: {when(period.get('start'))} to {when(period.get('end'))} ({zone})",
        f"Issued: {when(doc.get('issued_at'))}",
        *issue,
        "",
        *(f"  {label + ':':<14}{value:>{width}} {unit}" for label, value, unit in rows),
        "",
        f"Exchanges: {len(doc.get('lines') or [])}; "
        f"adjustments to earlier months: {len(doc.get('adjustments') or [])}",
        f"Content hash (SHA-256 of the JSON document): {doc['content_hash']}",
        "",
        "The statement is attached as PDF and CSV. This message was sent automatically;",
        "an issued statement never changes, later corrections appear as adjustments on the",
        "next one.",
    ]
    message = EmailMessage()
    message["Subject"] = STATEMENT_SUBJECT.format(month=month, name=name) + (
        f" (revision {revision})" if revision > 1 else ""
    )
    message["From"] = sender
    message["To"] = recipient
    message["Date"] = email.utils.format_datetime(date or datetime.now(UTC))
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = "auto-generated"
    message["X-Symbiont-Statement"] = f"{partner} {month}" + (
        f" revision {revision}" if revision > 1 else ""
    )
    message.set_content("\n".join(body) + "\n")
    stem = f"statement-{partner}-{month}" + (f"-r{revision}" if revision > 1 else "")
    message.add_attachment(pdf, maintype="application", subtype="pdf", filename=f"{stem}.pdf")
    message.add_attachment(
        csv, maintype="text", subtype="csv", filename=f"{stem}.csv", params={"charset": "utf-8"}
    )
    return message


def _smtp_reply(code: int, message: bytes | str, what: str) -> Outcome:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    error = f"{what}: {code} {_one_line(text)[:300]}".rstrip()
    if 400 <= code < 500:
        return Outcome.retry(error, code)
    if 500 <= code < 600:
        return Outcome.fail(error, code)
    return Outcome.retry(error, code if code > 0 else None)


def classify_smtp_error(exc: BaseException, where: str) -> Outcome:
    """4xx replies, lost or refused connections and timeouts are worth retrying; 5xx replies,
    a server that lacks what we require (STARTTLS, AUTH) and a certificate that does not
    verify are final."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = list(exc.recipients.items())
        if not refused:
            return Outcome.retry(f"{where} refused the recipients")
        code = min(code for _, (code, _) in refused)  # a 4xx among them: worth retrying
        detail = "; ".join(
            f"{rcpt}: {c} {m.decode('utf-8', 'replace') if isinstance(m, bytes) else m}"
            for rcpt, (c, m) in refused
        )
        return _smtp_reply(code, detail, f"{where} refused the recipient")
    if isinstance(exc, smtplib.SMTPResponseException):
        return _smtp_reply(exc.smtp_code, exc.smtp_error, f"{where} ({type(exc).__name__})")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        if isinstance(exc.__context__, TimeoutError):  # smtplib's wording for a timeout
            return Outcome.retry(f"timeout waiting for {where}: {exc.__context__}")
        return Outcome.retry(f"lost the connection to {where}: {exc}")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return Outcome.fail(f"{where}: {exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Outcome.fail(f"{where}: TLS certificate does not verify: {exc.verify_message}")
    if isinstance(exc, TimeoutError):
        return Outcome.retry(f"timeout talking to {where}")
    if isinstance(exc, OSError):
        return Outcome.retry(f"{type(exc).__name__} talking to {where}: {exc}")
    if isinstance(exc, smtplib.SMTPException):  # e.g. no AUTH method in common
        return Outcome.fail(f"{where}: {exc}")
    raise exc


def _smtp_send(
    server: SmtpServer,
    message: EmailMessage,
    sender: str,
    recipients: list[str],
    timeout_s: float,
) -> None:
    """Blocking: connect, secure, authenticate, send; raises what smtplib raises.

    ``timeout_s`` bounds the whole exchange, not each step, so the thread is done before the
    notifier's guard gives up on the attempt (a thread still sending after the attempt was
    recorded as failed would make the retry a duplicate)."""
    deadline = time.monotonic() + timeout_s
    context = ssl.create_default_context()
    client: smtplib.SMTP
    if server.security == "tls":
        client = smtplib.SMTP_SSL(server.host, server.port, timeout=timeout_s, context=context)
    else:
        client = smtplib.SMTP(server.host, server.port, timeout=timeout_s)

    def budget() -> None:  # what is left of timeout_s, for the next step
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer from {server.where} within {timeout_s:g} s")
        if client.sock is not None:
            client.sock.settimeout(left)

    try:
        budget()
        client.ehlo()
        secure = server.security == "tls"
        if not secure and (server.security == "starttls" or client.has_extn("starttls")):
            if not client.has_extn("starttls"):
                raise smtplib.SMTPNotSupportedError("the server does not offer STARTTLS")
            client.starttls(context=context)
            budget()
            client.ehlo()
            secure = True
        if server.user:
            if not secure and not server.loopback:
                raise smtplib.SMTPNotSupportedError(
                    "refusing to send SMTP credentials unencrypted: the server offers no"
                    " STARTTLS (use smtps:// or a server that does)"
                )
            budget()
            client.login(server.user, server.password or "")
        budget()
        client.send_message(message, from_addr=sender, to_addrs=recipients)
        # Sent: whatever QUIT says changes nothing (an error now must not cause a resend), and
        # waiting for it must not outlast the attempt.
        with contextlib.suppress(smtplib.SMTPException, OSError):
            if client.sock is not None:
                client.sock.settimeout(0.5)
            client.quit()
    finally:
        client.close()


async def send_mail(
    server: SmtpServer,
    message: EmailMessage,
    *,
    sender: str,
    recipients: list[str],
    timeout_s: float,
) -> Outcome:
    """Send ``message`` through ``server`` (smtplib in a worker thread; ``timeout_s`` per
    network operation) and classify what happened."""
    try:
        await asyncio.to_thread(_smtp_send, server, message, sender, recipients, timeout_s)
    except (smtplib.SMTPException, OSError) as exc:
        return classify_smtp_error(exc, server.where)
    return Outcome.success(250)


# ------------------------------------------------------------------------------ notifier

CLAIM = """
SELECT o.id, o.event_key, o.channel, o.target, o.payload::text AS payload, o.attempts,
       o.created_at, o.expires_at, coalesce($1::timestamptz, statement_timestamp()) AS now
FROM outbox o
WHERE o.status = 'pending'
  AND o.next_attempt_at <= coalesce($1::timestamptz, statement_timestamp())
  AND o.channel = ANY($2::text[])
  AND NOT (o.id = ANY($3::bigint[]))
  AND NOT EXISTS (
      SELECT 1 FROM outbox p
      WHERE p.status = 'pending' AND p.id < o.id
        AND p.channel = o.channel AND p.target = o.target
        AND (o.channel = 'mqtt'
             OR p.payload #>> '{alert,fingerprint}' = o.payload #>> '{alert,fingerprint}'))
ORDER BY o.next_attempt_at, o.id
LIMIT $4
FOR UPDATE OF o SKIP LOCKED
"""

RECORD_ATTEMPT = """
INSERT INTO deliveries (outbox_id, attempt, at, ok, retryable, status_code, error, duration_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""


class Notifier:
    """Delivers the outbox.  ``async with Notifier(settings) as n: await n.deliver_due()``,
    or ``await Notifier(settings).run(stop)`` as a service."""

    def __init__(
        self,
        settings: Settings,
        *,
        name: str = "symbiont-notify",
        senders: Mapping[str, Sender] | None = None,
    ) -> None:
        require_database_url(settings.database_url)
        self.settings = settings
        self.name = name
        self.key: bytes | None = None
        if settings.webhook_secret:
            try:
                self.key = webhook.secret_key(settings.webhook_secret)
            except webhook.InvalidSecret as exc:
                raise ConfigError(f"SYMBIONT_WEBHOOK_SECRET: {exc}") from None
        self.smtp: SmtpServer | None = None
        self.mail_from = ""
        if settings.smtp_url:
            try:
                self.smtp = parse_smtp_url(settings.smtp_url)
            except ValueError as exc:
                raise ConfigError(f"SYMBIONT_SMTP_URL: {exc}") from None
            self.mail_from = mail_sender(settings, self.smtp)
        self.senders: dict[str, Sender] = {
            Channel.webhook: self._send_webhook,
            Channel.alertmanager: self._send_alertmanager,
            Channel.mqtt: self._send_mqtt,
        }
        if self.smtp is not None:
            self.senders[Channel.mail] = self._send_mail
        self.senders.update(senders or {})
        self.pool: asyncpg.Pool | None = None
        self.http: httpx.AsyncClient | None = None
        self.mqtt: MqttPublisher | None = None
        self.attempted = 0  # attempts made by this instance, for logs and tests

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self.pool is not None:
            return
        self.pool = await create_pool(
            self.settings.database_url, application_name=self.name, max_size=3
        )
        self.http = httpx.AsyncClient(
            timeout=self.settings.notify_timeout_s,
            follow_redirects=False,
            headers={"user-agent": USER_AGENT},
        )
        if self.settings.mqtt_url:
            self.mqtt = MqttPublisher(self.settings.mqtt_url, f"{self.name}-{secrets.token_hex(4)}")
            self.mqtt.start()
        if self.key is None and self.settings.alert_webhooks:
            log.warning(
                "SYMBIONT_WEBHOOK_SECRET is not set: webhooks go out without webhook-signature"
                " and receivers cannot tell them from forgeries"
            )

    async def close(self) -> None:
        if self.mqtt is not None:
            self.mqtt.close()
            self.mqtt = None
        if self.http is not None:
            await self.http.aclose()
            self.http = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- one pass -------------------------------------------------------------------------

    async def deliver_due(self, now: datetime | None = None) -> int:
        """Attempt every row due at ``now`` (default: the database's clock) once; returns the
        number of attempts.  Rows that become due during the pass (the next event of an alert
        whose previous one was just delivered) are included."""
        if now is not None and now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        seen: list[int] = []
        total = 0
        while True:
            attempted = await self._deliver_batch(now, seen)
            if not attempted:
                return total
            total += attempted

    async def _deliver_batch(self, now: datetime | None, seen: list[int]) -> int:
        pool = self._require_pool()
        async with pool.acquire() as conn, conn.transaction():
            records = await conn.fetch(
                CLAIM, now, list(self.senders), seen, self.settings.notify_batch
            )
            if not records:
                return 0
            rows = [
                OutboxRow(
                    id=r["id"],
                    event_key=r["event_key"],
                    channel=r["channel"],
                    target=r["target"],
                    payload=orjson.loads(r["payload"]),
                    attempts=r["attempts"],
                    created_at=r["created_at"],
                    expires_at=r["expires_at"],
                )
                for r in records
            ]
            at: datetime = records[0]["now"]
            seen.extend(row.id for row in rows)
            self.attempted += len(rows)
            results = await asyncio.gather(*(self._attempt(row) for row in rows))
            for row, (outcome, duration_ms) in zip(rows, results, strict=True):
                await self._record(conn, row, outcome, duration_ms, at)
        return len(rows)

    async def _attempt(self, row: OutboxRow) -> tuple[Outcome, float]:
        sender = self.senders[row.channel]
        timeout = self.settings.notify_timeout_s
        started = time.monotonic()
        try:
            # A guard over the sender's own timeouts (which name what timed out).
            async with asyncio.timeout(timeout + 1.0):
                outcome = await sender(row)
        except TimeoutError:
            outcome = Outcome.retry(f"no answer from {row.target} within {timeout + 1.0:g} s")
        except Exception as exc:  # a bug must not stop the other deliveries
            log.exception("delivering outbox row %d to %s %s", row.id, row.channel, row.target)
            outcome = Outcome.retry(f"internal error: {type(exc).__name__}: {exc}")
        return outcome, (time.monotonic() - started) * 1000.0

    async def _record(
        self,
        conn: asyncpg.Connection,
        row: OutboxRow,
        outcome: Outcome,
        duration_ms: float,
        at: datetime,
    ) -> None:
        attempt = row.attempts + 1
        error = outcome.error[:2000] if outcome.error else None
        await conn.execute(
            RECORD_ATTEMPT,
            row.id,
            attempt,
            at,
            outcome.ok,
            outcome.retryable,
            outcome.status_code,
            error,
            duration_ms,
        )
        what = f"{row.channel} {row.target} event {row.event_key} attempt {attempt}"
        if outcome.ok:
            await conn.execute(
                "UPDATE outbox SET status = 'delivered', attempts = $2, delivered_at = $3,"
                " last_error = NULL WHERE id = $1",
                row.id,
                attempt,
                at,
            )
            log.log(logging.INFO if attempt > 1 else logging.DEBUG, "%s delivered", what)
            return
        if outcome.retryable and at < row.expires_at:
            delay = backoff_delay(
                attempt,
                base_s=self.settings.notify_backoff_base_s,
                cap_s=self.settings.notify_backoff_cap_s,
                retry_after_s=outcome.retry_after_s,
            )
            next_at = min(at + timedelta(seconds=delay), row.expires_at)
            await conn.execute(
                "UPDATE outbox SET attempts = $2, next_attempt_at = $3, last_error = $4"
                " WHERE id = $1",
                row.id,
                attempt,
                next_at,
                error,
            )
            log.warning("%s failed (%s); next attempt at %s", what, error, rfc3339(next_at))
            return
        if outcome.retryable:
            error = f"gave up after {attempt} attempts since {rfc3339(row.created_at)}: {error}"
        await conn.execute(
            "UPDATE outbox SET status = 'failed', attempts = $2, last_error = $3 WHERE id = $1",
            row.id,
            attempt,
            error,
        )
        log.error("%s failed for good: %s", what, error)

    def _require_pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise RuntimeError("Notifier.start() (or `async with`) first")
        return self.pool

    def _require_http(self) -> httpx.AsyncClient:
        if self.http is None:
            raise RuntimeError("Notifier.start() (or `async with`) first")
        return self.http

    # -- senders --------------------------------------------------------------------------

    async def _send_webhook(self, row: OutboxRow) -> Outcome:
        problem = _http_target_problem(row.target)
        if problem:
            return Outcome.fail(problem)
        body = orjson.dumps(row.payload)
        # The id is the outbox row's: the same on every retry, so receivers can deduplicate.
        headers = webhook.headers(self.key, f"msg_{row.id}", int(time.time()), body)
        return await post_json(self._require_http(), row.target, body, headers)

    async def _send_alertmanager(self, row: OutboxRow) -> Outcome:
        problem = _http_target_problem(row.target)
        if problem:
            return Outcome.fail(problem)
        alert = row.payload.get("alert")
        required = ("rule", "subject", "subject_kind", "severity", "fingerprint")
        if not isinstance(alert, dict) or any(not alert.get(key) for key in required):
            return Outcome.fail("not an alert event: Alertmanager takes alerts only")
        ttl = alertmanager_ttl(self.settings)
        body = orjson.dumps(alertmanager_body(alert, now=datetime.now(UTC), ttl=ttl))
        url = f"{row.target.rstrip('/')}/api/v2/alerts"
        return await post_json(self._require_http(), url, body, {})

    async def _send_mqtt(self, row: OutboxRow) -> Outcome:
        problem = _topic_problem(row.target)
        if problem:
            return Outcome.fail(problem)
        if self.mqtt is None:
            return Outcome.fail("no MQTT broker configured (SYMBIONT_MQTT_URL)")
        return await self.mqtt.publish(
            row.target,
            orjson.dumps(row.payload),
            retain=True,
            ack_within_s=self.settings.notify_timeout_s,
        )

    async def _send_mail(self, row: OutboxRow) -> Outcome:
        server = self.smtp
        if server is None:
            return Outcome.fail("no SMTP server configured (SYMBIONT_SMTP_URL)")
        recipient = mail_address(row.target)
        if recipient is None:
            return Outcome.fail(f"invalid target: not a mail address: {row.target!r}")
        statement_id = row.payload.get("statement_id")
        if not isinstance(statement_id, int) or isinstance(statement_id, bool):
            return Outcome.fail("not a statement event: mail carries statements only")
        async with self._require_pool().acquire() as conn:
            stored = await conn.fetchrow(
                "SELECT document, csv, pdf FROM statements WHERE id = $1", statement_id
            )
        if stored is None:
            return Outcome.fail(f"statement {statement_id} does not exist")
        message = statement_mail(
            orjson.loads(stored["document"]),
            csv=bytes(stored["csv"]),
            pdf=bytes(stored["pdf"]),
            sender=self.mail_from,
            recipient=row.target,
            message_id=mail_message_id(row, self.mail_from),
        )
        return await send_mail(
            server,
            message,
            sender=email.utils.parseaddr(self.mail_from)[1],
            recipients=[recipient],
            timeout_s=self.settings.notify_timeout_s,
        )

    # -- service --------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set: on every NOTIFY from ``enqueue`` and at least every
        ``notify_poll_s`` (retries come due without a NOTIFY); refresh Alertmanager every
        ``alertmanager_resend_s``.  A pass that fails (database down) is logged and retried."""
        started_here = self.pool is None
        while self.pool is None:
            try:
                await self.start()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("notifier cannot reach the database (%s); retrying in 5 s", exc)
                await _wait_any(stop, asyncio.Event(), 5.0)
                if stop.is_set():
                    return
        wake = asyncio.Event()
        listener: asyncpg.Connection | None = None
        next_refresh = time.monotonic()
        try:
            while not stop.is_set():
                listener = await self._listen(listener, wake)
                wake.clear()
                try:
                    await self.deliver_due()
                except Exception as exc:
                    log.warning("outbox pass failed (%s: %s); retrying", type(exc).__name__, exc)
                if self.settings.alertmanager_url and time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + self.settings.alertmanager_resend_s
                    await self._refresh_alertmanager()
                await _wait_any(stop, wake, self.settings.notify_poll_s)
        finally:
            if listener is not None:
                with contextlib.suppress(Exception):
                    await listener.close()
            if started_here:
                await self.close()

    async def _listen(
        self, listener: asyncpg.Connection | None, wake: asyncio.Event
    ) -> asyncpg.Connection | None:
        """A connection LISTENing for ``enqueue``'s NOTIFY (re-opened if it was lost); ``None``
        while the database is unreachable, polling covers that time."""
        if listener is not None and not listener.is_closed():
            return listener
        try:
            conn = await connect(self.settings.database_url, application_name=f"{self.name}-listen")
            await conn.add_listener(LISTEN_CHANNEL, lambda *_: wake.set())
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("cannot LISTEN %s (%s); polling only", LISTEN_CHANNEL, exc)
            return None
        return conn

    async def _refresh_alertmanager(self) -> None:
        try:
            async with self._require_pool().acquire() as conn:
                count = await resend_firing_to_alertmanager(
                    conn, self.settings, client=self._require_http()
                )
            log.debug("re-sent %d firing alerts to Alertmanager", count)
        except Exception as exc:
            log.warning("Alertmanager refresh failed (%s: %s)", type(exc).__name__, exc)


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, at_most_s: float) -> None:
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=at_most_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def run(settings: Settings) -> int:
    """``symbiont notify``-style entry point: deliver until SIGINT/SIGTERM."""
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Notifier(settings).run(stop)

    asyncio.run(main())
    return 0
