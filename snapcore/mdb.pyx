# cython: language_level=3, auto_pickle=False
"""pysnap's own binding of LMDB (the system's liblmdb): what the metadata store uses.

Why not py-lmdb: a walk through it cost ~150 ns per record before any
decoding (a bytes object for the key, one for the value and a tuple per
item, and the GIL dropped and taken again around every cursor step). Here a
walk decodes straight from the map (``snapshot_infos``), and a read
transaction costs one renew of a spare. One process must never open an
environment twice (closing either drops the process's POSIX locks on the
lock file), so this binding replaces py-lmdb rather than sitting beside it.

Threads: the GIL is released where LMDB may wait (a write transaction's
begin, which waits for the writer lock, and its commit, open, sync); a
thread waiting for the writer lock while holding the GIL would deadlock
with the writer. Reads keep it: py-lmdb, which drops it around every call,
took 561 ns for a read transaction's begin and one get where this takes
357 (benchmarks/bench_store.py); a cold page of the map is the one wait a
read can meet. Read transactions are not bound to a thread
(MDB_NOTLS); a write transaction and its cursors belong to the thread that
began it.

One module of ~600 lines: Env, Txn and Cursor share the lifetime rules
below, and each needs the others' C fields.

Lifetimes: a Txn keeps its Env alive and a Cursor its Txn. Ending a
transaction ends its cursors, and closing an environment aborts its live
transactions, so no object can reach freed LMDB memory; using one
afterwards raises MdbError.

fork(): LMDB forbids using an environment in a child, and closing one there
would drop the child's own locks on the same file. An Env in a process
other than the one that opened it is therefore released without
``mdb_env_close`` (its mapping and descriptors stay until exit), and the
child may open the same files afresh.
"""

import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from libc.errno cimport EBUSY, EINVAL

cimport cython

from .keys cimport info_from


cdef extern from "lmdb.h" nogil:
    ctypedef struct MDB_env
    ctypedef struct MDB_txn
    ctypedef struct MDB_cursor
    ctypedef unsigned int MDB_dbi
    ctypedef struct MDB_val:
        size_t mv_size
        void *mv_data
    ctypedef struct MDB_stat:
        unsigned int ms_psize
        unsigned int ms_depth
        size_t ms_branch_pages
        size_t ms_leaf_pages
        size_t ms_overflow_pages
        size_t ms_entries
    ctypedef struct MDB_envinfo:
        void *me_mapaddr
        size_t me_mapsize
        size_t me_last_pgno
        size_t me_last_txnid
        unsigned int me_maxreaders
        unsigned int me_numreaders
    ctypedef enum MDB_cursor_op:
        MDB_FIRST
        MDB_GET_CURRENT
        MDB_NEXT
        MDB_SET_RANGE
    enum:
        MDB_NOSUBDIR
        MDB_NOSYNC
        MDB_RDONLY
        MDB_NOMETASYNC
        MDB_NOTLS
        MDB_NORDAHEAD
        MDB_CREATE
        MDB_SUCCESS
        MDB_NOTFOUND
        MDB_PAGE_NOTFOUND
        MDB_CORRUPTED
        MDB_PANIC
        MDB_VERSION_MISMATCH
        MDB_INVALID
        MDB_MAP_FULL
        MDB_BAD_VALSIZE
    char *mdb_strerror(int err)
    int mdb_env_create(MDB_env **env)
    int mdb_env_open(MDB_env *env, const char *path, unsigned int flags, unsigned int mode)
    void mdb_env_close(MDB_env *env)
    int mdb_env_set_mapsize(MDB_env *env, size_t size)
    int mdb_env_set_maxreaders(MDB_env *env, unsigned int readers)
    int mdb_env_set_maxdbs(MDB_env *env, MDB_dbi dbs)
    int mdb_env_sync(MDB_env *env, int force)
    int mdb_env_info(MDB_env *env, MDB_envinfo *stat)
    int mdb_env_stat(MDB_env *env, MDB_stat *stat)
    int mdb_reader_check(MDB_env *env, int *dead)
    int mdb_txn_begin(MDB_env *env, MDB_txn *parent, unsigned int flags, MDB_txn **txn)
    int mdb_txn_commit(MDB_txn *txn)
    void mdb_txn_abort(MDB_txn *txn)
    void mdb_txn_reset(MDB_txn *txn)
    int mdb_txn_renew(MDB_txn *txn)
    int mdb_dbi_open(MDB_txn *txn, const char *name, unsigned int flags, MDB_dbi *dbi)
    int mdb_stat(MDB_txn *txn, MDB_dbi dbi, MDB_stat *stat)
    int mdb_get(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data)
    int mdb_put(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data, unsigned int flags)
    int mdb_del(MDB_txn *txn, MDB_dbi dbi, MDB_val *key, MDB_val *data)
    int mdb_cursor_open(MDB_txn *txn, MDB_dbi dbi, MDB_cursor **cursor)
    void mdb_cursor_close(MDB_cursor *cursor)
    int mdb_cursor_get(MDB_cursor *cursor, MDB_val *key, MDB_val *data, MDB_cursor_op op)

cdef extern from *:
    """
    #include <pthread.h>
    #include <unistd.h>
    /* This process's pid, kept by a fork handler: a getpid() per call costs
       a system call. */
    static int snap_mdb_pid;
    static void snap_mdb_after_fork(void) { snap_mdb_pid = getpid(); }
    static int snap_mdb_watch_pid(void) {
        snap_mdb_pid = getpid();
        return pthread_atfork(NULL, NULL, snap_mdb_after_fork);
    }
    """
    int snap_mdb_pid
    int snap_mdb_watch_pid()
    int PyGC_Disable()
    int PyGC_Enable()

if snap_mdb_watch_pid() != 0:
    raise OSError("pthread_atfork failed")


class MdbError(Exception):
    """An LMDB call failed. ``code``: LMDB's MDB_* code, or an errno when > 0;
    ``where``: the call ("mdb_txn_begin", ...)."""

    def __init__(self, code, where, message=None):
        self.code = code
        self.where = where
        text = message or mdb_strerror(code).decode(errors="replace")
        super().__init__(f"{where}: {text}")


class MapFullError(MdbError):
    """MDB_MAP_FULL: the environment's map size is used up."""


class PanicError(MdbError):
    """MDB_PANIC: a failed write left the environment unusable until reopened."""


class CorruptError(MdbError):
    """The data file is damaged or not LMDB's (MDB_CORRUPTED, MDB_PAGE_NOTFOUND,
    MDB_INVALID, MDB_VERSION_MISMATCH)."""


class BadValSizeError(MdbError):
    """MDB_BAD_VALSIZE: an empty key, or one longer than 511 bytes."""


cdef dict _ERRORS = {
    MDB_MAP_FULL: MapFullError,
    MDB_PANIC: PanicError,
    MDB_CORRUPTED: CorruptError,
    MDB_PAGE_NOTFOUND: CorruptError,
    MDB_INVALID: CorruptError,
    MDB_VERSION_MISMATCH: CorruptError,
    MDB_BAD_VALSIZE: BadValSizeError,
}


cdef int _raise(int rc, str where) except -1:
    raise _ERRORS.get(rc, MdbError)(rc, where)


cdef inline int _check(int rc, str where) except -1:
    if rc != MDB_SUCCESS:
        _raise(rc, where)
    return 0


cdef inline void _val(MDB_val *v, bytes b) noexcept:
    v.mv_size = PyBytes_GET_SIZE(b)
    v.mv_data = PyBytes_AS_STRING(b)


cdef inline bytes _bytes(MDB_val *v):
    return PyBytes_FromStringAndSize(<const char *>v.mv_data, v.mv_size)


# (st_dev, st_ino) of the data and lock files of every environment this
# process has open: a second open of either is refused (see the module doc).
cdef set _open_files = set()


def _forget_open_files_in_child():
    # The parent's environments are not the child's: it may open them afresh.
    _open_files.clear()


os.register_at_fork(after_in_child=_forget_open_files_in_child)


cdef enum:
    _MAX_SPARE = 4      # reset read transactions kept for reuse


cdef class _Linked:
    # A member of a doubly linked list of borrowed references (Env.live,
    # Txn.cursors): what an ending owner must end first.
    cdef PyObject *prev
    cdef PyObject *next

    cdef void _link(self, PyObject **head) noexcept:
        self.next = head[0]
        if head[0] != NULL:
            (<_Linked>head[0]).prev = <PyObject *>self
        head[0] = <PyObject *>self

    cdef void _unlink(self, PyObject **head) noexcept:
        if self.prev != NULL:
            (<_Linked>self.prev).next = self.next
        else:
            head[0] = self.next
        if self.next != NULL:
            (<_Linked>self.next).prev = self.prev
        self.prev = self.next = NULL


cdef class Db:
    """A named database of an environment (an MDB_dbi)."""

    cdef MDB_dbi dbi


cdef class Env:
    """An LMDB environment: ``path`` is its directory (data.mdb and lock.mdb).

    Raises MdbError (``code`` an errno or an MDB_* code) when LMDB refuses,
    and MdbError with code EBUSY when this process has the files open already.
    """

    cdef MDB_env *env
    cdef MDB_dbi main_dbi
    cdef MDB_txn *spare[_MAX_SPARE]
    cdef int nspare
    cdef int pid
    cdef int busy            # calls in flight without the GIL
    cdef PyObject *live      # the Txns not yet ended
    cdef tuple file_ids
    cdef readonly str path

    def __init__(self, str path not None, *, size_t map_size, unsigned int max_dbs,
                 unsigned int max_readers, bint sync, unsigned int mode):
        cdef unsigned int flags = MDB_NOTLS | MDB_NORDAHEAD
        cdef int rc
        cdef MDB_txn *txn
        if self.env != NULL:
            raise MdbError(EINVAL, "Env", "already open")
        if not sync:
            flags |= MDB_NOSYNC | MDB_NOMETASYNC
        self.path = path
        ids = self._file_ids()
        if not _open_files.isdisjoint(ids):
            raise MdbError(EBUSY, "mdb_env_open", f"{path} is already open in this process")
        bpath = os.fsencode(path)
        cdef const char *cpath = bpath
        _check(mdb_env_create(&self.env), "mdb_env_create")
        rc = mdb_env_set_mapsize(self.env, map_size)
        if rc == 0:
            rc = mdb_env_set_maxreaders(self.env, max_readers)
        if rc == 0:
            rc = mdb_env_set_maxdbs(self.env, max_dbs)
        where = "mdb_env_open"
        if rc == 0:
            with nogil:
                rc = mdb_env_open(self.env, cpath, flags, mode)
        if rc == 0:
            # the first reader of this process also takes its pid lock here
            where = "mdb_txn_begin"
            rc = mdb_txn_begin(self.env, NULL, MDB_RDONLY, &txn)
            if rc == 0:
                rc = mdb_dbi_open(txn, NULL, 0, &self.main_dbi)
                mdb_txn_abort(txn)  # a read transaction keeps the handles it opened
        if rc != 0:
            mdb_env_close(self.env)  # LMDB's rule after a failed open
            self.env = NULL
            _raise(rc, where)
        self.pid = snap_mdb_pid
        self.file_ids = self._file_ids()
        _open_files.update(self.file_ids)

    cdef tuple _file_ids(self):
        ids = []
        for name in ("data.mdb", "lock.mdb"):
            try:
                st = os.stat(os.path.join(self.path, name))
            except FileNotFoundError:
                continue
            ids.append((st.st_dev, st.st_ino))
        return tuple(ids)

    cdef int _usable(self) except -1:
        if self.env == NULL:
            raise MdbError(EINVAL, "Env", f"{self.path} is closed")
        if self.pid != snap_mdb_pid:
            raise MdbError(EINVAL, "Env", f"{self.path} was opened in process {self.pid}")
        return 0

    def begin(self, bint write=False):
        """A new transaction: a write one waits for the environment's writer lock."""
        cdef Txn t = Txn.__new__(Txn)
        cdef int rc
        self._usable()
        if write:
            self.busy += 1
            with nogil:
                rc = mdb_txn_begin(self.env, NULL, 0, &t.txn)
            self.busy -= 1
        elif self.nspare:
            self.nspare -= 1
            t.txn = self.spare[self.nspare]
            rc = mdb_txn_renew(t.txn)
            if rc != 0:
                mdb_txn_abort(t.txn)
                t.txn = NULL
        else:
            rc = mdb_txn_begin(self.env, NULL, MDB_RDONLY, &t.txn)
        if rc != 0:
            t.txn = NULL
            _raise(rc, "mdb_txn_begin")
        t.env = self
        t.write = write
        t._link(&self.live)
        return t

    def open_db(self, Txn txn not None, bytes name not None):
        """The named database ``name``, created if missing (in ``txn``, a write one)."""
        cdef Db db = Db.__new__(Db)
        txn._usable()
        _check(mdb_dbi_open(txn.txn, name, MDB_CREATE, &db.dbi), "mdb_dbi_open")
        return db

    def reader_check(self):
        """Clear the reader slots of dead processes; how many were cleared."""
        cdef int dead = 0
        self._usable()
        _check(mdb_reader_check(self.env, &dead), "mdb_reader_check")
        return dead

    def info(self):
        cdef MDB_envinfo i
        self._usable()
        _check(mdb_env_info(self.env, &i), "mdb_env_info")
        return {"map_size": i.me_mapsize, "last_pgno": i.me_last_pgno,
                "last_txnid": i.me_last_txnid, "max_readers": i.me_maxreaders,
                "num_readers": i.me_numreaders}

    def stat(self):
        cdef MDB_stat s
        self._usable()
        _check(mdb_env_stat(self.env, &s), "mdb_env_stat")
        return _stat_dict(&s)

    def sync(self):
        """Flush the data file to disk (what a ``sync=False`` environment skipped)."""
        cdef int rc
        self._usable()
        self.busy += 1
        with nogil:
            rc = mdb_env_sync(self.env, 1)
        self.busy -= 1
        _check(rc, "mdb_env_sync")

    def close(self):
        """Abort the live transactions and close; idempotent.

        In a forked child the environment is only forgotten (module doc).
        """
        if self.env == NULL:
            return
        if self.busy:
            raise MdbError(EBUSY, "mdb_env_close", f"{self.path} has calls in flight")
        while self.live != NULL:
            (<Txn>self.live)._end(False)
        self._release()

    cdef void _release(self) noexcept:
        # In this process, abort the spares and close; in a forked child, forget.
        if self.pid == snap_mdb_pid:
            while self.nspare:
                self.nspare -= 1
                mdb_txn_abort(self.spare[self.nspare])
            mdb_env_close(self.env)
            _open_files.difference_update(self.file_ids)
        self.env = NULL

    @property
    def closed(self):
        return self.env == NULL

    def __dealloc__(self):
        # no Txn is live: each keeps its Env alive
        if self.env != NULL:
            self._release()


cdef dict _stat_dict(MDB_stat *s):
    return {"psize": s.ms_psize, "depth": s.ms_depth, "branch_pages": s.ms_branch_pages,
            "leaf_pages": s.ms_leaf_pages, "overflow_pages": s.ms_overflow_pages,
            "entries": s.ms_entries}


@cython.no_gc_clear  # __dealloc__ needs env: ending the transaction
cdef class Txn(_Linked):
    """A transaction (from :meth:`Env.begin`). As a context manager it commits a
    block that exits normally and aborts otherwise."""

    cdef MDB_txn *txn
    cdef Env env
    cdef bint write
    cdef PyObject *cursors  # the open Cursors

    cdef int _usable(self) except -1:
        if self.txn == NULL:
            raise MdbError(EINVAL, "Txn", "the transaction has ended")
        if self.env.pid != snap_mdb_pid:
            raise MdbError(EINVAL, "Txn", f"{self.env.path} was opened in process {self.env.pid}")
        return 0

    cdef void _end(self, bint commit_ok) noexcept:
        # Close the cursors, unlink from Env.live, then reset a read
        # transaction into the spares (or abort it); a write one is committed
        # by commit() before it comes here, or aborted here.
        cdef Env env = self.env
        while self.cursors != NULL:
            (<Cursor>self.cursors)._close()
        self._unlink(&env.live)
        if env.pid != snap_mdb_pid:
            pass  # a forked child's: LMDB must not be touched (module doc)
        elif not commit_ok:
            if not self.write and env.nspare < _MAX_SPARE:
                mdb_txn_reset(self.txn)
                env.spare[env.nspare] = self.txn
                env.nspare += 1
            else:
                mdb_txn_abort(self.txn)
        self.txn = NULL

    def get(self, bytes key not None, default=None, Db db=None):
        """The value of ``key`` in ``db`` (the main database if None), or ``default``."""
        cdef MDB_val k, v
        cdef int rc
        self._usable()
        _val(&k, key)
        rc = mdb_get(self.txn, self.env.main_dbi if db is None else db.dbi, &k, &v)
        if rc == MDB_NOTFOUND:
            return default
        _check(rc, "mdb_get")
        return _bytes(&v)

    def put(self, bytes key not None, bytes value not None, Db db=None):
        """Store ``value`` under ``key``, replacing any value there."""
        cdef MDB_val k, v
        self._usable()
        _val(&k, key)
        _val(&v, value)
        _check(mdb_put(self.txn, self.env.main_dbi if db is None else db.dbi, &k, &v, 0),
               "mdb_put")

    def delete(self, bytes key not None, Db db=None):
        """Remove ``key``; whether it was there."""
        cdef MDB_val k
        cdef int rc
        self._usable()
        _val(&k, key)
        rc = mdb_del(self.txn, self.env.main_dbi if db is None else db.dbi, &k, NULL)
        if rc == MDB_NOTFOUND:
            return False
        _check(rc, "mdb_del")
        return True

    def stat(self, Db db not None):
        cdef MDB_stat s
        self._usable()
        _check(mdb_stat(self.txn, db.dbi, &s), "mdb_stat")
        return _stat_dict(&s)

    def cursor(self, Db db not None):
        """A cursor over ``db``, not yet positioned; it ends with the transaction."""
        cdef Cursor c = Cursor.__new__(Cursor)
        self._usable()
        _check(mdb_cursor_open(self.txn, db.dbi, &c.cur), "mdb_cursor_open")
        c.txn = self
        c._link(&self.cursors)
        return c

    def commit(self):
        """Commit (a read transaction simply ends). The transaction has ended either way."""
        cdef int rc
        cdef MDB_txn *txn
        self._usable()
        if not self.write:
            self._end(False)
            return
        while self.cursors != NULL:  # a write transaction's cursors die with it
            (<Cursor>self.cursors)._close()
        txn = self.txn
        self.env.busy += 1
        with nogil:
            rc = mdb_txn_commit(txn)  # frees txn, committed or not
        self.env.busy -= 1
        self._end(True)
        _check(rc, "mdb_txn_commit")

    def abort(self):
        """Throw away the changes; idempotent."""
        if self.txn != NULL:
            self._end(False)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def __dealloc__(self):
        if self.txn != NULL:
            self._end(False)


@cython.no_gc_clear  # __dealloc__ needs txn: closing the cursor
cdef class Cursor(_Linked):
    """A cursor of a transaction's database (from :meth:`Txn.cursor`)."""

    cdef MDB_cursor *cur
    cdef Txn txn
    cdef bint positioned

    cdef void _close(self) noexcept:
        self._unlink(&self.txn.cursors)
        mdb_cursor_close(self.cur)
        self.cur = NULL

    cdef int _usable(self) except -1:
        if self.cur == NULL:
            raise MdbError(EINVAL, "Cursor", "the cursor is closed or its transaction ended")
        return self.txn._usable()

    def set_range(self, bytes key not None):
        """Move to the first key at or after ``key``; False when there is none."""
        cdef MDB_val k, v
        cdef int rc
        self._usable()
        _val(&k, key)
        rc = mdb_cursor_get(self.cur, &k, &v, MDB_SET_RANGE)
        self.positioned = rc == 0
        if rc == MDB_NOTFOUND:
            return False
        _check(rc, "mdb_cursor_get")
        return True

    def key(self):
        """The key at the cursor."""
        cdef MDB_val k, v
        self._usable()
        _check(mdb_cursor_get(self.cur, &k, &v, MDB_GET_CURRENT), "mdb_cursor_get")
        return _bytes(&k)

    def iternext(self, bint values=True):
        """The items from the cursor's position (the first if it has none) to the end:
        ``(key, value)`` pairs, or keys alone with ``values=False``."""
        cdef MDB_val k, v
        cdef int rc
        self._usable()
        rc = mdb_cursor_get(self.cur, &k, &v, MDB_GET_CURRENT if self.positioned else MDB_FIRST)
        while rc == 0:
            self.positioned = True
            yield (_bytes(&k), _bytes(&v)) if values else _bytes(&k)
            self._usable()
            rc = mdb_cursor_get(self.cur, &k, &v, MDB_NEXT)
        if rc != MDB_NOTFOUND:
            _raise(rc, "mdb_cursor_get")

    def close(self):
        if self.cur != NULL:
            self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __dealloc__(self):
        if self.cur != NULL:
            self._close()


def snapshot_infos(Txn txn not None, Db db not None):
    """The Info of every record of ``db``, a ``snapshots`` database, in key order.

    Walk's loop: each name and record is decoded straight from the map
    (``snapcore.keys`` builds the Infos). Raises keys.RecordError on a corrupt one.
    """
    cdef MDB_cursor *cur
    cdef MDB_val k, v
    cdef list out = []
    cdef int rc
    txn._usable()
    _check(mdb_cursor_open(txn.txn, db.dbi, &cur), "mdb_cursor_open")
    # Every Info is a new GC-tracked object and none can form a cycle: the
    # collector passes over 100,000 of them would cost ~30% of the walk.
    cdef int gc_was_enabled = PyGC_Disable()
    try:
        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)
        while rc == 0:
            out.append(info_from(<const char *>k.mv_data, k.mv_size,
                                 <const char *>v.mv_data, v.mv_size))
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)
    finally:
        if gc_was_enabled:
            PyGC_Enable()
        mdb_cursor_close(cur)
    if rc != MDB_NOTFOUND:
        _raise(rc, "mdb_cursor_get")
    return out
