"""Shared test fixtures: where the read-only captures and schemas live, and skips."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MEC_SHARED", REPO.parent / "shared")).resolve()
CAPTURES = SHARED / "captures"
SCHEMAS = SHARED / "schemas"


def pytest_configure(config: pytest.Config) -> None:
    if not CAPTURES.is_dir():
        raise pytest.UsageError(f"shared captures not found at {CAPTURES} (set MEC_SHARED)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    docker_ok = shutil.which("docker") is not None and Path("/var/run/docker.sock").exists()
    kind_ok = shutil.which("kind") is not None
    root = os.geteuid() == 0
    for item in items:
        # markers, not keywords: keywords also hold directory names (tests/lab)
        if item.get_closest_marker("lab") and not (docker_ok and kind_ok):
            item.add_marker(pytest.mark.skip(reason="lab test: needs a Docker engine and kind (none here)"))
        if item.get_closest_marker("root") and not root:
            item.add_marker(pytest.mark.skip(reason="needs root for network namespaces"))


@pytest.fixture(scope="session")
def captures() -> Path:
    return CAPTURES


@pytest.fixture(scope="session")
def shared() -> Path:
    return SHARED
