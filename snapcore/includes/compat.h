/* C shims for snapcore: raw syscalls glibc may not wrap, and byte packing.
 *
 * Kernel-version #ifdefs live here and nowhere else. Only <sys/mount.h> is
 * included, never <linux/mount.h>: the two clash from glibc 2.36 on
 * (systemd#23992), so the new mount API's constants are defined below when
 * an older glibc lacks them.
 */
#ifndef SNAPCORE_COMPAT_H
#define SNAPCORE_COMPAT_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

/* ---- getdents64 ---------------------------------------------------------- */

struct snap_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

static inline ssize_t snap_getdents64(int fd, void *buf, size_t n) {
    return syscall(SYS_getdents64, fd, buf, n);
}

/* ---- statx: du's one stat per entry (Linux 4.11; mount roots flagged since 5.8) */

#ifndef STATX_ATTR_MOUNT_ROOT
#define STATX_ATTR_MOUNT_ROOT 0x00002000
#endif

#define SNAP_STATX_MASK (STATX_TYPE | STATX_MODE | STATX_NLINK | STATX_INO | \
                         STATX_SIZE | STATX_BLOCKS)

/* lstat of dirfd/name; AT_NO_AUTOMOUNT as fstatat implies it. */
static inline int snap_lstatx(int dirfd, const char *name, struct statx *stx) {
    return statx(dirfd, name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, SNAP_STATX_MASK, stx);
}

/* st_dev's encoding of the device, so statx and stat(2) results compare. */
static inline uint64_t snap_statx_dev(const struct statx *stx) {
    return makedev(stx->stx_dev_major, stx->stx_dev_minor);
}

/* Whether the directory fd is the root of a mount: 1, 0, or -1 with errno
 * (EOPNOTSUPP when the kernel does not report the attribute, before 5.8). */
static inline int snap_is_mount_root(int fd) {
    struct statx stx;
    if (statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_INO, &stx) != 0)
        return -1;
    if (!(stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT)) {
        errno = EOPNOTSUPP;
        return -1;
    }
    return (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0;
}

/* ---- relaxed atomics (du's workers: hints and progress counters) --------- */

/* Flags read in du's hot loop without the mutex; the mutex orders the real
 * hand-over of work, these only say "look". */
static inline int snap_load_int(const int *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline void snap_store_int(int *p, int v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

static inline uint64_t snap_load_u64(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static inline void snap_store_u64(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

static inline void snap_add_u64(uint64_t *p, uint64_t v) {
    __atomic_add_fetch(p, v, __ATOMIC_RELAXED);
}

/* ---- the new mount API (Linux 5.2; lowerdir+ by fd since 6.8) ------------ */

#ifndef FSOPEN_CLOEXEC
#define FSOPEN_CLOEXEC 0x00000001
#endif
#ifndef FSMOUNT_CLOEXEC
#define FSMOUNT_CLOEXEC 0x00000001
#endif
#ifndef FSCONFIG_SET_FLAG
#define FSCONFIG_SET_FLAG 0
#define FSCONFIG_SET_STRING 1
#define FSCONFIG_SET_BINARY 2
#define FSCONFIG_SET_PATH 3
#define FSCONFIG_SET_PATH_EMPTY 4
#define FSCONFIG_SET_FD 5
#define FSCONFIG_CMD_CREATE 6
#define FSCONFIG_CMD_RECONFIGURE 7
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif
#ifndef MOVE_MOUNT_T_EMPTY_PATH
#define MOVE_MOUNT_T_EMPTY_PATH 0x00000040
#endif
#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x00000001
#define MOUNT_ATTR_NOSUID 0x00000002
#define MOUNT_ATTR_NODEV 0x00000004
#define MOUNT_ATTR_NOEXEC 0x00000008
#define MOUNT_ATTR_RELATIME 0x00000000
#define MOUNT_ATTR_NOATIME 0x00000010
#define MOUNT_ATTR_STRICTATIME 0x00000020
#endif
#ifndef MOUNT_ATTR_NODIRATIME
#define MOUNT_ATTR_NODIRATIME 0x00000080
#endif
#ifndef SYS_fsopen
#define SYS_fsopen 430
#define SYS_fsconfig 431
#define SYS_fsmount 432
#define SYS_move_mount 429
#endif

static inline int snap_fsopen(const char *fsname, unsigned int flags) {
    return (int)syscall(SYS_fsopen, fsname, flags);
}

static inline int snap_fsconfig(int fd, unsigned int cmd, const char *key,
                                const void *value, int aux) {
    return (int)syscall(SYS_fsconfig, fd, cmd, key, value, aux);
}

static inline int snap_fsmount(int fd, unsigned int flags, unsigned int attr) {
    return (int)syscall(SYS_fsmount, fd, flags, attr);
}

static inline int snap_move_mount(int from_dfd, const char *from_path,
                                  int to_dfd, const char *to_path,
                                  unsigned int flags) {
    return (int)syscall(SYS_move_mount, from_dfd, from_path, to_dfd, to_path, flags);
}

/* ---- openat2 (Linux 5.6): name resolution confined to a root ------------- */

#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef RESOLVE_IN_ROOT
#define RESOLVE_NO_XDEV 0x01
#define RESOLVE_NO_MAGICLINKS 0x02
#define RESOLVE_NO_SYMLINKS 0x04
#define RESOLVE_BENEATH 0x08
#define RESOLVE_IN_ROOT 0x10
#endif

struct snap_open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};

/* Retried on EINTR (a FUSE or NFS lookup a signal interrupts), and a few times
 * on EAGAIN, which RESOLVE_IN_ROOT returns when a rename or mount raced it. */
static inline int snap_openat2(int dirfd, const char *path, uint64_t flags,
                               uint64_t resolve) {
    struct snap_open_how how = {flags, 0, resolve};
    int fd, again = 0;
    do {
        fd = (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    } while (fd < 0 && (errno == EINTR || (errno == EAGAIN && ++again < 64)));
    return fd;
}

/* openat and fstatat, retried on EINTR (GCC statement expressions: openat's
 * mode argument is optional). */
#define snap_openat(...) ({ int fd_; \
    do fd_ = openat(__VA_ARGS__); while (fd_ < 0 && errno == EINTR); fd_; })
#define snap_fstatat(...) ({ int r_; \
    do r_ = fstatat(__VA_ARGS__); while (r_ < 0 && errno == EINTR); r_; })

/* ---- fixed-width big-endian integers (keep LMDB order numeric) ----------- */

/* memcpy + htobe/betoh: one load or store and a bswap; the byte loops they
 * replace were not merged by gcc -O2 and were ~10% of a walk's decode. */
#include <endian.h>

static inline void snap_pack_be64(char *buf, uint64_t x) {
    x = htobe64(x);
    memcpy(buf, &x, 8);
}

static inline uint64_t snap_unpack_be64(const char *buf) {
    uint64_t x;
    memcpy(&x, buf, 8);
    return be64toh(x);
}

static inline void snap_pack_be32(char *buf, uint32_t x) {
    x = htobe32(x);
    memcpy(buf, &x, 4);
}

static inline uint32_t snap_unpack_be32(const char *buf) {
    uint32_t x;
    memcpy(&x, buf, 4);
    return be32toh(x);
}

#endif /* SNAPCORE_COMPAT_H */
