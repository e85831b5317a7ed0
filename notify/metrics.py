"""Prometheus metrics of the outbox and its deliveries (served by the process the
:class:`notify.worker.Notifier` runs in: the rules worker).

``symbiont_notify_deliveries`` counts attempts as the notifier records them; the outbox
gauges are measured from the database by :func:`observe_outbox`, which the rules worker calls
every few seconds.  The age keeps growing between measurements, so a notifier that stopped
shows.
"""

from __future__ import annotations

import asyncpg
from prometheus_client import Counter, Gauge

from core.ages import Age
from notify.outbox import Channel

RESULTS = ("delivered", "retry", "failed")

DELIVERIES = Counter(
    "symbiont_notify_deliveries",
    "Delivery attempts, by channel and result: delivered, retry (to be tried again) or failed "
    "(given up)",
    ["channel", "result"],
)
OUTBOX_PENDING = Gauge(
    "symbiont_notify_outbox_pending",
    "Outbox rows neither delivered nor given up yet, by channel",
    ["channel"],
)
OUTBOX_AGE = Gauge(
    "symbiont_notify_outbox_pending_age_seconds",
    "Age of the oldest outbox row neither delivered nor given up (0 when none)",
)

for _channel in Channel:
    OUTBOX_PENDING.labels(_channel.value).set(0)
    for _result in RESULTS:
        DELIVERIES.labels(_channel.value, _result)

_outbox_age = Age()
OUTBOX_AGE.set_function(_outbox_age.value)

OUTBOX = """
SELECT channel, count(*) AS n,
       extract(epoch FROM statement_timestamp() - min(created_at))::float8 AS age
FROM outbox WHERE status = 'pending'
GROUP BY channel
"""


def delivered(channel: str, result: str) -> None:
    """Count one attempt (``result`` is one of :data:`RESULTS`)."""
    DELIVERIES.labels(channel, result).inc()


async def observe_outbox(conn: asyncpg.Connection) -> None:
    """Measure the outbox's backlog into the gauges."""
    rows = await conn.fetch(OUTBOX)
    counts = {c.value: 0 for c in Channel}
    counts.update({r["channel"]: r["n"] for r in rows})
    for channel, n in counts.items():
        OUTBOX_PENDING.labels(channel).set(n)
    ages = [r["age"] for r in rows if r["age"] is not None]
    _outbox_age.set(max(ages) if ages else None)
