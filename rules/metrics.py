"""Prometheus metrics of the rules worker (served on ``SYMBIONT_METRICS_PORT`` when set)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

METER_WINDOWS = Counter("symbiont_rules_meter_windows", "Meter windows computed")
EXCHANGE_WINDOWS = Counter("symbiont_rules_exchange_windows", "Exchange windows reconciled")
RECONCILIATIONS = Counter("symbiont_rules_reconciliations", "Network reconciliations computed")
ALERT_CHANGES = Counter(
    "symbiont_rules_alert_changes", "Alerts fired, resolved or updated, by rule", ["rule"]
)
WINDOW_ERRORS = Counter(
    "symbiont_rules_window_errors",
    "Window computations that failed (kind: meter, exchange or reconciliation); each is stored "
    "with its cause and raises rules_error",
    ["kind"],
)
PASS_SECONDS = Histogram(
    "symbiont_rules_pass_seconds",
    "Time of one pass over the pending work",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PENDING = Gauge("symbiont_rules_pending_windows", "Dirty (meter, window) pairs waiting")
STATEMENTS = Counter("symbiont_rules_statements_issued", "Statements issued")
