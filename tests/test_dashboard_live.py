"""The dashboard's views in a real browser (Playwright driving Debian's Chromium), and the API
behind them: the live view, the meters, the network reconciliation and a partner's page.

The system: the Kalundborg example with 30 hours of simulated readings up to the present
minute (a leak on ``LEAKING``), the rules engine run once, and one meter made stale: the
provider's meter of ``STALE_EXCHANGE`` (``forsyning``'s, a counterparty of the partner
``OWN``) has sent nothing for the last 20 minutes and its ``meter_stale`` alert fires.  The
browser runs in another time zone than the network's, so a time shown in the browser's zone
would be seen.

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
from playwright.sync_api import Browser, Page, expect
from services import create_database, drop_database
from test_dashboard import TIMEOUT_MS

from api.live import Event, Subscriber, exchange_view
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
        verdict = evaluate_stale(STALE, last, 60, system.end, StaleConfig(), tz=net.tz)
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
        # errors logged by the page's scripts (a refused request, /network for an
        # integration token, is the browser's own line, expected)
        page.on(
            "console",
            lambda msg: (
                errors.append(msg.text)
                if msg.type == "error" and not msg.text.startswith("Failed to load resource")
                else None
            ),
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


# -- helpers ----------------------------------------------------------------------------------


def _span(start: str, end: str, tz: Any) -> str:
    """A window as the dashboard writes it (time.js localSpan)."""
    a, b = datetime.fromisoformat(start), datetime.fromisoformat(end)
    sa, sb = local_text(a, tz), local_text(b, tz)
    da, ta, oa = sa.split(" ")
    db, tb, ob = sb.split(" ")
    if oa == ob and da == db:
        return f"{da} {ta}–{tb} {oa}"
    if (
        oa == ob
        and tb == "00:00"
        and b.astimezone(tz).date() - a.astimezone(tz).date() == (timedelta(days=1))
    ):
        return f"{da} {ta}–24:00 {oa}"
    return f"{sa} – {sb}"


def _number(text: str) -> float:
    """The first number in a cell ("1,234.5 MWh/h", "−0.8", "4.3 %")."""
    found = re.search(r"[-−]?[\d,]*\.?\d+(?:e[-+]?\d+)?", text)
    assert found, text
    return float(found.group().replace(",", "").replace("−", "-"))


def _close(shown: float, exact: float) -> bool:
    """A number as shown (at least 3 significant digits, or one decimal) is the exact one."""
    return abs(shown - exact) <= max(0.051, 0.0051 * abs(exact))


def _visible_to(net: Any, partner: str) -> tuple[set[str], set[str]]:
    """(names and ids a partner's pages may show, those they must not)."""
    mine = [e for e in net.exchanges if partner in (e.provider, e.receiver)]
    partners = {partner} | {p for e in mine for p in (e.provider, e.receiver)}
    allowed = set(partners) | {e.id for e in mine}
    allowed |= {m.id for m in net.meters if m.partner == partner}
    allowed |= {p.name for p in net.partners if p.id in partners}
    forbidden = {p.id for p in net.partners if p.id not in partners}
    forbidden |= {p.name for p in net.partners if p.id not in partners}
    forbidden |= {m.id for m in net.meters if m.partner != partner}
    forbidden |= {e.id for e in net.exchanges if e not in mine}
    forbidden |= {b.id for b in net.balances}
    return allowed, forbidden


def _leaks(text: str, forbidden: set[str]) -> set[str]:
    return {f for f in forbidden if re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text)}


def _page_text(page: Page) -> str:
    """Everything a page holds: its HTML (text and attributes, the diagrams' SVG) and the state
    it keeps for scripts."""
    return page.content() + page.evaluate("JSON.stringify(window.symbiont)")


# -- the live view ----------------------------------------------------------------------------


def test_live_view_rates_window_and_stale_meter(system: ApiSystem, new_page: Any) -> None:
    """The operator's live view: one diagram per kind with each partner once and the link
    widths on one scale; the table with the current rates, the last complete window (its
    time in the network's zone) and Δ, Δ %, the expected loss and z as the API gives them;
    the stale meter turns its exchange's link and row and is listed as stale."""
    net, tz = system.network, system.network.tz
    page = new_page()
    _sign_in(page, system, "operator")
    live = _get(system, "operator", "/live")
    by_id = {e["id"]: e for e in live["exchanges"]}

    # one diagram per kind; every exchange one link; every partner one node
    kinds = sorted({e.kind.value for e in net.exchanges})
    page.wait_for_selector("svg.flow path.link", state="attached")
    assert sorted(page.locator("svg.flow").evaluate_all("s => s.map(d => d.dataset.kind)")) == kinds
    for kind in kinds:
        exs = [e for e in net.exchanges if e.kind.value == kind]
        svg = page.locator(f'svg.flow[data-kind="{kind}"]')
        links = svg.locator("path.link").evaluate_all(
            "ls => ls.map(l => [l.dataset.exchange, +l.dataset.value, +l.dataset.width])"
        )
        assert sorted(x[0] for x in links) == sorted(e.id for e in exs)
        nodes = svg.locator("rect.node").evaluate_all("ns => ns.map(n => n.dataset.partner)")
        assert (
            len(nodes) == len(set(nodes)) == len({p for e in exs for p in (e.provider, e.receiver)})
        )
        # widths are the flows on one scale within the diagram
        ratios = [w / v for _, v, w in links if v > 0 and w > 2.5]
        assert ratios and max(ratios) / min(ratios) < 1.01, links
        for ex_id, value, _ in links:
            rate = by_id[ex_id]["received_rate"] or by_id[ex_id]["sent_rate"] or 0
            assert math.isclose(value, rate if rate > 0 else 0, rel_tol=1e-9)
        # labels: none on another, none on a node, the outer ones outside the links
        geometry = svg.evaluate(
            """s => ({
                labels: [...s.querySelectorAll('text.node-label')].map(t => {
                    const b = t.getBBox();
                    return [b.x, b.y, b.width, b.height, t.getAttribute('text-anchor')]; }),
                nodes: [...s.querySelectorAll('rect.node')].map(r => {
                    const b = r.getBBox(); return [b.x, b.y, b.width, b.height]; }),
                width: s.width.baseVal.value })"""
        )
        boxes = geometry["labels"]
        xs = [n[0] for n in geometry["nodes"]]
        lo, hi = min(xs), max(n[0] + n[2] for n in geometry["nodes"])

        def overlap(a: list[float], b: list[float]) -> bool:
            return (
                a[0] < b[0] + b[2]
                and b[0] < a[0] + a[2]
                and a[1] < b[1] + b[3]
                and (b[1] < a[1] + a[3])
            )

        for i, a in enumerate(boxes):
            assert a[0] >= 0 and a[0] + a[2] <= geometry["width"] + 1, (kind, a)
            assert not any(overlap(a, b) for b in boxes[i + 1 :]), (kind, boxes)
            assert not any(overlap(a, n) for n in geometry["nodes"]), (kind, a)
            if a[4] == "end":
                assert a[0] + a[2] <= lo, (kind, a)
            if a[4] == "start":
                assert a[0] >= hi, (kind, a)

    # the table: now, the last complete window, Δ, Δ %, expected loss, z
    leak = by_id[LEAKING]
    row = page.locator(f'#exchange-rows tr[data-exchange="{LEAKING}"]')
    expect(row).to_have_attribute("data-status", "imbalance")
    cell = lambda col: row.locator(f'td[data-col="{col}"]').inner_text()  # noqa: E731
    assert cell("window") == _span(leak["window_start"], leak["window_end"], tz)
    assert datetime.fromisoformat(leak["window_end"]) <= datetime.now(UTC)
    assert re.search(r" [+-]\d\d:\d\d$", cell("window"))
    for col, key in (
        ("sent-rate", "sent_rate"),
        ("received-rate", "received_rate"),
        ("delta", "delta"),
        ("delta-pct", "delta_pct"),
        ("z", "z"),
    ):
        assert _close(_number(cell(col)), leak[key]), (col, cell(col), leak[key])
    assert leak["delta_pct"] > 20  # the 25 % leak, beside the 4 % allowance
    assert cell("expected-loss").startswith(f"{leak['loss'] * 100:.1f} %")
    assert _close(_number(cell("expected-loss").split("·")[1]), leak["expected_loss"])
    assert math.isclose(leak["delta"], leak["sent"] - leak["received"], rel_tol=1e-4)
    # rates from the latest readings: received ≈ 0.75 × sent, and when they are from
    assert leak["received_rate"] < 0.85 * leak["sent_rate"]
    when = page.locator("#rates-when")
    tos = sorted(e["rates_to"] for e in live["exchanges"] if e["rates_to"])
    expect(when).to_contain_text(f"up to {local_text(datetime.fromisoformat(tos[-1]), tz)}")
    title = row.locator('td[data-col="sent-rate"]').get_attribute("title")
    assert title == f"from the readings of {_span(leak['rates_from'], leak['rates_to'], tz)}"
    assert datetime.fromisoformat(tos[-1]) > datetime.now(UTC) - timedelta(minutes=10)

    # the stale meter colours its exchange: row, link, and its place in the meter list
    stale = by_id[STALE_EXCHANGE]
    assert stale["meter_state"] == "stale" and stale["meter_states"][STALE] == "stale"
    assert stale["sent_rate"] is None and stale["received_rate"] is not None  # no old rate as now
    srow = page.locator(f'#exchange-rows tr[data-exchange="{STALE_EXCHANGE}"]')
    expect(srow).to_have_attribute("data-condition", "stale")
    expect(srow.locator(".badge.cond-stale")).to_have_text("meter stale")
    expect(srow.locator(".alert-pill")).to_have_text(f"⚠ {stale['open_alerts']}")
    assert srow.locator('td[data-col="sent-rate"]').inner_text() == "–"
    link = page.locator(f'svg.flow path.link[data-exchange="{STALE_EXCHANGE}"]')
    assert link.get_attribute("stroke") == STALE_COLOUR
    assert srow.evaluate("r => getComputedStyle(r).getPropertyValue('--row-colour')") == (
        STALE_COLOUR
    )
    mrow = page.locator(f'#meter-rows tr[data-meter="{STALE}"]')
    expect(mrow).to_have_attribute("data-state", "stale")
    expect(mrow.locator('td[data-col="age"]')).to_contain_text("min ago")
    # a clean exchange stays green
    clean = [
        e["id"]
        for e in live["exchanges"]
        if e["status"] == "ok" and e["meter_state"] == "ok" and e["id"] != STALE_EXCHANGE
    ]
    assert clean
    for ex_id in clean:
        stroke = page.locator(f'svg.flow path.link[data-exchange="{ex_id}"]').get_attribute(
            "stroke"
        )
        assert stroke == "#2f9e5b", (ex_id, stroke)
        expect(page.locator(f'#exchange-rows tr[data-exchange="{ex_id}"]')).to_have_attribute(
            "data-condition", "ok"
        )

    # times: the network's zone with its offset, whatever the browser's
    alert = next(a for a in live["alerts"] if a["subject"] == LEAKING and a["rule"] == "imbalance")
    assert re.search(r"window from \d{4}-\d\d-\d\d \d\d:\d\d [+-]\d\d:\d\d ", alert["summary"])
    item = page.locator(f'#alerts li[data-alert-id="{alert["id"]}"]')
    expect(item.locator(".since")).to_have_text(
        f"since {local_text(datetime.fromisoformat(alert['started_at']), tz)}"
    )
    assert "AM" not in page.locator("#dashboard").inner_text()
    _shot(page, "dashboard.png")


def test_reconciliation_view_shows_the_apis_numbers(system: ApiSystem, new_page: Any) -> None:
    page = new_page()
    _sign_in(page, system, "operator", "reconciliation")
    page.wait_for_selector("#reconcile-table tbody tr")
    end = datetime.now(UTC)
    items = _get(
        system,
        "operator",
        "/reconciliations",
        **{"from": (end - timedelta(days=3)).isoformat(), "to": end.isoformat(), "limit": 10000},
    )["items"]
    components = {r["component"] for r in items}
    options = page.locator("#reconcile-component option").evaluate_all("os => os.map(o => o.value)")
    assert set(options) == components and len(components) == len(system.network.balances)

    def check() -> None:
        table = page.locator("#reconcile-table")
        comp, start = table.get_attribute("data-component"), table.get_attribute("data-start")
        rec = next(r for r in items if r["component"] == comp and r["start"] == start)
        test = page.locator(".global-test")
        assert float(test.get_attribute("data-statistic") or "nan") == rec["statistic"]
        assert float(test.get_attribute("data-critical") or "nan") == rec["critical"]
        assert int(test.get_attribute("data-dof") or -1) == rec["dof"]
        assert test.get_attribute("data-passed") == str(rec["passed"]).lower()
        expect(test.locator(".verdict")).to_have_text("passed" if rec["passed"] else "failed")
        assert _close(_number(test.locator(".statistic").inner_text()), rec["statistic"])
        expect(test.locator(".suspects")).to_have_text(", ".join(rec["suspects"]) or "none")
        expect(test).to_contain_text(_span(rec["start"], rec["end"], system.network.tz))
        rows = page.locator("#reconcile-table tbody tr")
        expect(rows).to_have_count(len(rec["meters"]))
        for m in rec["meters"]:
            row = page.locator(f'#reconcile-table tbody tr[data-meter="{m["meter"]}"]')
            assert row.get_attribute("data-suspect") == str(m["suspect"]).lower()
            for key in ("measured", "reconciled", "adjustment", "z"):
                td = row.locator(f"td.{key}")
                assert float(td.get_attribute("data-value") or "nan") == m[key], (m, key)
                assert _close(_number(td.inner_text()), m[key]), (td.inner_text(), m[key])

    check()
    failed = [r for r in items if r["passed"] is False]
    assert failed, "the leak should fail the global test of the steam header"
    assert any(LEAKING.replace("steam-asnaes-", "") in " ".join(r["suspects"]) for r in failed)
    # another window: the oldest of the component shown
    comp = page.locator("#reconcile-component").input_value()
    oldest = min(r["start"] for r in items if r["component"] == comp)
    page.select_option("#reconcile-window", oldest)
    expect(page.locator("#reconcile-table")).to_have_attribute("data-start", oldest)
    check()
    page.select_option("#reconcile-window", index=0)
    _shot(page, "reconciliation.png")


# -- a partner --------------------------------------------------------------------------------


def test_partner_sees_its_own_and_nothing_of_others(system: ApiSystem, new_page: Any) -> None:
    """A partner's live view and page: its exchanges, its meters, its statements and a year
    of its savings; of the stale meter of its counterparty it learns nothing (no colour, no
    count), and no other partner's name, meter, exchange or balance is anywhere on the page."""
    net = system.network
    who = f"partner:{OWN}"
    _, forbidden = _visible_to(net, OWN)
    mine = {e.id for e in net.exchanges if OWN in (e.provider, e.receiver)}
    page = new_page(width=1200)
    _sign_in(page, system, who)
    rows = page.locator("#exchange-rows tr[data-exchange]")
    expect(rows).to_have_count(len(mine))
    assert set(rows.evaluate_all("rs => rs.map(r => r.dataset.exchange)")) == mine
    page.wait_for_selector("#meter-rows tr")
    own_meters = {m.id for m in net.meters if m.partner == OWN}
    shown = page.locator("#meter-rows tr").evaluate_all("rs => rs.map(r => r.dataset.meter)")
    assert set(shown) == own_meters

    # the counterparty's stale meter: not a colour, not a count
    srow = page.locator(f'#exchange-rows tr[data-exchange="{STALE_EXCHANGE}"]')
    expect(srow).to_have_attribute("data-condition", "ok")
    expect(srow.locator(".badge.cond")).to_have_count(0)
    entry = next(e for e in _get(system, who, "/live")["exchanges"] if e["id"] == STALE_EXCHANGE)
    assert entry["open_alerts"] == 0 and STALE not in entry["meter_states"]
    expect(srow.locator(".alert-pill")).to_have_count(0)
    link = page.locator(f'svg.flow path.link[data-exchange="{STALE_EXCHANGE}"]')
    assert link.get_attribute("data-condition") == "ok"
    assert page.locator("#views a[data-view='reconciliation']").is_hidden()  # no balance of its own
    assert not _leaks(_page_text(page), forbidden)
    _shot(page, "partner-live.png")

    # its page: exchanges, statements, a year of savings
    page.click("#views a[data-view='partner']")
    expect(page.locator("#partner-card")).to_be_visible()
    expect(page.locator("#partner-title")).to_have_text(
        next(p.name for p in net.partners if p.id == OWN)
    )
    prow = page.locator("#partner-exchange-rows tr[data-exchange]")
    expect(prow).to_have_count(len(mine))
    expect(page.locator("#statements-card")).to_be_visible()
    listed = _get(system, who, f"/partners/{OWN}/statements")["items"]
    expect(page.locator("#statement-rows tr[data-month]")).to_have_count(len(listed))
    page.wait_for_function("window.symbiont.savings && window.symbiont.savings.partner === 'novo'")
    savings = page.evaluate("window.symbiont.savings")
    assert len(savings["months"]) == 12
    best = max(range(12), key=lambda i: savings["savings"][i] or 0)  # the month with data
    doc = _get(system, who, f"/partners/{OWN}/statements/{savings['months'][best]}")
    assert savings["savings"][best] == float(doc["totals"]["net_savings"]) > 0
    assert savings["co2"][best] == float(doc["totals"]["co2_avoided_t"]) > 0
    chart = page.evaluate(
        "echarts.getInstanceByDom(document.getElementById('savings-chart')).getOption()"
    )
    assert chart["xAxis"][0]["data"] == savings["months"]
    assert not _leaks(_page_text(page), forbidden)
    _shot(page, "partner.png")


def test_integration_token_sees_the_live_view(system: ApiSystem, new_page: Any) -> None:
    page = new_page()
    _sign_in(page, system, "integration")
    expect(page.locator("#exchange-rows tr[data-exchange]")).to_have_count(
        len(system.network.exchanges)
    )
    expect(page.locator("svg.flow")).to_have_count(3)
    expect(page.locator("#meter-rows tr")).to_have_count(len(system.network.meters))
    expect(page.locator(f'#meter-rows tr[data-meter="{STALE}"]')).to_have_attribute(
        "data-state", "stale"
    )
    expect(page.locator("#views")).to_be_hidden()
    page.goto(system.base_url + "/#reconciliation")  # not open to it: the live view stays
    assert page.evaluate("window.symbiont.view") == "live"
    expect(page.locator("#reconcile-card")).to_be_hidden()
    expect(page.locator("#error")).to_be_hidden()
    _shot(page, "integration.png")


# -- the API behind them ----------------------------------------------------------------------


def test_meters_api_states_and_scope(system: ApiSystem) -> None:
    net = system.network
    every = _get(system, "operator", "/meters")
    items = {m["id"]: m for m in every["items"]}
    assert set(items) == {m.id for m in net.meters}
    assert every["timezone"] == net.timezone
    stale = items[STALE]
    assert stale["state"] == "stale" and stale["age_s"] >= SILENT.total_seconds()
    assert stale["open_alerts"] >= 1 and stale["stale_after_s"] == 180
    assert {m["state"] for m in items.values()} <= {"ok", "stale", "stuck", "suspect", "no_data"}
    fresh = [m for m in items.values() if m["id"] != STALE and m["last_ts"] and m["age_s"] < 300]
    assert fresh and all(m["state"] in ("ok", "suspect") for m in fresh)
    for m in items.values():  # display values: at most 6 significant digits
        if m["rate"] is not None:
            assert float(f"{m['rate']:.6g}") == m["rate"]
    only = _get(system, "operator", "/meters", status="stale")["items"]
    assert [m["id"] for m in only] == [STALE]
    both = _get(system, "operator", "/meters", status=["stale", "suspect"])["items"]
    assert {m["state"] for m in both} == {"stale", "suspect"}
    resp = httpx.get(
        system.base_url + "/api/v1/meters?status=broken", headers=system.headers("operator")
    )
    assert resp.status_code == 422
    # a partner: its own meters only, and not the stale one of its counterparty
    own = _get(system, f"partner:{OWN}", "/meters")["items"]
    assert {m["id"] for m in own} == {m.id for m in net.meters if m.partner == OWN}
    assert _get(system, f"partner:{OWN}", "/meters", status="stale")["items"] == []
    assert len(_get(system, "integration", "/meters")["items"]) == len(items)
    # the favicon is there
    icon = httpx.get(system.base_url + "/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"


def test_alert_counts_are_scoped_in_live_and_stream(system: ApiSystem) -> None:
    """The badge leak: an exchange's open-alert count once included its counterparty's meter
    alerts, which a partner must not learn of.  Now /live and each live-stream subscriber
    count only the alerts the caller may see."""
    operator = {e["id"]: e for e in _get(system, "operator", "/live")["exchanges"]}
    partner = {e["id"]: e for e in _get(system, f"partner:{OWN}", "/live")["exchanges"]}
    alerts = _get(system, "admin", "/alerts", status="firing", limit=1000)["items"]
    own_meters = {m.id for m in system.network.meters if m.partner == OWN}
    for ex in system.network.exchanges:
        if ex.id not in partner:
            continue
        on_exchange = sum(a["subject"] == ex.id for a in alerts)
        on_meters = [a for a in alerts if a["subject"] in (*ex.sent, *ex.received)]
        assert operator[ex.id]["open_alerts"] == on_exchange + len(on_meters)
        assert partner[ex.id]["open_alerts"] == on_exchange + sum(
            a["subject"] in own_meters for a in on_meters
        )
        assert set(partner[ex.id]["meter_states"]) <= own_meters
    assert operator[STALE_EXCHANGE]["open_alerts"] > partner[STALE_EXCHANGE]["open_alerts"]

    # the stream: a subscriber gets each flow event cut to its scope
    app = system.server.config.app if system.server else None
    hub = app.state.symbiont.hub  # type: ignore[union-attr]
    entry = hub.snapshot.exchanges[STALE_EXCHANGE]
    net = hub.network()
    cache = NetworkCache()
    events: dict[str, dict[str, Any]] = {}
    for name, principal in (
        ("operator", Principal(1, Role.operator, None)),
        ("partner", Principal(2, Role.partner, OWN)),
    ):
        sub = Subscriber(cache.scope(net, principal), asyncio.Queue())
        sub.offer(Event("flow", entry, STALE_EXCHANGE, "exchange"))
        events[name] = sub.queue.get_nowait().data
    assert events["operator"]["open_alerts"] == operator[STALE_EXCHANGE]["open_alerts"]
    assert events["partner"]["open_alerts"] == partner[STALE_EXCHANGE]["open_alerts"]
    assert events["partner"]["meter_state"] == "ok"
    assert STALE not in repr(events["partner"])
    assert exchange_view(entry, cache.scope(net, Principal(3, Role.admin, None)))[
        "meter_state"
    ] == ("stale")


def test_meter_of_a_dead_sparkplug_node_is_offline(system: ApiSystem) -> None:
    """A meter whose Sparkplug B node or device died (its NDEATH or DDEATH, as ingest records
    it) is listed offline, with the instant, until its next birth; a partner learns of it only
    for its own meters."""
    mine = next(m.id for m in system.network.meters if m.partner == OWN and m.interval)
    died = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)

    async def presence(online: bool, cause: str) -> None:
        conn = await asyncpg.connect(asyncpg_dsn(system.database_url))
        try:
            await conn.execute(
                """INSERT INTO meter_presence (meter_id, online, changed_at, cause)
                   VALUES ($1, $2, $3, $4) ON CONFLICT (meter_id) DO UPDATE
                   SET online = excluded.online, changed_at = excluded.changed_at,
                       cause = excluded.cause""",
                mine,
                online,
                died,
                cause,
            )
        finally:
            await conn.close()

    def state_of(who: str) -> dict[str, Any]:
        deadline = datetime.now(UTC) + timedelta(seconds=20)
        while True:
            items = {m["id"]: m for m in _get(system, who, "/meters")["items"]}
            if (items[mine]["state"] == "offline") == expect_offline or (
                datetime.now(UTC) > deadline
            ):
                return items

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, presence(False, "DDEATH")).result()
    expect_offline = True
    items = state_of("operator")
    assert items[mine]["state"] == "offline"
    assert datetime.fromisoformat(items[mine]["offline_since"]) == died
    assert [m["id"] for m in _get(system, "operator", "/meters", status="offline")["items"]] == [
        mine
    ]
    assert mine in {m["id"] for m in _get(system, f"partner:{OWN}", "/meters")["items"]}
    assert mine not in {m["id"] for m in _get(system, f"partner:{FOREIGN}", "/meters")["items"]}
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, presence(True, "DBIRTH")).result()
    expect_offline = False
    items = state_of("operator")
    assert items[mine]["state"] != "offline" and items[mine]["offline_since"] is None


def test_retired_meter_is_listed_as_retired(system: ApiSystem) -> None:
    """A meter removed from the network file is kept, listed as retired (runs last: it
    changes the network)."""
    net = system.network
    balance = next(b for b in net.balances if b.id == "forsyning-water-main")
    (gone,) = balance.in_
    smaller = net.model_copy(
        update={
            "balances": [b for b in net.balances if b.id != balance.id],
            "meters": [m for m in net.meters if m.id != gone],
        }
    )

    async def apply() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(system.database_url))
        try:
            await apply_network(conn, smaller)
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, apply()).result()
    deadline = datetime.now(UTC) + timedelta(seconds=20)
    while True:
        items = {m["id"]: m for m in _get(system, "operator", "/meters")["items"]}
        if items.get(gone, {}).get("state") == "retired" or datetime.now(UTC) > deadline:
            break
    assert items[gone]["state"] == "retired" and items[gone]["last_ts"] is not None
    assert [m["id"] for m in _get(system, "operator", "/meters", status="retired")["items"]] == [
        gone
    ]
    assert len(items) == len(net.meters)
