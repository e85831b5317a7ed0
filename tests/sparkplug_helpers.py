"""A Sparkplug B edge node for tests, independent of the product's generated module.

``codec()`` compiles the shipped ``sparkplug_b.proto`` with grpcio-tools' protoc into a
descriptor set of its own and builds the message classes in a private descriptor pool, so
the tests encode and decode with code the product does not share (and both can live in one
process). ``EdgeNode`` keeps a node's ``bdSeq``, ``seq`` and aliases and builds its NBIRTH,
DBIRTH, NDATA, DDATA, DDEATH and NDEATH messages as (topic, payload) pairs.

``wire_*`` encode protobuf by hand, from the field numbers of the Sparkplug 3.0
specification, to check the .proto itself.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO = Path(__file__).resolve().parent.parent / "ingest" / "sparkplug" / "sparkplug_b.proto"

# Datatype codes (Sparkplug 3.0, "Data Types"), written out rather than read from the .proto.
INT8, INT16, INT32, INT64 = 1, 2, 3, 4
UINT8, UINT16, UINT32, UINT64 = 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN, STRING = 9, 10, 11, 12


def descriptor_set(proto: Path = PROTO) -> descriptor_pb2.FileDescriptorSet:
    """``proto`` compiled by protoc (grpcio-tools), without source info."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        code = protoc.main(
            ["protoc", f"-I{proto.parent}", f"--descriptor_set_out={out}", str(proto)]
        )
        assert code == 0, f"protoc could not compile {proto}"
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


@cache
def codec() -> Any:
    """The Payload class, built from the .proto in a descriptor pool of its own."""
    pool = descriptor_pool.DescriptorPool()
    for proto in descriptor_set().file:
        pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("org.eclipse.tahu.protobuf.Payload")
    )


def decode(payload: bytes) -> Any:
    return codec().FromString(payload)


@dataclass
class Metric:
    """A metric of a node or device: name, alias, datatype and, optionally, its engUnit."""

    name: str
    alias: int
    datatype: int = DOUBLE
    unit: str | None = None


@dataclass
class EdgeNode:
    """One Sparkplug B edge node: its births, data and deaths as (topic, payload) pairs."""

    group: str
    node: str
    metrics: list[Metric] = field(default_factory=list)  # the node's own
    devices: dict[str, list[Metric]] = field(default_factory=dict)
    bd_seq: int = 0
    seq: int = -1  # the seq of the last message sent

    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) % 256
        return self.seq

    def topic(self, kind: str, device: str | None = None) -> str:
        tail = f"/{device}" if device else ""
        return f"spBv1.0/{self.group}/{kind}/{self.node}{tail}"

    @staticmethod
    def _set(metric: Any, datatype: int, value: Any) -> None:
        if value is None:
            metric.is_null = True
        elif datatype in (FLOAT,):
            metric.float_value = value
        elif datatype == DOUBLE:
            metric.double_value = value
        elif datatype in (INT8, INT16, INT32, UINT8, UINT16, UINT32):
            metric.int_value = value % (1 << 32)  # two's complement in 32 bits
        elif datatype in (INT64, UINT64):
            metric.long_value = value % (1 << 64)
        elif datatype == BOOLEAN:
            metric.boolean_value = value
        else:
            metric.string_value = value

    def _payload(self, ts_ms: int, seq: int | None) -> Any:
        payload = codec()(timestamp=ts_ms)
        if seq is not None:
            payload.seq = seq
        return payload

    def _birth(
        self, payload: Any, metrics: Sequence[Metric], values: dict[str, Any], ts_ms: int
    ) -> None:
        for m in metrics:
            metric = payload.metrics.add()
            metric.name = m.name
            metric.alias = m.alias
            metric.timestamp = ts_ms
            metric.datatype = m.datatype
            if m.unit is not None:
                metric.properties.keys.append("engUnit")
                prop = metric.properties.values.add()
                prop.type = STRING
                prop.string_value = m.unit
            self._set(metric, m.datatype, values.get(m.name))

    def nbirth(self, ts_ms: int, values: dict[str, Any] | None = None) -> tuple[str, bytes]:
        """A new session: seq starts again at 0 with the NBIRTH."""
        self.seq = -1
        payload = self._payload(ts_ms, self._next_seq())
        for name, datatype, value in (
            ("bdSeq", INT64, self.bd_seq),
            ("Node Control/Rebirth", BOOLEAN, False),
        ):
            metric = payload.metrics.add()
            metric.name = name
            metric.timestamp = ts_ms
            metric.datatype = datatype
            self._set(metric, datatype, value)
        self._birth(payload, self.metrics, values or {}, ts_ms)
        return self.topic("NBIRTH"), payload.SerializeToString()

    def dbirth(
        self, device: str, ts_ms: int, values: dict[str, Any] | None = None
    ) -> tuple[str, bytes]:
        payload = self._payload(ts_ms, self._next_seq())
        self._birth(payload, self.devices[device], values or {}, ts_ms)
        return self.topic("DBIRTH", device), payload.SerializeToString()

    def data(
        self,
        samples: Sequence[tuple[str, int, Any]],
        device: str | None = None,
        *,
        seq: int | None = None,
        alias: dict[str, int] | None = None,
    ) -> tuple[str, bytes]:
        """NDATA (or DDATA of ``device``) of ``(metric name, ts_ms, value)`` samples, by alias.
        ``seq`` overrides the next sequence number (to make a gap); ``alias`` overrides
        aliases by metric name (to send one no birth defined)."""
        known = {m.name: m for m in (self.devices[device] if device else self.metrics)}
        payload = self._payload(max(ts for _, ts, _ in samples), None)
        payload.seq = self._next_seq() if seq is None else seq
        if seq is not None:
            self.seq = seq
        for name, ts_ms, value in samples:
            m = known[name]
            metric = payload.metrics.add()
            metric.alias = (alias or {}).get(name, m.alias)
            metric.timestamp = ts_ms
            metric.datatype = m.datatype
            self._set(metric, m.datatype, value)
        kind = "DDATA" if device else "NDATA"
        return self.topic(kind, device), payload.SerializeToString()

    def ddeath(self, device: str, ts_ms: int) -> tuple[str, bytes]:
        payload = self._payload(ts_ms, self._next_seq())
        return self.topic("DDEATH", device), payload.SerializeToString()

    def ndeath(self, ts_ms: int, bd_seq: int | None = None) -> tuple[str, bytes]:
        """The node's death certificate (its MQTT will): bdSeq, no seq."""
        payload = self._payload(ts_ms, None)
        metric = payload.metrics.add()
        metric.name = "bdSeq"
        metric.datatype = INT64
        metric.long_value = self.bd_seq if bd_seq is None else bd_seq
        return self.topic("NDEATH"), payload.SerializeToString()


# --------------------------------------------------------------- protobuf by hand


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def wire_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def wire_double(number: int, value: float) -> bytes:
    return _varint(number << 3 | 1) + struct.pack("<d", value)


def wire_bytes(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value
