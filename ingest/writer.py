"""The batch writer: one transaction per batch of messages, then PUBACKs.

Per batch: COPY the readings into a temporary table, one INSERT … ON CONFLICT DO NOTHING
into the partitioned ``readings``, classify what did not insert as duplicate or conflict,
record rejections, bump per-partner counts, mark touched (meter, window) pairs dirty for
the rules engine, NOTIFY, commit. Only then are the messages acknowledged.

One bad message never stops the others: when the database refuses a batch because of what a
message holds (bad data, a broken constraint, a value that does not encode), the batch is
split in halves, each its own transaction, until the message at fault is alone; that message
is stored as one ``invalid_format`` rejection naming the database's complaint, and every
other message as usual. Only a failure of the database itself raises. Text taken from a
message (topic, detail, partner and meter ids) is made safe before it reaches a rejection row.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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

from core.text import safe_text
from core.windows import WindowCutter, next_month
from ingest.parse import (
    KEEP_PAYLOAD,
    NetworkIndex,
    Parsed,
    Reading,
    Reason,
    Rejection,
    SessionEvent,
)

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

# Marks (meter, window start) pairs dirty for the rules engine; also for loaders that store
# readings around the writer (the rules benchmark's COPY).  A pair marked again keeps its
# marked_at: the first mark since it was last computed, so the rules worker's pending-age
# metric says how long a change has waited, however often the pair is marked meanwhile.
MARK_DIRTY = """
INSERT INTO dirty_windows (meter_id, window_start)
SELECT * FROM unnest($1::text[], $2::timestamptz[])
ORDER BY 1, 2
ON CONFLICT (meter_id, window_start)
DO UPDATE SET version = dirty_windows.version + 1
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

# Sparkplug B births and deaths, committed with the readings. A batch that commits after a
# later one (batches are written side by side) must not undo what the later one recorded:
# every change is guarded by the instant ingest received it.
_BIRTH = """
INSERT INTO sparkplug_births AS b (group_id, node_id, device_id, bd_seq, metrics, received_at)
VALUES ($1, $2, $3, $4, $5::jsonb, $6)
ON CONFLICT (group_id, node_id, device_id) DO UPDATE SET
    bd_seq = excluded.bd_seq, metrics = excluded.metrics, received_at = excluded.received_at
WHERE b.received_at <= excluded.received_at
"""
_NODE_DEATH = """
DELETE FROM sparkplug_births WHERE group_id = $1 AND node_id = $2 AND received_at <= $3
"""
_DEVICE_DEATH = """
DELETE FROM sparkplug_births
WHERE group_id = $1 AND node_id = $2 AND device_id = $3 AND received_at <= $4
"""
_PRESENCE = """
INSERT INTO meter_presence AS p (meter_id, online, changed_at, cause)
SELECT m, $2, $3, $4 FROM unnest($1::text[]) AS m
ON CONFLICT (meter_id) DO UPDATE SET
    online = excluded.online, changed_at = excluded.changed_at, cause = excluded.cause
WHERE p.changed_at <= excluded.changed_at
"""

# Failures a message's own content causes, as opposed to the database's trouble: data the
# database refuses (class 22: bad values, NUL, characters the encoding lacks), a broken
# constraint (class 23: the duplicates the writer expects never get this far), one key twice
# in one statement (class 21), a value over a limit such as an index row's size (class 54),
# and a value that does not encode for COPY (UnicodeEncodeError and other ValueErrors,
# OverflowError). asyncpg's own configuration errors are ValueErrors too, and are not these.
CONTENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.CardinalityViolationError,
    asyncpg.ProgramLimitExceededError,
    ValueError,
    OverflowError,
)

ID_LIMIT = 256  # partner and meter ids in rejection rows and counts (ids are short; names aren't)
TOPIC_LIMIT = 1024
DETAIL_LIMIT = 2000
CLOSE_TIMEOUT_S = 2.0


def content_fault(exc: BaseException) -> bool:
    """Whether ``exc`` is the fault of what a batch holds, not of the database or the network."""
    return isinstance(exc, CONTENT_ERRORS) and not isinstance(exc, asyncpg.InterfaceError)


def complaint(exc: BaseException) -> str:
    """The database's (or the encoder's) complaint about a row, readable and safe to store."""
    if isinstance(exc, asyncpg.PostgresError):
        text = str(exc) or type(exc).__name__
        code = getattr(exc, "sqlstate", None)
        text = f"{text} (SQLSTATE {code})" if code else text
    else:
        text = f"it does not encode for the database: {exc}"
    return safe_text(text, 500)


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
    # every rejection committed: the parser's, conflicts, and messages the database refused
    recorded: list[Rejection] = field(default_factory=list)

    def add(self, other: BatchResult) -> None:
        self.recorded.extend(other.recorded)
        self.messages += other.messages
        self.readings += other.readings
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        for reason, n in other.rejections.items():
            self.rejections[reason] = self.rejections.get(reason, 0) + n


def _sha(topic: str, payload: bytes | None) -> bytes:
    return hashlib.sha256(topic.encode() + b"\0" + (payload or b"")).digest()


def _safe_id(text: str | None) -> str | None:
    return None if text is None else safe_text(text, ID_LIMIT)


def _evidence(parsed: Parsed) -> bytes | None:
    """What to keep as the payload of a message the database refused: the payload its
    rejections carry, or else its readings as JSON (the same bytes every time the message
    comes, so a redelivery is recognised)."""
    for rej in parsed.rejections:
        if rej.payload:
            return rej.payload
    if not parsed.readings:
        return None
    doc = [{"meter": m, "ts": ts.isoformat(), "value": v} for m, ts, v in parsed.readings[:2000]]
    return json.dumps(doc).encode()[:KEEP_PAYLOAD]  # ASCII: NUL and surrogates escaped


def _refused(msg: Message, why: str) -> Message:
    """``msg`` as one rejection: the database refused it, and says why."""
    parsed = msg.parsed
    rejection = Rejection(
        Reason.invalid_format,
        f"the database refused this message: {why}",
        parsed.partner,
        None,
        _evidence(parsed),
    )
    return Message(
        Parsed(parsed.topic, parsed.partner, [], [rejection]),
        msg.received,
        msg.mid,
        msg.qos,
        msg.generation,
        msg.dup,
    )


def _minimal(msg: Message) -> Message:
    """The least that can be kept of a refused message whose rejection was refused too: its
    topic in ASCII, the reason and a fixed detail."""
    topic = safe_text(msg.parsed.topic, TOPIC_LIMIT).encode("ascii", "backslashreplace")
    rejection = Rejection(
        Reason.invalid_format,
        "the database refused this message and the description of it",
        None,
        None,
        None,
    )
    return Message(
        Parsed(topic.decode("ascii"), None, [], [rejection]),
        msg.received,
        msg.mid,
        msg.qos,
        msg.generation,
        msg.dup,
    )


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
        """Close the connection, within CLOSE_TIMEOUT_S (aborted if the server does not answer)."""
        conn, self.conn = self.conn, None
        if conn is not None and not conn.is_closed():
            # close() aborts the connection itself when it cannot close it gracefully.
            with contextlib.suppress(Exception):
                await conn.close(timeout=CLOSE_TIMEOUT_S)

    def terminate(self) -> None:
        """Drop the connection at once (a query in progress on it fails)."""
        conn, self.conn = self.conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

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
        """Commit the batch, isolating any message the database refuses for its content (it
        becomes one ``invalid_format`` rejection). Raises when the database itself fails;
        part of a split batch may be committed then, and writing the batch again is safe:
        readings come back as duplicates, and the rejections of messages marked ``dup`` are
        not recorded twice."""
        try:
            return await self._commit(batch, index)
        except Exception as exc:
            if not content_fault(exc):
                raise
            log.warning(
                "the database refused a batch of %d messages (%s); isolating the message at fault",
                len(batch),
                complaint(exc),
            )
            return await self._isolate(batch, index, exc)

    async def _isolate(
        self, batch: Sequence[Message], index: NetworkIndex, exc: BaseException
    ) -> BatchResult:
        """``batch`` failed for its content: write each half in its own transaction, and split
        again what fails, until the message at fault is alone and can be refused."""
        if len(batch) == 1:
            return await self._refuse(batch[0], index, exc)
        result = BatchResult()
        middle = len(batch) // 2
        for part in (batch[:middle], batch[middle:]):
            try:
                done = await self._commit(part, index)
            except Exception as fault:
                if not content_fault(fault):
                    raise
                done = await self._isolate(part, index, fault)
            result.add(done)
        return result

    async def _refuse(self, msg: Message, index: NetworkIndex, exc: BaseException) -> BatchResult:
        """Store ``msg``, which the database refused alone, as one rejection instead."""
        why = complaint(exc)
        log.warning(
            "message on %s refused by the database (%s); rejected as %s",
            safe_text(msg.parsed.topic, 200),
            why,
            Reason.invalid_format.value,
        )
        try:
            return await self._commit([_refused(msg, why)], index)
        except Exception as again:
            if not content_fault(again):
                raise
            log.error(
                "the rejection of a refused message was refused too (%s); keeping less of it",
                complaint(again),
            )
            return await self._commit([_minimal(msg)], index)

    async def _commit(self, batch: Sequence[Message], index: NetworkIndex) -> BatchResult:
        """Commit the batch in one transaction; raises if it fails (nothing is committed)."""
        result = BatchResult(messages=len(batch))
        rejections: list[tuple[Message, Rejection]] = []
        # The readings of the whole batch, as parsed: (meter, ts, value) tuples, which COPY
        # takes as they are. ``starts`` is where each message's readings begin.
        rows: list[Reading] = []
        starts: list[int] = []
        senders: list[Message] = []
        events: list[SessionEvent] = []
        for msg in batch:
            parsed = msg.parsed
            if parsed.rejections:
                rejections.extend((msg, rej) for rej in parsed.rejections)
            if parsed.event is not None:
                events.append(parsed.event)
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
            if events:
                await self._record_events(conn, events)
            await self._count(conn, batch, rejections, result)
            await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(result.inserted))
        for _, rej in rejections:
            result.rejections[rej.reason.value] += 1
            result.recorded.append(rej)
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
            await conn.execute(
                MARK_DIRTY, list(ids), [datetime.fromtimestamp(s, UTC) for s in starts]
            )

    @staticmethod
    async def _record_events(conn: asyncpg.Connection, events: list[SessionEvent]) -> None:
        """Sparkplug B births and deaths, in the order they came: the births' definitions
        (for a restarted ingest) and the presence of the meters mapped under them."""
        for ev in events:
            group, node, device = (
                safe_text(t, TOPIC_LIMIT) for t in (ev.group, ev.node, ev.device)
            )
            if ev.metrics is not None:
                defs = [
                    [alias, safe_text(name, TOPIC_LIMIT), datatype, unit and safe_text(unit, 100)]
                    for alias, name, datatype, unit in ev.metrics
                ]
                await conn.execute(_BIRTH, group, node, device, ev.bd_seq, json.dumps(defs), ev.at)
            elif ev.kind == "NDEATH":
                await conn.execute(_NODE_DEATH, group, node, ev.at)
            else:
                await conn.execute(_DEVICE_DEATH, group, node, device, ev.at)
            if ev.meters:
                online = ev.kind.endswith("BIRTH")
                await conn.execute(_PRESENCE, list(ev.meters), online, ev.at, ev.kind)

    async def _record_rejections(
        self, conn: asyncpg.Connection, rejections: list[tuple[Message, Rejection]]
    ) -> None:
        now = datetime.now(UTC)
        # Whatever a message held, its rejection row is text the database takes.
        rows = []
        redelivered = []
        for msg, rej in rejections:
            topic = safe_text(msg.parsed.topic, TOPIC_LIMIT)
            sha = _sha(topic, rej.payload)
            if msg.dup:
                redelivered.append(sha)
            rows.append(
                (
                    now,
                    topic,
                    _safe_id(rej.partner),
                    _safe_id(rej.meter),
                    rej.reason.value,
                    safe_text(rej.detail, DETAIL_LIMIT),
                    rej.payload,
                    sha,
                )
            )
        rows_out = rows
        if redelivered:
            before = await conn.fetch(_REJECTED_BEFORE, redelivered)
            skip = {bytes(row[0]) for row in before}
            rows_out = [row for row in rows if row[-1] not in skip]
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
        # A partner id from a topic is stored safe; ids that become the same add up.
        safe: dict[tuple[str, datetime], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for (partner, hour), row in counts.items():
            total = safe[(safe_text(partner, ID_LIMIT), hour)]
            for i, n in enumerate(row):
                total[i] += n
        counts = safe
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
