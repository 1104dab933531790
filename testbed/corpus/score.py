"""The tap against tshark over a corpus (``testbed corpus score``, tests/corpus)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from testbed.corpus.build import oracle_of
from testbed.corpus.oracle import Score, oracle_events, tap_events, tap_keys


def score_corpus(out: Path, items: Iterable[tuple[str, Path]]) -> Score:
    """Score every (name, N3 capture): tshark's cached view (or a fresh run) against the tap's."""
    score = Score()
    for name, path in items:
        expected = oracle_of(out, name)
        if expected is None:
            expected = oracle_events(path)
        score.add(name, expected, tap_keys(tap_events(path)))
    return score
