"""tshark as the independent oracle: one way to run it and read its fields (the corpus tools and
the tests share it).

`fields()` returns, per frame that matches the display filter, every occurrence of each
requested field (``-E occurrence=a`` with an aggregator that never appears in a value).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

TSHARK = shutil.which("tshark")
AGG = "\x1f"      # occurrence separator that never appears in a host name, URI or address
# the prefs that make tshark see what a tap should: out-of-order TCP reassembly and
# null-ciphered NAS (lab cores use NEA0)
TAP_OPTS = ("-o", "tcp.reassemble_out_of_order:TRUE", "-o", "nas-5gs.null_decipher:TRUE")


def fields(path: Path | str, names: Sequence[str], display_filter: str = "",
           options: Sequence[str] = (), timeout: float = 120) -> list[dict[str, list[str]]]:
    """One dict per matching frame: field name -> its occurrences (empty list when absent)."""
    cmd = [TSHARK or "tshark", "-n", "-r", str(path), *options]
    if display_filter:
        cmd += ["-Y", display_filter]
    cmd += ["-T", "fields", "-E", "occurrence=a", "-E", f"aggregator={AGG}", "-E", "separator=\t"]
    for f in names:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=timeout).stdout
    rows: list[dict[str, list[str]]] = []
    for line in out.splitlines():
        cols = line.split("\t")
        cols += [""] * (len(names) - len(cols))
        rows.append({n: (c.split(AGG) if c else []) for n, c in zip(names, cols, strict=True)})
    return rows


def joined(rows: list[dict[str, list[str]]], sep: str = ",") -> list[dict[str, str]]:
    """The same rows with each field's occurrences joined (tshark's own default display)."""
    return [{k: sep.join(v) for k, v in r.items()} for r in rows]
