"""The static identity file, and how it meets live learning."""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import pytest

from testbed.constants import DNN, supi, ue_ipv4
from tests.control.ctl_replay import feed
from tests.control.test_ctl_pfcp import SMF, UPF, est_request, est_response
from upf_tap.control import identity
from upf_tap.control.correlator import ControlPlane

GOOD = f"""
subscribers:
  - supi: {supi(1)}
    ip: {ue_ipv4(1)}
    dnn: {DNN}
    snssai: "1-00000A"
  - supi: {supi(2)}
    pool: 10.45.1.0/24
    dnn: ims
    pdu_session_id: 2
  - supi: {supi(3)}
    pool: 10.45.0.0/16
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "ids.yaml"
    p.write_text(text)
    return p


def test_exact_addresses_beat_pools_and_longer_pools_beat_shorter(tmp_path: Path) -> None:
    ids = identity.load(write(tmp_path, GOOD))
    assert len(ids) == 3
    assert ids.lookup(ue_ipv4(1)) == identity.Identity(supi(1), DNN, "1-00000a")
    assert ids.lookup("10.45.1.77").supi == supi(2)
    assert ids.lookup("10.45.7.7").supi == supi(3)
    assert ids.lookup("10.46.0.1") is None and ids.lookup("not-an-ip") is None and ids.lookup(None) is None


@pytest.mark.parametrize("text, words", [
    ("subscribers: [", "not valid YAML"),
    ("42", "expected a list"),
    ("- supi: imsi-1\n  ip: 10.0.0.1", "supi must look like"),
    (f"- supi: {supi(1)}", "exactly one of ip or pool"),
    (f"- supi: {supi(1)}\n  ip: 10.0.0.1\n  pool: 10.0.0.0/8", "exactly one of ip or pool"),
    (f"- supi: {supi(1)}\n  ip: 10.0.0.300", "does not appear to be"),
    (f"- supi: {supi(1)}\n  ip: 10.0.0.1\n  snssai: 1-xyz", "snssai must be"),
    (f"- supi: {supi(1)}\n  ip: 10.0.0.1\n  colour: red", "unknown key"),
    (f"- supi: {supi(1)}\n  ip: 10.0.0.1\n- supi: {supi(2)}\n  ip: 10.0.0.1", "listed twice"),
    (f"- supi: {supi(1)}\n  ip: 10.0.0.1\n  pdu_session_id: 999", "pdu_session_id"),
])
def test_bad_files_give_one_clear_line(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(identity.IdentityError) as err:
        identity.load(write(tmp_path, text))
    msg = str(err.value)
    assert words in msg and "\n" not in msg and str(tmp_path) in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(identity.IdentityError, match="No such file"):
        ControlPlane("t", print, collections.Counter(), tmp_path / "nope.yaml")


def test_file_fills_what_the_tap_cannot_see(tmp_path: Path) -> None:
    cp = ControlPlane("t", print, collections.Counter(), write(tmp_path, GOOD))
    assert cp.ue_for_ip(ue_ipv4(1)) == {"ip": ue_ipv4(1), "supi": supi(1), "dnn": DNN, "snssai": "1-00000a"}
    assert cp.ue_for_teid(5, "192.0.2.2") is None
    assert cp.ue_for_teid(5, "192.0.2.2", ue_ip="10.45.1.9")["supi"] == supi(2)


def test_pfcp_session_gets_identity_from_the_file(tmp_path: Path) -> None:
    events: list[dict] = []
    cp = ControlPlane("t", events.append, collections.Counter(), write(tmp_path, GOOD))
    teid = b"\x01\x00\x00\x00\x05" + bytes([198, 51, 100, 2])
    cp.on_pfcp(1, SMF, 8805, UPF, 8805, est_request(1, 1, bytes([10, 45, 1, 20]), teid))
    cp.on_pfcp(2, UPF, 8805, SMF, 8805, est_response(1, 1, 2))
    (up,) = events
    assert up["ue"]["supi"] == supi(2) and up["ue"]["pdu_session_id"] == 2
    assert up["ue"]["dnn"] == "ims"              # the file's DNN beats PFCP's network instance
    assert cp.ue_for_teid(5, "198.51.100.2")["supi"] == supi(2)


def test_live_learning_wins_and_the_disagreement_is_logged(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    # the OAI capture's UE is imsi-208950000000031 at 12.1.1.136 (DNN oai); the file says otherwise
    text = f"- supi: {supi(1)}\n  ip: 12.1.1.136\n  dnn: oai\n"
    stats: collections.Counter[str] = collections.Counter()
    events: list[dict] = []
    cp = ControlPlane("t", events.append, stats, write(tmp_path, text))
    with caplog.at_level(logging.WARNING, logger="upf_tap.identity"):
        feed(cp, "oai-5greplay.pcap")
        first = cp.ue_for_ip("12.1.1.136")
        cp.ue_for_ip("12.1.1.136")
    assert first["supi"] == "imsi-208950000000031" and first["dnn"] == "oai"
    assert stats["identity.conflict"] >= 2
    warnings = [r for r in caplog.records if r.name == "upf_tap.identity"]
    assert len(warnings) == 1                    # logged once per disagreement, counted every time
    assert supi(1) in warnings[0].getMessage() and "imsi-208950000000031" in warnings[0].getMessage()
