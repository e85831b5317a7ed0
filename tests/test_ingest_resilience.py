"""``symbiont ingest`` as a process, against a real broker and a real PostgreSQL.

- Nothing acknowledged is lost and nothing is stored twice, through SIGKILLs of ingest, a
  broker restart, a database shutdown and a database crash.
- Bad input of every kind is rejected with the right reason and never stops the stream.
- A message redelivered after a crash between commit and PUBACK is not recorded twice.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
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
    committed_unacknowledged,
    counts,
    crash_and_redeliver,
    fetch,
    fetch_readings,
    fetch_rejections,
    meters_network,
    poll,
    publish_all,
    rfc3339,
    scrape_metrics,
    wait_until,
)
from services import Mosquitto, PrivatePostgres

from cli.broker import free_port
from core.units import conversion
from ingest.parse import KEEP_PAYLOAD, MAX_BATCH, Reason

MiB = 1024 * 1024


@dataclass(frozen=True)
class MeterSpec:
    id: str
    partner: str
    kind: str
    reading: str
    unit: str
    other_units: tuple[str, ...]  # units that convert to the kind (for valid readings)
    wrong_units: tuple[Any, ...]  # units that do not (JSON values: strings, numbers, lists)

    @property
    def topic(self) -> str:
        return f"symbiont/readings/{self.partner}/{self.id}"

    def canonical(self, value: float, unit: str | None = None) -> float:
        """What ingest stores: the value times the unit's factor (same float arithmetic)."""
        return value * conversion(unit or self.unit, self.kind, self.reading)


METERS = (
    MeterSpec(
        "n-heat",
        "north",
        "heat",
        "total",
        "GJ",
        ("kWh", "MWh", "Gcal"),
        ("kg", "m3", "W", "furlong", "", 5, ["GJ"]),
    ),
    MeterSpec("n-water", "north", "water", "delta", "m3", ("l", "m3"), ("MWh", "kg", "t")),
    MeterSpec("s-heat", "south", "heat", "rate", "kW", ("MW", "kW"), ("kWh", "MWh", "GJ")),
    MeterSpec("s-ash", "south", "material", "delta", "kg", ("t", "kg"), ("m3", "l", "GJ")),
)
METER = {m.id: m for m in METERS}


def network_document() -> dict[str, Any]:
    return meters_network("resilience", {"north": "North Works", "south": "South"}, METERS)


def reading(ts: datetime, value: float, unit: str | None = None) -> bytes:
    doc: dict[str, Any] = {"ts": rfc3339(ts), "value": value}
    if unit is not None:
        doc["unit"] = unit
    return orjson.dumps(doc)


@pytest.fixture
def ingest_log(tmp_path: Path) -> Path:
    return tmp_path / "ingest.log"


def _no_traceback(ingest: IngestProcess) -> None:
    log = ingest.log_text()
    assert "Traceback" not in log, f"ingest logged a traceback:\n{ingest.tail(80)}"


# ==================================================================== 1. no loss, no dupes

TOTAL = 40_000  # single-reading messages
PUBLISH_SECONDS = 30.0  # spread over this long, at a steady pace


class Gate:
    """How far the publisher may go: it waits at the next checkpoint until the event before
    it is over, so every crash and outage happens mid-stream even on a slow machine."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._cond = threading.Condition()

    def open_to(self, limit: int) -> None:
        with self._cond:
            self._limit = limit
            self._cond.notify_all()

    def wait(self, n: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: n < self._limit)


def _publish_steadily(
    pub: Publisher,
    messages: list[tuple[str, bytes]],
    gate: Gate,
    done: threading.Event,
    errors: list[BaseException],
) -> None:
    try:
        chunk = 50
        interval = PUBLISH_SECONDS * chunk / len(messages)
        next_chunk = time.monotonic()
        for n in range(0, len(messages), chunk):
            gate.wait(n)
            for topic, payload in messages[n : n + chunk]:
                pub.publish(topic, payload)
            # A steady pace, without a burst to catch up after waiting at the gate.
            next_chunk = max(next_chunk + interval, time.monotonic())
            time.sleep(max(0.0, next_chunk - time.monotonic()))
    except BaseException as exc:
        errors.append(exc)
    finally:
        done.set()


def _ranges(numbers: list[int]) -> str:
    """``[1, 2, 3, 7]`` → ``"1-3, 7"`` (at most 10 ranges)."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    text = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans[:10])
    return text + (f", … ({len(spans)} ranges)" if len(spans) > 10 else "")


def test_no_loss_through_crashes_broker_restart_and_db_outage(
    fresh_mosquitto: Mosquitto,
    private_postgres: PrivatePostgres,
    private_database_url: str,
    ingest_log: Path,
) -> None:
    db = private_database_url
    apply_network(db, network_document())
    ingest = IngestProcess(
        database_url=db,
        mqtt_url=fresh_mosquitto.url,
        client_id="ingest-resilience",
        log_path=ingest_log,
    )
    base = (datetime.now(UTC) - timedelta(days=2)).replace(microsecond=0)
    expected: dict[tuple[str, datetime], float] = {}
    index: dict[tuple[str, datetime], int] = {}  # which message carried the reading
    messages: list[tuple[str, bytes]] = []
    for i in range(TOTAL):
        meter = METERS[i % len(METERS)]
        ts = base + timedelta(seconds=i // len(METERS))
        value = (i * 7919 % 100_003) / 8 - 3000.0
        messages.append((meter.topic, reading(ts, value)))
        expected[(meter.id, ts)] = meter.canonical(value)
        index[(meter.id, ts)] = i
    assert len(expected) == TOTAL
    events: list[str] = []  # what happened when, for the failure messages

    # require_subscribers: Mosquitto (2.0.11 at least) does not restore the shared
    # subscription of an offline session after a restart until that client reconnects, and
    # answers publishes meanwhile with PUBACK 0x10 "No matching subscribers": delivered to
    # nobody, a loss in the broker, not in ingest. The publisher sends those again, as a
    # device heeding MQTT 5 reason codes would; the count is in the failure message.
    with (
        ingest,
        Publisher(fresh_mosquitto.url, "resilience-publisher", require_subscribers=True) as pub,
    ):
        # The persistent session and the shared subscription exist from here on.
        ingest.start_subscribed()
        pub.connect()

        def crash_and_restart() -> None:
            ingest.kill()
            ingest.start_subscribed()

        def broker_restart() -> None:
            mark = ingest.log_offset()
            fresh_mosquitto.restart()  # SIGTERM: the broker saves sessions and queues
            ingest.wait_subscribed(since=mark)  # ingest reconnects by itself

        def database_outage() -> None:
            mark = ingest.log_offset()
            private_postgres.stop()  # fast shutdown: sessions are cut, connections refused
            try:
                ingest.wait_for_log("database unavailable", since=mark, timeout=20)
                # A crash while the process holds unacknowledged messages, and a restart
                # that finds no database at all.
                events.append(f"SIGKILL ingest (database down) after message {pub.published}")
                ingest.kill()
                ingest.start()
                ingest.wait_for_log("database not reachable", timeout=20)
                time.sleep(3.0)  # let the outage last; not a timing assertion
            finally:
                private_postgres.start()
                events.append(f"PostgreSQL start after message {pub.published}")
            ingest.wait_subscribed(timeout=30)

        def database_crash() -> None:
            mark = ingest.log_offset()
            private_postgres.stop(mode="immediate")  # as in a crash: recovery on start
            try:
                ingest.wait_for_log("database unavailable", since=mark, timeout=20)
                time.sleep(2.0)  # let the outage last; not a timing assertion
            finally:
                private_postgres.start()
                events.append(f"PostgreSQL start after message {pub.published}")

        plan = [
            (0.08, "SIGKILL ingest", crash_and_restart),
            (0.20, "broker restart", broker_restart),
            (0.32, "SIGKILL ingest", crash_and_restart),
            (0.44, "PostgreSQL stop", database_outage),
            (0.62, "PostgreSQL crash", database_crash),
            (0.74, "SIGKILL ingest", crash_and_restart),
            (0.88, "SIGKILL ingest", crash_and_restart),
        ]
        checkpoints = [int(fraction * TOTAL) for fraction, _, _ in plan] + [TOTAL, TOTAL]
        gate = Gate(checkpoints[1])
        done = threading.Event()
        errors: list[BaseException] = []
        publisher = threading.Thread(
            target=_publish_steadily, args=(pub, messages, gate, done, errors), daemon=True
        )
        publisher.start()
        for step, (fraction, what, action) in enumerate(plan):
            wait_until(
                lambda: pub.published >= checkpoints[step] or done.is_set(),  # noqa: B023
                60,
                f"the publisher to reach {fraction:.0%}",
            )
            events.append(f"{what} after message {pub.published}")
            action()
            gate.open_to(checkpoints[step + 2])

        publisher.join(timeout=120)
        assert not errors, f"publisher failed: {errors[0]!r}"
        assert ingest.starts == 6  # the first run and five restarts after a SIGKILL
        pub.ensure_all_acked(timeout=60)
        events.append(f"{len(pub.no_subscribers)} PUBACKs 'no matching subscribers', re-sent")
        assert pub.disconnects >= 1, "the broker restart should have cut the publisher off"

        # Wait for the count to settle; the comparison below says what is missing if not.
        poll(lambda: counts(db).readings >= TOTAL, 60)
        assert ingest.alive, ingest.tail()

    stored = fetch_readings(db)
    missing = expected.keys() - stored.keys()
    extra = stored.keys() - expected.keys()
    wrong = {k: (stored[k], v) for k, v in expected.items() if k in stored and stored[k] != v}
    assert not missing, (
        f"{len(missing)} of {TOTAL} acknowledged readings lost: messages "
        f"{_ranges(sorted(index[k] for k in missing))}; events: {'; '.join(events)}"
    )
    assert not extra, f"{len(extra)} readings never published, e.g. {sorted(extra)[:3]}"
    assert not wrong, f"{len(wrong)} readings with another value, e.g. {list(wrong.items())[:3]}"
    assert len(stored) == TOTAL

    rejections = fetch_rejections(db)
    assert not rejections, (
        f"{len(rejections)} valid messages rejected: "
        f"{Counter(r.reason for r in rejections).most_common()}; first: {rejections[0]}"
    )
    total = counts(db)
    assert total.messages >= TOTAL  # redeliveries are counted too, as duplicates
    log = ingest.log_text()
    assert "database unavailable" in log and "unacknowledged" in log, ingest.tail(80)
    assert "Traceback" not in log, ingest.tail(80)


# ======================================================== 2. bad input never stops the stream

Spec = tuple[Any, ...]

# Which rejections store the offending reading (re-serialised) rather than the raw payload:
# they are identified by the reading's "ts", everything else by the payload's hash.
READING_LEVEL: set[str] = {
    Reason.not_finite,
    Reason.out_of_range,
    Reason.bad_unit,
    Reason.future,
    Reason.too_old,
    Reason.bad_timestamp,
}


def _is_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
        return True
    except orjson.JSONDecodeError:
        pass
    try:
        json.loads(raw.decode("utf-8"))
        return True
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False


meters = st.sampled_from(METERS)
values = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


@st.composite
def valid_specs(draw: st.DrawFn) -> Spec:
    meter = draw(meters)
    form = draw(st.sampled_from(["iso", "epoch", "unit", "batch", "senml", "at_limit"]))
    if form == "unit":
        return ("valid", meter, form, draw(values), draw(st.sampled_from(meter.other_units)))
    if form == "batch":
        return ("valid", meter, form, draw(st.lists(values, min_size=1, max_size=20)))
    return ("valid", meter, form, draw(values))


specs: st.SearchStrategy[Spec] = st.one_of(
    valid_specs(),
    st.tuples(
        st.just("random_bytes"), meters, st.binary(max_size=300).filter(lambda b: not _is_json(b))
    ),
    st.tuples(st.just("broken_json"), meters, st.floats(min_value=0.0, max_value=0.99)),
    st.tuples(st.just("non_finite"), meters, st.sampled_from(["NaN", "Infinity", "-Infinity"])),
    st.tuples(
        st.just("huge"),
        meters,
        st.sampled_from(["1e309", "-1e999", str(10**400), "-" + str(10**400)]),
    ),
    st.tuples(st.just("overflow_in_unit"), st.just(METER["n-heat"])),
    meters.flatmap(
        lambda m: st.tuples(st.just("wrong_unit"), st.just(m), st.sampled_from(m.wrong_units))
    ),
    st.tuples(
        st.just("bad_topic"),
        st.sampled_from(
            [
                "symbiont/readings/x",
                "symbiont/readings",
                "symbiont/readings/north/n-heat/extra",
                "symbiont/readings//n-heat",
                "symbiont/readings/north/",
            ]
        ),
    ),
    st.tuples(
        st.just("foreign_topic"),
        st.sampled_from(
            ["other/topic", "symbiont/other/north/n-heat", "symbiont/readingsx/north/n-heat"]
        ),
    ),
    st.tuples(st.just("unknown_partner"), meters),
    st.tuples(st.just("unknown_meter"), st.sampled_from(["north", "south"])),
    st.tuples(st.just("wrong_partner"), meters),
    st.tuples(st.just("too_large"), meters, st.sampled_from([MiB + 1, 2 * MiB])),
    st.tuples(st.just("invalid_format"), meters, st.sampled_from([b"42", b'"text"', b"null"])),
    st.tuples(st.just("batch_too_large"), meters),
    st.tuples(st.just("future"), meters),
    st.tuples(st.just("too_old"), meters),
    st.tuples(
        st.just("bad_timestamp"),
        meters,
        st.sampled_from(["text", "naive", "negative", "basic", "week", "overflow"]),
    ),
    st.tuples(
        st.just("mixed_batch"),
        meters,
        st.lists(
            st.sampled_from(["valid", "nan", "wrong_unit", "future", "overflow_ts", "huge"]),
            min_size=2,
            max_size=8,
        ),
    ),
)


@dataclass
class Expectation:
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    readings: dict[tuple[str, datetime], float] = field(default_factory=dict)
    rejections: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def reject_message(self, topic: str, reason: Reason, raw: bytes) -> None:
        self.rejections[(topic, reason.value, _sha_key(raw[:KEEP_PAYLOAD]))] += 1

    def reject_reading(self, topic: str, reason: Reason, ts: Any) -> None:
        self.rejections[(topic, reason.value, _ts_key(ts))] += 1


def _sha_key(payload: bytes | None) -> str:
    return "sha:" + hashlib.sha256(payload or b"").hexdigest()[:16]


def _ts_key(ts: Any) -> str:
    return "ts:" + orjson.dumps(ts).decode()


def _stored_key(topic: str, reason: str, payload: bytes | None) -> tuple[str, str, str]:
    if reason in READING_LEVEL and payload is not None:
        try:
            return (topic, reason, _ts_key(json.loads(payload)["ts"]))
        except (ValueError, KeyError, TypeError):
            pass
    return (topic, reason, _sha_key(payload))


class Clock:
    """Distinct instants for every reading of every example, so examples never collide."""

    def __init__(self) -> None:
        now = datetime.now(UTC).replace(microsecond=0)
        self.base = now - timedelta(days=10)
        self.future = now + timedelta(days=1)
        self.old = now - timedelta(days=500)
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n

    def ts(self) -> datetime:
        return self.base + timedelta(seconds=self.next())

    def readings(self, url: str, first: int) -> dict[tuple[str, datetime], float]:
        """Stored readings at any instant handed out since ``self.n`` was ``first - 1``."""
        spans = [
            (start + timedelta(seconds=first), start + timedelta(seconds=self.n))
            for start in (self.base, self.future, self.old)
        ]
        rows = fetch(
            url,
            """SELECT meter_id, ts, value FROM readings
               WHERE ts BETWEEN $1 AND $2 OR ts BETWEEN $3 AND $4 OR ts BETWEEN $5 AND $6""",
            *(t for span in spans for t in span),
        )
        return {(r["meter_id"], r["ts"]): float(r["value"]) for r in rows}


def build(spec: Spec, clock: Clock, out: Expectation) -> None:
    kind = spec[0]
    if kind == "valid":
        _, meter, form, *args = spec
        topic = meter.topic
        if form == "batch":
            items = []
            for value in args[0]:
                ts = clock.ts()
                items.append({"ts": rfc3339(ts), "value": value})
                out.readings[(meter.id, ts)] = meter.canonical(value)
            out.messages.append((topic, orjson.dumps(items)))
            return
        ts, value = clock.ts(), args[0]
        unit = args[1] if form == "unit" else None
        if form == "iso" or form == "unit":
            payload = reading(ts, value, unit)
        elif form == "epoch":
            payload = orjson.dumps({"ts": int(ts.timestamp()), "value": value})
        elif form == "senml":
            payload = orjson.dumps([{"bn": meter.id, "bt": int(ts.timestamp()), "v": value}])
        else:  # at_limit: exactly the largest accepted payload
            payload = reading(ts, value)
            payload = payload[:-1] + b" " * (MiB - len(payload)) + b"}"
            assert len(payload) == MiB
        out.messages.append((topic, payload))
        out.readings[(meter.id, ts)] = meter.canonical(value, unit)
    elif kind == "random_bytes":
        _, meter, raw = spec
        out.messages.append((meter.topic, raw))
        out.reject_message(meter.topic, Reason.invalid_json, raw)
    elif kind == "broken_json":
        _, meter, cut = spec
        whole = reading(clock.ts(), 1.5)
        raw = whole[: int(cut * len(whole))]
        out.messages.append((meter.topic, raw))
        out.reject_message(meter.topic, Reason.invalid_json, raw)
    elif kind in ("non_finite", "huge"):
        _, meter, literal = spec
        iso = rfc3339(clock.ts())
        raw = f'{{"ts": "{iso}", "value": {literal}}}'.encode()
        out.messages.append((meter.topic, raw))
        # NaN, Infinity and 1e309 (which reads as infinity) are not finite; an integer of
        # 400 digits is a number, over 10^12
        finite = kind == "huge" and "e" not in literal
        reason = Reason.out_of_range if finite else Reason.not_finite
        out.reject_reading(meter.topic, reason, iso)
    elif kind == "overflow_in_unit":  # finite as sent, infinite in the canonical unit
        _, meter = spec
        ts = clock.ts()
        out.messages.append((meter.topic, reading(ts, 1e308, "GWh")))
        out.reject_reading(meter.topic, Reason.out_of_range, rfc3339(ts))
    elif kind == "wrong_unit":
        _, meter, unit = spec
        iso = rfc3339(clock.ts())
        out.messages.append((meter.topic, orjson.dumps({"ts": iso, "value": 2.0, "unit": unit})))
        out.reject_reading(meter.topic, Reason.bad_unit, iso)
    elif kind in ("bad_topic", "foreign_topic"):
        topic = spec[1]
        raw = reading(clock.ts(), 3.0)
        out.messages.append((topic, raw))
        if kind == "bad_topic":  # foreign topics never reach ingest: nothing to expect
            out.reject_message(topic, Reason.bad_topic, raw)
    elif kind in ("unknown_partner", "unknown_meter", "wrong_partner"):
        if kind == "unknown_partner":
            topic, reason = f"symbiont/readings/nobody/{spec[1].id}", Reason.unknown_partner
        elif kind == "unknown_meter":
            topic, reason = f"symbiont/readings/{spec[1]}/no-such-meter", Reason.unknown_meter
        else:
            other = "south" if spec[1].partner == "north" else "north"
            topic, reason = f"symbiont/readings/{other}/{spec[1].id}", Reason.wrong_partner
        raw = reading(clock.ts(), 4.0)
        out.messages.append((topic, raw))
        out.reject_message(topic, reason, raw)
    elif kind == "too_large":
        _, meter, size = spec
        head = reading(clock.ts(), 5.0)
        raw = head[:-1] + b" " * (size - len(head)) + b"}"  # valid JSON, just too big
        assert len(raw) == size
        out.messages.append((meter.topic, raw))
        out.reject_message(meter.topic, Reason.too_large, raw)
    elif kind == "invalid_format":
        _, meter, raw = spec
        out.messages.append((meter.topic, raw))
        out.reject_message(meter.topic, Reason.invalid_format, raw)
    elif kind == "batch_too_large":
        _, meter = spec
        item = {"ts": rfc3339(clock.ts()), "value": 1.0}
        raw = orjson.dumps([item] * (MAX_BATCH + 1))
        out.messages.append((meter.topic, raw))
        out.reject_message(meter.topic, Reason.batch_too_large, raw)
    elif kind in ("future", "too_old"):
        _, meter = spec
        start = clock.future if kind == "future" else clock.old
        iso = rfc3339(start + timedelta(seconds=clock.next()))
        out.messages.append((meter.topic, orjson.dumps({"ts": iso, "value": 6.0})))
        out.reject_reading(meter.topic, Reason(kind), iso)
    elif kind == "bad_timestamp":
        _, meter, variant = spec
        n = clock.next()
        bad: Any = {
            "text": f"yesterday-{n}",
            "naive": (clock.base + timedelta(seconds=n)).replace(tzinfo=None).isoformat(),
            "negative": -n,
            "basic": (clock.base + timedelta(seconds=n)).strftime("%Y%m%dT%H%M%SZ"),
            "week": (clock.base + timedelta(seconds=n)).strftime("%G-W%V-%uT%H:%M:%SZ"),
            "overflow": "0001-01-01T00:00:00+01:00",
        }[variant]
        out.messages.append((meter.topic, orjson.dumps({"ts": bad, "value": 7.0})))
        out.reject_reading(meter.topic, Reason.bad_timestamp, bad)
    elif kind == "mixed_batch":
        _, meter, parts = spec
        texts = []
        for part in parts:
            ts = clock.ts()
            iso = rfc3339(ts)
            if part == "valid":
                texts.append(f'{{"ts": "{iso}", "value": 8.5}}')
                out.readings[(meter.id, ts)] = meter.canonical(8.5)
            elif part == "nan":
                texts.append(f'{{"ts": "{iso}", "value": NaN}}')
                out.reject_reading(meter.topic, Reason.not_finite, iso)
            elif part == "overflow_ts":  # out of range once in UTC
                texts.append('{"ts": "0001-01-01T00:00:00+01:00", "value": 1.0}')
                out.reject_reading(meter.topic, Reason.bad_timestamp, "0001-01-01T00:00:00+01:00")
            elif part == "huge":
                texts.append(f'{{"ts": "{iso}", "value": {10**400}}}')
                out.reject_reading(meter.topic, Reason.out_of_range, iso)
            elif part == "wrong_unit":
                unit = json.dumps(meter.wrong_units[0])
                texts.append(f'{{"ts": "{iso}", "value": 1.0, "unit": {unit}}}')
                out.reject_reading(meter.topic, Reason.bad_unit, iso)
            else:
                late = rfc3339(clock.future + timedelta(seconds=clock.next()))
                texts.append(f'{{"ts": "{late}", "value": 1.0}}')
                out.reject_reading(meter.topic, Reason.future, late)
        out.messages.append((meter.topic, ("[" + ", ".join(texts) + "]").encode()))
    else:  # pragma: no cover - a new kind without its expectation
        raise AssertionError(f"unknown spec kind {kind!r}")


@pytest.fixture
def running_ingest(
    fresh_mosquitto: Mosquitto, database_url: str, ingest_log: Path
) -> Iterator[IngestProcess]:
    apply_network(database_url, network_document())
    with IngestProcess(
        database_url=database_url,
        mqtt_url=fresh_mosquitto.url,
        client_id="ingest-fuzz",
        log_path=ingest_log,
    ) as ingest:
        ingest.start_subscribed()
        yield ingest


def test_bad_input_never_stops_the_stream(
    fresh_mosquitto: Mosquitto, database_url: str, running_ingest: IngestProcess
) -> None:
    db = database_url
    ingest = running_ingest
    clock = Clock()
    stored: dict[tuple[str, datetime], float] = {}
    examples = 0
    pub = Publisher(fresh_mosquitto.url, "fuzz-publisher").connect()

    @settings(
        max_examples=50,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
    )
    @given(st.lists(specs, min_size=1, max_size=25))
    def run(batch: list[Spec]) -> None:
        nonlocal examples
        examples += 1
        first = clock.n + 1
        out = Expectation()
        for spec in batch:
            build(spec, clock, out)
        # A valid sentinel last: once it is stored, ingest has seen everything before it.
        sentinel = clock.ts()
        out.messages.append((METER["n-water"].topic, reading(sentinel, 0.25)))
        out.readings[("n-water", sentinel)] = METER["n-water"].canonical(0.25)

        watermark = max((r.id for r in fetch_rejections(db)), default=0)
        for topic, payload in out.messages:
            pub.publish(topic, payload)
        pub.ensure_all_acked(timeout=60)
        stored.update(out.readings)

        def sentinel_stored() -> bool:
            assert ingest.alive, f"ingest died:\n{ingest.tail()}"
            return bool(fetch(db, "SELECT 1 FROM readings WHERE ts = $1", sentinel))

        def rejections() -> Counter[tuple[str, str, str]]:
            return Counter(
                _stored_key(r.topic, r.reason, r.payload) for r in fetch_rejections(db, watermark)
            )

        wait_until(sentinel_stored, 30, "the sentinel reading", interval=0.05)
        # Messages arrive and commit in order, so this is normally at once.
        poll(lambda: rejections() == out.rejections, 3, interval=0.05)
        got = rejections()
        assert got == out.rejections, (
            f"missing: {dict(out.rejections - got)}\nunexpected: {dict(got - out.rejections)}"
        )
        assert clock.readings(db, first) == out.readings
        assert ingest.alive, f"ingest died:\n{ingest.tail()}"

    try:
        run()
    finally:
        pub.close()
    assert examples >= 5
    assert fetch_readings(db) == stored  # nothing stored outside the examples' instants
    assert ingest.alive, f"ingest died:\n{ingest.tail()}"
    _no_traceback(ingest)


# ================================================== 3. redelivery after a crash, no double


def test_redelivered_messages_are_not_recorded_twice(
    fresh_mosquitto: Mosquitto, database_url: str, ingest_log: Path
) -> None:
    db = database_url
    apply_network(db, network_document())
    heat, ash = METER["n-heat"], METER["s-ash"]
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    messages: list[tuple[str, bytes]] = []
    expected_rejections: Counter[tuple[str, str, str]] = Counter()
    expected_readings: dict[tuple[str, datetime], float] = {}
    for i in range(20):
        raw = f"not json #{i}".encode()
        messages.append((heat.topic, raw))
        expected_rejections[(heat.topic, Reason.invalid_json.value, _sha_key(raw))] += 1
    for i in range(10):
        iso = rfc3339(base + timedelta(seconds=i))
        messages.append((heat.topic, f'{{"ts": "{iso}", "value": NaN}}'.encode()))
        expected_rejections[(heat.topic, Reason.not_finite.value, _ts_key(iso))] += 1
    for i in range(10):
        topic = f"symbiont/readings/north/{ash.id}"  # s-ash belongs to south
        raw = reading(base + timedelta(seconds=100 + i), 1.0)
        messages.append((topic, raw))
        expected_rejections[(topic, Reason.wrong_partner.value, _sha_key(raw))] += 1
    for i in range(10):
        ts = base + timedelta(seconds=200 + i)
        messages.append((heat.topic, reading(ts, 10.0 + i)))
        expected_readings[(heat.id, ts)] = heat.canonical(10.0 + i)
    n = len(messages)

    with committed_unacknowledged(
        fresh_mosquitto.host,
        fresh_mosquitto.port,
        db,
        messages,
        client_id="ingest-redelivery",
        log_path=ingest_log,
    ) as (proxy, ingest):
        first = counts(db)
        assert (first.readings, first.rejections) == (len(expected_readings), 40)
        crash_and_redeliver(proxy, ingest, db, n)
        sentinel = base + timedelta(seconds=1000)
        publish_all(fresh_mosquitto.url, [(heat.topic, reading(sentinel, 0.5))])
        expected_readings[(heat.id, sentinel)] = heat.canonical(0.5)
        wait_until(lambda: counts(db).messages >= 2 * n + 1, 30, "the sentinel")

        # Another crash and restart with nothing in flight changes nothing either.
        ingest.kill()
        ingest.start_subscribed()
        assert ingest.alive

    rejections = fetch_rejections(db)
    got = Counter(_stored_key(r.topic, r.reason, r.payload) for r in rejections)
    twice = {k: c for k, c in got.items() if c > 1}
    assert not twice, f"{len(twice)} rejections recorded more than once: {list(twice)[:3]}"
    assert got == expected_rejections
    assert fetch_readings(db) == expected_readings
    total = counts(db)
    assert total.messages == 2 * n + 1
    assert total.duplicates >= len(expected_readings) - 1  # the redelivered valid readings
    _no_traceback(ingest)


# ===================================================== 4. a stalled database, bounded memory


def test_a_stalled_database_fills_the_broker_queue_not_ingest(
    fresh_mosquitto: Mosquitto, database_url: str, ingest_log: Path
) -> None:
    """While the database blocks every write, ingest holds at most
    SYMBIONT_INGEST_QUEUE_MESSAGES unacknowledged messages (MQTT 5 Receive Maximum); the rest
    wait in the broker, and all of them are stored once the database moves again."""
    db = database_url
    apply_network(db, network_document())
    heat = METER["n-heat"]
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    messages = [(heat.topic, reading(base + timedelta(seconds=i), float(i))) for i in range(1000)]
    port = free_port()
    held = "symbiont_ingest_held_messages"
    env = {"SYMBIONT_INGEST_QUEUE_MESSAGES": "100", "SYMBIONT_METRICS_PORT": str(port)}
    locked = threading.Event()
    release = threading.Event()

    def hold_readings_locked() -> None:
        import asyncio

        import asyncpg

        from core.db import asyncpg_dsn

        async def go() -> None:
            conn = await asyncpg.connect(asyncpg_dsn(db))
            try:
                async with conn.transaction():
                    await conn.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")
                    locked.set()
                    await asyncio.to_thread(release.wait)
            finally:
                await conn.close()

        asyncio.run(go())

    locker = threading.Thread(target=hold_readings_locked, daemon=True)
    with IngestProcess(
        database_url=db,
        mqtt_url=fresh_mosquitto.url,
        client_id="ingest-bounded",
        log_path=ingest_log,
        env=env,
    ) as ingest:
        ingest.start_subscribed()
        locker.start()
        assert locked.wait(10)
        try:
            publisher = threading.Thread(
                target=publish_all, args=(fresh_mosquitto.url, messages), daemon=True
            )
            publisher.start()
            wait_until(lambda: scrape_metrics(port).get(held, 0) >= 100, 30, "100 held")
            peak = 0.0
            for _ in range(20):  # two seconds of a blocked database
                peak = max(peak, scrape_metrics(port)[held])
                time.sleep(0.1)
            assert peak == 100
            committed = fetch(db, "SELECT coalesce(sum(messages), 0) FROM ingest_counts")
            assert committed[0][0] == 0
        finally:
            release.set()
            locker.join(10)
        publisher.join(60)
        wait_until(lambda: counts(db).readings == 1000, 60, "all 1000 readings stored")
        wait_until(lambda: scrape_metrics(port).get(held) == 0, 10, "nothing held")
        assert len(fetch_readings(db)) == 1000
        _no_traceback(ingest)
