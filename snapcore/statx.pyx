# cython: language_level=3
"""statx(2) for what os.stat cannot tell: whether a directory is a mount root.

``os.stat`` has no statx, and a bind mount of a directory of the same file
system has the same ``st_dev`` as its parent: only ``STATX_ATTR_MOUNT_ROOT``
(Linux 5.8) tells it apart. Errors raise ``OSError`` with errno and path.
"""

from libc cimport errno
from libc.stdint cimport uint32_t, uint64_t

from snapcore.includes.oserr cimport raise_oserror


cdef extern from "<fcntl.h>" nogil:
    int AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW, AT_FDCWD

cdef extern from "<sys/stat.h>" nogil:
    # Declared with the fields used here; the real struct has more.
    cdef struct statx_t "statx":
        uint32_t stx_mask
        uint64_t stx_attributes
        uint64_t stx_attributes_mask
        uint32_t stx_dev_major
        uint32_t stx_dev_minor
        uint64_t stx_ino
    int c_statx "statx" (int dirfd, const char *path, int flags, unsigned int mask,
                         statx_t *buf)
    unsigned int STATX_INO
    uint64_t STATX_ATTR_MOUNT_ROOT


def is_mount_root(int dir_fd, name=b"") -> bool:
    """Whether ``name`` in the directory ``dir_fd`` (or ``dir_fd`` itself when
    ``name`` is empty) is the root of a mount. Symlinks are not followed.

    Raises:
        OSError: errno of statx(2); EOPNOTSUPP when the kernel does not report
            the mount-root attribute (before Linux 5.8).
    """
    cdef bytes bname = name.encode() if isinstance(name, str) else bytes(name)
    cdef const char *cname = bname
    cdef int flags = AT_SYMLINK_NOFOLLOW | (AT_EMPTY_PATH if not bname else 0)
    cdef statx_t st
    cdef int rc, err
    while True:
        with nogil:
            rc = c_statx(dir_fd, cname, flags, STATX_INO, &st)
            err = errno.errno
        if rc == 0:
            break
        if err != errno.EINTR:
            raise_oserror(err, name or dir_fd)
    if not (st.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT):
        raise_oserror(errno.EOPNOTSUPP, name or dir_fd)
    return bool(st.stx_attributes & STATX_ATTR_MOUNT_ROOT)
