"""Ingest's parser is strict and total: any topic and any bytes give readings and rejections with
a documented reason, never an exception; each reading of a batch and each SenML record is
judged on its own; ``ts`` is RFC 3339 exactly or epoch seconds; values over 10^12 in the
canonical unit are ``out_of_range``; and every text a rejection carries is safe to store."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core.apply import apply_network
from core.db import asyncpg_dsn
from core.network import parse_network
from core.settings import Settings
from core.text import safe_text
from core.units import conversion
from ingest.parse import (
    KEEP_PAYLOAD,
    MAX_VALUE,
    NetworkIndex,
    Parsed,
    Parser,
    Reason,
    _rfc3339,
    _strict_timestamp,
    _timestamp,
)
from ingest.service import IngestService
from ingest.writer import BatchWriter, Message

NOW = datetime(2026, 12, 4, 14, 0, tzinfo=UTC)
NOW_S = NOW.timestamp()

NETWORK: dict[str, Any] = {
    "network": "strict",
    "name": "Strict park",
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
            "id": "water-out",
            "partner": "plant",
            "kind": "water",
            "reading": "total",
            "unit": "m3",
            "uncertainty": 0.01,
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
    ],
}
INDEX = NetworkIndex.from_network(parse_network(NETWORK))
PARSER = Parser(INDEX, backfill_days=400)
SLOW = Parser(INDEX, backfill_days=400)
SLOW.fast = False

T_HEAT = "symbiont/readings/plant/heat-out"
T_WATER = "symbiont/readings/plant/water-out"
T_SENML = "symbiont/readings/plant/senml"
GJ = 1 / 3.6  # GJ → MWh
VALID = {"ts": "2026-12-04T13:00:00Z", "value": 3.6}  # 1 MWh at 13:00Z
VALID_READING = ("heat-out", datetime(2026, 12, 4, 13, tzinfo=UTC), pytest.approx(1.0))


def parse(payload: Any, topic: str = T_HEAT, parser: Parser = PARSER) -> Parsed:
    """``payload`` as bytes, or as a document written by Python's json (which writes big
    integers, NaN and lone surrogates, as devices may)."""
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parser.parse(topic, raw, NOW_S)


def reasons(out: Parsed) -> list[Reason]:
    return [r.reason for r in out.rejections]


def assert_safe(out: Parsed) -> None:
    """What every parse must give: documented reasons, no internal error, text that PostgreSQL
    and UTF-8 take, details of bounded length, excerpts of bounded size."""
    texts = [out.topic, out.partner]
    for r in out.rejections:
        assert isinstance(r.reason, Reason) and r.reason in set(Reason)
        assert "internal error" not in r.detail
        assert not r.detail.endswith("could not be read"), r.detail  # the last resort never runs
        assert len(r.detail) <= 400, r.detail
        assert r.payload is None or (type(r.payload) is bytes and len(r.payload) <= KEEP_PAYLOAD)
        texts += [r.detail, r.partner, r.meter]
        assert r.partner is None or r.partner in INDEX.partners
        assert r.meter is None or r.meter in INDEX.meters
    for text in texts:
        if text is not None:
            assert "\x00" not in text
            text.encode("utf-8")  # no lone surrogate
    assert out.partner is None or out.partner in INDEX.partners


# -- one bad record never costs the others ---------------------------------------------------


def test_a_senml_name_that_is_not_a_string_rejects_that_record_only() -> None:
    out = parse([{"n": 5, "v": 1}, {"n": "heat-out", "v": 1.0}], T_SENML)
    assert out.readings == [("heat-out", NOW, pytest.approx(GJ))]
    assert reasons(out) == [Reason.invalid_format]
    assert out.rejections[0].detail == "records[0]: n is not a string"
    assert json.loads(out.rejections[0].payload or b"") == {"n": 5, "v": 1}
    assert_safe(out)


def test_a_senml_time_of_400_digits_rejects_that_record_only() -> None:
    out = parse([{"n": "heat-out", "t": 10**400, "v": 1.0}, {"n": "heat-out", "v": 1.0}], T_SENML)
    assert out.readings == [("heat-out", NOW, pytest.approx(GJ))]
    assert reasons(out) == [Reason.bad_timestamp]
    assert out.rejections[0].detail.startswith("records[0]: ")
    assert out.rejections[0].meter == "heat-out"
    assert_safe(out)


def test_a_huge_senml_base_time_rejects_the_records_that_use_it() -> None:
    pack = [
        {"bt": 10**400, "n": "heat-out", "v": 1.0},
        {"n": "heat-out", "t": -60, "v": 2.0},
        {"bt": NOW_S - 120, "n": "heat-out", "v": 3.0},
    ]
    out = parse(pack, T_SENML)
    assert out.readings == [("heat-out", NOW - timedelta(minutes=2), pytest.approx(3 * GJ))]
    assert reasons(out) == [Reason.bad_timestamp, Reason.bad_timestamp]
    assert out.rejections[1].detail == "records[1]: bt of records[0] is not a usable number"
    assert_safe(out)


def test_a_lone_surrogate_in_a_senml_name_is_an_unknown_meter_with_a_safe_detail() -> None:
    out = parse(b'[{"n": "\\ud800", "v": 1}, {"n": "heat-out", "v": 1.0}]', T_SENML)
    assert out.readings == [("heat-out", NOW, pytest.approx(GJ))]
    assert reasons(out) == [Reason.unknown_meter]
    rejection = out.rejections[0]
    assert rejection.detail == "records[0]: unknown meter '\\ud800'"
    assert rejection.meter is None and rejection.partner == "plant"
    assert json.loads(rejection.payload or b"") == {"n": "\ud800", "v": 1}
    assert_safe(out)


@pytest.mark.parametrize(
    "ts", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", 10**400, -(10**400)]
)
def test_a_timestamp_out_of_range_rejects_that_reading_only(ts: Any) -> None:
    out = parse([VALID, {"ts": ts, "value": 1.0}])
    assert out.readings == [VALID_READING]
    assert reasons(out) == [Reason.bad_timestamp]
    assert out.rejections[0].detail.startswith("readings[1]: ts ")
    assert_safe(out)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"ts": "2026-12-04T12:00:00Z", "value": 1.0, "unit": 7}, Reason.bad_unit),
        ({"ts": "2026-12-04T12:00:00Z", "value": 1.0, "unit": ["GJ"]}, Reason.bad_unit),
        ({"ts": "2026-12-04T12:00:00Z", "value": 1.0, "unit": {"u": "GJ"}}, Reason.bad_unit),
        ({"ts": "2026-12-04T12:00:00Z", "value": 1.0, "unit": True}, Reason.bad_unit),
        ({"ts": "2026-12-04T12:00:00Z", "value": 1.0, "unit": "x" * 10_000}, Reason.bad_unit),
        ({"ts": "2026-12-04T12:00:00Z", "value": 1.0, "unit": "m3dB"}, Reason.bad_unit),
        ({"ts": "2026-12-04T12:00:00Z", "value": 1.0, "unit": "degC"}, Reason.bad_unit),
        ({"ts": "2026-12-04T12:00:00Z", "value": True}, Reason.not_finite),
        ({"ts": "2026-12-04T12:00:00Z", "value": False}, Reason.not_finite),
        ({"ts": "2026-12-04T12:00:00Z", "value": {"v": 1.0}}, Reason.not_finite),
        ({"ts": "2026-12-04T12:00:00Z", "value": [1.0]}, Reason.not_finite),
        ({"ts": "2026-12-04T12:00:00Z", "value": "1.0"}, Reason.not_finite),
        ({"ts": "2026-12-04T12:00:00Z", "value": math.nan}, Reason.not_finite),
        ({"ts": "2026-12-04T12:00:00Z", "value": 10**400}, Reason.out_of_range),
        ({"ts": "2026-12-04T12:00:00Z", "value": -(10**400)}, Reason.out_of_range),
        ({"ts": "2026-12-04T12:00:00Z", "value": 1e13}, Reason.out_of_range),
        ({"ts": {"at": "2026-12-04T12:00:00Z"}, "value": 1.0}, Reason.bad_timestamp),
        ({"ts": ["2026-12-04T12:00:00Z"], "value": 1.0}, Reason.bad_timestamp),
        ({"ts": True, "value": 1.0}, Reason.bad_timestamp),
        ({"ts": math.inf, "value": 1.0}, Reason.bad_timestamp),
        ({"ts": "\x00\ud800", "value": 1.0}, Reason.bad_timestamp),
        ([VALID], Reason.invalid_format),
        ("2026-12-04T12:00:00Z", Reason.invalid_format),
        (None, Reason.invalid_format),
    ],
)
def test_each_bad_reading_of_a_batch_is_judged_on_its_own(record: Any, reason: Reason) -> None:
    out = parse([VALID, record])
    assert out.readings == [VALID_READING]
    assert reasons(out) == [reason]
    assert out.rejections[0].detail.startswith("readings[1]: ")
    assert out.rejections[0].meter == "heat-out"
    assert_safe(out)
    if type(record) is dict:  # the same as a message of its own
        single = parse(record)
        assert reasons(single) == [reason] and single.readings == []
        assert_safe(single)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"bn": 5, "n": "heat-out", "v": 1.0}, Reason.invalid_format),
        ({"bn": None, "n": "heat-out", "v": 1.0}, Reason.invalid_format),
        ({"n": ["heat-out"], "v": 1.0}, Reason.invalid_format),
        ({"n": None, "v": 1.0}, Reason.invalid_format),
        ({"n": "heat-out", "bt": "yesterday", "v": 1.0}, Reason.bad_timestamp),
        ({"n": "heat-out", "bt": math.nan, "v": 1.0}, Reason.bad_timestamp),
        ({"n": "heat-out", "t": True, "v": 1.0}, Reason.bad_timestamp),
        ({"n": "heat-out", "t": "0", "v": 1.0}, Reason.bad_timestamp),
        ({"n": "heat-out", "t": 1e300, "v": 1.0}, Reason.bad_timestamp),
        ({"n": "heat-out", "u": 7, "v": 1.0}, Reason.bad_unit),
        ({"n": "heat-out", "u": {"GJ": 1}, "v": 1.0}, Reason.bad_unit),
        ({"n": "heat-out", "u": "m3dB", "v": 1.0}, Reason.bad_unit),
        ({"n": "heat-out", "v": True}, Reason.not_finite),
        ({"n": "heat-out", "v": {"x": [1, {"y": 2}]}}, Reason.not_finite),
        ({"n": "heat-out", "vb": True}, Reason.not_finite),
        ({"n": "heat-out", "v": 10**400}, Reason.out_of_range),
        ({"n": "heat-out", "v": 1e13}, Reason.out_of_range),
        ({"n": "heat-in", "v": 1.0}, Reason.wrong_partner),
        ({"n": "ghost\x00", "v": 1.0}, Reason.unknown_meter),
        ([{"n": "heat-out"}], Reason.invalid_format),
        (5, Reason.invalid_format),
    ],
)
def test_each_bad_senml_record_is_judged_on_its_own(record: Any, reason: Reason) -> None:
    # Each record names its own base name and time, so the bad one's base fields (it is
    # rejected) cannot change how the valid ones after it resolve.
    good = {"bn": "", "bt": NOW_S - 60, "n": "water-out", "v": 2.0}
    out = parse([good, record, good | {"bt": NOW_S - 120}], T_SENML)
    assert out.readings == [
        ("water-out", NOW - timedelta(minutes=1), 2.0),
        ("water-out", NOW - timedelta(minutes=2), 2.0),
    ]
    assert reasons(out) == [reason]
    assert out.rejections[0].detail.startswith("records[1]: ")
    assert_safe(out)


def test_a_bad_senml_base_name_rejects_the_records_that_use_it() -> None:
    pack = [
        {"bn": 5, "n": "heat-out", "v": 1.0},
        {"n": "heat-out", "v": 2.0},
        {"bn": "", "n": "heat-out", "v": 3.6},
    ]
    out = parse(pack, T_SENML)
    assert out.readings == [("heat-out", NOW, pytest.approx(1.0))]
    assert reasons(out) == [Reason.invalid_format, Reason.invalid_format]
    assert out.rejections[1].detail == "records[1]: bn of records[0] is not a string"
    assert_safe(out)


# -- RFC 3339 exactly -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ts",
    [
        "20261204T135000Z",  # basic format
        "2026-W49-5T13:50:00Z",  # week date
        "2026-338T13:50:00Z",  # ordinal date
        "2026-12-04T13:50:00+01",  # hour-only offset
        "2026-12-04T13:50:00+0100",  # offset without colon
        "2026-12-04 13:50:00Z",  # space separator
        "2026-12-04_13:50:00Z",
        "2026-12-04T13:50Z",  # no seconds
        "2026-12-04T13:50:00,5Z",  # comma fraction
        "2026-12-04T13:50:00.Z",
        "2026-12-04T13:50:00",  # no offset
        "2026-12-04",
        "2026-12-04T13:50:00Z ",
        "2026-12-04T13:50:00Z\n",
        "２０２６-12-04T13:50:00Z",  # fullwidth digits
        "2026-12-04T13:50:00+24:00",
        "2026-12-04T13:50:00+01:60",
        "2026-02-30T13:50:00Z",
        "2026-12-04T24:00:00Z",
        "2026-12-04T13:50:60Z",  # a leap second: RFC 3339, but not storable
        "0000-12-04T13:50:00Z",
        "+2026-12-04T13:50:00Z",
    ],
)
def test_timestamps_that_are_not_rfc3339_are_rejected(ts: str) -> None:
    out = parse([VALID, {"ts": ts, "value": 1.0}])
    assert out.readings == [VALID_READING]
    assert reasons(out) == [Reason.bad_timestamp]
    assert_safe(out)


@pytest.mark.parametrize(
    ("ts", "instant"),
    [
        ("2026-12-04t13:32:08.123z", datetime(2026, 12, 4, 13, 32, 8, 123000, tzinfo=UTC)),
        ("2026-12-04T13:32:08Z", datetime(2026, 12, 4, 13, 32, 8, tzinfo=UTC)),
        ("2026-12-04T14:32:08+01:00", datetime(2026, 12, 4, 13, 32, 8, tzinfo=UTC)),
        ("2026-12-04T08:02:08-05:30", datetime(2026, 12, 4, 13, 32, 8, tzinfo=UTC)),
        ("2026-12-04T13:32:08-00:00", datetime(2026, 12, 4, 13, 32, 8, tzinfo=UTC)),
        ("2026-12-04T13:32:08.1Z", datetime(2026, 12, 4, 13, 32, 8, 100000, tzinfo=UTC)),
        ("2026-12-04T13:32:08.123456789Z", datetime(2026, 12, 4, 13, 32, 8, 123456, tzinfo=UTC)),
        ("2026-12-05T00:32:08+11:00", datetime(2026, 12, 4, 13, 32, 8, tzinfo=UTC)),
    ],
)
def test_rfc3339_timestamps_are_accepted(ts: str, instant: datetime) -> None:
    for parser in (PARSER, SLOW):
        out = parse({"ts": ts, "value": 3.6}, parser=parser)
        assert out.rejections == []
        assert out.readings == [("heat-out", instant, pytest.approx(1.0))]
        assert out.readings[0][1].tzinfo is UTC


def test_epoch_seconds_are_bounded_and_finite() -> None:
    assert _strict_timestamp(NOW_S) == NOW
    assert _strict_timestamp(int(NOW_S)) == NOW
    assert _strict_timestamp(253402300799) == datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    for bad in (253402300800, 10**400, -1, -(10**400), math.nan, math.inf, -math.inf, True):
        assert isinstance(_strict_timestamp(bad), str)


# -- out of range -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (MAX_VALUE, None),
        (-MAX_VALUE, None),
        (10**12, None),
        (10**12 + 1, Reason.out_of_range),
        (-(10**12) - 1, Reason.out_of_range),
        (1.0000001e12, Reason.out_of_range),
        (1.7e308, Reason.out_of_range),
        (10**400, Reason.out_of_range),
        (2**64, Reason.out_of_range),
        (math.inf, Reason.not_finite),
    ],
)
def test_values_over_1e12_in_the_canonical_unit_are_out_of_range(
    value: Any, reason: Reason | None
) -> None:
    out = parse({"ts": "2026-12-04T13:00:00Z", "value": value}, T_WATER)  # m3 is canonical
    assert reasons(out) == ([reason] if reason else [])
    assert len(out.readings) == (0 if reason else 1)
    if reason == Reason.out_of_range:
        assert "is out of range: its magnitude in m3 is over 10^12" in out.rejections[0].detail
    assert_safe(out)


def test_the_range_applies_after_unit_conversion() -> None:
    # 1e12 l is 1e9 m3 (accepted); 2e12 MWh sent in kWh is 2e9 MWh (accepted); 1e13 GJ is
    # 2.8e12 MWh (rejected), and so are 1e10 TJ.
    assert parse({"ts": NOW_S, "value": 1e12, "unit": "l"}, T_WATER).readings
    assert parse({"ts": NOW_S, "value": 2e12, "unit": "kWh"}).readings
    assert reasons(parse({"ts": NOW_S, "value": 1e13})) == [Reason.out_of_range]
    assert reasons(parse({"ts": NOW_S, "value": 1e10, "unit": "TJ"})) == [Reason.out_of_range]


# -- safe text --------------------------------------------------------------------------------


def test_a_topic_with_nul_and_surrogates_gives_safe_fields() -> None:
    out = PARSER.parse("symbiont/readings/pl\x00ant\ud800/heat-out", json.dumps(VALID).encode(), 0)
    assert out.topic == "symbiont/readings/pl\\x00ant\\ud800/heat-out"
    assert reasons(out) == [Reason.unknown_partner]
    assert out.rejections[0].detail == "unknown partner 'pl\\x00ant\\ud800'"
    assert out.partner is None and out.rejections[0].partner is None
    assert_safe(out)
    out = parse(VALID, "symbiont/readings/plant/\x00\x1b[31m")
    assert out.rejections[0].detail == "unknown meter '\\x00\\x1b[31m'"
    assert out.rejections[0].meter is None
    assert_safe(out)
    out = parse(VALID, "symbiont/readings\x00/plant/heat-out")
    assert reasons(out) == [Reason.bad_topic]
    assert_safe(out)


def test_long_names_are_cut_in_details_and_unknown_partners_are_not_kept() -> None:
    name = "m" * 100_000
    out = parse(VALID, f"symbiont/readings/plant/{name}")
    assert reasons(out) == [Reason.unknown_meter]
    assert len(out.rejections[0].detail) < 120
    huge = b"[" + b" " * (2 * 1024 * 1024) + b"]"
    out = PARSER.parse(f"symbiont/readings/{name}/{name}", huge, NOW_S)
    assert reasons(out) == [Reason.too_large]
    # an unknown partner's name is not kept as a partner (it would be indexed and counted)
    assert out.partner is None and out.rejections[0].partner is None
    assert out.rejections[0].meter is None
    assert_safe(out)


def test_a_payload_too_large_names_only_the_partners_own_meter() -> None:
    huge = b"[" + b" " * (2 * 1024 * 1024) + b"]"
    own = PARSER.parse(T_HEAT, huge, NOW_S).rejections[0]
    assert (own.reason, own.partner, own.meter) == (Reason.too_large, "plant", "heat-out")
    other = PARSER.parse("symbiont/readings/plant/heat-in", huge, NOW_S).rejections[0]
    assert (other.reason, other.partner, other.meter) == (Reason.too_large, "plant", None)


def test_excerpts_of_records_that_orjson_cannot_write_are_kept() -> None:
    records = [
        {"n": "heat-out", "v": 10**400, "x": "\ud800"},
        {"n": "heat-out", "v": math.nan, "s": 2**70},
    ]
    out = parse(records, T_SENML)
    assert reasons(out) == [Reason.out_of_range, Reason.not_finite]
    assert json.loads(out.rejections[0].payload or b"") == records[0]
    assert json.loads(out.rejections[1].payload or b"")["s"] == 2**70
    assert_safe(out)


def test_wrong_partner_and_unknown_meter_details_keep_their_form() -> None:
    out = parse(VALID, "symbiont/readings/town/heat-out")
    r = out.rejections[0]
    assert (r.reason, r.detail, r.partner, r.meter) == (
        Reason.wrong_partner,
        "meter 'heat-out' belongs to 'plant', not to 'town'",
        "town",
        "heat-out",
    )
    out = parse([{"n": "heat-out", "v": 1.0}, {"n": "ghost", "v": 1.0}], "symbiont/readings/town/x")
    assert [(r.reason, r.detail, r.meter) for r in out.rejections] == [
        (
            Reason.wrong_partner,
            "records[0]: meter 'heat-out' belongs to 'plant', not to 'town'",
            "heat-out",
        ),
        (Reason.unknown_meter, "records[1]: unknown meter 'ghost'", None),
    ]


# -- CSV rows ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meter", "ts", "value", "unit", "reason"),
    [
        ("heat-out", "2026-12-04T13:00:00Z", "3.6", None, None),
        ("heat-out", "1796389200", "3.6", "GJ", None),
        ("heat-out", "2026-12-04t13:00:00z", "3.6", None, None),
        ("heat-out", "0001-01-01T00:00:00+01:00", "3.6", None, Reason.bad_timestamp),
        ("heat-out", "9999-12-31T23:59:59-01:00", "3.6", None, Reason.bad_timestamp),
        ("heat-out", "1" + "0" * 400, "3.6", None, Reason.bad_timestamp),
        ("heat-out", "2026-12-04 13:00:00Z", "3.6", None, Reason.bad_timestamp),
        ("heat-out", "1_796_389_200", "3.6", None, Reason.bad_timestamp),
        ("heat-out", "nan", "3.6", None, Reason.bad_timestamp),
        ("heat-out", "2026-12-04T13:00:00Z", "1_000", None, Reason.not_finite),
        ("heat-out", "2026-12-04T13:00:00Z", "", None, Reason.not_finite),
        ("heat-out", "2026-12-04T13:00:00Z", "1e400", None, Reason.not_finite),
        ("heat-out", "2026-12-04T13:00:00Z", "1" + "0" * 400, None, Reason.out_of_range),
        ("heat-out", "2026-12-04T13:00:00Z", "1e13", None, Reason.out_of_range),
        ("heat-out", "2026-12-04T13:00:00Z", "1", "\x00", Reason.bad_unit),
        ("gh\x00st\ud800", "2026-12-04T13:00:00Z", "1", None, Reason.unknown_meter),
    ],
)
def test_csv_rows_take_the_same_strict_checks(
    meter: str, ts: str, value: str, unit: str | None, reason: Reason | None
) -> None:
    out = PARSER.parse_row("import:x\x00.csv", meter, ts, value, unit, NOW_S, 7)
    assert out.topic == "import:x\\x00.csv"
    assert reasons(out) == ([reason] if reason else [])
    if reason is None:
        assert out.readings == [VALID_READING]
    else:
        assert out.rejections[0].detail.startswith("line 7: ")
    assert_safe(out)


# -- the service's last resort ----------------------------------------------------------------


def test_the_services_last_resort_names_no_internal_error() -> None:
    """Parsing never raises; should a message still fail (here: no network loaded yet), it is
    rejected as unreadable, with a safe topic, and the stream goes on."""
    service = IngestService(
        Settings(database_url="postgresql://127.0.0.1/unused", mqtt_url="mqtt://127.0.0.1:1")
    )
    msg = mqtt.MQTTMessage(mid=1, topic=b"symbiont/readings/plant/heat-out\x00")
    msg.payload = b"{}"
    service._on_message(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2), None, msg)
    (message,) = service.pending
    assert message.parsed.topic == "symbiont/readings/plant/heat-out\\x00"
    assert [(r.reason, r.detail) for r in message.parsed.rejections] == [
        (Reason.invalid_format, "payload could not be read")
    ]


# -- into PostgreSQL --------------------------------------------------------------------------


def test_rejections_of_hostile_input_are_stored(database_url: str) -> None:
    """Whatever the topic, names and values, the rejections go into PostgreSQL (which refuses
    NUL in text and cannot encode lone surrogates) and the valid readings with them."""
    messages = [
        ("symbiont/readings/pl\x00ant/heat-out\ud800", json.dumps(VALID).encode()),
        ("symbiont/readings/plant/\x00", json.dumps(VALID).encode()),
        ("symbiont/readings/" + "p" * 100_000 + "/x", b"[" + b" " * (2 * 1024 * 1024) + b"]"),
        (T_SENML, b'[{"n": "\\ud800\\u0000", "v": 1}, {"n": "heat-out", "v": 1.0}]'),
        (T_HEAT, json.dumps([VALID, {"ts": "\ud800\x00", "value": 1.0, "unit": "\x00"}]).encode()),
        (T_HEAT, json.dumps({"ts": 10**400, "value": 10**400}).encode()),
        (T_SENML, json.dumps([{"bn": ["\x00"], "n": "heat-out", "v": 1}]).encode()),
    ]
    now = time.time()

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            await apply_network(conn, parse_network(NETWORK))
        finally:
            await conn.close()
        writer = BatchWriter(asyncpg_dsn(database_url))
        try:
            batch = [Message(PARSER.parse(t, p, NOW_S), now) for t, p in messages]
            result = await writer.write(batch, INDEX)
        finally:
            await writer.close()
        assert result.inserted == 2
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            rows: list[asyncpg.Record] = await conn.fetch(
                "SELECT topic, partner_id, meter_id, reason, detail FROM rejections ORDER BY id"
            )
            return rows
        finally:
            await conn.close()

    rows = asyncio.run(go())
    assert [r["reason"] for r in rows] == [
        "unknown_partner",
        "unknown_meter",
        "too_large",
        "unknown_meter",
        "bad_timestamp",
        "bad_timestamp",
        "invalid_format",
    ]
    assert rows[0]["topic"] == "symbiont/readings/pl\\x00ant/heat-out\\ud800"
    assert rows[3]["detail"] == "records[0]: unknown meter '\\ud800\\x00'"


# -- properties -------------------------------------------------------------------------------

_NASTY_TEXT = st.text(
    st.one_of(
        st.characters(codec=None, exclude_categories=()),  # surrogates and controls included
        st.sampled_from(["\x00", "\ud800", "\udfff", "'", "\\", "/", "Z", "T", ":", "-"]),
    ),
    max_size=30,
)
_NUMBERS = st.one_of(
    st.integers(),
    st.integers(-(10**400), 10**400),
    st.sampled_from([10**400, -(10**400), 2**64, -(2**63) - 1, 10**12, 10**12 + 1, 0, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(NOW_S - 500 * 86400, NOW_S + 86400),
)
_TS_TEXT = st.one_of(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=23, minutes=59))]
        ),
    ).map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "2026-12-04t13:32:08.123z",
            "20261204T135000Z",
            "2026-W49-5T13:50:00Z",
            "2026-12-04T13:50:00+01",
            "2026-12-04T13:50:60Z",
        ]
    ),
    _NASTY_TEXT,
)
_SCALARS = st.one_of(st.none(), st.booleans(), _NUMBERS, _NASTY_TEXT, _TS_TEXT)
_JSON = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(_NASTY_TEXT, st.sampled_from(["ts", "value", "unit"])), children),
    ),
    max_leaves=12,
)
_UNITS = st.one_of(
    st.sampled_from(["GJ", "MWh", "kWh", "m3", "l", "kW", "banana", "", "m3dB", "degC", "dB"]),
    _JSON,
)
_READING_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "ts": st.one_of(_TS_TEXT, _NUMBERS, _JSON),
        "value": st.one_of(_NUMBERS, _JSON),
        "unit": _UNITS,
    },
)
_SENML_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "bn": st.one_of(st.sampled_from(["", "heat-", "water-", "x"]), _JSON),
        "bt": st.one_of(_NUMBERS, _JSON),
        "bu": _UNITS,
        "n": st.one_of(st.sampled_from(["out", "heat-out", "water-out", "heat-in"]), _JSON),
        "t": st.one_of(_NUMBERS, _JSON),
        "u": _UNITS,
        "v": st.one_of(_NUMBERS, _JSON),
        "s": _NUMBERS,
        "vb": st.booleans(),
    },
)
_TOPICS = st.one_of(
    st.sampled_from(
        [
            T_HEAT,
            T_WATER,
            T_SENML,
            "symbiont/readings/town/heat-in",
            "symbiont/readings/town/heat-out",
            "symbiont/readings/plant/ghost",
        ]
    ),
    st.builds(lambda p, m: f"symbiont/readings/{p}/{m}", _NASTY_TEXT, _NASTY_TEXT),
    _NASTY_TEXT,
)
_DOCUMENTS = st.one_of(
    _JSON,
    _READING_LIKE,
    st.lists(st.one_of(_READING_LIKE, _JSON), max_size=6),
    st.lists(st.one_of(_SENML_LIKE, _JSON), min_size=1, max_size=6),
)


def _dump(doc: Any) -> bytes | None:
    try:
        return json.dumps(doc).encode()
    except ValueError:  # an integer over Python's digit limit for text
        return None


PROPERTY = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY
@given(_TOPICS, st.one_of(_DOCUMENTS.map(_dump), st.binary(max_size=200)))
def test_any_topic_and_payload_parse_to_documented_reasons_and_safe_text(
    topic: str, payload: bytes | None
) -> None:
    assume(payload is not None)
    assert payload is not None
    for parser in (PARSER, SLOW):
        out = parser.parse(topic, payload, NOW_S)
        assert_safe(out)
        assert out.topic == safe_text(topic)


def _valid_readings(draw: st.DrawFn, n: int) -> list[dict[str, Any]]:
    forms = st.sampled_from(["iso", "iso_lower", "offset", "epoch", "int", "unit"])
    out = []
    for k in range(n):
        ts = NOW - timedelta(minutes=k + 1)
        form = draw(forms)
        value: Any = draw(st.floats(-1e9, 1e9, allow_nan=False))
        reading: dict[str, Any] = {"value": value}
        if form == "iso":
            reading["ts"] = ts.isoformat().replace("+00:00", "Z")
        elif form == "iso_lower":
            reading["ts"] = ts.isoformat().replace("+00:00", "z").replace("T", "t")
        elif form == "offset":
            reading["ts"] = ts.astimezone(timezone(timedelta(hours=-3, minutes=-30))).isoformat()
        elif form == "epoch":
            reading["ts"] = ts.timestamp()
        elif form == "int":
            reading["ts"] = int(ts.timestamp())
            reading["value"] = draw(st.integers(-(10**9), 10**9))
        else:
            reading["ts"] = ts.timestamp()
            reading["unit"] = "MWh"
        out.append(reading)
    return out


@st.composite
def _mixed_batches(draw: st.DrawFn) -> tuple[list[Any], list[dict[str, Any]]]:
    valid = _valid_readings(draw, draw(st.integers(1, 6)))
    junk = draw(st.lists(st.one_of(_READING_LIKE, _JSON), max_size=6))
    rest = draw(st.permutations(valid[1:] + junk))
    return [valid[0], *rest], valid


@st.composite
def _mixed_packs(draw: st.DrawFn) -> tuple[list[Any], list[dict[str, Any]]]:
    valid = []
    for k in range(draw(st.integers(1, 6))):
        # self-contained: its own base name, base time and unit, whatever came before
        record = {
            "bn": draw(st.sampled_from(["", "water-"])),
            "bt": draw(st.sampled_from([NOW_S - 3600, int(NOW_S) - 3600])),
            "t": 60 * k,
            "u": draw(st.sampled_from(["m3", "l"])),
            "v": draw(st.one_of(st.floats(-1e9, 1e9), st.integers(-(10**9), 10**9))),
        }
        record["n"] = "water-out" if record["bn"] == "" else "out"
        valid.append(record)
    junk = draw(st.lists(st.one_of(_SENML_LIKE, _JSON), max_size=6))
    rest = draw(st.permutations(valid[1:] + junk))
    return [valid[0], *rest], valid


def _expected(reading: dict[str, Any], factor: float) -> tuple[str, datetime, float]:
    ts = reading["ts"]
    instant = (
        datetime.fromtimestamp(ts, UTC)
        if not isinstance(ts, str)
        else datetime.fromisoformat(ts.upper()).astimezone(UTC)
    )
    return ("heat-out", instant, reading["value"] * factor)


def _outcomes(out: Parsed) -> int:
    return len(out.readings) + len(out.rejections)


@PROPERTY
@given(_mixed_batches())
def test_every_valid_reading_of_a_mixed_batch_is_accepted_exactly_once(
    case: tuple[list[Any], list[dict[str, Any]]],
) -> None:
    batch, valid = case
    payload = _dump(batch)
    assume(payload is not None)
    assert payload is not None
    for parser in (PARSER, SLOW):
        out = parser.parse(T_HEAT, payload, NOW_S)
        assert_safe(out)
        assert _outcomes(out) == len(batch)  # each reading judged once
        got = Counter(out.readings)
        for reading in valid:
            factor = 1.0 if reading.get("unit") == "MWh" else INDEX.meters["heat-out"].factor
            assert got[_expected(reading, factor)] >= 1, (reading, out.rejections)


@PROPERTY
@given(_mixed_packs())
def test_every_valid_record_of_a_mixed_senml_pack_is_accepted_exactly_once(
    case: tuple[list[Any], list[dict[str, Any]]],
) -> None:
    pack, valid = case
    payload = _dump(pack)
    assume(payload is not None)
    assert payload is not None
    for parser in (PARSER, SLOW):
        out = parser.parse(T_SENML, payload, NOW_S)
        assert_safe(out)
        assert _outcomes(out) == len(pack)  # each record judged once
        got = Counter(out.readings)
        for record in valid:
            instant = datetime.fromtimestamp(record["bt"] + record["t"], UTC)
            value = record["v"] * conversion(record["u"], "water", "total")
            assert got[("water-out", instant, value)] >= 1, (record, out.rejections)


_DIGIT = st.sampled_from("0123456789")
_ANY_CHAR = st.one_of(_DIGIT, st.sampled_from("-:TtZz+. ٣２\x00"), st.characters(codec=None))


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.one_of(_DIGIT, _DIGIT, _ANY_CHAR), min_size=14, max_size=14))
def test_the_short_way_for_timestamps_agrees_with_rfc3339(chars: list[str]) -> None:
    """Strings of the usual shape (``YYYY-MM-DDThh:mm:ssZ``, anything between the
    separators) are read the short way; the result is exactly the strict parser's."""
    digits = iter(chars)
    raw = "".join(c if c != "#" else next(digits) for c in "####-##-##T##:##:##Z")
    short, strict = _timestamp(raw), _strict_timestamp(raw)
    if isinstance(strict, datetime):
        assert short == strict and isinstance(short, datetime) and short.tzinfo is UTC
    else:
        assert isinstance(short, str)


@settings(max_examples=500, deadline=None)
@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(-(23 * 60 + 59), 23 * 60 + 59),
    st.sampled_from(["T", "t"]),
    st.integers(0, 9),
    st.booleans(),
)
def test_rfc3339_reads_every_form_to_the_same_instant(
    local: datetime, offset_min: int, sep: str, digits: int, lower: bool
) -> None:
    offset = timedelta(minutes=offset_min)
    sign = "-" if offset_min < 0 else "+"
    hours, minutes = divmod(abs(offset_min), 60)
    fraction = f"{local.microsecond:06d}{'7' * 3}"[:digits]
    text = (
        f"{local.year:04d}-{local.month:02d}-{local.day:02d}{sep}"
        f"{local.hour:02d}:{local.minute:02d}:{local.second:02d}"
    ) + (f".{fraction}" if digits else "")
    zone = f"{sign}{hours:02d}:{minutes:02d}"
    expected_local = local.replace(microsecond=int(fraction[:6].ljust(6, "0")) if digits else 0)
    got = _rfc3339(text + zone)
    try:
        expected = (expected_local - offset).replace(tzinfo=UTC)
    except OverflowError:
        assert isinstance(got, str) and "out of range" in got
        return
    assert got == expected
    if offset_min == 0:
        assert _rfc3339(text + ("z" if lower else "Z")) == expected


def test_no_detail_or_name_pattern_escapes_the_documented_forms() -> None:
    """The detail forms a partner-safe view relies on."""
    out = parse(VALID, "symbiont/readings/plant/ghost")
    assert re.fullmatch(r"unknown meter '.*'", out.rejections[0].detail)
    out = parse([VALID, {"ts": "x", "value": 1.0}])
    assert re.fullmatch(r"readings\[1\]: ts 'x' is not RFC 3339 .*", out.rejections[0].detail)
