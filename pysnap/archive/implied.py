"""Implied parent directories of an apply into a parentless snapshot, fixed at its rebase.

An apply gives a directory the tar lacks (``usr/`` for ``usr/bin/x``) the
metadata of the nearest lower layer that has it. An apply into a snapshot
without a parent (a parallel unpack) has no lowers to ask, so it records
those directories in ``<snapshot dir>/implied`` (NUL-separated paths from
the upper, written by rename, inside the apply's interruption mark), and
``commit(parent=)`` gives each the mode, owner, times and xattrs (but
``trusted.*``) of the first lower that has it, exactly as the apply would
have with the lowers in place: the same lookup (a missing path: the next
lower; a symlink, file or whiteout on the way: default metadata).
Re-running it is harmless, so a commit killed half-way is simply committed
again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

RECORD = "implied"
_WALK = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC


def read(snapshot_dir: str) -> list[str]:
    """The recorded implied directories of a snapshot (none when it has no record)."""
    try:
        with open(os.path.join(snapshot_dir, RECORD), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    return [os.fsdecode(p) for p in data.split(b"\0") if p]


def record(snapshot_dir: str, directories: dict[str, bool]) -> None:
    """Merge one apply's ``{directory: implied}`` into the record.

    A directory an earlier apply implied and this one gave an entry of its
    own is implied no more.
    """
    kept = [p for p in read(snapshot_dir) if directories.get(p, True)]
    paths = dict.fromkeys(kept + [p for p, implied in directories.items() if implied])
    path = os.path.join(snapshot_dir, RECORD)
    if not paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"\0".join(os.fsencode(p) for p in paths))
    os.rename(tmp, path)


def discard(snapshot_dir: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(snapshot_dir, RECORD))


def _open_parent(root: str, path: str) -> tuple[int, str]:
    """An O_PATH fd of ``path``'s parent below ``root``, reached through real directories
    only, and the last component. Raises OSError (ENOTDIR: a symlink or file on the way)."""
    *dirs, last = path.split("/")
    fd = os.open(root, _WALK)
    try:
        for name in dirs:
            child = os.open(name, _WALK, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, last


def _lstat_in(root: str, path: str) -> os.stat_result | None:
    """lstat of ``path`` below ``root`` through real directories only; None if missing."""
    try:
        fd, last = _open_parent(root, path)
    except FileNotFoundError:
        return None
    try:
        return os.stat(last, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    finally:
        os.close(fd)


def _first_lower(lowers: list[str], path: str) -> tuple[str, os.stat_result] | None:
    """The lower whose metadata ``path`` takes: the first having it, if a directory there."""
    for lower in lowers:
        try:
            st = _lstat_in(lower, path)
        except OSError as e:
            if e.errno in (errno.ENOTDIR, errno.ELOOP):
                return None  # a symlink or a file on the way: defaults
            raise
        if st is not None:
            return (lower, st) if stat.S_ISDIR(st.st_mode) else None
    return None


def _open_dir(root: str, path: str) -> int:
    fd, name = _open_parent(root, path)
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def _copy_xattrs(src_root: str, dst_root: str, path: str) -> None:
    """``path``'s xattrs but ``trusted.*``, from one tree onto the other (containerd's
    copyUpXAttrs)."""
    src = _open_dir(src_root, path)
    try:
        names = [n for n in os.listxattr(src) if not n.startswith("trusted.")]
        if not names:
            return
        dst = _open_dir(dst_root, path)
        try:
            for name in names:
                try:
                    value = os.getxattr(src, name)
                except OSError as e:
                    if e.errno == errno.ENODATA:  # removed meanwhile
                        continue
                    raise
                os.setxattr(dst, name, value)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def give_lower_metadata(upper: str, lowers: list[str], paths: list[str]) -> None:
    """Give each implied directory ``paths`` of ``upper`` its first lower's mode, owner,
    times and xattrs (but ``trusted.*``)."""
    for path in paths:
        try:
            here = _lstat_in(upper, path)
        except OSError as e:
            if e.errno in (errno.ENOTDIR, errno.ELOOP):
                continue  # replaced later in the layer
            raise
        if here is None or not stat.S_ISDIR(here.st_mode):
            continue
        found = _first_lower(lowers, path)
        if found is None:
            continue  # no lower has it: the apply's defaults stand
        lower, st = found
        _copy_xattrs(lower, upper, path)
        fd = _open_dir(upper, path)  # by its descriptor: chmod by name follows a symlink
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(fd)
