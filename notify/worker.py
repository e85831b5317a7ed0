"""``Notifier``: the workers that deliver what the outbox holds, through each channel
(webhooks, :mod:`notify.alertmanager`, :mod:`notify.mqtt`, :mod:`notify.mail`):

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
- an alert event that a silence mutes when it is claimed is not attempted: the row is held
  (``silenced``) and settled when no silence mutes its alert any more (:mod:`notify.silences`).
- a target that keeps failing is logged once, when it starts failing, and once when it
  delivers again (or when an event to it is given up): a partner's unreachable ERP endpoint
  retried for a day does not fill the log.  Every attempt is still a ``deliveries`` row.
- ``now`` can be passed in to make time move in tests; it drives claiming and scheduling only.
  What leaves the process (``webhook-timestamp``, Alertmanager ``endsAt``) uses the wall clock,
  since receivers compare it with theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

import asyncpg
import httpx
import orjson

from core.db import ConfigError, connect, create_pool, require_database_url
from core.settings import Settings
from ingest.service import mqtt_target
from notify import metrics, silences, webhook
from notify.alertmanager import alertmanager_body, alertmanager_ttl, resend_firing_to_alertmanager
from notify.mail import (
    SmtpServer,
    mail_address,
    mail_message_id,
    mail_sender,
    parse_smtp_url,
    send_mail,
    statement_mail,
)
from notify.mqtt import MqttPublisher, _topic_problem
from notify.outbox import (
    LISTEN_CHANNEL,
    USER_AGENT,
    Channel,
    OutboxRow,
    Outcome,
    Sender,
    _http_target_problem,
    backoff_delay,
    log,
    post_json,
    rfc3339,
)

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


@dataclass
class Trouble:
    """A target that is failing: since when, and the failed attempts since (this process's)."""

    since: datetime
    attempts: int = 1


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
        # (channel, target) -> its trouble, for targets whose last attempt failed
        self.failing: dict[tuple[str, str], Trouble] = {}

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
            self.mqtt = MqttPublisher(
                mqtt_target(self.settings), f"{self.name}-{secrets.token_hex(4)}"
            )
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
        await self._release(now)
        seen: list[int] = []
        total = 0
        while True:
            claimed, attempted = await self._deliver_batch(now, seen)
            if not claimed:
                return total
            total += attempted

    async def _release(self, now: datetime | None) -> None:
        """Let go what silences held back of alerts no silence mutes any more."""
        pool = self._require_pool()
        async with pool.acquire() as conn, conn.transaction():
            at: datetime = now or await conn.fetchval("SELECT statement_timestamp()")
            result = await silences.release(
                conn, at, timedelta(hours=self.settings.notify_max_age_h)
            )
        if result.released or result.suppressed:
            log.info(
                "silences lifted: %d held deliveries go out, %d are dropped",
                result.released,
                result.suppressed,
            )

    async def _deliver_batch(self, now: datetime | None, seen: list[int]) -> tuple[int, int]:
        """Claim a batch and attempt what no silence mutes: (rows claimed, attempts made)."""
        pool = self._require_pool()
        async with pool.acquire() as conn, conn.transaction():
            records = await conn.fetch(
                CLAIM, now, list(self.senders), seen, self.settings.notify_batch
            )
            if not records:
                return 0, 0
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
            held = await silences.hold(conn, rows, at)
            if held:
                log.info("%d deliveries held back by silences", len(held))
            due = [row for row in rows if row.id not in held]
            self.attempted += len(due)
            results = await asyncio.gather(*(self._attempt(row) for row in due))
            for row, (outcome, duration_ms) in zip(due, results, strict=True):
                await self._record(conn, row, outcome, duration_ms, at)
        return len(rows), len(due)

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
        target = (row.channel, row.target)
        if outcome.ok:
            await conn.execute(
                "UPDATE outbox SET status = 'delivered', attempts = $2, delivered_at = $3,"
                " last_error = NULL WHERE id = $1",
                row.id,
                attempt,
                at,
            )
            trouble = self.failing.pop(target, None)
            if trouble is not None:
                log.info(
                    "%s %s delivers again, after %d failed attempts since %s",
                    row.channel,
                    row.target,
                    trouble.attempts,
                    rfc3339(trouble.since),
                )
            log.debug("%s delivered", what)
            metrics.delivered(row.channel, "delivered")
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
            self._failed(target, at, f"{what} failed ({error}); next attempt at {rfc3339(next_at)}")
            metrics.delivered(row.channel, "retry")
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
        metrics.delivered(row.channel, "failed")

    def _failed(self, target: tuple[str, str], at: datetime, detail: str) -> None:
        """A retryable failure: logged when the target starts failing, not on every retry."""
        trouble = self.failing.get(target)
        if trouble is not None:
            trouble.attempts += 1
            log.debug("%s", detail)
            return
        self.failing[target] = Trouble(since=at)
        log.warning(
            "%s; retried with backoff for up to %g h. Further failures of %s %s are not logged"
            " until it delivers again (each attempt is a row in deliveries)",
            detail,
            self.settings.notify_max_age_h,
            *target,
        )

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
