"""Application dissectors, one module per protocol, and the tables that pick one.

Plain functions over bytes, no per-packet objects, in these shapes:

* datagram dissectors (``dns``, ``coap``, ``quic``)::

      dissect_datagram(data: bytes) -> list[tuple[str, dict]]

  ``(kind, app)`` pairs for what the datagram carries; ``[]`` when there is nothing to
  report (a response, say). A dissector whose message may span datagrams (``quic``)
  also has ``datagram_state()``: a new per-direction object whose ``feed(data)`` answers
  the same; the tap then uses it instead, one per flow direction, and stops feeding a
  direction once it has reported something or raised :class:`Malformed`. A state whose
  ``client`` is true has opened a client's message: the flow's other direction is then the
  server's, which such a dissector has nothing to read in (QUIC: a server's Initials are under
  the server's keys), and the tap does not feed it.

* stream dissectors (``http``, ``tls``, ``mqtt``, ``dns`` over TCP)::

      dissect_stream(buf: bytes, pos: int) -> tuple[list[tuple[str, dict]], int, int]

  ``buf`` holds the in-order bytes of one TCP direction from the start of the stream
  (capped at the stream depth); ``pos`` is where unparsed bytes begin. Returns the
  events of every complete message from ``pos``, the new ``pos`` (the start of an
  incomplete message, to be retried when more bytes arrive) and ``done`` (True when
  nothing more of interest can follow, e.g. after a TLS ClientHello; :data:`HANDOFF` when
  another protocol follows from ``pos``). Bytes before ``pos`` are dropped by the caller, so
  ``pos`` may also lie beyond ``buf`` (a body to skip).

* IP-protocol dissectors (``icmp``): ``dissect_ip(proto: int, data: bytes)``, the same
  answer for a whole transport payload of that IP protocol.

All raise :class:`Malformed` when the bytes cannot be the protocol; the tap counts it as
``<name>.malformed`` and stops inspecting that direction.

Registration (as Zeek analyzers register their ports; the tap dispatches by table, like
dpkt). Each module declares, at its top, what it reads:

* ``TCP_PORTS``: server ports whose streams it reads (the port the first payload goes to);
* ``UDP_PORTS``: server ports whose datagrams it reads (a sender to one is the client);
* ``SNIFF = True``: its ``looks_like(first bytes)`` is also tried on a stream whose port
  no dissector claims (in :data:`REGISTERED` order);
* ``UDP_SNIFF = True``: its ``looks_like_datagram(payload)`` is tried on each datagram to a
  port no dissector claims, or that its port's dissector does not claim (a dissector with
  ``claims_datagram(payload)`` reads only what that accepts on its ports): tshark's UDP
  heuristics, which find DNS and QUIC on any port;
* ``IP_PROTOS``: IP protocol numbers whose payload it reads (ICMP and ICMPv6, whose flows
  the pipeline keys by echo identifier; another IP protocol needs its layer there too).

and :data:`REGISTERED` names it. Adding a dissector is a new module here plus one line
there; a port claimed twice for one transport is an error at import.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

AppFields = dict[str, Any]
Found = list[tuple[str, AppFields]]


class Malformed(ValueError):
    """The bytes are not a well-formed message of this protocol."""


# A stream dissector's ``done`` when what follows is another protocol (an HTTP CONNECT
# tunnel): the stream's sniffers read on from its ``pos``.
HANDOFF = 2


if TYPE_CHECKING:  # types only: making a Protocol class costs start-up time
    from collections.abc import Callable
    from typing import Protocol

    class DatagramState(Protocol):
        """Per-direction state of a datagram dissector whose messages span datagrams."""

        def feed(self, data: bytes) -> Found: ...

        @property
        def client(self) -> bool: ...


# Every dissector, one a line: a module of this package. Content sniffers are tried in this order.
REGISTERED = (
    "http",
    "tls",
    "mqtt",
    "dns",
    "coap",
    "quic",
    "icmp",
)


class Dissector:
    """One registered dissector: what the tap calls, read once from its module."""

    __slots__ = ("claims_datagram", "datagram", "ip", "looks_like", "looks_like_datagram", "name", "new_state",
                 "stream")

    def __init__(self, name: str, mod: Any) -> None:
        self.name: str = name  # counters are "<name>.malformed"
        self.stream: Callable[[bytes, int], tuple[Found, int, int]] | None = getattr(mod, "dissect_stream", None)
        self.datagram: Callable[[bytes], Found] | None = getattr(mod, "dissect_datagram", None)
        self.new_state: Callable[[], DatagramState] | None = getattr(mod, "datagram_state", None)
        self.ip: Callable[[int, bytes], Found] | None = getattr(mod, "dissect_ip", None)
        self.looks_like: Callable[[bytes], bool] | None = getattr(mod, "looks_like", None)
        self.looks_like_datagram: Callable[[bytes], bool] | None = getattr(mod, "looks_like_datagram", None)
        self.claims_datagram: Callable[[bytes], bool] | None = getattr(mod, "claims_datagram", None)

    def __repr__(self) -> str:
        return f"Dissector({self.name!r})"


def _claim(table: dict[int, Dissector], keys: Any, d: Dissector, what: str) -> None:
    for k in keys:
        if k in table:
            raise ValueError(f"dissect: {what} {k} claimed by both {table[k].name} and {d.name}")
        table[k] = d


def _build() -> tuple[dict[int, Dissector], dict[int, Dissector], dict[int, Dissector], tuple[Dissector, ...],
                      tuple[Dissector, ...]]:
    tcp: dict[int, Dissector] = {}
    udp: dict[int, Dissector] = {}
    ip: dict[int, Dissector] = {}
    sniffers: list[Dissector] = []
    udp_sniffers: list[Dissector] = []
    for name in REGISTERED:
        mod = import_module(f"{__name__}.{name}")
        d = Dissector(name, mod)
        _claim(tcp, getattr(mod, "TCP_PORTS", ()), d, "TCP port")
        _claim(udp, getattr(mod, "UDP_PORTS", ()), d, "UDP port")
        _claim(ip, getattr(mod, "IP_PROTOS", ()), d, "IP protocol")
        if getattr(mod, "SNIFF", False):
            sniffers.append(d)
        if getattr(mod, "UDP_SNIFF", False):
            udp_sniffers.append(d)
    return tcp, udp, ip, tuple(sniffers), tuple(udp_sniffers)


# TCP server port -> stream dissector; UDP server port -> datagram dissector; IP protocol ->
# dissector; the stream and datagram sniffers in order. Built here, after Malformed and Found
# exist: the dissector modules import them from this package.
TCP_PORTS, UDP_PORTS, IP_PROTOS, SNIFFERS, UDP_SNIFFERS = _build()


# UDP ports of protocols no dissector here reads, whose messages the sniffers would take for
# theirs: NetBIOS Name Service (RFC 1002) is DNS-shaped, and tshark decodes port 137 as NBNS.
NOT_SNIFFED_UDP_PORTS = frozenset({137})


def datagram_dissector(sport: int, dport: int, payload: bytes) -> Dissector | None:
    """The dissector of one UDP datagram: its port's, unless that one does not claim it; else
    the first sniffer that recognises it."""
    d = UDP_PORTS.get(dport)
    if d is not None and (d.claims_datagram is None or d.claims_datagram(payload)):
        return d
    if dport in NOT_SNIFFED_UDP_PORTS or sport in NOT_SNIFFED_UDP_PORTS:
        return None
    for s in UDP_SNIFFERS:
        if s.looks_like_datagram is not None and s.looks_like_datagram(payload):
            return s
    return None


def stream_dissector(dport: int, first: bytes) -> Dissector | None:
    """The dissector of a TCP direction: by the port its first payload goes to, else by its first bytes."""
    d = TCP_PORTS.get(dport)
    return d if d is not None else sniff_stream(first)


def sniff_stream(first: bytes, besides: Dissector | None = None) -> Dissector | None:
    """The first stream sniffer (other than ``besides``) that takes these first bytes."""
    for s in SNIFFERS:
        if s is not besides and s.looks_like is not None and s.looks_like(first):
            return s
    return None
