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

Mosquitto 2.0 closes the connection of a client after refusing one of its publishes (after
the PUBACK), so each refused publish here uses a client of its own.
"""

from __future__ import annotations

import base64
import os
import shutil
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
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{name}-{user}-{time.monotonic_ns()}",
            protocol=protocol,
            reconnect_on_failure=False,  # a refused client must stay refused, not retry
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        self.broker = broker
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
        self.client.connect(self.broker.host, self.broker.port, keepalive=30)
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
