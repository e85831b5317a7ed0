"""The API's edges, against the real app over a real database.

- HTTP ingestion of a hostile corpus (and of what hypothesis makes up): never a 5xx, the
  valid readings stored, every bad one answered with a documented reason and recorded.
- What a partner learns from a rejection: another partner's meter is, in its view (the
  rejections list, HTTP answers), exactly an unknown meter; operators see the truth.
- Parameters are ASCII-strict (months, cursors), a NUL in a query never reaches PostgreSQL.
- A failed authentication is logged with method, path and client, never the token.
- A database that is down is a 503 for HTTP ingestion, not a rejection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from api_system import FOREIGN, OWN, REPO, ApiSystem
from api_system import db_fetch as db
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from services import PrivatePostgres

from api.tokens import create_token
from core.apply import apply_network
from core.db import asyncpg_dsn
from core.logs import JsonFormatter
from core.network import load_network
from ingest.parse import NetworkIndex, Parser
from ingest.writer import BatchWriter, Message

# Every reason a rejection may have (docs/input.md, "Rejections", and the range check).
DOCUMENTED = frozenset(
    {
        "too_large",
        "bad_topic",
        "invalid_json",
        "invalid_format",
        "batch_too_large",
        "unknown_partner",
        "unknown_meter",
        "wrong_partner",
        "bad_timestamp",
        "not_finite",
        "out_of_range",
        "bad_unit",
        "future",
        "too_old",
        "conflict",
    }
)
PARTNER = f"partner:{OWN}"
METER = "novo-yeast-weighbridge"  # novo's, material, delta, t
RATE = "novo-steam-in"  # novo's, heat, rate, MW
FOREIGN_METER = "gyproc-gas-in"  # gyproc's
WHERE = re.compile(r"(readings|records)\[[0-9]+\]: ")


# -- helpers ---------------------------------------------------------------------------------


def last_rejection(system: ApiSystem) -> int:
    return int(db(system, "SELECT coalesce(max(id), 0) AS id FROM rejections")[0]["id"])


class Clock:
    """Distinct recent instants, so that no two readings of the tests meet."""

    def __init__(self) -> None:
        self.base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
        self.n = 0

    def next(self) -> datetime:
        self.n += 1
        return self.base + timedelta(milliseconds=7 * self.n)


@dataclass(frozen=True)
class Answer:
    status: int
    reasons: list[str]  # the answered rejections, in order
    messages: list[str]  # their texts ("reason: detail" of a 422, "detail" of a 200)
    stored: int
    body: bytes
    readings: int = 0  # valid readings in the payload (of a 200)
    duplicates: int = 0


def post(system: ApiSystem, path: str, body: bytes, who: str = PARTNER) -> Answer:
    response = httpx.post(
        f"{system.base_url}/api/v1/readings/{OWN}/{path}",
        headers={**system.headers(who), "Content-Type": "application/json"},
        content=body,
        timeout=60,
    )
    assert response.status_code < 500, f"{path}: {response.status_code} {response.text[:300]}"
    assert response.status_code in (200, 422), f"{path}: {response.status_code} {response.text}"
    doc = response.json()
    if response.status_code == 422:
        items = doc["detail"]
        assert items and all(set(i) >= {"type", "loc", "msg"} for i in items), doc
        for i in items:
            assert i["msg"].startswith(f"{i['type']}: "), i
        return Answer(
            422, [i["type"] for i in items], [i["msg"] for i in items], 0, response.content
        )
    assert set(doc) == {"readings", "stored", "duplicates", "rejected"}, doc
    return Answer(
        200,
        [r["reason"] for r in doc["rejected"]],
        [r["detail"] for r in doc["rejected"]],
        doc["stored"],
        response.content,
        doc["readings"],
        doc["duplicates"],
    )


def check_recorded(system: ApiSystem, before: int, answer: Answer, who: str) -> None:
    """Every answered rejection is recorded (as the partner sees it: a foreign meter is an
    unknown one), and nothing else is."""
    rows = db(system, "SELECT reason, detail FROM rejections WHERE id > $1 ORDER BY id", before)
    stored = [r["reason"] for r in rows]
    if who == PARTNER:
        stored = ["unknown_meter" if r == "wrong_partner" else r for r in stored]
    assert sorted(stored) == sorted(answer.reasons), (stored, answer)
    for r in rows:  # stored text is text PostgreSQL took: no NUL, and it encodes
        r["detail"].encode("utf-8")


def stored_readings(
    system: ApiSystem, pairs: list[tuple[str, datetime]]
) -> set[tuple[str, datetime]]:
    if not pairs:
        return set()
    rows = db(
        system,
        "SELECT meter_id, ts FROM readings r JOIN unnest($1::text[], $2::timestamptz[]) AS w(m, t)"
        " ON r.meter_id = w.m AND r.ts = w.t",
        [m for m, _ in pairs],
        [t for _, t in pairs],
    )
    return {(r["meter_id"], r["ts"]) for r in rows}


def whole_message_refused(answer: Answer) -> bool:
    """One rejection for the message as a whole (not for a reading of it)."""
    return (
        answer.status == 422
        and len(answer.reasons) == 1
        and WHERE.search(answer.messages[0]) is None
    )


# -- the hostile corpus ----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    path: str = METER  # the last level of the URL, percent-encoded as sent
    valid: tuple[tuple[str, datetime], ...] = ()  # readings that must be stored
    # stored or rejected, as the parser's own checks decide (the range check, how strictly a
    # time or a unit is read): the HTTP layer's part is only that it is never a 5xx
    either: bool = False


def js(doc: Any) -> bytes:
    return json.dumps(doc).encode()  # ensure_ascii: lone surrogates and NUL as \\u escapes


def corpus() -> list[Case]:
    clock = Clock()

    def reading(**fields: Any) -> tuple[dict[str, Any], datetime]:
        ts = clock.next()
        return {"ts": ts.isoformat(), "value": 1.5, **fields}, ts

    def senml_rec(meter: str = METER, **fields: Any) -> tuple[dict[str, Any], datetime]:
        ts = clock.next()
        return {"n": meter, "t": ts.timestamp(), "v": 2.5, **fields}, ts

    ok1, ts1 = reading()
    ok2, ts2 = reading()
    ok3, ts3 = reading(unit="kg", value=500)
    ok4, ts4 = reading()
    ok5, ts5 = reading()
    s1, st1 = senml_rec()
    s2, st2 = senml_rec(u="kg")
    s3, st3 = senml_rec()
    s4, st4 = senml_rec()
    tiny, ts_tiny = reading(value=5e-324)
    zero, ts_zero = reading(value=-0.0)
    rate, ts_rate = reading(value=12500, unit="kW")
    big, _ = reading(value=1e13)
    deep_value: Any = 1.0
    for _ in range(500):
        deep_value = [deep_value]
    deep_object: Any = 1.0
    for _ in range(300):
        deep_object = {"a": deep_object}
    t = clock.next().isoformat()
    return [
        # reported: a 500 and no rejection recorded
        Case("senml NUL in a name", js([{"n": "x\u0000y", "v": 1.0}])),
        Case(
            "senml int name beside a valid record",
            js([s1, {"n": 5, "v": 1.0}]),
            valid=((METER, st1),),
        ),
        Case(
            "senml t of 400 digits",
            b'[{"n": "%s", "t": 1%s, "v": 1.0}]' % (METER.encode(), b"0" * 399),
        ),
        Case("senml lone surrogate in a name", b'[{"n": "\\ud800", "v": 1.0}]'),
        Case(
            "batch ts year 1 with an offset",
            js([ok1, {"ts": "0001-01-01T00:00:00+01:00", "value": 1.0}]),
            valid=((METER, ts1),),
        ),
        Case(
            "batch epoch of 400 digits",
            b'[%s, {"ts": 1%s, "value": 1.0}]' % (js(ok2), b"0" * 399),
            valid=((METER, ts2),),
        ),
        Case("NUL in the path", js({"ts": t, "value": 1.0}), path="x%00y"),
        # bytes and encodings
        Case("arbitrary bytes", bytes(range(256))),
        Case(
            "invalid UTF-8 in a string",
            b'{"ts": "%s", "value": 1.0, "unit": "\xff\xfe"}' % t.encode(),
        ),
        Case("empty body", b""),
        Case("JSON null", b"null"),
        Case("a bare number", b"1e999"),
        Case("a bare string with NUL", b'"\\u0000"'),
        Case("NUL in ts", js({"ts": t + "\u0000", "value": 1.0}), either=True),
        Case("lone surrogate in ts", b'{"ts": "\\udc80", "value": 1.0}'),
        Case("NUL in the unit", js({"ts": t, "value": 1.0, "unit": "t\u0000"}), either=True),
        Case(
            "lone surrogate in the unit",
            b'{"ts": "%s", "value": 1.0, "unit": "\\ud83d"}' % t.encode(),
        ),
        Case("escape codes in the unit", js({"ts": t, "value": 1.0, "unit": "\u001b[31mt"})),
        Case("NUL as the value", js({"ts": t, "value": "\u0000"})),
        Case("lone surrogate in the path", js({"ts": t, "value": 1.0}), path="%ED%A0%80"),
        Case("invalid UTF-8 in the path", js({"ts": t, "value": 1.0}), path="%FF%FE"),
        Case("a long path", js({"ts": t, "value": 1.0}), path="m" * 4000),
        Case("a huge string", js({"ts": "9" * 500_000, "value": 1.0})),
        # nesting
        Case("deeply nested arrays", b"[" * 100_000 + b"]" * 100_000),
        Case("deeply nested objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
        Case("a nested value", js({"ts": t, "value": deep_value})),
        Case("a nested object in a senml record", js([{"n": METER, "v": deep_object}])),
        # numbers
        Case("a value of 400 digits", b'{"ts": "%s", "value": 1%s}' % (t.encode(), b"0" * 399)),
        Case("a value past double", b'{"ts": "%s", "value": 1e400}' % t.encode()),
        Case("NaN", b'{"ts": "%s", "value": NaN}' % t.encode()),
        Case("-Infinity", b'{"ts": "%s", "value": -Infinity}' % t.encode()),
        Case("huge in a larger unit", js({"ts": t, "value": 1e308, "unit": "Mt"})),
        Case(
            "tiny and negative zero", js([tiny, zero]), valid=((METER, ts_tiny), (METER, ts_zero))
        ),
        Case("kW on a MW rate meter", js(rate), path=RATE, valid=((RATE, ts_rate),)),
        Case("over the range", js(big), either=True),
        # dates
        Case("year 9999", js({"ts": "9999-12-31T23:59:59Z", "value": 1.0})),
        Case("year 9999 west of UTC", js({"ts": "9999-12-31T23:59:59-01:00", "value": 1.0})),
        Case("year 1", js({"ts": "0001-01-01T00:00:00Z", "value": 1.0})),
        Case("February 30", js({"ts": "2026-02-30T00:00:00Z", "value": 1.0})),
        Case("no offset", js({"ts": "2026-10-01T00:00:00", "value": 1.0})),
        Case("epoch -1", js({"ts": -1, "value": 1.0})),
        Case("epoch 1e308", js({"ts": 1e308, "value": 1.0})),
        Case("epoch NaN", b'{"ts": NaN, "value": 1.0}'),
        Case("ts true", js({"ts": True, "value": 1.0})),
        Case("ts an object", js({"ts": {"$date": t}, "value": 1.0})),
        Case("senml bt NaN", b'[{"bn": "%s", "bt": NaN, "v": 1.0}]' % METER.encode()),
        # mixed batches and packs
        Case(
            "a mixed batch",
            b"[%s, %s, %s, %s, %s, %s, %s, 17]"
            % (
                js(ok3),
                b'{"ts": "%s", "value": NaN}' % t.encode(),
                js({"ts": t, "value": "12"}),
                js({"value": 1.0}),
                js({"ts": t, "value": 1.0, "unit": "MWh"}),
                js(ok4),
                js({"ts": "soon", "value": 1.0}),
            ),
            valid=((METER, ts3), (METER, ts4)),
        ),
        Case(
            "a mixed senml pack",
            js(
                [
                    {"bn": "novo-", **{**s3, "n": "yeast-weighbridge"}},
                    {"n": "nope", "v": 1.0},
                    {"bn": "", "n": FOREIGN_METER, "v": 1.0},
                    {"n": METER, "v": 1.0, "u": "GJ"},
                    s2,
                    {"n": METER, "t": "later", "v": 1.0},
                    "not a record",
                ]
            ),
            path="senml",
            valid=((METER, st3), (METER, st2)),
        ),
        # units
        Case("kg on a heat meter", js({"ts": t, "value": 1.0, "unit": "kg"}), path=RATE),
        Case("a unit that is a number", js({"ts": t, "value": 1.0, "unit": 5})),
        Case("a unit that is a list", js({"ts": t, "value": 1.0, "unit": ["t"]})),
        Case("an empty unit", js({"ts": t, "value": 1.0, "unit": ""})),
        Case("a unit dividing by zero", js({"ts": t, "value": 1.0, "unit": "1/0"})),
        Case("a unit of code", js({"ts": t, "value": 1.0, "unit": "__import__('os')"})),
        Case("a long unit", js({"ts": t, "value": 1.0, "unit": "t" * 10_000})),
        # foreign and unknown meters
        Case("another partner's meter", js({"ts": t, "value": 1.0}), path=FOREIGN_METER),
        Case("no such meter", js({"ts": t, "value": 1.0}), path="no-such-meter"),
        Case("senml: another partner's meter", js([{"n": FOREIGN_METER, "v": 1.0}]), path="senml"),
        # limits
        Case("a batch over the limit", js([{"ts": t, "value": 1.0}] * 10_001)),
        Case("a payload over the limit", b"[" + b"1," * 600_000 + b"1]"),
        Case("an empty batch beside", js([ok5, []]), valid=((METER, ts5),)),
        Case(
            "a senml pack with a far-past t",
            js([{"n": METER, "t": -1e308, "v": 1.0}, s4]),
            valid=((METER, st4),),
        ),
    ]


CORPUS = corpus()


@pytest.mark.parametrize("who", [PARTNER, "admin"])
def test_hostile_corpus_never_breaks_http_ingestion(api_system: ApiSystem, who: str) -> None:
    failures: list[str] = []
    for case in CORPUS:
        if who == "admin" and case.valid:
            continue  # stored once is enough (the second time they are duplicates)
        before = last_rejection(api_system)
        try:
            answer = post(api_system, case.path, case.body, who)
            assert all(r in DOCUMENTED for r in answer.reasons), answer.reasons
            check_recorded(api_system, before, answer, who)
            if case.either:
                continue
            if not case.valid:
                assert answer.status == 422, answer
                continue
            pairs = list(case.valid)
            if whole_message_refused(answer):
                # a message the parser could not read at all is refused as one; then nothing
                # of it may be stored either
                assert not stored_readings(api_system, pairs), answer
            else:
                assert answer.status == 200 and answer.stored == len(pairs), answer
                assert stored_readings(api_system, pairs) == set(pairs), answer
        except AssertionError as exc:
            failures.append(f"{case.name}: {exc}")
    assert not failures, "\n".join(failures)


def test_a_partner_gets_404_for_another_partner_and_nothing_is_recorded(
    api_system: ApiSystem,
) -> None:
    before = last_rejection(api_system)
    for partner in (FOREIGN, "x%00y", "%FF"):
        response = httpx.post(
            f"{api_system.base_url}/api/v1/readings/{partner}/{METER}",
            headers=api_system.headers(PARTNER),
            content=b'{"ts": 1, "value": 1}',
            timeout=30,
        )
        assert response.status_code == 404, response.text
    assert last_rejection(api_system) == before


# -- what hypothesis makes up ----------------------------------------------------------------

HOSTILE_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["\u0000", "\ud800", "\udfff", "x\u0000y", "\u001b[0m", "\u202e", "'", '"', "\\"]
    ),
    st.text(alphabet=st.characters(exclude_categories=()), max_size=8),
)
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([5e-324, -0.0, 1e12, 1e13, 2**63, 2**64, -(2**63)]),
)


FINE = st.floats(0, 1e6)


def _timestamps(now: datetime) -> st.SearchStrategy[Any]:
    recent = st.integers(min_value=60, max_value=86_400 * 3).map(
        lambda s: (now - timedelta(seconds=s, microseconds=s % 997)).isoformat()
    )
    return st.one_of(
        recent,
        recent,
        recent,
        NUMBERS,
        HOSTILE_TEXT,
        st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
        st.sampled_from(
            [
                "0001-01-01T00:00:00+01:00",
                "9999-12-31T23:59:59-23:59",
                "2026-W40-1T00:00Z",
                "2026-10-01T00:00:00",
            ]
        ),
    )


def _payloads(now: datetime) -> st.SearchStrategy[bytes]:
    ts = _timestamps(now)
    units = st.one_of(
        st.none(), st.sampled_from(["t", "kg", "Mt", "MW", "MWh", "1/0", ""]), HOSTILE_TEXT, NUMBERS
    )
    reading = st.fixed_dictionaries(
        {"ts": ts, "value": st.one_of(FINE, FINE, NUMBERS, HOSTILE_TEXT, st.none())},
        optional={"unit": units},
    )
    meters = st.one_of(
        st.sampled_from([METER, RATE, FOREIGN_METER, "no-such-meter", "novo-"]),
        HOSTILE_TEXT,
        NUMBERS,
    )
    record = st.fixed_dictionaries(
        {"n": meters},
        optional={
            "bn": st.one_of(st.just(""), HOSTILE_TEXT, NUMBERS),
            "bt": NUMBERS,
            "t": st.one_of(NUMBERS, st.just(now.timestamp() - 120), HOSTILE_TEXT),
            "v": st.one_of(FINE, FINE, NUMBERS, HOSTILE_TEXT),
            "u": units,
        },
    )
    anything = st.recursive(
        st.one_of(st.none(), st.booleans(), NUMBERS, HOSTILE_TEXT),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(HOSTILE_TEXT, inner, max_size=4)
        ),
        max_leaves=20,
    )
    documents = st.one_of(
        reading, st.lists(reading, max_size=6), st.lists(record, min_size=1, max_size=6), anything
    )

    def encode(doc: Any) -> bytes:
        # json writes NaN/Infinity as the words devices send, and escapes surrogates
        return json.dumps(doc).encode()

    return st.one_of(documents.map(encode), documents.map(encode), st.binary(max_size=64))


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
)
@given(data=st.data())
def test_made_up_payloads_never_break_http_ingestion(
    api_system: ApiSystem, data: st.DataObject
) -> None:
    now = datetime.now(UTC)
    body = data.draw(_payloads(now), label="body")
    path = data.draw(
        st.sampled_from([METER, METER, RATE, "senml", FOREIGN_METER, "x%00y", "%ED%A0%80"]),
        label="path",
    )
    before = last_rejection(api_system)
    answer = post(api_system, path, body)
    assert all(r in DOCUMENTED for r in answer.reasons), answer
    check_recorded(api_system, before, answer, PARTNER)
    if answer.status == 422:
        assert answer.reasons
    else:  # every valid reading is stored, or was there before (the same or another value)
        conflicts = answer.reasons.count("conflict")
        assert answer.stored + answer.duplicates + conflicts == answer.readings, answer
    for message in answer.messages:
        assert "belongs to" not in message and "gyproc" not in message.replace(FOREIGN_METER, "")


# -- a partner's view of a rejection -------------------------------------------------------


def _swap(body: bytes, nonexistent: str, foreign: str) -> bytes:
    return body.replace(nonexistent.encode(), foreign.encode())


def test_a_foreign_meter_answers_as_an_unknown_one_over_http(api_system: ApiSystem) -> None:
    clock = Clock()
    nowhere = "nobody-gas-in"  # no meter of the network
    body = js({"ts": clock.next().isoformat(), "value": 1.0})
    foreign = post(api_system, FOREIGN_METER, body)
    missing = post(api_system, nowhere, body)
    assert foreign.status == missing.status == 422
    assert foreign.reasons == ["unknown_meter"]
    assert foreign.body == _swap(missing.body, nowhere, FOREIGN_METER)
    assert b"belongs" not in foreign.body and FOREIGN.encode() not in foreign.body.replace(
        FOREIGN_METER.encode(), b""
    )
    # in a SenML pack beside a valid record: the same answer, record by record
    t1, t2 = clock.next(), clock.next()
    pack = [{"n": METER, "t": t1.timestamp(), "v": 1.0}, {"n": FOREIGN_METER, "v": 1.0}]
    foreign = post(api_system, "senml", js(pack))
    pack = [{"n": METER, "t": t2.timestamp(), "v": 1.0}, {"n": nowhere, "v": 1.0}]
    missing = post(api_system, "senml", js(pack))
    assert foreign.status == missing.status == 200 and foreign.stored == 1
    assert foreign.messages == [f"records[1]: unknown meter '{FOREIGN_METER}'"]
    assert foreign.body == _swap(missing.body, nowhere, FOREIGN_METER)
    # an admin is told the truth
    admin = post(api_system, FOREIGN_METER, body, who="admin")
    assert admin.status == 422 and admin.reasons == ["wrong_partner"]
    assert f"belongs to '{FOREIGN}'" in admin.messages[0]


def _write_as_ingest(system: ApiSystem, messages: list[tuple[str, bytes]]) -> None:
    """Rejections written exactly as MQTT ingest writes them: its parser, its writer."""

    async def go() -> None:
        parser = Parser(NetworkIndex.from_network(system.network))
        writer = BatchWriter(asyncpg_dsn(system.database_url))
        now = datetime.now(UTC).timestamp()
        try:
            batch = [Message(parser.parse(topic, payload, now), now) for topic, payload in messages]
            await writer.write(batch, parser.index)
        finally:
            await writer.close()

    asyncio.run(go())


def test_a_foreign_meter_is_an_unknown_one_in_the_partners_rejections(
    api_system: ApiSystem,
) -> None:
    clock = Clock()
    nowhere = "nobody-gas-in"
    body = js({"ts": clock.next().isoformat(), "value": 1.0})
    t1, t2 = clock.next(), clock.next()
    senml_foreign = js(
        [{"n": METER, "t": t1.timestamp(), "v": 1.0}, {"n": FOREIGN_METER, "v": 1.0}]
    )
    senml_missing = js([{"n": METER, "t": t2.timestamp(), "v": 1.0}, {"n": nowhere, "v": 1.0}])
    before = last_rejection(api_system)
    _write_as_ingest(
        api_system,
        [
            (f"symbiont/readings/{OWN}/{FOREIGN_METER}", body),
            (f"symbiont/readings/{OWN}/{nowhere}", body),
            (f"symbiont/readings/{OWN}/senml", senml_foreign),
            (f"symbiont/readings/{OWN}/senml", senml_missing),
        ],
    )
    post(api_system, FOREIGN_METER, body)  # and over HTTP
    post(api_system, nowhere, body)

    def listed(who: str) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{api_system.base_url}/api/v1/rejections",
            headers=api_system.headers(who),
            params={"limit": 50},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        items = [i for i in response.json()["items"] if i["id"] > before]
        for item in items:
            del item["id"], item["received_at"]
        return items[::-1]  # oldest first

    mine = listed(PARTNER)
    assert len(mine) == 6, mine
    pairs = [(mine[0], mine[1]), (mine[2], mine[3]), (mine[4], mine[5])]
    for foreign, missing in pairs:
        assert foreign["reason"] == "unknown_meter" and foreign["meter"] is None
        shown = json.dumps(foreign, sort_keys=True)
        assert shown == json.dumps(missing, sort_keys=True).replace(nowhere, FOREIGN_METER)
        assert "belongs" not in shown and FOREIGN not in shown.replace(FOREIGN_METER, "")
    assert mine[2]["detail"] == f"records[1]: unknown meter '{FOREIGN_METER}'"
    # the foreign partner sees none of it; operators and admins see the truth
    assert all(
        i["topic"].startswith(f"symbiont/readings/{FOREIGN}/") for i in listed(f"partner:{FOREIGN}")
    )
    for who in ("operator", "admin"):
        truth = listed(who)
        assert [i["reason"] for i in truth] == ["wrong_partner", "unknown_meter"] * 3
        for item in truth[::2]:
            assert item["meter"] == FOREIGN_METER and f"belongs to '{FOREIGN}'" in item["detail"]
    stored = db(api_system, "SELECT reason FROM rejections WHERE id > $1 ORDER BY id", before)
    assert [r["reason"] for r in stored].count("wrong_partner") == 3


# -- parameters ------------------------------------------------------------------------------


def _previous_month() -> tuple[int, int]:
    day = datetime.now(UTC).replace(day=1) - timedelta(days=1)
    return day.year, day.month


FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")
ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


def test_months_are_ascii_digits(api_system: ApiSystem) -> None:
    year, month = _previous_month()
    good = f"{year:04d}-{month:02d}"
    headers = api_system.headers(PARTNER)
    url = f"{api_system.base_url}/api/v1/partners/{OWN}/statements"
    assert httpx.get(f"{url}/{good}", headers=headers, timeout=60).status_code == 200
    bad = [
        good.translate(FULL_WIDTH),
        f"{year:04d}".translate(FULL_WIDTH) + f"-{month:02d}",
        good.translate(ARABIC_INDIC),
        f"{year:04d}-+1",
        f"{year:04d}-%201",  # "2026- 1"
        f"{year:04d}-1_",
        f"{year:04d}-13",
        f"{year:04d}-00",
        f"{year:04d}-{month:02d}%0A",
    ]
    for text in bad:
        response = httpx.get(f"{url}/{text}", headers=headers, timeout=60)
        assert response.status_code == 422, (text, response.text)
        assert response.json()["detail"][0]["loc"] == ["path", "month"]
        issued = httpx.post(
            f"{api_system.base_url}/api/v1/statements/{text}/issue",
            headers=api_system.headers("admin"),
            timeout=60,
        )
        assert issued.status_code == 422, (text, issued.text)
    assert not db(api_system, "SELECT 1 FROM statements")  # nothing was issued


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/rejections", {"cursor": "１２"}),
        ("/api/v1/rejections", {"cursor": "١٢"}),
        ("/api/v1/alerts", {"cursor": "１２"}),
        ("/api/v1/reconciliations", {"cursor": "１２"}),
        ("/api/v1/rejections", {"limit": "１０"}),
        ("/api/v1/rejections", {"since": "２０２６-01-01T00:00:00Z"}),
        (f"/api/v1/meters/{METER}/readings", {"cursor": "２０２６-01-01T00:00:00+00:00"}),
        (f"/api/v1/meters/{METER}/readings", {"from": "0001-01-01T00:00:00+01:00"}),
        ("/api/v1/alerts/１２", {}),
        ("/api/v1/alerts", {"rule": "meter\u0000stale"}),
    ],
)
def test_parameters_are_ascii_strict_and_never_a_500(
    api_system: ApiSystem, path: str, params: dict[str, str]
) -> None:
    response = httpx.get(
        f"{api_system.base_url}{path}",
        headers=api_system.headers("admin"),
        params=params,
        timeout=60,
    )
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)


# -- the log line of a failed authentication ---------------------------------------------------


def test_a_failed_authentication_is_logged_with_method_path_and_client(
    api_system: ApiSystem, caplog: pytest.LogCaptureFixture
) -> None:
    token = "sym_1_" + "S" * 43
    caplog.set_level(logging.WARNING, logger="symbiont.api.auth")
    response = httpx.post(
        f"{api_system.base_url}/api/v1/readings/{OWN}/x%0Ay%00",
        headers={"Authorization": f"Bearer {token}"},
        content=b"{}",
        timeout=30,
    )
    assert response.status_code == 401
    records = [r for r in caplog.records if r.name == "symbiont.api.auth"]
    assert records, "no log record for the failed authentication"
    record = records[-1]
    line = JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["method"] == "POST" and doc["client"] == "127.0.0.1"
    assert doc["path"] == f"/api/v1/readings/{OWN}/x\ny\\x00"
    plain = record.getMessage()
    assert "POST" in plain and "127.0.0.1" in plain and f"/readings/{OWN}/" in plain
    assert "\n" not in plain  # the caller's newline cannot start a forged line
    for text in (line, plain):
        assert "S" * 10 not in text and "sym_" not in text


# -- a writer that fails ----------------------------------------------------------------------


MARK = 1313.0  # a reading of this value makes the writer below fail


def test_a_writer_failure_is_a_recorded_rejection_never_a_5xx(
    api_system: ApiSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the writer raises for a message of its own, the message is refused with a
    recorded ``invalid_format`` (and nothing of it stored); only a database that cannot be
    reached is a 503."""
    original = BatchWriter.write
    failure: list[BaseException] = [RuntimeError("a bug in the writer")]
    always = [False]

    async def write(self: BatchWriter, batch: Any, index: Any) -> Any:
        marked = any(v == MARK for m in batch for _, _, v in m.parsed.readings)
        if marked or always[0]:
            raise failure[0]
        return await original(self, batch, index)

    monkeypatch.setattr(BatchWriter, "write", write)
    clock = Clock()
    t1, t2 = clock.next(), clock.next()
    body = js([{"ts": t1.isoformat(), "value": MARK}, {"ts": t2.isoformat(), "value": 1.0}])
    before = last_rejection(api_system)
    answer = post(api_system, METER, body)
    assert answer.status == 422 and answer.reasons == ["invalid_format"], answer
    assert whole_message_refused(answer)
    check_recorded(api_system, before, answer, PARTNER)
    assert not stored_readings(api_system, [(METER, t1), (METER, t2)])
    # not even the rejection stores: still a 422, not a 5xx a device would retry for ever
    always[0] = True
    answer = post(api_system, METER, body)
    assert answer.status == 422 and answer.reasons == ["invalid_format"], answer
    # the database failing is a 503, to be retried
    failure[0] = ConnectionRefusedError("the database is down")
    response = httpx.post(
        f"{api_system.base_url}/api/v1/readings/{OWN}/{METER}",
        headers=api_system.headers(PARTNER),
        content=body,
        timeout=30,
    )
    assert response.status_code == 503 and response.headers.get("retry-after"), response.text
    always[0] = False
    failure[0] = RuntimeError("a bug in the writer")
    monkeypatch.undo()
    assert post(api_system, METER, body).status == 200  # and the writer works again


# -- a database that is down -------------------------------------------------------------------


@pytest.fixture
def small_system(
    private_postgres: PrivatePostgres, private_database_url: str
) -> Iterator[ApiSystem]:
    """The API over a database of its own on a cluster the test may stop."""
    net = load_network(REPO / "examples" / "kalundborg.yaml")
    now = datetime.now(UTC)
    system = ApiSystem(private_database_url, net, now, now)

    async def prepare() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(private_database_url))
        try:
            await apply_network(conn, net)
            system.tokens[PARTNER] = (await create_token(conn, "partner", OWN)).token
        finally:
            await conn.close()

    asyncio.run(prepare())
    system.serve()
    try:
        yield system
    finally:
        system.stop()
        if not private_postgres.running:
            private_postgres.start()


def test_a_database_outage_is_a_503_not_a_rejection(
    small_system: ApiSystem, private_postgres: PrivatePostgres
) -> None:
    url = f"{small_system.base_url}/api/v1/readings/{OWN}/{METER}"
    headers = small_system.headers(PARTNER)

    def send() -> httpx.Response:
        ts = datetime.now(UTC) - timedelta(minutes=1)
        return httpx.post(
            url, headers=headers, json={"ts": ts.isoformat(), "value": 1.0}, timeout=60
        )

    assert send().status_code == 200  # and the token is cached now
    private_postgres.stop()
    try:
        down = send()
        assert down.status_code == 503, down.text
        assert down.headers.get("retry-after")
    finally:
        private_postgres.start()
    for _ in range(20):  # the writer connects again on the next message
        again = send()
        if again.status_code == 200:
            break
        assert again.status_code == 503, again.text
        time.sleep(0.25)
    assert again.status_code == 200, again.text


REFUSED = 4242.25  # the CHECK constraint of the test below refuses readings of this value


def test_a_message_the_database_refuses_is_answered_with_its_recorded_rejection(
    api_system: ApiSystem,
) -> None:
    """A message PostgreSQL itself refuses (here a CHECK constraint the test adds) is
    isolated by the writer and answered as what was recorded: a 422 naming the refusal,
    not a 200 with nothing stored and no reason."""
    clock = Clock()
    db(api_system, f"ALTER TABLE readings ADD CONSTRAINT refused CHECK (value <> {REFUSED})")
    try:
        t1 = clock.next()
        before = last_rejection(api_system)
        answer = post(api_system, METER, js({"ts": t1.isoformat(), "value": REFUSED}))
        assert answer.status == 422 and answer.reasons == ["invalid_format"], answer
        assert "database refused" in answer.messages[0], answer
        check_recorded(api_system, before, answer, PARTNER)
        assert not stored_readings(api_system, [(METER, t1)])
    finally:
        db(api_system, "ALTER TABLE readings DROP CONSTRAINT refused")
    t2 = clock.next()
    assert post(api_system, METER, js({"ts": t2.isoformat(), "value": 1.5})).status == 200
    assert stored_readings(api_system, [(METER, t2)])
