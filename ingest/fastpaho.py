"""A cheaper decoding of MQTT 5 PUBLISH packets that carry no properties (paho-mqtt 2.x).

For every MQTT 5 PUBLISH, paho builds a ``Properties`` object and unpacks the property block
into it, even when the block is empty, as it is for the readings meters publish: the
constructor builds three tables and ``clear()`` probes 27 attribute names. That is 15–23 µs
per message, about a quarter of what ingest spends on a single-reading message (BENCHMARKS.md,
"where the time goes").

:func:`install` replaces ``paho.mqtt._packet.decode_publish`` with :func:`decode_publish`,
which decodes a packet whose property length is zero directly (sharing one empty
``Properties``) and hands every other packet to paho's own decoder. It is a private function
of paho, so :func:`install` first checks, on sample packets, that both decoders give the
same result, and leaves paho alone when they do not (another paho version).
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger("symbiont.ingest")

_MQTTv5 = MQTTProtocolVersion.MQTTv5
_ORIGINAL = getattr(_packet, "decode_publish", None)
_PublishPacket = getattr(_packet, "PublishPacket", None)
# Shared by every message without properties; ingest never reads or changes it.
_EMPTY = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]


def decode_publish(header: int, packet: bytes | bytearray, protocol: MQTTProtocolVersion) -> Any:
    """``paho.mqtt._packet.decode_publish``, without the ``Properties`` when there are none."""
    if protocol == _MQTTv5 and _ORIGINAL is not None and _PublishPacket is not None:
        qos = (header & 0x06) >> 1
        n = len(packet)
        if n >= 2:
            topic_end = 2 + ((packet[0] << 8) | packet[1])
            props = topic_end + 2 if qos else topic_end
            if props < n and packet[props] == 0:  # property length 0
                return _PublishPacket(
                    dup=(header & 0x08) != 0,
                    qos=qos,
                    retain=(header & 0x01) != 0,
                    topic=bytes(packet[2:topic_end]),
                    mid=((packet[topic_end] << 8) | packet[topic_end + 1]) if qos else 0,
                    properties=_EMPTY,
                    payload=packet[props + 1 :],
                )
    assert _ORIGINAL is not None
    return _ORIGINAL(header, packet, protocol)


def _sample_packets() -> list[tuple[int, bytes]]:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = ("k", "v")
    props.MessageExpiryInterval = 60
    packed = props.pack()  # type: ignore[no-untyped-call]
    topic = b"symbiont/readings/p/m"
    head = struct.pack("!H", len(topic)) + topic
    body = b'{"ts": "2026-01-01T00:00:00Z", "value": 1.5}'
    return [
        (0x32, head + b"\x01\x02" + b"\x00" + body),  # QoS 1, no properties
        (0x3A, head + b"\xff\xfe" + b"\x00" + body),  # QoS 1, DUP
        (0x31, head + b"\x00"),  # QoS 0, retained, empty payload
        (0x30, head + b"\x00" + body),  # QoS 0
        (0x32, head + b"\x00\x09" + packed + body),  # with properties: paho's decoder
    ]


def _same(a: Any, b: Any) -> bool:
    if a._fields != b._fields:
        return False
    for name in a._fields:
        x, y = getattr(a, name), getattr(b, name)
        if name == "properties":
            if x.json() != y.json():
                return False
        elif x != y:
            return False
    return True


def install() -> bool:
    """Use :func:`decode_publish` in paho if it decodes the sample packets as paho does."""
    if _ORIGINAL is None or _PublishPacket is None:
        log.info("paho-mqtt has no _packet.decode_publish: MQTT 5 decoding left as it is")
        return False
    if _packet.decode_publish is decode_publish:
        return True
    try:
        for header, packet in _sample_packets():
            if not _same(
                decode_publish(header, packet, _MQTTv5), _ORIGINAL(header, packet, _MQTTv5)
            ):
                raise ValueError(f"packet {packet!r} decodes differently")
    except Exception as exc:  # any surprise: keep paho's own decoder
        log.warning("faster MQTT 5 decoding not used with this paho-mqtt (%s)", exc)
        return False
    _packet.decode_publish = decode_publish
    return True
