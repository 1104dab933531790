"""The lab's taps keep their spool on a named volume that the non-root, read-only container can write.

Facts (moby/moby docker-v29.7.2): daemon/create_unix.go populates a new volume from the image's
directory (CopyImagePathContent); daemon/container/container_unix.go copyExistingContents does
so only into an empty volume, with vendor/github.com/containerd/continuity/fs/copy.go
copyDirectory applying the source directory's mode and owner (copyFileInfo -> Lchown) to the
volume's root. So a directory made in the image, owned by the tap's uid, gives a writable volume.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from labfacts import upstream_text

from testbed.lab.render import TAP_SPOOL_DIR, tap_override_doc

REPO = Path(__file__).resolve().parent.parent.parent
TAG = "docker-v29.7.2"


def test_each_tap_spools_to_its_own_named_volume() -> None:
    doc = tap_override_doc()
    mounts = {}
    for name, svc in doc["services"].items():
        cmd = svc["command"]
        assert cmd[cmd.index("--spool") + 1] == TAP_SPOOL_DIR
        (vol,) = [v.split(":")[0] for v in svc["volumes"] if v.endswith(f":{TAP_SPOOL_DIR}")]
        mounts[name] = vol
        assert svc["read_only"] is True and svc["cap_add"] == ["NET_RAW"]  # the spool needs no more
    assert len(set(mounts.values())) == len(mounts)  # one process per spool directory
    assert set(mounts.values()) == set(doc["volumes"])
    committed = yaml.safe_load((REPO / "compose" / "docker-compose.tap.yaml").read_text())
    assert committed == doc  # the file in the repo is the rendered one


def test_the_image_makes_the_spool_directory_for_the_tap_user() -> None:
    text = (REPO / "docker" / "tap.Dockerfile").read_text()
    uid = re.search(r"^USER (\d+):(\d+)$", text, re.M)
    assert uid is not None
    made = re.search(r"install -d -o (\d+) -g (\d+) -m (0\d+) (\S+)", text)
    assert made is not None and made.group(4) == TAP_SPOOL_DIR
    assert (made.group(1), made.group(2)) == (uid.group(1), uid.group(2))


def test_docker_populates_a_new_volume_with_the_directory_owner() -> None:
    create = upstream_text("moby/moby", TAG, "daemon/create_unix.go")
    assert "c.CopyImagePathContent(volumePath, ctrDestPath)" in create
    unix = upstream_text("moby/moby", TAG, "daemon/container/container_unix.go")
    body = unix[unix.index("func copyExistingContents"):]
    body = body[: body.index("\n}\n")]
    assert "len(dstList) != 0" in body and "fs.CopyDir(destination, source" in body  # only when empty
    copy = upstream_text("moby/moby", TAG, "vendor/github.com/containerd/continuity/fs/copy.go")
    root = copy[copy.index("func copyDirectory"):copy.index("f, err := os.Open(src)")]
    assert "copyFileInfo(stat, src, dst)" in root  # the volume's root takes the source's owner
    unix_copy = upstream_text("moby/moby", TAG, "vendor/github.com/containerd/continuity/fs/copy_unix.go")
    info = unix_copy[unix_copy.index("func copyFileInfo"):]
    assert "os.Lchown(name, int(st.Uid), int(st.Gid))" in info[: info.index("\n}\n")]
