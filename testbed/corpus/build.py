"""A corpus of real application traffic as N3: public captures, tunnelled, with tshark's view cached.

    testbed corpus build --out DIR [--source OWNER/NAME[:FOLDER]] ...

Captures come from git snapshots of public repositories (what ``fetch`` brings: a bare git
directory ``<root>/<owner>+<name>/repo``, read with ``git cat-file``, no work tree needed).
Nothing is committed to this project: the corpus lives in DIR, described by
``manifest.json`` (each capture's repository, commit, path and SHA-256, so that anyone can
rebuild the same corpus) and holds, per capture, its N3 version (``n3/<name>.pcap``) and
tshark's events in it (``oracle/<name>.json``, tagged with tshark's version and the
oracle's filter: a different one recomputes them). ``all.pcap`` lays every capture end to end, an hour apart, for the
benchmark.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from testbed.corpus.oracle import (
    keys_from_json,
    keys_to_json,
    oracle_events,
    oracle_signature,
    tshark_version,
)
from testbed.corpus.tunnel import Tunneller, tunnel_file, write_pcap_header, write_record
from upf_tap.capture.common import CaptureError
from upf_tap.capture.pcapfile import read_packets

# The public test corpora read by default: folders of real captures (many protocols, real
# clients and servers) in projects whose tests decode them. A source absent under the
# snapshot root is skipped with a warning.
DEFAULT_SOURCES = (
    "ntop/nDPI:tests/cfgs/default/pcap",
    "zeek/zeek:testing/btest/Traces",
    "OISF/suricata-verify:tests",
)
DEFAULT_ROOT = "/work/.mirror"
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz", ".trace")
MAX_CAPTURE_BYTES = 20 * 1024 * 1024
MAGICS = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x0a\x0d\x0d\x0a")
MERGE_GAP_NS = 3600 * 1_000_000_000  # past every idle timeout: no flow of one capture meets the next
MANIFEST = "manifest.json"
Progress = Callable[[str], None]


class CorpusError(Exception):
    """A corpus cannot be built or read (one line, for the CLI)."""


def snapshot_dir(root: Path, repo: str) -> Path:
    return root / repo.replace("/", "+") / "repo"


def _git(gitdir: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(gitdir), *args], capture_output=True, text=True,
                          errors="surrogateescape", check=True).stdout


def list_captures(gitdir: Path, folder: str) -> tuple[str, list[tuple[str, str, int]]]:
    """(commit, [(path, blob, size)]) of the capture files under ``folder`` (the whole tree
    when empty) at HEAD."""
    commit = _git(gitdir, "rev-parse", "HEAD").strip()
    out = []
    # -z: paths as they are (git quotes one with a space or a non-ASCII letter otherwise);
    # no pathspec for the whole tree (git refuses an empty one)
    where = ["--", folder] if folder.strip("/") else []
    for line in _git(gitdir, "ls-tree", "-r", "-l", "-z", commit, *where).split("\0"):
        if not line:
            continue
        meta, path = line.split("\t", 1)
        _mode, kind, blob, size = meta.split()
        if kind == "blob" and path.lower().endswith(CAPTURE_SUFFIXES):
            out.append((path, blob, int(size) if size.isdigit() else -1))  # -1: not in the snapshot
    return commit, out


def capture_name(repo: str, path: str) -> str:
    stem = path
    for suffix in (".gz", ".pcapng", ".pcap", ".cap", ".trace"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return (repo.split("/")[1] + "__" + stem).replace("/", "__").replace(" ", "_")


def _blob(gitdir: Path, blob: str) -> bytes:
    return subprocess.run(["git", "--git-dir", str(gitdir), "cat-file", "blob", blob], capture_output=True,
                          check=True).stdout


def _is_capture(data: bytes) -> bool:
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)[:4]
        except (OSError, EOFError):
            return False
    return data[:4] in MAGICS


def build(out: Path, sources: list[str], root: Path, max_bytes: int = MAX_CAPTURE_BYTES,
          progress: Progress | None = None, jobs: int = 2) -> dict[str, Any]:
    """Build (or bring up to date) the corpus in ``out``; returns the manifest."""
    say = progress or (lambda _m: None)
    (out / "n3").mkdir(parents=True, exist_ok=True)
    (out / "oracle").mkdir(exist_ok=True)
    manifest: dict[str, Any] = {"tool": "testbed corpus build", "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "sources": [], "captures": [], "skipped": []}
    seen: set[str] = set()
    names: set[str] = set()
    for source in sources:
        repo, _, folder = source.partition(":")
        gitdir = snapshot_dir(root, repo)
        if not gitdir.is_dir():
            say(f"warning: {repo}: no snapshot at {gitdir} (fetch github:{repo}); skipped")
            manifest["skipped"].append({"repo": repo, "reason": f"no snapshot at {gitdir}"})
            continue
        commit, files = list_captures(gitdir, folder)
        manifest["sources"].append({"repo": repo, "folder": folder, "commit": commit, "captures": len(files)})
        say(f"{repo} @ {commit[:12]}: {len(files)} capture files under {folder or '/'}")
        for i, (path, blob, size) in enumerate(files, 1):
            entry = {"repo": repo, "commit": commit, "path": path}
            if size < 0:
                manifest["skipped"].append({**entry, "reason": "absent from the snapshot"})
                continue
            if size > max_bytes:
                manifest["skipped"].append({**entry, "reason": f"{size} bytes > {max_bytes}"})
                continue
            data = _blob(gitdir, blob)
            if not _is_capture(data):
                manifest["skipped"].append({**entry, "reason": "not a pcap or pcapng file"})
                continue
            sha = hashlib.sha256(data).hexdigest()
            if sha in seen:
                manifest["skipped"].append({**entry, "reason": "same bytes as an earlier capture"})
                continue
            seen.add(sha)
            name = capture_name(repo, path)
            if name in names:  # x.pcap and x.pcapng, "x y.pcap" and x_y.pcap: one name, two captures
                name = f"{name}__{sha[:12]}"
            names.add(name)
            dest = out / "n3" / f"{name}.pcap"
            with tempfile.NamedTemporaryFile(suffix=".cap") as tmp:
                tmp.write(data)
                tmp.flush()
                try:
                    with dest.open("wb") as f:
                        stats, _first, _last = tunnel_file(tmp.name, f)
                except CaptureError as e:
                    stats = Counter({"capture.error": 1})
                    manifest["skipped"].append({**entry, "reason": f"unreadable: {str(e).split(': ', 1)[-1]}"})
                    dest.unlink(missing_ok=True)
                    continue
            if not stats["packets"]:
                manifest["skipped"].append({**entry, "reason": "no IP packet"})
                dest.unlink(missing_ok=True)
                continue
            manifest["captures"].append({"name": name, **entry, "sha256": sha, "bytes": size,
                                         "frames": stats["frames"], "packets": stats["packets"],
                                         "ues": stats["ues"],
                                         "dropped": {k: v for k, v in sorted(stats.items())
                                                     if k.startswith(("dropped.", "capture."))}})
            if i % 50 == 0:
                say(f"  {i}/{len(files)} ...")
    manifest["packets"] = sum(c["packets"] for c in manifest["captures"])
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    say(f"{len(manifest['captures'])} captures, {manifest['packets']} packets in {out / 'n3'}; "
        f"{len(manifest['skipped'])} skipped (see {MANIFEST})")
    refresh_oracle(out, manifest, progress, jobs)
    merge(out, manifest, out / "all.pcap")
    say(f"merged: {out / 'all.pcap'}")
    return manifest


def load(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / MANIFEST).read_text())
    except FileNotFoundError:
        raise CorpusError(f"{out}: no {MANIFEST} (testbed corpus build --out {out})") from None
    except json.JSONDecodeError as e:
        raise CorpusError(f"{out / MANIFEST}: not JSON: {e}") from None


def oracle_of(out: Path, name: str) -> Any:
    """tshark's keys for one capture, from the cache if it was made by this tshark with this
    oracle's filter and fields, else None."""
    path = out / "oracle" / f"{name}.json"
    try:
        cached = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not isinstance(cached, dict) or cached.get("oracle") != oracle_signature():
        return None
    return keys_from_json(cached["events"])


def refresh_oracle(out: Path, manifest: dict[str, Any], progress: Progress | None = None, jobs: int = 2) -> int:
    """Run tshark on every capture whose cached oracle is missing or from another tshark."""
    say = progress or (lambda _m: None)
    todo = [c["name"] for c in manifest["captures"] if oracle_of(out, c["name"]) is None]
    if not todo:
        return 0
    say(f"tshark on {len(todo)} captures ({tshark_version()}) ...")
    signature = oracle_signature()

    def one(name: str) -> None:
        keys = oracle_events(out / "n3" / f"{name}.pcap")
        (out / "oracle" / f"{name}.json").write_text(json.dumps({"oracle": signature, "events": keys_to_json(keys)}))

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # tshark processes, not Python threads, do the work
        for i, _ in enumerate(pool.map(one, todo), 1):
            if i % 100 == 0:
                say(f"  {i}/{len(todo)} ({time.monotonic() - t0:.0f} s)")
    return len(todo)


def captures(out: Path, manifest: dict[str, Any]) -> Iterator[tuple[str, Path]]:
    for c in manifest["captures"]:
        yield c["name"], out / "n3" / f"{c['name']}.pcap"


def merge(out: Path, manifest: dict[str, Any], dest: Path) -> int:
    """Every capture of the corpus in one file, end to end and an hour apart. Returns packets."""
    total = 0
    clock = 0
    with dest.open("wb") as f:
        write_pcap_header(f)
        for _name, path in captures(out, manifest):
            pkts = list(read_packets(path))
            if not pkts:
                continue
            first = min(ts for ts, _lt, _fr in pkts)
            last = max(ts for ts, _lt, _fr in pkts)
            shift = clock - first
            for ts, _lt, frame in pkts:
                write_record(f, ts + shift, frame)
            total += len(pkts)
            clock += (last - first) + MERGE_GAP_NS
    return total


def default_root() -> Path:
    return Path(os.environ.get("MEC_UPSTREAM", DEFAULT_ROOT))


def stderr_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


__all__ = ["DEFAULT_SOURCES", "CorpusError", "Tunneller", "build", "captures", "load", "merge", "oracle_of",
           "refresh_oracle"]
