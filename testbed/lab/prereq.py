"""Prerequisite checks for the Compose + kind lab, each with a one-line message saying what to do."""

from __future__ import annotations

import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from testbed.lab.versions import version_tuple

COMPOSE_MIN = (2, 20, 0)     # depends_on conditions incl. service_completed_successfully, `ps --format json`


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    message: str


def _run(argv: list[str], timeout: float = 15.0) -> tuple[int, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 127, str(e)
    return p.returncode, (p.stdout + p.stderr).strip()


def check_docker() -> Check:
    if shutil.which("docker") is None:
        return Check("docker", False, "docker: not found in PATH; install Docker Engine (docs.docker.com/engine/install)")
    rc, out = _run(["docker", "info", "--format", "{{.ServerVersion}}"])
    if rc != 0:
        first = out.splitlines()[0] if out else "no answer"
        return Check("docker", False, f"docker: the engine does not answer ({first}); start it or check your permissions")
    return Check("docker", True, f"docker engine {out.splitlines()[-1]}")


def check_compose() -> Check:
    if shutil.which("docker") is None:
        return Check("docker compose", False, "docker compose: needs docker first")
    rc, out = _run(["docker", "compose", "version", "--short"])
    have = version_tuple(out)
    if rc != 0 or not have:
        return Check("docker compose", False, "docker compose: the v2 plugin is missing; install docker-compose-plugin")
    if have < COMPOSE_MIN:
        want = ".".join(map(str, COMPOSE_MIN))
        return Check("docker compose", False, f"docker compose: {out} is too old, need >= {want}")
    return Check("docker compose", True, f"docker compose {out}")


def check_kind(min_version: str) -> Check:
    if shutil.which("kind") is None:
        return Check("kind", False, f"kind: not found in PATH; install kind >= {min_version} (kind.sigs.k8s.io)")
    rc, out = _run(["kind", "version"])
    have, want = version_tuple(out), version_tuple(min_version)
    if rc != 0 or not have:
        return Check("kind", False, f"kind: `kind version` failed ({out or 'no output'})")
    if have < want:
        return Check("kind", False, f"kind: {out} is too old; Knative 1.22 needs Kubernetes >= 1.34, "
                                    f"which needs kind >= {min_version}")
    return Check("kind", True, out)


def check_kubectl() -> Check:
    if shutil.which("kubectl") is None:
        return Check("kubectl", False, "kubectl: not found in PATH; install kubectl >= 1.33 (kubernetes.io/docs/tasks/tools)")
    return Check("kubectl", True, "kubectl found")


def check_sctp(proc: Path = Path("/proc"), sys: Path = Path("/sys")) -> Check:
    # the gNB's N2 (NGAP) is SCTP; containers share the host kernel and cannot load modules
    if (proc / "net/sctp").exists() or (sys / "module/sctp").exists():
        return Check("sctp", True, "sctp kernel module loaded")
    return Check("sctp", False, "sctp: kernel module not loaded; run `sudo modprobe sctp` "
                                "(and add sctp to /etc/modules-load.d/ to keep it)")


def check_tun(dev: Path = Path("/dev/net/tun")) -> Check:
    try:
        mode = dev.stat().st_mode
    except OSError:
        return Check("tun", False, f"tun: {dev} missing; run `sudo modprobe tun` (the UPF and UEs need it)")
    if not stat.S_ISCHR(mode):
        return Check("tun", False, f"tun: {dev} is not a character device")
    return Check("tun", True, f"{dev} present")


def checks_for(command: str, *, k8s: bool, compose: bool, kind_min: str) -> list[Check]:
    """The checks a command needs; ``k8s``/``compose`` say which halves of the lab it touches."""
    out: list[Check] = []
    if compose or k8s:
        out.append(check_docker())
    if compose:
        out.append(check_compose())
    if k8s:
        out.append(check_kind(kind_min))
        out.append(check_kubectl())
    if command == "up" and compose:
        out += [check_sctp(), check_tun()]
    return out
