"""UE sources, per the paper: created when a UE first matches a configured rule (it reached
the main application), expired after idle time or when its PDU session goes down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from detector.cloudevent import source_uri


@dataclass(slots=True)
class Source:
    key: str
    source: str
    created: float      # wall-clock seconds
    last_seen: float
    rule: str
    ue: dict[str, Any]
    dirty: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "source": self.source, "created": self.created,
                "last_seen": self.last_seen, "rule": self.rule, "ue": self.ue}


class SourceTracker:
    def __init__(self, detector_id: str, idle_timeout: float) -> None:
        self.detector_id = detector_id
        self.idle_timeout = idle_timeout
        self.by_key: dict[str, Source] = {}

    def uri(self, key: str) -> str:
        return source_uri(self.detector_id, key)

    def load(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self.by_key[r["key"]] = Source(r["key"], r["source"], r["created"], r["last_seen"], r["rule"], r["ue"])

    def create(self, key: str, ue: dict[str, Any], rule: str, now: float) -> Source | None:
        """The new source, or None if the UE already has one."""
        if key in self.by_key:
            return None
        s = self.by_key[key] = Source(key, self.uri(key), now, now, rule, dict(ue))
        return s

    def touch(self, key: str, now: float) -> None:
        s = self.by_key.get(key)
        if s is not None and now > s.last_seen:
            s.last_seen = now
            s.dirty = True

    def remove(self, key: str) -> Source | None:
        return self.by_key.pop(key, None)

    def put_back(self, s: Source) -> None:
        """Undo a `remove` or `idle` whose consequences could not be stored (unless the key has a newer source)."""
        self.by_key.setdefault(s.key, s)

    def idle(self, now: float) -> list[Source]:
        """Remove and return the sources idle for longer than idle_timeout."""
        gone = [s for s in self.by_key.values() if now - s.last_seen > self.idle_timeout]
        for s in gone:
            del self.by_key[s.key]
        return gone

    def take_dirty(self) -> list[Source]:
        out = [s for s in self.by_key.values() if s.dirty]
        for s in out:
            s.dirty = False
        return out

    def listing(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in sorted(self.by_key.values(), key=lambda s: s.created)]
