"""ingest.fastpaho decodes every PUBLISH exactly as paho's own decoder does (hypothesis), and
ingest installs it."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest import fastpaho

ORIGINAL = fastpaho._ORIGINAL
assert ORIGINAL is not None


def outcome(decode: Any, header: int, packet: bytes, protocol: MQTTProtocolVersion) -> Any:
    try:
        result = decode(header, packet, protocol)
    except Exception as exc:  # the same packets must fail, with the same kind of error
        return ("error", type(exc))
    return tuple(v.json() if isinstance(v, Properties) else v for v in result)


@st.composite
def publish(draw: st.DrawFn) -> tuple[int, bytes]:
    qos = draw(st.integers(0, 3))
    header = 0x30 | (qos << 1) | draw(st.integers(0, 1)) | (draw(st.integers(0, 1)) << 3)
    topic = draw(st.binary(max_size=40))
    out = struct.pack("!H", len(topic)) + topic
    if qos:
        out += struct.pack("!H", draw(st.integers(0, 0xFFFF)))
    kind = draw(st.sampled_from(["none", "some", "raw"]))
    if kind == "none":
        out += b"\x00"
    elif kind == "some":
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.MessageExpiryInterval = draw(st.integers(0, 2**32 - 1))
        if draw(st.booleans()):
            props.ContentType = draw(st.text(max_size=10))
        out += props.pack()  # type: ignore[no-untyped-call]
    out += draw(st.binary(max_size=60))
    if draw(st.booleans()):  # truncated or garbled packets too
        out = out[: draw(st.integers(0, len(out)))]
    return header, out


@settings(max_examples=2000, deadline=None)
@given(publish())
def test_decodes_like_paho(packet: tuple[int, bytes]) -> None:
    header, data = packet
    for protocol in (MQTTProtocolVersion.MQTTv5, MQTTProtocolVersion.MQTTv311):
        assert outcome(fastpaho.decode_publish, header, data, protocol) == outcome(
            ORIGINAL, header, data, protocol
        )


def test_install_checks_then_replaces_paho_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_packet, "decode_publish", ORIGINAL)
    assert fastpaho.install()
    assert _packet.decode_publish is fastpaho.decode_publish
    # A paho whose decoder disagrees (another version) is left alone.
    monkeypatch.setattr(_packet, "decode_publish", ORIGINAL)
    monkeypatch.setattr(fastpaho, "_EMPTY", None)
    assert not fastpaho.install()
    assert _packet.decode_publish is ORIGINAL
