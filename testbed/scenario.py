"""Scenarios: UE actions with timing, and the CloudEvents and functions they must cause.

    testbed scenario run FILE [--backend sim|lab] [--workdir DIR] [--json]
    testbed scenario check FILE

A scenario file (YAML) - see docs/scenarios.md::

    name: buy-click
    ues: 2
    eventing: broker        # or channel: the detector's sink (k8s/knative/broker.yaml or channel.yaml)
    sites: 1                # 2: two MEC sites (docs/sim-sites.md), for handover and relocate
    actions:
      - {ue: 1, at: 0.5, http: {method: POST, url: "http://shop.mec.local/api/v1/buy?item=3"}}
      - {ue: 2, at: 0.5, dns: {qname: shop.mec.local}}
      - {ue: 1, at: 1.0, mqtt: {topic: sensors/ue1/temp, message: "21.5"}}
      - {ue: 2, at: 1.0, ping: {host: 10.200.0.10}}
      - {ue: 2, at: 2.0, release: {}}
      # with sites: 2 -- {ue: 1, at: 3.0, handover: {to: gnb2}} (path switch to the other gNB, same
      # UPF) and {ue: 1, at: 6.0, relocate: {to: site2, hold: 1}} (a new PDU session at site 2's UPF;
      # the old one is kept `hold` seconds for the connections still on it, then released)
    expect:
      deadline: 15
      cloudevents:
        - {type: mec.app.buy, subject: imsi-999700000000001, extensions: {dnn: internet}}
        # site: N -- seen at site N's broker (default: any site's)
      functions:
        - {service: fn-buy, min: 1}     # site: N -- run by site N's functions (default: any site's)
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed.constants import supi

COMPOSE_FILE = Path(__file__).resolve().parent.parent / "compose" / "docker-compose.yaml"

UE_ACTIONS = ("http", "dns", "mqtt", "ping")
MOBILITY_ACTIONS = ("handover", "relocate")   # the core's procedures (need sites: 2)
CORE_ACTIONS = ("release", *MOBILITY_ACTIONS)  # done by the testbed at their time, not in the UE
LAB_ACTIONS = (*UE_ACTIONS, *CORE_ACTIONS)
EXPECT_EVENT_KEYS = {"type", "subject", "source", "extensions", "count", "data", "site"}
MAX_SITES = 2


class ScenarioError(ValueError):
    """The scenario file is not valid; the message names the file and the place."""


@dataclass
class Action:
    ue: int
    at: float
    kind: str
    spec: dict[str, Any]
    tag: str = ""

    def plan_entry(self) -> dict[str, Any]:
        return {"at": self.at, self.kind: self.spec, "tag": self.tag}


@dataclass
class ExpectedEvent:
    type: str
    subject: str | None = None
    source: str | None = None
    extensions: dict[str, str] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    count: int = 1
    site: int | None = None   # at that site's broker only

    def matches(self, attrs: dict[str, Any], data: Any) -> bool:
        def ok(pattern: str | None, value: Any) -> bool:
            return pattern is None or (value is not None and fnmatch.fnmatchcase(str(value), str(pattern)))

        if not (ok(self.type, attrs.get("type")) and ok(self.subject, attrs.get("subject"))
                and ok(self.source, attrs.get("source"))):
            return False
        if not all(ok(v, attrs.get(k)) for k, v in self.extensions.items()):
            return False
        if self.data:
            if not isinstance(data, dict):
                return False
            return all(ok(v, data.get(k)) for k, v in self.data.items())
        return True

    def describe(self) -> str:
        parts = [f"type={self.type}"]
        if self.subject:
            parts.append(f"subject={self.subject}")
        parts += [f"{k}={v}" for k, v in {**self.extensions, **self.data}.items()]
        if self.site is not None:
            parts.append(f"at site {self.site}")
        return " ".join(parts) + (f" (x{self.count})" if self.count != 1 else "")


@dataclass
class Scenario:
    name: str
    ues: int
    actions: list[Action]
    events: list[ExpectedEvent]
    functions: dict[str, int]
    deadline: float
    path: Path | None = None
    eventing: str = "broker"   # the detector's sink: the Broker (Triggers) or the Channel (Subscriptions)
    sites: int = 1
    function_sites: dict[str, int | None] = field(default_factory=dict)  # functions' key -> the site it must run at


def load_scenario(path: Path) -> Scenario:
    """Read and check a scenario file; ScenarioError says exactly what is wrong."""
    where = str(path)
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ScenarioError(f"{where}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ScenarioError(f"{where}: not valid YAML: {e}".splitlines()[0]) from None
    if not isinstance(doc, dict):
        raise ScenarioError(f"{where}: expected a mapping with name, ues, actions, expect")
    unknown = set(doc) - {"name", "ues", "actions", "expect", "description", "eventing", "sites"}
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {sorted(unknown)}")
    eventing = doc.get("eventing", "broker")
    if eventing not in ("broker", "channel"):
        raise ScenarioError(f"{where}: eventing must be broker or channel, not {eventing!r}")
    sites = doc.get("sites", 1)
    if not isinstance(sites, int) or not 1 <= sites <= MAX_SITES:
        raise ScenarioError(f"{where}: sites must be 1 or {MAX_SITES}")
    ues = doc.get("ues", 1)
    if not isinstance(ues, int) or not 1 <= ues <= 250:
        raise ScenarioError(f"{where}: ues must be an integer from 1 to 250")
    actions: list[Action] = []
    for i, a in enumerate(doc.get("actions") or []):
        at = f"{where}: actions[{i}]"
        if not isinstance(a, dict):
            raise ScenarioError(f"{at}: expected a mapping")
        kinds = [k for k in a if k in LAB_ACTIONS]
        if len(kinds) != 1:
            raise ScenarioError(f"{at}: exactly one of {', '.join(LAB_ACTIONS)} is needed, got {sorted(a)}")
        extra = set(a) - {"ue", "at", "tag", kinds[0]}
        if extra:
            raise ScenarioError(f"{at}: unknown key(s) {sorted(extra)}")
        ue = a.get("ue", 1)
        if not isinstance(ue, int) or not 1 <= ue <= ues:
            raise ScenarioError(f"{at}: ue must be from 1 to {ues}")
        try:
            when = float(a.get("at", 0))
        except (TypeError, ValueError):
            raise ScenarioError(f"{at}: at must be a number of seconds") from None
        spec = a[kinds[0]] or {}
        if not isinstance(spec, dict):
            raise ScenarioError(f"{at}: {kinds[0]} takes a mapping")
        required = {"http": "url", "dns": "qname", "mqtt": "topic", "ping": "host",
                    "handover": "to", "relocate": "to"}.get(kinds[0])
        if required and required not in spec:
            raise ScenarioError(f"{at}: {kinds[0]} needs {required}")
        if kinds[0] in MOBILITY_ACTIONS:
            if sites < 2:
                raise ScenarioError(f"{at}: {kinds[0]} needs two MEC sites (sites: 2)")
            spec = {**spec, "to": _target(spec["to"], "gnb" if kinds[0] == "handover" else "site", sites,
                                          f"{at}.{kinds[0]}.to")}
            hold = spec.get("hold", 0)  # relocate: seconds the old session is kept for its connections
            if set(spec) - {"to", "hold"} or not isinstance(hold, int | float) or not 0 <= hold <= 60:
                raise ScenarioError(f"{at}: {kinds[0]} takes to (and, for relocate, hold: 0-60 seconds)")
        actions.append(Action(ue, when, kinds[0], spec, str(a.get("tag", ""))))
    expect = doc.get("expect") or {}
    if not isinstance(expect, dict):
        raise ScenarioError(f"{where}: expect must be a mapping")
    events = []
    for i, exp in enumerate(expect.get("cloudevents") or []):
        at = f"{where}: expect.cloudevents[{i}]"
        if not isinstance(exp, dict) or "type" not in exp:
            raise ScenarioError(f"{at}: needs at least a type")
        extra = set(exp) - EXPECT_EVENT_KEYS
        if extra:
            raise ScenarioError(f"{at}: unknown key(s) {sorted(extra)}")
        site = None if exp.get("site") is None else _target(exp["site"], "site", sites, f"{at}.site")
        events.append(ExpectedEvent(str(exp["type"]), exp.get("subject"), exp.get("source"),
                                    {k: str(v) for k, v in (exp.get("extensions") or {}).items()},
                                    dict(exp.get("data") or {}), int(exp.get("count", 1)), site))
    functions = {}
    function_sites: dict[str, int | None] = {}
    for i, f in enumerate(expect.get("functions") or []):
        if not isinstance(f, dict) or "service" not in f:
            raise ScenarioError(f"{where}: expect.functions[{i}]: needs service")
        fsite = None if f.get("site") is None else _target(f["site"], "site", sites, f"{where}: expect.functions[{i}].site")
        key = str(f["service"]) if fsite is None else f"{f['service']}@site{fsite}"  # one service may be expected per site
        functions[key] = int(f.get("min", 1))
        function_sites[key] = fsite
    deadline = float(expect.get("deadline", 15))
    return Scenario(str(doc.get("name") or Path(path).stem), ues, sorted(actions, key=lambda a: a.at),
                    events, functions, deadline, Path(path), eventing, sites, function_sites)


def _target(value: Any, prefix: str, sites: int, where: str) -> int:
    """A site or gNB named N or "siteN" / "gnbN" (the sim has one gNB per site)."""
    text = str(value)
    n = text.removeprefix(prefix)
    if not n.isdigit() or not 1 <= int(n) <= sites:
        raise ScenarioError(f"{where}: expected {prefix}1..{prefix}{sites} (or 1..{sites}), got {value!r}")
    return int(n)


# ---------------------------------------------------------------------- sim backend
@dataclass
class Outcome:
    scenario: str
    actions: list[dict[str, Any]]
    events: list[dict[str, Any]]
    invocations: list[dict[str, Any]]
    checks: list[tuple[str, bool, str]]

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.checks)


def run_ue_plans(stack: Any, actions: list[Action], start: float) -> list[dict[str, Any]]:
    """Run each UE's actions in its namespace (one process per UE, all at once); the core's
    (release, handover, relocate) here, each at its time."""
    by_ue: dict[int, list[Action]] = {}
    releases = []
    for a in actions:
        if a.kind in CORE_ACTIONS:
            releases.append(a)
        else:
            by_ue.setdefault(a.ue, []).append(a)
    procs = {}
    for ue, acts in by_ue.items():
        plan = json.dumps({"start": start, "actions": [a.plan_entry() for a in acts]})
        procs[ue] = (subprocess.Popen(["ip", "netns", "exec", stack.lab.ue_netns(ue), sys.executable, "-m",
                                       "testbed.ue_actions"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True), plan, acts)
    outs: dict[int, tuple[str, str]] = {}
    threads = []
    # as long as the plan lasts, plus room for actions that ran late (each waits at most its timeout)
    limit = max(600.0, start - time.time() + max((a.at for a in actions), default=0.0) + 300.0)
    for ue, (proc, plan, _) in procs.items():
        def talk(ue: int = ue, proc: subprocess.Popen[str] = proc, plan: str = plan) -> None:
            outs[ue] = proc.communicate(plan, timeout=limit)
        t = threading.Thread(target=talk, daemon=True)
        t.start()
        threads.append(t)
    core: list[dict[str, Any]] = []
    for a in releases:
        delay = start + a.at - time.time()
        if delay > 0:
            time.sleep(delay)
        rec: dict[str, Any] = {"ue": a.ue, "at": a.at, "kind": a.kind, "ok": True, "tag": a.tag, "spec": a.spec,
                               "t": time.time()}
        try:
            if a.kind == "release":
                stack.lab.release_ue(a.ue)
            elif a.kind == "handover":
                rec["session"] = stack.lab.handover(a.ue, to_gnb=a.spec["to"])
            else:
                rec["session"] = stack.lab.relocate(a.ue, to_site=a.spec["to"], hold=float(a.spec.get("hold", 0.0)))
        except Exception as e:  # a failed procedure is a failed action, reported with the others
            rec.update(ok=False, error=f"{type(e).__name__}: {e}")
        rec["elapsed"] = round(time.time() - rec["t"], 4)
        core.append(rec)
    for t in threads:
        t.join()
    results = []
    for ue, (proc, _, acts) in procs.items():
        stdout, stderr = outs.get(ue, ("", ""))
        lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        if len(lines) != len(acts):
            raise RuntimeError(f"UE {ue}: the action runner failed (status {proc.returncode}): {stderr.strip()[-400:]}")
        for rec, act in zip(lines, acts, strict=True):
            rec.update(ue=ue, at=act.at, spec=act.spec)
            results.append(rec)
    results += core
    return sorted(results, key=lambda r: (r["at"], r["ue"]))


def check_expectations(scn: Scenario, stack: Any, since: int, t_begin: float
                       ) -> tuple[list[tuple[str, bool, str]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Poll the broker and the functions until every expectation holds or the deadline passes.

    Only what happened after the scenario began counts (broker events after sequence ``since``,
    invocations that started after ``t_begin``), so scenarios can share one running stack.
    """
    deadline = time.monotonic() + scn.deadline
    sites = range(1, getattr(stack, "sites", 1) + 1)
    while True:
        events = []
        for k in sites:  # since: a sequence number of site 1's broker; the other sites' start at 0
            events += [{**e, "site": k} for e in stack.broker_events(since if k == 1 else 0, site=k)]
        invocations = [i for i in stack.invocations() if i.get("start", 0) >= t_begin]
        checks = []
        for exp in scn.events:
            n = sum(1 for e in events if (exp.site is None or e["site"] == exp.site)
                    and exp.matches(e["attributes"], _json(e.get("data"))))
            checks.append((f"CloudEvent {exp.describe()}", n >= exp.count, f"{n} seen"))
        for svc, least in scn.functions.items():
            at = scn.function_sites.get(svc)
            name = svc.split("@")[0]
            n = sum(1 for i in invocations if i.get("service") == name and i.get("status", 500) < 300
                    and (at is None or i.get("site", 1) == at))
            where = f" at site {at}" if at is not None else ""
            checks.append((f"function {name} ran at least {least}x{where}", n >= least, f"{n} invocations"))
        if all(ok for _, ok, _ in checks) or time.monotonic() > deadline:
            return checks, events, invocations
        time.sleep(0.2)


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def run_on_stack(scn: Scenario, stack: Any) -> Outcome:
    if scn.sites > getattr(stack, "sites", 1):
        raise ScenarioError(f"scenario {scn.name} needs {scn.sites} MEC sites; the stack has {stack.sites}")
    since = max((e["seq"] for e in stack.broker_events(0)), default=0)
    t_begin = time.time()
    actions = run_ue_plans(stack, scn.actions, t_begin + 0.3)
    checks, events, invocations = check_expectations(scn, stack, since, t_begin)
    failed_actions = [a for a in actions if not a.get("ok")]
    checks.insert(0, ("every UE action succeeded", not failed_actions,
                      "; ".join(f"UE {a['ue']} {a['kind']}: {a.get('error') or a.get('status')}"
                                for a in failed_actions) or f"{len(actions)} actions"))
    return Outcome(scn.name, actions, events, invocations, checks)


# ---------------------------------------------------------------------- lab backend
def sim_to_lab_address(text: str) -> str:
    """Scenarios name the sim's DN addresses; in the lab the same services sit at the lab's (compose/networks.yaml)."""
    import re

    from testbed.lab import layout as L
    from testbed.sim import topology as T

    for sim_ip, lab_ip in ((T.SHOP_IP, L.ADDR["app"]["n6"]), (T.MQTT_IP, L.ADDR["mqtt"]["n6"]),
                           (T.DNS_IP, L.ADDR["dns"]["n6"])):
        text = re.sub(rf"(?<![\d.]){re.escape(sim_ip)}(?![\d])", lab_ip, text)
    return text


def lab_commands(scn: Scenario) -> list[list[str]]:
    """`docker compose exec` commands that perform the actions in UERANSIM's UE containers (uesimtun0)."""
    cmds = []
    for a in scn.actions:
        ue = f"ue{a.ue}"
        if a.kind in MOBILITY_ACTIONS:
            raise ScenarioError(f"{scn.name}: {a.kind} cannot run in the lab: UERANSIM has no handover and one "
                                "UPF (docs/lab.md, 'Mobility'); run it on the sim backend")
        if a.kind == "http":
            cmd = ["curl", "-sS", "--interface", "uesimtun0", "-X", a.spec.get("method", "GET"),
                   sim_to_lab_address(a.spec["url"])]
        elif a.kind == "dns":
            cmd = ["getent", "hosts", a.spec["qname"]]
        elif a.kind == "ping":
            cmd = ["ping", "-c", "1", "-I", "uesimtun0", sim_to_lab_address(a.spec["host"])]
        elif a.kind == "mqtt":
            cmd = ["mosquitto_pub", "-h", sim_to_lab_address(a.spec.get("host", "mqtt.mec.local")), "-t", a.spec["topic"],
                   "-m", str(a.spec.get("message", ""))]
        else:
            cmd = ["nr-cli", supi(a.ue), "--exec", "ps-release 1"]
        cmds.append(["docker", "compose", "-f", str(COMPOSE_FILE), "exec", "-T", ue, *cmd])
    return cmds


# ---------------------------------------------------------------------- CLI
def add_scenario_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("scenario", help="run a scenario (UE actions + expectations) against sim or lab",
                              description="Run a scenario file: UE actions with timing, and the CloudEvents "
                                          "and function runs they must cause within a deadline.")
    sub = p.add_subparsers(dest="scenario_cmd", required=True, metavar="ACTION")
    run = sub.add_parser("run", help="run a scenario and check its expectations")
    run.add_argument("file", type=Path, metavar="FILE")
    run.add_argument("--backend", choices=("sim", "lab"), default="sim",
                     help="sim: network-namespace lab, local broker (default, root); lab: the Docker/kind lab")
    run.add_argument("--workdir", type=Path, metavar="DIR", help="where logs and state go (default: a temp dir)")
    run.add_argument("--lab-id", default="scn", help="sim lab id (namespaces are named mec<ID>-…)")
    run.add_argument("--json", action="store_true", help="print the outcome as JSON")
    run.add_argument("--dry-run", action="store_true", help="lab backend: print the commands only")
    chk = sub.add_parser("check", help="only read and check a scenario file")
    chk.add_argument("file", type=Path, metavar="FILE")
    return p


def print_outcome(out: Outcome) -> None:
    print(f"scenario {out.scenario}: {'PASS' if out.ok else 'FAIL'}")
    for name, ok, detail in out.checks:
        print(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}")


def run_scenario(args: argparse.Namespace) -> int:
    try:
        scn = load_scenario(args.file)
    except ScenarioError as e:
        print(f"testbed scenario: {e}", file=sys.stderr)
        return 2
    if args.scenario_cmd == "check":
        print(f"{args.file}: ok ({len(scn.actions)} actions, {len(scn.events)} expected CloudEvents, "
              f"{len(scn.functions)} functions, {scn.ues} UEs)")
        return 0
    if args.backend == "lab":
        try:
            cmds = lab_commands(scn)
        except ScenarioError as e:
            print(f"testbed scenario: {e}", file=sys.stderr)
            return 2
        if args.dry_run:
            for c in cmds:
                print(shlex.join(c))
            return 0
        import shutil

        if not shutil.which("docker"):
            print("testbed scenario: the lab backend needs docker (see docs/lab.md)", file=sys.stderr)
            return 2
        failed = 0
        for c in cmds:
            print("+", shlex.join(c), flush=True)
            failed += subprocess.run(c, check=False).returncode != 0
        print("expectations: check the functions' logs with `testbed lab smoke` (kubectl logs)")
        return 1 if failed else 0
    import os

    if os.geteuid() != 0:
        print("testbed scenario: the sim backend needs root (network namespaces)", file=sys.stderr)
        return 2
    from testbed.stack import Stack

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mec-scenario-"))
    stack = Stack(workdir, "sim", ues=scn.ues, lab_id=args.lab_id, eventing=scn.eventing, sites=scn.sites,
                  progress=lambda m: print(f"  .. {m}", file=sys.stderr, flush=True))
    with stack:
        out = run_on_stack(scn, stack)
    if args.json:
        print(json.dumps({"scenario": out.scenario, "ok": out.ok, "checks": out.checks, "actions": out.actions},
                         indent=1))
    else:
        print_outcome(out)
    print(f"logs: {workdir}", file=sys.stderr)
    return 0 if out.ok else 1
