"""Ingest: payload forms, every rejection reason, units, duplicates and conflicts, late data,
partitions — parsing as a pure function, writing against a real migrated PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import math
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.apply import apply_network
from core.db import asyncpg_dsn
from core.network import Network, parse_network
from core.settings import Settings
from ingest.parse import NetworkIndex, Parsed, Parser, Reason
from ingest.service import IngestService
from ingest.writer import BatchWriter, Message

NOW = datetime(2026, 10, 31, 22, 30, tzinfo=UTC)  # 23:30 in Copenhagen, last day of October
NOW_S = NOW.timestamp()

NETWORK: dict[str, Any] = {
    "network": "test",
    "name": "Test park",
    "timezone": "Europe/Copenhagen",
    "partners": [{"id": "plant", "name": "Plant"}, {"id": "town", "name": "Town"}],
    "meters": [
        {
            "id": "heat-out",
            "partner": "plant",
            "kind": "heat",
            "reading": "total",
            "unit": "GJ",
            "uncertainty": 0.02,
            "interval": 60,
        },
        {
            "id": "heat-in",
            "partner": "town",
            "kind": "heat",
            "reading": "rate",
            "unit": "kW",
            "uncertainty": 0.02,
            "interval": 60,
        },
        {
            "id": "water-out",
            "partner": "plant",
            "kind": "water",
            "reading": "total",
            "unit": "m3",
            "uncertainty": 0.01,
            "interval": 60,
        },
        {
            "id": "ash-out",
            "partner": "plant",
            "kind": "material",
            "reading": "delta",
            "unit": "kg",
            "uncertainty": 0.002,
        },
    ],
    "exchanges": [
        {
            "id": "heat",
            "provider": "plant",
            "receiver": "town",
            "kind": "heat",
            "sent": ["heat-out"],
            "received": ["heat-in"],
            "loss": 0.05,
            "window": "1h",
        },
    ],
}


@pytest.fixture(scope="module")
def network() -> Network:
    return parse_network(NETWORK)


@pytest.fixture(scope="module")
def parser(network: Network) -> Parser:
    return Parser(NetworkIndex.from_network(network), backfill_days=400)


def parse(parser: Parser, topic: str, payload: Any) -> Parsed:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return parser.parse(topic, raw, NOW_S)


T_HEAT = "symbiont/readings/plant/heat-out"


# -- payload forms ----------------------------------------------------------------------------


def test_single_reading_rfc3339_with_unit_conversion(parser: Parser) -> None:
    out = parse(parser, T_HEAT, {"ts": "2026-10-31T12:00:00+01:00", "value": 36.0, "unit": "GJ"})
    assert out.rejections == []
    assert out.readings == [("heat-out", datetime(2026, 10, 31, 11, tzinfo=UTC), 10.0)]


def test_single_reading_epoch_and_default_unit(parser: Parser) -> None:
    out = parse(parser, T_HEAT, {"ts": NOW_S - 60, "value": 3.6})
    assert out.readings == [("heat-out", NOW - timedelta(minutes=1), pytest.approx(1.0))]


def test_batch_keeps_good_and_rejects_each_bad_one(parser: Parser) -> None:
    batch = [
        {"ts": NOW_S - 120, "value": 1.0, "unit": "MWh"},
        {"ts": NOW_S - 60, "value": "x"},
        {"ts": NOW_S, "value": 1000.0, "unit": "kWh"},
        {"ts": "yesterday", "value": 1.0},
    ]
    out = parse(parser, T_HEAT, batch)
    assert [r[2] for r in out.readings] == [1.0, 1.0]
    assert [r.reason for r in out.rejections] == [Reason.not_finite, Reason.bad_timestamp]
    assert out.rejections[0].detail.startswith("readings[1]: ")
    assert out.rejections[1].detail.startswith("readings[3]: ")
    # each bad reading keeps its own JSON, not the whole batch
    assert orjson.loads(out.rejections[0].payload or b"") == batch[1]


def test_senml_resolves_meters_under_the_topic_partner(parser: Parser) -> None:
    records = [
        {"bn": "water-", "bt": NOW_S - 600, "bu": "m3", "n": "out", "t": 0, "v": 5.0},
        {"n": "out", "t": 60, "v": 6000.0, "u": "l"},
        {"bn": "", "n": "heat-out", "t": 120, "v": 7.2, "u": "GJ"},
        {"bn": "", "n": "heat-in", "t": 0, "v": 1.0},
    ]
    out = parse(parser, "symbiont/readings/plant/senml", records)
    assert out.readings == [
        ("water-out", NOW - timedelta(minutes=10), 5.0),
        ("water-out", NOW - timedelta(minutes=9), pytest.approx(6.0)),
        ("heat-out", NOW - timedelta(minutes=8), pytest.approx(2.0)),
    ]
    assert [r.reason for r in out.rejections] == [Reason.wrong_partner]


def test_rate_units_convert_to_canonical_per_hour(parser: Parser) -> None:
    out = parse(
        parser, "symbiont/readings/town/heat-in", {"ts": NOW_S, "value": 2500, "unit": "kW"}
    )
    assert out.readings[0][2] == pytest.approx(2.5)  # MW = MWh/h
    out = parse(parser, "symbiont/readings/town/heat-in", {"ts": NOW_S, "value": 9, "unit": "GJ/h"})
    assert out.readings[0][2] == pytest.approx(2.5)


def test_material_in_kg_is_stored_in_tonnes(parser: Parser) -> None:
    out = parse(parser, "symbiont/readings/plant/ash-out", {"ts": NOW_S, "value": 25400})
    assert out.readings[0][2] == pytest.approx(25.4)


# -- every rejection reason -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (T_HEAT, b"{not json", Reason.invalid_json),
        (T_HEAT, b"\xff\xfe\x00", Reason.invalid_json),
        (T_HEAT, b"42", Reason.invalid_format),
        (T_HEAT, b'"text"', Reason.invalid_format),
        (T_HEAT, b"[1]", Reason.invalid_format),
        ("symbiont/readings/nobody/heat-out", {"ts": NOW_S, "value": 1}, Reason.unknown_partner),
        ("symbiont/readings/plant/nothing", {"ts": NOW_S, "value": 1}, Reason.unknown_meter),
        ("symbiont/readings/town/heat-out", {"ts": NOW_S, "value": 1}, Reason.wrong_partner),
        ("symbiont/readings/plant", {"ts": NOW_S, "value": 1}, Reason.bad_topic),
        ("symbiont/readings/plant/heat-out/x", {"ts": NOW_S, "value": 1}, Reason.bad_topic),
        (T_HEAT, b'{"ts": 1790000000, "value": NaN}', Reason.not_finite),
        (T_HEAT, b'{"ts": 1790000000, "value": Infinity}', Reason.not_finite),
        (T_HEAT, b'{"ts": 1790000000, "value": 1e400}', Reason.not_finite),
        (T_HEAT, b'{"ts": 1790000000, "value": 1' + b"0" * 400 + b"}", Reason.out_of_range),
        (T_HEAT, {"ts": NOW_S, "value": 3.6e12}, None),  # 10^12 MWh: the largest accepted
        (T_HEAT, {"ts": NOW_S, "value": 3.6e12 * 1.000001}, Reason.out_of_range),
        (T_HEAT, {"ts": NOW_S, "value": -1.7e308, "unit": "kWh"}, Reason.out_of_range),
        (T_HEAT, {"ts": NOW_S, "value": 1.7e308, "unit": "TJ"}, Reason.out_of_range),
        (T_HEAT, {"ts": NOW_S, "value": None}, Reason.not_finite),
        (T_HEAT, {"ts": NOW_S, "value": True}, Reason.not_finite),
        (T_HEAT, {"ts": NOW_S}, Reason.not_finite),
        (T_HEAT, {"ts": NOW_S, "value": 1, "unit": "m3"}, Reason.bad_unit),
        (T_HEAT, {"ts": NOW_S, "value": 1, "unit": "kW"}, Reason.bad_unit),
        (T_HEAT, {"ts": NOW_S, "value": 1, "unit": "bananas"}, Reason.bad_unit),
        (T_HEAT, {"ts": NOW_S, "value": 1, "unit": 7}, Reason.bad_unit),
        (T_HEAT, {"ts": NOW_S + 301, "value": 1}, Reason.future),
        (T_HEAT, {"ts": NOW_S + 299, "value": 1}, None),
        (T_HEAT, {"ts": NOW_S - 401 * 86400, "value": 1}, Reason.too_old),
        (T_HEAT, {"ts": "2026-10-31T12:00:00", "value": 1}, Reason.bad_timestamp),
        (T_HEAT, {"ts": "31/10/2026", "value": 1}, Reason.bad_timestamp),
        (T_HEAT, {"ts": -5, "value": 1}, Reason.bad_timestamp),
        (T_HEAT, {"value": 1}, Reason.bad_timestamp),
        (T_HEAT, b"x" * (1024 * 1024 + 1), Reason.too_large),
        (T_HEAT, [{"ts": NOW_S, "value": 1}] * 10_001, Reason.batch_too_large),
    ],
)
def test_rejection_reasons(parser: Parser, topic: str, payload: Any, reason: Reason | None) -> None:
    out = parse(parser, topic, payload)
    if reason is None:
        assert out.rejections == [] and len(out.readings) == 1
        return
    assert [r.reason for r in out.rejections] == [reason]
    assert out.readings == []
    rejection = out.rejections[0]
    assert rejection.detail  # a sentence a person can act on
    assert rejection.payload is not None and len(rejection.payload) <= 64 * 1024


def test_huge_payload_is_kept_truncated(parser: Parser) -> None:
    out = parse(parser, T_HEAT, b"[" + b" " * (2 * 1024 * 1024) + b"]")
    assert out.rejections[0].reason == Reason.too_large
    assert len(out.rejections[0].payload or b"") == 64 * 1024


def test_a_value_of_zero_and_negative_values_are_readings(parser: Parser) -> None:
    out = parse(parser, T_HEAT, [{"ts": NOW_S, "value": 0}, {"ts": NOW_S - 60, "value": -3.6}])
    assert [r[2] for r in out.readings] == [0.0, pytest.approx(-1.0)]


# -- writing to PostgreSQL --------------------------------------------------------------------


def message(parsed: Parsed, *, dup: bool = False) -> Message:
    return Message(parsed, time.time(), dup=dup)


async def _apply(url: str, net: Network) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await apply_network(conn, net)
    finally:
        await conn.close()


async def _fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


def test_writer_stores_counts_and_marks_dirty_windows(
    database_url: str, network: Network, parser: Parser
) -> None:
    index = parser.index

    async def go() -> None:
        await _apply(database_url, network)
        writer = BatchWriter(asyncpg_dsn(database_url))
        batch = [
            message(
                parse(
                    parser, T_HEAT, [{"ts": NOW_S - 60 * i, "value": 100.0 - i} for i in range(90)]
                )
            ),
            message(parse(parser, T_HEAT, b"garbage")),
        ]
        result = await writer.write(batch, index)
        await writer.close()
        assert (result.messages, result.readings, result.inserted) == (2, 90, 90)
        assert dict(result.rejections) == {"invalid_json": 1}

    asyncio.run(go())
    rows = asyncio.run(
        _fetch(database_url, "SELECT count(*), min(value), max(value) FROM readings")
    )
    assert tuple(rows[0]) == (90, pytest.approx(11 / 3.6), pytest.approx(100 / 3.6))
    # 90 minutes back from 23:30 local: windows starting 22:00 and 23:00 local (21:00, 22:00Z)
    dirty = asyncio.run(
        _fetch(
            database_url, "SELECT meter_id, window_start FROM dirty_windows ORDER BY window_start"
        )
    )
    assert [(r[0], r[1]) for r in dirty] == [
        ("heat-out", datetime(2026, 10, 31, 21, tzinfo=UTC)),
        ("heat-out", datetime(2026, 10, 31, 22, tzinfo=UTC)),
    ]
    counts = asyncio.run(
        _fetch(database_url, "SELECT partner_id, messages, readings, rejected FROM ingest_counts")
    )
    assert sum(r["messages"] for r in counts) == 2
    assert sum(r["readings"] for r in counts) == 90
    assert sum(r["rejected"] for r in counts) == 1
    rejected = asyncio.run(_fetch(database_url, "SELECT topic, reason, payload FROM rejections"))
    assert [(r["topic"], r["reason"], bytes(r["payload"])) for r in rejected] == [
        (T_HEAT, "invalid_json", b"garbage")
    ]


def test_duplicates_are_harmless_and_conflicts_keep_the_first(
    database_url: str, network: Network, parser: Parser
) -> None:
    index = parser.index

    async def go() -> None:
        await _apply(database_url, network)
        writer = BatchWriter(asyncpg_dsn(database_url))
        first = [{"ts": NOW_S - 60 * i, "value": float(i)} for i in range(5)]
        r1 = await writer.write([message(parse(parser, T_HEAT, first))], index)
        assert (r1.inserted, r1.duplicates) == (5, 0)
        # again, as a redelivery would: all duplicates, nothing stored twice
        r2 = await writer.write([message(parse(parser, T_HEAT, first), dup=True)], index)
        assert (r2.inserted, r2.duplicates, dict(r2.rejections)) == (0, 5, {})
        # the same instant in another unit is the same reading (36 GJ == 10 MWh)
        same = {"ts": NOW_S - 60 * 4, "value": 4.0 / 3.6, "unit": "MWh"}
        r3 = await writer.write([message(parse(parser, T_HEAT, same))], index)
        assert (r3.inserted, r3.duplicates) == (0, 1)
        # a different value at a stored instant is a conflict; the first value stays
        changed = [{"ts": NOW_S - 60, "value": 99.0}, {"ts": NOW_S - 3600, "value": 7.0}]
        r4 = await writer.write([message(parse(parser, T_HEAT, changed))], index)
        assert (r4.inserted, dict(r4.rejections)) == (1, {"conflict": 1})
        # within one batch: the first occurrence wins, the second is a duplicate or conflict
        inner = [
            {"ts": NOW_S - 7200, "value": 1.0},
            {"ts": NOW_S - 7200, "value": 1.0},
            {"ts": NOW_S - 7200, "value": 2.0},
        ]
        r5 = await writer.write([message(parse(parser, T_HEAT, inner))], index)
        assert (r5.inserted, r5.duplicates, dict(r5.rejections)) == (1, 1, {"conflict": 1})
        await writer.close()

    asyncio.run(go())
    stored = asyncio.run(
        _fetch(database_url, "SELECT value FROM readings WHERE ts = $1", NOW - timedelta(minutes=1))
    )
    assert [r[0] for r in stored] == [pytest.approx(1 / 3.6)]
    conflicts = asyncio.run(
        _fetch(
            database_url,
            "SELECT detail, partner_id FROM rejections WHERE reason = 'conflict' ORDER BY id",
        )
    )
    assert len(conflicts) == 2 and all(r["partner_id"] == "plant" for r in conflicts)
    assert "heat-out" in conflicts[0]["detail"] and "stored" in conflicts[0]["detail"]
    total = asyncio.run(_fetch(database_url, "SELECT count(*) FROM readings"))
    assert total[0][0] == 7


def test_late_and_out_of_order_readings_mark_their_own_windows(
    database_url: str, network: Network, parser: Parser
) -> None:
    index = parser.index

    async def go() -> None:
        await _apply(database_url, network)
        writer = BatchWriter(asyncpg_dsn(database_url))
        now = [{"ts": NOW_S, "value": 10.0}]
        late = [
            {"ts": NOW_S - 86400 * 3 - 1800, "value": 1.0},
            {"ts": NOW_S - 86400 * 40, "value": 0.5},
        ]
        await writer.write([message(parse(parser, T_HEAT, now))], index)
        await writer.write([message(parse(parser, T_HEAT, late))], index)
        await writer.close()

    asyncio.run(go())
    rows = asyncio.run(
        _fetch(database_url, "SELECT window_start FROM dirty_windows ORDER BY window_start")
    )
    starts = [r[0] for r in rows]
    assert starts == [
        datetime(2026, 9, 21, 22, tzinfo=UTC),  # 40 days back: 00:30 summer time → 00:00 local
        datetime(2026, 10, 28, 22, tzinfo=UTC),  # 3 days 30 min back: 23:00 winter time
        datetime(2026, 10, 31, 22, tzinfo=UTC),
    ]
    parts = asyncio.run(_fetch(database_url, "SELECT count(*) FROM readings"))
    assert parts[0][0] == 3


def test_partitions_are_created_across_a_month_boundary(
    database_url: str, network: Network, parser: Parser
) -> None:
    index = parser.index
    base = datetime(2026, 10, 31, 23, 58, tzinfo=UTC).timestamp()
    readings = [{"ts": base + 60 * i, "value": float(i)} for i in range(5)]

    async def go() -> None:
        await _apply(database_url, network)
        writer = BatchWriter(asyncpg_dsn(database_url))
        p = Parser(index, backfill_days=400)
        parsed = p.parse(T_HEAT, orjson.dumps(readings), base + 600)
        assert len(parsed.readings) == 5
        await writer.write([message(parsed)], index)
        await writer.close()

    asyncio.run(go())
    rows = asyncio.run(
        _fetch(
            database_url,
            """
        SELECT tableoid::regclass::text AS part, count(*) FROM readings GROUP BY 1 ORDER BY 1""",
        )
    )
    assert [(r["part"], r["count"]) for r in rows] == [
        ("readings_2026_10", 2),
        ("readings_2026_11", 3),
    ]
    bounds = asyncio.run(
        _fetch(
            database_url,
            """
        SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'readings'::regclass ORDER BY 1""",
        )
    )
    assert "2026-11-01 00:00:00+00" in bounds[1]["bound"]


def test_redelivered_bad_message_is_recorded_once(
    database_url: str, network: Network, parser: Parser
) -> None:
    index = parser.index

    async def go() -> None:
        await _apply(database_url, network)
        writer = BatchWriter(asyncpg_dsn(database_url))
        bad = parse(parser, T_HEAT, b"{broken")
        await writer.write([message(bad)], index)
        await writer.write([message(bad, dup=True)], index)  # redelivered after a crash
        await writer.write([message(bad)], index)  # sent again by the device: a new event
        await writer.close()

    asyncio.run(go())
    rows = asyncio.run(_fetch(database_url, "SELECT count(*) FROM rejections"))
    assert rows[0][0] == 2


def test_float_values_round_trip_exactly(
    database_url: str, network: Network, parser: Parser
) -> None:
    index = parser.index
    values = [math.pi, 1e-300, 123456789.123456789, -0.0]

    async def go() -> None:
        await _apply(database_url, network)
        writer = BatchWriter(asyncpg_dsn(database_url))
        payload = [{"ts": NOW_S - i, "value": v, "unit": "MWh"} for i, v in enumerate(values)]
        await writer.write([message(parse(parser, T_HEAT, payload))], index)
        await writer.close()

    asyncio.run(go())
    rows = asyncio.run(_fetch(database_url, "SELECT value FROM readings ORDER BY ts DESC"))
    assert [r[0] for r in rows] == values


def test_dirty_windows_of_windows_that_are_not_whole_quarter_hours(database_url: str) -> None:
    """A 20-minute window starts inside a quarter hour: each reading still marks its own."""
    doc = {**NETWORK, "exchanges": [{**NETWORK["exchanges"][0], "window": "20m"}]}
    net = parse_network(doc)
    index = NetworkIndex.from_network(net)
    base = datetime(2026, 10, 31, 22, tzinfo=UTC)  # 23:00 local
    minutes = (16, 18, 21, 23)
    readings = [
        {"ts": (base + timedelta(minutes=m)).timestamp(), "value": float(m)} for m in minutes
    ]

    async def go() -> None:
        await _apply(database_url, net)
        writer = BatchWriter(asyncpg_dsn(database_url))
        p = Parser(index, backfill_days=400)
        parsed = p.parse(T_HEAT, orjson.dumps(readings), (base + timedelta(hours=1)).timestamp())
        await writer.write([message(parsed)], index)
        await writer.close()

    asyncio.run(go())
    rows = asyncio.run(
        _fetch(database_url, "SELECT window_start FROM dirty_windows ORDER BY window_start")
    )
    assert [r[0] for r in rows] == [base, base + timedelta(minutes=20)]


def test_two_batches_in_flight_sharing_readings_store_each_once(
    database_url: str, network: Network, parser: Parser
) -> None:
    """Ingest writes up to SYMBIONT_INGEST_PIPELINE batches at once. Two in flight that hold
    the same readings in opposite order may deadlock in PostgreSQL; the one aborted is written
    again, and every reading ends up stored once, the shared ones counted as duplicates."""
    service = IngestService(Settings(database_url=database_url, mqtt_url="mqtt://127.0.0.1:1"))
    service.parser = parser
    assert len(service.writers) == 2  # the default pipeline
    shared = [{"ts": NOW_S - 60 * i, "value": float(i)} for i in range(300)]
    only_b = [{"ts": NOW_S - 60 * i, "value": float(i)} for i in range(300, 400)]

    async def go() -> list[Any]:
        await _apply(database_url, network)
        a = [message(parse(parser, T_HEAT, shared))]
        b = [message(parse(parser, T_HEAT, list(reversed(shared)) + only_b))]
        try:
            done = await asyncio.gather(
                service._write(service.writers[0], a), service._write(service.writers[1], b)
            )
        finally:
            for w in service.writers:
                await w.close()
        return [result for result, _ in done]

    ra, rb = asyncio.run(go())
    assert ra.inserted + rb.inserted == 400
    assert ra.duplicates + rb.duplicates == 300
    assert not ra.rejections and not rb.rejections
    rows = asyncio.run(_fetch(database_url, "SELECT count(*), count(DISTINCT ts) FROM readings"))
    assert tuple(rows[0]) == (400, 400)


_TS_VALUES = st.one_of(
    st.datetimes(
        min_value=datetime(2025, 1, 1),
        max_value=datetime(2027, 1, 1),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)), None]),
    ).map(lambda d: d.isoformat()),
    st.floats(NOW_S - 500 * 86400, NOW_S + 86400),
    st.integers(0, 2**40),
    st.sampled_from([-(10**400), 10**400, 253402300799, 253402300800]),
    st.sampled_from(["", "yesterday", None, "2026-10-31T22:00:00Z", "2026-10-31 22:00:00+00:00"]),
    # RFC 3339 exactly: lower case, fractions, offsets; not basic, week or hour-only forms
    st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 1, 1)).flatmap(
        lambda d: st.sampled_from(
            [
                d.strftime("%Y-%m-%dT%H:%M:%SZ"),
                d.strftime("%Y-%m-%dt%H:%M:%Sz"),
                d.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                d.strftime("%Y-%m-%dT%H:%M:%S+01"),
                d.strftime("%Y%m%dT%H%M%SZ"),
                d.strftime("%G-W%V-%uT%H:%M:%SZ"),
                d.strftime("%Y-%m-%d_%H:%M:%SZ"),
                d.strftime("%Y-%m-%dT%H:%M:%S-00:00"),
            ]
        )
    ),
    st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]),
)
_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.sampled_from([10**400, -(10**400), 3.6e12, 3.6e12 * 1.0000001, -1e15, 1e15 * 1.0000001]),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
_UNITS = st.one_of(st.none(), st.sampled_from(["GJ", "MWh", "kWh", "t", "m3", "banana", 7]))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.fixed_dictionaries({"ts": _TS_VALUES, "value": _VALUES}, optional={"unit": _UNITS}),
            st.just([]),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_the_short_way_for_usual_readings_parses_as_the_long_way(items: list[Any]) -> None:
    raw = json.dumps(items).encode()
    fast = Parser(NetworkIndex.from_network(parse_network(NETWORK)), backfill_days=400)
    slow = Parser(NetworkIndex.from_network(parse_network(NETWORK)), backfill_days=400)
    slow.fast = False
    for topic in (T_HEAT, "symbiont/readings/plant/ash-out"):
        a, b = fast.parse(topic, raw, NOW_S), slow.parse(topic, raw, NOW_S)
        assert a.readings == b.readings
        assert [(r.reason, r.detail) for r in a.rejections] == [
            (r.reason, r.detail) for r in b.rejections
        ]
