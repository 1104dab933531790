"""MQTT CONNECT/PUBLISH dissector: 3.1.1 via scapy, 3.1 and 5.0 crafted byte by byte."""

from __future__ import annotations

import struct

import pytest
from scapy.contrib.mqtt import MQTT, MQTTConnect, MQTTPublish, MQTTSubscribe, MQTTTopicQOS

from upf_tap.dissect import Malformed, mqtt
from upf_tap.dissect.mqtt import dissect_stream, looks_like


def s(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def rl(n: int) -> bytes:
    out = b""
    while True:
        n, d = divmod(n, 128)
        out += bytes([d | (0x80 if n else 0)])
        if not n:
            return out


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + rl(len(body)) + body


CONNECT_311 = bytes(MQTT() / MQTTConnect(protoname=b"MQTT", protolevel=4, cleansess=1, clientId=b"sensor-7",
                                         usernameflag=1, username=b"bob", passwordflag=1, password=b"pw"))
PUBLISH_QOS1 = bytes(MQTT(QOS=1, RETAIN=1) / MQTTPublish(topic=b"mec/ue7/temp", msgid=7, value=b"21.5"))
PUBLISH_QOS0 = bytes(MQTT(QOS=0, DUP=0) / MQTTPublish(topic=b"a/b", value=b"x" * 300))
OTHERS = bytes(MQTT(QOS=1) / MQTTSubscribe(msgid=2, topics=[MQTTTopicQOS(topic=b"cmd/#", QOS=1)])) + bytes(
    MQTT(type=12))  # PINGREQ
STREAM = CONNECT_311 + OTHERS + PUBLISH_QOS1 + PUBLISH_QOS0


def test_scapy_311_stream() -> None:
    found, pos, done = dissect_stream(STREAM, 0)
    assert found == [
        ("mqtt.connect", {"client_id": "sensor-7", "protocol_level": 4, "username": "bob", "clean_session": True}),
        ("mqtt.publish", {"topic": "mec/ue7/temp", "qos": 1, "retain": True, "dup": False, "packet_id": 7}),
        ("mqtt.publish", {"topic": "a/b", "qos": 0, "retain": False, "dup": False}),
    ]
    assert pos == len(STREAM) and not done
    assert "21.5" not in repr(found)  # no payload by default


def test_every_split_point() -> None:
    whole = dissect_stream(STREAM, 0)[0]
    for cut in range(len(STREAM)):
        f1, p1, _ = dissect_stream(STREAM[:cut], 0)
        f2, p2, _ = dissect_stream(STREAM, p1)
        assert f1 + f2 == whole, cut
        assert p2 == len(STREAM)


def test_publish_reported_before_its_payload_is_in() -> None:
    big = packet(0x30, s(b"bulk/upload") + b"z" * 50000)
    found, pos, _ = dissect_stream(big[:100], 0)
    assert found[0][1]["topic"] == "bulk/upload" and pos == len(big)


def test_mqtt31_connect_without_username() -> None:
    body = s(b"MQIsdp") + b"\x03\x02\x00\x3c" + s(b"old-client")
    found, _, _ = dissect_stream(packet(0x10, body), 0)
    assert found == [("mqtt.connect", {"client_id": "old-client", "protocol_level": 3, "clean_session": True})]


def test_mqtt5_properties_will_and_payload_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    props = b"\x11\x00\x00\x00\x3c" + b"\x21\x00\x10"          # session expiry, receive maximum
    will_props = b"\x01\x01"                                    # payload format indicator
    body = (s(b"MQTT") + b"\x05" + bytes([0x80 | 0x40 | 0x04 | 0x02]) + b"\x00\x1e"
            + rl(len(props)) + props + s(b"cam-1") + rl(len(will_props)) + will_props
            + s(b"will/topic") + s(b"bye") + s(b"alice") + s(b"secret"))
    pub_props = b"\x01\x01" + b"\x03" + s(b"text/plain")        # format, content type
    pub = packet(0x32, s(b"cam/1/motion") + b"\x00\x09" + rl(len(pub_props)) + pub_props + b"motion at door")
    stream = packet(0x10, body) + pub
    found, pos, _ = dissect_stream(stream, 0)
    assert pos == len(stream)
    assert found[0] == ("mqtt.connect", {"client_id": "cam-1", "protocol_level": 5, "username": "alice",
                                         "clean_session": True})
    assert found[1] == ("mqtt.publish", {"topic": "cam/1/motion", "qos": 1, "retain": False, "dup": False,
                                         "packet_id": 9})
    monkeypatch.setattr(mqtt, "PAYLOAD_CAP", 6)
    found, _, _ = dissect_stream(stream, 0)
    assert found[1][1]["payload"] == "motion"


@pytest.mark.parametrize("bad", [
    b"\x00\x00",                                                   # reserved type 0
    b"\x30\xff\xff\xff\xff\x01",                                   # Remaining Length of 5 bytes
    packet(0x36, s(b"t") + b"\x00\x01"),                           # QoS 3
    packet(0x10, s(b"HTTP") + b"\x04\x02\x00\x3c" + s(b"c")),      # unknown protocol name
    packet(0x10, s(b"MQTT") + b"\x03\x02\x00\x3c" + s(b"c")),      # MQTT with level 3
    packet(0x10, s(b"MQTT") + b"\x04\x82\x00\x3c" + s(b"c")),      # username flag, no username
    packet(0x30, b"\x00\x09abc"),                                  # topic runs past the packet
    b"\x83\x02\x00\x01",                                         # SUBSCRIBE flags must be 0010
    b"\xc1\x00",                                                 # PINGREQ flags must be 0000
])
def test_malformed(bad: bytes) -> None:
    with pytest.raises(Malformed):
        dissect_stream(bad, 0)


def test_looks_like() -> None:
    assert looks_like(CONNECT_311) and looks_like(CONNECT_311[:1]) and looks_like(CONNECT_311[:5])
    assert looks_like(packet(0x10, s(b"MQIsdp") + b"\x03\x02\x00\x3c" + s(b"c")))
    assert not looks_like(PUBLISH_QOS1)
    assert not looks_like(packet(0x10, s(b"XXXX") + b"\x04\x02\x00\x3c" + s(b"c")))
    assert not looks_like(b"GET / HTTP/1.1")
