"""The batch writer: one transaction per batch of messages, then PUBACKs.

Per batch: COPY the readings into a temporary table, one INSERT … ON CONFLICT DO NOTHING
into the partitioned ``readings``, classify what did not insert as duplicate or conflict,
record rejections, bump per-partner counts, mark touched (meter, window) pairs dirty for
the rules engine, NOTIFY, commit. Only then are the messages acknowledged.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from zoneinfo import ZoneInfo

import asyncpg

from core.windows import WindowCutter, next_month
from ingest.parse import KEEP_PAYLOAD, NetworkIndex, Parsed, Reading, Reason, Rejection

log = logging.getLogger("symbiont.ingest")

NOTIFY_CHANNEL = "symbiont_dirty"

_KEY = itemgetter(0, 1)  # (meter, ts) of a reading
_TS = itemgetter(1)

_SETUP = """
CREATE TEMP TABLE IF NOT EXISTS ingest_batch (
    seq      integer NOT NULL,
    meter_id text NOT NULL,
    ts       timestamptz NOT NULL,
    value    double precision NOT NULL
) ON COMMIT DELETE ROWS
"""

_INSERT = """
INSERT INTO readings (meter_id, ts, value)
SELECT meter_id, ts, value FROM ingest_batch
ON CONFLICT DO NOTHING
"""

# Rows of this batch that did not insert: the readings that were there before. A row this
# transaction wrote has received_at = now(), the transaction's start (xmin cannot tell: the
# fast path's savepoint leaves later inserts in a subtransaction). Another transaction that
# began in the same microsecond would only make a duplicate count as stored.
_EXISTING = """
SELECT b.seq, r.value
FROM ingest_batch b
JOIN readings r ON r.meter_id = b.meter_id AND r.ts = b.ts
WHERE r.received_at <> now()
"""

_DIRTY = """
INSERT INTO dirty_windows (meter_id, window_start)
SELECT * FROM unnest($1::text[], $2::timestamptz[])
ORDER BY 1, 2
ON CONFLICT (meter_id, window_start)
DO UPDATE SET version = dirty_windows.version + 1, marked_at = now()
"""

_COUNTS = """
INSERT INTO ingest_counts AS c (partner_id, hour, messages, readings, duplicates, rejected)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::bigint[], $4::bigint[],
                     $5::bigint[], $6::bigint[])
ORDER BY 1, 2
ON CONFLICT (partner_id, hour) DO UPDATE SET
    messages = c.messages + excluded.messages,
    readings = c.readings + excluded.readings,
    duplicates = c.duplicates + excluded.duplicates,
    rejected = c.rejected + excluded.rejected
"""

_REJECT_COLUMNS = ("received_at", "topic", "partner_id", "meter_id", "reason", "detail", "payload")

# A redelivered message (MQTT DUP flag) whose rejection was already committed before the
# process died must not be recorded twice.
_REJECTED_BEFORE = """
SELECT DISTINCT payload_sha FROM rejections
WHERE payload_sha = ANY($1::bytea[]) AND received_at > now() - interval '7 days'
"""


@dataclass(slots=True)
class Message:
    """One MQTT message on its way to the database, with what is needed to acknowledge it."""

    parsed: Parsed
    received: float  # epoch seconds when the callback saw it
    mid: int = 0
    qos: int = 0
    generation: int = 0
    dup: bool = False


@dataclass(slots=True)
class BatchResult:
    messages: int = 0
    readings: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejections: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _sha(topic: str, payload: bytes | None) -> bytes:
    return hashlib.sha256(topic.encode() + b"\0" + (payload or b"")).digest()


class BatchWriter:
    """Writes batches through one asyncpg connection it owns (reconnecting when needed)."""

    def __init__(self, dsn: str, *, application_name: str = "symbiont-ingest") -> None:
        self.dsn = dsn
        self.application_name = application_name
        self.conn: asyncpg.Connection | None = None
        self._months: set[tuple[int, int]] = set()
        self._cutters: dict[str, WindowCutter] = {}
        self._direct_failures = 0

    async def connect(self) -> asyncpg.Connection:
        if self.conn is None or self.conn.is_closed():
            self.conn = await asyncpg.connect(
                self.dsn,
                server_settings={"application_name": self.application_name},
                command_timeout=60,
            )
            await self.conn.execute(_SETUP)
            self._months.clear()
        return self.conn

    async def close(self) -> None:
        if self.conn is not None and not self.conn.is_closed():
            await self.conn.close()
        self.conn = None

    async def ensure_partitions(self, instants: Iterable[datetime]) -> None:
        conn = await self.connect()
        for ts in instants:
            key = (ts.year, ts.month)
            if key not in self._months:
                # Another writer may have created it a moment ago (the function's own check
                # can miss a creation that committed while it waited for its lock).
                with contextlib.suppress(asyncpg.DuplicateTableError):
                    await conn.execute("SELECT symbiont_ensure_partition($1)", ts)
                self._months.add(key)

    def _cutter(self, timezone: str) -> WindowCutter:
        cutter = self._cutters.get(timezone)
        if cutter is None:
            cutter = self._cutters[timezone] = WindowCutter(ZoneInfo(timezone))
        return cutter

    async def write(self, batch: Sequence[Message], index: NetworkIndex) -> BatchResult:
        """Commit the batch; raises on database errors (nothing is committed then)."""
        result = BatchResult(messages=len(batch))
        rejections: list[tuple[Message, Rejection]] = []
        # The readings of the whole batch, as parsed: (meter, ts, value) tuples, which COPY
        # takes as they are. ``starts`` is where each message's readings begin.
        rows: list[Reading] = []
        starts: list[int] = []
        senders: list[Message] = []
        for msg in batch:
            parsed = msg.parsed
            if parsed.rejections:
                rejections.extend((msg, rej) for rej in parsed.rejections)
            if parsed.readings:
                starts.append(len(rows))
                senders.append(msg)
                rows.extend(parsed.readings)
        result.readings = len(rows)

        def owner(seq: int) -> Message:
            return senders[bisect_right(starts, seq) - 1]

        if rows:
            await self._ensure_months(rows)
        conn = await self.connect()
        inserted_mask: list[bool] | None = None  # None: every row inserted
        async with conn.transaction():
            if rows:
                inserted = await self._copy_direct(conn, rows)
                if inserted is None:  # something in the batch was there before, or twice
                    if len(set(map(_KEY, rows))) != len(rows):
                        # The first occurrence within the batch wins, as in the database.
                        rows, owners = self._dedupe(rows, owner, rejections, result)

                        def owner(seq: int) -> Message:
                            return owners[seq]

                    await conn.copy_records_to_table(
                        "ingest_batch",
                        records=[(seq, m, ts, v) for seq, (m, ts, v) in enumerate(rows)],
                    )
                    status = await conn.execute(_INSERT)
                    inserted = int(status.rsplit(" ", 1)[1])
                if inserted < len(rows):
                    inserted_mask = [True] * len(rows)
                    for seq, stored in await conn.fetch(_EXISTING):
                        inserted_mask[seq] = False
                        meter_id, ts, value = rows[seq]
                        if _same(stored, value):
                            result.duplicates += 1
                        else:
                            msg = owner(seq)
                            rejections.append((msg, _conflict(msg, meter_id, ts, stored, value)))
                result.inserted = inserted
                await self._mark_dirty(
                    conn,
                    rows
                    if inserted_mask is None
                    else [r for r, ok in zip(rows, inserted_mask, strict=True) if ok],
                    index,
                )
            if rejections:
                await self._record_rejections(conn, rejections)
            await self._count(conn, batch, rejections, result)
            await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(result.inserted))
        for _, rej in rejections:
            result.rejections[rej.reason.value] += 1
        return result

    @staticmethod
    def _dedupe(
        rows: list[Reading],
        owner: Callable[[int], Message],
        rejections: list[tuple[Message, Rejection]],
        result: BatchResult,
    ) -> tuple[list[Reading], list[Message]]:
        """The batch without repeats of a (meter, ts): a repeat with the same value is a
        duplicate, with another value a conflict. Returns the rows kept and their messages."""
        first: dict[tuple[str, datetime], float] = {}
        unique: list[Reading] = []
        owners: list[Message] = []
        for seq, row in enumerate(rows):
            meter_id, ts, value = row
            seen = first.get((meter_id, ts))
            if seen is None:
                first[(meter_id, ts)] = value
                unique.append(row)
                owners.append(owner(seq))
            elif _same(seen, value):
                result.duplicates += 1
            else:
                msg = owner(seq)
                rejections.append((msg, _conflict(msg, meter_id, ts, seen, value)))
        return unique, owners

    async def _ensure_months(self, rows: list[Reading]) -> None:
        """Every month from the batch's earliest reading to its latest has its partition."""
        stamps = list(map(_TS, rows))
        month, last = min(stamps), max(stamps)
        month = month.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        missing = []
        while month <= last:
            if (month.year, month.month) not in self._months:
                missing.append(month)
            month = next_month(month)
        if missing:
            await self.ensure_partitions(missing)

    async def _copy_direct(self, conn: asyncpg.Connection, rows: list[Reading]) -> int | None:
        """The fast path: COPY straight into ``readings`` (PostgreSQL routes rows to their
        partitions). A duplicate key aborts it, in a savepoint, and the caller takes the
        slower path that sorts duplicates from conflicts; redeliveries are rare, so almost
        every batch goes this way."""
        if self._direct_failures > 3:  # a redelivery storm: skip the attempt for a while
            self._direct_failures -= 1
            return None
        try:
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "readings", records=rows, columns=["meter_id", "ts", "value"]
                )
        except asyncpg.UniqueViolationError:
            self._direct_failures += 2
            return None
        self._direct_failures = max(self._direct_failures - 1, 0)
        return len(rows)

    async def _mark_dirty(
        self, conn: asyncpg.Connection, rows: list[Reading], index: NetworkIndex
    ) -> None:
        """Mark the (meter, window) pairs of the stored rows dirty for the rules engine."""
        cut = self._cutter(index.timezone).start
        meters = index.meters
        # A window of whole quarter hours never splits a UTC quarter hour: one cut per
        # (meter, quarter hour) is enough. Other windows are cut reading by reading.
        quarters = {(m, int(ts.timestamp()) // 900) for m, ts, _ in rows}
        touched: set[tuple[str, float]] = set()
        odd: set[str] = set()
        for meter_id, quarter in quarters:
            meter = meters.get(meter_id)
            window_s = meter.window_s if meter is not None else 3600
            if window_s % 900:
                odd.add(meter_id)
            else:
                touched.add((meter_id, cut(quarter * 900.0, window_s)))
        for meter_id, ts, _ in rows:
            if meter_id in odd:
                touched.add((meter_id, cut(ts.timestamp(), meters[meter_id].window_s)))
        if touched:
            ids, starts = zip(*sorted(touched), strict=True)
            await conn.execute(_DIRTY, list(ids), [datetime.fromtimestamp(s, UTC) for s in starts])

    async def _record_rejections(
        self, conn: asyncpg.Connection, rejections: list[tuple[Message, Rejection]]
    ) -> None:
        now = datetime.now(UTC)
        redelivered = {_sha(m.parsed.topic, r.payload): (m, r) for m, r in rejections if m.dup}
        skip: set[bytes] = set()
        if redelivered:
            rows = await conn.fetch(_REJECTED_BEFORE, list(redelivered))
            skip = {bytes(row[0]) for row in rows}
        rows_out = []
        for msg, rej in rejections:
            sha = _sha(msg.parsed.topic, rej.payload)
            if sha in skip:
                continue
            rows_out.append(
                (
                    now,
                    msg.parsed.topic[:1024],
                    rej.partner,
                    rej.meter,
                    rej.reason.value,
                    rej.detail[:2000],
                    rej.payload,
                    sha,
                )
            )
        if rows_out:
            await conn.copy_records_to_table(
                "rejections", records=rows_out, columns=[*_REJECT_COLUMNS, "payload_sha"]
            )

    async def _count(
        self,
        conn: asyncpg.Connection,
        batch: Sequence[Message],
        rejections: list[tuple[Message, Rejection]],
        result: BatchResult,
    ) -> None:
        counts: dict[tuple[str, datetime], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        rejected_msgs = {id(m) for m, _ in rejections}
        for msg in batch:
            partner = msg.parsed.partner or "?"
            hour = datetime.fromtimestamp(msg.received - msg.received % 3600, UTC)
            row = counts[(partner, hour)]
            row[0] += 1
            row[1] += len(msg.parsed.readings)
            if id(msg) in rejected_msgs:
                row[3] += 1
        if counts and result.duplicates:
            # Attribute duplicates to the batch's first partner-hour: counts, not billing.
            next(iter(counts.values()))[2] += result.duplicates
        keys = sorted(counts)
        await conn.execute(
            _COUNTS,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [counts[k][0] for k in keys],
            [counts[k][1] for k in keys],
            [counts[k][2] for k in keys],
            [counts[k][3] for k in keys],
        )


def _same(a: float, b: float) -> bool:
    return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _conflict(msg: Message, meter_id: str, ts: datetime, stored: float, value: float) -> Rejection:
    return Rejection(
        Reason.conflict,
        f"meter '{meter_id}' at {ts.isoformat()}: {stored!r} is stored, {value!r} conflicts",
        msg.parsed.partner,
        meter_id,
        f'{{"meter": "{meter_id}", "ts": "{ts.isoformat()}", "value": {value!r}}}'.encode()[
            :KEEP_PAYLOAD
        ],
    )
