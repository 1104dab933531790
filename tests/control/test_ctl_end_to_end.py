"""The bar, end to end: `upf-tap read` on the real captures, user-plane events carry tshark's SUPI."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.utils import RawPcapReader

from tests.conftest import CAPTURES
from tests.control import ctl_oracle as oracle

pytestmark = pytest.mark.skipif(oracle.TSHARK is None, reason="needs tshark as the oracle")

CORES = ["open5gs-registration.pcapng", "oai-ueransim.pcap", "free5gc-registration.pcap", "oai-5greplay.pcap"]


def read(*files: Path) -> list[dict]:
    res = subprocess.run([sys.executable, "-m", "upf_tap", "read", *map(str, files)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


@pytest.mark.parametrize("name", CORES)
def test_user_plane_events_carry_tsharks_supi(name: str) -> None:
    events = read(CAPTURES / name)
    user = [e for e in events if e["point"] == "n3"]
    assert user, "the capture has application events in GTP-U"
    supis = oracle.supis(name)
    for e in user:
        assert e["ue"].get("supi") in supis, e
    ups = [e for e in events if e["kind"] == "session.up"]
    assert [(e["app"].get("ue_ip"), e["app"].get("seid")) for e in ups] == oracle.pfcp_established(name)


def test_n2_n3_n4_in_separate_files_are_joined(tmp_path: Path) -> None:
    """Taps on three interfaces: the files are merged by time and the identity still joins."""
    src = CAPTURES / "oai-5greplay.pcap"
    parts = {k: tmp_path / f"{k}.pcap" for k in ("n2", "n3", "n4", "other")}
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)     # pcap, Ethernet
    records: dict[str, list[bytes]] = {k: [header] for k in parts}
    for frame, meta in RawPcapReader(str(src)):
        ip = frame[14:]
        proto = ip[9] if len(ip) > 20 and ip[0] >> 4 == 4 else None
        ports = (int.from_bytes(ip[20:22], "big"), int.from_bytes(ip[22:24], "big")) if proto == 17 else ()
        key = "n2" if proto == 132 else "n4" if 8805 in ports else "n3" if 2152 in ports else "other"
        records[key].append(struct.pack("<IIII", meta.sec, meta.usec, len(frame), len(frame)) + frame)
    for k, p in parts.items():
        p.write_bytes(b"".join(records[k]))
    # given in the "wrong" order on purpose: the reader merges by timestamp
    events = read(parts["n3"], parts["n4"], parts["n2"])
    user = [e for e in events if e["point"] == "n3"]
    assert user and all(e["ue"]["supi"] == "imsi-208950000000031" for e in user)
    assert all(e["ue"]["dnn"] == "oai" and e["ue"]["snssai"] == "1-000001" for e in user)
    assert [e["kind"] for e in events if e["point"] == "n4"] == ["session.up", "session.modify"]
