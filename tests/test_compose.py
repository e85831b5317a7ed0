"""docker-compose.yml and the Dockerfile, checked without Docker.

Docker does not run here, so the file is loaded with PyYAML and held against the code it
deploys: every command parses with the real CLI parser, every ``SYMBIONT_*`` variable is a
setting, the MQTT URLs name the users ``symbiont broker-config`` creates and the variables its
``credentials.env`` defines, Mosquitto mounts the files it writes where the generated
``mosquitto.conf`` looks for them, and the dependencies, restart policies, health checks and
volumes are what one host needs.  The monitoring services are held against their own files:
images pinned by tag, every file a service mounts is in the repository (or written by
``symbiont broker-config``), Prometheus scrapes exactly the services that serve metrics, on
their ports, and Grafana's data sources and secrets name what Compose runs. With TLS: the MQTT
URLs name the users ``symbiont broker-config --tls`` creates, Mosquitto mounts the files it
writes (never the park CA's key), only the TLS ports are published (MQTT over TLS, and Caddy in
front of the API; Prometheus and Grafana on this host only), one service builds the image the
others run, and the image installs from the runtime lock file.
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
from cli.brokertls import TlsOptions
from cli.main import build_parser
from core.network import load_network
from core.settings import Settings
from ingest.service import parse_mqtt_url

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"

CADDYFILE = REPO / "deploy" / "caddy" / "Caddyfile"

ONE_OFF = {"migrate", "network"}
LONG_RUNNING = {"mosquitto", "postgres", "ingest-1", "ingest-2", "rules", "api", "caddy"}
INGEST = ("ingest-1", "ingest-2")
MONITORING = {"mosquitto-exporter", "prometheus", "grafana"}
MONITORING_ONE_OFF = {"grafana-setup"}
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
# The exporter's default listen address (its BIND_ADDRESS): the image has no shell to ask.
EXPORTER_PORT = 9234
IMAGE = "symbiont:${SYMBIONT_VERSION:-local}"
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


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
    return {name: s for name, s in services.items() if s.get("image") == IMAGE}


def interpolate(text: str, values: dict[str, str]) -> str:
    """Compose's ``${NAME}`` / ``${NAME:?message}`` / ``${NAME:-default}`` substitution,
    from ``values``."""

    def value(match: re.Match[str]) -> str:
        name, operator, default = match.groups()
        if operator in (":-", "-") and name not in values:
            return str(default)
        return values[name]

    return _VARIABLE.sub(value, text)


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """``{target: (source, options)}`` of a service's volumes (short syntax)."""
    found: dict[str, tuple[str, str]] = {}
    for volume in service.get("volumes") or []:
        source, target, *options = volume.split(":")
        found[target] = (source, ",".join(options))
    return found


def tls_conf(tmp_path: Path) -> dict[str, list[str]]:
    """The ``mosquitto.conf`` that ``broker-config --tls`` writes for the example network
    (its defaults), as ``{setting: [values]}``, after writing every file into ``tmp_path``."""
    net = load_network(REPO / "examples" / "kalundborg.yaml")
    brokerconfig.write_broker_config(net, tmp_path, tls=TlsOptions())
    conf: dict[str, list[str]] = {}
    for line in (tmp_path / brokerconfig.CONF_FILE).read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            conf.setdefault(key, []).append(value)
    return conf


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
    assert set(services) == ONE_OFF | LONG_RUNNING | MONITORING | MONITORING_ONE_OFF
    assert set(symbiont_services(services)) == ONE_OFF | {"ingest-1", "ingest-2", "rules", "api"}
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["caddy"]["image"].startswith("caddy:2")


def test_one_image_built_once(services: dict[str, dict[str, Any]]) -> None:
    """One service builds the image and names it; the others run that image without a build
    of their own (Compose builds it once, and pulls nothing for it)."""
    builders = [name for name, service in services.items() if "build" in service]
    assert builders == ["migrate"]
    assert services["migrate"]["build"] == "."
    assert services["migrate"]["image"] == IMAGE
    assert interpolate(IMAGE, {}) == "symbiont:local"
    assert interpolate(IMAGE, {"SYMBIONT_VERSION": "1.2.0"}) == "symbiont:1.2.0"


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
    # the pinned, hashed runtime set first, then symbiont itself without resolving anything
    runs = re.findall(r"^RUN (.+)$", text, re.M)
    assert any(
        "pip install" in run and "--require-hashes" in run and "-r requirements/runtime.lock" in run
        for run in runs
    ), runs
    assert any("pip install" in run and "--no-deps ." in run for run in runs), runs
    assert re.search(r"^COPY requirements/runtime.lock requirements/", text, re.M)
    assert "dev.lock" not in text and "[dev" not in text
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


def test_restart_policies_and_health_checks(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
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
    for name in (*INGEST, "rules"):
        port = environment(services[name])["SYMBIONT_METRICS_PORT"]
        assert f"http://127.0.0.1:{port}/metrics" in services[name]["healthcheck"]["test"][3]
    for name in INGEST:
        assert "symbiont_ingest_connected 1.0" in services[name]["healthcheck"]["test"][3]

    # Mosquitto refuses anonymous clients: its health check signs in as the monitor user,
    # over the plain listener that the TLS configuration binds to the container's loopback.
    check = services["mosquitto"]["healthcheck"]["test"]
    assert check[0] == "CMD-SHELL"
    words = shlex.split(check[1].replace("$$", "$"))
    assert words[0] == "mosquitto_sub"
    plain = [v.split() for v in tls_conf(tmp_path)["listener"] if len(v.split()) == 2]
    assert [words[words.index("-p") + 1], words[words.index("-h") + 1]] in plain
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
    """Each service signs in as its own user over TLS, with the password variable
    broker-config writes into credentials.env, trusting the CA it writes and presenting the
    client certificate it issues that user; Compose needs no variable that neither file
    defines (or that has no default)."""
    conf = tls_conf(tmp_path)
    credentials = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in (tmp_path / brokerconfig.CREDENTIALS_FILE).read_text().splitlines()
        if line and not line.startswith("#")
    }
    values = {**credentials, "POSTGRES_PASSWORD": "pg-secret"}

    strings = list(_strings(yaml.safe_load(COMPOSE.read_text())))
    needed = {
        m.group(1)
        for text in strings
        for m in _VARIABLE.finditer(text)
        if m.group(2) not in (":-", "-")
    }
    assert needed <= set(values), f"variables nobody defines: {needed - set(values)}"
    for text in strings:
        assert "$" not in _VARIABLE.sub("", text.replace("$$", "")), f"a bare $ in {text!r}"

    tls_port = int(conf["listener"][-1])  # the TLS listener comes last
    expected_user = {
        "ingest-1": brokerconfig.INGEST_USER,
        "ingest-2": brokerconfig.INGEST_USER,
        "rules": brokerconfig.RULES_USER,
        "api": None,  # only checks that the broker accepts connections
    }
    for broker_host in (None, "mqtt.park.example"):  # SYMBIONT_BROKER_HOST: unset, or set
        given = values if broker_host is None else {**values, "SYMBIONT_BROKER_HOST": broker_host}
        for name, user in expected_user.items():
            service = services[name]
            url = interpolate(environment(service)["SYMBIONT_MQTT_URL"], given)
            target = parse_mqtt_url(url)
            assert (target.host, target.port) == (broker_host or "mosquitto", tls_port), name
            assert target.tls and target.username == user, name
            if user is None:
                continue
            assert target.password == credentials[brokerconfig.password_variable(user)], name
            # the TLS files of its settings are mounted from what broker-config wrote
            env = environment(service)
            settings = Settings(**{k.removeprefix("SYMBIONT_").lower(): v for k, v in env.items()})
            volume = mounts(service)
            files = {
                settings.mqtt_ca_file: tmp_path / "tls" / "server-ca.crt",
                settings.mqtt_cert_file: tmp_path / "clients" / f"{user}.crt",
                settings.mqtt_key_file: tmp_path / "clients" / f"{user}.key",
            }
            for inside, written in files.items():
                source, options = volume[str(inside)]
                assert options == "ro" and written.is_file(), (name, inside)
                assert source == f"./deploy/broker/{written.relative_to(tmp_path)}", (name, inside)
        # the broker answers to that name on the Compose network
        aliases = services["mosquitto"]["networks"]["default"]["aliases"]
        assert [interpolate(a, given) for a in aliases] == [broker_host or "mosquitto"]
    for name in ONE_OFF:
        assert "SYMBIONT_MQTT_URL" not in environment(services[name]), name
    database = interpolate(environment(services["api"])["SYMBIONT_DATABASE_URL"], values)
    assert database == "postgresql://symbiont:pg-secret@postgres:5432/symbiont"


def test_mosquitto_runs_the_generated_config(
    compose: dict[str, Any], services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    conf = tls_conf(tmp_path)
    mounted = mounts(services["mosquitto"])
    config = "/mosquitto/config"
    for name in (brokerconfig.CONF_FILE, brokerconfig.PASSWD_FILE, brokerconfig.ACL_FILE):
        source, options = mounted[f"{config}/{name}"]
        assert source == f"./deploy/broker/{name}" and options == "ro", name

    # Every file the generated mosquitto.conf (defaults, --tls) names is mounted where it
    # looks, read-only, from where broker-config wrote it.
    for setting in ("password_file", "acl_file", "certfile", "keyfile"):
        [inside] = conf[setting]
        source, options = mounted[inside]
        written = Path(inside).relative_to(config)
        assert source == f"./deploy/broker/{written}" and options == "ro", setting
        assert (tmp_path / written).is_file(), setting
    # The client-certificate files (--client-auth certificate) are mounted as well, so the
    # same Compose file serves either choice.
    for name in ("ca.crt", "ca.crl"):
        assert mounted[f"{config}/tls/{name}"] == (f"./deploy/broker/tls/{name}", "ro")
        assert (tmp_path / "tls" / name).is_file()
    for service in services.values():
        for source, _ in mounts(service).values():
            assert not source.endswith("ca.key"), "the park CA's key stays on the host"
            assert brokerconfig.CREDENTIALS_FILE not in source, (
                "the clear-text passwords have no business in a container"
            )

    # Persistence where the data volume is; every queued QoS 1 message kept.
    assert conf["allow_anonymous"] == ["false"]
    assert conf["persistence"] == ["true"]
    assert conf["max_queued_messages"] == ["0"] and conf["max_queued_bytes"] == ["0"]
    data_volume, _ = mounted[conf["persistence_location"][0].rstrip("/")]
    assert data_volume in compose["volumes"]

    # Only the TLS listener is published; the plain one answers on the loopback only.
    *plain, secured = conf["listener"]
    assert [p.split()[1] for p in plain] == ["127.0.0.1"]
    assert services["mosquitto"]["ports"] == [f"{secured}:{secured}"]


def test_only_tls_is_published(services: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    """The host publishes MQTT over TLS and Caddy's HTTPS (80 only redirects and answers ACME
    challenges) to the network; the monitoring UIs only on the host's own loopback. Caddy's
    default upstream is the API's port on the Compose network."""
    published = {
        name: [str(port) for port in service.get("ports", [])]
        for name, service in services.items()
        if service.get("ports")
    }
    to_network = {
        name: ports
        for name, ports in published.items()
        if not all(p.startswith("127.0.0.1:") for p in ports)
    }
    assert to_network == {"mosquitto": ["8883:8883"], "caddy": ["80:80", "443:443"]}
    assert published.keys() - to_network.keys() == {"prometheus", "grafana"}

    caddy = services["caddy"]
    mounted = mounts(caddy)
    assert mounted["/etc/caddy/Caddyfile"] == ("./deploy/caddy/Caddyfile", "ro")
    assert mounted["/etc/caddy/certs"] == ("./deploy/caddy/certs", "ro")
    assert {"caddy-data", "caddy-config"} <= {source for source, _ in mounted.values()}
    assert caddy["depends_on"] == {"api": {"condition": "service_healthy"}}
    text = CADDYFILE.read_text()
    api_port = build_parser().parse_args(services["api"]["command"]).port
    assert f"reverse_proxy {{$SYMBIONT_API:api:{api_port}}}" in text
    assert "tls {$SYMBIONT_SITE_TLS:internal}" in text
    for variable in ("SYMBIONT_SITE", "SYMBIONT_SITE_TLS"):
        assert f"{{${variable}:" in text and variable in environment(caddy)
    # the health check asks Caddy's admin endpoint, which the Caddyfile leaves on localhost
    assert "admin {$SYMBIONT_CADDY_ADMIN:localhost:2019}" in text
    assert "http://localhost:2019/config/" in caddy["healthcheck"]["test"]


def test_volumes(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    assert {"postgres-data", "mosquitto-data", "caddy-data"} <= set(compose["volumes"])
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert "mosquitto-data:/mosquitto/data" in services["mosquitto"]["volumes"]


# -- monitoring -----------------------------------------------------------------------------


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(source, target, options) of the service's mounts (``source`` as written)."""
    out = []
    for volume in service.get("volumes") or []:
        source, target, *options = volume.split(":")
        out.append((source, target, ",".join(options)))
    return out


def repo_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The repository file a path inside the service's container is, through its bind mounts
    of repository paths (the deepest mount wins); None when no such mount holds it."""
    best: tuple[int, Path] | None = None
    for source, target, _ in bind_mounts(service):
        if not source.startswith("./"):
            continue
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            rest = container_path[len(target) :].lstrip("/")
            found = REPO / source[2:] / rest if rest else REPO / source[2:]
            if best is None or len(target) > best[0]:
                best = (len(target), found)
    return best[1] if best else None


def named_volume_at(service: dict[str, Any], container_path: str) -> str | None:
    for source, target, _ in bind_mounts(service):
        if not source.startswith(("./", "/")) and (
            container_path == target or container_path.startswith(target.rstrip("/") + "/")
        ):
            return source
    return None


def test_images_are_pinned_by_tag(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:  # built here, not pulled: its name may be anything
            continue
        image, _, tag = service["image"].rpartition(":")
        assert image and "/" not in tag and tag and tag != "latest", f"{name}: {service['image']}"
        if name in MONITORING | MONITORING_ONE_OFF and image != "postgres":
            # a release, not a moving major tag
            assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: {service['image']}"
    # the setup job runs the database's own image, so its psql matches the server
    assert services["grafana-setup"]["image"] == services["postgres"]["image"]


def test_every_mounted_file_is_in_the_repository(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    generated = "./deploy/broker/"  # written by `symbiont broker-config --out deploy/broker`
    assert "/deploy/broker/" in (REPO / ".gitignore").read_text().splitlines()
    for name, service in services.items():
        for source, _, options in bind_mounts(service):
            if source.startswith("./"):
                assert options == "ro", f"{name} may write {source}"
                if not source.startswith(generated):
                    assert (REPO / source[2:]).exists(), f"{name} mounts {source}: not in the repo"
            else:
                assert not source.startswith("/"), f"{name}: a path of the host, {source}"
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"


def test_monitoring_dependencies_and_restarts(services: dict[str, dict[str, Any]]) -> None:
    def conditions(name: str) -> dict[str, str]:
        return {dep: c["condition"] for dep, c in services[name]["depends_on"].items()}

    assert conditions("mosquitto-exporter") == {"mosquitto": "service_healthy"}
    assert conditions("grafana-setup") == {"migrate": "service_completed_successfully"}
    assert conditions("grafana") == {
        "grafana-setup": "service_completed_successfully",
        "prometheus": "service_healthy",
    }
    for name in MONITORING:
        assert services[name]["restart"] == "unless-stopped", name
    assert services["grafana-setup"]["restart"] == "no"
    for name in ("prometheus", "grafana"):  # the exporter's image has no shell nor tools
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1] == "wget" and test[-1].startswith("http://127.0.0.1:")
    # Prometheus's UI has no login: published on the host's loopback only
    assert services["prometheus"]["ports"] == ["127.0.0.1:9090:9090"]
    assert services["grafana"]["ports"] == ["127.0.0.1:3000:3000"]


def _scrape_targets() -> dict[str, list[str]]:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    return {
        job["job_name"]: [t for static in job["static_configs"] for t in static["targets"]]
        for job in config["scrape_configs"]
    }


def test_prometheus_scrapes_every_service_that_serves_metrics(
    services: dict[str, dict[str, Any]],
) -> None:
    parser = build_parser()
    expected: dict[str, str] = {}  # "host:port" -> job
    for name in INGEST:
        env = environment(services[name])
        assert env["SYMBIONT_METRICS_HOST"] == "0.0.0.0", name  # noqa: S104 (reachable)
        expected[f"{name}:{env['SYMBIONT_METRICS_PORT']}"] = "symbiont-ingest"
    rules_env = environment(services["rules"])
    assert rules_env["SYMBIONT_METRICS_HOST"] == "0.0.0.0"  # noqa: S104
    expected[f"rules:{rules_env['SYMBIONT_METRICS_PORT']}"] = "symbiont-rules"
    api = parser.parse_args(services["api"]["command"])
    expected[f"api:{api.port}"] = "symbiont-api"  # /metrics on its own port
    exporter = environment(services["mosquitto-exporter"])
    assert "BIND_ADDRESS" not in exporter  # so it listens on its default port
    # in the broker's network namespace (the plain listener is on the broker's loopback
    # only), so it is reached under the broker's name
    assert services["mosquitto-exporter"]["network_mode"] == "service:mosquitto"
    assert exporter["BROKER_ENDPOINT"] == "tcp://127.0.0.1:1883"
    expected[f"mosquitto:{EXPORTER_PORT}"] = "mosquitto"

    found = {
        target: job
        for job, targets in _scrape_targets().items()
        if job != "prometheus"
        for target in targets
    }
    assert found == expected
    assert _scrape_targets()["prometheus"] == ["localhost:9090"]
    # no services serve metrics that nobody scrapes
    for name, service in symbiont_services(services).items():
        port = environment(service).get("SYMBIONT_METRICS_PORT")
        if port is not None:
            assert f"{name}:{port}" in found, name


def test_prometheus_runs_the_repository_config(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    flags = dict(a.removeprefix("--").split("=", 1) for a in prometheus["command"])
    config = repo_path(prometheus, flags["config.file"])
    assert config == PROMETHEUS_DIR / "prometheus.yml"
    assert named_volume_at(prometheus, flags["storage.tsdb.path"]) == "prometheus-data"
    for rule_file in yaml.safe_load(config.read_text())["rule_files"]:
        assert (config.parent / rule_file).is_file(), rule_file
    assert "/-/ready" in prometheus["healthcheck"]["test"][-1]


def test_the_exporter_signs_in_as_the_monitor_user(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    env = environment(services["mosquitto-exporter"])
    assert env["MQTT_USER"] == brokerconfig.MONITOR_USER
    match = _VARIABLE.fullmatch(env["MQTT_PASS"])
    assert match and match.group(1) == brokerconfig.password_variable(brokerconfig.MONITOR_USER)
    net = load_network(REPO / "examples" / "kalundborg.yaml")
    # the plain listener, which the TLS configuration binds to the broker's loopback
    assert env["BROKER_ENDPOINT"] == f"tcp://127.0.0.1:{brokerconfig.DEFAULT_PORT}"
    # the monitor user may read $SYS, where the broker's statistics are
    brokerconfig.write_broker_config(net, tmp_path)
    acl = (tmp_path / brokerconfig.ACL_FILE).read_text()
    block = acl.split(f"user {brokerconfig.MONITOR_USER}\n", 1)[1].split("\nuser ", 1)[0]
    assert "topic read $SYS/#" in block.splitlines()


def test_grafana_runs_the_repository_provisioning(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    env = environment(grafana)
    provisioning = repo_path(grafana, "/etc/grafana/provisioning")
    assert provisioning == GRAFANA_DIR / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "symbiont.yml").read_text())
    by_type = {d["type"]: d for d in datasources["datasources"]}
    assert set(by_type) == {"prometheus", "grafana-postgresql-datasource"}

    # Prometheus as Compose runs it
    prom_url = by_type["prometheus"]["url"]
    assert prom_url == "http://prometheus:9090"
    assert "9090" in services["prometheus"]["ports"][0]

    # PostgreSQL: the service, its database, the read-only role grafana-setup makes
    pg = by_type["grafana-postgresql-datasource"]
    assert pg["url"] == "postgres:5432"
    assert pg["jsonData"]["database"] == services["postgres"]["environment"]["POSTGRES_DB"]
    setup = services["grafana-setup"]
    script_in_container = setup["entrypoint"][-1]
    script = repo_path(setup, script_in_container)
    assert script == GRAFANA_DIR / "setup.sh" and script.is_file()
    text = script.read_text()
    defaults = dict(re.findall(r"^\w+=\$\{(\w+):-([^}]+)\}$", text, re.M))
    assert not set(defaults) & set(environment(setup)), "setup.sh runs on its defaults"
    assert defaults["GRAFANA_DB_ROLE"] == pg["user"]
    sql = repo_path(setup, defaults["GRAFANA_READER_SQL"])
    assert sql == REPO / "deploy" / "postgres" / "grafana-reader.sql"
    setup_env = environment(setup)
    assert setup_env["PGHOST"] == "postgres"
    assert setup_env["PGDATABASE"] == pg["jsonData"]["database"]
    assert setup_env["PGUSER"] == services["postgres"]["environment"]["POSTGRES_USER"]

    # the secrets grafana-setup writes are where Grafana reads them, on a volume both mount
    secret = re.fullmatch(r"\$__file\{(.+)\}", pg["secureJsonData"]["password"])
    assert secret
    admin = env["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    for path in (secret.group(1), admin):
        volume = named_volume_at(grafana, path)
        assert volume == "grafana-secrets", path
        assert named_volume_at(setup, path) == volume
        assert str(Path(path).parent) == defaults["GRAFANA_SECRETS_DIR"], path
        assert Path(path).name in text, f"setup.sh does not write {path}"
    assert dict((t, o) for s, t, o in bind_mounts(grafana) if s == "grafana-secrets") == {
        "/run/symbiont": "ro"
    }

    # the dashboards it loads are the repository's, the home dashboard among them
    providers = yaml.safe_load((provisioning / "dashboards" / "symbiont.yml").read_text())
    [provider] = providers["providers"]
    dashboards = repo_path(grafana, provider["options"]["path"])
    assert dashboards == GRAFANA_DIR / "dashboards"
    assert sorted(p.name for p in dashboards.glob("*.json")) == ["park.json", "service-health.json"]
    home = repo_path(grafana, env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home is not None and home.is_file() and home.parent == dashboards
    assert named_volume_at(grafana, "/var/lib/grafana") == "grafana-data"
