# cython: language_level=3
"""snapcore.mount: mount(2), umount2(2) and the new mount API, as direct syscalls.

Every call releases the GIL for the syscall, retries EINTR and nothing else,
saves errno at once and raises ``OSError`` with the errno and the path(s):
``filename`` is the source (or the only path), ``filename2`` the target.
Policy (EBUSY retries, "not mounted" ends an unmount loop, which overlay path
to take) belongs to ``pysnap.mounts``. A path, key or value holding a NUL
byte raises ``ValueError`` before any syscall, as ``os`` functions do.

Two compound calls keep whole sequences in C with the GIL released:

- ``fsmount_params``: fsopen, one fsconfig per parameter (a path parameter is
  opened ``O_PATH`` here and passed with ``FSCONFIG_SET_FD``, so its length
  never matters: fsconfig string values are cut at 255 bytes), create,
  fsmount, move_mount onto the target. The target is opened first, ``O_PATH``
  with symlinks followed and ``O_DIRECTORY``, as mount(2) resolves it (a file
  or a dangling link fails there, ENOTDIR or ENOENT, before any work), and the
  mount is moved onto that fd: move_mount(2) by path would not follow a
  symlink (EINVAL). Every fd is closed on every path (an
  open fsmount fd keeps the mount busy). On failure the filesystem's own
  messages, read back from the fs_context fd (Documentation/filesystems/
  mount_api.rst, "e " prefixed), are attached to the ``OSError`` as notes.
- ``mount_in_dir``: mount(2) from a helper pthread that has unshared its
  filesystem context (``unshare(CLONE_FS)``) and changed directory, so that
  relative paths in the data resolve there while the process's own working
  directory never changes (containerd's fallback for long lowerdir lists).

Over 500 lines: one thin wrapper per syscall of the mount API, each with the
same GIL, EINTR and errno handling; a split would only scatter them.
"""

import os

from libc cimport errno
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from .includes cimport linux
from .includes.oserr cimport raise_oserror

MS_RDONLY = linux.MS_RDONLY
MS_NOSUID = linux.MS_NOSUID
MS_NODEV = linux.MS_NODEV
MS_NOEXEC = linux.MS_NOEXEC
MS_SYNCHRONOUS = linux.MS_SYNCHRONOUS
MS_REMOUNT = linux.MS_REMOUNT
MS_MANDLOCK = linux.MS_MANDLOCK
MS_DIRSYNC = linux.MS_DIRSYNC
MS_NOATIME = linux.MS_NOATIME
MS_NODIRATIME = linux.MS_NODIRATIME
MS_BIND = linux.MS_BIND
MS_MOVE = linux.MS_MOVE
MS_REC = linux.MS_REC
MS_SILENT = linux.MS_SILENT
MS_RELATIME = linux.MS_RELATIME
MS_STRICTATIME = linux.MS_STRICTATIME
MS_PRIVATE = linux.MS_PRIVATE
MS_SLAVE = linux.MS_SLAVE
MS_SHARED = linux.MS_SHARED
MS_UNBINDABLE = linux.MS_UNBINDABLE
MS_LAZYTIME = linux.MS_LAZYTIME

MNT_FORCE = linux.MNT_FORCE
MNT_DETACH = linux.MNT_DETACH
MNT_EXPIRE = linux.MNT_EXPIRE
UMOUNT_NOFOLLOW = linux.UMOUNT_NOFOLLOW

FSOPEN_CLOEXEC = linux.FSOPEN_CLOEXEC
FSMOUNT_CLOEXEC = linux.FSMOUNT_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = linux.MOVE_MOUNT_F_EMPTY_PATH
FSCONFIG_SET_FLAG = linux.FSCONFIG_SET_FLAG
FSCONFIG_SET_STRING = linux.FSCONFIG_SET_STRING
FSCONFIG_SET_FD = linux.FSCONFIG_SET_FD
FSCONFIG_CMD_CREATE = linux.FSCONFIG_CMD_CREATE

MOUNT_ATTR_RDONLY = linux.MOUNT_ATTR_RDONLY
MOUNT_ATTR_NOSUID = linux.MOUNT_ATTR_NOSUID
MOUNT_ATTR_NODEV = linux.MOUNT_ATTR_NODEV
MOUNT_ATTR_NOEXEC = linux.MOUNT_ATTR_NOEXEC
MOUNT_ATTR_RELATIME = linux.MOUNT_ATTR_RELATIME
MOUNT_ATTR_NOATIME = linux.MOUNT_ATTR_NOATIME
MOUNT_ATTR_STRICTATIME = linux.MOUNT_ATTR_STRICTATIME
MOUNT_ATTR_NODIRATIME = linux.MOUNT_ATTR_NODIRATIME

cdef enum:
    # one message per read(2) of an fs_context fd; the kernel keeps at most 8
    _LOG_MSG = 1024
    _LOG_MAX = 8


cdef bytes _fsencode(object p):
    """os.fsencode, refusing a NUL as os.open() does.

    The char * the syscall gets ends at the first NUL, so "/mnt/a\\0b" would
    otherwise silently mount, unmount or open "/mnt/a".
    """
    cdef bytes b = os.fsencode(p)
    if b"\0" in b:
        raise ValueError(f"embedded null byte: {p!r}")
    return b


cdef inline object _enc(object p):
    """_fsencode, keeping None (a NULL pointer)."""
    return None if p is None else _fsencode(p)


cdef inline const char *_ptr(object b):
    if b is None:
        return NULL
    return <bytes>b


cdef inline int _open_path(const char *path) noexcept nogil:
    """open(path, O_PATH|O_CLOEXEC|O_DIRECTORY), EINTR retried; -1 with errno set."""
    cdef int fd
    while True:
        fd = linux.open(path, linux.O_PATH | linux.O_CLOEXEC | linux.O_DIRECTORY)
        if fd >= 0 or errno.errno != errno.EINTR:
            return fd


def mount(source, target, fstype=None, unsigned long flags=0, data=None):
    """mount(2): attach ``source`` (a device, a directory, "overlay") on ``target``.

    ``source``, ``fstype`` and ``data`` may be None (NULL), as for a remount or a
    propagation change. ``data`` longer than a page is cut by the kernel: the
    caller checks its length.

    Raises:
        OSError: errno of mount(2), filename=source, filename2=target.
    """
    cdef object bs = _enc(source), bt = _fsencode(target), bf = _enc(fstype)
    cdef object bd = _enc(data)
    cdef const char *s = _ptr(bs)
    cdef const char *t = bt
    cdef const char *f = _ptr(bf)
    cdef const char *d = _ptr(bd)
    cdef int rc, err
    while True:
        with nogil:
            rc = linux.c_mount(s, t, f, flags, d)
            err = errno.errno
        if rc == 0 or err != errno.EINTR:
            break
    if rc != 0:
        raise_oserror(err, source, target)


def umount(target, int flags=0):
    """umount2(2): detach the topmost mount on ``target``.

    Raises:
        OSError: errno of umount2(2) (EINVAL: nothing mounted there), filename=target.
    """
    cdef bytes b = _fsencode(target)
    cdef const char *c = b
    cdef int rc, err
    while True:
        with nogil:
            rc = linux.umount2(c, flags)
            err = errno.errno
        if rc == 0 or err != errno.EINTR:
            break
    if rc != 0:
        raise_oserror(err, target)


def open_path(path):
    """open(2) ``path`` with O_PATH|O_CLOEXEC|O_DIRECTORY; returns the fd (caller closes).

    Raises:
        OSError: errno of open(2), filename=path.
    """
    cdef bytes b = _fsencode(path)
    cdef const char *c = b
    cdef int fd, err
    with nogil:
        fd = _open_path(c)
        err = errno.errno
    if fd < 0:
        raise_oserror(err, path)
    return fd


def fsopen(fsname, unsigned int flags=FSOPEN_CLOEXEC):
    """fsopen(2): a new filesystem context for ``fsname``; returns its fd.

    Raises:
        OSError: errno of fsopen(2) (ENODEV: unknown type), filename=fsname.
    """
    cdef bytes b = _fsencode(fsname)
    cdef const char *c = b
    cdef int fd, err
    while True:
        with nogil:
            fd = linux.snap_fsopen(c, flags)
            err = errno.errno
        if fd >= 0 or err != errno.EINTR:
            break
    if fd < 0:
        raise_oserror(err, fsname)
    return fd


def fsconfig(int fd, unsigned int cmd, key=None, value=None, int aux=0):
    """fsconfig(2) on the context ``fd``.

    ``FSCONFIG_SET_FLAG``: ``key`` only; ``FSCONFIG_SET_STRING``: ``key`` and
    ``value`` (at most 255 bytes, the kernel's limit); ``FSCONFIG_SET_FD``:
    ``key`` and the fd in ``aux``; ``FSCONFIG_CMD_CREATE``: neither.

    Raises:
        OSError: errno of fsconfig(2), filename=key, filename2=value.
    """
    cdef object bk = _enc(key), bv = _enc(value)
    cdef const char *k = _ptr(bk)
    cdef const char *v = _ptr(bv)
    cdef int rc, err
    while True:
        with nogil:
            rc = linux.snap_fsconfig(fd, cmd, k, v, aux)
            err = errno.errno
        if rc == 0 or err != errno.EINTR:
            break
    if rc != 0:
        raise_oserror(err, key, value)


def fsmount(int fd, unsigned int flags=FSMOUNT_CLOEXEC, unsigned int attrs=0):
    """fsmount(2): a detached mount of the created context ``fd``; returns its fd.

    Raises:
        OSError: errno of fsmount(2).
    """
    cdef int mfd, err
    while True:
        with nogil:
            mfd = linux.snap_fsmount(fd, flags, attrs)
            err = errno.errno
        if mfd >= 0 or err != errno.EINTR:
            break
    if mfd < 0:
        raise_oserror(err, None)
    return mfd


def move_mount(int from_dfd, from_path, int to_dfd, to_path, unsigned int flags=0):
    """move_mount(2); ``move_mount(mfd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)``
    attaches a mount made by fsmount.

    Raises:
        OSError: errno of move_mount(2), filename=from_path, filename2=to_path.
    """
    cdef bytes bf = _fsencode(from_path), bt = _fsencode(to_path)
    cdef const char *f = bf
    cdef const char *t = bt
    cdef int rc, err
    while True:
        with nogil:
            rc = linux.snap_move_mount(from_dfd, f, to_dfd, t, flags)
            err = errno.errno
        if rc == 0 or err != errno.EINTR:
            break
    if rc != 0:
        raise_oserror(err, from_path, to_path)


AT_FDCWD = linux.AT_FDCWD


cdef inline Py_ssize_t _read_log_nogil(int fsfd, char *out, Py_ssize_t size) noexcept nogil:
    """Drain the fs_context log of ``fsfd`` into ``out`` as lines; returns the length."""
    cdef char msg[_LOG_MSG]
    cdef ssize_t n
    cdef Py_ssize_t used = 0
    cdef int i
    for i in range(_LOG_MAX):
        n = linux.c_read(fsfd, msg, _LOG_MSG)
        if n < 0:
            if errno.errno == errno.EINTR:
                continue
            break                      # ENODATA: the log is empty
        if used + n + 1 > size:
            break
        memcpy(out + used, msg, n)
        used += n
        out[used] = b'\n'
        used += 1
    return used


def read_log(int fsfd):
    """The messages queued on a filesystem context fd ("e ..." errors, "w ..." warnings)."""
    cdef char buf[_LOG_MSG * _LOG_MAX]
    cdef Py_ssize_t n
    with nogil:
        n = _read_log_nogil(fsfd, buf, sizeof(buf))
    return [m for m in buf[:n].decode("utf-8", "replace").split("\n") if m]


# ---- the whole new-API sequence in C ----------------------------------------

cdef struct _param:
    unsigned int cmd        # FSCONFIG_SET_FLAG, _SET_STRING, or _SET_FD (value = path)
    const char *key
    const char *value

cdef enum:
    _STAGE_FSOPEN = -1
    _STAGE_CREATE = -2
    _STAGE_FSMOUNT = -3
    _STAGE_MOVE = -4
    _STAGE_TARGET = -5

cdef struct _result:
    int err
    int stage               # a param index, or a _STAGE_*
    bint opening            # the param's path failed to open (not the fsconfig)
    Py_ssize_t log_len
    char log[_LOG_MSG * _LOG_MAX]


cdef int _fsconfig_retry(int fsfd, unsigned int cmd, const char *key, const char *value,
                         int aux) noexcept nogil:
    cdef int rc
    while True:
        rc = linux.snap_fsconfig(fsfd, cmd, key, value, aux)
        if rc == 0 or errno.errno != errno.EINTR:
            return rc


cdef int _configure(int fsfd, int target_fd, const _param *params, Py_ssize_t n,
                    unsigned int attrs, _result *res) noexcept nogil:
    """fsconfig each param, create, fsmount, move_mount onto target_fd. Fills res on failure."""
    cdef Py_ssize_t i
    cdef int fd, rc, err, mfd
    for i in range(n):
        if params[i].cmd == linux.FSCONFIG_SET_FD:
            fd = _open_path(params[i].value)
            if fd < 0:
                res.err, res.stage, res.opening = errno.errno, <int>i, True
                return -1
            rc = _fsconfig_retry(fsfd, linux.FSCONFIG_SET_FD, params[i].key, NULL, fd)
            err = errno.errno
            linux.close(fd)             # the context holds its own reference
        else:
            rc = _fsconfig_retry(fsfd, params[i].cmd, params[i].key, params[i].value, 0)
            err = errno.errno
        if rc != 0:
            res.err, res.stage = err, <int>i
            return -1
    if _fsconfig_retry(fsfd, linux.FSCONFIG_CMD_CREATE, NULL, NULL, 0) != 0:
        res.err, res.stage = errno.errno, _STAGE_CREATE
        return -1
    while True:
        mfd = linux.snap_fsmount(fsfd, linux.FSMOUNT_CLOEXEC, attrs)
        if mfd >= 0 or errno.errno != errno.EINTR:
            break
    if mfd < 0:
        res.err, res.stage = errno.errno, _STAGE_FSMOUNT
        return -1
    while True:
        rc = linux.snap_move_mount(mfd, b"", target_fd, b"",
                                   linux.MOVE_MOUNT_F_EMPTY_PATH | linux.MOVE_MOUNT_T_EMPTY_PATH)
        if rc == 0 or errno.errno != errno.EINTR:
            break
    err = errno.errno
    linux.close(mfd)                    # attached or not, the fd must go
    if rc != 0:
        res.err, res.stage = err, _STAGE_MOVE
        return -1
    return 0


cdef int _fsmount_seq(const char *fstype, const char *target, const _param *params,
                      Py_ssize_t n, unsigned int attrs, _result *res) noexcept nogil:
    cdef int fsfd, rc, tfd
    tfd = _open_path(target)
    if tfd < 0:
        res.err, res.stage = errno.errno, _STAGE_TARGET
        return -1
    while True:
        fsfd = linux.snap_fsopen(fstype, linux.FSOPEN_CLOEXEC)
        if fsfd >= 0 or errno.errno != errno.EINTR:
            break
    if fsfd < 0:
        res.err, res.stage = errno.errno, _STAGE_FSOPEN
        linux.close(tfd)
        return -1
    rc = _configure(fsfd, tfd, params, n, attrs, res)
    if rc != 0:
        res.log_len = _read_log_nogil(fsfd, res.log, sizeof(res.log))
    linux.close(fsfd)
    linux.close(tfd)
    return rc


_PARAM_NAMES = {FSCONFIG_SET_FLAG: "flag", FSCONFIG_SET_STRING: "string",
                FSCONFIG_SET_FD: "fd"}


def fsmount_params(fstype, target, params, unsigned int attrs=0, source=None):
    """Mount a new ``fstype`` on ``target`` by the new mount API, all in C.

    ``params`` is a sequence of ``(cmd, key, value)``: ``(FSCONFIG_SET_FLAG,
    key, None)``, ``(FSCONFIG_SET_STRING, key, value)``, or ``(FSCONFIG_SET_FD,
    key, path)``, where ``path`` is opened O_PATH|O_DIRECTORY here and passed
    by fd (the way to give overlay's ``lowerdir+``, ``upperdir`` and
    ``workdir`` paths of any length). Then FSCONFIG_CMD_CREATE, fsmount(2)
    with the ``MOUNT_ATTR_*`` bits in ``attrs``, move_mount(2) onto ``target``
    (opened first, symlinks followed as mount(2) follows them; it must be a
    directory: ENOTDIR otherwise).
    The GIL is released for the whole sequence; every fd is closed on every
    path, so a failure leaves nothing mounted.

    Raises:
        OSError: the errno of the failing step. filename: the path that did not
            open, or the param's value (its key for a flag), or ``source``
            (default ``fstype``) for fsopen/create/fsmount/move_mount;
            filename2: ``target``. Notes name the step and quote the
            filesystem's own messages.
    """
    cdef bytes bfs = _fsencode(fstype), btg = _fsencode(target)
    cdef list keep = []
    cdef list items = list(params)
    cdef Py_ssize_t n = len(items), i
    cdef _param *cp = NULL
    cdef _result *res = NULL
    cdef int rc
    cdef const char *cfs = bfs
    cdef const char *ctg = btg
    if source is None:
        source = fstype
    try:
        cp = <_param *>malloc(max(n, 1) * sizeof(_param))
        res = <_result *>malloc(sizeof(_result))
        if cp == NULL or res == NULL:
            raise MemoryError()
        memset(res, 0, sizeof(_result))
        for i in range(n):
            cmd, key, value = items[i]
            bk = _fsencode(key)
            bv = _enc(value)
            keep.append(bk)
            keep.append(bv)
            if cmd not in _PARAM_NAMES:
                raise ValueError(f"fsmount_params: unsupported fsconfig cmd {cmd!r}")
            if (cmd != FSCONFIG_SET_FLAG) and bv is None:
                raise ValueError(f"fsmount_params: {key!r} needs a value")
            cp[i].cmd = cmd
            cp[i].key = <const char *>bk
            cp[i].value = _ptr(bv)
        with nogil:
            rc = _fsmount_seq(cfs, ctg, cp, n, attrs, res)
        if rc != 0:
            _raise_seq(res, fstype, source, target, items)
    finally:
        free(cp)
        free(res)


cdef int _raise_seq(_result *res, fstype, source, target, list items) except -1:
    cdef int stage = res.stage
    log = [m for m in res.log[:res.log_len].decode("utf-8", "replace").split("\n") if m]
    if stage == _STAGE_FSOPEN:
        what, path, path2 = f"fsopen({fstype!r})", fstype, None
    elif stage == _STAGE_CREATE:
        what, path, path2 = "fsconfig(FSCONFIG_CMD_CREATE)", source, target
    elif stage == _STAGE_FSMOUNT:
        what, path, path2 = "fsmount", source, target
    elif stage == _STAGE_MOVE:
        what, path, path2 = "move_mount", source, target
    elif stage == _STAGE_TARGET:
        what, path, path2 = "open(O_PATH|O_DIRECTORY) of the target", source, target
    else:
        cmd, key, value = items[stage]
        # "lowerdir+ #501 of 501" says more than a position among all params
        nth = sum(1 for it in items[:stage + 1] if it[1] == key)
        of = sum(1 for it in items if it[1] == key)
        if res.opening:
            what = f"open(O_PATH) for fsconfig {key!r} #{nth} of {of}"
        else:
            what = f"fsconfig({_PARAM_NAMES[cmd]} {key!r}) #{nth} of {of}"
        path, path2 = (key if value is None else value), target
    try:
        raise_oserror(res.err, path, path2)
    except OSError as e:
        e.add_note(f"{what} failed while mounting {fstype} on {os.fsdecode(target)}")
        for m in log:
            e.add_note(f"kernel: {m}")
        raise


# ---- mount(2) from a helper thread with its own working directory ------------

cdef struct _chdir_mount:
    int dirfd
    const char *source
    const char *target
    const char *fstype
    unsigned long flags
    const void *data
    int rc
    int err
    int stage               # 0 unshare, 1 fchdir, 2 mount


cdef void *_chdir_mount_main(void *arg) noexcept nogil:
    cdef _chdir_mount *a = <_chdir_mount *>arg
    # Only this thread's cwd changes: CLONE_FS unshares the fs_struct (cwd,
    # root, umask) from the rest of the process; it dies with the thread.
    if linux.unshare(linux.CLONE_FS) != 0:
        a.rc, a.err, a.stage = -1, errno.errno, 0
        return NULL
    if linux.fchdir(a.dirfd) != 0:
        a.rc, a.err, a.stage = -1, errno.errno, 1
        return NULL
    while True:
        a.rc = linux.c_mount(a.source, a.target, a.fstype, a.flags, a.data)
        if a.rc == 0 or errno.errno != errno.EINTR:
            break
    a.err = errno.errno
    a.stage = 2
    return NULL


def mount_in_dir(dirpath, source, target, fstype=None, unsigned long flags=0, data=None):
    """mount(2) from a new thread whose working directory is ``dirpath``.

    Relative paths in ``data`` (overlay's lowerdir) resolve against
    ``dirpath``; the process's working directory never changes, so calls from
    many threads at once are safe. ``target`` should be absolute (a relative
    one would resolve against ``dirpath`` too).

    Raises:
        OSError: open of ``dirpath`` (filename=dirpath); thread creation
            (filename=dirpath); mount(2) (filename=source, filename2=target).
    """
    cdef bytes bdir = _fsencode(dirpath), bt = _fsencode(target)
    cdef object bs = _enc(source), bf = _enc(fstype), bd = _enc(data)
    cdef const char *cdir = bdir
    cdef _chdir_mount a
    cdef linux.pthread_t th
    cdef int prc = 0, err = 0
    memset(&a, 0, sizeof(a))
    a.source = _ptr(bs)
    a.target = bt
    a.fstype = _ptr(bf)
    a.flags = flags
    a.data = _ptr(bd)
    with nogil:
        a.dirfd = _open_path(cdir)
        err = errno.errno
        if a.dirfd >= 0:
            prc = linux.pthread_create(&th, NULL, _chdir_mount_main, &a)
            if prc == 0:
                linux.pthread_join(th, NULL)
            linux.close(a.dirfd)
    if a.dirfd < 0:
        raise_oserror(err, dirpath)
    if prc != 0:                          # pthread_create returns the error number
        raise_oserror(prc, dirpath)
    if a.rc != 0:
        if a.stage == 2:
            raise_oserror(a.err, source, target)
        raise_oserror(a.err, dirpath)
