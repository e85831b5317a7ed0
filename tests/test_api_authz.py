"""The authorization matrix: every API route × every role × own and foreign partner.

The routes come from the app itself, and each must have an entry in ``MATRIX`` (written
here, independently of the app's own dependencies): a new endpoint without a decision about
who may call it fails ``test_every_route_is_in_the_matrix``.  For each (route, caller) the
status must be the one the matrix implies, and no partner response may name anything outside
that partner's part of the network (zero leaks).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from api_system import FOREIGN, LEAKING, OWN, ApiSystem
from fastapi.routing import APIRoute

from api.app import create_app
from core.db import asyncpg_dsn
from core.network import Network
from core.settings import Settings

ADMIN, OPERATOR, PARTNER, INTEGRATION = "admin", "operator", "partner", "integration"
EVERYONE = frozenset({ADMIN, OPERATOR, PARTNER, INTEGRATION})
READERS = frozenset({ADMIN, OPERATOR, PARTNER})


@dataclass(frozen=True)
class Rule:
    roles: frozenset[str]
    ok: int = 200


MATRIX: dict[tuple[str, str], Rule] = {
    ("GET", "/api/v1/whoami"): Rule(EVERYONE),
    ("GET", "/api/v1/network"): Rule(READERS),
    ("GET", "/api/v1/live"): Rule(EVERYONE),
    ("GET", "/api/v1/live/stream"): Rule(EVERYONE),
    ("GET", "/api/v1/meters"): Rule(EVERYONE),
    ("GET", "/api/v1/meters/{meter_id}/readings"): Rule(READERS),
    ("GET", "/api/v1/exchanges/{exchange_id}/windows"): Rule(READERS),
    ("GET", "/api/v1/exchanges/{exchange_id}/balance"): Rule(READERS),
    ("GET", "/api/v1/reconciliations"): Rule(READERS),
    ("GET", "/api/v1/rejections"): Rule(READERS),
    ("GET", "/api/v1/alerts"): Rule(EVERYONE),
    ("GET", "/api/v1/alerts/{alert_id}"): Rule(EVERYONE),
    ("POST", "/api/v1/alerts/{alert_id}/ack"): Rule(frozenset({ADMIN, OPERATOR})),
    ("GET", "/api/v1/incidents"): Rule(EVERYONE),
    ("GET", "/api/v1/incidents/{incident_id}"): Rule(EVERYONE),
    ("GET", "/api/v1/silences"): Rule(frozenset({ADMIN, OPERATOR, INTEGRATION})),
    ("GET", "/api/v1/silences/{silence_id}"): Rule(frozenset({ADMIN, OPERATOR, INTEGRATION})),
    ("POST", "/api/v1/silences"): Rule(frozenset({ADMIN, OPERATOR}), 201),
    ("DELETE", "/api/v1/silences/{silence_id}"): Rule(frozenset({ADMIN, OPERATOR})),
    ("GET", "/api/v1/partners/{partner_id}/statements"): Rule(READERS),
    ("GET", "/api/v1/partners/{partner_id}/statements/{month}"): Rule(READERS),
    ("GET", "/api/v1/partners/{partner_id}/statements/{month}/revisions"): Rule(READERS),
    ("POST", "/api/v1/statements/{month}/issue"): Rule(frozenset({ADMIN})),
    ("POST", "/api/v1/readings/{partner_id}/{meter_id}"): Rule(frozenset({ADMIN, PARTNER})),
}

# Callers: (token key in ApiSystem.tokens or None/"bad", role, which partner's ids to use)
CALLERS: dict[str, tuple[str | None, str | None, str]] = {
    "anonymous": (None, None, OWN),
    "bad-token": ("bad", None, OWN),
    "admin": ("admin", ADMIN, OWN),
    "operator": ("operator", OPERATOR, OWN),
    "integration": ("integration", INTEGRATION, OWN),
    "partner-own": (f"partner:{OWN}", PARTNER, OWN),
    "partner-foreign": (f"partner:{OWN}", PARTNER, FOREIGN),
}


def _walk(routes: list[Any], prefix: str = "") -> set[tuple[str, str]]:
    """(method, path) of every endpoint, through included routers of any depth."""
    found: set[tuple[str, str]] = set()
    for route in routes:
        if isinstance(route, APIRoute):
            path = prefix + route.path
            found |= {(method, path) for method in route.methods}
            continue
        inner = getattr(route, "original_router", None)  # FastAPI's included routers
        if inner is not None:
            context = getattr(route, "include_context", None)
            found |= _walk(inner.routes, prefix + getattr(context, "prefix", ""))
        elif hasattr(route, "routes") and not hasattr(route, "app"):
            found |= _walk(route.routes, prefix + getattr(route, "path", ""))
    return found


def api_routes() -> set[tuple[str, str]]:
    app = create_app(Settings(database_url="postgresql://unused@127.0.0.1/unused"))
    found = {(m, p) for m, p in _walk(list(app.routes)) if p.startswith("/api/")}
    # whatever the walk finds, the OpenAPI document's operations must be among them
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
        if path.startswith("/api/")
    }
    assert documented <= found, f"the route walk missed {sorted(documented - found)}"
    return found


def test_every_route_is_in_the_matrix() -> None:
    routes = api_routes()
    missing = routes - MATRIX.keys()
    stale = MATRIX.keys() - routes
    assert not missing, f"routes with no authorization decision in MATRIX: {sorted(missing)}"
    assert not stale, f"MATRIX names routes the app does not have: {sorted(stale)}"


def visible_ids(net: Network, partner: str) -> set[str]:
    """What a partner may see, worked out here from the network file's meaning."""
    exchanges = [e for e in net.exchanges if partner in (e.provider, e.receiver)]
    seen = {partner}
    seen |= {e.id for e in exchanges}
    seen |= {p for e in exchanges for p in (e.provider, e.receiver)}
    seen |= {m for e in exchanges for m in (*e.sent, *e.received)}
    seen |= {m.id for m in net.meters if m.partner == partner}
    return seen


def foreign_ids(net: Network, partner: str) -> set[str]:
    every = {p.id for p in net.partners} | {m.id for m in net.meters}
    every |= {e.id for e in net.exchanges} | {b.id for b in net.balances}
    return every - visible_ids(net, partner)


def leaks(text: str, ids: set[str]) -> list[str]:
    return [i for i in ids if re.search(rf"(?<![\w-]){re.escape(i)}(?![\w-])", text)]


@dataclass
class Fixtures:
    """Path parameters per partner: things that partner owns."""

    values: dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def params(api_system: ApiSystem) -> Fixtures:
    net = api_system.network

    def meter_of(partner: str) -> str:
        return next(m.id for m in net.meters if m.partner == partner)

    def exchange_of(partner: str) -> str:
        return next(e.id for e in net.exchanges if partner in (e.provider, e.receiver))

    async def alert_ids() -> tuple[dict[str, int], dict[str, int], int]:
        conn = await asyncpg.connect(asyncpg_dsn(api_system.database_url))
        try:
            own = await conn.fetchrow(
                "SELECT id, incident_id FROM alerts WHERE subject = $1 ORDER BY id LIMIT 1",
                LEAKING,
            )
            # an alert about a meter of the foreign partner, in an incident of its own, as the
            # rules engine writes them
            incident = await conn.fetchval(
                "INSERT INTO incidents (subject, subject_kind, status, severity, started_at)"
                " VALUES ($1, 'meter', 'open', 'warning', now()) RETURNING id",
                meter_of(FOREIGN),
            )
            foreign = await conn.fetchval(
                "INSERT INTO alerts (fingerprint, rule, subject, subject_kind, severity, status,"
                " started_at, summary, incident_id) VALUES ($1, 'meter_stale', $2, 'meter',"
                " 'warning', 'firing', now(), 'test alert', $3) RETURNING id",
                f"meter_stale:{meter_of(FOREIGN)}",
                meter_of(FOREIGN),
                incident,
            )
            silence = await conn.fetchval(
                "INSERT INTO silences (matchers, starts_at, ends_at, comment, created_by)"
                """ VALUES ('[{"name": "rule", "value": "counter_reset"}]', now(),"""
                " now() + interval '1 hour', 'authorization test', 'test') RETURNING id"
            )
            if own is None:
                return {}, {}, 0
            return (
                {OWN: own["id"], FOREIGN: foreign},
                {OWN: own["incident_id"], FOREIGN: incident},
                silence,
            )
        finally:
            await conn.close()

    alerts, incidents, silence = asyncio.run(alert_ids())
    assert alerts.get(OWN) is not None, "the leak raised no alert to test with"
    assert incidents[OWN] is not None, "the leak's alert is in no incident"
    month = datetime.now(UTC) - timedelta(days=40)
    previous = f"{month.year:04d}-{month.month:02d}"
    values = {}
    for partner in (OWN, FOREIGN):
        values[partner] = {
            "meter_id": meter_of(partner),
            "exchange_id": LEAKING if partner == OWN else exchange_of(partner),
            "partner_id": partner,
            "alert_id": str(alerts[partner]),
            "incident_id": str(incidents[partner]),
            "silence_id": str(silence),
            "month": previous,
        }
    assert values[FOREIGN]["exchange_id"] not in {
        e.id for e in net.exchanges if OWN in (e.provider, e.receiver)
    }
    return Fixtures(values)


def _request(
    client: httpx.Client, method: str, path: str, headers: dict[str, str]
) -> tuple[int, str]:
    body: dict[str, object] | None = None
    if method == "POST" and path.endswith("/issue"):  # the test system's data is incomplete
        body = {"accept_incomplete": True, "reason": "authorization test"}
    if method == "POST" and path == "/api/v1/silences":
        ends = datetime.now(UTC) + timedelta(hours=1)
        body = {
            "matchers": [{"name": "rule", "value": "counter_reset"}],
            "ends_at": ends.isoformat(),
            "comment": "authorization test",
        }
    if method == "POST" and path.startswith("/api/v1/readings/"):
        ts = datetime.now(UTC) - timedelta(minutes=1, microseconds=uuid.uuid4().int % 10**6)
        body = {"ts": ts.isoformat(), "value": 1.0}
    if path.endswith("/live/stream"):
        with client.stream(method, path, headers=headers) as response:
            first = next(response.iter_bytes(), b"") if response.status_code == 200 else b""
            if response.status_code != 200:
                first = response.read()
            return response.status_code, first.decode(errors="replace")
    response = client.request(method, path, headers=headers, json=body)
    text = response.text if "pdf" not in response.headers.get("content-type", "") else ""
    return response.status_code, text


def _expected(rule: Rule, role: str | None, token: str | None, partner: str) -> int:
    if token is None or token == "bad":
        return 401
    if role not in rule.roles:
        return 403
    return rule.ok


PARTNER_PATHS = ("{meter_id}", "{exchange_id}", "{partner_id}", "{alert_id}", "{incident_id}")


@pytest.mark.parametrize("caller", list(CALLERS))
def test_authorization_matrix(api_system: ApiSystem, params: Fixtures, caller: str) -> None:
    token_key, role, partner = CALLERS[caller]
    headers = {}
    if token_key == "bad":
        headers = {"Authorization": "Bearer sym_1_" + "x" * 43}
    elif token_key is not None:
        headers = api_system.headers(token_key)
    net = api_system.network
    hidden = foreign_ids(net, OWN)
    failures: list[str] = []
    with httpx.Client(base_url=api_system.base_url, timeout=60) as client:
        for (method, template), rule in sorted(MATRIX.items()):
            path = template.format(**params.values[partner])
            status, text = _request(client, method, path, headers)
            expected = _expected(rule, role, token_key, partner)
            scoped = any(p in template for p in PARTNER_PATHS)
            if role == PARTNER and expected == rule.ok and partner == FOREIGN and scoped:
                expected = 404
            if status != expected:
                failures.append(f"{method} {path}: {status}, expected {expected}: {text[:200]}")
            if role == PARTNER and status < 300:
                found = leaks(text, hidden)
                if found:
                    failures.append(f"{method} {path} leaks {sorted(found)}")
    assert not failures, "\n".join(failures)


def test_partner_lists_hold_only_its_own(api_system: ApiSystem, params: Fixtures) -> None:
    """The lists a partner gets are not empty (so the leak check above means something) and
    hold only its own things."""
    headers = api_system.headers(f"partner:{OWN}")
    mine = visible_ids(api_system.network, OWN)
    with httpx.Client(base_url=api_system.base_url, timeout=30) as client:
        live = client.get("/api/v1/live", headers=headers).json()
        alerts = client.get("/api/v1/alerts", headers=headers).json()["items"]
        network = client.get("/api/v1/network", headers=headers).json()
        admin_alerts = client.get("/api/v1/alerts", headers=api_system.headers("admin")).json()
        incidents = client.get("/api/v1/incidents", headers=headers).json()["items"]
        admin_incidents = client.get(
            "/api/v1/incidents", headers=api_system.headers("admin")
        ).json()["items"]
    assert {e["id"] for e in live["exchanges"]} == {
        e.id for e in api_system.network.exchanges if OWN in (e.provider, e.receiver)
    }
    assert {m["id"] for m in live["meters"]} == {
        m.id for m in api_system.network.meters if m.partner == OWN
    }
    assert alerts and all(a["subject"] in mine for a in alerts)
    assert len(admin_alerts["items"]) > len(alerts)  # the foreign alert exists, but not for OWN
    assert {e["id"] for e in network["exchanges"]} <= mine
    assert {m["id"] for m in network["meters"]} <= mine
    # incidents: only those with an alert it may see, and of them only those alerts
    assert incidents and all(i["subject"] in mine for i in incidents)
    assert {a for i in incidents for a in i["alert_ids"]} <= {a["id"] for a in alerts}
    assert len(admin_incidents) > len(incidents)  # the foreign alert's incident


def test_failed_auth_is_logged_without_the_token(
    api_system: ApiSystem, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sym_999_" + "S" * 43
    with caplog.at_level("WARNING", logger="symbiont.api.auth"):
        response = httpx.get(
            f"{api_system.base_url}/api/v1/live", headers={"Authorization": f"Bearer {secret}"}
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    messages = [r for r in caplog.records if r.name == "symbiont.api.auth"]
    assert messages, "the failed authentication was not logged"
    for record in messages:
        assert "S" * 10 not in record.getMessage() and "sym_999" not in str(record.__dict__)


def test_revoked_token_stops_working(api_system: ApiSystem) -> None:
    async def make_and_revoke() -> tuple[str, int]:
        from api.tokens import create_token

        conn = await asyncpg.connect(asyncpg_dsn(api_system.database_url))
        try:
            created = await create_token(conn, "operator", name="to revoke")
            return created.token, created.id
        finally:
            await conn.close()

    token, token_id = asyncio.run(make_and_revoke())
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{api_system.base_url}/api/v1/whoami"
    assert httpx.get(url, headers=headers).status_code == 200

    async def revoke() -> None:
        from api.tokens import revoke_token

        conn = await asyncpg.connect(asyncpg_dsn(api_system.database_url))
        try:
            assert await revoke_token(conn, token_id)
        finally:
            await conn.close()

    asyncio.run(revoke())
    # verified tokens are cached for a few seconds: a revoked one stops within that time
    deadline = datetime.now(UTC) + timedelta(seconds=15)
    while datetime.now(UTC) < deadline:
        if httpx.get(url, headers=headers).status_code == 401:
            return
        asyncio.run(asyncio.sleep(0.5))
    pytest.fail("the revoked token still works after 15 s")
