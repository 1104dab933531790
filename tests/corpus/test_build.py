"""`testbed corpus build` and `score` on a git repository made here: a folder of captures (one
gzipped), a text file, a ``.pcap`` that is not a capture and a duplicate, read from a bare
clone laid out as a snapshot (ROOT/owner+name/repo). tshark is the oracle the corpus caches.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

from testbed.corpus.build import MERGE_GAP_NS
from testbed.corpus.oracle import oracle_signature
from testbed.corpus.tshark import TSHARK
from upf_tap.capture.pcapfile import read_packets

from .corpuslib import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    T0_NS,
    one_line_error,
    run_testbed,
    walk_n3,
    write_pcap,
)

pytestmark = pytest.mark.skipif(TSHARK is None or shutil.which("git") is None,
                                reason="needs tshark (make sysdeps) and git")

REPO, FOLDER = "owner/name", "caps"
UE, SERVER, UE6, SERVER6 = "192.0.2.20", "198.51.100.53", "2001:db8:1::20", "2001:db8:2::53"
ETHER = Ether(src="02:00:00:00:00:14", dst="02:00:00:00:00:35")  # (scapy would look a MAC up by ARP)
HTTP_REQ = b"GET /index.html HTTP/1.1\r\nHost: b.example\r\nAccept: */*\r\n\r\n"


def dns_exchange(name: str = "build.example", qid: int = 7) -> list[Packet]:
    q = DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype="A"))
    r = DNS(id=qid, qr=1, rd=1, ra=1, qd=DNSQR(qname=name, qtype="A"),
            an=DNSRR(rrname=name, type="A", rdata="203.0.113.9", ttl=30))
    return [IP(src=UE, dst=SERVER) / UDP(sport=50000 + qid, dport=53) / q,
            IP(src=SERVER, dst=UE) / UDP(sport=53, dport=50000 + qid) / r]


def http_exchange() -> list[Packet]:
    def up(flags: str, seq: int, ack: int, data: bytes = b"") -> Packet:
        return IP(src=UE, dst=SERVER) / TCP(sport=41000, dport=80, flags=flags, seq=seq, ack=ack) / Raw(data)

    def down(flags: str, seq: int, ack: int, data: bytes = b"") -> Packet:
        return IP(src=SERVER, dst=UE) / TCP(sport=80, dport=41000, flags=flags, seq=seq, ack=ack) / Raw(data)

    resp = b"HTTP/1.1 204 No Content\r\n\r\n"
    return [up("S", 100, 0), down("SA", 500, 101), up("A", 101, 501), up("PA", 101, 501, HTTP_REQ),
            down("PA", 501, 101 + len(HTTP_REQ), resp), up("A", 101 + len(HTTP_REQ), 501 + len(resp))]


def dns6_query() -> list[Packet]:
    return [IPv6(src=UE6, dst=SERVER6) / UDP(sport=50001, dport=53) / DNS(id=8, rd=1, qd=DNSQR(qname="gz.example",
                                                                                               qtype="AAAA"))]


# each capture of the folder, in git's order: its name in the corpus, its IP packets, and what
# tshark must find in its N3 version. a.trace's name would be a.pcap's: it gets its SHA-256's
# first digits; a path with a space and non-ASCII letters is read as it is.
CAPTURES: dict[str, tuple[str, list[Packet], list[list[Any]]]] = {
    f"{FOLDER}/a.pcap": ("name__caps__a", dns_exchange(), [["dns.query", "build.example", 1, 1]]),
    f"{FOLDER}/a.trace": ("name__caps__a__{sha}", dns_exchange("trace.example", 9),
                          [["dns.query", "trace.example", 1, 1]]),
    f"{FOLDER}/b.pcap": ("name__caps__b", http_exchange(), [["http.request", "GET", "b.example", "/index.html", 1]]),
    f"{FOLDER}/c.pcap.gz": ("name__caps__c", dns6_query(), [["dns.query", "gz.example", 28, 1]]),
    f"{FOLDER}/ünï code.pcap": ("name__caps__ünï_code", dns_exchange("xn--n-eka.example", 11),
                                [["dns.query", "xn--n-eka.example", 1, 1]]),
}


def names(src: Path) -> list[str]:
    out = []
    for path, (name, _packets, _keys) in CAPTURES.items():
        out.append(name.format(sha=hashlib.sha256((src / path).read_bytes()).hexdigest()[:12]))
    return out


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=corpus test", "-c", "user.email=corpus@example.org",
                           "-c", "init.defaultBranch=main", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout


def make_snapshot(tmp: Path) -> dict[str, Any]:
    """The source repository, committed, and its bare clone under ROOT as a snapshot is laid out."""
    src = tmp / "src"
    (src / FOLDER / "sub").mkdir(parents=True)
    (src / "other").mkdir()
    for path, (_name, packets, _keys) in CAPTURES.items():
        if path.endswith(".gz"):  # raw IP, gzipped, 100 s before the others
            plain = tmp / "plain.pcap"
            write_pcap(plain, [bytes(p) for p in packets], LINKTYPE_RAW, t0_ns=T0_NS - 100 * 10**9)
            (src / path).write_bytes(gzip.compress(plain.read_bytes(), mtime=0))
        elif path.endswith("b.pcap"):  # microseconds, 5 s after a, a quarter of a second apart
            write_pcap(src / path, [bytes(ETHER / p) for p in packets], LINKTYPE_ETHERNET, nano=False,
                       t0_ns=T0_NS + 5 * 10**9, step_ns=250_000_000)
        else:
            write_pcap(src / path, [bytes(ETHER / p) for p in packets], LINKTYPE_ETHERNET)
    (src / FOLDER / "notes.txt").write_text("where these captures come from\n")
    (src / FOLDER / "broken.pcap").write_text("not a capture, whatever its name says\n")
    shutil.copy(src / FOLDER / "a.pcap", src / FOLDER / "sub" / "dup.pcap")
    shutil.copy(src / FOLDER / "b.pcap", src / "other" / "outside.pcap")
    git(src, "init", "-q")
    git(src, "add", ".")
    git(src, "commit", "-q", "-m", "captures")
    root = tmp / "root"
    (root / "owner+name").mkdir(parents=True)
    git(tmp, "clone", "-q", "--bare", str(src), str(root / "owner+name" / "repo"))
    return {"src": src, "root": root, "commit": git(src, "rev-parse", "HEAD").strip()}


def build(root: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_testbed("corpus", "build", "--root", root, "--source", f"{REPO}:{FOLDER}", "--out", out, *extra)


def mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "oracle").iterdir())}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("corpus")
    snap = make_snapshot(tmp)
    out = tmp / "out"
    res = build(snap["root"], out)
    assert res.returncode == 0, res.stderr
    return {**snap, "tmp": tmp, "out": out, "res": res, "manifest": json.loads((out / "manifest.json").read_text())}


def copy_of(corpus: dict[str, Any], tmp_path: Path) -> Path:
    """A copy of the built corpus (file times kept) for a test that changes it."""
    dest = tmp_path / "corpus"
    shutil.copytree(corpus["out"], dest)
    return dest


def test_manifest(corpus: dict[str, Any]) -> None:
    m, src, commit = corpus["manifest"], corpus["src"], corpus["commit"]
    assert m["sources"] == [{"repo": REPO, "folder": FOLDER, "commit": commit, "captures": len(CAPTURES) + 2}]
    assert [c["name"] for c in m["captures"]] == names(src)
    for c, (path, (_name, packets, _keys)) in zip(m["captures"], CAPTURES.items(), strict=True):
        data = (src / path).read_bytes()
        assert (c["repo"], c["commit"], c["path"]) == (REPO, commit, path)
        assert (c["sha256"], c["bytes"]) == (hashlib.sha256(data).hexdigest(), len(data))
        assert (c["frames"], c["packets"], c["ues"], c["dropped"]) == (len(packets), len(packets), 1, {})
    assert m["packets"] == sum(len(p) for _n, p, _k in CAPTURES.values())
    assert sorted((s["path"], s["reason"]) for s in m["skipped"]) == [
        (f"{FOLDER}/broken.pcap", "not a pcap or pcapng file"),
        (f"{FOLDER}/sub/dup.pcap", "same bytes as an earlier capture")]
    assert all((s["repo"], s["commit"]) == (REPO, commit) for s in m["skipped"])
    listed = json.dumps(m)
    assert "notes.txt" not in listed and "outside.pcap" not in listed


def test_n3_captures_carry_the_original_packets(corpus: dict[str, Any]) -> None:
    for name, (_n, packets, _keys) in zip(names(corpus["src"]), CAPTURES.values(), strict=True):
        n3 = corpus["out"] / "n3" / f"{name}.pcap"
        assert [walk_n3(fr)["inner"] for _ts, _lt, fr in read_packets(n3)] == [bytes(p) for p in packets]
    assert sorted(p.name for p in (corpus["out"] / "n3").iterdir()) == sorted(f"{n}.pcap" for n in names(corpus["src"]))


def test_oracle_is_tsharks_view_with_its_signature(corpus: dict[str, Any]) -> None:
    for name, (_n, _packets, keys) in zip(names(corpus["src"]), CAPTURES.values(), strict=True):
        cached = json.loads((corpus["out"] / "oracle" / f"{name}.json").read_text())
        assert cached["oracle"] == oracle_signature()
        assert cached["oracle"].startswith("TShark")
        assert cached["events"] == keys


def test_all_pcap_lays_captures_end_to_end_an_hour_apart(corpus: dict[str, Any]) -> None:
    out = corpus["out"]
    merged = list(read_packets(out / "all.pcap"))
    assert len(merged) == corpus["manifest"]["packets"]
    at = 0
    previous_end = None
    for c in corpus["manifest"]["captures"]:
        own = list(read_packets(out / "n3" / f"{c['name']}.pcap"))
        part, at = merged[at:at + len(own)], at + len(own)
        assert [fr for _ts, _lt, fr in part] == [fr for _ts, _lt, fr in own]
        shift = part[0][0] - own[0][0]
        assert [ts - shift for ts, _lt, _fr in part] == [ts for ts, _lt, _fr in own]  # spacing kept to the ns
        if previous_end is None:
            assert part[0][0] == 0
        else:
            assert part[0][0] - previous_end == MERGE_GAP_NS == 3600 * 10**9
        previous_end = part[-1][0]


def test_score_matches_tshark(corpus: dict[str, Any], tmp_path: Path) -> None:
    report = tmp_path / "score.json"
    res = run_testbed("corpus", "score", corpus["out"], "--json", report, "--min", "0.99")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "tshark on" not in res.stderr  # the cache served
    scores = json.loads(report.read_text())
    assert scores["differences"] == {}
    one = {"recall": 1.0, "precision": 1.0}
    assert scores["scores"] == {"http.request": {"tshark": 1, "tap": 1, "matched": 1, **one},
                                "dns.query": {"tshark": 4, "tap": 4, "matched": 4, **one},
                                "sni": {"tshark": 0, "tap": 0, "matched": 0, **one},
                                "all": {"tshark": 5, "tap": 5, "matched": 5, **one}}


def test_a_second_build_reuses_the_cached_oracle(corpus: dict[str, Any], tmp_path: Path) -> None:
    out = copy_of(corpus, tmp_path)
    before = mtimes(out)
    res = build(corpus["root"], out)
    assert res.returncode == 0, res.stderr
    assert "tshark on" not in res.stderr
    assert mtimes(out) == before
    again = json.loads((out / "manifest.json").read_text())
    assert again["captures"] == corpus["manifest"]["captures"]


def test_score_recomputes_an_oracle_of_another_signature_and_uses_a_current_one(corpus: dict[str, Any],
                                                                                tmp_path: Path) -> None:
    out = copy_of(corpus, tmp_path)
    a, b = out / "oracle" / "name__caps__a.json", out / "oracle" / "name__caps__b.json"
    a.write_text(json.dumps({"oracle": "TShark (Wireshark) 3.6.2 | an older filter | fields", "events": []}))
    # b's cache is current but wrong: score must take it as it is (so the tap seems to miss)
    b.write_text(json.dumps({"oracle": oracle_signature(),
                             "events": [["http.request", "GET", "b.example", "/elsewhere", 1]]}))
    report = tmp_path / "score.json"
    res = run_testbed("corpus", "score", out, "--json", report, "--min", "0.99")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "tshark on 1 captures" in res.stderr
    assert json.loads(a.read_text()) == {"oracle": oracle_signature(), "events": CAPTURES["caps/a.pcap"][2]}
    scores = json.loads(report.read_text())
    assert scores["scores"]["dns.query"]["recall"] == 1.0
    assert scores["scores"]["http.request"]["recall"] == 0.0
    assert scores["differences"] == {"name__caps__b": {
        "missed": [["http.request", "GET", "b.example", "/elsewhere", 1]],
        "extra": [["http.request", "GET", "b.example", "/index.html", 1]]}}


def test_a_missing_snapshot_is_a_warning(corpus: dict[str, Any], tmp_path: Path) -> None:
    out = copy_of(corpus, tmp_path)
    size_b = len((corpus["src"] / FOLDER / "b.pcap").read_bytes())
    res = build(corpus["root"], out, "--source", "nobody/absent:traces", "--max-bytes", str(size_b - 1))
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert "warning: nobody/absent: no snapshot at" in res.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert [c["name"] for c in m["captures"]] == [n for n in names(corpus["src"]) if n != "name__caps__b"]
    reasons = {s.get("path", s["repo"]): s["reason"] for s in m["skipped"]}
    assert reasons["nobody/absent"].startswith("no snapshot at ")
    assert reasons[f"{FOLDER}/b.pcap"] == f"{size_b} bytes > {size_b - 1}"
    assert len(list(read_packets(out / "all.pcap"))) == m["packets"] == 7
    # nothing but missing snapshots: one error line after the warning, no traceback
    res = run_testbed("corpus", "build", "--root", corpus["root"], "--source", "nobody/absent", "--out",
                      tmp_path / "empty")
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "warning: nobody/absent" in res.stderr and res.stderr.strip().splitlines()[-1].startswith(
        "testbed: error: no capture found")


def test_score_without_a_manifest_is_one_line_and_exit_2(tmp_path: Path) -> None:
    assert "no manifest.json" in one_line_error(run_testbed("corpus", "score", tmp_path))
    (tmp_path / "manifest.json").write_text("{not json")
    assert "not JSON" in one_line_error(run_testbed("corpus", "score", tmp_path))


def test_a_source_without_a_folder_is_the_whole_tree(corpus: dict[str, Any], tmp_path: Path) -> None:
    out = copy_of(corpus, tmp_path)
    res = run_testbed("corpus", "build", "--root", corpus["root"], "--source", REPO, "--out", out)
    assert res.returncode == 0, res.stderr
    assert "tshark on" not in res.stderr  # every capture's name, hence its cached oracle, is the same
    m = json.loads((out / "manifest.json").read_text())
    assert m["sources"][0]["folder"] == "" and m["sources"][0]["captures"] == len(CAPTURES) + 3
    assert m["captures"] == corpus["manifest"]["captures"]
    assert {"repo": REPO, "commit": corpus["commit"], "path": "other/outside.pcap",
            "reason": "same bytes as an earlier capture"} in m["skipped"]


def test_score_without_tshark_is_one_line_and_exit_2(corpus: dict[str, Any], tmp_path: Path) -> None:
    """A cached oracle is tied to a tshark version: without tshark no cache holds, and score says so."""
    env = {**os.environ, "PATH": str(tmp_path / "no-such-bin")}
    assert "tshark is not installed" in one_line_error(run_testbed("corpus", "score", corpus["out"], env=env))
    # a cache file that is JSON but not an oracle is taken as missing, not a crash
    out = copy_of(corpus, tmp_path)
    (out / "oracle" / "name__caps__b.json").write_text('["not", "an", "oracle"]')
    res = run_testbed("corpus", "score", out, "--min", "0.99")
    assert res.returncode == 0 and "tshark on 1 captures" in res.stderr, res.stdout + res.stderr


def test_score_into_a_closed_pipe_ends_quietly(corpus: dict[str, Any]) -> None:
    """`testbed corpus score DIR | head -1`: the reader goes away after one line; the command
    ends with status 0 and no traceback (mec_common.cli turns BrokenPipeError into a quiet stop)."""
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "testbed", "corpus", "score", str(corpus["out"])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert first.startswith(b"kind") and "Traceback" not in err and "BrokenPipe" not in err
