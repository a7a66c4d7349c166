"""The LMDB environment of a snapshotter root and its one transaction helper.

Like containerd's ``snapshots/storage.MetaStore`` (``WithTransaction``), this
module owns the environment; ``pysnap.storage`` holds the functions that read
and write snapshot records through a :class:`Txn`. Nothing else touches lmdb.

Layout: ``<root>/metadata.lmdb/`` (LMDB's ``data.mdb`` and ``lock.mdb``) with
four named databases (record layouts in ``snapcore.keys``):

- ``snapshots``: name -> record
- ``parents``: be64(parent id) + be64(child id) -> b""
- ``ids``: be64(id) -> name
- ``meta``: ``schema`` -> be64(SCHEMA_VERSION), ``last_id`` -> be64(last id handed out)

Operational rules (DESIGN.md, "Metadata store"): the map is large and sparse;
stale readers of killed processes are cleared on open (``reader_check``); an
environment is never used across ``fork()``; every ``lmdb.Error`` becomes a
``SnapshotError`` with context.

``MetaStore.chains`` maps snapshot ids to the ids of their ancestors
(immediate parent first), so that prepare, view and mounts on a deep chain
need not read one record per layer (issue 14). It can never be stale: a
snapshot's parents never change and ids are never reused, and it holds only
what committed transactions recorded (a write transaction's entries are
merged after its commit: an aborted create's id is handed out again). It is
a plain dict of this process, emptied when the ids it holds pass
``CHAINS_MAX``.
"""

from __future__ import annotations

import os
import threading
from types import TracebackType
from typing import Any

import lmdb

from snapcore import keys

from .errors import FailedPreconditionError, SnapshotError

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
META_SCHEMA = b"schema"
META_LAST_ID = b"last_id"
#: Ids held in MetaStore.chains (8 bytes each) before it is emptied.
CHAINS_MAX = 1 << 22

# Environments inherited through fork() and dropped by close() in the child.
_INHERITED: list[Any] = []

# The pid of this process, refreshed in the child after os.fork() (and so
# after multiprocessing's fork): comparing it costs nothing, while
# os.getpid() is a system call (~0.2 us) on every transaction.
_PID = os.getpid()


def _after_fork_in_child() -> None:
    global _PID
    _PID = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Txn:
    """One LMDB transaction with the store's named databases.

    Only ``pysnap.storage`` reads its fields. It is also the context manager
    :meth:`MetaStore.transaction` returns (a plain class, not a generator:
    it keeps the cost of a read transaction near py-lmdb's own).
    """

    __slots__ = ("_learned", "_ms", "chains", "ids", "meta", "parents", "snapshots", "txn", "write")

    def __init__(self, ms: MetaStore, txn: Any, write: bool) -> None:
        self._ms = ms
        self.txn = txn
        self.write = write
        self.snapshots, self.parents, self.ids, self.meta = ms._dbs
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
        if exc_type is None:
            if not self.write:
                self.txn.abort()
                return
            try:
                self.txn.commit()
            except lmdb.Error as e:
                self._abort()
                raise _wrap(e, f"commit to {self._ms.path}") from e
            if self._learned:
                self._ms.remember(self._learned)
            return
        self._abort()
        if isinstance(exc, lmdb.Error):
            raise _wrap(exc, f"transaction on {self._ms.path}") from exc

    def _abort(self) -> None:
        try:
            self.txn.abort()
        except lmdb.Error:  # pragma: no cover - abort only fails on a closed env
            pass


def _wrap(e: lmdb.Error, what: str) -> SnapshotError:
    if isinstance(e, lmdb.MapFullError):
        return SnapshotError(f"metadata store full ({what}): {e}; reopen with a larger map_size")
    return SnapshotError(f"metadata store error ({what}): {e}")


class MetaStore:
    """The LMDB environment under a snapshotter root.

    Safe for many threads and many processes on one root (LMDB's locking).
    ``sync=True`` (the default): a write transaction that returned is on
    disk. ``sync=False`` skips the flushes (a killed process loses nothing,
    a power loss may lose recent writes) until :meth:`sync`.

    Raises:
        FailedPreconditionError: the store has a schema version this pysnap
            does not know.
        SnapshotError: LMDB could not open the environment.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        sync: bool = True,
        map_size: int = DEFAULT_MAP_SIZE,
    ) -> None:
        self.root = os.fspath(root)
        self.path = os.path.join(self.root, "metadata.lmdb")
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._env: Any = None
        self._dbs: tuple[Any, Any, Any, Any] = (None, None, None, None)
        self.chains: dict[int, tuple[int, ...]] = {}
        self._chain_ids = 0
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        try:
            env = lmdb.open(
                self.path,
                map_size=map_size,
                max_dbs=8,
                max_readers=MAX_READERS,
                sync=sync,
                metasync=sync,
                readahead=False,  # random access to a sparse map: don't read ahead
                lock=True,
                mode=0o644,  # containerd opens metadata.db 0644
                max_spare_txns=4,
            )
        except lmdb.Error as e:
            raise _wrap(e, f"open {self.path}") from e
        try:
            env.reader_check()  # clear slots of killed readers (DESIGN.md)
            self._dbs = self._open_dbs(env)
        except BaseException as e:
            env.close()
            if isinstance(e, lmdb.Error):
                raise _wrap(e, f"reader check on {self.path}") from e
            raise
        self._env = env

    def _open_dbs(self, env: Any) -> tuple[Any, Any, Any, Any]:
        try:
            with env.begin(write=True) as txn:
                dbs = tuple(
                    env.open_db(name, txn=txn, create=True)
                    for name in (_DB_SNAPSHOTS, _DB_PARENTS, _DB_IDS, _DB_META)
                )
                raw = txn.get(META_SCHEMA, db=dbs[3])
                if raw is None:
                    if txn.stat(dbs[0])["entries"] or txn.stat(dbs[3])["entries"]:
                        raise FailedPreconditionError(
                            f"metadata store {self.path}: records without a schema version"
                        )
                    txn.put(META_SCHEMA, keys.id_key(SCHEMA_VERSION), db=dbs[3])
                    txn.put(META_LAST_ID, keys.id_key(0), db=dbs[3])
                elif len(raw) != 8 or keys.decode_id(raw) != SCHEMA_VERSION:
                    version = keys.decode_id(raw) if len(raw) == 8 else repr(raw)
                    raise FailedPreconditionError(
                        f"metadata store {self.path} has schema version {version}; "
                        f"this pysnap reads version {SCHEMA_VERSION} only"
                    )
        except lmdb.Error as e:
            raise _wrap(e, f"open {self.path}") from e
        snapshots, parents, ids, meta = dbs
        return snapshots, parents, ids, meta

    def _check(self) -> Any:
        env = self._env
        if self._pid != _PID:
            raise SnapshotError(
                f"metadata store {self.path} was opened in process {self._pid} and "
                "cannot be used after fork(); open the store in the child"
            )
        if env is None:
            raise SnapshotError(f"metadata store {self.path} is closed")
        return env

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
        block, aborts. An ``lmdb.Error`` leaves as a ``SnapshotError``.
        """
        env = self._env
        if env is None or self._pid != _PID:
            env = self._check()
        try:
            txn = env.begin(None, None, write)
        except lmdb.Error as e:
            raise _wrap(e, f"begin on {self.path}") from e
        return Txn(self, txn, write)

    def get_record(self, name: bytes) -> bytes | None:
        """The ``snapshots`` record stored under ``name``, read in a transaction of its own.

        Stat's hot path: no :class:`Txn`, no context manager, one begin, get
        and abort (LMDB keeps the reader slot, py-lmdb the spare transaction).
        """
        env = self._env
        if env is None or self._pid != _PID:
            env = self._check()
        try:
            txn = env.begin(None, None, False)
            try:
                raw: bytes | None = txn.get(name, None, self._dbs[0])
            finally:
                txn.abort()
        except lmdb.Error as e:
            raise _wrap(e, f"read from {self.path}") from e
        return raw

    def sync(self) -> None:
        """Flush the environment to disk (meaningful with ``sync=False``)."""
        env = self._check()
        try:
            env.sync(True)
        except lmdb.Error as e:
            raise _wrap(e, f"sync {self.path}") from e

    def close(self) -> None:
        """Close the environment; idempotent.

        In a forked child the inherited environment is only dropped: LMDB
        forbids using it there, and closing it is a use.
        """
        with self._lock:
            env, self._env = self._env, None
            self._dbs = (None, None, None, None)
        if env is None:
            return
        if os.getpid() == self._pid:
            env.close()
        else:
            _INHERITED.append(env)  # never closed, not even by garbage collection

    @property
    def closed(self) -> bool:
        return self._env is None

    def __enter__(self) -> MetaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MetaStore({self.root!r})"
