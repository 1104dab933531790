"""The tap against tshark on a real corpus: public test captures (nDPI, Zeek, Suricata-verify)
tunnelled into N3 by ``testbed corpus build``, with tshark's view of each as the oracle.

    MEC_CORPUS=DIR pytest tests/corpus/test_corpus_oracle.py

Skipped when MEC_CORPUS is unset or holds no corpus. tshark's view is the cached one
(``oracle/<name>.json``); a cache made by another tshark, filter or field list is recomputed
(and written back when DIR is writable, as ``testbed corpus score`` does).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testbed.corpus.build import MANIFEST, captures, load, oracle_of, refresh_oracle
from testbed.corpus.oracle import KINDS, Score
from testbed.corpus.score import score_corpus
from testbed.corpus.tshark import TSHARK

THRESHOLD = 0.99
HOW = ("fetch the snapshots github:ntop/nDPI, github:zeek/zeek and github:OISF/suricata-verify into "
       "$MEC_UPSTREAM, run `testbed corpus build --out DIR`, then set MEC_CORPUS=DIR")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def corpus() -> Path:
    where = os.environ.get("MEC_CORPUS")
    if not where:
        pytest.skip(f"MEC_CORPUS is not set: to score the tap on a real corpus, {HOW}")
    out = Path(where)
    if not (out / MANIFEST).is_file():
        pytest.skip(f"MEC_CORPUS={where} has no {MANIFEST}: {HOW}")
    return out


@pytest.fixture(scope="module")
def score(corpus: Path) -> Score:
    manifest = load(corpus)
    if not manifest["captures"]:
        pytest.skip(f"{corpus}: the corpus holds no capture")
    stale = [c["name"] for c in manifest["captures"] if oracle_of(corpus, c["name"]) is None]
    if stale and TSHARK is None:
        pytest.skip(f"{len(stale)} captures of {corpus} lack a current tshark oracle and tshark is not installed")
    if stale and os.access(corpus / "oracle", os.W_OK):
        refresh_oracle(corpus, manifest, jobs=2)  # recomputed once, for the next run too
    return score_corpus(corpus, captures(corpus, manifest))  # (recomputes in memory what is still stale)


def worst(score: Score, kind: str, n: int = 15) -> str:
    """The captures that differ most in ``kind``, with their missed and extra keys."""
    rows = []
    for name, (missed, extra) in score.differences.items():
        m = {k: v for k, v in missed.items() if k[0] == kind}
        x = {k: v for k, v in extra.items() if k[0] == kind}
        if m or x:
            rows.append((sum(m.values()) + sum(x.values()), name, m, x))
    rows.sort(key=lambda r: (-r[0], r[1]))
    lines = [score.table(), f"{len(rows)} captures differ in {kind}; the worst:"]
    for _total, name, m, x in rows[:n]:
        lines.append(f"  {name}:")
        lines += [f"    missed {v}x {k[1:]}" for k, v in sorted(m.items(), key=repr)[:6]]
        lines += [f"    extra  {v}x {k[1:]}" for k, v in sorted(x.items(), key=repr)[:6]]
    return "\n".join(lines)


@pytest.mark.parametrize("kind", KINDS)
def test_tap_matches_tshark_on_the_corpus(score: Score, kind: str) -> None:
    recall, precision = score.recall(kind), score.precision(kind)
    print(score.table())
    assert recall >= THRESHOLD and precision >= THRESHOLD, (
        f"{kind}: recall {recall:.4f}, precision {precision:.4f} (< {THRESHOLD})\n" + worst(score, kind))
