# cython: language_level=3
"""snapcore.du: inode-deduplicated disk usage of trees (containerd's fs.DiskUsage).

One module of about 1,500 lines on purpose: the hot loop (_scan), the inode
set, the fd window and the worker pool share the Walk and Worker structs, and
split across modules their calls would go through cimport's function
pointers instead of being inlined into the loop.

Semantics are continuity's ``fs/du_unix.go``: lstat every entry below each root,
the root included, count each distinct ``(st_dev, st_ino)`` once across all
roots, ``size = sum(st_blocks * 512)`` (``st_size`` with ``apparent=True``).

How, and why (measured in issue 3: ~94% of a walk is kernel time, so the job is
to make the fewest syscalls and nothing else):

* Shared with snapcore.rmtree (issue 10: one traversal primitive): the
  fd-level steps in ``includes/dirwalk.pxd`` (open a directory by name,
  read its entries, skip the dot entries), inline, so this loop compiles as
  before. The frames, the fd window (its ".." reopen degrades on EMFILE,
  rmtree's does not need to) and the worker pool stay here: removal needs
  none of them (see rmtree's opening comment).
* The whole walk runs in C with the GIL released and no Python object per
  entry: ``openat(parent, name, O_DIRECTORY|O_NOFOLLOW)``, ``getdents64`` into
  one reused buffer, one ``statx(dirfd, name, AT_SYMLINK_NOFOLLOW)`` per
  entry (as fast as fstatat here, and it flags mount roots), ``close``.
* Iterative depth-first walk: an explicit stack of frames, never C recursion.
  A frame keeps the subdirectories still to visit; names stay bytes.
* At most ``FD_WINDOW`` directory fds are open per worker: the open frames are
  the worker's job root plus a window at the top of the stack. A frame that
  fell out of the window is reopened as ``openat(child, "..")`` (checked by
  ``(st_dev, st_ino)``) when the walk climbs back, so a 10,000-level chain
  costs one extra open per level, and no path is ever longer than a name.
* Few fds (issue 10: GNU du works with 16): before the first helper starts,
  the workers and their window are sized to RLIMIT_NOFILE less the fds open;
  an EMFILE/ENFILE still met closes the shallowest frame of the window and
  shrinks every worker's (and starts no more workers); it fails only when a
  worker cannot hold three fds.
* A tree changed while it is walked: fds, memory and the walk stay safe,
  the count is approximate. Vanished entries are skipped; a directory moved
  from a part already walked to one still to walk is counted twice, one
  moved the other way (or whose parent moved out of reach of the reopen
  above) is missed, as with any walk of a tree that is not frozen; a
  directory replaced by a file or symlink raises (ENOTDIR/ELOOP).
* Memory grows with the hard-linked inodes only: files with ``st_nlink == 1``
  are counted directly; only files with more links, mount roots and the
  roots themselves (overlapping roots) go in the (dev, ino) hash set.
* Mounts (issue 10): a file system reached through two different mount roots
  below the roots (a bind mount of a directory of the tree inside it, or one
  device mounted twice with different roots) would count the inodes below both
  twice, and the first was walked unhashed. A mount root (statx's
  STATX_ATTR_MOUNT_ROOT, Linux 5.8, or a change of device) on the parent's
  device, a root's, or another mount root's therefore stops the walk, which
  starts again with every inode of that device hashed: only that rare case
  pays, and no walk reads /proc/self/mountinfo. The same mount root met
  twice (one file system mounted twice, same root) is skipped, as before.
* Threads: the calling thread walks; with ``threads=None`` a second worker
  (up to the CPU count) starts only after ``SPAWN_AFTER`` entries while
  directories are waiting, because a second thread makes a small walk slower.
  An idle worker marks itself hungry; a busy one then hands over its
  shallowest waiting subdirectory (opened, with its full path) through a
  mutex + condvar queue. No spinning.
* Cold cache (issue 14): a cold walk waits on the disk, not the CPU, and
  wants many stats in flight. Every ``PACE`` entries an adaptive worker looks
  at its pace (CLOCK_MONOTONIC, a vDSO call): entries slower than
  ``SLOW_NS`` may be a busy CPU, so then getrusage(RUSAGE_THREAD) tells
  whether it slept (voluntary switches, less its lock waits; the GIL's are
  left out) at least once per ``BLOCKS_PER`` entries. If so the walk is cold
  for ``COLD_HOLD_NS`` and worker 0 starts up to ``IO_THREADS`` workers;
  warm again, those beyond the CPU count park at their next job. A warm
  walk never sleeps, so its workers and figures stay as they were.
  (Measured here on a cold copy of /usr: 16 threads 0.8 s, 2 threads 2.5 s,
  GNU du 3.6 s; io_uring was not tried: threads reached the goal.)
* Every ``TICK`` entries the calling thread takes the GIL for
  ``PyErr_CheckSignals()`` (Ctrl-C) and the progress callback; while it waits
  for work it wakes every 20 ms to do the same.
"""

import os

cimport cython
from cpython.exc cimport PyErr_CheckSignals
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from libc cimport errno
from libc.stdint cimport uint64_t, int64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, strlen
from posix.signal cimport SIG_SETMASK, SIG_BLOCK, sigfillset
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec
from posix.types cimport sigset_t

from .includes cimport dirwalk, linux
from .includes.oserr cimport raise_oserror

cdef enum:
    BUFSZ = 65536         # getdents64 buffer, one per worker
    FD_WINDOW = 48        # directory fds a worker keeps open besides its job root
    MIN_WINDOW = 8        # fewer workers rather than a smaller window than this
    FD_SPARE = 3          # a worker's fds besides its window: job root, the one it opens, an export
    FD_RESERVE = 4        # fds left to the rest of the process
    FD_WAIT_NS = 1000000  # out of fds with nothing to close: wait for the others this long...
    FD_WAITS = 2000       # ...this many times, then fail with EMFILE
    TICK = 4096           # entries between checks for Ctrl-C (issue 3: "a few thousand")
    SPAWN_AFTER = 16384   # adaptive: entries before a second worker may start
    MAX_THREADS = 64
    IDLE_WAIT_NS = 20000000   # the calling thread's wake-up while it waits for work
    KIDS0 = 256           # first capacity of a frame's list of subdirectories
    # Cold cache (issue 14): measured here, a cold walk blocks about once per 8
    # entries and a warm one never; 8-16 workers in flight make it 4x faster.
    PACE = 256            # entries between looks at the pace (adaptive walks)
    SLOW_NS = 2000        # ns per entry above which the worker may be waiting
    BLOCKS_PER = 64       # cold: at least one voluntary sleep per this many entries
    IO_THREADS = 16       # workers while the walk waits on the disk
    COLD_HOLD_NS = 200000000  # a cold look holds for this long (no flapping)

# Status of the internal functions (all noexcept nogil; errors are recorded in
# the Walk and raised by the wrapper).
cdef enum:
    OK = 0
    VANISHED = 1          # ENOENT/ESTALE on something we had seen: skip it
    STOP = 2              # error recorded, exception stored, or walk cancelled

cdef int OPEN_DIR = linux.O_RDONLY | linux.O_DIRECTORY | linux.O_NOFOLLOW | linux.O_CLOEXEC


# ---- (dev, ino) hash set: open addressing, linear probing -----------------

cdef struct InoSet:
    uint64_t *slots       # 2 words per slot: dev, ino; (0, 0) marks empty
    size_t mask           # capacity - 1 (capacity is a power of two), 0: none yet
    size_t count
    bint has_zero         # the key (0, 0) itself, which cannot live in a slot


cdef inline size_t _hash(uint64_t dev, uint64_t ino) noexcept nogil:
    cdef uint64_t h = ino * <uint64_t>0x9E3779B97F4A7C15ULL
    h ^= dev * <uint64_t>0xC2B2AE3D27D4EB4FULL
    h ^= h >> 31
    h *= <uint64_t>0xBF58476D1CE4E5B9ULL
    h ^= h >> 29
    return <size_t>h


cdef int _set_grow(InoSet *s) noexcept nogil:
    """Double the table (or make the first one). -1 on ENOMEM, the old table intact."""
    cdef size_t ncap = 1024 if s.mask == 0 else (s.mask + 1) * 2
    cdef uint64_t *ns = <uint64_t *>calloc(ncap * 2, sizeof(uint64_t))
    cdef size_t i, j, nmask = ncap - 1
    cdef uint64_t dev, ino
    if ns == NULL:
        return -1
    if s.mask != 0:
        for i in range(s.mask + 1):
            dev = s.slots[2 * i]
            ino = s.slots[2 * i + 1]
            if dev == 0 and ino == 0:
                continue
            j = _hash(dev, ino) & nmask
            while ns[2 * j] != 0 or ns[2 * j + 1] != 0:
                j = (j + 1) & nmask
            ns[2 * j] = dev
            ns[2 * j + 1] = ino
        free(s.slots)
    s.slots = ns
    s.mask = nmask
    return 0


cdef int _set_add(InoSet *s, uint64_t dev, uint64_t ino) noexcept nogil:
    """1 if (dev, ino) was new, 0 if already there, -1 on ENOMEM."""
    cdef size_t j
    if dev == 0 and ino == 0:
        if s.has_zero:
            return 0
        s.has_zero = True
        return 1
    if s.mask == 0 or (s.count + 1) * 2 > s.mask + 1:     # load factor <= 1/2
        if _set_grow(s) < 0:
            return -1
    j = _hash(dev, ino) & s.mask
    while s.slots[2 * j] != 0 or s.slots[2 * j + 1] != 0:
        if s.slots[2 * j] == dev and s.slots[2 * j + 1] == ino:
            return 0
        j = (j + 1) & s.mask
    s.slots[2 * j] = dev
    s.slots[2 * j + 1] = ino
    s.count += 1
    return 1


# ---- the walk's state ---------------------------------------------------------

cdef struct Root:
    uint64_t dev
    uint64_t ino
    bint claimed          # walked (or being walked) already, as a root or inside one

cdef struct RootArg:
    const char *path
    uint64_t dev
    uint64_t ino
    linux.mode_t mode
    uint64_t nlink
    int64_t size
    int64_t blocks

cdef struct Kid:          # header of a subdirectory record in Frame.kids
    uint64_t dev
    uint64_t ino
    size_t len            # name length; the name (NUL-terminated) follows the header
    size_t size           # bytes of the record, header included, a multiple of 8

cdef struct Frame:
    int fd                # -1 while outside the window of open fds
    uint64_t dev
    uint64_t ino
    const char *name      # points into the parent's kids; NULL for the job root
    size_t namelen
    char *kids            # packed Kid records: the subdirectories still to walk
    size_t klen
    size_t kcap
    size_t kpos

cdef struct Job:
    Job *next
    int fd
    int root              # index of the root argument (its type picks str/bytes paths)
    uint64_t dev
    uint64_t ino
    char *path            # full path, NUL-terminated
    size_t pathlen
    bint own_path

cdef struct Worker:
    Walk *wk
    int index             # 0: the calling thread
    linux.pthread_t thread
    char *buf
    Frame *frames
    int fcap
    int top               # current frame, -1 when idle
    int lo                # frames lo..top have open fds (and frame 0 always)
    Job *job
    uint64_t size
    uint64_t inodes
    uint64_t fsize        # part of size/inodes already added to the Walk's counters
    uint64_t finodes
    uint64_t ticker       # entries looked at
    uint64_t tick_at
    uint64_t pace_ns      # the pace: time, entries and voluntary sleeps at the last look
    uint64_t pace_n
    long pace_sleeps      # voluntary sleeps, less the waits for setlock
    long lock_waits

cdef struct Skip:
    int err
    int root
    char *path            # malloc'd
    size_t pathlen

cdef struct Walk:
    linux.pthread_mutex_t lock     # queue, idle/busy counts, error, skips, thread list
    linux.pthread_mutex_t setlock  # the InoSet and the root claims
    linux.pthread_cond_t cond
    Job *qhead
    Job *qtail
    int nqueued
    int nidle
    int nbusy
    int nparked           # adaptive helpers beyond cpu_threads waiting for a cold cache
    int nstarted
    int maxthreads
    int cpu_threads       # adaptive: workers beyond this many run only while cold
    uint64_t cold_until   # CLOCK_MONOTONIC ns: the walk waits on the disk until then
    bint io_raised        # maxthreads was raised to IO_THREADS
    int window            # open frames per worker (FD_WINDOW, less when fds are short)
    bint fds_counted      # the fd budget was looked at (first helper)
    int hungry            # nidle > nqueued (read without the lock: a hint)
    int stop              # error, exception or done: everybody leaves
    bint adaptive
    bint apparent
    InoSet seen
    Root *roots           # distinct roots, sorted by (ino, dev)
    int nroots
    uint64_t *hashed      # devices whose every inode goes in `seen` (after a restart)
    int nhashed
    uint64_t *mountdevs   # devices of the mount roots met so far (under setlock)
    int nmountdevs
    int mountcap
    bint restart          # stopped to walk again with restart_dev hashed
    uint64_t restart_dev
    int err
    int errroot
    char *errpath
    size_t errpathlen
    bint keep_going       # du's way: an entry that cannot be read is a Skip, not the end
    Skip *skips
    int nskips
    int skipcap
    PyObject *exc
    PyObject *progress
    uint64_t progress_every
    uint64_t next_progress
    uint64_t tick_every
    uint64_t g_inodes     # progress counters, added to every TICK entries
    uint64_t g_size
    Worker *workers[MAX_THREADS]


# ---- small helpers ------------------------------------------------------------

cdef inline bint _stopped(Walk *wk) noexcept nogil:
    return linux.snap_load_int(&wk.stop) != 0


cdef inline void _set_hungry(Walk *wk) noexcept nogil:
    # under wk.lock
    linux.snap_store_int(&wk.hungry, 1 if wk.nidle > wk.nqueued else 0)


cdef char *_build_path(Worker *w, int depth, const char *extra, size_t *outlen) noexcept nogil:
    """The full path of frame `depth` (plus `extra`): job path + names. NULL on ENOMEM.

    Only for errors and for handing a directory to another worker: the walk
    itself never uses paths longer than one name.
    """
    cdef Job *job = w.job
    cdef size_t n = job.pathlen, i, elen = 0
    cdef char *p
    cdef char *q
    cdef int j
    cdef bint slash = job.pathlen > 0 and job.path[job.pathlen - 1] == b'/'
    for j in range(1, depth + 1):
        n += w.frames[j].namelen + 1
    if extra != NULL:
        elen = strlen(extra)
        n += elen + 1
    p = <char *>malloc(n + 1)
    if p == NULL:
        return NULL
    memcpy(p, job.path, job.pathlen)
    q = p + job.pathlen
    for j in range(1, depth + 1):
        if not slash:
            q[0] = b'/'
            q += 1
        slash = False
        memcpy(q, w.frames[j].name, w.frames[j].namelen)
        q += w.frames[j].namelen
    if extra != NULL:
        if not slash:
            q[0] = b'/'
            q += 1
        memcpy(q, extra, elen)
        q += elen
    q[0] = 0
    outlen[0] = <size_t>(q - p)
    return p


cdef int _record_error(Walk *wk, int err, int root, char *path, size_t n) noexcept nogil:
    """Keep the first error (errno, root, malloc'd path: taken over, may be NULL)
    and stop every worker. Returns STOP."""
    linux.pthread_mutex_lock(&wk.lock)
    if wk.err == 0 and wk.exc == NULL:
        wk.err = err
        wk.errroot = root
        wk.errpath = path
        wk.errpathlen = n if path != NULL else 0
        path = NULL
    linux.snap_store_int(&wk.stop, 1)
    linux.pthread_cond_broadcast(&wk.cond)
    linux.pthread_mutex_unlock(&wk.lock)
    free(path)
    return STOP


cdef int _fail(Worker *w, int err, int depth, const char *extra) noexcept nogil:
    """Record the first error with the full path of the entry that failed. Returns STOP."""
    cdef size_t n = 0
    cdef char *p = NULL
    if w.job != NULL:
        p = _build_path(w, depth, extra, &n)
    return _record_error(w.wk, err, w.job.root if w.job != NULL else -1, p, n)


cdef int _skip(Worker *w, int err, int depth, const char *extra) noexcept nogil:
    """With keep_going, note the entry that cannot be read and go on (OK); else _fail."""
    cdef Walk *wk = w.wk
    cdef size_t n = 0
    cdef char *p
    cdef Skip *grown
    if not wk.keep_going or err == errno.ENOMEM or w.job == NULL:
        return _fail(w, err, depth, extra)
    p = _build_path(w, depth, extra, &n)
    if p == NULL:
        return _fail(w, errno.ENOMEM, depth, extra)
    linux.pthread_mutex_lock(&wk.lock)
    if wk.nskips == wk.skipcap:
        grown = <Skip *>realloc(wk.skips, sizeof(Skip) * (wk.skipcap * 2 + 8))
        if grown == NULL:
            linux.pthread_mutex_unlock(&wk.lock)
            free(p)
            return _fail(w, errno.ENOMEM, depth, extra)
        wk.skips = grown
        wk.skipcap = wk.skipcap * 2 + 8
    wk.skips[wk.nskips].err = err
    wk.skips[wk.nskips].root = w.job.root
    wk.skips[wk.nskips].path = p
    wk.skips[wk.nskips].pathlen = n
    wk.nskips += 1
    linux.pthread_mutex_unlock(&wk.lock)
    return OK


cdef int _fail_path(Walk *wk, int err, int root, const char *path) noexcept nogil:
    """Record the first error with a copy of ``path`` (a root). Returns STOP."""
    cdef size_t n = strlen(path)
    cdef char *p = <char *>malloc(n + 1)
    if p != NULL:
        memcpy(p, path, n + 1)
    return _record_error(wk, err, root, p, n)


cdef inline void _lock_set(Worker *w) noexcept nogil:
    """Take setlock, counting the waits: they are sleeps, but not on the disk (_pace)."""
    if linux.pthread_mutex_trylock(&w.wk.setlock) != 0:
        w.lock_waits += 1
        linux.pthread_mutex_lock(&w.wk.setlock)


cdef int _claim(Worker *w, uint64_t dev, uint64_t ino) noexcept nogil:
    """0: not a root; 1: a root, claimed now (count it); 2: claimed before (skip it)."""
    cdef Walk *wk = w.wk
    cdef int lo = 0, hi = wk.nroots - 1, mid, r
    cdef Root *rt
    while lo <= hi:
        mid = (lo + hi) >> 1
        rt = &wk.roots[mid]
        if rt.ino == ino and rt.dev == dev:
            _lock_set(w)
            r = 2 if rt.claimed else 1
            rt.claimed = True
            linux.pthread_mutex_unlock(&wk.setlock)
            return r
        if rt.ino < ino or (rt.ino == ino and rt.dev < dev):
            lo = mid + 1
        else:
            hi = mid - 1
    return 0


cdef inline int _seen(Worker *w, uint64_t dev, uint64_t ino) noexcept nogil:
    cdef int r
    _lock_set(w)
    r = _set_add(&w.wk.seen, dev, ino)
    linux.pthread_mutex_unlock(&w.wk.setlock)
    return r


cdef inline bint _hashed(Walk *wk, uint64_t dev) noexcept nogil:
    cdef int i
    for i in range(wk.nhashed):
        if wk.hashed[i] == dev:
            return True
    return False


cdef bint _meets_before(Walk *wk, uint64_t dev, uint64_t ino, uint64_t fdev) noexcept nogil:
    """Can the inodes below this mount root (dev, ino) be reached another way too?

    Yes when its device is the parent's (a bind mount of the same file system),
    a root's other than itself, or another mount root's met before. Under setlock.
    """
    cdef int i
    if dev == fdev:
        return True
    for i in range(wk.nroots):
        if wk.roots[i].dev == dev and wk.roots[i].ino != ino:
            return True
    for i in range(wk.nmountdevs):
        if wk.mountdevs[i] == dev:
            return True
    return False


cdef int _restart(Walk *wk, uint64_t dev) noexcept nogil:
    """Stop every worker so that the wrapper walks again with `dev` hashed. Returns STOP."""
    linux.pthread_mutex_lock(&wk.lock)
    if wk.err == 0 and wk.exc == NULL and not wk.restart:
        wk.restart = True
        wk.restart_dev = dev
    linux.snap_store_int(&wk.stop, 1)
    linux.pthread_cond_broadcast(&wk.cond)
    linux.pthread_mutex_unlock(&wk.lock)
    return STOP


cdef int _mount_root(Worker *w, int depth, const char *name, uint64_t dev, uint64_t ino,
                     uint64_t fdev) noexcept nogil:
    """A mount root (or a device boundary) met in frame `depth`. Hashes it.

    OK: count it; VANISHED: the same mount root was counted already (one file
    system mounted twice); STOP: an error, or a restart: the inodes below it
    may have been counted without hashing through another path (README: once
    per distinct inode), so the walk starts again with its device hashed.
    """
    cdef Walk *wk = w.wk
    cdef int r
    cdef bint again = False
    cdef uint64_t *nd
    _lock_set(w)
    r = _set_add(&wk.seen, dev, ino)
    if r == 1 and not _hashed(wk, dev):
        again = _meets_before(wk, dev, ino, fdev)
        if not again:
            if wk.nmountdevs == wk.mountcap:
                nd = <uint64_t *>realloc(wk.mountdevs, (wk.mountcap * 2 + 8) * sizeof(uint64_t))
                if nd == NULL:
                    r = -1
                else:
                    wk.mountdevs = nd
                    wk.mountcap = wk.mountcap * 2 + 8
            if r == 1:
                wk.mountdevs[wk.nmountdevs] = dev
                wk.nmountdevs += 1
    linux.pthread_mutex_unlock(&wk.setlock)
    if r < 0:
        return _fail(w, errno.ENOMEM, depth, name)
    if r == 0:
        return VANISHED
    if again:
        return _restart(wk, dev)
    return OK


cdef int _push_kid(Frame *f, uint64_t dev, uint64_t ino, const char *name) noexcept nogil:
    cdef size_t n = strlen(name)
    cdef size_t size = (sizeof(Kid) + n + 1 + 7) & ~(<size_t>7)
    cdef size_t ncap
    cdef char *nk
    cdef Kid *k
    if f.klen + size > f.kcap:
        ncap = f.kcap if f.kcap else KIDS0
        while ncap < f.klen + size:
            ncap *= 2
        nk = <char *>realloc(f.kids, ncap)
        if nk == NULL:
            return -1
        f.kids = nk
        f.kcap = ncap
    k = <Kid *>(f.kids + f.klen)
    k.dev = dev
    k.ino = ino
    k.len = n
    k.size = size
    memcpy(f.kids + f.klen + sizeof(Kid), name, n + 1)
    f.klen += size
    return 0


cdef int _flush(Worker *w) noexcept nogil:
    linux.snap_add_u64(&w.wk.g_inodes, w.inodes - w.finodes)
    linux.snap_add_u64(&w.wk.g_size, w.size - w.fsize)
    w.finodes = w.inodes
    w.fsize = w.size
    return 0


cdef bint _pending(Worker *w) noexcept nogil:
    """Does this worker have subdirectories waiting in an open frame?"""
    cdef int j
    if w.top < 0:
        return False
    if w.frames[0].kpos < w.frames[0].klen:
        return True
    for j in range(w.lo, w.top + 1):
        if w.frames[j].kpos < w.frames[j].klen:
            return True
    return False


# ---- Python side: Ctrl-C and progress (the calling thread only) --------------

cdef int _check_py(Walk *wk) noexcept:
    """With the GIL: PyErr_CheckSignals() and the progress callback.

    An exception is stored in the Walk (and raised by the wrapper once the
    workers are joined), so nothing here can leave a worker running.
    """
    cdef uint64_t n, every
    try:
        PyErr_CheckSignals()
        if wk.progress != NULL:
            n = linux.snap_load_u64(&wk.g_inodes)
            if n >= wk.next_progress:
                every = wk.progress_every
                wk.next_progress = (n // every + 1) * every
                (<object>wk.progress)(n, linux.snap_load_u64(&wk.g_size))
    except BaseException as e:
        linux.pthread_mutex_lock(&wk.lock)
        if wk.exc == NULL:
            Py_INCREF(e)
            wk.exc = <PyObject *>e
        linux.snap_store_int(&wk.stop, 1)
        linux.pthread_cond_broadcast(&wk.cond)
        linux.pthread_mutex_unlock(&wk.lock)
        return STOP
    return OK


cdef inline uint64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


cdef inline long _sleeps(Worker *w) noexcept nogil:
    """This thread's voluntary context switches (each one is a wait: the disk, a
    lock, the GIL), less its waits for setlock."""
    cdef linux.rusage ru
    if linux.getrusage(linux.RUSAGE_THREAD, &ru) != 0:
        return 0
    return ru.ru_nvcsw - w.lock_waits


cdef inline bint _cold(Walk *wk) noexcept nogil:
    return _now_ns() < linux.snap_load_u64(&wk.cold_until)


cdef void _pace_reset(Worker *w) noexcept nogil:
    w.pace_ns = _now_ns()
    w.pace_n = w.ticker
    w.pace_sleeps = _sleeps(w)


cdef void _pace(Worker *w) noexcept nogil:
    """Adaptive walks, every PACE entries: does this worker wait on the disk?

    Slow entries alone could be a busy CPU (a shared machine); slow entries
    and a voluntary sleep every BLOCKS_PER entries are a cold cache. Then the
    walk allows IO_THREADS workers (worker 0 starts them) for COLD_HOLD_NS
    after the last such look; when it is warm again the extra workers park.
    """
    cdef Walk *wk = w.wk
    cdef uint64_t now = _now_ns(), n = w.ticker - w.pace_n
    cdef long sleeps, slept
    cdef bint was_cold
    if n == 0:
        return
    if now - w.pace_ns < n * SLOW_NS:
        w.pace_ns = now
        w.pace_n = w.ticker
        return
    sleeps = _sleeps(w)
    slept = sleeps - w.pace_sleeps
    if slept > 0 and <uint64_t>slept * BLOCKS_PER >= n:
        was_cold = _cold(wk)
        linux.snap_store_u64(&wk.cold_until, now + COLD_HOLD_NS)
        if not was_cold or not wk.io_raised:
            linux.pthread_mutex_lock(&wk.lock)
            if not wk.io_raised:
                wk.io_raised = True
                if wk.maxthreads < IO_THREADS:
                    wk.maxthreads = IO_THREADS
                wk.fds_counted = False    # size to the fds again for the new count
            linux.pthread_cond_broadcast(&wk.cond)    # parked workers: work again
            linux.pthread_mutex_unlock(&wk.lock)
    w.pace_ns = now
    w.pace_n = w.ticker
    w.pace_sleeps = sleeps
    if w.index == 0 and _cold(wk):
        while wk.nstarted < wk.maxthreads and _spawn(wk):
            pass


cdef int _tick(Worker *w) noexcept nogil:
    cdef Walk *wk = w.wk
    cdef int r
    _flush(w)
    if _stopped(wk):
        return STOP
    if w.index != 0:
        w.tick_at = w.ticker + TICK
        return OK
    w.tick_at = w.ticker + wk.tick_every
    # Issue 3: two threads make a small walk slower, so a worker is added only
    # once the walk is large and directories are waiting.
    if (wk.adaptive and wk.nstarted < wk.maxthreads
            and linux.snap_load_u64(&wk.g_inodes) >= SPAWN_AFTER and _pending(w)):
        _spawn(wk)
    with gil:
        r = _check_py(wk)
    if wk.adaptive:
        _pace_reset(w)    # a wait for the GIL is no wait on the disk
    return r


# ---- the walk -------------------------------------------------------------------

@cython.boundscheck(False)
@cython.wraparound(False)
@cython.cdivision(True)
cdef int _scan(Worker *w, int depth) noexcept nogil:
    """Count every entry of frame `depth`; remember its subdirectories. The hot loop."""
    cdef Walk *wk = w.wk
    cdef Frame *f = &w.frames[depth]
    cdef int fd = f.fd
    cdef char *buf = w.buf
    cdef ssize_t n, off
    cdef linux.snap_dirent64 *d
    cdef const char *name
    cdef linux.statx st
    cdef int r, err
    cdef uint64_t fdev = f.dev, dev
    cdef bint apparent = wk.apparent, isdir
    cdef bint roots = wk.nroots > 1
    cdef int *hungry = &wk.hungry
    f.klen = 0
    f.kpos = 0
    while True:
        n = dirwalk.read_dents(fd, buf, BUFSZ)
        if n < 0:
            if n == -errno.ENOENT or n == -errno.ESTALE:
                break
            if _skip(w, <int>-n, depth, NULL) != OK:
                return STOP
            break                         # du: what was read of it counts
        if n == 0:
            break
        off = 0
        while off < n:
            d = <linux.snap_dirent64 *>(buf + off)
            off += d.d_reclen
            name = d.d_name
            if dirwalk.is_dot(name):
                continue
            r = linux.snap_lstatx(fd, name, &st)
            if r != 0:
                err = errno.errno
                while r != 0 and err == errno.EINTR:
                    r = linux.snap_lstatx(fd, name, &st)
                    err = errno.errno
                if r != 0:
                    if err == errno.ENOENT or err == errno.ESTALE:
                        continue          # vanished under us (a live upper dir)
                    if _skip(w, err, depth, name) != OK:
                        return STOP
                    continue
            w.ticker += 1
            if w.ticker >= w.tick_at:
                if _tick(w) != OK:
                    return STOP
            if (w.ticker & 63) == 0:
                if linux.snap_load_int(hungry) and _export(w) == STOP:
                    return STOP
                if (w.ticker & (PACE - 1)) == 0 and wk.adaptive:
                    _pace(w)
            dev = linux.snap_statx_dev(&st)
            if roots:
                r = _claim(w, dev, st.stx_ino)
                if r == 2:
                    continue              # another root, walked on its own
            isdir = linux.S_ISDIR(st.stx_mode)
            if (st.stx_attributes & linux.STATX_ATTR_MOUNT_ROOT) or (isdir and dev != fdev):
                r = _mount_root(w, depth, name, dev, st.stx_ino, fdev)
                if r != OK:
                    if r == STOP:
                        return STOP
                    continue              # this mount's root was counted already
            elif (not isdir and st.stx_nlink > 1) or (wk.nhashed and _hashed(wk, dev)):
                r = _seen(w, dev, st.stx_ino)
                if r == 0:
                    continue              # a hard link to an inode counted already
                if r < 0:
                    return _fail(w, errno.ENOMEM, depth, name)
            if isdir and _push_kid(f, dev, st.stx_ino, name) < 0:
                return _fail(w, errno.ENOMEM, depth, name)
            w.inodes += 1
            if apparent:
                w.size += st.stx_size
            else:
                w.size += st.stx_blocks * 512
    return OK


cdef void _shed(Worker *w) noexcept nogil:
    """Close the shallowest frame of the fd window (lo < top)."""
    if w.frames[w.lo].fd >= 0:
        linux.close(w.frames[w.lo].fd)
        w.frames[w.lo].fd = -1
    w.lo += 1


cdef int _open_dir(Worker *w, int dirfd, const char *name, int *out) noexcept nogil:
    """open_dir_at for the walk, which degrades instead of failing when fds run short.

    On EMFILE/ENFILE (issue 10: GNU du works with 16 fds) no more workers
    start, the worker closes the shallowest frame of its window, and every
    worker's window shrinks to what was open; with nothing left to close
    (frames 0 and top only) it waits for the others to shed theirs. 0 or errno.
    """
    cdef Walk *wk = w.wk
    cdef int err, waits = 0, n
    cdef timespec ts
    ts.tv_sec = 0
    ts.tv_nsec = FD_WAIT_NS
    while True:
        err = dirwalk.open_dir_at(dirfd, name, out)
        if err != errno.EMFILE and err != errno.ENFILE:
            return err
        linux.pthread_mutex_lock(&wk.lock)
        wk.maxthreads = wk.nstarted
        linux.pthread_mutex_unlock(&wk.lock)
        if w.lo < w.top:
            _shed(w)
            n = w.top - w.lo + 1
            if n < linux.snap_load_int(&wk.window):
                linux.snap_store_int(&wk.window, n)
            continue
        if wk.nstarted == 1 or waits >= FD_WAITS or _stopped(wk):
            return err
        waits += 1
        linux.nanosleep(&ts, NULL)


cdef int _fds_free() noexcept nogil:
    """How many more fds this process may open: RLIMIT_NOFILE's soft limit minus
    the fds open now (entries of /proc/self/fd); a large number if unknown."""
    cdef linux.rlimit rl
    cdef int fd = -1, count = 0
    cdef ssize_t n, off
    cdef char buf[4096]
    cdef linux.snap_dirent64 *d
    if linux.getrlimit(linux.RLIMIT_NOFILE, &rl) != 0 or rl.rlim_cur == linux.RLIM_INFINITY \
            or rl.rlim_cur > 1 << 20:
        return 1 << 20
    if dirwalk.open_dir_at(linux.AT_FDCWD, b"/proc/self/fd", &fd) != 0:
        return 1 << 20
    while True:
        n = dirwalk.read_dents(fd, buf, sizeof(buf))
        if n <= 0:
            break
        off = 0
        while off < n:
            d = <linux.snap_dirent64 *>(buf + off)
            off += d.d_reclen
            if d.d_name[0] != b'.':
                count += 1
    linux.close(fd)
    return <int>rl.rlim_cur - (count - 1)       # the directory's own fd is closed again


cdef int _held(Worker *w) noexcept nogil:
    """The fds worker w holds now (frame 0 and its window)."""
    cdef int j, n = 0
    if w.top < 0:
        return 0
    if w.frames[0].fd >= 0:
        n += 1
    for j in range(w.lo, w.top + 1):
        if w.frames[j].fd >= 0:
            n += 1
    return n


cdef void _size_to_fds(Walk *wk) noexcept nogil:
    """Before the first helper starts (under wk.lock): as many workers as the fds
    allow with a window of at least MIN_WINDOW each, and the window they share."""
    cdef int budget, n, window
    wk.fds_counted = True
    budget = _fds_free() + _held(wk.workers[0]) - FD_RESERVE
    n = budget // (MIN_WINDOW + FD_SPARE)
    if n < wk.maxthreads:
        wk.maxthreads = n if n > 1 else 1
    window = budget // wk.maxthreads - FD_SPARE
    if window < 1:
        window = 1
    if window < wk.window:
        linux.snap_store_int(&wk.window, window)


cdef int _reopen(Worker *w, int i, int childfd) noexcept nogil:
    """Give frame i (outside the fd window) an fd again. OK, VANISHED or STOP.

    First `openat(child, "..")`, checked by (dev, ino); if the tree moved, the
    names from the job root, one openat each (never a long path).
    """
    cdef Frame *f = &w.frames[i]
    cdef linux.stat st
    cdef int fd = -1, cur, nfd = -1, err, j
    if childfd >= 0:
        if _open_dir(w, childfd, b"..", &fd) == 0:
            if linux.fstat(fd, &st) == 0 and st.st_dev == f.dev and st.st_ino == f.ino:
                f.fd = fd
                return OK
            linux.close(fd)
    cur = w.frames[0].fd
    for j in range(1, i + 1):
        err = _open_dir(w, cur, w.frames[j].name, &nfd)
        if cur != w.frames[0].fd:
            linux.close(cur)
        if err != 0:
            if err == errno.ENOENT or err == errno.ESTALE:
                return VANISHED
            return _fail(w, err, j, NULL)
        cur = nfd
    if linux.fstat(cur, &st) != 0:          # an error, not a vanished directory
        err = errno.errno
        linux.close(cur)
        return _fail(w, err, i, NULL)
    if st.st_dev != f.dev or st.st_ino != f.ino:
        linux.close(cur)
        return VANISHED
    f.fd = cur
    return OK


cdef int _export(Worker *w) noexcept nogil:
    """Hand the shallowest waiting subdirectory to an idle worker."""
    cdef Walk *wk = w.wk
    cdef Frame *f = NULL
    cdef Kid *k
    cdef Job *job
    cdef int j, fd = -1, err, depth = -1
    cdef const char *name
    if w.top < 0 or w.job == NULL:
        return OK
    if w.frames[0].kpos < w.frames[0].klen:
        depth = 0
    else:
        for j in range(w.lo, w.top + 1):
            if w.frames[j].kpos < w.frames[j].klen:
                depth = j
                break
    if depth < 0:
        return OK
    f = &w.frames[depth]
    k = <Kid *>(f.kids + f.kpos)
    f.kpos += k.size
    name = <const char *>k + sizeof(Kid)
    err = dirwalk.open_dir_at(f.fd, name, &fd)
    if err != 0:
        if err == errno.EMFILE or err == errno.ENFILE:
            f.kpos -= k.size      # no fd to hand over: walk it here
            return OK
        if err == errno.ENOENT or err == errno.ESTALE:
            return OK
        return _skip(w, err, depth, name)  # its own inode was counted in its parent
    job = <Job *>calloc(1, sizeof(Job))
    if job != NULL:
        job.path = _build_path(w, depth, name, &job.pathlen)
    if job == NULL or job.path == NULL:
        free(job)
        linux.close(fd)
        return _fail(w, errno.ENOMEM, depth, name)
    job.fd = fd
    job.dev = k.dev
    job.ino = k.ino
    job.root = w.job.root
    job.own_path = True
    linux.pthread_mutex_lock(&wk.lock)
    if wk.qtail == NULL:
        wk.qhead = job
    else:
        wk.qtail.next = job
    wk.qtail = job
    wk.nqueued += 1
    _set_hungry(wk)
    if wk.nparked:
        linux.pthread_cond_broadcast(&wk.cond)    # a parked worker must not eat the signal
    else:
        linux.pthread_cond_signal(&wk.cond)
    linux.pthread_mutex_unlock(&wk.lock)
    return OK


cdef int _push(Worker *w, int fd, Kid *k, const char *name) noexcept nogil:
    cdef Frame *nf
    cdef int ncap
    cdef Frame *f
    if w.top + 1 >= w.fcap:
        ncap = w.fcap * 2
        nf = <Frame *>realloc(w.frames, ncap * sizeof(Frame))
        if nf == NULL:
            linux.close(fd)
            return _fail(w, errno.ENOMEM, w.top, name)
        w.frames = nf
        for ncap in range(w.fcap, w.fcap * 2):
            nf[ncap].kids = NULL
            nf[ncap].kcap = 0
        w.fcap *= 2
    w.top += 1
    f = &w.frames[w.top]
    f.fd = fd
    f.dev = k.dev
    f.ino = k.ino
    f.name = name
    f.namelen = k.len
    f.klen = 0
    f.kpos = 0
    if w.lo > w.top:
        w.lo = w.top
    while w.top - w.lo + 1 > linux.snap_load_int(&w.wk.window):
        # Cap the open fds: the shallowest frame of the window closes; the
        # walk comes back to it last and reopens it through "..".
        _shed(w)
    return OK


cdef int _run(Worker *w, Job *job) noexcept nogil:
    """Walk one directory subtree, iteratively. Closes job.fd. OK or STOP."""
    cdef Frame *f
    cdef Frame *p
    cdef Kid *k
    cdef const char *name
    cdef int fd = -1, err, r, status = OK
    w.job = job
    w.top = 0
    w.lo = 1
    if w.wk.adaptive:
        _pace_reset(w)    # time spent idle between jobs is not waiting on the disk
    f = &w.frames[0]
    f.fd = job.fd
    f.dev = job.dev
    f.ino = job.ino
    f.name = NULL
    f.namelen = 0
    status = _scan(w, 0)
    while status == OK and w.top >= 0:
        if _stopped(w.wk):
            status = STOP
            break
        f = &w.frames[w.top]
        if f.kpos >= f.klen:
            # Frame done: climb. Keep the parent open (through "..") so the
            # open frames stay a window ending at the top.
            if w.top == 0:
                break
            p = &w.frames[w.top - 1]
            if p.fd < 0:
                r = _reopen(w, w.top - 1, f.fd)
                if r == STOP:
                    status = STOP
                    break
                if r == VANISHED:
                    p.kpos = p.klen
            if f.fd >= 0:
                linux.close(f.fd)
                f.fd = -1
            w.top -= 1
            if w.lo > w.top:
                w.lo = w.top if w.top > 0 else 1
            continue
        if f.fd < 0:
            r = _reopen(w, w.top, -1)
            if r == STOP:
                status = STOP
                break
            if r == VANISHED:
                f.kpos = f.klen
                continue
        k = <Kid *>(f.kids + f.kpos)
        f.kpos += k.size
        name = <const char *>k + sizeof(Kid)
        err = _open_dir(w, f.fd, name, &fd)
        if err != 0:
            if err == errno.ENOENT or err == errno.ESTALE:
                continue
            status = _skip(w, err, w.top, name)
            if status == OK:
                continue
            break
        status = _push(w, fd, k, name)
        if status == OK:
            status = _scan(w, w.top)
    # close whatever is still open (error paths)
    while w.top >= 0:
        if w.frames[w.top].fd >= 0:
            linux.close(w.frames[w.top].fd)
            w.frames[w.top].fd = -1
        w.top -= 1
    job.fd = -1           # closed with frame 0
    w.job = NULL
    return status


cdef void _free_job(Job *job) noexcept nogil:
    if job.fd >= 0:
        linux.close(job.fd)
    if job.own_path:
        free(job.path)
    free(job)


cdef int _serve(Worker *w) noexcept nogil:
    """Take directories from the queue until the walk is done or stopped."""
    cdef Walk *wk = w.wk
    cdef Job *job
    cdef timespec ts
    cdef int st
    linux.pthread_mutex_lock(&wk.lock)
    while not wk.stop:
        if w.index >= wk.cpu_threads and not _cold(wk):
            # Warm again: more threads than CPUs only slow a walk bound by the CPU.
            wk.nparked += 1
            linux.pthread_cond_wait(&wk.cond, &wk.lock)
            wk.nparked -= 1
            continue
        job = wk.qhead
        if job != NULL:
            wk.qhead = job.next
            if wk.qhead == NULL:
                wk.qtail = NULL
            wk.nqueued -= 1
            wk.nbusy += 1
            _set_hungry(wk)
            linux.pthread_mutex_unlock(&wk.lock)
            st = _run(w, job)
            _free_job(job)
            _flush(w)
            linux.pthread_mutex_lock(&wk.lock)
            wk.nbusy -= 1
            continue
        if wk.nbusy == 0:
            # Nobody walks and nothing waits: no work can appear any more.
            linux.snap_store_int(&wk.stop, 1)
            linux.pthread_cond_broadcast(&wk.cond)
            break
        wk.nidle += 1
        _set_hungry(wk)
        if w.index == 0:
            # The calling thread must keep answering Ctrl-C while it waits.
            clock_gettime(CLOCK_REALTIME, &ts)
            ts.tv_nsec += IDLE_WAIT_NS
            if ts.tv_nsec >= 1000000000:
                ts.tv_sec += 1
                ts.tv_nsec -= 1000000000
            linux.pthread_cond_timedwait(&wk.cond, &wk.lock, &ts)
            wk.nidle -= 1
            _set_hungry(wk)
            if not wk.stop and wk.qhead == NULL:
                linux.pthread_mutex_unlock(&wk.lock)
                while _cold(wk) and wk.nstarted < wk.maxthreads and _spawn(wk):
                    pass
                with gil:
                    _check_py(wk)
                linux.pthread_mutex_lock(&wk.lock)
        else:
            linux.pthread_cond_wait(&wk.cond, &wk.lock)
            wk.nidle -= 1
            _set_hungry(wk)
    linux.pthread_mutex_unlock(&wk.lock)
    return OK


cdef void *_thread_main(void *arg) noexcept nogil:
    _serve(<Worker *>arg)
    return NULL


cdef Worker *_new_worker(Walk *wk, int index) noexcept nogil:
    cdef Worker *w = <Worker *>calloc(1, sizeof(Worker))
    if w == NULL:
        return NULL
    w.wk = wk
    w.index = index
    w.top = -1
    w.lo = 1
    w.fcap = 64
    w.buf = <char *>malloc(BUFSZ)
    w.frames = <Frame *>calloc(w.fcap, sizeof(Frame))
    w.tick_at = wk.tick_every if index == 0 else TICK
    if w.buf == NULL or w.frames == NULL:
        free(w.buf)
        free(w.frames)
        free(w)
        return NULL
    return w


cdef void _free_worker(Worker *w) noexcept nogil:
    cdef int j
    if w == NULL:
        return
    for j in range(w.fcap):
        free(w.frames[j].kids)
    free(w.frames)
    free(w.buf)
    free(w)


cdef int _spawn(Walk *wk) noexcept nogil:
    """Start one more worker thread, signals blocked (they belong to the caller)."""
    cdef Worker *w
    cdef sigset_t all_, old
    cdef int rc
    linux.pthread_mutex_lock(&wk.lock)
    if not wk.fds_counted and not wk.stop:
        _size_to_fds(wk)
    if wk.stop or wk.nstarted >= wk.maxthreads:
        linux.pthread_mutex_unlock(&wk.lock)
        return 0
    w = _new_worker(wk, wk.nstarted)
    if w == NULL:
        linux.pthread_mutex_unlock(&wk.lock)
        return 0          # no memory for a helper: go on with fewer threads
    sigfillset(&all_)
    linux.pthread_sigmask(SIG_BLOCK, &all_, &old)
    rc = linux.pthread_create(&w.thread, NULL, _thread_main, w)
    linux.pthread_sigmask(SIG_SETMASK, &old, NULL)
    if rc != 0:
        _free_worker(w)
        wk.maxthreads = wk.nstarted   # the system says no: stop trying
        linux.pthread_mutex_unlock(&wk.lock)
        return 0
    wk.workers[wk.nstarted] = w
    wk.nstarted += 1
    linux.pthread_mutex_unlock(&wk.lock)
    return 1


cdef int _count_root(Worker *w, RootArg *ra, int i) noexcept nogil:
    """Count root i (lstat'ed by the wrapper) and walk it if it is a directory."""
    cdef Walk *wk = w.wk
    cdef Job job
    cdef int r, fd = -1, err
    r = _claim(w, ra.dev, ra.ino)
    if r != 1:
        return OK         # the same root twice, or inside a root walked already
    if (not linux.S_ISDIR(ra.mode) and ra.nlink > 1) or _hashed(wk, ra.dev):
        r = _seen(w, ra.dev, ra.ino)
        if r == 0:
            return OK
        if r < 0:
            return _fail_path(wk, errno.ENOMEM, i, ra.path)
    w.inodes += 1
    w.size += <uint64_t>ra.size if wk.apparent else <uint64_t>ra.blocks * 512
    if not linux.S_ISDIR(ra.mode):
        return OK
    err = dirwalk.open_dir_at(linux.AT_FDCWD, ra.path, &fd)
    if err != 0:
        return _fail_path(wk, err, i, ra.path)
    job.next = NULL
    job.fd = fd
    job.root = i
    job.dev = ra.dev
    job.ino = ra.ino
    job.path = <char *>ra.path
    job.pathlen = strlen(ra.path)
    job.own_path = False
    r = _run(w, &job)
    if job.fd >= 0:
        linux.close(job.fd)
    return r


cdef int _walk(Walk *wk, RootArg *ra, int n) except -1 nogil:
    """The calling thread's walk: the roots, then queued directories until done.

    Errors are recorded in wk (errno, full path) for the wrapper; an exception
    from a signal handler or the progress callback is stored in wk.exc.
    """
    cdef Worker *w = wk.workers[0]
    cdef int i
    for i in range(n):
        if _stopped(wk) or _count_root(w, &ra[i], i) != OK:
            break
    _flush(w)
    linux.pthread_mutex_lock(&wk.lock)
    wk.nbusy -= 1         # the roots are done; from now on worker 0 serves the queue
    linux.pthread_mutex_unlock(&wk.lock)
    _serve(w)
    return 0


cdef void _shutdown(Walk *wk) noexcept nogil:
    cdef int i
    cdef Job *job
    linux.pthread_mutex_lock(&wk.lock)
    linux.snap_store_int(&wk.stop, 1)
    linux.pthread_cond_broadcast(&wk.cond)
    linux.pthread_mutex_unlock(&wk.lock)
    for i in range(1, wk.nstarted):
        linux.pthread_join(wk.workers[i].thread, NULL)
    while wk.qhead != NULL:
        job = wk.qhead
        wk.qhead = job.next
        _free_job(job)
    wk.qtail = NULL


cdef void _free_walk(Walk *wk) noexcept nogil:
    cdef int i
    for i in range(wk.nstarted):
        _free_worker(wk.workers[i])
    free(wk.seen.slots)
    free(wk.roots)
    free(wk.hashed)
    free(wk.mountdevs)
    free(wk.errpath)
    for i in range(wk.nskips):
        free(wk.skips[i].path)
    free(wk.skips)
    linux.pthread_cond_destroy(&wk.cond)
    linux.pthread_mutex_destroy(&wk.setlock)
    linux.pthread_mutex_destroy(&wk.lock)
    free(wk)


def _default_threads():
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def disk_usage(*roots, apparent=False, threads=None, progress=None, progress_every=16384,
               errors=None):
    """Return (size, inodes) of the trees at `roots` together, each inode counted once.

    containerd's fs.DiskUsage: every root is walked without following
    symlinks, the root itself included; each distinct (st_dev, st_ino) counts
    once across all roots (hard links and overlapping roots are not counted
    twice); size is the sum of st_blocks * 512 (st_size with `apparent=True`);
    inodes is the number of distinct inodes, directories included. Roots are
    str, bytes or os.PathLike; names are handled as bytes.

    Syscalls: openat(O_DIRECTORY|O_NOFOLLOW), getdents64, statx(
    AT_SYMLINK_NOFOLLOW), with the GIL released. `threads=None` starts with
    the calling thread and adds workers (up to the CPUs available, at most 8)
    only on large walks while directories are waiting, and up to 16 while
    the walk waits on the disk (a cold cache); `threads=1` walks in the
    calling thread only; `threads=N` starts N workers at once. Fewer workers
    and fewer open directories when RLIMIT_NOFILE leaves few fds. A file
    system reached twice through mounts below the roots (a bind mount of a
    directory of the tree inside it) is counted once: the walk starts again
    with every inode of that device in the hash set (Linux 5.8 flags a bind
    mount of the same file system; older kernels count it twice).
    `progress(entries, bytes)` is called from the calling thread about every
    `progress_every` inodes counted, with the running totals. `errors`, a
    list: GNU du's way, an entry that cannot be read (a directory without
    permission) is left out and its OSError appended, and the walk goes on.

    Raises:
        OSError: with errno and the full path (str or bytes, like its root)
            of the entry that failed; FileNotFoundError for a missing root.
            Entries that vanish during the walk (ENOENT, ESTALE) are skipped;
            directories moved during the walk may be counted twice or missed.
        KeyboardInterrupt (or whatever a signal handler or `progress` raises):
            the walk stops within a few thousand entries.
        ValueError: threads or progress_every below 1.
    """
    cdef int nthreads
    cdef bint adaptive
    cdef list hashed = []
    if threads is None:
        adaptive = True
        nthreads = _default_threads()
    else:
        nthreads = threads
        adaptive = False
        if nthreads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        nthreads = min(nthreads, MAX_THREADS)
    if progress_every < 1:
        raise ValueError(f"progress_every must be at least 1, not {progress_every}")
    if progress is not None and not callable(progress):
        raise TypeError("progress must be callable")
    if errors is not None and not isinstance(errors, list):
        raise TypeError("errors must be a list")
    roots = tuple(os.fspath(r) for r in roots)
    sts = [_lstat(r) for r in roots]          # a missing root: FileNotFoundError
    if not roots:
        return (0, 0)
    walk = _WalkArgs(roots, sts, apparent, nthreads, adaptive, progress, progress_every,
                     errors is not None)
    while True:
        # A restart (a file system reached through two mount roots) hashes every
        # inode of its device from then on; there are only so many devices.
        dev = walk.run(hashed)
        if dev is None:
            if errors is not None:
                errors.extend(walk.skipped)  # the last run's: a restart walks again
            return (walk.size, walk.inodes)
        hashed.append(dev)


cdef class _WalkArgs:
    """What disk_usage was asked; run() walks once."""
    cdef tuple roots
    cdef list sts
    cdef list paths
    cdef list keys
    cdef bint apparent
    cdef int nthreads
    cdef bint adaptive
    cdef object progress
    cdef uint64_t progress_every
    cdef uint64_t next_progress
    cdef bint keep_going
    cdef readonly uint64_t size
    cdef readonly uint64_t inodes
    cdef readonly list skipped

    def __cinit__(self, tuple roots, list sts, apparent, int nthreads, bint adaptive,
                  progress, uint64_t progress_every, bint keep_going):
        self.roots = roots
        self.sts = sts
        self.paths = [os.fsencode(r) for r in roots]
        self.keys = sorted({(st.st_ino, st.st_dev) for st in sts})
        self.apparent = bool(apparent)
        self.nthreads = nthreads
        self.adaptive = adaptive
        self.progress = progress
        self.progress_every = progress_every
        self.next_progress = progress_every
        self.keep_going = keep_going
        self.skipped = []

    def run(self, list hashed):
        """Walk every root; None when done, or the device to hash on a restart."""
        cdef Walk *wk = NULL
        cdef RootArg *ra = NULL
        cdef int n = len(self.roots), i, j
        cdef int nthreads = self.nthreads
        cdef bint adaptive = self.adaptive
        cdef uint64_t size = 0, inodes = 0
        cdef bytes b
        cdef object exc
        roots = self.roots
        wk = <Walk *>calloc(1, sizeof(Walk))
        ra = <RootArg *>calloc(n, sizeof(RootArg))
        if wk == NULL or ra == NULL:
            free(wk)
            free(ra)
            raise MemoryError()
        linux.pthread_mutex_init(&wk.lock, NULL)
        linux.pthread_mutex_init(&wk.setlock, NULL)
        linux.pthread_cond_init(&wk.cond, NULL)
        try:
            wk.apparent = self.apparent
            wk.keep_going = self.keep_going
            wk.adaptive = adaptive
            wk.maxthreads = nthreads
            wk.cpu_threads = nthreads if adaptive else MAX_THREADS
            wk.window = FD_WINDOW
            wk.progress_every = self.progress_every
            # after a restart, progress goes on from the figures already reported
            wk.next_progress = self.next_progress
            wk.tick_every = min(<uint64_t>TICK, self.progress_every) if self.progress is not None else TICK
            if self.progress is not None:
                wk.progress = <PyObject *>self.progress
            wk.roots = <Root *>calloc(len(self.keys), sizeof(Root))
            if wk.roots == NULL:
                raise MemoryError()
            wk.nroots = len(self.keys)
            for j, (ino, dev) in enumerate(self.keys):
                wk.roots[j].ino = ino
                wk.roots[j].dev = dev
            if hashed:
                wk.hashed = <uint64_t *>calloc(len(hashed), sizeof(uint64_t))
                if wk.hashed == NULL:
                    raise MemoryError()
                for j, dev in enumerate(hashed):
                    wk.hashed[j] = dev
                wk.nhashed = len(hashed)
            for i in range(n):
                b = self.paths[i]
                ra[i].path = b
                st = self.sts[i]
                ra[i].dev = st.st_dev
                ra[i].ino = st.st_ino
                ra[i].mode = st.st_mode
                ra[i].nlink = st.st_nlink
                ra[i].size = st.st_size
                ra[i].blocks = st.st_blocks
            wk.workers[0] = _new_worker(wk, 0)
            if wk.workers[0] == NULL:
                raise MemoryError()
            wk.nstarted = 1
            wk.nbusy = 1
            with nogil:
                if not adaptive:
                    for i in range(1, nthreads):
                        _spawn(wk)
                _walk(wk, ra, n)
        finally:
            with nogil:
                _shutdown(wk)
            for i in range(wk.nstarted):
                size += wk.workers[i].size
                inodes += wk.workers[i].inodes
            exc = None
            err = wk.err
            path = None
            restart = wk.restart_dev if wk.restart else None
            self.next_progress = wk.next_progress
            if wk.exc != NULL:
                exc = <object>wk.exc
                Py_XDECREF(wk.exc)
                wk.exc = NULL
            elif err:
                path = _error_path(roots, wk.errroot, wk.errpath, wk.errpathlen)
            self.skipped = [
                OSError(wk.skips[j].err, os.strerror(wk.skips[j].err),
                        _error_path(roots, wk.skips[j].root, wk.skips[j].path,
                                    wk.skips[j].pathlen))
                for j in range(wk.nskips)
            ]
            with nogil:
                _free_walk(wk)
            free(ra)
        if exc is not None:
            raise exc
        if err:
            if err == errno.ENOMEM:
                raise MemoryError()
            raise_oserror(err, path)
        if restart is not None:
            return restart
        self.size = size
        self.inodes = inodes
        return None


def _lstat(path):
    while True:
        try:
            return os.lstat(path)
        except InterruptedError:  # PEP 475 retries os.fstat only (a FUSE or NFS root)
            pass


cdef object _error_path(tuple roots, int root, const char *path, size_t n):
    """An error's path, str or bytes like its root."""
    p = path[:n] if path != NULL else b""
    return os.fsdecode(p) if 0 <= root < len(roots) and not isinstance(roots[root], bytes) else p


def supports_d_type(path):
    """Whether the filesystem at `path` fills d_type in getdents64 (overlayfs needs it).

    containerd's fs.SupportsDType: make a temporary directory with a file in
    it under `path`, read the directory back, look at the file's d_type.

    Raises:
        OSError: with errno and path, from creating or reading the test files.
    """
    import tempfile
    cdef int fd, err = 0
    cdef ssize_t n = 0, off
    cdef char *buf
    cdef linux.snap_dirent64 *d
    cdef int found = -1
    path = os.fspath(path)
    tmp = tempfile.mkdtemp(prefix=b"d_type-test-" if isinstance(path, bytes) else "d_type-test-",
                           dir=path)
    try:
        fd = os.open(tmp, OPEN_DIR)
        try:
            os.close(os.open("f", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600, dir_fd=fd))
            buf = <char *>malloc(BUFSZ)
            if buf == NULL:
                raise MemoryError()
            try:
                with nogil:
                    while found < 0:
                        n = dirwalk.read_dents(fd, buf, BUFSZ)
                        if n <= 0:
                            err = <int>-n
                            break
                        off = 0
                        while off < n:
                            d = <linux.snap_dirent64 *>(buf + off)
                            off += d.d_reclen
                            if d.d_name[0] == b'f' and d.d_name[1] == 0:
                                found = d.d_type != 0      # DT_UNKNOWN
                                break
            finally:
                free(buf)
            if err:
                raise_oserror(err, tmp)
        finally:
            try:
                os.unlink("f", dir_fd=fd)
            except FileNotFoundError:
                pass
            os.close(fd)
    finally:
        os.rmdir(tmp)
    return found == 1
