"""Hostile input: no exception escapes the tap, whatever the bytes."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import CAPTURES
from upf_tap.capture.pcapfile import read_packets
from upf_tap.pipeline import Tap, TapConfig

LINKTYPES = [0, 1, 101, 113, 228, 229, 276, 147]

# Real frames from the shared captures (N3 with TCP/UDP/ICMP, fragments, PFCP, NGAP) to mutate.
SEEDS: list[bytes] = []
for name in ("synthetic-n3.pcap", "gtp-http-fragmented.pcap", "gtp-ipv6.pcap", "oai-5greplay.pcap",
             "gtp-short-payload.pcap"):
    SEEDS += [bytes(f) for _, lt, f in read_packets(CAPTURES / name) if lt == 1][:60]


def _tap(point: str = "n3") -> Tap:
    return Tap(TapConfig(point=point, flows=True, control_plane=True), lambda e: None)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(LINKTYPES), st.binary(max_size=200), st.sampled_from(["n3", "n6"]))
def test_random_frames(linktype: int, frame: bytes, point: str) -> None:
    tap = _tap(point)
    tap.feed(1, linktype, frame)
    tap.finish()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6),
       st.integers(0, 2000))
def test_mutated_real_frames(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    frame = bytearray(seed)
    for pos, val in flips:
        if frame:
            frame[pos % len(frame)] = val
    tap = _tap()
    tap.feed(1, 1, bytes(frame[: max(cut, 14)]))
    tap.feed(2, 1, seed)  # the tap still works after garbage
    tap.finish()


def test_every_truncation_of_a_gtpu_frame_is_a_counted_drop() -> None:
    seed = next(s for s in SEEDS if len(s) > 100)
    for n in range(len(seed)):
        tap = _tap()
        tap.feed(1, 1, seed[:n])
        tap.finish()
        assert tap.packets == 1
