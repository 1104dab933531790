"""What tshark sees inside GTP-U, what the tap reports, and how well the two agree.

The events compared are the tap's reason to exist: HTTP requests (method, Host, URI), DNS
queries (each question's name and type), and TLS and QUIC ClientHello SNIs (tshark shows
both as ``tls.handshake.extensions_server_name``). Each side is a multiset of such keys;
:func:`score` counts the matches per kind (recall = matched / tshark's, precision =
matched / the tap's).

Used by ``testbed corpus score``, the corpus test and bench/bench_tap.py.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from testbed.corpus.tshark import TAP_OPTS, TSHARK, fields

Key = tuple[Any, ...]
KINDS = ("http.request", "dns.query", "sni")

# One tshark pass for all three kinds. DNS questions are assigned to their message with
# dns.count.queries, so a TCP segment holding a response and a query counts only the query;
# a "DNS query" is a standard one (opcode QUERY), as the tap reports: a NOTIFY's or an
# UPDATE's zone section is not a name asked for.
# HTTP requests by http.request.method: tshark leaves its http.request flag off for GENA's
# NOTIFY/SUBSCRIBE/UNSUBSCRIBE, which are requests all the same. (Frames tshark marks as
# retransmissions stay in: it so marks the late segment of an out-of-order pair too, the one
# whose arrival completes a request.)
ORACLE_FILTER = "gtp && (http.request.method || dns.flags.response == 0 || tls.handshake.type == 1)"
ORACLE_FIELDS = ["http.request.method", "http.host", "http.request.uri", "dns.flags.response", "dns.flags.opcode",
                 "dns.count.queries", "dns.qry.name", "dns.qry.type", "tls.handshake.type",
                 "tls.handshake.extensions_server_name", "tcp.srcport", "udp.srcport"]


def oracle_signature() -> str:
    """What a cached oracle must have been made with: this tshark, this filter and these fields."""
    return f"{tshark_version()} | {ORACLE_FILTER} | {','.join(ORACLE_FIELDS)}"


@lru_cache(maxsize=1)
def tshark_version() -> str:
    """tshark's first version line ("TShark (Wireshark) 4.0.17 ..."), part of every cached oracle."""
    if TSHARK is None:
        return ""
    out = subprocess.run([TSHARK, "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else ""


def oracle_rows(rows: Iterable[Mapping[str, list[str]]]) -> Counter[Key]:
    """The keys of tshark's rows (see ORACLE_FIELDS)."""
    found: Counter[Key] = Counter()
    for r in rows:
        methods, hosts, uris = r["http.request.method"], r["http.host"], r["http.request.uri"]
        if methods and r["tcp.srcport"]:  # HTTP over TCP (SSDP's HTTP over UDP is not a request to a server)
            for i, m in enumerate(methods):
                found[("http.request", m, hosts[i] if i < len(hosts) else "", uris[i] if i < len(uris) else "")] += 1
        names, types = r["dns.qry.name"], r["dns.qry.type"]
        q = 0
        for resp, opcode, count in zip(r["dns.flags.response"], r["dns.flags.opcode"], r["dns.count.queries"],
                                       strict=False):
            n = int(count)
            if resp in ("0", "False") and opcode == "0":  # a standard query (not NOTIFY, UPDATE...)
                for name, qtype in zip(names[q:q + n], types[q:q + n], strict=False):
                    found[("dns.query", "" if name == "<Root>" else name, int(qtype))] += 1
            q += n
        if "1" in r["tls.handshake.type"]:
            for sni in r["tls.handshake.extensions_server_name"]:
                found[("sni", sni)] += 1
    return found


def oracle_events(path: Path | str, gtpu_ports: tuple[int, ...] = ()) -> Counter[Key]:
    """tshark's multiset of keys for one capture (GTP-U on 2152, and on ``gtpu_ports``)."""
    if TSHARK is None:
        raise RuntimeError("tshark is not installed (make sysdeps)")
    extra: list[str] = []
    for port in gtpu_ports:
        extra += ["-d", f"udp.port=={port},gtp"]
    return oracle_rows(fields(path, ORACLE_FIELDS, ORACLE_FILTER, [*TAP_OPTS, *extra], timeout=600))


def tap_keys(events: Iterable[Mapping[str, Any]]) -> Counter[Key]:
    """The same multiset from the tap's AppEvents (TLS and QUIC SNIs together, as tshark shows them)."""
    found: Counter[Key] = Counter()
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


def tap_events(path: Path | str) -> list[dict[str, Any]]:
    """The tap's events for one capture, in this process (what ``upf-tap read --no-control`` prints)."""
    from upf_tap.capture.pcapfile import read_batches
    from upf_tap.pipeline import Tap, TapConfig

    out: list[dict[str, Any]] = []
    tap = Tap(TapConfig(control_plane=False), out.append)
    tap.consume_batches(read_batches(path, tap.stats, runs=True))
    tap.finish()
    return out


class Score:
    """Matches per kind over any number of captures, and the differences of each."""

    def __init__(self) -> None:
        self.oracle: Counter[str] = Counter()
        self.tap: Counter[str] = Counter()
        self.matched: Counter[str] = Counter()
        self.differences: dict[str, tuple[Counter[Key], Counter[Key]]] = {}  # name -> (missed, extra)

    def add(self, name: str, expected: Counter[Key], got: Counter[Key]) -> None:
        both = expected & got
        for counter, keys in ((self.oracle, expected), (self.tap, got), (self.matched, both)):
            for key, n in keys.items():
                counter[key[0]] += n
        missed, extra = expected - got, got - expected
        if missed or extra:
            self.differences[name] = (missed, extra)

    def recall(self, kind: str | None = None) -> float:
        o = self.oracle[kind] if kind else sum(self.oracle.values())
        m = self.matched[kind] if kind else sum(self.matched.values())
        return m / o if o else 1.0

    def precision(self, kind: str | None = None) -> float:
        t = self.tap[kind] if kind else sum(self.tap.values())
        m = self.matched[kind] if kind else sum(self.matched.values())
        return m / t if t else 1.0

    def table(self) -> str:
        lines = [f"{'kind':<13} {'tshark':>7} {'tap':>7} {'matched':>7} {'recall':>7} {'precision':>9}"]
        for kind in (*KINDS, None):
            lines.append(f"{kind or 'all':<13} {self.oracle[kind] if kind else sum(self.oracle.values()):>7} "
                         f"{self.tap[kind] if kind else sum(self.tap.values()):>7} "
                         f"{self.matched[kind] if kind else sum(self.matched.values()):>7} "
                         f"{self.recall(kind):>7.4f} {self.precision(kind):>9.4f}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {kind or "all": {"tshark": self.oracle[kind] if kind else sum(self.oracle.values()),
                                "tap": self.tap[kind] if kind else sum(self.tap.values()),
                                "matched": self.matched[kind] if kind else sum(self.matched.values()),
                                "recall": round(self.recall(kind), 5), "precision": round(self.precision(kind), 5)}
                for kind in (*KINDS, None)}


def keys_to_json(keys: Counter[Key]) -> list[list[Any]]:
    return [[*k, n] for k, n in sorted(keys.items(), key=repr)]


def keys_from_json(rows: Iterable[list[Any]]) -> Counter[Key]:
    return Counter({tuple(r[:-1]): r[-1] for r in rows})
