"""tshark as an independent oracle: what application events does Wireshark see inside GTP-U?

Test and benchmark support (tests/, bench/bench_tap.py), not part of the tap."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.support.tshark import TAP_OPTS, TSHARK, fields


def tshark_fields(path: Path, display_filter: str, names: list[str], extra: list[str] | None = None
                  ) -> list[list[list[str]]]:
    """Rows (one per frame) of per-field occurrence lists, in the order of ``names``."""
    assert TSHARK, "tshark is not installed"
    rows = fields(path, names, display_filter, [*TAP_OPTS, *(extra or [])])
    return [[r[n] for n in names] for r in rows]


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
