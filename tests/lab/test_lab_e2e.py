"""The real lab end to end on a workstation: `testbed lab up`, `smoke`, `down` (needs Docker and kind)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testbed.lab import layout as L


def lab(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed.lab", *args], cwd=L.REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_up_smoke_down() -> None:
    try:
        up = lab("up", timeout=2400)
        assert up.returncode == 0, up.stderr[-4000:]
        status = lab("status", timeout=120)
        assert status.returncode == 0 and "ue1" in status.stdout
        smoke = lab("smoke", timeout=600)
        assert smoke.returncode == 0, smoke.stderr[-4000:]
    finally:
        down = lab("down", timeout=600)
    assert down.returncode == 0, down.stderr[-4000:]
