"""Operations: migrations (from empty, down and up, from the previous release's schema),
retention of raw readings, metrics and JSON logs of the services."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pytest
from ingest_helpers import symbiont_command
from pydantic import ValidationError
from services import create_database, drop_database, free_port

from api.tokens import create_token, verify_token
from core.apply import apply_network
from core.db import asyncpg_dsn, current_revision, downgrade, upgrade
from core.network import load_network
from core.settings import Settings
from rules.retention import prune

REPO = Path(__file__).resolve().parent.parent
PREVIOUS_RELEASE = "0003"  # the schema before API tokens


@pytest.fixture
def empty_database_url(postgres_admin_url: str) -> str:
    name = f"symbiont_mig_{os.getpid()}_{time.monotonic_ns() % 10**8}"
    url = create_database(postgres_admin_url, name)
    yield url  # type: ignore[misc]
    drop_database(postgres_admin_url, name)


def _tables(url: str) -> set[str]:
    async def go() -> set[str]:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return {r["tablename"] for r in rows}
        finally:
            await conn.close()

    return asyncio.run(go())


def test_migrations_from_empty_down_and_up_again(empty_database_url: str) -> None:
    url = empty_database_url
    upgrade(url)
    head = current_revision(url)
    tables = _tables(url)
    assert {"readings", "exchange_windows", "statements", "api_tokens"} <= tables
    downgrade(url, "base")
    assert current_revision(url) is None or _tables(url) <= {"alembic_version"}
    upgrade(url)
    assert current_revision(url) == head
    assert _tables(url) == tables


def test_upgrade_from_the_previous_release_keeps_data(empty_database_url: str) -> None:
    url = empty_database_url
    upgrade(url, PREVIOUS_RELEASE)
    net = load_network(REPO / "examples" / "kalundborg.yaml")
    ts = datetime(2026, 10, 1, 12, tzinfo=UTC)

    async def fill() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            await apply_network(conn, net)
            await conn.execute("SELECT symbiont_ensure_partition($1)", ts)
            await conn.execute(
                "INSERT INTO readings (meter_id, ts, value) VALUES ('novo-steam-in', $1, 12.5)", ts
            )
        finally:
            await conn.close()

    asyncio.run(fill())
    upgrade(url)

    async def check() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            value = await conn.fetchval(
                "SELECT value FROM readings WHERE meter_id = 'novo-steam-in' AND ts = $1", ts
            )
            assert value == 12.5
            assert await conn.fetchval("SELECT count(*) FROM partners") == len(net.partners)
            created = await create_token(conn, "partner", "novo")
            principal = await verify_token(conn, created.token)
            assert principal is not None and principal.partner == "novo"
        finally:
            await conn.close()

    asyncio.run(check())


def test_retention_drops_old_reading_partitions_and_keeps_results(database_url: str) -> None:
    now = datetime(2026, 11, 23, tzinfo=UTC)
    old = datetime(2025, 6, 15, tzinfo=UTC)
    recent = datetime(2026, 10, 15, tzinfo=UTC)

    async def go() -> tuple[list[str], float | None, float | None, int]:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            for at in (old, recent):
                await conn.execute("SELECT symbiont_ensure_partition($1)", at)
                await conn.execute(
                    "INSERT INTO readings (meter_id, ts, value) VALUES ('m', $1, 1.0)", at
                )
                await conn.execute(
                    "INSERT INTO exchange_windows (exchange_id, window_start, window_end, loss,"
                    " coverage, status) VALUES ('x', $1, $2, 0, 1, 'ok')",
                    at,
                    at + timedelta(hours=1),
                )
            pruned = await prune(conn, 400, now, backfill_days=365)
            kept_old = await conn.fetchval("SELECT count(*) FROM readings WHERE ts = $1", old)
            kept_recent = await conn.fetchval("SELECT value FROM readings WHERE ts = $1", recent)
            windows = await conn.fetchval("SELECT count(*) FROM exchange_windows")
            return pruned.partitions, kept_old, kept_recent, windows
        finally:
            await conn.close()

    partitions, kept_old, kept_recent, windows = asyncio.run(go())
    assert partitions == ["readings_2025_06"]
    assert kept_old == 0 and kept_recent == 1.0
    assert windows == 2  # window results are kept


def test_retention_shorter_than_the_backfill_horizon_is_refused() -> None:
    with pytest.raises(ValidationError, match="RETENTION_DAYS"):
        Settings(backfill_days=400, readings_retention_days=100)
    Settings(backfill_days=400, readings_retention_days=500)


def test_rules_worker_serves_metrics_and_logs_json(database_url: str) -> None:
    port = free_port()
    env = {
        **os.environ,
        "SYMBIONT_DATABASE_URL": database_url,
        "SYMBIONT_METRICS_PORT": str(port),
        "SYMBIONT_LOG_JSON": "true",
    }
    proc = subprocess.Popen(
        [*symbiont_command(), "rules"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        text = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                time.sleep(0.3)
                continue
            if "symbiont_rules_pass_seconds_count" in text:
                break
            time.sleep(0.3)
        assert "symbiont_rules_pass_seconds_count" in text
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    lines = [line for line in out.decode().splitlines() if line.strip()]
    assert lines, "the rules worker logged nothing"
    records = [json.loads(line) for line in lines]  # every line is a JSON object
    assert any("started" in str(r.get("message", r.get("msg", ""))) for r in records)
