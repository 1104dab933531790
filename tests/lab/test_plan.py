"""What `testbed lab up` does, in what order, and why (each constraint cites the real program).

- ConfigMaps in knative-serving are validated by the config.webhook.serving.knative.dev webhook
  with failurePolicy Fail (knative/serving knative-v1.22.1 config/core/webhooks/configmap-validation.yaml;
  knative/serving#13665): they may be patched only once Serving is Available, and with retries.
- Compose recreates a container when the hash of its service config changes (docker/compose
  v2.40.3 pkg/compose/convergence.go mustRecreate, hash.go ServiceHash, which covers `networks`),
  and not for networks connected from outside (checkExpectedNetworks only looks for the expected
  ones): so the UPF joins kind's network by `docker network connect`, never through the tap file.
- `kind load docker-image` fails with Docker's containerd image store (kubernetes-sigs/kind#3795):
  the fallback is `docker image save --platform` + `kind load image-archive`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from testbed.lab import kindload, plan, render
from testbed.lab import layout as L
from testbed.lab.doctor import CONTAINERD_SNAPSHOTTER
from testbed.lab.subscribers import generate
from testbed.lab.versions import read_versions

SUBS = generate(3)


def up_steps() -> list[plan.Step]:
    return plan.up_plan(read_versions(), SUBS)


def index(steps: list[plan.Step], pred) -> int:
    return next(i for i, s in enumerate(steps) if pred(s))


# ------------------------------------------------------------------ Knative install order

def test_configmap_patches_wait_for_serving_and_retry() -> None:
    steps = up_steps()
    serving_ready = index(steps, lambda s: s.argv and "wait" in s.argv and "knative-serving" in s.argv)
    patches = [(i, s) for i, s in enumerate(steps)
               if s.argv and "patch" in s.argv and any(a.startswith("configmap/") for a in s.argv)]
    assert {a for _, s in patches for a in s.argv if a.startswith("configmap/")} == {
        "configmap/config-network", "configmap/config-domain", "configmap/config-deployment"}
    for i, s in patches:
        assert i > serving_ready, f"{s.title}: patched before Serving (and its config webhook) is Available"
        assert s.poll >= 60, f"{s.title}: not retried while the webhook's endpoints come up"
        assert "knative-serving" in s.argv


def test_a_failing_patch_is_retried_until_it_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's retry, for real: a kubectl that fails twice (webhook not serving), then succeeds."""
    from testbed.lab import runner

    counter = tmp_path / "n"
    counter.write_text("0")
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(f"""#!/bin/sh
n=$(cat {counter}); n=$((n+1)); echo $n > {counter}
if [ $n -lt 3 ]; then
  echo 'Error from server (InternalError): Internal error occurred: failed calling webhook "config.webhook.serving.knative.dev": no endpoints available' >&2
  exit 1
fi
echo configmap/config-network patched
""")
    kubectl.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(runner, "POLL_EVERY", 0.05)
    step = plan.configmap_patch("Serving uses Kourier", "config-network", {"ingress-class": "x"}, retry_s=10)
    import io
    err = io.StringIO()
    assert runner.run_plan([step], dry_run=False, out=io.StringIO(), err=err) == 0, err.getvalue()
    assert counter.read_text().strip() == "3"


# ------------------------------------------------------------------ kind load and kind#3795

KIND_3795_OUTPUT = (
    'ERROR: failed to load image: command "docker exec --privileged -i mec-lab-control-plane ctr '
    '--namespace=k8s.io images import --all-platforms --digests --snapshotter=overlayfs -" failed with '
    "error: exit status 1\nCommand Output: ctr: content digest "
    "sha256:82014a3cbf22d2e03382cd9b123f4151d956986e727340a466406a206408b7a2: not found")


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stand-ins for `docker` and `kind` that log each call and answer as configured by files."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls"
    for name in ("docker", "kind"):
        exe = bindir / name
        exe.write_text(f"""#!/bin/sh
echo "{name} $*" >> {log}
case "{name} $1 $2" in
  "docker info --format") cat {tmp_path}/docker-info 2>/dev/null || exit 1 ;;
  "docker version --format") echo linux/arm64 ;;
  "docker image save")
     out=""; while [ $# -gt 0 ]; do [ "$1" = -o ] && out=$2; shift; done
     echo archive > "$out" ;;
  "kind load docker-image") [ -f {tmp_path}/kind-fails ] && {{ cat {tmp_path}/kind-fails >&2; exit 1; }}; exit 0 ;;
  "kind load image-archive") [ -s "$3" ] || {{ echo "no archive $3" >&2; exit 1; }} ;;
esac
""")
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return tmp_path


def calls(tools: Path) -> list[str]:
    return (tools / "calls").read_text().splitlines()


def test_classic_store_loads_with_docker_image(tools: Path) -> None:
    (tools / "docker-info").write_text(json.dumps({"ServerVersion": "27.5.1", "Driver": "overlay2",
                                                   "DriverStatus": [["Backing Filesystem", "extfs"]]}))
    assert kindload.load_image("dev.local/x:1", "mec-lab") == "docker-image"
    assert calls(tools)[-1] == "kind load docker-image dev.local/x:1 --name mec-lab"


def test_kind_3795_falls_back_to_a_one_platform_archive(tools: Path) -> None:
    (tools / "docker-info").write_text(json.dumps({"ServerVersion": "27.5.1", "Driver": "overlay2"}))
    (tools / "kind-fails").write_text(KIND_3795_OUTPUT)
    assert kindload.load_image("dev.local/x:1", "mec-lab") == "image-archive"
    c = calls(tools)
    save = next(ln for ln in c if ln.startswith("docker image save"))
    archive = save.split(" -o ")[1].split()[0]
    assert save == f"docker image save --platform linux/arm64 -o {archive} dev.local/x:1"
    assert c[-1] == f"kind load image-archive {archive} --name mec-lab"
    assert not Path(archive).exists()           # the temporary archive is removed


def test_containerd_store_goes_straight_to_the_archive(tools: Path) -> None:
    (tools / "docker-info").write_text(json.dumps({"ServerVersion": "29.1.3", "Driver": "overlayfs",
                                                   "DriverStatus": [["driver-type", CONTAINERD_SNAPSHOTTER]]}))
    assert kindload.load_image("dev.local/x:1", "mec-lab") == "image-archive"
    assert not any(ln.startswith("kind load docker-image") for ln in calls(tools))


def test_another_kind_failure_is_reported_not_papered_over(tools: Path) -> None:
    (tools / "kind-fails").write_text("ERROR: no nodes found for cluster \"mec-lab\"")
    with pytest.raises(kindload.LoadError, match='no nodes found for cluster "mec-lab"'):
        kindload.load_image("dev.local/x:1", "mec-lab")
    assert not any("image save" in ln for ln in calls(tools))


def test_every_image_load_in_up_takes_the_fallback_path() -> None:
    loads = [s for s in up_steps() if s.title.startswith("load ")]
    assert len(loads) == 1 + len(plan.function_images())
    for s in loads:
        assert s.action is not None and "kind load image-archive" in s.show and "3795" in s.show


# ------------------------------------------------------------------ the UPF is never recreated by the tap

def test_the_tap_file_leaves_upf_untouched() -> None:
    base = yaml.safe_load((L.COMPOSE_DIR / "docker-compose.yaml").read_text())
    tap = yaml.safe_load((L.COMPOSE_DIR / "docker-compose.tap.yaml").read_text())
    assert set(tap["services"]) == {"tap", "tap-n6"}
    assert not set(tap["services"]) & set(base["services"]), "the tap file would change a base service"
    assert "networks" not in tap                # nothing that re-declares a network the UPF is on
    for svc in tap["services"].values():
        assert svc["network_mode"] == "service:upf"


def test_up_connects_the_running_upf_then_starts_only_the_tap() -> None:
    steps = up_steps()
    base_up = index(steps, lambda s: s.argv and s.argv[:2] == ["docker", "compose"] and "up" in s.argv)
    assert "docker-compose.tap.yaml" not in " ".join(steps[base_up].argv)
    assert "--remove-orphans" not in steps[base_up].argv      # would remove a running tap
    connect = index(steps, lambda s: s.title.startswith("UPF joins"))
    tap_up = index(steps, lambda s: s.argv and "docker-compose.tap.yaml" in " ".join(s.argv) and "up" in s.argv)
    assert base_up < connect < tap_up
    assert steps[tap_up].argv[-2:] == ["tap", "tap-n6"]
    assert f"docker network connect {L.KIND_NETWORK}" in steps[connect].show


def test_upf_network_names_from_docker_inspect() -> None:
    inspect = json.dumps({"mec-lab_core": {"NetworkID": "1"}, "kind": {"NetworkID": "2"}})
    assert plan.upf_networks(inspect) == {"mec-lab_core", "kind"}
    assert plan.upf_networks("") == set() and plan.upf_networks("not json") == set()


# ------------------------------------------------------------------ the UE gate proves the data path

def test_the_ue_gate_is_a_request_through_each_ues_pdu_session() -> None:
    steps = up_steps()
    wait = index(steps, lambda s: s.title.startswith("wait until the 3 UE(s)"))
    gates = [s for s in steps if "reaches the main application" in s.title]
    assert [s.argv[s.argv.index("exec") + 2] for s in gates] == ["ue1", "ue2", "ue3"]
    for s in gates:
        assert steps.index(s) > wait and s.poll > 0 and s.until is not None
        assert "--interface" in s.argv and s.argv[s.argv.index("--interface") + 1] == "uesimtun0"
        assert s.argv[-1] == f"http://{L.ADDR['app']['n6']}:{L.APP_PORT}/healthz"
        assert s.until("200") and not s.until("000") and not s.until("")
    tap_up = index(steps, lambda s: s.argv and "tap-n6" in s.argv)
    assert all(steps.index(g) < tap_up for g in gates), "gate requests would become events"


@pytest.fixture
def ue_and_dn() -> Iterator[tuple[list[str], str]]:
    """A UE namespace whose uesimtun0 leads (through a router namespace, the UPF's stand-in) to the
    real main application (compose/dn/app.py) at its lab address; another default route that goes
    nowhere, as the UE container's eth0 does for N6 addresses."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    tag = uuid.uuid4().hex[:6]
    ue, dn = f"mecue{tag}", f"mecdn{tag}"
    app_ip = L.ADDR["app"]["n6"]
    sh = lambda *a: subprocess.run(list(a), check=True, capture_output=True)  # noqa: E731
    for ns in (ue, dn):
        sh("ip", "netns", "add", ns)
    srv = None
    try:
        sh("ip", "link", "add", "uesimtun0", "netns", ue, "type", "veth", "peer", "name", "n6", "netns", dn)
        sh("ip", "-n", ue, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        for ns, dev, addr in ((ue, "uesimtun0", "10.45.0.2/32"), (dn, "n6", f"{app_ip}/24"), (ue, "eth0", "10.1.255.2/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
        for ns, dev in ((ue, "uesimtun0"), (dn, "n6"), (ue, "eth0"), (ue, "eth0p"), (ue, "lo"), (dn, "lo")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ue, "route", "add", "default", "via", "10.1.255.1", "dev", "eth0", "onlink")
        sh("ip", "-n", ue, "route", "add", "default", "dev", "uesimtun0", "table", "100")
        sh("ip", "-n", ue, "rule", "add", "from", "10.45.0.2", "lookup", "100")
        sh("ip", "-n", dn, "route", "add", "10.45.0.2/32", "dev", "n6")
        srv = subprocess.Popen(["ip", "netns", "exec", dn, sys.executable, str(L.COMPOSE_DIR / "dn/app.py"),
                                "--listen", f"{app_ip}:{L.APP_PORT}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        yield ["ip", "netns", "exec", ue], app_ip
    finally:
        if srv is not None:
            srv.terminate()
            srv.wait(timeout=10)
        for ns in (ue, dn):
            subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.mark.root
def test_the_probe_is_answered_only_through_uesimtun0(ue_and_dn: tuple[list[str], str]) -> None:
    """The gate's own command line, run with real curl against the real main application."""
    ns, _ = ue_and_dn
    probe = plan.data_path_probe()
    out = ""
    for _ in range(50):          # the app takes a moment to listen
        p = subprocess.run([*ns, *probe], capture_output=True, text=True, timeout=10)
        out = p.stdout
        if out == "200":
            break
        import time
        time.sleep(0.1)
    assert out == "200"
    # without the PDU session the same request is not answered
    subprocess.run([*ns, "ip", "link", "set", "uesimtun0", "down"], check=True)
    p = subprocess.run([*ns, *probe], capture_output=True, text=True, timeout=10)
    assert p.returncode != 0 and p.stdout != "200"


def test_render_and_plan_agree_on_the_gate_target() -> None:
    app = render.compose_doc(SUBS)["services"]["app"]
    assert app["networks"]["n6"]["ipv4_address"] == L.ADDR["app"]["n6"]
    assert "/healthz" in " ".join(app["healthcheck"]["test"])


def test_scenarios_written_for_the_sim_reach_the_same_services_in_the_lab() -> None:
    """examples/scenarios name the sim's DN addresses; the lab backend sends the UEs to the lab's."""
    from testbed.scenario import lab_commands, load_scenario
    from testbed.sim import topology as T

    scn = load_scenario(L.REPO / "examples/scenarios/edge-services.yaml")
    text = "\n".join(" ".join(c) for c in lab_commands(scn))
    assert T.SHOP_IP not in text.split() and f"-I uesimtun0 {L.ADDR['app']['n6']}" in text
    assert all(c[:2] == ["docker", "compose"] and "exec" in c for c in lab_commands(scn))
