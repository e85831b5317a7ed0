"""Publishing simulated readings (``symbiont simulate``): the payload forms (batch, single,
SenML, Sparkplug B), an MQTT publisher that waits for every PUBACK, a fast backfill of a period
or live publishing at a chosen speed, and the command's arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit

import numpy as np

from cli.faults import parse_fault, parse_time
from cli.signals import FloatArray, _epoch
from cli.simulate import MeterChunk, expected_readings, simulate
from cli.sparkplug import SparkplugEncoder
from core.network import (
    Network,
    NetworkError,
    load_network,
)
from core.settings import MqttTls

if TYPE_CHECKING:
    from core.settings import Settings


Form = Literal["batch", "single", "senml", "sparkplug"]
FORMS: tuple[Form, ...] = ("batch", "single", "senml", "sparkplug")

# ---------------------------------------------------------------------------- publishing


def format_ts(ts: FloatArray) -> list[str]:
    """RFC 3339 UTC with ``Z``; milliseconds only where a time is not a whole second."""
    ms = np.round(np.asarray(ts, dtype=np.float64) * 1000.0).astype(np.int64)
    whole = np.datetime_as_string((ms // 1000).astype("datetime64[s]"), unit="s", timezone="UTC")
    if not (ms % 1000).any():
        return whole.tolist()  # type: ignore[no-any-return]
    fine = np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms", timezone="UTC")
    mixed = np.where(ms % 1000 == 0, whole, fine)
    return mixed.tolist()  # type: ignore[no-any-return]


def topic_for(partner: str, meter: str) -> str:
    return f"symbiont/readings/{partner}/{meter}"


def encode(
    meter_id: str,
    unit: str,
    stamps: Sequence[str],
    ts: FloatArray,
    values: Sequence[float],
    form: Form,
) -> bytes:
    """One message of readings of one meter in ``form``.

    ``batch``: a JSON array of ``{"ts", "value", "unit"}`` (a single reading is sent as the bare
    object); ``single``: one object (exactly one reading); ``senml``: an RFC 8428 pack whose
    first record holds ``bn`` = meter id, every record ``t`` (epoch seconds), ``v`` and ``u``.
    """
    u = json.dumps(unit)
    if form == "senml":
        times = np.round(np.asarray(ts) * 1000.0) / 1000.0
        records = [
            f'{{"t":{_num(t)},"v":{v!r},"u":{u}}}'
            for t, v in zip(times.tolist(), values, strict=True)
        ]
        if records:
            records[0] = f'{{"bn":{json.dumps(meter_id)},' + records[0][1:]
        return ("[" + ",".join(records) + "]").encode()
    items = [
        f'{{"ts":"{s}","value":{v!r},"unit":{u}}}' for s, v in zip(stamps, values, strict=True)
    ]
    if form == "single" or len(items) == 1:
        if len(items) != 1:
            raise ValueError("the single form holds exactly one reading")
        return items[0].encode()
    return ("[" + ",".join(items) + "]").encode()


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else repr(x)


def payloads(
    chunk: MeterChunk,
    form: Form = "batch",
    batch_size: int = 1000,
    sparkplug: SparkplugEncoder | None = None,
) -> Iterator[tuple[str, bytes, int]]:
    """(topic, payload, number of readings) for every message that carries ``chunk``.

    ``sparkplug``: the form ``sparkplug`` publishes the meters it maps as Sparkplug B data
    (after its births), the others as JSON batches."""
    if not 1 <= batch_size <= 10000:
        raise ValueError("batch_size must be between 1 and 10000")
    if not np.isfinite(chunk.value).all():
        raise ValueError(f"meter {chunk.meter_id}: a simulated value is not finite")
    if form == "sparkplug":
        if sparkplug is None:
            raise ValueError("the sparkplug form needs its encoder")
        if sparkplug.mapped(chunk.meter_id):
            yield from sparkplug.payloads(chunk, batch_size)
            return
        form = "batch"
    topic = topic_for(chunk.partner_id, chunk.meter_id)
    size = 1 if form == "single" else batch_size
    stamps = format_ts(chunk.ts)
    values: list[float] = chunk.value.tolist()
    for i in range(0, len(values), size):
        j = i + size
        yield (
            topic,
            encode(chunk.meter_id, chunk.unit, stamps[i:j], chunk.ts[i:j], values[i:j], form),
            len(values[i:j]),
        )


@dataclass
class PublishResult:
    """What ``publish`` did: messages and readings handed to the broker and acknowledged."""

    messages: int = 0
    readings: int = 0
    acked: int = 0
    failed: int = 0
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def rate(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0


def parse_mqtt_url(url: str) -> tuple[str, int, str | None, str | None, bool]:
    """(host, port, username, password, tls) from ``mqtt://user:pass@host:port`` or mqtts."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"MQTT URL {url!r}: use mqtt:// or mqtts://")
    tls = scheme in ("mqtts", "ssl")
    if not parts.hostname:
        raise ValueError(f"MQTT URL {url!r} has no host")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ValueError(f"MQTT URL {url!r} has a bad port") from None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, user, password, tls


class MqttPublisher:
    """A paho-mqtt 2.x publisher that counts PUBACKs and bounds what is unacknowledged.

    The network loop runs in the caller's thread (``pump``), not in paho's background thread:
    a publisher thread and a loop thread handing locks to each other under the GIL manage a
    fraction of the message rate. ``send`` blocks while ``window`` messages wait for their
    PUBACK, so memory stays bounded; ``drain`` waits for every PUBACK (QoS 1) or send (QoS 0);
    ``wait`` sleeps while keeping the connection alive. At most ``inflight`` messages are in
    flight, and never more unacknowledged than the broker's CONNACK Receive Maximum allows.
    A lost connection is re-established; paho re-sends the unacknowledged messages.
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: str | None = None,
        qos: int = 1,
        inflight: int = 1000,
        window: int = 5000,
        connect_timeout: float = 10.0,
        tls_files: MqttTls | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        if qos not in (0, 1):
            raise ValueError("qos must be 0 or 1")
        host, port, user, password, tls = parse_mqtt_url(url)
        self.host, self.port = host, port
        self.qos = qos
        self.inflight = inflight
        self._window = self.window = max(window, inflight)
        self.pending = 0
        self.acked = 0
        self.failed = 0
        self.connected = False
        self.error: str | None = None
        self._since_pump = 0
        self._mqtt = mqtt
        # Messages in flight, and those the broker answered "no matching subscribers"
        # (MQTT 5 reason 0x10: ingest's subscription is not there yet, e.g. just after a
        # broker restart): a careful device sends those again rather than dropping them.
        self._in_flight: dict[int, tuple[str, bytes]] = {}
        self._unheard: list[tuple[str, bytes]] = []
        self._retry_at = 0.0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"symbiont-simulate-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        if tls:
            self.client.tls_set_context((tls_files or MqttTls()).context())
        self.client.max_inflight_messages_set(inflight)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        try:
            self.client.connect(host, port, keepalive=60)
        except OSError as exc:
            raise ConnectionError(f"cannot reach the MQTT broker at {host}:{port}: {exc}") from None
        deadline = time.monotonic() + connect_timeout
        while not self.connected and self.error is None and time.monotonic() < deadline:
            self.client.loop(timeout=0.1)
        if not self.connected:
            self.client.disconnect()
            why = self.error or f"no answer within {connect_timeout:g}s"
            raise ConnectionError(f"MQTT broker at {host}:{port} refused the connection: {why}")

    def _on_connect(
        self, client: object, userdata: object, flags: object, reason: object, properties: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            self.error = str(reason)
            return
        self.connected = True
        # paho does not honour the broker's Receive Maximum (Mosquitto's default is 20 and it
        # refuses the excess with "quota exceeded"); never leave more than that unacknowledged.
        receive_max = getattr(properties, "ReceiveMaximum", None)
        if isinstance(receive_max, int) and receive_max > 0:
            self.window = min(self._window, receive_max)
        else:
            self.window = self._window

    def _on_disconnect(
        self, client: object, userdata: object, flags: object, reason: object, properties: object
    ) -> None:
        self.connected = False

    def _on_publish(
        self, client: object, userdata: object, mid: int, reason: object, properties: object
    ) -> None:
        message = self._in_flight.pop(mid, None)
        if getattr(reason, "value", 0) == NO_MATCHING_SUBSCRIBERS and message is not None:
            self._unheard.append(message)  # still pending: sent again by pump()
            return
        self.pending -= 1
        if getattr(reason, "is_failure", False):
            self.failed += 1
        else:
            self.acked += 1

    def pump(self, timeout: float = 0.0) -> None:
        """Run the network loop once: send, read PUBACKs, keep alive, reconnect if lost."""
        self._since_pump = 0
        rc = self.client.loop(timeout=timeout)
        if self._unheard and self.connected and time.monotonic() >= self._retry_at:
            again, self._unheard = self._unheard, []
            self._retry_at = time.monotonic() + 0.5
            for topic, payload in again:
                info = self.client.publish(topic, payload, qos=self.qos)
                self._in_flight[info.mid] = (topic, payload)
        if rc == self._mqtt.MQTT_ERR_SUCCESS:
            return
        self.connected = False
        time.sleep(min(max(timeout, 0.1), 1.0))
        with contextlib.suppress(OSError):
            self.client.reconnect()

    def send(self, topic: str, payload: bytes) -> None:
        while self.pending >= self.window:
            self.pump(0.05)
        self.pending += 1
        info = self.client.publish(topic, payload, qos=self.qos)
        if self.qos:
            self._in_flight[info.mid] = (topic, payload)
        ok = info.rc == self._mqtt.MQTT_ERR_SUCCESS or (
            self.qos > 0 and info.rc == self._mqtt.MQTT_ERR_NO_CONN
        )
        if not ok:
            self._in_flight.pop(info.mid, None)
            self.pending -= 1
            self.failed += 1
        self._since_pump += 1
        if self._since_pump >= 64:
            self.pump(0.0)

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` while the connection is served."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.pump(min(left, 0.5))

    def drain(self, timeout: float = 60.0) -> None:
        """Wait for every outstanding PUBACK; TimeoutError if none arrives for ``timeout`` s."""
        last, seen = time.monotonic(), self.pending
        while self.pending > 0:
            self.pump(0.05)
            if self.pending != seen:
                last, seen = time.monotonic(), self.pending
            elif time.monotonic() - last > timeout:
                raise TimeoutError(
                    f"{self.pending} messages still unacknowledged by the broker at "
                    f"{self.host}:{self.port} after {timeout:g}s"
                )

    def close(self) -> None:
        self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop(timeout=0.1)


NO_MATCHING_SUBSCRIBERS = 0x10

ProgressCallback = Callable[[PublishResult], None]


def publish(
    network: Network,
    chunks: Iterable[MeterChunk],
    mqtt_url: str,
    *,
    form: Form = "batch",
    batch_size: int = 1000,
    qos: int = 1,
    live: bool = False,
    speed: float = 1.0,
    clock_start: datetime | None = None,
    client_id: str | None = None,
    inflight: int = 1000,
    progress: bool | ProgressCallback = False,
    expected: int | None = None,
    drain_timeout: float = 60.0,
    tls_files: MqttTls | None = None,
) -> PublishResult:
    """Publish simulated readings to ``symbiont/readings/{partner}/{meter}`` (or, with
    ``form="sparkplug"``, the meters that name a Sparkplug B source as that source: births
    first, each node's NDEATH at the end).

    Backfill (``live=False``): as fast as the broker takes them, ``batch_size`` readings per
    message (``form="single"``: one), at most ``inflight`` unacknowledged in flight; returns
    after every PUBACK has arrived.

    Live (``live=True``): simulated time runs at ``speed`` × the wall clock from
    ``clock_start`` (default now); each reading goes out, one per message, when its time is
    due. Readings already overdue (a meter with more than one reading due, as when the chunks
    start in the past) are sent as a backlog in batches first, so ``simulate(now − 30 days,
    None)`` backfills a month and then runs on live, without a seam in the registers. Ctrl-C
    ends a live run gracefully (``interrupted`` is set). Note that with ``speed`` > 1 the
    readings run ahead of the wall clock, and ingest rejects readings more than 5 minutes in
    the future.

    ``tls_files``: the CA and client certificate of an ``mqtts://`` broker (default: the
    system's trusted CAs, no client certificate).

    ``progress``: True shows a rich progress bar on stderr (``expected`` readings as its
    total), or a callable receives the running ``PublishResult`` about 5 times a second.
    """
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r} (use batch, single, senml or sparkplug)")
    if not 1 <= batch_size <= 10000:
        raise ValueError("batch_size must be between 1 and 10000")
    if speed <= 0:
        raise ValueError("speed must be positive")
    known = {m.id: m.partner for m in network.meters}

    def checked(stream: Iterable[MeterChunk]) -> Iterator[MeterChunk]:
        for chunk in stream:
            if known.get(chunk.meter_id) != chunk.partner_id:
                raise ValueError(
                    f"meter {chunk.meter_id!r} of {chunk.partner_id!r} is not in network"
                    f" {network.network!r}"
                )
            yield chunk

    encoder = SparkplugEncoder(network) if form == "sparkplug" else None
    result = PublishResult()
    began = time.monotonic()
    publisher = MqttPublisher(
        mqtt_url,
        client_id=client_id,
        qos=qos,
        inflight=inflight,
        window=max(4 * inflight, 1000),
        tls_files=tls_files,
    )
    report, finish = _progress(progress, expected, result, began)

    def send(topic: str, payload: bytes, count: int) -> None:
        publisher.send(topic, payload)
        result.messages += 1
        result.readings += count
        report()

    try:
        try:
            if encoder is not None:
                for topic, payload in encoder.births():
                    send(topic, payload, 0)
            if live:
                _publish_live(
                    checked(chunks),
                    send,
                    publisher.wait,
                    form,
                    batch_size,
                    speed,
                    clock_start,
                    encoder,
                )
            else:
                for chunk in checked(chunks):
                    for topic, payload, count in payloads(chunk, form, batch_size, encoder):
                        send(topic, payload, count)
            if encoder is not None:
                for topic, payload in encoder.deaths():
                    send(topic, payload, 0)
            publisher.drain(drain_timeout)
        except KeyboardInterrupt:
            if not live:
                raise
            result.interrupted = True
            if encoder is not None:
                for topic, payload in encoder.deaths():
                    send(topic, payload, 0)
            with contextlib.suppress(TimeoutError):
                publisher.drain(5.0)
    finally:
        result.acked, result.failed = publisher.acked, publisher.failed
        result.seconds = time.monotonic() - began
        publisher.close()
        finish()
    return result


def _progress(
    progress: bool | ProgressCallback, expected: int | None, result: PublishResult, began: float
) -> tuple[Callable[[], None], Callable[[], None]]:
    if progress is False:
        return (lambda: None), (lambda: None)
    last = [0.0]
    if callable(progress):
        callback = progress

        def report() -> None:
            now = time.monotonic()
            if now - last[0] >= 0.2:
                last[0] = now
                result.seconds = now - began
                callback(result)

        def finish() -> None:
            result.seconds = time.monotonic() - began
            callback(result)

        return report, finish

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]publishing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("readings · {task.fields[rate]:,.0f}/s · {task.fields[messages]:,} messages"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    task = bar.add_task("publish", total=expected, rate=0.0, messages=0)
    bar.start()

    def update() -> None:
        elapsed = max(time.monotonic() - began, 1e-9)
        total = expected if expected is None else max(expected, result.readings)
        bar.update(
            task,
            completed=result.readings,
            total=total,
            rate=result.readings / elapsed,
            messages=result.messages,
        )

    def report_bar() -> None:
        now = time.monotonic()
        if now - last[0] >= 0.2:
            last[0] = now
            update()

    def finish_bar() -> None:
        update()
        bar.stop()

    return report_bar, finish_bar


def _publish_live(
    chunks: Iterable[MeterChunk],
    send: Callable[[str, bytes, int], None],
    sleep: Callable[[float], None],
    form: Form,
    batch_size: int,
    speed: float,
    clock_start: datetime | None,
    sparkplug: SparkplugEncoder | None = None,
) -> None:
    origin = _epoch(clock_start) if clock_start is not None else time.time()
    wall0 = time.monotonic()

    def sim_now() -> float:
        return origin + speed * (time.monotonic() - wall0)

    for group in _time_groups(chunks):
        if not group:
            continue
        ts = np.concatenate([c.ts for c in group])
        who = np.concatenate([np.full(c.ts.size, k, dtype=np.int64) for k, c in enumerate(group)])
        pos = np.concatenate([np.arange(c.ts.size, dtype=np.int64) for c in group])
        order = np.argsort(ts, kind="stable")
        ts, who, pos = ts[order], who[order], pos[order]
        i = 0
        while i < ts.size:
            now = sim_now()
            j = int(np.searchsorted(ts, now, side="right"))
            if j <= i:
                sleep(min((float(ts[i]) - now) / speed, 1.0))
                continue
            due_who, due_pos = who[i:j], pos[i:j]
            for k in np.unique(due_who).tolist():
                chunk = group[k]
                sel = due_pos[due_who == k]
                piece = MeterChunk(
                    chunk.meter_id,
                    chunk.partner_id,
                    chunk.unit,
                    chunk.reading,
                    chunk.start,
                    chunk.end,
                    chunk.ts[sel],
                    chunk.value[sel],
                )
                backlog = sel.size > 1
                size = batch_size if backlog else 1
                piece_form: Form = form if backlog or form != "batch" else "single"
                for topic, payload, count in payloads(piece, piece_form, size, sparkplug):
                    send(topic, payload, count)
            i = j


def _time_groups(chunks: Iterable[MeterChunk]) -> Iterator[list[MeterChunk]]:
    """Consecutive chunks of the same time span, together."""
    group: list[MeterChunk] = []
    span: tuple[float, float] | None = None
    for chunk in chunks:
        if span is not None and (chunk.start, chunk.end) != span:
            yield group
            group = []
        span = (chunk.start, chunk.end)
        group.append(chunk)
    if group:
        yield group


# ---------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``symbiont simulate``."""
    parser.add_argument("file", help="the network file (YAML)")
    parser.add_argument(
        "--from",
        dest="from_",
        metavar="T",
        help="start (ISO 8601; a date or a time without offset is in the network's zone)."
        " With --to: backfill [T, --to) and exit. Alone: publish what T to now would have"
        " sent (in batches), then go on live",
    )
    parser.add_argument("--to", metavar="T", help="end of the backfill (needs --from)")
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="live mode: simulated seconds per wall-clock second (default 1)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="inject a fault, KIND:SUBJECT[:SIZE][@START][+DURATION], e.g. "
        "leak:EXCHANGE:5%%@2026-10-10T00:00Z, drift:METER:3%%, stuck:METER@T+6h, "
        "gap:METER@T+2h, reset:METER@T, spike:METER:10@T (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--form",
        "--format",
        dest="form",
        choices=FORMS,
        default="batch",
        help="payload form: batch (JSON arrays), single (one reading per message), senml, or"
        " sparkplug (Sparkplug B for the meters with a sparkplug source, births first; the"
        " others as batches)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=1000,
        metavar="N",
        help="readings per message in a backfill (1-10000, default 1000)",
    )
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1, help="MQTT QoS (default 1)")
    parser.add_argument(
        "--mqtt-url",
        metavar="URL",
        help="broker, mqtt://user:pass@host:1883 (default: $SYMBIONT_MQTT_URL)",
    )
    parser.add_argument("--client-id", metavar="ID", help="MQTT client id (default: random)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """``symbiont simulate``: backfill a range, or publish live until Ctrl-C."""
    err = sys.stderr
    try:
        network = load_network(args.file)
    except NetworkError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=err)
        return 2
    url = args.mqtt_url or settings.mqtt_url
    if not url:
        print("error: no broker: give --mqtt-url or set SYMBIONT_MQTT_URL", file=err)
        return 2
    try:
        parse_mqtt_url(url)
        faults = [parse_fault(spec, network) for spec in args.fault]
        start = parse_time(args.from_, network.tz) if args.from_ else None
        end = parse_time(args.to, network.tz) if args.to else None
        if end is not None and start is None:
            raise ValueError("--to needs --from")
        if start is not None and end is not None and end <= start:
            raise ValueError("--to must be after --from")
        if args.speed <= 0:
            raise ValueError("--speed must be positive")
        if not 1 <= args.batch_size <= 10000:
            raise ValueError("--batch-size must be between 1 and 10000")
        if args.form == "sparkplug":
            mapped = sum(m.sparkplug is not None for m in network.meters)
            if not mapped:
                raise ValueError(
                    "--format sparkplug: no meter of the network names a sparkplug source"
                )
            if mapped < len(network.meters):
                print(
                    f"note: {len(network.meters) - mapped} meters without a sparkplug source"
                    " are published as JSON batches",
                    file=err,
                )
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return 2
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        live = end is None  # --to is given only with --from: a backfill
        sim_start = start or now
        if live:
            catch_up = ""
            if sim_start < now:
                catch_up = (
                    f", catching up from {sim_start.isoformat().replace('+00:00', 'Z')} first"
                )
            print(
                f"simulating {len(network.meters)} meters of {network.network} live at"
                f" {args.speed:g}x{catch_up}, to {url.split('@')[-1]}; Ctrl-C to stop",
                file=err,
            )
            if args.speed > 1:
                print(
                    "note: above 1x the simulated clock runs ahead of the wall clock; ingest"
                    " rejects readings more than 5 minutes in the future",
                    file=err,
                )
        chunks = simulate(network, sim_start, end, faults=faults, seed=args.seed)
        result = publish(
            network,
            chunks,
            url,
            form=args.form,
            batch_size=args.batch_size,
            qos=args.qos,
            client_id=args.client_id,
            live=live,
            speed=args.speed,
            clock_start=now if live else None,
            progress=not live and err.isatty(),
            expected=None if end is None else expected_readings(network, sim_start, end),
            tls_files=settings.mqtt_tls(),
        )
        if live:
            print(
                f"stopped: published {result.readings:,} readings in {result.messages:,} messages",
                file=err,
            )
            return 0
        print(
            f"published {result.readings:,} readings in {result.messages:,} messages"
            f" in {result.seconds:.1f}s ({result.rate:,.0f} readings/s);"
            f" {result.acked:,} acknowledged, {result.failed:,} failed",
            file=err,
        )
        return 0 if result.failed == 0 else 1
    except (ConnectionError, TimeoutError) as exc:
        print(f"error: {exc}", file=err)
        return 1
