"""Write a capture of both mobility procedures, for replaying them through the tap and detector.

    python -m testbed.sim.mobility_capture OUT.pcap [--facts OUT.json]

Runs a two-site sim lab (needs root) with one UE and records N3, N4 and N6 of both sites
(the switch ports towards each UPF and the SMF: every frame once) while the UE

1. buys at the shop from site 1 (gnb1 → upf1),
2. is handed over to gnb2 (PFCP Session Modification with the new DL F-TEID and SNDEM at
   upf1, End Marker from upf1 to gnb1 on the old TEID) and buys again (gnb2 → upf1),
3. is relocated to site 2 (PFCP Session Establishment at upf2 with an address from
   10.46.0.0/16, then PFCP Session Deletion at upf1) and buys again (gnb2 → upf2).

The frames are put in time order with reordercap: dumpcap writes each interface's buffer
as it drains it, so an End Marker seen on N3 could otherwise come before the PFCP
modification that caused it. An OUT ending in .pcap is then converted with editcap (all
links are Ethernet); any other name is written as pcapng. `--facts` writes what happened (sessions
before and after each step, TEIDs, the End Marker) as JSON, so a replay test knows what to
expect without decoding the capture itself.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from testbed.sim.lab import SimLab, SimLabError
from testbed.sim.topology import TopologyError

UE = 1
BUY = ["curl", "-sS", "-m", "5", "-X", "POST", "http://shop.mec.local/api/v1/buy?item={item}"]
SETTLE = 0.2   # seconds between steps, so each procedure stands apart in time in the capture


def _buy(lab: SimLab, item: int) -> dict[str, Any]:
    r = lab.run_in_ue(UE, [a.replace("{item}", str(item)) for a in BUY], timeout=10)
    if r.returncode != 0:
        raise SimLabError(f"UE {UE} could not reach the shop: {r.stderr.strip() or r.returncode}")
    return dict(json.loads(r.stdout))


def make_capture(out: Path, *, lab_id: str | None = None, state_root: Path | None = None) -> dict[str, Any]:
    """Run the lab, do one handover and one relocation, write the capture to `out`; the facts."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mec-mobcap-") as tmp:
        raw = Path(tmp) / "raw.pcapng"
        lab = SimLab(lab_id or "m" + secrets.token_hex(3), 1, sites=2, state_root=state_root or Path(tmp) / "state",
                     capture=raw)
        facts: dict[str, Any] = {"ue": UE, "supi": lab.ue_supi(UE)}
        try:
            lab.up()
            facts["before"] = lab.serving(UE)
            facts["buys"] = [_buy(lab, 1)]
            time.sleep(SETTLE)
            facts["handover"] = lab.handover(UE, to_gnb=2)
            facts["buys"].append(_buy(lab, 2))
            time.sleep(SETTLE)
            facts["relocation"] = lab.relocate(UE, to_site=2)
            facts["buys"].append(_buy(lab, 3))
            time.sleep(SETTLE)
        finally:
            problems = lab.down()   # stops dumpcap after the last PFCP deletion
        if problems:
            raise SimLabError(f"teardown left: {', '.join(problems)}")
        ordered = Path(tmp) / "ordered.pcapng"
        subprocess.run(["reordercap", "-n", str(raw), str(ordered)], check=True, capture_output=True)
        if out.suffix == ".pcap":
            subprocess.run(["editcap", "-F", "pcap", str(ordered), str(out)], check=True, capture_output=True)
        else:
            ordered.replace(out)
    facts["capture"] = str(out)
    return facts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.sim.mobility_capture",
                                 description="Capture a handover and an SSC mode 3 relocation in the two-site sim lab.")
    ap.add_argument("out", type=Path, metavar="OUT.pcap", help="capture to write (.pcap, else pcapng)")
    ap.add_argument("--facts", type=Path, help="also write what happened as JSON")
    ap.add_argument("--lab-id", help="sim lab id (default: a random one)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("mobility_capture: needs root (network namespaces, TUN devices)", file=sys.stderr)
        return 2
    try:
        facts = make_capture(args.out, lab_id=args.lab_id)
    except (SimLabError, TopologyError, subprocess.CalledProcessError) as e:
        print(f"mobility_capture: {e}", file=sys.stderr)
        return 1
    if args.facts:
        args.facts.write_text(json.dumps(facts, indent=1) + "\n")
    h, r = facts["handover"], facts["relocation"]
    print(f"{args.out}: handover gNB {h['from_gnb']} -> {h['gnb']} (DL TEID 0x{h['old_dl_teid']:x} -> "
          f"0x{h['dl_teid']:x}, End Marker {'seen' if h['end_marker'] else 'MISSING'}); relocation site "
          f"{r['old']['site']} -> {r['site']} ({r['old']['ue_ip']} -> {r['ue_ip']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
