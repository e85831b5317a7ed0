"""docker-compose.yml and the Dockerfile, checked without Docker.

Docker does not run here, so the file is loaded with PyYAML and held against the code it
deploys: every command parses with the real CLI parser, every ``SYMBIONT_*`` variable is a
setting, the MQTT URLs name the users ``symbiont broker-config`` creates and the variables its
``credentials.env`` defines, Mosquitto mounts the files it writes where the generated
``mosquitto.conf`` looks for them, and the dependencies, restart policies, health checks and
volumes are what one host needs.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli import brokerconfig
from cli.main import build_parser
from core.network import load_network
from core.settings import Settings
from ingest.service import parse_mqtt_url

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"

ONE_OFF = {"migrate", "network"}
LONG_RUNNING = {"mosquitto", "postgres", "ingest-1", "ingest-2", "rules", "api"}
INGEST = ("ingest-1", "ingest-2")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def symbiont_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run the image of this repository's Dockerfile."""
    return {name: s for name, s in services.items() if s.get("build") == "."}


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's ``${NAME}`` / ``${NAME:?message}`` substitution, from ``values``."""
    return _VARIABLE.sub(lambda m: values[m.group(1)], text)


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping, please"
    return {str(k): str(v) for k, v in env.items()}


def test_the_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == ONE_OFF | LONG_RUNNING
    assert set(symbiont_services(services)) == ONE_OFF | {"ingest-1", "ingest-2", "rules", "api"}
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    assert services["postgres"]["image"].startswith("postgres:")


def test_commands_parse_with_the_cli(services: dict[str, dict[str, Any]]) -> None:
    parser = build_parser()
    expected = {
        "migrate": ("db", "_db_upgrade"),
        "network": ("network", "_network_apply"),
        "ingest-1": ("ingest", "_ingest"),
        "ingest-2": ("ingest", "_ingest"),
        "rules": ("rules", "_rules"),
        "api": ("api", "_api"),
    }
    for name, service in symbiont_services(services).items():
        command = service["command"]
        assert isinstance(command, list) and all(isinstance(a, str) for a in command), name
        args = parser.parse_args(command)
        assert (args.command, args.handler.__name__) == expected[name], name
    assert parser.parse_args(services["rules"]["command"]).once is False
    api = parser.parse_args(services["api"]["command"])
    assert api.host == "0.0.0.0"  # noqa: S104 (in its container, behind the published port)
    # the network applied is a file of the image (the Dockerfile copies examples/ to /app)
    applied = parser.parse_args(services["network"]["command"]).file
    assert applied.is_absolute() and str(applied).startswith("/app/")
    load_network(REPO / applied.relative_to("/app"))


def test_dockerfile_runs_the_cli() -> None:
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["symbiont"]' in text
    packages = ("core", "ingest", "rules", "statements", "notify", "api", "cli")
    for directory in (*packages, "migrations", "examples"):
        assert re.search(rf"^COPY {directory} {directory}$", text, re.M), directory
    assert re.search(r"^USER (?!root)\S+", text, re.M), "the services should not run as root"


def test_dependencies(services: dict[str, dict[str, Any]]) -> None:
    def conditions(name: str) -> dict[str, str]:
        return {dep: c["condition"] for dep, c in services[name]["depends_on"].items()}

    assert conditions("migrate") == {"postgres": "service_healthy"}
    assert conditions("network") == {"migrate": "service_completed_successfully"}
    for name in (*INGEST, "rules"):
        assert conditions(name) == {
            "network": "service_completed_successfully",
            "mosquitto": "service_healthy",
        }, name
    assert conditions("api") == {
        "migrate": "service_completed_successfully",
        "postgres": "service_healthy",
    }
    # every service depended on "healthy" has a health check
    for service in services.values():
        for dep, cond in (service.get("depends_on") or {}).items():
            if cond["condition"] == "service_healthy":
                assert services[dep].get("healthcheck"), dep


def test_restart_policies_and_health_checks(services: dict[str, dict[str, Any]]) -> None:
    for name in LONG_RUNNING:
        service = services[name]
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
        if test[0] == "CMD" and test[1:3] == ["python", "-c"]:
            compile(test[3], f"{name} healthcheck", "exec")  # the check is valid Python
    for name in ONE_OFF:
        assert services[name]["restart"] == "no", name

    api_port = build_parser().parse_args(services["api"]["command"]).port
    assert f"http://127.0.0.1:{api_port}/readyz" in services["api"]["healthcheck"]["test"][3]
    assert f"{api_port}:{api_port}" in services["api"]["ports"]
    for name in (*INGEST, "rules"):
        port = environment(services[name])["SYMBIONT_METRICS_PORT"]
        assert f"http://127.0.0.1:{port}/metrics" in services[name]["healthcheck"]["test"][3]
    for name in INGEST:
        assert "symbiont_ingest_connected 1.0" in services[name]["healthcheck"]["test"][3]

    # Mosquitto refuses anonymous clients: its health check signs in as the monitor user.
    check = services["mosquitto"]["healthcheck"]["test"]
    assert check[0] == "CMD-SHELL"
    words = shlex.split(check[1].replace("$$", "$"))
    assert words[0] == "mosquitto_sub"
    assert words[words.index("-u") + 1] == brokerconfig.MONITOR_USER
    assert words[words.index("-P") + 1] == "$MONITOR_PASSWORD"
    assert words[words.index("-t") + 1] == "$SYS/broker/uptime"  # the monitor may read $SYS
    monitor = environment(services["mosquitto"])["MONITOR_PASSWORD"]
    match = _VARIABLE.fullmatch(monitor)
    assert match and match.group(1) == brokerconfig.password_variable(brokerconfig.MONITOR_USER)


def test_two_ingest_workers_share_the_subscription(services: dict[str, dict[str, Any]]) -> None:
    parser = build_parser()
    ids = [parser.parse_args(services[name]["command"]).client_id for name in INGEST]
    assert all(ids) and len(set(ids)) == 2, ids
    for name in INGEST:
        env = environment(services[name])
        assert "SYMBIONT_INGEST_CLIENT_ID" not in env  # the command line names each one
        assert (
            "SYMBIONT_INGEST_SHARE_GROUP" not in env
            or len({environment(services[n]).get("SYMBIONT_INGEST_SHARE_GROUP") for n in INGEST})
            == 1
        )


def test_exactly_one_ingest_worker_takes_sparkplug(services: dict[str, dict[str, Any]]) -> None:
    takes = [
        name
        for name in INGEST
        if Settings.model_validate(
            {"ingest_sparkplug": environment(services[name]).get("SYMBIONT_INGEST_SPARKPLUG", True)}
        ).ingest_sparkplug
    ]
    assert takes == ["ingest-1"]


def test_environment_names_settings(services: dict[str, dict[str, Any]]) -> None:
    settings = {f"SYMBIONT_{name.upper()}" for name in Settings.model_fields}
    for name, service in symbiont_services(services).items():
        env = environment(service)
        assert "SYMBIONT_DATABASE_URL" in env, name
        for variable in env:
            assert variable in settings, f"{name}: {variable} is not a setting"


def test_mqtt_users_and_passwords(services: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """Each service signs in as its own user, with the password variable broker-config writes
    into credentials.env; Compose needs no variable that neither file defines."""
    result = brokerconfig.write_broker_config(
        load_network(REPO / "examples" / "kalundborg.yaml"), tmp_path
    )
    assert not result.removed
    credentials = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in (tmp_path / brokerconfig.CREDENTIALS_FILE).read_text().splitlines()
        if line and not line.startswith("#")
    }
    values = {**credentials, "POSTGRES_PASSWORD": "pg-secret"}

    strings = list(_strings(yaml.safe_load(COMPOSE.read_text())))
    used = {name for text in strings for name in _VARIABLE.findall(text)}
    assert used <= set(values), f"variables nobody defines: {used - set(values)}"
    for text in strings:
        assert "$" not in _VARIABLE.sub("", text.replace("$$", "")), f"a bare $ in {text!r}"

    expected_user = {
        "ingest-1": brokerconfig.INGEST_USER,
        "ingest-2": brokerconfig.INGEST_USER,
        "rules": brokerconfig.RULES_USER,
        "api": None,  # only checks that the broker accepts connections
    }
    for name, user in expected_user.items():
        url = interpolate(environment(services[name])["SYMBIONT_MQTT_URL"], values)
        target = parse_mqtt_url(url)
        assert (target.host, target.port) == ("mosquitto", 1883), name
        assert target.username == user, name
        if user is not None:
            assert target.password == credentials[brokerconfig.password_variable(user)], name
    for name in ONE_OFF:
        assert "SYMBIONT_MQTT_URL" not in environment(services[name]), name
    database = interpolate(environment(services["api"])["SYMBIONT_DATABASE_URL"], values)
    assert database == "postgresql://symbiont:pg-secret@postgres:5432/symbiont"


def test_mosquitto_runs_the_generated_config(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    mounts: dict[str, tuple[str, str]] = {}
    for volume in services["mosquitto"]["volumes"]:
        source, target, *options = volume.split(":")
        mounts[target] = (source, ",".join(options))
    config = "/mosquitto/config"
    for name in (brokerconfig.CONF_FILE, brokerconfig.PASSWD_FILE, brokerconfig.ACL_FILE):
        source, options = mounts[f"{config}/{name}"]
        assert source == f"./deploy/broker/{name}" and options == "ro", name
    assert not any(brokerconfig.CREDENTIALS_FILE in source for source, _ in mounts.values()), (
        "the clear-text passwords have no business in the broker's container"
    )

    # The generated mosquitto.conf (defaults) reads its files and persists where they are
    # mounted, and keeps every queued QoS 1 message.
    net = load_network(REPO / "examples" / "kalundborg.yaml")
    conf = dict(
        line.split(" ", 1)
        for line in brokerconfig.render_conf(net).splitlines()
        if line and not line.startswith("#")
    )
    assert conf["password_file"] == f"{config}/{brokerconfig.PASSWD_FILE}"
    assert conf["acl_file"] == f"{config}/{brokerconfig.ACL_FILE}"
    assert conf["allow_anonymous"] == "false"
    assert conf["persistence"] == "true"
    assert conf["max_queued_messages"] == "0" and conf["max_queued_bytes"] == "0"
    data_volume, _ = mounts[conf["persistence_location"].rstrip("/")]
    assert data_volume in compose["volumes"]
    port = int(conf["listener"])
    assert f"{port}:{port}" in services["mosquitto"]["ports"]


def test_volumes(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    assert {"postgres-data", "mosquitto-data"} <= set(compose["volumes"])
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "mosquitto-data:/mosquitto/data" in services["mosquitto"]["volumes"]
