"""The durable outbox: SQLite in WAL mode. A 202 is answered only after `commit` returned.

Every method is blocking and must run on the detector's single database thread. Rows are
deleted once the sink accepted them (in batches: a crash in between means a redelivery, never
a loss: at-least-once). One process owns an outbox at a time (a lock file says who).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
  seq INTEGER PRIMARY KEY,        -- ingest order; per-UE delivery follows it
  id TEXT NOT NULL,               -- CloudEvent id
  ue TEXT NOT NULL,               -- ordering key (SUPI, UE IP or '')
  headers TEXT NOT NULL,          -- JSON object of HTTP headers
  body BLOB NOT NULL,
  created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letter (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL,
  ue TEXT NOT NULL,
  headers TEXT NOT NULL,
  body BLOB NOT NULL,
  status INTEGER,                 -- HTTP status of the last answer (NULL: no answer)
  response TEXT,                  -- the answer's body (capped)
  reason TEXT NOT NULL,
  at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ue_locations (
  key TEXT PRIMARY KEY,           -- mobility: the UE (SUPI, else IP)
  state TEXT NOT NULL             -- JSON (detector/mobility.py UeState.dump)
);
CREATE TABLE IF NOT EXISTS sources (
  key TEXT PRIMARY KEY,
  source TEXT NOT NULL,
  created REAL NOT NULL,
  last_seen REAL NOT NULL,
  rule TEXT NOT NULL,
  ue TEXT NOT NULL
);
"""
RESPONSE_CAP = 2048
# columns added after the first release: (table, column, declaration), added to older outboxes at open
_ADDED_COLUMNS = (("outbox", "dest", "TEXT NOT NULL DEFAULT ''"),       # the site whose sink takes the row
                  ("dead_letter", "dest", "TEXT NOT NULL DEFAULT ''"))  # ('' : the default sink)


class OutboxError(RuntimeError):
    pass


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back what is left of a failed transaction. SQLite may have rolled it back itself (it
    does on SQLITE_FULL and some I/O errors), and a second ROLLBACK would then raise "no
    transaction is active", hiding the error that matters."""
    if db.in_transaction:
        db.execute("ROLLBACK")


@dataclass(slots=True)
class Row:
    seq: int
    id: str
    ue: str
    headers: dict[str, str]
    body: bytes
    headers_json: str = ""   # the headers as stored (made on the event loop, not on the DB thread)
    dest: str = ""           # the site whose sink takes it (mobility); "": the default sink


class Outbox:
    def __init__(self, path: str, durability: str = "full") -> None:
        self.path = path
        self._ckpt: sqlite3.Connection | None = None
        try:
            self._lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutboxError(f"cannot open outbox {path}: {e.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise OutboxError(f"outbox {path} is in use by another detector") from None
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self._full = durability == "full"
            self._synced_full = False
            self.db.execute("PRAGMA synchronous=NORMAL")
            # checkpoints run from another connection on another thread (see checkpoint()), so a
            # commit never waits for the WAL to be copied back; this is only the backstop
            self.db.execute("PRAGMA wal_autocheckpoint=20000")
            self.db.executescript(_SCHEMA)
            for table, column, decl in _ADDED_COLUMNS:
                have = {r[1] for r in self.db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        except sqlite3.DatabaseError as e:
            os.close(self._lock_fd)
            raise OutboxError(f"outbox {path}: {e}") from None

    def _durable(self, full: bool) -> None:
        """fsync the commits that make a 202 true; deletes and bookkeeping need not wait for the disk
        (losing one on power loss only means a redelivery)."""
        want = full and self._full
        if want != self._synced_full:
            self.db.execute(f"PRAGMA synchronous={'FULL' if want else 'NORMAL'}")
            self._synced_full = want

    def checkpoint(self) -> None:
        """A PASSIVE WAL checkpoint from a second connection: runs beside the writer, never blocks it.
        Call it from one thread only (not the writer's)."""
        if self._ckpt is None:
            self._ckpt = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def close(self) -> None:
        try:
            if self._ckpt is not None:
                self._ckpt.close()
                self._ckpt = None
            self.db.close()
        finally:
            os.close(self._lock_fd)

    def max_seq(self) -> int:
        a = self.db.execute("SELECT MAX(seq) FROM outbox").fetchone()[0] or 0
        b = self.db.execute("SELECT MAX(seq) FROM dead_letter").fetchone()[0] or 0
        return max(a, b)

    def pending(self) -> list[Row]:
        cur = self.db.execute("SELECT seq, id, ue, headers, body, dest FROM outbox ORDER BY seq")
        return [Row(s, i, u, json.loads(h), bytes(b), h, d) for s, i, u, h, b, d in cur]

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def commit(self, rows: list[Row], upsert_sources: list[dict[str, Any]] = (),  # type: ignore[assignment]
               delete_sources: list[str] = (),  # type: ignore[assignment]
               locations: list[tuple[str, str | None]] = ()) -> None:  # type: ignore[assignment]
        """One transaction: new CloudEvents plus source-table and UE-location changes (`locations`:
        (key, state JSON), None deletes). Durable on return."""
        now = time.time()
        db = self.db
        self._durable(bool(rows))
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO outbox(seq, id, ue, headers, body, created, dest) VALUES (?,?,?,?,?,?,?)",
                [(r.seq, r.id, r.ue, r.headers_json or json.dumps(r.headers), r.body, now, r.dest) for r in rows])
            if upsert_sources:
                db.executemany(
                    "INSERT INTO sources(key, source, created, last_seen, rule, ue) VALUES (?,?,?,?,?,?) "
                    "ON CONFLICT(key) DO UPDATE SET last_seen=excluded.last_seen",
                    [(s["key"], s["source"], s["created"], s["last_seen"], s["rule"], json.dumps(s["ue"]))
                     for s in upsert_sources])
            if delete_sources:
                db.executemany("DELETE FROM sources WHERE key=?", [(k,) for k in delete_sources])
            if locations:
                db.executemany("INSERT INTO ue_locations(key, state) VALUES (?,?) "
                               "ON CONFLICT(key) DO UPDATE SET state=excluded.state",
                               [(k, v) for k, v in locations if v is not None])
                db.executemany("DELETE FROM ue_locations WHERE key=?", [(k,) for k, v in locations if v is None])
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    def ack(self, seqs: list[int]) -> None:
        db = self.db
        self._durable(False)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM outbox WHERE seq=?", [(s,) for s in seqs])
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    def dead_letter(self, row: Row, status: int | None, response: bytes, reason: str) -> None:
        db = self.db
        self._durable(False)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT OR REPLACE INTO dead_letter(seq, id, ue, headers, body, status, response, reason, at, dest) "
                "VALUES (?,?,?,?,?,?,?,?,?,?)",
                (row.seq, row.id, row.ue, json.dumps(row.headers), row.body, status,
                 response[:RESPONSE_CAP].decode("utf-8", "replace"), reason, time.time(), row.dest))
            db.execute("DELETE FROM outbox WHERE seq=?", (row.seq,))
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        cur = self.db.execute(
            "SELECT seq, id, ue, status, response, reason, at FROM dead_letter ORDER BY seq DESC LIMIT ?", (limit,))
        return [dict(zip(("seq", "id", "ue", "status", "response", "reason", "at"), r, strict=True)) for r in cur]

    def dead_letter_count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM dead_letter").fetchone()[0]

    def locations(self) -> list[tuple[str, str]]:
        """The mobility table as stored: (key, state JSON)."""
        return [(k, v) for k, v in self.db.execute("SELECT key, state FROM ue_locations")]

    def sources(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT key, source, created, last_seen, rule, ue FROM sources")
        return [{"key": k, "source": s, "created": c, "last_seen": ls, "rule": r, "ue": json.loads(u)}
                for k, s, c, ls, r, u in cur]
