"""Prometheus metrics of the ingest process."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

MESSAGES = Counter("symbiont_ingest_messages", "MQTT messages committed (readings or rejection)")
READINGS = Counter("symbiont_ingest_readings", "Readings stored")
DUPLICATES = Counter("symbiont_ingest_duplicates", "Readings received again with the same value")
REJECTIONS = Counter(
    "symbiont_ingest_rejections", "Rejected messages or readings, by reason", ["reason"]
)
DB_ERRORS = Counter("symbiont_ingest_db_errors", "Failed batch transactions (retried)")
BATCH_SECONDS = Histogram(
    "symbiont_ingest_batch_seconds",
    "Time to write and commit one batch",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
BATCH_MESSAGES = Histogram(
    "symbiont_ingest_batch_messages",
    "Messages per committed batch",
    buckets=(1, 10, 100, 1000, 5000, 10000, 20000),
)
LAG_SECONDS = Gauge(
    "symbiont_ingest_lag_seconds", "Age of the oldest message of the last committed batch"
)
PENDING = Gauge("symbiont_ingest_pending_messages", "Messages received, not yet committed")
HELD = Gauge(
    "symbiont_ingest_held_messages",
    "Messages received and not yet acknowledged (waiting or in a batch being written)",
)
CONNECTED = Gauge("symbiont_ingest_connected", "1 while connected to the broker")

# Sparkplug B, per edge node (only nodes some meter is mapped to: bounded by the network file).
SPARKPLUG_REBIRTHS = Counter(
    "symbiont_ingest_sparkplug_rebirth_requests",
    "Rebirth requests (NCMD Node Control/Rebirth) sent to an edge node, by reason",
    ["group", "node", "reason"],
)
SPARKPLUG_ONLINE = Gauge(
    "symbiont_ingest_sparkplug_node_online",
    "1 once an edge node's NBIRTH is seen, 0 after its NDEATH",
    ["group", "node"],
)

# (group, node, messages by type, readings, ignored metric values) of every edge node, and
# the messages of nodes no meter is mapped to
SparkplugCounts = tuple[list[tuple[str, str, dict[str, int], int, int]], int]


class SparkplugCollector(Collector):
    """Per-node Sparkplug B counts, kept as plain integers by the parser (a Prometheus counter
    per message costs as much as parsing it) and read when Prometheus scrapes."""

    def __init__(self, counts: Callable[[], SparkplugCounts]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        nodes, unmapped = self.counts()
        messages = CounterMetricFamily(
            "symbiont_ingest_sparkplug_messages",
            "Sparkplug B messages received from an edge node, by type (NBIRTH, NDATA, DDATA ...)",
            labels=["group", "node", "type"],
        )
        readings = CounterMetricFamily(
            "symbiont_ingest_sparkplug_readings",
            "Readings taken from an edge node's metrics (before duplicates and conflicts)",
            labels=["group", "node"],
        )
        ignored = CounterMetricFamily(
            "symbiont_ingest_sparkplug_ignored_metrics",
            "Metric values of an edge node that map to no meter (ignored)",
            labels=["group", "node"],
        )
        for group, node, by_type, taken, dropped in nodes:
            for kind, n in sorted(by_type.items()):
                messages.add_metric([group, node, kind], n)
            readings.add_metric([group, node], taken)
            ignored.add_metric([group, node], dropped)
        others = CounterMetricFamily(
            "symbiont_ingest_sparkplug_unmapped_messages",
            "Sparkplug B messages of edge nodes no meter is mapped to (ignored)",
        )
        others.add_metric([], unmapped)
        yield from (messages, readings, ignored, others)


_sparkplug_collector: SparkplugCollector | None = None


def watch_sparkplug(counts: Callable[[], SparkplugCounts]) -> None:
    """Serve the Sparkplug B counts ``counts()`` returns: those of the process's latest ingest
    service (a second service in one process replaces the first's, never registers twice)."""
    global _sparkplug_collector
    if _sparkplug_collector is not None:
        REGISTRY.unregister(_sparkplug_collector)
    _sparkplug_collector = SparkplugCollector(counts)
    REGISTRY.register(_sparkplug_collector)


def serve(port: int, host: str = "127.0.0.1") -> None:
    start_http_server(port, addr=host)
