"""Filesystem helpers for the snapshotter: removing trees of any depth.

Python 3.11's ``shutil.rmtree`` recurses (one Python frame per level) and
fails past about 1000 levels; a snapshot's upper directory can be deeper, and
its paths longer than PATH_MAX. ``remove_tree`` walks with directory file
descriptors and an explicit stack instead: no recursion, no long paths.

It never crosses into another mount (a file system, or a bind mount of the same
one, mounted somewhere below the tree: a container's volume left mounted in its
upper directory): that mount and the directories above it stay, and the error
names it.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from snapcore.statx import is_mount_root

__all__ = ["remove_tree"]

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PIN_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class _Frame:
    """A directory being emptied: its name in the parent, identity, subdirectories left."""

    name: bytes
    dev: int
    ino: int
    subdirs: list[bytes] = field(default_factory=list)
    holds_mount: bool = False  # a mount below it stays, so it stays too


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
    """Open a subdirectory; it and its parent are made accessible first (non-root)."""
    try:
        return os.open(name, _OPEN_DIR, dir_fd=dir_fd)
    except PermissionError:
        # The parent may be listable but not searchable (mode 0600): no name
        # in it can be opened or chmod-ed until it is; then the child itself
        # may be unreadable (mode 000).
        os.chmod(dir_fd, 0o700)
        _chmod_dir(name, dir_fd)
        return os.open(name, _OPEN_DIR, dir_fd=dir_fd)


def _empty(fd: int, frame: _Frame) -> list[bytes]:
    """Unlink every non-directory in fd; remember the subdirectories in frame.

    Returns the names of files that are mount points (a bind mount of a file
    cannot be unlinked: EBUSY); they stay.
    """
    busy: list[bytes] = []
    made_writable = False
    with os.scandir(fd) as it:
        names = [(os.fsencode(e.name), e.is_dir(follow_symlinks=False)) for e in it]
    for name, is_dir in names:
        if is_dir:
            frame.subdirs.append(name)
            continue
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass
        except PermissionError:
            if made_writable:
                raise
            os.chmod(fd, 0o700)  # a read-only directory: make it writable, once
            made_writable = True
            os.unlink(name, dir_fd=fd)
        except IsADirectoryError:  # became a directory since the listing
            frame.subdirs.append(name)
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            busy.append(name)
            frame.holds_mount = True
    return busy


def _rmdir(name: bytes, dir_fd: int) -> None:
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except PermissionError:
        os.chmod(dir_fd, 0o700)
        os.rmdir(name, dir_fd=dir_fd)


def _reopen(root_fd: int, stack: list[_Frame], child_fd: int) -> int:
    """An fd of stack[-1], the parent of child_fd: "..", checked, else by names from the root."""
    want = stack[-1]
    fd = os.open("..", _OPEN_DIR, dir_fd=child_fd)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) == (want.dev, want.ino):
        return fd
    os.close(fd)
    # The tree moved under us: walk down again one name at a time.
    fd = os.dup(root_fd)
    for frame in stack[1:]:
        try:
            nfd = os.open(frame.name, _OPEN_DIR, dir_fd=fd)
        finally:
            os.close(fd)
        fd = nfd
    return fd


def remove_tree(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> None:
    """Remove path and everything below it, at any depth; a missing path is a no-op.

    Symlinks are removed, never followed. Read-only directories are made
    writable (chmod) as needed. Iterative and fd-based (openat, unlinkat,
    rmdir with dir_fd): one fd per level is never held, only the root's and
    the current directory's, so neither depth nor path length is limited.

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
    mounts: list[bytes] = []  # relative paths of the mounts left in place
    try:
        if is_mount_root(root_fd):
            raise OSError(errno.EBUSY, "a mount point: not removing what is mounted there", top)
        rst = os.fstat(root_fd)
        stack = [_Frame(b"", rst.st_dev, rst.st_ino)]
        fd = os.dup(root_fd)
        try:
            mounts += _empty(fd, stack[0])
            while True:
                frame = stack[-1]
                if frame.subdirs:
                    name = frame.subdirs.pop()
                    try:
                        child = _open_dir(name, fd)
                    except FileNotFoundError:
                        continue
                    except OSError as e:
                        if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                            raise
                        os.unlink(name, dir_fd=fd)  # replaced by a file or a symlink
                        continue
                    # Rebind fd before closing the parent: a KeyboardInterrupt
                    # after the close must not let the finally close it again.
                    fd, parent = child, fd
                    cst = os.fstat(fd)
                    if cst.st_dev != rst.st_dev or is_mount_root(fd):  # another mount
                        fd, child = parent, fd
                        os.close(child)
                        mounts.append(b"/".join([f.name for f in stack[1:]] + [name]))
                        frame.holds_mount = True
                        continue
                    os.close(parent)
                    stack.append(_Frame(name, cst.st_dev, cst.st_ino))
                    prefix = b"/".join(f.name for f in stack[1:])
                    mounts += [prefix + b"/" + m for m in _empty(fd, stack[-1])]
                    continue
                if len(stack) == 1:
                    break
                # Empty now: climb to the parent and remove it from there.
                stack.pop()
                parent = _reopen(root_fd, stack, fd)
                fd, child = parent, fd
                os.close(child)
                if frame.holds_mount:
                    stack[-1].holds_mount = True
                    continue
                try:
                    _rmdir(frame.name, fd)
                except OSError as e:
                    if e.errno != errno.ENOTEMPTY:
                        raise
                    stack[-1].subdirs.append(frame.name)  # filled meanwhile: again
        finally:
            os.close(fd)
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
