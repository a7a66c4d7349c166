"""OverlaySnapshotter end to end, side by side with containerd 1.6's overlay snapshotter.

containerd runs in process in a Go driver (benchmarks/containerd_overlay,
built by the ``containerd_driver`` fixture) on the same kind of file system.
The two alternate round by round: each pysnap round's ``setup`` runs the same
round in containerd (timed in Go, outside pysnap's timing), so a noisy
neighbour slows both alike. ``extra_info`` and the summary at the end give
both medians and ranges and the speed-up (containerd median / pysnap median).

containerd 1.6 has no durability option: ``NewSnapshotter`` takes only
``AsynchronousRemove`` and ``WithUpperdirLabel``, and its metadata store
opens bolt with default options (two fdatasyncs per write transaction), so
its figure is always the durable one; pysnap's ``sync=False`` is compared
with it. The read groups (stat, walk, mounts) use roots on tmpfs for both.
The "metadata only" groups run the same transactions through pysnap.storage
without directories, which splits prepare/commit into metadata and
file-system cost.

Run: pytest benchmarks/bench_snapshotter.py --benchmark-only
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import record
from containerd import Driver
from timing import median

from pysnap import Kind, OverlaySnapshotter, Usage, _reference, storage
from pysnap.fsutil import remove_tree
from pysnap.metastore import MetaStore
from pysnap.overlay import UPPERDIR_LABEL
from snapcore import du

SYNC = {"sync": True, "nosync": False}
CHAIN = 1000
# Where each side's roots live: the root disk, and tmpfs (no flush costs anything).
FILESYSTEMS = {"disk": "/var/tmp", "tmpfs": "/dev/shm"}


def _rounds(benchmark: Any) -> list[float]:
    return list(benchmark.stats.stats.data) if benchmark.stats else []


@pytest.fixture
def scratch() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="pysnap-bench-", dir="/var/tmp")
    yield d
    remove_tree(d)


def _chain(sn: OverlaySnapshotter, n: int, prefix: str = "") -> str:
    parent = ""
    for i in range(n):
        sn.prepare(f"{prefix}a{i}", parent)
        parent = f"{prefix}c{i}"
        sn.commit(parent, f"{prefix}a{i}")
    return parent


class Populated:
    """The same snapshots in a pysnap root and a containerd root, both on tmpfs."""

    def __init__(self, base: str, driver: Driver, n: int, depth: int) -> None:
        self.ctd_root = os.path.join(base, f"containerd-{n}-{depth}")
        self.sn = OverlaySnapshotter(os.path.join(base, f"pysnap-{n}-{depth}"), sync=False)
        for c in range(n // depth):
            _chain(self.sn, depth, prefix=f"x{c}-")
        driver.call("populate", self.ctd_root, n, depth)
        self.keys = [f"x{c}-c{i}" for c in range(n // depth) for i in range(depth)]


@pytest.fixture(scope="module")
def populated(containerd_driver: Driver) -> Iterator[dict[int, Populated]]:
    """1,000 and 10,000 committed snapshots in chains of 100, and one chain of 1,000."""
    base = tempfile.mkdtemp(prefix="pysnap-bench-", dir=FILESYSTEMS["tmpfs"])
    roots = {n: Populated(base, containerd_driver, n, 100) for n in (1000, 10_000)}
    roots[CHAIN] = roots[1000]
    roots["deep"] = Populated(base, containerd_driver, CHAIN, CHAIN)
    yield roots
    for p in {id(p): p for p in roots.values()}.values():
        p.sn.close()
        containerd_driver.call("close", p.ctd_root)
    remove_tree(base)


# -- prepare + commit ------------------------------------------------------------


@pytest.mark.parametrize("fs", FILESYSTEMS)
@pytest.mark.parametrize("sync", SYNC)
def test_prepare_commit_chain(benchmark, containerd_driver, fs, sync):
    """pysnap with ``sync``, each round after the same chain in containerd (durable)."""
    benchmark.group = f"prepare+commit chain of {CHAIN}, {fs} ({sync} vs containerd)"
    base = tempfile.mkdtemp(prefix="pysnap-bench-", dir=FILESYSTEMS[fs])
    runs = iter(range(1_000_000))
    ctd: list[float] = []

    def setup():
        r = next(runs)
        ctd.append(containerd_driver.seconds("chain", os.path.join(base, f"c{r}"), CHAIN))
        return (OverlaySnapshotter(os.path.join(base, f"p{r}"), sync=SYNC[sync]),), {}

    def run(sn):
        _chain(sn, CHAIN)
        sn.close()

    try:
        benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)
    finally:
        remove_tree(base)
    benchmark.extra_info["layers_per_s"] = CHAIN / median(benchmark)
    record(benchmark, _rounds(benchmark), ctd)


@pytest.mark.parametrize("sync", SYNC)
def test_prepare_commit_chain_metadata_only(benchmark, scratch, sync):
    """The same transactions without directories or the usage walk."""
    benchmark.group = f"prepare+commit chain of {CHAIN}, metadata only ({sync})"
    runs = iter(range(1_000_000))

    def setup():
        root = os.path.join(scratch, f"m{next(runs)}")
        os.makedirs(root)
        return (MetaStore(root, sync=SYNC[sync]),), {}

    def run(ms):
        parent = ""
        for i in range(CHAIN):
            with ms.transaction(write=True) as tx:
                storage.create_snapshot(tx, Kind.ACTIVE, f"a{i}", parent, None)
            with ms.transaction(write=True) as tx:
                storage.commit_active(tx, f"a{i}", f"c{i}", Usage(4096, 1), None)
            parent = f"c{i}"
        ms.close()

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    benchmark.extra_info["layers_per_s"] = CHAIN / median(benchmark)


# -- stat, walk, mounts ---------------------------------------------------------------


def _alternated(benchmark, driver, command, fn, rounds):
    """Time ``fn`` in pysnap, each round after containerd's ``command`` round."""
    ctd: list[float] = []

    def setup():
        ctd.append(driver.seconds(*command))
        return (), {}

    benchmark.pedantic(fn, setup=setup, rounds=rounds, iterations=1, warmup_rounds=1)
    record(benchmark, _rounds(benchmark), ctd[1:])  # the first was pysnap's warm-up's


@pytest.mark.parametrize("n", [1000, 10_000])
def test_stat(benchmark, populated, containerd_driver, n):
    """10 passes of stat over the same 1,000 keys (shuffled) per round."""
    benchmark.group = f"stat x10,000 ({n} snapshots, vs containerd)"
    p = populated[n]
    keys = list(p.keys)
    random.Random(1).shuffle(keys)
    sample = keys[:1000]
    stat = p.sn.stat

    def run():
        for _ in range(10):
            for k in sample:
                stat(k)

    _alternated(benchmark, containerd_driver, ("stat", p.ctd_root, 10, *sample), run, 30)
    benchmark.extra_info["stat_per_s"] = 10 * len(sample) / median(benchmark)


@pytest.mark.parametrize("n", [1000, 10_000])
def test_walk(benchmark, populated, containerd_driver, n):
    """Walks of all n snapshots: 10,000 Infos per round."""
    benchmark.group = f"walk of {n} x{10_000 // n} (vs containerd)"
    p = populated[n]
    reps = 10_000 // n
    assert len(p.sn.walk()) == n
    assert containerd_driver.call("walk", p.ctd_root, 1)["count"] == n

    def run():
        for _ in range(reps):
            p.sn.walk()

    _alternated(benchmark, containerd_driver, ("walk", p.ctd_root, reps), run, 30)
    benchmark.extra_info["snapshots_per_s"] = 10_000 / median(benchmark)


@pytest.mark.parametrize("n", [1000, 10_000])
def test_walk_filtered(benchmark, populated, n):
    benchmark.group = f"walk of {n}, filtered"
    assert len(benchmark(populated[n].sn.walk, "name~=-c9$")) == n // 100


def test_mounts_on_deep_tip(benchmark, populated, containerd_driver):
    """mounts() of an ACTIVE snapshot on a 1,000-deep chain, 10 per round."""
    benchmark.group = f"mounts() on a {CHAIN}-deep tip x10 (vs containerd)"
    p = populated["deep"]
    tip = f"tip-{os.getpid()}"
    p.sn.prepare(tip, p.keys[-1])
    containerd_driver.call("prepare", p.ctd_root, tip, p.keys[-1])
    lowers = [o for o in p.sn.mounts(tip)[0].options if o.startswith("lowerdir=")]
    assert lowers[0].count(":") == CHAIN - 1
    assert containerd_driver.call("mounts", p.ctd_root, tip, 1)["lowers"] == CHAIN
    mounts = p.sn.mounts

    def run():
        for _ in range(10):
            mounts(tip)

    _alternated(benchmark, containerd_driver, ("mounts", p.ctd_root, tip, 10), run, 30)


# -- usage ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_active() -> Iterator[tuple[OverlaySnapshotter, str]]:
    base = tempfile.mkdtemp(prefix="pysnap-bench-", dir="/var/tmp")
    sn = OverlaySnapshotter(base, sync=False)
    sn.prepare("big")
    upper = os.path.join(base, "snapshots", "1", "fs")
    for d in range(100):
        dpath = os.path.join(upper, f"d{d}")
        os.mkdir(dpath)
        for f in range(1000):
            with open(os.path.join(dpath, f"f{f}"), "wb") as fh:
                fh.write(b"x" * (f % 7 * 100))
    yield sn, upper
    sn.close()
    shutil.rmtree(base)


@pytest.mark.parametrize("impl", ["snapshotter", "reference"])
def test_usage_active_100k(benchmark, big_active, impl):
    benchmark.group = "usage of an active snapshot with 100,000 files"
    sn, upper = big_active
    expected = _reference.disk_usage(upper)
    if impl == "snapshotter":
        got = benchmark(sn.usage, "big")
    else:
        got = benchmark(_reference.disk_usage, upper)
    assert tuple(got) == tuple(expected) == tuple(du.disk_usage(upper))


# -- remove ------------------------------------------------------------------------------


@pytest.mark.parametrize("sync", SYNC)
def test_remove(benchmark, scratch, sync):
    benchmark.group = f"remove of a committed layer with 100 files ({sync})"
    sn = OverlaySnapshotter(scratch, sync=SYNC[sync], upperdir_label=True)
    counter = iter(range(1_000_000))

    def setup():
        i = next(counter)
        sn.prepare(f"a{i}")
        upper = sn.stat(f"a{i}").labels[UPPERDIR_LABEL]
        for f in range(100):
            with open(os.path.join(upper, f"f{f}"), "wb") as fh:
                fh.write(b"y" * 100)
        sn.commit(f"c{i}", f"a{i}")
        return (f"c{i}",), {}

    benchmark.pedantic(sn.remove, setup=setup, rounds=50, iterations=1)
    sn.close()
