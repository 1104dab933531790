"""DNS query dissector: UDP datagrams and TCP streams (2-byte length prefix, RFC 1035 §4.2.2).

One ``dns.query`` per question of a standard query (QR=0, opcode QUERY); responses
and other opcodes give nothing. Names follow compression pointers (a query rarely has
them, but nothing forbids it) with loop protection.
"""

from __future__ import annotations

import struct
import unicodedata

from upf_tap.dissect import AppFields, Found, Malformed

KIND = "dns.query"

# registration (upf_tap.dissect): DNS, multicast DNS (RFC 6762) and LLMNR (RFC 4795) share
# the message format, and tshark shows all three as dns.*; datagrams on other ports are
# recognised by their header (UDP_SNIFF), as tshark's DNS heuristic does
UDP_PORTS = frozenset({53, 5353, 5355})
TCP_PORTS = frozenset({53, 5353})
UDP_SNIFF = True
# the header shape tshark's DNS heuristic accepts (Wireshark's dissect_dns_heur): standard
# opcode; a query has one question and no answers or authorities; a response at most one
# question, 100 answers and 10 authorities; at most 10 additionals; room for the records
SNIFF_MAX_ANSWERS = 100
SNIFF_MAX_AUTHORITIES = 10
SNIFF_MAX_ADDITIONALS = 10

HEADER_LEN = 12
EXTENDED_LABEL = "<Unknown extended label>"  # tshark's dns.qry.name for a name with one
MAX_NAME = 255            # RFC 1035 §2.3.4, in wire octets
MAX_POINTERS = 64         # more hops than a 255-octet name can need: a loop
_u16 = struct.Struct("!H").unpack_from
_header = struct.Struct("!HHHHHH").unpack_from

# Label text as tshark's dns.qry.name shows it (Wireshark's format_text): UTF-8,
# C escapes for \a\b\t\n\v\f\r, octal for other ASCII controls,
# \uXXXX for other non-printables, U+FFFD for bytes that are not UTF-8. A '.' inside a
# label and a backslash stay as they are, as tshark shows them.
_C_ESC = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r"}


def _label_text(label: bytes) -> str:
    try:
        text = label.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if text and text.isprintable():  # printable ASCII (0x20-0x7E), the common case: as it is
        return text
    out = []
    for ch in label.decode("utf-8", "replace"):
        o = ord(ch)
        if o in _C_ESC:
            out.append(_C_ESC[o])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\{o:03o}")
        elif o > 0x7F and unicodedata.category(ch)[0] == "C":
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
        else:
            out.append(ch)
    return "".join(out)


def read_name(msg: bytes, p: int) -> tuple[str, int]:
    """The name at ``p`` (no trailing dot, "" for the root) and the position after it."""
    labels: list[str] = []
    wire = 0
    hops = 0
    after = -1  # where parsing resumes once the first pointer is followed
    n = len(msg)
    while True:
        if p >= n:
            raise Malformed("dns: name runs past the message")
        ln = msg[p]
        if ln == 0:
            p += 1
            break
        kind = ln & 0xC0
        if kind == 0xC0:
            if p + 2 > n:
                raise Malformed("dns: truncated compression pointer")
            hops += 1
            if hops > MAX_POINTERS:
                raise Malformed("dns: compression pointer loop")
            if after < 0:
                after = p + 2
            p = ((ln & 0x3F) << 8) | msg[p + 1]
            continue
        if kind == 0x40:
            # an extended label type (RFC 6891 §5; RFC 2673's binary labels are gone): tshark
            # ends the name here and shows this placeholder for all of it; reported the same
            return EXTENDED_LABEL, (after if after >= 0 else p + 1)
        if kind:
            raise Malformed("dns: reserved label type 0x80")
        wire += ln + 1
        if wire > MAX_NAME:
            raise Malformed("dns: name longer than 255 octets")
        if p + 1 + ln > n:
            raise Malformed("dns: label runs past the message")
        labels.append(_label_text(msg[p + 1 : p + 1 + ln]))
        p += 1 + ln
    return ".".join(labels), (after if after >= 0 else p)


def _message(msg: bytes, transport: str) -> Found:
    if len(msg) < HEADER_LEN:
        raise Malformed("dns: message shorter than its header")
    _, flags, qdcount, _, _, _ = _header(msg, 0)
    if flags & 0x8000 or (flags >> 11) & 0xF:
        return []  # a response, or not a standard query
    if qdcount * 5 > len(msg) - HEADER_LEN:
        raise Malformed("dns: question count beyond the message")
    found: Found = []
    p = HEADER_LEN
    for _ in range(qdcount):
        qname, p = read_name(msg, p)
        if p + 4 > len(msg):
            raise Malformed("dns: truncated question")
        (qtype,) = _u16(msg, p)
        p += 4
        app: AppFields = {"qname": qname, "qtype": qtype, "transport": transport}
        found.append((KIND, app))
    return found


def _query_header(data: bytes) -> bool:
    """Cheap test for the header of a DNS query."""
    if len(data) < HEADER_LEN + 5:
        return False
    _, flags, qd, an, ns, _ = _header(data, 0)
    return not flags & 0xF800 and 1 <= qd <= 4 and an == 0 and ns == 0


def looks_like_datagram(data: bytes) -> bool:
    """A DNS message on a port that is not DNS's, by the header shape tshark's heuristic accepts."""
    n = len(data)
    if n <= HEADER_LEN:
        return False
    _, flags, qd, an, ns, ar = _header(data, 0)
    if flags & 0x7800:
        return False
    if flags & 0x8000:
        if qd > 1 or an > SNIFF_MAX_ANSWERS or ns > SNIFF_MAX_AUTHORITIES:
            return False
    elif qd != 1 or an or ns:
        return False
    return ar <= SNIFF_MAX_ADDITIONALS and qd + an > 0 and qd * 6 + (an + ns + ar) * 11 <= n - HEADER_LEN


def looks_like(buf: bytes) -> bool:
    """Cheap test for a DNS-over-TCP stream opened by a query."""
    if len(buf) < 2:
        return len(buf) == 1 and buf[0] == 0  # messages over 255 bytes are rare for queries
    (ln,) = _u16(buf, 0)
    if ln < HEADER_LEN + 5:
        return False
    if len(buf) < 2 + HEADER_LEN:
        return True
    return _query_header(buf[2 : 2 + HEADER_LEN + 5])


def dissect_datagram(data: bytes) -> Found:
    """``dns.query`` events of a UDP datagram."""
    return _message(data, "udp")


def dissect_stream(buf: bytes, pos: int) -> tuple[Found, int, bool]:
    """``dns.query`` events of every complete length-prefixed message from ``pos``."""
    found: Found = []
    n = len(buf)
    while pos + 2 <= n:
        (ln,) = _u16(buf, pos)
        if ln < HEADER_LEN:
            raise Malformed("dns: TCP message shorter than a header")
        if pos + 2 + ln > n:
            break
        found += _message(buf[pos + 2 : pos + 2 + ln], "tcp")
        pos += 2 + ln
    return found, pos, False
