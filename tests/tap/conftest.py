from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def run_read(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``upf-tap read`` as a user would, in a subprocess."""
    return subprocess.run([sys.executable, "-m", "upf_tap", "read", *map(str, args)],
                          capture_output=True, text=True, check=check, timeout=300)


def read_events(*args: str | Path) -> list[dict]:
    res = run_read(*args)
    return [json.loads(line) for line in res.stdout.splitlines()]


@pytest.fixture(scope="session")
def app_event_schema(shared: Path) -> dict:
    return json.loads((shared / "schemas" / "app-event.schema.json").read_text())
