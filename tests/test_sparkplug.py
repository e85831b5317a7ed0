"""Sparkplug B in: the payload schema, edge-node sessions, and ``symbiont ingest`` for real.

Every Sparkplug message here is built by ``sparkplug_helpers`` (the .proto compiled by the
test itself, in a descriptor pool of its own, or protobuf written out by hand), never by the
product's generated module.

- The generated module is the shipped .proto; the .proto has the specification's field numbers.
- Births define aliases; births and data become readings in canonical units (``engUnit``).
- An alias or device no birth defined, and a ``seq`` gap, are rejected and ask for a rebirth;
  a redelivery is no gap; a stale NDEATH is ignored; unmapped nodes are ignored.
- End to end: readings stored, rejections recorded, the NCMD rebirth request seen on the
  broker, NDEATH/DDEATH marking the meters offline, per-node metrics.
- Nothing acknowledged is lost through SIGKILLs of ingest with Sparkplug input (the aliases
  are kept in the database across the restarts).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import descriptor_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from ingest_helpers import (
    IngestProcess,
    Publisher,
    apply_network,
    committed_unacknowledged,
    counts,
    crash_and_redeliver,
    fetch,
    fetch_readings,
    fetch_rejections,
    meters_network,
    poll,
    scrape_metrics,
    wait_until,
)
from services import Mosquitto
from sparkplug_helpers import (
    DOUBLE,
    FLOAT,
    INT32,
    STRING,
    UINT16,
    EdgeNode,
    Metric,
    decode,
    descriptor_set,
    wire_bytes,
    wire_double,
    wire_varint,
)

from cli.broker import free_port
from cli.brokerconfig import shared_sparkplug_nodes, users_for
from cli.publish import publish
from cli.simulate import simulate
from core.network import NetworkError, parse_network
from core.units import conversion
from ingest.parse import NetworkIndex, Parsed, Parser, Reason
from ingest.sparkplug import sparkplug_b_pb2
from ingest.sparkplug.session import SparkplugSessions

GROUP, NODE = "Plant", "Gateway1"
SMALL = Path(__file__).resolve().parent.parent / "examples" / "small.yaml"


class M:
    def __init__(
        self, id: str, partner: str, kind: str, reading: str, unit: str, source: dict[str, str]
    ) -> None:
        self.id, self.partner, self.kind, self.reading, self.unit = id, partner, kind, reading, unit
        self.source = source


METERS = (
    M("n-heat", "north", "heat", "total", "GJ", {"metric": "Boiler/Heat"}),
    M("n-flow", "north", "water", "rate", "m3/h", {"device": "Pump1", "metric": "Flow"}),
    M("n-ash", "north", "material", "delta", "kg", {"device": "Scale", "metric": "Net"}),
)


def network_document() -> dict[str, Any]:
    doc = meters_network("sparkplug", {"north": "North Works", "south": "South"}, METERS)
    for entry, meter in zip(doc["meters"], METERS, strict=True):
        entry["sparkplug"] = {"group": GROUP, "node": NODE, **meter.source}
    return doc


def edge_node() -> EdgeNode:
    """The plant's gateway: its boiler heat in MWh (the meter says GJ), an unmapped
    temperature, a pump's flow in l/s (Float) and a scale's net weight in kg (Int32)."""
    return EdgeNode(
        GROUP,
        NODE,
        [Metric("Boiler/Heat", 1, DOUBLE, "MWh"), Metric("Boiler/Temp", 2, DOUBLE, "degC")],
        {
            "Pump1": [Metric("Flow", 10, FLOAT, "l/s")],
            "Scale": [Metric("Net", 20, INT32, "kg"), Metric("Tare", 21, UINT16, "kg")],
        },
    )


def canonical(meter: M, value: float, unit: str) -> float:
    return value * conversion(unit, meter.kind, meter.reading)


HEAT, FLOW, ASH = METERS


class Setup:
    """A parser with Sparkplug sessions over the test network, collecting rebirth requests."""

    def __init__(self, document: dict[str, Any] | None = None) -> None:
        self.asked: list[tuple[str, str]] = []
        self.sessions = SparkplugSessions(rebirth=lambda g, n: self.asked.append((g, n)))
        index = NetworkIndex.from_network(parse_network(document or network_document()))
        self.parser = Parser(index, handler=self.sessions)
        self.now = time.time()
        self.ms = int(self.now * 1000) - 3_600_000  # readings an hour old

    def parse(self, message: tuple[str, bytes], *, dup: bool = False) -> Parsed:
        topic, payload = message
        return self.parser.parse(topic, payload, self.now, dup)


def reasons(parsed: Parsed) -> list[str]:
    return [r.reason.value for r in parsed.rejections]


def at(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)


# ====================================================================== the payload schema


def test_the_generated_module_is_the_shipped_proto() -> None:
    """scripts/gen_sparkplug.py was run after the last change of sparkplug_b.proto."""
    (compiled,) = descriptor_set().file

    def without_json_names(message: Any) -> None:  # protoc adds them; modules leave them out
        for field in message.field:
            field.ClearField("json_name")
        for nested in message.nested_type:
            without_json_names(nested)

    for message in compiled.message_type:
        without_json_names(message)
    shipped = descriptor_pb2.FileDescriptorProto.FromString(
        sparkplug_b_pb2.DESCRIPTOR.serialized_pb
    )
    assert shipped == compiled, "run scripts/gen_sparkplug.py: the module is not the .proto's"


def test_the_proto_has_the_field_numbers_of_the_specification() -> None:
    """An NBIRTH and an NDATA encoded by hand, field by field as Sparkplug 3.0 numbers them,
    read by the product as they should be."""
    setup = Setup()
    ms = setup.ms
    eng_unit = wire_bytes(1, b"engUnit") + wire_bytes(
        2,
        wire_varint(1, 12) + wire_bytes(8, b"MWh"),  # PropertyValue: type String, string
    )
    heat = (  # Metric: name, alias, timestamp, datatype Double, properties, double_value
        wire_bytes(1, b"Boiler/Heat")
        + wire_varint(2, 1)
        + wire_varint(3, ms)
        + wire_varint(4, 10)
        + wire_bytes(9, eng_unit)
        + wire_double(13, 2.5)
    )
    bd_seq = wire_bytes(1, b"bdSeq") + wire_varint(4, 4) + wire_varint(11, 7)  # long_value
    # Payload: timestamp, metrics, seq
    nbirth = wire_varint(1, ms) + wire_bytes(2, bd_seq) + wire_bytes(2, heat) + wire_varint(3, 0)
    birth = setup.parse((f"spBv1.0/{GROUP}/NBIRTH/{NODE}", nbirth))
    assert birth.rejections == []
    assert birth.readings == [(HEAT.id, at(ms), canonical(HEAT, 2.5, "MWh"))]
    assert birth.event is not None and birth.event.bd_seq == 7
    data_metric = wire_varint(2, 1) + wire_varint(3, ms + 60_000) + wire_double(13, 3.0)
    ndata = wire_varint(1, ms) + wire_bytes(2, data_metric) + wire_varint(3, 1)
    data = setup.parse((f"spBv1.0/{GROUP}/NDATA/{NODE}", ndata))
    assert data.rejections == []
    assert data.readings == [(HEAT.id, at(ms + 60_000), canonical(HEAT, 3.0, "MWh"))]


# ========================================================================= sessions, parsed


def test_births_and_data_become_readings_in_canonical_units() -> None:
    setup, node = Setup(), edge_node()
    ms = setup.ms
    birth = setup.parse(node.nbirth(ms, {"Boiler/Heat": 100.0, "Boiler/Temp": 180.0}))
    assert reasons(birth) == []
    # The birth's value is a reading too, converted from its engUnit (MWh) to canonical MWh.
    assert birth.readings == [(HEAT.id, at(ms), 100.0)]
    assert birth.partner == "north"
    assert birth.event is not None and birth.event.kind == "NBIRTH"
    assert birth.event.meters == (HEAT.id,)
    pump = setup.parse(node.dbirth("Pump1", ms, {"Flow": 2.5}))
    scale = setup.parse(node.dbirth("Scale", ms))  # declared without values: no reading
    assert pump.readings == [(FLOW.id, at(ms), canonical(FLOW, 2.5, "l/s"))]
    assert scale.readings == [] and reasons(scale) == []
    assert scale.event is not None and scale.event.meters == (ASH.id,)

    ndata = setup.parse(
        node.data([("Boiler/Heat", ms + 60_000, 101.5), ("Boiler/Temp", ms + 60_000, 181.0)])
    )
    flows = setup.parse(
        node.data([("Flow", ms + 60_000, 2.75), ("Flow", ms + 120_000, 3.0)], "Pump1")
    )
    # Int32 travels as its two's complement: a negative ticket is a number like any other.
    net = setup.parse(node.data([("Net", ms + 90_000, -1250), ("Tare", ms, 3)], "Scale"))
    assert ndata.readings == [(HEAT.id, at(ms + 60_000), 101.5)]
    assert flows.readings == [
        (FLOW.id, at(ms + 60_000), canonical(FLOW, 2.75, "l/s")),
        (FLOW.id, at(ms + 120_000), canonical(FLOW, 3.0, "l/s")),
    ]
    assert net.readings == [(ASH.id, at(ms + 90_000), -1.25)]  # kg → t
    assert [reasons(p) for p in (ndata, flows, net)] == [[], [], []]
    # bdSeq, Rebirth and the temperature of the NBIRTH, the tare of a DBIRTH, and the two data
    # values of unmapped metrics
    assert setup.sessions.ignored_metrics == 6
    assert setup.asked == []


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Boiler/Heat", "Boiler/Temp"]),
            st.integers(-500 * 86_400_000, 86_400_000),  # ms from an hour ago
            st.one_of(
                st.floats(allow_nan=True, allow_infinity=True),
                st.floats(-1e13, 1e13),
                st.sampled_from([0.0, -0.0, 1e12, 1e-300]),
            ),
            st.sampled_from([None, DOUBLE, FLOAT, INT32]),  # the datatype a value says it has
            st.sampled_from([None, "MWh", "GJ", "kWh", "kg"]),  # an engUnit property in the data
        ),
        min_size=1,
        max_size=6,
    )
)
def test_the_short_way_for_usual_values_parses_as_the_long_way(
    samples: list[tuple[str, int, float, int | None, str | None]],
) -> None:
    node = edge_node()
    results = []
    clock = Setup()
    for fast in (True, False):
        setup = Setup()
        setup.now, setup.ms = clock.now, clock.ms  # the same instants both ways
        setup.sessions.fast = fast
        setup.parse(node.nbirth(setup.ms))
        topic, raw = node.data([(n, setup.ms + dt, 1.0) for n, dt, _, _, _ in samples], seq=1)
        payload = decode(raw)
        for metric, (_, _, value, datatype, unit) in zip(payload.metrics, samples, strict=True):
            if datatype == FLOAT:
                metric.float_value = value
            elif datatype == INT32:
                metric.int_value = 7
            else:
                metric.double_value = value
            if datatype is None:
                metric.ClearField("datatype")
            else:
                metric.datatype = datatype
            if unit is not None:
                metric.properties.keys.append("engUnit")
                metric.properties.values.add(type=STRING, string_value=unit)
        parsed = setup.parse((topic, payload.SerializeToString()))
        results.append((parsed.readings, [(r.reason, r.detail) for r in parsed.rejections]))
    assert results[0] == results[1]


def test_unknown_aliases_and_unborn_devices_are_rejected_and_ask_for_a_rebirth() -> None:
    setup, node = Setup(), edge_node()
    ms = setup.ms
    early = setup.parse(node.data([("Boiler/Heat", ms, 1.0)]))  # before any NBIRTH
    assert reasons(early) == [Reason.unknown_metric]
    assert "no NBIRTH" in early.rejections[0].detail
    assert setup.asked == [(GROUP, NODE)]

    setup.parse(node.nbirth(ms))
    mixed = setup.parse(
        node.data(
            [("Boiler/Heat", ms + 1000, 5.0), ("Boiler/Temp", ms + 1000, 9.0)],
            alias={"Boiler/Temp": 99},
        )
    )
    # The known alias is stored; the unknown one alone is rejected, naming the alias.
    assert mixed.readings == [(HEAT.id, at(ms + 1000), 5.0)]
    assert reasons(mixed) == [Reason.unknown_metric]
    assert "alias 99" in mixed.rejections[0].detail
    assert mixed.rejections[0].partner == "north"
    assert b'"alias": "99"' in (mixed.rejections[0].payload or b"")
    unborn = setup.parse(node.data([("Flow", ms + 2000, 1.0)], "Pump1"))  # no DBIRTH yet
    assert reasons(unborn) == [Reason.unknown_metric]
    assert "Pump1" in unborn.rejections[0].detail
    # The NBIRTH reset the request timer: one request after it, then none for a while.
    assert setup.asked == [(GROUP, NODE), (GROUP, NODE)]


def test_a_seq_gap_is_rejected_and_a_redelivery_is_not_a_gap() -> None:
    setup, node = Setup(), edge_node()
    ms = setup.ms
    setup.parse(node.nbirth(ms))  # seq 0
    first = node.data([("Boiler/Heat", ms + 1000, 1.0)])  # seq 1
    second = node.data([("Boiler/Heat", ms + 2000, 2.0)])  # seq 2
    assert setup.parse(first).readings and setup.parse(second).readings
    # The broker delivers both again after a reconnection (DUP): no gap, readings as usual.
    again = setup.parse(first, dup=True)
    assert reasons(again) == [] and len(again.readings) == 1
    assert reasons(setup.parse(second, dup=True)) == []
    assert reasons(setup.parse(node.data([("Boiler/Heat", ms + 3000, 3.0)]))) == []  # seq 3
    assert setup.asked == []

    gap = setup.parse(node.data([("Boiler/Heat", ms + 9000, 9.0)], seq=9))  # 4 to 8 lost
    assert reasons(gap) == [Reason.sequence_gap]
    assert gap.readings == []
    assert "seq 9" in gap.rejections[0].detail and "4 was expected" in gap.rejections[0].detail
    assert setup.asked == [(GROUP, NODE)]
    # The sequence goes on from where the node is; wrapping after 255 is no gap.
    assert reasons(setup.parse(node.data([("Boiler/Heat", ms + 10_000, 10.0)]))) == []
    node.seq = 254
    assert reasons(setup.parse(node.data([("Boiler/Heat", ms + 11_000, 1.0)], seq=255))) == [
        Reason.sequence_gap
    ]
    assert reasons(setup.parse(node.data([("Boiler/Heat", ms + 12_000, 1.0)]))) == []  # 0


def test_deaths_end_sessions_and_a_stale_ndeath_is_ignored() -> None:
    setup, node = Setup(), edge_node()
    ms = setup.ms
    node.bd_seq = 3
    setup.parse(node.nbirth(ms))
    setup.parse(node.dbirth("Pump1", ms))
    ddeath = setup.parse(node.ddeath("Pump1", ms + 1000))
    assert ddeath.event is not None and ddeath.event.kind == "DDEATH"
    assert ddeath.event.meters == (FLOW.id,)
    assert reasons(setup.parse(node.data([("Flow", ms + 2000, 1.0)], "Pump1"))) == [
        Reason.unknown_metric
    ]
    # The will of an earlier connection (bdSeq 2) arrives late: the node lives on.
    stale = setup.parse(node.ndeath(ms + 3000, bd_seq=2))
    assert stale.event is None and reasons(stale) == []
    alive = setup.parse(node.data([("Boiler/Heat", ms + 4000, 4.0)]))
    assert reasons(alive) == [] and len(alive.readings) == 1
    ndeath = setup.parse(node.ndeath(ms + 5000))
    assert ndeath.event is not None and ndeath.event.kind == "NDEATH"
    assert set(ndeath.event.meters) == {HEAT.id, FLOW.id, ASH.id}
    assert reasons(setup.parse(node.data([("Boiler/Heat", ms + 6000, 6.0)]))) == [
        Reason.unknown_metric
    ]


def test_values_that_are_no_numbers_and_units_that_do_not_convert_are_rejected() -> None:
    node = EdgeNode(
        GROUP,
        NODE,
        [Metric("Boiler/Heat", 1, STRING)],
        {"Pump1": [Metric("Flow", 10, DOUBLE, "kg")], "Scale": [Metric("Net", 20, DOUBLE)]},
    )
    setup = Setup()
    ms = setup.ms
    setup.parse(node.nbirth(ms))
    setup.parse(node.dbirth("Pump1", ms))
    setup.parse(node.dbirth("Scale", ms))
    text = setup.parse(node.data([("Boiler/Heat", ms + 1000, "hot")]))
    flow = setup.parse(node.data([("Flow", ms + 1000, 1.0)], "Pump1"))  # kg is no flow of water
    null = setup.parse(node.data([("Net", ms + 1000, None)], "Scale"))
    future = setup.parse(node.data([("Net", int(setup.now * 1000) + 3_600_000, 1.0)], "Scale"))
    assert [reasons(p) for p in (text, flow, null, future)] == [
        [Reason.not_finite],
        [Reason.bad_unit],
        [Reason.not_finite],
        [Reason.future],
    ]
    assert "String" in text.rejections[0].detail
    assert flow.rejections[0].meter == FLOW.id and "'kg'" in flow.rejections[0].detail
    assert setup.asked == []  # the node did nothing wrong by Sparkplug's rules


def test_nodes_no_meter_is_mapped_to_are_ignored() -> None:
    setup = Setup()
    other = EdgeNode(GROUP, "Elsewhere", [Metric("Boiler/Heat", 1)])
    for message in (
        other.data([("Boiler/Heat", setup.ms, 1.0)]),
        other.nbirth(setup.ms, {"Boiler/Heat": 1.0}),
    ):
        parsed = setup.parse(message)
        assert parsed.readings == [] and parsed.rejections == [] and parsed.event is None
    assert setup.asked == [] and setup.sessions.ignored_messages == 2
    bad = setup.parse(("spBv1.0/Plant/NDATA", b""))
    assert reasons(bad) == [Reason.bad_topic]
    junk = setup.parse((f"spBv1.0/{GROUP}/NDATA/{NODE}", b"\xff\xff\xff"))
    assert reasons(junk) == [Reason.invalid_format]


def test_births_loaded_from_the_database_keep_the_aliases() -> None:
    first, node = Setup(), edge_node()
    ms = first.ms
    rows = []
    for message in (node.nbirth(ms), node.dbirth("Pump1", ms)):
        event = first.parse(message).event
        assert event is not None and event.metrics is not None
        rows.append((event.group, event.node, event.device, event.bd_seq, event.metrics, event.at))
    restarted = Setup()
    assert restarted.sessions.load(rows) == 1
    flow = restarted.parse(node.data([("Flow", ms + 1000, 1.0)], "Pump1"))
    assert reasons(flow) == [] and flow.readings[0][0] == FLOW.id
    assert restarted.asked == []


def test_a_metric_mapped_to_two_meters_is_an_error_naming_both() -> None:
    doc = network_document()
    doc["meters"][2]["sparkplug"] = dict(doc["meters"][1]["sparkplug"])
    with pytest.raises(NetworkError) as err:
        parse_network(doc)
    assert err.value.problems == [
        "meters[2].sparkplug: Plant/Gateway1/Pump1 metric 'Flow' is mapped to both "
        "meter 'n-flow' and meter 'n-ash'"
    ]
    doc["meters"][2]["sparkplug"] = {"group": "a/b", "node": "n", "metric": "x"}
    with pytest.raises(NetworkError) as err:
        parse_network(doc)
    assert err.value.problems[0].startswith("meters[2].sparkplug.group:")


def test_the_broker_acl_lets_a_partner_publish_as_its_own_edge_nodes_only() -> None:
    doc = network_document()
    doc["meters"].append(
        {
            "id": "s-heat",
            "partner": "south",
            "kind": "heat",
            "reading": "rate",
            "unit": "kW",
            "uncertainty": 0.02,
            "interval": 60,
            "sparkplug": {"group": GROUP, "node": "Shared", "metric": "Heat"},
        }
    )
    doc["meters"][0]["sparkplug"]["node"] = "Shared"  # a north meter on the same node
    net = parse_network(doc)
    users = {u.name: u.grants for u in users_for(net)}
    assert [g for g in users["north"] if "spBv1.0" in g[1]] == [
        ("write", f"spBv1.0/{GROUP}/+/{NODE}"),
        ("write", f"spBv1.0/{GROUP}/+/{NODE}/+"),
        ("read", f"spBv1.0/{GROUP}/NCMD/{NODE}"),
    ]
    assert [g for g in users["south"] if "spBv1.0" in g[1]] == []
    assert shared_sparkplug_nodes(net) == [
        f"Sparkplug node {GROUP}/Shared is the source of meters of north, south: no partner"
        " may publish as it (give it broker credentials of its own)"
    ]


# ============================================================================ end to end


def _start_ingest(
    broker: Mosquitto, database_url: str, tmp_path: Path, client_id: str, **env: str
) -> IngestProcess:
    ingest = IngestProcess(
        database_url=database_url,
        mqtt_url=broker.url,
        client_id=client_id,
        log_path=tmp_path / "ingest.log",
        env=env,
    )
    ingest.start_subscribed()
    return ingest


class Commands:
    """Subscribes to the node's NCMD topic and decodes what arrives."""

    def __init__(self, broker: Mosquitto) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.received: list[Any] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sparkplug-ncmd-watch")
        self.client.on_message = lambda c, u, msg: self.received.append(
            (msg.topic, decode(msg.payload))
        )
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe("spBv1.0/+/NCMD/#", qos=0)
        self.client.loop_start()
        assert self.ready.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_sparkplug_end_to_end(
    fresh_mosquitto: Mosquitto, database_url: str, tmp_path: Path
) -> None:
    apply_network(database_url, network_document())
    port = free_port()
    ingest = _start_ingest(
        fresh_mosquitto, database_url, tmp_path, "ingest-sparkplug", SYMBIONT_METRICS_PORT=str(port)
    )
    commands = Commands(fresh_mosquitto)
    node = edge_node()
    node.bd_seq = 5
    ms = int(time.time() * 1000) - 3_600_000
    try:
        with Publisher(fresh_mosquitto.url, "sparkplug-node") as pub:
            pub.connect()
            messages = [
                node.nbirth(ms, {"Boiler/Heat": 10.0}),
                node.dbirth("Pump1", ms, {"Flow": 2.0}),
                node.dbirth("Scale", ms),
                node.data([("Boiler/Heat", ms + 60_000, 11.0)]),
                node.data([("Flow", ms + 60_000, 2.5), ("Flow", ms + 120_000, 3.5)], "Pump1"),
                node.data([("Net", ms + 60_000, 800)], "Scale"),
                # an alias no birth defined: rejected, and a rebirth request goes out
                node.data([("Boiler/Heat", ms + 180_000, 12.0)], alias={"Boiler/Heat": 42}),
                node.ddeath("Scale", ms + 200_000),
            ]
            for topic, payload in messages:
                pub.publish(topic, payload)
            pub.ensure_all_acked(30)
            wait_until(lambda: counts(database_url).messages >= len(messages), 30, "ingest")
            wait_until(lambda: commands.received, 10, "the rebirth request on the broker")

            # The node answers with a new NBIRTH (which lets the next request go out at once),
            # then a message goes missing: a sequence gap.
            pub.publish(*node.nbirth(ms + 220_000))
            pub.publish(*node.data([("Boiler/Heat", ms + 240_000, 13.0)], seq=node.seq + 3))
            pub.publish(*node.ndeath(ms + 300_000))
            pub.ensure_all_acked(30)
            wait_until(lambda: counts(database_url).messages >= len(messages) + 3, 30, "ingest")
            wait_until(lambda: len(commands.received) >= 2, 10, "the second rebirth request")
    finally:
        commands.close()

    stored = fetch_readings(database_url)
    assert stored == {
        (HEAT.id, at(ms)): 10.0,
        (FLOW.id, at(ms)): canonical(FLOW, 2.0, "l/s"),
        (HEAT.id, at(ms + 60_000)): 11.0,
        (FLOW.id, at(ms + 60_000)): canonical(FLOW, 2.5, "l/s"),
        (FLOW.id, at(ms + 120_000)): canonical(FLOW, 3.5, "l/s"),
        (ASH.id, at(ms + 60_000)): canonical(ASH, 800, "kg"),
    }
    rejected = fetch_rejections(database_url)
    assert [(r.reason, r.partner, r.topic) for r in rejected] == [
        ("unknown_metric", "north", f"spBv1.0/{GROUP}/NDATA/{NODE}"),
        ("sequence_gap", "north", f"spBv1.0/{GROUP}/NDATA/{NODE}"),
    ]
    assert "alias 42" in rejected[0].detail
    # The rebirth request: NCMD to the node, Node Control/Rebirth = true.
    topic, command = commands.received[0]
    assert topic == f"spBv1.0/{GROUP}/NCMD/{NODE}"
    assert [(m.name, m.boolean_value) for m in command.metrics] == [("Node Control/Rebirth", True)]

    presence = {
        r["meter_id"]: (r["online"], r["cause"])
        for r in fetch(database_url, "SELECT * FROM meter_presence")
    }
    assert presence == {
        HEAT.id: (False, "NDEATH"),
        FLOW.id: (False, "NDEATH"),
        ASH.id: (False, "NDEATH"),
    }
    # The NDEATH ended the node's session: no births are kept for it any more.
    assert fetch(database_url, "SELECT * FROM sparkplug_births") == []

    samples = scrape_metrics(port)
    labels = f"group={GROUP},node={NODE}"
    assert samples[f"symbiont_ingest_sparkplug_messages_total{{{labels},type=NDATA}}"] == 3
    assert samples[f"symbiont_ingest_sparkplug_messages_total{{{labels},type=DBIRTH}}"] == 2
    assert samples[f"symbiont_ingest_sparkplug_messages_total{{{labels},type=NBIRTH}}"] == 2
    assert samples[f"symbiont_ingest_sparkplug_readings_total{{{labels}}}"] == 6
    assert samples[f"symbiont_ingest_sparkplug_node_online{{{labels}}}"] == 0
    rebirths = "symbiont_ingest_sparkplug_rebirth_requests_total"
    assert samples[f"{rebirths}{{{labels},reason=unknown_metric}}"] == 1
    assert samples[f"{rebirths}{{{labels},reason=sequence_gap}}"] == 1
    assert ingest.terminate() == 0
    assert "Traceback" not in ingest.log_text(), ingest.tail(60)


def test_births_and_presence_are_kept_while_the_node_lives(
    fresh_mosquitto: Mosquitto, database_url: str, tmp_path: Path
) -> None:
    apply_network(database_url, network_document())
    ingest = _start_ingest(fresh_mosquitto, database_url, tmp_path, "ingest-sparkplug-births")
    node = edge_node()
    ms = int(time.time() * 1000) - 60_000
    with Publisher(fresh_mosquitto.url, "sparkplug-node-2") as pub:
        pub.connect()
        for topic, payload in (node.nbirth(ms), node.dbirth("Pump1", ms), node.dbirth("Scale", ms)):
            pub.publish(topic, payload)
        pub.ensure_all_acked(30)
        wait_until(lambda: counts(database_url).messages >= 3, 30, "ingest")
    births = {
        (r["device_id"], r["bd_seq"]): r["metrics"]
        for r in fetch(
            database_url, "SELECT device_id, bd_seq, metrics::text FROM sparkplug_births"
        )
    }
    assert set(births) == {("", 0), ("Pump1", None), ("Scale", None)}
    assert '[10, "Flow", 9, "l/s"]' in births[("Pump1", None)]
    presence = {
        r["meter_id"]: (r["online"], r["cause"])
        for r in fetch(database_url, "SELECT * FROM meter_presence")
    }
    assert presence == {
        HEAT.id: (True, "NBIRTH"),
        FLOW.id: (True, "DBIRTH"),
        ASH.id: (True, "DBIRTH"),
    }
    assert ingest.terminate() == 0


# ============================================================= no loss through SIGKILLs


def test_messages_committed_but_unacknowledged_come_again_as_duplicates(
    fresh_mosquitto: Mosquitto, database_url: str, tmp_path: Path
) -> None:
    """Ingest commits births and data, dies before the broker hears its PUBACKs and gets all
    of them again (DUP set) after the restart: no reading twice, nothing rejected (no gap, no
    unknown alias), the births still known."""
    apply_network(database_url, network_document())
    node = edge_node()
    ms = int(time.time() * 1000) - 86_400_000
    messages = [node.nbirth(ms, {"Boiler/Heat": 1.0}), node.dbirth("Pump1", ms)]
    messages += [node.data([("Boiler/Heat", ms + 1000 * i, float(i))]) for i in range(1, 40)]
    messages += [node.data([("Flow", ms + 1000 * i, float(i))], "Pump1") for i in range(1, 40)]
    with committed_unacknowledged(
        fresh_mosquitto.host,
        fresh_mosquitto.port,
        database_url,
        messages,
        client_id="ingest-sparkplug-redelivery",
        log_path=tmp_path / "ingest.log",
    ) as (proxy, ingest):
        first = fetch_readings(database_url)
        assert len(first) == 1 + 39 + 39
        crash_and_redeliver(proxy, ingest, database_url, len(messages))
        assert "Sparkplug B births of 1 edge nodes loaded" in ingest.log_text()
    assert fetch_readings(database_url) == first
    assert fetch_rejections(database_url) == []
    assert counts(database_url).duplicates == len(first)


SAMPLES = 12_000  # readings, 4 to a message, over three metrics of the node and its devices


def test_no_loss_through_sigkills_with_sparkplug_input(
    fresh_mosquitto: Mosquitto, database_url: str, tmp_path: Path
) -> None:
    """Births, then a steady stream of NDATA and DDATA (QoS 1); ingest is SIGKILLed twice
    mid-stream and restarted. Every acknowledged reading is stored exactly once, and nothing
    is rejected: the restarted ingest knows the aliases from the births it committed, and
    messages the broker delivers again are not taken for a sequence gap."""
    db = database_url
    apply_network(db, network_document())
    ingest = _start_ingest(fresh_mosquitto, db, tmp_path, "ingest-sparkplug-crash")
    node = edge_node()
    base = int(time.time() * 1000) - 2 * 86_400_000
    expected: dict[tuple[str, datetime], float] = {}
    messages = [node.nbirth(base), node.dbirth("Pump1", base), node.dbirth("Scale", base)]
    plan = ((HEAT, "Boiler/Heat", None, "MWh"), (FLOW, "Flow", "Pump1", "l/s"))
    plan += ((ASH, "Net", "Scale", "kg"),)
    for i in range(SAMPLES // 4):
        meter, name, device, unit = plan[i % 3]
        samples = []
        for k in range(4):
            ts = base + 1000 * (4 * (i // 3) + k + 1)
            # whole numbers: exact in single precision (the pump's Float) as in an Int32
            value: float = float((i * 4 + k) * 7 % 1000) if device != "Scale" else i * 4 + k
            samples.append((name, ts, value))
            expected[(meter.id, at(ts))] = canonical(meter, value, unit)
        messages.append(node.data(samples, device))
    assert len(expected) == SAMPLES

    with ingest, Publisher(fresh_mosquitto.url, "sparkplug-crash-node") as pub:
        pub.connect()
        third = len(messages) // 3
        freezes, kills = {third - 200, 2 * third - 200}, {third, 2 * third}
        for n, (topic, payload) in enumerate(messages):
            pub.publish(topic, payload)
            if n in freezes:
                # Held still, ingest takes the next 200 messages in flight but commits none:
                # the broker delivers them again (DUP set) to the restarted ingest.
                pub.wait_all(10)
                ingest.freeze()
            elif n in kills:
                ingest.kill()
                ingest.start_subscribed()
            elif n % 100 == 0:
                time.sleep(0.05)  # a steady stream rather than one burst
        pub.ensure_all_acked(60)
        poll(lambda: counts(db).readings >= SAMPLES, 60)
        assert ingest.starts == 3
        log = ingest.log_text()

    stored = fetch_readings(db)
    missing = expected.keys() - stored.keys()
    assert not missing, f"{len(missing)} of {SAMPLES} acknowledged readings lost"
    assert stored == expected
    rejected = fetch_rejections(db)
    assert rejected == [], f"{len(rejected)} rejected, first: {rejected[0]}"
    assert "Sparkplug B births of 1 edge nodes loaded" in log, log[-3000:]
    assert "Traceback" not in log


# ============================================================================== simulator


def test_the_simulator_publishes_sparkplug_births_first_and_ingest_stores_it(
    fresh_mosquitto: Mosquitto, database_url: str, tmp_path: Path
) -> None:
    """``symbiont simulate --format sparkplug``: the small example's two mapped heat meters go
    as Sparkplug B (births, data by alias, deaths at the end), the weighbridges as JSON; what
    ingest stores is what the simulator meant, to the bit."""
    document = yaml.safe_load(SMALL.read_text())
    net = parse_network(document)
    mapped = {m.id for m in net.meters if m.sparkplug is not None}
    assert mapped == {"plant-heat-out", "town-heat-in"}
    apply_network(database_url, document)
    ingest = _start_ingest(fresh_mosquitto, database_url, tmp_path, "ingest-sparkplug-sim")
    # Two working days in the network's zone, a week or so back: trucks run on them (Monday to
    # Saturday, a few a day), whatever the day and hour the test runs at.
    day = datetime.now(net.tz).replace(hour=0, minute=0, second=0, microsecond=0)
    day -= timedelta(days=7 + (day.weekday() - 1) % 7)  # a Tuesday 7 to 13 days ago
    start = day.astimezone(UTC)
    chunks = list(simulate(net, start, start + timedelta(days=2)))
    index = NetworkIndex.from_network(net)
    expected = {
        (c.meter_id, at(round(t * 1000))): v * index.meters[c.meter_id].factor
        for c in chunks
        for t, v in zip(c.ts.tolist(), c.value.tolist(), strict=True)
    }
    assert {m for m, _ in expected} > mapped  # the weighbridges have tickets too
    result = publish(net, chunks, fresh_mosquitto.url, form="sparkplug", batch_size=50)
    assert result.failed == 0 and result.readings == len(expected)
    wait_until(lambda: counts(database_url).readings >= len(expected), 30, "ingest")
    assert ingest.terminate() == 0
    assert fetch_readings(database_url) == expected
    assert fetch_rejections(database_url) == []
    presence = {
        r["meter_id"]: (r["online"], r["cause"])
        for r in fetch(database_url, "SELECT * FROM meter_presence")
    }
    assert presence == {m: (False, "NDEATH") for m in mapped}  # the run ended
