"""Shared helpers for tests that run ``symbiont ingest`` for real.

- ``apply_network``: load a network (a dict, as in a network file) into a database.
- ``IngestProcess``: ``symbiont ingest`` as a subprocess with its log in a file, to start,
  SIGKILL and restart; ``wait_subscribed`` polls the log for the subscription line.
- ``ServiceProcess``: any other ``symbiont`` service (``rules``, ``api``) the same way, and
  ``freeze``/``thaw`` (SIGSTOP/SIGCONT) to hold it at a chosen moment before a SIGKILL;
  ``scrape_metrics`` reads a process's Prometheus metrics.
- ``Publisher``: an MQTT v5 QoS 1 publisher that knows which messages got their PUBACK,
  reconnects by itself (paho re-sends unacknowledged QoS 1 messages) and can re-publish
  what is still unacknowledged; ``mqtt://user:password@host:port`` signs in as that user.
- ``MqttProxy``: a TCP proxy in front of the broker that can swallow the PUBACKs a client
  sends, to kill ingest after it committed but before the broker saw the acknowledgement.
- ``counts``/``fetch_readings``/``fetch_rejections``/``wait_until``: look at the outcome.

Nothing here is pytest-specific; fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import unquote, urlsplit

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from core.apply import apply_network as _apply_network
from core.db import connect
from core.network import parse_network

REPO = Path(__file__).resolve().parent.parent
SUBSCRIBED = "subscribed to"  # from ingest.service's "connected to mqtt://… subscribed to …"
NO_MATCHING_SUBSCRIBERS = 0x10  # MQTT 5 PUBACK reason code

T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# ------------------------------------------------------------------------------ database


def apply_network(database_url: str, document: Mapping[str, Any]) -> str:
    """Validate ``document`` (a network file as a dict) and apply it; returns the summary."""
    net = parse_network(dict(document))

    async def go() -> str:
        conn = await connect(database_url, application_name="symbiont-tests")
        try:
            return (await _apply_network(conn, net)).summary()
        finally:
            await conn.close()

    return run_async(go())


async def _fetch(url: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncio.wait_for(connect(url, application_name="symbiont-tests"), timeout=15)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def fetch(url: str, sql: str, *args: Any) -> list[Any]:
    """Rows (asyncpg Records) of one query on a new connection."""
    return run_async(_fetch(url, sql, *args))


@dataclass(frozen=True)
class Counts:
    readings: int
    rejections: int
    messages: int  # messages ingest committed, from ingest_counts (redeliveries included)
    duplicates: int


def counts(url: str) -> Counts:
    row = fetch(
        url,
        """SELECT (SELECT count(*) FROM readings) AS readings,
                  (SELECT count(*) FROM rejections) AS rejections,
                  (SELECT coalesce(sum(messages), 0) FROM ingest_counts) AS messages,
                  (SELECT coalesce(sum(duplicates), 0) FROM ingest_counts) AS duplicates""",
    )[0]
    return Counts(
        int(row["readings"]), int(row["rejections"]), int(row["messages"]), int(row["duplicates"])
    )


def fetch_readings(url: str) -> dict[tuple[str, datetime], float]:
    """Every stored reading as {(meter, ts): value}."""
    rows = fetch(url, "SELECT meter_id, ts, value FROM readings")
    return {(r["meter_id"], r["ts"]): float(r["value"]) for r in rows}


@dataclass(frozen=True)
class StoredRejection:
    id: int
    topic: str
    reason: str
    partner: str | None
    meter: str | None
    detail: str
    payload: bytes | None
    payload_sha: bytes | None


def fetch_rejections(url: str, after_id: int = 0) -> list[StoredRejection]:
    rows = fetch(
        url,
        """SELECT id, topic, reason, partner_id, meter_id, detail, payload, payload_sha
           FROM rejections WHERE id > $1 ORDER BY id""",
        after_id,
    )
    return [
        StoredRejection(
            int(r["id"]),
            r["topic"],
            r["reason"],
            r["partner_id"],
            r["meter_id"],
            r["detail"],
            None if r["payload"] is None else bytes(r["payload"]),
            None if r["payload_sha"] is None else bytes(r["payload_sha"]),
        )
        for r in rows
    ]


def poll(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    """Poll ``condition`` until it holds; AssertionError naming ``what`` after ``timeout``."""
    if not poll(condition, timeout, interval):
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# -------------------------------------------------------------------------- ingest process


def symbiont_command() -> list[str]:
    """The ``symbiont`` entry point of this interpreter's environment."""
    script = Path(sys.executable).with_name("symbiont")
    # An environment installed before the command line moved has a script that imports it
    # from where it was: run this checkout's module instead.
    if script.is_file() and "from cli.main import main" in script.read_text(errors="replace"):
        return [str(script)]
    return [sys.executable, "-m", "cli.main"]


_STARTED: list[ServiceProcess] = []


def stop_leftover_services() -> None:
    """Kill every service a test started and left running (a test that failed before its own
    cleanup): they run in sessions of their own and would outlive the test run."""
    while _STARTED:
        _STARTED.pop().kill()


class ServiceProcess:
    """Any ``symbiont`` service as a subprocess (``rules --worker-id W``, ``api --port P``,
    ``ingest``), with its log in a file that every run appends to.

    Its environment is the caller's without any ``SYMBIONT_*`` setting, plus ``env``.
    ``freeze``/``thaw`` (SIGSTOP/SIGCONT) hold it still at a chosen moment, for instance while
    it holds claimed work, before a ``kill`` (SIGKILL, as in a crash).
    """

    def __init__(
        self, args: Sequence[str], *, env: Mapping[str, str], log_path: Path, name: str = ""
    ) -> None:
        self.args = list(args)
        self.extra_env = dict(env)
        self.log_path = log_path
        self.name = name or " ".join(self.args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._log_offset = 0

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SYMBIONT_")}
        env.update({"SYMBIONT_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"})
        env.update(self.extra_env)
        return env

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        self._log_offset = self.log_offset()
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- test: start #{self.starts} of symbiont {self.name} ---\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [*symbiont_command(), *self.args],
                env=self.environment(),
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self not in _STARTED:
            _STARTED.append(self)

    def log_text(self, since: int = 0) -> str:
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(since)
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    def log_offset(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, text: str, *, since: int | None = None, timeout: float = 30.0) -> None:
        """Wait until ``text`` appears in the log after offset ``since`` (default: this start)."""
        start = self._log_offset if since is None else since
        deadline = time.monotonic() + timeout
        while text not in self.log_text(start):
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with status {self.proc.returncode} before logging "
                    f"{text!r}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} did not log {text!r} within {timeout:.0f} s:\n{self.tail()}"
                )
            time.sleep(0.05)

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def freeze(self) -> None:
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as in a crash (a frozen process dies too)."""
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (a clean stop) and wait; SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.thaw()
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def close(self) -> None:
        self.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class IngestProcess(ServiceProcess):
    """``symbiont ingest`` as a subprocess; every run appends to the same log file."""

    def __init__(
        self,
        *,
        database_url: str,
        mqtt_url: str,
        client_id: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.database_url = database_url
        self.mqtt_url = mqtt_url
        self.client_id = client_id
        super().__init__(
            ["ingest"],
            env={
                "SYMBIONT_DATABASE_URL": database_url,
                "SYMBIONT_MQTT_URL": mqtt_url,
                "SYMBIONT_INGEST_CLIENT_ID": client_id,
                **(env or {}),
            },
            log_path=log_path,
            name="ingest",
        )

    def wait_subscribed(self, *, since: int | None = None, timeout: float = 30.0) -> None:
        self.wait_for_log(SUBSCRIBED, since=since, timeout=timeout)

    def start_subscribed(self, timeout: float = 30.0) -> None:
        self.start()
        self.wait_subscribed(timeout=timeout)


def scrape_metrics(port: int, timeout: float = 2.0) -> dict[str, float]:
    """The samples a process serves on 127.0.0.1:``port``/metrics (Prometheus text format),
    as {"name{label=value,...}": value}; unlabelled samples under their bare name."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=timeout).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


# ------------------------------------------------------------------------------- publisher


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 1883


def _credentials(url: str) -> tuple[str | None, str | None]:
    parts = urlsplit(url)
    return (
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )


class Publisher:
    """MQTT v5 QoS 1 publisher that tracks PUBACKs per message.

    ``publish`` returns a ticket (the message's index). paho keeps unacknowledged QoS 1
    messages across reconnects and re-sends them, which is what QoS 1 (at least once)
    means; ``republish_unacked`` publishes again whatever still has no PUBACK, as a device
    would after giving up on a connection.
    """

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        max_inflight: int = 1000,
        reconnect_delay: tuple[int, int] = (1, 2),
        require_subscribers: bool = False,
    ) -> None:
        self.host, self.port = _host_port(url)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        user, password = _credentials(url)
        if user is not None:  # mqtt://user:password@host:port, as ingest takes it
            self.client.username_pw_set(user, password)
        self.client.max_inflight_messages_set(max_inflight)
        self.client.reconnect_delay_set(*reconnect_delay)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.connected = threading.Event()
        self.connects = 0
        self.disconnects = 0
        self.refused: list[tuple[int, int]] = []  # (ticket, reason code) of failed PUBACKs
        # MQTT 5 PUBACK 0x10 "No matching subscribers": accepted, but delivered to nobody.
        # With require_subscribers such messages count as not delivered and are sent again
        # by republish_undelivered (as a device that heeds the reason code would).
        self.require_subscribers = require_subscribers
        self.no_subscribers: list[int] = []  # tickets, in the order those PUBACKs came
        self._undelivered: set[int] = set()
        self._cond = threading.Condition()
        self._messages: list[tuple[str, bytes]] = []
        self._acked: list[bool] = []
        self._unacked = 0
        self._pending: dict[int, int] = {}  # mid → ticket
        self._early: dict[int, ReasonCode] = {}  # PUBACKs that beat publish() returning

    # callbacks run on paho's thread (on_publish while paho holds its message lock: never
    # take self._cond around client.publish)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if not reason.is_failure:
            self.connects += 1
            self.connected.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.disconnects += 1
        self.connected.clear()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            ticket = self._pending.pop(mid, None)
            if ticket is None:
                self._early[mid] = reason
            else:
                self._settle(ticket, reason)

    def _settle(self, ticket: int, reason: ReasonCode) -> None:
        if reason.is_failure:
            self.refused.append((ticket, reason.value))
            return  # stays unacknowledged: republish_unacked sends it again
        if reason.value == NO_MATCHING_SUBSCRIBERS and self.require_subscribers:
            if not self._acked[ticket]:
                self.no_subscribers.append(ticket)
                self._undelivered.add(ticket)
            return
        self._undelivered.discard(ticket)
        if not self._acked[ticket]:
            self._acked[ticket] = True
            self._unacked -= 1
            self._cond.notify_all()

    # -- API --------------------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> Self:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self.client.connect_async(
            self.host, self.port, keepalive=15, clean_start=False, properties=props
        )
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise AssertionError(f"publisher could not connect to {self.host}:{self.port}")
        return self

    def _send(self, ticket: int) -> None:
        topic, payload = self._messages[ticket]
        for _ in range(100):
            info = self.client.publish(topic, payload, qos=1)
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                time.sleep(0.01)  # the mid is still in use by an older message: next one
                continue
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                raise RuntimeError(f"publish failed: {mqtt.error_string(info.rc)}")
            break
        else:
            raise RuntimeError("publish failed: no free message id")
        with self._cond:
            early = self._early.pop(info.mid, None)
            if early is not None:
                self._settle(ticket, early)
            else:
                self._pending[info.mid] = ticket

    def publish(self, topic: str, payload: bytes) -> int:
        """Queue one QoS 1 message (sent now if connected); returns its ticket."""
        with self._cond:
            ticket = len(self._messages)
            self._messages.append((topic, payload))
            self._acked.append(False)
            self._unacked += 1
        self._send(ticket)
        return ticket

    @property
    def published(self) -> int:
        return len(self._messages)

    @property
    def unacked(self) -> int:
        with self._cond:
            return self._unacked

    def unacked_tickets(self) -> list[int]:
        with self._cond:
            return [i for i, done in enumerate(self._acked) if not done]

    def acked(self, ticket: int) -> bool:
        with self._cond:
            return self._acked[ticket]

    def wait_all(self, timeout: float) -> bool:
        """True once every message published so far has its PUBACK."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._unacked:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def republish_unacked(self) -> int:
        """Publish again every message still without a PUBACK; returns how many."""
        tickets = self.unacked_tickets()
        for ticket in tickets:
            self._send(ticket)
        return len(tickets)

    def republish_undelivered(self) -> int:
        """Publish again what the broker accepted for no subscriber; returns how many."""
        with self._cond:
            tickets = sorted(self._undelivered)
            self._undelivered.clear()
        for ticket in tickets:
            self._send(ticket)
        return len(tickets)

    def ensure_all_acked(self, timeout: float = 60.0, patience: float = 15.0) -> None:
        """Wait for every PUBACK: re-publish what reached no subscriber (with
        ``require_subscribers``) every second, and whatever is still unacknowledged every
        ``patience`` seconds; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        last_resend = time.monotonic()
        while True:
            self.republish_undelivered()
            if self.wait_all(1.0):
                return
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(
                    f"{self.unacked} of {self.published} messages never got a PUBACK"
                    f" (refused: {self.refused[:5]}, no subscribers: {len(self._undelivered)})"
                )
            if now - last_resend > patience and self.connected.is_set():
                self.republish_unacked()
                last_resend = now

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def publish_all(url: str, messages: list[tuple[str, bytes]], timeout: float = 60.0) -> None:
    """Publish ``(topic, payload)`` pairs with QoS 1 and wait for every PUBACK."""
    with Publisher(url, f"symbiont-test-pub-{os.getpid()}-{time.monotonic_ns()}") as pub:
        pub.connect()
        for topic, payload in messages:
            pub.publish(topic, payload)
        pub.ensure_all_acked(timeout)


# ------------------------------------------------------------------------------- MQTT proxy

PUBACK = 4  # MQTT control packet type


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _split_packets(buffer: bytearray) -> list[bytes]:
    """Remove and return the complete MQTT packets at the start of ``buffer``."""
    packets: list[bytes] = []
    while len(buffer) >= 2:
        length, multiplier, pos = 0, 1, 1
        while True:
            if pos >= len(buffer):
                return packets  # the remaining-length field is incomplete
            byte = buffer[pos]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            pos += 1
            if not byte & 0x80:
                break
            if pos > 4:
                raise ValueError("malformed MQTT remaining length")
        end = pos + length
        if len(buffer) < end:
            return packets
        packets.append(bytes(buffer[:end]))
        del buffer[:end]
    return packets


class MqttProxy:
    """A TCP proxy to a broker that can drop the PUBACK packets clients send.

    With ``drop_pubacks`` set, a subscriber's acknowledgements never reach the broker, so
    the messages stay in flight in its session and are redelivered (DUP set) when the
    client reconnects, exactly as when a subscriber dies between its commit and its ack.
    """

    def __init__(self, broker_host: str, broker_port: int) -> None:
        self.broker = (broker_host, broker_port)
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.drop_pubacks = False
        self.dropped = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server((self.host, self.port))
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name="mqtt-proxy")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.broker, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        buffer = bytearray()
        try:
            while data := client.recv(65536):
                buffer += data
                for packet in _split_packets(buffer):
                    if packet[0] >> 4 == PUBACK and self.drop_pubacks:
                        with self._lock:
                            self.dropped += 1
                        continue
                    upstream.sendall(packet)
        except (OSError, ValueError):
            pass
        finally:
            self._close_pair(client, upstream)

    def _down(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        finally:
            self._close_pair(client, upstream)

    def _close_pair(self, *socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def sever(self) -> None:
        """Close every proxied connection (both sides) now."""
        with self._lock:
            socks, self._sockets = self._sockets, []
        self._close_pair(*socks)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.sever()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@contextlib.contextmanager
def committed_unacknowledged(
    broker_host: str,
    broker_port: int,
    database_url: str,
    messages: list[tuple[str, bytes]],
    *,
    client_id: str,
    log_path: Path,
) -> Iterator[tuple[MqttProxy, IngestProcess]]:
    """``messages`` queued for an offline ingest session, then committed by ingest whose
    PUBACKs a proxy swallows: the broker still holds every one of them as unacknowledged.
    Yields the proxy and the (running) ingest; :func:`crash_and_redeliver` goes on from there.
    """
    n = len(messages)
    with (
        MqttProxy(broker_host, broker_port) as proxy,
        IngestProcess(
            database_url=database_url, mqtt_url=proxy.url, client_id=client_id, log_path=log_path
        ) as ingest,
    ):
        ingest.start_subscribed()  # the persistent session and its subscription now exist
        ingest.kill()
        publish_all(f"mqtt://{broker_host}:{broker_port}", messages)  # queued for the session

        # Ingest commits everything and acknowledges, but the PUBACKs never reach the broker.
        proxy.drop_pubacks = True
        ingest.start_subscribed()
        wait_until(lambda: counts(database_url).messages >= n, 30, f"ingest to commit {n}")
        wait_until(lambda: proxy.dropped >= n, 30, f"ingest to acknowledge {n} messages")
        yield proxy, ingest


def crash_and_redeliver(proxy: MqttProxy, ingest: IngestProcess, database_url: str, n: int) -> None:
    """SIGKILL ingest after its commit, before the broker heard of it, and restart it: the
    broker redelivers all ``n`` messages (DUP set) and ingest commits them again."""
    ingest.kill()
    proxy.sever()
    proxy.drop_pubacks = False
    ingest.start_subscribed()
    wait_until(
        lambda: counts(database_url).messages >= 2 * n,
        30,
        f"the broker to redeliver the {n} unacknowledged messages",
    )


def meters_network(
    network: str, partners: Mapping[str, str], meters: Sequence[Any]
) -> dict[str, Any]:
    """A network file (as a dict) of ``partners`` ({id: name}) and ``meters`` (objects with
    ``id``, ``partner``, ``kind``, ``reading`` and ``unit``): 2 % meters, a reading a minute
    but for delta meters, no exchanges."""
    return {
        "network": network,
        "name": f"{network.capitalize()} test park",
        "timezone": "Europe/Copenhagen",
        "partners": [{"id": pid, "name": name} for pid, name in partners.items()],
        "meters": [
            {
                "id": m.id,
                "partner": m.partner,
                "kind": m.kind,
                "reading": m.reading,
                "unit": m.unit,
                "uncertainty": 0.02,
                **({"interval": 60} if m.reading != "delta" else {}),
            }
            for m in meters
        ],
    }


def rfc3339(ts: datetime) -> str:
    """``ts`` in UTC as RFC 3339 with ``Z``."""
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")
