"""Our compose services against the real gradiant/open5gs:2.7.5, gradiant/ueransim:3.2.6 and
gradiant/open5gs-webui:2.7.5 images: entrypoints, users, binaries and the tools they install.

Facts: tests/lab/facts/images.yaml, read from Gradiant/5g-images at the commit that last built
each tag (ueransim acf94d20, open5gs 0abd1f4a, open5gs-webui 02dde41c) and from open5gs/open5gs
v2.7.5 webui/. Offline tests check testbed/lab/render.py's compose_doc() against them; upstream
tests re-derive them from the snapshots and skip without them.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from typing import Any

import pytest
from labfacts import facts, require_upstream, upstream_files, upstream_text

from testbed.lab import layout as L
from testbed.lab import plan, render, subscribers

F = facts("images")
IMAGES: dict[str, dict[str, Any]] = F["images"]
REPO = F["source"]["repo"]
UERANSIM, OPEN5GS, WEBUI = L.UERANSIM_IMAGE, L.OPEN5GS_IMAGE, L.OPEN5GS_WEBUI_IMAGE
SUBS = subscribers.generate(3)
UPF_SCRIPT = L.COMPOSE_DIR / "upf" / "entrypoint.sh"


def _services() -> dict[str, Any]:
    return render.compose_doc(SUBS)["services"]


def _of(image: str) -> list[str]:
    return [n for n, s in _services().items() if s.get("image") == image]


# ------------------------------------------------------------------ shell commands and image tools

def shell_commands(sh: str) -> set[str]:
    """Program names a shell snippet runs (command position of each pipeline stage / $(...) / line)."""
    sh = sh.replace("$$", "$")                       # Compose's escape for a literal $
    sh = re.sub(r"'[^']*'", "''", sh)                # single-quoted text is data
    sh = re.sub(r"(?m)(^|\s)#.*$", r"\1", sh)        # comments
    out: set[str] = set()
    for seg in re.split(r"\|\||&&|[|;\n`()]|\$\(|\bthen\b|\bdo\b|\belse\b", sh):
        words = seg.replace('"', " ").split()
        while words and (words[0] in ("if", "elif", "while", "until", "!", "time") or re.match(r"^\w+=", words[0])):
            words.pop(0)
        if words and re.fullmatch(r"[A-Za-z/][\w./+-]*", words[0]):
            out.add(words[0])
    return out


def image_commands(image: str) -> set[str]:
    """Everything on PATH (or built into the shell) in the pinned image, per the facts."""
    img = IMAGES[image]
    cmds = set(F["base_commands"]) | set(F["shell_builtins"])
    for pkg in img["apt_packages"]:
        cmds |= set(F["package_commands"].get(pkg, []))
    cmds |= {b for b in img.get("binaries", []) + img.get("nf_binaries", []) if not b.endswith(".so")}
    return cmds


# ------------------------------------------------------------------ offline: our compose file

def test_the_lab_pins_the_images_the_facts_describe() -> None:
    """layout.py's three image pins are the tags described (Gradiant/5g-images image_info.sh IMAGE_TAG)."""
    assert {UERANSIM, OPEN5GS, WEBUI} == set(IMAGES)
    for name, svc in _services().items():
        if svc.get("image", "").startswith("gradiant/"):
            assert svc["image"] in IMAGES, f"{name} uses an image without facts: {svc['image']}"


def test_nf_services_run_open5gs_binaries_from_the_image() -> None:
    """Each NF service's command is an open5gs-<nf>d the image installs under /opt/open5gs/bin (on PATH)
    (Gradiant/5g-images 0abd1f4a images/open5gs/Dockerfile; open5gs/open5gs v2.7.5 src/<nf>/meson.build)."""
    img = IMAGES[OPEN5GS]
    for name in _of(OPEN5GS):
        svc = _services()[name]
        # the NFs run the daemon as entrypoint; the UPF runs our script, which execs its command
        cmd = svc["command"] if name == "upf" else [*svc["entrypoint"], *svc["command"]]
        assert cmd[0] in img["nf_binaries"], f"{name}: {cmd[0]} is not installed in {OPEN5GS}"
        assert "/" not in cmd[0] or cmd[0].startswith(img["bin_dir"] + "/"), (
            f"{name}: resolved through PATH, which starts with {img['bin_dir']}")
        assert cmd[1:] == ["-c", f"{render.CONF_IN_CONTAINER}/{name}.yaml"]


def _healthchecked() -> list[tuple[str, str]]:
    return [(n, s["image"]) for n, s in _services().items() if s.get("image") in IMAGES and "healthcheck" in s]


@pytest.mark.parametrize("name,image", _healthchecked(), ids=[n for n, _ in _healthchecked()])
def test_healthchecks_only_call_tools_the_image_installs(name: str, image: str) -> None:
    """A healthcheck calling a missing tool is never healthy (Gradiant/5g-images at built_by:
    images/{open5gs,ueransim}/Dockerfile final-stage apt-get install lists; base image essentials)."""
    test = _services()[name]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    missing = shell_commands(test[1]) - image_commands(image)
    assert not missing, f"{name}: {sorted(missing)} not in {image} (installs {IMAGES[image]['apt_packages']})"


def test_upf_overrides_the_entrypoint_and_user_for_reasons_the_image_explains() -> None:
    """The UPF runs our compose/upf/entrypoint.sh as root instead of the image's /entrypoint.sh
    (Gradiant/5g-images 0abd1f4a images/open5gs/entrypoint.sh tun_create, Dockerfile USER open5gs)."""
    img = IMAGES[OPEN5GS]
    svc = _services()["upf"]
    script = UPF_SCRIPT.read_text()
    assert svc["entrypoint"][0] == "/bin/bash" and "bash" in image_commands(OPEN5GS)
    mounted = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
    assert mounted[svc["entrypoint"][1]] == "./upf/entrypoint.sh"
    assert "open5gs-upfd" in img["entrypoint_script"]["tun_create_for"], (
        "the image's entrypoint would run tun_create: `sysctl -w` and `echo 1 > /proc/sys/net/ipv4/ip_forward` "
        "fail in an unprivileged container, and it would also add its own 10.45.0.1/16 + cafe::1/64 addresses")
    assert img["user"] == "open5gs" and svc["user"] == "root", (
        "the image runs as user open5gs: creating ogstun and adding the MASQUERADE rule need root + NET_ADMIN")
    missing = shell_commands(script) - image_commands(OPEN5GS)
    assert not missing, f"compose/upf/entrypoint.sh calls {sorted(missing)}, absent from {OPEN5GS}"
    last = [ln.strip() for ln in script.splitlines() if ln.strip() and not ln.strip().startswith("#")][-1]
    assert last == 'exec "$@"', "our entrypoint must exec the UPF so open5gs-upfd is PID 1 and gets SIGTERM"
    assert img["nf_sigterm"] == "handled"


def test_only_the_upf_changes_the_open5gs_user() -> None:
    """NFs other than the UPF keep the image's non-root user open5gs: they bind only ports >= 1024
    (Gradiant/5g-images 0abd1f4a images/open5gs/Dockerfile `USER open5gs`)."""
    for name in _of(OPEN5GS):
        if name != "upf":
            assert "user" not in _services()[name], f"{name} needs no root"
    assert min(L.SBI_PORT, L.METRICS_PORT) >= 1024


def test_ueransim_services_run_image_binaries_instead_of_its_entrypoint() -> None:
    """gnb/ueN set entrypoint to nr-gnb/nr-ue from /usr/local/bin (Gradiant/5g-images acf94d20
    images/ueransim/Dockerfile COPY build/* /usr/local/bin/, images/ueransim/entrypoint.sh)."""
    img = IMAGES[UERANSIM]
    script = img["entrypoint_script"]
    assert img["install_dir"] in ("/usr/local/bin", "/usr/bin", "/bin")     # on the default PATH
    for name in _of(UERANSIM):
        svc = _services()[name]
        # ueN: our compose/ueransim/ue-entrypoint.sh runs the command (nr-ue) and deregisters on stop
        ep = svc["command"] if name.startswith("ue") else svc["entrypoint"]
        assert ep[0] in img["binaries"], f"{name}: {ep[0]} not in {UERANSIM}"
        if name.startswith("ue"):
            assert svc["entrypoint"] == ["/bin/sh", "/etc/mec/ue-entrypoint.sh"]
            assert "./ueransim/ue-entrypoint.sh:/etc/mec/ue-entrypoint.sh:ro" in svc["volumes"]
            assert svc["environment"]["UE_SUPI"] == SUBS[int(name[2:]) - 1].supi
        assert not script["execs_program"], (
            f"{name}: overridden because /entrypoint.sh envsubst's its own /etc/ueransim template (addresses "
            "from env and `host` lookups) and keeps bash as PID 1; we run the binary on our rendered file")
        assert img["user"] is None, "the image runs as root, which nr-ue needs for the TUN and rt_tables"
    # the image's SIGTERM trap deregistered the UE, nr-ue alone does not: our UE script does it
    assert script["ue_deregisters_on_stop"] and not facts("ueransim")["signals"]["nr-ue_deregisters_on_sigterm"]
    assert "deregister switch-off" in (L.COMPOSE_DIR / "ueransim/ue-entrypoint.sh").read_text()


def test_commands_the_lab_runs_inside_ue_containers_are_installed() -> None:
    """`testbed lab` runs curl and dig inside ueN (testbed/lab/plan.py); gradiant/ueransim:3.2.6 installs
    curl and bind9-dnsutils (Gradiant/5g-images acf94d20 images/ueransim/Dockerfile)."""
    argvs = [plan.data_path_probe()]
    for step in plan.smoke_plan(SUBS[0]):
        if step.argv and "exec" in step.argv:
            i = step.argv.index("exec")
            rest = [a for a in step.argv[i + 1:] if a != "-T"]
            if rest and rest[0].startswith("ue"):
                argvs.append(rest[1:])
    used = {a[0] for a in argvs}
    assert used and used <= image_commands(UERANSIM), f"{sorted(used - image_commands(UERANSIM))} missing"
    assert {"curl", "ping"} <= image_commands(UERANSIM), "data-path probes through uesimtun0"
    assert not {"nc", "pgrep"} & image_commands(UERANSIM), "not installed: do not use in ueransim probes"


def test_nf_services_receive_sigterm_on_docker_stop() -> None:
    """Each Open5GS NF must be PID 1 (or have its signal forwarded) to stop cleanly (Gradiant/5g-images
    0abd1f4a images/open5gs/entrypoint.sh; open5gs/open5gs v2.7.5 src/main.c check_signal)."""
    img = IMAGES[OPEN5GS]
    stuck = []
    for name in _of(OPEN5GS):
        svc = _services()[name]
        if "entrypoint" not in svc:         # the image's script
            ok = img["entrypoint_script"]["execs_program"] or img["entrypoint_script"]["sigterm_trap"]
        elif name == "upf":                 # our script, which must exec the daemon
            ok = UPF_SCRIPT.name in svc["entrypoint"][-1] and 'exec "$@"' in UPF_SCRIPT.read_text()
        else:                               # the daemon itself, behind Docker's init (which forwards SIGTERM)
            ok = svc["entrypoint"] == [f"open5gs-{name}d"] and svc.get("init") is True
        if not ok:
            stuck.append(name)
    assert stuck == [], f"SIGTERM does not reach the NF in: {stuck}"


def test_webui_receives_sigterm_on_docker_stop() -> None:
    """The WebUI stops on SIGTERM only behind an init (Gradiant/5g-images 02dde41c
    images/open5gs-webui/Dockerfile ENTRYPOINT; open5gs/open5gs v2.7.5 webui/server/index.js)."""
    img = IMAGES[WEBUI]
    svc = _services()["webui"]
    pid1_is_node = "entrypoint" not in svc and img["entrypoint"][0] == "node"
    assert not pid1_is_node or img["server"]["sigterm_handler"] or svc.get("init") is True


def test_webui_mode_matches_how_the_admin_account_is_made() -> None:
    """NODE_ENV != production runs Next.js in dev mode, the only mode that seeds admin/1423; production
    works (the image has the `next build` output) but needs the account provisioned (open5gs/open5gs
    v2.7.5 webui/server/index.js; Gradiant/5g-images 02dde41c images/open5gs-webui/Dockerfile)."""
    img = IMAGES[WEBUI]
    env = _services()["webui"].get("environment", {})
    node_env = env.get("NODE_ENV", img["env"]["NODE_ENV"])
    dev = node_env != "production"
    assert img["production_build"], "NODE_ENV=production is feasible: .next is built into the image"
    seeds = "accounts" in render.provision_js(SUBS)
    assert dev != seeds, (
        f"NODE_ENV={node_env}: dev mode seeds admin/1423 itself (slow on-demand page compiles); production "
        "mode needs provision.js to insert into db.accounts (as Gradiant/5g-charts add_admin.sh does)")


def test_webui_listens_where_compose_publishes_it() -> None:
    """The server listens on $PORT (default 9999) at $HOSTNAME, which the image sets to 0.0.0.0
    (open5gs/open5gs v2.7.5 webui/server/index.js; Gradiant/5g-images 02dde41c Dockerfile ENV)."""
    img = IMAGES[WEBUI]
    svc = _services()["webui"]
    env = svc.get("environment", {})
    port = int(env.get(img["server"]["port_env"], img["server"]["port_default"]))
    assert {int(p.rsplit(":", 1)[1]) for p in svc["ports"]} == {port} == {L.WEBUI_PORT}
    host = env.get(img["server"]["host_env"], img["env"]["HOSTNAME"])
    assert host == "0.0.0.0", "with the server's default (localhost) the published port would not answer"
    assert env["DB_URI"].startswith("mongodb://")


# ------------------------------------------------------------------ upstream: Dockerfiles and scripts

def _subst(v: str, env: dict[str, str]) -> str:
    """${VAR} / $VAR from the stage's ENV so far; unknown ones stay as written."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), m.group(0)), v)


def dockerfile_stages(text: str) -> list[dict[str, Any]]:
    """Per stage: from, entrypoint, cmd, user, workdir, env, apt packages, COPY --from destinations, RUNs."""
    lines, buf = [], ""
    for raw in text.splitlines():
        s = raw.rstrip()
        if not buf and s.lstrip().startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        if buf.strip():
            lines.append(buf.strip())
        buf = ""
    stages: list[dict[str, Any]] = []
    for ln in lines:
        op, _, arg = ln.replace("\t", " ").partition(" ")
        op, arg = op.upper(), arg.strip()
        if op == "FROM":
            stages.append({"from": arg.split()[0], "entrypoint": None, "cmd": None, "user": None,
                           "workdir": None, "env": {}, "apt": [], "copy_from": [], "run": []})
            continue
        st = stages[-1]
        env = st["env"]

        def sub(v: str, env: dict[str, str] = env) -> str:
            return _subst(v, env)

        if op == "ENV":
            for tok in shlex.split(arg):
                k, _, v = tok.partition("=")
                st["env"][k] = sub(v)
        elif op in ("ENTRYPOINT", "CMD"):
            st[op.lower()] = json.loads(arg)
        elif op == "USER":
            st["user"] = arg
        elif op == "WORKDIR":
            st["workdir"] = sub(arg)
        elif op == "COPY" and "--from=" in arg:
            st["copy_from"].append(sub([t for t in arg.split() if not t.startswith("--")][-1]).rstrip("/"))
        elif op == "RUN":
            st["run"].append(arg)
            for m in re.finditer(r"apt-get install (.*?)(?:&&|;|$)", arg):
                st["apt"] += [t for t in m.group(1).split() if not t.startswith("-")]
    return stages


def _final(image: str) -> dict[str, Any]:
    img = IMAGES[image]
    return dockerfile_stages(upstream_text(REPO, img["built_by"], f"{img['dir']}/Dockerfile"))[-1]


def _history(image: str) -> list[tuple[str, str | None]]:
    """(commit, IMAGE_TAG) of every commit touching the image directory, newest first."""
    img = IMAGES[image]
    d = require_upstream(REPO, img["built_by"])
    shas = subprocess.run(["git", "--git-dir", str(d), "log", "--format=%H", "--", img["dir"]],
                          capture_output=True, text=True, check=True).stdout.split()
    out = []
    for sha in shas:
        p = subprocess.run(["git", "--git-dir", str(d), "show", f"{sha}:{img['dir']}/image_info.sh"],
                           capture_output=True, text=True)
        m = re.search(r"^IMAGE_TAG=(\S+)", p.stdout, re.M) if p.returncode == 0 else None
        out.append((sha, m.group(1) if m else None))
    return out


@pytest.mark.parametrize("image", list(IMAGES))
def test_upstream_built_by_is_the_last_commit_with_that_tag(image: str) -> None:
    """push.yml pushes gradiant/<name>:<IMAGE_TAG> on every change, so the tag holds the newest build
    with that IMAGE_TAG (Gradiant/5g-images .github/workflows/push.yml, images/<name>/image_info.sh)."""
    img = IMAGES[image]
    version = image.split(":")[1]
    hist = _history(image)
    with_tag = [sha for sha, tag in hist if tag == version]
    assert with_tag[0] == img["built_by"]
    newer = [sha for sha, _ in hist[: [s for s, _ in hist].index(img["built_by"])]]
    assert newer[-1] == img["next_tag_commit"] and dict(hist)[img["next_tag_commit"]] != version
    if "first_built_by" in img:
        assert with_tag[-1] == img["first_built_by"]
    if "rebuilt_at" in img:
        assert set(with_tag) == set(img["rebuilt_at"])
    wf = upstream_text(REPO, img["built_by"], F["source"]["paths"]["workflow"])
    assert "push: true" in wf and "outputs.image_tag }}" in wf and "images/**" in wf
    assert "source ./images/${{ matrix.image }}/image_info.sh" in wf


def test_upstream_ueransim_git_tag_is_the_first_build() -> None:
    """Tag images/ueransim-3.2.6 marks the first 3.2.6 build, not the one Docker Hub serves now
    (Gradiant/5g-images refs/tags/images/ueransim-3.2.6)."""
    t = IMAGES[UERANSIM]["git_tag"]
    d = require_upstream(REPO, t["name"])
    sha = subprocess.run(["git", "--git-dir", str(d), "rev-parse", f"{t['name']}^{{commit}}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert sha == t["commit"] != IMAGES[UERANSIM]["built_by"]


@pytest.mark.parametrize("image", list(IMAGES))
def test_upstream_dockerfile_facts(image: str) -> None:
    """Base, ENTRYPOINT, CMD, USER, WORKDIR, ENV, install dir and apt packages of the final stage
    (Gradiant/5g-images at built_by, images/<name>/Dockerfile)."""
    img = IMAGES[image]
    st = _final(image)
    assert st["from"] == img["base"]
    assert st["entrypoint"] == img["entrypoint"] and st["cmd"] == img["cmd"]
    assert st["user"] == img["user"] and st["workdir"] == img["workdir"]
    assert st["copy_from"] == [img["install_dir"]]
    assert st["apt"] == img["apt_packages"]
    assert not set(img.get("not_installed", [])) & set(st["apt"])
    for k, v in img["env"].items():
        assert st["env"].get(k) == v, k
    if "bin_dir" in img:
        assert st["env"]["PATH"].startswith(img["bin_dir"] + ":")
    if "production_build" in img:
        built = any(re.search(r"\bnpm run(-script)? build\b", r) for r in st["run"])
        assert built == img["production_build"]


def test_upstream_ueransim_image_builds_the_pinned_source() -> None:
    """The image checks out v$VERSION (= IMAGE_TAG) and copies UERANSIM's build/ (Gradiant/5g-images acf94d20
    images/ueransim/Dockerfile; aligungr/UERANSIM v3.2.6 makefile)."""
    img = IMAGES[UERANSIM]
    text = upstream_text(REPO, img["built_by"], f"{img['dir']}/Dockerfile")
    assert "git checkout v$VERSION" in text and "COPY --from=builder /tmp/UERANSIM/build/*" in text
    assert img["upstream"]["ref"] == "v" + UERANSIM.split(":")[1]
    assert set(img["binaries"]) == set(facts("ueransim")["binaries"])


def test_upstream_open5gs_binaries_and_prefix() -> None:
    """meson --prefix=/opt/open5gs and the NF executables of open5gs v2.7.5 (Gradiant/5g-images 0abd1f4a
    images/open5gs/Dockerfile; open5gs/open5gs v2.7.5 src/*/meson.build, src/main.c)."""
    img = IMAGES[OPEN5GS]
    builder = dockerfile_stages(upstream_text(REPO, img["built_by"], f"{img['dir']}/Dockerfile"))[0]
    assert any(f"--prefix={img['install_dir']}" in r for r in builder["run"])
    assert any("git checkout v$VERSION" in r for r in builder["run"])
    repo, ref = img["upstream"]["repo"], img["upstream"]["ref"]
    exes = set()
    for path in upstream_files(repo, ref, "src"):
        if path.endswith("/meson.build"):
            exes |= set(re.findall(r"executable\('(open5gs-\w+)'", upstream_text(repo, ref, path)))
    assert exes == set(img["nf_binaries"])
    main = upstream_text(repo, ref, "src/main.c")
    assert "case SIGTERM:" in main and "ogs_signal_thread(check_signal)" in main


def _if_blocks(sh: str) -> list[tuple[str, str]]:
    return re.findall(r"^if (.*?)then\s*\n(.*?)^fi", sh, re.M | re.S)


def test_upstream_open5gs_entrypoint_script() -> None:
    """/entrypoint.sh runs "$@" without exec or trap and exits 1; sleeps 10 s and creates the TUN for the
    listed daemons (Gradiant/5g-images 0abd1f4a images/open5gs/entrypoint.sh)."""
    img = IMAGES[OPEN5GS]
    es = img["entrypoint_script"]
    sh = upstream_text(REPO, img["built_by"], es["path"])
    lines = [ln.strip() for ln in sh.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert sh.startswith(f"#!/bin/{es['interpreter']}")
    assert "$@" in lines and not any(ln.startswith("exec ") for ln in lines)
    assert es["execs_program"] is False
    assert ("trap " in sh) == es["sigterm_trap"]
    assert lines[-1] == f"exit {es['exit_status']}"
    sleeps, tun = set(), set()
    for cond, body in _if_blocks(sh):
        names = set(re.findall(r'\*"(open5gs-\w+)"', cond))
        if "sleep 10" in body:
            sleeps |= names
        if "tun_create" in body:
            tun |= names
    assert sleeps == set(es["sleeps_10s_for"]) and tun == set(es["tun_create_for"])
    tc = sh[sh.index("function tun_create"):]
    assert "sysctl -w" in tc and "/proc/sys/net/ipv4/ip_forward" in tc and "iptables" in tc


def test_upstream_ueransim_entrypoint_script() -> None:
    """/entrypoint.sh traps SIGTERM, deregisters UEs with nr-cli in the trap, backgrounds nr-ue and runs
    nr-gnb in the foreground, never exec (Gradiant/5g-images acf94d20 images/ueransim/entrypoint.sh)."""
    img = IMAGES[UERANSIM]
    es = img["entrypoint_script"]
    sh = upstream_text(REPO, img["built_by"], es["path"])
    assert sh.startswith(f"#!/bin/{es['interpreter']}")
    assert not re.search(r"^\s*exec\b", sh, re.M) and es["execs_program"] is False
    assert bool(re.search(r"^trap _term SIGTERM$", sh, re.M)) == es["sigterm_trap"]
    term = sh[sh.index("_term()"):sh.index("\n}\n")]
    assert 'nr-cli $x --exec "deregister switch-off"' in term and "sleep 5" in term and es["ue_deregisters_on_stop"]
    main = sh[sh.index("trap _term SIGTERM"):]
    ue = main[main.index("\nue)"):main.index(";;")]
    gnb = main[main.index("\ngnb)"):]
    gnb = gnb[: gnb.index(";;")]
    assert re.search(r"^\s*nr-ue -c ue\.yaml \$@ &$", ue, re.M) and re.search(r"^\s*wait ", ue, re.M)
    assert re.search(r"^\s*nr-gnb -c gnb\.yaml \$@$", gnb, re.M)
    assert "envsubst < /etc/ueransim/ue.yaml > ue.yaml" in ue and "envsubst < /etc/ueransim/gnb.yaml > gnb.yaml" in gnb


def test_upstream_webui_server_modes() -> None:
    """dev = NODE_ENV !== 'production'; PORT/HOSTNAME/DB_URI defaults; the admin account only in dev mode;
    no signal handler; `build` is `next build` (open5gs/open5gs v2.7.5 webui/server/index.js, webui/package.json)."""
    img = IMAGES[WEBUI]
    s = img["server"]
    repo, ref = img["upstream"]["repo"], img["upstream"]["ref"]
    js = upstream_text(repo, ref, s["path"])
    assert re.search(r"const dev = process\.env\.NODE_ENV !== '(\w+)'", js).group(1) == \
        s["dev_mode_unless"].split("=")[1]
    assert int(re.search(rf"process\.env\.{s['port_env']} \|\| (\d+)", js).group(1)) == s["port_default"]
    assert re.search(rf"process\.env\.{s['host_env']} \|\| '([^']+)'", js).group(1) == s["host_default"]
    assert re.search(rf"process\.env\.{s['db_env']} \|\| '([^']+)'", js).group(1) == s["db_default"]
    reg = js.index("Account.register(newAccount, '")
    guard = js.rindex("if (dev) {", 0, reg)
    assert "\n  }\n" not in js[guard:reg] and s["seeds_admin_account"] == "dev mode only"
    password = re.search(r"Account\.register\(newAccount, '(\w+)'", js).group(1)
    assert "newAccount.username = 'admin'" in js and password == "1423"
    for path in upstream_files(repo, ref, "webui/server"):
        if path.endswith(".js"):
            assert "process.on(" not in upstream_text(repo, ref, path), path
    assert s["sigterm_handler"] is False
    pkg = json.loads(upstream_text(repo, ref, "webui/package.json"))
    assert pkg["scripts"]["build"] == s["build_script"]


def test_upstream_secondary_references() -> None:
    """The chart seeds the admin account for the production image; docker_open5gs runs dev mode
    (Gradiant/5g-charts charts/open5gs-webui/resources/add_admin.sh; herlesupreeth/docker_open5gs webui/webui_init.sh)."""
    refs = {r["repo"]: r for r in F["source"]["secondary"] if "commit" in r}
    chart = refs["Gradiant/5g-charts"]
    text = upstream_text(chart["repo"], chart["commit"], chart["path"])
    assert "db.accounts.insert(" in text and "username: 'admin'" in text
    dep = upstream_text(chart["repo"], chart["commit"], "charts/open5gs-webui/templates/deployment.yaml")
    assert "initContainers:" in dep and "/add_admin.sh" in dep
    d5 = refs["herlesupreeth/docker_open5gs"]
    assert re.search(r"^exec npm run dev\b", upstream_text(d5["repo"], d5["commit"], d5["path"]), re.M)
