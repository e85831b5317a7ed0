"""Alert work through the API: silences (who may make them, what they mute, what is refused),
acknowledgement with a comment and the token's name, and the alert history's filters.

The system is tests/api_system.py's: two simulated days of the example network with a leak on
``LEAKING``, the rules engine run once, a named token for every role.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import pytest
from api_system import FOREIGN, LEAKING, OWN, ApiSystem, db_fetch


def call(
    system: ApiSystem,
    method: str,
    path: str,
    who: str = "admin",
    *,
    body: Any = None,
    **params: Any,
) -> httpx.Response:
    return httpx.request(
        method,
        f"{system.base_url}/api/v1{path}",
        headers=system.headers(who),
        params=params,
        json=body,
        timeout=60,
    )


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def iso(value: datetime) -> str:
    return value.isoformat()


def leak_alert(system: ApiSystem) -> dict[str, Any]:
    items = ok(call(system, "GET", "/alerts", status="firing", rule="imbalance"))["items"]
    found = [a for a in items if a["subject"] == LEAKING]
    assert found, items
    alert: dict[str, Any] = found[0]
    return alert


def silence_body(**changes: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    body = {
        "matchers": [{"name": "rule", "value": "imbalance"}, {"name": "subject", "value": LEAKING}],
        "starts_at": iso(now - timedelta(minutes=1)),
        "ends_at": iso(now + timedelta(hours=2)),
        "comment": "valve replaced on the steam line; flows settle by noon",
    }
    body.update(changes)
    return body


def test_silences_who_may_make_them_and_what_they_mute(api_system: ApiSystem) -> None:
    alert = leak_alert(api_system)
    assert alert["silenced_by"] is None

    # partners may neither make nor read silences; integrations read only
    for who in (f"partner:{OWN}", f"partner:{FOREIGN}", "integration"):
        assert call(api_system, "POST", "/silences", who, body=silence_body()).status_code == 403
    assert call(api_system, "GET", "/silences", f"partner:{OWN}").status_code == 403

    created = ok(call(api_system, "POST", "/silences", "operator", body=silence_body()), 201)
    assert created["created_by"] == "test operator"  # the token's name
    assert created["state"] == "active"
    assert created["matchers"] == silence_body()["matchers"]
    assert alert["id"] in created["firing_alerts"]
    others = ok(call(api_system, "GET", "/alerts", status="firing"))["items"]
    assert all(
        (a["id"] in created["firing_alerts"])
        == ((a["rule"], a["subject"]) == ("imbalance", LEAKING))
        for a in others
    )

    # the alert still fires and is shown, now with the silence that mutes it
    shown = ok(call(api_system, "GET", f"/alerts/{alert['id']}"))
    assert (shown["status"], shown["silenced_by"]) == ("firing", created["id"])
    listed = ok(call(api_system, "GET", "/alerts", status="firing", subject=LEAKING))["items"]
    assert {a["id"]: a["silenced_by"] for a in listed}[alert["id"]] == created["id"]
    # a partner sees its alert, not the silence
    as_partner = ok(call(api_system, "GET", f"/alerts/{alert['id']}", f"partner:{OWN}"))
    assert as_partner["silenced_by"] is None

    # a partner matcher: an exchange alert is about its provider and its receiver
    by_partner = ok(
        call(
            api_system,
            "POST",
            "/silences",
            "admin",
            body=silence_body(matchers=[{"name": "partner", "value": OWN}]),
        ),
        201,
    )
    assert alert["id"] in by_partner["firing_alerts"]
    pending = ok(
        call(
            api_system,
            "POST",
            "/silences",
            "operator",
            body=silence_body(
                matchers=[{"name": "rule", "value": "meter_stale"}],
                starts_at=iso(datetime.now(UTC) + timedelta(hours=1)),
            ),
        ),
        201,
    )
    assert pending["state"] == "pending"

    listing = ok(call(api_system, "GET", "/silences", "integration"))["items"]
    assert [s["id"] for s in listing][:3] == [pending["id"], by_partner["id"], created["id"]]
    active = ok(call(api_system, "GET", "/silences", state="active"))["items"]
    assert {created["id"], by_partner["id"]} <= {s["id"] for s in active}
    assert pending["id"] not in {s["id"] for s in active}
    page = ok(call(api_system, "GET", "/silences", limit=1))
    second = ok(call(api_system, "GET", "/silences", limit=1, cursor=page["next_cursor"]))
    assert second["items"][0]["id"] < page["items"][0]["id"]

    # expiring: kept, with who did it; idempotent; a pending one ends before it began
    expired = {}
    for silence in (created, by_partner, pending):
        done = ok(call(api_system, "DELETE", f"/silences/{silence['id']}", "admin"))
        assert (done["state"], done["expired_by"]) == ("expired", "test admin")
        assert datetime.fromisoformat(done["ends_at"]) >= datetime.fromisoformat(done["starts_at"])
        expired[silence["id"]] = done
    assert expired[pending["id"]]["starts_at"] == expired[pending["id"]]["ends_at"]
    again = ok(call(api_system, "DELETE", f"/silences/{created['id']}", "operator"))
    assert again == expired[created["id"]]
    assert (
        call(api_system, "DELETE", f"/silences/{created['id']}", "integration").status_code == 403
    )
    assert call(api_system, "DELETE", "/silences/99999999", "operator").status_code == 404
    assert call(api_system, "GET", "/silences/99999999", "operator").status_code == 404
    assert ok(call(api_system, "GET", f"/alerts/{alert['id']}"))["silenced_by"] is None
    kept = ok(call(api_system, "GET", f"/silences/{created['id']}", "integration"))
    assert kept["state"] == "expired" and kept["firing_alerts"] == []
    assert created["id"] in {
        s["id"] for s in ok(call(api_system, "GET", "/silences", state="expired"))["items"]
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"matchers": []}, "at least 1"),
        ({"matchers": [{"name": "severity", "value": "critical"}]}, "rule"),
        (
            {"matchers": [{"name": "rule", "value": "drift"}, {"name": "rule", "value": "x"}]},
            "matched twice",
        ),
        ({"matchers": [{"name": "rule", "value": "imbalanse"}]}, "no rule 'imbalanse'"),
        ({"matchers": [{"name": "subject", "value": "nowhere"}]}, "no exchange, meter or partner"),
        ({"matchers": [{"name": "partner", "value": LEAKING}]}, f"no partner '{LEAKING}'"),
        ({"matchers": [{"name": "rule", "value": " "}]}, "empty"),
        ({"matchers": [{"name": "rule", "value": "drift", "regex": True}]}, "Extra inputs"),
        ({"ends_at": "2020-01-01T00:00:00Z", "starts_at": "2019-12-31T00:00:00Z"}, "in the past"),
        ({"starts_at": "2031-01-02T00:00:00Z", "ends_at": "2031-01-01T00:00:00Z"}, "after"),
        ({"ends_at": "2031-01-01T00:00:00"}, "timezone"),
        ({"ends_at": "next tuesday"}, "datetime"),
        ({"ends_at": None}, "datetime"),
        ({"comment": ""}, "at least 1"),
        ({"comment": "   "}, "comment is required"),
        ({"comment": "x" * 2001}, "at most 2000"),
        ({"created_by": "someone else"}, "Extra inputs"),
    ],
)
def test_a_silence_that_makes_no_sense_is_refused(
    api_system: ApiSystem, changes: dict[str, Any], message: str
) -> None:
    response = call(api_system, "POST", "/silences", "operator", body=silence_body(**changes))
    assert response.status_code == 422, response.text
    assert message in json.dumps(response.json()["detail"]), response.text


def test_acknowledgement_carries_who_and_a_comment(api_system: ApiSystem) -> None:
    firing = ok(call(api_system, "GET", "/alerts", status="firing"))["items"]
    alert = next(a for a in firing if a["acknowledged_by"] is None and a["incident_id"])
    comment = "Crew on site at 14:20; insulation on the steam line damaged"
    path = f"/alerts/{alert['id']}/ack"

    assert call(api_system, "POST", path, "integration", body={"comment": "x"}).status_code == 403
    assert call(api_system, "POST", path, body={"comment": "x", "by": "me"}).status_code == 422
    assert call(api_system, "POST", path, body={"comment": "x" * 2001}).status_code == 422
    assert call(api_system, "POST", path, body={"comment": "nul \u0000"}).status_code == 422
    assert ok(call(api_system, "GET", f"/alerts/{alert['id']}"))["acknowledged_by"] is None

    assert ok(call(api_system, "GET", "/whoami", "operator"))["name"] == "test operator"
    acked = ok(call(api_system, "POST", path, "operator", body={"comment": f"  {comment} "}))
    assert (acked["acknowledged_by"], acked["ack_comment"]) == ("test operator", comment)
    assert acked["acknowledged_at"] is not None
    shown = ok(call(api_system, "GET", f"/alerts/{alert['id']}"))
    assert (shown["acknowledged_by"], shown["ack_comment"]) == ("test operator", comment)
    # a second acknowledgement changes nothing, its comment included
    again = ok(call(api_system, "POST", path, "admin", body={"comment": "me too"}))
    assert (again["acknowledged_by"], again["ack_comment"]) == ("test operator", comment)
    assert again["acknowledged_at"] == acked["acknowledged_at"]

    # the event the integrations are sent carries both
    events = db_fetch(
        api_system,
        "SELECT payload::text AS payload FROM alert_events WHERE alert_id = $1"
        " AND kind = 'acknowledged'",
        alert["id"],
    )
    assert len(events) == 1
    payload = json.loads(events[0]["payload"])
    assert payload["event"] == "acknowledged"
    assert payload["alert"]["acknowledged_by"] == "test operator"
    assert payload["alert"]["ack_comment"] == comment

    # and the incident's timeline
    timeline = ok(call(api_system, "GET", f"/incidents/{alert['incident_id']}"))["timeline"]
    acks = [e for e in timeline if e["event"] == "acknowledged" and e["alert_id"] == alert["id"]]
    assert [(e["by"], e["comment"]) for e in acks] == [("test operator", comment)]

    # without a body, as before: who, and no comment
    other = next(
        (a for a in firing if a["acknowledged_by"] is None and a["id"] != alert["id"]), None
    )
    if other is not None:
        plain = ok(call(api_system, "POST", f"/alerts/{other['id']}/ack", "admin"))
        assert (plain["acknowledged_by"], plain["ack_comment"]) == ("test admin", None)


def add_history(system: ApiSystem) -> None:
    """Alerts of the past beside the leak's: resolved and firing, on meters, exchanges and a
    partner, of both partners used here."""
    net = system.network
    foreign_meter = next(m.id for m in net.meters if m.partner == FOREIGN)
    own_meter = next(m.id for m in net.meters if m.partner == OWN)
    foreign_exchange = next(e.id for e in net.exchanges if FOREIGN in (e.provider, e.receiver))
    now = datetime.now(UTC).replace(microsecond=0)
    rows = [
        ("meter_stale", foreign_meter, "meter", "warning", 30, 29),
        ("counter_reset", own_meter, "meter", "warning", 20, 19),
        ("drift", foreign_exchange, "exchange", "critical", 10, 4),
        ("rejections", FOREIGN, "partner", "warning", 5, None),
    ]
    for rule, subject, kind, severity, began_h, ended_h in rows:
        db_fetch(
            system,
            """INSERT INTO alerts (fingerprint, rule, subject, subject_kind, severity, status,
                                   started_at, resolved_at, summary)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
            f"{rule}:{subject}",
            rule,
            subject,
            kind,
            severity,
            "firing" if ended_h is None else "resolved",
            now - timedelta(hours=began_h),
            None if ended_h is None else now - timedelta(hours=ended_h),
            f"{rule} on {subject}",
        )


def test_alert_history_filters(api_system: ApiSystem) -> None:
    net = api_system.network
    add_history(api_system)
    every = ok(call(api_system, "GET", "/alerts", limit=1000))["items"]
    assert len(every) >= 6, every
    assert {a["status"] for a in every} == {"firing", "resolved"}
    leaking = next(e for e in net.exchanges if e.id == LEAKING)

    def ids(who: str = "admin", **params: Any) -> list[int]:
        return [a["id"] for a in ok(call(api_system, "GET", "/alerts", who, **params))["items"]]

    def expect(pred: Any) -> list[int]:
        return [a["id"] for a in every if pred(a)]

    assert ids(status="firing") == expect(lambda a: a["status"] == "firing")
    assert ids(status="resolved") == expect(lambda a: a["status"] == "resolved")
    assert ids(rule="imbalance") == expect(lambda a: a["rule"] == "imbalance")
    assert ids(severity="critical") == expect(lambda a: a["severity"] == "critical")
    assert ids(subject=LEAKING) == expect(lambda a: a["subject"] == LEAKING)
    meters = {*leaking.sent, *leaking.received}
    about_leak = expect(lambda a: a["subject"] in meters | {LEAKING})
    assert ids(exchange=LEAKING) == about_leak
    assert any(a["subject"] in meters for a in every if a["id"] in about_leak)
    two = [next(a["subject"] for a in every if a["subject"] in meters), LEAKING]
    assert ids(subject=two) == expect(lambda a: a["subject"] in two)
    mine = {OWN} | {m.id for m in net.meters if m.partner == OWN}
    mine |= {e.id for e in net.exchanges if OWN in (e.provider, e.receiver)}
    assert ids(partner=OWN) == expect(lambda a: a["subject"] in mine)
    assert ids(partner="nobody") == []

    def started(a: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(a["started_at"])

    starts = sorted({started(a) for a in every})
    assert len(starts) >= 4
    early, middle = starts[1], starts[len(starts) // 2 + 1]
    assert ids(since=iso(middle)) == expect(lambda a: started(a) >= middle)
    assert ids(until=iso(middle)) == expect(lambda a: started(a) < middle)
    between = expect(lambda a: early <= started(a) < middle and a["status"] == "resolved")
    assert between and ids(since=iso(early), until=iso(middle), status="resolved") == between
    # a page of at most `limit`, the next from the cursor, nothing twice
    first = ok(call(api_system, "GET", "/alerts", limit=1))
    rest = ok(call(api_system, "GET", "/alerts", limit=1000, cursor=first["next_cursor"]))
    assert [a["id"] for a in first["items"] + rest["items"]] == [a["id"] for a in every]

    # a partner's filters stay inside its part of the network
    own = ids(f"partner:{OWN}", limit=1000)
    assert own and set(own) <= {a["id"] for a in every}
    assert ids(f"partner:{OWN}", partner=FOREIGN) == [
        i for i in own if next(a for a in every if a["id"] == i)["subject"] in foreign_of(net)
    ]
    assert ids(f"partner:{FOREIGN}", exchange=LEAKING) == []
    assert ids(f"partner:{FOREIGN}", subject=LEAKING) == []

    for params in (
        {"until": "2026-01-01T00:00:00"},
        {"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"},
        {"subject": "a\u0000b"},
        {"partner": "a\u0000b"},
        {"severity": "fatal"},
        {"subject": [f"s{i}" for i in range(101)]},
    ):
        response = call(api_system, "GET", "/alerts", **params)
        assert response.status_code == 422, (params, response.text)


def foreign_of(net: Any) -> set[str]:
    """Alert subjects whose partners include FOREIGN."""
    found = {FOREIGN} | {m.id for m in net.meters if m.partner == FOREIGN}
    return found | {e.id for e in net.exchanges if FOREIGN in (e.provider, e.receiver)}


def test_who_is_the_token_name_else_its_role_and_id() -> None:
    from api.deps import Caller
    from api.tokens import Principal, Role

    def name(principal: Principal) -> str:
        return Caller(principal, cast(Any, None)).name

    assert name(Principal(7, Role.operator, None, "Jane Doe, control room")) == (
        "Jane Doe, control room"
    )
    assert name(Principal(7, Role.operator, None, "  ")) == "operator#7"
    assert name(Principal(9, Role.partner, "novo", "")) == "partner:novo#9"
