"""Filesystem helpers for the snapshotter: removing trees of any depth.

Python 3.11's ``shutil.rmtree`` recurses (one Python frame per level) and
fails past about 1000 levels; a snapshot's upper directory can be deeper, and
its paths longer than PATH_MAX. ``remove_tree`` walks with directory file
descriptors and an explicit stack instead: no recursion, no long paths. The
walk is compiled (``snapcore.rmtree``, on the traversal primitives du shares);
this module keeps the root and the one step C cannot do safely alone, a chmod
that never follows a symlink (through /proc).

It never crosses into another mount (a file system, or a bind mount of the same
one, mounted somewhere below the tree: a container's volume left mounted in its
upper directory): that mount and the directories above it stay, and the error
names it.
"""

from __future__ import annotations

import errno
import os
import stat

from snapcore.rmtree import empty_tree
from snapcore.statx import is_mount_root

__all__ = ["remove_tree"]

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PIN_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _chmod_dir(name: str | bytes, dir_fd: int | None = None) -> None:
    """chmod 0700 a directory, never what a symlink put in its place points to.

    os.chmod(name) follows symlinks, and Linux has no lchmod: pin the directory
    with O_PATH|O_NOFOLLOW|O_DIRECTORY (a symlink fails with ENOTDIR) and chmod
    it through /proc/self/fd, as glibc's fchmodat(AT_SYMLINK_NOFOLLOW) does.
    """
    fd = os.open(name, _PIN_DIR, dir_fd=dir_fd)
    try:
        os.chmod(f"/proc/self/fd/{fd}", 0o700)
    except FileNotFoundError:
        # No /proc. Not ENOENT: the walk would take it for a vanished entry,
        # skip it, and retry its parent's rmdir forever.
        why = "chmod without following symlinks needs /proc"
        raise OSError(errno.EOPNOTSUPP, why, name) from None
    finally:
        os.close(fd)


def _open_dir(name: bytes, dir_fd: int) -> int:
    """Open a subdirectory the walk could not open: it and its parent are made
    accessible first (non-root). The compiled walk calls it on EACCES/EPERM."""
    try:
        return os.open(name, _OPEN_DIR, dir_fd=dir_fd)
    except PermissionError:
        # The parent may be listable but not searchable (mode 0600): no name
        # in it can be opened or chmod-ed until it is; then the child itself
        # may be unreadable (mode 000).
        os.chmod(dir_fd, 0o700)
        _chmod_dir(name, dir_fd)
        return os.open(name, _OPEN_DIR, dir_fd=dir_fd)


def remove_tree(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> None:
    """Remove path and everything below it, at any depth; a missing path is a no-op.

    Symlinks are removed, never followed. Read-only directories are made
    writable (chmod) as needed. Iterative and fd-based (openat, unlinkat,
    rmdir with dir_fd), compiled, with the GIL released: one fd per level is
    never held, only the root's and the current directory's, so neither depth
    nor path length is limited.

    Another mount below path (a different st_dev, or a mount root of the same
    device) is never entered: it and the directories above it stay, the rest
    goes, then OSError(EBUSY) names the first one.

    Raises:
        OSError: from the kernel, other than for entries that vanish meanwhile;
            EBUSY with the path of a mount found inside (or path itself a mount).
    """
    top = os.fspath(path)
    try:
        st = os.lstat(top)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        try:
            os.unlink(top)
        except FileNotFoundError:
            pass
        return
    try:
        root_fd = os.open(top, _OPEN_DIR)
    except FileNotFoundError:
        return
    except PermissionError:
        _chmod_dir(top)
        root_fd = os.open(top, _OPEN_DIR)
    try:
        if is_mount_root(root_fd):
            raise OSError(errno.EBUSY, "a mount point: not removing what is mounted there", top)
        mounts = empty_tree(root_fd, top, _open_dir)
    finally:
        os.close(root_fd)
    if mounts:
        first = os.path.join(os.fsencode(top), mounts[0])
        more = f" (and {len(mounts) - 1} more)" if len(mounts) > 1 else ""
        raise OSError(
            errno.EBUSY,
            f"a mount inside the tree was left in place{more}; unmount it, then remove again",
            os.fsdecode(first) if isinstance(top, str) else first,
        )
    try:
        os.rmdir(top)
    except FileNotFoundError:
        pass
