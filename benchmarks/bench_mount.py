"""Mount + unmount, pysnap's direct syscalls against mount(8)/umount(8) processes.

Groups (side by side in one run): a bind mount, a 2-layer, a 128-layer and a
500-layer overlay (ACTIVE: upperdir and workdir too), laid out as the
snapshotter lays them out (``<root>/snapshots/<id>/fs``), on a private tmpfs
so that the unmount's sync of the upper filesystem does not time the shared disk.

Implementations:

- ``pysnap``: ``mount_one`` + ``unmount`` with the automatic method (one
  mount(2) when the options fit a page, else the new mount API by fd);
- ``pysnap-fd`` / ``pysnap-relative``: the same with the method forced (the
  new API by fd; relative paths from the helper thread);
- ``mount8``: ``mount -t T -o OPTS SRC TGT`` then ``umount TGT``, same options;
- ``mount8-relative``: mount(8) run with its cwd in ``snapshots/`` and the
  layers relative to it (containerd's trick), which is what mount(8) can do
  once absolute options exceed a page. util-linux 2.38's libmount has no
  new-mount-API path, so absolute options past a page fail there: that case
  is skipped with mount(8)'s own message.

Run: ``pytest benchmarks/bench_mount.py --benchmark-only -p no:cacheprovider``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pysnap import Mount
from pysnap import mounts as pm

pytestmark = pytest.mark.root

LAYERS = 500
CASES = ["bind", "overlay-2", "overlay-128", "overlay-500"]
IMPLS = ["pysnap", "pysnap-fd", "pysnap-relative", "mount8", "mount8-relative"]


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.snapshots = root / "snapshots"
        for i in range(1, LAYERS + 2):
            (self.snapshots / str(i) / "fs").mkdir(parents=True)
            if i <= LAYERS:  # LAYERS + 1 is the active snapshot: its upper stays empty
                (self.snapshots / str(i) / "fs" / "layer").write_text(str(i))
        (self.snapshots / str(LAYERS + 1) / "work").mkdir()
        self.target = root / "mnt"
        self.target.mkdir()

    def mount(self, case: str, relative: bool = False) -> Mount:
        """The Mount of ``case``; top layer = highest id, as a chain of commits."""
        if case == "bind":
            return Mount("bind", str(self.snapshots / "1" / "fs"), ("rw", "rbind"))
        n = int(case.split("-")[1])
        base = Path() if relative else self.snapshots
        active = base / str(LAYERS + 1)
        lowers = [str(base / str(i) / "fs") for i in range(n, 0, -1)]
        return Mount(
            "overlay",
            "overlay",
            (
                f"workdir={active / 'work'}",
                f"upperdir={active / 'fs'}",
                "lowerdir=" + ":".join(lowers),
                "index=off",
            ),
        )

    def expected(self, case: str) -> str:
        return "1" if case == "bind" else case.split("-")[1]


@pytest.fixture(scope="session")
def bench() -> Iterator[Bench]:
    root = Path(tempfile.mkdtemp(prefix="pysnap-bench-"))
    # a private tmpfs: an overlay unmount syncs its upper filesystem, and on the
    # shared disk that would time other people's writes, not the mount
    pm.mount_one(Mount("tmpfs", "pysnap-bench", ("size=64m", "mode=0755")), root)
    try:
        yield Bench(root)
    finally:
        pm.unmount_all(root / "mnt", detach=True)
        pm.unmount_all(root, detach=True)
        shutil.rmtree(root)


def _mount8(m: Mount, target: Path, cwd: Path | None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(_mount8_argv(m, target), cwd=cwd, capture_output=True)


def _runner(bench: Bench, case: str, impl: str) -> Callable[[], None]:
    target = bench.target
    if impl.startswith("pysnap"):
        m = bench.mount(case)

        def run() -> None:
            pm.mount_one(m, target)
            pm.unmount(target)

        return run
    relative = impl == "mount8-relative"
    m = bench.mount(case, relative=relative)
    cwd = bench.snapshots if relative else None

    def run8() -> None:
        subprocess.run(_mount8_argv(m, target), cwd=cwd, check=True, capture_output=True)
        subprocess.run(["umount", str(target)], check=True, capture_output=True)

    return run8


def _mount8_argv(m: Mount, target: Path) -> list[str]:
    argv = ["mount", "-o", ",".join(m.options)]
    if m.type != "bind":
        argv += ["-t", m.type]
    return [*argv, m.source, str(target)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES)
def test_mount_unmount(benchmark, bench: Bench, case: str, impl: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = f"mount+unmount {case}"
    if case == "bind" and impl in ("pysnap-fd", "pysnap-relative", "mount8-relative"):
        pytest.skip("overlay methods only")
    method = {"pysnap-fd": "fd", "pysnap-relative": "relative"}.get(impl)
    pm.set_overlay_method(method)  # type: ignore[arg-type]
    try:
        m = bench.mount(case, relative=impl == "mount8-relative")
        benchmark.extra_info["option_bytes"] = len(",".join(m.options))
        # one checked run first: the mount must work and show the top layer
        if impl.startswith("mount8"):
            cwd = bench.snapshots if impl == "mount8-relative" else None
            done = _mount8(m, bench.target, cwd)
            if done.returncode != 0:
                msg = done.stderr.decode().strip().replace("\n", " ")
                pytest.skip(
                    f"mount(8) fails with {len(','.join(m.options))} bytes of options: {msg}"
                )
        else:
            pm.mount_one(bench.mount(case), bench.target)
        try:
            layer = (bench.target / "layer").read_text()
        finally:
            pm.unmount_all(bench.target)
        benchmark.extra_info["correct"] = layer == bench.expected(case)
        assert layer == bench.expected(case)
        benchmark(_runner(bench, case, impl))
    finally:
        pm.set_overlay_method(None)
    assert not os.path.ismount(bench.target)
