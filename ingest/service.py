"""``symbiont ingest``: the MQTT subscriber that writes readings and acknowledges after commit.

It takes JSON readings (``symbiont/readings/#``) and, unless ``SYMBIONT_INGEST_SPARKPLUG`` is
off, Sparkplug B (``spBv1.0/+/{NBIRTH,NDATA,NDEATH,DBIRTH,DDATA,DDEATH}/#``), both through
shared subscriptions; it publishes the Sparkplug rebirth requests (NCMD).

Threads: paho's network loop parses each message in its callback and appends it to a deque;
the asyncio main loop takes batches from the deque, commits each through a BatchWriter and
only then sends the PUBACKs (``manual_ack``). Up to ``SYMBIONT_INGEST_PIPELINE`` batches are
in the database at once, each on its own connection, and they are acknowledged in the order
they were taken. The broker's in-flight window (MQTT 5 Receive Maximum) bounds how many
unacknowledged messages can be held, so a stalled database makes the broker keep the backlog
instead of this process's memory.

Only the database's own trouble (unreachable, shutting down, out of connections or disk) holds
acknowledgements back, retried with backoff; a message the database refuses for its content
is isolated and rejected by the writer. SIGTERM stops the process within seconds whatever it
is doing: batches being committed get STOP_GRACE_S to finish and be acknowledged, everything
else stays unacknowledged with the broker, for the persistent session to deliver again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import asyncpg
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from core.db import asyncpg_dsn, require_database_url
from core.network import parse_network
from core.settings import MqttTls, Settings
from core.text import safe_text
from ingest import fastpaho, metrics
from ingest.parse import KEEP_PAYLOAD, NetworkIndex, Parsed, Parser, Reason, Rejection
from ingest.sparkplug.session import BirthRow, SparkplugSessions, rebirth_command, rebirth_topic
from ingest.writer import BatchResult, BatchWriter, Message

log = logging.getLogger("symbiont.ingest")

T = TypeVar("T")

READINGS_FILTER = "symbiont/readings/#"
# Sparkplug B: what edge nodes publish (not the commands to them, nor host states).
SPARKPLUG_FILTERS = tuple(
    f"spBv1.0/+/{kind}/#" for kind in ("NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH")
)
# A batch starts once this many messages wait (or the oldest has waited the batch wait).
BATCH_MIN_MESSAGES = 200
# On SIGTERM, how long batches already in the database may take to commit and be acknowledged.
STOP_GRACE_S = 3.0

# The database is not there, or cannot take work now: wait and try again.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # TimeoutError included
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.InsufficientResourcesError,  # too many connections, disk or memory full
    # A query started on a connection that has just received the server's FATAL "terminating
    # connection" message (PostgreSQL shutting down): asyncpg reports "cannot switch to state
    # …; another operation … is in progress".
    asyncpg.InternalClientError,
)
# Two batches in flight can deadlock on the same readings (a redelivery split across them):
# PostgreSQL aborts one, and it is simply written again at once.
RETRY_AT_ONCE: tuple[type[BaseException], ...] = (
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool
    tls_files: MqttTls = field(default_factory=MqttTls)


def mqtt_target(settings: Settings) -> MqttTarget:
    """The broker of ``settings``: SYMBIONT_MQTT_URL, with the SYMBIONT_MQTT_*_FILE of TLS."""
    return replace(parse_mqtt_url(settings.mqtt_url), tls_files=settings.mqtt_tls())


def parse_mqtt_url(url: str | None) -> MqttTarget:
    if not url:
        raise ValueError("SYMBIONT_MQTT_URL is not set (e.g. mqtt://127.0.0.1:1883)")
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"SYMBIONT_MQTT_URL must start with mqtt:// or mqtts://, not {url!r}")
    tls = parts.scheme in ("mqtts", "ssl")
    return MqttTarget(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
    )


def mqtt_client(
    target: MqttTarget,
    client_id: str,
    *,
    manual_ack: bool = False,
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
    **kwargs: Any,
) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        manual_ack=manual_ack,
        **kwargs,
    )
    if target.username:
        client.username_pw_set(target.username, target.password)
    if target.tls:
        client.tls_set_context(target.tls_files.context())
    client.on_connect_fail = _connect_failed(target)
    return client


def _connect_failed(target: MqttTarget) -> Any:
    """An ``on_connect_fail`` callback that logs why: paho retries on its own without saying
    (it calls back inside its ``except OSError``, where the exception is still at hand)."""
    where = f"{'mqtts' if target.tls else 'mqtt'}://{target.host}:{target.port}"

    def on_connect_fail(client: mqtt.Client, userdata: Any) -> None:
        reason = sys.exception() or "connection failed"
        logging.getLogger("symbiont.mqtt").warning(
            "cannot connect to the broker at %s: %s", where, reason
        )

    return on_connect_fail


async def load_index(conn: asyncpg.Connection) -> NetworkIndex | None:
    row = await conn.fetchrow("SELECT document, applied_at FROM network LIMIT 1")
    if row is None:
        return None
    net = parse_network(orjson.loads(row["document"]))
    return NetworkIndex.from_network(net, version=row["applied_at"].isoformat())


async def load_births(conn: asyncpg.Connection) -> list[BirthRow]:
    """The Sparkplug B births committed before, for :meth:`SparkplugSessions.load`."""
    rows = await conn.fetch(
        "SELECT group_id, node_id, device_id, bd_seq, metrics::text AS metrics, received_at "
        "FROM sparkplug_births"
    )
    return [
        (
            r["group_id"],
            r["node_id"],
            r["device_id"],
            r["bd_seq"],
            orjson.loads(r["metrics"]),
            r["received_at"],
        )
        for r in rows
    ]


class IngestService:
    def __init__(self, settings: Settings, *, client_id: str | None = None) -> None:
        self.settings = settings
        self.client_id = client_id or settings.ingest_client_id
        self.dsn = asyncpg_dsn(require_database_url(settings.database_url))
        self.target = mqtt_target(settings)
        if self.target.tls:
            self.target.tls_files.context()  # a TLS file that is missing or unusable: now
        self.pending: deque[Message] = deque()
        self.parser: Parser | None = None
        # Sparkplug B edge-node sessions, kept across network reloads (None: not taken here).
        self.sparkplug = (
            SparkplugSessions(rebirth=self._request_rebirth) if settings.ingest_sparkplug else None
        )
        if self.sparkplug is not None:
            metrics.watch_sparkplug(self.sparkplug.counts)
        self.generation = 0
        self.connected = threading.Event()
        self._ack_lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._stopping = False
        # Batches are written on several connections at once (SYMBIONT_INGEST_PIPELINE): one
        # batch's Python work overlaps the previous batch's time in PostgreSQL. They are
        # acknowledged in the order they were taken.
        self.writers = [
            BatchWriter(
                self.dsn,
                application_name=f"symbiont-ingest:{self.client_id}" + (f"/{i + 1}" if i else ""),
            )
            for i in range(settings.ingest_pipeline)
        ]
        self.stats = {"messages": 0, "readings": 0, "inserted": 0, "rejected": 0, "batches": 0}
        self.in_batches = 0  # messages taken into batches, not yet acknowledged
        metrics.HELD.set_function(lambda: len(self.pending) + self.in_batches)

    # -- MQTT thread ----------------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return
        share = f"$share/{self.settings.ingest_share_group}/"
        topics = [share + READINGS_FILTER]
        if self.sparkplug is not None:
            topics += [share + f for f in SPARKPLUG_FILTERS]
        client.subscribe([(topic, 1) for topic in topics])
        self.connected.set()
        metrics.CONNECTED.set(1)
        log.info(
            "connected to %s://%s:%d as %s (session present: %s), subscribed to %s",
            "mqtts" if self.target.tls else "mqtt",
            self.target.host,
            self.target.port,
            self.client_id,
            getattr(flags, "session_present", "?"),
            topics[0] + (" and Sparkplug B (spBv1.0)" if len(topics) > 1 else ""),
        )

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # Messages received on the old connection may still be committed, but must never be
        # acknowledged on the new one (their packet ids mean something else there).
        with self._ack_lock:
            self.generation += 1
        self.connected.clear()
        metrics.CONNECTED.set(0)
        if not self._stopping:
            log.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        parser = self.parser
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = msg._topic.decode("utf-8", "replace")
        try:
            if parser is None:
                raise RuntimeError("no network loaded")
            parsed = parser.parse(topic, bytes(msg.payload), now, msg.dup)
        except Exception:  # a last resort (parsing never raises): one message never stops all
            topic = safe_text(topic)
            log.exception("could not parse a message on %s", topic[:200])
            parsed = Parsed(topic, None)
            parsed.rejections.append(
                Rejection(
                    Reason.invalid_format,
                    "payload could not be read",
                    None,
                    None,
                    bytes(msg.payload[:KEEP_PAYLOAD]),
                )
            )
        self.pending.append(Message(parsed, now, msg.mid, msg.qos, self.generation, msg.dup))

    def _request_rebirth(self, group: str, node: str) -> None:
        """Ask a Sparkplug B edge node for its births again (NCMD Node Control/Rebirth, QoS 0
        as Sparkplug has commands sent). Runs on the MQTT thread."""
        client = self._client
        if client is None:
            return
        topic = rebirth_topic(group, node)
        info = client.publish(topic, rebirth_command(int(time.time() * 1000)), qos=0)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("could not send the rebirth request on %s (%s)", topic, info.rc)

    def _start_mqtt(self) -> mqtt.Client:
        if self.settings.ingest_mqtt_protocol == "3.1.1":
            # MQTT 3.1.1 costs paho about half as much per message as MQTT 5 (no properties
            # to parse); the broker's max_inflight_messages then bounds what ingest holds
            # unacknowledged (the shipped broker configurations set it to 10000).
            client = mqtt_client(
                self.target,
                self.client_id,
                manual_ack=True,
                protocol=MQTTProtocolVersion.MQTTv311,
                clean_session=False,
            )
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            client.on_message = self._on_message
            client.reconnect_delay_set(min_delay=1, max_delay=10)
            client.connect_async(self.target.host, self.target.port, keepalive=30)
            client.loop_start()
            return client
        fastpaho.install()  # paho's MQTT 5 decoding, without building empty Properties
        client = mqtt_client(self.target, self.client_id, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0xFFFFFFFF  # the session (and its queue) never expires
        # The in-flight window: the broker sends no more than this many unacknowledged
        # messages, so a slow database fills the broker's queue, not this process.
        props.ReceiveMaximum = self.settings.ingest_queue_messages
        client.connect_async(
            self.target.host, self.target.port, keepalive=30, clean_start=False, properties=props
        )
        client.loop_start()
        return client

    # -- asyncio side ---------------------------------------------------------------------

    async def _wait_for_network(self, stop: asyncio.Event) -> NetworkIndex | None:
        announced = False
        while not stop.is_set():
            try:
                conn = await asyncpg.connect(self.dsn)
                try:
                    index = await load_index(conn)
                    if index is not None and self.sparkplug is not None:
                        nodes = self.sparkplug.load(await load_births(conn))
                        if nodes:
                            log.info("Sparkplug B births of %d edge nodes loaded", nodes)
                finally:
                    await conn.close()
                if index is not None:
                    return index
                if not announced:
                    log.warning("no network applied yet; run `symbiont network apply FILE`")
                    announced = True
            except (
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
            ) as exc:
                log.warning("database not reachable (%s); retrying", exc)
            await _sleep_or_stop(stop, 2.0)
        return None

    async def _watch_network(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await _sleep_or_stop(stop, 5.0)
            try:
                conn = await asyncpg.connect(self.dsn)
                try:
                    version = await conn.fetchval("SELECT applied_at FROM network LIMIT 1")
                    if (
                        version is not None
                        and self.parser is not None
                        and version.isoformat() != self.parser.index.version
                    ):
                        index = await load_index(conn)
                        if index is not None:
                            self.parser = self._parser(index)
                            log.info("network reloaded (%d meters)", len(index.meters))
                finally:
                    await conn.close()
            except (
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
            ):
                pass  # the writer reports database trouble

    def _parser(self, index: NetworkIndex) -> Parser:
        s = self.settings
        return Parser(
            index,
            max_payload=s.max_payload_bytes,
            backfill_days=s.backfill_days,
            future_tolerance_s=s.future_tolerance_s,
            handler=self.sparkplug,
        )

    def _ready(self, wait: float) -> bool:
        pending = self.pending
        return len(pending) >= BATCH_MIN_MESSAGES or time.time() - pending[0].received >= wait

    def _until_ready(self, wait: float) -> float:
        """Seconds until the oldest waiting message has waited ``wait`` (at least 1 ms)."""
        try:
            oldest = self.pending[0].received
        except IndexError:
            return wait
        return max(0.001, oldest + wait - time.time())

    def _take_batch(self) -> list[Message]:
        batch: list[Message] = []
        limit = self.settings.ingest_batch_readings
        size = 0
        pending = self.pending
        while pending and size < limit:
            msg = pending.popleft()
            batch.append(msg)
            size += len(msg.parsed.readings) + 1
        return batch

    async def _write(
        self, writer: BatchWriter, batch: list[Message], stop: asyncio.Event | None = None
    ) -> tuple[BatchResult, float] | None:
        """Commit ``batch`` through ``writer``, retrying while the database itself fails (the
        writer isolates messages it refuses). None when ``stop`` is set and the batch is not
        committed: it stays unacknowledged, with the broker."""
        stop = stop or asyncio.Event()
        delay = 0.2
        assert self.parser is not None
        while True:
            started = time.perf_counter()
            try:
                result = await writer.write(batch, self.parser.index)
            except RETRY_AT_ONCE as exc:
                log.warning(
                    "batch of %d messages met another (%s); writing it again", len(batch), exc
                )
                delay = 0.0
            except UNAVAILABLE as exc:
                log.warning(
                    "database unavailable (%s: %s); holding %d messages unacknowledged, "
                    "retrying in %.1f s",
                    type(exc).__name__,
                    exc,
                    len(batch),
                    delay,
                )
            except asyncpg.PostgresError as exc:
                log.error(
                    "batch of %d messages failed (%s: %s); holding them unacknowledged, "
                    "retrying in %.1f s",
                    len(batch),
                    type(exc).__name__,
                    exc,
                    delay,
                )
            except Exception:
                log.exception(
                    "batch of %d messages failed; holding them unacknowledged, retrying in %.1f s",
                    len(batch),
                    delay,
                )
            else:
                return result, time.perf_counter() - started
            metrics.DB_ERRORS.inc()
            # Part of the batch may be committed already (the halves of a split batch commit
            # on their own; a commit whose answer was lost looks like a failure): written
            # again as a redelivery, none of its rejections is recorded twice.
            for msg in batch:
                msg.dup = True
            await writer.close()
            if not stop.is_set():
                await _sleep_or_stop(stop, delay)
            if stop.is_set():
                return None
            delay = min(max(delay * 2, 0.2), 5.0)

    def _ack(self, batch: list[Message]) -> None:
        client = self._client
        if client is None:
            return
        with self._ack_lock:
            generation = self.generation
            for msg in batch:
                if msg.qos and msg.generation == generation:
                    client.ack(msg.mid, msg.qos)

    def _account(self, batch: list[Message], result: Any, elapsed: float) -> None:
        now = time.time()
        metrics.MESSAGES.inc(result.messages)
        metrics.READINGS.inc(result.inserted)
        metrics.DUPLICATES.inc(result.duplicates)
        for reason, n in result.rejections.items():
            metrics.REJECTIONS.labels(reason=reason).inc(n)
        metrics.BATCH_SECONDS.observe(elapsed)
        metrics.BATCH_MESSAGES.observe(len(batch))
        metrics.LAG_SECONDS.set(now - batch[0].received)
        metrics.PENDING.set(len(self.pending))
        s = self.stats
        s["messages"] += result.messages
        s["readings"] += result.readings
        s["inserted"] += result.inserted
        s["rejected"] += sum(result.rejections.values())
        s["batches"] += 1

    async def run(self, stop: asyncio.Event) -> None:
        index = await _unless_stopped(stop, self._wait_for_network(stop))
        if index is None:
            return
        self.parser = self._parser(index)
        log.info("network loaded: %d partners, %d meters", len(index.partners), len(index.meters))
        self._client = self._start_mqtt()
        watcher = asyncio.create_task(self._watch_network(stop))
        reporter = asyncio.create_task(self._report(stop))
        wait = self.settings.ingest_batch_wait_ms / 1000.0
        free = deque(self.writers)
        inflight: deque[
            tuple[list[Message], BatchWriter, asyncio.Task[tuple[BatchResult, float] | None]]
        ]
        inflight = deque()
        deadline: float | None = None  # once stopping: when batches still in flight are let go
        try:
            while True:
                if stop.is_set():
                    # Nothing new goes out; what is in the database gets STOP_GRACE_S to
                    # commit and be acknowledged. The rest stays with the broker.
                    if deadline is None:
                        deadline = time.monotonic() + STOP_GRACE_S
                    if not inflight:
                        break
                else:
                    # A batch goes out once BATCH_MIN_MESSAGES wait, or the oldest has waited
                    # SYMBIONT_INGEST_BATCH_WAIT_MS: every batch costs a few database round
                    # trips and a commit, so a trickle is gathered rather than sent at once.
                    while self.pending and free and self._ready(wait):
                        batch = self._take_batch()
                        self.in_batches += len(batch)
                        writer = free.popleft()
                        task = asyncio.create_task(self._write(writer, batch, stop))
                        inflight.append((batch, writer, task))
                    if not inflight:
                        await _sleep_or_stop(stop, self._until_ready(wait))
                        continue
                batch, writer, task = inflight[0]
                if not task.done():
                    timeout = wait if deadline is None else deadline - time.monotonic()
                    if timeout <= 0:
                        break
                    await asyncio.wait({task}, timeout=max(timeout, 0.001))
                    continue
                inflight.popleft()
                free.append(writer)
                outcome = task.result()
                if outcome is None:
                    # Stopped before it committed: acknowledging a later batch would ack
                    # out of order, so it and everything after it stay with the broker.
                    break
                result, elapsed = outcome
                self._ack(batch)
                self.in_batches -= len(batch)
                self._account(batch, result, elapsed)
        finally:
            self._stopping = True
            await self._abandon([task for _, _, task in inflight])
            watcher.cancel()
            reporter.cancel()
            self._client.disconnect()
            self._client.loop_stop()
            for writer in self.writers:
                await writer.close()
            log.info(
                "ingest stopped: %(messages)d messages, %(inserted)d readings stored, "
                "%(rejected)d rejected",
                self.stats,
            )

    async def _abandon(self, tasks: list[asyncio.Task[Any]]) -> None:
        """Cancel batches still being written; their messages stay unacknowledged."""
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        _, hung = await asyncio.wait(tasks, timeout=1.0)
        if hung:  # a rollback waiting on a server that does not answer: cut the connections
            for writer in self.writers:
                writer.terminate()
            await asyncio.wait(hung, timeout=1.0)
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a failure of an abandoned batch is no news

    async def _report(self, stop: asyncio.Event) -> None:
        last = dict(self.stats)
        while not stop.is_set():
            await _sleep_or_stop(stop, 10.0)
            s = self.stats
            if s["messages"] != last["messages"]:
                log.info(
                    "last 10 s: %d messages, %d readings stored, %d rejected; %d waiting",
                    s["messages"] - last["messages"],
                    s["inserted"] - last["inserted"],
                    s["rejected"] - last["rejected"],
                    len(self.pending),
                )
            last = dict(s)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def _unless_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, T]) -> T | None:
    """``work``'s result, or None as soon as ``stop`` is set (``work`` is cancelled then)."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


def run(settings: Settings, *, client_id: str | None = None) -> int:
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, settings.metrics_host)
    service = IngestService(settings, client_id=client_id)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await service.run(stop)

    asyncio.run(main())
    return 0
