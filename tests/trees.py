"""Directory trees for the tests: what one shows (to compare two), and deep ones."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def _entry(path: str, times: bool) -> tuple[object, ...]:
    st = os.lstat(path)
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as f:
            what: object = hashlib.sha256(f.read()).hexdigest()
    elif stat.S_ISLNK(st.st_mode):
        what = os.readlink(path)
    else:
        what = st.st_rdev
    xattrs = {
        k: os.getxattr(path, k, follow_symlinks=False)
        for k in os.listxattr(path, follow_symlinks=False)
        if not k.startswith("trusted.overlay.")
    }
    return (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns if times else None, what, xattrs)


def tree_state(root: Path, *, times: bool = True) -> dict[str, tuple[object, ...]]:
    """Per path ("." is root itself): mode, uid, gid, mtime, content, xattrs.

    The mtime is in nanoseconds, None without ``times`` and for the root
    (whose mtime follows whatever was made in it); content is a digest, a
    link target or a device number; overlayfs' own ``trusted.overlay.*``
    xattrs are left out.
    """
    out = {".": _entry(str(root), False)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = _entry(path, times)
    return out


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def make_chain(
    top: Path,
    depth: int,
    *,
    name: str = "d",
    leaf: bytes = b"",
    files: dict[int, tuple[str, bytes]] | None = None,
) -> None:
    """top/d/d/.../d (depth levels) with a file ``leaf`` at the bottom, or instead, given
    ``files``, a file files[level] = (name, data) at each of those levels (0 is top).
    Made by dir fds: no path longer than a name, so it can exceed PATH_MAX."""
    placed = {depth: ("leaf", leaf)} if files is None else files
    top.mkdir()
    fd = os.open(top, _DIR)
    try:
        for level in range(depth + 1):
            if level in placed:
                file_name, data = placed[level]
                wfd = os.open(file_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
                try:
                    os.write(wfd, data)
                finally:
                    os.close(wfd)
            if level < depth:
                os.mkdir(name, dir_fd=fd)
                nfd = os.open(name, _DIR, dir_fd=fd)
                os.close(fd)
                fd = nfd
    finally:
        os.close(fd)
