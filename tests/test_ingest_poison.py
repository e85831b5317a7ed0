"""One bad message never stops the others, with real ingest, Mosquitto, PostgreSQL.

- A SenML name with a NUL in it costs one rejection; the readings after it are stored.
- The writer splits a batch the database refuses until the message at fault is alone, rejects
  that message (``invalid_format``, the database's complaint in the detail) and stores the
  rest, whatever the parser let through; the rejection row is always writable.
- A poison message still queued for ingest's persistent session across a SIGKILL is rejected
  once, and the messages after it are stored.
- SIGTERM stops ingest promptly and cleanly while the database is down; nothing it
  acknowledged is lost, and what it held comes back from the broker.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
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
    publish_all,
    wait_until,
)
from services import Mosquitto, PrivatePostgres

from core.db import asyncpg_dsn
from core.network import parse_network
from ingest.parse import NetworkIndex, Parsed, Parser, Reason, Rejection
from ingest.writer import BatchWriter, Message

PARTNER = "alpha"
WATER = "a-water"  # m3, so the stored value is the value sent
WATER_TOPIC = f"symbiont/readings/{PARTNER}/{WATER}"
SENML_TOPIC = f"symbiont/readings/{PARTNER}/senml"
NUL_SENML = b'[{"n": "x\\u0000y", "v": 1.0}]'  # the JSON escape: a NUL in the name
REFUSED_VALUE = -666.0  # the CHECK constraint some tests add to readings refuses this value
DOCUMENTED = {reason.value for reason in Reason}

NETWORK: dict[str, Any] = {
    "network": "poison",
    "name": "Poison test park",
    "timezone": "Europe/Copenhagen",
    "partners": [{"id": PARTNER, "name": "Alpha"}, {"id": "beta", "name": "Beta"}],
    "meters": [
        {
            "id": WATER,
            "partner": PARTNER,
            "kind": "water",
            "reading": "delta",
            "unit": "m3",
            "uncertainty": 0.01,
        },
        {
            "id": "b-water",
            "partner": "beta",
            "kind": "water",
            "reading": "delta",
            "unit": "m3",
            "uncertainty": 0.01,
        },
    ],
}


def _base() -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)


def _reading(ts: datetime, value: float) -> bytes:
    return orjson.dumps({"ts": ts.isoformat().replace("+00:00", "Z"), "value": value})


def _refuse_value(url: str) -> None:
    """Make PostgreSQL itself refuse one value: a row no parser check stands for."""
    fetch(
        url,
        f"ALTER TABLE readings ADD CONSTRAINT poison CHECK (value <> {REFUSED_VALUE})",
    )


def _no_traceback(ingest: IngestProcess) -> None:
    assert "Traceback" not in ingest.log_text(), f"ingest logged a traceback:\n{ingest.tail(80)}"


@pytest.fixture
def ingest_log(tmp_path: Path) -> Path:
    return tmp_path / "ingest.log"


@pytest.fixture
def network_db(database_url: str) -> str:
    apply_network(database_url, NETWORK)
    return database_url


# ============================================================ 1. a NUL does not stop ingest


def test_a_nul_in_a_senml_name_costs_one_rejection_not_the_stream(
    fresh_mosquitto: Mosquitto, network_db: str, ingest_log: Path
) -> None:
    db = network_db
    base = _base()
    valid = {(WATER, base + timedelta(seconds=i)): float(i) for i in range(20)}
    messages = [(SENML_TOPIC, NUL_SENML)]
    messages += [(WATER_TOPIC, _reading(ts, v)) for (_, ts), v in valid.items()]
    with IngestProcess(
        database_url=db, mqtt_url=fresh_mosquitto.url, client_id="ingest-nul", log_path=ingest_log
    ) as ingest:
        ingest.start_subscribed()
        publish_all(fresh_mosquitto.url, messages)
        wait_until(lambda: fetch_readings(db) == valid, 30, "the readings after the NUL message")
        wait_until(lambda: counts(db).messages == len(messages), 10, "every message committed")
        assert ingest.alive, ingest.tail()
        _no_traceback(ingest)
    rejections = fetch_rejections(db)
    assert [r.topic for r in rejections] == [SENML_TOPIC]
    [rejection] = rejections
    assert rejection.reason in DOCUMENTED
    assert "\x00" not in rejection.detail
    assert "x\\x00y" in rejection.detail  # the NUL shown, escaped


# ==================================================== 2. the writer isolates what PG refuses


def _index() -> NetworkIndex:
    return NetworkIndex.from_network(parse_network(NETWORK))


def _valid(parser: Parser, ts: datetime, value: float) -> Message:
    now = datetime.now(UTC).timestamp()
    return Message(parser.parse(WATER_TOPIC, _reading(ts, value), now), now, mid=1, qos=1)


def _with_readings(topic: str, *readings: tuple[str, datetime, float]) -> Message:
    """A message as no parser makes it: readings the database (or the encoder) refuses."""
    return Message(Parsed(topic, PARTNER, list(readings)), datetime.now(UTC).timestamp())


def _write(url: str, batch: list[Message]) -> Any:
    async def go() -> Any:
        writer = BatchWriter(asyncpg_dsn(url), application_name="poison-test")
        try:
            return await writer.write(batch, _index())
        finally:
            await writer.close()

    return asyncio.run(go())


def test_the_writer_isolates_the_messages_the_database_refuses(network_db: str) -> None:
    db = network_db
    _refuse_value(db)
    parser = Parser(_index())
    base = _base()
    at = [base + timedelta(seconds=i) for i in range(12)]
    nul_meter = _with_readings(WATER_TOPIC, ("a\x00b", at[0], 1.0))
    surrogate = _with_readings(WATER_TOPIC, ("a\ud800b", at[1], 1.0))
    refused = _valid(parser, at[2], REFUSED_VALUE)
    # A rejection as the parser might build it from a hostile payload: the writer makes it safe.
    unsafe = Message(
        Parsed(
            "symbiont/readings/alpha/x",
            PARTNER,
            [],
            [
                Rejection(
                    Reason.unknown_meter, "unknown meter 'x\x00\ud800'", "p\x00", "m\ud800", b""
                )
            ],
        ),
        datetime.now(UTC).timestamp(),
    )
    good = [_valid(parser, ts, float(i)) for i, ts in enumerate(at[3:], start=3)]
    batch = [good[0], nul_meter, good[1], good[2], surrogate, unsafe, good[3], refused, *good[4:]]

    result = _write(db, batch)

    assert result.messages == len(batch)
    assert dict(result.rejections) == {"invalid_format": 3, "unknown_meter": 1}
    assert fetch_readings(db) == {(WATER, ts): float(i) for i, ts in enumerate(at[3:], start=3)}
    rows = fetch_rejections(db)
    by_reason = Counter(r.reason for r in rows)
    assert by_reason == {"invalid_format": 3, "unknown_meter": 1}
    refusals = [r for r in rows if r.reason == "invalid_format"]
    assert all(r.detail.startswith("the database refused this message: ") for r in refusals)
    assert all(r.topic == WATER_TOPIC and r.partner == PARTNER for r in refusals)
    details = " | ".join(r.detail for r in refusals)
    assert "0x00" in details  # PostgreSQL's complaint about the NUL
    assert "surrogates not allowed" in details  # the encoder's about the lone surrogate
    assert "violates check constraint" in details
    assert all(b'"meter"' in (r.payload or b"") for r in refusals)  # what the message held
    [kept] = [r for r in rows if r.reason == "unknown_meter"]
    assert (kept.detail, kept.partner, kept.meter) == (
        "unknown meter 'x\\x00\\ud800'",
        "p\\x00",
        "m\\ud800",
    )
    total = fetch(db, "SELECT sum(messages) AS m, sum(rejected) AS r FROM ingest_counts")[0]
    assert (total["m"], total["r"]) == (len(batch), 4)

    # The same batch again, as the broker redelivers it: nothing is recorded twice.
    for msg in batch:
        msg.dup = True
    again = _write(db, batch)
    assert again.inserted == 0 and again.duplicates == len(good)
    assert len(fetch_rejections(db)) == 4


def test_a_refused_message_is_kept_even_when_its_rejection_is_refused(network_db: str) -> None:
    db = network_db
    _refuse_value(db)
    # The database refuses the detail of the refusal too: the least of it is kept.
    fetch(db, "ALTER TABLE rejections ADD CONSTRAINT picky CHECK (detail NOT LIKE '%poison%')")
    parser = Parser(_index())
    base = _base()
    batch = [_valid(parser, base, 1.0), _valid(parser, base + timedelta(seconds=1), REFUSED_VALUE)]

    result = _write(db, batch)

    assert dict(result.rejections) == {"invalid_format": 1}
    assert fetch_readings(db) == {(WATER, base): 1.0}
    [row] = fetch_rejections(db)
    assert (row.topic, row.reason, row.partner, row.payload) == (
        WATER_TOPIC,
        "invalid_format",
        None,
        None,
    )


# ============================================ 3. a poison queued for the session, and a crash


def test_a_poison_queued_for_the_session_is_rejected_once_through_crashes(
    fresh_mosquitto: Mosquitto, network_db: str, ingest_log: Path
) -> None:
    db = network_db
    _refuse_value(db)
    base = _base()
    before = {(WATER, base + timedelta(seconds=i)): float(i) for i in range(10)}
    after = {(WATER, base + timedelta(seconds=100 + i)): float(i) for i in range(10)}
    refused_ts = base + timedelta(seconds=50)
    messages = [(WATER_TOPIC, _reading(ts, v)) for (_, ts), v in before.items()]
    messages += [(SENML_TOPIC, NUL_SENML), (WATER_TOPIC, _reading(refused_ts, REFUSED_VALUE))]
    messages += [(WATER_TOPIC, _reading(ts, v)) for (_, ts), v in after.items()]
    n = len(messages)

    with committed_unacknowledged(
        fresh_mosquitto.host,
        fresh_mosquitto.port,
        db,
        messages,
        client_id="ingest-poison",
        log_path=ingest_log,
    ) as (proxy, ingest):
        # The broker brings every message back, the poison first among them.
        crash_and_redeliver(proxy, ingest, db, n)
        sentinel = base + timedelta(seconds=1000)
        publish_all(fresh_mosquitto.url, [(WATER_TOPIC, _reading(sentinel, 0.5))])
        wait_until(lambda: (WATER, sentinel) in fetch_readings(db), 30, "the sentinel")
        assert ingest.alive, ingest.tail()
        _no_traceback(ingest)

    assert fetch_readings(db) == {**before, **after, (WATER, sentinel): 0.5}
    rejections = fetch_rejections(db)
    assert Counter((r.topic, r.reason in DOCUMENTED) for r in rejections) == {
        (SENML_TOPIC, True): 1,
        (WATER_TOPIC, True): 1,
    }
    [refused] = [r for r in rejections if r.topic == WATER_TOPIC]
    assert refused.reason == "invalid_format"
    assert "violates check constraint" in refused.detail
    assert refused_ts.isoformat() in (refused.payload or b"").decode()


# ======================================================= 4. SIGTERM while the database is down


def test_sigterm_while_the_database_is_down_stops_ingest_and_loses_nothing(
    fresh_mosquitto: Mosquitto,
    private_postgres: PrivatePostgres,
    private_database_url: str,
    ingest_log: Path,
) -> None:
    db = private_database_url
    apply_network(db, NETWORK)
    base = _base()
    first = {(WATER, base + timedelta(seconds=i)): float(i) for i in range(50)}
    held = {(WATER, base + timedelta(seconds=100 + i)): float(i) for i in range(50)}
    with (
        IngestProcess(
            database_url=db,
            mqtt_url=fresh_mosquitto.url,
            client_id="ingest-term",
            log_path=ingest_log,
        ) as ingest,
        Publisher(fresh_mosquitto.url, "term-publisher") as pub,
    ):
        ingest.start_subscribed()
        pub.connect()
        for (_, ts), v in first.items():
            pub.publish(WATER_TOPIC, _reading(ts, v))
        wait_until(lambda: fetch_readings(db) == first, 30, "the first readings")

        mark = ingest.log_offset()
        private_postgres.stop()
        try:
            for (_, ts), v in held.items():
                pub.publish(WATER_TOPIC, _reading(ts, v))
            ingest.wait_for_log("database unavailable", since=mark, timeout=30)
            # A generous bound: a process that ignores SIGTERM is SIGKILLed (status -9).
            status = ingest.terminate(timeout=20)
            assert status == 0, f"ingest ended with status {status}:\n{ingest.tail()}"
            assert "ingest stopped" in ingest.log_text(mark), ingest.tail()
        finally:
            private_postgres.start()
        pub.ensure_all_acked(timeout=30)  # the broker has them all

        # What ingest held unacknowledged is still the broker's, for the next run.
        ingest.start_subscribed()
        wait_until(lambda: fetch_readings(db) == {**first, **held}, 30, "the held readings")
        assert not fetch_rejections(db)
        _no_traceback(ingest)
