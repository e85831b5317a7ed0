"""The fixtures are real: a broker that keeps queued messages across restarts, a PostgreSQL
cluster that keeps its rows across restarts and crashes, and migrated databases."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from services import Mosquitto, PrivatePostgres

from core.db import connect

TOPIC_FILTER = "t/#"


def persistent_properties() -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0xFFFFFFFF  # never expires
    props.ReceiveMaximum = 65535
    return props


class Subscriber:
    """A persistent-session MQTT v5 client collecting QoS 1 payloads."""

    def __init__(self, broker: Mosquitto, client_id: str) -> None:
        self.broker = broker
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.session_present: bool | None = None
        self.payloads: set[str] = set()
        self.lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        assert not reason_code.is_failure, reason_code
        self.session_present = flags.session_present
        self.connected.set()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.payloads.add(message.payload.decode())

    def connect(self) -> None:
        self.client.connect(
            self.broker.host,
            self.broker.port,
            clean_start=False,
            properties=persistent_properties(),
        )
        self.client.loop_start()
        assert self.connected.wait(10), "subscriber did not connect"

    def subscribe(self) -> None:
        self.client.subscribe(TOPIC_FILTER, qos=1)
        assert self.subscribed.wait(10), "no SUBACK"

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def wait_for(self, count: int, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.payloads) >= count:
                    break
            time.sleep(0.02)
        with self.lock:
            return len(self.payloads)


def publish_qos1(broker: Mosquitto, count: int) -> None:
    """Publish ``count`` QoS 1 messages as an MQTT 3.1.1 client and wait for every PUBACK."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="publisher", protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(1000)
    acked = threading.Semaphore(0)

    def on_publish(
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        acked.release()

    client.on_publish = on_publish
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for i in range(count):
            client.publish(f"t/meter/{i % 7}", str(i), qos=1)
        for _ in range(count):
            assert acked.acquire(timeout=30), "PUBACK missing"
    finally:
        client.disconnect()
        client.loop_stop()


def queue_for_offline_subscriber(broker: Mosquitto, client_id: str, count: int) -> None:
    subscriber = Subscriber(broker, client_id)
    subscriber.connect()
    subscriber.subscribe()
    subscriber.disconnect()
    publish_qos1(broker, count)


def receive_after_reconnect(broker: Mosquitto, client_id: str, count: int) -> Subscriber:
    subscriber = Subscriber(broker, client_id)
    subscriber.connect()
    try:
        subscriber.wait_for(count)
    finally:
        subscriber.disconnect()
    return subscriber


def test_mosquitto_keeps_queued_messages_across_restart(fresh_mosquitto: Mosquitto) -> None:
    count = 3000  # more than Mosquitto's default max_queued_messages (1000)
    port = fresh_mosquitto.port
    queue_for_offline_subscriber(fresh_mosquitto, "persistent-sub", count)

    fresh_mosquitto.restart()
    assert fresh_mosquitto.port == port
    assert fresh_mosquitto.url == f"mqtt://127.0.0.1:{port}"

    subscriber = receive_after_reconnect(fresh_mosquitto, "persistent-sub", count)
    assert subscriber.session_present is True
    assert subscriber.payloads == {str(i) for i in range(count)}


def test_mosquitto_autosave_survives_kill(fresh_mosquitto: Mosquitto) -> None:
    count = 200
    queue_for_offline_subscriber(fresh_mosquitto, "crash-sub", count)
    published = time.time()
    db = fresh_mosquitto.persistence_path
    deadline = time.monotonic() + 10
    while not (db.exists() and db.stat().st_mtime > published):
        assert time.monotonic() < deadline, "no autosave within 10s"
        time.sleep(0.05)
    time.sleep(0.1)  # let the write that bumped the mtime finish

    fresh_mosquitto.kill()
    fresh_mosquitto.start()

    subscriber = receive_after_reconnect(fresh_mosquitto, "crash-sub", count)
    assert subscriber.session_present is True
    assert subscriber.payloads == {str(i) for i in range(count)}


def test_session_mosquitto_accepts_clients(mosquitto: Mosquitto) -> None:
    assert mosquitto.running
    publish_qos1(mosquitto, 10)


async def _count(url: str, table: str) -> int:
    conn = await connect(url, application_name="test-services")
    try:
        value: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
        return value
    finally:
        await conn.close()


def test_private_postgres_keeps_rows_across_restart_and_crash(
    private_postgres: PrivatePostgres,
) -> None:
    url = private_postgres.create_database("keeps_rows")
    try:

        async def fill() -> None:
            conn = await connect(url, application_name="test-services")
            try:
                await conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
                await conn.executemany(
                    "INSERT INTO t VALUES ($1, $2)", [(i, f"v{i}") for i in range(1000)]
                )
            finally:
                await conn.close()

        asyncio.run(fill())
        port = private_postgres.port

        private_postgres.restart()
        assert private_postgres.port == port
        assert asyncio.run(_count(url, "t")) == 1000

        private_postgres.stop(mode="immediate")  # a crash: committed rows must survive
        assert not private_postgres.running
        private_postgres.start()
        assert asyncio.run(_count(url, "t")) == 1000
    finally:
        private_postgres.drop_database("keeps_rows")


async def _schema_facts(url: str) -> dict[str, Any]:
    conn = await connect(url, application_name="test-services")
    try:
        return {
            "database": await conn.fetchval("SELECT current_database()"),
            "readings": await conn.fetchval("SELECT to_regclass('readings') IS NOT NULL"),
            "alembic": await conn.fetchval("SELECT count(*) FROM alembic_version"),
            "partition": await conn.fetchval("SELECT symbiont_ensure_partition(now())"),
            "expected": await conn.fetchval(
                "SELECT 'readings_' || to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM')"
            ),
            "rows": await conn.fetchval("SELECT count(*) FROM readings"),
        }
    finally:
        await conn.close()


def test_database_url_is_migrated(database_url: str) -> None:
    facts = asyncio.run(_schema_facts(database_url))
    assert facts["database"].startswith("symbiont_test_")
    assert facts["readings"] is True
    assert facts["alembic"] == 1
    assert re.fullmatch(r"readings_\d{4}_\d{2}", facts["partition"])
    assert facts["partition"] == facts["expected"]
    assert facts["rows"] == 0


def test_private_database_url_is_migrated_and_survives_restart(
    private_postgres: PrivatePostgres, private_database_url: str
) -> None:
    facts = asyncio.run(_schema_facts(private_database_url))
    assert facts["readings"] is True
    private_postgres.restart()
    assert asyncio.run(_schema_facts(private_database_url))["partition"] == facts["partition"]
