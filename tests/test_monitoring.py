"""Monitoring as deployed (deploy/prometheus, deploy/grafana, deploy/postgres), held against
the real parts:

- Prometheus's configuration and alert rules pass ``promtool check``, and the rules pass their
  unit tests (``promtool test rules``), which notice a wrong threshold.
- The rules worker measures the engine's and the outbox's backlog into its metrics: in
  process on a database with waiting work, and served by the real ``symbiont rules``.
- Every metric name a dashboard panel or an alert rule uses is one the real services export
  (``symbiont ingest``, ``rules`` and ``api`` started and scraped here) or, for the broker,
  one the exporter makes from the ``$SYS`` topics a Mosquitto running the generated
  configuration publishes to the monitor user; every PromQL expression parses (promtool).
- Every SQL query of the dashboards runs, as the read-only role Grafana's setup script makes
  (deploy/grafana/setup.sh with grafana-reader.sql, run as Compose runs it), on a migrated
  database holding the example network and a few windows and alerts, with Grafana's macros
  expanded as Grafana does; the role can read nothing else and write nothing, and the script
  keeps the passwords it generated when it runs again.

promtool comes with Debian's ``prometheus`` package (scripts/test-deps.sh installs it).  The
tests that need it skip without it on a developer's machine and fail without it in CI.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import yaml
from ingest_helpers import ServiceProcess, apply_network, scrape_metrics, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from services import Mosquitto, create_database, drop_database, free_port
from sqlalchemy.engine import make_url

from cli import brokerconfig
from core.ages import Age
from core.db import connect
from core.network import load_network
from ingest.writer import MARK_DIRTY
from rules import metrics as rules_metrics
from rules.store import mark_subjects

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
DASHBOARDS_DIR = REPO / "deploy" / "grafana" / "dashboards"
DATASOURCES = REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "symbiont.yml"
READER_SQL = REPO / "deploy" / "postgres" / "grafana-reader.sql"
GRAFANA_SETUP = REPO / "deploy" / "grafana" / "setup.sh"
KALUNDBORG = REPO / "examples" / "kalundborg.yaml"

# Series Prometheus makes itself rather than scraping them.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "ALERTS", "ALERTS_FOR_STATE"}
# What Grafana puts in place of its variables in PromQL (any valid duration will do).
PROMQL_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
# $SYS topics the exporter leaves out (static strings, deprecated duplicates).
EXPORTER_IGNORES = {
    "$SYS/broker/timestamp",
    "$SYS/broker/version",
    "$SYS/broker/clients/active",
    "$SYS/broker/clients/inactive",
}


def promtool() -> str:
    """The promtool binary; skips without it, except in CI (CI set), where that fails."""
    found = shutil.which("promtool")
    if found:
        return found
    message = "promtool is not installed (Debian package prometheus, see scripts/test-deps.sh)"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def run_promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def alert_rules(path: Path = PROMETHEUS_DIR / "alerts.yml") -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS_DIR.glob("*.json"))}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel with queries (rows hold none; collapsed rows keep theirs inside)."""
    for panel in board["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


# -- 1. Prometheus configuration and alert rules -----------------------------------------------


def test_prometheus_config_and_rules_pass_promtool_check() -> None:
    config = run_promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    assert "SUCCESS: 1 rule files found" in config.stdout + config.stderr
    rules = run_promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in rules.stdout + rules.stderr


def test_alert_rules_pass_their_unit_tests() -> None:
    result = run_promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout

    # every alert is shown firing, and silent on some input
    cases = yaml.safe_load((PROMETHEUS_DIR / "alerts.test.yml").read_text())["tests"]
    checks = [check for case in cases for check in case["alert_rule_test"]]
    names = {rule["alert"] for rule in alert_rules()}
    assert {c["alertname"] for c in checks if c["exp_alerts"]} == names
    assert {c["alertname"] for c in checks if not c["exp_alerts"]} == names


def test_the_unit_tests_notice_a_wrong_threshold(tmp_path: Path) -> None:
    for name in ("alerts.yml", "alerts.test.yml"):
        shutil.copy(PROMETHEUS_DIR / name, tmp_path / name)
    rules = tmp_path / "alerts.yml"
    text = rules.read_text()
    assert text.count("symbiont_rules_pending_age_seconds) > 600") == 1
    rules.write_text(text.replace("pending_age_seconds) > 600", "pending_age_seconds) > 6000"))
    result = run_promtool("test", "rules", "alerts.test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "SymbiontRulesFallingBehind" in result.stdout + result.stderr


# -- 2. the backlog metrics ---------------------------------------------------------------------


def test_an_age_grows_between_measurements() -> None:
    now = [100.0]
    age = Age(clock=lambda: now[0])
    assert age.value() == 0.0
    age.set(30.0)
    now[0] += 5
    assert age.value() == 35.0
    age.set(None)  # nothing waits any more
    now[0] += 60
    assert age.value() == 0.0
    age.set(-0.2)  # the database's clock a hair ahead
    assert age.value() == 0.0


def _sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} is not exported"
    return value


def test_the_rules_backlog_is_measured_and_a_mark_again_keeps_its_age(database_url: str) -> None:
    start = datetime(2026, 11, 2, 10, tzinfo=UTC)

    async def go() -> list[tuple[float, float, float]]:
        seen = []
        conn = await connect(database_url, application_name="symbiont-tests")
        try:

            async def observe() -> None:
                await rules_metrics.observe_backlog(conn)
                seen.append(
                    (
                        _sample("symbiont_rules_pending_windows"),
                        _sample("symbiont_rules_pending_subjects"),
                        _sample("symbiont_rules_pending_age_seconds"),
                    )
                )

            await conn.execute(
                """INSERT INTO dirty_windows (meter_id, window_start, marked_at) VALUES
                   ('m1', $1, now() - interval '1 hour'), ('m2', $1, now() - interval '5 min')""",
                start,
            )
            await conn.execute(
                """INSERT INTO dirty_subjects (kind, subject, window_start, marked_at)
                   VALUES ('exchange', 'x', $1, now() - interval '10 min')""",
                start,
            )
            await observe()
            # new readings mark the same pairs again, the way ingest and the engine do
            await conn.execute(MARK_DIRTY, ["m1", "m3"], [start, start])
            await mark_subjects(conn, [("exchange", "x", start)])
            versions = await conn.fetchval("SELECT sum(version) FROM dirty_windows")
            assert versions == 4  # m1 twice, m2 and m3 once
            await observe()
            # computed: nothing waits
            await conn.execute("DELETE FROM dirty_windows")
            await conn.execute("DELETE FROM dirty_subjects")
            await observe()
        finally:
            await conn.close()
        return seen

    first, marked_again, done = asyncio.run(go())
    assert first[:2] == (2, 1)
    assert 3600 <= first[2] < 3660
    assert marked_again[:2] == (3, 1)
    assert 3600 <= marked_again[2] < 3660  # the change of an hour ago still waits
    assert done == (0, 0, 0)


@dataclass
class Exported:
    """What the real services serve on /metrics: their texts and parsed samples."""

    texts: dict[str, str]  # service -> exposition text
    rules_samples: dict[str, float]


def _get_metrics(port: int) -> str | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
    except httpx.HTTPError:
        return None
    return response.text if response.status_code == 200 else None


def _scrape_when_measured(ports: dict[str, int]) -> Exported:
    """Each service's /metrics, once the rules worker has tried the notification and measured
    the outbox and ingest is connected to its broker."""
    texts: dict[str, str] = {}

    def served(service: str) -> bool:
        text = _get_metrics(ports[service])
        if text is not None:
            texts[service] = text
        return text is not None

    for service in ports:
        wait_until(lambda s=service: served(s), 60, f"{service}'s /metrics")

    def rules_measured() -> bool:
        samples = scrape_metrics(ports["rules"])
        retried = samples.get("symbiont_notify_deliveries_total{channel=webhook,result=retry}")
        return (retried or 0) >= 1 and samples.get(
            "symbiont_notify_outbox_pending{channel=webhook}"
        ) == 1

    wait_until(rules_measured, 60, "the rules worker's outbox metrics")
    wait_until(
        lambda: "symbiont_ingest_connected 1.0" in (_get_metrics(ports["ingest"]) or ""),
        30,
        "ingest's broker connection",
    )
    for service in ports:
        assert served(service)
    return Exported(texts=texts, rules_samples=scrape_metrics(ports["rules"]))


@pytest.fixture(scope="module")
def exported(
    postgres_admin_url: str, database_template: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Exported]:
    """``symbiont ingest``, ``rules`` and ``api`` run on a database holding the example
    network and one notification for a webhook nobody answers, created two hours ago; each
    is scraped once the rules worker has tried the notification and measured the outbox."""
    name = f"symbiont_monitoring_{secrets.token_hex(6)}"
    url = create_database(postgres_admin_url, name, template=database_template)
    logs = tmp_path_factory.mktemp("monitoring")
    try:
        apply_network(url, yaml.safe_load(KALUNDBORG.read_text()))

        async def seed() -> None:
            conn = await connect(url, application_name="symbiont-tests")
            try:
                await conn.execute(
                    """INSERT INTO outbox (event_key, channel, target, payload, created_at)
                       VALUES ('alert:1:firing', 'webhook', $1, '{}',
                               now() - interval '2 hours')""",
                    f"http://127.0.0.1:{free_port()}/nobody-listens",
                )
            finally:
                await conn.close()

        asyncio.run(seed())
        with Mosquitto() as broker:
            ports = {"ingest": free_port(), "rules": free_port(), "api": free_port()}
            common = {"SYMBIONT_DATABASE_URL": url}
            processes = [
                ServiceProcess(
                    ["ingest", "--client-id", "monitoring-ingest"],
                    env={
                        **common,
                        "SYMBIONT_MQTT_URL": broker.url,
                        "SYMBIONT_METRICS_PORT": str(ports["ingest"]),
                    },
                    log_path=logs / "ingest.log",
                    name="ingest",
                ),
                ServiceProcess(
                    ["rules", "--worker-id", "monitoring"],
                    env={**common, "SYMBIONT_METRICS_PORT": str(ports["rules"])},
                    log_path=logs / "rules.log",
                    name="rules",
                ),
                ServiceProcess(
                    ["api", "--port", str(ports["api"])],
                    env=common,
                    log_path=logs / "api.log",
                    name="api",
                ),
            ]
            try:
                for process in processes:
                    process.start()
                yield _scrape_when_measured(ports)
            finally:
                for process in processes:
                    process.terminate()
    finally:
        drop_database(postgres_admin_url, name)


def test_the_rules_worker_serves_the_backlog(exported: Exported) -> None:
    samples = exported.rules_samples
    # the notification: tried once (nobody listens), waiting for its next attempt
    assert samples["symbiont_notify_outbox_pending{channel=webhook}"] == 1
    assert samples["symbiont_notify_outbox_pending{channel=mqtt}"] == 0
    assert samples["symbiont_notify_deliveries_total{channel=webhook,result=retry}"] >= 1
    assert samples["symbiont_notify_deliveries_total{channel=webhook,result=delivered}"] == 0
    assert 7200 <= samples["symbiont_notify_outbox_pending_age_seconds"] < 7200 + 600
    # the engine's backlog is measured too (what waits depends on the network just applied)
    for name in (
        "symbiont_rules_pending_windows",
        "symbiont_rules_pending_subjects",
        "symbiont_rules_pending_age_seconds",
    ):
        assert samples[name] >= 0, name


# -- 3. metric names the dashboards and alerts use ------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
_KEYWORDS |= {"and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        if match.group(2) is None and match.group(1) not in _KEYWORDS:
            names.add(match.group(1))
    return names


def test_metric_names_finds_the_selected_series() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{route!~"x.*",le="1"}[5m])))'
        " > 1 and on (job) up{job='api'} == 0 or vector(0) + b offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "up", "b"}


def exported_names(text: str) -> set[str]:
    """Every series name a /metrics text can have, from its families' names and types (a
    labelled family with no child yet has no sample but is declared)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        base = family.name
        names |= {sample.name for sample in family.samples}
        if family.type == "counter":
            names |= {f"{base}_total", f"{base}_created"}
        elif family.type == "histogram":
            names |= {f"{base}{s}" for s in ("_bucket", "_sum", "_count", "_created")}
        elif family.type == "summary":
            names |= {base, *(f"{base}{s}" for s in ("_sum", "_count", "_created"))}
        else:
            names.add(base)
    return names


@pytest.fixture(scope="module")
def broker_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The metric names the exporter makes of the ``$SYS`` topics that a Mosquitto running
    the generated configuration publishes to the monitor user: the topic without ``$SYS/``,
    with ``/``, spaces, ``-`` and ``.`` turned into ``_``."""
    directory = tmp_path_factory.mktemp("broker")
    net = load_network(KALUNDBORG)
    brokerconfig.write_broker_config(net, directory, broker_dir=str(directory))
    password = brokerconfig.read_credentials(directory / brokerconfig.CREDENTIALS_FILE)[
        brokerconfig.MONITOR_USER
    ]
    topics: set[str] = set()
    lock = threading.Lock()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with lock:
            topics.add(message.topic)

    with Mosquitto.from_config(directory / brokerconfig.CONF_FILE) as broker:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="monitoring-exporter")
        client.username_pw_set(brokerconfig.MONITOR_USER, password)
        client.on_message = on_message
        client.on_connect = lambda c, *_: c.subscribe("$SYS/#")
        client.connect(broker.host, broker.port)
        client.loop_start()
        try:
            # $SYS is retained: what the broker has published arrives at once; its counters
            # (uptime among them) follow within its 10 s interval.
            wait_until(lambda: "$SYS/broker/uptime" in topics, 30, "the broker's $SYS topics")
            time.sleep(0.5)
        finally:
            client.loop_stop()
            client.disconnect()
    with lock:
        found = topics - EXPORTER_IGNORES
    names = set()
    for topic in found:
        name = topic.replace("$SYS/", "", 1)
        for old in ("/", " ", "-", "."):
            name = name.replace(old, "_")
        names.add(name)
    assert "broker_clients_connected" in names
    return names


def promql_expressions() -> list[tuple[str, str]]:
    """(where, expression) of every PromQL query: dashboard panels and alert rules."""
    found = []
    for file, board in dashboards().items():
        for panel in panels(board):
            for target in panel.get("targets", []):
                if target["datasource"]["type"] == "prometheus":
                    expr = target["expr"]
                    for variable, value in PROMQL_VARIABLES.items():
                        expr = expr.replace(variable, value)
                    found.append((f"{file}: {panel['title']} {target['refId']}", expr))
    for rule in alert_rules():
        found.append((f"alerts.yml: {rule['alert']}", rule["expr"]))
    return found


def test_every_promql_expression_parses(tmp_path: Path) -> None:
    expressions = promql_expressions()
    for where, expr in expressions:
        assert "$" not in expr, f"{where}: a Grafana variable this test does not know: {expr}"
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"check:expression_{i}", "expr": expr}
                    for i, (_, expr) in enumerate(expressions)
                ],
            }
        ]
    }
    path = tmp_path / "expressions.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(expressions)} rules found" in result.stdout


def test_dashboards_and_alerts_use_only_exported_metrics(
    exported: Exported, broker_names: set[str]
) -> None:
    services = {service: exported_names(text) for service, text in exported.texts.items()}
    for service, names in services.items():
        assert any(n.startswith(f"symbiont_{service}_") for n in names), service
    available = set().union(*services.values()) | broker_names | PROMETHEUS_OWN
    used: dict[str, set[str]] = {}
    for where, expr in promql_expressions():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr}"
        for name in names:
            used.setdefault(name, set()).add(where)
    missing = {name: sorted(where) for name, where in used.items() if name not in available}
    assert not missing, f"metrics nobody exports: {missing}"
    # the health dashboard covers each service and the broker
    for prefix in ("symbiont_ingest_", "symbiont_rules_", "symbiont_notify_", "symbiont_api_"):
        assert any(n.startswith(prefix) for n in used), prefix
    assert any(n in broker_names for n in used)


# -- 4. the dashboards' JSON and SQL --------------------------------------------------------------


def test_dashboards_parse_and_every_panel_has_a_query() -> None:
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    sources = {d["uid"]: d["type"] for d in provisioned}
    boards = dashboards()
    assert set(boards) == {"park.json", "service-health.json"}
    assert len({b["uid"] for b in boards.values()}) == len(boards)
    for file, board in boards.items():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), file
        found = list(panels(board))
        assert found, file
        for panel in found:
            where = f"{file}: {panel.get('title')}"
            assert panel["title"] and panel["gridPos"]["w"] > 0, where
            targets = panel.get("targets") or []
            assert targets, f"{where} has no query"
            for target in targets:
                source = target.get("datasource") or panel["datasource"]
                assert sources.get(source["uid"]) == source["type"], where
                query = target.get("expr") if source["type"] == "prometheus" else target["rawSql"]
                assert query and query.strip(), f"{where}: an empty query"
        for variable in board["templating"]["list"]:
            assert sources.get(variable["datasource"]["uid"]) == variable["datasource"]["type"]
    kinds = {
        file: {t["datasource"]["type"] for p in panels(b) for t in p["targets"]}
        for file, b in boards.items()
    }
    assert kinds == {
        "park.json": {"grafana-postgresql-datasource"},
        "service-health.json": {"prometheus"},
    }


FROM = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
TO = FROM + timedelta(days=1)
SQL_INTERVAL = "1h"  # what Grafana would put for $__interval


def _seconds(interval: str) -> int:
    match = re.fullmatch(r"'?(\d+)([smhd])'?", interval)
    assert match, f"an interval this test does not know: {interval}"
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def _macro(match: re.Match[str]) -> str:
    """Grafana's PostgreSQL macros (its macros.go), for the ones the dashboards use."""
    name = match.group(1)
    args = [a.strip() for a in match.group(2).split(",")]
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    if name == "__timeFilter":
        return f"{args[0]} BETWEEN '{FROM.strftime(stamp)}' AND '{TO.strftime(stamp)}'"
    if name == "__timeFrom":
        return f"'{FROM.strftime(stamp)}'"
    if name == "__timeTo":
        return f"'{TO.strftime(stamp)}'"
    if name in ("__timeGroup", "__timeGroupAlias"):
        seconds = _seconds(args[1])
        group = f"floor(extract(epoch from {args[0]})/{seconds})*{seconds}"
        return group + (' AS "time"' if name == "__timeGroupAlias" else "")
    raise AssertionError(f"a Grafana macro this test does not expand: ${name}")


def expand(sql: str, variables: dict[str, list[str]]) -> str:
    """The SQL Grafana sends: variables (multi-valued, quoted and comma-joined), then
    macros."""
    sql = sql.replace("$__interval", SQL_INTERVAL)
    for name, values in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        quoted = ",".join("'" + v.replace("'", "''") + "'" for v in values)
        sql = sql.replace(f"${{{name}}}", quoted).replace(f"${name}", quoted)
    sql = re.sub(r"\$(\w+)\(([^)]*)\)", _macro, sql)
    assert "$" not in sql, f"left unexpanded: {sql}"
    return sql


def _psql(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """psql on ``url``, stopping at the first error."""
    psql = shutil.which("psql")
    assert psql, "psql (PostgreSQL's client) is needed"
    return subprocess.run(
        [psql, url, "-v", "ON_ERROR_STOP=1", "-q", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _seed(url: str) -> dict[str, str]:
    """A window of an exchange and of a balance's meters, a firing alert, an hour of ingest
    counts, a rejection and a reconciliation, within the dashboards' time range."""
    conn = await connect(url, application_name="symbiont-tests")
    try:
        exchange = await conn.fetchval("SELECT min(id) FROM exchanges")
        balance = await conn.fetchval("SELECT min(id) FROM balances")
        partner = await conn.fetchval("SELECT provider_id FROM exchanges WHERE id = $1", exchange)
        start = TO - timedelta(hours=2)
        await conn.execute(
            """INSERT INTO exchange_windows (exchange_id, window_start, window_end, sent,
                   received, loss, imbalance, sigma, z, coverage, status)
               VALUES ($1, $2::timestamptz, $2::timestamptz + interval '1 hour',
                       100, 90, 0.05, 5, 1, 5, 1, 'imbalance')""",
            exchange,
            start,
        )
        await conn.execute(
            """INSERT INTO meter_windows (meter_id, window_start, window_end, quantity,
                   coverage, readings)
               SELECT meter_id, $2::timestamptz, $2::timestamptz + interval '1 hour',
                      CASE side WHEN 'in' THEN 40 ELSE 10 END, 1, 60
               FROM balance_meters WHERE balance_id = $1""",
            balance,
            start,
        )
        await conn.execute(
            """INSERT INTO alerts (fingerprint, rule, subject, subject_kind, severity, status,
                   started_at, summary)
               VALUES ('f1', 'imbalance', $1, 'exchange', 'critical', 'firing', $2, 'leak')""",
            exchange,
            start,
        )
        await conn.execute(
            """INSERT INTO ingest_counts (partner_id, hour, messages, readings, rejected)
               VALUES ($1, $2, 100, 99, 1)""",
            partner,
            start,
        )
        await conn.execute(
            """INSERT INTO rejections (received_at, topic, partner_id, reason, detail, payload)
               VALUES ($1, 'symbiont/readings/x', $2, 'unknown_meter', 'no such meter', 'x')""",
            start,
            partner,
        )
        await conn.execute(
            """INSERT INTO reconciliations (component, window_start, window_end, statistic, dof,
                   critical, passed)
               VALUES ('c1', $1::timestamptz, $1::timestamptz + interval '1 hour',
                       20, 2, 9.2, false)""",
            start,
        )
    finally:
        await conn.close()
    return {"exchange": exchange, "balance": balance, "partner": partner}


async def _fetch_as(url: str, sql: str) -> list[dict[str, Any]]:
    conn = await connect(url, application_name="grafana-test")
    try:
        return [dict(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def _grafana_setup(database_url: str, secrets_dir: Path, role: str) -> str:
    """deploy/grafana/setup.sh as grafana-setup runs it, on the test's database."""
    url = make_url(database_url)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PG")},
        "PGHOST": url.host or "127.0.0.1",
        "PGPORT": str(url.port or 5432),
        "PGUSER": url.username or "postgres",
        "PGDATABASE": url.database or "",
        "GRAFANA_SECRETS_DIR": str(secrets_dir),
        "GRAFANA_DB_ROLE": role,
        "GRAFANA_READER_SQL": str(READER_SQL),
    }
    if url.password:
        env["PGPASSWORD"] = url.password
    done = subprocess.run(
        ["sh", str(GRAFANA_SETUP)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_dashboard_sql_runs_as_the_read_only_role(database_url: str, tmp_path: Path) -> None:
    role = f"grafana_test_{secrets.token_hex(4)}"
    assert f"role {role} ready" in _grafana_setup(database_url, tmp_path, role)
    made = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert set(made) == {"grafana-db-password", "grafana-admin-password"}
    for name, password in made.items():
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", password), name
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o444, name
    assert made["grafana-db-password"] != made["grafana-admin-password"]
    _grafana_setup(database_url, tmp_path, role)  # every `up` runs it: it keeps the passwords
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == made
    reader_url = make_url(database_url).set(username=role, password=None)
    reader = reader_url.render_as_string(hide_password=False)
    try:
        apply_network(database_url, yaml.safe_load(KALUNDBORG.read_text()))
        seeded = asyncio.run(_seed(database_url))

        board = dashboards()["park.json"]
        variables = {}
        for variable in board["templating"]["list"]:
            rows = asyncio.run(_fetch_as(reader, expand(variable["query"], {})))
            variables[variable["name"]] = [str(next(iter(r.values()))) for r in rows]
        assert seeded["exchange"] in variables["exchange"]
        assert seeded["balance"] in variables["balance"]

        results: dict[str, list[dict[str, Any]]] = {}
        for panel in panels(board):
            for target in panel["targets"]:
                sql = expand(target["rawSql"], variables)
                try:
                    rows = asyncio.run(_fetch_as(reader, sql))
                except Exception as exc:
                    raise AssertionError(f"{panel['title']}: {exc}\n{sql}") from exc
                if target["format"] == "time_series":
                    for row in rows:
                        assert {"time", "metric", "value"} <= set(row), panel["title"]
                results[panel["title"]] = rows

        flows = results["Sent and received"]
        assert {(r["metric"], r["value"]) for r in flows} == {
            (f"{seeded['exchange']} sent", 100),
            (f"{seeded['exchange']} received", 90),
        }
        [row] = results["Exchange balance over the period"]
        assert (row["exchange"], float(row["imbalance %"])) == (seeded["exchange"], 5.26)
        [balance] = results["Balances over the period"]
        assert balance["balance"] == seeded["balance"] and float(balance["in"]) == 40
        [alert] = results["Firing alerts"]
        assert (alert["rule"], alert["subject"]) == ("imbalance", seeded["exchange"])
        assert results["Firing alerts"] and results["Exchanges by status of their last window"]
        assert [r["metric"] for r in results["Network reconciliation"]] == ["failed"]

        # the role reads nothing else and writes nothing
        forbidden = {
            "SELECT * FROM api_tokens": "permission denied",
            "SELECT target FROM outbox": "permission denied",
            "SELECT payload FROM rejections": "permission denied",
            "SELECT pdf FROM statements": "permission denied",
            "SELECT price FROM terms": "permission denied",
            "SELECT 1 FROM alerts FOR UPDATE": "read-only transaction",
            "DELETE FROM alerts": "read-only transaction",
        }
        for sql, error in forbidden.items():
            with pytest.raises(Exception, match=error):
                asyncio.run(_fetch_as(reader, sql))
    finally:
        dropped = _psql(database_url, "-c", f'DROP OWNED BY "{role}"', "-c", f'DROP ROLE "{role}"')
        assert dropped.returncode == 0, dropped.stderr
