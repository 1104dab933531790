"""Static subscriber identities (YAML), for labs where the tap cannot see N2.

File format (a list under ``subscribers:``, or a bare list)::

    subscribers:
      - supi: imsi-999700000000001
        ip: 10.45.0.2              # one UE address ...
        dnn: internet
        snssai: "1-000001"         # "sst" or "sst-sd" (sd: 6 hex digits)
      - supi: imsi-999700000000002
        pool: 10.46.0.0/24         # ... or a pool: every address in it is this subscriber
        dnn: ims
        pdu_session_id: 2          # optional

Exact addresses win over pools, longer pools over shorter ones. Live learning from
the control plane wins over this file; the correlator logs and counts disagreements.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any

SUPI_RE = re.compile(r"^(imsi-[0-9]{5,15}|nai-.+)$")
SNSSAI_RE = re.compile(r"^[0-9]{1,3}(-[0-9a-fA-F]{6})?$")
FIELDS = ("supi", "dnn", "snssai", "pdu_session_id")


class IdentityError(ValueError):
    """A bad identity file: the message names the file, the entry and the problem."""


@dataclass(frozen=True, slots=True)
class Identity:
    supi: str
    dnn: str | None = None
    snssai: str | None = None
    pdu_session_id: int | None = None

    def fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in FIELDS if getattr(self, k) is not None}


class IdentityFile:
    def __init__(self, exact: dict[str, Identity],
                 pools: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Identity]]) -> None:
        self.exact = exact
        self.pools = sorted(pools, key=lambda p: p[0].prefixlen, reverse=True)

    def __len__(self) -> int:
        return len(self.exact) + len(self.pools)

    def lookup(self, ip: str | None) -> Identity | None:
        if not ip:
            return None
        hit = self.exact.get(ip)
        if hit is not None or not self.pools:
            return hit
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        for net, ident in self.pools:
            if addr.version == net.version and addr in net:
                return ident
        return None


def _entry(path: str, n: int, raw: Any) -> tuple[str | None, str | None, Identity]:
    where = f"{path}: subscriber #{n}"
    if not isinstance(raw, dict):
        raise IdentityError(f"{where}: expected a mapping, got {type(raw).__name__}")
    unknown = set(raw) - {"supi", "ip", "pool", "dnn", "snssai", "pdu_session_id"}
    if unknown:
        raise IdentityError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    supi = raw.get("supi")
    if not isinstance(supi, str) or not SUPI_RE.match(supi):
        raise IdentityError(f"{where}: supi must look like imsi-<digits> or nai-<text>, got {supi!r}")
    ip, pool = raw.get("ip"), raw.get("pool")
    if (ip is None) == (pool is None):
        raise IdentityError(f"{where}: give exactly one of ip or pool")
    try:
        if ip is not None:
            ip = str(ipaddress.ip_address(str(ip)))
        else:
            pool = str(ipaddress.ip_network(str(pool), strict=False))
    except ValueError as exc:
        raise IdentityError(f"{where}: {exc}") from None
    dnn = raw.get("dnn")
    if dnn is not None and (not isinstance(dnn, str) or not dnn):
        raise IdentityError(f"{where}: dnn must be a non-empty string")
    snssai = raw.get("snssai")
    if snssai is not None:
        snssai = str(snssai)
        if not SNSSAI_RE.match(snssai):
            raise IdentityError(f"{where}: snssai must be 'sst' or 'sst-sd' (sd 6 hex digits), got {snssai!r}")
        sst, _, sd = snssai.partition("-")
        snssai = f"{int(sst)}-{sd.lower()}" if sd else str(int(sst))
    psi = raw.get("pdu_session_id")
    if psi is not None and (not isinstance(psi, int) or isinstance(psi, bool) or not 0 <= psi <= 255):
        raise IdentityError(f"{where}: pdu_session_id must be an integer 0..255")
    return ip, pool, Identity(supi=supi, dnn=dnn, snssai=snssai, pdu_session_id=psi)


def load(path: str | os.PathLike[str]) -> IdentityFile:
    """Read and check an identity file; IdentityError (one line) on any problem."""
    import yaml  # only taps given an identity file pay for it

    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except OSError as exc:
        raise IdentityError(f"{name}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise IdentityError(f"{name}: not valid YAML{at}") from None
    if isinstance(doc, dict):
        doc = doc.get("subscribers")
    if not isinstance(doc, list):
        raise IdentityError(f"{name}: expected a list of subscribers (or a 'subscribers:' list)")
    exact: dict[str, Identity] = {}
    pools: list[tuple[Any, Identity]] = []
    for n, raw in enumerate(doc, start=1):
        ip, pool, ident = _entry(name, n, raw)
        if ip is not None:
            if ip in exact:
                raise IdentityError(f"{name}: subscriber #{n}: address {ip} listed twice")
            exact[ip] = ident
        elif pool is not None:      # _entry gives exactly one of the two
            pools.append((ipaddress.ip_network(pool), ident))
    return IdentityFile(exact, pools)
