"""The web dashboard in a real browser (Playwright driving Chromium) against a running system.

The system is tests/api_system.py's: the Kalundborg example applied to a migrated database,
two simulated days with a leak on ``LEAKING``, the rules engine run once, a token for every
role, and the API served by uvicorn on a free port; here with short live streams, so that the
page has to reconnect.  The checks: every exchange of the network is drawn and listed; the
leaking one is an imbalance, red in its flow diagram and the list, and its alert is open; its
history chart shows the imbalanced windows; acknowledging the alert in one browser shows who
acknowledged it there, in a second browser through the live stream, and in the API; a partner
sees only its part and its statements, and downloads one; a bad token stays at the sign-in.
A screenshot goes to ``artifacts/dashboard.png``.

Chromium is the system one (``/usr/bin/chromium``, or ``$SYMBIONT_TEST_CHROMIUM``); Playwright's
own browser download is not used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_system import LEAKING, OWN, ApiSystem, build
from playwright.sync_api import Browser, Page, expect
from services import create_database, drop_database

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts"
IMBALANCE_RED = "rgb(214, 69, 65)"  # #d64541, app.js STATUS_COLOURS.imbalance
STREAM_MAX_S = 4.0
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def system(postgres_admin_url: str, database_template: str) -> Iterator[ApiSystem]:
    """Like conftest's ``api_system``, but live streams end after STREAM_MAX_S."""
    name = f"symbiont_dash_{os.urandom(6).hex()}"
    url = create_database(postgres_admin_url, name, template=database_template)
    try:
        built = build(url)
        built.serve(live_stream_max_s=STREAM_MAX_S, live_heartbeat_s=1.0)
        try:
            yield built
        finally:
            built.stop()
    finally:
        drop_database(postgres_admin_url, name)


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Any]:
    """A factory of pages, each in a context of its own (its own sessionStorage)."""
    contexts = []
    errors: list[str] = []

    def make(width: int = 1440, height: int = 1000) -> Page:
        ctx = browser.new_context(
            viewport={"width": width, "height": height}, accept_downloads=True
        )
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    yield make
    for ctx in contexts:
        ctx.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def _sign_in(page: Page, system: ApiSystem, who: str) -> None:
    page.goto(system.base_url + "/")
    page.fill("#token-input", system.tokens[who])
    page.click("#signin-button")
    page.wait_for_function("window.symbiont && window.symbiont.ready === true")


def _api(system: ApiSystem, who: str, path: str) -> Any:
    resp = httpx.get(system.base_url + "/api/v1" + path, headers=system.headers(who), timeout=30)
    resp.raise_for_status()
    return resp.json()


def _leak_alert(system: ApiSystem) -> dict[str, Any]:
    alerts = _api(system, "admin", "/alerts?status=firing&limit=100")["items"]
    found = [a for a in alerts if a["subject"] == LEAKING and a["rule"] == "imbalance"]
    assert found, f"no firing imbalance alert on {LEAKING}: {alerts}"
    alert: dict[str, Any] = found[0]
    return alert


def test_network_exchanges_and_the_leak(system: ApiSystem, new_page: Any) -> None:
    page = new_page()
    _sign_in(page, system, "admin")
    expect(page.locator("#whoami")).to_have_attribute("data-role", "admin")

    ids = [e.id for e in system.network.exchanges]
    rows = page.locator("#exchange-rows tr[data-exchange]")
    expect(rows).to_have_count(len(ids))
    assert sorted(rows.evaluate_all("rs => rs.map(r => r.dataset.exchange)")) == sorted(ids)
    state = page.evaluate("window.symbiont.exchanges")
    assert sorted(state) == sorted(ids)

    # Every exchange is a link of a flow diagram, named by its id, with a visible width.
    links = page.locator("svg.flow path.link").evaluate_all(
        "ls => ls.map(l => ({name: l.dataset.exchange, width: +l.dataset.width,"
        " lineStyle: {color: l.getAttribute('stroke')}}))"
    )
    assert sorted(link["name"] for link in links) == sorted(ids)
    assert all(link["width"] > 0 for link in links)

    # The leaking exchange: imbalance in the state, the list and the diagram's colour.
    assert state[LEAKING]["status"] == "imbalance"
    assert state[LEAKING]["sent_rate"] > state[LEAKING]["received_rate"] > 0
    row = page.locator(f'#exchange-rows tr[data-exchange="{LEAKING}"]')
    expect(row).to_have_attribute("data-status", "imbalance")
    badge = row.locator(".badge.status-imbalance")
    assert badge.evaluate("b => getComputedStyle(b).backgroundColor") == IMBALANCE_RED
    leak_link = next(link for link in links if link["name"] == LEAKING)
    assert leak_link["lineStyle"]["color"].lower() == "#d64541"
    ok = [i for i, s in state.items() if s["status"] == "ok"]
    assert ok, "no exchange is ok: the simulation should leave the others balanced"
    for i in ok:
        assert (
            next(link for link in links if link["name"] == i)["lineStyle"]["color"]
            != (leak_link["lineStyle"]["color"])
        )

    # Its alert is listed, with a button to acknowledge it.
    alert = _leak_alert(system)
    item = page.locator(f'#alerts li[data-alert-id="{alert["id"]}"]')
    expect(item).to_be_visible()
    expect(item).to_contain_text(LEAKING)
    expect(item.locator("button.ack")).to_be_visible()

    # Its history: sent vs received with the expected band, leak windows flagged.
    row.click()
    expect(page.locator("#exchange-chart")).to_be_visible()
    page.wait_for_function(
        "(() => { const c = echarts.getInstanceByDom(document.getElementById('exchange-chart'));"
        " const o = c && c.getOption(); return o && o.series && o.series.length"
        " && o.series.find(s => s.name === 'received').data.length > 0; })()"
    )
    series = page.evaluate(
        "Object.fromEntries(echarts.getInstanceByDom(document.getElementById('exchange-chart'))"
        ".getOption().series.map(s => [s.name, s.data.length]))"
    )
    assert series["sent"] >= 24 and series["received"] == series["sent"]
    assert series["imbalance"] >= 2  # the leak's windows
    expect(page.locator("#detail-summary")).to_contain_text("imbalance")

    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(500)  # let the charts finish their animation
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)


def test_acknowledge_shows_everywhere(system: ApiSystem, new_page: Any) -> None:
    alert = _leak_alert(system)
    assert alert["acknowledged_by"] is None
    selector = f'#alerts li[data-alert-id="{alert["id"]}"]'

    watcher = new_page()  # an admin watching: learns of the acknowledgement by the live stream
    _sign_in(watcher, system, "admin")
    expect(watcher.locator(selector)).to_be_visible()
    watcher.wait_for_function("window.symbiont.stream.connected === true")
    events_before = watcher.evaluate("window.symbiont.stream.events")

    page = new_page()
    _sign_in(page, system, "operator")
    expect(page.locator("#whoami")).to_have_attribute("data-role", "operator")
    item = page.locator(selector)
    item.locator("button.ack").click()  # opens the comment field; the comment is optional
    item.locator("button.ack-confirm").click()
    expect(item).to_contain_text("acknowledged by ")
    expect(item.locator("button.ack")).to_have_count(0)

    confirmed = _api(system, "admin", f"/alerts/{alert['id']}")
    by = confirmed["acknowledged_by"]
    assert by, confirmed
    assert confirmed["acknowledged_at"] is not None
    assert confirmed["status"] == "firing"
    expect(item).to_contain_text(f"acknowledged by {by}")

    watched = watcher.locator(selector)
    expect(watched).to_contain_text(f"acknowledged by {by}")
    assert watcher.evaluate("window.symbiont.stream.events") > events_before

    # Streams end after STREAM_MAX_S; the page reconnects and stays live.
    watcher.wait_for_function(
        "window.symbiont.stream.connects >= 2 && window.symbiont.stream.connected",
        timeout=int(STREAM_MAX_S * 1000 * 4),
    )


def test_partner_sees_its_statements(system: ApiSystem, new_page: Any) -> None:
    page = new_page(width=1100)
    _sign_in(page, system, "partner:" + OWN)
    expect(page.locator("#whoami")).to_have_attribute("data-partner", OWN)
    page.click("#views a[data-view='partner']")  # its own page
    expect(page.locator("#statements-card")).to_be_visible()
    expect(page.locator("#partner-picker-label")).to_be_hidden()
    expect(page.locator("#statements")).to_have_attribute("data-partner", OWN)

    listed = _api(system, "partner:" + OWN, f"/partners/{OWN}/statements")["items"]
    assert listed, "the API lists no statement (not even this month's draft)"
    rows = page.locator("#statement-rows tr[data-month]")
    expect(rows).to_have_count(len(listed))
    month = listed[0]["month"]
    row = page.locator(f'#statement-rows tr[data-month="{month}"]')
    for fmt in ("json", "csv", "pdf"):
        expect(row.locator(f'a[data-format="{fmt}"]')).to_be_visible()

    with page.expect_download() as info:
        row.locator('a[data-format="json"]').click()
    download = info.value
    assert download.suggested_filename.endswith(".json")
    body = json.loads(Path(download.path()).read_text())
    assert OWN in json.dumps(body)

    # A partner sees only its part of the network, and cannot acknowledge.
    mine = {e.id for e in system.network.exchanges if OWN in (e.provider, e.receiver)}
    shown = set(
        page.locator("#exchange-rows tr[data-exchange]").evaluate_all(
            "rs => rs.map(r => r.dataset.exchange)"
        )
    )
    assert shown == mine
    expect(page.locator("#alerts button.ack")).to_have_count(0)


def test_bad_token_and_sign_out(system: ApiSystem, new_page: Any) -> None:
    page = new_page(width=420, height=900)
    page.goto(system.base_url + "/")
    page.fill("#token-input", "sym_1_" + "x" * 43)
    page.click("#signin-button")
    expect(page.locator("#signin-error")).to_be_visible()
    expect(page.locator("#dashboard")).to_be_hidden()

    _sign_in(page, system, "admin")
    expect(page.locator("#dashboard")).to_be_visible()
    expect(page.locator("#exchange-rows tr[data-exchange]")).to_have_count(
        len(system.network.exchanges)
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "dashboard-narrow.png"), full_page=True)
    assert page.evaluate("sessionStorage.length") == 1
    page.reload()  # the token survives a reload of the tab
    page.wait_for_function("window.symbiont && window.symbiont.ready === true")
    page.click("#sign-out")
    expect(page.locator("#signin")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_integration_token_sees_flows_and_alerts(system: ApiSystem, new_page: Any) -> None:
    page = new_page()
    _sign_in(page, system, "integration")  # /network is not open to it: /live fills in
    expect(page.locator("#whoami")).to_have_attribute("data-role", "integration")
    rows = page.locator("#exchange-rows tr[data-exchange]")
    expect(rows).to_have_count(len(system.network.exchanges))
    expect(page.locator(f'#exchange-rows tr[data-exchange="{LEAKING}"]')).to_have_attribute(
        "data-status", "imbalance"
    )
    expect(page.locator(f'#alerts li[data-subject="{LEAKING}"]').first).to_be_visible()
    expect(page.locator("#alerts button.ack")).to_have_count(0)
    expect(page.locator("#statements-card")).to_be_hidden()
    expect(page.locator("#error")).to_be_hidden()


def test_partner_sees_every_revision_of_a_statement(system: ApiSystem, new_page: Any) -> None:
    """A month issued twice: the list shows its latest revision, and opening "all revisions"
    lists both with when, why and each one's own PDF."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import asyncpg

    from core.db import asyncpg_dsn

    month, first_pdf = "2025-01", b"%PDF-1.4 revision one\n"
    reason = "Meter novo-steam-in recalibrated: January corrected"

    async def store() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(system.database_url))
        try:
            for revision, previous, why, pdf in (
                (1, None, None, first_pdf),
                (2, "hash-1", reason, b"%PDF-1.4 revision two\n"),
            ):
                await conn.execute(
                    """INSERT INTO statements (partner_id, month, revision, issued_at, document,
                           content_hash, csv, pdf, reason, previous_hash, document_number)
                       VALUES ($1, $2, $3, now(), $4, $5, $6, $7, $8, $9, $10)""",
                    OWN,
                    month,
                    revision,
                    json.dumps({"partner": OWN, "month": month, "revision": revision}),
                    f"hash-{revision}",
                    b"record\n",
                    pdf,
                    why,
                    previous,
                    f"test-2025-{revision:05d}",
                )
        finally:
            await conn.close()

    # Playwright's sync API runs an event loop in this thread: store from another one
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, store()).result()
    page = new_page(width=1100)
    _sign_in(page, system, "partner:" + OWN)
    page.click("#views a[data-view='partner']")
    row = page.locator(f'#statement-rows tr[data-month="{month}"]')
    expect(row).to_contain_text("rev. 2")
    row.locator("details.revisions summary").click()
    items = row.locator(".revision-list li[data-revision]")
    expect(items).to_have_count(2)
    expect(items.nth(1)).to_contain_text(reason)
    expect(items.nth(1)).to_contain_text("test-2025-00002")
    with page.expect_download() as info:
        items.nth(0).locator('a[data-format="pdf"]').click()
    assert Path(info.value.path()).read_bytes() == first_pdf
