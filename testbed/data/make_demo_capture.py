"""Record the replay-mode demo capture from the sim lab (needs root).

    python -m testbed.data.make_demo_capture [OUT]

Three UEs attach over PFCP, each presses "buy" twice, looks up an edge service and publishes
an MQTT reading; then the sessions are deleted. dumpcap records N3, N4 and N6 on the UPF.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from testbed.sim.lab import SimLab

OUT = Path(__file__).resolve().parent / "demo-n3-n4.pcapng"


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    with tempfile.TemporaryDirectory(prefix="mec-cap-") as tmp:
        raw = Path(tmp) / "raw.pcapng"
        lab = SimLab("cap", 3, state_root=Path(tmp) / "state", capture=raw)
        try:
            lab.up()
            for ue in (1, 2, 3):
                start = time.time() + 0.2  # each UE's runner waits for its own schedule
                acts = [
                    {"at": 0.1 * ue, "http": {"method": "POST", "url": f"http://shop.mec.local/api/v1/buy?item={ue}"}},
                    {"at": 0.5 + 0.1 * ue, "dns": {"qname": f"edge{ue}.mec.local"}},
                    {"at": 0.8 + 0.1 * ue, "mqtt": {"topic": f"sensors/ue{ue}/temp", "message": "21.5"}},
                    {"at": 1.2 + 0.1 * ue, "http": {"method": "POST", "url": f"http://shop.mec.local/api/v1/buy?item={ue + 1}"}},
                ]
                res = lab.run_in_ue(ue, [sys.executable, "-m", "testbed.ue_actions"],
                                    input=json.dumps({"start": start, "actions": acts}))
                print(res.stdout, end="", file=sys.stderr)
            time.sleep(0.5)
        finally:
            lab.down()
        # keep N3 and N4 only (the tap's view on the UPF); N6 is the same traffic untunnelled
        subprocess.run(["tshark", "-r", str(raw), "-Y", "gtp || pfcp", "-w", str(out), "-F", "pcapng"],
                       check=True, capture_output=True)
    print(f"wrote {out} ({out.stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
