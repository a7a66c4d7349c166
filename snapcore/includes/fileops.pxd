# Declarations only: the file operations of snapcore.fsops (the layer codec).
from libc.stdint cimport uint64_t
from posix.types cimport mode_t, off_t, dev_t, uid_t, gid_t
from posix.time cimport timespec


cdef extern from "<sys/stat.h>" nogil:
    # The fields the layer codec reads; the real struct has more.
    cdef struct stat:
        dev_t st_dev
        uint64_t st_ino
        mode_t st_mode
        uint64_t st_nlink
        uid_t st_uid
        gid_t st_gid
        dev_t st_rdev
        off_t st_size
        timespec st_atim
        timespec st_mtim
    int fstatat(int dirfd, const char *path, stat *buf, int flags)
    int fstat(int fd, stat *buf)
    int mkdirat(int dirfd, const char *path, mode_t mode)
    int mknodat(int dirfd, const char *path, mode_t mode, dev_t dev)
    int fchmodat(int dirfd, const char *path, mode_t mode, int flags)
    int fchmod(int fd, mode_t mode)
    int utimensat(int dirfd, const char *path, const timespec *times, int flags)
    int futimens(int fd, const timespec *times)
    bint S_ISDIR(mode_t m)
    bint S_ISREG(mode_t m)
    bint S_ISLNK(mode_t m)
    bint S_ISCHR(mode_t m)
    bint S_ISBLK(mode_t m)
    bint S_ISFIFO(mode_t m)
    bint S_ISSOCK(mode_t m)
    mode_t S_IFMT, S_IFREG, S_IFDIR, S_IFCHR, S_IFBLK, S_IFIFO, S_IFLNK

cdef extern from "<sys/sysmacros.h>" nogil:
    dev_t makedev(unsigned int major, unsigned int minor)
    unsigned int major(dev_t dev)
    unsigned int minor(dev_t dev)

cdef extern from "<fcntl.h>" nogil:
    int openat(int dirfd, const char *path, int flags, ...)
    int O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_TRUNC, O_DIRECTORY, O_NOFOLLOW
    int O_CLOEXEC, O_PATH, O_NOATIME, O_NONBLOCK
    int AT_FDCWD, AT_SYMLINK_NOFOLLOW, AT_EMPTY_PATH, AT_REMOVEDIR

cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    ssize_t c_read "read" (int fd, void *buf, size_t n)
    ssize_t c_write "write" (int fd, const void *buf, size_t n)
    int fchown(int fd, uid_t uid, gid_t gid)
    int fchownat(int dirfd, const char *path, uid_t uid, gid_t gid, int flags)
    int symlinkat(const char *target, int dirfd, const char *path)
    int linkat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags)
    int unlinkat(int dirfd, const char *path, int flags)
    ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t n)
    int syncfs(int fd)
    off_t lseek(int fd, off_t off, int whence)

cdef extern from "<sys/xattr.h>" nogil:
    int fsetxattr(int fd, const char *name, const void *value, size_t size, int flags)
    int lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags)
    ssize_t flistxattr(int fd, char *list, size_t size)
    ssize_t llistxattr(const char *path, char *list, size_t size)
    ssize_t fgetxattr(int fd, const char *name, void *value, size_t size)
    ssize_t lgetxattr(const char *path, const char *name, void *value, size_t size)
    int fremovexattr(int fd, const char *name)

cdef extern from "includes/compat.h" nogil:
    int snap_openat2(int dirfd, const char *path, uint64_t flags, uint64_t resolve)
    int snap_openat(int dirfd, const char *path, int flags, ...)
    int snap_fstatat(int dirfd, const char *path, stat *buf, int flags)
    uint64_t RESOLVE_IN_ROOT, RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, RESOLVE_NO_XDEV
