"""OverlaySnapshotter end to end, with sync=True and sync=False.

containerd 1.6's overlay snapshotter, measured in process on this kind of
machine, is the bar: prepare+commit 337-470 layers/s (default durability),
stat 430k-580k/s, a walk of 1,000 snapshots in ~2.5 ms, mounts() on a
1,000-deep tip in 1.2-1.5 ms. The "metadata only" groups run the same
transactions through pysnap.storage without directories, which splits
prepare/commit into metadata and file-system cost.

Run: pytest benchmarks/bench_snapshotter.py --benchmark-only
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from timing import median

from pysnap import Kind, OverlaySnapshotter, Usage, _reference, storage
from pysnap.fsutil import remove_tree
from pysnap.metastore import MetaStore
from pysnap.overlay import UPPERDIR_LABEL
from snapcore import du

SYNC = {"sync": True, "nosync": False}
CHAIN = 1000


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


@pytest.fixture(scope="module")
def populated() -> Iterator[dict[int, OverlaySnapshotter]]:
    """Roots with 1,000 and 10,000 committed snapshots in chains of 100."""
    base = tempfile.mkdtemp(prefix="pysnap-bench-", dir="/var/tmp")
    roots = {}
    for n in (1000, 10_000):
        sn = OverlaySnapshotter(os.path.join(base, str(n)), sync=False)
        for c in range(n // 100):
            _chain(sn, 100, prefix=f"x{c}-")
        roots[n] = sn
    yield roots
    for sn in roots.values():
        sn.close()
    remove_tree(base)


# -- prepare + commit ------------------------------------------------------------


@pytest.mark.parametrize("sync", SYNC)
def test_prepare_commit_chain(benchmark, scratch, sync):
    benchmark.group = f"prepare+commit chain of {CHAIN} ({sync})"
    runs = iter(range(1_000_000))

    def setup():
        root = os.path.join(scratch, str(next(runs)))
        return (OverlaySnapshotter(root, sync=SYNC[sync]),), {}

    def run(sn):
        _chain(sn, CHAIN)
        sn.close()

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    benchmark.extra_info["layers_per_s"] = CHAIN / median(benchmark)
    benchmark.extra_info["containerd_layers_per_s"] = "337-470"


@pytest.mark.parametrize("sync", SYNC)
def test_prepare_commit_chain_metadata_only(benchmark, scratch, sync):
    """The same transactions without directories or the usage walk."""
    benchmark.group = f"prepare+commit chain of {CHAIN} ({sync})"
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


@pytest.mark.parametrize("n", [1000, 10_000])
def test_stat(benchmark, populated, n):
    benchmark.group = f"stat ({n} snapshots)"
    sn = populated[n]
    keys = [f"x{c}-c{i}" for c in range(n // 100) for i in range(100)]
    random.Random(1).shuffle(keys)
    sample = keys[:1000]

    def run():
        for k in sample:
            sn.stat(k)

    benchmark(run)
    benchmark.extra_info["stat_per_s"] = len(sample) / median(benchmark)
    benchmark.extra_info["containerd_stat_per_s"] = "430k-580k"


@pytest.mark.parametrize("n", [1000, 10_000])
def test_walk(benchmark, populated, n):
    benchmark.group = f"walk ({n} snapshots)"
    sn = populated[n]
    assert len(benchmark(sn.walk)) == n
    benchmark.extra_info["snapshots_per_s"] = n / median(benchmark)
    benchmark.extra_info["containerd_walk_1000_ms"] = 2.5


@pytest.mark.parametrize("n", [1000, 10_000])
def test_walk_filtered(benchmark, populated, n):
    benchmark.group = f"walk ({n} snapshots)"
    sn = populated[n]
    assert len(benchmark(sn.walk, "name~=-c9$")) == n // 100


def test_mounts_on_deep_tip(benchmark, scratch):
    benchmark.group = f"mounts() on a {CHAIN}-deep tip"
    with OverlaySnapshotter(scratch, sync=False) as sn:
        tip = _chain(sn, CHAIN)
        sn.prepare("tip", tip)
        mounts = benchmark(sn.mounts, "tip")
    assert mounts[0].options[2].count(":") == CHAIN - 1
    benchmark.extra_info["containerd_ms"] = "1.2-1.5"


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
