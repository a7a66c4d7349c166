# cython: language_level=3
"""snapcore.rmtree: empty a directory tree, at any depth, without crossing mounts.

The compiled core of ``pysnap.fsutil.remove_tree`` (which owns the root and
the policy around it), through ``empty_tree``; and of fsops' applier, which
removes what a layer entry replaces through ``remove_at`` (C only, declared
in ``rmtree.pxd``: it needs neither the GIL nor Python). Both run one walk,
in C with the GIL released, on the traversal primitives du shares
(``includes/dirwalk.pxd``):

* Iterative, depth-first, on directory fds: only the root's and the current
  directory's are open; climbing back reopens the parent as
  ``openat(child, "..")``, checked by ``(st_dev, st_ino)``, else by names from
  the root, one ``openat`` each. No recursion, no path longer than a name.
* Each directory is listed whole (``getdents64``) before anything in it is
  unlinked: unlinking while reading a directory may skip entries.
* Another mount below (a different ``st_dev``, or ``STATX_ATTR_MOUNT_ROOT``:
  a bind mount of the same file system) is never entered; it and the
  directories above it stay and are returned (by empty_tree; remove_at
  returns EBUSY). A file bind mount (EBUSY on unlink) stays too.
* A read-only directory is made writable (``fchmod 0700``) once, when an
  unlink or rmdir in it is refused. An unsearchable one (its child cannot be
  opened: EACCES/EPERM) is handed to Python's ``open_denied(name, dir_fd)``,
  which must chmod without following symlinks (no lchmod in Linux: that
  needs /proc) and return the child's fd. ``remove_at`` has no such hook and
  reports EACCES: its caller, the applier, runs as root, whom no mode stops.
* Every ``TICK`` entries ``empty_tree`` takes the GIL for
  ``PyErr_CheckSignals()``: a KeyboardInterrupt stops it there, every fd it
  opened closed. ``remove_at`` does not (a signal waits for its caller).

Why not du's walk itself: du reads every entry's statx, keeps a window of
open fds and hands subtrees to other threads; removal needs no stat (d_type
says what is a directory), must visit a directory again after its children
(rmdir), and one thread keeps pace with rm -rf (benchmarks/bench_fsutil.py).
The two share the syscall-level primitives, not the frame machinery.
(Over 500 lines: the walk, its frames and both entry points share one
error record and must change together.)
"""

import os

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from libc cimport errno
from libc.stdint cimport uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, strlen

from .includes cimport dirwalk, linux
from .includes.oserr cimport raise_oserror

cdef enum:
    BUFSZ = 65536         # getdents64 buffer
    TICK = 4096           # entries between checks for Ctrl-C
    OK = 0
    SKIP = 1              # vanished, or replaced and removed: go on
    STOP = 2              # error or exception recorded


cdef struct Buf:          # growable byte buffer
    char *p
    size_t len
    size_t cap


cdef int _reserve(Buf *b, size_t more) noexcept nogil:
    cdef size_t ncap
    cdef char *np
    if b.len + more <= b.cap:
        return 0
    ncap = b.cap * 2 if b.cap else 4096
    while ncap < b.len + more:
        ncap *= 2
    np = <char *>realloc(b.p, ncap)
    if np == NULL:
        return -1
    b.p = np
    b.cap = ncap
    return 0


cdef int _push_name(Buf *b, const char *name, size_t n) noexcept nogil:
    """Append a record popped last-first: name, NUL, padding, its size. -1 on ENOMEM."""
    cdef size_t size = ((n + 1 + 7) & ~(<size_t>7)) + sizeof(size_t)
    if _reserve(b, size) < 0:
        return -1
    memcpy(b.p + b.len, name, n)
    b.p[b.len + n] = 0
    (<size_t *>(b.p + b.len + size - sizeof(size_t)))[0] = size
    b.len += size
    return 0


cdef inline char *_pop_name(Buf *b) noexcept nogil:
    """The last record's name (valid until the next push), removed from b."""
    cdef size_t size = (<size_t *>(b.p + b.len - sizeof(size_t)))[0]
    b.len -= size
    return b.p + b.len


cdef struct Frame:
    char *name            # malloc'd; NULL for the root
    size_t namelen
    uint64_t dev
    uint64_t ino
    Buf kids              # subdirectories still to empty
    bint holds_mount      # a mount below it stays, so it stays too


cdef struct Rm:
    int root_fd
    uint64_t root_dev
    int fd                # the current directory, frames[top]
    Frame *frames
    int top
    int fcap
    char *buf
    Buf listing           # one directory's entries: d_type byte + name + NUL
    Buf mounts            # relative paths of the mounts left, NUL-terminated
    size_t nmounts
    uint64_t ticker
    int err
    char *errpath         # malloc'd relative path of the failing entry
    PyObject *open_denied # NULL (remove_at): an unsearchable directory is EACCES
    bint signals          # check for Ctrl-C every TICK (needs the GIL: not remove_at)
    PyObject *exc


cdef char *_relpath(Rm *rm, const char *name, size_t *outlen) noexcept nogil:
    """frames[1..top] names and name (or none), joined by "/"; NULL on ENOMEM."""
    cdef size_t n = 0, nl = strlen(name) if name != NULL else 0
    cdef int j
    cdef char *p
    cdef char *q
    for j in range(1, rm.top + 1):
        n += rm.frames[j].namelen + 1
    p = <char *>malloc(n + nl + 1)
    if p == NULL:
        return NULL
    q = p
    for j in range(1, rm.top + 1):
        memcpy(q, rm.frames[j].name, rm.frames[j].namelen)
        q += rm.frames[j].namelen
        q[0] = b'/'
        q += 1
    if nl:
        memcpy(q, name, nl)
        q += nl
    elif q > p:
        q -= 1            # the directory itself: no trailing slash
    q[0] = 0
    outlen[0] = <size_t>(q - p)
    return p


cdef int _fail(Rm *rm, int err, const char *name) noexcept nogil:
    """Record err with the path of name in the current directory. Returns STOP."""
    cdef size_t n
    if rm.err == 0 and rm.exc == NULL:
        rm.err = err
        rm.errpath = _relpath(rm, name, &n)
    return STOP


cdef int _store_exc(Rm *rm, object e):
    if rm.exc == NULL and rm.err == 0:
        Py_INCREF(e)
        rm.exc = <PyObject *>e
    return STOP


cdef int _tick(Rm *rm) noexcept nogil:
    rm.ticker += 1
    if rm.ticker % TICK or not rm.signals:
        return OK
    with gil:
        try:
            PyErr_CheckSignals()
        except BaseException as e:
            return _store_exc(rm, e)
    return OK


cdef int _add_mount(Rm *rm, const char *name) noexcept nogil:
    cdef size_t n
    cdef char *p = _relpath(rm, name, &n)
    if p == NULL or _reserve(&rm.mounts, n + 1) < 0:
        free(p)
        return _fail(rm, errno.ENOMEM, name)
    memcpy(rm.mounts.p + rm.mounts.len, p, n + 1)
    rm.mounts.len += n + 1
    rm.nmounts += 1
    free(p)
    rm.frames[rm.top].holds_mount = True
    return OK


cdef inline int _unlinkat(int fd, const char *name, int flags) noexcept nogil:
    """unlinkat, EINTR retried: 0 or errno."""
    cdef int err
    while linux.unlinkat(fd, name, flags) != 0:
        err = errno.errno
        if err != errno.EINTR:
            return err
    return 0


cdef int _fchmod_dir(Rm *rm, int fd) noexcept nogil:
    """chmod 0700 the directory fd (read-only or unsearchable). OK or STOP."""
    if linux.fchmod(fd, 0o700) != 0:
        return _fail(rm, errno.errno, NULL)
    return OK


cdef int _empty(Rm *rm) noexcept nogil:
    """Unlink every non-directory of the current directory; keep its subdirectories."""
    cdef Frame *f = &rm.frames[rm.top]
    cdef int fd = rm.fd, err
    cdef ssize_t n, off
    cdef size_t pos, nl
    cdef linux.snap_dirent64 *d
    cdef linux.stat st
    cdef unsigned char dtype
    cdef const char *name
    cdef bint made_writable = False
    rm.listing.len = 0
    while True:
        n = dirwalk.read_dents(fd, rm.buf, BUFSZ)
        if n < 0:
            if n == -errno.ENOENT:
                break     # removed meanwhile
            return _fail(rm, <int>-n, NULL)
        if n == 0:
            break
        off = 0
        while off < n:
            d = <linux.snap_dirent64 *>(rm.buf + off)
            off += d.d_reclen
            if dirwalk.is_dot(d.d_name):
                continue
            nl = strlen(d.d_name)
            if _reserve(&rm.listing, nl + 2) < 0:
                return _fail(rm, errno.ENOMEM, d.d_name)
            rm.listing.p[rm.listing.len] = <char>d.d_type
            memcpy(rm.listing.p + rm.listing.len + 1, d.d_name, nl + 1)
            rm.listing.len += nl + 2
    pos = 0
    while pos < rm.listing.len:
        dtype = <unsigned char>rm.listing.p[pos]
        name = rm.listing.p + pos + 1
        nl = strlen(name)
        pos += nl + 2
        if _tick(rm) != OK:
            return STOP
        if dtype == linux.DT_UNKNOWN:
            if linux.fstatat(fd, name, &st, linux.AT_SYMLINK_NOFOLLOW) != 0:
                err = errno.errno
                if err == errno.ENOENT:
                    continue
                return _fail(rm, err, name)
            if linux.S_ISDIR(st.st_mode):
                dtype = linux.DT_DIR
        if dtype != linux.DT_DIR:
            err = _unlinkat(fd, name, 0)
            if (err == errno.EACCES or err == errno.EPERM) and not made_writable:
                if _fchmod_dir(rm, fd) != OK:     # a read-only directory: once
                    return STOP
                made_writable = True
                err = _unlinkat(fd, name, 0)
            if err == 0 or err == errno.ENOENT:
                continue
            if err == errno.EBUSY:                # a file bind mount: it stays
                if _add_mount(rm, name) != OK:
                    return STOP
                continue
            if err != errno.EISDIR:               # EISDIR: a directory since the listing
                return _fail(rm, err, name)
        if _push_name(&f.kids, name, nl) < 0:
            return _fail(rm, errno.ENOMEM, name)
    return OK


cdef int _open_denied(Rm *rm, const char *name, int *out) noexcept nogil:
    """Python's open_denied(name, dir_fd) for an unsearchable directory. OK, SKIP or STOP."""
    cdef int fd = rm.fd, e = 0
    with gil:
        try:
            out[0] = (<object>rm.open_denied)(PyBytes_FromStringAndSize(name, strlen(name)), fd)
            return OK
        except OSError as exc:
            e = exc.errno or 0
            if e == errno.ENOENT:
                return SKIP
            if e != errno.ENOTDIR and e != errno.ELOOP:
                return _store_exc(rm, exc)
        except BaseException as exc:
            return _store_exc(rm, exc)
    e = _unlinkat(fd, name, 0)    # replaced by a file or a symlink
    return SKIP if e == 0 else _fail(rm, e, name)


cdef int _open_child(Rm *rm, const char *name, int *out) noexcept nogil:
    """Open subdirectory name of the current directory. OK, SKIP or STOP."""
    cdef int err = dirwalk.open_dir_at(rm.fd, name, out)
    if err == 0:
        return OK
    if err == errno.ENOENT:
        return SKIP
    if err == errno.ENOTDIR or err == errno.ELOOP:
        err = _unlinkat(rm.fd, name, 0)       # replaced by a file or a symlink
        return SKIP if err == 0 else _fail(rm, err, name)
    if (err == errno.EACCES or err == errno.EPERM) and rm.open_denied != NULL:
        return _open_denied(rm, name, out)
    # Without open_denied (remove_at, whose caller runs as root: CAP_DAC_OVERRIDE
    # opens any directory) it is reported: an fchmod of the parent alone would
    # not open a child whose own mode refuses.
    return _fail(rm, err, name)


cdef int _push(Rm *rm, int fd, const char *name) noexcept nogil:
    """Make fd (subdirectory name) the current directory. OK or STOP; fd is owned."""
    cdef Frame *nf
    cdef Frame *f
    cdef linux.stat st
    cdef int r, err
    cdef size_t n = strlen(name)
    if linux.fstat(fd, &st) != 0:
        r = errno.errno
        linux.close(fd)
        return _fail(rm, r, name)
    r = 0 if st.st_dev != rm.root_dev else linux.snap_is_mount_root(fd)
    if st.st_dev != rm.root_dev or r != 0:
        err = errno.errno
        linux.close(fd)
        if r < 0:
            return _fail(rm, err, name)
        return _add_mount(rm, name)               # another mount: never entered
    if rm.top + 1 >= rm.fcap:
        nf = <Frame *>realloc(rm.frames, rm.fcap * 2 * sizeof(Frame))
        if nf == NULL:
            linux.close(fd)
            return _fail(rm, errno.ENOMEM, name)
        rm.frames = nf
        for r in range(rm.fcap, rm.fcap * 2):
            nf[r].name = NULL
            nf[r].kids.p = NULL
            nf[r].kids.cap = 0
        rm.fcap *= 2
    f = &rm.frames[rm.top + 1]
    free(f.name)
    f.name = <char *>malloc(n + 1)
    if f.name == NULL:
        linux.close(fd)
        return _fail(rm, errno.ENOMEM, name)
    memcpy(f.name, name, n + 1)
    f.namelen = n
    f.dev = st.st_dev
    f.ino = st.st_ino
    f.kids.len = 0
    f.holds_mount = False
    rm.top += 1
    linux.close(rm.fd)
    rm.fd = fd
    return _empty(rm)


cdef int _reopen_parent(Rm *rm) noexcept nogil:
    """After the pop: an fd of frames[top] instead of the child's in rm.fd.

    ".." checked by (dev, ino); if the tree moved, or the child is not
    searchable (mode 0600: ".." needs search permission), the names from the root.
    """
    cdef Frame *want = &rm.frames[rm.top]
    cdef int fd = -1, nfd = -1, err, j
    err = dirwalk.open_parent(rm.fd, want.dev, want.ino, &fd)
    if err == errno.EACCES:
        err = -1
    if err > 0:
        return _fail(rm, err, b"..")
    if err < 0:
        fd = linux.fcntl(rm.root_fd, linux.F_DUPFD_CLOEXEC, 0)
        if fd < 0:
            return _fail(rm, errno.errno, NULL)
        for j in range(1, rm.top + 1):
            err = dirwalk.open_dir_at(fd, rm.frames[j].name, &nfd)
            linux.close(fd)
            if err != 0:
                return _fail(rm, err, NULL)
            fd = nfd
    linux.close(rm.fd)
    rm.fd = fd
    return OK


cdef int _run(Rm *rm) noexcept nogil:
    """Empty the root: children first, each directory removed once empty."""
    cdef Frame *f
    cdef const char *name
    cdef int fd = -1, r, err
    r = _empty(rm)
    while r == OK:
        f = &rm.frames[rm.top]
        if f.kids.len:
            name = _pop_name(&f.kids)
            r = _open_child(rm, name, &fd)
            if r == OK:
                r = _push(rm, fd, name)
            elif r == SKIP:
                r = OK
            continue
        if rm.top == 0:
            break
        # Empty now: climb to the parent and remove it from there.
        rm.top -= 1
        r = _reopen_parent(rm)
        if r != OK:
            break
        if f.holds_mount:
            rm.frames[rm.top].holds_mount = True
            continue
        err = _unlinkat(rm.fd, f.name, linux.AT_REMOVEDIR)
        if err == errno.EACCES or err == errno.EPERM:
            r = _fchmod_dir(rm, rm.fd)
            if r != OK:
                break
            err = _unlinkat(rm.fd, f.name, linux.AT_REMOVEDIR)
        if err == errno.ENOTEMPTY:        # filled meanwhile: again
            if _push_name(&rm.frames[rm.top].kids, f.name, f.namelen) < 0:
                r = _fail(rm, errno.ENOMEM, f.name)
        elif err != 0 and err != errno.ENOENT:
            r = _fail(rm, err, f.name)
    return r


cdef int _init(Rm *rm, int root_fd, const linux.stat *st) noexcept nogil:
    """Set rm up to empty the directory root_fd (its fstat st): 0 or errno.

    rm is safe for _free whatever this returns; the caller sets open_denied
    and signals.
    """
    cdef int j
    rm.root_fd = root_fd
    rm.root_dev = st.st_dev
    rm.top = 0
    rm.fcap = 64
    rm.listing.p = rm.mounts.p = NULL
    rm.listing.len = rm.listing.cap = rm.mounts.len = rm.mounts.cap = 0
    rm.nmounts = 0
    rm.ticker = 0
    rm.err = 0
    rm.errpath = NULL
    rm.open_denied = NULL
    rm.signals = False
    rm.exc = NULL
    rm.fd = -1
    rm.buf = <char *>malloc(BUFSZ)
    rm.frames = <Frame *>malloc(rm.fcap * sizeof(Frame))
    if rm.frames != NULL:  # before any return: _free reads every frame
        for j in range(rm.fcap):
            rm.frames[j].name = NULL
            rm.frames[j].kids.p = NULL
            rm.frames[j].kids.cap = 0
    if rm.buf == NULL or rm.frames == NULL:
        return errno.ENOMEM
    rm.frames[0].dev = st.st_dev
    rm.frames[0].ino = st.st_ino
    rm.frames[0].kids.len = 0
    rm.frames[0].holds_mount = False
    rm.fd = linux.fcntl(root_fd, linux.F_DUPFD_CLOEXEC, 0)
    return errno.errno if rm.fd < 0 else 0


cdef void _free(Rm *rm) noexcept nogil:
    """Close and free what _init and the walk left (not rm.exc: the caller's)."""
    cdef int j
    if rm.fd >= 0:
        linux.close(rm.fd)
    if rm.frames != NULL:
        for j in range(rm.fcap):
            free(rm.frames[j].name)
            free(rm.frames[j].kids.p)
    free(rm.frames)
    free(rm.buf)
    free(rm.listing.p)
    free(rm.mounts.p)
    free(rm.errpath)


def empty_tree(int root_fd, top, open_denied):
    """Remove everything below the directory root_fd (the directory at `top`),
    except other mounts; return the paths (bytes, relative to top) of the
    mounts left in place, each with the directories above it.

    getdents64, unlinkat, openat(O_DIRECTORY|O_NOFOLLOW), with the GIL
    released. ``open_denied(name, dir_fd)`` is called (with the GIL) for a
    subdirectory that openat refuses (EACCES/EPERM); it returns its fd or
    raises (FileNotFoundError: gone; ENOTDIR/ELOOP: replaced, then unlinked).

    Raises:
        OSError: with errno and the full path (str or bytes, like top).
        KeyboardInterrupt (or what open_denied raises): every fd it opened closed.
    """
    cdef Rm rm
    cdef linux.stat st
    cdef int err
    cdef size_t pos
    if linux.fstat(root_fd, &st) != 0:
        raise_oserror(errno.errno, top)
    err = _init(&rm, root_fd, &st)
    rm.open_denied = <PyObject *>open_denied
    rm.signals = True
    try:
        if err == errno.ENOMEM:
            raise MemoryError()
        if err:
            raise_oserror(err, top)
        with nogil:
            _run(&rm)
        if rm.exc != NULL:
            exc = <object>rm.exc
            Py_XDECREF(rm.exc)
            rm.exc = NULL
            raise exc
        if rm.err:
            if rm.err == errno.ENOMEM:
                raise MemoryError()
            rel = rm.errpath if rm.errpath != NULL else b""
            base = os.fsencode(top)
            path = os.path.join(base, rel) if rel else base
            raise_oserror(rm.err, path if isinstance(top, bytes) else os.fsdecode(path))
        mounts = []
        pos = 0
        while pos < rm.mounts.len:
            mounts.append(<bytes>(rm.mounts.p + pos))
            pos += strlen(rm.mounts.p + pos) + 1
        return mounts
    finally:
        _free(&rm)


cdef int remove_at(int dfd, const char *name) noexcept nogil:
    """Remove name (any type) under the directory dfd, at any depth: 0 or errno.

    A missing name is 0. A mount at name or anywhere below it (as for
    empty_tree: another st_dev than dfd's, a mount root, a file bind mount) is
    EBUSY: nothing of the mount is touched, it and the directories above it
    stay, everything else below name goes. No GIL, no Python: no open_denied,
    no Ctrl-C checks (Python handles a signal once the caller returns to it).
    """
    cdef Rm rm
    cdef linux.stat pst, st
    cdef int fd = -1, err, r
    err = _unlinkat(dfd, name, 0)
    if err != errno.EISDIR:                   # unlink(2) of a directory on Linux
        return 0 if err == errno.ENOENT else err   # EBUSY: name is a file bind mount
    err = dirwalk.open_dir_at(dfd, name, &fd)
    if err != 0:
        return 0 if err == errno.ENOENT else err
    if linux.fstat(dfd, &pst) != 0 or linux.fstat(fd, &st) != 0:
        err = errno.errno
        linux.close(fd)
        return err
    r = 0 if st.st_dev != pst.st_dev else linux.snap_is_mount_root(fd)
    if st.st_dev != pst.st_dev or r != 0:
        err = errno.errno if r < 0 else errno.EBUSY   # name itself is a mount point
        linux.close(fd)
        return err
    err = _init(&rm, fd, &st)
    if err == 0:
        _run(&rm)
        if rm.err:
            err = rm.err
        elif rm.nmounts:
            err = errno.EBUSY
    _free(&rm)
    linux.close(fd)
    if err == 0:
        err = _unlinkat(dfd, name, linux.AT_REMOVEDIR)
        if err == errno.ENOENT:
            err = 0
    return err
