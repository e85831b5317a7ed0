"""Simulated meters as Sparkplug B edge nodes (``symbiont simulate --format sparkplug``).

Every meter whose network-file entry names a ``sparkplug`` source is published as that
metric of that edge node (or device): each node first publishes its NBIRTH (``bdSeq``,
``Node Control/Rebirth`` and its metrics, each with an alias and its unit as ``engUnit``),
then a DBIRTH per device; readings follow as NDATA or DDATA by alias, with the reading's time
as the metric timestamp, ``seq`` counting every message of the node. When the run ends each
node publishes its NDEATH (a real node leaves it with the broker as its MQTT will). Meters
without a ``sparkplug`` source are published as JSON batches, as usual.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from cli.simulate import MeterChunk
from core.network import Network
from ingest.sparkplug.sparkplug_b_pb2 import DataType, Payload

BDSEQ_METRIC = "bdSeq"
REBIRTH_METRIC = "Node Control/Rebirth"


@dataclass
class _Node:
    group: str
    node: str
    # device ("" for the node itself) → [(meter id, metric name, alias, unit)]
    devices: dict[str, list[tuple[str, str, int, str]]] = field(default_factory=dict)
    seq: int = -1
    bd_seq: int = 0

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) % 256
        return self.seq

    def topic(self, kind: str, device: str = "") -> str:
        tail = f"/{device}" if device else ""
        return f"spBv1.0/{self.group}/{kind}/{self.node}{tail}"


class SparkplugEncoder:
    """The Sparkplug B messages of simulated readings, for the meters of ``network`` that
    have a ``sparkplug`` source (``mapped``); births first (:meth:`births`), deaths last."""

    def __init__(self, network: Network) -> None:
        self.nodes: dict[tuple[str, str], _Node] = {}
        # meter id → (its node, device, alias)
        self.source: dict[str, tuple[_Node, str, int]] = {}
        for meter in network.meters:
            sp = meter.sparkplug
            if sp is None:
                continue
            node = self.nodes.setdefault((sp.group, sp.node), _Node(sp.group, sp.node))
            metrics = node.devices.setdefault(sp.device or "", [])
            alias = sum(len(m) for m in node.devices.values())  # 0, 1 … per node
            metrics.append((meter.id, sp.metric, alias, meter.unit))
            self.source[meter.id] = (node, sp.device or "", alias)

    def mapped(self, meter_id: str) -> bool:
        return meter_id in self.source

    def births(self, now_ms: int | None = None) -> list[tuple[str, bytes]]:
        """Every node's NBIRTH, each followed by its devices' DBIRTHs. Metrics are declared
        without a value (the readings follow as data)."""
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        out = []
        for node in self.nodes.values():
            node.seq = -1
            payload = Payload(timestamp=now_ms, seq=node.next_seq())
            for name, datatype, value in (
                (BDSEQ_METRIC, DataType.Int64, node.bd_seq),
                (REBIRTH_METRIC, DataType.Boolean, False),
            ):
                metric = payload.metrics.add(name=name, timestamp=now_ms, datatype=datatype)
                if datatype == DataType.Boolean:
                    metric.boolean_value = bool(value)
                else:
                    metric.long_value = int(value)
            self._declare(payload, node.devices.get("", []), now_ms)
            out.append((node.topic("NBIRTH"), payload.SerializeToString()))
            for device, metrics in node.devices.items():
                if device:
                    payload = Payload(timestamp=now_ms, seq=node.next_seq())
                    self._declare(payload, metrics, now_ms)
                    out.append((node.topic("DBIRTH", device), payload.SerializeToString()))
        return out

    @staticmethod
    def _declare(payload: Payload, metrics: list[tuple[str, str, int, str]], now_ms: int) -> None:
        for _, name, alias, unit in metrics:
            metric = payload.metrics.add(
                name=name, alias=alias, timestamp=now_ms, datatype=DataType.Double, is_null=True
            )
            metric.properties.keys.append("engUnit")
            metric.properties.values.add(type=DataType.String, string_value=unit)

    def deaths(self) -> list[tuple[str, bytes]]:
        """Every node's NDEATH (its bdSeq; no seq); the next births take the next bdSeq."""
        out = []
        for node in self.nodes.values():
            payload = Payload(timestamp=int(time.time() * 1000))
            payload.metrics.add(name=BDSEQ_METRIC, datatype=DataType.Int64, long_value=node.bd_seq)
            out.append((node.topic("NDEATH"), payload.SerializeToString()))
            node.bd_seq = (node.bd_seq + 1) % 256
        return out

    def payloads(self, chunk: MeterChunk, batch_size: int) -> Iterator[tuple[str, bytes, int]]:
        """(topic, payload, number of readings): NDATA or DDATA of ``batch_size`` values at
        most, the metric by alias, each value with its own timestamp."""
        node, device, alias = self.source[chunk.meter_id]
        kind = "DDATA" if device else "NDATA"
        topic = node.topic(kind, device)
        stamps = [round(t * 1000.0) for t in chunk.ts.tolist()]
        values: list[float] = chunk.value.tolist()
        for i in range(0, len(values), batch_size):
            part = range(i, min(i + batch_size, len(values)))
            payload = Payload(timestamp=int(time.time() * 1000), seq=node.next_seq())
            for k in part:
                payload.metrics.add(
                    alias=alias,
                    timestamp=stamps[k],
                    datatype=DataType.Double,
                    double_value=values[k],
                )
            yield topic, payload.SerializeToString(), len(part)
