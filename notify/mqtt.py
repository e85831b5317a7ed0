"""Alert and statement events published over MQTT (QoS 1, retained): one connection per
notifier, and PUBACK reason codes read as success, a retry or a final failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from ingest.service import MqttTarget, parse_mqtt_url
from ingest.service import mqtt_client as make_mqtt_client
from notify.outbox import Outcome

log = logging.getLogger("symbiont.notify")

# PUBACK reason codes a retry cannot fix: not authorized, topic name invalid, payload invalid.
_MQTT_FINAL_REASONS = frozenset({0x87, 0x90, 0x99})


class MqttPublisher:
    """One paho client, kept connected by paho's own thread; ``publish`` awaits the PUBACK.

    PUBACKs are matched to waiting publishes by message id.  An acknowledgement may arrive
    before the publisher registered its future (``_early``); one for a publish that gave up
    waiting (``_abandoned``) is dropped, so a reused message id is never matched to a stale
    acknowledgement.  The lock guards only these dicts, never a paho call.
    """

    def __init__(self, broker: str | MqttTarget, client_id: str) -> None:
        self.target = parse_mqtt_url(broker) if isinstance(broker, str) else broker
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
        scheme = "mqtts" if self.target.tls else "mqtt"
        return f"{scheme}://{self.target.host}:{self.target.port}"

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
