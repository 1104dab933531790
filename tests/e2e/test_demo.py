"""`testbed demo` end to end, as a user runs it (sim as root; replay otherwise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent


def _demo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "report"
    res = subprocess.run([sys.executable, "-m", "testbed", "demo", "--out", str(out), *args],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    return res, report


@pytest.mark.root
@pytest.mark.slow
def test_demo_sim(tmp_path: Path) -> None:
    res, report = _demo(tmp_path, "--mode", "sim", "--ues", "2", "--rounds", "5", "--lab-id", "dmo")
    assert res.returncode == 0, res.stderr[-3000:]
    meta = report["meta"]
    assert meta["mode"] == "sim" and meta["reached_function"] == meta["actions"] == 2 * 3 + 2 * 5
    assert set(meta["supis"]) == {"imsi-999700000000001", "imsi-999700000000002"}
    warm = report["summary"]["warm"]
    for stage in ("ue_to_tap", "tap_to_detector", "detector_to_broker", "broker_to_function", "function_run"):
        assert warm[stage]["n"] > 0 and warm[stage]["p50"] >= 0
    assert report["summary"]["cold"]["broker_to_function"]["n"] >= 1      # functions scaled from zero
    assert (tmp_path / "report" / "report.html").read_text().count("<tr>") > 10
    assert (tmp_path / "report" / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "UE send → function start" in res.stdout
    # nothing left behind
    assert "mecdmo" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@pytest.mark.root
@pytest.mark.slow
def test_demo_sim_on_the_channel_path(tmp_path: Path) -> None:
    """`--eventing channel`: the detector's sink is the Channel; its Subscription runs fn-channel-log."""
    res, report = _demo(tmp_path, "--mode", "sim", "--ues", "2", "--rounds", "3", "--lab-id", "dmc",
                        "--eventing", "channel")
    assert res.returncode == 0, res.stderr[-3000:]
    meta = report["meta"]
    assert meta["eventing"] == "channel" and meta["reached_function"] == meta["actions"] == 2 * 3 + 2 * 3
    assert "channel path" in res.stdout
    ran = {t["function"] for t in report["traces"]}
    assert "fn-channel-log" in ran  # delivered by the Subscription, not a Trigger
    assert report["summary"]["warm"]["detector_to_function"]["n"] > 0
    # the Trigger path's own functions still ran, behind the Subscription to the Broker
    invoked = {i["service"] for i in _invocations(tmp_path)}
    assert {"fn-channel-log", "fn-buy"} <= invoked


def _invocations(tmp_path: Path) -> list[dict]:
    out = []
    for path in (tmp_path / "report" / "run" / "broker").glob("**/invocations.jsonl"):
        out += [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return out


def test_demo_replay(tmp_path: Path) -> None:
    res, report = _demo(tmp_path, "--mode", "replay")
    assert res.returncode == 0, res.stderr[-3000:]
    meta = report["meta"]
    assert meta["mode"] == "replay" and meta["reached_function"] == meta["actions"] == 6
    assert len(meta["supis"]) == 3


@pytest.mark.skipif(os.geteuid() != 0, reason="checks the root-to-replay fallback from root")
def test_demo_without_root_falls_back_to_replay(tmp_path: Path) -> None:
    import shutil
    import tempfile

    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run([*as_nobody, sys.executable, "-c", "import subprocess, sys, testbed; "
                            "subprocess.run([sys.executable, '-c', 'pass'], check=True)"],
                           capture_output=True, cwd=REPO)
    if probe.returncode != 0:
        pytest.skip("this Python or checkout is not readable by an unprivileged user here")
    home = Path(tempfile.mkdtemp(prefix="mec-nobody-"))  # pytest's own tmp dirs are root-only
    try:
        os.chmod(home, 0o777)
        out = home / "report"
        res = subprocess.run([*as_nobody, sys.executable, "-m", "testbed", "demo", "--out", str(out)], capture_output=True, text=True,
                             cwd=REPO, timeout=300, env={**os.environ, "HOME": str(home)})
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert "running the replay mode" in res.stderr
    assert res.returncode == 0, res.stderr[-2000:]
