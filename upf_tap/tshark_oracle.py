"""tshark as an independent oracle: what application events does Wireshark see inside GTP-U?"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

TSHARK = shutil.which("tshark")
AGG = "\x1f"  # occurrence separator that never appears in a host name or URI

# tshark's own prefs that make it see what a tap should: out-of-order TCP reassembly and
# null-ciphered NAS (lab cores use NEA0).
BASE_OPTS = ["-o", "tcp.reassemble_out_of_order:TRUE", "-o", "nas-5gs.null_decipher:TRUE"]


def tshark_fields(path: Path, display_filter: str, fields: list[str], extra: list[str] | None = None
                  ) -> list[list[list[str]]]:
    """Rows (one per frame) of per-field occurrence lists."""
    assert TSHARK, "tshark is not installed"
    cmd = [TSHARK, "-n", "-r", str(path), *BASE_OPTS, *(extra or []), "-Y", display_filter, "-T", "fields",
           "-E", "occurrence=a", "-E", f"aggregator={AGG}", "-E", "separator=\t"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    rows = []
    for line in out.splitlines():
        cols = line.split("\t")
        rows.append([c.split(AGG) if c else [] for c in cols])
    return rows


def oracle_events(path: Path, gtpu_ports: tuple[int, ...] = ()) -> Counter[tuple]:
    """Multiset of (kind, key fields) for HTTP requests, DNS queries and TLS SNIs inside GTP-U."""
    extra: list[str] = []
    for port in gtpu_ports:
        extra += ["-d", f"udp.port=={port},gtp"]
    found: Counter[tuple] = Counter()
    for methods, hosts, uris in tshark_fields(
            path, "gtp && http.request", ["http.request.method", "http.host", "http.request.uri"], extra):
        for i, m in enumerate(methods):
            found[("http.request", m, hosts[i] if i < len(hosts) else "", uris[i] if i < len(uris) else "")] += 1
    for names, types in tshark_fields(
            path, "gtp && dns.flags.response == 0", ["dns.qry.name", "dns.qry.type"], extra):
        for name, qtype in zip(names, types, strict=False):
            found[("dns.query", "" if name == "<Root>" else name, int(qtype))] += 1
    for (snis,) in tshark_fields(path, "gtp && tls.handshake.type == 1",
                                 ["tls.handshake.extensions_server_name"], extra):
        for sni in snis:
            found[("sni", sni)] += 1
    return found


def tap_keys(events: list[dict]) -> Counter[tuple]:
    """The same multiset from the tap's AppEvents (TLS and QUIC SNIs together, as tshark shows them)."""
    found: Counter[tuple] = Counter()
    for ev in events:
        if ev.get("point") != "n3":
            continue
        k, a = ev["kind"], ev.get("app", {})
        if k == "http.request":
            found[(k, a["method"], a["host"], a["path"])] += 1
        elif k == "dns.query":
            found[(k, a["qname"], a["qtype"])] += 1
        elif k in ("tls.client_hello", "quic.initial"):
            found[("sni", a["sni"])] += 1
    return found
