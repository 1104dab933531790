"""Put a locally built image on the kind node, whichever image store Docker uses.

`kind load docker-image` pipes `docker save` into `ctr images import --all-platforms --digests`
on the node. With Docker's containerd image store (the default of fresh Docker 29 installs) the
saved archive names every platform of the index but holds only the local one's blobs, and the
import fails with `ctr: content digest sha256:…: not found` (kubernetes-sigs/kind#3795, still open
at kind v0.30.0). The workaround kind documents: save one platform, then `kind load image-archive`.
So: with the containerd store, go straight to the workaround; otherwise try `docker-image` and
fall back to the workaround when the failure is that one.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable

from testbed.lab.doctor import Host, uses_containerd_store

Run = Callable[[list[str]], tuple[int, str]]
KIND_3795 = ("content digest", "not found")


class LoadError(RuntimeError):
    pass


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True)
    except OSError as e:
        return 127, f"{argv[0]}: {e.strerror}"
    return p.returncode, (p.stdout + p.stderr).strip()


def is_kind_3795(output: str) -> bool:
    text = output.lower()
    return all(k in text for k in KIND_3795)


def docker_platform(run: Run = _run) -> str:
    """The engine's platform as `docker image save --platform` wants it (e.g. linux/amd64)."""
    rc, out = run(["docker", "version", "--format", "{{.Server.Os}}/{{.Server.Arch}}"])
    platform = out.strip().splitlines()[-1] if rc == 0 and out.strip() else ""
    return platform if "/" in platform else "linux/amd64"


def containerd_store(run: Run = _run) -> bool:
    return uses_containerd_store(Host(runner=lambda argv, _timeout: run(argv)).docker_info())


def archive_commands(image: str, cluster: str, archive: str, platform: str) -> list[list[str]]:
    return [["docker", "image", "save", "--platform", platform, "-o", archive, image],
            ["kind", "load", "image-archive", archive, "--name", cluster]]


def describe(image: str, cluster: str) -> str:
    """What --dry-run prints for a load."""
    return (f"kind load docker-image {image} --name {cluster}   # with Docker's containerd image store, "
            f"or on `content digest … not found` (kind#3795): docker image save --platform <os/arch> -o TMP.tar "
            f"{image} && kind load image-archive TMP.tar --name {cluster}")


def load_image(image: str, cluster: str, run: Run = _run, log: Callable[[str], None] = lambda s: None) -> str:
    """Load ``image`` into ``cluster``; returns "docker-image" or "image-archive" (the path taken)."""
    if not containerd_store(run):
        rc, out = run(["kind", "load", "docker-image", image, "--name", cluster])
        if rc == 0:
            return "docker-image"
        if not is_kind_3795(out):
            raise LoadError(f"kind load docker-image {image}: {out.splitlines()[-1] if out else f'exit {rc}'}")
        log("    kind load docker-image hit kind#3795 (content digest not found): loading a one-platform archive")
    platform = docker_platform(run)
    fd, archive = tempfile.mkstemp(prefix="mec-lab-image-", suffix=".tar")
    os.close(fd)
    try:
        for argv in archive_commands(image, cluster, archive, platform):
            rc, out = run(argv)
            if rc != 0:
                raise LoadError(f"{' '.join(argv[:3])} {image}: {out.splitlines()[-1] if out else f'exit {rc}'}")
    finally:
        os.unlink(archive)
    return "image-archive"
