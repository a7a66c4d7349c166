"""The metadata store: stat, walk over 100,000 snapshots, write transactions.

Baselines side by side in each group:

- stat: a bare py-lmdb read transaction with one get (the floor: no decoding,
  no objects), and the same get_info path decoding with the _reference twin.
  "per txn" opens a read transaction per stat (what ``OverlaySnapshotter.stat``
  does); "one txn" stats inside one long read transaction.
- walk: the same cursor decoded by the _reference twin.
- writes: create, commit and remove, each its own write transaction, with
  ``sync=True`` (durable on return) and ``sync=False``.

containerd's in-process stat runs at 430,000-580,000/s on this kind of machine.

Run: pytest benchmarks/bench_store.py --benchmark-only -p no:cacheprovider
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from timing import median

from pysnap import _reference, storage
from pysnap.metastore import MetaStore
from pysnap.types import Info, Kind, Usage

N_WALK = 100_000
LABELS = {"containerd.io/snapshot.ref": "sha256:" + "ab" * 32, "org.example/owner": "ci"}


@pytest.fixture(scope="module")
def big_store() -> Iterator[MetaStore]:
    """100,000 snapshots: chains of 100 committed layers with labels, plus views."""
    root = tempfile.mkdtemp(prefix="pysnap-bench-store-", dir="/var/tmp")
    ms = MetaStore(root, sync=False)
    with ms.transaction(write=True) as tx:
        for c in range(N_WALK // 100):
            parent = ""
            for i in range(99):
                key = f"chain{c}/active{i}"
                storage.create_snapshot(tx, Kind.ACTIVE, key, parent, None)
                parent = f"chain{c}/layer{i}"
                storage.commit_active(tx, key, parent, Usage(4096 * i, i), LABELS)
            storage.create_snapshot(tx, Kind.VIEW, f"chain{c}/view", parent, None)
    yield ms
    ms.close()
    shutil.rmtree(root)


KEY = "chain7/layer42"


def _stat_per_txn(ms: MetaStore, key: str) -> Info:
    with ms.transaction() as tx:
        return storage.get_info(tx, key)[1]


def _stat_reference(ms: MetaStore, key: str) -> Info:
    with ms.transaction() as tx:
        raw = tx.txn.get(key.encode(), None, tx.snapshots)
        return _reference.decode_info(key, raw)[1]


def _raw_get(ms: MetaStore, key: str) -> bytes:
    txn = ms._env.begin()
    raw: bytes = txn.get(key.encode(), None, ms._dbs[0])
    txn.abort()
    return raw


STAT = ["pysnap per txn", "pysnap one txn", "reference per txn", "py-lmdb begin+get only"]


@pytest.mark.parametrize("impl", STAT)
def test_stat(benchmark: Any, big_store: MetaStore, impl: str) -> None:
    benchmark.group = "store: stat (get_info + Info)"
    want = _stat_per_txn(big_store, KEY)
    if impl == "pysnap per txn":
        benchmark(_stat_per_txn, big_store, KEY)
    elif impl == "reference per txn":
        benchmark.extra_info["correct"] = _stat_reference(big_store, KEY) == want
        benchmark(_stat_reference, big_store, KEY)
    elif impl == "py-lmdb begin+get only":
        benchmark(_raw_get, big_store, KEY)
    else:
        with big_store.transaction() as tx:
            benchmark(storage.get_info, tx, KEY)
    benchmark.extra_info["ops_per_s"] = 1 / median(benchmark)


def _walk_reference(ms: MetaStore) -> list[Info]:
    with ms.transaction() as tx, tx.txn.cursor(tx.snapshots) as cur:
        return _reference.decode_infos(cur.iternext())


def _walk(ms: MetaStore) -> list[Info]:
    with ms.transaction() as tx:
        return storage.walk_info(tx)


@pytest.mark.parametrize("impl", ["pysnap", "reference"])
def test_walk(benchmark: Any, big_store: MetaStore, impl: str) -> None:
    benchmark.group = f"store: walk {N_WALK:,} snapshots"
    fn = _walk if impl == "pysnap" else _walk_reference
    infos = fn(big_store)
    assert len(infos) == N_WALK
    benchmark.extra_info["correct"] = infos == _walk(big_store)
    benchmark.pedantic(fn, args=(big_store,), rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["snapshots_per_s"] = N_WALK / median(benchmark)


@pytest.fixture(params=[True, False], ids=["sync", "nosync"])
def write_store(request: pytest.FixtureRequest) -> Iterator[MetaStore]:
    root = tempfile.mkdtemp(prefix="pysnap-bench-store-", dir="/var/tmp")
    ms = MetaStore(root, sync=request.param)
    with ms.transaction(write=True) as tx:
        storage.create_snapshot(tx, Kind.ACTIVE, "base-a", "", None)
        storage.commit_active(tx, "base-a", "base", Usage(), None)
    yield ms
    ms.close()
    shutil.rmtree(root)


@pytest.mark.parametrize("op", ["create", "commit", "remove"])
def test_write_txn(benchmark: Any, write_store: MetaStore, op: str) -> None:
    """One write transaction per call; the other steps of the cycle run in setup."""
    ms = write_store
    sync = "sync=True" if ms._env.flags()["sync"] else "sync=False"
    benchmark.group = f"store: write transactions, {sync}"
    counter = itertools.count()

    def create(key: str) -> None:
        with ms.transaction(write=True) as tx:
            storage.create_snapshot(tx, Kind.ACTIVE, key, "base", LABELS)

    def commit(key: str) -> None:
        with ms.transaction(write=True) as tx:
            storage.commit_active(tx, key, key + "-c", Usage(4096, 1), LABELS)

    def remove(key: str) -> None:
        with ms.transaction(write=True) as tx:
            storage.remove(tx, key)

    def setup() -> tuple[tuple[str], dict[str, Any]]:
        key = f"k{next(counter)}"
        if op != "create":
            create(key)
        if op == "remove":
            commit(key)
            key += "-c"
        return (key,), {}

    fn = {"create": create, "commit": commit, "remove": remove}[op]
    benchmark.pedantic(fn, setup=setup, rounds=300 if "True" in sync else 2000)
    benchmark.extra_info["txn_per_s"] = 1 / median(benchmark)
