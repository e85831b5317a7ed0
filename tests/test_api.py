"""The API's behaviour: live snapshot and server-sent events, HTTP ingestion, pagination,
sums, statements in three formats, issuing, health and metrics."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pandas as pd
import pytest
from api_system import LEAKING, OWN, ApiSystem, db_fetch

from core.db import asyncpg_dsn


def get(system: ApiSystem, path: str, who: str = "admin", **params: Any) -> Any:
    response = httpx.get(
        f"{system.base_url}{path}", headers=system.headers(who), params=params, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_live_shows_the_leak_and_every_exchange(api_system: ApiSystem) -> None:
    live = get(api_system, "/api/v1/live")
    by_id = {e["id"]: e for e in live["exchanges"]}
    assert set(by_id) == {e.id for e in api_system.network.exchanges}
    leak = by_id[LEAKING]
    assert leak["status"] == "imbalance"
    # 25 % of the steam is lost: received ≈ 0.75 × sent (and well below 1 − the normal loss)
    assert leak["received_rate"] < 0.85 * leak["sent_rate"]
    assert leak["open_alerts"] >= 1
    assert any(a["rule"] == "imbalance" and a["subject"] == LEAKING for a in live["alerts"])
    ages = [m["age_s"] for m in live["meters"] if m["age_s"] is not None]
    assert ages and min(ages) >= 0


def _stream(
    system: ApiSystem,
    who: str,
    events: list[tuple[str, dict[str, Any]]],
    stop: threading.Event,
    ready: threading.Event,
) -> None:
    with httpx.stream(
        "GET", f"{system.base_url}/api/v1/live/stream", headers=system.headers(who), timeout=60
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in response.iter_lines():
            ready.set()
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind:
                events.append((kind, json.loads(line[6:])))
            if stop.is_set():
                return


def test_stream_sends_alert_events_scoped_to_the_partner(api_system: ApiSystem) -> None:
    """An acknowledgement is an alert event: the operator's stream gets it, and so does the
    partner whose exchange it is; a partner with nothing to do with it does not."""
    streams: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    stop = threading.Event()
    threads = []
    for who in ("operator", f"partner:{OWN}", "partner:gyproc"):
        streams[who] = []
        ready = threading.Event()
        t = threading.Thread(target=_stream, args=(api_system, who, streams[who], stop, ready))
        t.daemon = True
        t.start()
        assert ready.wait(10), f"{who}: the stream did not start"
        threads.append(t)
    alert = next(
        a
        for a in get(api_system, "/api/v1/alerts", status="firing")["items"]
        if a["subject"] == LEAKING and a["rule"] == "imbalance"
    )
    response = httpx.post(
        f"{api_system.base_url}/api/v1/alerts/{alert['id']}/ack",
        headers=api_system.headers("operator"),
    )
    assert response.status_code == 200
    assert response.json()["acknowledged_by"] == "test operator"  # the token's name

    def got(who: str) -> bool:
        return any(k == "alert" and d["id"] == alert["id"] for k, d in streams[who])

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (got("operator") and got(f"partner:{OWN}")):
        time.sleep(0.1)
    time.sleep(1.0)  # give a wrong delivery the chance to show up
    stop.set()
    assert got("operator") and got(f"partner:{OWN}")
    assert not got("partner:gyproc")
    event = next(d for k, d in streams["operator"] if k == "alert" and d["id"] == alert["id"])
    assert event["acknowledged_by"] is not None
    # a second acknowledgement changes nothing
    again = httpx.post(
        f"{api_system.base_url}/api/v1/alerts/{alert['id']}/ack",
        headers=api_system.headers("admin"),
    ).json()
    assert again["acknowledged_by"] == response.json()["acknowledged_by"]


def test_stream_ends_after_its_lifetime_with_heartbeats(api_system: ApiSystem) -> None:
    system = ApiSystem(
        api_system.database_url,
        api_system.network,
        api_system.start,
        api_system.end,
        tokens=api_system.tokens,
    )
    system.serve(live_stream_max_s=2.5, live_heartbeat_s=0.5)
    try:
        started = time.monotonic()
        with httpx.stream(
            "GET",
            f"{system.base_url}/api/v1/live/stream",
            headers=system.headers("integration"),
            timeout=30,
        ) as response:
            body = response.read().decode()
        took = time.monotonic() - started
    finally:
        system.stop()
    assert body.count(": ping") >= 2
    assert "event: bye" in body
    assert 2.0 < took < 10


def test_http_ingestion_stores_rejects_and_dedupes(api_system: ApiSystem) -> None:
    meter = "novo-steam-in"  # MWh/h rate meter of partner novo
    url = f"{api_system.base_url}/api/v1/readings/{OWN}/{meter}"
    headers = api_system.headers(f"partner:{OWN}")
    ts = (datetime.now(UTC) - timedelta(minutes=3)).replace(microsecond=123000)
    batch = [
        {"ts": ts.isoformat(), "value": 12.5, "unit": "MW"},
        {"ts": (ts + timedelta(seconds=1)).isoformat(), "value": 12500, "unit": "kW"},
        {"ts": (ts + timedelta(seconds=2)).isoformat(), "value": "NaN"},
    ]
    first = httpx.post(url, headers=headers, json=batch)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["stored"] == 2 and body["duplicates"] == 0
    assert [r["reason"] for r in body["rejected"]] == ["not_a_number"] or len(body["rejected"]) == 1
    stored = db_fetch(
        api_system,
        "SELECT ts, value FROM readings WHERE meter_id = $1 AND ts >= $2 ORDER BY ts",
        meter,
        ts,
    )
    assert [(r["ts"], r["value"]) for r in stored[:2]] == [
        (ts, 12.5),
        (ts + timedelta(seconds=1), 12.5),
    ]
    again = httpx.post(url, headers=headers, json=batch[:2]).json()
    assert again["stored"] == 0 and again["duplicates"] == 2
    conflict = httpx.post(url, headers=headers, json={"ts": ts.isoformat(), "value": 99.0})
    assert conflict.status_code == 422
    assert conflict.json()["detail"][0]["type"] == "conflict"
    broken = httpx.post(url, headers=headers, content=b"{not json")
    assert broken.status_code == 422
    reasons = {
        r["reason"] for r in get(api_system, "/api/v1/rejections", f"partner:{OWN}")["items"]
    }
    assert {"conflict"} <= reasons and len(reasons) >= 2
    # another partner's meter under its own partner is refused: it is not its meter
    other = httpx.post(
        f"{api_system.base_url}/api/v1/readings/{OWN}/gyproc-gas-in",
        headers=headers,
        json={"ts": ts.isoformat(), "value": 1.0},
    )
    assert other.status_code == 422


def test_readings_page_through_without_gaps_or_repeats(api_system: ApiSystem) -> None:
    meter = "novo-water-in"
    frm, to = api_system.start.isoformat(), (api_system.start + timedelta(hours=5)).isoformat()
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"from": frm, "to": to, "limit": 37}
        if cursor:
            params["cursor"] = cursor
        page = get(api_system, f"/api/v1/meters/{meter}/readings", **params)
        seen += [r["ts"] for r in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    rows = db_fetch(
        api_system,
        "SELECT count(*) FROM readings WHERE meter_id = $1 AND ts >= $2 AND ts < $3",
        meter,
        api_system.start,
        api_system.start + timedelta(hours=5),
    )
    assert pages > 2
    assert len(seen) == len(set(seen)) == rows[0]["count"]
    assert seen == sorted(seen)


def test_daily_balance_sums_the_windows(api_system: ApiSystem) -> None:
    frm, to = api_system.start.isoformat(), api_system.end.isoformat()
    windows = get(api_system, f"/api/v1/exchanges/{LEAKING}/windows", **{"from": frm, "to": to})
    days = get(
        api_system,
        f"/api/v1/exchanges/{LEAKING}/balance",
        **{"from": frm, "to": to, "interval": "day"},
    )
    assert windows["items"] and days["items"]
    assert sum(d["windows"] for d in days["items"]) == len(windows["items"])
    sent = sum(w["sent"] or 0 for w in windows["items"])
    assert sum(d["sent"] or 0 for d in days["items"]) == pytest.approx(sent, rel=1e-9)
    imbalanced = sum(1 for w in windows["items"] if w["status"] == "imbalance")
    assert sum(d["imbalance_windows"] for d in days["items"]) == imbalanced > 0


def test_balance_counts_windows_that_could_not_be_computed(api_system: ApiSystem) -> None:
    """A window the rules engine recorded as ``error`` is counted apart in the balance."""
    exchange = "steam-asnaes-novo"
    frm, to = api_system.start.isoformat(), api_system.end.isoformat()

    async def sql(query: str) -> str:
        conn = await asyncpg.connect(asyncpg_dsn(api_system.database_url))
        try:
            return str(await conn.execute(query))
        finally:
            await conn.close()

    first = f"""(SELECT min(window_start) FROM exchange_windows
                 WHERE exchange_id = '{exchange}' AND status <> 'error'
                 AND window_start >= '{frm}' AND window_end <= '{to}')"""
    before = get(api_system, f"/api/v1/exchanges/{exchange}/balance", **{"from": frm, "to": to})
    assert sum(d["error_windows"] for d in before["items"]) == 0
    saved = asyncio.run(
        sql(
            f"CREATE TABLE saved_window AS SELECT * FROM exchange_windows WHERE exchange_id = "
            f"'{exchange}' AND window_start = {first}"
        )
    )
    assert saved.endswith(" 1"), saved
    try:
        asyncio.run(
            sql(
                f"UPDATE exchange_windows SET status = 'error', error = 'test' "
                f"WHERE exchange_id = '{exchange}' AND window_start = "
                f"(SELECT window_start FROM saved_window)"
            )
        )
        after = get(api_system, f"/api/v1/exchanges/{exchange}/balance", **{"from": frm, "to": to})
        assert sum(d["error_windows"] for d in after["items"]) == 1
    finally:
        asyncio.run(
            sql(
                "UPDATE exchange_windows w SET status = s.status, error = NULL"
                " FROM saved_window s"
                " WHERE w.exchange_id = s.exchange_id AND w.window_start = s.window_start"
            )
        )
        asyncio.run(sql("DROP TABLE saved_window"))


def test_statement_formats(api_system: ApiSystem) -> None:
    month = datetime.now(UTC).strftime("%Y-%m")
    base = f"/api/v1/partners/{OWN}/statements/{month}"
    who = f"partner:{OWN}"
    doc = get(api_system, base, who)
    assert doc["partner"] == OWN and doc["status"] == "draft"
    assert {line["exchange"] for line in doc["lines"]} >= {LEAKING}
    csv = httpx.get(
        f"{api_system.base_url}{base}", params={"format": "csv"}, headers=api_system.headers(who)
    )
    assert csv.headers["content-type"].startswith("text/csv")
    frame = pd.read_csv(io.StringIO(csv.text))
    assert LEAKING in set(frame["exchange"].dropna())
    pdf = httpx.get(
        f"{api_system.base_url}{base}",
        headers={**api_system.headers(who), "Accept": "application/pdf"},
        timeout=60,
    )
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content.startswith(b"%PDF")
    listing = get(api_system, f"/api/v1/partners/{OWN}/statements", who)
    assert month in {item["month"] for item in listing["items"]}


def test_issue_is_admin_only_idempotent_and_refuses_an_open_month(api_system: ApiSystem) -> None:
    url = f"{api_system.base_url}/api/v1/statements"
    last = (datetime.now(UTC).replace(day=1) - timedelta(days=20)).strftime("%Y-%m")
    admin = api_system.headers("admin")
    # the system holds two days of data: last month is incomplete, and not issued by itself
    held = httpx.post(f"{url}/{last}/issue", headers=admin, timeout=300)
    assert held.status_code == 409, held.text
    refusal = held.json()
    assert "not issued, data incomplete" in refusal["detail"]
    assert refusal["statements"] == [] and refusal["month"] == last
    assert {h["partner"] for h in refusal["held"]} == {p.id for p in api_system.network.partners}
    novo = {h["partner"]: h for h in refusal["held"]}[OWN]
    assert LEAKING in {line["exchange"] for line in novo["lines"]}
    # hourly lines under the minimum coverage; a trucked one without a single ticket
    assert all(line["coverage"] < 0.99 or line["windows"] == 0 for line in novo["lines"])
    listing = get(api_system, f"/api/v1/partners/{OWN}/statements", f"partner:{OWN}")
    assert {i["month"]: i for i in listing["items"]}[last]["status"] in ("draft", "held")
    for bad in (
        {"accept_incomplete": True},
        {"reason": "no flag"},
        {"accept_incomplete": True, "reason": " "},
    ):
        answer = httpx.post(f"{url}/{last}/issue", headers=admin, json=bad)
        assert answer.status_code == 422, (bad, answer.text)
    why = "the test system holds two days of data"
    first = httpx.post(
        f"{url}/{last}/issue",
        headers=admin,
        json={"accept_incomplete": True, "reason": why},
        timeout=300,
    )
    assert first.status_code == 200, first.text
    assert all(s["new"] and s["incomplete_reason"] == why for s in first.json()["statements"])
    numbers = [s["document_number"] for s in first.json()["statements"]]
    assert len(set(numbers)) == len(numbers) == len(api_system.network.partners)
    doc = get(api_system, f"/api/v1/partners/{OWN}/statements/{last}", f"partner:{OWN}")
    assert doc["status"] == "issued" and doc["incomplete_reason"] == why
    second = httpx.post(
        f"{url}/{last}/issue",
        headers=admin,
        params={"accept_incomplete": "true", "reason": why},
        timeout=300,
    ).json()
    assert [s["content_hash"] for s in second["statements"]] == [
        s["content_hash"] for s in first.json()["statements"]
    ]
    assert not any(s["new"] for s in second["statements"])
    current = datetime.now(UTC).strftime("%Y-%m")
    assert httpx.post(f"{url}/{current}/issue", headers=admin).status_code == 409
    assert (
        httpx.post(f"{url}/{last}/issue", headers=api_system.headers("operator")).status_code == 403
    )
    listing = get(api_system, f"/api/v1/partners/{OWN}/statements", f"partner:{OWN}")
    issued = {i["month"]: i for i in listing["items"]}[last]
    assert issued["status"] == "issued" and issued["content_hash"]


def test_health_readiness_metrics(api_system: ApiSystem) -> None:
    base = api_system.base_url
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200 and ready.json()["database"] is True
    text = httpx.get(f"{base}/metrics").text
    assert 'symbiont_api_requests_total{route="/api/v1/live"' in text or (
        "symbiont_api_requests_total" in text
    )
    assert "symbiont_api_live_streams" in text
    openapi = httpx.get(f"{base}/openapi.json").json()
    assert "/api/v1/live/stream" in openapi["paths"]
    assert httpx.get(f"{base}/docs").status_code == 200


def test_not_ready_without_a_broker(api_system: ApiSystem) -> None:
    system = ApiSystem(
        api_system.database_url,
        api_system.network,
        api_system.start,
        api_system.end,
        tokens=api_system.tokens,
    )
    system.serve(mqtt_url="mqtt://127.0.0.1:1")  # nothing listens on port 1
    try:
        ready = httpx.get(f"{system.base_url}/readyz")
    finally:
        system.stop()
    assert ready.status_code == 503
    assert ready.json()["broker"] is False


def _cache_hits(system: ApiSystem) -> float:
    text = httpx.get(f"{system.base_url}/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("symbiont_api_windows_cache_hits"))
    return float(line.split()[-1])


def _first_sent(system: ApiSystem, params: dict[str, str]) -> float:
    items = get(system, f"/api/v1/exchanges/{LEAKING}/windows", **params)["items"]
    return float(items[0]["sent"])


def _poll_sent(system: ApiSystem, params: dict[str, str], want: float) -> float:
    deadline = time.monotonic() + 15
    sent = _first_sent(system, params)
    while sent != pytest.approx(want) and time.monotonic() < deadline:
        time.sleep(0.1)
        sent = _first_sent(system, params)
    return sent


def test_window_history_is_cached_until_its_windows_change(api_system: ApiSystem) -> None:
    """Served from memory while unchanged; a write to exchange_windows (from anyone) reaches
    the API by NOTIFY; a lost listener empties the cache (notifications may be missed)."""
    params = {"from": api_system.start.isoformat(), "to": api_system.end.isoformat()}
    first = db_fetch(
        api_system,
        """SELECT window_start, sent FROM exchange_windows
           WHERE exchange_id = $1 AND window_start >= $2 ORDER BY window_start LIMIT 1""",
        LEAKING,
        api_system.start,
    )[0]
    original = float(first["sent"])
    hits = _cache_hits(api_system)
    assert _first_sent(api_system, params) == pytest.approx(original)
    assert _first_sent(api_system, params) == pytest.approx(original)
    assert _cache_hits(api_system) >= hits + 1

    update = "UPDATE exchange_windows SET sent = $3 WHERE exchange_id = $1 AND window_start = $2"
    try:
        db_fetch(api_system, update, LEAKING, first["window_start"], original + 1000.0)
        assert _poll_sent(api_system, params, original + 1000.0) == pytest.approx(original + 1000.0)
        # Cut the live listener, then change the window: that NOTIFY reaches nobody.
        listeners = """SELECT pid FROM pg_stat_activity
                       WHERE application_name = 'symbiont-api-live'"""
        cut = {r["pid"] for r in db_fetch(api_system, listeners)}
        db_fetch(api_system, "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid", cut)
        db_fetch(api_system, update, LEAKING, first["window_start"], original + 2000.0)
        deadline = time.monotonic() + 15
        while not {r["pid"] for r in db_fetch(api_system, listeners)} - cut:
            assert time.monotonic() < deadline, "the live listener did not come back"
            time.sleep(0.1)
        time.sleep(0.5)  # listening again: from here on the cache is trusted
        assert _poll_sent(api_system, params, original + 2000.0) == pytest.approx(original + 2000.0)
    finally:
        db_fetch(api_system, update, LEAKING, first["window_start"], original)
    assert _poll_sent(api_system, params, original) == pytest.approx(original)


def test_incidents_group_the_leaks_alerts_with_their_timeline(api_system: ApiSystem) -> None:
    """The leak's imbalance and the alerts on the exchange's meters are one incident; its
    timeline holds their events in order (an acknowledgement too); a partner sees the
    incident with only the alerts it may see; filters and unknown ids answer as for alerts."""
    net = api_system.network
    leaking = next(e for e in net.exchanges if e.id == LEAKING)
    related = {LEAKING, *leaking.sent, *leaking.received}
    alerts = [a for a in get(api_system, "/api/v1/alerts")["items"] if a["subject"] in related]
    imbalance = next(a for a in alerts if a["rule"] == "imbalance")
    others = [a for a in alerts if a["id"] != imbalance["id"] and a["rule"] == "meter_suspect"]
    assert others, "the leak named no suspect meter"
    incident_id = imbalance["incident_id"]
    assert incident_id is not None
    assert all(a["incident_id"] == incident_id for a in others)  # same episode, same incident

    listed = get(api_system, "/api/v1/incidents")["items"]
    mine = next(i for i in listed if i["id"] == incident_id)
    assert (mine["subject"], mine["subject_kind"]) == (LEAKING, "exchange")
    assert mine["status"] == "open" and mine["resolved_at"] is None  # the leak goes on
    assert {"imbalance", "meter_suspect"} <= set(mine["rules"])
    assert set(mine["alert_ids"]) >= {imbalance["id"], *(a["id"] for a in others)}
    assert mine["started_at"] == min(
        a["started_at"] for a in alerts if a["incident_id"] == mine["id"]
    )
    assert all(
        i["status"] == "open" for i in get(api_system, "/api/v1/incidents", status="open")["items"]
    )
    assert incident_id not in {
        i["id"] for i in get(api_system, "/api/v1/incidents", status="resolved")["items"]
    }

    suspect = others[0]
    response = httpx.post(
        f"{api_system.base_url}/api/v1/alerts/{suspect['id']}/ack",
        headers=api_system.headers("operator"),
    )
    assert response.status_code == 200
    detail = get(api_system, f"/api/v1/incidents/{incident_id}")
    assert {a["id"] for a in detail["alerts"]} == set(mine["alert_ids"])
    timeline = detail["timeline"]
    times = [datetime.fromisoformat(e["at"]) for e in timeline]
    assert times == sorted(times)
    firing = {e["alert_id"]: e["at"] for e in timeline if e["event"] == "firing"}
    assert set(firing) == set(mine["alert_ids"])
    for a in detail["alerts"]:
        assert datetime.fromisoformat(firing[a["id"]]) == datetime.fromisoformat(a["started_at"])
    acks = [e for e in timeline if e["event"] == "acknowledged" and e["alert_id"] == suspect["id"]]
    assert len(acks) == 1 and acks[0]["by"] == "test operator"

    # the provider sees the incident with the exchange's alerts but not those on the
    # receiver's meters; a partner with nothing to do with it does not see it at all
    async def token(partner: str) -> str:
        from api.tokens import create_token

        conn = await asyncpg.connect(asyncpg_dsn(api_system.database_url))
        try:
            return (await create_token(conn, "partner", partner, name="test")).token
        finally:
            await conn.close()

    provider = {"Authorization": f"Bearer {asyncio.run(token(leaking.provider))}"}
    seen = httpx.get(f"{api_system.base_url}/api/v1/incidents/{incident_id}", headers=provider)
    assert seen.status_code == 200, seen.text
    as_provider = seen.json()
    theirs = {m.id for m in net.meters if m.partner == leaking.provider}
    visible = {a["id"] for a in detail["alerts"] if a["subject"] in {LEAKING} | theirs}
    assert imbalance["id"] in visible and suspect["id"] not in visible
    assert {a["id"] for a in as_provider["alerts"]} == set(as_provider["alert_ids"]) == visible
    assert {e["alert_id"] for e in as_provider["timeline"]} <= visible
    assert suspect["subject"] not in json.dumps(as_provider)
    listed_by_provider = httpx.get(f"{api_system.base_url}/api/v1/incidents", headers=provider)
    assert incident_id in {i["id"] for i in listed_by_provider.json()["items"]}
    foreign = httpx.get(
        f"{api_system.base_url}/api/v1/incidents/{incident_id}",
        headers=api_system.headers("partner:gyproc"),
    )
    assert foreign.status_code == 404

    for path, params, status in (
        ("/api/v1/incidents/999999999", {}, 404),
        ("/api/v1/incidents/0", {}, 404),
        ("/api/v1/incidents", {"status": "firing"}, 422),
        ("/api/v1/incidents", {"since": "yesterday"}, 422),
    ):
        response = httpx.get(
            f"{api_system.base_url}{path}", headers=api_system.headers("admin"), params=params
        )
        assert response.status_code == status, (path, params, response.text)
