"""Facts about the real programs the lab runs, and access to their sources for re-checking them.

Each file in tests/lab/facts/ records what a pinned upstream program reads or ships (config
keys, database fields, entrypoints, install-order constraints), with the repository, tag and
paths it was read from. Tests check our files against these facts (always, offline); where
upstream snapshots are present (git directories laid out as ``<owner>+<name>/repo`` under
$MEC_UPSTREAM, default /work/.mirror), other tests re-derive the facts from the real source
at the pinned tag and fail if the committed facts drifted. Nothing is fetched at test time.
"""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

FACTS_DIR = Path(__file__).resolve().parent / "facts"
UPSTREAM = Path(os.environ.get("MEC_UPSTREAM", "/work/.mirror"))


@cache
def facts(name: str) -> dict[str, Any]:
    """tests/lab/facts/<name>.yaml, parsed."""
    data = yaml.safe_load((FACTS_DIR / f"{name}.yaml").read_text())
    assert isinstance(data, dict) and "source" in data, f"facts/{name}.yaml needs a source: block"
    return data


def git_dir(repo: str) -> Path | None:
    """The snapshot's git directory for ``owner/name``, or None when it is not here."""
    d = UPSTREAM / repo.replace("/", "+") / "repo"
    return d if (d / "HEAD").exists() or (d / "objects").is_dir() else None


def require_upstream(repo: str, tag: str) -> Path:
    """The git directory of ``repo`` holding ``tag``, or skip the test saying what is missing."""
    d = git_dir(repo)
    if d is None:
        pytest.skip(f"upstream source of {repo} not present under {UPSTREAM} (set MEC_UPSTREAM)")
    rc = subprocess.run(["git", "--git-dir", str(d), "rev-parse", "--verify", "-q", f"{tag}^{{commit}}"],
                        capture_output=True).returncode
    if rc != 0:
        pytest.skip(f"{repo} snapshot under {UPSTREAM} has no tag {tag}")
    return d


@cache
def upstream_text(repo: str, tag: str, path: str) -> str:
    """The text of ``path`` at ``tag`` in the real ``repo`` (skips when the snapshot is absent)."""
    d = require_upstream(repo, tag)
    p = subprocess.run(["git", "--git-dir", str(d), "show", f"{tag}:{path}"], capture_output=True)
    if p.returncode != 0:
        raise AssertionError(f"{repo}@{tag} has no {path}: {p.stderr.decode(errors='replace').strip()}")
    return p.stdout.decode("utf-8", errors="replace")


@cache
def upstream_files(repo: str, tag: str, under: str) -> list[str]:
    """Paths of the files under ``under`` at ``tag`` in ``repo``."""
    d = require_upstream(repo, tag)
    p = subprocess.run(["git", "--git-dir", str(d), "ls-tree", "-r", "--name-only", tag, "--", under],
                       capture_output=True, text=True, check=True)
    return p.stdout.split()
