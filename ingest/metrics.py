"""Prometheus metrics of the ingest process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

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
SPARKPLUG_MESSAGES = Counter(
    "symbiont_ingest_sparkplug_messages",
    "Sparkplug B messages received from an edge node, by type (NBIRTH, NDATA, DDATA ...)",
    ["group", "node", "type"],
)
SPARKPLUG_READINGS = Counter(
    "symbiont_ingest_sparkplug_readings",
    "Readings taken from an edge node's metrics (before duplicates and conflicts are sorted)",
    ["group", "node"],
)
SPARKPLUG_IGNORED = Counter(
    "symbiont_ingest_sparkplug_ignored_metrics",
    "Metric values of an edge node that map to no meter (ignored)",
    ["group", "node"],
)
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
SPARKPLUG_UNMAPPED = Counter(
    "symbiont_ingest_sparkplug_unmapped_messages",
    "Sparkplug B messages of edge nodes no meter is mapped to (ignored)",
)


def serve(port: int, host: str = "127.0.0.1") -> None:
    start_http_server(port, addr=host)
