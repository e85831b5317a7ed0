"""Feeds a prepared database to a rules engine as live data arrives, and runs its passes.

Run as a script with the engine to test first on ``PYTHONPATH`` (this file imports nothing
from the tests, so it can drive another revision of the engine)::

    python tests/equivalence_feed.py DATABASE_URL START END STEP_SECONDS

The database holds an applied network and, in ``equivalence_feed (meter_id, ts, value)``,
the readings to deliver. Every ``STEP_SECONDS`` from ``START`` to ``END`` (ISO 8601), the
readings of that step move into ``readings``, their windows are marked dirty as ingest marks
them, and the engine processes everything pending with ``now`` at the end of the step.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime, timedelta

import asyncpg

from core.apply import load_applied
from core.db import asyncpg_dsn
from core.settings import Settings
from core.windows import WindowCutter
from ingest.writer import MARK_DIRTY
from rules.engine import Engine


async def feed(url: str, start: datetime, end: datetime, step: timedelta) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        net = await load_applied(conn)
        assert net is not None, "no network applied"
        windows = {m: w.total_seconds() for m, w in net.meter_windows().items()}
        cutter = WindowCutter(net.tz)
        engine = Engine(Settings(database_url=url), worker_id="equivalence")
        at = start
        while at < end:
            upto = min(at + step, end)
            async with conn.transaction():
                rows = await conn.fetch(
                    """INSERT INTO readings (meter_id, ts, value)
                       SELECT meter_id, ts, value FROM equivalence_feed
                       WHERE ts >= $1 AND ts < $2
                       RETURNING meter_id, ts""",
                    at,
                    upto,
                )
                dirty = sorted(
                    {
                        (r["meter_id"], cutter.start(r["ts"].timestamp(), windows[r["meter_id"]]))
                        for r in rows
                    }
                )
                if dirty:
                    await conn.execute(
                        MARK_DIRTY,
                        [m for m, _ in dirty],
                        [datetime.fromtimestamp(s, net.tz) for _, s in dirty],
                    )
            await engine.process_pending(conn, now=upto)
            at = upto
    finally:
        await conn.close()


if __name__ == "__main__":
    url, first, last, seconds = sys.argv[1:5]
    asyncio.run(
        feed(
            url,
            datetime.fromisoformat(first),
            datetime.fromisoformat(last),
            timedelta(seconds=float(seconds)),
        )
    )
