"""The LMDB environment of a snapshotter root and its one transaction helper.

Like containerd's ``snapshots/storage.MetaStore`` (``WithTransaction``), this
module owns the environment; ``pysnap.storage`` holds the functions that read
and write snapshot records through a :class:`Txn`. Nothing else touches LMDB
(``snapcore.mdb``, pysnap's own binding of it).

Layout: ``<root>/metadata.lmdb/`` (LMDB's ``data.mdb`` and ``lock.mdb``) with
five named databases (record layouts in ``snapcore.keys``):

- ``snapshots``: name -> record
- ``parents``: be64(parent id) + be64(child id) -> b""
- ``ids``: be64(id) -> name
- ``meta``: ``schema`` -> be64(SCHEMA_VERSION), ``last_id`` -> be64(last id handed out)
- ``refs``: the committed snapshots by their ``containerd.io/snapshot.ref``
  label and parent (``pysnap.storage`` owns its layout); a store made before
  it existed gets it built on its first open by this version

Operational rules (DESIGN.md, "Metadata store"): the map is large and sparse;
stale readers of killed processes are cleared on open (``reader_check``);
``close()`` waits for the transactions in flight, and every call after it is
a ``ClosedError``; every ``mdb.MdbError`` becomes a ``SnapshotError`` of the
right kind (``errors.kind_of``) with context.

fork(): LMDB forbids using an environment in a child, and closing it there is
a use that breaks the parent (the child's abort of a cached read transaction
frees the parent's reader slot: MDB_BAD_RSLOT) and, once the child opened the
root itself, drops the child's own POSIX locks (closing any fd of a file drops
them all). So in a forked child every inherited store drops its environment,
which ``snapcore.mdb`` only forgets there, and the child may open the root
afresh.

``MetaStore.chains`` maps snapshot ids to the ids of their ancestors
(immediate parent first), so that prepare, view and mounts on a deep chain
need not read one record per layer (issue 14). It can never be stale: ids
are never reused, it holds only chains that are final (every snapshot's but
an ACTIVE one's without a parent, which commit may rebase), and only what
committed transactions recorded (a write transaction's entries are
merged after its commit: an aborted create's id is handed out again). It is
a plain dict of this process, emptied when the ids it holds pass
``CHAINS_MAX``.
"""

from __future__ import annotations

import collections
import errno
import os
import threading
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

from snapcore import keys, mdb

from .errors import (
    ClosedError,
    CorruptStoreError,
    FailedPreconditionError,
    MapFullError,
    SnapshotError,
    StoreOSError,
)

SCHEMA_VERSION = 1
#: Address space reserved for the data file: the file itself is sparse and
#: grows with use. 32 GiB holds tens of millions of typical records.
DEFAULT_MAP_SIZE = 32 << 30
#: Concurrent read transactions across all threads and processes.
MAX_READERS = 1024

_DB_SNAPSHOTS = b"snapshots"
_DB_PARENTS = b"parents"
_DB_IDS = b"ids"
_DB_META = b"meta"
_DB_REFS = b"refs"
META_SCHEMA = b"schema"
META_LAST_ID = b"last_id"
#: Ids held in MetaStore.chains (8 bytes each) before it is emptied.
CHAINS_MAX = 1 << 22

# The stores open in this process, for the fork hook.
_OPEN: weakref.WeakSet[MetaStore] = weakref.WeakSet()
_SAME_PID = (
    ": a process with this process's pid ({pid}) in another pid namespace (another "
    "container) uses the store, and LMDB tells its users apart by pid alone; run the "
    "processes that share a root in one pid namespace (docker run --pid=host, one pod)"
)


def _after_fork_in_child() -> None:
    for ms in list(_OPEN):
        ms._drop_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Txn:
    """One LMDB transaction with the store's named databases.

    Only ``pysnap.storage`` reads its fields. It is also the context manager
    :meth:`MetaStore.transaction` returns (a plain class, not a generator:
    it keeps the cost of a read transaction near LMDB's own).
    """

    __slots__ = (
        "_learned", "_ms", "chains", "ids", "meta", "parents", "refs", "snapshots", "txn", "write"
    )  # fmt: skip

    def __init__(self, ms: MetaStore, txn: mdb.Txn, write: bool) -> None:
        self._ms = ms
        self.txn = txn
        self.write = write
        self.snapshots, self.parents, self.ids, self.meta, self.refs = ms._dbs
        self.chains = ms.chains
        self._learned: list[tuple[int, tuple[int, ...]]] | None = None

    def learn(self, sid: int, chain: tuple[int, ...]) -> None:
        """Record in ``chains`` the ancestors of ``sid``, once committed."""
        if not self.write:  # a read sees committed records only
            self._ms.remember([(sid, chain)])
        elif self._learned is None:
            self._learned = [(sid, chain)]
        else:
            self._learned.append((sid, chain))

    def __enter__(self) -> Txn:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                if not self.write:
                    self.txn.abort()
                    return
                try:
                    self.txn.commit()
                except mdb.MdbError as e:
                    raise self._ms._error(e, "commit") from e
                if self._learned:
                    self._ms.remember(self._learned)
                return
            self.txn.abort()
            if isinstance(exc, mdb.MdbError):
                raise self._ms._error(exc, "transaction") from exc
        finally:
            self._ms._leave()


class MetaStore:
    """The LMDB environment under a snapshotter root.

    Safe for many threads and many processes on one root (LMDB's locking).
    ``sync=True`` (the default): a write transaction that returned is on
    disk. ``sync=False`` skips the flushes (a killed process loses nothing,
    a power loss may lose recent writes) until :meth:`sync`.

    ``on_new_store(found)`` is called in the first write transaction of a
    store that has no meta record yet, before the record is written; ``found``
    says what was there ("data.mdb was missing", ...). It may raise to refuse
    the store (nothing is then recorded). ``on_new_refs(txn)`` fills the
    ``refs`` database of a store that has records but had no ``refs`` yet,
    in the transaction that creates it.

    Raises:
        FailedPreconditionError: the store has a schema version this pysnap
            does not know.
        CorruptStoreError: data.mdb is damaged (truncated below its last page,
            not an LMDB file, ...).
        StoreOSError: the file system failed (errno and data.mdb path kept).
        SnapshotError: LMDB could not open the environment otherwise.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        sync: bool = True,
        map_size: int = DEFAULT_MAP_SIZE,
        on_new_store: Callable[[str], None] | None = None,
        on_new_refs: Callable[[Txn], None] | None = None,
    ) -> None:
        self.root = os.fspath(root)
        self.path = os.path.join(self.root, "metadata.lmdb")
        self.data_path = os.path.join(self.path, "data.mdb")
        self._pid = os.getpid()
        # One item per transaction in flight. deque.append and pop are atomic,
        # so the hot path takes no lock: a transaction appends, then reads
        # _env; close() clears _env, then reads the length under _lock and
        # waits on _idle, which a leaving transaction that sees _env cleared
        # notifies. One of the two always sees the other.
        self._inflight: collections.deque[None] = collections.deque()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._env: mdb.Env | None = None
        self._dbs: tuple[Any, Any, Any, Any, Any] = (None,) * 5
        self.chains: dict[int, tuple[int, ...]] = {}
        self._chain_ids = 0
        if not isinstance(map_size, int) or map_size <= 0:
            raise SnapshotError(f"map_size must be a positive int, not {map_size!r}")
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        found = self._data_file_state()
        env = self._open_env(map_size, sync)
        try:
            self._check_size(env)
            env.reader_check()  # clear slots of killed readers (DESIGN.md)
            self._dbs = self._open_dbs(env, found, on_new_store, on_new_refs)
        except BaseException as e:
            env.close()
            if isinstance(e, mdb.MdbError):
                raise self._error(e, "open") from e
            raise
        self._env = env
        _OPEN.add(self)

    def _data_file_state(self) -> str:
        """What data.mdb is before the open, in words for the lost-store check."""
        try:
            size = os.stat(self.data_path).st_size
        except FileNotFoundError:
            return f"{self.data_path} was missing"
        return (
            f"{self.data_path} was empty" if size == 0 else f"{self.data_path} has no meta record"
        )

    def _open_env(self, map_size: int, sync: bool) -> mdb.Env:
        try:
            return mdb.Env(
                self.path,
                map_size=map_size,
                max_dbs=8,
                max_readers=MAX_READERS,
                sync=sync,
                mode=0o644,  # containerd opens metadata.db 0644
            )
        except mdb.MdbError as e:
            raise self._error(e, "open") from e

    def _check_size(self, env: mdb.Env) -> None:
        """Refuse a data file shorter than its last page: reading it would be SIGBUS."""
        end = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        size = os.stat(self.data_path).st_size
        if size < end:
            raise CorruptStoreError(
                f"metadata store {self.data_path} is damaged: the file has {size} bytes, "
                f"its last page ends at byte {end} (truncated?); restore it from a backup"
            )

    def _open_dbs(
        self,
        env: mdb.Env,
        found: str,
        on_new_store: Callable[[str], None] | None,
        on_new_refs: Callable[[Txn], None] | None,
    ) -> tuple[Any, Any, Any, Any, Any]:
        with env.begin(write=True) as txn:
            new_refs = txn.get(_DB_REFS) is None  # named databases are keys of the main one
            dbs = tuple(
                env.open_db(txn, name)
                for name in (_DB_SNAPSHOTS, _DB_PARENTS, _DB_IDS, _DB_META, _DB_REFS)
            )
            raw = txn.get(META_SCHEMA, db=dbs[3])
            if raw is None:
                if txn.stat(dbs[0])["entries"] or txn.stat(dbs[3])["entries"]:
                    raise FailedPreconditionError(
                        f"metadata store {self.path}: records without a schema version"
                    )
                if on_new_store is not None:
                    on_new_store(found)
                txn.put(META_SCHEMA, keys.id_key(SCHEMA_VERSION), db=dbs[3])
                txn.put(META_LAST_ID, keys.id_key(0), db=dbs[3])
            elif len(raw) != 8 or keys.decode_id(raw) != SCHEMA_VERSION:
                version = keys.decode_id(raw) if len(raw) == 8 else repr(raw)
                raise FailedPreconditionError(
                    f"metadata store {self.path} has schema version {version}; "
                    f"this pysnap reads version {SCHEMA_VERSION} only"
                )
            snapshots, parents, ids, meta, refs = dbs
            if new_refs and on_new_refs is not None and txn.stat(snapshots)["entries"]:
                # A store of an older pysnap: index its records once, in this transaction.
                self._dbs = snapshots, parents, ids, meta, refs
                on_new_refs(Txn(self, txn, True))
        return snapshots, parents, ids, meta, refs

    def _error(self, e: mdb.MdbError, what: str) -> SnapshotError:
        """The SnapshotError of the right kind for an MdbError during ``what``."""
        where = f"metadata store {self.data_path} ({what})"
        if isinstance(e, mdb.MapFullError):
            size = self._env.info()["map_size"] if self._env is not None else None
            return MapFullError(
                f"{where}: the map size{f' ({size} bytes)' if size else ''} is used up: {e}; "
                "open it again with a larger map size (OverlaySnapshotter(root, map_size=...), "
                "pysnap --map-size)"
            )
        if isinstance(e, mdb.PanicError):
            return CorruptStoreError(
                f"{where}: LMDB refuses every transaction after a failed write (MDB_PANIC); "
                f"close and open the snapshotter again: {e}"
            )
        if isinstance(e, mdb.CorruptError):
            return CorruptStoreError(f"{where}: the file is damaged: {e}")
        if e.code > 0:  # an errno
            if e.where == "mdb_txn_begin" and e.code in (errno.EAGAIN, errno.EACCES):
                # LMDB marks a reader's process with an fcntl lock on the byte at its pid,
                # and only another process with the same pid can hold that lock already
                where += _SAME_PID.format(pid=os.getpid())
            return StoreOSError(e.code, f"{where}: {e}", self.data_path)
        return SnapshotError(f"{where}: {e}")

    def _unusable(self) -> SnapshotError:
        if self._pid != os.getpid():
            return ClosedError(
                f"metadata store {self.path} was opened in process {self._pid} and "
                "cannot be used after fork(); open the store in the child"
            )
        return ClosedError(f"metadata store {self.path} is closed")

    def remember(self, chains: list[tuple[int, tuple[int, ...]]]) -> None:
        """Add committed ``(id, ancestors)`` pairs to ``chains``, within CHAINS_MAX."""
        for sid, chain in chains:
            self._chain_ids += len(chain) + 1
            if self._chain_ids > CHAINS_MAX:
                self.chains.clear()  # a dict, shared with no transaction's loop
                self._chain_ids = len(chain) + 1
            self.chains[sid] = chain

    def transaction(self, write: bool = False) -> Txn:
        """A context manager giving a :class:`Txn`.

        A write block that exits normally is committed; an error, or any read
        block, aborts. An ``mdb.MdbError`` leaves as a ``SnapshotError``.
        ``close()`` waits until the block has exited.

        Raises:
            ClosedError: the store is closed (or was opened before a fork).
        """
        env = self._enter()
        try:
            txn = env.begin(write)
        except BaseException as e:
            self._leave()
            if isinstance(e, mdb.MdbError):
                raise self._error(e, "begin") from e
            raise
        return Txn(self, txn, write)

    def _enter(self) -> mdb.Env:
        """Count a transaction in flight; its environment. Raises ClosedError."""
        self._inflight.append(None)
        env = self._env
        if env is None:
            self._leave()
            raise self._unusable()
        return env

    def _leave(self) -> None:
        self._inflight.pop()
        if self._env is None:  # close() may be waiting
            with self._lock:
                self._idle.notify_all()

    def get_record(self, name: bytes) -> bytes | None:
        """The ``snapshots`` record stored under ``name``, read in a transaction of its own.

        Stat's hot path: no :class:`Txn`, no context manager, one begin, get
        and abort (the transaction is kept, reset, for the next read).

        Raises:
            ClosedError: the store is closed (or was opened before a fork).
        """
        self._inflight.append(None)  # _enter() written out: a call is ~5% of a stat
        try:
            env = self._env
            if env is None:
                raise self._unusable()
            txn = env.begin(False)
            try:
                raw: bytes | None = txn.get(name, None, self._dbs[0])
            finally:
                txn.abort()
        except mdb.MdbError as e:
            raise self._error(e, "read") from e
        finally:
            self._leave()
        return raw

    def sync(self) -> None:
        """Flush the environment to disk (meaningful with ``sync=False``)."""
        env = self._enter()
        try:
            env.sync()
        except mdb.MdbError as e:
            raise self._error(e, "sync") from e
        finally:
            self._leave()

    def close(self) -> None:
        """Close the environment once the transactions in flight are done; idempotent.

        Never call it inside a transaction of this store (it would wait for itself).
        """
        with self._lock:
            env, self._env = self._env, None
            while self._inflight:
                self._idle.wait()
        if env is None:
            return
        self._dbs = (None,) * 5
        _OPEN.discard(self)
        env.close()

    def _drop_after_fork(self) -> None:
        """In a forked child: drop the environment, which mdb only forgets there."""
        self._lock = threading.Lock()  # another thread may have held it at fork
        self._idle = threading.Condition(self._lock)
        self._inflight = collections.deque()
        env, self._env = self._env, None
        self._dbs = (None,) * 5
        if env is not None:
            env.close()

    @property
    def closed(self) -> bool:
        return self._env is None

    def __enter__(self) -> MetaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MetaStore({self.root!r})"
