"""tshark as an independent oracle inside GTP-U: the tests use the corpus tools' own
(testbed/corpus/oracle.py), so that the tests, the bench and ``testbed corpus score`` judge alike."""

from __future__ import annotations

from testbed.corpus.oracle import oracle_events, tap_keys
from testbed.corpus.tshark import TSHARK

__all__ = ["TSHARK", "oracle_events", "tap_keys"]
