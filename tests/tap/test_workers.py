"""`upf-tap read --workers N`: the same events as one process, from every capture.

Each worker reads the whole file and decodes only the flows whose inner addresses it owns
(flows.owner, as the live fanout program splits them); control-plane events are
reported by worker 0 alone. Checked on the real captures in ../shared/captures (N3 with
PFCP/NGAP among them) and on a generated mixed N3 workload with thousands of flows.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CAPTURES
from tests.support.n3_workload import generate_mixed
from tests.tap.conftest import run_read

ALL_CAPTURES = sorted(p.name for p in CAPTURES.iterdir() if p.suffix in (".pcap", ".pcapng"))


def lines(*args: str | Path) -> list[str]:
    return run_read(*args).stdout.splitlines()


@pytest.mark.parametrize("name", ALL_CAPTURES)
def test_two_workers_give_the_same_events(name: str) -> None:
    one = lines(CAPTURES / name, "--flows")
    two = lines(CAPTURES / name, "--flows", "--workers", "2")
    assert sorted(two) == sorted(one)
    times = [line.split('"time": "')[1][:27] if '"time": "' in line else "" for line in two]
    assert times == sorted(times)  # merged in capture-time order


def test_workers_split_a_mixed_workload(tmp_path: Path) -> None:
    cap = tmp_path / "mixed.pcap"
    generate_mixed(cap, 20_000, 50, 3)
    one = lines(cap, "--no-control")
    assert len(one) > 500
    for n in (2, 3):
        assert sorted(lines(cap, "--no-control", "--workers", str(n))) == sorted(one)


def test_workers_stats_count_each_packet_once(tmp_path: Path) -> None:
    res = run_read(CAPTURES / "synthetic-n3.pcap", "--workers", "2", "--stats")
    single = run_read(CAPTURES / "synthetic-n3.pcap", "--stats")

    def counter(text: str, name: str) -> int:
        return next(int(line.split()[-1]) for line in text.splitlines() if line.split()[:1] == [name])

    assert counter(res.stderr, "packets") == counter(single.stderr, "packets")
    assert counter(res.stderr, "events.http.request") == counter(single.stderr, "events.http.request")


def test_bad_worker_counts_are_refused() -> None:
    res = run_read(CAPTURES / "synthetic-n3.pcap", "--workers", "0", check=False)
    assert res.returncode == 2 and "--workers" in res.stderr
    res = run_read(CAPTURES / "synthetic-n3.pcap", CAPTURES / "gtp-mixed.pcap", "--workers", "2", check=False)
    assert res.returncode == 2 and "one file" in res.stderr
