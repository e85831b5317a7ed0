"""Retention of raw readings: whole month partitions older than the horizon are dropped.

Window results (meter and exchange windows, reconciliations), alerts and statements are kept
for ever; only raw readings (and rejected messages) go.  The horizon must lie beyond the
backfill horizon (``SYMBIONT_BACKFILL_DAYS``) plus a month, so a late reading that ingest still
accepts never lands in a window whose other readings are gone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

log = logging.getLogger("symbiont.retention")

_PARTITIONS = """
SELECT c.relname AS name
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'readings'::regclass
ORDER BY c.relname
"""


@dataclass
class Pruned:
    partitions: list[str] = field(default_factory=list)
    rejections: int = 0


def _month_end(name: str) -> datetime | None:
    """The exclusive upper bound of a partition named ``readings_YYYY_MM`` (UTC months)."""
    try:
        _, year, month = name.rsplit("_", 2)
        y, m = int(year), int(month)
    except ValueError:
        return None
    return datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=UTC)


def check_horizon(keep_days: int, backfill_days: int) -> None:
    if keep_days < backfill_days + 31:
        raise ValueError(
            f"SYMBIONT_READINGS_RETENTION_DAYS={keep_days} must be at least"
            f" SYMBIONT_BACKFILL_DAYS + 31 = {backfill_days + 31}: ingest still accepts readings"
            " that old, and their windows need the readings around them"
        )


async def prune(
    conn: asyncpg.Connection, keep_days: int, now: datetime, *, backfill_days: int
) -> Pruned:
    """Drop the reading partitions that end before ``now − keep_days`` and older rejections."""
    check_horizon(keep_days, backfill_days)
    horizon = now - timedelta(days=keep_days)
    out = Pruned()
    for row in await conn.fetch(_PARTITIONS):
        end = _month_end(row["name"])
        if end is not None and end <= horizon:
            async with conn.transaction():
                await conn.execute(f'DROP TABLE "{row["name"]}"')
            out.partitions.append(row["name"])
            log.info("retention: dropped %s (readings before %s)", row["name"], end.date())
    status = await conn.execute("DELETE FROM rejections WHERE received_at < $1", horizon)
    out.rejections = int(status.rsplit(" ", 1)[1])
    return out
