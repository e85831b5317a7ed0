"""Alert counts for statement lines, read from the database.

A statement line shows how many alerts concerned its exchange during the month: those on the
exchange itself and those on its meters, sent and received (a counter reset or a silent meter
changes what is billed as much as an imbalance does), counting every alert that was firing at
some time in the month, whenever it started or ended. The counting itself is
:func:`statements.compute.exchange_alert_counts`; this module only reads the alerts.
"""

from __future__ import annotations

import asyncpg

from core.network import Network
from core.windows import month_bounds
from statements.compute import AlertSpan, exchange_alert_counts


async def month_alert_counts(
    conn: asyncpg.Connection, net: Network, year: int, month: int
) -> dict[str, int]:
    """Per exchange id, the alerts on it or its meters that were firing during the month."""
    start, end = month_bounds(year, month, net.tz)
    rows = await conn.fetch(
        """SELECT subject_kind, subject, started_at, resolved_at FROM alerts
           WHERE subject_kind IN ('exchange', 'meter')
             AND started_at < $2 AND (resolved_at IS NULL OR resolved_at > $1)""",
        start,
        end,
    )
    spans = [
        AlertSpan(r["subject_kind"], r["subject"], r["started_at"], r["resolved_at"]) for r in rows
    ]
    return exchange_alert_counts(net, spans, start, end)
