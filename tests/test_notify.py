"""Outbox delivery against real receivers: an HTTP server of the test's own for
webhooks, the real Prometheus Alertmanager, the session's Mosquitto, a migrated PostgreSQL.

Signatures are checked with the ``standardwebhooks`` reference library, not with our code.
Time moves by passing ``now`` to ``deliver_due``: nothing sleeps through a backoff.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from services import Mosquitto, free_port
from standardwebhooks import Webhook

from core.db import connect
from core.settings import Settings
from notify import webhook
from notify.alertmanager import DeliveryError, alertmanager_body, resend_firing_to_alertmanager
from notify.outbox import (
    ALERT_FIELDS,
    LISTEN_CHANNEL,
    AlertEvent,
    alert_targets,
    backoff_delay,
    enqueue,
    enqueue_alert_event,
)
from notify.worker import Notifier

ALERTMANAGER_ENV = "SYMBIONT_ALERTMANAGER"  # path to the alertmanager binary, if not found


# ------------------------------------------------------------------------------ helpers


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "mqtt_url": None,
        "alert_mqtt": False,
        "alert_webhooks": [],
        "alertmanager_url": None,
        "webhook_secret": None,
        "notify_backoff_base_s": 2.0,
        "notify_backoff_cap_s": 60.0,
        "notify_timeout_s": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


async def db(url: str) -> asyncpg.Connection:
    return await connect(url, application_name="symbiont-tests")


async def insert_alert(
    conn: asyncpg.Connection,
    *,
    rule: str = "imbalance",
    subject: str = "steam-novo",
    kind: str = "exchange",
    severity: str = "critical",
    summary: str = "steam-novo: received 12 % less than sent",
) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        """INSERT INTO alerts (fingerprint, rule, subject, subject_kind, severity, status,
                               started_at, summary, details)
           VALUES ($1, $2, $3, $4, $5, 'firing', now() - interval '1 hour', $6, $7::jsonb)
           RETURNING *""",
        f"{rule}:{subject}",
        rule,
        subject,
        kind,
        severity,
        summary,
        json.dumps({"S": 10.5, "R": 9.2, "z": 4.1}),
    )
    return row


async def resolve_alert(conn: asyncpg.Connection, alert_id: int) -> asyncpg.Record:
    row: asyncpg.Record = await conn.fetchrow(
        "UPDATE alerts SET status = 'resolved', resolved_at = now() WHERE id = $1 RETURNING *",
        alert_id,
    )
    return row


async def outbox(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch("SELECT * FROM outbox ORDER BY id")
    return rows


async def deliveries(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch("SELECT * FROM deliveries ORDER BY id")
    return rows


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int


class Receiver:
    """A webhook receiver on 127.0.0.1: answers ``status`` (``/status/NNN`` paths answer NNN),
    records every request; ``stop()`` closes the port, ``start()`` opens it again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.status = 200
        self.delay_s = 0.0
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                status = receiver.status
                if self.path.startswith("/status/"):
                    status = int(self.path.rsplit("/", 1)[1])
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                with receiver.lock:
                    receiver.requests.append(
                        Request(
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            status,
                        )
                    )
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def accepted(self) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if 200 <= r.status < 300]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.stop()


# -------------------------------------------------------------------------- alertmanager


def find_alertmanager() -> str:
    configured = os.environ.get(ALERTMANAGER_ENV)
    if configured:
        if not os.access(configured, os.X_OK):
            pytest.fail(f"{ALERTMANAGER_ENV}={configured} is not an executable", pytrace=False)
        return configured
    for name in ("prometheus-alertmanager", "alertmanager"):
        found = shutil.which(name)
        if found:
            return found
    if os.access("/usr/bin/prometheus-alertmanager", os.X_OK):
        return "/usr/bin/prometheus-alertmanager"
    pytest.fail(
        "Prometheus Alertmanager is not installed (Debian/Ubuntu: apt-get install"
        f" prometheus-alertmanager; or set {ALERTMANAGER_ENV} to the binary)",
        pytrace=False,
    )


@dataclass
class Alertmanager:
    url: str
    proc: subprocess.Popen[bytes]

    def alerts(self, **params: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v2/alerts", params=params, timeout=5)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result


@pytest.fixture(scope="module")
def alertmanager() -> Iterator[Alertmanager]:
    binary = find_alertmanager()
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="symbiont-alertmanager-"))
    config = directory / "alertmanager.yml"
    config.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    log_path = directory / "alertmanager.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"alertmanager exited with status {proc.returncode}:\n"
                    f"{log_path.read_text(errors='replace')[-2000:]}",
                    pytrace=False,
                )
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"alertmanager not ready on {url} after 20 s", pytrace=False)
            time.sleep(0.05)
        yield Alertmanager(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


# ----------------------------------------------------------------------------- pure parts


def test_signature_matches_the_standard_webhooks_reference() -> None:
    # The published Standard Webhooks example.
    assert (
        webhook.sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            b'{"test": 2432232314}',
        )
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )
    body = b'{"event":"firing"}'
    now = int(time.time())
    for secret, reference_key in [
        (webhook.generate_secret(), None),
        ("a plain passphrase", b"a plain passphrase"),
    ]:
        headers = webhook.headers(secret, "msg_1", now, body)
        Webhook(reference_key or secret).verify(body, headers)  # raises if wrong
        webhook.verify(secret, headers, body)
        with pytest.raises(webhook.InvalidSignature):
            webhook.verify(secret, headers, body + b" ")
        with pytest.raises(webhook.InvalidSignature):
            webhook.verify("another secret", headers, body)
        with pytest.raises(webhook.InvalidSignature):
            webhook.verify(secret, headers, body, now=now + 301)
    # Several signatures (key rotation): one match is enough.
    good = webhook.sign("k", "m", now, body)
    webhook.verify("k", {"webhook-id": "m", "webhook-timestamp": str(now),
                         "webhook-signature": f"v1,AAAA {good}"}, body)  # fmt: skip
    assert "webhook-signature" not in webhook.headers(None, "m", now, body)
    with pytest.raises(webhook.InvalidSecret):
        webhook.secret_key("whsec_not*base64")


def test_backoff_grows_with_jitter_and_respects_cap_and_retry_after() -> None:
    def delays(jitter: float) -> list[float]:
        return [backoff_delay(n, base_s=10, cap_s=3600, rng=lambda: jitter) for n in range(1, 12)]

    low, high = delays(0.0), delays(1.0)
    assert low[:3] == [5, 10, 20] and high[:3] == [10, 20, 40]
    assert all(a <= b for a, b in itertools.pairwise(low))
    assert max(high) == 3600 and max(low) == 1800
    assert backoff_delay(1, base_s=10, cap_s=3600, retry_after_s=120, rng=lambda: 0) == 120
    assert backoff_delay(1, base_s=10, cap_s=60, retry_after_s=1e6) == 60


def test_alertmanager_alert_shape() -> None:
    now = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    alert = {
        "id": 7,
        "fingerprint": "meter_stale:m1",
        "rule": "meter_stale",
        "subject": "m1",
        "subject_kind": "meter",
        "severity": "warning",
        "status": "firing",
        "started_at": "2026-11-23T09:00:00+00:00",
        "resolved_at": None,
        "summary": "meter m1 stale for 14 min",
        "details": {"age_s": 840.0},
    }
    body = alertmanager_body(alert, now=now, ttl=timedelta(minutes=4))
    assert body[0] == {
        "labels": {
            "alertname": "meter_stale",
            "meter": "m1",
            "severity": "warning",
            "symbiont_fingerprint": "meter_stale:m1",
        },
        "annotations": {"summary": "meter m1 stale for 14 min", "description": "age_s=840"},
        "startsAt": "2026-11-23T09:00:00.000000Z",
        "endsAt": "2026-11-23T10:04:00.000000Z",
    }
    # The other severity's label set is resolved in the same request.
    assert body[1]["labels"]["severity"] == "critical"
    assert body[1]["endsAt"] == "2026-11-23T10:00:00.000000Z"
    resolved = {**alert, "status": "resolved", "resolved_at": "2026-11-23T09:30:00Z"}
    (only,) = alertmanager_body(resolved, now=now, ttl=timedelta(minutes=4))
    assert only["endsAt"] == "2026-11-23T09:30:00.000000Z"


def test_settings_parse_comma_separated_webhooks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYMBIONT_ALERT_WEBHOOKS", "https://a.example/x, http://b.example/y")
    monkeypatch.setenv("SYMBIONT_ALERTMANAGER_URL", "http://am.example:9093/")
    settings = Settings()
    assert settings.alert_webhooks == ["https://a.example/x", "http://b.example/y"]
    assert settings.alertmanager_url == "http://am.example:9093"
    monkeypatch.setenv("SYMBIONT_ALERT_WEBHOOKS", "ftp://nope")
    with pytest.raises(ValueError, match="not an http"):
        Settings()


# ------------------------------------------------------------------------------- enqueue


def test_enqueue_is_transactional_idempotent_and_notifies(database_url: str) -> None:
    async def go() -> None:
        conn, listener = await db(database_url), await db(database_url)
        heard: asyncio.Queue[str] = asyncio.Queue()
        await listener.add_listener(LISTEN_CHANNEL, lambda *args: heard.put_nowait(args[2]))
        targets = [
            ("webhook", "http://a/x"),
            ("mqtt", "symbiont/alerts/s"),
            ("webhook", "http://a/x"),
        ]
        try:
            async with conn.transaction():
                n = await enqueue(conn, event_key="e1", payload={"a": 1}, deliveries=targets)
                assert n == 2  # the duplicate pair counts once
                assert heard.empty()  # NOTIFY goes out on commit
            await asyncio.wait_for(heard.get(), 5)
            again = await enqueue(conn, event_key="e1", payload={"a": 2}, deliveries=targets)
            assert again == 0
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await enqueue(
                        conn, event_key="e2", payload={}, deliveries=[("webhook", "http://b/")]
                    )
                    raise RuntimeError("the producer's transaction fails")
            rows = await outbox(conn)
            assert [(r["event_key"], r["channel"], r["target"]) for r in rows] == [
                ("e1", "webhook", "http://a/x"),
                ("e1", "mqtt", "symbiont/alerts/s"),
            ]
            assert all(r["expires_at"] - r["created_at"] == timedelta(hours=24) for r in rows)
            assert json.loads(rows[0]["payload"]) == {"a": 1}
        finally:
            await conn.close()
            await listener.close()

    asyncio.run(go())


def test_alert_targets_follow_settings(database_url: str) -> None:
    settings = make_settings(
        database_url,
        alert_webhooks=["http://a/x", "http://b/y"],
        alertmanager_url="http://am:9093",
        mqtt_url="mqtt://127.0.0.1:1883",
        alert_mqtt=True,
    )
    assert alert_targets(settings, {"subject": "steam-novo"}) == [
        ("webhook", "http://a/x"),
        ("webhook", "http://b/y"),
        ("alertmanager", "http://am:9093"),
        ("mqtt", "symbiont/alerts/steam-novo"),
    ]
    quiet = make_settings(database_url, mqtt_url="mqtt://127.0.0.1:1883", alert_mqtt=False)
    assert alert_targets(quiet, {"subject": "x"}) == []


# ------------------------------------------------------------------------------ webhooks


def test_webhook_receiver_down_then_back_gets_every_event_exactly_once(
    database_url: str, receiver: Receiver
) -> None:
    secret = webhook.generate_secret()
    settings = make_settings(database_url, alert_webhooks=[receiver.url()], webhook_secret=secret)

    async def go() -> None:
        conn = await db(database_url)
        try:
            a = await insert_alert(conn, subject="steam-novo")
            b = await insert_alert(conn, rule="meter_stale", subject="m1", kind="meter")
            at = datetime.now(UTC)
            async with conn.transaction():
                for key, event, alert in [("a-fire", "firing", a), ("b-fire", "firing", b)]:
                    await enqueue_alert_event(
                        conn, settings, event_key=key, event=event, alert=alert, at=at
                    )
            a_resolved = await resolve_alert(conn, a["id"])
            await enqueue_alert_event(
                conn,
                settings,
                event_key="a-resolve",
                event=AlertEvent.resolved,
                alert=a_resolved,
                at=at,
            )
            async with Notifier(settings) as notifier:
                # 1. Nothing listens on the port: connection refused, worth retrying.  The
                #    resolve of alert a waits behind its firing (per-alert order).
                assert await notifier.deliver_due() == 2
                first = {r["event_key"]: r for r in await outbox(conn)}
                assert [r["status"] for r in first.values()] == ["pending"] * 3
                assert first["a-resolve"]["attempts"] == 0
                tries = await deliveries(conn)
                assert [(d["ok"], d["retryable"], d["status_code"]) for d in tries] == [
                    (False, True, None)
                ] * 2
                assert all("ConnectError" in d["error"] for d in tries)

                # 2. Up, but answering 503.
                receiver.status = 503
                receiver.start()
                t2 = max(r["next_attempt_at"] for r in first.values())
                assert await notifier.deliver_due(now=t2) == 2
                second = {r["event_key"]: r for r in await outbox(conn)}
                for key in ("a-fire", "b-fire"):
                    assert second[key]["attempts"] == 2
                    assert second[key]["next_attempt_at"] > first[key]["next_attempt_at"]
                    # The backoff doubled: the second wait is at least the first one.
                    assert (second[key]["next_attempt_at"] - t2) >= (
                        first[key]["next_attempt_at"] - first[key]["created_at"]
                    ) - timedelta(milliseconds=5)
                assert "HTTP 503" in second["a-fire"]["last_error"]

                # 3. Healthy: everything goes out, the resolve right after its firing.
                receiver.status = 200
                t3 = max(r["next_attempt_at"] for r in second.values())
                assert await notifier.deliver_due(now=t3) == 3
                assert await notifier.deliver_due(now=t3 + timedelta(days=2)) == 0

            final = {r["event_key"]: r for r in await outbox(conn)}
            assert {k: (r["status"], r["attempts"]) for k, r in final.items()} == {
                "a-fire": ("delivered", 3),
                "b-fire": ("delivered", 3),
                "a-resolve": ("delivered", 1),
            }
            tries = await deliveries(conn)
            for row in final.values():
                mine = [d for d in tries if d["outbox_id"] == row["id"]]
                assert [d["attempt"] for d in mine] == list(range(1, row["attempts"] + 1))
                assert [d["ok"] for d in mine] == [False] * (row["attempts"] - 1) + [True]
                assert all(d["duration_ms"] >= 0 for d in mine)
                assert mine[-1]["status_code"] == 200
        finally:
            await conn.close()
        return None

    asyncio.run(go())

    accepted = receiver.accepted()
    ids = Counter(r.headers["webhook-id"] for r in accepted)
    assert len(ids) == 3 and set(ids.values()) == {1}, ids
    # The refused attempts carried the same ids: stable across retries.
    assert {r.headers["webhook-id"] for r in receiver.requests if r.status == 503} <= set(ids)
    reference = Webhook(secret)
    events = []
    for request in accepted:
        assert request.headers["content-type"] == "application/json"
        payload = reference.verify(request.body, request.headers)  # independent check
        events.append((payload["alert"]["fingerprint"], payload["event"]))
        assert set(payload) == {"event", "alert", "at"}
        assert set(payload["alert"]) == set(ALERT_FIELDS)
    a_events = [e for f, e in events if f == "imbalance:steam-novo"]
    assert a_events == ["firing", "resolved"]


def test_webhook_failures_that_retrying_cannot_fix_fail_at_once(
    database_url: str, receiver: Receiver
) -> None:
    receiver.start()
    final = ["/status/400", "/status/401", "/status/404", "/status/410", "/status/301"]
    retry = ["/status/408", "/status/429", "/status/500", "/status/502"]
    targets = [("webhook", receiver.url(path)) for path in final + retry]
    targets += [("webhook", "ftp://example.com/x"), ("webhook", "not a url")]
    settings = make_settings(database_url)

    async def go() -> None:
        conn = await db(database_url)
        try:
            await enqueue(conn, event_key="e", payload={"x": 1}, deliveries=targets)
            async with Notifier(settings) as notifier:
                assert await notifier.deliver_due() == len(targets)
                status = {r["target"]: r for r in await outbox(conn)}
                for path in final:
                    row = status[receiver.url(path)]
                    assert (row["status"], row["attempts"]) == ("failed", 1), path
                    assert f"HTTP {path[-3:]}" in row["last_error"]
                for path in retry:
                    assert status[receiver.url(path)]["status"] == "pending", path
                for bad in ("ftp://example.com/x", "not a url"):
                    assert status[bad]["status"] == "failed"
                    assert "invalid target" in status[bad]["last_error"]
                # A later pass sends nothing to the failed ones.
                before = len(receiver.requests)
                assert await notifier.deliver_due(now=datetime.now(UTC) + timedelta(hours=1)) == 4
                assert len(receiver.requests) == before + 4
            tries = await deliveries(conn)
            assert sum(1 for d in tries if not d["retryable"]) == len(final) + 2
        finally:
            await conn.close()

    asyncio.run(go())


def test_webhook_gives_up_after_max_age(database_url: str, receiver: Receiver) -> None:
    receiver.status = 503
    receiver.start()
    settings = make_settings(database_url, notify_backoff_cap_s=3600)

    async def go() -> None:
        conn = await db(database_url)
        try:
            await enqueue(
                conn, event_key="e", payload={"x": 1}, deliveries=[("webhook", receiver.url())]
            )
            (row,) = await outbox(conn)
            t0, expires = row["created_at"], row["expires_at"]
            assert expires - t0 == timedelta(hours=24)
            async with Notifier(settings) as notifier:
                assert await notifier.deliver_due(now=t0) == 1
                # Just before the deadline: the next attempt is clamped to the deadline.
                assert await notifier.deliver_due(now=expires - timedelta(seconds=1)) == 1
                (row,) = await outbox(conn)
                assert (row["status"], row["next_attempt_at"]) == ("pending", expires)
                # At the deadline: one last attempt, then failed for good.
                assert await notifier.deliver_due(now=expires) == 1
                (row,) = await outbox(conn)
                assert (row["status"], row["attempts"]) == ("failed", 3)
                assert row["last_error"].startswith("gave up after 3 attempts")
                assert await notifier.deliver_due(now=expires + timedelta(days=1)) == 0
            assert [d["retryable"] for d in await deliveries(conn)] == [True] * 3
        finally:
            await conn.close()

    asyncio.run(go())
    assert len(receiver.requests) == 3


def test_a_failing_target_is_logged_once_not_on_every_retry(
    database_url: str, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A partner's endpoint that is down for hours is retried all that time: the log says
    once that it fails and once that it delivers again; every attempt is in deliveries."""
    settings = make_settings(database_url)
    down = receiver.url("/down")

    async def go() -> None:
        conn = await db(database_url)
        try:
            for key in ("s-1", "s-2", "s-3"):
                await enqueue(
                    conn, event_key=key, payload={"x": key}, deliveries=[("webhook", down)]
                )
            async with Notifier(settings) as notifier:
                caplog.set_level("DEBUG", logger="symbiont.notify")
                now = datetime.now(UTC)
                for _ in range(6):  # nothing listens on the port: refused, retried
                    await notifier.deliver_due(now=now)
                    now += timedelta(seconds=settings.notify_backoff_cap_s + 1)
                failing = [
                    r
                    for r in caplog.records
                    if r.name == "symbiont.notify" and r.levelno >= logging.WARNING
                ]
                assert len(failing) == 1, [r.getMessage() for r in failing]
                assert down in failing[0].getMessage()
                assert "not logged until it delivers again" in failing[0].getMessage()
                assert len(await deliveries(conn)) == 18  # 3 events x 6 attempts, all kept
                receiver.start()
                await notifier.deliver_due(now=now)
            assert {r["status"] for r in await outbox(conn)} == {"delivered"}
        finally:
            await conn.close()

    asyncio.run(go())
    loud = [r for r in caplog.records if r.name == "symbiont.notify" and r.levelno >= logging.INFO]
    assert len(loud) == 2, [r.getMessage() for r in loud]
    assert "delivers again, after 18 failed attempts" in loud[1].getMessage()
    assert len(receiver.accepted()) == 3


def test_two_notifiers_deliver_each_event_exactly_once(
    database_url: str, receiver: Receiver
) -> None:
    receiver.delay_s = 0.02
    receiver.start()
    settings = make_settings(
        database_url,
        alert_webhooks=[receiver.url()],
        webhook_secret="shared passphrase",
        notify_batch=4,
    )
    events = 60

    async def go() -> tuple[int, int]:
        conn = await db(database_url)
        stop = asyncio.Event()
        one, two = Notifier(settings, name="notify-1"), Notifier(settings, name="notify-2")
        await one.start()
        await two.start()
        try:
            tasks = [asyncio.create_task(n.run(stop)) for n in (one, two)]
            await asyncio.sleep(0.2)
            async with conn.transaction():
                for i in range(events):
                    alert = await insert_alert(
                        conn, rule="meter_stale", subject=f"m{i}", kind="meter"
                    )
                    await enqueue_alert_event(
                        conn, settings, event_key=f"e{i}", event="firing", alert=alert,
                        at=datetime.now(UTC),
                    )  # fmt: skip
            deadline = time.monotonic() + 20
            while await conn.fetchval("SELECT count(*) FROM outbox WHERE status = 'pending'"):
                assert time.monotonic() < deadline, "not delivered within 20 s"
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.gather(*tasks)
            tries = await deliveries(conn)
            assert len(tries) == events and all(d["ok"] for d in tries)
        finally:
            stop.set()
            await one.close()
            await two.close()
            await conn.close()
        return one.attempted, two.attempted

    first, second = asyncio.run(go())
    assert first + second == events
    assert first > 0 and second > 0, (first, second)
    ids = Counter(r.headers["webhook-id"] for r in receiver.accepted())
    assert len(ids) == events and set(ids.values()) == {1}
    for request in receiver.accepted():
        Webhook(b"shared passphrase").verify(request.body, request.headers)


def test_run_sends_a_new_event_within_a_second(database_url: str, receiver: Receiver) -> None:
    receiver.start()
    # Polling every 30 s: only the NOTIFY from enqueue can make it this fast.
    settings = make_settings(database_url, alert_webhooks=[receiver.url()], notify_poll_s=30)

    async def go() -> float:
        conn = await db(database_url)
        stop = asyncio.Event()
        task = asyncio.create_task(Notifier(settings).run(stop))
        try:
            await asyncio.sleep(0.5)  # let it start, pass once and wait
            alert = await insert_alert(conn)
            started = time.monotonic()
            await enqueue_alert_event(
                conn, settings, event_key="e", event="firing", alert=alert, at=datetime.now(UTC)
            )
            while not receiver.accepted():
                assert time.monotonic() - started < 1.0, "not delivered within a second"
                await asyncio.sleep(0.01)
            return time.monotonic() - started
        finally:
            stop.set()
            await task
            await conn.close()

    elapsed = asyncio.run(go())
    assert elapsed < 1.0
    assert "webhook-signature" not in receiver.accepted()[0].headers  # no secret: unsigned


# -------------------------------------------------------------------------- alertmanager


def _ours(alerts: list[dict[str, Any]], fingerprint: str) -> list[dict[str, Any]]:
    return [a for a in alerts if a["labels"].get("symbiont_fingerprint") == fingerprint]


def test_alertmanager_receives_firing_severity_change_and_resolve(
    database_url: str, alertmanager: Alertmanager
) -> None:
    settings = make_settings(database_url, alertmanager_url=alertmanager.url)
    subject = f"steam-{secrets.token_hex(3)}"
    fingerprint = f"imbalance:{subject}"

    async def go() -> None:
        conn = await db(database_url)
        try:
            async with Notifier(settings) as notifier:
                alert = await insert_alert(conn, subject=subject, severity="critical")
                assert alert_targets(settings, alert) == [("alertmanager", alertmanager.url)]
                now = datetime.now(UTC)
                await enqueue_alert_event(
                    conn, settings, event_key="fire", event="firing", alert=alert, at=now
                )
                assert await notifier.deliver_due() == 1
                (active,) = _ours(alertmanager.alerts(), fingerprint)
                assert active["labels"] == {
                    "alertname": "imbalance",
                    "exchange": subject,
                    "severity": "critical",
                    "symbiont_fingerprint": fingerprint,
                }
                assert active["annotations"]["summary"] == alert["summary"]
                assert "z=4.1" in active["annotations"]["description"]
                assert active["status"]["state"] == "active"
                ends = datetime.fromisoformat(active["endsAt"].replace("Z", "+00:00"))
                assert timedelta(minutes=3) < ends - now < timedelta(minutes=5)

                # Severity drops to warning: only the warning label set stays active.
                alert = await conn.fetchrow(
                    "UPDATE alerts SET severity = 'warning' WHERE id = $1 RETURNING *", alert["id"]
                )
                await enqueue_alert_event(
                    conn, settings, event_key="upd", event="updated", alert=alert, at=now
                )
                assert await notifier.deliver_due() == 1
                (active,) = _ours(alertmanager.alerts(), fingerprint)
                assert active["labels"]["severity"] == "warning"

                resolved = await resolve_alert(conn, alert["id"])
                await enqueue_alert_event(
                    conn, settings, event_key="resolve", event="resolved", alert=resolved, at=now
                )
                assert await notifier.deliver_due() == 1
                assert _ours(alertmanager.alerts(), fingerprint) == []
                rows = await outbox(conn)
                assert [r["status"] for r in rows] == ["delivered"] * 3
                assert [d["status_code"] for d in await deliveries(conn)] == [200] * 3

                # The periodic refresh re-posts what is firing, outside the outbox.
                stale = await insert_alert(
                    conn, rule="meter_stale", subject=f"m-{subject}", kind="meter"
                )
                count = await resend_firing_to_alertmanager(conn, settings, client=notifier.http)
                assert count == 1
                (refreshed,) = _ours(alertmanager.alerts(), stale["fingerprint"])
                assert refreshed["labels"]["meter"] == f"m-{subject}"
                assert len(await deliveries(conn)) == 3  # not recorded
        finally:
            await conn.close()

    asyncio.run(go())


def test_alertmanager_down_is_retried(database_url: str) -> None:
    settings = make_settings(database_url, alertmanager_url=f"http://127.0.0.1:{free_port()}")

    async def go() -> None:
        conn = await db(database_url)
        try:
            alert = await insert_alert(conn)
            await enqueue_alert_event(
                conn, settings, event_key="e", event="firing", alert=alert, at=datetime.now(UTC)
            )
            async with Notifier(settings) as notifier:
                assert await notifier.deliver_due() == 1
            (row,) = await outbox(conn)
            assert (row["status"], row["attempts"]) == ("pending", 1)
            with pytest.raises(DeliveryError):
                await resend_firing_to_alertmanager(conn, settings)
        finally:
            await conn.close()

    asyncio.run(go())


# ---------------------------------------------------------------------------------- mqtt


def _retained(broker: Mosquitto, topic: str, timeout: float = 5.0) -> dict[str, Any]:
    """The retained message on ``topic``, as seen by a client connecting now."""
    got: list[mqtt.MQTTMessage] = []
    event = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{secrets.token_hex(4)}")

    def on_connect(c: mqtt.Client, *args: Any) -> None:
        c.subscribe(topic, qos=1)

    def on_message(c: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        got.append(message)
        event.set()

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        assert event.wait(timeout), f"no retained message on {topic}"
    finally:
        client.disconnect()
        client.loop_stop()
    assert got[0].retain
    result: dict[str, Any] = json.loads(got[0].payload)
    return result


def test_mqtt_alert_state_is_retained(database_url: str, mosquitto: Mosquitto) -> None:
    settings = make_settings(database_url, mqtt_url=mosquitto.url, alert_mqtt=True)
    subject = f"steam-{secrets.token_hex(3)}"
    topic = f"symbiont/alerts/{subject}"

    async def go() -> None:
        conn = await db(database_url)
        try:
            alert = await insert_alert(conn, subject=subject)
            now = datetime.now(UTC)
            await enqueue_alert_event(
                conn, settings, event_key="f", event="firing", alert=alert, at=now
            )
            resolved = await resolve_alert(conn, alert["id"])
            await enqueue_alert_event(
                conn, settings, event_key="r", event="resolved", alert=resolved, at=now
            )
            assert [r["target"] for r in await outbox(conn)] == [topic, topic]
            async with Notifier(settings) as notifier:
                assert notifier.mqtt is not None
                assert await notifier.mqtt.wait_connected(5)
                assert await notifier.deliver_due() == 2
            assert [r["status"] for r in await outbox(conn)] == ["delivered"] * 2
        finally:
            await conn.close()

    asyncio.run(go())
    state = _retained(mosquitto, topic)
    assert state["event"] == "resolved"
    assert state["alert"]["status"] == "resolved"
    assert state["alert"]["subject"] == subject
    assert state["alert"]["resolved_at"] is not None


def test_mqtt_broker_unreachable_is_retried_and_bad_topic_fails(database_url: str) -> None:
    settings = make_settings(database_url, mqtt_url=f"mqtt://127.0.0.1:{free_port()}")

    async def go() -> None:
        conn = await db(database_url)
        try:
            await enqueue(
                conn,
                event_key="e",
                payload={"x": 1},
                deliveries=[("mqtt", "symbiont/alerts/x"), ("mqtt", "symbiont/alerts/+")],
            )
            async with Notifier(settings) as notifier:
                assert await notifier.deliver_due() == 2
            status = {r["target"]: r for r in await outbox(conn)}
            assert status["symbiont/alerts/x"]["status"] == "pending"
            assert "not connected" in status["symbiont/alerts/x"]["last_error"]
            assert status["symbiont/alerts/+"]["status"] == "failed"
        finally:
            await conn.close()

    asyncio.run(go())
