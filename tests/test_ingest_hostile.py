"""Hostile input through the real thing: Mosquitto, ``symbiont ingest`` and PostgreSQL.

What a buggy gateway at 3 a.m. or a curious partner can send (arbitrary bytes, text with NUL
and lone surrogates, deep nesting, huge and tiny numbers, extreme and non-RFC 3339 dates,
batches and SenML packs mixing good and bad records, wrong units, another partner's meters)
is interleaved with valid readings, each hostile message followed by a valid reading:

- every valid reading, alone or inside a mixed batch or pack, is stored exactly once;
- every bad message or record is one rejection with a documented reason, never an internal
  error, and nothing stored is unsafe text;
- the valid reading after each hostile message is stored within seconds: ingestion never
  stalls, also when ingest is SIGKILLed and restarted with poison still queued for it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_helpers import (
    IngestProcess,
    Publisher,
    apply_network,
    fetch,
    fetch_rejections,
    meters_network,
    rfc3339,
    wait_until,
)
from services import Mosquitto

from core.units import conversion
from ingest.parse import Reason

DOCUMENTED = {r.value for r in Reason}
SENTINEL_SECONDS = 15.0  # "within seconds", generous for a loaded CI machine


@dataclass(frozen=True)
class Meter:
    id: str
    partner: str
    kind: str
    reading: str
    unit: str

    @property
    def topic(self) -> str:
        return f"symbiont/readings/{self.partner}/{self.id}"

    def canonical(self, value: float) -> float:
        return value * conversion(self.unit, self.kind, self.reading)


METERS = (
    Meter("alpha-heat", "alpha", "heat", "total", "GJ"),
    Meter("alpha-water", "alpha", "water", "rate", "m3/h"),
    Meter("charlie-water", "charlie", "water", "delta", "m3"),
)
ALPHA, ALPHA_RATE, CHARLIE = METERS


def network_document() -> dict[str, Any]:
    return meters_network("hostile", {"alpha": "Alpha", "charlie": "Charlie"}, METERS)


iso = rfc3339


class Clock:
    """A distinct instant for every valid reading, so examples never collide."""

    def __init__(self) -> None:
        self.base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=20)
        self.n = 0

    def ts(self) -> datetime:
        self.n += 1
        return self.base + timedelta(seconds=self.n)


# ----------------------------------------------------------------------------- generators

# Text a device may send: anything, NUL and lone surrogates included.
nasty_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["x\x00y", "\ud800", "a\udfffb", "\x00", "\u2028", "é" * 3, "\x7f\x1b[31m"]),
)
# Keys that mean nothing to any payload form, so a junk document is never a reading.
MEANINGFUL = {"ts", "value", "unit", "bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "s", "t"}
junk_keys = nasty_text.filter(lambda k: k not in MEANINGFUL)
numbers = st.one_of(
    st.integers(),
    st.sampled_from([10**400, -(10**400), 2**63, -(2**64)]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e-300, 5e-324, 1e300, 1.7976931348623157e308]),
)
junk_leaves = st.one_of(st.none(), st.booleans(), numbers, nasty_text)
junk = st.recursive(
    junk_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(junk_keys, inner, max_size=4)
    ),
    max_leaves=12,
)

BAD_TS = [
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    10**400,
    -(10**400),
    1e300,
    "20261204T135000Z",
    "2026-W49-5T13:50:00Z",
    "2026-12-04T13:50:00+01",
    "2026-12-04 13:50:00Z",
    "2026-12-04T13:50:00",
    "2026-12-04T13:50:00\x00Z",
    "\ud800",
    "２０２６-12-04T13:50:00Z",
    True,
    None,
    [],
]


def dumps(doc: Any) -> bytes:
    """JSON text as a device would write it: lone surrogates as \\u escapes, big integers
    verbatim, NaN and Infinity as Python writes them."""
    return json.dumps(doc, ensure_ascii=True, allow_nan=True).encode()


@dataclass
class Expect:
    """What one example must leave behind."""

    readings: dict[tuple[str, datetime], float] = field(default_factory=dict)
    rejections: int = 0  # exactly this many rejections
    # per bad record: the reasons that are right for it (checked as a multiset cover)
    reasons: list[frozenset[str]] = field(default_factory=list)

    def bad(self, *reasons: str) -> None:
        self.rejections += 1
        self.reasons.append(frozenset(reasons))


Message = tuple[str, bytes]


@st.composite
def bad_record(draw: st.DrawFn, meter: Meter, clock: Clock) -> tuple[dict[str, Any], set[str]]:
    """A batch record that is wrong in one way, and the reasons that fit."""
    ts = iso(clock.ts())
    choice = draw(st.sampled_from(["ts", "huge", "int_huge", "nan", "unit", "value", "shape"]))
    if choice == "ts":
        return {"ts": draw(st.sampled_from(BAD_TS)), "value": 1.0}, {"bad_timestamp"}
    if choice == "huge":  # finite, above 10^12 canonical units
        return {"ts": ts, "value": draw(st.sampled_from([1e13, -1e200, 1e308]))}, {"out_of_range"}
    if choice == "int_huge":
        return {"ts": ts, "value": draw(st.sampled_from([10**400, -(10**30)]))}, {
            "out_of_range",
            "not_finite",
        }
    if choice == "nan":
        return {"ts": ts, "value": math.nan}, {"not_finite"}
    if choice == "unit":
        return {"ts": ts, "value": 1.0, "unit": draw(st.one_of(nasty_text, numbers))}, {"bad_unit"}
    if choice == "value":
        return {"ts": ts, "value": draw(st.one_of(nasty_text, st.booleans(), st.none()))}, {
            "not_finite",
            "invalid_format",
        }
    return draw(st.one_of(numbers, nasty_text, st.lists(junk_leaves, max_size=2))), {
        "invalid_format"
    }


@st.composite
def bad_senml(draw: st.DrawFn, meter: Meter, clock: Clock) -> tuple[dict[str, Any], set[str]]:
    """A SenML record that is wrong in one way (for a pack on ``meter``'s partner)."""
    t = int(clock.ts().timestamp())
    choice = draw(st.sampled_from(["n", "name", "foreign", "t", "v", "u"]))
    if choice == "n":  # a name that is no string
        return {
            "n": draw(st.one_of(numbers, st.booleans(), st.lists(st.none()))),
            "t": t,
            "v": 1.0,
        }, {
            "invalid_format",
            "unknown_meter",
        }
    if choice == "name":
        return {
            "n": draw(
                nasty_text.filter(lambda s: s.rstrip(":/") not in {"", *(m.id for m in METERS)})
            ),
            "t": t,
            "v": 1.0,
        }, {"unknown_meter"}
    if choice == "foreign":  # another partner's meter: unknown, or wrong partner
        other = CHARLIE if meter.partner == "alpha" else ALPHA
        return {"n": other.id, "t": t, "v": 1.0}, {"wrong_partner", "unknown_meter"}
    if choice == "t":
        return {
            "n": meter.id,
            "t": draw(st.sampled_from([10**400, 1e300, -1e300, "x", None])),
            "v": 1.0,
        }, {"bad_timestamp"}
    if choice == "v":
        return {"n": meter.id, "t": t, "v": draw(st.sampled_from([1e200, 10**400, math.inf]))}, {
            "out_of_range",
            "not_finite",
        }
    return {"n": meter.id, "t": t, "v": 1.0, "u": draw(st.one_of(nasty_text, numbers))}, {
        "bad_unit"
    }


@st.composite
def hostile(draw: st.DrawFn, clock: Clock) -> tuple[Message, Expect]:
    """One hostile message and what it must leave behind."""
    out = Expect()
    meter = draw(st.sampled_from(METERS))
    kind = draw(
        st.sampled_from(["bytes", "text", "junk", "mixed_batch", "senml", "foreign", "nested"])
    )
    if kind == "bytes":
        raw = draw(st.binary(max_size=200))
        try:
            json.loads(raw.decode("utf-8"))
            raw = b"\xff" + raw  # keep it invalid JSON
        except (UnicodeDecodeError, ValueError, RecursionError):
            pass
        out.bad("invalid_json")
        return (meter.topic, raw), out
    if kind == "text":  # a JSON string, with NUL or surrogates: not a payload form
        out.bad("invalid_format")
        return (meter.topic, dumps(draw(nasty_text))), out
    if kind == "junk":
        doc = draw(junk)
        if isinstance(doc, list):
            if not doc:
                return (meter.topic, b"[]"), out  # an empty batch holds nothing
            for _ in doc:
                out.bad("invalid_format", "bad_timestamp")
        else:
            out.bad("invalid_format", "bad_timestamp")
        return (meter.topic, dumps(doc)), out
    if kind == "nested":  # deeper than any parser's recursion limit
        depth = draw(st.sampled_from([200, 5000]))
        out.bad("invalid_json", "invalid_format", "bad_timestamp")
        return (meter.topic, b"[" * depth + b"]" * depth), out
    if kind == "foreign":  # a meter of another partner under this partner's topic
        other = CHARLIE if meter.partner == "alpha" else ALPHA
        topic = f"symbiont/readings/{other.partner}/{meter.id}"
        out.bad("wrong_partner")
        return (topic, orjson.dumps({"ts": iso(clock.ts()), "value": 1.0})), out
    if kind == "mixed_batch":
        items: list[Any] = []
        for good in draw(st.lists(st.booleans(), min_size=1, max_size=6)):
            if good:
                ts, value = clock.ts(), draw(st.floats(min_value=0, max_value=1e6))
                items.append({"ts": iso(ts), "value": value})
                out.readings[(meter.id, ts)] = meter.canonical(value)
            else:
                record, reasons = draw(bad_record(meter, clock))
                items.append(record)
                out.bad(*reasons)
        return (meter.topic, dumps(items)), out
    # SenML: the first record names the pack's base so the pack is recognised as SenML
    pack: list[Any] = []
    for good in draw(st.lists(st.booleans(), min_size=1, max_size=6)):
        if good:
            ts, value = clock.ts(), draw(st.floats(min_value=0, max_value=1e6))
            pack.append({"n": meter.id, "t": int(ts.timestamp()), "v": value})
            out.readings[(meter.id, ts)] = meter.canonical(value)
        else:
            record, reasons = draw(bad_senml(meter, clock))
            pack.append(record)
            out.bad(*reasons)
    pack[0] = {"bn": "", **pack[0]}
    return (meter.topic, dumps(pack)), out


# ------------------------------------------------------------------------------ checking


def sentinel(clock: Clock) -> tuple[Message, datetime]:
    ts = clock.ts()
    return (ALPHA.topic, orjson.dumps({"ts": iso(ts), "value": float(clock.n)})), ts


def stored_at(db: str, ts: datetime) -> bool:
    return bool(fetch(db, "SELECT 1 FROM readings WHERE meter_id = 'alpha-heat' AND ts = $1", ts))


def readings_since(db: str, clock: Clock, first: int) -> dict[tuple[str, datetime], float]:
    rows = fetch(
        db,
        "SELECT meter_id, ts, value FROM readings WHERE ts BETWEEN $1 AND $2",
        clock.base + timedelta(seconds=first),
        clock.base + timedelta(seconds=clock.n),
    )
    return {(r["meter_id"], r["ts"]): float(r["value"]) for r in rows}


def check_rejections(db: str, after: int, expect: Expect) -> None:
    rows = fetch_rejections(db, after)
    for r in rows:
        assert r.reason in DOCUMENTED, f"undocumented reason {r.reason!r}: {r.detail}"
        assert "internal error" not in r.detail.lower(), r.detail
        for text in (r.detail, r.topic, r.meter or "", r.partner or ""):
            assert "\x00" not in text
            text.encode("utf-8")  # no lone surrogate survives
    assert len(rows) == expect.rejections, (
        f"{len(rows)} rejections, expected {expect.rejections}:\n"
        + "\n".join(f"{r.reason}: {r.detail}" for r in rows)
    )
    # every bad record has a fitting reason: a perfect matching of records to rejections
    got = [r.reason for r in rows]
    assert _matched(expect.reasons, got), (
        f"rejections {sorted(got)} do not fit {[sorted(r) for r in expect.reasons]}"
    )


def _matched(wanted: list[frozenset[str]], got: list[str]) -> bool:
    """Whether each bad record can be given its own rejection of a fitting reason
    (bipartite matching by augmenting paths; the lists are short)."""
    owner: dict[int, int] = {}  # rejection index -> record index

    def place(record: int, seen: set[int]) -> bool:
        for j, reason in enumerate(got):
            if reason in wanted[record] and j not in seen:
                seen.add(j)
                if j not in owner or place(owner[j], seen):
                    owner[j] = record
                    return True
        return False

    return all(place(i, set()) for i in range(len(wanted)))


def no_traceback(ingest: IngestProcess) -> None:
    log = ingest.log_text()
    assert "Traceback" not in log, f"ingest logged a traceback:\n{ingest.tail(80)}"


# ---------------------------------------------------------------------------------- tests


@pytest.fixture
def ingest(
    fresh_mosquitto: Mosquitto, database_url: str, tmp_path: Path
) -> Iterator[IngestProcess]:
    apply_network(database_url, network_document())
    with IngestProcess(
        database_url=database_url,
        mqtt_url=fresh_mosquitto.url,
        client_id="ingest-hostile",
        log_path=tmp_path / "ingest.log",
    ) as process:
        process.start_subscribed()
        yield process


def test_hostile_messages_never_stall_ingest_and_lose_nothing_valid(
    fresh_mosquitto: Mosquitto, database_url: str, ingest: IngestProcess
) -> None:
    db = database_url
    clock = Clock()
    examples = 0
    pub = Publisher(fresh_mosquitto.url, "hostile-publisher").connect()

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def run(data: st.DataObject) -> None:
        nonlocal examples
        examples += 1
        first = clock.n + 1
        total = Expect()
        after = max((r.id for r in fetch_rejections(db)), default=0)
        for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
            message, expect = data.draw(hostile(clock))
            total.readings.update(expect.readings)
            total.rejections += expect.rejections
            total.reasons.extend(expect.reasons)
            follow, ts = sentinel(clock)
            total.readings[(ALPHA.id, ts)] = ALPHA.canonical(float(clock.n))
            pub.publish(*message)
            pub.publish(*follow)
            wait_until(
                lambda ts=ts: ingest.alive and stored_at(db, ts),
                SENTINEL_SECONDS,
                f"the valid reading after {message[1][:80]!r} on {message[0]}",
                interval=0.05,
            )
        pub.ensure_all_acked(timeout=30)
        assert readings_since(db, clock, first) == total.readings
        check_rejections(db, after, total)

    try:
        run()
    finally:
        pub.close()
    assert examples >= 10
    assert ingest.alive, ingest.tail()
    no_traceback(ingest)


def poison(round_: int) -> list[Message]:
    """Messages that once stopped ingest; distinct per round (a redelivered message whose
    rejection is already stored is recognised by its topic and bytes, and not recorded
    twice, so each round sends bytes of its own)."""
    n = f"{round_}"
    return [
        (ALPHA.topic, dumps([{"n": "x\x00y" + n, "v": 1.0}])),
        (ALPHA.topic, dumps([{"n": "\ud800" + n, "v": 1.0}])),
        (ALPHA.topic, dumps([{"ts": "0001-01-01T00:00:00+01:00", "value": 1.0, "r": n}])),
        (ALPHA.topic, dumps({"ts": "2026-12-04T13:50:00Z", "value": 1e200, "r": n})),
        (ALPHA.topic, dumps([{"n": 5, "v": 1.0, "r": n}])),
        (
            ALPHA.topic,
            b'{"ts": "x\\u0000", "value": "\\ud800", "unit": "\\u0000", "r": ' + n.encode() + b"}",
        ),
    ]


def test_poison_still_queued_after_sigkill_costs_one_rejection_each(
    fresh_mosquitto: Mosquitto, database_url: str, ingest: IngestProcess
) -> None:
    """SIGKILL ingest, let poison and valid readings queue for its persistent session,
    restart it: the valid readings are stored within seconds, each poison is one rejection;
    then once more with ingest killed while it is taking the same kind of messages."""
    db = database_url
    clock = Clock()
    expected: dict[tuple[str, datetime], float] = {}
    with Publisher(fresh_mosquitto.url, "poison-publisher").connect() as pub:
        for round_ in range(2):
            after = max((r.id for r in fetch_rejections(db)), default=0)
            if round_ == 0:
                ingest.kill()
            last = None
            messages = poison(round_)
            for message in messages:
                pub.publish(*message)
                follow, last = sentinel(clock)
                expected[(ALPHA.id, last)] = ALPHA.canonical(float(clock.n))
                pub.publish(*follow)
            pub.ensure_all_acked(timeout=30)
            if round_ == 1:
                ingest.kill()  # with the messages just taken, perhaps half-written
            ingest.start_subscribed()
            assert last is not None
            wait_until(
                lambda last=last: ingest.alive and stored_at(db, last),
                SENTINEL_SECONDS * 2,
                f"the readings queued behind poison (round {round_ + 1})",
                interval=0.05,
            )
            rows = fetch_rejections(db, after)
            assert len(rows) == len(messages), "\n".join(f"{r.reason}: {r.detail}" for r in rows)
            for r in rows:
                assert r.reason in DOCUMENTED and "internal error" not in r.detail.lower()
    assert readings_since(db, clock, 1) == expected
    no_traceback(ingest)
