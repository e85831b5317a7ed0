"""Claims on ``dirty_windows`` between rules workers and ingest (rules/store.py), found by
the topology test (tests/test_topology.py) with two ingest and two rules processes:

- a rules worker that dies holding claims no longer leaves its windows unprocessed for
  ``CLAIM_TIMEOUT`` (5 minutes): another worker takes them over as soon as its session is gone,
  and never while it lives;
- finishing claims no longer deadlocks with ingest marking the same windows dirty (the rules
  transaction lost, and the rules process exited on the DeadlockDetectedError).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg

from core.db import asyncpg_dsn
from ingest.writer import MARK_DIRTY
from rules.store import (
    LOCK_FINISHED,
    claim_meter_windows,
    claim_subjects,
    finish_meter_windows,
)

T0 = datetime(2026, 5, 4, tzinfo=UTC)
HOUR = timedelta(hours=1)


async def _connect(url: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(asyncpg_dsn(url))
    return conn


async def _mark(conn: asyncpg.Connection, meter: str, *starts: datetime) -> None:
    await conn.execute(MARK_DIRTY, [meter] * len(starts), list(starts))


def test_claims_of_a_gone_worker_are_taken_over_at_once(database_url: str) -> None:
    async def go() -> None:
        a, b, other = [await _connect(database_url) for _ in range(3)]
        try:
            await _mark(other, "m1", T0, T0 + HOUR, T0 + 2 * HOUR)
            assert len(await claim_meter_windows(a, "worker-a", 10)) == 3
            # worker-a lives: its claims stay its own.
            assert await claim_meter_windows(b, "worker-b", 10) == []
            await _mark(other, "m1", T0)  # new data for a claimed window: still worker-a's
            assert await claim_meter_windows(b, "worker-b", 10) == []

            # worker-a's session ends (its process died): worker-b takes over at once.
            pid = await a.fetchval("SELECT pg_backend_pid()")
            await other.execute("SELECT pg_terminate_backend($1)", pid)
            taken: list[tuple[str, datetime, int]] = []
            for _ in range(50):
                taken = await claim_meter_windows(b, "worker-b", 10)
                if taken:
                    break
                await asyncio.sleep(0.1)
            assert sorted((m, s) for m, s, _ in taken) == [
                ("m1", T0),
                ("m1", T0 + HOUR),
                ("m1", T0 + 2 * HOUR),
            ]
            assert dict(((m, s), v) for m, s, v in taken)[("m1", T0)] == 2
            async with b.transaction():
                await finish_meter_windows(b, "worker-b", taken)
            assert await other.fetchval("SELECT count(*) FROM dirty_windows") == 0
        finally:
            for conn in (a, b, other):
                if not conn.is_closed():
                    await conn.close()

    asyncio.run(go())


def test_finishing_claims_does_not_deadlock_with_ingest_marking_windows(
    database_url: str,
) -> None:
    """The interleaving that deadlocked: the rules transaction deletes a computed window and
    releases one whose data changed meanwhile, while an ingest batch marks both again, in
    key order."""

    async def go() -> None:
        ingest, rules = await _connect(database_url), await _connect(database_url)
        k1, k2 = T0, T0 + HOUR  # k1 < k2: ingest locks k1 first
        try:
            await _mark(ingest, "m1", k1, k2)
            claimed = await claim_meter_windows(rules, "worker", 10)
            assert len(claimed) == 2
            await _mark(ingest, "m1", k1)  # new data for k1 while it is computed

            batch = ingest.transaction()
            await batch.start()
            await _mark(ingest, "m1", k1)  # the batch holds k1

            async def finish() -> None:
                async with rules.transaction():
                    await finish_meter_windows(rules, "worker", claimed)

            task = asyncio.create_task(finish())
            await asyncio.sleep(0.5)  # the rules transaction is now waiting for k1
            await _mark(ingest, "m1", k2)  # deadlocked here (or in finish) before the fix
            await batch.commit()
            await asyncio.wait_for(task, 10)

            rows = await ingest.fetch(
                "SELECT window_start, claimed_by FROM dirty_windows ORDER BY 1"
            )
            # Both changed after they were claimed: both stay dirty, released for the next pass.
            assert [(r["window_start"], r["claimed_by"]) for r in rows] == [(k1, None), (k2, None)]
        finally:
            await ingest.close()
            await rules.close()

    asyncio.run(go())


def test_subjects_of_one_window_are_claimed_longest_waiting_first(database_url: str) -> None:
    """Under a backlog every subject is marked for the current window: of those, the ones
    marked first are claimed first (before, the order among them was arbitrary and a change
    could wait as long as the backlog lasted); an earlier window still goes before all."""

    async def go() -> None:
        conn = await _connect(database_url)
        try:
            now = datetime.now(UTC)
            # Inserted newest first, so that the table's order is the opposite of the marks'.
            rows = [
                ("exchange", f"x{i:03d}", T0 + HOUR, now - timedelta(seconds=i)) for i in range(200)
            ]
            rows.append(("meter", "late", T0, now))
            await conn.executemany(
                "INSERT INTO dirty_subjects (kind, subject, window_start, marked_at)"
                " VALUES ($1, $2, $3, $4)",
                rows,
            )
            async with conn.transaction():
                claimed = await claim_subjects(conn, 11)
            got = [(r["kind"], r["subject"]) for r in claimed]
            assert got[0] == ("meter", "late")
            assert got[1:] == [("exchange", f"x{i:03d}") for i in range(199, 189, -1)]
        finally:
            await conn.close()

    asyncio.run(go())


def test_finishing_a_large_claim_is_one_pass_over_the_claim(database_url: str) -> None:
    """Finishing a pass locks its windows with a join against the claim, not by testing every
    dirty window against the whole list: with the list in an ``OR … IN (unnest …)``, a claim
    too large for a hashed subplan (200,000 windows at 150,000 meters) was compared row by row
    and the pass did not finish in minutes. The plan with a claim of 100,000 windows (the
    array is known to the planner, as in the first executions of a prepared statement) has no
    subplan, and the pass finishes and clears them."""

    async def go() -> None:
        conn = await _connect(database_url)
        try:
            n = 100_000
            ids = [f"m{i % 5000}" for i in range(n)]
            starts = [T0 + (i // 5000) * HOUR for i in range(n)]
            await conn.execute(MARK_DIRTY, ids, starts)
            await conn.execute("ANALYZE dirty_windows")
            plan = "\n".join(
                r[0] for r in await conn.fetch("EXPLAIN " + LOCK_FINISHED, "w", ids, starts)
            )
            assert "SubPlan" not in plan, plan
            claimed = await claim_meter_windows(conn, "w", n)
            assert len(claimed) == n
            async with conn.transaction():
                await finish_meter_windows(conn, "w", claimed)
            assert await conn.fetchval("SELECT count(*) FROM dirty_windows") == 0
        finally:
            await conn.close()

    asyncio.run(go())
