"""`testbed demo` end to end, as a user runs it (sim as root; replay otherwise)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import pairwise
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
    _assert_whole_trace(report["trace"], replay=False)
    assert report["trace"]["round"] == "warm" and report["trace"]["kind"] == "http"   # the first warm buy
    assert "Trace of action" in res.stdout
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


STAGES = ["capture", "decode", "detector.accept", "delivery", "broker.accept", "function"]


def _assert_whole_trace(trace: dict, *, replay: bool) -> None:
    """One action's trace: every stage, in order, each span the child of the one before, one trace id."""
    spans = trace["spans"]
    assert [s["name"] for s in spans] == STAGES
    assert [s["service"] for s in spans[:5]] == ["upf-tap", "upf-tap", "detector", "detector", "broker"]
    assert spans[0]["parent_id"] is None
    assert all(b["parent_id"] == a["span_id"] for a, b in pairwise(spans))
    assert [s["depth"] for s in spans] == list(range(6))
    assert all(s["duration_ms"] >= 0 for s in spans)
    starts = [s["start"] for s in spans]
    assert starts == sorted(starts)
    # decode ends where the detector accepts (the tap's send time is not recorded)
    assert spans[2]["start"] == pytest.approx(spans[1]["start"] + spans[1]["duration_ms"] / 1000, abs=1e-6)
    assert trace["traceparent"].split("-")[1] == trace["trace_id"]
    if not replay:
        assert spans[0]["offset_ms"] == 0 and all(s["offset_ms"] >= 0 for s in spans)


def test_demo_replay(tmp_path: Path) -> None:
    res, report = _demo(tmp_path, "--mode", "replay", "--trace", "2")
    assert res.returncode == 0, res.stderr[-3000:]
    meta = report["meta"]
    assert meta["mode"] == "replay" and meta["reached_function"] == meta["actions"] == 6
    assert len(meta["supis"]) == 3
    trace = report["trace"]
    assert trace["action"] == 2 and trace["event_id"] == report["traces"][1]["event_id"]
    _assert_whole_trace(trace, replay=True)
    assert trace["spans"][2]["offset_ms"] == 0          # replay: the offsets count from the detector
    # the function journalled the traceparent the CloudEvent carried
    inv = {i["id"]: i for i in _invocations(tmp_path)}
    assert inv[trace["event_id"]]["traceparent"] == trace["traceparent"]
    assert "Trace of action 2" in res.stdout and "broker.accept" in res.stdout
    assert "Trace of action 2" in (tmp_path / "report" / "report.html").read_text()


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


async def test_demo_replay_exports_the_reports_trace_over_otlp(tmp_path: Path) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, the tap, the detector and the functions export their
    spans to a (real, local) OTLP/HTTP receiver, with the very ids the report rebuilds."""
    pytest.importorskip("opentelemetry.sdk.trace", reason="the [trace] extra (OpenTelemetry SDK) is not installed")
    import asyncio

    from tests.support.otlp import otlp_receiver

    out = tmp_path / "report"
    async with otlp_receiver() as (endpoint, spans):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "testbed", "demo", "--mode", "replay", "--out", str(out), cwd=REPO,
            env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 300)
        assert proc.returncode == 0, err.decode()[-3000:]
    trace = json.loads((out / "report.json").read_text())["trace"]
    exported = {(s["name"], s["span_id"]): s for s in spans if s["trace_id"] == trace["trace_id"]}
    for span in trace["spans"]:
        got = exported.get((span["name"], span["span_id"]))
        assert got is not None, (span["name"], sorted(exported))
        assert (got["service"], got["parent_id"]) == (span["service"], span["parent_id"])
