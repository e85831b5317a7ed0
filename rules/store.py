"""Database I/O of the rules engine: claims, readings as numpy arrays, bulk upserts."""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

CLAIM_TIMEOUT = "5 minutes"

# A worker's claims are its own while its database session lives: claim_meter_windows holds a
# session-level advisory lock (CLAIM_LOCK_SPACE, hashtext(worker)) on the connection it claims
# with, and a claim whose worker holds no such lock in this database (the process died or lost
# its connection) is free for any other worker at once. CLAIM_TIMEOUT stays as the backstop
# (two worker names with the same hash).
CLAIM_LOCK_SPACE = 0x73796D62

_LIVE_WORKERS = f"""
SELECT objid FROM pg_locks
WHERE locktype = 'advisory' AND classid = {CLAIM_LOCK_SPACE}::oid AND objsubid = 2 AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""

_CLAIM = f"""
WITH live AS MATERIALIZED ({_LIVE_WORKERS}),
picked AS (
    SELECT meter_id, window_start FROM dirty_windows
    WHERE claimed_by IS NULL OR claimed_at < now() - interval '{CLAIM_TIMEOUT}'
       OR hashtext(claimed_by)::oid NOT IN (SELECT objid FROM live)
    ORDER BY meter_id, window_start
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE dirty_windows d SET claimed_by = $2, claimed_at = now()
FROM picked p WHERE d.meter_id = p.meter_id AND d.window_start = p.window_start
RETURNING d.meter_id, d.window_start, d.version
"""

# Sessions known to hold their worker's advisory lock (taken once per session).
_LOCKED: weakref.WeakKeyDictionary[asyncpg.Connection, str] = weakref.WeakKeyDictionary()


async def _hold_worker_lock(conn: asyncpg.Connection, worker: str) -> None:
    if _LOCKED.get(conn) == worker:
        return
    # pg_try_: a second live session under the same name (a misconfiguration) already keeps
    # the name's claims alive; waiting for it would only stall this worker.
    await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", CLAIM_LOCK_SPACE, worker)
    _LOCKED[conn] = worker


async def claim_meter_windows(
    conn: asyncpg.Connection, worker: str, limit: int
) -> list[tuple[str, datetime, int]]:
    """Claim dirty (meter, window) pairs for this worker (committed at once, so ingest's
    upserts of the same rows never wait for the computation), including those a worker that
    is gone had claimed."""
    await _hold_worker_lock(conn, worker)
    rows = await conn.fetch(_CLAIM, limit, worker)
    return [(r["meter_id"], r["window_start"], r["version"]) for r in rows]


async def claim_subjects(conn: asyncpg.Connection, limit: int) -> list[asyncpg.Record]:
    """Lock up to ``limit`` dirty subjects (kind, subject, window_start) for the caller's
    transaction, skipping those another worker holds: the earliest windows first, so that a
    subject's alerts are replayed over its windows in order, and of one window the longest
    waiting first. Under a backlog every subject is marked for the current window; without
    the second key the order among them is arbitrary and a change could wait for as long as
    the backlog lasts."""
    rows: list[asyncpg.Record] = await conn.fetch(
        """SELECT kind, subject, window_start FROM dirty_subjects
           ORDER BY window_start, marked_at LIMIT $1 FOR UPDATE SKIP LOCKED""",
        limit,
    )
    return rows


# Locks, in key order, a worker's claimed windows ($1) and those it computed ($2, $3): one
# semi-join (see finish_meter_windows).
LOCK_FINISHED = """
SELECT 1 FROM dirty_windows d
WHERE (d.meter_id, d.window_start) IN (
    SELECT meter_id, window_start FROM dirty_windows WHERE claimed_by = $1
    UNION ALL
    SELECT * FROM unnest($2::text[], $3::timestamptz[]))
ORDER BY d.meter_id, d.window_start
FOR UPDATE OF d
"""


async def finish_meter_windows(
    conn: asyncpg.Connection, worker: str, claimed: Sequence[tuple[str, datetime, int]]
) -> None:
    """Delete what was computed; release what changed meanwhile (its version moved on).

    Call it inside the transaction that stores the results. It first locks every row it will
    touch in key order, the order in which ingest marks windows dirty: deleting some rows and
    then updating others in whatever order the plans visit them deadlocked with ingest's
    upsert of the same rows.

    The rows are picked by one semi-join, never by ``claimed_by = … OR (…) IN (unnest …)``:
    given the array, the planner sees that a large claim does not fit in a hashed subplan and
    tests every row against the whole list (a claim of 200,000 windows did not finish in
    minutes)."""
    ids, starts, versions = zip(*claimed, strict=True) if claimed else ((), (), ())
    await conn.execute(
        LOCK_FINISHED,
        worker,
        list(ids),
        list(starts),
    )
    if claimed:
        await conn.execute(
            """DELETE FROM dirty_windows d
               USING unnest($1::text[], $2::timestamptz[], $3::bigint[]) AS c(m, s, v)
               WHERE d.meter_id = c.m AND d.window_start = c.s AND d.version = c.v""",
            list(ids),
            list(starts),
            list(versions),
        )
    await conn.execute(
        "UPDATE dirty_windows SET claimed_by = NULL, claimed_at = NULL WHERE claimed_by = $1",
        worker,
    )


# A binary COPY row of (ts timestamptz, value float8): timestamps travel as PostgreSQL's int64
# microseconds since 2000-01-01 (cheaper for the server than extract(epoch) as numeric).
_ROW = np.dtype([("n", ">i2"), ("l1", ">i4"), ("ts", ">i8"), ("l2", ">i4"), ("value", ">f8")])
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z in microseconds since 1970


async def fetch_series(
    conn: asyncpg.Connection, meter_id: str, lo: datetime, hi: datetime
) -> tuple[FloatArray, FloatArray]:
    """A meter's readings in [lo, hi] plus the one just before and the one just after, as
    sorted epoch seconds and values — through a binary COPY parsed by numpy, which is an
    order of magnitude faster than building a Python object per row."""
    query = f"""
        (SELECT ts, value FROM readings
         WHERE meter_id = {_literal(meter_id)} AND ts < {_ts(lo)} ORDER BY ts DESC LIMIT 1)
        UNION ALL
        (SELECT ts, value FROM readings
         WHERE meter_id = {_literal(meter_id)} AND ts >= {_ts(lo)} AND ts <= {_ts(hi)})
        UNION ALL
        (SELECT ts, value FROM readings
         WHERE meter_id = {_literal(meter_id)} AND ts > {_ts(hi)} ORDER BY ts LIMIT 1)
    """
    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(data)

    await conn.copy_from_query(query, output=sink, format="binary")
    raw = b"".join(chunks)
    # Header: 11-byte signature, 4-byte flags, 4-byte extension length; trailer: int16 -1.
    ext = int.from_bytes(raw[15:19], "big")
    body = raw[19 + ext : len(raw) - 2]
    rows = np.frombuffer(body, dtype=_ROW)
    # Exactly extract(epoch FROM ts)::float8: microseconds since 1970 are exact in a float64
    # (below 2**53 for ±285 years), and one IEEE division rounds correctly, as the server's
    # numeric → float8 cast does.
    ts = (rows["ts"].astype(np.int64) + _PG_EPOCH_US).astype(np.float64) / 1e6
    value = rows["value"].astype(np.float64)
    order = np.argsort(ts, kind="stable")
    return ts[order], value[order]


# A binary COPY row of (k int4, ts timestamptz, value float8): the request a reading answers.
_KEYED_ROW = np.dtype(
    [
        ("n", ">i2"),
        ("l0", ">i4"),
        ("k", ">i4"),
        ("l1", ">i4"),
        ("ts", ">i8"),
        ("l2", ">i4"),
        ("value", ">f8"),
    ]
)

_SERIES_REQUESTS = "_series_requests"


async def fetch_many(
    conn: asyncpg.Connection, requests: Sequence[tuple[str, datetime, datetime]]
) -> list[tuple[FloatArray, FloatArray]]:
    """:func:`fetch_series` for many ``(meter_id, lo, hi)`` at once, in one query: the same
    rows (the readings in [lo, hi] plus the one just before and the one just after), in the
    same order, as epoch seconds and values per request.

    The requests travel by COPY into a temporary table, and the readings come back by one
    binary COPY, each tagged with its request's index: a pass over thousands of meters costs
    two round trips instead of one per meter.
    """
    if not requests:
        return []
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {_SERIES_REQUESTS} "
        "(k int4, meter_id text, lo timestamptz, hi timestamptz)"
    )
    await conn.execute(f"TRUNCATE {_SERIES_REQUESTS}")
    await conn.copy_records_to_table(
        _SERIES_REQUESTS,
        records=[(k, m, lo, hi) for k, (m, lo, hi) in enumerate(requests)],
        columns=["k", "meter_id", "lo", "hi"],
    )
    query = f"""
        SELECT q.k, x.ts, x.value FROM {_SERIES_REQUESTS} q CROSS JOIN LATERAL (
            (SELECT ts, value FROM readings
             WHERE meter_id = q.meter_id AND ts < q.lo ORDER BY ts DESC LIMIT 1)
            UNION ALL
            (SELECT ts, value FROM readings
             WHERE meter_id = q.meter_id AND ts >= q.lo AND ts <= q.hi)
            UNION ALL
            (SELECT ts, value FROM readings
             WHERE meter_id = q.meter_id AND ts > q.hi ORDER BY ts LIMIT 1)
        ) x
    """
    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(data)

    await conn.copy_from_query(query, output=sink, format="binary")
    raw = b"".join(chunks)
    ext = int.from_bytes(raw[15:19], "big")
    rows = np.frombuffer(raw[19 + ext : len(raw) - 2], dtype=_KEYED_ROW)
    keys = rows["k"].astype(np.int64)
    ts_all = (rows["ts"].astype(np.int64) + _PG_EPOCH_US).astype(np.float64) / 1e6
    values = rows["value"].astype(np.float64)
    # Grouped by request, and within a request sorted by time (stable, as fetch_series).
    order = np.lexsort((ts_all, keys))
    keys, ts_all, values = keys[order], ts_all[order], values[order]
    bounds = np.searchsorted(keys, np.arange(len(requests) + 1))
    return [
        (ts_all[bounds[i] : bounds[i + 1]], values[bounds[i] : bounds[i + 1]])
        for i in range(len(requests))
    ]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ts(when: datetime) -> str:
    return f"'{when.astimezone(UTC).isoformat()}'::timestamptz"


async def copy_upsert(
    conn: asyncpg.Connection,
    table: str,
    columns: Sequence[str],
    key: Sequence[str],
    rows: Iterable[Sequence[Any]],
) -> None:
    """COPY rows into a temporary copy of ``table`` and upsert them in one statement."""
    records = list(rows)
    if not records:
        return
    temp = f"_upsert_{table}"
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {temp} (LIKE {table} INCLUDING DEFAULTS) "
        "ON COMMIT DELETE ROWS"
    )
    # Empty from an earlier upsert of this transaction (its rows go at commit anyway); a
    # DELETE, as TRUNCATE would give the table a new file, in the catalog, at every pass.
    await conn.execute(f"DELETE FROM {temp}")
    await conn.copy_records_to_table(temp, records=records, columns=list(columns))
    cols = ", ".join(columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    await conn.execute(
        f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {temp} "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
    )


async def mark_subjects(
    conn: asyncpg.Connection, subjects: Iterable[tuple[str, str, datetime]]
) -> None:
    items = sorted(set(subjects))
    if not items:
        return
    kinds, names, starts = zip(*items, strict=True)
    # A subject marked again keeps its marked_at (the first mark since it was last computed),
    # as ingest does for dirty_windows: its age is how long the change has waited.
    await conn.execute(
        """INSERT INTO dirty_subjects (kind, subject, window_start)
           SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[])
           ON CONFLICT (kind, subject, window_start)
           DO UPDATE SET version = dirty_subjects.version + 1""",
        list(kinds),
        list(names),
        list(starts),
    )


def jsonb(value: Any) -> str:
    return json.dumps(value, default=str)
