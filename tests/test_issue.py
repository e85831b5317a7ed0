"""Issuing statements against a real database: idempotent, immutable, delivered once, and
late data after issue becomes exactly one adjustment on the next statement."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from core.apply import apply_network
from core.db import asyncpg_dsn
from core.network import parse_network
from core.settings import Settings
from rules.backfill import write_simulation
from rules.engine import Engine
from rules.issue import IssueTimings, issue_month, render_pdf_for, stored
from rules.render import verify_hash

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
            from core.simulate import parse_fault

            withheld = parse_fault("gap:in@2026-09-14T22:00Z+1d", net)
            await write_simulation(
                asyncpg_dsn(database_url), net, SEPT, NOV, faults=[withheld], seed=5
            )
            engine = Engine(Settings(database_url=database_url))
            await engine.process_pending(conn, now=NOV)
            await issue_month(conn, net, 2026, 9, ISSUE_SEPT)
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
            early = await engine.issue_statements(conn, datetime(2026, 11, 2, 12, tzinfo=UTC))
            assert early == 0
            assert await conn.fetchval("SELECT count(*) FROM statements") == 0
            late = await engine.issue_statements(conn, datetime(2026, 11, 4, tzinfo=UTC))
            assert late == len(net.partners)
            months = await conn.fetch("SELECT DISTINCT month FROM statements")
            assert [r["month"] for r in months] == ["2026-10"]
            again = await engine.issue_statements(conn, datetime(2026, 11, 4, 1, tzinfo=UTC))
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
            assert await engine.issue_statements(conn, late) == 0
            await engine.process_pending(conn, now=NOV)
            assert await engine.issue_statements(conn, late) == len(net.partners)
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
