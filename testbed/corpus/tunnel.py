"""Any capture as N3 traffic: every IP packet put into GTP-U between a gNB and a UPF.

    testbed corpus tunnel IN.pcap OUT.pcap

The side that opened a flow is the UE (a TCP SYN's sender; else the first sender, unless
the first packet comes from a well-known port to an ephemeral one, as when a capture starts
mid-flow with a server's reply). Each UE address has its own TEID pair: uplink packets go
gNB -> UPF with the UPF's TEID and an UL PDU SESSION INFORMATION container, downlink
packets UPF -> gNB with the gNB's TEID and a DL one (TS 29.281 §5.2, TS 38.415 §5.5.2), both
with the same QFI. The inner packet is the captured one, byte for byte, from its IP header
to the length that header gives (a link layer's trailer, such as Ethernet's padding, is not
part of it); timestamps are kept. Frames that carry no IP packet (ARP, STP, ...) are counted and
left out, as a UPF never sees them.

The output is a nanosecond pcap with Ethernet frames, which tshark, the tap and any other
tool read alike. ``shift_ns`` moves every timestamp (``testbed corpus merge`` lays captures
end to end with it).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from mec_common.net import internet_checksum
from testbed.sim.gtpu import PDU_TYPE_DL, PDU_TYPE_UL, encode_gpdu
from upf_tap.capture.pcapfile import read_packets
from upf_tap.constants import GTPU_PORT
from upf_tap.decode.link import ip_offset

GNB_IP = bytes((10, 100, 0, 1))
UPF_IP = bytes((10, 100, 0, 2))
GNB_MAC = bytes.fromhex("02000a640001")
UPF_MAC = bytes.fromhex("02000a640002")
DEFAULT_QFI = 9
FIRST_TEID = 0x1000
WELL_KNOWN_MAX = 1023
EPHEMERAL_MIN = 1024
# outer Ethernet + IPv4 + UDP + GTP-U (8 + 4 optional) + container (4)
OUTER_LEN = 14 + 20 + 8 + 12 + 4
MAX_INNER = 65535 - 20 - 8 - 16  # what one outer IPv4 datagram can carry

PCAP_NS_MAGIC = 0xA1B23C4D
LINKTYPE_ETHERNET = 1
SNAPLEN = 262144

_pcap_header = struct.Struct("<IHHiIII")
_record = struct.Struct("<IIII")
_u16 = struct.Struct("!H").unpack_from
_ipv4 = struct.Struct("!BBHHHBBH4s4s")
_udp = struct.Struct("!HHHH")


class Tunneller:
    """The flow bookkeeping that tells uplink from downlink and the TEIDs of each UE."""

    def __init__(self, qfi: int = DEFAULT_QFI) -> None:
        self.qfi = qfi
        self.stats: Counter[str] = Counter()
        self._ue_of_flow: dict[tuple, bytes] = {}   # canonical flow -> the UE's address
        self._ue_of_pair: dict[tuple, bytes] = {}   # canonical address pair -> the UE's address
        self._teids: dict[bytes, tuple[int, int]] = {}  # UE address -> (UL TEID at the UPF, DL TEID at the gNB)
        self._ident = 0

    def teids(self, ue: bytes) -> tuple[int, int]:
        t = self._teids.get(ue)
        if t is None:
            n = FIRST_TEID + 2 * len(self._teids)
            t = self._teids[ue] = (n, n + 1)
        return t

    @property
    def ues(self) -> int:
        return len(self._teids)

    def ue_of(self, pkt: bytes, version: int) -> tuple[bytes, bytes, bytes] | None:
        """(src, dst, UE address) of one IP packet, or None if its header cannot be read."""
        if version == 4:
            if len(pkt) < 20:
                return None
            ihl = (pkt[0] & 0x0F) * 4
            proto, src, dst = pkt[9], pkt[12:16], pkt[16:20]
            frag = _u16(pkt, 6)[0]
            l4 = ihl if not frag & 0x1FFF else -1  # a later fragment has no transport header
        else:
            if len(pkt) < 40:
                return None
            proto, src, dst = pkt[6], pkt[8:24], pkt[24:40]
            l4 = 40
            while proto in (0, 43, 60) and l4 + 8 <= len(pkt):  # hop-by-hop, routing, destination
                proto, l4 = pkt[l4], l4 + (pkt[l4 + 1] + 1) * 8
            if proto == 44:
                l4 = -1  # fragments go with their address pair
        pair = (src, dst) if src < dst else (dst, src)
        if l4 < 0 or proto not in (6, 17) or l4 + 4 > len(pkt):
            ue = self._ue_of_pair.get(pair)
            if ue is None:
                ue = self._ue_of_pair[pair] = src
            return src, dst, ue
        sport, dport = struct.unpack_from("!HH", pkt, l4)
        a, b = (src, sport), (dst, dport)
        key = (proto, a, b) if a < b else (proto, b, a)
        ue = self._ue_of_flow.get(key)
        if ue is None:
            ue = src
            if proto == 6 and l4 + 14 <= len(pkt):
                flags = pkt[l4 + 13]
                if flags & 0x12 == 0x12:  # SYN+ACK: the receiver opened the flow
                    ue = dst
                elif not flags & 0x02 and sport <= WELL_KNOWN_MAX and dport >= EPHEMERAL_MIN:
                    ue = dst  # mid-flow, from a server's port
            elif proto == 17 and sport <= WELL_KNOWN_MAX and dport >= EPHEMERAL_MIN:
                ue = dst
            self._ue_of_flow[key] = ue
            self._ue_of_pair.setdefault(pair, ue)
        return src, dst, ue

    def frame(self, pkt: bytes, version: int) -> bytes | None:
        """The N3 frame carrying one inner IP packet, or None (counted) if it cannot go."""
        who = self.ue_of(pkt, version)
        if who is None:
            self.stats["dropped.truncated_ip"] += 1
            return None
        if len(pkt) > MAX_INNER:
            self.stats["dropped.too_big"] += 1
            return None
        src, _dst, ue = who
        ul_teid, dl_teid = self.teids(ue)
        uplink = src == ue
        gpdu = encode_gpdu(ul_teid if uplink else dl_teid, pkt, self.qfi, PDU_TYPE_UL if uplink else PDU_TYPE_DL)
        udp_len = 8 + len(gpdu)
        self._ident = (self._ident + 1) & 0xFFFF
        osrc, odst = (GNB_IP, UPF_IP) if uplink else (UPF_IP, GNB_IP)
        hdr = _ipv4.pack(0x45, 0, 20 + udp_len, self._ident, 0x4000, 64, 17, 0, osrc, odst)
        hdr = hdr[:10] + struct.pack("!H", internet_checksum(hdr)) + hdr[12:]
        eth = (UPF_MAC + GNB_MAC if uplink else GNB_MAC + UPF_MAC) + b"\x08\x00"
        self.stats["uplink" if uplink else "downlink"] += 1
        return eth + hdr + _udp.pack(GTPU_PORT, GTPU_PORT, udp_len, 0) + gpdu


def write_pcap_header(out: BinaryIO) -> None:
    out.write(_pcap_header.pack(PCAP_NS_MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))


def write_record(out: BinaryIO, ts_ns: int, frame: bytes) -> None:
    sec, ns = divmod(max(ts_ns, 0), 1_000_000_000)
    out.write(_record.pack(sec & 0xFFFFFFFF, ns, len(frame), len(frame)))
    out.write(frame)


def inner_packets(frames: Iterable[tuple[int, int, bytes]], stats: Counter[str]) -> Iterator[tuple[int, bytes, int]]:
    """(ts_ns, IP packet, version) of every captured frame that carries one; the rest counted."""
    for ts_ns, linktype, frame in frames:
        stats["frames"] += 1
        version, where = ip_offset(linktype, frame)
        if isinstance(where, str):
            stats[f"dropped.{where}"] += 1
            continue
        pkt = frame[where:]
        n = ip_length(pkt, version)
        if 0 < n < len(pkt):  # Ethernet's padding to 60 bytes, an FCS: not part of the IP packet
            pkt = pkt[:n]
            stats["trimmed.link_trailer"] += 1
        yield ts_ns, pkt, version


def ip_length(pkt: bytes, version: int) -> int:
    """The length an IP packet's header gives, or 0 when it gives none (an IPv4 total length of
    0, as segmentation offload captures show; an IPv6 jumbogram) or the header is cut."""
    if version == 4:
        if len(pkt) < 4:
            return 0
        n = _u16(pkt, 2)[0]
        return n if n >= (pkt[0] & 0x0F) * 4 >= 20 else 0
    if len(pkt) < 6:
        return 0
    n = _u16(pkt, 4)[0]
    return 40 + n if n else 0


def tunnel_file(src: str | Path, out: BinaryIO, tunneller: Tunneller | None = None, shift_ns: int = 0,
                header: bool = True) -> tuple[Counter[str], int, int]:
    """Tunnel one capture into ``out``. Returns (counters, first and last timestamp in ns, shifted)."""
    t = tunneller or Tunneller()
    stats = t.stats
    if header:
        write_pcap_header(out)
    first = last = -1
    capture_stats: Counter[str] = Counter()
    for ts_ns, pkt, version in inner_packets(read_packets(src, capture_stats), stats):
        frame = t.frame(pkt, version)
        if frame is None:
            continue
        ts = ts_ns + shift_ns
        first = ts if first < 0 else min(first, ts)
        last = max(last, ts)
        write_record(out, ts, frame)
        stats["packets"] += 1
    for k, v in capture_stats.items():
        if k not in ("capture.files", "capture.packets"):
            stats[k] += v
    stats["ues"] = t.ues
    return stats, first, last
