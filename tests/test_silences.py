"""Silences against a real webhook receiver: what a silence mutes is recorded but not sent;
when it ends, an alert still firing is announced, one that fired and resolved inside it never
is, and new events go out again. The Alertmanager refresh leaves muted alerts out.

The alerts are raised through the rules' own lifecycle (events and outbox rows in one
transaction), on the example network applied to a migrated database, and delivered by the
notifier; time moves by passing ``now`` to it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from test_notify import Receiver, make_settings

from core.apply import apply_network
from core.db import connect
from core.network import load_network
from notify import silences
from notify.alertmanager import resend_firing_to_alertmanager
from notify.worker import Notifier
from rules import lifecycle
from rules.alerts import Decision, Severity, Verdict

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def hook() -> Iterator[Receiver]:
    rec = Receiver()
    rec.start()
    yield rec
    rec.stop()


def events(receiver: Receiver) -> list[tuple[str, str, int]]:
    """(fingerprint, event, alert id) of every accepted webhook, in order."""
    out = []
    for request in receiver.accepted():
        if request.path != "/hook":
            continue
        body = json.loads(request.body)
        out.append((body["alert"]["fingerprint"], body["event"], body["alert"]["id"]))
    return out


def test_a_silence_holds_deliveries_back_until_it_ends(database_url: str, hook: Receiver) -> None:
    net = load_network(REPO / "examples" / "kalundborg.yaml")
    muted_exchange = next(e for e in net.exchanges)
    other_exchange = next(
        e
        for e in net.exchanges
        if muted_exchange.provider not in (e.provider, e.receiver)
        and muted_exchange.receiver not in (e.provider, e.receiver)
    )
    settings = make_settings(
        database_url, alert_webhooks=[hook.url("/hook")], alertmanager_url=hook.url("/am")
    )

    def targets(alert: dict[str, Any]) -> list[tuple[str, str]]:
        return [("webhook", hook.url("/hook"))]

    async def verdict(
        conn: asyncpg.Connection, rule: str, exchange: str, decision: Decision, at: datetime
    ) -> None:
        subject = lifecycle.Subject(rule, exchange, "exchange")
        v = Verdict(decision, Severity.critical, f"{rule} on {exchange}", {"z": 4.2}, at)
        async with conn.transaction():
            await lifecycle.apply_verdict(conn, subject, v, at, targets=targets)

    async def go() -> None:
        conn = await connect(database_url, application_name="symbiont-tests")
        try:
            await apply_network(conn, net)
            t0 = datetime.now(UTC)
            # imbalances of every exchange the muted exchange's provider is an end of
            silence = await silences.create(
                conn,
                [("rule", "imbalance"), ("partner", muted_exchange.provider)],
                t0 - timedelta(minutes=1),
                t0 + timedelta(minutes=10),
                "steam line works",
                "test operator",
            )
            muted_fp = f"imbalance:{muted_exchange.id}"
            other_fp = f"imbalance:{other_exchange.id}"
            drift_fp = f"drift:{muted_exchange.id}"

            async with Notifier(settings) as notifier:
                # inside the silence: the muted imbalance fires and is acknowledged, a drift
                # on the same exchange (not matched: another rule) and an imbalance elsewhere
                # (not matched: another partner) go out
                await verdict(conn, "imbalance", muted_exchange.id, Decision.fire, t0)
                await verdict(conn, "drift", muted_exchange.id, Decision.fire, t0)
                await verdict(conn, "imbalance", other_exchange.id, Decision.fire, t0)
                muted = await conn.fetchrow("SELECT * FROM alerts WHERE fingerprint = $1", muted_fp)
                async with conn.transaction():
                    await lifecycle.acknowledge(
                        conn, muted["id"], "test operator", t0, comment="on it", targets=targets
                    )
                await notifier.deliver_due(now=datetime.now(UTC) + timedelta(seconds=1))
                # (sent side by side: in either order)
                assert sorted((f, e) for f, e, _ in events(hook)) == [
                    (drift_fp, "firing"),
                    (other_fp, "firing"),
                ]
                # the muted alert fires and is recorded all the same
                kinds = await conn.fetch(
                    "SELECT kind FROM alert_events WHERE alert_id = $1 ORDER BY id", muted["id"]
                )
                assert [k["kind"] for k in kinds] == ["firing", "acknowledged"]
                held = await conn.fetch(
                    "SELECT status, silence_id, attempts FROM outbox"
                    " WHERE payload #>> '{alert,fingerprint}' = $1 ORDER BY id",
                    muted_fp,
                )
                assert [tuple(r) for r in held] == [("silenced", silence.id, 0)] * 2
                assert (
                    await conn.fetchval(
                        "SELECT count(*) FROM deliveries d JOIN outbox o ON o.id = d.outbox_id"
                        " WHERE o.silence_id IS NOT NULL"
                    )
                    == 0
                )

                # the Alertmanager refresh (by the wall clock) leaves the muted alert out
                assert await resend_firing_to_alertmanager(conn, settings) == 2
                refreshed = [r for r in hook.accepted() if r.path == "/am/api/v2/alerts"]
                names = {
                    (a["labels"]["alertname"], a["labels"]["exchange"])
                    for a in json.loads(refreshed[-1].body)
                }
                assert names == {("drift", muted_exchange.id), ("imbalance", other_exchange.id)}

                # an imbalance that fires and resolves inside the silence is never sent
                third = next(
                    e
                    for e in net.exchanges
                    if muted_exchange.provider in (e.provider, e.receiver)
                    and e.id != muted_exchange.id
                )
                await verdict(conn, "imbalance", third.id, Decision.fire, t0)
                await verdict(conn, "imbalance", third.id, Decision.resolve, t0)
                await notifier.deliver_due(now=datetime.now(UTC) + timedelta(seconds=1))
                assert len(events(hook)) == 2
                # nothing happens while the silence lasts, however often the notifier passes
                await notifier.deliver_due(now=t0 + timedelta(minutes=9))
                assert len(events(hook)) == 2

                # the silence ends: the alert still firing is announced (firing, then its
                # latest state); the one that came and went inside it is dropped
                after = t0 + timedelta(minutes=11)
                await notifier.deliver_due(now=after)
                got = [(f, e) for f, e, _ in events(hook)]
                assert got[2:] == [(muted_fp, "firing"), (muted_fp, "acknowledged")]
                final = {
                    (r["fp"], r["event"]): (r["status"], r["silence_id"])
                    for r in await conn.fetch(
                        "SELECT payload #>> '{alert,fingerprint}' AS fp,"
                        " payload->>'event' AS event, status, silence_id FROM outbox"
                    )
                }
                assert final[(muted_fp, "firing")] == ("delivered", silence.id)
                assert final[(muted_fp, "acknowledged")] == ("delivered", silence.id)
                third_fp = f"imbalance:{third.id}"
                assert final[(third_fp, "firing")] == ("suppressed", silence.id)
                assert final[(third_fp, "resolved")] == ("suppressed", silence.id)

                # new events go out as they happen, and nothing is sent twice
                await verdict(conn, "imbalance", muted_exchange.id, Decision.resolve, after)
                await notifier.deliver_due(now=datetime.now(UTC) + timedelta(minutes=12))
                await notifier.deliver_due(now=datetime.now(UTC) + timedelta(minutes=13))
                got = [(f, e) for f, e, _ in events(hook)]
                assert got[4:] == [(muted_fp, "resolved")]
                ids = [r.headers["webhook-id"] for r in hook.accepted() if r.path == "/hook"]
                assert len(ids) == len(set(ids)) == 5
                assert await silences.muted_counts(conn, [silence.id]) == {silence.id: 4}
        finally:
            await conn.close()

    asyncio.run(go())


def test_an_expired_silence_lets_a_resolve_through_to_who_saw_the_alert_fire(
    database_url: str, hook: Receiver
) -> None:
    """Fired before the silence (delivered), resolved during it (held): when the silence is
    expired the receiver, which was told it fired, is told it resolved."""
    net = load_network(REPO / "examples" / "kalundborg.yaml")
    exchange = net.exchanges[0]
    settings = make_settings(database_url, alert_webhooks=[hook.url("/hook")])

    def targets(alert: dict[str, Any]) -> list[tuple[str, str]]:
        return [("webhook", hook.url("/hook"))]

    async def go() -> None:
        conn = await connect(database_url, application_name="symbiont-tests")
        try:
            await apply_network(conn, net)
            subject = lifecycle.Subject("imbalance", exchange.id, "exchange")
            t0 = datetime.now(UTC)
            async with Notifier(settings) as notifier:
                fire = Verdict(Decision.fire, Severity.warning, "leak", {}, t0)
                async with conn.transaction():
                    await lifecycle.apply_verdict(conn, subject, fire, t0, targets=targets)
                await notifier.deliver_due(now=datetime.now(UTC) + timedelta(seconds=1))
                silence = await silences.create(
                    conn,
                    [("subject", exchange.id)],
                    t0,
                    t0 + timedelta(days=1),
                    "maintenance",
                    "test operator",
                )
                resolve = Verdict(Decision.resolve, at=t0)
                async with conn.transaction():
                    await lifecycle.apply_verdict(conn, subject, resolve, t0, targets=targets)
                await notifier.deliver_due(now=datetime.now(UTC) + timedelta(seconds=2))
                assert [e for _, e, _ in events(hook)] == ["firing"]
                expired = await silences.expire(
                    conn, silence.id, "test admin", datetime.now(UTC) + timedelta(seconds=3)
                )
                assert expired is not None and expired.expired_by == "test admin"
                await notifier.deliver_due(now=datetime.now(UTC) + timedelta(seconds=4))
                assert [e for _, e, _ in events(hook)] == ["firing", "resolved"]
        finally:
            await conn.close()

    asyncio.run(go())


def test_silence_commands(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main
    from core.settings import get_settings

    net = load_network(REPO / "examples" / "kalundborg.yaml")
    meter = net.meters[0].id

    async def apply() -> None:
        conn = await connect(database_url, application_name="symbiont-tests")
        try:
            await apply_network(conn, net)
        finally:
            await conn.close()

    asyncio.run(apply())
    monkeypatch.setenv("SYMBIONT_DATABASE_URL", database_url)
    get_settings.cache_clear()

    def symbiont(*args: str) -> tuple[int, str, str]:
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse refusing an argument
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = symbiont(
        "silences", "add", "-m", "rule=meter_stale", "-m", f"subject={meter}",
        "--duration", "2h", "--comment", "meter swap", "--by", "alice",
    )  # fmt: skip
    assert code == 0, err
    made = int(out.strip())
    code, out, _ = symbiont("silences", "list", "--state", "active")
    assert code == 0 and f"rule=meter_stale subject={meter}" in out and "by alice" in out
    assert out.split()[0] == str(made)

    refusals = {
        ("-m", "rule=meter_stail", "--duration", "1h"): "no rule 'meter_stail'",
        ("-m", "subject=nowhere", "--duration", "1h"): "no exchange, meter or partner",
        ("-m", "rule=drift"): "either --ends TIME or --duration",
        ("-m", "colour=red", "--duration", "1h"): "unknown matcher name 'colour'",
        ("-m", "rule=drift", "--ends", "2020-01-01T00:00:00Z"): "must be after",
    }
    for args, message in refusals.items():
        code, _, err = symbiont("silences", "add", *args, "--comment", "x")
        assert code == 1 and message in err, (args, err)
    code, _, err = symbiont("silences", "add", "-m", "rule", "--duration", "1h", "--comment", "x")
    assert code == 2 and "NAME=VALUE" in err

    code, out, _ = symbiont("silences", "delete", str(made), "--by", "bob")
    assert code == 0 and f"silence {made} expired" in out
    code, out, _ = symbiont("silences", "list")
    assert "expired" in out and "expired by bob" in out
    code, _, err = symbiont("silences", "delete", "987654")
    assert code == 1 and "no silence with id 987654" in err
