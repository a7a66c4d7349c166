"""Session fixtures shared by the benchmark suites, and the side-by-side summary."""

from __future__ import annotations

import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import containerd
import pytest

import pysnap

# (group, pysnap seconds per round, containerd seconds per round), in run order.
_SIDE_BY_SIDE: list[tuple[str, list[float], list[float]]] = []


@pytest.fixture(scope="session")
def containerd_driver() -> Iterator[containerd.Driver]:
    """containerd 1.6's overlay snapshotter in a Go process built for this session."""
    why = containerd.missing()
    if why:
        pytest.skip(f"containerd baseline unavailable: {why}")
    with tempfile.TemporaryDirectory(prefix="pysnap-ctd-build-") as d:
        driver = containerd.Driver(containerd.build(d))
        try:
            yield driver
        finally:
            driver.close()


# The groups "on ext4" run on a new ext4 made for the session in a file on the root disk
# (loop-mounted; mkfs defaults, so it has a journal), not on the root file system itself:
# where that is an ext4 without a journal (this kind of machine's), ext4 passes over every
# inode deleted in the last minute (longer while its inode table block is dirty) when it
# allocates one, reading each in turn. A round right after the previous round's tree was
# removed then spent 90% of its CPU in the kernel's recently_deleted() (perf), whatever
# the tool: image unpacks took 4-36 s for pysnap and 16-62 s for containerd, against
# 6 s and 17 s on the new ext4.
EXT4_IMAGE = Path("/var/tmp/pysnap-bench-ext4.img")
EXT4_MOUNT = Path("/var/tmp/pysnap-bench-ext4")
EXT4_SIZE = "40G"


def pytest_collection_modifyitems(items: list[Any]) -> None:
    """In each module, the rows on the ext4 run after all the others, in their order.

    A tmpfs row run after them was slower: the image unpack alternated with
    containerd's measured 4.59x and 4.65x there, 5.35x-5.75x in 4 runs with no
    ext4 row before it (their data, and the loop file's, is still being written
    back after they end; the cause is not proven).
    """

    def on_ext4(item: Any) -> bool:
        callspec = getattr(item, "callspec", None)
        return callspec is not None and "ext4" in callspec.params.values()

    first_of_module: dict[str, int] = {}
    for i, item in enumerate(items):
        first_of_module.setdefault(item.nodeid.split("::")[0], i)
    # a stable sort: the rows keep their order within each part
    items.sort(key=lambda item: (first_of_module[item.nodeid.split("::")[0]], on_ext4(item)))


def detach_mounts_under(path: Path) -> None:
    """Detach every mount at or under ``path``."""
    for m in pysnap.mountinfo.mounts_under(str(path)) if path.exists() else ():
        pysnap.unmount(m.mount_point, detach=True)


@pytest.fixture(scope="session")
def ext4() -> Iterator[Path]:
    """EXT4_MOUNT, sparse, its inode tables and journal written at mkfs (no lazy
    initialisation writing them behind the rounds); removed at the end."""
    detach_mounts_under(EXT4_MOUNT)  # a killed run's
    EXT4_MOUNT.mkdir(exist_ok=True)
    EXT4_IMAGE.unlink(missing_ok=True)
    subprocess.run(["truncate", "-s", EXT4_SIZE, str(EXT4_IMAGE)], check=True)
    mkfs = ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"]
    subprocess.run([*mkfs, str(EXT4_IMAGE)], check=True)
    subprocess.run(["mount", "-o", "loop", str(EXT4_IMAGE), str(EXT4_MOUNT)], check=True)
    try:
        yield EXT4_MOUNT
    finally:
        detach_mounts_under(EXT4_MOUNT)
        EXT4_MOUNT.rmdir()
        EXT4_IMAGE.unlink()


def record(benchmark: Any, pysnap_rounds: list[float], containerd_rounds: list[float]) -> None:
    """Put both sides' medians, ranges and the speed-up into extra_info and the summary."""
    if not pysnap_rounds or not containerd_rounds:  # --benchmark-disable keeps no rounds
        return
    p, c = statistics.median(pysnap_rounds), statistics.median(containerd_rounds)
    benchmark.extra_info.update(
        containerd_median_s=c,
        containerd_range_s=[min(containerd_rounds), max(containerd_rounds)],
        pysnap_median_s=p,
        pysnap_range_s=[min(pysnap_rounds), max(pysnap_rounds)],
        speedup_vs_containerd=c / p,
    )
    _SIDE_BY_SIDE.append((benchmark.group, pysnap_rounds, containerd_rounds))


def _fmt(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.3f} s"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _SIDE_BY_SIDE:
        return
    tr = terminalreporter
    tr.section("pysnap vs containerd 1.6 overlay, alternated round by round")
    tr.write_line("group: pysnap median [min-max] | containerd median [min-max] | speed-up")
    for group, p, c in _SIDE_BY_SIDE:
        pm, cm = statistics.median(p), statistics.median(c)
        tr.write_line(
            f"{group}: {_fmt(pm)} [{_fmt(min(p))}-{_fmt(max(p))}] | "
            f"{_fmt(cm)} [{_fmt(min(c))}-{_fmt(max(c))}] | {cm / pm:.2f}x "
            f"({len(p)} rounds)"
        )
