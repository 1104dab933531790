"""Application dissectors, one module per protocol.

Two shapes of plain function, over bytes, no per-packet objects:

* datagram dissectors (``dns``, ``quic``, ``coap``, ``icmp``)::

      dissect_datagram(data: bytes) -> list[tuple[str, dict]]

  ``(kind, app)`` pairs for what the datagram carries; ``[]`` when there is nothing to
  report (a response, say).

* stream dissectors (``http``, ``tls``, ``mqtt``, ``dns`` over TCP)::

      dissect_stream(buf: bytes, pos: int) -> tuple[list[tuple[str, dict]], int, bool]

  ``buf`` holds the in-order bytes of one TCP direction from the start of the stream
  (capped at the stream depth); ``pos`` is where unparsed bytes begin. Returns the
  events of every complete message from ``pos``, the new ``pos`` (the start of an
  incomplete message, to be retried when more bytes arrive) and ``done`` (True when
  nothing more of interest can follow, e.g. after a TLS ClientHello).

Both raise :class:`Malformed` when the bytes cannot be the protocol; the tap counts it
by module and stops inspecting that direction.
"""

from __future__ import annotations

from typing import Any

AppFields = dict[str, Any]
Found = list[tuple[str, AppFields]]


class Malformed(ValueError):
    """The bytes are not a well-formed message of this protocol."""
