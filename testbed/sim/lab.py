"""SimLab: bring the whole sim lab up and down, with an explicit lifecycle.

    lab = SimLab("1", ues=2)
    lab.up()            # topology, DN services, UPF, gNB, SMF, one PDU session per UE
    lab.run_in_ue(1, ["curl", "-s", "-X", "POST", "http://shop.mec.local/api/v1/buy?item=3"])
    lab.down()          # PFCP Session Deletion for every UE, then nothing left behind

Two MEC sites (issue 18, docs/sim-sites.md)::

    lab = SimLab("1", ues=2, sites=2)          # gnb/upf at site 1, gnb2/upf2 at site 2, one SMF
    lab.up()                                   # every UE starts at site 1 (placement={2: 2}: UE 2 at site 2)
    lab.handover(1, to_gnb=2)                  # Xn/N2 path switch: PFCP modification, End Marker to gnb1
    lab.relocate(1, to_site=2)                 # SSC mode 3: new session at upf2, old one deleted at upf1
    lab.serving(1)                             # {"site", "gnb", "gnb_ip", "upf_ip", "ue_ip", "dl_teid", ...}

`up()` is `build()` + `start_services()` + `establish_sessions()`; call them one by
one to start something (the tap, a capture) between the phases. Any failure in
`up()` tears down what was built before re-raising. `down()` works from another
process too: it finds processes through pid files in the state directory
(/run/mec-sim/<lab id>/) and namespaces by their prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from testbed.constants import SITE_UE_POOLS_V4, site_ue_ipv4, supi
from testbed.sim import ctl
from testbed.sim.topology import (
    DNS_IP,
    IF_N3,
    IF_N4,
    IF_N6,
    MQTT_BROKER_PORT,
    MQTT_IP,
    SHOP_IP,
    SHOP_PORT,
    SITE_GNB_FIRST_DL_TEID,
    SITE_GNB_N3_IP,
    SITE_UPF_FIRST_TEID,
    SITE_UPF_N3_IP,
    SITE_UPF_N4_IP,
    SMF_N4_IP,
    UPF_TUN,
    Topology,
    TopologyError,
    kill_pids,
    lab_netns,
    netns_pids,
    site_role,
    switch_port,
    teardown_lab,
    ue_drop_address,
    ue_ns,
    ue_tun,
    ue_use_address,
)

STATE_ROOT = Path("/run/mec-sim")
READY_TIMEOUT = 15.0
CAPTURE_DRAIN = 0.6   # dumpcap reads its capture buffer every 250 ms
END_MARKER_WAIT = 2.0   # seconds a handover waits for the source gNB to count the End Marker
REPO_ROOT = Path(__file__).resolve().parents[2]


class SimLabError(RuntimeError):
    """The lab could not be brought up (one line; details in the state dir's logs)."""


class SimLab:
    assoc_timeout = 10.0   # seconds the SMF waits for the UPF's PFCP association
    def __init__(self, lab_id: str = "0", ues: int = 2, *, qfi: int = 1, state_root: Path = STATE_ROOT,
                 capture: Path | None = None, sites: int = 1, placement: Mapping[int, int] | None = None) -> None:
        """`sites=2`: two MEC sites; `placement` {UE: site} says where UEs start (default: site 1)."""
        try:
            self.topology = Topology(lab_id, ues, sites, dict(placement or {}))
        except TopologyError as e:
            raise SimLabError(str(e)) from e
        self.lab_id, self.ues, self.qfi, self.sites = lab_id, ues, qfi, sites
        self.placement = dict(placement or {})
        self.state_dir = state_root / lab_id
        self.capture = capture
        self.sessions: dict[int, dict[str, Any]] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._ready: dict[str, Callable[[], bool]] = {}
        self.warnings: list[str] = []
        self._owned = False   # True once this object created the state dir (so a failed up may clean it)

    # --- paths ---

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pid_dir(self) -> Path:
        return self.state_dir / "pids"

    def ctl_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.sock"

    @property
    def calls_file(self) -> Path:
        """JSON lines, one per request the main application served."""
        return self.state_dir / "shop-calls.jsonl"

    # --- lifecycle ---

    def up(self) -> None:
        try:
            self.build()
            self.start_services()
            self.establish_sessions()
        except BaseException:
            if self._owned:
                self.down()
            raise

    def build(self) -> None:
        if self.state_dir.exists() or lab_netns(self.lab_id):
            raise SimLabError(f"lab {self.lab_id} exists already: run `testbed sim down --lab-id {self.lab_id}`")
        self.log_dir.mkdir(parents=True)
        self._owned = True
        self.pid_dir.mkdir()
        self._write_meta()
        try:
            self.topology.build()
        except TopologyError as e:
            raise SimLabError(str(e)) from e
        if self.capture is not None:
            self._start_capture(self.capture)

    def start_services(self) -> None:
        from testbed.sim import dn  # aiohttp is heavy: only `up` needs the DN's settings

        py = [sys.executable, "-m"]
        dn_ns = self.topology.dn_ns
        self._spawn("shop", dn_ns, [*py, "testbed.sim.dn", "--host", SHOP_IP, "--port", str(SHOP_PORT),
                                    "--calls", str(self.calls_file)],
                    lambda: self._listening(dn_ns, "t", SHOP_IP, SHOP_PORT))
        self._spawn("dnsmasq", dn_ns, dn.dnsmasq_argv(self.state_dir / "dnsmasq.pid", self.log_dir / "dns.log"),
                    lambda: self._listening(dn_ns, "u", DNS_IP, 53))
        conf = self.state_dir / "mosquitto.conf"
        conf.write_text(dn.mosquitto_config(self.log_dir / "mqtt.log"))
        self._spawn("mosquitto", dn_ns, ["mosquitto", "-c", str(conf)],
                    lambda: self._listening(dn_ns, "t", MQTT_IP, MQTT_BROKER_PORT))
        for k in self._site_range():
            extra = [] if k == 1 else ["--first-teid", hex(SITE_UPF_FIRST_TEID[k])]
            self._spawn(self.upf_name(k), self.upf_netns(k),
                        [*py, "testbed.sim.upf", "--n3", SITE_UPF_N3_IP[k], "--n4", SITE_UPF_N4_IP[k],
                         "--tun", UPF_TUN, "--ctl", str(self.ctl_path(self.upf_name(k))), *extra],
                        self._ctl_ready(self.upf_name(k)))
        for k in self._site_range():
            extra = [] if k == 1 else ["--first-teid", hex(SITE_GNB_FIRST_DL_TEID[k])]
            self._spawn(self.gnb_name(k), self.gnb_netns(k),
                        [*py, "testbed.sim.gnb", "--n3", SITE_GNB_N3_IP[k],
                         "--ctl", str(self.ctl_path(self.gnb_name(k))), *extra],
                        self._ctl_ready(self.gnb_name(k)))
        self._wait_ready()   # all of the above start in parallel; the SMF once the UPFs listen on N4
        upfs = [a for k in self._site_range() for a in ("--upf", SITE_UPF_N4_IP[k])]
        self._spawn("smf", self.topology.smf_ns, [*py, "testbed.sim.smf", "--n4", SMF_N4_IP, *upfs,
                                                  "--ctl", str(self.ctl_path("smf")),
                                                  "--assoc-timeout", str(self.assoc_timeout)],
                    lambda: self._ctl_ok("smf", lambda a: bool(a.get("associated"))))
        self._wait_ready()

    def establish_sessions(self) -> None:
        for n in range(1, self.ues + 1):
            self.attach_ue(n)

    def attach_ue(self, n: int, site: int | None = None) -> dict[str, Any]:
        """One PDU session for UE n: the gNB attaches its TUN, the SMF sets up N4, the gNB learns the UL tunnel.

        `site` (default: where `placement` puts the UE) picks the gNB and the UPF.
        """
        self._check_ue(n)
        site = self.topology.ue_site(n) if site is None else self._check_site(site)
        gnb = self.gnb_name(site)
        att = self._call(gnb, {"op": "attach", "ue": n, "netns": ue_ns(self.lab_id, n), "tun": ue_tun(n)})
        req: dict[str, Any] = {"op": "establish", "ue": n, "gnb_ip": SITE_GNB_N3_IP[site],
                               "gnb_teid": att["dl_teid"], "qfi": self.qfi}
        if site != 1:
            req["site"] = site
        if site_ue_ipv4(n, site) != site_ue_ipv4(n, self.topology.ue_site(n)):
            ue_use_address(self.lab_id, n, site_ue_ipv4(n, site))   # attached elsewhere than it was built for
        s = self._call("smf", req)
        self._call(gnb, {"op": "session", "ue": n, "ul_teid": s["ul_teid"], "upf_ip": s["upf_ip"],
                         "qfi": s["qfi"], "ue_ip": s["ue_ip"]})
        s["gnb"] = site
        self.sessions[n] = s
        self._write_sessions()
        return s

    def modify_session(self, n: int, *, qfi: int | None = None) -> dict[str, Any]:
        """PFCP Session Modification (Update FAR with the gNB tunnel, Update QER when qfi is given)."""
        if n not in self.sessions:
            raise SimLabError(f"UE {n} has no session")
        cur = self.sessions[n]
        gnb = int(cur.get("gnb", 1))
        s = self._call("smf", {"op": "modify", "ue": n, "gnb_ip": cur["gnb_ip"],
                               "gnb_teid": cur["dl_teid"], "qfi": qfi})
        self._call(self.gnb_name(gnb), {"op": "session", "ue": n, "ul_teid": s["ul_teid"], "upf_ip": s["upf_ip"],
                                        "qfi": s["qfi"], "psi": s.get("pdu_session_id", 1)})
        s["gnb"] = gnb
        self.sessions[n] = s
        self._write_sessions()
        return s

    # --- mobility (two sites) ---

    def handover(self, n: int, to_gnb: int) -> dict[str, Any]:
        """Xn handover with N2 path switch, intra-UPF (TS 23.502 §4.9.1.2.2): the UPF stays, the gNB changes.

        The target gNB takes the UE's radio (attaches to its multi-queue TUN, then the source
        lets go), the SMF sends the UPF a PFCP Session Modification with the target's new DL
        F-TEID and SNDEM, the UPF sends an End Marker on the old tunnel to the source gNB,
        which counts it. Returns `serving(n)` plus "from_gnb", "old_dl_teid", "old_gnb_ip",
        "end_marker" (the source counted it) and "radio_overlap_s" (TUN switch time, both attached
        meanwhile, so nothing is dropped on the radio side).
        """
        self._check_site(to_gnb, what="gNB")
        s = self._serving_session(n)
        src = int(s.get("gnb", 1))
        if src == to_gnb:
            raise SimLabError(f"UE {n} is on gNB {to_gnb} already")
        src_name, dst_name = self.gnb_name(src), self.gnb_name(to_gnb)
        ctx = self._call(src_name, {"op": "context", "ue": n})
        t0 = time.monotonic()
        got = self._call(dst_name, {"op": "handover_in", "ue": n, "netns": ue_ns(self.lab_id, n), "tun": ue_tun(n),
                                    "primary": ctx["primary"], "sessions": ctx["sessions"]})
        self._call(src_name, {"op": "handover_out", "ue": n})
        radio = time.monotonic() - t0
        new_teid = {int(x["psi"]): int(x["dl_teid"]) for x in got["sessions"]}
        old_teid, old_ip = int(s["dl_teid"]), str(s["gnb_ip"])
        # the target's Path Switch Request (N2) makes the SMF move the DL FAR: N4 is what the sim shows
        new = self._call("smf", {"op": "modify", "ue": n, "gnb_ip": SITE_GNB_N3_IP[to_gnb],
                                 "gnb_teid": new_teid[int(s.get("pdu_session_id", 1))], "end_marker": True})
        new["gnb"] = to_gnb
        self.sessions[n] = new
        self._write_sessions()
        seen = self._wait_end_marker(src_name, old_teid)
        return {**self.serving(n), "from_gnb": src, "old_dl_teid": old_teid, "old_gnb_ip": old_ip,
                "end_marker": seen, "radio_overlap_s": radio}

    def relocate(self, n: int, to_site: int, *, hold: float = 0.0) -> dict[str, Any]:
        """Inter-site move, SSC mode 3 make-before-break (TS 23.502 §4.3.5.2): a new anchor UPF.

        If the UE's radio is not on the target site's gNB yet, it is handed over first (the
        move that makes the SMF relocate). Then: a second PDU session at the target site's UPF
        (PFCP Session Establishment, an address from that site's pool), the UE's new traffic
        from the new address, after `hold` seconds the old session's PFCP Session Deletion at
        the old UPF and its address gone. Same SUPI. Returns `serving(n)` of the new session
        plus "old" (the released session) and "handover" (the handover's result, or None).
        """
        to_site = self._check_site(to_site)
        s = self._serving_session(n)
        if int(s.get("site", 1)) == to_site:
            raise SimLabError(f"UE {n} is anchored at site {to_site} already")
        ho = self.handover(n, to_gnb=to_site) if int(s.get("gnb", 1)) != to_site else None
        gnb = self.gnb_name(to_site)
        psi = 2 if int(s.get("pdu_session_id", 1)) == 1 else 1
        add = self._call(gnb, {"op": "add_session", "ue": n, "psi": psi})
        try:
            res = self._call("smf", {"op": "relocate", "ue": n, "site": to_site, "gnb_ip": SITE_GNB_N3_IP[to_site],
                                     "gnb_teid": add["dl_teid"]})
        except SimLabError:
            with contextlib.suppress(SimLabError):
                self._call(gnb, {"op": "drop_session", "ue": n, "psi": psi})
            raise
        new, old = res["session"], res["old"]
        self._call(gnb, {"op": "session", "ue": n, "psi": psi, "ul_teid": new["ul_teid"], "upf_ip": new["upf_ip"],
                         "qfi": new["qfi"], "ue_ip": new["ue_ip"]})
        ue_use_address(self.lab_id, n, new["ue_ip"])
        new["gnb"] = to_site
        self.sessions[n] = new
        self._write_sessions()
        if hold > 0:
            time.sleep(hold)   # flows on the old address finish meanwhile
        self._call("smf", {"op": "release_old", "ue": n})
        self._call(gnb, {"op": "drop_session", "ue": n, "psi": int(old["pdu_session_id"])})
        try:
            ue_drop_address(self.lab_id, n, old["ue_ip"])
        except TopologyError as e:
            raise SimLabError(str(e)) from e
        old["gnb"] = to_site
        return {**self.serving(n), "old": old, "handover": ho}

    def serving(self, n: int) -> dict[str, Any]:
        """Who serves UE n now: site (its anchor UPF's), gnb (its radio), tunnel ends and TEIDs."""
        s = self._serving_session(n)
        return {"ue": n, "supi": s["supi"], "site": int(s.get("site", 1)), "gnb": int(s.get("gnb", 1)),
                "gnb_ip": s["gnb_ip"], "upf_ip": s["upf_ip"], "ue_ip": s["ue_ip"], "dl_teid": s["dl_teid"],
                "ul_teid": s["ul_teid"], "pdu_session_id": s.get("pdu_session_id", 1), "qfi": s["qfi"],
                "cp_seid": s["cp_seid"], "up_seid": s["up_seid"]}

    def impair_n3(self, *, loss: float = 0.0, delay_ms: float = 0.0, jitter_ms: float = 0.0,
                  reorder: float = 0.0, gnb: int = 1) -> dict[str, Any]:
        """Degrade N3 at a gNB (loss, delay ± jitter, reordering; all zero: clear); its counters."""
        res = self._call(self.gnb_name(self._check_site(gnb, what="gNB")), {"op": "impair", "loss": loss, "delay_ms": delay_ms, "jitter_ms": jitter_ms,
                                 "reorder": reorder})
        return dict(res["impairment"])

    def release_ue(self, n: int) -> None:
        """PFCP Session Deletion for UE n, then the gNB lets go of its TUN."""
        gnb = int(self.sessions.get(n, {}).get("gnb", 1))
        self._call("smf", {"op": "delete", "ue": n})
        self._call(self.gnb_name(gnb), {"op": "release", "ue": n})
        self.sessions.pop(n, None)
        self._write_sessions()

    def down(self, keep_state: bool = False) -> list[str]:
        """Tear everything down; never raises.

        Returns what is left behind (empty: all clean). Things that went wrong on the way
        but left nothing behind (say, no PFCP deletion because the SMF had died) are in
        `self.warnings`.
        """
        problems: list[str] = []
        self.warnings = []
        if self.ctl_path("smf").exists():
            try:   # N4 shows the whole life cycle: sessions end with PFCP Session Deletion
                res = ctl.call(self.ctl_path("smf"), {"op": "delete_all"}, timeout=15)
                self.warnings += [f"PFCP deletion: {f}" for f in res.get("failed", [])]
            except ctl.CtlError as e:
                self.warnings.append(f"PFCP deletion skipped: {e}")
        names = set(lab_netns(self.lab_id)) if self._safe_ns() else set()
        lab_pids = {p for ns in names for p in netns_pids(ns)}
        pids = self._pid_files()
        cap = pids.pop("capture", None)
        if cap is not None and cap in lab_pids:
            time.sleep(CAPTURE_DRAIN)   # let dumpcap's ring buffer hand over the last PFCP packets
            self._signal_wait(cap, signal.SIGINT)   # dumpcap flushes and closes the file on SIGINT
        # the SMF first (no PFCP after this point), then the rest together
        for group in (["smf"], [n for n in pids if n != "smf"]):
            kill_pids([pids[n] for n in group if n in pids and pids[n] in lab_pids])
        for p in self._procs.values():
            with contextlib.suppress(Exception):
                p.wait(timeout=1)
        self._procs.clear()
        problems += teardown_lab(self.lab_id)
        if not keep_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.state_dir.parent.rmdir()   # only when no other lab uses it
        self.sessions.clear()
        return problems

    async def start(self) -> None:
        await asyncio.to_thread(self.up)

    async def stop(self) -> list[str]:
        return await asyncio.to_thread(self.down)

    # --- queries ---

    def status(self) -> dict[str, Any]:
        meta = self._read_json(self.state_dir / "lab.json") or {}
        procs = {}
        for name, pid in self._pid_files().items():
            procs[name] = {"pid": pid, "alive": _pid_alive(pid)}
        sessions: Any = None
        if self.ctl_path("smf").exists():
            with contextlib.suppress(ctl.CtlError):
                sessions = ctl.call(self.ctl_path("smf"), {"op": "status"}, timeout=3)["sessions"]
        if sessions is None:
            sessions = list((self._read_json(self.state_dir / "sessions.json") or {}).values())
        namespaces = lab_netns(self.lab_id) if self._safe_ns() else []
        up = bool(namespaces) and bool(procs) and all(p["alive"] for p in procs.values())
        return {"lab_id": self.lab_id, "up": up, "ues": meta.get("ues"), "state_dir": str(self.state_dir),
                "namespaces": namespaces, "processes": procs, "sessions": sessions,
                "tap": self.tap_interfaces(), "sites": self.sites,
                "taps": {str(k): self.tap_interfaces(k) for k in self._site_range()}}

    def ue_ip(self, n: int) -> str:
        """UE n's address now: its serving session's (a relocation changes it), else the one it was built with."""
        s = self.sessions.get(n)
        return str(s["ue_ip"]) if s else site_ue_ipv4(n, self.topology.ue_site(n))

    def ue_supi(self, n: int) -> str:
        return supi(n)

    def ue_netns(self, n: int) -> str:
        return ue_ns(self.lab_id, n)

    def ue_tun(self, n: int) -> str:
        return ue_tun(n)

    def tap_interfaces(self, site: int = 1) -> dict[str, str]:
        """Where a site's tap listens: its UPF namespace and its N3 (GTP-U), N4 (PFCP) and N6 interfaces."""
        return {"netns": self.upf_netns(site), "n3": IF_N3, "n4": IF_N4, "n6": IF_N6}

    def upf_netns(self, site: int = 1) -> str:
        return self.topology.site_upf_ns(self._check_site(site))

    def gnb_netns(self, gnb: int = 1) -> str:
        return self.topology.site_gnb_ns(self._check_site(gnb, what="gNB"))

    def ue_pool(self, site: int = 1) -> str:
        """The UE address pool of a site's UPF (the tap's --ue-pool at that site)."""
        return SITE_UE_POOLS_V4[self._check_site(site)]

    @staticmethod
    def gnb_name(k: int) -> str:
        """Process, control socket and pid file name of gNB k: gnb, gnb2."""
        return site_role("gnb", k)

    @staticmethod
    def upf_name(k: int) -> str:
        return site_role("upf", k)

    def run_in_ue(self, n: int, argv: Sequence[str], *, timeout: float = 30.0,
                  input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run argv in UE n's namespace: all its traffic goes through uesimtun<n-1> (the only route).

        `{ip}` and `{iface}` in argv are replaced by the UE's address and TUN name.
        """
        self._check_ue(n)
        args = [a.replace("{ip}", self.ue_ip(n)).replace("{iface}", self.ue_tun(n)) for a in argv]
        env = dict(os.environ, MEC_UE=str(n), MEC_UE_IP=self.ue_ip(n), MEC_UE_IFACE=self.ue_tun(n),
                   PYTHONPATH=str(REPO_ROOT))
        return subprocess.run(["ip", "netns", "exec", self.ue_netns(n), *args], input=input,
                              capture_output=True, text=True, timeout=timeout, env=env)

    def ue_ping(self, n: int, host: str = SHOP_IP, count: int = 3, size: int = 56,
                dont_fragment: bool = False, wait: float = 2.0) -> subprocess.CompletedProcess[str]:
        """ICMP echo from UE n (exit 0 when every request got a reply within `wait` seconds)."""
        argv = [sys.executable, "-m", "testbed.sim.uetools", "ping", host, "-c", str(count), "-s", str(size),
                "-W", str(wait)]
        return self.run_in_ue(n, [*argv, "--df"] if dont_fragment else argv)

    def ue_dns(self, n: int, name: str) -> subprocess.CompletedProcess[str]:
        return self.run_in_ue(n, [sys.executable, "-m", "testbed.sim.uetools", "dns", name])

    def shop_calls(self) -> list[dict[str, Any]]:
        """What the main application served so far (client = the UE's IP)."""
        try:
            return [json.loads(line) for line in self.calls_file.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            return []

    def daemon_status(self, name: str) -> dict[str, Any]:
        """Live counters of the gnb, upf or smf process."""
        return ctl.call(self.ctl_path(name), {"op": "status"}, timeout=5)

    # --- internals ---

    def _check_ue(self, n: int) -> None:
        if not 1 <= n <= self.ues:
            raise SimLabError(f"no UE {n} in lab {self.lab_id} (UEs are 1..{self.ues})")

    def _check_site(self, k: int, what: str = "site") -> int:
        if not 1 <= k <= self.sites:
            raise SimLabError(f"no {what} {k} in lab {self.lab_id} ({self.sites} site(s))")
        return k

    def _site_range(self) -> range:
        return range(1, self.sites + 1)

    def _serving_session(self, n: int) -> dict[str, Any]:
        self._check_ue(n)
        s = self.sessions.get(n)
        if s is None:
            raise SimLabError(f"UE {n} has no session")
        return s

    def _wait_end_marker(self, gnb: str, teid: int, timeout: float = END_MARKER_WAIT) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            marks = self._call(gnb, {"op": "status"})["end_markers"]
            if any(m["teid"] == teid and m["handed_over"] for m in marks):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)

    def _call(self, name: str, req: dict[str, Any]) -> dict[str, Any]:
        try:
            return ctl.call(self.ctl_path(name), req, timeout=15)
        except ctl.CtlError as e:
            raise SimLabError(str(e)) from e

    def _ctl_ok(self, name: str, cond: Callable[[dict[str, Any]], bool] = lambda a: True) -> bool:
        path = self.ctl_path(name)
        if not path.exists():
            return False
        try:
            return cond(ctl.call(path, {"op": "status"}, timeout=2))
        except ctl.CtlError:
            return False

    def _ctl_ready(self, name: str) -> Callable[[], bool]:
        return lambda: self._ctl_ok(name)

    @staticmethod
    def _listening(ns: str, proto: str, ip: str, port: int) -> bool:
        out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-H", f"-ln{proto}"],
                             capture_output=True, text=True).stdout
        return f"{ip}:{port} " in out

    def _spawn(self, name: str, ns: str, argv: list[str], ready: Callable[[], bool]) -> None:
        """Start argv in namespace ns (logs and pid file in the state dir); _wait_ready() waits for it."""
        log_path = self.log_dir / f"{name}.log"
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
        with log_path.open("ab") as log:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, env=env)
        self._procs[name] = proc
        self._ready[name] = ready
        (self.pid_dir / f"{name}.pid").write_text(f"{proc.pid}\n")

    def _wait_ready(self) -> None:
        """Wait until every process spawned since the last call is ready; one line naming the culprit if not."""
        deadline = time.monotonic() + READY_TIMEOUT
        while self._ready:
            for name, ready in list(self._ready.items()):
                proc, log_path = self._procs[name], self.log_dir / f"{name}.log"
                if ready():
                    del self._ready[name]
                elif proc.poll() is not None:
                    raise SimLabError(f"{name} exited with {proc.returncode}: {_last_line(log_path)}")
                elif time.monotonic() > deadline:
                    raise SimLabError(f"{name} not ready after {READY_TIMEOUT:.0f} s: {_last_line(log_path)}")
            if self._ready:
                time.sleep(0.05)

    def capture_points(self) -> tuple[str, list[str]]:
        """Namespace and interfaces the lab's capture reads: the UPF's N3/N4/N6, or with two sites the
        switch ports towards each UPF and the SMF (every N3, N4 and N6 frame passes one of them once)."""
        if self.sites == 1:
            return self.topology.upf_ns, [IF_N3, IF_N4, IF_N6]
        ups = [site_role("upf", k) for k in self._site_range()]
        return self.topology.switch_ns, [*(switch_port(IF_N3, u) for u in ups), switch_port(IF_N4, "smf"),
                                         *(switch_port(IF_N6, u) for u in ups)]

    def _start_capture(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        ns, ifaces = self.capture_points()

        def ready() -> bool:
            return path.exists() and path.stat().st_size > 0

        self._spawn("capture", ns, ["dumpcap", "-q", *(a for i in ifaces for a in ("-i", i)), "-w", str(path)],
                    ready)
        self._wait_ready()

    def _signal_wait(self, pid: int, sig: int, grace: float = 5.0) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _pid_files(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self.pid_dir.is_dir():
            for f in self.pid_dir.glob("*.pid"):
                with contextlib.suppress(ValueError, OSError):
                    out[f.stem] = int(f.read_text().strip())
        return out

    def _safe_ns(self) -> bool:
        try:
            lab_netns(self.lab_id)
            return True
        except TopologyError:
            return False

    def _write_meta(self) -> None:
        meta = {"lab_id": self.lab_id, "ues": self.ues, "qfi": self.qfi, "created": time.time(),
                "capture": str(self.capture) if self.capture else None, "sites": self.sites,
                "placement": {str(k): v for k, v in self.placement.items()}}
        (self.state_dir / "lab.json").write_text(json.dumps(meta, indent=1) + "\n")

    def _write_sessions(self) -> None:
        (self.state_dir / "sessions.json").write_text(json.dumps({str(k): v for k, v in self.sessions.items()},
                                                                 indent=1) + "\n")

    @staticmethod
    def _read_json(path: Path) -> Any:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    @classmethod
    def attach(cls, lab_id: str, state_root: Path = STATE_ROOT) -> SimLab:
        """A handle on a lab brought up by another process (for status/down/run_in_ue)."""
        meta = cls._read_json(state_root / lab_id / "lab.json") or {}
        lab = cls(lab_id, int(meta.get("ues") or 1), qfi=int(meta.get("qfi") or 1), state_root=state_root,
                  sites=int(meta.get("sites") or 1),
                  placement={int(k): int(v) for k, v in (meta.get("placement") or {}).items()})
        sessions = cls._read_json(lab.state_dir / "sessions.json") or {}
        lab.sessions = {int(k): v for k, v in sessions.items()}
        return lab


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty log)"
