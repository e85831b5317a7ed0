"""Delivery of issued statements against real services: an SMTP server of the test's
own (aiosmtpd), an HTTP receiver for the partner's webhook, the session's Mosquitto and a
migrated PostgreSQL.  Mail attachments are opened with pypdf and pandas, webhook signatures
checked with the ``standardwebhooks`` reference library.  Time moves by passing ``now`` to
``deliver_due``: nothing sleeps through a backoff.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
import json
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import asyncpg
import paho.mqtt.client as mqtt
import pandas as pd
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError
from pypdf import PdfReader
from services import Mosquitto, free_port
from standardwebhooks import Webhook

from cli.backfill import write_simulation
from cli.faults import parse_fault
from core.apply import apply_network
from core.db import asyncpg_dsn, connect
from core.network import Network, parse_network
from core.settings import Settings
from notify import webhook
from notify.mail import mail_address, parse_smtp_url, send_mail
from notify.worker import Notifier
from rules.engine import Engine
from statements.document import verify_hash
from statements.issue import issue_month, mail_recipients
from statements.revise import revise_statement

SEPT = datetime(2026, 8, 31, 22, tzinfo=UTC)  # 1 September, Copenhagen
OCT = datetime(2026, 9, 30, 22, tzinfo=UTC)
ISSUE_SEPT = datetime(2026, 10, 5, tzinfo=UTC)
PLANT_MAIL = "billing@plant.example"
TOWN_MAIL = "heat@town.example"
MAIL_FROM = "Park billing <statements@park.example>"


def network(webhook_url: str | None = None) -> Network:
    meter = {"kind": "heat", "reading": "total", "unit": "MWh", "uncertainty": 0.01}
    return parse_network(
        {
            "network": "billing",
            "name": "Billing park",
            "timezone": "Europe/Copenhagen",
            "partners": [
                {"id": "plant", "name": "Plant A/S", "email": PLANT_MAIL, "webhook": webhook_url},
                {"id": "town", "name": "Town Heating", "email": f"Town Heating <{TOWN_MAIL}>"},
            ],
            "meters": [
                {"id": "out", "partner": "plant", "interval": 300, **meter},
                {"id": "in", "partner": "town", "interval": 300, **meter},
            ],
            "exchanges": [
                {
                    "id": "heat",
                    "provider": "plant",
                    "receiver": "town",
                    "kind": "heat",
                    "sent": ["out"],
                    "received": ["in"],
                    "loss": 0.05,
                    "nominal": 4.0,
                    "billing": "received",
                    "terms": [
                        {
                            "from": "2026-01-01",
                            "price": "30.00",
                            "receiver_avoided_cost": "45.00",
                            "receiver_avoided_co2": "0.2",
                        }
                    ],
                }
            ],
        }
    )


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "mqtt_url": None,
        "alert_mqtt": False,
        "alert_webhooks": [],
        "alertmanager_url": None,
        "webhook_secret": None,
        "smtp_from": MAIL_FROM,
        "notify_backoff_base_s": 2.0,
        "notify_backoff_cap_s": 60.0,
        "notify_timeout_s": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


async def setup(database_url: str, net: Network) -> asyncpg.Connection:
    """The network applied and September simulated and processed, ready to issue."""
    conn = await connect(database_url, application_name="symbiont-tests")
    await apply_network(conn, net)
    await write_simulation(asyncpg_dsn(database_url), net, SEPT, OCT, seed=5)
    await Engine(Settings(database_url=database_url)).process_pending(conn, now=OCT)
    return conn


async def deliver_until_done(notifier: Notifier, conn: asyncpg.Connection) -> None:
    """Attempt what is due, then move time to the next retry, until nothing is pending."""
    at: datetime | None = None
    for _ in range(20):
        await notifier.deliver_due(now=at)
        at = await conn.fetchval("SELECT min(next_attempt_at) FROM outbox WHERE status = 'pending'")
        if at is None:
            return
    raise AssertionError("the outbox still has pending rows after 20 passes")


async def attempts(conn: asyncpg.Connection, outbox_id: int) -> list[tuple[bool, bool, Any]]:
    rows = await conn.fetch(
        "SELECT attempt, ok, retryable, status_code FROM deliveries WHERE outbox_id = $1"
        " ORDER BY attempt",
        outbox_id,
    )
    assert [r["attempt"] for r in rows] == list(range(1, len(rows) + 1))
    return [(r["ok"], r["retryable"], r["status_code"]) for r in rows]


# --------------------------------------------------------------------------- the services


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    login: str | None


class SmtpSink:
    """An SMTP server on 127.0.0.1 (aiosmtpd) that keeps every message it accepts.  Not
    listening until ``start()``; ``reject[address] = "451 ..."`` answers RCPT with that reply;
    with ``credentials`` it requires AUTH (allowed without TLS: loopback only)."""

    def __init__(self, credentials: tuple[str, str] | None = None) -> None:
        self.port = free_port()
        self.credentials = credentials
        self.reject: dict[str, str] = {}
        self.mails: list[Mail] = []
        self.lock = threading.Lock()
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        user = ""
        if self.credentials:
            user = f"{quote(self.credentials[0], safe='')}:{quote(self.credentials[1], safe='')}@"
        return f"smtp://{user}127.0.0.1:{self.port}"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        reply = self.reject.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        login = session.auth_data
        with self.lock:
            self.mails.append(
                Mail(
                    str(envelope.mail_from),
                    list(envelope.rcpt_tos),
                    message,
                    login.decode() if isinstance(login, bytes) else None,
                )
            )
        return "250 Message accepted for delivery"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and self.credentials is not None
            and (data.login.decode(), data.password.decode()) == self.credentials
        )
        return AuthResult(success=ok, auth_data=data.login if ok else None)

    def start(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.credentials:
            kwargs = {
                "authenticator": self._authenticate,
                "auth_required": True,
                "auth_require_tls": False,
            }
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, **kwargs)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def received(self) -> list[Mail]:
        with self.lock:
            return list(self.mails)


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A webhook receiver on 127.0.0.1 answering 200 and recording every request."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    receiver.requests.append(Request(self.path, headers, body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/statements") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


class MqttWatch:
    """Subscribes to ``topic`` (on entry, before anything is published) and keeps what
    arrives."""

    def __init__(self, broker: Mosquitto, topic: str) -> None:
        self.broker = broker
        self.topic = topic
        self.messages: list[mqtt.MQTTMessage] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"t-{secrets.token_hex(4)}"
        )
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(message)

    def __enter__(self) -> MqttWatch:
        self.client.connect(self.broker.host, self.broker.port)
        self.client.loop_start()
        assert self.subscribed.wait(5), f"could not subscribe to {self.topic}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def payloads(self, predicate: Any, *, count: int, within_s: float = 5.0) -> list[Any]:
        """The messages (topic, retain, JSON) that satisfy ``predicate``, once ``count`` of
        them have arrived."""
        deadline = datetime.now(UTC) + timedelta(seconds=within_s)
        while True:
            with self.lock:
                found = [
                    (m.topic, m.retain, json.loads(m.payload))
                    for m in self.messages
                    if predicate(json.loads(m.payload))
                ]
            if len(found) >= count or datetime.now(UTC) > deadline:
                return found
            time.sleep(0.02)


def attachments(message: EmailMessage) -> dict[str, tuple[str, bytes]]:
    out: dict[str, tuple[str, bytes]] = {}
    for part in message.iter_attachments():
        assert isinstance(part, EmailMessage)
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        out[str(part.get_filename())] = (part.get_content_type(), payload)
    return out


# --------------------------------------------------------------------------------- pure


def test_smtp_url_forms_and_settings() -> None:
    plain = parse_smtp_url("smtp://relay.park.example")
    assert (plain.host, plain.port, plain.security, plain.user) == (
        "relay.park.example",
        25,
        "starttls-if-offered",
        None,
    )
    submission = parse_smtp_url("smtp+starttls://bot%40park.example:p%2Fss@mail.example")
    assert (submission.port, submission.security) == (587, "starttls")
    assert (submission.user, submission.password) == ("bot@park.example", "p/ss")
    assert "p/ss" not in submission.where
    tls = parse_smtp_url("smtps://u:p@mail.example:2465")
    assert (tls.port, tls.security) == (2465, "tls")
    assert parse_smtp_url("smtp://127.0.0.1:2525").loopback
    assert not plain.loopback

    settings = Settings(smtp_url=" smtps://u:p@mail.example ", smtp_from=MAIL_FROM)
    assert settings.smtp_url == "smtps://u:p@mail.example"
    assert Settings(smtp_url="", smtp_from="").smtp_url is None
    for bad in ("http://mail.example", "smtp://", "smtp://host:99999"):
        with pytest.raises(ValidationError):
            Settings(smtp_url=bad)
    for bad in ("billing", "billing@park.example\r\nBcc: x@y.example"):
        with pytest.raises(ValidationError):
            Settings(smtp_from=bad)

    assert mail_address("Town <heat@town.example>") == "heat@town.example"
    assert mail_address("a@b.example, c@d.example") is None
    assert mail_address("no address") is None
    assert mail_recipients(f"{PLANT_MAIL}, Ops <ops@plant.example>, {PLANT_MAIL}") == [
        PLANT_MAIL,
        "ops@plant.example",
    ]


# ------------------------------------------------------------------------------ delivery


def test_issued_statements_go_out_once_by_mail_webhook_and_mqtt(
    database_url: str, mosquitto: Mosquitto, smtp: SmtpSink, receiver: Receiver
) -> None:
    secret = webhook.generate_secret()
    net = network(receiver.url())
    settings = make_settings(
        database_url, smtp_url=smtp.url, mqtt_url=mosquitto.url, webhook_secret=secret
    )
    stored: dict[str, asyncpg.Record] = {}
    rows: dict[tuple[str, str], asyncpg.Record] = {}

    async def go() -> None:
        conn = await setup(database_url, net)
        try:
            issued = await issue_month(conn, net, 2026, 9, ISSUE_SEPT, settings=settings)
            assert [(i.partner, i.new) for i in issued] == [("plant", True), ("town", True)]
            for r in await conn.fetch("SELECT * FROM statements"):
                stored[r["partner_id"]] = r
            outbox = await conn.fetch("SELECT *, payload::text AS body FROM outbox ORDER BY id")
            rows.update({(r["channel"], r["target"]): r for r in outbox})
            assert sorted(rows) == [
                ("mail", PLANT_MAIL),
                ("mail", TOWN_MAIL),
                ("mqtt", "symbiont/statements/plant"),
                ("mqtt", "symbiont/statements/town"),
                ("webhook", receiver.url()),
            ]
            mail = json.loads(rows["mail", TOWN_MAIL]["body"])
            # the mail row names the statement; the PDF and CSV are read when sending
            assert mail["statement_id"] == stored["town"]["id"]
            assert "document" not in mail and len(rows["mail", TOWN_MAIL]["body"]) < 400

            async with Notifier(settings) as notifier:
                assert notifier.mqtt is not None and await notifier.mqtt.wait_connected(5)
                await deliver_until_done(notifier, conn)
                final = await conn.fetch("SELECT status, attempts FROM outbox")
                assert {(r["status"], r["attempts"]) for r in final} == {("delivered", 1)}

                # issuing again changes nothing and sends nothing
                again = await issue_month(conn, net, 2026, 9, ISSUE_SEPT, settings=settings)
                assert [i.new for i in again] == [False, False]
                assert await conn.fetchval("SELECT count(*) FROM outbox") == len(rows)
                assert await notifier.deliver_due() == 0
                assert await notifier.deliver_due(now=ISSUE_SEPT + timedelta(days=400)) == 0
            assert await conn.fetchval("SELECT count(*) FROM deliveries") == len(rows)
        finally:
            await conn.close()

    with MqttWatch(mosquitto, "symbiont/statements/+") as watch:
        asyncio.run(go())
        hashes = {partner: row["content_hash"] for partner, row in stored.items()}
        notices = watch.payloads(lambda p: p.get("content_hash") in hashes.values(), count=2)

    # MQTT: one notice per partner on its own topic, retained for later subscribers
    assert sorted((topic, p["content_hash"]) for topic, _, p in notices) == [
        ("symbiont/statements/plant", hashes["plant"]),
        ("symbiont/statements/town", hashes["town"]),
    ]
    for _, _, notice in notices:
        assert notice["event"] == "statement.issued" and notice["month"] == "2026-09"
    with MqttWatch(mosquitto, "symbiont/statements/town") as late:
        retained = late.payloads(lambda p: True, count=1)
    assert [(r, p["content_hash"]) for _, r, p in retained] == [(True, hashes["town"])]

    # Webhook: the plant's, once, signed (checked with the reference library)
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert request.headers["webhook-id"] == f"msg_{rows['webhook', receiver.url()]['id']}"
    payload = Webhook(secret).verify(request.body, request.headers)
    assert payload["event"] == "statement.issued" and payload["partner"] == "plant"
    assert payload["content_hash"] == hashes["plant"] and verify_hash(payload["document"])
    assert payload["document"] == json.loads(stored["plant"]["document"])

    # Mail: exactly one per partner, with the stored PDF and CSV
    mails = smtp.received()
    assert Counter(a for m in mails for a in m.rcpt_tos) == {PLANT_MAIL: 1, TOWN_MAIL: 1}
    for partner, address, name in [
        ("plant", PLANT_MAIL, "Plant A/S"),
        ("town", TOWN_MAIL, "Town Heating"),
    ]:
        (mail,) = [m for m in mails if m.rcpt_tos == [address]]
        message = mail.message
        doc = json.loads(stored[partner]["document"])
        assert mail.mail_from == "statements@park.example"
        assert message["From"] == MAIL_FROM and message["To"] == address
        assert message["Subject"] == f"Exchange statement 2026-09 — {name}"
        outbox_id = rows["mail", address]["id"]
        assert message["Message-ID"] == (
            f"<symbiont.outbox-{outbox_id}.statement-{stored[partner]['id']}@park.example>"
        )
        assert message["X-Symbiont-Statement"] == f"{partner} 2026-09"
        body = message.get_body(("plain",))
        assert body is not None
        text = body.get_content()
        assert doc["content_hash"] in text
        assert f"{Decimal(doc['totals']['net_amount']):,.2f} EUR" in text

        files = attachments(message)
        stem = f"statement-{partner}-2026-09"
        assert sorted(files) == [f"{stem}.csv", f"{stem}.pdf"]
        pdf_type, pdf = files[f"{stem}.pdf"]
        csv_type, csv = files[f"{stem}.csv"]
        assert (pdf_type, csv_type) == ("application/pdf", "text/csv")
        assert pdf == bytes(stored[partner]["pdf"]) and csv == bytes(stored[partner]["csv"])
        assert len(PdfReader(io.BytesIO(pdf)).pages) >= 1

        frame = pd.read_csv(io.BytesIO(csv), dtype=str)
        totals = frame[(frame["record"] == "total") & frame["kind"].isna()]
        assert len(totals) == 1
        row = totals.iloc[0]
        for column, key in [
            ("receivable", "receivable"),
            ("payable", "payable"),
            ("net_amount", "net_amount"),
            ("avoided_cost", "avoided_cost"),
            ("savings", "net_savings"),
            ("co2_avoided_t", "co2_avoided_t"),
        ]:
            assert Decimal(row[column]) == Decimal(doc["totals"][key]), column
        assert Decimal(doc["totals"]["net_amount"]) != 0


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # loopback only
def test_mail_is_retried_until_the_server_takes_it_and_arrives_once(
    database_url: str, mosquitto: Mosquitto
) -> None:
    sink = SmtpSink(credentials=("statements", "s3cret/pass word"))  # not listening yet
    settings = make_settings(database_url, smtp_url=sink.url, mqtt_url=mosquitto.url)
    net = network()

    async def go() -> None:
        conn = await setup(database_url, net)
        try:
            await issue_month(conn, net, 2026, 9, ISSUE_SEPT, settings=settings)
            mail = {
                r["target"]: r["id"]
                for r in await conn.fetch("SELECT id, target FROM outbox WHERE channel = 'mail'")
            }
            assert sorted(mail) == [PLANT_MAIL, TOWN_MAIL]

            async def state() -> dict[str, asyncpg.Record]:
                found = await conn.fetch("SELECT * FROM outbox WHERE channel = 'mail'")
                return {r["target"]: r for r in found}

            async with Notifier(settings) as notifier:
                assert notifier.mqtt is not None and await notifier.mqtt.wait_connected(5)
                # 1. nothing listens: connection refused, worth retrying
                await notifier.deliver_due()
                first = await state()
                for row in first.values():
                    assert (row["status"], row["attempts"]) == ("pending", 1)
                    assert "ConnectionRefusedError" in row["last_error"]
                # 2. up, but the town's mailbox answers 451 (try later)
                sink.reject[TOWN_MAIL] = "451 4.2.1 Mailbox busy, try again later"
                sink.start()
                await notifier.deliver_due(now=max(r["next_attempt_at"] for r in first.values()))
                second = await state()
                assert second[PLANT_MAIL]["status"] == "delivered"
                assert second[TOWN_MAIL]["status"] == "pending"
                assert "451" in second[TOWN_MAIL]["last_error"]
                # 3. the mailbox takes it
                del sink.reject[TOWN_MAIL]
                await deliver_until_done(notifier, conn)
                assert await notifier.deliver_due(now=ISSUE_SEPT + timedelta(days=400)) == 0

            final = await state()
            assert {a: (r["status"], r["attempts"]) for a, r in final.items()} == {
                PLANT_MAIL: ("delivered", 2),
                TOWN_MAIL: ("delivered", 3),
            }
            assert await attempts(conn, mail[PLANT_MAIL]) == [
                (False, True, None),
                (True, False, 250),
            ]
            assert await attempts(conn, mail[TOWN_MAIL]) == [
                (False, True, None),
                (False, True, 451),
                (True, False, 250),
            ]
            # issuing again sends nothing more
            await issue_month(conn, net, 2026, 9, ISSUE_SEPT, settings=settings)
            assert sorted(await state()) == [PLANT_MAIL, TOWN_MAIL]
        finally:
            await conn.close()

    try:
        asyncio.run(go())
    finally:
        sink.stop()
    mails = sink.received()
    assert Counter(a for m in mails for a in m.rcpt_tos) == {PLANT_MAIL: 1, TOWN_MAIL: 1}
    assert {m.login for m in mails} == {"statements"}  # authenticated


def test_mail_refused_with_5xx_fails_at_once(database_url: str, smtp: SmtpSink) -> None:
    smtp.reject[TOWN_MAIL] = "550 5.1.1 Mailbox unavailable"
    settings = make_settings(database_url, smtp_url=smtp.url)
    net = network()

    async def go() -> None:
        conn = await setup(database_url, net)
        try:
            await issue_month(conn, net, 2026, 9, ISSUE_SEPT, settings=settings)
            async with Notifier(settings) as notifier:
                await notifier.deliver_due()
                assert await notifier.deliver_due(now=ISSUE_SEPT + timedelta(days=400)) == 0
            rows = {
                r["target"]: r
                for r in await conn.fetch("SELECT * FROM outbox WHERE channel = 'mail'")
            }
            assert (rows[TOWN_MAIL]["status"], rows[TOWN_MAIL]["attempts"]) == ("failed", 1)
            assert "550" in rows[TOWN_MAIL]["last_error"]
            assert await attempts(conn, rows[TOWN_MAIL]["id"]) == [(False, False, 550)]
            assert rows[PLANT_MAIL]["status"] == "delivered"
        finally:
            await conn.close()

    asyncio.run(go())
    assert [m.rcpt_tos for m in smtp.received()] == [[PLANT_MAIL]]


def test_smtp_servers_that_cannot_take_the_mail_safely_or_in_time(smtp: SmtpSink) -> None:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = MAIL_FROM, TOWN_MAIL, "test"
    message.set_content("test")
    sender = "statements@park.example"

    async def go() -> None:
        # STARTTLS required but not offered: nothing is sent, and retrying cannot help
        required = parse_smtp_url(f"smtp+starttls://127.0.0.1:{smtp.port}")
        outcome = await send_mail(
            required, message, sender=sender, recipients=[TOWN_MAIL], timeout_s=5
        )
        assert (outcome.ok, outcome.retryable) == (False, False)
        assert outcome.error is not None and "STARTTLS" in outcome.error
        # a server that accepts the connection but never greets: a timeout, worth retrying
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(1)
            mute = parse_smtp_url(f"smtp://127.0.0.1:{silent.getsockname()[1]}")
            started = time.monotonic()
            outcome = await send_mail(
                mute, message, sender=sender, recipients=[TOWN_MAIL], timeout_s=0.5
            )
            assert time.monotonic() - started < 2
        assert (outcome.ok, outcome.retryable) == (False, True), outcome
        assert outcome.error is not None and "timeout" in outcome.error

    asyncio.run(go())
    assert smtp.received() == []


def test_no_mail_without_smtp(database_url: str) -> None:
    net = network()

    async def go() -> None:
        conn = await connect(database_url, application_name="symbiont-tests")
        try:
            await apply_network(conn, net)  # no readings needed: statements of zero
            await issue_month(
                conn,
                net,
                2026,
                9,
                ISSUE_SEPT,
                settings=make_settings(database_url),
                accept_incomplete="no meter data in this test",
            )
            channels = await conn.fetch("SELECT DISTINCT channel FROM outbox")
            assert [r["channel"] for r in channels] == ["mqtt"]
            assert "mail" not in Notifier(make_settings(database_url)).senders
        finally:
            await conn.close()

    asyncio.run(go())


def test_a_revision_goes_out_once_like_an_issue(
    database_url: str, mosquitto: Mosquitto, smtp: SmtpSink, receiver: Receiver
) -> None:
    """September issued while five days of the plant's meter were missing (accepted), then
    revised once they arrived: the revision is delivered once by webhook, mail and MQTT,
    saying what it replaces and why; delivering again sends nothing."""
    secret = webhook.generate_secret()
    net = network(receiver.url())
    settings = make_settings(
        database_url, smtp_url=smtp.url, mqtt_url=mosquitto.url, webhook_secret=secret
    )
    gap_start = datetime(2026, 9, 9, 22, tzinfo=UTC)
    gap_end = gap_start + timedelta(days=5)
    rows: dict[int, asyncpg.Record] = {}

    async def go() -> None:
        conn = await connect(database_url, application_name="symbiont-tests")
        try:
            await apply_network(conn, net)
            gap = parse_fault(f"gap:out@{gap_start.isoformat()}+5d", net)
            await write_simulation(asyncpg_dsn(database_url), net, SEPT, OCT, faults=[gap], seed=5)
            engine = Engine(Settings(database_url=database_url))
            await engine.process_pending(conn, now=OCT)
            await issue_month(
                conn, net, 2026, 9, ISSUE_SEPT, settings=settings, accept_incomplete="meter out"
            )
            await write_simulation(asyncpg_dsn(database_url), net, gap_start, gap_end, seed=5)
            await engine.process_pending(conn, now=OCT)
            async with Notifier(settings) as notifier:
                assert notifier.mqtt is not None and await notifier.mqtt.wait_connected(5)
                await deliver_until_done(notifier, conn)
                revised = await revise_statement(
                    conn,
                    net,
                    "plant",
                    2026,
                    9,
                    ISSUE_SEPT + timedelta(days=2),
                    "the meter's five missing days arrived",
                    settings=settings,
                )
                assert revised.revision == 2 and revised.new
                await deliver_until_done(notifier, conn)
                assert await notifier.deliver_due(now=ISSUE_SEPT + timedelta(days=400)) == 0
                final = await conn.fetch("SELECT status, attempts FROM outbox")
                assert {(r["status"], r["attempts"]) for r in final} == {("delivered", 1)}
            for r in await conn.fetch("SELECT * FROM statements WHERE partner_id = 'plant'"):
                rows[r["revision"]] = r
        finally:
            await conn.close()

    with MqttWatch(mosquitto, "symbiont/statements/plant") as watch:
        asyncio.run(go())
        hashes = {r["content_hash"] for r in rows.values()}
        notices = watch.payloads(lambda p: p.get("content_hash") in hashes, count=2)
    one, two = rows[1], rows[2]
    doc = json.loads(two["document"])
    assert doc["previous_hash"] == one["content_hash"] and doc["revision"] == 2
    assert [(n["event"], n["revision"]) for _, _, n in notices] == [
        ("statement.issued", 1),
        ("statement.revised", 2),
    ]
    assert notices[1][2]["previous_hash"] == one["content_hash"]

    # Webhook: one per revision, the second carrying the revision's document
    assert len(receiver.requests) == 2
    payload = Webhook(secret).verify(receiver.requests[1].body, receiver.requests[1].headers)
    assert payload["event"] == "statement.revised"
    assert payload["document"] == doc and verify_hash(payload["document"])
    assert payload["revision_reason"] == "the meter's five missing days arrived"

    # Mail: one per revision and recipient; the revision says what it replaces and why
    mails = [m for m in smtp.received() if m.rcpt_tos == [PLANT_MAIL]]
    assert len(mails) == 2
    first, second = (m.message for m in mails)
    assert first["Subject"] == "Exchange statement 2026-09 — Plant A/S"
    assert second["Subject"] == "Exchange statement 2026-09 — Plant A/S (revision 2)"
    body = second.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert f"Document number: {doc['document_number']}" in text
    assert one["content_hash"] in text and "five missing days arrived" in text
    first_body = first.get_body(("plain",))
    assert first_body is not None and "Issued with incomplete data: meter out" in (
        first_body.get_content()
    )
    files = attachments(second)
    assert sorted(files) == ["statement-plant-2026-09-r2.csv", "statement-plant-2026-09-r2.pdf"]
    assert files["statement-plant-2026-09-r2.pdf"][1] == bytes(two["pdf"])
