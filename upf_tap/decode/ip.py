"""The IP layer: IPv4/IPv6 headers (:class:`IPLayer`), IPv6 extension headers, fragment
reassembly, address formatting. The tap has two IP layers on N3 (the outer header between
gNB and UPF, the user's inside GTP-U) and one on N6; each is an :class:`IPLayer`.
"""

from __future__ import annotations

import struct
from collections import Counter, OrderedDict
from typing import Any

# IPv6 extension headers the decoder walks over (RFC 8200 §4); 44 (fragment) is handled apart.
IPV6_EXT_HEADERS = frozenset({0, 43, 60, 51, 135, 139, 140})
IPV6_FRAGMENT = 44
IPV6_NO_NEXT = 59
MAX_DATAGRAM = 65535 + 40

_ipv4_hdr = struct.Struct("!BBHHHBBH4s4s").unpack_from

# What IPLayer.decode gives: (protocol, src, dst, data, upper-layer offset, end), raw addresses.
IPPacket = tuple[int, bytes, bytes, bytes, int, int]

# The C half of the socket module: `import socket` would cost ~3 ms at every start for two names.
from _socket import AF_INET as _AF_INET  # noqa: E402
from _socket import AF_INET6 as _AF_INET6  # noqa: E402
from _socket import inet_ntop as _ntop  # noqa: E402


def ip4(raw: bytes) -> str:
    return _ntop(_AF_INET, raw)


def ip6(raw: bytes) -> str:
    return _ntop(_AF_INET6, raw)


_IP_STRS: dict[bytes, str] = {}  # the text of addresses seen lately: a few gNBs, UPFs, UEs, servers
_MAX_IP_STRS = 1 << 16  # then it starts again (a capture of many addresses)


def ip_str(raw: bytes) -> str:
    """The address's text (4 bytes: IPv4, else IPv6), from a cache: each event names its tunnel's
    two ends and each new flow its two addresses, mostly the same few."""
    text = _IP_STRS.get(raw)
    if text is None:
        if len(_IP_STRS) >= _MAX_IP_STRS:
            _IP_STRS.clear()
        text = _IP_STRS[raw] = _ntop(_AF_INET if len(raw) == 4 else _AF_INET6, raw)
    return text


def walk_ipv6_ext(data: bytes, nxt: int, off: int, end: int) -> tuple[int, int, tuple[int, int, int] | None]:
    """Skip IPv6 extension headers from ``off``.

    Returns (upper-layer protocol, its offset, fragment info or None); fragment info is
    (fragment offset in bytes, more-fragments flag, identification). Protocol -1 means the
    chain was truncated or malformed.
    """
    frag = None
    while True:
        if nxt in IPV6_EXT_HEADERS:
            if off + 2 > end:
                return -1, off, frag
            hlen = (data[off + 1] + 2) * 4 if nxt == 51 else (data[off + 1] + 1) * 8
            nxt = data[off]
            off += hlen
        elif nxt == IPV6_FRAGMENT:
            if off + 8 > end:
                return -1, off, frag
            fo = int.from_bytes(data[off + 2 : off + 4], "big")
            ident = int.from_bytes(data[off + 4 : off + 8], "big")
            frag = (fo & 0xFFF8, fo & 1, ident)
            nxt = data[off]
            off += 8
        else:
            return (nxt, off, frag) if off <= end else (-1, off, frag)


class FragmentReassembler:
    """Reassembles IP datagrams from fragments (IPv4 and IPv6), bounded in sets and time.

    Keyed by (src, dst, protocol, identification) as RFC 791/8200 say. Overlapping
    fragments are accepted first-come (later copies of the same bytes are ignored), which
    is also what most stacks do today.
    """

    __slots__ = ("_sets", "max_sets", "name", "stats", "timeout_ns")

    def __init__(self, stats: Counter[str], name: str, max_sets: int, timeout_s: float) -> None:
        # OrderedDict, not dict: taking the oldest set off a dict again and again makes
        # next(iter()) walk the deleted slots (quadratic on a fragment flood); its linked list does not
        self._sets: OrderedDict[Any, list[Any]] = OrderedDict()
        self.stats = stats
        self.name = name
        self.max_sets = max_sets
        self.timeout_ns = int(timeout_s * 1e9)

    def add(self, key: Any, ts_ns: int, offset: int, more: bool, payload: bytes) -> bytes | None:
        """Add one fragment's payload; return the whole upper-layer payload when complete."""
        st = self.stats
        entry = self._sets.get(key)
        if entry is None:
            self._expire(ts_ns)
            if len(self._sets) >= self.max_sets:
                self._sets.popitem(last=False)
                st[f"{self.name}.evicted"] += 1
            entry = [ts_ns, -1, []]  # first seen, total length (-1 unknown), [(offset, bytes)]
            self._sets[key] = entry
        end = offset + len(payload)
        if end > MAX_DATAGRAM:
            st[f"{self.name}.oversize"] += 1
            del self._sets[key]
            return None
        if not more:
            entry[1] = end
        entry[2].append((offset, payload))
        total = entry[1]
        if total < 0:
            return None
        parts = sorted(entry[2], key=lambda p: p[0])
        have = 0
        for off, data in parts:
            if off > have:
                return None  # a hole remains
            have = max(have, off + len(data))
        if have < total:
            return None
        buf = bytearray(total)
        filled = 0
        for off, data in parts:
            if off + len(data) > filled:
                start = max(off, filled)
                buf[start : off + len(data)] = data[start - off :]
                filled = off + len(data)
        del self._sets[key]
        st[f"{self.name}.reassembled"] += 1
        return bytes(buf[:total])

    def _expire(self, now_ns: int) -> None:
        sets = self._sets
        limit = now_ns - self.timeout_ns
        while sets:
            k = next(iter(sets))
            if sets[k][0] >= limit:
                break
            del sets[k]
            self.stats[f"{self.name}.timeout"] += 1

    def __len__(self) -> int:
        return len(self._sets)


class IPLayer:
    """One IP layer of the tap: header checks, Ethernet padding, fragments put together.

    Drops are counted as ``<where>.truncated``, ``<where>.bad_header``, ``<where>.bad_version``
    and ``<where>.bad_ext_header`` ("ip" for N3's outer header, "inner" for the user's).
    """

    __slots__ = ("frags", "stats", "where")

    def __init__(self, stats: Counter[str], where: str, frags: FragmentReassembler) -> None:
        self.stats = stats
        self.where = where
        self.frags = frags

    def decode(self, ts_ns: int, data: bytes, off: int, end: int, version: int) -> IPPacket | None:
        """The IPv4 or IPv6 header at ``data[off:end]`` (extension headers walked).

        Returns (protocol, src, dst, data, upper-layer offset, end) - ``data`` is a new buffer
        when fragments were put together - or None when the packet is dropped (counted) or
        waits for fragments.
        """
        if version == 4:
            if end - off < 20:
                self.stats[f"{self.where}.truncated"] += 1
                return None
            vihl, _tos, tot, ident, frag, _ttl, proto, _csum, src, dst = _ipv4_hdr(data, off)
            ihl = (vihl & 0x0F) * 4
            if vihl >> 4 != 4 or ihl < 20 or tot < ihl:
                self.stats[f"{self.where}.bad_header"] += 1
                return None
            if off + tot < end:
                end = off + tot  # Ethernet padding
            elif off + tot > end:
                self.stats[f"{self.where}.truncated"] += 1  # cut by the snap length: decode what is there
            l4 = off + ihl
            if frag & 0x3FFF:
                whole = self.frags.add((src, dst, proto, ident), ts_ns, (frag & 0x1FFF) * 8, bool(frag & 0x2000),
                                       data[l4:end])
                if whole is None:
                    return None
                data, l4, end = whole, 0, len(whole)
            return proto, src, dst, data, l4, end
        if version == 6:
            if end - off < 40:
                self.stats[f"{self.where}.truncated"] += 1
                return None
            plen = int.from_bytes(data[off + 4 : off + 6], "big")
            if off + 40 + plen < end:
                end = off + 40 + plen
            src = data[off + 8 : off + 24]
            dst = data[off + 24 : off + 40]
            proto, l4, fraginfo = walk_ipv6_ext(data, data[off + 6], off + 40, end)
            if proto < 0:
                self.stats[f"{self.where}.bad_ext_header"] += 1
                return None
            if fraginfo is not None:
                whole = self.frags.add((src, dst, proto, fraginfo[2]), ts_ns, fraginfo[0], bool(fraginfo[1]),
                                       data[l4:end])
                if whole is None:
                    return None
                data, l4, end = whole, 0, len(whole)
            return proto, src, dst, data, l4, end
        self.stats[f"{self.where}.bad_version"] += 1
        return None
