"""tshark as an independent oracle: the same generated packets, decoded both ways.

One pcap holds a frame per case (scapy Ether/IP/TCP|UDP|ICMP); tshark runs once and
each frame's fields are compared with what the dissector reports for its payload.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest
from dissect_testlib import (
    client_hello,
    crypto_frame,
    protect_initial,
    rfc9001_a2_packet,
    tls_records,
    tshark_fields,
)
from scapy.contrib.coap import CoAP
from scapy.contrib.mqtt import MQTT, MQTTConnect, MQTTPublish
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from upf_tap.dissect import coap, dns, http, icmp, mqtt, quic, tls

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")

UE, SRV = "10.45.0.7", "10.200.0.10"
UE6, SRV6 = "2001:db8:cafe::7", "2001:db8:beef::10"

FIELDS = [
    "frame.number",
    "http.request.method", "http.host", "http.request.uri", "http.user_agent", "http.content_length",
    "tls.handshake.extensions_server_name", "tls.handshake.extensions_alpn_str",
    "mqtt.clientid", "mqtt.username", "mqtt.topic", "mqtt.qos",
    "dns.qry.name", "dns.qry.type",
    "coap.code", "coap.opt.uri_host", "coap.opt.uri_path_recon",
    "icmp.ident", "icmp.seq", "icmpv6.echo.identifier", "icmpv6.echo.sequence_number",
]

_DCID = bytes.fromhex("5a5a0102a5a50304")
CASES: list[tuple[str, int, bytes]] = [
    ("tcp", 80, b"GET /api/v1/buy?item=38 HTTP/1.1\r\nHost: iot.mec.local:8080\r\nUser-Agent: ue-app/2.1\r\n\r\n"),
    ("tcp", 80, b"POST /api/v1/buy?item=13 HTTP/1.1\r\nHost: shop.mec.local\r\nContent-Type: application/json\r\n"
                b"Content-Length: 9\r\n\r\n{\"q\": 1}\nGET /second HTTP/1.1\r\nHost: shop.mec.local\r\n\r\n"),
    ("tcp", 80, b"GET http://proxy.example/x?y=1 HTTP/1.1\r\nHost: proxy.example\r\n\r\n"),
    ("tcp", 443, tls_records(client_hello("auth.iot.mec.local", ["h2", "http/1.1"], [0x0304, 0x0303]))),
    ("tcp", 443, tls_records(client_hello("cdn.app.mec.local"))),
    ("tcp", 1883, bytes(MQTT() / MQTTConnect(protoname=b"MQTT", protolevel=4, clientId=b"sensor-7",
                                             usernameflag=1, username=b"bob", passwordflag=1, password=b"pw"))
                  + bytes(MQTT(QOS=1) / MQTTPublish(topic=b"mec/ue7/temp", msgid=3, value=b"21.5"))),
    ("udp", 53, bytes(DNS(id=1, rd=1, qd=[DNSQR(qname="svc9.iot.mec.local", qtype="A")]))),
    ("udp", 53, bytes(DNS(id=2, rd=1, qd=[DNSQR(qname="www.example.com", qtype="AAAA")]))),
    ("udp", 53, struct.pack("!HHHHHH", 3, 0x0100, 1, 0, 0, 0) + b"\x03a_b\x02x-\x03com\x00\x00\x10\x00\x01"),
    # odd label bytes: controls, backslash, quotes, UTF-8, a C1 control, a byte that is not UTF-8
    ("udp", 53, struct.pack("!HHHHHH", 4, 0x0100, 1, 0, 0, 0)
     + b"\x0d\x07\x08\x0a\x0b\x0c\x0d\x22\x27\x20\xc2\x85\x00\x1b" + b"\x06\x1f\x7f\xff\\\x09."
     + b"\x02\xc3\xa9\x00\x00\x01\x00\x01"),
    ("udp", 5683, bytes(CoAP(type=0, code=1, msg_id=7, token=b"\x01\x02",
                             options=[("Uri-Host", b"sensors.mec.local"), ("Uri-Path", b"api"),
                                      ("Uri-Path", b"temp")]))),
    ("udp", 5683, bytes(CoAP(type=1, code=2, msg_id=8, options=[("Uri-Path", b"events")])) + b"\xff{}"),
    ("udp", 443, protect_initial(_DCID, crypto_frame(0, client_hello("video.mec.local", ["h3"], [0x0304])))),
    ("udp", 443, rfc9001_a2_packet()),
    ("icmp", 0, bytes(ICMP(type=8, id=0x1A2B, seq=17) / b"ping")),
    ("icmp6", 0, bytes(ICMPv6EchoRequest(id=4242, seq=9, data=b"ping6"))),
]


def _frame(i: int, proto: str, port: int, payload: bytes):
    if proto == "tcp":
        return Ether() / IP(src=UE, dst=SRV) / TCP(sport=40000 + i, dport=port, flags="PA", seq=1000) / payload
    if proto == "udp":
        return Ether() / IP(src=UE, dst=SRV) / UDP(sport=50000 + i, dport=port) / payload
    if proto == "icmp":
        return Ether() / IP(src=UE, dst=SRV) / ICMP(payload)
    return Ether() / IPv6(src=UE6, dst=SRV6) / ICMPv6EchoRequest(payload)


def _ours(proto: str, port: int, payload: bytes) -> list:
    if proto == "tcp":
        fn = {80: http.dissect_stream, 443: tls.dissect_stream, 1883: mqtt.dissect_stream}[port]
        return fn(payload, 0)[0]
    if proto == "udp":
        return {53: dns.dissect_datagram, 5683: coap.dissect_datagram, 443: quic.dissect_datagram}[port](payload)
    return icmp.dissect_icmp(payload, proto == "icmp6")


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    pcap: Path = tmp_path_factory.mktemp("oracle") / "dissect.pcap"
    wrpcap(str(pcap), [_frame(i, *c) for i, c in enumerate(CASES)])
    out = tshark_fields(pcap, FIELDS)
    assert len(out) == len(CASES)
    return [dict(zip(FIELDS, r, strict=True)) for r in out]


def _join(values: list) -> str:
    return ",".join(str(v) for v in values)


@pytest.mark.parametrize("i", range(len(CASES)))
def test_matches_tshark(rows: list[dict[str, str]], i: int) -> None:
    proto, port, payload = CASES[i]
    row = rows[i]
    found = _ours(proto, port, payload)
    assert found, "the dissector found nothing"
    apps = [a for _, a in found]
    kinds = {k for k, _ in found}
    if kinds == {"http.request"}:
        assert row["http.request.method"] == _join(a["method"] for a in apps)
        assert row["http.host"] == _join(a["host"] for a in apps)
        assert row["http.request.uri"] == _join(a["path"] for a in apps)
        assert row["http.user_agent"] == _join(a["user_agent"] for a in apps if "user_agent" in a)
        assert row["http.content_length"] == _join(a["content_length"] for a in apps if "content_length" in a)
    elif kinds == {"tls.client_hello"} or kinds == {"quic.initial"}:
        (app,) = apps
        assert row["tls.handshake.extensions_server_name"] == app["sni"]
        assert row["tls.handshake.extensions_alpn_str"] == _join(app["alpn"])
    elif kinds <= {"mqtt.connect", "mqtt.publish"}:
        conn = [a for k, a in found if k == "mqtt.connect"]
        pubs = [a for k, a in found if k == "mqtt.publish"]
        assert row["mqtt.clientid"] == _join(a["client_id"] for a in conn)
        assert row["mqtt.username"] == _join(a["username"] for a in conn if "username" in a)
        assert row["mqtt.topic"] == _join(a["topic"] for a in pubs)
        assert row["mqtt.qos"].split(",")[-len(pubs):] == [str(a["qos"]) for a in pubs]
    elif kinds == {"dns.query"}:
        assert row["dns.qry.name"] == _join(a["qname"] for a in apps)
        assert row["dns.qry.type"] == _join(a["qtype"] for a in apps)
    elif kinds == {"coap.request"}:
        (app,) = apps
        assert row["coap.code"] == str(list(coap.METHODS.values()).index(app["method"]) + 1)
        assert row["coap.opt.uri_host"] == app.get("uri_host", "")
        # tshark rebuilds the whole URI when a Uri-Host is present
        host = f"coap://{app['uri_host']}" if "uri_host" in app else ""
        assert row["coap.opt.uri_path_recon"] == host + app["uri_path"]
    elif kinds == {"icmp.echo_request"}:
        (app,) = apps
        if proto == "icmp":
            assert int(row["icmp.ident"], 0) == app["id"] and int(row["icmp.seq"], 0) == app["seq"]
        else:
            assert int(row["icmpv6.echo.identifier"], 0) == app["id"]
            assert int(row["icmpv6.echo.sequence_number"], 0) == app["seq"]
    else:
        pytest.fail(f"unexpected kinds {kinds}")
