"""The shell entrypoints shipped for the UPF, the UEs and the tap: syntax, signals, the tap's interface lookup."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.lab import layout as L

UPF_ENTRY = L.COMPOSE_DIR / "upf/entrypoint.sh"
TAP_ENTRY = L.DOCKER_DIR / "tap-entrypoint.sh"
UE_ENTRY = L.COMPOSE_DIR / "ueransim/ue-entrypoint.sh"


def test_upf_entrypoint_parses_and_never_writes_proc_sys() -> None:
    subprocess.run(["bash", "-n", str(UPF_ENTRY)], check=True)
    text = UPF_ENTRY.read_text()
    assert "sysctl -w" not in text and "> /proc/sys" not in text and ">/proc/sys" not in text


def test_tap_entrypoint_parses_as_posix_sh() -> None:
    sh = shutil.which("dash") or "sh"
    subprocess.run([sh, "-n", str(TAP_ENTRY)], check=True)


def test_tap_entrypoint_needs_interfaces() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAP_")}
    p = subprocess.run(["sh", str(TAP_ENTRY), "--point", "n3"], env=env, capture_output=True, text=True)
    assert p.returncode == 2 and "TAP_SUBNETS" in p.stderr


def test_tap_entrypoint_gives_up_on_a_missing_named_interface() -> None:
    env = {**os.environ, "TAP_IFACES": "nosuchif0", "TAP_WAIT_S": "1"}
    p = subprocess.run(["sh", str(TAP_ENTRY)], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "nosuchif0 did not appear" in p.stderr


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"mectap-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        ns = ["ip", "-n", name]
        subprocess.run([*ns, "link", "add", "n3x", "type", "veth", "peer", "name", "n3y"], check=True)
        subprocess.run([*ns, "addr", "add", f"{L.ADDR['upf']['ran']}/24", "dev", "n3x"], check=True)
        subprocess.run([*ns, "addr", "add", f"{L.ADDR['upf']['core']}/24", "dev", "n3y"], check=True)
        subprocess.run([*ns, "link", "set", "n3x", "up"], check=True)
        subprocess.run([*ns, "link", "set", "n3y", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.root
def test_tap_entrypoint_finds_interfaces_by_subnet(netns: str) -> None:
    env = {**os.environ, "TAP_SUBNETS": L.NETWORKS["n6"]}
    p = subprocess.run(["ip", "netns", "exec", netns, "sh", str(TAP_ENTRY)], env=env,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and f"no interface has an address in {L.NETWORKS['n6']}" in p.stderr
    bindir = str(Path(sys.executable).parent)        # where this environment's upf-tap lives
    path = f"{bindir}:{os.environ.get('PATH', '')}"
    if shutil.which("upf-tap", path=path) is None:
        pytest.skip("upf-tap is not installed yet: the lookup's success path execs it")
    env = {**os.environ, "PATH": path, "TAP_SUBNETS": f"{L.NETWORKS['ran']},{L.NETWORKS['core']}"}
    p = subprocess.run(["ip", "netns", "exec", netns, "sh", str(TAP_ENTRY), "--help"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert "upf-tap live --help --iface n3x --iface n3y" in p.stderr
    assert p.returncode == 0, p.stderr


def _upf_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "UE_POOL": "10.45.0.0/16", "UE_GATEWAY": "10.45.0.1", "UE_PREFIXLEN": "16",
            "OGSTUN": "ogstun", "OGSTUN_MTU": "1400", "ENABLE_NAT": "false", **extra}


@pytest.mark.root
@pytest.mark.skipif(not os.path.exists("/dev/net/tun"), reason="no /dev/net/tun here")
def test_upf_entrypoint_builds_ogstun_in_a_namespace(netns: str) -> None:
    run = ["ip", "netns", "exec", netns, "bash", str(UPF_ENTRY)]
    # ip_forward is off in a fresh namespace: the entrypoint refuses, saying what to set
    p = subprocess.run([*run, "true"], env=_upf_env(), capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "net.ipv4.ip_forward is 0" in p.stderr
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
    p = subprocess.run([*run, "ip", "-o", "addr", "show", "dev", "ogstun"], env=_upf_env(),
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert "inet 10.45.0.1/16" in p.stdout          # exec "$@" ran after the setup
    link = subprocess.run(["ip", "-n", netns, "-o", "link", "show", "ogstun"], capture_output=True,
                          text=True, check=True).stdout
    assert "mtu 1400" in link and "UP" in link
    # a second start (container restart) finds ogstun and keeps one address
    p = subprocess.run([*run, "ip", "-o", "-4", "addr", "show", "dev", "ogstun"], env=_upf_env(),
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stdout.count("inet ") == 1


# ------------------------------------------------------------------ the UE entrypoint: deregister on stop

@pytest.fixture
def ue_bin(tmp_path: Path) -> Path:
    """Stand-ins for nr-ue and nr-cli that behave as UERANSIM 3.2.6's do on `deregister switch-off`:
    nr-cli hands the command to nr-ue, which sends its Deregistration Request and exits 500 ms later
    (src/ue/app/task.cpp SWITCH_OFF_DELAY). nr-ue ignores SIGTERM here, to prove the script does not
    rely on it when the deregistration works."""
    (tmp_path / "nr-ue").write_text(f"""#!/bin/sh
echo $$ > {tmp_path}/ue.pid
trap '' TERM
trap 'echo dereg-sent >> {tmp_path}/log; sleep 0.5; exit 0' USR1
echo started >> {tmp_path}/log
while :; do sleep 0.05; done
""")
    (tmp_path / "nr-cli").write_text(f"""#!/bin/sh
echo "nr-cli $*" >> {tmp_path}/log
[ -f {tmp_path}/cli-fails ] && {{ echo "ERROR: No node found with name: $1" >&2; exit 1; }}
kill -USR1 "$(cat {tmp_path}/ue.pid)"
""")
    for f in ("nr-ue", "nr-cli"):
        (tmp_path / f).chmod(0o755)
    return tmp_path


def _start_ue(bindir: Path, *extra_env: tuple[str, str]) -> subprocess.Popen[str]:
    import time

    sh = shutil.which("dash") or "sh"          # the ueransim image's /bin/sh is dash (Ubuntu)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "UE_SUPI": "imsi-999700000000001", **dict(extra_env)}
    p = subprocess.Popen([sh, str(UE_ENTRY), "nr-ue", "-c", "/etc/mec/ueransim/ue1.yaml"], env=env,
                         stderr=subprocess.PIPE, text=True)
    for _ in range(100):
        if (bindir / "log").exists() and "started" in (bindir / "log").read_text():
            return p
        time.sleep(0.05)
    raise AssertionError("nr-ue stand-in did not start")


def test_ue_stop_deregisters_before_nr_ue_exits(ue_bin: Path) -> None:
    import signal
    import time

    p = _start_ue(ue_bin)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=10)
    assert rc == 0 and time.monotonic() - t0 < 4, p.stderr.read() if p.stderr else ""
    log = (ue_bin / "log").read_text().splitlines()
    assert log == ["started", "nr-cli imsi-999700000000001 -e deregister switch-off", "dereg-sent"]


def test_ue_stop_still_stops_when_deregistration_fails(ue_bin: Path) -> None:
    import signal

    (ue_bin / "nr-ue").write_text((ue_bin / "nr-ue").read_text().replace("trap '' TERM", "trap 'exit 143' TERM"))
    (ue_bin / "cli-fails").write_text("")
    p = _start_ue(ue_bin)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 0
    err = p.stderr.read() if p.stderr else ""
    assert "No node found" in err and "still running" in err
    assert "dereg-sent" not in (ue_bin / "log").read_text()


def test_ue_entrypoint_passes_on_nr_ues_own_exit(ue_bin: Path) -> None:
    (ue_bin / "nr-ue").write_text("#!/bin/sh\necho started >> " + str(ue_bin / "log") + "\nexit 3\n")
    p = _start_ue(ue_bin)
    assert p.wait(timeout=10) == 3


def test_ue_entrypoint_needs_the_supi() -> None:
    p = subprocess.run(["sh", str(UE_ENTRY), "true"], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert p.returncode != 0 and "UE_SUPI" in p.stderr
