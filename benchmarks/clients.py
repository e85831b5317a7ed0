"""The MQTT clients the ingest benchmark runs beside ``symbiont ingest``, each in its own process.

``python -m benchmarks.clients ROLE ...`` runs one of them and prints one JSON line of results
on stdout:

- ``raw``: the ceiling. One paho subscriber that does nothing but ``json.loads`` each
  payload and lets paho acknowledge it: a persistent session with the same shared
  subscription as ingest, MQTT 5 with ingest's in-flight window (``--protocol 5``, the
  default) or MQTT 3.1.1 (``--protocol 3.1.1``).
- ``naive``: per message, ``json.loads``, one INSERT per reading in autocommit (one commit per
  message), then the acknowledgement; the network loop waits for the database.
- ``pace``: a publisher (``QoS1Publisher``, not paho) holding a steady rate of single-reading
  messages whose value is the wall-clock time of publication, for the latency measurement.

Running them as separate processes keeps their CPU (and GIL) apart from the orchestrator's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from benchmarks.harness.proc import rusage_cpu, status_kib

READINGS_FILTER = "symbiont/readings/#"


def split_url(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` → (host, port); the benchmark's brokers are anonymous, plain TCP."""
    rest = url.split("://", 1)[-1]
    host, _, port = rest.rpartition(":")
    return host or "127.0.0.1", int(port)


def session_properties() -> Properties:
    """CONNECT properties of a persistent session, as ingest sends them."""
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0xFFFFFFFF
    props.ReceiveMaximum = 65535
    return props


def make_client(client_id: str, *, manual_ack: bool = False) -> mqtt.Client:
    return mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )


def create_session(
    url: str, client_id: str, group: str, *, protocol: str = "5", timeout: float = 10.0
) -> None:
    """Open a persistent session subscribed to ``$share/group/symbiont/readings/#`` (QoS 1) and
    leave: from then on the broker queues the readings for it."""
    host, port = split_url(url)
    if protocol == "5":
        client = make_client(client_id)
    else:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
    subscribed = threading.Event()

    def on_connect(
        c: mqtt.Client, u: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        c.subscribe(f"$share/{group}/{READINGS_FILTER}", qos=1)

    def on_subscribe(
        c: mqtt.Client, u: Any, mid: int, reasons: list[ReasonCode], props: Properties | None
    ) -> None:
        subscribed.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    if protocol == "5":
        client.connect(host, port, keepalive=30, clean_start=False, properties=session_properties())
    else:
        client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        if not subscribed.wait(timeout):
            raise TimeoutError(f"no SUBACK from {url} within {timeout} s")
    finally:
        client.disconnect()
        client.loop_stop()


class Drain:
    """Counts messages until ``n`` arrived, then disconnects; records when the first and the
    last arrived."""

    def __init__(self, client: mqtt.Client, n: int) -> None:
        self.client = client
        self.n = n
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    def tick(self) -> None:
        self.count += 1
        if self.count == 1:
            self.first = time.time()
        if self.count >= self.n:
            self.last = time.time()
            # Every earlier PUBACK is queued before this DISCONNECT; this last message's may
            # be lost, which does not matter: nothing reads this session again.
            self.client.disconnect()


def _consume(
    args: argparse.Namespace, client: mqtt.Client, on_message: Any, drain: Drain
) -> dict[str, Any]:
    """Run the network loop in this thread (the fastest way to drive paho) until the drain
    is complete or ``args.timeout`` passed."""
    host, port = split_url(args.url)
    group = args.group

    def on_connect(
        c: mqtt.Client, u: Any, flags: Any, reason: ReasonCode, props: Properties | None
    ) -> None:
        c.subscribe(f"$share/{group}/{READINGS_FILTER}", qos=1)

    client.on_connect = on_connect
    client.on_message = on_message
    timer = threading.Timer(args.timeout, client.disconnect)
    timer.daemon = True
    startup_cpu = rusage_cpu()
    connect_at = time.time()
    if args.protocol == "5":
        client.connect(host, port, keepalive=60, clean_start=False, properties=session_properties())
    else:
        client.connect(host, port, keepalive=60)
    timer.start()
    client.loop_forever()
    timer.cancel()
    return {
        "received": drain.count,
        "complete": drain.count >= drain.n,
        "connect_at": connect_at,
        "first_at": drain.first,
        "last_at": drain.last or time.time(),
        "vm_hwm_kib": status_kib(),
        "cpu_s": rusage_cpu(),
        "startup_cpu_s": startup_cpu,
    }


def consumer(args: argparse.Namespace, *, manual_ack: bool = False) -> mqtt.Client:
    if args.protocol == "5":
        return make_client(args.client_id, manual_ack=manual_ack)
    return mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        protocol=mqtt.MQTTv311,
        clean_session=False,
        manual_ack=manual_ack,
    )


def run_raw(args: argparse.Namespace) -> dict[str, Any]:
    client = consumer(args)
    drain = Drain(client, args.n)
    loads = json.loads
    tick = drain.tick

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        loads(msg.payload)
        tick()

    return _consume(args, client, on_message, drain)


_NAIVE_INSERT = """
INSERT INTO readings (meter_id, ts, value) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING
"""


def run_naive(args: argparse.Namespace) -> dict[str, Any]:
    import asyncpg

    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(
        asyncpg.connect(args.database, server_settings={"application_name": args.client_id})
    )
    months: set[tuple[int, int]] = set()
    client = consumer(args)
    drain = Drain(client, args.n)

    def on_message(c: mqtt.Client, u: Any, msg: mqtt.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        meter = msg.topic.rsplit("/", 1)[1]
        items = doc if isinstance(doc, list) else [doc]
        for item in items:
            ts = datetime.fromisoformat(item["ts"]).astimezone(UTC)
            if (ts.year, ts.month) not in months:
                loop.run_until_complete(conn.execute("SELECT symbiont_ensure_partition($1)", ts))
                months.add((ts.year, ts.month))
            # asyncpg outside a transaction: autocommit, so one commit per statement.
            loop.run_until_complete(conn.execute(_NAIVE_INSERT, meter, ts, float(item["value"])))
        drain.tick()  # paho sends the PUBACK when this callback returns: after the commit

    try:
        return _consume(args, client, on_message, drain)
    finally:
        loop.run_until_complete(conn.close())
        loop.close()


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: bytes) -> bytes:
    return struct.pack("!H", len(text)) + text


class QoS1Publisher:
    """A minimal MQTT 3.1.1 publisher on a plain socket: QoS 1 PUBLISH packets written in
    bulk, PUBACKs counted by a reader thread.

    The publishers are not what is measured, but they share the 2 cores with what is: paho
    costs about 100 µs of CPU per QoS 1 message sent (two threads, a wake-up per packet, the
    PUBACK handling), this about 4 µs in bulk and 20–30 µs paced at a few thousand messages/s
    (the PUBACKs then arrive a few at a time). At most ``window`` messages are unacknowledged, so a
    packet id (1…65535, in turn) is never reused while still in flight.
    """

    def __init__(self, url: str, client_id: str, *, window: int = 20_000) -> None:
        if not 0 < window < 65535:
            raise ValueError("window must be between 1 and 65534")
        host, port = split_url(url)
        self.window = window
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Clean session, keep-alive 0 (no PINGREQ needed however long a pause is).
        body = _utf8(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0)
        body += _utf8(client_id.encode())
        self.sock.sendall(b"\x10" + _remaining_length(len(body)) + body)
        connack = self._recv_exactly(4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"broker refused the connection: {connack!r}")
        self.sock.settimeout(None)
        self.sent = 0
        self.acked = 0
        self.error: str | None = None
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="pubacks", daemon=True)
        self._reader.start()

    def _recv_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            data += chunk
        return data

    def _read(self) -> None:
        pending = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                pending += chunk
                whole = len(pending) // 4 * 4
                packets, pending = pending[:whole], pending[whole:]
                # PUBACK = 0x40 0x02 id id; the broker sends nothing else to this client.
                if packets[0::4].strip(b"\x40") or packets[1::4].strip(b"\x02"):
                    self.error = f"unexpected packet from the broker: {packets[:8]!r}"
                    break
                with self._cond:
                    self.acked += whole // 4
                    self._cond.notify_all()
        except OSError as exc:
            self.error = str(exc)
        with self._cond:
            self._cond.notify_all()

    def publish(self, messages: Sequence[tuple[bytes, bytes]]) -> None:
        """Send QoS 1 PUBLISH packets for (topic, payload) pairs, in one write."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: (
                    self.error is not None or self.sent + len(messages) - self.acked <= self.window
                ),
                timeout=60,
            ):
                raise TimeoutError(f"no PUBACK for 60 s ({self.acked} of {self.sent})")
        if self.error is not None:
            raise ConnectionError(self.error)
        out = []
        for topic, payload in messages:
            self.sent += 1
            packet_id = (self.sent - 1) % 65535 + 1
            body = _utf8(topic) + struct.pack("!H", packet_id) + payload
            out.append(b"\x32" + _remaining_length(len(body)) + body)
        self.sock.sendall(b"".join(out))

    def wait_acked(self, timeout: float = 60.0) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: self.error is not None or self.acked >= self.sent, timeout=timeout
            )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._reader.join(5)


PACE_TICK_S = 0.002


def run_pace(args: argparse.Namespace) -> dict[str, Any]:
    """Publish ``rate`` messages/s for ``duration`` s; each reading's value is the wall-clock
    time just before its packet was written to the socket.

    Message i goes to meter ``i % meters`` with ts ``start + (i // meters)`` seconds, so
    every (meter, ts) is distinct. Every 2 ms the messages that have fallen due are written
    together.
    """
    pub = QoS1Publisher(args.url, args.client_id)
    topics = [
        f"symbiont/readings/{args.partner}/{args.meter_prefix}{m:03d}".encode()
        for m in range(args.meters)
    ]
    total = int(args.rate * args.duration)
    rate = args.rate
    meters = args.meters
    start_ts = int(args.start_ts)
    stamp_second, stamp = -1, ""
    behind_max = 0.0
    published = 0
    t0 = time.time()
    first = last = t0
    try:
        while published < total:
            tick = time.time()
            due = min(total, int((tick - t0) * rate) + 1)
            chunk: list[tuple[bytes, bytes]] = []
            at = time.time()
            for i in range(published, due):
                second = start_ts + i // meters
                if second != stamp_second:
                    stamp_second = second
                    stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                chunk.append((topics[i % meters], f'{{"ts":"{stamp}","value":{at!r}}}'.encode()))
                behind_max = max(behind_max, at - (t0 + i / rate))
            if chunk:
                pub.publish(chunk)
                if published == 0:
                    first = at
                last = at
                published = due
            # Wake every 2 ms at most (one write per tick), sooner only to start on time.
            sleep = max(t0 + published / rate, tick + PACE_TICK_S) - time.time()
            if sleep > 0:
                time.sleep(sleep)
        pub.wait_acked()
    finally:
        pub.close()
    span = last - first
    return {
        "published": published,
        "acked": pub.acked,
        "first_at": first,
        "last_at": last,
        "achieved_rate": (published - 1) / span if span > 0 else 0.0,
        "max_behind_s": behind_max,
        "cpu_s": rusage_cpu(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.clients")
    sub = parser.add_subparsers(dest="role", required=True)
    for role in ("raw", "naive"):
        p = sub.add_parser(role)
        p.add_argument("--url", required=True)
        p.add_argument("--client-id", required=True)
        p.add_argument("--group", required=True)
        p.add_argument("--n", type=int, required=True, help="messages to wait for")
        p.add_argument("--timeout", type=float, default=600.0)
        p.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
        if role == "naive":
            p.add_argument("--database", required=True, help="postgresql:// URL")
    p = sub.add_parser("pace")
    p.add_argument("--url", required=True)
    p.add_argument("--client-id", required=True)
    p.add_argument("--rate", type=float, required=True, help="messages per second")
    p.add_argument("--duration", type=float, required=True, help="seconds")
    p.add_argument("--partner", required=True)
    p.add_argument("--meter-prefix", required=True)
    p.add_argument("--meters", type=int, required=True)
    p.add_argument("--start-ts", type=float, required=True, help="first reading's epoch time")
    args = parser.parse_args(argv)
    runner = {"raw": run_raw, "naive": run_naive, "pace": run_pace}[args.role]
    result = runner(args)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
