# Declarations only: the C functions and constants snapcore calls.
from libc.stdint cimport uint16_t, uint32_t, uint64_t, int64_t
from posix.types cimport mode_t, off_t, sigset_t
from posix.time cimport timespec


cdef extern from "<sys/stat.h>" nogil:
    # Declared here with the fields du needs; the real struct has more.
    cdef struct stat:
        uint64_t st_dev
        uint64_t st_ino
        mode_t st_mode
        uint64_t st_nlink
        off_t st_size
        int64_t st_blocks
    int fstatat(int dirfd, const char *path, stat *buf, int flags)
    int fstat(int fd, stat *buf)
    int fchmod(int fd, mode_t mode)
    bint S_ISDIR(mode_t m)

cdef extern from "<fcntl.h>" nogil:
    int openat(int dirfd, const char *path, int flags, ...)
    int open(const char *path, int flags, ...)
    int O_RDONLY, O_DIRECTORY, O_NOFOLLOW, O_CLOEXEC, O_PATH
    int AT_FDCWD, AT_SYMLINK_NOFOLLOW, AT_EMPTY_PATH, AT_REMOVEDIR
    int fcntl(int fd, int cmd, ...)
    int F_DUPFD_CLOEXEC

cdef extern from "<dirent.h>" nogil:
    unsigned char DT_DIR, DT_UNKNOWN

cdef extern from "<unistd.h>" nogil:
    int close(int fd)
    ssize_t c_read "read" (int fd, void *buf, size_t n)
    int fchdir(int fd)
    int unlinkat(int dirfd, const char *path, int flags)

cdef extern from "<pthread.h>" nogil:
    # du's worker threads: opaque types, the calls du makes.
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_attr_t:
        pass
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    ctypedef struct pthread_condattr_t:
        pass
    int pthread_create(pthread_t *thread, const pthread_attr_t *attr,
                       void *(*start)(void *) noexcept nogil, void *arg)
    int pthread_join(pthread_t thread, void **retval)
    int pthread_mutex_init(pthread_mutex_t *m, const pthread_mutexattr_t *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_trylock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_cond_init(pthread_cond_t *c, const pthread_condattr_t *attr)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_cond_timedwait(pthread_cond_t *c, pthread_mutex_t *m, const timespec *abstime)
    int pthread_cond_signal(pthread_cond_t *c)
    int pthread_cond_broadcast(pthread_cond_t *c)
    int pthread_sigmask(int how, const sigset_t *newset, sigset_t *oldset)

cdef extern from "<sys/resource.h>" nogil:
    # du: how many fds it may open, and whether its threads wait on the disk
    ctypedef unsigned long rlim_t
    cdef struct rlimit:
        rlim_t rlim_cur
        rlim_t rlim_max
    int getrlimit(int resource, rlimit *rlim)
    int RLIMIT_NOFILE
    rlim_t RLIM_INFINITY
    cdef struct rusage:
        long ru_nvcsw
        long ru_nivcsw
    int getrusage(int who, rusage *usage)
    int RUSAGE_THREAD

cdef extern from "<time.h>" nogil:
    int nanosleep(const timespec *req, timespec *rem)

cdef extern from "<sched.h>" nogil:
    # mount.pyx's fallback helper thread: its own cwd (unshare(CLONE_FS))
    int unshare(int flags)
    int CLONE_FS

cdef extern from "<sys/mount.h>" nogil:
    int c_mount "mount" (const char *source, const char *target,
                         const char *fstype, unsigned long flags, const void *data)
    int umount2(const char *target, int flags)
    unsigned long MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_SYNCHRONOUS
    unsigned long MS_REMOUNT, MS_MANDLOCK, MS_DIRSYNC, MS_NOATIME, MS_NODIRATIME
    unsigned long MS_BIND, MS_MOVE, MS_REC, MS_SILENT, MS_RELATIME, MS_STRICTATIME
    unsigned long MS_PRIVATE, MS_SLAVE, MS_SHARED, MS_UNBINDABLE, MS_LAZYTIME
    int MNT_FORCE, MNT_DETACH, MNT_EXPIRE, UMOUNT_NOFOLLOW

cdef extern from "includes/compat.h" nogil:
    cdef struct snap_dirent64:
        uint64_t d_ino
        int64_t d_off
        unsigned short d_reclen
        unsigned char d_type
        char d_name[1]
    ssize_t snap_getdents64(int fd, void *buf, size_t n)
    int snap_load_int(const int *p)
    void snap_store_int(int *p, int v)
    uint64_t snap_load_u64(const uint64_t *p)
    void snap_store_u64(uint64_t *p, uint64_t v)
    void snap_add_u64(uint64_t *p, uint64_t v)

    # du's stat of an entry: statx with the fields du needs (the struct has more)
    cdef struct statx:
        uint64_t stx_attributes
        uint32_t stx_nlink
        uint16_t stx_mode
        uint64_t stx_ino
        uint64_t stx_size
        uint64_t stx_blocks
    int snap_lstatx(int dirfd, const char *name, statx *stx)
    uint64_t snap_statx_dev(const statx *stx)
    int snap_is_mount_root(int fd)
    uint64_t STATX_ATTR_MOUNT_ROOT

    int snap_fsopen(const char *fsname, unsigned int flags)
    int snap_fsconfig(int fd, unsigned int cmd, const char *key, const void *value, int aux)
    int snap_fsmount(int fd, unsigned int flags, unsigned int attr)
    int snap_move_mount(int from_dfd, const char *from_path, int to_dfd,
                        const char *to_path, unsigned int flags)
    unsigned int FSOPEN_CLOEXEC, FSMOUNT_CLOEXEC, MOVE_MOUNT_F_EMPTY_PATH, MOVE_MOUNT_T_EMPTY_PATH
    unsigned int FSCONFIG_SET_FLAG, FSCONFIG_SET_STRING, FSCONFIG_SET_FD
    unsigned int FSCONFIG_CMD_CREATE
    unsigned int MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC
    unsigned int MOUNT_ATTR_RELATIME, MOUNT_ATTR_NOATIME, MOUNT_ATTR_STRICTATIME
    unsigned int MOUNT_ATTR_NODIRATIME

    void snap_pack_be64(char *buf, uint64_t x)
    uint64_t snap_unpack_be64(const char *buf)
    void snap_pack_be32(char *buf, uint32_t x)
    uint32_t snap_unpack_be32(const char *buf)
