"""snapcore.mdb, pysnap's LMDB binding: reads and writes as py-lmdb sees them, errors,
lifetimes, spare read transactions, threads, fork, and the walk's decoding."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
from pathlib import Path

import lmdb
import pytest

from pysnap import _reference, storage  # storage registers Info/Usage with snapcore.keys
from pysnap.types import Info, Kind
from snapcore import keys, mdb

assert storage  # imported for its side effect


def open_env(path: Path, map_size: int = 1 << 30, sync: bool = False) -> mdb.Env:
    return mdb.Env(str(path), map_size=map_size, max_dbs=4, max_readers=16, sync=sync, mode=0o644)


@pytest.fixture
def env(tmp_path: Path) -> mdb.Env:
    e = open_env(tmp_path)
    yield e
    e.close()


def _db(env: mdb.Env, name: bytes = b"d") -> mdb.Db:
    with env.begin(write=True) as txn:
        return env.open_db(txn, name)


def test_what_mdb_writes_py_lmdb_reads_and_back(tmp_path: Path) -> None:
    items = {
        bytes([i % 251 + 1]) * (i % 7 + 1) + str(i).encode(): os.urandom(i % 300)
        for i in range(500)
    }
    env = open_env(tmp_path)
    db = _db(env)
    with env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k, v, db)
        txn.put(b"main-key", b"in the main database")
    env.close()
    other = lmdb.open(str(tmp_path), max_dbs=4)
    with other.begin(write=True) as txn:
        odb = other.open_db(b"d", txn=txn)
        assert dict(txn.cursor(odb).iternext()) == items
        assert txn.get(b"main-key") == b"in the main database"
        txn.put(b"from-py-lmdb", b"x", db=odb)
    other.close()
    env = open_env(tmp_path)
    db = _db(env)
    with env.begin() as txn:
        with txn.cursor(db) as cur:
            got = dict(cur.iternext())
        assert got == {**items, b"from-py-lmdb": b"x"}
        assert list(got) == sorted(got)  # bytewise key order
        assert txn.get(b"main-key") == b"in the main database"
        assert txn.stat(db)["entries"] == len(items) + 1
    env.close()


def test_get_put_delete_and_cursor_positions(env: mdb.Env) -> None:
    db = _db(env)
    with env.begin(write=True) as txn:
        for k in (b"a1", b"a2", b"b1", b"c1"):
            txn.put(k, k.upper(), db)
        txn.put(b"a1", b"replaced", db)
        assert txn.get(b"a1", None, db) == b"replaced"
        assert txn.get(b"zz", b"default", db) == b"default"
        assert txn.delete(b"c1", db) is True
        assert txn.delete(b"c1", db) is False
        with txn.cursor(db) as cur:
            assert cur.set_range(b"a2") and cur.key() == b"a2"
            assert list(cur.iternext(values=False)) == [b"a2", b"b1"]  # from where it is
            assert not cur.set_range(b"b2")
        with txn.cursor(db) as cur:
            assert list(cur.iternext()) == [(b"a1", b"replaced"), (b"a2", b"A2"), (b"b1", b"B1")]
    with env.begin() as txn:
        assert txn.get(b"c1", None, db) is None and txn.get(b"b1", None, db) == b"B1"


def test_an_error_in_a_write_block_aborts_it(env: mdb.Env) -> None:
    db = _db(env)
    with pytest.raises(RuntimeError), env.begin(write=True) as txn:
        txn.put(b"k", b"v", db)
        raise RuntimeError("boom")
    with env.begin() as txn:
        assert txn.get(b"k", None, db) is None


def test_a_spare_read_transaction_sees_later_commits(env: mdb.Env) -> None:
    db = _db(env)
    for n in range(8):  # more reads than spares are kept, each after a write
        with env.begin(write=True) as txn:
            txn.put(b"n", str(n).encode(), db)
        readers = [env.begin() for _ in range(n % 6 + 1)]
        assert {r.get(b"n", None, db) for r in readers} == {str(n).encode()}
        for r in readers:
            r.abort()
    old = env.begin()
    with env.begin(write=True) as txn:
        txn.put(b"n", b"new", db)
    assert old.get(b"n", None, db) == b"7"  # a reader keeps its snapshot
    old.abort()


def test_errors_have_their_kinds(tmp_path: Path) -> None:
    env = open_env(tmp_path, map_size=1 << 20)
    db = _db(env)
    with env.begin(write=True) as txn:
        for bad in (b"", b"k" * 512):
            with pytest.raises(mdb.BadValSizeError, match="mdb_put"):
                txn.put(bad, b"v", db)
    with env.begin() as txn, pytest.raises(mdb.MdbError) as e:
        txn.put(b"k", b"v", db)  # a write in a read transaction
    assert e.value.code == 13 and e.value.where == "mdb_put"  # EACCES
    with pytest.raises(mdb.MapFullError), env.begin(write=True) as txn:
        for n in range(1000):
            txn.put(str(n).encode(), b"x" * 4000, db)
    with env.begin() as txn:
        assert txn.stat(db)["entries"] == 0  # nothing of the failed transaction
    env.close()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "data.mdb").write_bytes(b"not an LMDB file" * 1000)
    with pytest.raises(mdb.CorruptError, match="mdb_env_open"):
        open_env(tmp_path / "junk")
    with pytest.raises(mdb.MdbError) as e:
        open_env(tmp_path / "missing")
    assert e.value.code == 2


def test_ended_objects_refuse_use_instead_of_crashing(env: mdb.Env) -> None:
    db = _db(env)
    txn = env.begin(write=True)
    cur, other, third = txn.cursor(db), txn.cursor(db), txn.cursor(db)
    other.close()  # the middle of the transaction's list of cursors
    txn.put(b"k", b"v", db)
    assert third.set_range(b"k")
    txn.commit()
    calls = (lambda: txn.get(b"k", None, db), lambda: cur.set_range(b"k"), third.key, txn.commit)
    for call in calls:
        with pytest.raises(mdb.MdbError, match=r"ended|closed"):
            call()
    txn.abort()  # idempotent
    live = env.begin()
    live_cursor = live.cursor(db)
    it = live_cursor.iternext()
    assert next(it) == (b"k", b"v")
    env.close()  # aborts the live transaction and its cursor
    env.close()
    assert env.closed
    for call in (lambda: live.get(b"k", None, db), lambda: next(it), env.begin, env.sync):
        with pytest.raises(mdb.MdbError):
            call()


def test_a_second_open_in_one_process_is_refused(env: mdb.Env, tmp_path: Path) -> None:
    # closing it would drop the first environment's locks on lock.mdb
    with pytest.raises(mdb.MdbError, match="already open in this process") as e:
        open_env(tmp_path)
    assert e.value.code == 16  # EBUSY
    env.close()
    open_env(tmp_path).close()


def test_a_writer_waiting_for_the_lock_lets_the_holder_finish(env: mdb.Env) -> None:
    # begin(write=True) waits for LMDB's writer lock without the GIL: the
    # holder, which needs the GIL to commit, is not blocked by the waiter
    db = _db(env)
    holder = env.begin(write=True)
    started, done = threading.Event(), threading.Event()

    def second_writer() -> None:
        started.set()
        with env.begin(write=True) as txn:
            txn.put(b"second", txn.get(b"first", None, db) or b"", db)
        done.set()

    t = threading.Thread(target=second_writer)
    t.start()
    started.wait(10)
    assert not done.wait(0.2)  # waiting for the lock
    with pytest.raises(mdb.MdbError, match="calls in flight") as e:
        env.close()  # would free what the waiting begin uses
    assert e.value.code == 16 and not env.closed
    holder.put(b"first", b"1", db)
    holder.commit()
    t.join(10)
    assert done.is_set()
    with env.begin() as txn:
        assert txn.get(b"second", None, db) == b"1"


def test_a_forked_child_opens_the_files_afresh_and_leaves_the_parent_intact(
    env: mdb.Env, tmp_path: Path
) -> None:
    db = _db(env)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"parent", db)
    reader = env.begin()  # live across the fork
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        status = 1
        try:
            try:
                env.begin()
            except mdb.MdbError as e:
                assert "opened in process" in str(e)
            else:
                raise AssertionError("the inherited environment was usable")
            reader.abort()
            env.close()  # forgets: must not touch the parent's reader slot or locks
            own = open_env(tmp_path)
            odb = _db(own)
            with own.begin(write=True) as txn:
                txn.put(b"child", b"wrote", odb)
            own.close()
            status = 0
        finally:
            os._exit(status)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    os.close(r)
    assert os.waitstatus_to_exitcode(status) == 0
    assert reader.get(b"k", None, db) == b"parent"  # its slot survived the child
    reader.abort()
    with env.begin(write=True) as txn:
        assert txn.get(b"child", None, db) == b"wrote"
    assert env.reader_check() == 0


def _records(env: mdb.Env, pairs: list[tuple[bytes, bytes]]) -> mdb.Db:
    db = _db(env, b"snapshots")
    with env.begin(write=True) as txn:
        for k, v in pairs:
            txn.put(k, v, db)
    return db


def test_the_walk_decodes_every_record_as_the_reference_does(env: mdb.Env) -> None:
    # ASCII text takes a copying shortcut in snapcore: both paths give equal
    # str, and equal timestamps come back as equal ints.
    names = ["a", "x0-c9", "tab\there\x7f", "ü", "snap-日本", "\x00"]
    pairs = []
    for i, name in enumerate(names):
        parent = names[i - 1]
        created = 10**18 + i
        updated = created if i % 2 else created + 1
        record = keys.encode_record(i + 1, 3, parent, {name: parent, "k": "v"}, created, updated)
        pairs.append((name.encode(), record))
    db = _records(env, pairs)
    with env.begin() as txn:
        infos = mdb.snapshot_infos(txn, db)
    assert infos == _reference.decode_infos(sorted(pairs))
    assert all(type(i) is Info and i.kind is Kind.COMMITTED for i in infos)
    for info in infos:
        assert info.name.isascii() == info.name.encode().isascii()
        assert hash(info.name) == hash(str(info.name))


@pytest.mark.parametrize("bad", [(b"\xff", "UTF-8"), (b"ok", "corrupt snapshot record")])
def test_a_corrupt_record_stops_the_walk_and_restores_the_collector(
    env: mdb.Env, bad: tuple[bytes, str]
) -> None:
    good = keys.encode_record(1, 1, "", {}, 0, 0)
    name, message = bad
    db = _records(env, [(b"a", good), (name, good if name != b"ok" else b"\x01junk")])
    assert gc.isenabled()
    with env.begin() as txn:
        with pytest.raises(keys.RecordError, match=message):
            mdb.snapshot_infos(txn, db)
        assert gc.isenabled()
        gc.disable()
        try:
            with pytest.raises(keys.RecordError):
                mdb.snapshot_infos(txn, db)
            assert not gc.isenabled()
        finally:
            gc.enable()


def test_the_walk_before_register_types_says_so(tmp_path: Path) -> None:
    # a fresh interpreter: storage has registered the types in this one
    code = (
        "import sys\n"
        "from snapcore import keys, mdb\n"
        "env = mdb.Env(sys.argv[1], map_size=1 << 20, max_dbs=2, max_readers=4, sync=False,"
        " mode=0o644)\n"
        "with env.begin(write=True) as txn:\n"
        "    db = env.open_db(txn, b'snapshots')\n"
        "    txn.put(b'a', keys.encode_record(1, 1, '', {}, 0, 0), db)\n"
        "try:\n"
        "    mdb.snapshot_infos(env.begin(), db)\n"
        "except RuntimeError as e:\n"
        "    assert 'register_types' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no error')\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)


def test_reader_check_clears_a_killed_readers_slot(env: mdb.Env, tmp_path: Path) -> None:
    code = (
        "import sys, os, signal\n"
        "from snapcore import mdb\n"
        "env = mdb.Env(sys.argv[1], map_size=1 << 30, max_dbs=4, max_readers=16, sync=False,"
        " mode=0o644)\n"
        "txn = env.begin()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=60)
    assert p.returncode == -9
    assert env.reader_check() == 1
    assert env.reader_check() == 0
    assert env.info()["max_readers"] == 16 and env.stat()["psize"] == 4096
