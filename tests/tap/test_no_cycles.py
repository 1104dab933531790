"""Why `upf-tap read` and `live` can run the cyclic collector seldom (pipeline.quiet_gc): the
user-plane decoder makes no reference cycles, so with the collector off a whole capture leaves
nothing for gc.collect() to find (every real capture in ../shared/captures, and a generated mixed
N3 workload: DNS, TLS, QUIC Initials, HTTP, IPv6, retransmissions). The control plane's decoders
(pycrate's NAS and NGAP objects) do make cycles: those are still collected at quiet_gc's threshold."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from tests.conftest import CAPTURES
from tests.support import n3_workload
from upf_tap.capture.pcapfile import read_batches
from upf_tap.constants import GC_THRESHOLD
from upf_tap.events import to_json_bytes
from upf_tap.pipeline import Tap, TapConfig

CAPS = sorted(p for p in CAPTURES.iterdir() if p.suffix in (".pcap", ".pcapng"))


def _decode(path: Path, **cfg: object) -> tuple[Tap, int]:
    events: list[bytes] = []
    tap = Tap(TapConfig(**cfg), lambda ev: events.append(to_json_bytes(ev)))  # type: ignore[arg-type]
    tap.consume_batches(read_batches(str(path), tap.stats, runs=True))
    tap.finish()
    return tap, len(events)


def _cyclic_garbage(path: Path, **cfg: object) -> tuple[int, int]:
    """(objects in unreachable cycles after decoding ``path`` with the collector off, events).
    The tap is kept alive: its own object graph is one cycle (the flow table calls back into
    it), made once, not per packet."""
    gc.collect()
    gc.disable()
    try:
        tap, events = _decode(path, **cfg)
        garbage = gc.collect()
        assert tap.packets > 0
        return garbage, events
    finally:
        gc.enable()


@pytest.mark.parametrize("path", CAPS, ids=[p.name for p in CAPS])
def test_the_user_plane_decoder_leaves_no_cycles(path: Path) -> None:
    garbage, _ = _cyclic_garbage(path, control_plane=False)
    assert garbage == 0


def test_mixed_workload_leaves_no_cycles(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pcap"
    n3_workload.generate_mixed(path, 20_000)
    garbage, events = _cyclic_garbage(path, control_plane=False)
    assert events > 500  # it did decode: handshakes, queries, Initials
    assert garbage == 0


def test_control_plane_cycles_are_still_collected() -> None:
    """A registration's NAS and NGAP decoding leaves ~100k objects in cycles; decoded again and
    again at quiet_gc's threshold, they do not pile up."""
    path = CAPTURES / "open5gs-registration.pcapng"
    garbage, _ = _cyclic_garbage(path)
    assert garbage > GC_THRESHOLD  # the premise: this capture makes cycles
    old = gc.get_threshold()
    gc.collect()
    base = len(gc.get_objects())
    gc.set_threshold(GC_THRESHOLD, 10, 10)
    try:
        for _ in range(6):
            _decode(path)
        grown = len(gc.get_objects()) - base
    finally:
        gc.set_threshold(*old)
    assert grown < 2 * GC_THRESHOLD, f"{grown} objects left after 6 decodings of {garbage} cyclic ones each"


def test_a_cycle_would_be_seen() -> None:
    """The check itself: a cycle made while the collector is off is found by gc.collect()."""
    gc.collect()
    gc.disable()
    try:
        a: list[object] = []
        a.append(a)
        del a
        assert gc.collect() >= 1
    finally:
        gc.enable()
