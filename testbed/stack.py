"""The running testbed: sim lab (or a capture), tap, detector, local broker and functions.

``Stack`` owns every process it starts and stops them all, in reverse order, whatever
happened (explicit lifecycle: ``start`` then ``stop``; also a context manager). The tap
runs in the root namespace and opens its capture sockets in the UPF's namespace
(``upf-tap live --netns``), so tap, detector and broker talk over loopback.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mec_common.ports import free_port

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "k8s" / "knative"
DEMO_RULES = REPO / "examples" / "rules" / "mec-demo.yaml"
BROKER_PATH = "/mec/default"          # the Broker in k8s/knative/broker.yaml
CHANNEL_PATH = "/channels/mec/mec-events"  # the Channel in k8s/knative/channel.yaml, as the local broker serves it
EVENTING_PATHS = {"broker": BROKER_PATH, "channel": CHANNEL_PATH}  # the paper's two event paths
STARTUP_TIMEOUT = 30.0
Progress = Callable[[str], None]


class StackError(RuntimeError):
    """A part of the testbed did not come up; the message says which and why."""


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def wait_http(url: str, what: str, proc: subprocess.Popen[bytes] | None, timeout: float = STARTUP_TIMEOUT,
              log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-800:] if log and log.exists() else ""
            raise StackError(f"{what} exited with status {proc.returncode} while starting:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except OSError:
            time.sleep(0.1)
    raise StackError(f"{what} did not answer on {url} within {timeout:.0f} s")


@dataclass
class Stack:
    """Tap + detector + broker (+ the sim lab in sim mode), started in order, stopped in reverse."""

    workdir: Path
    mode: str = "sim"                 # sim | replay
    ues: int = 2
    lab_id: str = "demo"
    rules: Path = DEMO_RULES
    manifests: Path = MANIFESTS
    progress: Progress = field(default=lambda msg: None)
    lab: Any = None
    broker_url: str = ""
    detector_url: str = ""
    token: str = ""
    eventing: str = "broker"          # the detector's sink: the Broker (Triggers) or the Channel (Subscriptions)
    sink_url: str = ""                # the detector's sink when not the broker (a fault proxy in front of it)
    tap_args: list[str] = field(default_factory=list)       # more `upf-tap live` options (e.g. --spool)
    detector_args: list[str] = field(default_factory=list)  # more `detector serve` options
    broker_args: list[str] = field(default_factory=list)    # more `testbed broker` options (e.g. --idle-window)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    launches: dict[str, tuple[list[str], dict[str, str] | None]] = field(default_factory=dict)
    keep_capture: bool = False        # hold the tap's capture sockets (an fd store) so a restart loses no packet
    fdstore: Any = None
    sites: int = 1                    # MEC sites: 2 gives each its UPF, tap, detector and broker (issue 18)
    prewarm: bool = False             # two sites: on a move, warm up the target site's functions the UE used
    placement: dict[int, int] = field(default_factory=dict)  # two sites: {UE: site} where UEs start (default 1)
    broker_urls: dict[int, str] = field(default_factory=dict)    # site -> its broker
    detector_urls: dict[int, str] = field(default_factory=dict)  # site -> its detector

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            if self.mode == "sim":
                from testbed.sim.lab import SimLab

                where = f", {self.sites} MEC sites" if self.sites > 1 else ""
                self.progress(f"building the sim lab ({self.ues} UEs{where}: namespaces, veths, TUNs)")
                self.lab = SimLab(self.lab_id, self.ues, state_root=self.workdir / "sim", sites=self.sites,
                                  placement=self.placement)
                self.lab.build()
            if self.sites > 1 and self.mode != "sim":
                raise StackError("two MEC sites need the sim (mode sim)")
            for k in self.site_numbers():  # every URL first: each detector names the other sites' parts
                self.broker_urls[k] = f"http://127.0.0.1:{free_port()}"
                self.detector_urls[k] = f"http://127.0.0.1:{free_port()}"
            self.broker_url, self.detector_url = self.broker_urls[1], self.detector_urls[1]
            self.token = secrets.token_urlsafe(24)  # one ingest token: the sites' detectors ask each other with it
            for k in self.site_numbers():
                self._start_broker(k)
            for k in self.site_numbers():
                self._start_detector(k)
            if self.mode == "sim":
                for k in self.site_numbers():
                    self._start_tap(k)
                self.progress("starting gNB, UPF, SMF and the DN (main application, DNS, MQTT)")
                self.lab.start_services()
                self.progress("establishing PDU sessions over PFCP")
                self.lab.establish_sessions()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.progress(f"stopped {name}")
        self.procs.clear()
        if self.fdstore is not None:
            self.fdstore.close()
            self.fdstore = None
        if self.lab is not None:
            left = self.lab.down()
            if left:
                self.progress(f"sim teardown left: {', '.join(left)}")
            self.lab = None

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ parts
    def site_numbers(self) -> range:
        return range(1, self.sites + 1)

    @staticmethod
    def part(name: str, site: int) -> str:
        """A part's name at a site: site 1's keep the one-site names (broker, detector, tap), site 2's
        have the number (broker2, detector2, tap2)."""
        return name if site == 1 else f"{name}{site}"

    @staticmethod
    def site_of(part: str) -> tuple[str, int]:
        """(kind, site) of a part name: 'broker2' -> ('broker', 2)."""
        kind = part.rstrip("0123456789")
        return kind, int(part[len(kind):] or 1)

    def pid(self, name: str) -> int | None:
        """The pid of part ``name`` (broker, detector, tap) while it runs."""
        for n, proc in reversed(self.procs):
            if n == name and proc.poll() is None:
                return proc.pid
        return None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal part ``name`` (kill -9 by default) and reap it."""
        for n, proc in self.procs:
            if n == name and proc.poll() is None:
                proc.send_signal(sig)
                proc.wait()

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Start part ``name`` again with the command line it was first started with (as a
        supervisor restarts a crashed service); returns once it answers again."""
        argv, env = self.launches[name]
        self.kill(name, signal.SIGTERM)
        self.procs = [(n, p) for n, p in self.procs if n != name]
        log = self.workdir / f"{name}.log"
        since = log.stat().st_size if log.exists() else 0
        run_argv, fds = (argv, ())
        if name == "tap" and self.fdstore is not None:
            run_argv, fds = self.fdstore.exec_argv(argv)  # its kept capture sockets back, as systemd does
        proc, log = self._spawn(name, run_argv, env, append=True, pass_fds=fds)
        self.launches[name] = (argv, env)
        kind, site = self.site_of(name)
        if kind == "tap":
            self._wait_capturing(proc, log, since)
        else:
            url = (f"{self.broker_urls[site]}/_local/healthz" if kind == "broker"
                   else f"{self.detector_urls[site]}/healthz")
            wait_http(url, f"the restarted {name}", proc, log=log)
        return proc

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, *,
               append: bool = False, pass_fds: tuple[int, ...] = ()) -> tuple[subprocess.Popen[bytes], Path]:
        self.launches[name] = (argv, env)
        log = self.workdir / f"{name}.log"
        out = log.open("ab" if append else "wb")
        try:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                    cwd=REPO, pass_fds=pass_fds)
        except OSError as e:
            raise StackError(f"cannot start {name} ({argv[0]}): {e.strerror}") from None
        finally:
            out.close()
        self.procs.append((name, proc))
        return proc, log

    def _start_broker(self, site: int = 1) -> None:
        url = self.broker_urls[site]
        name = self.part("broker", site)
        at = f" of site {site}" if self.sites > 1 else ""
        self.progress(f"starting the local Knative broker{at} on {url} ({self.manifests})")
        proc, log = self._spawn(name, [sys.executable, "-m", "testbed", "broker", "--manifests",
                                       str(self.manifests), "--listen", url.removeprefix("http://"),
                                       "--state-dir", str(self.workdir / name),
                                       "--local-api", *self.broker_args],  # broker_events/broker_stats read /_local
                                env={"FN_JOURNAL": "1"})
        wait_http(f"{url}/_local/healthz", f"the local broker{at}", proc, log=log)

    def _sink(self, site: int) -> str:
        if self.eventing not in EVENTING_PATHS:
            raise StackError(f"eventing must be one of {', '.join(EVENTING_PATHS)}, not {self.eventing!r}")
        if site == 1 and self.sink_url:
            return self.sink_url
        return f"{self.broker_urls[site]}{EVENTING_PATHS[self.eventing]}"

    def mobility(self, site: int) -> dict[str, Any]:
        """The detector's `mobility` section at ``site`` (docs/detector.md): which gNBs and UPF N3
        addresses make each site, each site's sink, the other sites' detectors as peers."""
        from testbed.sim.topology import SITE_GNB_N3_IP, SITE_UPF_N3_IP

        return {"site": f"site{site}",
                "sites": {f"site{k}": {"gnbs": [SITE_GNB_N3_IP[k]], "upfs": [SITE_UPF_N3_IP[k]],
                                       "sink": self._sink(k)} for k in self.site_numbers()},
                "peers": [self.detector_urls[k] for k in self.site_numbers() if k != site],
                "prewarm": {"enabled": self.prewarm}}

    def _start_detector(self, site: int = 1) -> None:
        url = self.detector_urls[site]
        name = self.part("detector", site)
        token_file = self.workdir / "detector.token"
        token_file.write_text(self.token + "\n")
        token_file.chmod(0o600)
        sink = self._sink(site)
        at = f" of site {site}" if self.sites > 1 else ""
        self.progress(f"starting the detector{at} on {url} (sink {sink})")
        (self.workdir / name).mkdir(exist_ok=True)
        env = {"DETECTOR_MOBILITY": json.dumps(self.mobility(site))} if self.sites > 1 else None
        proc, log = self._spawn(name, [
            sys.executable, "-m", "detector", "serve", "--listen", url.removeprefix("http://"),
            "--sink", sink, "--rules", str(self.rules),
            "--outbox", str(self.workdir / name / "outbox.db"), "--token-file", str(token_file),
            "--detector-id", "demo" if site == 1 else f"demo-site{site}", "--ingest-time", *self.detector_args],
            env)
        wait_http(f"{url}/healthz", f"the detector{at}", proc, log=log)

    def _start_tap(self, site: int = 1) -> None:
        ifs = self.lab.tap_interfaces(site) if self.sites > 1 else self.lab.tap_interfaces()
        name = self.part("tap", site)
        self.progress(f"starting upf-tap live on {ifs['netns']}: {ifs['n3']} (N3) and {ifs['n4']} (N4)")
        env = None
        if self.keep_capture and site == 1:
            from mec_common.fdstore import FdStore

            self.fdstore = FdStore(self.workdir / "tap.notify").start()
            env = self.fdstore.env()
        proc, log = self._spawn(name, [
            sys.executable, "-m", "upf_tap", "live", "--netns", ifs["netns"], "--iface", ifs["n3"],
            "--iface", ifs["n4"], "--detector", self.detector_urls[site], "--token-file",
            str(self.workdir / "detector.token"), "--tap", f"upf{site}", "--report-every", "60", *self.tap_args], env)
        self._wait_capturing(proc, log, 0)
        if self.keep_capture and site == 1:  # the tap stores its sockets as it opens them, before it says it captures
            deadline = time.monotonic() + 5
            while len(self.fdstore.stored()) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)

    @staticmethod
    def _wait_capturing(proc: subprocess.Popen[bytes], log: Path, since: int) -> None:
        """Until the tap's log (past byte ``since``) says it captures."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while b"capturing on" not in log.read_bytes()[since:]:
            if proc.poll() is not None:
                raise StackError(f"upf-tap live exited with status {proc.returncode}:\n"
                                 f"{log.read_text(errors='replace')[-800:]}")
            if time.monotonic() > deadline:
                raise StackError("upf-tap live did not start capturing")
            time.sleep(0.05)

    # ------------------------------------------------------------------ observation
    def broker_events(self, since: int = 0, site: int = 1) -> list[dict[str, Any]]:
        return list(http_json(f"{self.broker_urls.get(site, self.broker_url)}/_local/events?since={since}"))

    def broker_stats(self, site: int = 1) -> dict[str, Any]:
        return dict(http_json(f"{self.broker_urls.get(site, self.broker_url)}/_local/stats"))

    def invocations(self, site: int | None = None) -> list[dict[str, Any]]:
        """Every function invocation so far (handler start/end), from the functions' journals; of
        one site's functions, or (None) of every site's, each with its ``site``."""
        out: list[dict[str, Any]] = []
        for k in self.site_numbers() if site is None else (site,):
            for path in sorted((self.workdir / self.part("broker", k)).glob("**/invocations.jsonl")):
                for line in path.read_text().splitlines():
                    if line.strip():
                        rec = json.loads(line)
                        if self.sites > 1:
                            rec["site"] = k
                        out.append(rec)
        return out
