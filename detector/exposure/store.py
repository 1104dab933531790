"""Subscriptions in SQLite, beside the outbox (`<outbox stem>-exposure.db`): they survive a restart.

Blocking methods: run them on the exposure service's database thread. Create, modify and delete
are fsynced before the answer (a 201 or 204 is durable); the count of reports sent is updated
without waiting for the disk (after a power loss a PERIODIC subscription may send up to one report
more than maxReports allowed, never fewer).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detector.outbox import OutboxError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ee_subscriptions (
  id TEXT PRIMARY KEY,
  body TEXT NOT NULL,            -- the UpfEventSubscription (JSON) as created or last modified
  created REAL NOT NULL,         -- Unix time
  reports INTEGER NOT NULL DEFAULT 0
);
"""


def store_path(outbox: str) -> str:
    """The subscription database of the detector whose outbox is `outbox`."""
    p = Path(outbox)
    return str(p.with_name(f"{p.stem}-exposure.db"))


@dataclass(slots=True)
class StoredSubscription:
    id: str
    body: dict[str, Any]
    created: float
    reports: int


class SubscriptionStore:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise OutboxError(f"subscription store {path}: {e}") from None
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.Error as e:      # not a database, disk full, read-only: the detector does not start
            self.db.close()
            raise OutboxError(f"subscription store {path}: {e}") from None

    def close(self) -> None:
        self.db.close()

    def _write(self, sql: str, args: tuple[Any, ...], durable: bool) -> None:
        self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self.db.execute(sql, args)

    def load(self) -> list[StoredSubscription]:
        cur = self.db.execute("SELECT id, body, created, reports FROM ee_subscriptions ORDER BY created")
        return [StoredSubscription(i, json.loads(b), c, r) for i, b, c, r in cur]

    def put(self, s: StoredSubscription) -> None:
        self._write("INSERT INTO ee_subscriptions(id, body, created, reports) VALUES (?,?,?,?) "
                    "ON CONFLICT(id) DO UPDATE SET body=excluded.body, reports=excluded.reports",
                    (s.id, json.dumps(s.body, separators=(",", ":")), s.created, s.reports), durable=True)

    def delete(self, sub_id: str) -> None:
        self._write("DELETE FROM ee_subscriptions WHERE id=?", (sub_id,), durable=True)

    def set_reports(self, sub_id: str, reports: int) -> None:
        self._write("UPDATE ee_subscriptions SET reports=? WHERE id=?", (reports, sub_id), durable=False)
