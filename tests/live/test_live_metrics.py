"""Prometheus exposition: the text format, and the HTTP endpoint."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections import Counter

import pytest

from upf_tap.live.metrics import CONTENT_TYPE, MetricsServer, Snapshot, render

SAMPLE = re.compile(r'^[a-z_]+(\{[a-z_]+="(?:[^"\\\n]|\\.)*"\})? -?\d+$')


def snapshot() -> Snapshot:
    return Snapshot(packets=Counter({"rx0": 811}), bytes=Counter({"rx0": 392381}),
                    kernel_packets=Counter({"rx0": 811}), kernel_drops=Counter({"rx0": 0}),
                    events=Counter({"http.request": 39, "dns.query": 18}),
                    drops=Counter({'odd"reason\\x': 2, "tcp.stray": 7}), flows=5, sessions=2, workers=2)


def test_render_is_valid_exposition_text() -> None:
    text = render(snapshot())
    assert text.endswith("\n")
    families = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            families[name] = kind
        elif not line.startswith("# HELP "):
            assert SAMPLE.match(line), line
    assert families == {
        "upf_tap_packets_total": "counter", "upf_tap_bytes_total": "counter",
        "upf_tap_kernel_packets_total": "counter", "upf_tap_kernel_drops_total": "counter",
        "upf_tap_events_total": "counter", "upf_tap_drops_total": "counter",
        "upf_tap_flows": "gauge", "upf_tap_sessions": "gauge", "upf_tap_workers": "gauge"}
    assert 'upf_tap_events_total{kind="http.request"} 39' in text
    assert 'upf_tap_drops_total{reason="odd\\"reason\\\\x"} 2' in text  # escaped per the format
    assert "upf_tap_sessions 2" in text and "upf_tap_flows 5" in text


def test_server_serves_the_latest_snapshot() -> None:
    current = {"s": snapshot()}
    m = MetricsServer("127.0.0.1", 0, lambda: current["s"]).start()
    try:
        url = f"http://127.0.0.1:{m.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.headers["Content-Type"] == CONTENT_TYPE
            assert 'upf_tap_packets_total{iface="rx0"} 811' in r.read().decode()
        current["s"] = Snapshot(packets=Counter({"rx0": 900}))
        with urllib.request.urlopen(url, timeout=5) as r:
            assert 'upf_tap_packets_total{iface="rx0"} 900' in r.read().decode()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{m.port}/other", timeout=5)
        assert e.value.code == 404
    finally:
        m.close()
