"""bench/bench_tap.py (every workload and tool in one run and one JSON) and the mixed N3 workload
it generates (tests/support/n3_workload.generate_mixed), with tshark as the oracle."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bench import bench_tap
from testbed.corpus.oracle import oracle_events, tap_events, tap_keys
from testbed.corpus.tshark import fields
from tests.support.n3_workload import generate_mixed
from tests.support.oracle import TSHARK
from upf_tap.capture.pcapfile import read_packets

pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (the oracle)")
PEERS = ("tshark", "ndpiReader", "nfstream")


def test_one_run_gives_every_workload_and_tool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tap.json"
    rc = bench_tap.main(["--packets", "3000", "--rounds", "1", "--workloads", "bulk,mixed", "--tap-workers", "2",
                         "--out", str(tmp_path), "--json", str(out)])
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert rc == 0 and res["ok"], printed[-3000:]
    assert res["rounds"] == 1 and res["format"] == "pcap"
    assert {"upf-tap", "upf-tap py", "upf-tap x2", *PEERS} == set(res["tools"])
    assert res["tools"]["upf-tap"]["skipped"] is None and res["tools"]["tshark"]["skipped"] is None
    assert set(res["workloads"]) == {"bulk", "mixed"}
    for name, w in res["workloads"].items():
        assert w["skipped"] is None and w["packets"] >= 3000 and not w["failed"]
        for tool, info in res["tools"].items():
            if info["skipped"]:                       # not installed (or no --workers yet): said why, not run
                assert isinstance(info["skipped"], str) and tool not in w["tools"]
                assert f"{tool:<13} skipped: {info['skipped']}" in printed
            else:
                t = w["tools"][tool]
                assert t["pps_best"] > 0 and t["pps_median"] > 0 and t["peak_rss_kib"] > 0
        assert set(w["ratios"]) == {p for p in PEERS if p in w["tools"]}
        assert all(r["best"] > 0 for r in w["ratios"].values())
        ev = w["events"]
        assert ev["equal"] and ev["tap"] == ev["tshark"] == w["app_events"] > 0, name
        assert ev["score"]["all"]["recall"] == ev["score"]["all"]["precision"] == 1.0
        if res["tools"]["upf-tap py"]["skipped"] is None:  # the Python walk: the same output, byte for byte
            assert w["python_walk_identical"] is True
        if res["tools"]["upf-tap x2"]["skipped"] is None:
            assert w["workers_identical"] == {"upf-tap x2": True}
            assert "upf-tap x2: events identical to single-process: True" in printed
    assert res["workloads"]["mixed"]["app_events"] > 10 * res["workloads"]["bulk"]["app_events"]
    # the markdown table: a row per workload, a column per tool that ran
    ran = [t for t, info in res["tools"].items() if info["skipped"] is None]
    assert "| workload | packets | app events | " + " | ".join(ran) + " |" in printed
    assert "\n| bulk | 3,002 |" in printed and "\n| mixed | 3,000 |" in printed


def test_missing_tools_and_corpus_are_skipped_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(bench_tap, "NDPI", None)
    monkeypatch.setattr(bench_tap, "HAS_NFSTREAM", False)
    monkeypatch.delenv("MEC_CORPUS", raising=False)
    out = tmp_path / "tap.json"
    rc = bench_tap.main(["--packets", "2000", "--rounds", "1", "--workloads", "bulk,real",
                         "--out", str(tmp_path), "--json", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0
    assert "libndpi-bin" in res["tools"]["ndpiReader"]["skipped"] and res["tools"]["nfstream"]["skipped"]
    taps = ["upf-tap", "upf-tap py"] if res["tools"]["upf-tap py"]["skipped"] is None else ["upf-tap"]
    assert set(res["workloads"]["bulk"]["tools"]) == {*taps, "tshark"}
    assert "MEC_CORPUS" in res["workloads"]["real"]["skipped"]
    printed = capsys.readouterr().out
    assert f"| workload | packets | app events | {' | '.join(taps)} | tshark |" in printed and "\n| real | – |" in printed
    # a corpus directory without all.pcap: skipped too, never an error
    rc = bench_tap.main(["--packets", "2000", "--rounds", "1", "--workloads", "real", "--corpus", str(tmp_path),
                         "--json", str(out), "--out", str(tmp_path)])
    assert rc == 0 and "all.pcap not found" in json.loads(out.read_text())["workloads"]["real"]["skipped"]


def test_mixed_workload_tap_equals_tshark_and_has_a_upfs_mix(tmp_path: Path) -> None:
    cap = tmp_path / "mixed.pcap"
    counts = generate_mixed(cap, 30_000, 200, 1)
    assert counts["packets"] == 30_000
    expected = oracle_events(cap)
    events = tap_events(cap)
    assert tap_keys(events) == expected
    # every event the generator wrote, as tshark sees it: HTTP, DNS, and SNIs of TLS and QUIC
    by_kind = Counter(k[0] for k in expected.elements())
    assert by_kind["http.request"] == counts["http.request"] > 200
    assert by_kind["dns.query"] == counts["dns.query"] > 500
    assert by_kind["sni"] == counts["tls.client_hello"] + counts["quic.initial"]
    tap_kinds = Counter(e["kind"] for e in events if e.get("point") == "n3")
    assert tap_kinds["tls.client_hello"] == counts["tls.client_hello"] > 200
    assert tap_kinds["quic.initial"] == counts["quic.initial"] > 100     # the tap opened every client Initial
    quic = fields(cap, ["tls.handshake.extensions_server_name"], "quic && tls.handshake.type == 1")
    assert sum(len(r["tls.handshake.extensions_server_name"]) for r in quic) == counts["quic.initial"]  # and tshark
    assert {1, 28, 65, 12} <= {k[2] for k in expected if k[0] == "dns.query"}
    assert {"GET", "POST"} <= {k[1] for k in expected if k[0] == "http.request"}
    # many short flows (and some bulk): over a thousand flows in 30k packets
    assert counts["flows"] > 1000
    # GTP-U with a PDU Session Container, UL and DL, per-UE TEIDs, IPv4 and IPv6 inside
    rows = fields(cap, ["gtp.teid", "gtp.ext_hdr.pdu_ses_con.pdu_type", "ipv6.version"], "gtp")
    assert len(rows) == 30_000 and len({r["gtp.teid"][0] for r in rows}) > 300
    assert Counter(r["gtp.ext_hdr.pdu_ses_con.pdu_type"][0] for r in rows).keys() == {"0", "1"}
    assert 0.2 < sum(1 for r in rows if r["ipv6.version"]) / len(rows) < 0.5
    # realistic sizes: full segments and ACK-sized packets, about 750-950 bytes on average
    sizes = [len(frame) for _, _, frame in read_packets(cap)]
    assert 650 < sum(sizes) / len(sizes) < 1000 and max(sizes) <= 1514
    assert sum(s > 1300 for s in sizes) > len(sizes) * 0.3 and sum(s < 150 for s in sizes) > len(sizes) * 0.2
