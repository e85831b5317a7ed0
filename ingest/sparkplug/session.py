"""Sparkplug B edge-node sessions: births, aliases, sequence numbers, deaths, rebirth requests.

An edge node publishes on ``spBv1.0/{group}/{type}/{node}[/{device}]``. Its NBIRTH names
every metric of the node (with the alias later messages use instead of the name, the
datatype and, optionally, an ``engUnit`` property) and carries ``bdSeq``; each DBIRTH does the
same for one device. NDATA and DDATA carry values by alias (or name); NDEATH (the node's MQTT
will, with the ``bdSeq`` of the birth it ends) and DDEATH say the node or device is gone.
Every message of a node but NDEATH carries ``seq``, one more (mod 256) than the previous.

:class:`SparkplugSessions` follows each node in the order the broker delivers its messages
(which is why one ingest process must see all of a node's messages) and turns each message
into the same :class:`~ingest.parse.Parsed` as a JSON message: readings in canonical units,
per-metric rejections with the usual reasons, plus a :class:`~ingest.parse.SessionEvent` for a
birth or death, which the writer commits with the readings. Data for an alias, metric or
device no birth defined is rejected (``unknown_metric``), a message whose ``seq`` is not the
next one is rejected (``sequence_gap``), and the node is asked to rebirth (NCMD
``Node Control/Rebirth``), at most once per :data:`REBIRTH_INTERVAL_S`. A message the broker
marks as a redelivery is never taken for a gap. Nodes no meter is mapped to are ignored.

Births are kept in the database, so a restarted ingest still knows the aliases
(:meth:`SparkplugSessions.load`); the first message of a node after a restart sets where its
sequence stands.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ingest import metrics
from ingest.parse import (
    KEEP_PAYLOAD,
    MAX_VALUE,
    Parsed,
    Parser,
    Reason,
    Rejection,
    SessionEvent,
    SparkplugNode,
    protobuf_excerpt,
)
from ingest.sparkplug.sparkplug_b_pb2 import DataType, Payload

log = logging.getLogger("symbiont.ingest")

PREFIX = "spBv1.0/"
NODE_TYPES = frozenset({"NBIRTH", "NDATA", "NDEATH"})
DEVICE_TYPES = frozenset({"DBIRTH", "DDATA", "DDEATH"})
REBIRTH_METRIC = "Node Control/Rebirth"
BDSEQ_METRIC = "bdSeq"
ENG_UNIT = "engUnit"
REBIRTH_INTERVAL_S = 5.0  # the least time between two rebirth requests to one node

# Numeric datatypes: integers as (bits, signed), read from int_value or long_value; floats.
INTEGERS: dict[int, tuple[int, bool]] = {
    DataType.Int8: (8, True),
    DataType.Int16: (16, True),
    DataType.Int32: (32, True),
    DataType.Int64: (64, True),
    DataType.UInt8: (8, False),
    DataType.UInt16: (16, False),
    DataType.UInt32: (32, False),
    DataType.UInt64: (64, False),
}
FLOATS = frozenset({DataType.Float, DataType.Double})

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS_MAX = 253402300799999  # 9999-12-31T23:59:59.999Z


def datatype_name(code: int) -> str:
    try:
        return DataType.Name(code)
    except ValueError:
        return f"datatype {code}"


@dataclass(slots=True)
class MetricDef:
    """A metric as a birth defines it."""

    name: str
    datatype: int
    unit: str | None  # the birth's engUnit property, if any


@dataclass(slots=True)
class Birth:
    """What one NBIRTH or DBIRTH defined."""

    bd_seq: int | None
    aliases: dict[int, MetricDef] = field(default_factory=dict)
    names: dict[str, MetricDef] = field(default_factory=dict)
    # The short way for the usual value, worked out once per network (``fast_for``): alias
    # of a Float or Double metric mapped to a meter → (meter id, factor to canonical).
    fast: dict[int, tuple[str, float]] = field(default_factory=dict)
    fast_for: object = None


@dataclass(slots=True)
class NodeSession:
    """One edge node as ingest follows it."""

    birth: Birth | None = None  # None until an NBIRTH (or after an NDEATH)
    devices: dict[str, Birth] = field(default_factory=dict)
    seq: int | None = None  # the last seq seen, None until a message sets it
    asked_at: float = -REBIRTH_INTERVAL_S  # monotonic time of the last rebirth request
    messages: dict[str, int] = field(default_factory=dict)  # received, by type
    readings: int = 0  # taken from its metrics
    ignored: int = 0  # metric values mapped to no meter


BirthRow = tuple[str, str, str, int | None, list[Any], datetime]


def rebirth_command(now_ms: int) -> bytes:
    """The NCMD payload that asks an edge node to publish its births again."""
    payload = Payload(timestamp=now_ms)
    metric = payload.metrics.add()
    metric.name = REBIRTH_METRIC
    metric.timestamp = now_ms
    metric.datatype = DataType.Boolean
    metric.boolean_value = True
    return payload.SerializeToString()


def rebirth_topic(group: str, node: str) -> str:
    return f"{PREFIX}{group}/NCMD/{node}"


def _integer(metric: Any) -> int | None:
    which = metric.WhichOneof("value")
    if which == "long_value":
        return int(metric.long_value)
    if which == "int_value":
        return int(metric.int_value)
    return None


def _unit(metric: Any) -> str | None:
    """The metric's engUnit property, if it has one that is a string."""
    if not metric.HasField("properties"):
        return None
    props = metric.properties
    for key, value in zip(props.keys, props.values, strict=False):
        if key == ENG_UNIT and value.WhichOneof("value") == "string_value":
            return str(value.string_value)
    return None


def metric_value(metric: Any, datatype: int) -> int | float | str:
    """The number a metric carries, by its datatype, or the text of why it has none."""
    which = metric.WhichOneof("value")
    if datatype in FLOATS:
        if which == "double_value":
            return float(metric.double_value)
        if which == "float_value":
            return float(metric.float_value)
    elif datatype in INTEGERS:
        if which == "int_value":
            raw = int(metric.int_value)
        elif which == "long_value":
            raw = int(metric.long_value)
        else:
            raw = None
        if raw is not None:
            # Signed values travel as their two's complement in the unsigned field, in 32 or
            # 64 bits (or in their own width): keeping the datatype's bits reads both.
            bits, signed = INTEGERS[datatype]
            raw &= (1 << bits) - 1
            if signed and raw >= 1 << (bits - 1):
                raw -= 1 << bits
            return raw
    else:
        return f"datatype {datatype_name(datatype)} is not a number"
    if which is None:
        return "value is missing"
    return f"a {datatype_name(datatype)} metric carries a {which}"


def _at(now: float) -> datetime:
    """``now`` (epoch seconds) as an aware datetime: when ingest received a message."""
    return datetime.fromtimestamp(now, UTC)


def _instant(ms: int) -> datetime | str:
    if 0 <= ms <= _MS_MAX:
        return _EPOCH + timedelta(milliseconds=ms)
    return f"timestamp {ms} is not a usable time in ms since the epoch"


class SparkplugSessions:
    """Parses Sparkplug B messages for a :class:`~ingest.parse.Parser` and follows the edge
    nodes' sessions. Used from one thread (the MQTT network loop) only.

    ``rebirth(group, node)`` is called to ask a node for its births again (the service
    publishes the NCMD); requests to one node are at least :data:`REBIRTH_INTERVAL_S` apart.
    """

    prefix = PREFIX
    fast = True  # the short way for the usual value (tests compare it with the long way)

    def __init__(self, rebirth: Callable[[str, str], None] | None = None) -> None:
        self.rebirth = rebirth
        self.nodes: dict[tuple[str, str], NodeSession] = {}
        self.ignored_messages = 0  # of nodes no meter is mapped to
        self.ignored_metrics = 0  # of mapped nodes, mapped to no meter

    def counts(self) -> metrics.SparkplugCounts:
        """What :class:`ingest.metrics.SparkplugCollector` serves; safe from another thread
        (copies taken whole, under the GIL)."""
        nodes = list(self.nodes.items())
        return (
            [
                (group, node, dict(s.messages), s.readings, s.ignored)
                for (group, node), s in nodes
                if s.messages
            ],
            self.ignored_messages,
        )

    # -- state from the database -------------------------------------------------------------

    def load(self, rows: Iterable[BirthRow]) -> int:
        """Take the births committed before (``sparkplug_births`` rows): a node birth, then
        the device births of that node that came after it. Returns how many nodes."""
        rows = list(rows)
        born: dict[tuple[str, str], datetime] = {}
        for group, node, device, bd_seq, defs, at in rows:
            if device == "":
                session = self.nodes.setdefault((group, node), NodeSession())
                session.birth = _birth(bd_seq, defs)
                session.devices = {}
                born[(group, node)] = at
        for group, node, device, bd_seq, defs, at in rows:
            node_at = born.get((group, node))
            if device != "" and node_at is not None and at >= node_at:
                self.nodes[(group, node)].devices[device] = _birth(bd_seq, defs)
        for group, node in born:
            metrics.SPARKPLUG_ONLINE.labels(group, node).set(1)
        return len(born)

    # -- parsing ------------------------------------------------------------------------------

    def parse(self, parser: Parser, topic: str, payload: bytes, now: float, dup: bool) -> Parsed:
        try:
            return self._parse(parser, topic, payload, now, dup)
        except Exception:  # a last resort, for a fault of this module
            log.exception("could not parse a Sparkplug B message on %s", topic[:200])
            out = Parsed(topic, None)
            out.rejections.append(
                Rejection(
                    Reason.invalid_format,
                    "payload could not be read",
                    None,
                    None,
                    bytes(payload[:KEEP_PAYLOAD]) or None,
                )
            )
            return out

    def _parse(self, parser: Parser, topic: str, payload: bytes, now: float, dup: bool) -> Parsed:
        parts = topic.split("/")
        n = len(parts)
        kind = parts[2] if n >= 4 else ""
        if not (
            ((n == 4 and kind in NODE_TYPES) or (n == 5 and kind in DEVICE_TYPES))
            and all(parts[1:])
        ):
            out = Parsed(topic, None)
            _reject(
                out,
                Reason.bad_topic,
                "topic is not spBv1.0/{group}/{NBIRTH|NDATA|NDEATH}/{node} or "
                "spBv1.0/{group}/{DBIRTH|DDATA|DDEATH}/{node}/{device}",
                None,
                payload,
            )
            return out
        group, node = parts[1], parts[3]
        device = parts[4] if n == 5 else ""
        mapped = parser.index.sparkplug_nodes.get((group, node))
        if mapped is None:  # a node of the plant no meter is mapped to: none of our business
            self.ignored_messages += 1
            return Parsed(topic, None)
        out = Parsed(topic, mapped.partner)
        session = self.nodes.get((group, node))
        if session is None:
            session = self.nodes[(group, node)] = NodeSession()
        session.messages[kind] = session.messages.get(kind, 0) + 1
        if len(payload) > parser.max_payload:
            _reject(
                out,
                Reason.too_large,
                f"payload of {len(payload)} bytes is over the limit of {parser.max_payload}",
                mapped.partner,
                payload,
            )
            return out
        try:
            msg = Payload.FromString(payload)
        except Exception:  # DecodeError, or whatever else the decoder raises on odd bytes
            _reject(
                out,
                Reason.invalid_format,
                "payload is not a Sparkplug B (protobuf) payload",
                mapped.partner,
                payload,
            )
            return out
        if kind == "NBIRTH":
            self._node_birth(parser, out, session, mapped, group, node, msg, now)
        elif kind == "NDEATH":
            self._node_death(out, session, mapped, group, node, msg, now)
        elif kind == "DDEATH":
            self._sequence(out, session, group, node, msg, dup, payload, reject=False)
            session.devices.pop(device, None)
            out.event = SessionEvent(
                "DDEATH", group, node, device, None, None, mapped.devices.get(device, ()), _at(now)
            )
        else:
            birth = session.birth
            if birth is not None and kind != "DBIRTH" and device:
                birth = session.devices.get(device)
            if birth is None:
                what = (
                    f"device {group}/{node}/{device} has not been born (no DBIRTH seen)"
                    if session.birth is not None
                    else f"node {group}/{node} has not been born (no NBIRTH seen)"
                )
                if msg.HasField("seq"):
                    session.seq = msg.seq
                self._ask_rebirth(session, group, node, Reason.unknown_metric)
                _reject(
                    out,
                    Reason.unknown_metric,
                    f"{kind} from {what}; a rebirth was requested",
                    mapped.partner,
                    payload,
                )
                return out
            if not self._sequence(out, session, group, node, msg, dup, payload, reject=True):
                return out
            if kind == "DBIRTH":
                birth = _define(msg)
                session.devices[device] = birth
                self._values(
                    parser,
                    out,
                    session,
                    mapped,
                    group,
                    node,
                    device,
                    birth,
                    msg,
                    now,
                    in_birth=True,
                )
                out.event = SessionEvent(
                    "DBIRTH",
                    group,
                    node,
                    device,
                    None,
                    _rows(birth),
                    mapped.devices.get(device, ()),
                    _at(now),
                )
            else:
                self._values(parser, out, session, mapped, group, node, device, birth, msg, now)
        return out

    def _node_birth(
        self,
        parser: Parser,
        out: Parsed,
        session: NodeSession,
        mapped: SparkplugNode,
        group: str,
        node: str,
        msg: Any,
        now: float,
    ) -> None:
        birth = _define(msg)
        session.birth = birth
        session.devices = {}  # a new session of the node: its devices are born again
        session.seq = msg.seq if msg.HasField("seq") else None
        session.asked_at = -REBIRTH_INTERVAL_S
        metrics.SPARKPLUG_ONLINE.labels(group, node).set(1)
        self._values(parser, out, session, mapped, group, node, "", birth, msg, now, in_birth=True)
        out.event = SessionEvent(
            "NBIRTH",
            group,
            node,
            "",
            birth.bd_seq,
            _rows(birth),
            mapped.devices.get("", ()),
            _at(now),
        )

    def _node_death(
        self,
        out: Parsed,
        session: NodeSession,
        mapped: SparkplugNode,
        group: str,
        node: str,
        msg: Any,
        now: float,
    ) -> None:
        bd_seq = _bd_seq(msg)
        current = session.birth.bd_seq if session.birth is not None else None
        if current is not None and bd_seq is not None and bd_seq != current:
            # The will of an earlier connection, delivered after the node came back.
            log.info(
                "Sparkplug node %s/%s: NDEATH of bdSeq %d ignored, the node's birth has bdSeq %d",
                group,
                node,
                bd_seq,
                current,
            )
            return
        session.birth = None
        session.devices = {}
        session.seq = None
        metrics.SPARKPLUG_ONLINE.labels(group, node).set(0)
        out.event = SessionEvent("NDEATH", group, node, "", bd_seq, None, mapped.meters, _at(now))

    def _sequence(
        self,
        out: Parsed,
        session: NodeSession,
        group: str,
        node: str,
        msg: Any,
        dup: bool,
        payload: bytes,
        *,
        reject: bool,
    ) -> bool:
        """Whether ``msg`` comes next in the node's sequence. A gap (some messages of the node
        lost) asks for a rebirth and, with ``reject``, rejects the message."""
        if not msg.HasField("seq"):
            return True
        seq = msg.seq
        last = session.seq
        if last is None:
            session.seq = seq
            return True
        expected = (last + 1) % 256
        if seq == expected:
            session.seq = seq
            return True
        if dup:  # delivered again after a reconnection: seen before, not a gap
            return True
        session.seq = seq
        self._ask_rebirth(session, group, node, Reason.sequence_gap)
        if reject:
            _reject(
                out,
                Reason.sequence_gap,
                f"seq {seq} from node {group}/{node} where {expected} was expected: messages "
                "of the node were lost; a rebirth was requested",
                out.partner,
                payload,
            )
        return False

    def _values(
        self,
        parser: Parser,
        out: Parsed,
        session: NodeSession,
        mapped: SparkplugNode,
        group: str,
        node: str,
        device: str,
        birth: Birth,
        msg: Any,
        now: float,
        *,
        in_birth: bool = False,
    ) -> None:
        """The readings of a birth's or data message's metrics mapped to meters."""
        lookup = parser.index.sparkplug
        sent_ms = msg.timestamp if msg.HasField("timestamp") else None
        readings_before = len(out.readings)
        ignored = 0
        if not self.fast:
            fast: dict[int, tuple[str, float]] = {}
        elif birth.fast_for is parser.index:
            fast = birth.fast
        else:
            fast = _prepare(birth, parser, (group, node, device))
        lowest = (now - parser.backfill_s) * 1000.0
        highest = (now + parser.future_s) * 1000.0
        append = out.readings.append
        for metric in msg.metrics:
            # The usual value (a Float or Double by alias, with its own timestamp, in range)
            # is taken here; anything else takes the checks below, which take or reject it.
            if metric.HasField("alias") and not metric.is_null:
                known = fast.get(metric.alias)
                if (
                    known is not None
                    and not metric.HasField("properties")
                    and metric.datatype in _FAST_TYPES
                ):
                    if metric.HasField("double_value"):
                        value = metric.double_value
                    elif metric.HasField("float_value"):
                        value = metric.float_value
                    else:
                        value = None
                    ms = metric.timestamp  # 0 when missing: out of range, the long way
                    if value is not None and lowest <= ms <= highest:
                        canonical = value * known[1]
                        if -MAX_VALUE <= canonical <= MAX_VALUE:
                            # exact to the ms for any time within the accepted range
                            append((known[0], datetime.fromtimestamp(ms / 1000, UTC), canonical))
                            continue
            if metric.HasField("alias"):
                mdef = birth.aliases.get(metric.alias)
                if mdef is None and metric.name:
                    mdef = birth.names.get(metric.name)
            else:
                mdef = birth.names.get(metric.name)
            if mdef is None:
                self._unknown(out, session, mapped, group, node, device, metric)
                continue
            meter = lookup.get((group, node, device, mdef.name))
            if meter is None:
                ignored += 1
                continue
            where = f"metric {mdef.name!r}: "
            if metric.is_null:
                if not in_birth:  # a birth may declare a metric that has no value yet
                    parser.bad(out, meter, Reason.not_finite, where + "value is null", metric)
                continue
            datatype = metric.datatype or mdef.datatype
            value = metric_value(metric, datatype)
            if isinstance(value, str):
                parser.bad(out, meter, Reason.not_finite, where + value, metric)
                continue
            ms = metric.timestamp if metric.HasField("timestamp") else sent_ms
            if ms is None:
                parser.bad(
                    out,
                    meter,
                    Reason.bad_timestamp,
                    where + "neither the metric nor the payload has a timestamp",
                    metric,
                )
                continue
            ts = _instant(ms)
            if isinstance(ts, str):
                parser.bad(out, meter, Reason.bad_timestamp, where + ts, metric)
                continue
            unit = _unit(metric) or mdef.unit
            parser.accept(out, meter, ts, value, unit, now, where, metric)
        if ignored:
            self.ignored_metrics += ignored
            session.ignored += ignored
        session.readings += len(out.readings) - readings_before

    def _unknown(
        self,
        out: Parsed,
        session: NodeSession,
        mapped: SparkplugNode,
        group: str,
        node: str,
        device: str,
        metric: Any,
    ) -> None:
        what = f"alias {metric.alias}" if metric.HasField("alias") else f"metric {metric.name!r}"
        born = f"DBIRTH of {group}/{node}/{device}" if device else f"NBIRTH of {group}/{node}"
        self._ask_rebirth(session, group, node, Reason.unknown_metric)
        out.rejections.append(
            Rejection(
                Reason.unknown_metric,
                f"{what} is not in the {born}; a rebirth was requested",
                mapped.partner,
                None,
                protobuf_excerpt(metric),
            )
        )

    def _ask_rebirth(self, session: NodeSession, group: str, node: str, why: Reason) -> None:
        clock = time.monotonic()
        if clock - session.asked_at < REBIRTH_INTERVAL_S:
            return
        session.asked_at = clock
        metrics.SPARKPLUG_REBIRTHS.labels(group, node, why.value).inc()
        log.info("asking Sparkplug node %s/%s to rebirth (%s)", group, node, why.value)
        if self.rebirth is not None:
            self.rebirth(group, node)


_FAST_TYPES = frozenset({0, DataType.Float, DataType.Double})  # 0: as the birth says


def _prepare(
    birth: Birth, parser: Parser, where: tuple[str, str, str]
) -> dict[int, tuple[str, float]]:
    """Work out ``birth.fast`` for the parser's network (see :class:`Birth`); ``where`` is
    the (group, node, device) the birth is of."""
    birth.fast = {}
    birth.fast_for = parser.index
    for alias, mdef in birth.aliases.items():
        if mdef.datatype not in FLOATS:
            continue
        meter = parser.index.sparkplug.get((*where, mdef.name))
        if meter is None:
            continue
        factor = parser.factor(meter, mdef.unit)
        if isinstance(factor, float):
            birth.fast[alias] = (meter.id, factor)
    return birth.fast


def _define(msg: Any) -> Birth:
    """The metric definitions of a birth: every named metric, by alias and by name."""
    birth = Birth(_bd_seq(msg))
    for metric in msg.metrics:
        name = metric.name
        if not name:
            continue
        mdef = MetricDef(name, metric.datatype, _unit(metric))
        birth.names[name] = mdef
        if metric.HasField("alias"):
            birth.aliases[metric.alias] = mdef
    return birth


def _rows(birth: Birth) -> list[tuple[int | None, str, int, str | None]]:
    """A birth's definitions as stored: (alias or None, name, datatype, engUnit or None)."""
    alias_of = {id(mdef): alias for alias, mdef in birth.aliases.items()}
    return [
        (alias_of.get(id(mdef)), name, mdef.datatype, mdef.unit)
        for name, mdef in birth.names.items()
    ]


def _birth(bd_seq: int | None, rows: list[Any]) -> Birth:
    """A birth from its stored definitions."""
    birth = Birth(bd_seq)
    for alias, name, datatype, unit in rows:
        mdef = MetricDef(str(name), int(datatype), unit)
        birth.names[mdef.name] = mdef
        if alias is not None:
            birth.aliases[int(alias)] = mdef
    return birth


def _bd_seq(msg: Any) -> int | None:
    for metric in msg.metrics:
        if metric.name == BDSEQ_METRIC:
            return _integer(metric)
    return None


def _reject(out: Parsed, reason: Reason, detail: str, partner: str | None, payload: bytes) -> None:
    out.rejections.append(
        Rejection(reason, detail, partner, None, bytes(payload[:KEEP_PAYLOAD]) or None)
    )
