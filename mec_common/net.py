"""Address parsing shared by the command lines (`--listen HOST:PORT`)."""

from __future__ import annotations

import struct


def internet_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def parse_host_port(text: str, *, default_host: str | None = None) -> tuple[str, int]:
    """'HOST:PORT', '[v6]:PORT' or, with ``default_host``, ':PORT' -> (host, port).

    Raises ValueError with a one-line reason.
    """
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if not host:
        if default_host is None:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        host = default_host
    return host, int(port)
