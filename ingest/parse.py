"""Payload parsing (SPEC §3): topic + bytes → readings in canonical units, or rejections.

Pure and fast: it runs in the MQTT callback for every message, so it does no I/O, calls pint
only through the cached conversion factors, and keeps per-reading work to a few dict
lookups and float operations.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson

from core.network import Network, ReadingType
from core.units import UnitError, conversion

TOPIC_PREFIX = "symbiont/readings/"
MAX_BATCH = 10_000
KEEP_PAYLOAD = 64 * 1024


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
    bad_unit = "bad_unit"
    future = "future"
    too_old = "too_old"
    conflict = "conflict"


@dataclass(frozen=True, slots=True)
class MeterInfo:
    id: str
    partner: str
    kind: str
    reading: str
    unit: str
    factor: float  # meter's own unit → canonical
    window_s: int


@dataclass(frozen=True, slots=True)
class NetworkIndex:
    """What ingest needs to know of the network, keyed for O(1) lookups."""

    partners: frozenset[str]
    meters: dict[str, MeterInfo]
    timezone: str = "UTC"
    version: str = ""

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
        return cls(frozenset(p.id for p in net.partners), meters, net.timezone, version)


@dataclass(slots=True)
class Rejection:
    reason: Reason
    detail: str
    partner: str | None
    meter: str | None
    payload: bytes | None


Reading = tuple[str, datetime, float]  # meter id, instant (aware, UTC), canonical value


@dataclass(slots=True)
class Parsed:
    topic: str
    partner: str | None
    readings: list[Reading] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)


_EPOCH_MAX = 253402300799.0  # 9999-12-31


def _timestamp(raw: Any) -> datetime | str:
    """A datetime in UTC, or the text of what is wrong."""
    kind = type(raw)
    if kind is str:
        try:
            ts = datetime.fromisoformat(raw)
        except ValueError:
            return f"ts {raw[:40]!r} is not RFC 3339"
        tz = ts.tzinfo
        if tz is None:
            return f"ts {raw[:40]!r} has no UTC offset"
        return ts if tz is UTC else ts.astimezone(UTC)
    if kind is int or kind is float:
        if not math.isfinite(raw) or not 0 <= raw <= _EPOCH_MAX:
            return f"ts {raw!r} is not a usable epoch time"
        return datetime.fromtimestamp(raw, UTC)
    return "ts is missing or not a string or number"


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
    ) -> None:
        self.index = index
        self.max_payload = max_payload
        self.backfill_s = backfill_days * 86400.0
        self.future_s = future_tolerance_s

    def parse(self, topic: str, payload: bytes, now: float) -> Parsed:
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
        out = Parsed(topic, partner)
        if len(payload) > self.max_payload:
            self._reject(
                out,
                Reason.too_large,
                f"payload of {len(payload)} bytes is over the limit of {self.max_payload}",
                partner,
                meter_id,
                payload,
            )
            return out
        if partner not in self.index.partners:
            self._reject(
                out, Reason.unknown_partner, f"unknown partner '{partner}'", None, None, payload
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
                self._reading(out, meter, doc, now, None)
        elif doc_type is list:
            if len(doc) > MAX_BATCH:
                self._reject(
                    out,
                    Reason.batch_too_large,
                    f"batch of {len(doc)} readings is over the limit of {MAX_BATCH}",
                    partner,
                    meter_id,
                    payload,
                )
            elif doc and _is_senml(doc):
                self._senml(out, partner, meter_id, doc, now, payload)
            else:
                meter = self._meter(out, partner, meter_id, payload)
                if meter is not None:
                    for i, item in enumerate(doc):
                        self._reading(out, meter, item, now, i)
        else:
            self._reject(
                out,
                Reason.invalid_format,
                "payload is neither a reading object, a batch array nor SenML",
                partner,
                meter_id,
                payload,
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
        meter = self.index.meters.get(meter_id)
        out = Parsed(source, meter.partner if meter else None)
        where = f"line {line}: "
        raw = orjson.dumps({"meter": meter_id, "ts": ts_raw, "value": value, "unit": unit})
        if meter is None:
            self._reject(
                out, Reason.unknown_meter, f"{where}unknown meter '{meter_id}'", None, None, raw
            )
            return out
        if type(ts_raw) is str:
            with contextlib.suppress(ValueError):
                ts_raw = float(ts_raw)
        ts = _timestamp(ts_raw)
        if type(ts) is str:
            self._reject(out, Reason.bad_timestamp, where + ts, meter.partner, meter.id, raw)
            return out
        if type(value) is str:
            with contextlib.suppress(ValueError):
                value = float(value)
        self._accept(out, meter, ts, value, unit or None, now, where, raw, None)
        return out

    # -- pieces ---------------------------------------------------------------------------

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
        out.rejections.append(
            Rejection(reason, detail, partner, meter, payload[:KEEP_PAYLOAD] if payload else None)
        )

    def _meter(self, out: Parsed, partner: str, meter_id: str, payload: bytes) -> MeterInfo | None:
        meter = self.index.meters.get(meter_id)
        if meter is None:
            self._reject(
                out, Reason.unknown_meter, f"unknown meter '{meter_id}'", partner, None, payload
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
            # The usual reading (RFC 3339 or epoch ts, a finite float in the meter's unit,
            # within the horizon) is accepted here; anything else takes the checks below,
            # which accept or reject it with the reason.
            value = item.get("value")
            unit = item.get("unit")
            if (
                type(value) is float
                and value - value == 0.0
                and (unit is None or unit == meter.unit)
            ):
                ts = _timestamp(item.get("ts"))
                if isinstance(ts, datetime):
                    epoch = ts.timestamp()
                    if now - self.backfill_s <= epoch <= now + self.future_s:
                        canonical = value * meter.factor
                        if canonical - canonical == 0.0:
                            out.readings.append((meter.id, ts, canonical))
                            return
        where = "" if index is None else f"readings[{index}]: "
        if type(item) is not dict:
            self._bad(out, meter, Reason.invalid_format, f"{where}not a JSON object", item, index)
            return
        ts = _timestamp(item.get("ts"))
        if type(ts) is str:
            self._bad(out, meter, Reason.bad_timestamp, where + ts, item, index)
            return
        self._accept(out, meter, ts, item.get("value"), item.get("unit"), now, where, item, index)

    def _accept(
        self,
        out: Parsed,
        meter: MeterInfo,
        ts: Any,
        value: Any,
        unit: Any,
        now: float,
        where: str,
        item: Any,
        index: int | None,
    ) -> None:
        vtype = type(value)
        if vtype is float:
            if value != value or value in (math.inf, -math.inf):
                self._bad(out, meter, Reason.not_finite, f"{where}value is not finite", item, index)
                return
        elif vtype is int:
            try:
                value = float(value)
            except OverflowError:
                self._bad(out, meter, Reason.not_finite, f"{where}value is too large", item, index)
                return
        else:
            self._bad(
                out,
                meter,
                Reason.not_finite,
                f"{where}value is missing or not a number",
                item,
                index,
            )
            return
        if unit is None or unit == meter.unit:
            factor = meter.factor
        else:
            try:
                factor = conversion(unit, meter.kind, meter.reading)
            except (UnitError, TypeError):
                what = f"{unit!r}"[:40]
                self._bad(
                    out,
                    meter,
                    Reason.bad_unit,
                    f"{where}unit {what} does not convert to {meter.kind} "
                    f"({'rate' if meter.reading == ReadingType.rate else meter.reading})",
                    item,
                    index,
                )
                return
        canonical = value * factor
        if not math.isfinite(canonical):
            self._bad(out, meter, Reason.not_finite, f"{where}value is too large", item, index)
            return
        epoch = ts.timestamp()
        if epoch > now + self.future_s:
            self._bad(
                out,
                meter,
                Reason.future,
                f"{where}ts {ts.isoformat()} is more than {self.future_s:.0f} s in the future",
                item,
                index,
            )
            return
        if epoch < now - self.backfill_s:
            self._bad(
                out,
                meter,
                Reason.too_old,
                f"{where}ts {ts.isoformat()} is older than the backfill horizon",
                item,
                index,
            )
            return
        out.readings.append((meter.id, ts, canonical))

    def _bad(
        self,
        out: Parsed,
        meter: MeterInfo,
        reason: Reason,
        detail: str,
        item: Any,
        index: int | None,
    ) -> None:
        if type(item) is bytes:
            out.rejections.append(Rejection(reason, detail, meter.partner, meter.id, item))
            return
        try:
            raw = orjson.dumps(item)
        except TypeError:
            raw = json.dumps(item, default=str).encode()
        out.rejections.append(
            Rejection(reason, detail, meter.partner, meter.id, raw[:KEEP_PAYLOAD])
        )

    def _senml(
        self,
        out: Parsed,
        partner: str,
        meter_id: str,
        records: list[Any],
        now: float,
        payload: bytes,
    ) -> None:
        """RFC 8428: base fields carry forward; name = bn + n resolves to a meter of the
        topic's partner; time = bt + t (t may be relative, as the RFC allows)."""
        bn, bt, bu = "", 0.0, None
        for i, rec in enumerate(records):
            where = f"records[{i}]: "
            if type(rec) is not dict:
                self._reject(
                    out,
                    Reason.invalid_format,
                    where + "not a JSON object",
                    partner,
                    None,
                    orjson.dumps(rec)[:KEEP_PAYLOAD],
                )
                continue
            if "bn" in rec:
                bn = rec["bn"] if isinstance(rec["bn"], str) else ""
            if "bt" in rec:
                bt_raw = rec["bt"]
                bt = float(bt_raw) if type(bt_raw) in (int, float) else math.nan
            if "bu" in rec:
                bu = rec["bu"]
            name = bn + (rec.get("n") or "")
            name = name.rstrip(":/") if name else meter_id
            meter = self.index.meters.get(name)
            raw = orjson.dumps(rec)[:KEEP_PAYLOAD]
            if meter is None:
                self._reject(
                    out, Reason.unknown_meter, f"{where}unknown meter '{name}'", partner, None, raw
                )
                continue
            if meter.partner != partner:
                self._reject(
                    out,
                    Reason.wrong_partner,
                    f"{where}meter '{name}' belongs to '{meter.partner}', not to '{partner}'",
                    partner,
                    name,
                    raw,
                )
                continue
            t_raw = rec.get("t", 0.0)
            if type(t_raw) not in (int, float) or not math.isfinite(bt):
                self._bad(out, meter, Reason.bad_timestamp, where + "t/bt is not a number", rec, i)
                continue
            t = bt + float(t_raw)
            if t < 2**28:  # RFC 8428 §4.5.3: small values are relative to now
                t += now
            ts = _timestamp(t)
            if type(ts) is str:
                self._bad(out, meter, Reason.bad_timestamp, where + ts, rec, i)
                continue
            value = rec.get("v", rec.get("s"))
            self._accept(out, meter, ts, value, rec.get("u", bu), now, where, rec, i)


_INVALID = object()
_SENML_KEYS = frozenset({"bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "s", "t", "vs", "vb"})


def _is_senml(doc: list[Any]) -> bool:
    first = doc[0]
    return type(first) is dict and "ts" not in first and not first.keys().isdisjoint(_SENML_KEYS)
