"""Spool: the on-disk queue of AppEvent lines between the tap and the detector.

With ``upf-tap live --spool DIR`` every event line goes through this append-only log
before it is POSTed, so neither a long detector outage nor a crash of the tap (kill -9
included) loses what was spooled; a restart with the same DIR sends what the detector
has not acknowledged yet, and nothing it has.

On disk (DIR):

* ``<16-digit index>.seg``: segment files, appended to in index order. Each starts with
  the 8-byte magic ``MECSPL1\\n``, then records: ``<u32 length><u32 CRC-32 of the payload>``
  (little endian) followed by the payload, one serialised event line (its newline
  included). A segment is sealed once it reaches the segment size and a new one begins.
* ``committed``: ``"<segment> <offset>\\n"``, the position of the first record the
  detector has not acknowledged. Replaced atomically (write ``committed.tmp``, fsync,
  rename, fsync DIR) after each 2xx; segments wholly before it are deleted.
* ``lock``: flock'ed while a process uses the spool (a second one is refused).

Recovery (``Spool(DIR)``): segments before the committed one are deleted (acknowledged,
the delete was cut short); the last segment is checked record by record and cut at the
first record that is short or fails its checksum (a torn tail: counted in ``torn_tails``
and ``torn_bytes``). A bad record met later while reading an older segment is counted
(``torn_tails`` if it runs past the end of its file, else ``corrupt``) and the rest of
that segment is skipped: the reader never crashes and never stalls on one.

Fsync policy (``fsync=``):

* ``batch`` (default): each batch the writer appends is written with one ``write`` and
  made durable with one ``fdatasync`` before the reader may send it; new segments and
  the committed file are fsynced, and so is DIR after a create or rename. A power loss
  then loses at most the batch being written (and the events not yet handed over).
* ``never``: no fsync at all; the kernel writes back in its own time (about 30 s). This
  survives a crash or kill -9 of the tap (the data is in the page cache) but not a
  power loss or kernel crash, after which a torn tail is found and cut as above and
  acknowledged events may be sent again (the detector dedupes them by id).

Events handed to the sender but not yet written (microseconds to milliseconds of
traffic, like the frames still in the capture ring) are the only ones a kill -9 loses.

Bounds: the segments on disk never exceed ``max_bytes`` (headers and framing
included). When an event does not fit, it is refused: counted in ``refused`` and warned
about at most every 5 s. Disk space is freed a segment at a time, when the detector has
acknowledged all of it, so up to one segment (1/16 of the bound, at most 64 MiB) of
acknowledged events can still take room.

Threads: one writer (``append``) and one reader (``read`` and ``commit``), each its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from upf_tap.constants import (
    DEFAULT_SPOOL_FSYNC,
    DEFAULT_SPOOL_MAX_BYTES,
    MIN_SPOOL_SEGMENT_BYTES,
    SPOOL_SEGMENT_BYTES,
    WARN_EVERY,
)

MAGIC = b"MECSPL1\n"              # segment header: format version 1
HEADER = len(MAGIC)
RECORD = struct.Struct("<II")      # payload length, CRC-32 of the payload
FRAME = RECORD.size
MAX_RECORD = 16 * 1024 * 1024      # a longer length field is garbage, not an event
READ_CHUNK = 1 << 20               # bytes read from a segment at once
SEGMENT_SUFFIX = ".seg"
COMMITTED = "committed"
LOCK = "lock"
FSYNC_POLICIES = ("batch", "never")
TORN, CORRUPT = "torn", "corrupt"

# Spool.stats keys, all present from the start (read by the metrics thread while others write)
COUNTERS = ("spooled", "refused", "write_failed", "torn_tails", "torn_bytes", "corrupt")
LOSSES = ("refused", "write_failed")  # counters of events that were lost


class SpoolError(Exception):
    """The spool directory cannot be used (one-line reason)."""


@dataclass(frozen=True, order=True)
class Position:
    """Where a record starts in the spool: ordered as the records are."""

    segment: int
    offset: int


@dataclass
class Batch:
    lines: list[bytes]    # event lines, in spool order
    start: Position
    end: Position         # just past the last line: commit(end) acknowledges the batch


def _warn(msg: str) -> None:
    print(f"upf-tap live: {msg}", file=sys.stderr, flush=True)


def default_segment_bytes(max_bytes: int) -> int:
    return max(MIN_SPOOL_SEGMENT_BYTES, min(SPOOL_SEGMENT_BYTES, max_bytes // 16))


def frame(line: bytes) -> bytes:
    """One record: length, checksum, payload."""
    return RECORD.pack(len(line), zlib.crc32(line)) + line


def scan(fd: int, off: int, limit: int, max_records: float, out: list[bytes] | None) -> tuple[int, str | None]:
    """Check (and with ``out``, collect) records of the segment open on ``fd`` from ``off`` to
    ``limit``, at most ``max_records``: (offset after the last good record, TORN/CORRUPT/None)."""
    buf, base = b"", off  # buf holds the segment's bytes [base, base + len(buf))
    count = 0
    while count < max_records and off < limit:
        if limit - off < FRAME:
            return off, TORN
        if off + FRAME > base + len(buf):
            buf, base = os.pread(fd, min(READ_CHUNK, limit - off), off), off
            if len(buf) < FRAME:
                return off, TORN  # the file is shorter than it was said to be
        length, crc = RECORD.unpack_from(buf, off - base)
        if not 0 < length <= MAX_RECORD:
            return off, CORRUPT
        end = off + FRAME + length
        if end > limit:
            return off, TORN
        if end > base + len(buf):
            buf, base = os.pread(fd, min(max(READ_CHUNK, end - off), limit - off), off), off
            if end > base + len(buf):
                return off, TORN
        payload = buf[off - base + FRAME:end - base]
        if zlib.crc32(payload) != crc:
            return off, CORRUPT
        if out is not None:
            out.append(payload)
        count += 1
        off = end
    return off, None


class Spool:
    """An append-only, size-bounded, crash-safe queue of event lines in ``directory``."""

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int = DEFAULT_SPOOL_MAX_BYTES,
                 segment_bytes: int | None = None, fsync: str = DEFAULT_SPOOL_FSYNC,
                 warn: Callable[[str], None] = _warn) -> None:
        if fsync not in FSYNC_POLICIES:
            raise SpoolError(f"spool fsync policy must be one of {', '.join(FSYNC_POLICIES)}: {fsync!r}")
        if max_bytes < HEADER + FRAME + 1:
            raise SpoolError(f"spool size bound too small: {max_bytes} bytes")
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or default_segment_bytes(max_bytes)
        self.durable = fsync == "batch"
        self.warn = warn
        self.stats: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self._lock = threading.Lock()     # guards _sizes, _total, _head, _committed
        self._sizes: dict[int, int] = {}  # segment index -> bytes of whole records (header included)
        self._total = 0                   # sum of _sizes: bytes on disk
        self._head = 0                    # the segment being appended to
        self._committed = Position(0, HEADER)
        self._wfd = -1                    # the head, open for appending (writer thread)
        self._rfd: tuple[int, int] | None = None  # (segment, fd) the reader has open
        self._last_refusal_warning = -WARN_EVERY
        self._closed = False
        self._lock_fd = self._take_lock()
        try:
            self._recover()
        except SpoolError:
            self.close()
            raise
        except OSError as e:
            self.close()
            raise SpoolError(f"cannot use spool {self.dir}: {e}") from e

    # -- opening ------------------------------------------------------------------
    def _take_lock(self) -> int:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise SpoolError(f"cannot use spool {self.dir}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise SpoolError(f"spool {self.dir} is in use by another process") from e
        return fd

    def _recover(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.dir / f"{COMMITTED}.tmp")
        committed = self._read_committed()
        segments = self._list_segments()
        for seg in [s for s in segments if s < committed.segment]:
            os.unlink(self._path(seg))  # acknowledged: a delete cut short by the crash
            segments.remove(seg)
        if not segments:
            self._new_segment(max(committed.segment + 1, 1))
        else:
            for seg in segments[:-1]:
                self._open_sealed(seg)
            self._open_head(segments[-1])
        self._total = sum(self._sizes.values())
        if committed.segment in self._sizes:
            self._committed = Position(committed.segment, min(committed.offset, self._sizes[committed.segment]))
        else:  # everything up to the end of a deleted segment was acknowledged
            self._committed = Position(min(self._sizes), HEADER)

    def _read_committed(self) -> Position:
        try:
            text = (self.dir / COMMITTED).read_text(encoding="ascii")
        except FileNotFoundError:
            return Position(0, HEADER)
        except (OSError, UnicodeDecodeError) as e:
            raise SpoolError(f"cannot read {self.dir / COMMITTED}: {e}") from e
        try:
            seg, off = (int(x) for x in text.split())
        except ValueError:
            # never written torn (it is renamed into place); sending everything again is safe
            self.warn(f"spool {self.dir}: unreadable {COMMITTED} file; resending all spooled events")
            return Position(0, HEADER)
        return Position(seg, max(off, HEADER))

    def _list_segments(self) -> list[int]:
        out = []
        for p in self.dir.iterdir():
            if p.suffix == SEGMENT_SUFFIX and p.stem.isdigit():
                out.append(int(p.stem))
        return sorted(out)

    def _open_head(self, seg: int) -> None:
        """Make ``seg`` the head: check its records, cut a torn tail, open it for appending."""
        fd = os.open(self._path(seg), os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if not self._check_header(seg, fd, size):
                os.ftruncate(fd, 0)
                os.write(fd, MAGIC)
                self._sync(fd)
                size = HEADER
            good, problem = scan(fd, HEADER, size, float("inf"), None)
            if problem is not None:
                os.ftruncate(fd, good)
                self._sync(fd)
                self._count_torn(seg, size - good, at_open=True)
        except BaseException:
            os.close(fd)
            raise
        self._head, self._wfd = seg, fd
        self._sizes[seg] = good

    def _open_sealed(self, seg: int) -> None:
        """Take an older segment as it is (the reader checks its records as it goes)."""
        fd = os.open(self._path(seg), os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            self._sizes[seg] = size if self._check_header(seg, fd, size) else HEADER  # nothing to read
        finally:
            os.close(fd)

    def _check_header(self, seg: int, fd: int, size: int) -> bool:
        """True if the segment starts with the magic; False (counted) if its header is torn."""
        header = os.pread(fd, HEADER, 0)
        if header == MAGIC:
            return True
        if not (MAGIC.startswith(header) or not header.strip(b"\0")):
            raise SpoolError(f"{self._path(seg)} is not a spool segment (bad header)")
        # a crash right after the file was created, or zeros where a power loss left them
        if size:
            self._count_torn(seg, size, at_open=True)
        return False

    def _count_torn(self, seg: int, nbytes: int, *, at_open: bool) -> None:
        self.stats["torn_tails"] += 1
        self.stats["torn_bytes"] += nbytes
        where = "cut" if at_open else "skipped"
        self.warn(f"spool {self.dir}: torn record at the end of segment {seg} ({nbytes} bytes {where}; "
                  f"written when the tap stopped abruptly)")

    # -- writer side --------------------------------------------------------------
    def append(self, lines: Sequence[bytes]) -> int:
        """Append event lines; returns how many were spooled (the others are counted as refused,
        or as write_failed on an I/O error).

        One write (and with fsync "batch", one fdatasync) per segment touched; the lines
        become readable only once durable.
        """
        written = refused = 0
        buf = bytearray()  # framed records not yet written
        in_buf = 0
        try:
            for line in lines:
                cost = FRAME + len(line)
                if not self._fits(buf, cost) and self._head_acknowledged():
                    self._rotate()  # a full spool whose head is all acknowledged: make room
                    with self._lock:
                        self._drop_segments_below(self._head)
                if not self._fits(buf, cost):
                    refused += 1
                    continue
                if self._head_full(buf, cost):
                    self._flush(buf)
                    written, in_buf = written + in_buf, 0
                    buf.clear()
                    self._rotate()
                buf += frame(line)
                in_buf += 1
            self._flush(buf)
            written += in_buf
        except OSError as e:
            self._write_failed(len(lines) - written - refused, e)
        self.stats["spooled"] += written
        if refused:
            self._refuse(refused)
        return written

    def _head_full(self, pending: bytearray, cost: int) -> bool:
        """True if a record of ``cost`` bytes must go to a new segment (the head has records)."""
        size = self._sizes[self._head] + len(pending)
        return size > HEADER and size + cost > self.segment_bytes

    def _fits(self, pending: bytearray, cost: int) -> bool:
        """True if a record of ``cost`` bytes, and the segment header it may need, keep the bound."""
        extra = HEADER if self._head_full(pending, cost) else 0
        return self._total + len(pending) + cost + extra <= self.max_bytes

    def _head_acknowledged(self) -> bool:
        """True when the head holds records and the detector has acknowledged all of them."""
        with self._lock:
            size = self._sizes[self._head]
            return size > HEADER and self._committed == Position(self._head, size)

    def _flush(self, buf: bytearray) -> None:
        """Write ``buf`` at the end of the head, make it durable, then readable."""
        if not buf:
            return
        good = self._sizes[self._head]
        try:
            view = memoryview(buf)
            while view:
                view = view[os.write(self._wfd, view):]
            if self.durable:
                os.fdatasync(self._wfd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._wfd, good)  # no half record for the next append to follow
            raise
        with self._lock:
            self._sizes[self._head] += len(buf)
            self._total += len(buf)

    def _write_failed(self, lines: int, e: OSError) -> None:
        self.stats["write_failed"] += lines
        now = time.monotonic()
        if now - self._last_refusal_warning >= WARN_EVERY:
            self._last_refusal_warning = now
            self.warn(f"spool {self.dir}: cannot write: {e}; {lines} events lost "
                      f"({self.stats['write_failed']} so far)")

    def _refuse(self, n: int) -> None:
        self.stats["refused"] += n
        now = time.monotonic()
        if now - self._last_refusal_warning >= WARN_EVERY:
            self._last_refusal_warning = now
            self.warn(f"spool {self.dir} is full ({self._total} of {self.max_bytes} bytes): refusing new "
                      f"events ({self.stats['refused']} refused so far; the detector must catch up)")

    def _rotate(self) -> None:
        """Seal the head and start the next segment (the old head stays if that fails)."""
        old = self._wfd
        self._new_segment(self._head + 1)
        try:
            if self.durable:
                os.fsync(old)
        finally:
            os.close(old)

    def _new_segment(self, seg: int) -> None:
        fd = os.open(self._path(seg), os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, MAGIC)
            self._sync(fd)
            self._sync_dir()
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(self._path(seg))
            raise
        with self._lock:
            self._head, self._wfd = seg, fd
            self._sizes[seg] = HEADER
            self._total += HEADER

    # -- reader side --------------------------------------------------------------
    def read(self, max_events: int, start: Position | None = None) -> Batch:
        """Up to ``max_events`` lines from ``start`` (default: the first unacknowledged one)."""
        with self._lock:
            pos = start or self._committed
            if self._closed:  # a sender thread that outlived close(): nothing more to read
                return Batch([], pos, pos)
            sizes = dict(self._sizes)
            head = self._head
        lines: list[bytes] = []
        seg, off = pos.segment, pos.offset
        while len(lines) < max_events:
            if seg not in sizes:  # deleted (acknowledged) under us: go on with the next one
                later = [s for s in sizes if s > seg]
                if not later:
                    break
                seg, off = min(later), HEADER
                continue
            limit = sizes[seg]
            if off < limit:
                off, problem = scan(self._reader_fd(seg), off, limit, max_events - len(lines), lines)
                if problem is not None:
                    self._bad_record(seg, off, limit, problem)
                    off = limit
                continue
            if seg == head:
                break  # caught up with the writer
            seg, off = min(s for s in sizes if s > seg), HEADER
        if seg != head and seg in sizes and off >= sizes[seg]:
            seg, off = min(s for s in sizes if s > seg), HEADER  # so that committing the batch frees seg
        return Batch(lines, pos, Position(seg, off))

    def _reader_fd(self, seg: int) -> int:
        if self._rfd is not None and self._rfd[0] == seg:
            return self._rfd[1]
        self._close_reader()
        fd = os.open(self._path(seg), os.O_RDONLY | os.O_CLOEXEC)
        self._rfd = (seg, fd)
        return fd

    def _close_reader(self) -> None:
        if self._rfd is not None:
            os.close(self._rfd[1])
            self._rfd = None

    def _bad_record(self, seg: int, off: int, limit: int, problem: str) -> None:
        if problem == TORN:
            self._count_torn(seg, limit - off, at_open=False)
            return
        self.stats["corrupt"] += 1
        self.warn(f"spool {self.dir}: record at offset {off} of segment {seg} fails its checksum; "
                  f"skipping the {limit - off} bytes after it in that segment")

    def commit(self, end: Position) -> None:
        """The detector acknowledged everything before ``end``: record it durably, free segments."""
        with self._lock:
            if self._closed or end <= self._committed:
                return
        tmp = self.dir / f"{COMMITTED}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, f"{end.segment} {end.offset}\n".encode())
            self._sync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.dir / COMMITTED)
        self._sync_dir()
        with self._lock:
            self._committed = end
            self._drop_segments_below(end.segment)
        if self._rfd is not None and self._rfd[0] < end.segment:
            self._close_reader()

    def _drop_segments_below(self, seg: int) -> None:
        """Delete segments before ``seg`` (all acknowledged); the caller holds the lock."""
        for s in [s for s in self._sizes if s < seg]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(s))
            self._total -= self._sizes.pop(s)

    # -- state --------------------------------------------------------------------
    @property
    def committed(self) -> Position:
        with self._lock:
            return self._committed

    def bytes_on_disk(self) -> int:
        return self._total

    def pending_bytes(self) -> int:
        """Bytes of records not yet acknowledged (framing included)."""
        with self._lock:
            data = self._total - HEADER * len(self._sizes)
            if self._committed.segment in self._sizes:
                data -= self._committed.offset - HEADER
            return max(data, 0)

    def counters(self) -> dict[str, int]:
        c = dict(self.stats)
        c["bytes"] = self._total
        c["pending_bytes"] = self.pending_bytes()
        c["segments"] = len(self._sizes)
        return c

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._wfd >= 0:
            with contextlib.suppress(OSError):
                if self.durable:
                    os.fsync(self._wfd)
            os.close(self._wfd)
            self._wfd = -1
        self._close_reader()
        os.close(self._lock_fd)  # releases the flock

    # -- helpers ------------------------------------------------------------------
    def _path(self, seg: int) -> Path:
        return self.dir / f"{seg:016d}{SEGMENT_SUFFIX}"

    def _sync(self, fd: int) -> None:
        if self.durable:
            os.fsync(fd)

    def _sync_dir(self) -> None:
        """Make a create, rename or delete in the directory durable."""
        if not self.durable:
            return
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
