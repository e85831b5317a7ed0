"""Alert work in the dashboard, in a real browser (Playwright driving Debian's Chromium).

The system is tests/api_system.py's (two simulated days of the example network with a leak on
``LEAKING``, the rules run once, a named token per role). An operator acknowledges an alert
with a comment, filters the alert history, creates and expires a silence, reads an incident's
timeline, sees the alerts marked on an exchange's chart and picks a period of its own; a
partner sees no silence and only its own alerts. A screenshot of each view goes to
``$SYMBIONT_SCREENSHOTS`` (a temporary directory when it is not set).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_system import FOREIGN, LEAKING, OWN, ApiSystem, build
from playwright.sync_api import Browser, Page, expect
from services import create_database, drop_database

SCREENSHOTS_ENV = "SYMBIONT_SCREENSHOTS"
TIMEOUT_MS = 20_000
HISTORY_CHART = "echarts.getInstanceByDom(document.getElementById('exchange-chart'))"


@pytest.fixture(scope="module")
def system(postgres_admin_url: str, database_template: str) -> Iterator[ApiSystem]:
    name = f"symbiont_alertdash_{os.urandom(6).hex()}"
    url = create_database(postgres_admin_url, name, template=database_template)
    try:
        built = build(url)
        built.serve()
        try:
            yield built
        finally:
            built.stop()
    finally:
        drop_database(postgres_admin_url, name)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get(SCREENSHOTS_ENV)
    where = Path(configured) if configured else tmp_path_factory.mktemp("screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture
def page_as(browser: Browser, system: ApiSystem) -> Iterator[Any]:
    """Signs ``who`` in on a page of its own; no JavaScript error may happen on any."""
    contexts = []
    errors: list[str] = []

    def make(who: str) -> Page:
        ctx = browser.new_context(viewport={"width": 1440, "height": 1100})
        contexts.append(ctx)
        page = ctx.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(system.base_url + "/")
        page.fill("#token-input", system.tokens[who])
        page.click("#signin-button")
        page.wait_for_function("window.symbiont && window.symbiont.ready === true")
        return page

    yield make
    for ctx in contexts:
        ctx.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def api(system: ApiSystem, who: str, path: str, **params: Any) -> Any:
    response = httpx.get(
        f"{system.base_url}/api/v1{path}", headers=system.headers(who), params=params, timeout=30
    )
    response.raise_for_status()
    return response.json()


def shot(page: Page, shots: Path, name: str) -> None:
    page.wait_for_timeout(300)  # let the charts finish drawing
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


def test_operator_works_the_alerts(system: ApiSystem, page_as: Any, shots: Path) -> None:
    alerts = api(system, "admin", "/alerts", limit=100)["items"]
    imbalance = next(a for a in alerts if a["rule"] == "imbalance" and a["subject"] == LEAKING)
    other = next(a for a in alerts if a["id"] != imbalance["id"] and a["status"] == "firing")
    page = page_as("operator")
    work = page.locator("#alert-work")
    expect(work).to_be_visible()
    rows = page.locator("#history-rows tr[data-alert-id]")
    expect(rows).to_have_count(len(alerts))

    # acknowledge with a comment, from the open alerts
    comment = "Valve crew on site, leak isolated by 15:00"
    item = page.locator(f'#alerts li[data-alert-id="{other["id"]}"]')
    item.locator("button.ack").click()
    item.locator("input.ack-comment").fill(comment)
    item.locator("button.ack-confirm").click()
    expect(item).to_contain_text(f"acknowledged by test operator — “{comment}”")
    acked = api(system, "admin", f"/alerts/{other['id']}")
    assert (acked["acknowledged_by"], acked["ack_comment"]) == ("test operator", comment)
    # the history row follows
    expect(page.locator(f'#history-rows tr[data-alert-id="{other["id"]}"]')).to_contain_text(
        "test operator"
    )

    # the history's filters
    page.select_option("#history-rule", "imbalance")
    page.click("#history-apply")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-rule", "imbalance")
    query = page.evaluate("window.symbiont.alertWork.historyQuery")
    assert "rule=imbalance" in query
    page.select_option("#history-rule", "")
    page.fill("#history-subject", LEAKING)
    page.select_option("#history-status", "firing")
    page.click("#history-apply")
    expected = api(system, "admin", "/alerts", exchange=LEAKING, status="firing")["items"]
    expect(rows).to_have_count(len(expected))
    assert f"exchange={LEAKING}" in page.evaluate("window.symbiont.alertWork.historyQuery")
    page.fill("#history-since", (datetime.now() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"))
    page.click("#history-apply")
    expect(rows).to_have_count(0)
    expect(page.locator("#history-empty")).to_be_visible()
    page.click("#history-filter button[type=reset]")
    expect(rows).to_have_count(len(alerts))
    rows.filter(has_text="imbalance").first.click()
    details = page.locator("#alert-details")
    expect(details).to_be_visible()
    expect(details).to_contain_text(imbalance["summary"])
    shot(page, shots, "alert-history")

    # a silence from the alert's details: rule and subject filled in
    details.locator("button.silence-like").click()
    expect(page.locator("#tab-silences")).to_be_visible()
    assert page.input_value("#silence-subject") == LEAKING
    assert page.input_value("#silence-rule") == "imbalance"
    page.click('#silence-form [data-duration="86400"]')
    page.fill("#silence-comment", "Steam line repair; the leak is known")
    page.click("#silence-create")
    silence_rows = page.locator("#silence-rows tr[data-silence-id]")
    expect(silence_rows).to_have_count(1)
    row = silence_rows.first
    expect(row).to_have_attribute("data-state", "active")
    expect(row).to_contain_text("by test operator")
    expect(row).to_contain_text(f"subject={LEAKING}")
    made = api(system, "operator", "/silences")["items"]
    assert len(made) == 1 and made[0]["firing_alerts"] == [imbalance["id"]]
    silence_id = made[0]["id"]
    # the alert is marked as muted where it is listed
    muted = page.locator(f'#alerts li[data-alert-id="{imbalance["id"]}"] .silenced-badge')
    expect(muted).to_be_visible()
    shot(page, shots, "silences")
    # a silence that makes no sense is refused with the reason
    page.fill("#silence-subject", "nowhere")
    page.fill("#silence-comment", "typo")
    page.click("#silence-create")
    expect(page.locator("#silence-error")).to_contain_text("no exchange, meter or partner")
    row.locator("button.expire").click()
    expect(row).to_have_attribute("data-state", "expired")
    assert api(system, "admin", f"/silences/{silence_id}")["expired_by"] == "test operator"
    expect(muted).to_have_count(0)

    # the incident and its timeline, the acknowledgement and its comment in it
    page.click('#alert-work .tabs [data-tab="incidents"]')
    incident = page.locator(f'#incident-list li[data-incident-id="{imbalance["incident_id"]}"]')
    incident.click()
    timeline = page.locator("#incident-timeline li")
    detail = api(system, "admin", f"/incidents/{imbalance['incident_id']}")
    expect(timeline).to_have_count(len(detail["timeline"]))
    ack = page.locator(
        f'#incident-timeline li[data-event="acknowledged"][data-alert-id="{other["id"]}"]'
    )
    expect(ack).to_contain_text(f"by test operator — “{comment}”")
    expect(page.locator("#incident-detail .bar-row")).to_have_count(len(detail["alerts"]))
    shot(page, shots, "incident-timeline")

    # the alerts marked on the exchange's chart: where each started (and ended)
    page.locator(f'#exchange-rows tr[data-exchange="{LEAKING}"]').click()
    page.wait_for_function(
        f"(() => {{ const o = {HISTORY_CHART} && {HISTORY_CHART}.getOption();"
        " return o && o.series && o.series.some(s => s.name === 'alerts'"
        " && s.markLine && s.markLine.data.length > 0); })()"
    )
    marked = page.evaluate("window.symbiont.alertWork.chartAlerts")
    assert imbalance["id"] in {m["id"] for m in marked}
    lines = page.evaluate(
        f"{HISTORY_CHART}.getOption().series.find(s => s.name === 'alerts').markLine.data"
    )
    started = datetime.fromisoformat(imbalance["started_at"]).timestamp() * 1000
    assert any(line["xAxis"] == started for line in lines), lines
    areas = page.evaluate(
        f"{HISTORY_CHART}.getOption().series.find(s => s.name === 'alerts').markArea.data"
    )
    assert len(areas) == len(marked)
    shot(page, shots, "exchange-chart-alert-marks")

    # a period of its own beside the 24 h / 7 d / 30 d chips
    frm = system.end - timedelta(hours=30)
    to = system.end - timedelta(hours=6)
    local = "%Y-%m-%dT%H:%M"
    page.fill("#range-from", frm.astimezone().strftime(local))
    page.fill("#range-to", to.astimezone().strftime(local))
    page.click("#range-apply")
    page.wait_for_function(
        f"{HISTORY_CHART}.getOption().xAxis[0].min === {int(frm.timestamp() * 1000)}"
    )
    expect(page.locator(".range .chip.active[data-range]")).to_have_count(0)
    assert page.evaluate(f"{HISTORY_CHART}.getOption().xAxis[0].max") == int(to.timestamp() * 1000)
    page.fill("#range-from", to.astimezone().strftime(local))
    page.click("#range-apply")
    expect(page.locator("#range-error")).to_contain_text("before the end")
    shot(page, shots, "exchange-chart-custom-range")
    page.click('.range .chip[data-range="1"]')
    expect(page.locator('.range .chip[data-range="1"]')).to_have_class("chip active")


def test_partners_see_no_silences_and_only_their_alerts(
    system: ApiSystem, page_as: Any, shots: Path
) -> None:
    own = page_as(f"partner:{OWN}")
    expect(own.locator("#alert-work")).to_be_visible()
    expect(own.locator("#silences-tab")).to_be_hidden()
    expect(own.locator("#tab-silences")).to_be_hidden()
    expect(own.locator("#history-partner-label")).to_be_hidden()
    mine = api(system, f"partner:{OWN}", "/alerts", limit=100)["items"]
    assert any(a["subject"] == LEAKING for a in mine)
    rows = own.locator("#history-rows tr[data-alert-id]")
    expect(rows).to_have_count(len(mine))
    shown = set(rows.evaluate_all("rs => rs.map(r => Number(r.dataset.alertId))"))
    assert shown == {a["id"] for a in mine}
    rows.first.click()
    details = own.locator("#alert-details")
    expect(details).to_be_visible()
    expect(details.locator("button.silence-like")).to_have_count(0)
    expect(details.locator("button.ack")).to_have_count(0)
    expect(own.locator("#alerts button.ack")).to_have_count(0)
    shot(own, shots, "partner-history")

    foreign = page_as(f"partner:{FOREIGN}")
    expect(foreign.locator("#silences-tab")).to_be_hidden()
    theirs = api(system, f"partner:{FOREIGN}", "/alerts", limit=100)["items"]
    foreign_rows = foreign.locator("#history-rows tr[data-alert-id]")
    expect(foreign_rows).to_have_count(len(theirs))
    assert LEAKING not in foreign_rows.evaluate_all("rs => rs.map(r => r.dataset.subject)")
    foreign.click('#alert-work .tabs [data-tab="incidents"]')
    listed = api(system, f"partner:{FOREIGN}", "/incidents")["items"]
    expect(foreign.locator("#incident-list li[data-incident-id]")).to_have_count(len(listed))
    shot(foreign, shots, "partner-incidents")
