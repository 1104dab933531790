"""The lab's files against the project's own programs: the tap's identity loader, the local
broker's manifest loader, and the command lines of the tap and detector images."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import yaml

from testbed import constants as C
from testbed.lab import layout as L


def need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not in the tree yet")


def help_text(module: str, *sub: str) -> str:
    p = subprocess.run([sys.executable, "-m", module, *sub, "--help"], capture_output=True, text=True,
                       timeout=60, cwd=L.REPO)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_the_tap_reads_the_subscriber_list_as_its_identity_file() -> None:
    need("upf_tap.control.identity")
    from upf_tap.control.identity import load

    ident = load(L.SUBSCRIBERS_FILE)
    subs = yaml.safe_load(L.SUBSCRIBERS_FILE.read_text())
    assert len(ident) == len(subs)
    for n, _ in enumerate(subs, 1):
        found = ident.lookup(C.ue_ipv4(n))
        assert found is not None and found.supi == C.supi(n) and found.dnn == C.DNN
        assert found.snssai == str(C.SST)


def test_the_local_broker_loads_the_manifests_the_lab_applies() -> None:
    need("testbed.broker.manifests")
    if not (L.K8S_DIR / "knative").is_dir():
        pytest.skip("k8s/knative/ not in the tree yet")
    from testbed.broker.manifests import load_manifests

    m = load_manifests(L.K8S_DIR / "knative")
    assert (L.NAMESPACE, L.BROKER) in m.brokers
    assert m.triggers and m.services
    # the detector's SinkBinding names a Broker the local broker serves too
    sb = yaml.safe_load((L.K8S_DIR / "detector/10-sinkbinding.yaml").read_text())
    assert (sb["metadata"]["namespace"], sb["spec"]["sink"]["ref"]["name"]) in m.brokers


def _flags(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith("--")]


def test_tap_command_line_matches_upf_tap_live() -> None:
    need("upf_tap.live.command")
    text = help_text("upf_tap", "live")
    over = yaml.safe_load((L.COMPOSE_DIR / "docker-compose.tap.yaml").read_text())
    for n in ("tap", "tap-n6"):
        for flag in [*_flags(over["services"][n]["command"]), "--iface"]:
            assert flag in text, f"{n}: upf-tap live has no {flag}"


def test_detector_deployment_args_match_detector_serve() -> None:
    need("detector.cli")
    text = help_text("detector", "serve")
    dep = yaml.safe_load((L.K8S_DIR / "detector/30-deployment.yaml").read_text())
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "serve"
    for flag in _flags(container["args"]):
        assert flag in text, f"detector serve has no {flag}"
    assert "DETECTOR_TOKEN" in text or any(e["name"] == "DETECTOR_TOKEN" for e in container["env"])
