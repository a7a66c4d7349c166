"""A real containerd (Debian's 1.6) running containers on ``pysnap serve``.

Each test starts a private containerd and a ``pysnap serve`` (see
containerd_env.py): nothing of the host's containerd is used or touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from containerd_env import (
    SKIP_REASON,
    SNAPSHOTTER,
    ContainerdEnv,
    build_busybox_image,
    containerd_env,
    wait_until,
)

from pysnap import Kind, mountinfo

pytestmark = [pytest.mark.root, pytest.mark.skipif(bool(SKIP_REASON), reason=SKIP_REASON)]


def snapshots_on_disk(env: ContainerdEnv) -> list[str]:
    return sorted(p.name for p in (env.pysnap_root / "snapshots").iterdir())


def test_ctr_snapshots_commands(tmp_path: Path, containerd: ContainerdEnv) -> None:
    env = containerd
    snap = ("snapshots", "--snapshotter", SNAPSHOTTER)
    env.ctr(*snap, "prepare", "work")
    (target := tmp_path / "t").mkdir()
    mount_cmd = env.ctr(*snap, "mounts", str(target), "work").stdout
    assert mount_cmd.startswith("mount -t bind ") and str(env.pysnap_root) in mount_cmd
    env.ctr(*snap, "commit", "layer", "work")
    env.ctr(*snap, "prepare", "child", "layer")
    listing = env.ctr(*snap, "ls").stdout.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in listing[1:]}
    assert rows == {"layer": ["Committed"], "child": ["layer", "Active"]}
    info = json.loads(env.ctr(*snap, "info", "child").stdout)
    assert (info["Kind"], info["Name"], info["Parent"]) == ("Active", "child", "layer")
    usage = env.ctr(*snap, "usage", "layer").stdout.splitlines()
    assert usage[0].split() == ["KEY", "SIZE", "INODES"] and usage[1].split()[0] == "layer"
    refused = env.ctr(*snap, "rm", "layer", check=False)
    assert refused.returncode != 0 and "remove" in refused.stderr
    # The backend holds containerd's own keys: namespace/id/key
    with env.backend() as backend:
        keys = {i.name: i.kind for i in backend.walk()}
    assert sorted(k.split("/", 2)[2] for k in keys) == ["child", "layer"]
    assert all(k.startswith("default/") for k in keys)
    env.ctr(*snap, "rm", "child")
    env.ctr(*snap, "rm", "layer")
    assert env.ctr(*snap, "ls").stdout.splitlines()[1:] == []


def test_image_runs_and_the_collector_empties_the_root(tmp_path: Path) -> None:
    image = build_busybox_image(tmp_path / "image", greeting="hello from pysnap")
    with containerd_env() as env:
        env.ctr(
            "images", "import", "--snapshotter", SNAPSHOTTER,
            "--base-name", image.base_name, str(image.tar),
        )  # fmt: skip
        with env.backend() as backend:
            layers = backend.walk()
        assert len(layers) == 2 and all(i.kind == Kind.COMMITTED for i in layers)
        assert all(i.name.split("/", 2)[2].startswith("sha256:") for i in layers)  # chain IDs

        run = env.run(image.ref, "greeter")
        assert run.stdout == "hello from pysnap\n", env.logs()

        # containerd's main socket serves the same API: our client drives it too
        with env.through_containerd() as via:
            chain = {i.name: i.parent for i in via.walk()}
        assert len(chain) == 2 and sorted(chain.values())[0] == ""
        with env.through_containerd(namespace="elsewhere") as other:
            assert other.walk() == []

        # A snapshot containerd does not know of, made on its root: the
        # collector owns the root and removes it with the rest.
        with env.backend() as backend:
            backend.prepare("made-by-hand")
        env.ctr("images", "rm", "--sync", image.ref)
        with env.backend() as backend:
            wait_until(lambda: backend.walk() == [], what="the collector to remove every snapshot")
        cleanup = subprocess.run(
            [sys.executable, "-m", "pysnap", "--root", str(env.pysnap_root), "cleanup"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cleanup.returncode == 0, cleanup.stderr
        assert snapshots_on_disk(env) == []
        assert mountinfo.mounts_under(env.base) == []  # ctr run --rm unmounted the rootfs


def test_remote_cli_on_containerds_native_snapshotter(
    tmp_path: Path, containerd: ContainerdEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    # native's active snapshot is bind-mounted whole (no fs/ inside): the mounted
    # check must look at that directory, not at every snapshot beside it.
    from pysnap.cli import main

    def run(*argv: str) -> tuple[int, str]:
        code = main(["--address", containerd.address, "--snapshotter", "native", *argv])
        return code, capsys.readouterr().err

    target = tmp_path / "m"
    target.mkdir()
    assert run("prepare", "mounted")[0] == 0
    assert run("prepare", "other")[0] == 0
    assert run("mount", str(target), "mounted")[0] == 0
    try:
        assert run("commit", "other-c", "other") == (0, "")
        code, err = run("commit", "mounted-c", "mounted")
        assert code == 5 and f"it is mounted at {target}" in err
    finally:
        subprocess.run(["umount", str(target)], check=True)
    assert run("commit", "mounted-c", "mounted") == (0, "")
    assert run("view", "v", "other-c") == (0, "")
    # a synchronous garbage collection (deleting a lease with --sync runs one) keeps
    # them: they are GC roots, as ctr marks what it makes (containerd's startup
    # collection once removed other-c before rm came to it)
    lease = containerd.ctr("leases", "create").stdout.split()[0]
    containerd.ctr("leases", "delete", "--sync", lease)
    assert run("rm", "v", "mounted-c", "other-c") == (0, "")
