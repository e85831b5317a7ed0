"""``symbiont broker-config`` and the broker it configures (issue 6): the generated files, and a
real Mosquitto started with them.

- who may connect: every generated user with its password; wrong passwords, unknown users and
  anonymous clients get CONNACK "not authorized" (MQTT 5 0x87, MQTT 3.1.1 return code 5);
- what a partner may publish: its own ``symbiont/readings/{partner}/…`` (arriving at the ingest
  user's shared subscription); anything else is refused — over MQTT 5 the PUBACK carries 0x87,
  over MQTT 3.1.1 it looks like success but nothing reaches a subscriber;
- what a partner may read: its own statements and the alerts about itself, its meters and its
  exchanges, never other partners' readings, alerts or statements, while the monitor user
  receives everything (Mosquitto 2.0 grants a SUBACK for any filter and applies the ACL to
  each message it would deliver, retained ones included);
- ``symbiont ingest`` running as ``symbiont-ingest`` with the generated password stores a
  partner's readings, and rejects (``wrong_partner``, recorded in the database) a reading the
  partner publishes under its own prefix for a meter it does not own.

With ``--tls`` (the TLS section below), the same against the TLS listener: the files and
their re-runs (the CA and good certificates kept, a departed partner's certificate revoked,
``--renew``, ``--reissue``, ``--no-tls``), the operator's own certificate, who may connect
with passwords over TLS and with client certificates (``use_identity_as_username``: the
certificate, not the user name sent, decides whose ACL applies), clients that do not trust the
park CA or present another CA's or a revoked certificate, and ``symbiont ingest`` and the
simulator's publisher over ``mqtts://`` with the ``SYMBIONT_MQTT_*_FILE`` settings.

Mosquitto 2.0 closes the connection of a client after refusing one of its publishes (after
the PUBACK), so each refused publish here uses a client of its own.
"""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
import yaml
from ingest_helpers import (
    IngestProcess,
    apply_network,
    fetch_readings,
    fetch_rejections,
    symbiont_command,
    wait_until,
)
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from services import Mosquitto, find_mosquitto

from cli import brokerconfig
from cli.brokerconfig import (
    INGEST_USER,
    MONITOR_USER,
    RULES_USER,
    hash_password,
    password_variable,
    read_credentials,
    verify_password,
)
from core.network import NetworkError, parse_network

REPO = Path(__file__).resolve().parent.parent
NETWORK_FILE = REPO / "examples" / "small.yaml"  # partners plant, town, boards
NOT_AUTHORIZED = 0x87
ACCEPTED = (0x00, 0x10)  # PUBACK success, and "no matching subscribers" (also accepted)
SHARE = "$share/symbiont/symbiont/readings/#"


def network_document() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(NETWORK_FILE.read_text())
    return document


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYMBIONT_")}
    return subprocess.run(
        [*symbiont_command(), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or REPO,
        timeout=60,
        check=False,
    )


# ------------------------------------------------------------------------------ MQTT probe


class Probe:
    """One paho client that records its CONNACK, SUBACKs, PUBACKs and messages."""

    def __init__(
        self,
        broker: Mosquitto,
        user: str | None,
        password: str | None,
        *,
        protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5,
        name: str = "probe",
        port: int | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{name}-{user}-{time.monotonic_ns()}",
            protocol=protocol,
            reconnect_on_failure=False,  # a refused client must stay refused, not retry
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        if tls is not None:
            self.client.tls_set_context(tls)
        self.broker = broker
        self.port = broker.port if port is None else port
        self.cond = threading.Condition()
        self.connack: ReasonCode | None = None
        self.disconnected = False
        self.subacks: dict[int, list[int]] = {}
        self.pubacks: dict[int, int] = {}
        self.messages: list[tuple[str, bytes, bool]] = []  # (topic, payload, retained)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    # callbacks, on paho's thread
    def _on_connect(self, c: Any, u: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        with self.cond:
            self.connack = reason
            self.cond.notify_all()

    def _on_disconnect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        with self.cond:
            self.disconnected = True
            self.cond.notify_all()

    def _on_subscribe(self, c: Any, u: Any, mid: int, reasons: list[ReasonCode], p: Any) -> None:
        with self.cond:
            self.subacks[mid] = [r.value for r in reasons]
            self.cond.notify_all()

    def _on_publish(self, c: Any, u: Any, mid: int, reason: ReasonCode, props: Any) -> None:
        with self.cond:
            self.pubacks[mid] = reason.value
            self.cond.notify_all()

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))
            self.cond.notify_all()

    def _wait(self, what: str, condition: Any, timeout: float = 10.0) -> None:
        with self.cond:
            if not self.cond.wait_for(condition, timeout):
                raise AssertionError(f"timed out waiting for {what}")

    def connect(self) -> ReasonCode:
        self.client.connect(self.broker.host, self.port, keepalive=30)
        self.client.loop_start()
        self._wait("CONNACK", lambda: self.connack is not None or self.disconnected)
        assert self.connack is not None, "connection closed without a CONNACK"
        return self.connack

    def connected(self) -> Probe:
        reason = self.connect()
        assert not reason.is_failure, f"connection refused: {reason}"
        return self

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        _, mid = self.client.subscribe(topic, qos=qos)
        assert mid is not None
        self._wait(f"SUBACK for {topic}", lambda: mid in self.subacks)
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Publish with QoS 1 and return the PUBACK's reason code (0 = success)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        self._wait(f"PUBACK for {topic}", lambda: info.mid in self.pubacks)
        return self.pubacks[info.mid]

    def received(self) -> list[tuple[str, bytes, bool]]:
        with self.cond:
            return list(self.messages)

    def wait_message(self, topic: str, payload: bytes, timeout: float = 10.0) -> None:
        self._wait(
            f"{payload!r} on {topic}",
            lambda: any(t == topic and p == payload for t, p, _ in self.messages),
            timeout,
        )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def probes() -> Iterator[list[Probe]]:
    made: list[Probe] = []
    yield made
    for probe in made:
        probe.close()


# ----------------------------------------------------------------------- generated broker


class Secured:
    def __init__(self, directory: Path, broker: Mosquitto) -> None:
        self.dir = directory
        self.broker = broker
        self.passwords = read_credentials(directory / "credentials.env")

    def url(self, user: str, password: str | None = None) -> str:
        secret = self.passwords[user] if password is None else password
        return f"mqtt://{user}:{secret}@{self.broker.host}:{self.broker.port}"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A Mosquitto running the configuration ``symbiont broker-config`` wrote for the small
    example network (through the real command line)."""
    directory = tmp_path_factory.mktemp("broker-config")
    done = run_cli(
        "broker-config", str(NETWORK_FILE), "--out", str(directory), "--broker-dir", str(directory)
    )
    assert done.returncode == 0, done.stderr
    broker = Mosquitto.from_config(directory / "mosquitto.conf")
    with broker:
        yield Secured(directory, broker)


def probe(
    secured: Secured,
    probes: list[Probe],
    user: str | None,
    password: str | None = None,
    *,
    protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5,
) -> Probe:
    if user is not None and password is None:
        password = secured.passwords[user]
    made = Probe(secured.broker, user, password, protocol=protocol)
    probes.append(made)
    return made


def reading(value: float) -> bytes:
    return orjson.dumps({"ts": time.time(), "value": value})


# ------------------------------------------------------------------------- generated files


def test_files_formats_and_permissions(tmp_path: Path) -> None:
    done = run_cli("broker-config", str(NETWORK_FILE), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert "6 users, 6 new passwords, 0 kept" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "acl",
        "credentials.env",
        "mosquitto.conf",
        "passwd",
    ]
    assert stat.S_IMODE((out / "credentials.env").stat().st_mode) == 0o600

    users = ["boards", "plant", "town", INGEST_USER, MONITOR_USER, RULES_USER]
    passwords = read_credentials(out / "credentials.env")
    assert sorted(passwords) == sorted(users)
    assert len(set(passwords.values())) == len(users)
    env_lines = [line for line in (out / "credentials.env").read_text().splitlines() if "=" in line]
    assert all(line.startswith("SYMBIONT_MQTT_PASSWORD_") for line in env_lines)
    assert f"SYMBIONT_MQTT_PASSWORD_SYMBIONT_INGEST={passwords[INGEST_USER]}" in env_lines
    for password in passwords.values():
        assert len(password) >= 32 and password.replace("-", "").replace("_", "").isalnum()

    hashes = dict(line.split(":", 1) for line in (out / "passwd").read_text().splitlines())
    assert sorted(hashes) == sorted(users)
    for user, encoded in hashes.items():
        assert encoded.startswith("$7$101$")
        assert verify_password(passwords[user], encoded)
        assert not verify_password(passwords[user] + "x", encoded)

    conf = (out / "mosquitto.conf").read_text().splitlines()
    for line in (
        "allow_anonymous false",
        "password_file /mosquitto/config/passwd",
        "acl_file /mosquitto/config/acl",
        "persistence true",
        "persistence_location /mosquitto/data/",
        "max_queued_messages 0",
        "max_queued_bytes 0",
        "max_inflight_messages 10000",
        "listener 1883",
    ):
        assert line in conf

    acl = (out / "acl").read_text()
    blocks = {
        block.split("\nuser ", 1)[1].split("\n", 1)[0]: block
        for block in acl.split("\n\n")
        if "\nuser " in block
    }
    grants = {
        user: [line for line in block.splitlines() if line.startswith("topic ")]
        for user, block in blocks.items()
    }
    assert grants["town"] == [
        "topic write symbiont/readings/town/#",
        "topic read symbiont/statements/town",
        "topic read symbiont/alerts/town",
        "topic read symbiont/alerts/town-heat-in",
        "topic read symbiont/alerts/heat-plant-town",
        # its heat meter's Sparkplug B edge node: births, data and deaths, and the rebirth
        # requests addressed to it
        "topic write spBv1.0/Harbour/+/TownSubstation",
        "topic write spBv1.0/Harbour/+/TownSubstation/+",
        "topic read spBv1.0/Harbour/NCMD/TownSubstation",
    ]
    assert grants[INGEST_USER] == [
        "topic read symbiont/readings/#",
        "topic read spBv1.0/#",
        "topic write spBv1.0/+/NCMD/+",
    ]
    assert grants[RULES_USER] == [
        "topic write symbiont/alerts/#",
        "topic write symbiont/statements/#",
    ]
    assert grants[MONITOR_USER] == [
        "topic read symbiont/#",
        "topic read spBv1.0/#",
        "topic read $SYS/#",
    ]
    # nothing before the first user block: anonymous clients are granted nothing
    assert not any(line.startswith("topic") for line in acl.split("\nuser ", 1)[0].splitlines())


def test_rerun_keeps_passwords_and_follows_the_network(tmp_path: Path) -> None:
    out = tmp_path / "out"
    net = parse_network(network_document())
    brokerconfig.write_broker_config(net, out)
    before = {name: (out / name).read_bytes() for name in ("passwd", "acl", "credentials.env")}

    again = brokerconfig.write_broker_config(net, out)
    assert again.created == [] and again.removed == []
    after = {name: (out / name).read_bytes() for name in ("passwd", "acl", "credentials.env")}
    assert after == before, "a re-run changed the files"

    # A password set by hand is kept (and hashed); a partner gone loses its account; a new
    # partner gets a password.
    creds = out / "credentials.env"
    text = creds.read_text().replace(
        f"{password_variable('town')}={read_credentials(creds)['town']}",
        f"{password_variable('town')}=chosen-by-hand",
    )
    creds.write_text(text)
    document = network_document()
    document["partners"] = [p for p in document["partners"] if p["id"] != "boards"]
    document["partners"].append({"id": "port", "name": "Harbour"})
    document["meters"] = [m for m in document["meters"] if m["partner"] != "boards"]
    document["exchanges"] = [e for e in document["exchanges"] if e["receiver"] != "boards"]
    result = brokerconfig.write_broker_config(parse_network(document), out)
    assert result.created == ["port"]
    assert result.removed == ["boards"]
    passwords = read_credentials(creds)
    assert passwords["town"] == "chosen-by-hand"
    assert "boards" not in passwords
    hashes = dict(line.split(":", 1) for line in (out / "passwd").read_text().splitlines())
    assert verify_password("chosen-by-hand", hashes["town"])
    assert "boards" not in hashes and "user boards" not in (out / "acl").read_text()
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600


def test_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    """Our $7$ hash is the one mosquitto_passwd computes for the same salt and password."""
    tool = shutil.which("mosquitto_passwd") or shutil.which(
        "mosquitto_passwd", path=str(Path(find_mosquitto()).parent)
    )
    assert tool, "mosquitto_passwd (package mosquitto) is not installed"
    path = tmp_path / "pw"
    subprocess.run([tool, "-c", "-b", str(path), "alice", "s3cret"], check=True)
    encoded = path.read_text().strip().split(":", 1)[1]
    assert verify_password("s3cret", encoded)
    _, _, iterations, salt, _ = encoded.split("$")
    ours = hash_password("s3cret", salt=base64.b64decode(salt), iterations=int(iterations))
    assert ours == encoded


def test_network_problems_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    document = network_document()
    document["meters"][0]["partner"] = "nobody"
    bad.write_text(yaml.safe_dump(document))
    done = run_cli("broker-config", str(bad), "--out", str(tmp_path / "out"))
    assert done.returncode == 1
    assert "meters[0].partner: unknown partner 'nobody'" in done.stderr
    assert not (tmp_path / "out").exists()

    document = network_document()
    document["partners"][0]["id"] = INGEST_USER
    for meter in document["meters"]:
        if meter["partner"] == "plant":
            meter["partner"] = INGEST_USER
    for exchange in document["exchanges"]:
        exchange["provider"] = INGEST_USER
    with pytest.raises(NetworkError) as caught:
        brokerconfig.users_for(parse_network(document))
    assert caught.value.problems == [
        f"partners[0].id: '{INGEST_USER}' is the name of a broker service user; choose another id"
    ]

    done = run_cli("broker-config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path))
    assert done.returncode == 1 and "missing.yaml: cannot read" in done.stderr


# ------------------------------------------------------------------------ the real broker


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["v5", "v311"])
def test_who_may_connect(secured: Secured, probes: list[Probe], protocol: Any) -> None:
    for user in ["plant", "town", "boards", INGEST_USER, RULES_USER, MONITOR_USER]:
        reason = probe(secured, probes, user, protocol=protocol).connect()
        assert not reason.is_failure, f"{user}: {reason}"
    for user, password in [
        ("plant", secured.passwords["town"]),  # another user's password
        ("plant", secured.passwords["plant"] + "x"),
        ("intruder", "whatever"),
        ("plant", None),  # no password at all
        (None, None),  # anonymous
    ]:
        made = Probe(secured.broker, user, password, protocol=protocol)
        probes.append(made)
        reason = made.connect()
        # paho maps MQTT 3.1.1's CONNACK return code 5 to the MQTT 5 reason 0x87 as well
        assert reason.value == NOT_AUTHORIZED, f"{user}/{password}: {reason}"


def test_partner_publishes_its_own_readings_to_the_ingest_share(
    secured: Secured, probes: list[Probe]
) -> None:
    ingest = probe(secured, probes, INGEST_USER).connected()
    assert ingest.subscribe(SHARE) == [1]
    plant = probe(secured, probes, "plant").connected()
    payload = reading(1.0)
    assert plant.publish("symbiont/readings/plant/plant-heat-out", payload) == 0
    ingest.wait_message("symbiont/readings/plant/plant-heat-out", payload)


@pytest.mark.parametrize(
    ("user", "topic"),
    [
        ("plant", "symbiont/readings/town/town-heat-in"),  # another partner's readings
        ("plant", "symbiont/readings/town"),
        ("plant", "symbiont/readings/plantx/plant-heat-out"),  # a prefix, not a partner
        ("plant", "symbiont/alerts/plant"),  # forging an alert about itself
        ("plant", "symbiont/statements/plant"),
        (RULES_USER, "symbiont/readings/plant/plant-heat-out"),
        (MONITOR_USER, "symbiont/readings/plant/plant-heat-out"),
        (INGEST_USER, "symbiont/readings/plant/plant-heat-out"),
    ],
)
def test_publish_outside_the_grant_is_refused_v5(
    secured: Secured, probes: list[Probe], user: str, topic: str
) -> None:
    watcher = probe(secured, probes, MONITOR_USER).connected()
    watcher.subscribe("symbiont/#")
    intruder = probe(secured, probes, user).connected()
    marker = reading(2.0)
    forged = reading(666.0)
    assert intruder.publish(topic, forged) == NOT_AUTHORIZED
    # Mosquitto 2.0 closes the connection after that PUBACK; a fresh client of a partner
    # then publishes a marker, which arrives: nothing of the refused message came before it.
    assert (
        probe(secured, probes, "town")
        .connected()
        .publish("symbiont/readings/town/town-heat-in", marker)
        in ACCEPTED
    )
    watcher.wait_message("symbiont/readings/town/town-heat-in", marker)
    assert forged not in [payload for _, payload, _ in watcher.received()]


def test_publish_outside_the_grant_is_dropped_v311(secured: Secured, probes: list[Probe]) -> None:
    """MQTT 3.1.1 has no reason code in a PUBACK: the publish looks acknowledged, and no
    subscriber — here the ingest user's shared subscription — ever sees it."""
    ingest = probe(secured, probes, INGEST_USER).connected()
    ingest.subscribe(SHARE)
    plant = probe(secured, probes, "plant", protocol=mqtt.MQTTv311).connected()
    forged = reading(666.0)
    assert plant.publish("symbiont/readings/town/town-heat-in", forged) in ACCEPTED
    marker = reading(3.0)
    town = probe(secured, probes, "town", protocol=mqtt.MQTTv311).connected()
    assert town.publish("symbiont/readings/town/town-heat-in", marker) in ACCEPTED
    ingest.wait_message("symbiont/readings/town/town-heat-in", marker)
    time.sleep(0.3)
    assert forged not in [payload for _, payload, _ in ingest.received()]


def test_partner_reads_only_its_own_statements_and_alerts(
    secured: Secured, probes: list[Probe]
) -> None:
    rules = probe(secured, probes, RULES_USER).connected()
    # Retained before anyone subscribes, as alert states are.
    before = {
        "symbiont/alerts/town-heat-in": b"town meter",
        "symbiont/alerts/heat-plant-town": b"shared exchange",
        "symbiont/alerts/plant-heat-out": b"plant meter",
        "symbiont/alerts/boards": b"boards partner",
    }
    for topic, payload in before.items():
        assert rules.publish(topic, payload, retain=True) in ACCEPTED

    monitor = probe(secured, probes, MONITOR_USER).connected()
    monitor.subscribe("symbiont/#")
    town = probe(secured, probes, "town").connected()
    filters = [
        "symbiont/readings/#",
        "symbiont/readings/plant/#",
        "symbiont/alerts/#",
        "symbiont/alerts/plant-heat-out",
        "symbiont/statements/#",
        "symbiont/statements/plant",
        "$share/g/symbiont/readings/#",
        "#",
    ]
    for topic in filters:
        codes = town.subscribe(topic)
        # Mosquitto 2.0 grants any filter and checks each delivery against the ACL; a broker
        # that refuses the filter answers 0x87.  Either way nothing forbidden arrives.
        assert codes in ([0], [1], [NOT_AUTHORIZED]), (topic, codes)
    for topic in ("symbiont/alerts/town", "symbiont/statements/town"):
        assert town.subscribe(topic) == [1]

    live = {
        ("rules", "symbiont/alerts/town"): b"town partner",
        ("rules", "symbiont/alerts/gypsum-plant-boards"): b"other exchange",
        ("rules", "symbiont/statements/town"): b"town statement",
        ("rules", "symbiont/statements/plant"): b"plant statement",
        ("plant", "symbiont/readings/plant/plant-heat-out"): reading(4.0),
        ("boards", "symbiont/readings/boards/boards-gypsum-weighbridge"): reading(5.0),
    }
    for (user, topic), payload in live.items():
        sender = rules if user == "rules" else probe(secured, probes, user).connected()
        assert sender.publish(topic, payload) in ACCEPTED
    for (_, topic), payload in live.items():
        monitor.wait_message(topic, payload)
    for topic, payload in before.items():
        monitor.wait_message(topic, payload)
    town.wait_message("symbiont/statements/town", b"town statement")
    time.sleep(0.3)

    seen = {(topic, payload) for topic, payload, _ in town.received()}
    assert seen == {
        ("symbiont/alerts/town-heat-in", b"town meter"),
        ("symbiont/alerts/heat-plant-town", b"shared exchange"),
        ("symbiont/alerts/town", b"town partner"),
        ("symbiont/statements/town", b"town statement"),
    }
    for topic in before:  # clear the retained states for other tests
        rules.publish(topic, b"", retain=True)


# ---------------------------------------------------------------------- symbiont ingest


def test_ingest_with_generated_credentials_rejects_a_foreign_meter(
    secured: Secured, probes: list[Probe], database_url: str, tmp_path: Path
) -> None:
    apply_network(database_url, network_document())

    refused = IngestProcess(
        database_url=database_url,
        mqtt_url=secured.url(INGEST_USER, "wrong-password"),
        client_id="symbiont-ingest-refused",
        log_path=tmp_path / "refused.log",
    )
    with refused:
        refused.start()
        refused.wait_for_log("broker refused the connection", timeout=30)

    ingest = IngestProcess(
        database_url=database_url,
        mqtt_url=secured.url(INGEST_USER),
        client_id="symbiont-ingest-secured",
        log_path=tmp_path / "ingest.log",
    )
    with ingest:
        ingest.start_subscribed()
        plant = probe(secured, probes, "plant").connected()
        now = time.time()
        own = orjson.dumps({"ts": now, "value": 10.0})
        foreign = orjson.dumps({"ts": now, "value": 99.0})
        assert plant.publish("symbiont/readings/plant/plant-heat-out", own) == 0
        # Under its own prefix (the broker lets it through), but town's meter.
        assert plant.publish("symbiont/readings/plant/town-heat-in", foreign) == 0

        def done() -> bool:
            return bool(fetch_readings(database_url)) and bool(fetch_rejections(database_url))

        wait_until(done, 30, "the reading and the rejection")
        readings = fetch_readings(database_url)
        assert [meter for meter, _ in readings] == ["plant-heat-out"]
        [rejection] = fetch_rejections(database_url)
        assert rejection.reason == "wrong_partner"
        assert rejection.topic == "symbiont/readings/plant/town-heat-in"
        assert rejection.partner == "plant" and rejection.meter == "town-heat-in"
        assert "belongs to 'town'" in rejection.detail
        assert rejection.payload == foreign


# ------------------------------------------------------------------------------------ TLS

TLS_PORT = 8883


class TlsBroker:
    """A Mosquitto running a ``broker-config --tls`` configuration: ``tls_port`` is where its
    TLS listener is, ``plain_port`` its plain one (bound to 127.0.0.1 by the file)."""

    def __init__(self, directory: Path, broker: Mosquitto) -> None:
        self.dir = directory
        self.broker = broker
        self.passwords = read_credentials(directory / "credentials.env")
        self.tls_port = broker.ports[TLS_PORT]
        self.plain_port = broker.ports.get(1883)
        self.server_ca = directory / "tls" / "server-ca.crt"

    def context(self, user: str | None = None, *, trust: Path | bool = True) -> ssl.SSLContext:
        """A client context trusting the park CA (``trust=False``: the system's CAs only;
        a path: that file), presenting ``user``'s client certificate if given."""
        cafile = self.server_ca if trust is True else (trust or None)
        context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        if user is not None:
            clients = self.dir / "clients"
            context.load_cert_chain(clients / f"{user}.crt", clients / f"{user}.key")
        return context

    def url(self, user: str) -> str:
        return f"mqtts://{user}:{self.passwords[user]}@localhost:{self.tls_port}"

    def probe(
        self,
        probes: list[Probe],
        user: str | None,
        *,
        password: str | None = None,
        cert: str | None = None,
        context: ssl.SSLContext | None = None,
    ) -> Probe:
        made = Probe(
            self.broker,
            user,
            password if password is not None or user is None else self.passwords[user],
            port=self.tls_port,
            tls=context or self.context(cert),
        )
        probes.append(made)
        return made


def broker_config_tls(directory: Path, *options: str) -> subprocess.CompletedProcess[str]:
    done = run_cli(
        "broker-config",
        str(NETWORK_FILE),
        "--out",
        str(directory),
        "--broker-dir",
        str(directory),
        *options,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def tls_password(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    """``--tls``: the park CA's broker certificate, partners sign in with passwords."""
    directory = tmp_path_factory.mktemp("broker-tls-password")
    broker_config_tls(directory, "--tls")
    with Mosquitto.from_config(directory / "mosquitto.conf") as broker:
        yield TlsBroker(directory, broker)


@pytest.fixture(scope="module")
def tls_certificate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    """``--client-auth certificate``: every client presents a certificate of the park CA."""
    directory = tmp_path_factory.mktemp("broker-tls-certificate")
    broker_config_tls(directory, "--tls", "--client-auth", "certificate")
    with Mosquitto.from_config(directory / "mosquitto.conf") as broker:
        yield TlsBroker(directory, broker)


def refused(made: Probe) -> str:
    """How a connection that should not be accepted ended: the TLS error, "closed" (the
    broker hung up without a CONNACK) or the CONNACK's failure reason.  A connection that is
    accepted fails the test."""
    try:
        reason = made.connect()
    except (ssl.SSLError, OSError) as exc:
        return f"tls: {exc}"
    except AssertionError:  # closed without a CONNACK
        return "closed"
    assert reason.is_failure, "the broker accepted the connection"
    return f"connack: {reason}"


def assert_no_session(how: str) -> None:
    """The TLS layer ended it (refused at the handshake, or closed by the broker right after
    it under TLS 1.3): no MQTT session, not even a refused one."""
    assert how == "closed" or how.startswith("tls:"), how


def self_signed_client(tmp_path: Path, user: str) -> tuple[Path, Path]:
    """A certificate and key named ``user`` from a CA the broker never saw."""
    from cryptography.hazmat.primitives import serialization

    from cli import brokertls

    ca, ca_key = brokertls.make_ca("elsewhere")
    cert, key = brokertls.make_client_cert(ca, ca_key, user)
    cert_path, key_path = tmp_path / "forged.crt", tmp_path / "forged.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_files_and_reruns(tmp_path: Path) -> None:
    from cryptography import x509

    from cli import brokertls

    out = tmp_path / "out"
    done = broker_config_tls(
        out, "--client-auth", "certificate", "--server-name", "mqtt.park.example"
    )
    assert "TLS on port 8883, clients authenticate by certificate" in done.stdout
    tls, clients = out / "tls", out / "clients"
    assert stat.S_IMODE(tls.stat().st_mode) == 0o700
    assert stat.S_IMODE(clients.stat().st_mode) == 0o700
    assert stat.S_IMODE((tls / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((clients / "plant.key").stat().st_mode) == 0o600  # nothing mounts it
    for mounted in (tls / "server.key", clients / f"{INGEST_USER}.key"):
        assert stat.S_IMODE(mounted.stat().st_mode) == 0o644  # read inside a container

    ca = x509.load_pem_x509_certificate((tls / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tls / "server.crt").read_bytes())
    assert (tls / "server-ca.crt").read_bytes() == (tls / "ca.crt").read_bytes()
    assert brokertls.issued_by(server, ca)
    assert set(brokertls.certificate_names(server)) == {
        "mqtt.park.example",
        "mosquitto",
        "localhost",
        "127.0.0.1",
    }
    users = ["plant", "town", "boards", INGEST_USER, RULES_USER, MONITOR_USER]
    assert sorted(p.stem for p in clients.glob("*.crt")) == sorted(users)
    for user in users:
        cert = x509.load_pem_x509_certificate((clients / f"{user}.crt").read_bytes())
        assert brokertls.common_name(cert) == user and brokertls.issued_by(cert, ca)

    conf = (out / "mosquitto.conf").read_text().splitlines()
    listeners = [line for line in conf if line.startswith("listener ")]
    assert listeners == ["listener 1883 127.0.0.1", "listener 8883"]  # plain: this host only
    after_tls = conf[conf.index("listener 8883") :]
    for line in (
        f"certfile {tls}/server.crt",
        f"keyfile {tls}/server.key",
        f"cafile {tls}/ca.crt",
        f"crlfile {tls}/ca.crl",
        "require_certificate true",
        "use_identity_as_username true",
    ):
        assert line in after_tls, line

    # A re-run without TLS options keeps TLS, its choices and every file as they are.
    files = sorted(p for p in out.rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in files}
    done = broker_config_tls(out)
    assert "TLS: 0 certificates issued" in done.stdout
    assert {p: p.read_bytes() for p in files} == before

    # A partner leaving loses its certificate, which the CRL now lists; --renew issues every
    # certificate anew and revokes the old ones; the CA stays.
    document = network_document()
    document["partners"] = [p for p in document["partners"] if p["id"] != "boards"]
    document["meters"] = [m for m in document["meters"] if m["partner"] != "boards"]
    document["exchanges"] = [e for e in document["exchanges"] if e["receiver"] != "boards"]
    smaller = tmp_path / "smaller.yaml"
    smaller.write_text(yaml.safe_dump(document))
    boards = x509.load_pem_x509_certificate((clients / "boards.crt").read_bytes())
    plant = x509.load_pem_x509_certificate((clients / "plant.crt").read_bytes())
    done = run_cli("broker-config", str(smaller), "--out", str(out), "--renew")
    assert done.returncode == 0, done.stderr
    assert not (clients / "boards.crt").exists() and not (clients / "boards.key").exists()
    crl = x509.load_pem_x509_crl((tls / "ca.crl").read_bytes())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    revoked = {entry.serial_number for entry in crl}
    assert {boards.serial_number, plant.serial_number} <= revoked
    renewed = x509.load_pem_x509_certificate((clients / "plant.crt").read_bytes())
    assert renewed.serial_number not in revoked and brokertls.issued_by(renewed, ca)
    assert (tls / "ca.crt").read_bytes() == before[tls / "ca.crt"]

    # --no-tls takes the TLS listener out again; TLS options and --no-tls contradict.
    done = run_cli("broker-config", str(smaller), "--out", str(out), "--no-tls")
    assert done.returncode == 0, done.stderr
    conf = (out / "mosquitto.conf").read_text().splitlines()
    assert [line for line in conf if line.startswith("listener")] == ["listener 1883"]
    assert not any(line.startswith("certfile") for line in conf)
    done = run_cli("broker-config", str(smaller), "--out", str(out), "--no-tls", "--renew")
    assert done.returncode == 1 and "--no-tls with TLS options" in done.stderr


def test_operator_certificate(tmp_path: Path) -> None:
    """--cert/--key/--ca: the operator's certificate is copied and kept on later runs; the
    park CA still signs the client certificates; a key of another certificate is refused."""
    from cryptography.hazmat.primitives import serialization

    from cli import brokertls

    ca, ca_key = brokertls.make_ca("operator")
    cert, key = brokertls.make_server_cert(ca, ca_key, ["mqtt.park.example"])
    own = tmp_path / "own"
    own.mkdir()
    (own / "chain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (own / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (own / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    out = tmp_path / "out"
    supplied = ["--cert", str(own / "chain.pem"), "--key", str(own / "key.pem")]
    done = run_cli("broker-config", str(NETWORK_FILE), "--out", str(out), *supplied)
    assert done.returncode == 1 and "--cert needs --ca" in done.stderr
    supplied += ["--ca", str(own / "ca.pem")]
    done = run_cli("broker-config", str(NETWORK_FILE), "--out", str(out), *supplied)
    assert done.returncode == 0, done.stderr
    assert "names: mqtt.park.example" in done.stdout
    tls = out / "tls"
    assert (tls / "server.crt").read_bytes() == (own / "chain.pem").read_bytes()
    assert (tls / "server-ca.crt").read_bytes() == (own / "ca.pem").read_bytes()
    assert (tls / "ca.crt").read_bytes() != (own / "ca.pem").read_bytes()  # the park CA

    done = run_cli("broker-config", str(NETWORK_FILE), "--out", str(out), "--renew")
    assert done.returncode == 0, done.stderr
    assert "kept the broker certificate" not in done.stderr
    assert (tls / "server.crt").read_bytes() == (own / "chain.pem").read_bytes()

    other, other_key = brokertls.make_server_cert(ca, ca_key, ["elsewhere.example"])
    del other
    (own / "other.pem").write_bytes(
        other_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    supplied[3] = str(own / "other.pem")
    done = run_cli("broker-config", str(NETWORK_FILE), "--out", str(out), *supplied)
    assert done.returncode == 1 and "--key does not belong to --cert" in done.stderr


def test_tls_password_who_may_connect(tls_password: TlsBroker, probes: list[Probe]) -> None:
    broker = tls_password
    for user in ["plant", INGEST_USER, MONITOR_USER]:
        reason = broker.probe(probes, user).connect()
        assert not reason.is_failure, f"{user}: {reason}"
    # the right password, but a client that does not trust the park CA
    untrusting = broker.probe(probes, "plant", context=broker.context(trust=False))
    assert "CERTIFICATE_VERIFY_FAILED" in refused(untrusting)
    # trusting the CA, with a wrong password, another's password, none, or anonymous
    for user, password in [
        ("plant", broker.passwords["plant"] + "x"),
        ("plant", broker.passwords["town"]),
        ("intruder", "whatever"),
        (None, None),
    ]:
        made = broker.probe(probes, user, password=password)
        assert refused(made) == "connack: Not authorized", (user, password)
    # plain MQTT spoken to the TLS port gets nowhere
    plain = Probe(broker.broker, "plant", broker.passwords["plant"], port=broker.tls_port)
    probes.append(plain)
    assert_no_session(refused(plain))


def test_tls_password_partner_topics(tls_password: TlsBroker, probes: list[Probe]) -> None:
    """Over TLS a partner publishes under its own readings and is refused under another's;
    the ingest user's shared subscription gets the one and not the other."""
    broker = tls_password
    ingest = broker.probe(probes, INGEST_USER).connected()
    assert ingest.subscribe(SHARE) == [1]
    plant = broker.probe(probes, "plant").connected()
    own, forged = reading(1.0), reading(666.0)
    assert plant.publish("symbiont/readings/plant/plant-heat-out", own) == 0
    ingest.wait_message("symbiont/readings/plant/plant-heat-out", own)
    intruder = broker.probe(probes, "plant").connected()
    assert intruder.publish("symbiont/readings/town/town-heat-in", forged) == NOT_AUTHORIZED
    marker = reading(2.0)
    town = broker.probe(probes, "town").connected()
    assert town.publish("symbiont/readings/town/town-heat-in", marker) == 0
    ingest.wait_message("symbiont/readings/town/town-heat-in", marker)
    assert forged not in [payload for _, payload, _ in ingest.received()]


def test_tls_certificate_identity(
    tls_certificate: TlsBroker, probes: list[Probe], tmp_path: Path
) -> None:
    """``use_identity_as_username``: the certificate names the user whose ACL applies; no
    password is needed, and none helps without a certificate of the park CA."""
    broker = tls_certificate
    ingest = broker.probe(probes, None, cert=INGEST_USER).connected()
    assert ingest.subscribe(SHARE) == [1]
    plant = broker.probe(probes, None, cert="plant").connected()
    own, forged = reading(3.0), reading(667.0)
    assert plant.publish("symbiont/readings/plant/plant-heat-out", own) == 0
    ingest.wait_message("symbiont/readings/plant/plant-heat-out", own)
    # plant's certificate with town's password still acts as plant
    posing = broker.probe(probes, "town", cert="plant").connected()
    assert posing.publish("symbiont/readings/town/town-heat-in", forged) == NOT_AUTHORIZED
    marker = reading(4.0)
    town = broker.probe(probes, None, cert="town").connected()
    assert town.publish("symbiont/readings/town/town-heat-in", marker) == 0
    ingest.wait_message("symbiont/readings/town/town-heat-in", marker)
    assert forged not in [payload for _, payload, _ in ingest.received()]

    # no certificate, even with the right password
    assert_no_session(refused(broker.probe(probes, "plant")))
    # a certificate named plant from a CA the broker does not know
    cert_path, key_path = self_signed_client(tmp_path, "plant")
    forged_context = broker.context()
    forged_context.load_cert_chain(cert_path, key_path)
    assert_no_session(refused(broker.probe(probes, None, context=forged_context)))
    # plant's own certificate, but not trusting the park CA for the broker's
    untrusting = broker.probe(probes, None, context=broker.context("plant", trust=False))
    assert "CERTIFICATE_VERIFY_FAILED" in refused(untrusting)
    # the plain listener (this host only) still takes passwords, e.g. for health checks
    assert broker.plain_port is not None
    monitor = Probe(
        broker.broker, MONITOR_USER, broker.passwords[MONITOR_USER], port=broker.plain_port
    )
    probes.append(monitor)
    assert not monitor.connect().is_failure


def test_tls_revoked_certificate_is_refused(tmp_path: Path, probes: list[Probe]) -> None:
    """After ``--reissue plant`` (and a broker restart) plant's previous certificate is
    refused, its new one accepted; town's is untouched."""
    directory = tmp_path / "broker"
    broker_config_tls(directory, "--client-auth", "certificate")
    old = tmp_path / "old"
    old.mkdir()
    for suffix in ("crt", "key"):
        shutil.copy(directory / "clients" / f"plant.{suffix}", old / f"plant.{suffix}")
    town = (directory / "clients" / "town.crt").read_bytes()
    with Mosquitto.from_config(directory / "mosquitto.conf") as mosquitto:
        broker = TlsBroker(directory, mosquitto)
        broker.probe(probes, None, cert="plant").connected()
        done = broker_config_tls(directory, "--reissue", "plant")
        assert "TLS: 1 certificates issued, revoked: plant" in done.stdout
        assert (directory / "clients" / "town.crt").read_bytes() == town
        mosquitto.restart()
        stale = broker.context()
        stale.load_cert_chain(old / "plant.crt", old / "plant.key")
        assert_no_session(refused(broker.probe(probes, None, context=stale)))
        assert not broker.probe(probes, None, cert="plant").connect().is_failure
        assert not broker.probe(probes, None, cert="town").connect().is_failure
    done = run_cli(
        "broker-config", str(NETWORK_FILE), "--out", str(directory), "--reissue", "nobody"
    )
    assert done.returncode == 1 and "--reissue: no broker user 'nobody'" in done.stderr


def test_ingest_and_simulator_over_tls(
    tls_password: TlsBroker, database_url: str, tmp_path: Path
) -> None:
    """``symbiont ingest`` with an mqtts:// URL and SYMBIONT_MQTT_CA_FILE (and the client
    certificate Compose gives it) stores what a partner publishes over TLS with the
    simulator's publisher; without the CA file it cannot connect."""
    from cli.publish import MqttPublisher
    from core.settings import MqttTls

    broker = tls_password
    apply_network(database_url, network_document())
    clients = broker.dir / "clients"
    untrusting = IngestProcess(
        database_url=database_url,
        mqtt_url=broker.url(INGEST_USER),
        client_id="symbiont-ingest-untrusting",
        log_path=tmp_path / "untrusting.log",
    )
    with untrusting:
        untrusting.start()
        untrusting.wait_for_log("cannot connect to the broker at mqtts://localhost", timeout=30)
        untrusting.wait_for_log("CERTIFICATE_VERIFY_FAILED", timeout=30)

    ingest = IngestProcess(
        database_url=database_url,
        mqtt_url=broker.url(INGEST_USER),
        client_id="symbiont-ingest-tls",
        log_path=tmp_path / "ingest.log",
        env={
            "SYMBIONT_MQTT_CA_FILE": str(broker.server_ca),
            "SYMBIONT_MQTT_CERT_FILE": str(clients / f"{INGEST_USER}.crt"),
            "SYMBIONT_MQTT_KEY_FILE": str(clients / f"{INGEST_USER}.key"),
        },
    )
    with ingest:
        ingest.start_subscribed()
        publisher = MqttPublisher(
            broker.url("plant"), tls_files=MqttTls(ca_file=broker.server_ca), inflight=10
        )
        try:
            publisher.send(
                "symbiont/readings/plant/plant-heat-out",
                orjson.dumps({"ts": time.time(), "value": 42.0}),
            )
            publisher.drain(10)
            assert publisher.acked == 1 and publisher.failed == 0
        finally:
            publisher.close()
        wait_until(lambda: bool(fetch_readings(database_url)), 30, "the reading over TLS")
        assert [meter for meter, _ in fetch_readings(database_url)] == ["plant-heat-out"]


def test_mqtt_tls_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SYMBIONT_MQTT_CA_FILE/CERT_FILE/KEY_FILE: read from the environment, refused with a
    plain mqtt:// URL (the connection would not be encrypted) and a key without its
    certificate; a file that cannot be used is named when the connection is set up."""
    from pydantic import ValidationError

    from core.settings import MqttTls, Settings
    from ingest.service import mqtt_target

    for name in list(os.environ):
        if name.startswith("SYMBIONT_"):
            monkeypatch.delenv(name)
    out = tmp_path / "out"
    broker_config_tls(out, "--tls")
    ca = out / "tls" / "server-ca.crt"
    cert = out / "clients" / f"{INGEST_USER}.crt"
    key = out / "clients" / f"{INGEST_USER}.key"
    monkeypatch.setenv("SYMBIONT_MQTT_URL", "mqtts://u:p@broker.example:8883")
    monkeypatch.setenv("SYMBIONT_MQTT_CA_FILE", str(ca))
    monkeypatch.setenv("SYMBIONT_MQTT_CERT_FILE", str(cert))
    monkeypatch.setenv("SYMBIONT_MQTT_KEY_FILE", str(key))
    target = mqtt_target(Settings())
    assert (target.host, target.port, target.tls) == ("broker.example", 8883, True)
    assert target.tls_files == MqttTls(ca, cert, key)
    context = target.tls_files.context()
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert len(context.get_ca_certs()) == 1  # the park CA, not the system's

    monkeypatch.setenv("SYMBIONT_MQTT_CERT_FILE", "")  # empty: none
    with pytest.raises(ValidationError, match="SYMBIONT_MQTT_KEY_FILE needs"):
        Settings()
    monkeypatch.delenv("SYMBIONT_MQTT_KEY_FILE")
    assert Settings().mqtt_tls() == MqttTls(ca_file=ca)
    monkeypatch.setenv("SYMBIONT_MQTT_URL", "mqtt://u:p@broker.example:1883")
    with pytest.raises(ValidationError, match="SYMBIONT_MQTT_CA_FILE is set but"):
        Settings()

    with pytest.raises(ValueError, match=r"SYMBIONT_MQTT_CA_FILE=.*missing\.crt"):
        MqttTls(ca_file=tmp_path / "missing.crt").context()
    with pytest.raises(ValueError, match=r"SYMBIONT_MQTT_CERT_FILE=.*not usable"):
        MqttTls(ca_file=ca, cert_file=cert, key_file=out / "tls" / "server.key").context()
