"""Payload parsing: topic + bytes → readings in canonical units, or rejections.

Pure and fast: it runs in the MQTT callback for every message, so it does no I/O, calls pint
only through the cached conversion factors, and keeps per-reading work to a few dict
lookups and float operations.

Total and strict: whatever arrives (any bytes, any JSON, any topic), ``Parser.parse`` returns.
Each reading of a batch and each SenML record is judged on its own, so one bad record never
costs the others, and every rejection carries one of the reasons of :class:`Reason`. ``ts`` is
RFC 3339 exactly (``T``/``t``, ``Z``/``z`` or a ``±hh:mm`` offset) or epoch seconds; a value
whose magnitude in the canonical unit is over 10^12 is ``out_of_range``. Every text a Parsed
or a Rejection carries (topic, detail) is safe to store and show: NUL bytes, control
characters and lone surrogates are escaped (:func:`core.text.safe_text`), and what is echoed
from the input is cut short.

Messages of another topic tree go to the parser's :class:`TopicHandler`: Sparkplug B
(``spBv1.0/...``, :mod:`ingest.sparkplug.session`) turns them into the same Parsed, with the
same reasons and checks (:meth:`Parser.accept`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import orjson

from core.network import Kind, Network, ReadingType
from core.text import quoted, safe_text
from core.units import MAX_CANONICAL_VALUE, canonical_unit, conversion

log = logging.getLogger("symbiont.ingest")

TOPIC_PREFIX = "symbiont/readings/"
MAX_BATCH = 10_000
KEEP_PAYLOAD = 64 * 1024
MAX_VALUE = MAX_CANONICAL_VALUE  # the largest magnitude accepted, in the canonical unit


class Reason(StrEnum):
    """Why a message or reading was rejected; stored and counted under these names."""

    too_large = "too_large"
    bad_topic = "bad_topic"
    invalid_json = "invalid_json"
    invalid_format = "invalid_format"
    batch_too_large = "batch_too_large"
    unknown_partner = "unknown_partner"
    unknown_meter = "unknown_meter"
    wrong_partner = "wrong_partner"
    bad_timestamp = "bad_timestamp"
    not_finite = "not_finite"
    out_of_range = "out_of_range"
    bad_unit = "bad_unit"
    future = "future"
    too_old = "too_old"
    conflict = "conflict"
    # Sparkplug B: data for an alias, metric or device not seen in a birth; a seq gap.
    unknown_metric = "unknown_metric"
    sequence_gap = "sequence_gap"


@dataclass(frozen=True, slots=True)
class MeterInfo:
    id: str
    partner: str
    kind: str
    reading: str
    unit: str
    factor: float  # meter's own unit → canonical
    window_s: int


SparkplugKey = tuple[str, str, str, str]  # group, edge node, device ("" for the node), metric


@dataclass(frozen=True, slots=True)
class SparkplugNode:
    """An edge node some meters name as their source."""

    partner: str | None  # the partner of all its meters, or None when they are of several
    meters: tuple[str, ...]  # every meter mapped to the node or one of its devices
    devices: dict[str, tuple[str, ...]]  # device ("" for the node itself) → its meters


@dataclass(frozen=True, slots=True)
class NetworkIndex:
    """What ingest needs to know of the network, keyed for O(1) lookups."""

    partners: frozenset[str]
    meters: dict[str, MeterInfo]
    timezone: str = "UTC"
    version: str = ""
    # Sparkplug B sources: metric → meter, and (group, edge node) → what is mapped under it.
    sparkplug: dict[SparkplugKey, MeterInfo] = field(default_factory=dict)
    sparkplug_nodes: dict[tuple[str, str], SparkplugNode] = field(default_factory=dict)

    @classmethod
    def from_network(cls, net: Network, version: str = "") -> NetworkIndex:
        windows = net.meter_windows()
        meters = {
            m.id: MeterInfo(
                id=m.id,
                partner=m.partner,
                kind=m.kind.value,
                reading=m.reading.value,
                unit=m.unit,
                factor=conversion(m.unit, m.kind, m.reading),
                window_s=int(windows[m.id].total_seconds()),
            )
            for m in net.meters
        }
        sparkplug: dict[SparkplugKey, MeterInfo] = {}
        grouped: dict[tuple[str, str], dict[str, list[str]]] = {}
        for m in net.meters:
            if m.sparkplug is not None:
                sparkplug[m.sparkplug.key] = meters[m.id]
                node = grouped.setdefault((m.sparkplug.group, m.sparkplug.node), {})
                node.setdefault(m.sparkplug.device or "", []).append(m.id)
        nodes = {}
        for key, devices in grouped.items():
            ids = tuple(mid for group in devices.values() for mid in group)
            owners = {meters[mid].partner for mid in ids}
            nodes[key] = SparkplugNode(
                owners.pop() if len(owners) == 1 else None,
                ids,
                {device: tuple(group) for device, group in devices.items()},
            )
        return cls(
            frozenset(p.id for p in net.partners),
            meters,
            net.timezone,
            version,
            sparkplug,
            nodes,
        )


@dataclass(slots=True)
class Rejection:
    reason: Reason
    detail: str
    partner: str | None
    meter: str | None
    payload: bytes | None


Reading = tuple[str, datetime, float]  # meter id, instant (aware, UTC), canonical value


@dataclass(slots=True)
class SessionEvent:
    """A Sparkplug B birth or death, committed with the message's readings: the birth's
    metric definitions (kept so that a restarted ingest still knows the aliases) and the
    online or offline state of the meters mapped under the node or device."""

    kind: str  # NBIRTH, DBIRTH, NDEATH or DDEATH
    group: str
    node: str
    device: str  # "" for the node itself
    bd_seq: int | None
    # births: (alias or None, name, datatype, engUnit or None) of every named metric
    metrics: list[tuple[int | None, str, int, str | None]] | None
    meters: tuple[str, ...]  # whose presence changes: online on a birth, offline on a death
    at: datetime  # when ingest received it


@dataclass(slots=True)
class Parsed:
    topic: str  # safe text: NUL, control characters and lone surrogates escaped
    partner: str | None  # a partner of the network, or None
    readings: list[Reading] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    event: SessionEvent | None = None  # a Sparkplug B birth or death


class TopicHandler(Protocol):
    """Parses the messages of another topic tree than ``symbiont/readings/`` (Sparkplug B)."""

    prefix: str

    def parse(self, parser: Parser, topic: str, payload: bytes, now: float, dup: bool) -> Parsed:
        """The readings and rejections of one message; never raises."""
        ...


# -- timestamps -------------------------------------------------------------------------------

_EPOCH_MAX = 253402300799.0  # 9999-12-31T23:59:59Z
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
_NO_OFFSET = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?")


def _rfc3339(raw: str) -> datetime | str:
    """RFC 3339 exactly, as a datetime in UTC, or the text of what is wrong."""
    match = _RFC3339.fullmatch(raw)
    if match is None:
        if _NO_OFFSET.fullmatch(raw) is not None:
            return f"ts {quoted(raw, 40)} has no UTC offset"
        return (
            f"ts {quoted(raw, 40)} is not RFC 3339 "
            "(YYYY-MM-DDThh:mm:ss, optional fraction, then Z or ±hh:mm)"
        )
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    if second == "60":
        return f"ts {quoted(raw, 40)} is a leap second, which cannot be stored"
    micro = int(fraction[:6].ljust(6, "0")) if fraction else 0
    try:
        local = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro
        )
    except ValueError:
        return f"ts {quoted(raw, 40)} is not a valid date and time"
    if sign is None:
        return local.replace(tzinfo=UTC)
    hours, minutes = int(off_h), int(off_m)
    if hours > 23 or minutes > 59:
        return f"ts {quoted(raw, 40)} has an invalid UTC offset"
    offset = timedelta(hours=hours, minutes=minutes)
    try:
        utc = local - offset if sign == "+" else local + offset
    except OverflowError:
        return f"ts {quoted(raw, 40)} is out of range in UTC"
    return utc.replace(tzinfo=UTC)


def _epoch(raw: float) -> datetime | str:
    """Epoch seconds (any int or float) as a datetime in UTC, or the text of what is wrong.
    Comparing before converting keeps huge integers, NaN and infinities out."""
    if 0 <= raw <= _EPOCH_MAX:
        return datetime.fromtimestamp(raw, UTC)
    return f"ts {_show(raw)} is not a usable epoch time"


def _strict_timestamp(raw: Any) -> datetime | str:
    """A datetime in UTC, or the text of what is wrong: the full checks."""
    kind = type(raw)
    if kind is str:
        return _rfc3339(raw)
    if kind is int or kind is float:
        return _epoch(raw)
    return "ts is missing or not a string or number"


def _timestamp(raw: Any) -> datetime | str:
    """As :func:`_strict_timestamp`, the usual ``YYYY-MM-DDThh:mm:ssZ`` the short way: with
    the separators in place, ``fromisoformat`` accepts only digits between them."""
    if type(raw) is str and len(raw) == 20 and raw[4::3] == "--T::Z":
        try:
            return datetime.fromisoformat(raw)
        except ValueError:
            pass
    return _strict_timestamp(raw)


# -- text and excerpts --------------------------------------------------------------------------


def _show(value: Any, limit: int = 40) -> str:
    """A JSON value for a detail: safe, bounded, and cheap whatever its size."""
    kind = type(value)
    if kind is str:
        return quoted(value, limit)
    if kind is bool:
        return "true" if value else "false"
    if value is None:
        return "null"
    if kind is int:
        bits = value.bit_length()
        return str(value) if bits <= 64 else f"an integer of about {int(bits * 0.30103)} digits"
    if kind is float:
        return repr(value)
    if kind is list:
        return "an array"
    if kind is dict:
        return "an object"
    return f"a {safe_text(kind.__name__, limit)}"


def _excerpt(item: Any) -> bytes:
    """The JSON of one reading or record, for the rejection; never raises."""
    if hasattr(item, "DESCRIPTOR"):  # a protobuf message (a Sparkplug B metric)
        return protobuf_excerpt(item)
    try:
        raw = orjson.dumps(item)
    except TypeError:  # lone surrogates, integers over 64 bits, deep nesting
        try:
            raw = json.dumps(item, ensure_ascii=True).encode("ascii")
        except (TypeError, ValueError, RecursionError):
            raw = b"(not representable as JSON)"
    return raw[:KEEP_PAYLOAD]


def protobuf_excerpt(message: Any) -> bytes:
    """A protobuf message as JSON (bytes fields in base64), for a rejection; never raises."""
    from google.protobuf import json_format

    try:
        text = json_format.MessageToJson(message, indent=None, preserving_proto_field_name=True)
    except Exception:  # anything the converter cannot take
        return b"(not representable as JSON)"
    return text.encode()[:KEEP_PAYLOAD]


def _cut(payload: bytes | None) -> bytes | None:
    return bytes(payload[:KEEP_PAYLOAD]) if payload else None


_INTEGER = re.compile(r"[+-]?[0-9]{1,4000}")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _number_text(raw: Any) -> Any:
    """A CSV cell that is a plain decimal number, as an int or float (as JSON would give it);
    anything else as it is."""
    if type(raw) is str:
        if _INTEGER.fullmatch(raw) is not None:
            return int(raw)
        if _NUMBER.fullmatch(raw) is not None:
            return float(raw)
    return raw


@dataclass(slots=True)
class _Base:
    """SenML base fields, carried forward from record to record."""

    name: str = ""
    name_error: str | None = None
    time: float = 0.0
    time_error: str | None = None
    unit: Any = None


class Parser:
    """Parses messages against one NetworkIndex; build a new one when the network changes."""

    fast = True  # the short way for the usual reading (tests compare it with the long way)

    def __init__(
        self,
        index: NetworkIndex,
        *,
        max_payload: int = 1024 * 1024,
        backfill_days: float = 400,
        future_tolerance_s: float = 300,
        handler: TopicHandler | None = None,
    ) -> None:
        self.index = index
        self.max_payload = max_payload
        self.backfill_s = backfill_days * 86400.0
        self.future_s = future_tolerance_s
        self.handler = handler
        self._handled = handler.prefix if handler is not None else None

    def parse(self, topic: str, payload: bytes, now: float, dup: bool = False) -> Parsed:
        """The readings and rejections of one message. Never raises: each reading or record
        is judged on its own; should one still fail unexpectedly, it alone is rejected.
        ``dup``: the broker says it may have delivered this message before."""
        if not topic.isprintable():  # what safe_text escapes is never printable
            topic = safe_text(topic)
        if self._handled is not None and topic.startswith(self._handled):
            assert self.handler is not None
            return self.handler.parse(self, topic, payload, now, dup)
        try:
            return self._parse(topic, payload, now)
        except Exception:  # a last resort, for a fault of this module
            log.exception("could not parse a message on %s", topic[:200])
            out = Parsed(topic, None)
            out.rejections.append(
                Rejection(
                    Reason.invalid_format, "payload could not be read", None, None, _cut(payload)
                )
            )
            return out

    def parse_row(
        self,
        source: str,
        meter_id: str,
        ts_raw: Any,
        value: Any,
        unit: Any,
        now: float,
        line: int,
    ) -> Parsed:
        """One row of a CSV import: the same checks as an MQTT reading, named by line."""
        out = Parsed(safe_text(source), None)
        try:
            self._row(out, meter_id, ts_raw, value, unit, now, f"line {line}: ")
        except Exception:  # a last resort, for a fault of this module
            log.exception("could not parse line %d of %s", line, out.topic[:200])
            out.readings.clear()
            out.rejections.append(
                Rejection(
                    Reason.invalid_format,
                    f"line {line}: row could not be read",
                    out.partner,
                    None,
                    _excerpt([meter_id, ts_raw, value, unit]),
                )
            )
        return out

    # -- pieces ---------------------------------------------------------------------------

    def _parse(self, topic: str, payload: bytes, now: float) -> Parsed:
        parts = topic.split("/")
        if len(parts) != 4 or not topic.startswith(TOPIC_PREFIX) or not parts[2] or not parts[3]:
            out = Parsed(topic, None)
            self._reject(
                out,
                Reason.bad_topic,
                "topic is not symbiont/readings/{partner}/{meter}",
                None,
                None,
                payload,
            )
            return out
        partner, meter_id = parts[2], parts[3]
        known = partner in self.index.partners
        out = Parsed(topic, partner if known else None)
        if len(payload) > self.max_payload:
            self._reject(
                out,
                Reason.too_large,
                f"payload of {len(payload)} bytes is over the limit of {self.max_payload}",
                out.partner,
                self._own(partner, meter_id),
                payload,
            )
            return out
        if not known:
            self._reject(
                out,
                Reason.unknown_partner,
                f"unknown partner {quoted(partner)}",
                None,
                None,
                payload,
            )
            return out
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            doc = self._lenient(payload)
            if doc is _INVALID:
                self._reject(
                    out,
                    Reason.invalid_json,
                    "payload is not valid UTF-8 JSON",
                    partner,
                    None,
                    payload,
                )
                return out
        doc_type = type(doc)
        if doc_type is dict:
            meter = self._meter(out, partner, meter_id, payload)
            if meter is not None:
                try:
                    self._reading(out, meter, doc, now, None)
                except Exception:  # a last resort, for a fault of this module
                    self._unreadable(out, partner, meter.id, "", "reading", doc)
        elif doc_type is list:
            if len(doc) > MAX_BATCH:
                self._reject(
                    out,
                    Reason.batch_too_large,
                    f"batch of {len(doc)} readings is over the limit of {MAX_BATCH}",
                    partner,
                    self._own(partner, meter_id),
                    payload,
                )
            elif doc and _is_senml(doc):
                self._senml(out, partner, meter_id, doc, now)
            else:
                meter = self._meter(out, partner, meter_id, payload)
                if meter is not None:
                    for i, item in enumerate(doc):
                        try:
                            self._reading(out, meter, item, now, i)
                        except Exception:  # a last resort, for a fault of this module
                            self._unreadable(
                                out, partner, meter.id, f"readings[{i}]: ", "reading", item
                            )
        else:
            self._reject(
                out,
                Reason.invalid_format,
                "payload is neither a reading object, a batch array nor SenML",
                partner,
                self._own(partner, meter_id),
                payload,
            )
        return out

    def _row(
        self,
        out: Parsed,
        meter_id: str,
        ts_raw: Any,
        value: Any,
        unit: Any,
        now: float,
        where: str,
    ) -> None:
        meter = self.index.meters.get(meter_id) if type(meter_id) is str else None
        raw = _excerpt({"meter": meter_id, "ts": ts_raw, "value": value, "unit": unit})
        if meter is None:
            self._reject(
                out,
                Reason.unknown_meter,
                f"{where}unknown meter {quoted(meter_id)}",
                None,
                None,
                raw,
            )
            return
        out.partner = meter.partner
        ts = _strict_timestamp(_number_text(ts_raw))
        if isinstance(ts, str):
            self.bad(out, meter, Reason.bad_timestamp, where + ts, raw)
            return
        self.accept(out, meter, ts, _number_text(value), unit or None, now, where, raw)

    def _own(self, partner: str, meter_id: str) -> str | None:
        """The topic's meter when it is one of the partner's own (so naming it in the partner's
        rejection tells nothing new), else None."""
        meter = self.index.meters.get(meter_id)
        return meter_id if meter is not None and meter.partner == partner else None

    @staticmethod
    def _lenient(payload: bytes) -> Any:
        """Python's json accepts NaN and Infinity, which devices do send: let them through to
        be rejected as not finite rather than as broken JSON."""
        try:
            return json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return _INVALID

    @staticmethod
    def _reject(
        out: Parsed,
        reason: Reason,
        detail: str,
        partner: str | None,
        meter: str | None,
        payload: bytes | None,
    ) -> None:
        out.rejections.append(Rejection(reason, detail, partner, meter, _cut(payload)))

    def _unreadable(
        self, out: Parsed, partner: str, meter: str | None, where: str, what: str, item: Any
    ) -> None:
        """The last resort for one reading or record that failed unexpectedly."""
        log.exception("could not parse %s%s on %s", where, what, out.topic[:200])
        self._reject(
            out,
            Reason.invalid_format,
            f"{where}{what} could not be read",
            partner,
            meter,
            _excerpt(item),
        )

    def _meter(self, out: Parsed, partner: str, meter_id: str, payload: bytes) -> MeterInfo | None:
        meter = self.index.meters.get(meter_id)
        if meter is None:
            self._reject(
                out,
                Reason.unknown_meter,
                f"unknown meter {quoted(meter_id)}",
                partner,
                None,
                payload,
            )
            return None
        if meter.partner != partner:
            self._reject(
                out,
                Reason.wrong_partner,
                f"meter '{meter_id}' belongs to '{meter.partner}', not to '{partner}'",
                partner,
                meter_id,
                payload,
            )
            return None
        return meter

    def _reading(
        self, out: Parsed, meter: MeterInfo, item: Any, now: float, index: int | None
    ) -> None:
        if self.fast and type(item) is dict:
            # The usual reading (RFC 3339 or epoch ts, a float in the meter's unit, in range,
            # within the horizon) is accepted here; anything else takes the checks below,
            # which accept or reject it with the reason.
            value = item.get("value")
            if type(value) is float:
                unit = item.get("unit")
                if unit is None or unit == meter.unit:
                    ts = _timestamp(item.get("ts"))
                    if type(ts) is datetime:
                        epoch = ts.timestamp()
                        if now - self.backfill_s <= epoch <= now + self.future_s:
                            canonical = value * meter.factor
                            if -MAX_VALUE <= canonical <= MAX_VALUE:
                                out.readings.append((meter.id, ts, canonical))
                                return
        where = "" if index is None else f"readings[{index}]: "
        if type(item) is not dict:
            self.bad(out, meter, Reason.invalid_format, f"{where}not a JSON object", item)
            return
        ts = _strict_timestamp(item.get("ts"))
        if isinstance(ts, str):
            self.bad(out, meter, Reason.bad_timestamp, where + ts, item)
            return
        self.accept(out, meter, ts, item.get("value"), item.get("unit"), now, where, item)

    def accept(
        self,
        out: Parsed,
        meter: MeterInfo,
        ts: datetime,
        value: Any,
        unit: Any,
        now: float,
        where: str,
        item: Any,
    ) -> None:
        vtype = type(value)
        if vtype is float:
            if value - value != 0.0:
                self.bad(out, meter, Reason.not_finite, f"{where}value is not finite", item)
                return
        elif vtype is not int:
            what = "value is missing" if value is None else f"value {_show(value)} is not a number"
            self.bad(out, meter, Reason.not_finite, where + what, item)
            return
        factor = self.factor(meter, unit)
        if isinstance(factor, str):
            self.bad(out, meter, Reason.bad_unit, where + factor, item)
            return
        try:
            canonical = value * factor
        except OverflowError:  # an integer too large for a float
            canonical = math.inf
        if not -MAX_VALUE <= canonical <= MAX_VALUE:
            target = canonical_unit(Kind(meter.kind), ReadingType(meter.reading))
            self.bad(
                out,
                meter,
                Reason.out_of_range,
                f"{where}value {_show(value)} is out of range: "
                f"its magnitude in {target} is over 10^12",
                item,
            )
            return
        epoch = ts.timestamp()
        if epoch > now + self.future_s:
            self.bad(
                out,
                meter,
                Reason.future,
                f"{where}ts {ts.isoformat()} is more than {self.future_s:.0f} s in the future",
                item,
            )
            return
        if epoch < now - self.backfill_s:
            self.bad(
                out,
                meter,
                Reason.too_old,
                f"{where}ts {ts.isoformat()} is older than the backfill horizon",
                item,
            )
            return
        out.readings.append((meter.id, ts, canonical))

    @staticmethod
    def factor(meter: MeterInfo, unit: Any) -> float | str:
        """The factor from ``unit`` to the meter's canonical unit, or the text of what is
        wrong."""
        if unit is None or unit == meter.unit:
            return meter.factor
        if type(unit) is not str:
            return f"unit is {_show(unit)}, not a unit name"
        try:
            factor = conversion(unit, meter.kind, meter.reading)
        except Exception:  # UnitError, or whatever else pint raises on odd text ('m3dB')
            factor = math.nan
        if not 0.0 < factor < math.inf:
            kind = "rate" if meter.reading == ReadingType.rate else meter.reading
            return f"unit {quoted(unit, 40)} does not convert to {meter.kind} ({kind})"
        return factor

    @staticmethod
    def bad(out: Parsed, meter: MeterInfo, reason: Reason, detail: str, item: Any) -> None:
        raw = item if type(item) is bytes else _excerpt(item)
        out.rejections.append(Rejection(reason, detail, meter.partner, meter.id, raw))

    def _senml(
        self, out: Parsed, partner: str, meter_id: str, records: list[Any], now: float
    ) -> None:
        """RFC 8428: base fields carry forward; name = bn + n resolves to a meter of the
        topic's partner; time = bt + t (t may be relative, as the RFC allows). A base field
        that is not usable rejects the records that rely on it."""
        base = _Base()
        for i, rec in enumerate(records):
            where = f"records[{i}]: "
            try:
                self._record(out, partner, meter_id, base, rec, now, i, where)
            except Exception:  # a last resort, for a fault of this module
                self._unreadable(out, partner, None, where, "record", rec)

    def _record(
        self,
        out: Parsed,
        partner: str,
        meter_id: str,
        base: _Base,
        rec: Any,
        now: float,
        i: int,
        where: str,
    ) -> None:
        if type(rec) is not dict:
            self._reject(
                out,
                Reason.invalid_format,
                where + "not a JSON object",
                partner,
                None,
                _excerpt(rec),
            )
            return
        if "bn" in rec:
            bn = rec["bn"]
            if type(bn) is str:
                base.name, base.name_error = bn, None
            else:
                base.name, base.name_error = "", f"bn of records[{i}] is not a string"
        if "bt" in rec:
            bt = _float(rec["bt"])
            if bt is None:
                base.time, base.time_error = 0.0, f"bt of records[{i}] is not a usable number"
            else:
                base.time, base.time_error = bt, None
        if "bu" in rec:
            base.unit = rec["bu"]
        n = rec.get("n", "")
        if type(n) is not str or base.name_error is not None:
            what = base.name_error if type(n) is str else "n is not a string"
            self._reject(
                out, Reason.invalid_format, where + str(what), partner, None, _excerpt(rec)
            )
            return
        name = base.name + n
        name = name.rstrip(":/") if name else meter_id
        meter = self.index.meters.get(name)
        if meter is None:
            self._reject(
                out,
                Reason.unknown_meter,
                f"{where}unknown meter {quoted(name)}",
                partner,
                None,
                _excerpt(rec),
            )
            return
        if meter.partner != partner:
            self._reject(
                out,
                Reason.wrong_partner,
                f"{where}meter '{name}' belongs to '{meter.partner}', not to '{partner}'",
                partner,
                name,
                _excerpt(rec),
            )
            return
        if base.time_error is not None:
            self.bad(out, meter, Reason.bad_timestamp, where + base.time_error, rec)
            return
        t = _float(rec.get("t", 0.0))
        if t is None:
            self.bad(out, meter, Reason.bad_timestamp, where + "t is not a usable number", rec)
            return
        t += base.time
        if t < 2**28:  # RFC 8428: small values are relative to now
            t += now
        ts = _epoch(t)
        if isinstance(ts, str):
            self.bad(out, meter, Reason.bad_timestamp, where + ts, rec)
            return
        value = rec["v"] if "v" in rec else rec.get("s")
        unit = rec.get("u", base.unit)
        self.accept(out, meter, ts, value, unit, now, where, rec)


def _float(raw: Any) -> float | None:
    """A JSON number as a finite float, or None (not a number, too large, NaN, infinite)."""
    kind = type(raw)
    if kind is int:
        try:
            raw = float(raw)
        except OverflowError:
            return None
    elif kind is not float:
        return None
    return raw if raw - raw == 0.0 else None


_INVALID = object()
_SENML_KEYS = frozenset({"bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "s", "t", "vs", "vb"})


def _is_senml(doc: list[Any]) -> bool:
    first = doc[0]
    return type(first) is dict and "ts" not in first and not first.keys().isdisjoint(_SENML_KEYS)
