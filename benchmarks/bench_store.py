"""The metadata store: stat, walk over 100,000 snapshots, write transactions.

Baselines side by side in each group:

- stat: a bare read transaction with one get through snapcore.mdb (the
  floor: no decoding, no objects) and through py-lmdb (on a copy of the
  store: one process must not open it twice), and the same get_info path
  decoding with the _reference twin. "per txn" opens a read transaction per
  stat (what ``OverlaySnapshotter.stat`` does); "one txn" stats inside one
  long read transaction.
- walk: the same records decoded by the _reference twin, and py-lmdb's
  cursor alone over the copy (the cost of its items before any decoding).
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

import lmdb
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


@pytest.fixture(scope="module")
def py_lmdb_copy(big_store: MetaStore) -> Iterator[tuple[Any, Any]]:
    """py-lmdb's environment and ``snapshots`` database on a copy of big_store's data file."""
    copy = tempfile.mkdtemp(prefix="pysnap-bench-store-", dir="/var/tmp")
    shutil.copy(big_store.data_path, copy)
    env = lmdb.open(copy, max_dbs=8, readahead=False, max_spare_txns=4)
    yield env, env.open_db(b"snapshots", create=False)
    env.close()
    shutil.rmtree(copy)


def _stat_per_txn(ms: MetaStore, key: str) -> Info:
    with ms.transaction() as tx:
        return storage.get_info(tx, key)[1]


def _stat_reference(ms: MetaStore, key: str) -> Info:
    with ms.transaction() as tx:
        raw = tx.txn.get(key.encode(), None, tx.snapshots)
        assert raw is not None
        return _reference.decode_info(key, raw)[1]


def _raw_get(env: Any, db: Any, key: str) -> bytes:
    txn = env.begin()
    raw: bytes = txn.get(key.encode(), None, db)
    txn.abort()
    return raw


STAT = [
    "pysnap per txn",
    "pysnap one txn",
    "reference per txn",
    "mdb begin+get only",
    "py-lmdb begin+get only",
]


@pytest.mark.parametrize("impl", STAT)
def test_stat(
    benchmark: Any, big_store: MetaStore, py_lmdb_copy: tuple[Any, Any], impl: str
) -> None:
    benchmark.group = "store: stat (get_info + Info)"
    want = _stat_per_txn(big_store, KEY)
    if impl == "pysnap per txn":
        benchmark(_stat_per_txn, big_store, KEY)
    elif impl == "reference per txn":
        benchmark.extra_info["correct"] = _stat_reference(big_store, KEY) == want
        benchmark(_stat_reference, big_store, KEY)
    elif impl == "mdb begin+get only":
        benchmark(_raw_get, big_store._env, big_store._dbs[0], KEY)
    elif impl == "py-lmdb begin+get only":
        benchmark(_raw_get, *py_lmdb_copy, KEY)
    else:
        with big_store.transaction() as tx:
            benchmark(storage.get_info, tx, KEY)
    benchmark.extra_info["ops_per_s"] = 1 / median(benchmark)


def _walk_reference(ms: MetaStore) -> list[Info]:
    with ms.transaction() as tx, tx.txn.cursor(tx.snapshots) as cur:
        return _reference.decode_infos(cur.iternext())


def _py_lmdb_items(env: Any, db: Any) -> list[tuple[bytes, bytes]]:
    with env.begin() as txn, txn.cursor(db) as cur:
        return list(cur.iternext())


def _walk(ms: MetaStore) -> list[Info]:
    with ms.transaction() as tx:
        return storage.walk_info(tx)


@pytest.mark.parametrize("impl", ["pysnap", "reference", "py-lmdb cursor only"])
def test_walk(
    benchmark: Any, big_store: MetaStore, py_lmdb_copy: tuple[Any, Any], impl: str
) -> None:
    benchmark.group = f"store: walk {N_WALK:,} snapshots"
    if impl == "py-lmdb cursor only":
        fn: Any = _py_lmdb_items
        args: tuple[Any, ...] = py_lmdb_copy
    else:
        fn, args = (_walk if impl == "pysnap" else _walk_reference), (big_store,)
        benchmark.extra_info["correct"] = fn(*args) == _walk(big_store)
    assert len(fn(*args)) == N_WALK
    benchmark.pedantic(fn, args=args, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["snapshots_per_s"] = N_WALK / median(benchmark)


@pytest.fixture(params=[True, False], ids=["sync", "nosync"])
def write_store(request: pytest.FixtureRequest) -> Iterator[tuple[MetaStore, bool]]:
    root = tempfile.mkdtemp(prefix="pysnap-bench-store-", dir="/var/tmp")
    ms = MetaStore(root, sync=request.param)
    with ms.transaction(write=True) as tx:
        storage.create_snapshot(tx, Kind.ACTIVE, "base-a", "", None)
        storage.commit_active(tx, "base-a", "base", Usage(), None)
    yield ms, request.param
    ms.close()
    shutil.rmtree(root)


@pytest.mark.parametrize("op", ["create", "commit", "remove"])
def test_write_txn(benchmark: Any, write_store: tuple[MetaStore, bool], op: str) -> None:
    """One write transaction per call; the other steps of the cycle run in setup."""
    ms, sync = write_store
    benchmark.group = f"store: write transactions, sync={sync}"
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
    benchmark.pedantic(fn, setup=setup, rounds=300 if sync else 2000)
    benchmark.extra_info["txn_per_s"] = 1 / median(benchmark)
