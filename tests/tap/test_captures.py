"""The tap on the real and generated captures in ../shared/captures, against tshark and ground truth."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import CAPTURES
from tests.support.oracle import TSHARK, oracle_events, tap_keys
from tests.tap.conftest import read_events, run_read

ALL_CAPTURES = sorted(p.name for p in CAPTURES.iterdir() if p.suffix in (".pcap", ".pcapng"))

needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark not installed (make sysdeps)")


@needs_tshark
@pytest.mark.parametrize("name", ALL_CAPTURES)
def test_events_match_tshark(name: str) -> None:
    """HTTP requests, DNS queries and TLS/QUIC SNIs inside GTP-U are exactly tshark's."""
    path = CAPTURES / name
    expected = oracle_events(path)
    got = tap_keys(read_events(path))
    assert got == expected, f"{name}: missing {expected - got}, extra {got - expected}"


@pytest.mark.parametrize("name", ALL_CAPTURES)
def test_events_follow_the_schema(name: str, app_event_schema: dict) -> None:
    validator = jsonschema.Draft202012Validator(app_event_schema)
    for ev in read_events(CAPTURES / name, "--flows"):
        errors = sorted(validator.iter_errors(ev), key=str)
        assert not errors, f"{ev}: {errors[0].message}"


def _truth_key(d: dict) -> tuple:
    fields = {k: v for k, v in d.items() if k not in ("kind", "ue_ip", "teid")}
    return (d["kind"], d["ue_ip"], d["teid"], tuple(sorted(fields.items())))


TRUTH_FIELDS = {"http.request": ("method", "host", "path"), "dns.query": ("qname", "qtype"),
                "tls.client_hello": ("sni",), "mqtt.publish": ("topic",)}


def test_synthetic_uplink_equals_truth() -> None:
    truth = [json.loads(line) for line in (CAPTURES / "synthetic-n3.truth.jsonl").read_text().splitlines()]
    expected = Counter(_truth_key(t) for t in truth)
    got: Counter[tuple] = Counter()
    for ev in read_events(CAPTURES / "synthetic-n3.pcap"):
        if ev.get("direction") != "ul" or ev["kind"] not in TRUTH_FIELDS:
            continue
        d = {"kind": ev["kind"], "ue_ip": ev["ue"]["ip"], "teid": ev["ue"]["teid"]}
        d.update({f: ev["app"][f] for f in TRUTH_FIELDS[ev["kind"]]})
        got[_truth_key(d)] += 1
    for kind in TRUTH_FIELDS:
        e = Counter({k: n for k, n in expected.items() if k[0] == kind})
        g = Counter({k: n for k, n in got.items() if k[0] == kind})
        assert g == e, f"{kind}: missing {e - g}, extra {g - e}"


def test_ids_are_stable_and_unique() -> None:
    path = CAPTURES / "synthetic-n3.pcap"
    first = read_events(path)
    second = read_events(path)
    assert [e["id"] for e in first] == [e["id"] for e in second]
    assert len({e["id"] for e in first}) == len(first)


def test_events_in_capture_order() -> None:
    times = [e["time"] for e in read_events(CAPTURES / "synthetic-n3.pcap")]
    assert times == sorted(times)


def test_uplink_events_carry_tunnel_and_qfi() -> None:
    evs = [e for e in read_events(CAPTURES / "synthetic-n3.pcap") if e["kind"] == "http.request"]
    assert evs
    for e in evs:
        assert e["tunnel"]["teid"] == e["ue"]["teid"]
        assert 1 <= e["ue"]["qfi"] <= 63
        assert e["direction"] == "ul" and e["flow"]["src"] == e["ue"]["ip"]


def test_fragmented_outer_packets_are_reassembled() -> None:
    res = run_read(CAPTURES / "gtp-http-fragmented.pcap", "--stats")
    assert "ip.outer_frag.reassembled" in res.stderr
    kinds = [json.loads(line)["kind"] for line in res.stdout.splitlines()]
    assert "http.request" in kinds


def test_malformed_gtp_payloads_are_counted_not_fatal() -> None:
    res = run_read(CAPTURES / "gtp-short-payload.pcap", "--stats")
    assert res.returncode == 0
    counters = dict(line.split() for line in res.stderr.splitlines()[1:])
    drops = {k: int(v) for k, v in counters.items() if k.startswith(("gtpu.", "inner."))}
    assert sum(drops.values()) > 0, res.stderr


def test_unreadable_file_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not a capture\n")
    res = run_read(bad, check=False)
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "notes.txt" in lines[0]
    res = run_read(tmp_path / "missing.pcap", check=False)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
