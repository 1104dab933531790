"""MQTT 3.1, 3.1.1 and 5.0 dissector (stream): CONNECT and PUBLISH.

Each control packet is a fixed header (type, flags, Remaining Length varint) and a
body; other packet types are skipped by length. A PUBLISH is reported as soon as its
topic is in, even when the payload runs past the bytes held (``pos`` then points past
``len(buf)``). Payloads are left out unless :data:`PAYLOAD_CAP` asks for them.
"""

from __future__ import annotations

import struct

from upf_tap.dissect import AppFields, Found, Malformed

KIND_CONNECT = "mqtt.connect"
KIND_PUBLISH = "mqtt.publish"

# registration (upf_tap.dissect): streams to these server ports, and by content on any other
TCP_PORTS = frozenset({1883})
SNIFF = True

CONNECT = 1
PUBLISH = 3
# required flag bits of the fixed header, by packet type (PUBLISH's carry DUP/QoS/RETAIN)
_FIXED_FLAGS = {6: 0b0010, 8: 0b0010, 10: 0b0010}  # PUBREL, SUBSCRIBE, UNSUBSCRIBE

# bytes of PUBLISH payload to include as app["payload"] (text, undecodable bytes
# escaped); 0 keeps payloads out, as DESIGN.md requires by default
PAYLOAD_CAP = 0

_PROTOCOL_NAMES = {b"MQTT": (4, 5), b"MQIsdp": (3,)}
_u16 = struct.Struct("!H").unpack_from


def _remaining_length(buf: bytes, p: int) -> tuple[int, int] | None:
    """(value, position after) of the Remaining Length at ``p``; None if not all in yet."""
    v = 0
    for i in range(4):
        if p + i >= len(buf):
            return None
        b = buf[p + i]
        v |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return v, p + i + 1
    raise Malformed("mqtt: Remaining Length longer than 4 bytes")


def _varint(b: bytes, p: int, end: int) -> tuple[int, int]:
    """MQTT 5 Variable Byte Integer inside a packet body."""
    v = 0
    for i in range(4):
        if p + i >= end:
            raise Malformed("mqtt: truncated variable byte integer")
        c = b[p + i]
        v |= (c & 0x7F) << (7 * i)
        if not c & 0x80:
            return v, p + i + 1
    raise Malformed("mqtt: variable byte integer longer than 4 bytes")


def _string(b: bytes, p: int, end: int) -> tuple[bytes, int]:
    if p + 2 > end:
        raise Malformed("mqtt: truncated string length")
    (ln,) = _u16(b, p)
    p += 2
    if p + ln > end:
        raise Malformed("mqtt: string runs past the packet")
    return b[p : p + ln], p + ln


def _text(b: bytes) -> str:
    return b.decode("utf-8", "backslashreplace")


def looks_like(buf: bytes) -> bool:
    """True if the first bytes can start a client stream: a CONNECT naming MQTT/MQIsdp."""
    if not buf:
        return False
    if buf[0] != CONNECT << 4:
        return False
    try:
        rl = _remaining_length(buf, 1)
    except Malformed:
        return False
    if rl is None:
        return True
    p = rl[1]
    name = buf[p : p + 8]
    return any((b"\x00" + bytes([len(k)]) + k).startswith(name) or
               name.startswith(b"\x00" + bytes([len(k)]) + k) for k in _PROTOCOL_NAMES)


def _connect(b: bytes, p: int, end: int) -> AppFields:
    name, p = _string(b, p, end)
    if name not in _PROTOCOL_NAMES:
        raise Malformed("mqtt: unknown protocol name in CONNECT")
    if p + 4 > end:
        raise Malformed("mqtt: truncated CONNECT")
    level, flags = b[p], b[p + 1]
    if level not in _PROTOCOL_NAMES[name]:
        raise Malformed(f"mqtt: protocol level {level} does not match {name!r}")
    if flags & 0x01:
        raise Malformed("mqtt: reserved CONNECT flag set")
    p += 4  # level, flags, keep alive
    if level == 5:
        plen, p = _varint(b, p, end)
        p += plen
        if p > end:
            raise Malformed("mqtt: CONNECT properties run past the packet")
    client_id, p = _string(b, p, end)
    app: AppFields = {"client_id": _text(client_id), "protocol_level": level}
    if flags & 0x04:  # will flag
        if level == 5:
            plen, p = _varint(b, p, end)
            p += plen
            if p > end:
                raise Malformed("mqtt: will properties run past the packet")
        _, p = _string(b, p, end)   # will topic
        _, p = _string(b, p, end)   # will payload
    if flags & 0x80:
        username, p = _string(b, p, end)
        app["username"] = _text(username)
    app["clean_session"] = bool(flags & 0x02)
    return app


def _level_of_stream(buf: bytes) -> int:
    """Protocol level from a CONNECT at the start of the stream; 4 when there is none."""
    if len(buf) > 9 and buf[0] == CONNECT << 4:
        try:
            rl = _remaining_length(buf, 1)
        except Malformed:
            return 4
        if rl is not None:
            p = rl[1]
            if p + 2 <= len(buf):
                (ln,) = _u16(buf, p)
                if p + 2 + ln < len(buf):
                    return buf[p + 2 + ln]
    return 4


def _publish(buf: bytes, first: int, p: int, end: int, level: int) -> AppFields:
    qos = (first >> 1) & 3
    if qos == 3:
        raise Malformed("mqtt: PUBLISH with QoS 3")
    topic, p = _string(buf, p, end)
    app: AppFields = {"topic": _text(topic), "qos": qos, "retain": bool(first & 1), "dup": bool(first & 8)}
    if qos:
        if p + 2 > end:
            raise Malformed("mqtt: PUBLISH without its packet identifier")
        (app["packet_id"],) = _u16(buf, p)
        p += 2
    if PAYLOAD_CAP > 0:
        if level == 5:
            plen, p = _varint(buf, p, end)
            p += plen
        app["payload"] = _text(buf[p : min(end, p + PAYLOAD_CAP)])
    return app


def dissect_stream(buf: bytes, pos: int) -> tuple[Found, int, bool]:
    """CONNECT and PUBLISH events of every packet from ``pos`` (see the module docstring)."""
    found: Found = []
    n = len(buf)
    level = -1
    while pos < n:
        first = buf[pos]
        ptype = first >> 4
        if ptype == 0:
            raise Malformed("mqtt: reserved packet type 0")
        if ptype != PUBLISH and first & 0x0F != _FIXED_FLAGS.get(ptype, 0):
            raise Malformed(f"mqtt: bad fixed-header flags for packet type {ptype}")
        rl = _remaining_length(buf, pos + 1)
        if rl is None:
            break
        length, body = rl
        end = body + length
        if ptype == CONNECT:
            if end > n:
                break  # CONNECT is small: wait for all of it
            found.append((KIND_CONNECT, _connect(buf, body, end)))
        elif ptype == PUBLISH:
            # report once the topic (and packet id) are in, even if the payload is not
            if end > n:
                if body + 2 > n:
                    break
                if body + 2 + _u16(buf, body)[0] + (2 if first & 0x06 else 0) > n:
                    break
            if level < 0:
                level = _level_of_stream(buf)
            found.append((KIND_PUBLISH, _publish(buf, first, body, min(end, n), level)))
        pos = end
    return found, pos, False
