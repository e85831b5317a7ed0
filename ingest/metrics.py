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


def serve(port: int, host: str = "127.0.0.1") -> None:
    start_http_server(port, addr=host)
