"""Issuing statements against a real database: idempotent, immutable, delivered once, and
late data after issue becomes exactly one adjustment on the next statement."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from api_system import ApiSystem

from api.tokens import create_token
from cli.backfill import write_simulation
from cli.faults import parse_fault
from core.apply import apply_network
from core.db import asyncpg_dsn
from core.network import Network, load_network, parse_network
from core.settings import Settings
from rules.engine import Engine
from statements.document import verify_hash
from statements.issue import (
    IncompleteMonth,
    document_for,
    due_months,
    issue_month,
    issue_statements,
    render_pdf_for,
    stored,
)
from statements.pdf_pool import IssueTimings
from statements.revise import revise_statement

REPO = Path(__file__).resolve().parent.parent
NETWORK: dict[str, Any] = {
    "network": "billing",
    "name": "Billing park",
    "timezone": "Europe/Copenhagen",
    "partners": [
        {"id": "plant", "name": "Plant", "webhook": "https://erp.plant.example/hook"},
        {"id": "town", "name": "Town"},
    ],
    "meters": [
        {
            "id": "out",
            "partner": "plant",
            "kind": "heat",
            "reading": "total",
            "unit": "MWh",
            "uncertainty": 0.01,
            "interval": 300,
        },
        {
            "id": "in",
            "partner": "town",
            "kind": "heat",
            "reading": "rate",
            "unit": "MW",
            "uncertainty": 0.01,
            "interval": 300,
        },
    ],
    "exchanges": [
        {
            "id": "heat",
            "provider": "plant",
            "receiver": "town",
            "kind": "heat",
            "sent": ["out"],
            "received": ["in"],
            "loss": 0.05,
            "nominal": 4.0,
            "billing": "received",
            "terms": [
                {
                    "from": "2026-01-01",
                    "price": "30.00",
                    "receiver_avoided_cost": "45.00",
                    "receiver_avoided_co2": "0.2",
                }
            ],
        },
    ],
}

SEPT = datetime(2026, 8, 31, 22, tzinfo=UTC)  # 1 September, Copenhagen
OCT = datetime(2026, 9, 30, 22, tzinfo=UTC)
NOV = datetime(2026, 10, 31, 23, tzinfo=UTC)
ISSUE_SEPT = datetime(2026, 10, 5, tzinfo=UTC)
ISSUE_OCT = datetime(2026, 11, 5, tzinfo=UTC)


async def _setup(url: str) -> asyncpg.Connection:
    net = parse_network(NETWORK)
    conn: asyncpg.Connection = await asyncpg.connect(asyncpg_dsn(url))
    await apply_network(conn, net)
    await write_simulation(asyncpg_dsn(url), net, SEPT, NOV, seed=5)
    await Engine(Settings(database_url=url)).process_pending(conn, now=NOV)
    return conn


def test_issue_is_idempotent_immutable_and_adjusts_later(database_url: str) -> None:
    net = parse_network(NETWORK)

    async def go() -> None:
        conn = await _setup(database_url)
        try:
            first = await issue_month(conn, net, 2026, 9, ISSUE_SEPT)
            assert [(i.partner, i.new) for i in first] == [("plant", True), ("town", True)]
            again = await issue_month(conn, net, 2026, 9, ISSUE_SEPT)
            assert [i.new for i in again] == [False, False]
            assert [i.content_hash for i in again] == [i.content_hash for i in first]
            outbox = await conn.fetch("SELECT channel, target FROM outbox ORDER BY id")
            assert sorted((r["channel"], r["target"]) for r in outbox) == [
                ("mqtt", "symbiont/statements/plant"),
                ("mqtt", "symbiont/statements/town"),
                ("webhook", "https://erp.plant.example/hook"),
            ]
            row = await stored(conn, "town", "2026-09")
            assert row is not None
            doc = json.loads(row["document"])
            assert verify_hash(doc) and doc["content_hash"] == row["content_hash"]
            assert doc["status"] == "issued" and doc["month"] == "2026-09"
            # every path that could alter it is refused
            for sql in (
                "UPDATE statements SET content_hash = 'x'",
                "UPDATE statements SET document = replace(document, '2026', '2027')",
                "DELETE FROM statements",
                "TRUNCATE statements",
            ):
                with pytest.raises(asyncpg.IntegrityConstraintViolationError):
                    await conn.execute(sql)
            assert (await stored(conn, "town", "2026-09"))["document"] == row["document"]

            assert Decimal(doc["lines"][0]["billed"]) > 0

            # October issues with no adjustment while September's data is unchanged
            oct_issue = await issue_month(conn, net, 2026, 10, ISSUE_OCT)
            assert all(i.new for i in oct_issue)
            oct_doc = json.loads((await stored(conn, "town", "2026-10"))["document"])
            assert oct_doc["adjustments"] == []
        finally:
            await conn.close()

    asyncio.run(go())


def test_late_data_after_issue_is_one_adjustment(database_url: str) -> None:
    net = parse_network(NETWORK)
    gap_day = datetime(2026, 9, 14, 22, tzinfo=UTC)  # 15 September, local

    async def go() -> None:
        conn: asyncpg.Connection = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            await apply_network(conn, net)
            # September with the receiver meter's readings of the 15th held back
            from cli.faults import parse_fault

            withheld = parse_fault("gap:in@2026-09-14T22:00Z+1d", net)
            await write_simulation(
                asyncpg_dsn(database_url), net, SEPT, NOV, faults=[withheld], seed=5
            )
            engine = Engine(Settings(database_url=database_url))
            await engine.process_pending(conn, now=NOV)
            await issue_month(
                conn, net, 2026, 9, ISSUE_SEPT, accept_incomplete="receiver meter down on the 15th"
            )
            sept = json.loads((await stored(conn, "town", "2026-09"))["document"])
            # the held-back readings arrive late (the same simulation without the gap)
            await write_simulation(
                asyncpg_dsn(database_url),
                net,
                gap_day,
                datetime(2026, 9, 15, 22, tzinfo=UTC),
                seed=5,
            )
            await engine.process_pending(conn, now=NOV)
            await issue_month(conn, net, 2026, 10, ISSUE_OCT)
            oct_doc = json.loads((await stored(conn, "town", "2026-10"))["document"])
            adjustments = oct_doc["adjustments"]
            assert len(adjustments) == 1, adjustments
            adj = adjustments[0]
            assert adj["month"] == "2026-09" and adj["exchange"] == "heat"
            # the received rate is interpolated across the gap, so September's total moves by
            # what the interpolation got wrong; the adjustment is exactly the difference
            # between September recomputed now and September as issued
            again = await issue_month(conn, net, 2026, 10, ISSUE_OCT)
            assert [i.new for i in again] == [False, False]
            sept_now = Decimal(sept["lines"][0]["billed"]) + Decimal(adj["delta_quantity"])
            assert sept_now != Decimal(sept["lines"][0]["billed"])
            price = Decimal("30.00")
            assert Decimal(adj["delta_amount"]) == (
                (sept_now * price).quantize(Decimal("0.01")) - Decimal(sept["lines"][0]["amount"])
            )
        finally:
            await conn.close()

    asyncio.run(go())


def test_statements_are_issued_automatically_after_the_grace_period(database_url: str) -> None:
    net = parse_network(NETWORK)

    async def go() -> None:
        conn = await _setup(database_url)
        try:
            engine = Engine(Settings(database_url=database_url, statement_grace="3d"))
            early = await issue_statements(engine, conn, datetime(2026, 11, 2, 12, tzinfo=UTC))
            assert early == 0
            assert await conn.fetchval("SELECT count(*) FROM statements") == 0
            late = await issue_statements(engine, conn, datetime(2026, 11, 4, tzinfo=UTC))
            assert late == len(net.partners)
            months = await conn.fetch("SELECT DISTINCT month FROM statements")
            assert [r["month"] for r in months] == ["2026-10"]
            again = await issue_statements(engine, conn, datetime(2026, 11, 4, 1, tzinfo=UTC))
            assert again == 0
        finally:
            await conn.close()

    asyncio.run(go())


def test_automatic_issue_waits_for_the_months_pending_windows(database_url: str) -> None:
    """Readings of the month still waiting to be reconciled (a backfill in progress, an
    outage) hold the automatic issue back; it happens once they are processed."""
    net = parse_network(NETWORK)

    async def go() -> None:
        conn = await _setup(database_url)
        try:
            meter = net.exchanges[0].received[0]
            await conn.execute(
                "INSERT INTO dirty_windows (meter_id, window_start) VALUES ($1, $2)",
                meter,
                datetime(2026, 10, 20, 10, tzinfo=UTC),
            )
            engine = Engine(Settings(database_url=database_url, statement_grace="3d"))
            late = datetime(2026, 11, 4, tzinfo=UTC)
            assert await issue_statements(engine, conn, late) == 0
            await engine.process_pending(conn, now=NOV)
            assert await issue_statements(engine, conn, late) == len(net.partners)
        finally:
            await conn.close()

    asyncio.run(go())


@pytest.mark.parametrize("workers", [0, 2])
def test_pdfs_rendered_in_workers_are_the_bytes_rendered_here(
    database_url: str, workers: int
) -> None:
    """Whether issue_month renders the PDFs in worker processes or in a thread, the stored
    PDF is byte for byte the one this process renders from the stored document."""
    net = parse_network(NETWORK)

    async def go() -> None:
        conn = await _setup(database_url)
        try:
            timings = IssueTimings()
            issued = await issue_month(
                conn, net, 2026, 9, ISSUE_SEPT, workers=workers, timings=timings
            )
            assert [i.new for i in issued] == [True, True]
            assert timings.workers == workers and timings.pdfs == 2
            assert timings.pdf > 0 and timings.compute > 0 and timings.store > 0
            for partner in ("plant", "town"):
                row = await stored(conn, partner, "2026-09")
                assert row is not None
                doc = json.loads(row["document"])
                assert bytes(row["pdf"]) == await render_pdf_for(conn, net, doc)
        finally:
            await conn.close()

    asyncio.run(go())


# --------------------------------------------------------- held months, revisions, numbers

GAP_START = datetime(2026, 9, 10, 22, tzinfo=UTC)  # 11 September, local
GAP_END = datetime(2026, 9, 20, 22, tzinfo=UTC)  # ten days later
DUE_SEPT = datetime(2026, 10, 5, tzinfo=UTC)  # September's grace period (3 days) is over


async def _short_september(url: str, net: Network) -> tuple[asyncpg.Connection, Engine]:
    """September and October simulated, with the receiver meter's readings of ten days of
    September missing (its gateway offline), processed."""
    conn: asyncpg.Connection = await asyncpg.connect(asyncpg_dsn(url))
    await apply_network(conn, net)
    gap = parse_fault(f"gap:in@{GAP_START.isoformat()}+10d", net)
    await write_simulation(asyncpg_dsn(url), net, SEPT, NOV, faults=[gap], seed=5)
    engine = Engine(Settings(database_url=url, statement_grace="3d"))
    await engine.process_pending(conn, now=NOV)
    return conn, engine


async def _late_data_arrives(url: str, net: Network, conn: asyncpg.Connection) -> None:
    """The ten missing days arrive (the same simulation without the gap) and are processed."""
    await write_simulation(asyncpg_dsn(url), net, GAP_START, GAP_END, seed=5)
    await Engine(Settings(database_url=url)).process_pending(conn, now=NOV)


async def _documents(conn: asyncpg.Connection, month: str) -> dict[str, dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT DISTINCT ON (partner_id) partner_id, document FROM statements WHERE month = $1"
        " ORDER BY partner_id, revision DESC",
        month,
    )
    return {r["partner_id"]: json.loads(r["document"]) for r in rows}


def test_a_month_short_of_data_is_held_until_its_data_arrives(database_url: str) -> None:
    """Ten days of September missing: the automatic issue holds it with a statement_held
    alert per partner naming the line short of data, the statement shows `held`, and it is
    issued (complete) and the alert resolved once the data has arrived and is reconciled."""
    net = parse_network(NETWORK)

    async def go() -> None:
        conn, engine = await _short_september(database_url, net)
        try:
            assert await issue_statements(engine, conn, DUE_SEPT) == 0
            assert await conn.fetchval("SELECT count(*) FROM statements") == 0
            alerts = {
                r["subject"]: r
                for r in await conn.fetch(
                    "SELECT * FROM alerts WHERE rule = 'statement_held' AND status = 'firing'"
                )
            }
            assert set(alerts) == {"plant", "town"}
            town = alerts["town"]
            assert town["fingerprint"] == "statement_held:town:2026-09"
            assert town["subject_kind"] == "partner" and town["severity"] == "warning"
            details = json.loads(town["details"])
            assert details["month"] == "2026-09" and details["min_coverage"] == 0.99
            (line,) = details["lines"]
            assert line["exchange"] == "heat" and line["role"] == "receiver"
            assert 0.6 < line["coverage"] < 0.7  # 20 of 30 days
            assert "town" in town["summary"] and "September 2026" in town["summary"]
            assert "heat 6" in town["summary"]

            # a minute later: still held, the same alert (no duplicate)
            again = DUE_SEPT + timedelta(minutes=1)
            assert await issue_statements(engine, conn, again) == 0
            assert await conn.fetchval(
                "SELECT count(*) FROM alerts WHERE rule = 'statement_held'"
            ) == len(alerts)

            # what a partner sees meanwhile: the draft, with the status `held`
            doc, csv, pdf = await document_for(conn, net, "town", "2026-09", again, grace="3d")
            assert doc["status"] == "held" and csv is None and pdf is None
            assert verify_hash(doc)
            # and before the month falls due it is a draft
            early = datetime(2026, 10, 2, tzinfo=UTC)
            doc, _, _ = await document_for(conn, net, "town", "2026-09", early, grace="3d")
            assert doc["status"] == "draft"
            assert await due_months(conn, net, ["town"], early, "3d") == {"town": []}

            # issuing on command refuses it too, naming the line
            with pytest.raises(IncompleteMonth) as refused:
                await issue_month(conn, net, 2026, 9, again)
            assert [(h.partner, [s.exchange for s in h.short]) for h in refused.value.held] == [
                ("plant", ["heat"]),
                ("town", ["heat"]),
            ]
            assert "heat (receiver) coverage 6" in str(refused.value)

            # the data arrives: held while its windows wait to be reconciled, then issued
            await write_simulation(asyncpg_dsn(database_url), net, GAP_START, GAP_END, seed=5)
            later = DUE_SEPT + timedelta(hours=2)
            assert await issue_statements(engine, conn, later) == 0
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM alerts WHERE status = 'firing'"
                    " AND rule = 'statement_held'"
                )
                == 2
            )
            await engine.process_pending(conn, now=NOV)
            assert await issue_statements(engine, conn, later) == 2
            docs = await _documents(conn, "2026-09")
            for doc in docs.values():
                assert doc["status"] == "issued" and doc["incomplete_reason"] is None
                assert all(Decimal(ln["coverage"]) >= Decimal("0.99") for ln in doc["lines"])
                assert all(Decimal(ln["amount"]) > 0 for ln in doc["lines"])
            resolved = await conn.fetch(
                "SELECT status, resolved_at FROM alerts WHERE rule = 'statement_held'"
            )
            assert [(r["status"], r["resolved_at"]) for r in resolved] == [
                ("resolved", later),
                ("resolved", later),
            ]
            assert await issue_statements(engine, conn, later + timedelta(minutes=1)) == 0
        finally:
            await conn.close()

    asyncio.run(go())


def test_a_held_month_stays_due_after_the_next_month_is_issued(database_url: str) -> None:
    """A month held for its data is still issued by itself when its data arrives after the
    following month was issued, and the following month's adjustments are not counted
    twice."""
    net = parse_network(NETWORK)

    async def go() -> None:
        conn, engine = await _short_september(database_url, net)
        try:
            assert await issue_statements(engine, conn, DUE_SEPT) == 0
            # October is complete and issued on time; September still waits
            assert await issue_statements(engine, conn, ISSUE_OCT) == 2
            oct_docs = await _documents(conn, "2026-10")
            assert all(d["adjustments"] == [] for d in oct_docs.values())
            # September stays due (its alert keeps firing) after October is issued
            assert await due_months(conn, net, ["plant", "town"], ISSUE_OCT, "3d") == {
                "plant": ["2026-09"],
                "town": ["2026-09"],
            }
            await _late_data_arrives(database_url, net, conn)
            assert await issue_statements(engine, conn, ISSUE_OCT + timedelta(hours=1)) == 2
            sept = await _documents(conn, "2026-09")
            assert all(
                Decimal(ln["coverage"]) >= Decimal("0.99")
                for d in sept.values()
                for ln in d["lines"]
            )
            assert sept["town"]["adjustments"] == []
            assert not await conn.fetchval(
                "SELECT count(*) FROM alerts WHERE rule = 'statement_held' AND status = 'firing'"
            )
            assert await due_months(conn, net, ["town"], ISSUE_OCT, "3d") == {"town": []}
        finally:
            await conn.close()

    asyncio.run(go())


def test_a_revision_is_immutable_hash_chained_and_replaces_the_month(database_url: str) -> None:
    """September issued on incomplete data (accepted, with its reason), then revised once
    the data arrived: revision 2 is immutable, names revision 1's content hash, is delivered
    once, listed by the API with revision 1, is what the statement route returns, and the
    next month's adjustments compare against it (so its change is not billed twice)."""
    net = parse_network(NETWORK)
    reason = "gateway at the town substation offline 11-20 September"
    system = ApiSystem(database_url, net, SEPT, NOV)

    async def go() -> None:
        conn, _ = await _short_september(database_url, net)
        try:
            first = await issue_month(conn, net, 2026, 9, ISSUE_SEPT, accept_incomplete=reason)
            assert [(i.partner, i.new, i.incomplete_reason) for i in first] == [
                ("plant", True, reason),
                ("town", True, reason),
            ]
            one = await stored(conn, "town", "2026-09")
            assert one is not None and one["revision"] == 1
            doc1 = json.loads(one["document"])
            assert doc1["incomplete_reason"] == reason and doc1["revision"] == 1
            assert doc1["previous_hash"] is None and doc1["supersedes"] is None
            assert Decimal(doc1["lines"][0]["coverage"]) < Decimal("0.7")

            # nothing changed yet: nothing to revise (and the data is still incomplete)
            with pytest.raises(IncompleteMonth):
                await revise_statement(conn, net, "town", 2026, 9, ISSUE_SEPT, "again")
            await _late_data_arrives(database_url, net, conn)
            with pytest.raises(ValueError, match="needs a reason"):
                await revise_statement(conn, net, "town", 2026, 9, ISSUE_SEPT, "  ")
            with pytest.raises(ValueError, match="not issued"):
                await revise_statement(conn, net, "town", 2026, 10, ISSUE_OCT, "why")

            revised_at = datetime(2026, 10, 20, tzinfo=UTC)
            two = await revise_statement(
                conn, net, "town", 2026, 9, revised_at, "meter data of 11-20 September arrived"
            )
            assert (two.revision, two.new, two.incomplete_reason) == (2, True, None)
            row = await stored(conn, "town", "2026-09")
            assert row is not None and row["revision"] == 2 and row["id"] != one["id"]
            doc2 = json.loads(row["document"])
            assert verify_hash(doc2) and doc2["content_hash"] == row["content_hash"]
            assert doc2["status"] == "issued" and doc2["revision"] == 2
            assert doc2["previous_hash"] == one["content_hash"] == doc1["content_hash"]
            assert doc2["supersedes"] == {"revision": 1, "document_number": one["document_number"]}
            assert doc2["revision_reason"] == "meter data of 11-20 September arrived"
            assert doc2["incomplete_reason"] is None
            assert Decimal(doc2["lines"][0]["coverage"]) >= Decimal("0.99")
            assert Decimal(doc2["lines"][0]["billed"]) > Decimal(doc1["lines"][0]["billed"])
            assert row["reason"] == doc2["revision_reason"]
            assert row["previous_hash"] == one["content_hash"]
            assert (await stored(conn, "town", "2026-09", 1))["document"] == one["document"]

            # both revisions are immutable; the chain cannot be forked or broken
            for sql in (
                "UPDATE statements SET reason = 'x' WHERE revision = 2",
                "UPDATE statements SET previous_hash = content_hash WHERE revision = 2",
                "DELETE FROM statements WHERE revision = 2",
                "DELETE FROM statements WHERE revision = 1",
            ):
                with pytest.raises(asyncpg.IntegrityConstraintViolationError):
                    await conn.execute(sql)
            for revision, previous in ((3, "0" * 64), (2, one["content_hash"])):
                with pytest.raises(asyncpg.IntegrityConstraintViolationError):
                    await conn.execute(
                        "INSERT INTO statements (partner_id, month, revision, issued_at,"
                        " document, content_hash, csv, pdf, reason, previous_hash)"
                        " VALUES ('town', '2026-09', $1, now(), '{}', 'x', '', '', 'forged', $2)",
                        revision,
                        previous,
                    )

            # delivered like an issue, once: its own outbox rows
            outbox = await conn.fetch(
                "SELECT channel, target, payload FROM outbox WHERE event_key = $1",
                f"statement-{row['id']}",
            )
            assert [(r["channel"], r["target"]) for r in outbox] == [
                ("mqtt", "symbiont/statements/town")
            ]
            notice = json.loads(outbox[0]["payload"])
            assert notice["event"] == "statement.revised" and notice["revision"] == 2
            assert notice["previous_hash"] == one["content_hash"]
            with pytest.raises(ValueError, match="nothing to revise"):
                await revise_statement(conn, net, "town", 2026, 9, revised_at, "twice")
            assert await conn.fetchval("SELECT count(*) FROM statements") == 3

            # October compares September against revision 2 for the town (no adjustment),
            # against revision 1 for the plant (the arrived data is its adjustment)
            await issue_month(conn, net, 2026, 10, ISSUE_OCT)
            octs = await _documents(conn, "2026-10")
            assert octs["town"]["adjustments"] == []
            (adj,) = octs["plant"]["adjustments"]
            assert adj["month"] == "2026-09" and Decimal(adj["delta_quantity"]) > 0
            # and September cannot be revised for the plant now: October carries its change
            with pytest.raises(ValueError, match="would bill them twice"):
                await revise_statement(conn, net, "plant", 2026, 9, ISSUE_OCT, "late data")

            for role in ("admin",):
                system.tokens[role] = (await create_token(conn, role, name="test")).token
            for partner in ("town", "plant"):
                made = await create_token(conn, "partner", partner, name="test")
                system.tokens[f"partner:{partner}"] = made.token
        finally:
            await conn.close()

    asyncio.run(go())
    system.serve()
    try:
        town = system.headers("partner:town")
        base = f"{system.base_url}/api/v1/partners/town/statements"
        listed = httpx.get(f"{base}/2026-09/revisions", headers=town).json()
        assert listed["partner"] == "town" and listed["month"] == "2026-09"
        items = listed["items"]
        assert [i["revision"] for i in items] == [1, 2]
        assert items[0]["reason"] is None and items[0]["previous_hash"] is None
        assert items[0]["incomplete_reason"] == reason
        assert items[1]["reason"] == "meter data of 11-20 September arrived"
        assert items[1]["previous_hash"] == items[0]["content_hash"]
        assert all(i["document_number"] and i["issued_at"] for i in items)
        latest = httpx.get(f"{base}/2026-09", headers=town).json()
        assert latest["revision"] == 2 and latest["content_hash"] == items[1]["content_hash"]
        older = httpx.get(f"{base}/2026-09", params={"revision": 1}, headers=town).json()
        assert older["content_hash"] == items[0]["content_hash"]
        assert httpx.get(f"{base}/2026-09", params={"revision": 3}, headers=town).status_code == 404
        months = {i["month"]: i for i in httpx.get(base, headers=town).json()["items"]}
        assert months["2026-09"]["revision"] == 2 and months["2026-09"]["status"] == "issued"
        # partner scope: another partner's revisions are not found
        plant = system.headers("partner:plant")
        assert httpx.get(f"{base}/2026-09/revisions", headers=plant).status_code == 404
        assert httpx.get(f"{base}/2026-13/revisions", headers=town).status_code == 422
    finally:
        system.stop()


def test_document_numbers_are_unique_and_sequential(database_url: str) -> None:
    """Each issued statement and revision gets the next number of its network and year of
    issue, without gaps or duplicates, also with two issuers at once."""
    net = parse_network(NETWORK)

    async def go() -> None:
        conn = await _setup(database_url)
        other = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            # two issuers of September and two of October at the same time
            results = await asyncio.gather(
                issue_month(conn, net, 2026, 9, ISSUE_SEPT, workers=0),
                issue_month(other, net, 2026, 9, ISSUE_SEPT, workers=0),
            )
            assert sorted(i.new for r in results for i in r) == [False, False, True, True]
            numbers = await conn.fetch(
                "SELECT document_number, document FROM statements ORDER BY id"
            )
            assert [r["document_number"] for r in numbers] == [
                "billing-2026-00001",
                "billing-2026-00002",
            ]
            for r in numbers:
                assert json.loads(r["document"])["document_number"] == r["document_number"]
            third = await asyncpg.connect(asyncpg_dsn(database_url))
            try:
                oct_at = datetime(2026, 12, 31, 22, 59, tzinfo=UTC)  # 31 Dec, 23:59 local
                await asyncio.gather(
                    issue_month(other, net, 2026, 10, oct_at, workers=0),
                    issue_month(third, net, 2026, 10, oct_at, workers=0),
                )
            finally:
                await third.close()
            # the year of issue is the network's: 1 January 2027 local starts a new sequence
            with pytest.raises(IncompleteMonth):  # November has no data: nothing is issued
                await issue_month(conn, net, 2026, 11, datetime(2026, 12, 31, 23, tzinfo=UTC))
            rows = await conn.fetch("SELECT document_number FROM statements ORDER BY id")
            assert [r["document_number"] for r in rows] == [
                f"billing-2026-{n:05d}" for n in range(1, 5)
            ]
            await issue_month(
                conn, net, 2026, 11, datetime(2026, 12, 31, 23, tzinfo=UTC), accept_incomplete="x"
            )
            rows = await conn.fetch(
                "SELECT document_number FROM statements WHERE month = '2026-11' ORDER BY id"
            )
            assert [r["document_number"] for r in rows] == [
                "billing-2027-00001",
                "billing-2027-00002",
            ]
        finally:
            await other.close()
            await conn.close()

    asyncio.run(go())


def test_trucked_lines_without_their_tickets_are_short_of_data(database_url: str) -> None:
    """A trucked exchange's coverage counts time alone (a day without a truck is complete),
    so a month without any ticket is held like an hourly line short of data; a month with
    its tickets is issued."""
    net = load_network(REPO / "examples" / "small.yaml")
    mid_sept = datetime(2026, 9, 15, 22, tzinfo=UTC)  # 16 September, local

    async def go() -> None:
        conn: asyncpg.Connection = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            await apply_network(conn, net)
            # the weighbridges' history begins in mid-September; the heat meters have no data
            heat_off = [
                parse_fault(f"gap:{m.id}@{SEPT.isoformat()}+80d", net)
                for m in net.meters
                if m.reading.value != "delta"
            ]
            await write_simulation(
                asyncpg_dsn(database_url), net, mid_sept, NOV, faults=heat_off, seed=2
            )
            await Engine(Settings(database_url=database_url)).process_pending(conn, now=NOV)

            with pytest.raises(IncompleteMonth) as aug:
                await issue_month(conn, net, 2026, 8, ISSUE_SEPT)
            boards = {h.partner: h for h in aug.value.held}["boards"]
            assert boards.describe() == "gypsum-plant-boards (receiver) no data in the month"

            # October has its tickets: the boards factory's statement is issued (the plant's
            # and the town's heat line has no data: they are held)
            with pytest.raises(IncompleteMonth) as october:
                await issue_month(conn, net, 2026, 10, ISSUE_OCT)
            assert [i.partner for i in october.value.issued] == ["boards"]
            assert sorted(h.partner for h in october.value.held) == ["plant", "town"]
        finally:
            await conn.close()

    asyncio.run(go())
