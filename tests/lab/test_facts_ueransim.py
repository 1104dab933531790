"""Our UERANSIM configs and gNB/UE services against what UERANSIM v3.2.6 really reads and does.

Facts: tests/lab/facts/ueransim.yaml (aligungr/UERANSIM, tag v3.2.6, commit 384636f4). The
offline tests check testbed/lab/render.py's gnb_config()/ue_config()/compose_doc() against
them; the upstream tests re-derive the facts from the source snapshot and skip without it.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from typing import Any

import pytest
import yaml
from labfacts import facts, require_upstream, upstream_text

from testbed import constants as C
from testbed.lab import layout as L
from testbed.lab import render, subscribers

F = facts("ueransim")
REPO, TAG = F["source"]["repo"], F["source"]["tag"]
P = F["source"]["paths"]

SUBS = subscribers.generate(3)


def _gnb() -> dict[str, Any]:
    return yaml.safe_load(render.gnb_config())


def _ue(i: int = 0) -> dict[str, Any]:
    return yaml.safe_load(render.ue_config(SUBS[i]))


def _services() -> dict[str, Any]:
    return render.compose_doc(SUBS)["services"]


# ------------------------------------------------------------------ walking a config by key path

def key_paths(doc: Any, prefix: str = "") -> set[str]:
    """Every key path of a parsed YAML document: `a.b` for maps, `a[]` for sequence elements."""
    out: set[str] = set()
    if isinstance(doc, dict):
        for k, v in doc.items():
            p = f"{prefix}.{k}" if prefix else str(k)
            out.add(p)
            out |= key_paths(v, p)
    elif isinstance(doc, list):
        for item in doc:
            if isinstance(item, dict | list):
                out |= key_paths(item, f"{prefix}[]")
    return out


def _split(path: str) -> list[str]:
    """`sessions[].slice.sst` -> ["sessions", "[]", "slice", "sst"]."""
    return re.findall(r"\[\]|[^.\[\]]+", path)


def _parents(doc: Any, parts: list[str]) -> list[Any]:
    """The nodes that hold the last part of a key path (every element for `[]`)."""
    nodes = [doc]
    for part in parts[:-1]:
        nxt: list[Any] = []
        for n in nodes:
            if part == "[]":
                nxt.extend(n if isinstance(n, list) else [])
            elif isinstance(n, dict) and n.get(part) is not None:
                nxt.append(n[part])
        nodes = nxt
    return nodes


def values_at(doc: Any, path: str) -> list[Any]:
    parts = _split(path)
    if parts[-1] == "[]":
        return [v for n in _parents(doc, parts) if isinstance(n, list) for v in n]
    return [n[parts[-1]] for n in _parents(doc, parts) if isinstance(n, dict) and n.get(parts[-1]) is not None]


def missing_required(doc: dict[str, Any], keys: dict[str, dict[str, Any]]) -> list[str]:
    """Required keys absent where their parent is present (UERANSIM's "Field 'x' is missing")."""
    out = []
    for path, spec in keys.items():
        parts = _split(path)
        if not spec["required"] or parts[-1] == "[]":
            continue
        for parent in _parents(doc, parts):
            if isinstance(parent, dict) and parent.get(parts[-1]) is None:
                out.append(path)
    return sorted(set(out))


def _as_int(v: Any) -> int | None:
    """yaml-cpp's integer reading as UERANSIM does it: base detection, leading zeros stripped."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    s = str(v)
    try:
        return int(s, 10) if s.isdigit() else int(s, 0)
    except ValueError:
        return None


def value_errors(doc: dict[str, Any], keys: dict[str, dict[str, Any]]) -> list[str]:
    errs = []
    for path, spec in keys.items():
        for v in values_at(doc, path):
            where = f"{path}={v!r}"
            for kind in spec["as"]:
                if kind in ("int32", "int64"):
                    n = _as_int(v)
                    if n is None:
                        errs.append(f"{where}: not an integer")
                    elif "range" in spec and not spec["range"][0] <= n <= spec["range"][1]:
                        errs.append(f"{where}: outside {spec['range']}")
                elif kind == "bool" and not isinstance(v, bool):
                    errs.append(f"{where}: not a YAML bool")
                elif kind == "string":
                    if isinstance(v, dict | list):
                        errs.append(f"{where}: not a scalar")
                    elif "length" in spec and not spec["length"][0] <= len(str(v)) <= spec["length"][1]:
                        errs.append(f"{where}: length {len(str(v))} outside {spec['length']}")
                elif kind == "ip":
                    try:
                        ipaddress.ip_address(str(v))
                    except ValueError:
                        errs.append(f"{where}: not an IP literal (the lab uses static addresses)")
                elif kind == "sequence" and not isinstance(v, list):
                    errs.append(f"{where}: not a sequence")
                elif kind == "map" and not isinstance(v, dict):
                    errs.append(f"{where}: not a map")
            if "values" in spec and str(v) not in spec["values"]:
                errs.append(f"{where}: not one of {spec['values']}")
            if spec.get("hex") and not re.fullmatch(r"[0-9A-Fa-f]+", str(v)):
                errs.append(f"{where}: not hex")
            if "pattern" in spec and not re.fullmatch(spec["pattern"], str(v)):
                errs.append(f"{where}: does not match {spec['pattern']}")
    return errs


# ------------------------------------------------------------------ offline: our configs

def test_gnb_config_keys_are_all_read_by_nr_gnb() -> None:
    """Every key of our gnb.yaml is one nr-gnb reads (aligungr/UERANSIM v3.2.6, src/gnb.cpp ReadConfigYaml)."""
    unread = key_paths(_gnb()) - set(F["nr-gnb"]["keys"])
    assert not unread, f"gnb.yaml keys UERANSIM 3.2.6 ignores: {sorted(unread)}"


def test_ue_config_keys_are_all_read_by_nr_ue() -> None:
    """Every key of our ueN.yaml is one nr-ue reads (aligungr/UERANSIM v3.2.6, src/ue.cpp ReadConfigYaml)."""
    unread = key_paths(_ue()) - set(F["nr-ue"]["keys"])
    assert not unread, f"ue.yaml keys UERANSIM 3.2.6 ignores: {sorted(unread)}"


def test_ue_config_writes_no_suci_keys_v3_2_6_would_ignore() -> None:
    """v3.2.6 reads no SUCI keys and always sends the null scheme with routing indicator 0000
    (aligungr/UERANSIM v3.2.6 src/ue/nas/mm/identity.cpp generateSuci): the keys 3.2.7 added stay out."""
    nr = F["nr-ue"]["not_read"]
    assert not key_paths(_ue()) & set(nr["keys"])
    assert nr["suci_at_v3_2_6"]["protectionScheme"] == 0, "the tap reads the MSIN from a null-scheme SUCI"


@pytest.mark.parametrize("which", ["nr-gnb", "nr-ue"])
def test_required_keys_are_present(which: str) -> None:
    """Every key nr-gnb/nr-ue require (Get*/AssertHas* without a HasField guard) is in our file
    (aligungr/UERANSIM v3.2.6, src/gnb.cpp and src/ue.cpp ReadConfigYaml, src/utils/yaml_utils.cpp)."""
    docs = [_gnb()] if which == "nr-gnb" else [_ue(i) for i in range(len(SUBS))]
    for doc in docs:
        assert missing_required(doc, F[which]["keys"]) == [], f"{which} would exit with 'Field ... is missing'"


@pytest.mark.parametrize("which", ["nr-gnb", "nr-ue"])
def test_values_have_the_type_range_and_length_upstream_checks(which: str) -> None:
    """Types, ranges, lengths and enumerations as yaml::GetInt32/GetString/GetBool/GetIp check them
    (aligungr/UERANSIM v3.2.6, src/gnb.cpp, src/ue.cpp, src/utils/yaml_utils.cpp, src/utils/common_types.cpp)."""
    docs = [_gnb()] if which == "nr-gnb" else [_ue(i) for i in range(len(SUBS))]
    for doc in docs:
        assert value_errors(doc, F[which]["keys"]) == []


def test_ue_sessions_name_the_lab_dnn_and_slice() -> None:
    """sessions[].apn is the DNN and sessions[].slice the S-NSSAI nr-ue asks for
    (aligungr/UERANSIM v3.2.6, src/ue.cpp: SessionConfig apn/sNssai)."""
    for i, sub in enumerate(SUBS):
        (sess,) = _ue(i)["sessions"]
        assert sess["apn"] == sub.dnn == C.DNN
        assert sess["slice"]["sst"] == sub.sst
        assert sess["type"] == "IPv4"


def test_tun_name_and_mtu_used_by_the_lab_are_uesimtun0_and_1400() -> None:
    """One nr-ue process (no -n), one session per container: its TUN is uesimtun0 with MTU 1400
    (aligungr/UERANSIM v3.2.6, src/utils/constants.hpp TunNamePrefix/TunMtu, src/ue/tun/config.cpp)."""
    tun = F["tun"]
    svcs = _services()
    for i, sub in enumerate(SUBS):
        svc = svcs[f"ue{sub.n}"]
        assert "-n" not in svc["entrypoint"] and "--num-of-UE" not in svc["entrypoint"]
        assert len(_ue(i)["sessions"]) == 1
        assert tun["first_name"] in svc["healthcheck"]["test"][1]
    assert tun["mtu"] == L.MTU, (
        f"nr-ue sets {tun['prefix']}* to its constant MTU {tun['mtu']} whatever the SMF advertises")


def test_ue_services_can_create_and_route_the_tun() -> None:
    """nr-ue opens /dev/net/tun, needs CAP_NET_ADMIN, runs `ip rule`/`ip route` and appends to
    /etc/iproute2/rt_tables (aligungr/UERANSIM v3.2.6, src/ue/tun/config.cpp): root, the cap and the device."""
    for sub in SUBS:
        svc = _services()[f"ue{sub.n}"]
        assert "NET_ADMIN" in svc.get("cap_add", [])
        assert any(d.split(":")[0] == "/dev/net/tun" for d in svc.get("devices", []))
        assert svc.get("user") in (None, "root", "0", "0:0"), "nr-ue must write /etc/iproute2/rt_tables as root"
        assert not svc.get("read_only"), "nr-ue appends its routing table to /etc/iproute2/rt_tables"


def test_gnb_healthcheck_matches_what_nr_cli_prints() -> None:
    """The gNB is healthy when `nr-cli <node> -e status` prints `is-ngap-up: true`; the node is found with
    `nr-cli -d` (aligungr/UERANSIM v3.2.6, src/cli.cpp options d/e, src/gnb/types.cpp ToJson(GnbStatusInfo),
    src/gnb/app/cmd_handler.cpp STATUS -> dumpYaml). It never turns false again (src/gnb/ngap/interface.cpp)."""
    cli = F["cli"]
    hc = _services()["gnb"]["healthcheck"]["test"][1]
    assert f"'{cli['gnb_status']['prints']}'" in hc
    assert re.search(r"nr-cli (-d|--dump)\b", hc) and re.search(r"(-e|--exec) status\b", hc)


def test_gnb_and_ue_services_run_the_upstream_binaries_as_pid_1() -> None:
    """gnb/ueN override the image entrypoint with nr-gnb/nr-ue -c <our file> (binaries: aligungr/UERANSIM
    v3.2.6 CMakeLists.txt, makefile; signals: src/lib/app/base_app.cpp app::Initialize)."""
    sig = F["signals"]
    svcs = _services()
    for name, binary in [("gnb", "nr-gnb"), *((f"ue{s.n}", "nr-ue") for s in SUBS)]:
        svc = svcs[name]
        # ueN: compose/ueransim/ue-entrypoint.sh runs the command as its child (and deregisters on stop)
        ep = svc["command"] if name.startswith("ue") else svc["entrypoint"]
        assert svc.get("init") is True, f"{name}: Docker's init forwards SIGTERM and reaps"
        assert ep[0] == binary and binary in F["binaries"] and ep[1] == F["nr-ue"]["options"]["config"], (
            f"{name}: the image's /entrypoint.sh would envsubst its own /etc/ueransim template and run "
            f"{binary} without exec; we run {binary} directly on the rendered file")
        assert ep[2].startswith(render.UERANSIM_IN_CONTAINER + "/")
        assert sig["handler_installed"] and "SIGTERM" in sig["handled"] and sig["pid1_stops_on_sigterm"], (
            f"{name}: as PID 1, {binary} stops on `docker stop` only because UERANSIM installs a SIGTERM handler")
    # nr-ue exits on SIGTERM without a NAS Deregistration: the UE script switches it off first
    assert sig["nr-ue_deregisters_on_sigterm"] is False
    script = (L.COMPOSE_DIR / "ueransim/ue-entrypoint.sh").read_text()
    assert 'nr-cli "$UE_SUPI" -e "deregister switch-off"' in script and "trap stop TERM INT" in script


# ------------------------------------------------------------------ upstream: re-derive the facts

GETTERS = {"GetInt32": "int32", "GetInt64": "int64", "GetString": "string", "GetIp": "ip", "GetIp4": "ip4",
           "GetIp6": "ip6", "GetBool": "bool", "GetSequence": "sequence"}


def _num(s: str) -> int:
    return int(s.strip().rstrip("lLuU"), 0)


def config_reads(src: str) -> dict[str, dict[str, Any]]:
    """Key paths ReadConfigYaml() reads, with required/as/range/length/values/hex, from its C++ text."""
    body = src[src.index("ReadConfigYaml()\n{"):]
    body = body[: body.index("\n}\n")]
    var: dict[str, str] = {"config": ""}
    local: dict[str, str] = {}
    keys: dict[str, dict[str, Any]] = {}
    guarded: set[str] = set()

    def join(parent: str, key: str) -> str:
        return f"{parent}.{key}" if parent else key

    def entry(p: str, kind: str | None = None) -> dict[str, Any]:
        e = keys.setdefault(p, {"as": []})
        if kind and kind not in e["as"]:
            e["as"].append(kind)
        return e

    def node(expr: str) -> str:
        m = re.fullmatch(r'(\w+)(?:\["([^"]+)"\])?', expr)
        assert m, expr
        if m.group(2):
            p = join(var[m.group(1)], m.group(2))
            entry(p, "map")
            return p
        return var[m.group(1)]

    for line in body.splitlines():
        if m := re.search(r'for \(auto &(\w+) : yaml::GetSequence\((\w+(?:\["[^"]+"\])?), "([^"]+)"\)\)', line):
            p = join(node(m.group(2)), m.group(3))
            entry(p, "sequence")
            var[m.group(1)] = p + "[]"
        if m := re.search(r'auto (\w+) = (\w+)\["([^"]+)"\];', line):
            p = join(var[m.group(2)], m.group(3))
            entry(p, "map")
            var[m.group(1)] = p
        if (m := re.search(r"(\w+)\.as<std::string>\(\)", line)) and m.group(1) in var:
            entry(var[m.group(1)], "string")
        for m in re.finditer(r'yaml::(\w+)\((\w+(?:\["[^"]+"\])?), "([^"]+)"((?:, [^,)]+)*)\)', line):
            fn, expr, key, extra = m.groups()
            p = join(node(expr), key)
            if fn == "HasField":
                guarded.add(p)
                entry(p)
                continue
            if fn.startswith("AssertHas"):
                entry(p)
                continue
            kind = GETTERS[fn]
            e = entry(p, kind)
            args = [a for a in extra.split(",") if a.strip()]
            if len(args) == 2:
                e["length" if kind == "string" else "range"] = [_num(a) for a in args]
            if "FromHex(yaml::GetString(" in line:
                e["hex"] = True
            if lm := re.search(r"(?:std::string|auto) (\w+) = yaml::GetString\(", line):
                local[lm.group(1)] = p
        for m in re.finditer(r'\b(\w+) [!=]= "([^"]+)"', line):
            if m.group(1) in local:
                vals = keys[local[m.group(1)]].setdefault("values", [])
                if m.group(2) not in vals:
                    vals.append(m.group(2))
    for p, e in keys.items():
        e["required"] = p not in guarded
    return keys


def _comparable(keys: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {p: {k: v for k, v in e.items() if k != "pattern"} for p, e in keys.items()}


@pytest.mark.parametrize("which,path", [("nr-gnb", P["gnb_config"]), ("nr-ue", P["ue_config"])])
def test_upstream_config_keys_match_the_facts(which: str, path: str) -> None:
    """Re-derives key paths, required-ness, types, bounds and enumerations from ReadConfigYaml()
    (aligungr/UERANSIM, tag v3.2.6, src/gnb.cpp and src/ue.cpp)."""
    derived = config_reads(upstream_text(REPO, TAG, path))
    assert derived == _comparable(F[which]["keys"])


def test_upstream_supi_pattern() -> None:
    """supi is `imsi-` + 4..15 digits (aligungr/UERANSIM v3.2.6, src/utils/common_types.cpp Supi::Parse)."""
    src = upstream_text(REPO, TAG, P["supi"])
    body = src[src.index("Supi Supi::Parse"):][:800]
    lo, hi = (int(x) for x in re.search(r"size\(\) < (\d+)u \|\| val\.size\(\) > (\d+)u", body).groups())
    assert F["nr-ue"]["keys"]["supi"]["pattern"] == f"^imsi-[0-9]{{{lo},{hi}}}$"
    assert "'-'" in body and all(f"'{c}'" in body for c in "imsi")


def test_upstream_suci_keys_are_read_only_from_v3_2_7() -> None:
    """v3.2.6 reads none of the SUCI keys and hardcodes the null scheme; v3.2.7 reads them
    (aligungr/UERANSIM tags v3.2.6 and v3.2.7, src/ue.cpp; v3.2.6 src/ue/nas/mm/identity.cpp)."""
    nr = F["nr-ue"]["not_read"]
    at_tag = upstream_text(REPO, TAG, P["ue_config"])
    later = upstream_text(REPO, nr["first_read"], P["ue_config"])
    for key in nr["keys"]:
        assert f'"{key}"' not in at_tag
        assert f'yaml::HasField(config, "{key}")' in later
    suci = upstream_text(REPO, TAG, P["suci"])
    assert re.search(r'routingIndicator = "(\d+)"', suci).group(1) == nr["suci_at_v3_2_6"]["routingIndicator"]
    assert int(re.search(r"protectionSchemaId = (\d+)", suci).group(1)) == nr["suci_at_v3_2_6"]["protectionScheme"]
    assert int(re.search(r"homeNetworkPublicKeyIdentifier = (\d+)", suci).group(1)) == \
        nr["suci_at_v3_2_6"]["homeNetworkPublicKeyId"]


def test_upstream_binaries() -> None:
    """nr-gnb, nr-ue, nr-cli, libdevbnd.so and nr-binder are what `make` puts in build/
    (aligungr/UERANSIM v3.2.6, CMakeLists.txt add_executable/add_library, makefile, tools/nr-binder)."""
    cmake = upstream_text(REPO, TAG, "CMakeLists.txt")
    make = upstream_text(REPO, TAG, "makefile")
    exes = dict(re.findall(r"add_executable\(([\w-]+) (\S+)\)", cmake))
    libs = dict(re.findall(r"add_library\((\w+) SHARED (\S+)\)", cmake))
    copied = {c.rsplit("/", 1)[-1] for c in re.findall(r"^\s*cp (\S+) build/", make, re.M)}
    assert copied == set(F["binaries"])
    for name, b in F["binaries"].items():
        if b["kind"] == "executable":
            assert exes[name] == b["from"]
        elif b["kind"] == "shared library":
            assert libs[name.removeprefix("lib").removesuffix(".so")] == b["from"]
        else:
            assert upstream_text(REPO, TAG, b["from"]).startswith("#!/bin/bash")
            assert "LD_PRELOAD=./libdevbnd.so" in upstream_text(REPO, TAG, b["from"])


def _git_grep(pattern: str, *paths: str) -> list[str]:
    d = require_upstream(REPO, TAG)
    p = subprocess.run(["git", "--git-dir", str(d), "grep", "-n", "-E", pattern, TAG, "--", *paths],
                       capture_output=True, text=True)
    return p.stdout.splitlines()


def test_upstream_signal_handling() -> None:
    """app::Initialize() installs one handler for SIGTERM and SIGINT that runs at-exit callbacks, deletes
    the proc-table file and exits 0; nothing registers a callback, so nr-ue sends no deregistration
    (aligungr/UERANSIM v3.2.6, src/lib/app/base_app.cpp, src/lib/app/proc_table.cpp, src/gnb.cpp, src/ue.cpp)."""
    sig = F["signals"]
    base = upstream_text(REPO, TAG, P["signals"])
    installed = set(re.findall(r"std::signal\((SIG\w+), BaseSignalHandler\)", base))
    assert installed == set(sig["handled"]) and sig["handler_installed"]
    handler = base[base.index("BaseSignalHandler(int num)"):][:400]
    assert "exit(0)" in handler and "g_runAtExit" in handler and "g_deleteAtExit" in handler
    for main in (P["gnb_config"], P["ue_config"]):
        text = upstream_text(REPO, TAG, main)
        assert text.index("app::Initialize();") < text.index("ReadOptions(argc, argv)")
    callers = [ln for ln in _git_grep(r"\bRunAtExit\(", "src", ":!src/ext", ":!src/asn")
               if "src/lib/app/base_app." not in ln]
    assert callers == sig["run_at_exit_callers"] == []
    assert "DeleteAtExit(filePath)" in upstream_text(REPO, TAG, P["proc_table"])
    assert sig["nr-ue_deregisters_on_sigterm"] is False


def test_upstream_tun_interface() -> None:
    """The UE's TUN is uesimtun<lowest free index>, MTU 1400, routed through table rt_<name> with `ip`
    (aligungr/UERANSIM v3.2.6, src/utils/constants.hpp, src/ue/tun/config.cpp, src/ue/app/task.cpp)."""
    tun = F["tun"]
    consts = upstream_text(REPO, TAG, P["constants"])
    assert re.search(r'TunNamePrefix = "(\w+)"', consts).group(1) == tun["prefix"]
    assert int(re.search(r"TunMtu = (\d+)", consts).group(1)) == tun["mtu"]
    cfg = upstream_text(REPO, TAG, P["tun"])
    pick = cfg[cfg.index("NextInterfaceName(const std::string &prefix)"):][:900]
    assert "for (int i = 0;" in pick and "prefix + std::to_string(i)" in pick
    assert tun["first_name"] == tun["prefix"] + "0"
    assert re.search(r'#define ROUTING_TABLE_PREFIX "(\w+)"', cfg).group(1) == tun["routing_table_prefix"]
    assert f'"{tun["writes"]}"' in cfg
    for cmd in tun["routing_uses"]:
        assert f'"{cmd} ' in cfg
    assert "/dev/net/tun" in cfg
    assert "TunAllocate(cons::TunNamePrefix" in upstream_text(REPO, TAG, P["tun_setup"])


def test_upstream_cli_and_gnb_status() -> None:
    """nr-cli -d/--dump and -e/--exec; gNB `status` prints `is-ngap-up: <bool>` through dumpYaml; the proc
    table lives in /tmp/UERANSIM.proc-table/ (aligungr/UERANSIM v3.2.6, src/cli.cpp, src/gnb/types.cpp,
    src/gnb/app/cmd_handler.cpp, src/utils/json.cpp, src/utils/constants.hpp, src/lib/app/cli_cmd.cpp)."""
    cli = F["cli"]
    src = upstream_text(REPO, TAG, P["cli"])
    for flags in (cli["dump"], cli["exec"]):
        short, long_ = flags[0][1:], flags[1][2:]
        assert re.search(rf"\{{'{short}', \"{long_}\"", src)
    status = upstream_text(REPO, TAG, P["gnb_status"])
    key = re.search(r'ToJson\(const GnbStatusInfo &v\)\s*\{\s*return Json::Obj\(\{\{"([\w-]+)"', status).group(1)
    json_src = upstream_text(REPO, TAG, P["json_yaml"])
    assert 'v ? "true" : "false"' in json_src and 'stream << item.first << ": "' in json_src
    assert cli["gnb_status"]["prints"] == f"{key}: true"
    handler = upstream_text(REPO, TAG, P["gnb_cmd_handler"])
    assert re.search(r"STATUS: \{\s*sendResult\(msg\.address, ToJson\(m_base->appTask->m_statusInfo\)\.dumpYaml",
                     handler)
    consts = upstream_text(REPO, TAG, P["constants"])
    assert re.search(r'PROC_TABLE_DIR = "([^"]+)"', consts).group(1) == cli["proc_table_dir"]
    cmds = upstream_text(REPO, TAG, P["cli_commands"])
    gnb = cmds[cmds.index("g_gnbCmdEntries"):cmds.index("g_ueCmdEntries")]
    ue = cmds[cmds.index("g_ueCmdEntries"):][:2500]
    ue = ue[: ue.index("};")]
    assert re.findall(r'\{"([\w-]+)",', gnb) == cli["gnb_commands"]
    assert re.findall(r'\{"([\w-]+)",', ue) == cli["ue_commands"]
    setters = _git_grep(r"isNgapUp = ", "src/gnb")
    assert [s.split(":", 2)[1] for s in setters] == ["src/gnb/app/task.cpp", "src/gnb/ngap/interface.cpp"]
    assert any("isNgapUp = true" in s for s in setters) and not any("= false" in s for s in setters)


# ---------------------------------------------------------------- mobility (issue 18)
def test_mobility_is_refused_in_the_lab_and_documented() -> None:
    """UERANSIM cannot hand over (facts: mobility), so the lab backend refuses handover/relocate
    scenarios with one clear error, and docs/lab.md says why and what the lab does instead."""
    from testbed.scenario import ScenarioError, lab_commands, load_scenario

    scn = load_scenario(L.REPO / "examples/scenarios/mobility.yaml")
    with pytest.raises(ScenarioError, match="UERANSIM has no handover"):
        lab_commands(scn)
    doc = (L.REPO / "docs/lab.md").read_text()
    assert "## Mobility" in doc
    for name in F["mobility"]["ngap_missing"]:
        assert name in doc, f"docs/lab.md should name {name}, which nr-gnb does not handle"
    assert "handover" not in " ".join(F["cli"]["gnb_commands"] + F["cli"]["ue_commands"])


def test_upstream_gnb_handles_no_mobility_message() -> None:
    src = upstream_text(REPO, TAG, P["ngap_transport"])
    handled = re.findall(r"case ASN_NGAP_\w+__value_PR_(\w+):", src)
    assert handled == F["mobility"]["ngap_handled"]
    for name in F["mobility"]["ngap_missing"]:
        assert name not in handled
    gtp = upstream_text(REPO, TAG, P["gtp_task"])
    assert F["mobility"]["gtp_non_gpdu_log"] in gtp and "MT_G_PDU" in gtp
