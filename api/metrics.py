"""Prometheus metrics of the API process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "symbiont_api_requests", "HTTP requests answered, by route and status", ["route", "status"]
)
LATENCY = Histogram(
    "symbiont_api_request_seconds",
    "Time to answer a request (streams: time to the first byte)",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
AUTH_FAILURES = Counter("symbiont_api_auth_failures", "Requests refused for a bad or no token")
STREAMS = Gauge("symbiont_api_live_streams", "Open server-sent-event streams")
LIVE_REFRESHES = Gauge("symbiont_api_live_refreshes", "Live snapshot refreshes since start")
WINDOWS_CACHE_HITS = Gauge(
    "symbiont_api_windows_cache_hits", "Window histories answered from memory since start"
)
WINDOWS_CACHE_MISSES = Gauge(
    "symbiont_api_windows_cache_misses", "Window histories read from the database since start"
)
WINDOWS_CACHE_BYTES = Gauge(
    "symbiont_api_windows_cache_bytes", "Bytes of serialized window histories held"
)
