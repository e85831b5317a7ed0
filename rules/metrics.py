"""Prometheus metrics of the rules worker (served on ``SYMBIONT_METRICS_PORT`` when set).

The backlog gauges (pending windows and subjects, and how long the oldest change has waited)
are measured from the database every :data:`BACKLOG_INTERVAL_S` by the worker
(:func:`observe_backlog`); the age keeps growing between measurements, so a stuck worker
shows.
"""

from __future__ import annotations

import asyncpg
from prometheus_client import Counter, Gauge, Histogram

from core.ages import Age

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
PENDING = Gauge(
    "symbiont_rules_pending_windows",
    "(meter, window) pairs whose readings changed and are waiting for the rules engine",
)
PENDING_SUBJECTS = Gauge(
    "symbiont_rules_pending_subjects",
    "Exchange, component and meter windows waiting for the engine's second stage "
    "(reconciliation and alerts)",
)
PENDING_AGE = Gauge(
    "symbiont_rules_pending_age_seconds",
    "How long the oldest change waiting for the rules engine has waited (0 when none waits)",
)
STATEMENTS = Counter("symbiont_rules_statements_issued", "Statements issued")

BACKLOG_INTERVAL_S = 15.0

_pending_age = Age()
PENDING_AGE.set_function(_pending_age.value)

# One round trip.  marked_at is when a pair was first marked since it was last computed (a
# re-mark keeps it), so its age is how long a change has waited.
BACKLOG = """
SELECT (SELECT count(*) FROM dirty_windows) AS windows,
       (SELECT count(*) FROM dirty_subjects) AS subjects,
       extract(epoch FROM statement_timestamp() - least(
           (SELECT min(marked_at) FROM dirty_windows),
           (SELECT min(marked_at) FROM dirty_subjects)))::float8 AS age
"""


async def observe_backlog(conn: asyncpg.Connection) -> None:
    """Measure the rules engine's backlog into the gauges."""
    row = await conn.fetchrow(BACKLOG)
    assert row is not None
    PENDING.set(row["windows"])
    PENDING_SUBJECTS.set(row["subjects"])
    _pending_age.set(row["age"])
