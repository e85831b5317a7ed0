"""The dashboard's views in a real browser (Playwright driving Debian's Chromium), and the API
behind them: the live view, the meters, the network reconciliation and a partner's page.

The system: the Kalundborg example with 30 hours of simulated readings up to the present
minute (a leak on ``LEAKING``), the rules engine run once, and one meter made stale: the
provider's meter of ``STALE_EXCHANGE`` (``forsyning``'s, a counterparty of the partner
``OWN``) has sent nothing for the last 20 minutes and its ``meter_stale`` alert fires.  Every
other meter is allowed an hour of silence, so that the views stay as built for as long as the
tests run.  The browser runs in another time zone than the network's, so a time shown in the
browser's zone would be seen.

Screenshots of each view go to ``$SYMBIONT_SCREENSHOTS`` (else a temporary directory);
``scripts/screenshots.sh`` sets it to docs/images for the README's picture.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from api_system import FOREIGN, LEAKING, OWN, REPO, ApiSystem
from playwright.sync_api import Browser, Page, expect, sync_playwright
from services import create_database, drop_database
from test_dashboard import TIMEOUT_MS, _chromium

from api.live import Subscriber, exchange_view
from api.state import NetworkCache
from api.tokens import Principal, Role, create_token
from cli.backfill import write_simulation
from cli.faults import parse_fault
from core.apply import apply_network
from core.db import asyncpg_dsn
from core.network import load_network
from core.rule_settings import StaleConfig
from core.settings import Settings
from core.windows import local_text
from rules import lifecycle
from rules.alerts import Rule, evaluate_stale
from rules.engine import Engine

STALE_EXCHANGE = "water-forsyning-novo"  # OWN receives it from forsyning
STALE = "forsyning-water-novo"  # its provider-side meter: forsyning's, not OWN's
SILENT = timedelta(minutes=20)
BROWSER_ZONE = "America/New_York"  # not the network's: a time in the browser's zone shows
STALE_COLOUR = "#7e57c2"  # live.js CONDITION_COLOURS.stale
HOURS = 30


def _screens() -> Path:
    path = Path(os.environ.get("SYMBIONT_SCREENSHOTS") or Path(tempfile.gettempdir()) / "symbiont")
    if not path.is_absolute():
        path = REPO / path
    path.mkdir(parents=True, exist_ok=True)
    return path


async def _prepare(system: ApiSystem) -> None:
    dsn = asyncpg_dsn(system.database_url)
    conn = await asyncpg.connect(dsn)
    try:
        net = system.network
        await apply_network(conn, net)
        fault = parse_fault(f"leak:{LEAKING}:25%@{system.start.isoformat()}", net)
        await write_simulation(dsn, net, system.start, system.end, faults=[fault], seed=5)
        # STALE goes silent: its last readings are gone (as if never sent)
        await conn.execute(
            "DELETE FROM readings WHERE meter_id = $1 AND ts > $2", STALE, system.end - SILENT
        )
        await Engine(Settings(database_url=system.database_url)).process_pending(
            conn, now=system.end
        )
        last = await conn.fetchval("SELECT max(ts) FROM readings WHERE meter_id = $1", STALE)
        verdict = evaluate_stale(STALE, last, 60, system.end, StaleConfig())
        assert verdict.decision == "fire", verdict
        async with conn.transaction():
            await lifecycle.apply_verdict(
                conn, lifecycle.Subject(Rule.meter_stale, STALE, "meter"), verdict, system.end
            )
        for role in ("admin", "operator", "integration"):
            system.tokens[role] = (await create_token(conn, role, name=f"test {role}")).token
        for partner in (OWN, FOREIGN):
            created = await create_token(conn, "partner", partner, name=f"test {partner}")
            system.tokens[f"partner:{partner}"] = created.token
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def system(postgres_admin_url: str, database_template: str) -> Iterator[ApiSystem]:
    name = f"symbiont_views_{os.urandom(6).hex()}"
    url = create_database(postgres_admin_url, name, template=database_template)
    try:
        net = load_network(REPO / "examples" / "kalundborg.yaml")
        # an hour of silence allowed to every meter read at intervals but STALE: the views
        # stay as built
        patient = {"meter_stale": {"after_s": 3600}}
        rules = {m.id: patient for m in net.meters if m.id != STALE and m.interval}
        net = net.model_copy(update={"meter_rules": rules})
        end = datetime.now(UTC).replace(microsecond=0)
        built = ApiSystem(url, net, end - timedelta(hours=HOURS), end)
        asyncio.run(_prepare(built))
        built.serve()
        try:
            yield built
        finally:
            built.stop()
    finally:
        drop_database(postgres_admin_url, name)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Any]:
    contexts = []
    errors: list[str] = []

    def make(width: int = 1440, height: int = 1000) -> Page:
        ctx = browser.new_context(
            viewport={"width": width, "height": height},
            timezone_id=BROWSER_ZONE,
            locale="en-US",
        )
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on(
            "console",
            lambda msg: errors.append(msg.text) if msg.type == "error" else None,
        )
        return page

    yield make
    for ctx in contexts:
        ctx.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def _sign_in(page: Page, system: ApiSystem, who: str, view: str = "") -> None:
    page.goto(system.base_url + "/" + (f"#{view}" if view else ""))
    page.fill("#token-input", system.tokens[who])
    page.click("#signin-button")
    page.wait_for_function("window.symbiont && window.symbiont.ready === true")


def _get(system: ApiSystem, who: str, path: str, **params: Any) -> Any:
    resp = httpx.get(
        system.base_url + "/api/v1" + path, headers=system.headers(who), params=params, timeout=60
    )
    resp.raise_for_status()
    return resp.json()


def _shot(page: Page, name: str) -> None:
    page.wait_for_timeout(300)
    page.screenshot(path=str(_screens() / name), full_page=True)


def test_smoke_screens(system: ApiSystem, new_page: Any) -> None:
    page = new_page()
    _sign_in(page, system, "operator")
    page.wait_for_selector("#meter-rows tr")
    _shot(page, "dashboard.png")
    page.goto(system.base_url + "/#reconciliation")
    page.wait_for_selector("#reconcile-table")
    _shot(page, "reconciliation.png")
    p2 = new_page()
    _sign_in(p2, system, f"partner:{OWN}", "partner")
    p2.wait_for_function("window.symbiont.savings !== undefined")
    _shot(p2, "partner.png")
