# The fd-based traversal primitives of the compiled directory walks (du's
# usage walk, rmtree's removal; issue 10: no walker of its own each):
# inline, so a walk's hot loop pays no call through cimport's function
# pointers. They retry EINTR only; the walks own their policy (what to skip,
# what to degrade on).
from libc cimport errno
from libc.stdint cimport uint64_t

from . cimport fileops, linux

cdef inline int open_dir_at(int dirfd, const char *name, int *out) noexcept nogil:
    """openat(dirfd, name, O_DIRECTORY|O_NOFOLLOW|O_CLOEXEC) into out. 0 or errno."""
    cdef int fd = fileops.snap_openat(dirfd, name, linux.O_RDONLY | linux.O_DIRECTORY
                                      | linux.O_NOFOLLOW | linux.O_CLOEXEC)  # EINTR retried
    if fd < 0:
        return errno.errno
    out[0] = fd
    return 0


cdef inline ssize_t read_dents(int fd, char *buf, size_t n) noexcept nogil:
    """getdents64 into buf: the bytes read (0 at the end), or -errno."""
    cdef ssize_t r
    while True:
        r = linux.snap_getdents64(fd, buf, n)
        if r >= 0:
            return r
        if errno.errno != errno.EINTR:
            return -errno.errno


cdef inline bint is_dot(const char *name) noexcept nogil:
    """"." or "..": the entries every listing has and no walk visits."""
    return name[0] == b'.' and (name[1] == 0 or (name[1] == b'.' and name[2] == 0))


cdef inline int open_parent(int childfd, uint64_t dev, uint64_t ino, int *out) noexcept nogil:
    """The parent of childfd through "..", if it is still (dev, ino): 0, -1 if
    the tree moved (then nothing is open), or errno."""
    cdef linux.stat st
    cdef int fd = -1, err
    err = open_dir_at(childfd, b"..", &fd)
    if err != 0:
        return err
    if linux.fstat(fd, &st) != 0:
        err = errno.errno
        linux.close(fd)
        return err
    if st.st_dev != dev or st.st_ino != ino:
        linux.close(fd)
        return -1
    out[0] = fd
    return 0
