"""Bad input never crashes the control plane: random and mutated PFCP, SCTP, NGAP and NAS."""

from __future__ import annotations

import collections
import functools
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import CAPTURES
from tests.control.ctl_pcap import read_outer
from upf_tap.control import nas, ngap
from upf_tap.control.correlator import ControlPlane

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def seeds() -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    pfcp_seeds: list[bytes] = []
    sctp_seeds: list[bytes] = []
    for name in ("oai-5greplay.pcap", "free5gc-registration.pcap", "pfcp-scapy.pcap"):
        for o in read_outer(CAPTURES / name):
            if o.proto == 17 and 8805 in (o.sport, o.dport):
                pfcp_seeds.append(o.udp_payload)
            elif o.proto == 132:
                sctp_seeds.append(o.l4)
    return tuple(pfcp_seeds), tuple(sctp_seeds)


def mutate(data: st.DataObject, seed: bytes) -> bytes:
    buf = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "len"]))
        if not buf:
            break
        i = data.draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del buf[i:]
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "len" and i + 2 <= len(buf):
            struct.pack_into("!H", buf, i, data.draw(st.integers(0, 0xFFFF)))
    return bytes(buf)


def fresh() -> tuple[ControlPlane, collections.Counter[str]]:
    stats: collections.Counter[str] = collections.Counter()
    return ControlPlane("fuzz", lambda e: None, stats), stats


@SETTINGS
@given(st.binary(max_size=400))
def test_random_pfcp(payload: bytes) -> None:
    cp, _ = fresh()
    cp.on_pfcp(0, "10.0.0.1", 8805, "10.0.0.2", 8805, payload)
    cp.on_pfcp(1, "10.0.0.2", 8805, "10.0.0.1", 8805, payload)
    cp.ue_for_teid(1, "10.0.0.2")
    cp.ue_for_ip("10.0.0.3")


@SETTINGS
@given(st.data())
def test_mutated_pfcp(data: st.DataObject) -> None:
    pfcp_seeds, _ = seeds()
    cp, stats = fresh()
    # a whole real exchange, with one datagram mutated: the state machine must hold
    k = data.draw(st.integers(0, len(pfcp_seeds) - 1))
    for n, seed in enumerate(pfcp_seeds[:40]):
        payload = mutate(data, seed) if n == k else seed
        src, dst = ("10.0.0.1", "10.0.0.2") if n % 2 == 0 else ("10.0.0.2", "10.0.0.1")
        cp.on_pfcp(n, src, 8805, dst, 8805, payload)
    assert stats["pfcp.error"] == 0
    cp.flush(99)


@SETTINGS
@given(st.binary(max_size=400))
def test_random_sctp(packet: bytes) -> None:
    cp, stats = fresh()
    cp.on_sctp(0, "10.0.0.1", "10.0.0.2", packet)
    assert stats["ngap.error"] == 0


@SETTINGS
@given(st.data())
def test_mutated_sctp(data: st.DataObject) -> None:
    _, sctp_seeds = seeds()
    cp, stats = fresh()
    # the mutated packet among a few real ones before and after it, so state is in play
    k = data.draw(st.integers(0, len(sctp_seeds) - 1))
    for n in range(max(0, k - 4), min(len(sctp_seeds), k + 3)):
        seed = sctp_seeds[n]
        cp.on_sctp(n, "10.0.0.1", "10.0.0.2", mutate(data, seed) if n == k else seed)
    assert stats["ngap.error"] == 0
    cp.ue_for_teid(8, "192.168.70.134")


@SETTINGS
@given(st.binary(max_size=300))
def test_random_ngap_and_nas_raise_only_their_errors(data: bytes) -> None:
    try:
        ngap.decode(data)
    except ngap.NgapError:
        pass
    for alg in (None, 0, 1):
        try:
            nas.decode(b"\x7e" + data, alg)
            nas.decode(b"\x7e\x02" + data, alg)
            nas.decode(b"\x2e" + data, alg)
        except nas.NasError:
            pass
