"""Where the sample functions keep what they record: files under $FN_STATE_DIR.

In a container the root filesystem can be read-only; /tmp (an emptyDir in the
Knative Service) is the default. Writes are serialised: the server is threaded.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()


def state_dir() -> Path:
    path = Path(os.environ.get("FN_STATE_DIR", "/tmp/fn-state"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n")


def append_jsonl(name: str, record: dict[str, Any]) -> None:
    with _LOCK:
        _write(state_dir() / name, record)


# (file, key field) -> the key values already in that file: read once per process, so a
# redelivery check costs a set lookup rather than a read of the whole file per event
_SEEN: dict[tuple[Path, str], set[Any]] = {}


def append_once(name: str, key: str, record: dict[str, Any]) -> bool:
    """Append unless a record with the same `key` value is already there; True if written."""
    path = state_dir() / name
    with _LOCK:
        seen = _SEEN.get((path, key))
        if seen is None:
            seen = _SEEN[(path, key)] = {r.get(key) for r in _read(path)}
        if record[key] in seen:
            return False
        _write(path, record)
        seen.add(record[key])
        return True


def read_jsonl(name: str) -> list[dict[str, Any]]:
    with _LOCK:
        return _read(state_dir() / name)
