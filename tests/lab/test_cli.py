"""`testbed lab …` as a user runs it: real subprocesses, no Docker needed (dry-run, errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.lab import layout as L
from testbed.lab import plan
from testbed.lab.subscribers import generate
from testbed.lab.versions import read_versions, release_manifests, version_tuple


def lab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed.lab", *args], cwd=L.REPO, capture_output=True,
                          text=True, timeout=60, env=env)


def no_tools_env(tmp_path: Path) -> dict[str, str]:
    """PATH without docker/kind/kubectl: only the interpreter's directory."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    return {**os.environ, "PATH": str(bindir)}


def test_up_dry_run_prints_every_command_and_exits_0(tmp_path: Path) -> None:
    p = lab("up", "--dry-run", env=no_tools_env(tmp_path))
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for url in release_manifests(read_versions()).values():
        assert f"apply -f {url}" in out
    assert "kind create cluster --config k8s/kind/cluster.yaml" in out
    assert "docker build -f docker/detector.Dockerfile -t dev.local/mec-testbed/detector:0.1.0 ." in out
    assert "kind load docker-image" in out
    assert "-f compose/docker-compose.yaml -f compose/docker-compose.tap.yaml up -d" in out
    assert "wait --for=condition=Ready broker/default -n mec" in out
    assert "rollout status deployment/detector -n mec" in out
    assert "# prerequisite docker: MISSING" in out and "# prerequisite kind: MISSING" in out
    steps = [ln for ln in out.splitlines() if ln.startswith("[")]
    commands = [ln for ln in out.splitlines() if ln.startswith("    $ ")]
    assert len(steps) == len(commands) > 20


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    token = L.COMPOSE_DIR / "secrets/detector-token"
    before = token.exists()
    assert lab("up", "--dry-run", env=no_tools_env(tmp_path)).returncode == 0
    assert token.exists() == before


def test_compose_only_dry_run_uses_the_base_file_alone(tmp_path: Path) -> None:
    p = lab("up", "--dry-run", "--skip-k8s", env=no_tools_env(tmp_path))
    assert p.returncode == 0, p.stderr
    assert "kubectl" not in p.stdout and "kind create" not in p.stdout
    assert "docker-compose.tap.yaml" not in p.stdout
    assert "prerequisite sctp" in p.stdout and "prerequisite tun" in p.stdout


@pytest.mark.parametrize("cmd", [["down"], ["status"], ["smoke"], ["smoke", "--ue", "2"]])
def test_other_commands_dry_run(cmd: list[str], tmp_path: Path) -> None:
    p = lab(*cmd, "--dry-run", env=no_tools_env(tmp_path))
    assert p.returncode == 0, p.stderr
    assert "    $ " in p.stdout


def test_smoke_acts_through_the_ues_pdu_session(tmp_path: Path) -> None:
    p = lab("smoke", "--dry-run", "--ue", "2", env=no_tools_env(tmp_path))
    assert "exec -T ue2 curl" in p.stdout and "--interface uesimtun0" in p.stdout
    assert "-b 10.45.0.3" in p.stdout and "imsi-999700000000002" in p.stdout


def test_up_without_tools_fails_with_one_clear_line_each(tmp_path: Path) -> None:
    p = lab("up", env=no_tools_env(tmp_path))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    for tool in ("docker", "kind", "kubectl"):
        assert any(ln.startswith(f"testbed lab: FAIL  {tool}: not found in PATH — fix: install") for ln in lines)
    assert all(ln.startswith("testbed lab: ") for ln in lines)
    assert lines[-1].endswith("`testbed lab doctor` shows them all")
    assert "Traceback" not in p.stderr


def test_bad_arguments(tmp_path: Path) -> None:
    assert lab("smoke", "--ue", "99", env=no_tools_env(tmp_path)).returncode == 2
    p = lab("up", "--skip-k8s", "--skip-compose")
    assert p.returncode == 2 and "nothing to do" in p.stderr
    p = lab("render", "--ues", "0")
    assert p.returncode == 2 and "must be > 0" in p.stderr
    assert lab("frobnicate").returncode == 2


@pytest.mark.parametrize("cmd", [[], ["up"], ["down"], ["status"], ["smoke"], ["render"], ["check"], ["doctor"]])
def test_help(cmd: list[str]) -> None:
    p = lab(*cmd, "--help")
    assert p.returncode == 0 and "usage: testbed lab" in p.stdout


def test_render_check_passes_on_the_committed_files() -> None:
    p = lab("render", "--check")
    assert p.returncode == 0, p.stderr


def test_versions_file_is_shell_compatible(tmp_path: Path) -> None:
    v = read_versions()
    script = f'. "{L.VERSIONS_ENV}"; printf "%s\\n" "$SERVING_RELEASE" "$KIND_NODE_IMAGE"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out == [v["SERVING_RELEASE"], v["KIND_NODE_IMAGE"]]


def test_version_parsing() -> None:
    assert version_tuple("kind v0.30.0 go1.24.6 linux/amd64") == (0, 30, 0)
    assert version_tuple("2.39.1") == (2, 39, 1)
    assert version_tuple("nothing") == ()


def test_ue_readiness_parses_both_compose_ps_formats() -> None:
    subs = generate(2)
    lines = "\n".join(json.dumps({"Service": f"ue{n}", "Health": "healthy"}) for n in (1, 2))
    assert plan.ues_healthy(lines, subs)
    assert plan.ues_healthy(json.dumps([{"Service": "ue1", "Health": "healthy"},
                                        {"Service": "ue2", "Health": "healthy"}]), subs)
    assert not plan.ues_healthy(json.dumps({"Service": "ue1", "Health": "healthy"}), subs)
    assert not plan.ues_healthy(lines.replace("healthy", "starting", 1), subs)
    assert not plan.ues_healthy("not json", subs)


def test_function_images_come_from_the_knative_services() -> None:
    if not (L.K8S_DIR / "knative").is_dir():
        pytest.skip("k8s/knative/ not in the tree yet")
    pairs = plan.function_images()
    assert {m for m, _ in pairs} >= {"buy", "dns_edge", "logger"}
    for module, image in pairs:
        assert (L.REPO / "testbed" / "functions" / f"{module}.py").is_file()
        assert f"fn-{module.replace('_', '-')}:" in image
    assert len({img for _, img in pairs}) == len(pairs)


def test_check_command_passes_and_needs_the_shared_schemas(shared: Path, tmp_path: Path) -> None:
    p = lab("check", "--shared", str(shared))
    assert p.returncode == 0, p.stdout + p.stderr
    p = lab("check", "--shared", str(tmp_path))
    assert p.returncode == 1 and "shared schemas not found" in p.stdout
